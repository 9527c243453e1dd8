"""Likely label mistakes: out-of-sample predicted probabilities, then cleanlab's confident learning.

Where the probabilities come from
---------------------------------
* The user's own ``context.pred_probs`` when given (they win over embeddings). They must be out-of-sample
  (cross-validated or from a model that never trained on these images) or every label looks right.
  They are validated, never repaired: a row that does not sum to 1 (tolerance 1e-3), a negative or NaN value,
  or a wrong shape raises :class:`~audit.checks.base.CheckInputError`. label-audit does **not** silently
  renormalise, because rows that do not sum to 1 are usually logits or scores, and renormalising them would
  hide the user's mistake behind plausible-looking numbers.
* Otherwise ``folds``-fold stratified cross-validation on the embeddings of the readable samples: the average of
  a multinomial logistic regression and a distance-weighted k-nearest-neighbour vote (``knn_neighbors``, 0 turns
  it off), fitted twice on the same folds, the second time without the samples the first fit flags
  (:mod:`audit.checks.predictions`). Embeddings are L2-normalised and scaled by ``sqrt(dim)`` (unit mean square
  per coordinate) so that one regularisation strength, ``C = 0.1``, can serve embeddings of any width. A linear
  probe usually suits CLIP vectors and a neighbour vote suits pixels, which is why both are kept;
  ``tests/checks/test_mistakes.py`` checks that the average beats logistic regression alone on real digits.
  The cost by dataset size is measured by ``python -m benchmarks`` (its cross-validation stage); the refit
  fits the model twice, so it doubles that stage.

Which samples are flagged
-------------------------
``filter_by`` names one or more rules whose flags are OR-ed: ``noise_posterior``, ``low_margin_calibrated_count``
or any :func:`cleanlab.filter.find_label_issues` rule. The default, ``noise_posterior``
(:func:`audit.checks.flag_rule.noise_posterior`), flags every sample the model confidently puts in another class
(normalized margin below -0.8), then the samples most likely mislabelled under cleanlab's estimated noise matrix
(the posterior probability that the label is wrong, given the probabilities and how often each class is labelled
as each other), up to an estimate of the number of errors; never a sample whose label is its most likely class.
When the audited labels are the annotators' consensus and the probabilities are label-audit's own fit, the
count is raised toward the number of disagreements (errors the annotators share hide from the estimates).

It was chosen on the **tuning** sets of ``python -m benchmarks.heldout`` (real digit images through the pixels
pipeline: symmetric, confusable-pairs and look-alike noise at 5-20%, a confusion all annotators share, long-tailed
classes; ten seeds) and on the human-validated CIFAR-10 / MNIST test-set errors
(``python -m benchmarks.label_errors``); that benchmark's **held-out** seeds report it and the README shows them.
Mean F1 over its 120 tuning sets: 0.964, against 0.941 for the previous default
(``low_margin_calibrated_count``) and 0.928 for cleanlab's defaults on the same probabilities; over the 36
held-out sets 0.967, against 0.944 and 0.927.
On the human-validated errors: CIFAR-10 54 of 54 for 282 flags (cleanlab's defaults 49 of 54 for 284),
MNIST 9 of 15 for 32 flags (cleanlab's defaults 7 of 15 for 15: the confident disagreements are many there).
Why a noise posterior rather than one margin ranking or cleanlab's per-pair pruning: where the errors sit in a
few class pairs (look-alike confusions, long tails), a sample that looks a little like the class its label is
often confused with is more suspect than one that looks a little like an unrelated class, which the margin
cannot see and the posterior can; cleanlab's per-pair counts see it too, but are noisy when many pairs hold a
few errors each. The confident-disagreement floor is there because the estimated noise matrix calls rare pairs
almost impossible, and some CIFAR-10 validated errors are in such pairs. The previous default,
``low_margin_calibrated_count``, is kept as a choice, and the object and region classifiers use it (see
:mod:`audit.checks.object_mistakes`).
``filter_by = "predicted_neq_given"`` is the high-recall setting (every sample whose predicted class is not its
label): 54 of 54 and 15 of 15 on the benchmark, for 706 and 87 flags. ``min_quality`` additionally flags every
sample whose label quality is below it (off by default).

The label quality score (``mistakes_label_quality``, low = likely mislabelled) is cleanlab's default
``self_confidence``: the out-of-sample probability of the audited label. It orders the review queue and sets
``min_quality``'s scale as it does in cleanlab, and ranks the same as cleanlab's defaults (the benchmarks report
its AUROC and AP); only the choice of flags uses the noise posterior. ``cv_accuracy`` is the share of audited
samples whose out-of-sample predicted class equals the audited label (agreement with labels that may themselves
be wrong).

The ``(n, k)`` probabilities the audit used travel in ``CheckResult.arrays["pred_probs"]`` (NaN rows for samples
that were not audited) so the run folder keeps them and nothing downstream recomputes them.

Edge cases (documented behaviour, each tested)
----------------------------------------------
* Unreadable samples and samples with no label to audit get NaN/None columns and are never flagged.
* A class with a single audited sample cannot be audited out-of-sample on embeddings (no fold could train on
  it): its sample gets NaN quality, is not flagged, and the class is listed in ``unauditable_classes``.
  With user probabilities no training happens, so such a class is audited normally.
* Fewer than two classes among the audited labels: there is nothing a label could be confused with, so the
  check returns ``{"skipped": reason}`` with no per-sample columns (the run goes on).
* ``folds`` is lowered to the size of the largest class when that is smaller (tiny datasets).

Annotators
----------
When the ``agreement`` check ran and produced ``agreement_consensus_label``, the consensus is audited
(``audited = "consensus"``), falling back to ``label`` where the consensus is None. Whenever per-annotator labels
exist, each annotator's mistakes are counted against the label the audit believes: the suggested label where
the audited label is flagged, the audited label itself elsewhere. ``n_labels`` counts an annotator's labels on
audited samples and ``n_mistakes`` those that differ from the believed label. This trusts the model on flagged
samples and the consensus on the rest, nothing more.
"""

