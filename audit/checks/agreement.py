"""Inter-annotator agreement and a quality-weighted consensus label, for images labelled by several people.

Low agreement on a class means its definition is unclear to people, which no model can fix; the consensus
label (cleanlab's CROWDLAB, which weighs each annotator by estimated quality and a classifier's out-of-sample
probabilities) is what the ``mistakes`` check audits instead of a single annotator's label.

Definitions
-----------
- ``n_items``: samples with two or more annotations (only those say anything about agreement).
- ``percent_agreement``: mean over those items of the share of agreeing rater pairs,
  ``sum_j n_ij (n_ij - 1) / (n_i (n_i - 1))`` (Fleiss' ``P_i``).
- ``cohen_kappa_matrix``: Cohen's kappa for each pair of annotators on the items both labelled (null when they
  share fewer than two items or kappa is undefined, e.g. both always gave the same single class; the diagonal
  is 1 by convention for annotators with two or more labels).
- ``fleiss_kappa``: Fleiss' kappa needs the same number of ratings per item, so it is computed on the items
  with exactly the modal number of ratings (``fleiss_raters_per_item``, the larger on a tie) among the
  ``n_items``; ``fleiss_items`` says how many items that is.
- ``krippendorff_alpha``: nominal Krippendorff's alpha on the annotators x samples matrix with missing ratings
  allowed (samples with fewer than two ratings do not contribute).
- ``per_class`` (one class versus the rest, the standard approach for per-category agreement): ``n_items``
  items (of ``n_items``) where anyone chose the class; ``percent_agreement`` is the *specific* (positive)
  agreement ``sum_i n_ij (n_ij - 1) / sum_i n_ij (n_i - 1)``: given one rater chose the class, the chance
  another rater of the same item did too; ``fleiss_kappa`` on the binarised ratings of the Fleiss items
  (equal to Fleiss' 1971 per-category kappa); ``krippendorff_alpha`` on the binarised ratings.
- ``per_annotator``: ``agreement_with_consensus`` and ``cohen_kappa_with_consensus`` on the annotator's items
  that have two or more annotations (on a single-annotation item the consensus is mostly that very label);
  ``quality`` is cleanlab's annotator quality (null without predicted probabilities).
- Per sample: ``agreement_rate`` is the share of the sample's annotators who gave the consensus label (NaN
  without annotations), cleanlab's ``annotator_agreement``; a sample is "low agreement" when it is below
  ``low_agreement_threshold`` (a single-annotation sample only when the consensus overrules its annotator).

Consensus: cleanlab ``get_label_quality_multiannotator`` (CROWDLAB, ``best_quality``) with
``context.pred_probs`` when given, else with out-of-sample probabilities of a K-fold cross-validated logistic
regression and kNN on the embeddings, trained on the majority-vote labels
(:func:`audit.checks.predictions.cross_validated_pred_probs`, the model the mistakes check uses; the
probabilities are passed on in ``CheckResult.arrays["pred_probs"]`` so that check does not fit it again).
Samples with no usable probabilities (unreadable images) get a uniform prior, so their annotators alone decide.
Without any probabilities, or with a single annotator, the consensus is cleanlab's majority vote and quality is null.

Parameters (``[checks.agreement]``): ``low_agreement_threshold`` (default 0.5), ``folds`` (default 5).
"""

from __future__ import annotations

import warnings
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import pandas as pd

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
from audit.checks.predictions import cross_validated_pred_probs
from audit.declarations import (
    FiftyOneField,
    FiftyOneSpec,
    FiftyOneTag,
    FiftyOneView,
    Ratchet,
    ReportSection,
    Threshold,
    Tile,
    Trend,
)

if TYPE_CHECKING:
    from audit.presentation import SectionInput
    from audit.results import RunResults

DEFAULT_PARAMS: dict[str, Any] = {"low_agreement_threshold": 0.5, "folds": 5}


