"""Class distribution: how many samples each class has, per split, and how that moved since the baseline run.

A skewed or drifting label distribution is the cheapest label problem to catch and one that silently biases
every model trained on the data; this check needs nothing but the labels (``requires=()``).

Only samples with a label count; samples without one are reported as ``n_missing_label``. Figures that
depend on the number of classes ``k`` (entropy, the default rare-class threshold) use the classes that have at
least one labelled sample; classes in ``class_names`` with no labelled sample (e.g. used only by annotators)
are listed as ``empty_classes``.

Parameters (``[checks.distribution]``)
--------------------------------------
rare_share
    A class whose share of the labelled samples is below this is "rare". Default ``0.5 / k``: half of what a
    uniform distribution would give each class, so the threshold scales with the number of classes.
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

import numpy as np
import pandas as pd
from scipy.stats import chi2_contingency, entropy
from scipy.stats.contingency import association

from audit.checks.base import CheckContext, CheckInputError, CheckResult, Requirement, json_safe, merge_params, register

DEFAULT_PARAMS: dict[str, Any] = {"rare_share": None}


@register
class DistributionCheck:
    """Counts, shares, imbalance and entropy of the labels, per split, and the shift against the baseline."""

    name: ClassVar[str] = "distribution"
    requires: ClassVar[tuple[Requirement, ...]] = ()
    description: ClassVar[str] = (
        "Class counts and shares overall and per split, imbalance ratio, normalised entropy, rare classes, "
        "classes missing from a split, and a chi-square test of the label shift since the baseline run."
    )

    def run(self, context: CheckContext) -> CheckResult:
        params = _merge_params(context.params)
        samples = context.samples
        labels = samples["label"].astype(object).where(samples["label"].notna(), None)
        labelled = labels.dropna().astype(str)
        splits = samples["split"].astype(str) if "split" in samples else pd.Series("all", index=samples.index)

        counts = class_counts(labelled, context.class_names)
        present = counts[counts > 0]
        k = len(present)
        shares = counts / counts.sum() if counts.sum() else counts.astype(float)
        rare_share = params["rare_share"] if params["rare_share"] is not None else (0.5 / k if k else None)

        metrics: dict[str, Any] = {
            "n_labelled": len(labelled),
            "n_missing_label": int(labels.isna().sum()),
            "n_classes": k,
            "classes": {c: {"count": int(counts[c]), "share": float(shares[c])} for c in counts.index},
            "per_split": per_split_counts(labelled, splits.loc[labelled.index], list(counts.index)),
            "imbalance_ratio": float(present.max() / present.min()) if k else None,
            "normalized_entropy": normalized_entropy(present),
            "rare_share_threshold": rare_share,
            "rare_classes": sorted(c for c in present.index if shares[c] < rare_share),
            "empty_classes": sorted(counts.index[counts == 0]),
            "split_only_classes": split_only_classes(labelled, splits.loc[labelled.index]),
            "min_class_count": int(present.min()) if k else None,
            "min_class": str(present.idxmin()) if k else None,
            "baseline": None,
        }
        if context.baseline is not None:
            previous = context.baseline.samples["label"].dropna().astype(str)
            metrics["baseline"] = compare_with_baseline(
                counts, class_counts(previous, []), context.baseline.name
            )

        per_sample = pd.DataFrame(
            {"distribution_class_share": labelled.map(shares).reindex(samples.index)},
            index=samples.index,
            dtype=float,
        )
        return CheckResult(self.name, per_sample, json_safe(metrics))


def _merge_params(params: dict[str, Any]) -> dict[str, Any]:
    merged = merge_params("distribution", params, DEFAULT_PARAMS)
    rare = merged["rare_share"]
    if rare is not None and not (isinstance(rare, int | float) and 0 < rare < 1):
        raise CheckInputError(f"checks.distribution.rare_share must be a number in (0, 1), got {rare!r}")
    return merged


def class_counts(labels: pd.Series, class_names: list[str]) -> pd.Series:
    """Count per class, including the known classes nobody used (count 0), sorted by class name."""
    counts = labels.value_counts()
    index = sorted(set(class_names) | set(counts.index))
    return counts.reindex(index, fill_value=0).astype(int)


def normalized_entropy(counts: pd.Series) -> float | None:
    """Shannon entropy divided by its maximum log(k): 1 is perfectly balanced, near 0 is one dominant class.

    Undefined (None) with fewer than two classes, where log(k) is 0.
    """
    counts = counts[counts > 0]
    if len(counts) < 2:
        return None
    return float(entropy(counts.to_numpy(dtype=float)) / math.log(len(counts)))


def per_split_counts(labels: pd.Series, splits: pd.Series, classes: list[str]) -> dict[str, dict[str, dict]]:
    """``{split: {class: {count, share}}}``; shares are within the split and every class is listed (0 too)."""
    table = pd.crosstab(splits, labels).reindex(columns=classes, fill_value=0)
    out: dict[str, dict[str, dict]] = {}
    for split, row in table.iterrows():
        total = row.sum()
        out[str(split)] = {
            c: {"count": int(row[c]), "share": float(row[c] / total) if total else 0.0} for c in classes
        }
    return out


def split_only_classes(labels: pd.Series, splits: pd.Series) -> dict[str, list[str]]:
    """Classes found in some splits but not all, with the splits they are in (empty with a single split)."""
    table = pd.crosstab(labels, splits) > 0
    partial = table[~table.all(axis=1)]
    return {str(c): sorted(str(s) for s in row.index[row]) for c, row in partial.iterrows()}


def compare_with_baseline(current: pd.Series, previous: pd.Series, run_name: str) -> dict[str, Any]:
    """Per-class deltas and a chi-square test of homogeneity of the two label distributions.

    The 2 x k contingency table holds the counts of this run and the baseline for every class either run has
    (``scipy.stats.chi2_contingency``, Yates' correction only when k = 2 as scipy does by default). With
    large datasets tiny shifts become significant, so Cramér's V is reported beside the p-value as the size of
    the shift (0: none, 1: the runs share no class).
    """
    classes = sorted(set(current.index[current > 0]) | set(previous.index[previous > 0]))
    now = current.reindex(classes, fill_value=0)
    before = previous.reindex(classes, fill_value=0)
    share_now = now / now.sum() if now.sum() else now.astype(float)
    share_before = before / before.sum() if before.sum() else before.astype(float)
    delta = share_now - share_before
    deltas = {
        c: {
            "count": int(now[c]),
            "previous_count": int(before[c]),
            "count_delta": int(now[c] - before[c]),
            "share": float(share_now[c]),
            "previous_share": float(share_before[c]),
            "share_delta": float(delta[c]),
        }
        for c in classes
    }
    out: dict[str, Any] = {
        "run_name": run_name,
        "deltas": deltas,
        "new_classes": sorted(c for c in classes if before[c] == 0),
        "vanished_classes": sorted(c for c in classes if now[c] == 0),
        "chi2": None,
        "p_value": None,
        "dof": None,
        "cramers_v": None,
        "max_share_shift": float(delta.abs().max()) if classes else None,
        "max_share_shift_class": str(delta.abs().idxmax()) if classes else None,
    }
    if len(classes) >= 2 and now.sum() and before.sum():
        table = np.vstack([now.to_numpy(), before.to_numpy()])
        test = chi2_contingency(table)
        out.update(
            chi2=float(test.statistic),
            p_value=float(test.pvalue),
            dof=int(test.dof),
            cramers_v=float(association(table, method="cramer")),
        )
    else:
        out["chi2_note"] = "a chi-square test needs two classes and labelled samples in both runs"
    return out