from __future__ import annotations

import hashlib
import json
import warnings
from collections import Counter
from typing import Any, ClassVar

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
from audit.checks.flag_rule import low_margin_calibrated_count, noise_posterior
from audit.checks.predictions import cross_validated_pred_probs, refit_without_flagged
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

FILTER_RULES = (
    "noise_posterior",
    "low_margin_calibrated_count",
    "prune_by_noise_rate",
    "prune_by_class",
    "both",
    "confident_learning",
    "predicted_neq_given",
    "low_normalized_margin",
    "low_self_confidence",
)
DEFAULTS: dict[str, Any] = {
    "folds": 5,
    "filter_by": ["noise_posterior"],
    "min_quality": None,
    "knn_neighbors": 10,
}
SUM_TOLERANCE = 1e-3
TOP_OVERLAPPING_PAIRS = 10


@register
class MistakesCheck(Check):
    """Flag samples whose label disagrees with out-of-sample predictions (cleanlab confident learning)."""

    name: ClassVar[str] = "mistakes"
    requires: ClassVar[tuple[Requirement, ...]] = ()
    description: ClassVar[str] = (
        "likely label mistakes: cross-validated predictions on the embeddings (or your own predicted "
        "probabilities) checked against the labels with cleanlab confident learning"
    )
    thresholds: ClassVar[tuple[Threshold, ...]] = (
        Threshold("max_issue_rate", "checks.mistakes.issue_rate", "<=", "rate", "suspected-mislabel rate",
                  "suspected-mislabel rate of the whole dataset"),
        Threshold("max_class_issue_rate", "checks.mistakes.per_class.{key}.issue_rate", "<=", "rate",
                  "suspected-mislabel rate of class {key}", "the same, one rule per class", keys_from="class_names"),
        Threshold("min_label_health", "checks.mistakes.label_health", ">=", "rate", "label health score",
                  "cleanlab's overall label health score"),
    )
    ratchets: ClassVar[tuple[Ratchet, ...]] = (
        Ratchet("issue_rate", "checks.mistakes.issue_rate", higher_is_better=False),
        Ratchet("label_health", "checks.mistakes.label_health", higher_is_better=True),
    )
    trends: ClassVar[tuple[Trend, ...]] = (
        Trend("Suspected-mislabel rate", "checks.mistakes.issue_rate", percent=True),
        Trend("Label health", "checks.mistakes.label_health"),
    )
    report_sections: ClassVar[tuple[ReportSection, ...]] = (
        ReportSection("gallery", "Suspects", "_gallery.html.j2", lambda si: gallery_section(si), 30),
        ReportSection("suggestions", "Given vs suggested", "_suggestions.html.j2",
                      lambda si: suggestions_section(si), 40),
        ReportSection("pairs", "Confused pairs", "_pairs.html.j2", lambda si: pairs_section(si), 60),
    )
    fiftyone: ClassVar[FiftyOneSpec] = FiftyOneSpec(
        fields=(
            FiftyOneField("label_audit_quality", "float", "label quality 0..1 (cleanlab); low means likely mislabelled",
                          lambda run: _column(run, "mistakes_label_quality")),
            FiftyOneField("label_audit_issue", "bool", "flagged as a likely label error",
                          lambda run: _issue_mask(run.samples).tolist() if "mistakes_is_issue" in run.samples
                          else [None] * len(run.samples)),
            FiftyOneField("label_audit_suggested", "classification",
                          "most likely label by the out-of-sample model, with its probability",
                          lambda run: _pairs_of(run, "mistakes_suggested_label", "mistakes_suggested_prob")),
        ),
        tags=(FiftyOneTag("suspected_mislabel", lambda run: _issue_mask(run.samples)),),
        views=(FiftyOneView("la-suspected-mislabels", "Likely label errors, lowest label quality first",
                            lambda dataset, F: dataset.match(F("label_audit_issue") == True)  # noqa: E712
                            .sort_by("label_audit_quality")),),
        dynamic_views=lambda run: confused_pair_views(run),
    )

    @classmethod
    def tiles(cls, state: dict[str, Any]) -> list[Tile]:
        from audit.presentation import format_number, format_percent

        if state["status"] != "ok":
            return [Tile("Suspected mislabels", "—", f"mistakes check {state['status']}")]
        m = state["metrics"]
        return [Tile("Suspected mislabels", format_number(m.get("n_issues")),
                     f"{format_percent(m.get('issue_rate'))} of audited samples",
                     "warn" if m.get("n_issues") else "good"),
                Tile("Label health", format_percent(m.get("label_health")), "cleanlab overall label health score")]

    @classmethod
    def summary_line(cls, metrics: dict[str, Any]) -> str:
        if "skipped" in metrics:
            return f"skipped: {metrics['skipped']}"
        return (f"{metrics['n_issues']:,} suspected mislabels of {metrics['n_audited']:,} audited "
                f"({metrics['issue_rate']:.1%}), label health {metrics['label_health']:.3f}")

    @classmethod
    def facts(cls, state: dict[str, Any]) -> list[tuple[str, str]]:
        from audit.presentation import format_percent, format_value

        if state["status"] != "ok":
            return []
        m = state["metrics"]
        text = format_value(m.get("pred_probs_source"))
        if m.get("cv_accuracy") is not None:
            text += f" · cross-validated accuracy {format_percent(m['cv_accuracy'])}"
        return [("Mislabel model", f"{text} · audited label: {format_value(m.get('audited'))}")]

    def run(self, context: CheckContext) -> CheckResult:
        params = _params(context.params)
        if context.embeddings is None and context.pred_probs is None:
            raise CheckInputError(
                "the mistakes check needs embeddings or predicted probabilities (pred_probs); it got neither"
            )
        samples = context.samples
        class_names = list(context.class_names)
        n, k = len(samples), len(class_names)
        audited_labels, audited_source = _audited_labels(context)
        unknown = sorted(set(audited_labels.dropna()) - set(class_names))
        if unknown:
            raise CheckInputError(f"labels {unknown[:5]} are not among the class names {class_names[:10]}")
        codes = audited_labels.map({c: i for i, c in enumerate(class_names)}).fillna(-1).astype(int).to_numpy()
        audit_mask = samples["readable"].fillna(False).astype(bool).to_numpy() & (codes >= 0)

        unauditable_classes: list[str] = []
        cv_accuracy: float | None = None
        notes: list[str] = []
        fingerprint: str | None = None
        if context.pred_probs is not None:
            probs = _validated_pred_probs(context.pred_probs, samples.index, k, audit_mask)
            folds_used = None
            source = "user-supplied predicted probabilities"
        else:
            embeddings = _validated_embeddings(context.embeddings, samples.index, audit_mask)
            counts = np.bincount(codes[audit_mask], minlength=k)
            singletons = np.flatnonzero(counts == 1)
            unauditable_classes = [class_names[i] for i in singletons]
            audit_mask &= ~np.isin(codes, singletons)
            probs = np.full((n, k), np.nan)
            folds_used = None
            source = "no classifier: fewer than two classes to learn"
            shared = _shared_pred_probs(context, audit_mask, k)
            if shared is not None:
                # The agreement check's fit (majority-vote targets) is the first fit; the model is refitted on the
                # audited (consensus) labels without the samples it ranks as likely mislabelled, as a fit of our
                # own would be. Chosen on the held-out benchmark's tuning sets (shared annotator error; see
                # README, "Held-out evaluation").
                refitted = refit_without_flagged(embeddings[audit_mask], codes[audit_mask], k, shared,
                                                 params["folds"], params["knn_neighbors"], context.seed)
                if refitted is None:
                    probs[audit_mask] = shared
                    source = context.prior["agreement"].metrics.get("pred_probs_source",
                                                                    "agreement check's probabilities")
                    notes = ["out-of-sample probabilities reused from the agreement check (majority-vote targets)"]
                else:
                    probs[audit_mask], folds_used, source, notes = refitted
                    notes = ["first fit: the agreement check's out-of-sample probabilities (majority-vote targets); "
                             "refitted on the audited labels without the samples it flagged", *notes]
                cv_accuracy = float(np.mean(probs[audit_mask].argmax(axis=1) == codes[audit_mask]))
            elif len(np.unique(codes[audit_mask])) >= 2:
                fingerprint = cv_fingerprint(context, samples.index[audit_mask], codes[audit_mask], params)
                reused = previous_pred_probs(context, fingerprint, samples.index[audit_mask], k)
                if reused is not None:
                    probs[audit_mask], folds_used, source, previous_name = reused
                    notes = [f"out-of-fold probabilities reused from run {previous_name}: the same images, labels, "
                             "embedder and classifier settings"]
                else:
                    probs[audit_mask], folds_used, source, notes = cross_validated_pred_probs(
                        embeddings[audit_mask], codes[audit_mask], k, params["folds"], params["knn_neighbors"],
                        context.seed,
                    )
                cv_accuracy = float(np.mean(probs[audit_mask].argmax(axis=1) == codes[audit_mask]))

        present = np.unique(codes[audit_mask])
        if len(present) < 2:
            only = [class_names[i] for i in present]
            reason = (
                f"fewer than two classes to audit (audited labels: {only}"
                + (f"; single-sample classes {unauditable_classes} cannot be cross-validated" if unauditable_classes
                   else "")
                + "): a label cannot be mistaken for another class"
            )
            return CheckResult(self.name, pd.DataFrame(index=samples.index), {"skipped": reason})

        labels = codes[audit_mask]
        audited_probs = probs[audit_mask]
        # a consensus audited with our own classifier (trained on those labels): see flag_rule.noise_posterior
        own_fit_of_consensus = audited_source == "consensus" and context.pred_probs is None
        is_issue, quality = flag_labels(labels, audited_probs, params["filter_by"], params["min_quality"],
                                        consensus=own_fit_of_consensus)
        suggested = audited_probs.argmax(axis=1)
        # A label a reviewer confirmed correct, on an image and label unchanged since, is not flagged again.
        confirmed = np.zeros(n, dtype=bool)
        if context.ledger is not None and len(context.ledger):
            from audit.review import confirmed_correct

            confirmed = samples.index.isin(confirmed_correct(context.ledger, samples))
        unflagged_by_review = np.zeros(n, dtype=bool)  # would be flagged, but a reviewer confirmed the label
        unflagged_by_review[audit_mask] = is_issue & confirmed[audit_mask]
        n_confirmed = int(unflagged_by_review.sum())
        is_issue &= ~confirmed[audit_mask]

        per_sample = _per_sample_frame(samples.index, audit_mask, audited_labels, class_names, is_issue, quality,
                                       suggested, audited_probs, labels)
        per_sample["mistakes_confirmed_correct"] = confirmed
        per_sample["mistakes_unflagged_by_review"] = unflagged_by_review
        metrics = {
            "audited": audited_source,
            "pred_probs_source": source,
            "cv_accuracy": cv_accuracy,
            "folds": folds_used,
            "filter_by": params["filter_by"],
            "min_quality": params["min_quality"],
            "quality_method": "self_confidence",
            "n_audited": int(audit_mask.sum()),
            "n_issues": int(is_issue.sum()),
            "n_not_flagged_confirmed_correct": n_confirmed,
            "issue_rate": float(is_issue.mean()),
            "label_health": _label_health(labels, audited_probs),
            "per_class": _per_class(labels, is_issue, class_names),
            "overlapping_class_pairs": _overlapping_pairs(labels, audited_probs, class_names),
            "confusion": _confusion(labels, suggested, is_issue, class_names),
            "unauditable_classes": unauditable_classes,
            "n_unauditable": int(samples["readable"].fillna(False).astype(bool).sum() - audit_mask.sum()),
            "notes": notes,
        }
        if fingerprint is not None:
            metrics["cv_fingerprint"] = fingerprint
        if context.annotations is not None and len(context.annotations):
            metrics["annotator_mistakes"] = annotator_mistakes(context.annotations, per_sample)
        return CheckResult(self.name, per_sample, json_safe(metrics), arrays={"pred_probs": probs})