@register
class AgreementCheck(Check):
    """Agreement statistics between annotators and a consensus label per sample."""

    name: ClassVar[str] = "agreement"
    requires: ClassVar[tuple[Requirement, ...]] = ("annotations",)
    description: ClassVar[str] = (
        "Inter-annotator agreement (percent agreement, Cohen's and Fleiss' kappa, Krippendorff's alpha, "
        "overall and per class) and cleanlab's quality-weighted consensus label with per-annotator quality."
    )
    thresholds: ClassVar[tuple[Threshold, ...]] = (
        Threshold("min_krippendorff_alpha", "checks.agreement.krippendorff_alpha", ">=", "coefficient",
                  "Krippendorff's alpha", "inter-annotator agreement over all items"),
        Threshold("min_fleiss_kappa", "checks.agreement.fleiss_kappa", ">=", "coefficient", "Fleiss' kappa",
                  "inter-annotator agreement over all items"),
        Threshold("min_class_krippendorff_alpha", "checks.agreement.per_class.{key}.krippendorff_alpha", ">=",
                  "coefficient", "Krippendorff's alpha of class {key}", "the same per class (one versus the rest)",
                  keys_from="class_names"),
        Threshold("min_class_fleiss_kappa", "checks.agreement.per_class.{key}.fleiss_kappa", ">=", "coefficient",
                  "Fleiss' kappa of class {key}", "the same per class (one versus the rest)",
                  keys_from="class_names"),
        Threshold("min_annotator_quality", "checks.agreement.per_annotator.{key}.quality", ">=", "rate",
                  "quality of annotator {key}", "every annotator's cleanlab quality score (one rule per annotator)"),
    )
    ratchets: ClassVar[tuple[Ratchet, ...]] = (
        Ratchet("krippendorff_alpha", "checks.agreement.krippendorff_alpha", higher_is_better=True),
        Ratchet("fleiss_kappa", "checks.agreement.fleiss_kappa", higher_is_better=True),
        Ratchet("min_annotator_quality", "checks.agreement.per_annotator.*.quality", higher_is_better=True,
                reduce="min"),
    )
    trends: ClassVar[tuple[Trend, ...]] = (
        Trend("Krippendorff's alpha", "checks.agreement.krippendorff_alpha"),
        Trend("Annotator quality", "checks.agreement.per_annotator.{key}.quality"),
    )
    report_sections: ClassVar[tuple[ReportSection, ...]] = (
        ReportSection("agreement", "Agreement", "_agreement.html.j2", lambda si: agreement_section(si), 50),
    )
    fiftyone: ClassVar[FiftyOneSpec] = FiftyOneSpec(
        fields=(
            FiftyOneField("label_audit_consensus", "classification",
                          "annotators' consensus label, with its cleanlab consensus quality",
                          lambda run: _classifications(run, "agreement_consensus_label",
                                                       "agreement_consensus_quality")),
            FiftyOneField("label_audit_agreement", "float",
                          "share of this sample's annotators agreeing with the consensus",
                          lambda run: _floats(run, "agreement_rate")),
            FiftyOneField("label_audit_low_agreement", "bool", "annotators agree too little on this sample",
                          lambda run: low_agreement_mask(run).tolist() if "agreement_rate" in run.samples
                          else [None] * len(run.samples)),
        ),
        tags=(FiftyOneTag("low_agreement", lambda run: low_agreement_mask(run)),),
        views=(FiftyOneView("la-low-agreement", "Samples the annotators disagree on, least agreement first",
                            lambda dataset, F: dataset.match(F("label_audit_low_agreement") == True)  # noqa: E712
                            .sort_by("label_audit_agreement"),
                            applies=lambda run: "agreement_rate" in run.samples.columns),),
    )

    @classmethod
    def summary_line(cls, metrics: dict[str, Any]) -> str:
        if "skipped" in metrics:
            return f"skipped: {metrics['skipped']}"
        alpha = metrics.get("krippendorff_alpha")
        return (f"{metrics['n_annotators']} annotators, {metrics['n_items']:,} items labelled by two or more, "
                f"Krippendorff's alpha {'n/a' if alpha is None else f'{alpha:.3f}'}")

    @classmethod
    def tiles(cls, state: dict[str, Any]) -> list[Tile]:
        from audit.presentation import format_float, format_number, format_percent

        if state["status"] != "ok":
            return [Tile("Annotator agreement", "—", state["reason"])]
        m = state["metrics"]
        return [Tile("Annotator agreement", f"α = {format_float(m.get('krippendorff_alpha'))}",
                     f"Fleiss κ {format_float(m.get('fleiss_kappa'))} · {format_percent(m.get('percent_agreement'))} "
                     f"raw, {format_number(m.get('n_annotators'))} annotators")]

    def run(self, context: CheckContext) -> CheckResult:
        params = _merge_params(context.params)
        annotators, wide = annotation_matrix(context)
        k = len(context.class_names)
        if wide.notna().sum().sum() == 0:
            empty = pd.DataFrame(index=context.samples.index)
            return CheckResult(self.name, empty, {"skipped": "no annotator labels"})
        counts = vote_counts(wide, k)
        n_ratings = counts.sum(axis=1)
        multi = n_ratings >= 2
        active = [a for a in annotators if wide[a].notna().any()]
        null_reasons: dict[str, str] = {}
        if len(active) < 2:
            null_reasons["agreement"] = "only one annotator labelled any sample; agreement needs two"
        elif not multi.any():
            null_reasons["agreement"] = "no sample has two or more annotations"

        consensus = ConsensusResult.compute(context, wide[active], n_ratings, params["folds"])
        if consensus.quality_reason:
            null_reasons["quality"] = consensus.quality_reason
        agreeing = wide.eq(consensus.labels, axis=0).sum(axis=1).to_numpy()
        with np.errstate(invalid="ignore", divide="ignore"):
            rate = np.where(n_ratings > 0, agreeing / n_ratings, np.nan)

        fleiss, fleiss_raters, fleiss_rows = fleiss_on_modal_items(wide, n_ratings, k)
        threshold = params["low_agreement_threshold"]
        metrics: dict[str, Any] = {
            "n_annotators": len(annotators),
            "annotators": annotators,
            "n_annotations": int(n_ratings.sum()),
            "n_items": int(multi.sum()),
            "n_single_annotation": int((n_ratings == 1).sum()),
            "n_unannotated": int((n_ratings == 0).sum()),
            "percent_agreement": percent_agreement(counts),
            "cohen_kappa_matrix": cohen_kappa_matrix(wide, k),
            "mean_cohen_kappa": None,
            "fleiss_kappa": fleiss,
            "fleiss_items": int(fleiss_rows.sum()),
            "fleiss_raters_per_item": fleiss_raters,
            "krippendorff_alpha": krippendorff_alpha(wide.to_numpy().T, list(range(k))),
            "per_class": per_class_agreement(wide, counts, fleiss_rows, context.class_names),
            "per_annotator": per_annotator_agreement(wide, consensus, multi, k),
            "consensus_method": consensus.method,
            "pred_probs_source": consensus.pred_probs_source,
            "mean_consensus_quality": _mean_or_none(consensus.quality),
            "low_agreement_threshold": threshold,
            "n_low_agreement": int((rate < threshold).sum()),
            "null_reasons": null_reasons,
        }
        pairs = np.array(metrics["cohen_kappa_matrix"]["matrix"], dtype=float)
        metrics["mean_cohen_kappa"] = _mean_or_none(pairs[np.triu_indices(len(annotators), k=1)])

        names = np.array(context.class_names, dtype=object)
        labels = consensus.labels.to_numpy()
        per_sample = pd.DataFrame(
            {
                "agreement_consensus_label": pd.Series(
                    np.where(np.isnan(labels), None, names[np.nan_to_num(labels).astype(int)]), index=wide.index,
                    dtype=object,
                ),
                "agreement_consensus_quality": consensus.quality.astype(float),
                "agreement_n_annotations": n_ratings.astype(np.int64),
                "agreement_rate": rate.astype(float),
            },
            index=context.samples.index,
        )
        arrays = {} if consensus.cv_pred_probs is None else {"pred_probs": consensus.cv_pred_probs}
        return CheckResult(self.name, per_sample, json_safe(metrics), arrays=arrays)


