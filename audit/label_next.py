"""Label next: which images to label (or label again) next, ranked for active learning, exported like a review queue.

Candidates are the run's readable images that have no label yet or a single one:

* With per-annotator labels (``annotations.parquet``): images with no annotation and images with exactly one,
  ranked by cleanlab's ActiveLab scores (:func:`cleanlab.multiannotator.get_active_learning_scores`), which
  weigh the annotators' labels (and each annotator's estimated quality) against the classifier's out-of-sample
  probabilities; lowest score first. Images two or more people already labelled are left to the agreement and
  review loop. The dataset's own ``label`` column is not an annotation for ActiveLab (an image with a label but
  no annotation is scored as unlabelled); ``include_labelled=False`` keeps the images with no label at all.
* Without annotators: unlabelled images and labelled ones (each has one label), ranked by the uncertainty of
  the classifier, ``least_confidence`` (``1 - max p``, default) or ``margin`` (``1 - (p1 - p2)``, the gap
  between the two likeliest classes); most uncertain first. ``include_labelled=False`` keeps unlabelled only.
  A ``method`` other than these two is refused in both cases.

Probabilities: the run's ``pred_probs.npy`` (the out-of-sample probabilities the audit used, or the user's own).
Rows it lacks (unlabelled images are not audited) are predicted by the audit's model (logistic regression
averaged with a distance-weighted k-nearest-neighbour vote on the scaled embeddings, see
:mod:`audit.checks.predictions`) fitted on every labelled readable image; for an unlabelled image that is an
out-of-sample prediction. A labelled image without an out-of-sample probability (an unauditable single-sample
class) cannot be ranked honestly and is left out.

Images already in the review ledger with the same content (pending, or answered and unchanged) are not queued
again. The result is a queue with the ledger's columns (``selection = "label_next"``, ``reason`` starting with
"label next", ``score`` higher = label sooner, ``suggested_label`` the likeliest class as a pre-annotation), so
the review exporters and importers take it as it is: a label given to an unlabelled image comes back as
verdict ``wrong`` (there was no right label) with the new class as ``corrected_label``, and lands in the
corrected manifest. ``label_next`` items are not suspects: precision at k and the error-rate estimate leave them
out.
"""

from __future__ import annotations

import math
import os
import warnings
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from audit.results import RunResults
from audit.review import LEDGER_COLUMNS, ReviewError, given_labels, normalise_ledger

SELECTION = "label_next"
REASON = "label next"
METHODS = ("least_confidence", "margin")


class LabelNextError(ReviewError):
    """Nothing can be ranked (no probabilities, no candidates) or a setting is wrong; the message says why."""


@dataclass(frozen=True)
class LabelNext:
    """The ranked queue, how it was ranked, and how many candidates there were."""

    queue: pd.DataFrame
    method: str
    n_candidates: int
    notes: list[str] = field(default_factory=list)


def _text(value: Any) -> str | None:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    return str(value)