def cv_fingerprint(context: CheckContext, ids: pd.Index, codes: np.ndarray, params: dict[str, Any]) -> str | None:
    """What the cross-validated probabilities depend on, hashed: the audited images (id and content hash), their
    labels, the class names, the embedder and the classifier's settings. None without content hashes or an
    embedder key (nothing then proves two runs saw the same inputs)."""
    embedder_key = (context.extra.get("embedder") or {}).get("cache_key")
    if not embedder_key or "content_hash" not in context.samples.columns:
        return None
    hashes = context.samples.loc[ids, "content_hash"].astype(str)
    if (hashes == "").any():
        return None
    rows = pd.DataFrame({"id": ids.astype(str), "hash": hashes.to_numpy(), "code": codes})
    digest = hashlib.sha256(pd.util.hash_pandas_object(rows, index=False).to_numpy().tobytes())
    digest.update(json.dumps([embedder_key, list(context.class_names), params["folds"], params["knn_neighbors"],
                              context.seed]).encode())
    return digest.hexdigest()


def previous_pred_probs(context: CheckContext, fingerprint: str | None, ids: pd.Index, k: int,
                        ) -> tuple[np.ndarray, int | None, str, str] | None:
    """The previous run's out-of-fold probabilities for ``ids`` when that run cross-validated exactly these inputs
    (same :func:`cv_fingerprint`): an unchanged weekly re-run then spends nothing on the classifier. Returns
    ``(probs, folds, source, run name)`` or None."""
    previous = context.extra.get("previous_run")
    if fingerprint is None or previous is None:
        return None
    metrics = previous.check_metrics("mistakes") or {}
    if metrics.get("cv_fingerprint") != fingerprint:
        return None
    stored = previous.pred_probs
    positions = previous.samples.index.get_indexer(ids)
    if stored is None or stored.shape != (len(previous.samples), k) or (positions < 0).any():
        return None
    probs = np.asarray(stored[positions], dtype=float)
    if not np.isfinite(probs).all():
        return None
    return probs, metrics.get("folds"), str(metrics.get("pred_probs_source")), previous.name