def _merge_params(params: dict[str, Any]) -> dict[str, Any]:
    merged = merge_params("agreement", params, DEFAULT_PARAMS)
    threshold, folds = merged["low_agreement_threshold"], merged["folds"]
    if not isinstance(threshold, int | float) or not 0 <= threshold <= 1:
        raise CheckInputError(f"checks.agreement.low_agreement_threshold must be in [0, 1]: {threshold!r}")
    if not isinstance(folds, int) or folds < 2:
        raise CheckInputError(f"checks.agreement.folds must be an integer >= 2, got {folds!r}")
    return merged


def annotation_matrix(context: CheckContext) -> tuple[list[str], pd.DataFrame]:
    """Validate the long annotation table and pivot it to samples x annotators of class codes (NaN: missing).

    Annotators whose every label is missing stay as all-NaN columns, so they are reported rather than lost.
    """
    table = context.annotations
    missing = [c for c in ("sample_id", "annotator", "label") if table is None or c not in table.columns]
    if missing:
        raise CheckInputError(f"annotations need columns sample_id, annotator, label; missing {missing}")
    table = table[["sample_id", "annotator", "label"]].astype({"sample_id": str, "annotator": str})
    # Row of each annotation's sample by one hash lookup (``Series.isin`` on pandas' Arrow strings converts every
    # value to a Python object first: 20 s at a million samples).
    rows = context.samples.index.get_indexer(table["sample_id"])
    unknown = table.loc[rows < 0, "sample_id"]
    if len(unknown):
        raise CheckInputError(
            f"{len(unknown)} annotation(s) name samples not in the dataset, e.g. {sorted(set(unknown))[:3]}"
        )
    twice = table.duplicated(["sample_id", "annotator"])
    if twice.any():
        row = table[twice].iloc[0]
        raise CheckInputError(f"annotator {row.annotator!r} labels sample {row.sample_id!r} more than once")
    annotators = sorted(table["annotator"].unique())
    labelled = table["label"].notna().to_numpy()
    labels = table.loc[labelled, "label"].astype(str)
    codes = {name: i for i, name in enumerate(context.class_names)}
    strange = sorted(set(labels.unique()) - set(codes))
    if strange:
        raise CheckInputError(
            f"annotators used label(s) {strange[:5]} that are not in class_names {context.class_names[:10]}"
        )
    # Samples x annotators filled in place (a pivot and reindex of the long table cost several copies of it).
    values = np.full((len(context.samples), len(annotators)), np.nan)
    columns = pd.Index(annotators).get_indexer(table.loc[labelled, "annotator"])
    values[rows[labelled], columns] = labels.map(codes).to_numpy(dtype=float)
    return annotators, pd.DataFrame(values, index=context.samples.index, columns=annotators)


