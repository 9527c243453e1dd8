"""What reviewers said about the audit's flags, and what that tells about the audit and about the annotators.

Runs when the run has a review ledger (``requires = ("ledger",)``: the ledger carried forward from the previous
run of the dataset, see :mod:`audit.review` and ``label-audit review``). It measures the audit itself and turns
the verdicts into feedback for the people who label.

Metrics (``checks.review`` in ``summary.json``)
-----------------------------------------------
``verdicts``
    Counts over the whole ledger: ``correct`` (the given label is right), ``wrong``, ``unsure``, ``pending``
    (exported, not answered yet); ``n_corrected`` wrong items that came with a better label; ``n_current`` image
    verdicts that still hold in this run (same image content and label), ``n_outdated`` image verdicts about
    items that changed or left the dataset since.
``precision_at_k``
    :func:`audit.review.precision_at_k` over the ledger's queued suspects (``k`` = parameter ``k``, default every
    one): of those with a decisive verdict, the share reviewers found wrong, with its Wilson interval. A
    verdict measures the flag it was about, so this counts the whole history the ledger carries.
``error_rate``
    :func:`audit.review.estimate_error_rate`: the estimated share of wrong labels among the run's labelled
    images with its interval, stratified into flagged and unflagged images. "Flagged" is the audit's flag
    *before* reviewers' verdicts were applied (``mistakes_is_issue`` or ``mistakes_unflagged_by_review``): an
    item a reviewer confirmed correct is no longer flagged, but it was drawn from the flagged stratum and its
    verdict belongs there; counting it as unflagged would leave only wrong items in the reviewed flags.
    ``complete`` is false until a random audit sample of the unflagged images has been reviewed; the figures
    then cover the flagged part only (a lower bound).
``annotators``
    Per annotator (when the run has per-annotator labels): ``n_labels``; ``n_judged`` the labels on images
    where a belief exists; ``n_overturned`` those that differ from it, split into ``n_overturned_by_review``
    (a reviewer's current verdict decides: the given label when confirmed correct, the corrected label when
    wrong; a label a reviewer called wrong without a better one overturns exactly that label) and
    ``n_overturned_by_consensus`` (no decisive review: what the audit believes, i.e. the annotators' consensus,
    replaced by the model's suggestion where the audit flags the consensus as a likely mistake; without the
    mistakes check, the consensus alone); ``overturn_rate`` = ``n_overturned / n_judged``; ``confusion``
    ``{their label: {believed label: n}}`` over the judged labels with a known believed label (diagonal
    included).

Gate thresholds
---------------
``max_estimated_error_rate`` reads the **upper end** of the error-rate interval: the gate passes only when the
reviews show, at the interval's confidence, that the dataset's share of wrong labels is below the threshold
(the point estimate would pass a dataset half the time when its true rate sits at the threshold). The upper end
narrows as more of the random audit sample is reviewed. An incomplete estimate (no reviewed audit sample) is
"unavailable": its interval is about the flagged part only, not an upper bound on the whole.
``min_review_precision`` reads the point precision of the reviewed flags: the share of the audit's flags that
reviewers found to be real errors (a low value means reviewers' time goes to false alarms).

Per sample: ``review_verdict`` and ``review_corrected_label``, the current verdict about the image (None when
nobody reviewed it, or when it changed since).

Parameters (``[checks.review]``): ``k`` (precision at k; default None: every queued suspect), ``confidence``
(of the intervals, default 0.95).
"""

from __future__ import annotations

import hashlib
import re
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
from audit.declarations import (
    FiftyOneField,
    FiftyOneSpec,
    FiftyOneView,
    ReportSection,
    Threshold,
    Tile,
    Trend,
    Unavailable,
)

if TYPE_CHECKING:
    from audit.presentation import SectionInput
    from audit.results import RunResults

DEFAULT_PARAMS: dict[str, Any] = {"k": None, "confidence": 0.95}
# FiftyOne: the review queue is tagged TAG_QUEUED and ranked by FIELD_RANK (audit/integrations/fiftyone_review.py);
# the saved view is declared here so that `label-audit fiftyone` keeps it.
TAG_QUEUED = "review:queued"
FIELD_RANK = "label_audit_review_rank"
VIEW_REVIEW = "la-review"
FEEDBACK_DIR = "feedback"