def _shared_pred_probs(context: CheckContext, audit_mask: np.ndarray, k: int) -> np.ndarray | None:
    """The out-of-sample probabilities the agreement check already fitted on these embeddings, when they cover
    every audited sample: cleanlab's multi-annotator workflow audits the consensus with the same probabilities
    that weighed the annotators, and fitting the cross-validated model twice would double the run's cost."""
    prior = context.prior.get("agreement")
    probs = None if prior is None else prior.arrays.get("pred_probs")
    if probs is None or probs.shape != (len(audit_mask), k):
        return None
    chosen = probs[audit_mask]
    return chosen if np.isfinite(chosen).all() else None


def annotator_mistakes(annotations: pd.DataFrame, per_sample: pd.DataFrame) -> dict[str, dict[str, Any]]:
    """Per annotator: labels on audited samples and how many differ from the label the audit believes.

    The believed label is ``mistakes_suggested_label`` where the audited label is flagged, the audited label
    (``mistakes_audited_label``) elsewhere; samples that were not audited are left out.
    """
    audited = per_sample["mistakes_label_quality"].notna()
    believed = per_sample["mistakes_audited_label"].where(
        ~per_sample["mistakes_is_issue"].astype(bool), per_sample["mistakes_suggested_label"]
    )[audited]
    table = annotations[annotations["sample_id"].isin(believed.index)]
    wrong = table["label"].to_numpy() != believed.reindex(table["sample_id"]).to_numpy()
    out: dict[str, dict[str, Any]] = {}
    for annotator in sorted(annotations["annotator"].astype(str).unique()):
        mine = (table["annotator"].astype(str) == annotator).to_numpy()
        n_labels, n_wrong = int(mine.sum()), int(wrong[mine].sum())
        out[annotator] = {"n_labels": n_labels, "n_mistakes": n_wrong,
                          "rate": n_wrong / n_labels if n_labels else None}
    return out