def vote_counts(wide: pd.DataFrame, k: int) -> np.ndarray:
    """``(n_samples, k)`` number of annotators choosing each class."""
    values = wide.to_numpy()
    rated = np.isfinite(values)
    cells = np.nonzero(rated)[0] * k + values[rated].astype(np.int64)  # one pass, whatever the number of classes
    return np.bincount(cells, minlength=len(values) * k).reshape(len(values), k)


def percent_agreement(counts: np.ndarray) -> float | None:
    """Mean share of agreeing rater pairs over samples with two or more ratings (None when there are none)."""
    n = counts.sum(axis=1)
    keep = n >= 2
    if not keep.any():
        return None
    agreeing_pairs = (counts[keep] * (counts[keep] - 1)).sum(axis=1)
    return float(np.mean(agreeing_pairs / (n[keep] * (n[keep] - 1))))


def _defined(value: float) -> float | None:
    return float(value) if value is not None and np.isfinite(value) else None


def _mean_or_none(values: Any) -> float | None:
    values = np.asarray(values, dtype=float)
    values = values[np.isfinite(values)]
    return float(values.mean()) if values.size else None


def cohen_kappa(a: pd.Series, b: pd.Series, k: int) -> float | None:
    """Cohen's kappa on the items both raters labelled; None below two such items or when undefined."""
    from sklearn.metrics import cohen_kappa_score

    if not a.index.equals(b.index):
        a, b = a.align(b, join="outer")
    # Plain arrays: scikit-learn's input checks probe a Series for attributes, and each probe searches its index
    # (0.1 s per probe on a million string ids).
    x, y = a.to_numpy(dtype=float), b.to_numpy(dtype=float)
    both = np.isfinite(x) & np.isfinite(y)
    if both.sum() < 2:
        return None
    with warnings.catch_warnings(), np.errstate(invalid="ignore", divide="ignore"):
        warnings.simplefilter("ignore")
        first, second = x[both].astype(int), y[both].astype(int)
        value = cohen_kappa_score(first, second, labels=list(range(k)))
    return _defined(value)