def _error_rate_upper(summary: dict[str, Any], baseline: dict[str, Any] | None) -> float | Unavailable:
    estimate = ((summary.get("checks") or {}).get("review") or {}).get("error_rate") or {}
    if not estimate.get("complete"):
        return Unavailable("the error-rate estimate covers only the flagged images: no random audit sample of the "
                           "unflagged ones has been reviewed yet (`label-audit review export RUN --audit-sample N`)")
    upper = estimate.get("upper")
    if upper is None:
        return Unavailable("the error-rate estimate has no interval (a part of the dataset has no reviews)")
    return float(upper)


@register
class ReviewCheck(Check):
    """Precision of the flags as reviewed, the dataset's estimated error rate, and per-annotator feedback."""

    name: ClassVar[str] = "review"
    requires: ClassVar[tuple[Requirement, ...]] = ("ledger",)
    description: ClassVar[str] = (
        "reviewers' verdicts on the suspects: precision of the flags at k, the estimated share of wrong labels "
        "with a confidence interval, and the labels of each annotator that reviewers or the consensus overturned"
    )
    thresholds: ClassVar[tuple[Threshold, ...]] = (
        Threshold("max_estimated_error_rate", "checks.review.error_rate.upper", "<=", "rate",
                  "estimated wrong-label rate (upper end of its interval)",
                  "estimated share of wrong labels in the whole dataset, upper end of its confidence interval "
                  "(needs reviewed suspects and a reviewed random audit sample)", compute=_error_rate_upper),
        Threshold("min_review_precision", "checks.review.precision_at_k.precision", ">=", "rate",
                  "precision of the reviewed flags", "share of the reviewed suspects that reviewers found wrong"),
    )
    trends: ClassVar[tuple[Trend, ...]] = (
        Trend("Estimated wrong-label rate (reviewed)", "checks.review.error_rate.estimate", percent=True),
        Trend("Review precision of the flags", "checks.review.precision_at_k.precision", percent=True),
        Trend("Labels overturned per annotator", "checks.review.annotators.{key}.overturn_rate", percent=True),
    )
    report_sections: ClassVar[tuple[ReportSection, ...]] = (
        ReportSection("review", "Review", "_review.html.j2", lambda si: review_section(si), 45),
    )
    fiftyone: ClassVar[FiftyOneSpec] = FiftyOneSpec(
        fields=(
            FiftyOneField("label_audit_review_verdict", "string",
                          "reviewer's verdict on the label: correct, wrong or unsure (current verdicts only)",
                          lambda run: _strings(run, "review_verdict")),
            FiftyOneField("label_audit_review_corrected", "string", "the label a reviewer gave instead",
                          lambda run: _strings(run, "review_corrected_label")),
        ),
        views=(FiftyOneView(VIEW_REVIEW, "Review queue: tag each sample review:correct, review:wrong or "
                            "review:unsure (review:fix:<class> gives the right class)",
                            lambda dataset, F: review_view(dataset),
                            applies=lambda run: _exported_to_fiftyone(run)),),
    )

    @classmethod
    def summary_line(cls, metrics: dict[str, Any]) -> str:
        if "skipped" in metrics:
            return f"skipped: {metrics['skipped']}"
        v = metrics["verdicts"]
        precision = metrics["precision_at_k"].get("precision")
        error = metrics["error_rate"]
        text = (f"ledger of {metrics['n_items']:,} items: {v['correct']} correct, {v['wrong']} wrong, "
                f"{v['unsure']} unsure, {v['pending']} pending; precision of the reviewed flags "
                + ("n/a" if precision is None else f"{precision:.1%}"))
        if error.get("estimate") is not None:
            text += (f"; estimated wrong labels {error['estimate']:.1%} [{error['lower']:.1%}, {error['upper']:.1%}]"
                     + ("" if error.get("complete") else " (flagged part only)"))
        return text

    @classmethod
    def tiles(cls, state: dict[str, Any]) -> list[Tile]:
        from audit.presentation import format_percent

        if state["status"] != "ok":
            return []
        m = state["metrics"]
        p, e = m.get("precision_at_k") or {}, m.get("error_rate") or {}
        tiles = [Tile("Review precision", format_percent(p.get("precision")),
                      f"{p.get('n_wrong', 0)} of {p.get('n_reviewed', 0)} reviewed flags were wrong labels",
                      "" if p.get("precision") is None else ("good" if p["precision"] >= 0.5 else "warn"))]
        if e.get("estimate") is not None:
            sub = f"{round(100 * e.get('confidence', 0.95))}% CI {format_percent(e.get('lower'))}–" \
                  f"{format_percent(e.get('upper'))}"
            tiles.append(Tile("Estimated wrong labels", format_percent(e["estimate"]),
                              sub + ("" if e.get("complete") else " · flagged part only (lower bound)"),
                              "" if e.get("complete") else "warn"))
        return tiles

    def run(self, context: CheckContext) -> CheckResult:
        from audit.review import current_image_rows, estimate_error_rate, normalise_ledger, precision_at_k

        params = _params(context.params)
        ledger = normalise_ledger(context.ledger if context.ledger is not None else pd.DataFrame(),
                                  where="review ledger")
        samples = audit_columns(context)
        current = current_image_rows(ledger, samples)
        verdict = current["verdict"].reindex(samples.index)
        corrected = current["corrected_label"].reindex(samples.index).where(verdict == "wrong")
        per_sample = pd.DataFrame({
            "review_verdict": verdict.astype(object).where(verdict.notna(), None),
            "review_corrected_label": corrected.astype(object).where(corrected.notna(), None),
        }, index=samples.index)

        reviewed = ledger[ledger["verdict"].notna()]
        images_reviewed = reviewed[reviewed["item_kind"] == "image"]
        precision = precision_at_k(ledger, params["k"], params["confidence"])
        error_rate = estimate_error_rate(ledger, flagged_before_review(samples), params["confidence"])
        metrics: dict[str, Any] = {
            "n_items": len(ledger),
            "n_images": int((ledger["item_kind"] == "image").sum()),
            "n_objects": int((ledger["item_kind"] == "object").sum()),
            "verdicts": {v: int((ledger["verdict"] == v).sum()) for v in ("correct", "wrong", "unsure")}
            | {"pending": int(ledger["verdict"].isna().sum())},
            "n_corrected": int(((ledger["verdict"] == "wrong") & ledger["corrected_label"].notna()).sum()),
            "n_current": int(current["verdict"].notna().sum()),
            "n_outdated": int(len(images_reviewed) - current["verdict"].notna().sum()),
            "reviewers": {str(k): int(n) for k, n in reviewed["reviewer"].fillna("unknown").value_counts()
                          .sort_index().items()},
            "tools": {str(k): int(n) for k, n in ledger["tool"].fillna("unknown").value_counts().sort_index()
                      .items()},
            "precision_at_k": precision,
            "error_rate": error_rate,
            "null_reasons": {},
        }
        if precision["precision"] is None:
            metrics["null_reasons"]["precision"] = "no queued suspect has a decisive verdict (correct or wrong) yet"
        if context.annotations is not None and len(context.annotations):
            table = feedback_table(context.annotations, believed_labels(samples, ledger))
            metrics["annotators"] = annotator_summary(table)
        return CheckResult(self.name, per_sample, json_safe(metrics))


