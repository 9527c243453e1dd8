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
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import pandas as pd
from scipy.stats import chi2_contingency, entropy
from scipy.stats.contingency import association

from audit.checks.base import (
    Check,
    CheckContext,
    CheckInputError,
    CheckResult,
    Requirement,
    json_safe,
    merge_params,
    register,
)
from audit.declarations import ReportSection, Threshold, Trend, Unavailable, as_number

if TYPE_CHECKING:
    import plotly.graph_objects as go

    from audit.presentation import SectionInput
    from audit.results import RunResults

DEFAULT_PARAMS: dict[str, Any] = {"rare_share": None}


def share_shift(summary: dict[str, Any], baseline: dict[str, Any] | None) -> dict[str, Any] | Unavailable:
    """|share in the run - share in the baseline| per class, a vanished or new class counting with share 0 on the
    side that lacks it; without a baseline, the deltas the distribution check recorded against its own."""
    metrics = summary["checks"]["distribution"]
    if baseline is None:
        recorded = metrics.get("baseline")
        deltas = recorded.get("deltas") if isinstance(recorded, dict) else None
        if not deltas:
            return Unavailable("max_class_share_shift needs a baseline run (pass --baseline PREVIOUS_RUN_DIR or auto)",
                               needs_baseline=True)
        shifts: dict[str, Any] = {}
        for name, delta in deltas.items():
            path = f"checks.distribution.baseline.deltas.{name}.share_delta"
            value = as_number((delta or {}).get("share_delta"), path)
            shifts[name] = value if isinstance(value, Unavailable) else abs(value)
        return shifts
    now = _shares(metrics)
    before_metrics = (baseline.get("checks") or {}).get("distribution")
    name = baseline.get("run_name")
    if not isinstance(before_metrics, dict) or "skipped" in before_metrics:
        return Unavailable(f"baseline {name!r}: the distribution check did not run there")
    before = _shares(before_metrics)
    if isinstance(now, Unavailable):
        return now
    if isinstance(before, Unavailable):
        return Unavailable(f"baseline {name!r}: {before.reason}")
    classes = list(now) + [c for c in before if c not in now]
    return {c: abs(float(now.get(c, 0.0)) - float(before.get(c, 0.0))) for c in classes}


def _shares(metrics: dict[str, Any]) -> dict[str, float] | Unavailable:
    classes = metrics.get("classes")
    if not isinstance(classes, dict) or not classes:
        return Unavailable("checks.distribution.classes is not available")
    shares = {c: (row or {}).get("share") for c, row in classes.items()}
    bad = [c for c, share in shares.items() if isinstance(as_number(share, ""), Unavailable)]
    if bad:
        return Unavailable(f"checks.distribution.classes.{bad[0]}.share is not available")
    return shares


@register
class DistributionCheck(Check):
    """Counts, shares, imbalance and entropy of the labels, per split, and the shift against the baseline."""

    name: ClassVar[str] = "distribution"
    requires: ClassVar[tuple[Requirement, ...]] = ()
    description: ClassVar[str] = (
        "Class counts and shares overall and per split, imbalance ratio, normalised entropy, rare classes, "
        "classes missing from a split, and a chi-square test of the label shift since the baseline run."
    )
    thresholds: ClassVar[tuple[Threshold, ...]] = (
        Threshold("max_class_share_shift", "checks.distribution.classes.{key}.share", "<=", "rate",
                  "share shift of class {key}",
                  "no class's share may move more than this against the baseline (one rule per class; without "
                  "--baseline, the shift the run recorded against its own baseline)", compute=share_shift),
        Threshold("min_samples_per_class", "checks.distribution.classes.{key}.count", ">=", "count",
                  "samples of class {key}", "every class must have at least this many samples (one rule per class)",
                  keys_from="class_names", absent_value=0),
    )
    trends: ClassVar[tuple[Trend, ...]] = (
        Trend("Class shares", "checks.distribution.classes.{key}.share", percent=True),
    )
    report_sections: ClassVar[tuple[ReportSection, ...]] = (
        ReportSection("distribution", "Distribution", "_distribution.html.j2", lambda si: build_section(si), 10),
    )

    @classmethod
    def summary_line(cls, metrics: dict[str, Any]) -> str:
        if "skipped" in metrics:
            return f"skipped: {metrics['skipped']}"
        shift = metrics.get("baseline") or {}
        moved = (f"; largest share shift {shift['max_share_shift']:.1%} ({shift['max_share_shift_class']})"
                 if shift.get("max_share_shift") is not None else "")
        return f"{metrics['n_labelled']:,} labelled samples in {metrics['n_classes']} classes{moved}"

    def run(self, context: CheckContext) -> CheckResult:
        params = _merge_params(context.params)
        samples = context.samples
        labels = samples["label"].astype(object).where(samples["label"].notna(), None)
        labelled = labels.dropna().astype(str)
        splits = samples["split"].astype(str) if "split" in samples else pd.Series("all", index=samples.index)

        if labelled.empty and context.extra.get("objects") is not None:
            return CheckResult(self.name, pd.DataFrame(index=samples.index),
                               {"skipped": "no image has a label of its own (the images carry boxes)"})
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


# ------------------------------------------------------------------------------------------------- report


def label_counts(run: RunResults) -> pd.Series:
    """Samples per class as this check counted them, else from the stored labels."""
    metrics = run.check_metrics("distribution") or {}
    classes = metrics.get("classes") if "skipped" not in metrics else None
    if classes:
        return pd.Series({str(c): int(v["count"]) for c, v in classes.items()}, dtype=int)
    return run.samples["label"].dropna().astype(str).value_counts()