def cohen_kappa_matrix(wide: pd.DataFrame, k: int) -> dict[str, Any]:
    """Symmetric pairwise Cohen's kappa, annotators in sorted order."""
    names = list(wide.columns)
    matrix: list[list[float | None]] = [[None] * len(names) for _ in names]
    for i, a in enumerate(names):
        matrix[i][i] = 1.0 if wide[a].notna().sum() >= 2 else None
        for j in range(i + 1, len(names)):
            matrix[i][j] = matrix[j][i] = cohen_kappa(wide[a], wide[names[j]], k)
    return {"annotators": names, "matrix": matrix}


def fleiss_on_modal_items(
    wide: pd.DataFrame, n_ratings: np.ndarray, k: int
) -> tuple[float | None, int | None, np.ndarray]:
    """Fleiss' kappa on the samples with the modal number (>= 2) of ratings.

    Returns the kappa (None when undefined), that number of raters, and the boolean mask of samples used.
    """
    from statsmodels.stats.inter_rater import aggregate_raters, fleiss_kappa

    multi = n_ratings[n_ratings >= 2]
    if not multi.size:
        return None, None, np.zeros(len(wide), dtype=bool)
    sizes, frequency = np.unique(multi, return_counts=True)
    raters = int(sizes[frequency == frequency.max()].max())
    rows = n_ratings == raters
    chosen = wide.to_numpy()[rows]
    ratings = chosen[~np.isnan(chosen)].astype(int).reshape(-1, raters)  # each row's ratings, in column order
    table, _ = aggregate_raters(ratings, n_cat=k)
    return _fleiss(table, fleiss_kappa), raters, rows


def _fleiss(table: np.ndarray, fleiss_kappa) -> float | None:
    with warnings.catch_warnings(), np.errstate(invalid="ignore", divide="ignore"):
        warnings.simplefilter("ignore")
        return _defined(fleiss_kappa(table, method="fleiss"))


def krippendorff_alpha(reliability: np.ndarray, domain: list[int]) -> float | None:
    """Nominal alpha of a raters x units matrix (NaN: missing); None when no unit is pairable or undefined."""
    import krippendorff

    if (np.isfinite(reliability).sum(axis=0) >= 2).sum() == 0 or len(domain) < 2:
        return None
    with warnings.catch_warnings(), np.errstate(invalid="ignore", divide="ignore"):
        warnings.simplefilter("ignore")
        value = krippendorff.alpha(reliability_data=reliability, level_of_measurement="nominal",
                                   value_domain=domain)
    return _defined(value)


def binary_alpha_from_counts(in_class: np.ndarray, ratings: np.ndarray) -> float | None:
    """Nominal Krippendorff's alpha of one class versus the rest, from each unit's number of ratings ``ratings``
    and how many of them chose the class ``in_class``; the same value :func:`krippendorff_alpha` gives on the
    binarised ratings (``tests/checks/test_agreement.py`` checks it), in one pass instead of a coincidence
    matrix per class.

    With ``a``/``b`` a pairable unit's ratings in/out of the class (``m = a + b >= 2``) and ``n_1``, ``n_0``, ``n``
    the totals over pairable units: ``alpha = 1 - (n - 1) * sum(a b / (m - 1)) / (n_1 n_0)`` (observed over
    expected disagreement); None when no unit is pairable or only one of the two values occurs.
    """
    pairable = ratings >= 2
    a = in_class[pairable].astype(float)
    m = ratings[pairable].astype(float)
    b = m - a
    n_1, n_0 = a.sum(), b.sum()
    if not pairable.any() or n_1 == 0 or n_0 == 0:
        return None
    return _defined(1.0 - (n_1 + n_0 - 1.0) * float((a * b / (m - 1.0)).sum()) / (n_1 * n_0))