def _params(given: dict[str, Any]) -> dict[str, Any]:
    params = merge_params("mistakes", given, DEFAULTS)
    folds = params["folds"]
    if isinstance(folds, bool) or not isinstance(folds, int) or folds < 2:
        raise CheckInputError(f"mistakes.folds must be an integer >= 2, got {folds!r}")
    rules = [params["filter_by"]] if isinstance(params["filter_by"], str) else list(params["filter_by"])
    bad = [r for r in rules if r not in FILTER_RULES]
    if not rules or bad:
        raise CheckInputError(
            f"mistakes.filter_by must name cleanlab rules from {list(FILTER_RULES)}, got {bad or rules}"
        )
    params["filter_by"] = rules
    quality = params["min_quality"]
    if quality is not None and (isinstance(quality, bool) or not isinstance(quality, int | float)
                                or not 0 < quality < 1):
        raise CheckInputError(f"mistakes.min_quality must be a number between 0 and 1 (or unset), got {quality!r}")
    neighbours = params["knn_neighbors"]
    if isinstance(neighbours, bool) or not isinstance(neighbours, int) or neighbours < 0:
        raise CheckInputError(f"mistakes.knn_neighbors must be an integer >= 0 (0: off), got {neighbours!r}")
    return params


def _audited_labels(context: CheckContext) -> tuple[pd.Series, str]:
    """The consensus label when the agreement check produced one, else the shipped label."""
    label = context.samples["label"].astype(object)
    agreement = context.prior.get("agreement")
    if agreement is None or "agreement_consensus_label" not in agreement.samples:
        return label.where(label.notna(), None), "label"
    consensus = agreement.samples["agreement_consensus_label"].reindex(context.samples.index).astype(object)
    audited = consensus.where(consensus.notna(), label)
    return audited.where(audited.notna(), None), "consensus"