def _fit_predict(embeddings: np.ndarray, codes: np.ndarray, train: np.ndarray, predict: np.ndarray,
                 n_classes: int, knn_neighbors: int = 10) -> np.ndarray:
    """Probabilities for the ``predict`` rows from the audit's model fitted on the ``train`` rows."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.neighbors import KNeighborsClassifier
    from threadpoolctl import threadpool_limits

    from audit.checks.predictions import LOGREG_C, LOGREG_MAX_ITER

    x = np.asarray(embeddings, dtype=np.float32)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    x = x / np.where(norms > 0, norms, 1.0) * np.float32(math.sqrt(x.shape[1]))
    present, compact = np.unique(codes[train], return_inverse=True)
    with threadpool_limits(1, user_api="blas"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out = LogisticRegression(C=LOGREG_C, max_iter=LOGREG_MAX_ITER).fit(x[train], compact).predict_proba(x[predict])
        neighbours = int(min(knn_neighbors, train.sum()))
        if neighbours > 0:
            knn = KNeighborsClassifier(n_neighbors=neighbours, weights="distance", algorithm="brute")
            out = (out + knn.fit(x[train], compact).predict_proba(x[predict])) / 2.0
    full = np.zeros((int(predict.sum()), n_classes))
    full[:, present] = out
    return full


def probabilities(run: RunResults) -> tuple[np.ndarray, list[str]]:
    """``(n, k)`` class probabilities per sample (NaN rows: none) and notes on where they came from."""
    samples, classes = run.samples, run.class_names
    n, k = len(samples), len(classes)
    probs = np.full((n, k), np.nan)
    notes: list[str] = []
    stored = run.pred_probs
    if stored is not None and stored.shape == (n, k):
        probs[:] = stored
    elif stored is not None:
        notes.append(f"pred_probs.npy has shape {stored.shape}, not {(n, k)}: ignored")
    readable = samples["readable"].fillna(False).astype(bool).to_numpy() if "readable" in samples else np.ones(n, bool)
    missing = readable & ~np.isfinite(probs).all(axis=1)
    labels = given_labels(samples).map({c: i for i, c in enumerate(classes)})
    codes = labels.fillna(-1).astype(int).to_numpy()
    unlabelled = missing & (codes < 0)
    embeddings = run.sample_embeddings()
    if unlabelled.any() and embeddings is not None:
        usable = np.isfinite(embeddings).all(axis=1)
        train = readable & usable & (codes >= 0)
        predict = unlabelled & usable
        if len(np.unique(codes[train])) >= 2 and predict.any():
            probs[predict] = _fit_predict(embeddings, codes, train, predict, k)
            notes.append(f"{int(predict.sum()):,} unlabelled images predicted by the audit's model fitted on "
                         f"{int(train.sum()):,} labelled ones")
    return probs, notes


def _annotation_matrix(run: RunResults) -> pd.DataFrame | None:
    table = run.annotations
    if table is None or not len(table):
        return None
    table = table[table["label"].notna()].astype({"sample_id": str, "annotator": str, "label": str})
    codes = {c: i for i, c in enumerate(run.class_names)}
    unknown = sorted(set(table["label"]) - set(codes))
    if unknown:
        raise LabelNextError(f"annotators used labels {unknown[:5]} that are not among the run's classes")
    table = table[table["sample_id"].isin(run.samples.index)]
    wide = table.assign(code=table["label"].map(codes).astype(float)).pivot(
        index="sample_id", columns="annotator", values="code")
    return wide.reindex(index=run.samples.index)


def _already_queued(ledger: pd.DataFrame | None, samples: pd.DataFrame) -> set[str]:
    """Image items the ledger holds for the same content: pending, or answered and unchanged."""
    if ledger is None or not len(ledger):
        return set()
    from audit.review import current_image_rows

    return set(current_image_rows(normalise_ledger(ledger), samples).index)


def label_next_queue(run: str | os.PathLike | RunResults, k: int | None = 50, *, method: str = "least_confidence",
                     include_labelled: bool = True, ledger: pd.DataFrame | None = None) -> LabelNext:
    """The ``k`` images to label next, best first, as a review queue (see the module docstring)."""
    from cleanlab.multiannotator import get_active_learning_scores

    results = run if isinstance(run, RunResults) else RunResults.load(run)
    if method not in METHODS:
        raise LabelNextError(f"method must be one of {', '.join(METHODS)}, got {method!r}")
    if k is not None and k < 1:
        raise LabelNextError(f"k must be at least 1, got {k}")
    samples, classes = results.samples, results.class_names
    if len(classes) < 2:
        raise LabelNextError(f"run {results.name!r} has fewer than two classes: there is nothing to rank by")
    probs, notes = probabilities(results)
    readable = samples["readable"].fillna(False).astype(bool).to_numpy() if "readable" in samples else (
        np.ones(len(samples), bool))
    finite = np.isfinite(probs).all(axis=1)
    if not (finite & readable).any():
        raise LabelNextError(f"run {results.name!r} has no class probabilities to rank by: no pred_probs.npy rows "
                             "and no embeddings with two labelled classes to predict from")
    skip = _already_queued(ledger, samples)
    not_queued = ~samples.index.isin(list(skip))
    wide = _annotation_matrix(results)
    given = given_labels(samples)
    if wide is not None:
        n_annotations = wide.notna().sum(axis=1).to_numpy()
        labelled = readable & finite & (n_annotations >= 1)
        unlabelled = readable & finite & (n_annotations == 0)
        annotators = wide.loc[labelled].dropna(axis=1, how="all")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            scores, scores_unlabelled = get_active_learning_scores(
                annotators if labelled.any() else None, probs[labelled] if labelled.any() else None,
                probs[unlabelled] if unlabelled.any() else None)
        priority = np.full(len(samples), np.nan)
        priority[labelled] = scores
        priority[unlabelled] = scores_unlabelled
        no_label = (n_annotations == 0) & given.isna().to_numpy()
        candidates = (unlabelled | (labelled & (n_annotations == 1))) & not_queued & (no_label | include_labelled)
        ranking = "cleanlab ActiveLab score"
        score = 1.0 - priority  # higher = label sooner, like a suspicion score
        order_key = priority

        def reason(i: int) -> str:
            return (f"{REASON}: ActiveLab score {priority[i]:.3f} (cleanlab; lower is more informative), "
                    f"{int(n_annotations[i])} annotation{'' if n_annotations[i] == 1 else 's'} so far")
    else:
        codes = given.map({c: i for i, c in enumerate(classes)}).fillna(-1).astype(int).to_numpy()
        top2 = -np.sort(-np.where(finite[:, None], probs, 0.0), axis=1)[:, :2]
        uncertainty = 1.0 - top2[:, 0] if method == "least_confidence" else 1.0 - (top2[:, 0] - top2[:, 1])
        candidates = readable & finite & not_queued & ((codes < 0) | include_labelled)
        ranking = method.replace("_", " ")
        score = uncertainty
        order_key = -uncertainty

        def reason(i: int) -> str:
            best = classes[int(np.argmax(probs[i]))]
            state = "unlabelled" if codes[i] < 0 else f"labelled {given.iloc[i]!r}"
            return (f"{REASON}: {ranking} uncertainty {uncertainty[i]:.3f} ({state}; the model's likeliest class "
                    f"{best!r} at p={top2[i, 0]:.2f}, runner-up p={top2[i, 1]:.2f})")

    rows = np.flatnonzero(candidates)
    order = rows[np.lexsort((samples.index.to_numpy(str)[rows], order_key[rows]))]
    chosen = order if k is None else order[:k]
    hashes = samples["content_hash"].map(_text) if "content_hash" in samples else pd.Series(None, index=samples.index)
    records = [{
        "item_id": str(samples.index[i]), "item_kind": "image", "sample_id": str(samples.index[i]),
        "given_label": given.iloc[i], "suggested_label": classes[int(np.argmax(probs[i]))],
        "score": float(score[i]), "reason": reason(int(i)), "content_hash": hashes.iloc[i] or "",
        "selection": SELECTION, "filepath": _text(samples["filepath"].iloc[i]), "rank": rank,
    } for rank, i in enumerate(chosen, start=1)]
    frame = pd.DataFrame(records, columns=[*LEDGER_COLUMNS, "filepath", "rank"])
    queue = normalise_ledger(frame[LEDGER_COLUMNS], where="label-next queue").join(
        frame.set_index("item_id")[["filepath", "rank"]])
    if not finite[readable].all():
        notes.append(f"{int((readable & ~finite).sum()):,} readable images have no out-of-sample probabilities and "
                     "were not ranked")
    return LabelNext(queue=queue, method=ranking, n_candidates=int(candidates.sum()), notes=notes)