def per_class_agreement(wide: pd.DataFrame, counts: np.ndarray, fleiss_rows: np.ndarray,
                        class_names: list[str]) -> dict[str, dict[str, Any]]:
    """One-versus-rest agreement per class (see the module docstring for the definitions)."""
    from statsmodels.stats.inter_rater import fleiss_kappa

    n = counts.sum(axis=1)
    multi = n >= 2
    raters = int(n[fleiss_rows][0]) if fleiss_rows.any() else 0
    out = {}
    for j, name in enumerate(class_names):
        c = counts[multi, j]
        pairs_with_class = (c * (n[multi] - 1)).sum()
        fleiss_table = np.stack([counts[fleiss_rows, j], raters - counts[fleiss_rows, j]], axis=1)
        out[name] = {
            "n_items": int((c > 0).sum()),
            "percent_agreement": float((c * (c - 1)).sum() / pairs_with_class) if pairs_with_class else None,
            "fleiss_kappa": _fleiss(fleiss_table, fleiss_kappa) if fleiss_rows.any() else None,
            "krippendorff_alpha": binary_alpha_from_counts(counts[:, j], n),
        }
    return out


def per_annotator_agreement(wide: pd.DataFrame, consensus: ConsensusResult, multi: np.ndarray,
                            k: int) -> dict[str, dict[str, Any]]:
    """Each annotator against the consensus on their multi-annotated samples, plus cleanlab's quality."""
    out = {}
    for name in wide.columns:
        own = wide[name]
        shared = own.notna().to_numpy() & multi
        agree = own[shared] == consensus.labels[shared]
        out[name] = {
            "n_labels": int(own.notna().sum()),
            "n_shared_items": int(shared.sum()),
            "agreement_with_consensus": float(agree.mean()) if shared.any() else None,
            "cohen_kappa_with_consensus": cohen_kappa(own[shared], consensus.labels[shared], k),
            "quality": consensus.annotator_quality.get(name),
        }
    return out


class ConsensusResult:
    """Consensus class code per sample (NaN: no annotation), its quality and each annotator's quality."""

    def __init__(self, labels: pd.Series, quality: pd.Series, annotator_quality: dict[str, float | None],
                 method: str, pred_probs_source: str | None, quality_reason: str | None,
                 cv_pred_probs: np.ndarray | None = None) -> None:
        self.labels = labels
        self.quality = quality
        self.annotator_quality = annotator_quality
        self.method = method
        self.pred_probs_source = pred_probs_source
        self.quality_reason = quality_reason
        self.cv_pred_probs = cv_pred_probs  # out-of-sample probs fitted here (NaN rows: not fitted), for reuse

    @classmethod
    def compute(cls, context: CheckContext, wide: pd.DataFrame, n_ratings: np.ndarray,
                folds: int) -> ConsensusResult:
        """CROWDLAB consensus when there are probabilities and overlapping annotators, else majority vote."""
        from cleanlab.multiannotator import get_label_quality_multiannotator, get_majority_vote_label

        annotated = n_ratings > 0
        labels_multi = wide[annotated]
        index = wide.index
        majority = _seeded(context.seed, get_majority_vote_label, labels_multi.to_numpy(), verbose=False)
        labels = pd.Series(np.nan, index=index)
        labels.loc[annotated] = majority.astype(float)
        quality = pd.Series(np.nan, index=index)
        nobody = dict.fromkeys(wide.columns)

        if wide.shape[1] < 2 or not (n_ratings >= 2).any():
            reason = "cleanlab's consensus quality needs two annotators who labelled a common sample"
            return cls(labels, quality, nobody, "majority vote", None, reason)
        probs, source, reason, fitted = consensus_pred_probs(context, labels, annotated, folds)
        if probs is None:
            return cls(labels, quality, nobody, "majority vote", None, reason)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            result = _seeded(context.seed, get_label_quality_multiannotator, labels_multi, probs[annotated],
                             verbose=False, return_detailed_quality=False)
        table = result["label_quality"]
        labels.loc[annotated] = table["consensus_label"].to_numpy().astype(float)
        quality.loc[annotated] = table["consensus_quality_score"].to_numpy().astype(float)
        stats = result["annotator_stats"]["annotator_quality"]
        annotator_quality = {name: _defined(stats[name]) for name in wide.columns}
        cv_probs = None if fitted is None else np.where(fitted[:, None], probs, np.nan)
        return cls(labels, quality, annotator_quality, "cleanlab crowdlab (best_quality)", source, None, cv_probs)