def _params(given: dict[str, Any]) -> dict[str, Any]:
    params = merge_params("review", given, DEFAULT_PARAMS)
    k = params["k"]
    if k is not None and (isinstance(k, bool) or not isinstance(k, int) or k < 1):
        raise CheckInputError(f"checks.review.k must be a whole number >= 1 (or unset: every suspect), got {k!r}")
    confidence = params["confidence"]
    if isinstance(confidence, bool) or not isinstance(confidence, int | float) or not 0 < confidence < 1:
        raise CheckInputError(f"checks.review.confidence must be between 0 and 1, got {confidence!r}")
    return params


# --------------------------------------------------------------------------------------- beliefs and feedback


def audit_columns(context: CheckContext) -> pd.DataFrame:
    """The samples with the mistakes and agreement checks' columns (from ``context.prior`` when the runner has not
    joined them into ``context.samples``)."""
    samples = context.samples
    for name in ("mistakes", "agreement"):
        prior = context.prior.get(name)
        if prior is None:
            continue
        extra = [c for c in prior.samples.columns if c not in samples.columns]
        if extra:
            samples = samples.join(prior.samples[extra])
    return samples


def flagged_before_review(samples: pd.DataFrame) -> pd.DataFrame:
    """The samples with ``mistakes_is_issue`` as the audit flagged them before reviewers' "correct" verdicts
    un-flagged some (``mistakes_unflagged_by_review``; see the module docstring, ``error_rate``)."""
    if "mistakes_is_issue" not in samples or "mistakes_unflagged_by_review" not in samples:
        return samples
    out = samples.copy()
    out["mistakes_is_issue"] = (samples["mistakes_is_issue"].fillna(False).astype(bool)
                                | samples["mistakes_unflagged_by_review"].fillna(False).astype(bool))
    return out