def _validated_pred_probs(pred_probs: np.ndarray, sample_ids: pd.Index, k: int, audit_mask: np.ndarray) -> np.ndarray:
    probs = np.asarray(pred_probs, dtype=np.float64)
    if probs.ndim != 2 or probs.shape[0] != len(sample_ids):
        raise CheckInputError(
            f"pred_probs has shape {probs.shape} but the dataset has {len(sample_ids)} samples: "
            "one row per sample, in sample order"
        )
    if probs.shape[1] != k:
        raise CheckInputError(
            f"pred_probs has {probs.shape[1]} columns but there are {k} classes: one column per class, "
            "in sorted class-name order"
        )
    rows = np.flatnonzero(audit_mask)
    checked = probs[rows]
    bad = ~np.isfinite(checked).all(axis=1)
    if bad.any():
        row = rows[np.argmax(bad)]
        raise CheckInputError(
            f"pred_probs row {row} (sample {sample_ids[row]!r}) contains NaN or infinity "
            f"({int(bad.sum())} such rows)"
        )
    if (checked < 0).any():
        row = rows[np.argmax((checked < 0).any(axis=1))]
        raise CheckInputError(f"pred_probs row {row} (sample {sample_ids[row]!r}) has negative values")
    error = np.abs(checked.sum(axis=1) - 1.0)
    if len(error) and error.max() > SUM_TOLERANCE:
        worst = int(np.argmax(error))
        raise CheckInputError(
            f"pred_probs row {rows[worst]} (sample {sample_ids[rows[worst]]!r}) sums to "
            f"{checked[worst].sum():.6g}, not 1 (tolerance {SUM_TOLERANCE:g}; {int((error > SUM_TOLERANCE).sum())} "
            "rows off); label-audit does not renormalise: pass probabilities (e.g. softmax), not logits or scores"
        )
    return probs


def _validated_embeddings(embeddings: np.ndarray, sample_ids: pd.Index, audit_mask: np.ndarray) -> np.ndarray:
    array = np.asarray(embeddings)
    if array.ndim != 2 or array.shape[0] != len(sample_ids):
        raise CheckInputError(
            f"embeddings have shape {array.shape} but the dataset has {len(sample_ids)} samples"
        )
    bad = audit_mask & ~np.isfinite(array).all(axis=1)
    if bad.any():
        row = int(np.argmax(bad))
        raise CheckInputError(
            f"the embedding of readable sample {sample_ids[row]!r} (row {row}) contains NaN or infinity "
            f"({int(bad.sum())} such rows); re-embed the images or mark them unreadable"
        )
    return array