def _seeded(seed: int, function, *args, **kwargs):
    """Run a cleanlab function whose ties are broken with numpy's global RNG, reproducibly and without side
    effects on the caller's random state."""
    state = np.random.get_state()
    np.random.seed(seed)
    try:
        return function(*args, **kwargs)
    finally:
        np.random.set_state(state)


def consensus_pred_probs(context: CheckContext, majority: pd.Series, annotated: np.ndarray,
                         folds: int) -> tuple[np.ndarray | None, str | None, str | None, np.ndarray | None]:
    """Out-of-sample class probabilities for CROWDLAB: the user's, else cross-validated on the embeddings.

    Returns ``(probs, source, reason, fitted)``; ``fitted`` marks the rows cross-validated here (None for the
    user's probabilities); rows without usable probabilities (unreadable images) are uniform.
    ``probs`` is None, with the reason, when neither input exists or a classifier cannot be trained.
    """
    n, k = len(context.samples), len(context.class_names)
    uniform = np.full((n, k), 1.0 / k)
    if context.pred_probs is not None:
        probs = np.asarray(context.pred_probs, dtype=float)
        if probs.shape != (n, k):
            raise CheckInputError(f"pred_probs has shape {probs.shape}; expected (samples, classes) {(n, k)}")
        usable = np.isfinite(probs).all(axis=1)
        return np.where(usable[:, None], probs, uniform), "user-supplied pred_probs", None, None
    if context.embeddings is None:
        return None, None, "no embeddings or pred_probs to weigh annotators by; consensus is majority vote", None
    embeddings = np.asarray(context.embeddings, dtype=np.float32)  # float64 would be 4 GB per copy at a million
    samples = context.samples
    readable = samples["readable"].to_numpy(bool) if "readable" in samples else np.ones(n, bool)
    train = readable & annotated & np.isfinite(embeddings).all(axis=1)
    targets = majority.to_numpy().copy()
    targets[~train] = -1
    counts = np.bincount(targets[train].astype(int), minlength=k)
    train &= np.isin(targets, np.flatnonzero(counts >= 2))  # a single-sample class cannot be cross-validated
    if len(np.unique(targets[train])) < 2:
        return None, None, "too few annotated readable samples to cross-validate a classifier on embeddings", None
    probs = uniform.copy()
    # No refit here: CROWDLAB weighs the model against the annotators, and a model refitted without the samples its
    # first fit doubted is confident enough to outvote them. On the gate's noisy demo (30% wrong labels shared by
    # the annotators) the consensus then followed the model everywhere and the audit of it found nothing (0 issues,
    # against 8.5% with one fit); see test_real_mislabel_rules_pass_on_little_noise_and_fail_on_much (test_gate).
    chosen = embeddings if train.all() else embeddings[train]  # no copy of a million rows when all train
    probs[train], _, source, _ = cross_validated_pred_probs(chosen, targets[train].astype(int), k, folds,
                                                            seed=context.seed, refit=False)
    return probs, source + " (majority-vote targets)", None, train


# ------------------------------------------------------------------------------------- report and FiftyOne

DEFAULT_LOW_AGREEMENT = DEFAULT_PARAMS["low_agreement_threshold"]


def low_agreement_mask(run: RunResults) -> np.ndarray:
    """Samples whose annotators agree too little, as this check counts them (``n_low_agreement``): an agreement
    rate below its ``low_agreement_threshold``."""
    samples = run.samples
    if "agreement_rate" not in samples.columns:
        return np.zeros(len(samples), dtype=bool)
    metrics = run.check_metrics("agreement") or {}
    threshold = float(metrics.get("low_agreement_threshold", DEFAULT_LOW_AGREEMENT))
    rate = pd.to_numeric(samples["agreement_rate"], errors="coerce").to_numpy(dtype=float)
    return np.isfinite(rate) & (rate < threshold)


def _floats(run: RunResults, column: str) -> list[float | None]:
    if column not in run.samples.columns:
        return [None] * len(run.samples)
    values = pd.to_numeric(run.samples[column], errors="coerce").to_numpy(dtype=float)
    return [float(v) if np.isfinite(v) else None for v in values]