def _text_series(values: pd.Series) -> pd.Series:
    return values.astype(object).map(lambda v: None if v is None or (isinstance(v, float) and np.isnan(v))
                                     else str(v))


def believed_labels(samples: pd.DataFrame, ledger: pd.DataFrame) -> pd.DataFrame:
    """What is believed about each sample's label, and on whose word.

    Columns: ``believed`` (a class, or None), ``source`` (``"review"``, ``"consensus"`` or None), ``rejected``
    (a label a reviewer called wrong without giving a better one), ``reviewer``. A current decisive review
    wins; otherwise the audit's belief (see the module docstring, ``annotators``).
    """
    from audit.review import current_image_rows

    index = samples.index
    belief = pd.Series(None, index=index, dtype=object)
    if "mistakes_audited_label" in samples:
        audited = _text_series(samples["mistakes_audited_label"])
        flagged = samples["mistakes_is_issue"].fillna(False).astype(bool) if "mistakes_is_issue" in samples else (
            pd.Series(False, index=index))
        suggested = _text_series(samples["mistakes_suggested_label"]) if "mistakes_suggested_label" in samples \
            else audited
        belief = audited.where(~flagged, suggested)
    if "agreement_consensus_label" in samples:
        consensus = _text_series(samples["agreement_consensus_label"])
        belief = belief.where(belief.notna(), consensus)
    out = pd.DataFrame({"believed": belief, "source": np.where(belief.notna(), "consensus", None),
                        "rejected": None, "reviewer": None}, index=index).astype(object)
    current = current_image_rows(ledger, samples)
    for sample_id, row in current[current["verdict"].isin(["correct", "wrong"])].iterrows():
        if row["verdict"] == "correct":
            out.loc[sample_id, ["believed", "rejected"]] = [row["given_label"], None]
        elif row["corrected_label"] is not None:
            out.loc[sample_id, ["believed", "rejected"]] = [row["corrected_label"], None]
        else:
            out.loc[sample_id, ["believed", "rejected"]] = [None, row["given_label"]]
        out.loc[sample_id, ["source", "reviewer"]] = ["review", row["reviewer"]]
    return out


def feedback_table(annotations: pd.DataFrame, beliefs: pd.DataFrame) -> pd.DataFrame:
    """One row per annotator label: ``sample_id, annotator, label, believed, source, rejected, reviewer,
    judged, overturned`` (labels on samples the run does not have are left out)."""
    table = annotations[["sample_id", "annotator", "label"]].copy()
    table = table[table["label"].notna()]
    table = table.astype({"sample_id": str, "annotator": str, "label": str})
    table = table[table["sample_id"].isin(beliefs.index)].reset_index(drop=True)
    joined = beliefs.reindex(table["sample_id"]).reset_index(drop=True)
    table = pd.concat([table, joined], axis=1)
    has_belief = table["believed"].notna()
    has_rejection = table["rejected"].notna()
    table["judged"] = has_belief | has_rejection
    table["overturned"] = (has_belief & (table["label"] != table["believed"])) | (
        has_rejection & (table["label"] == table["rejected"]))
    return table