def flag_labels(labels: np.ndarray, probs: np.ndarray, rules: list[str], min_quality: float | None,
                consensus: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """The flags of ``rules`` (OR-ed; see ``filter_by``) and cleanlab's self-confidence of each label: one rule set
    for images, objects and the demos. ``consensus``: the labels are annotators' consensus (changes the count of
    ``noise_posterior``)."""
    from cleanlab.filter import find_label_issues
    from cleanlab.rank import get_label_quality_scores

    quality = get_label_quality_scores(labels, probs, method="self_confidence")
    is_issue = np.zeros(len(labels), dtype=bool)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*too few examples.*", category=UserWarning)
        for rule in rules:
            if rule == "noise_posterior":
                is_issue |= noise_posterior(labels, probs, consensus=consensus)
            elif rule == "low_margin_calibrated_count":
                is_issue |= low_margin_calibrated_count(labels, probs)
            else:
                is_issue |= find_label_issues(labels, probs, filter_by=rule, n_jobs=1)
    if min_quality is not None:
        is_issue |= quality < min_quality
    return is_issue, quality


def _per_sample_frame(index: pd.Index, audit_mask: np.ndarray, audited_labels: pd.Series, class_names: list[str],
                      is_issue: np.ndarray, quality: np.ndarray, suggested: np.ndarray, probs: np.ndarray,
                      labels: np.ndarray) -> pd.DataFrame:
    names = np.asarray(class_names, dtype=object)
    n = len(index)

    def spread(values: np.ndarray, fill: Any, dtype: Any) -> np.ndarray:
        out = np.full(n, fill, dtype=dtype)
        out[audit_mask] = values
        return out

    rows = np.arange(len(labels))
    return pd.DataFrame(
        {
            "mistakes_audited_label": np.where(audit_mask, audited_labels.to_numpy(dtype=object), None),
            "mistakes_is_issue": spread(is_issue, False, bool),
            "mistakes_label_quality": spread(quality, np.nan, float),
            "mistakes_suggested_label": spread(names[suggested], None, object),
            "mistakes_suggested_prob": spread(probs[rows, suggested], np.nan, float),
            "mistakes_given_prob": spread(probs[rows, labels], np.nan, float),
        },
        index=index,
    )


def _label_health(labels: np.ndarray, probs: np.ndarray) -> float:
    from cleanlab.dataset import overall_label_health_score

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return float(overall_label_health_score(labels, probs, verbose=False))


def _per_class(labels: np.ndarray, is_issue: np.ndarray, class_names: list[str]) -> dict[str, dict[str, Any]]:
    counts = np.bincount(labels, minlength=len(class_names))
    issues = np.bincount(labels[is_issue], minlength=len(class_names))
    return {
        name: {"n": int(counts[i]), "n_issues": int(issues[i]),
               "issue_rate": float(issues[i] / counts[i]) if counts[i] else None}
        for i, name in enumerate(class_names)
    }


def _overlapping_pairs(labels: np.ndarray, probs: np.ndarray, class_names: list[str]) -> list[dict[str, Any]]:
    """cleanlab's most confusable class pairs (symmetric), those with at least one confused sample, top 10."""
    from cleanlab.dataset import find_overlapping_classes

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        table = find_overlapping_classes(labels=labels, pred_probs=probs, class_names=class_names)
    table = table[table["Num Overlapping Examples"] > 0].head(TOP_OVERLAPPING_PAIRS)
    return [
        {"class_a": str(row["Class Name A"]), "class_b": str(row["Class Name B"]),
         "joint_probability": float(row["Joint Probability"]), "n_confused": int(row["Num Overlapping Examples"])}
        for _, row in table.iterrows()
    ]


def _confusion(labels: np.ndarray, suggested: np.ndarray, is_issue: np.ndarray, class_names: list[str],
               ) -> dict[str, dict[str, int]]:
    """Among flagged samples: how often each audited label was suggested to be each other class."""
    out: dict[str, dict[str, int]] = {}
    for (given, guess), count in sorted(Counter(zip(labels[is_issue], suggested[is_issue], strict=True)).items()):
        out.setdefault(class_names[given], {})[class_names[guess]] = int(count)
    return out


# ------------------------------------------------------------------------------------- report and FiftyOne


def _issue_mask(samples: pd.DataFrame) -> np.ndarray:
    if "mistakes_is_issue" not in samples.columns:
        return np.zeros(len(samples), dtype=bool)
    return samples["mistakes_is_issue"].fillna(False).astype(bool).to_numpy()


def _column(run: Any, name: str) -> list[Any]:
    if name not in run.samples.columns:
        return [None] * len(run.samples)
    return [None if v is None or (isinstance(v, float) and not np.isfinite(v)) else v
            for v in run.samples[name].tolist()]


def _pairs_of(run: Any, label: str, confidence: str) -> list[tuple[str, float | None] | None]:
    return [(str(lab), None if conf is None else float(conf)) if lab is not None else None
            for lab, conf in zip(_column(run, label), _column(run, confidence), strict=True)]


def confused_pairs(run: Any, limit: int = 10) -> list[tuple[str, str]]:
    """Class pairs to review side by side: cleanlab's overlapping pairs that have flagged samples, in its order;
    without that list, the pairs with the most flagged samples."""
    samples = run.samples
    if "mistakes_is_issue" not in samples.columns:
        return []
    issues = samples[_issue_mask(samples)]
    counts: dict[frozenset[str], int] = {}
    for given, suggested in zip(issues["mistakes_audited_label"].astype(str),
                                issues["mistakes_suggested_label"].astype(str), strict=True):
        if given != suggested:
            key = frozenset((given, suggested))
            counts[key] = counts.get(key, 0) + 1
    metrics = run.check_metrics("mistakes") or {}
    listed = metrics.get("overlapping_class_pairs") if isinstance(metrics, dict) else None
    if listed:
        pairs = [(str(p["class_a"]), str(p["class_b"])) for p in listed]
        pairs = [p for p in pairs if counts.get(frozenset(p), 0) > 0]
    else:
        ranked = sorted(counts.items(), key=lambda kv: (-kv[1], sorted(kv[0])))
        pairs = [tuple(sorted(k)) for k, _ in ranked]
    return pairs[:limit]


def confused_pair_views(run: Any) -> list[FiftyOneView]:
    """One saved view per confused class pair with flagged samples, worst first."""

    def view(a: str, b: str) -> FiftyOneView:
        def build(dataset: Any, F: Any) -> Any:
            label, suggested = F("label_audit_label"), F("label_audit_suggested.label")
            pair = ((label == a) & (suggested == b)) | ((label == b) & (suggested == a))
            return dataset.match((F("label_audit_issue") == True) & pair).sort_by("label_audit_quality")  # noqa: E712

        description = f"Likely label errors between classes {a!r} and {b!r}, worst first"
        return FiftyOneView(f"la-confused-{a}-vs-{b}", description, build)

    return [view(a, b) for a, b in confused_pairs(run)]


def suggestion_matrix(run: Any, max_classes: int = 30) -> pd.DataFrame | None:
    """Counts of suspected mislabels by audited label (rows) and suggested label (columns), from ``confusion``;
    only classes that take part in an issue, and with more than ``max_classes`` of those, the most involved."""
    from audit.presentation import has_check

    if not has_check(run, "mistakes"):
        return None
    confusion = run.check_metrics("mistakes").get("confusion") or {}
    table = pd.DataFrame(confusion).T.fillna(0)
    if table.empty or table.to_numpy().sum() == 0:
        return None
    table.index = table.index.astype(str)
    table.columns = table.columns.astype(str)
    involvement = table.sum(axis=1).add(table.sum(axis=0), fill_value=0)
    classes = sorted(involvement.sort_values(ascending=False).index[:max_classes])
    return table.reindex(index=classes, columns=classes, fill_value=0).astype(int)


def suggestion_figure(run: Any, max_classes: int = 30) -> Any:
    """Heatmap of given (audited) versus suggested label among the suspected mislabels."""
    import plotly.graph_objects as go

    from audit.presentation import layout, plot_text

    table = suggestion_matrix(run, max_classes)
    if table is None:
        return None
    labels = [plot_text(c) for c in table.index]
    z = table.to_numpy().astype(float)
    z[z == 0] = np.nan  # empty cells stay white
    figure = go.Figure(go.Heatmap(
        z=z, x=labels, y=labels, colorscale="Blues", texttemplate="%{z:.0f}", hoverongaps=False,
        colorbar={"title": {"text": "samples"}},
        hovertemplate="given %{y} → suggested %{x}: %{z:.0f}<extra></extra>",
    ))
    side = min(640, 160 + 34 * len(labels))
    figure.update_layout(**layout(
        height=side, xaxis={"title": "suggested label", "type": "category", "side": "bottom"},
        yaxis={"title": "given label", "type": "category", "autorange": "reversed"},
    ))
    return figure


def class_issue_figure(run: Any, max_classes: int = 60) -> Any:
    """Share of each class's samples flagged as likely mislabelled."""
    import plotly.graph_objects as go

    from audit.presentation import has_check, layout, plot_text

    if not has_check(run, "mistakes"):
        return None
    per_class = run.check_metrics("mistakes").get("per_class") or {}
    if not per_class:
        return None
    table = pd.DataFrame(per_class).T
    table = table.sort_values("issue_rate", ascending=False).head(max_classes)
    figure = go.Figure(go.Bar(
        x=[plot_text(c) for c in table.index], y=table["issue_rate"].astype(float),
        customdata=np.stack([table["n_issues"].astype(int), table["n"].astype(int)], axis=1),
        marker_color="#EE6677",
        hovertemplate="class %{x}: %{y:.1%}<br>%{customdata[0]} of %{customdata[1]} samples<extra></extra>",
    ))
    figure.update_layout(**layout(height=300, yaxis={"title": "suspected mislabels", "tickformat": ".0%"},
                                  xaxis={"title": "class (most affected first)", "type": "category"}))
    return figure


def gallery_section(si: Any) -> dict[str, Any]:
    """The worst suspects as cards (thumbnail, given, suggested, score)."""
    from audit.presentation import format_value, is_missing

    suspects, limits = si.suspects, si.limits
    shown = suspects.head(limits.gallery)
    thumbs = si.thumbnails(list(shown.index))
    cards = []
    for sample_id, row in shown.iterrows():
        audited = row.get("audited_label")
        cards.append({
            "id": sample_id,
            "src": thumbs.get(sample_id),
            "label": format_value(row.get("label")),
            "audited": format_value(audited) if not is_missing(audited) and audited != row.get("label") else None,
            "suggested": format_value(row.get("suggested_label")),
            "suggested_prob": row.get("suggested_prob"),
            "score": row.get("label_quality"),
            "split": format_value(row.get("split")),
            "filepath": format_value(row.get("filepath")),
            "rank": int(row["rank"]),
        })
    return {"state": si.state, "cards": cards, "n_total": len(suspects), "capped": len(suspects) > limits.gallery,
            "metrics": si.state["metrics"]}


def suggestions_section(si: Any) -> dict[str, Any]:
    from audit.presentation import figure_json

    run, limits = si.run, si.limits
    matrix = suggestion_matrix(run, limits.matrix_classes) if si.state["status"] == "ok" else None
    confusion = si.state["metrics"].get("confusion") or {}
    involved = set(confusion) | {s for row in confusion.values() for s in row}
    return {
        "state": si.state,
        "figure": figure_json(suggestion_figure(run, limits.matrix_classes)),
        "class_figure": figure_json(class_issue_figure(run)),
        "capped": matrix is not None and len(involved) > limits.matrix_classes,
        "n_classes": len(involved),
    }


def pairs_section(si: Any) -> dict[str, Any]:
    return {"state": si.state, "rows": list(si.state["metrics"].get("overlapping_class_pairs") or [])}