def _classifications(run: RunResults, label: str, confidence: str) -> list[tuple[str, float | None] | None]:
    samples = run.samples
    if label not in samples.columns:
        return [None] * len(samples)
    confidences = _floats(run, confidence)
    return [None if lab is None or (isinstance(lab, float) and np.isnan(lab)) else (str(lab), conf)
            for lab, conf in zip(samples[label].tolist(), confidences, strict=True)]


def kappa_figure(run: RunResults) -> Any:
    """Pairwise Cohen's kappa between annotators (blank where a pair shares too few images)."""
    import plotly.graph_objects as go

    from audit.presentation import has_check, layout, plot_text

    if not has_check(run, "agreement"):
        return None
    kappa = run.check_metrics("agreement").get("cohen_kappa_matrix") or {}
    names = kappa.get("annotators") or []
    matrix = kappa.get("matrix")
    if len(names) < 2 or not matrix:
        return None
    z = np.array([[np.nan if v is None else float(v) for v in row] for row in matrix])
    labels = [plot_text(n) for n in names]
    figure = go.Figure(go.Heatmap(
        z=z, x=labels, y=labels, zmin=0, zmax=1, colorscale="RdYlGn", texttemplate="%{z:.2f}",
        hoverongaps=False, colorbar={"title": {"text": "κ"}},
        hovertemplate="%{y} × %{x}: κ = %{z:.3f}<extra></extra>",
    ))
    side = min(560, 180 + 48 * len(labels))
    figure.update_layout(**layout(
        height=side, width=side + 140, xaxis={"type": "category"},
        yaxis={"type": "category", "autorange": "reversed"},
    ))
    return figure


def annotator_quality_figure(run: RunResults) -> Any:
    """Each annotator's agreement with the consensus and cleanlab quality score, side by side."""
    import plotly.graph_objects as go

    from audit.presentation import has_check, layout, plot_text

    if not has_check(run, "agreement"):
        return None
    per_annotator = run.check_metrics("agreement").get("per_annotator") or {}
    if not per_annotator:
        return None
    table = pd.DataFrame(per_annotator).T
    names = [plot_text(n) for n in table.index]
    figure = go.Figure()
    for column, title, colour in (("agreement_with_consensus", "agreement with consensus", "#4477AA"),
                                  ("quality", "annotator quality (cleanlab)", "#228833")):
        if column in table:
            figure.add_bar(x=names, y=pd.to_numeric(table[column], errors="coerce"), name=title,
                           marker_color=colour, hovertemplate="%{x}: %{y:.3f}<extra>" + title + "</extra>")
    figure.update_layout(**layout(height=300, barmode="group", yaxis={"range": [0, 1]},
                                  xaxis={"type": "category", "title": "annotator"},
                                  legend={"orientation": "h", "y": 1.15, "x": 0}))
    return figure


def agreement_section(si: SectionInput) -> dict[str, Any]:
    """Agreement figures and per-annotator / per-class tables (with the mistakes check's per-annotator counts)."""
    from audit.presentation import check_state, figure_json

    run = si.run
    metrics = si.state["metrics"]
    per_class = [{"name": c, **v} for c, v in sorted((metrics.get("per_class") or {}).items())]
    annotator_mistakes = check_state(run, "mistakes")["metrics"].get("annotator_mistakes") or {}
    per_annotator = []
    for name, values in sorted((metrics.get("per_annotator") or {}).items()):
        flagged = annotator_mistakes.get(name) or {}
        per_annotator.append({"name": name, **values, "n_mistakes": flagged.get("n_mistakes"),
                              "mistake_rate": flagged.get("rate")})
    low = metrics.get("n_low_agreement")
    threshold = metrics.get("low_agreement_threshold")
    if low is None and threshold is not None and "agreement_rate" in run.samples:
        low = int((run.samples["agreement_rate"] < float(threshold)).sum())
    return {
        "state": si.state,
        "metrics": metrics,
        "kappa_figure": figure_json(kappa_figure(run)),
        "quality_figure": figure_json(annotator_quality_figure(run)),
        "per_class": per_class,
        "per_annotator": per_annotator,
        "n_low_agreement": low,
    }