def annotator_summary(table: pd.DataFrame) -> dict[str, dict[str, Any]]:
    """Per annotator: counts of labels, judged, overturned (by review, by consensus), the rate and the confusion
    matrix against the believed labels (see the module docstring)."""
    out: dict[str, dict[str, Any]] = {}
    for annotator in sorted(table["annotator"].unique()):
        mine = table[table["annotator"] == annotator]
        overturned = mine[mine["overturned"].astype(bool)]
        judged = int(mine["judged"].sum())
        confusion: dict[str, dict[str, int]] = {}
        known = mine[mine["believed"].notna()]
        for (given, believed), n in known.groupby(["label", "believed"]).size().sort_index().items():
            confusion.setdefault(str(given), {})[str(believed)] = int(n)
        out[str(annotator)] = {
            "n_labels": len(mine),
            "n_judged": judged,
            "n_overturned": len(overturned),
            "n_overturned_by_review": int((overturned["source"] == "review").sum()),
            "n_overturned_by_consensus": int((overturned["source"] == "consensus").sum()),
            "overturn_rate": len(overturned) / judged if judged else None,
            "confusion": confusion,
        }
    return out


def annotator_slug(name: str) -> str:
    """A file name and HTML anchor for an annotator: safe characters only, with a short hash of the name when it
    had to be changed (so two names never share a page)."""
    slug = re.sub(r"[^A-Za-z0-9._-]+", "-", str(name)).strip("-.") or "annotator"
    if slug != name:
        slug += "-" + hashlib.sha1(str(name).encode("utf-8")).hexdigest()[:6]
    return slug


# ------------------------------------------------------------------------------------- report and FiftyOne


def _strings(run: RunResults, column: str) -> list[str | None]:
    if column not in run.samples.columns:
        return [None] * len(run.samples)
    return _text_series(run.samples[column]).tolist()


def _exported_to_fiftyone(run: RunResults) -> bool:
    from audit.review import LEDGER_FILE, read_ledger

    if not (run.path / LEDGER_FILE).is_file():
        return False
    return bool((read_ledger(run.path)["tool"] == "fiftyone").any())


def review_view(dataset: Any) -> Any:
    """The review queue in FiftyOne: the samples tagged :data:`TAG_QUEUED`, in queue order."""
    view = dataset.match_tags(TAG_QUEUED)
    return view.sort_by(FIELD_RANK) if FIELD_RANK in dataset.get_field_schema() else view


def review_section(si: SectionInput) -> dict[str, Any] | None:
    """Precision at k, the error-rate estimate, verdict counts and the per-annotator table (anchors per annotator,
    links to their feedback pages when ``label-audit review feedback`` wrote them)."""
    state = si.state
    if state["status"] == "absent":
        return None
    if state["status"] != "ok":
        return {"state": state, "run_path": str(si.run.path)}
    metrics = state["metrics"]
    error = metrics.get("error_rate") or {}
    strata = [{"name": name, **values} for name, values in (error.get("strata") or {}).items()]
    quality = ((si.run.check_metrics("agreement") or {}).get("per_annotator") or {})
    annotators = []
    for name, values in sorted((metrics.get("annotators") or {}).items()):
        slug = annotator_slug(name)
        page = si.run.path / FEEDBACK_DIR / f"{slug}.html"
        confusion = values.get("confusion") or {}
        off = sorted(((given, believed, n) for given, row in confusion.items() for believed, n in row.items()
                      if given != believed), key=lambda t: (-t[2], t[0], t[1]))
        annotators.append({"name": name, "anchor": f"review-annotator-{slug}", **values,
                           "link": f"{FEEDBACK_DIR}/{slug}.html" if page.is_file() else None,
                           "agreement": (quality.get(name) or {}).get("agreement_with_consensus"),
                           "quality": (quality.get(name) or {}).get("quality"),
                           "top_confusions": off[:3]})
    return {"state": state, "metrics": metrics, "precision": metrics.get("precision_at_k") or {}, "error": error,
            "strata": strata, "annotators": annotators, "verdicts": metrics.get("verdicts") or {},
            "run_path": str(si.run.path)}