def shift_against(run: RunResults, baseline: RunResults | None) -> dict[str, Any] | None:
    """The label-shift comparison: the check's own when it compared with this baseline, else the same function
    applied to the two runs' stored labels."""
    stored = (run.check_metrics("distribution") or {}).get("baseline")
    if baseline is None:
        return stored if isinstance(stored, dict) else None
    if isinstance(stored, dict) and stored.get("run_name") == baseline.name:
        return stored
    return compare_with_baseline(label_counts(run).sort_index(), label_counts(baseline).sort_index(), baseline.name)


def shift_rows(shift: dict[str, Any] | None) -> list[dict[str, Any]]:
    """Per-class deltas, largest move first."""
    if not shift or not shift.get("deltas"):
        return []
    rows = [{"name": c, **d} for c, d in shift["deltas"].items()]
    rows.sort(key=lambda r: (-abs(r.get("share_delta") or 0.0), r["name"]))
    return rows


def class_counts_by_split(run: RunResults) -> pd.DataFrame:
    """Counts per class (rows) and split (columns): from this check when it ran, else from the labels."""
    from audit.presentation import has_check

    metrics = run.check_metrics("distribution") if has_check(run, "distribution") else None
    per_split = (metrics or {}).get("per_split")
    if per_split:
        table = pd.DataFrame({split: {c: v["count"] for c, v in classes.items()}
                              for split, classes in per_split.items()})
    else:
        samples = run.samples
        labelled = samples[samples["label"].notna()]
        table = pd.crosstab(labelled["label"].astype(str), labelled["split"].astype(str))
    table = table.fillna(0).astype(int)
    table.index = table.index.astype(str)
    return table.sort_index()


def distribution_figure(run: RunResults, previous_counts: pd.Series | None = None,
                        max_classes: int = 60) -> go.Figure | None:
    """Share of each class per split, with the previous run's overall share beside it.

    Shares rather than counts make runs (and splits) of different sizes comparable; the counts are in the hover.
    With more than ``max_classes`` classes, the largest ones are drawn (the report says so).
    """
    import plotly.graph_objects as go

    from audit.presentation import PALETTE, layout, plot_text

    table = class_counts_by_split(run)
    if table.empty:
        return None
    totals = table.sum(axis=1)
    if previous_counts is not None:
        totals = totals.add(previous_counts, fill_value=0)
    classes = list(totals.sort_values(ascending=False).index[:max_classes])
    classes.sort()
    table = table.reindex(classes, fill_value=0)
    x = [plot_text(c) for c in classes]
    figure = go.Figure()
    for i, split in enumerate(table.columns):
        counts = table[split]
        shares = counts / counts.sum() if counts.sum() else counts.astype(float)
        figure.add_bar(
            x=x, y=shares.to_numpy(), customdata=counts.to_numpy(), name=plot_text(f"{split} (this run)"),
            marker_color=PALETTE[i % len(PALETTE)],
            hovertemplate="class %{x}<br>%{y:.1%} of the split<br>%{customdata} samples<extra>%{fullData.name}</extra>",
        )
    if previous_counts is not None and previous_counts.sum() > 0:
        before = previous_counts.reindex(classes, fill_value=0)
        figure.add_bar(
            x=x, y=(before / previous_counts.sum()).to_numpy(), customdata=before.to_numpy(),
            name="previous run (all splits)", marker={"color": "rgba(90,90,90,0.35)",
                                                      "line": {"color": "#555", "width": 1}},
            hovertemplate="class %{x}<br>%{y:.1%} last run<br>%{customdata} samples<extra></extra>",
        )
    figure.update_layout(**layout(
        barmode="group", height=360, yaxis={"title": "share of samples", "tickformat": ".0%"},
        xaxis={"title": "class", "type": "category"}, legend={"orientation": "h", "y": 1.12, "x": 0},
    ))
    return figure


def build_section(si: SectionInput) -> dict[str, Any]:
    """The report's distribution section (shown even when the check did not run: counted from the labels)."""
    from audit.presentation import figure_json

    run, baseline, limits = si.run, si.baseline, si.limits
    metrics = si.state["metrics"]
    shift = shift_against(run, baseline)
    previous = None
    if baseline is not None:
        previous = label_counts(baseline)
    elif shift and shift.get("deltas"):
        previous = pd.Series({c: d["previous_count"] for c, d in shift["deltas"].items()}, dtype=int)
    by_split = class_counts_by_split(run)
    totals = by_split.sum(axis=1)
    share = totals / totals.sum() if totals.sum() else totals.astype(float)
    rows = []
    for name in by_split.index:
        delta = (shift or {}).get("deltas", {}).get(name) or {}
        rows.append({"name": name, "count": int(totals[name]), "share": float(share[name]),
                     "splits": [int(by_split.at[name, s]) for s in by_split.columns],
                     "previous_share": delta.get("previous_share"), "share_delta": delta.get("share_delta"),
                     "rare": name in (metrics.get("rare_classes") or [])})
    return {
        "state": si.state,
        "metrics": metrics,
        "splits": list(by_split.columns),
        "rows": rows,
        "figure": figure_json(distribution_figure(run, previous, limits.distribution_classes)),
        "capped": len(by_split.index) > limits.distribution_classes,
        "shift": shift,
        "shift_rows": shift_rows(shift),
    }
