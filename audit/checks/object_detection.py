"""Object label quality from a detector's predictions: cleanlab's ObjectLab, mapped back to our object ids.

**Everything in this module needs predictions** (a detector's boxes with class and confidence, e.g. a COCO
results JSON or a FiftyOne detections field) besides the given labels. They should be out-of-sample (a model
that never trained on these images, or cross-validated), or the model has memorised the errors it should find.
Findings that need no predictions are elsewhere: annotator agreement (:mod:`audit.checks.object_agreement`),
box problem codes and same-class overlaps (:mod:`audit.geometry`).

What cleanlab computes (``cleanlab.object_detection``, "ObjectLab"; cleanlab 2.9, defaults kept)
-----------------------------------------------------------------------------------------------
Similarity between a label box and a predicted box is ``0.9 IoU + 0.1 exp(-0.1 * centre distance in px)``.

- **overlooked** (per *predicted* box): a prediction with confidence >= 0.95 that overlaps no label box at all
  (IoU = 0); score = its similarity to the closest label box of the same class (or a floor times
  ``1 - confidence`` when the image has none). Low = an object the annotators probably missed. Reported here
  per prediction id, because an overlooked object has no label id.
- **swap** (per label box): the most similar predicted box of *another* class with confidence > 0.95; score =
  ``1 - similarity`` (1 when there is none). Low = the label's class is probably wrong.
- **badloc** (per label box): the most similar predicted box of the *same* class with confidence > 0.5 that
  overlaps it; score = that similarity (1 when there is none). Low = the box is probably badly drawn.
- **label_quality** (per image, ``rank.get_label_quality_scores``): softmin-pooled subtype scores combined
  with cleanlab's default weights; ``is_issue`` (per image, ``filter.find_label_issues``): any box whose subtype
  score is below 0.8 x 0.25 x its class's mAP@[.5:.95] of the predictions against the labels.

Per-box issue flags reproduce ``find_label_issues``'s per-box rule with its own helpers (cleanlab returns only the
per-image verdict), and the per-image ``is_issue`` pools them as ``find_label_issues`` does (any flagged box); a
test checks it equals ``find_label_issues``, which is called instead should the helpers ever move.

What cleanlab does not score, and label-audit adds from the same predictions
----------------------------------------------------------------------------
ObjectLab's swap and overlooked subtypes only look at predictions with confidence above 0.95. A calibrated
model trained on labels with ~10% wrong classes rarely says more than ~0.9 (on the detection demo, the image
pipeline's classifier never did), and then swap and overlooked are silent. A label box where the detector sees
nothing (a **spurious** box on background) gets swap = badloc = 1, i.e. looks clean, and so does a
**duplicate** of a correct box. :func:`prediction_evidence` therefore adds, from the same predictions and with
no confidence cut-off: ``class_margin`` (wrong class), ``location_score`` (badly located), ``spurious_score``
(box on nothing) and the unlabelled detections (missing boxes, ``missing_score``). Duplicates need no
predictions at all: :func:`audit.geometry.same_class_overlap`.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
import pandas as pd

from audit.checks.base import Check, CheckContext, CheckResult, Requirement, json_safe, register
from audit.declarations import ReportSection, Threshold, Tile, Trend
from audit.geometry import box_iou_matrix, xywh_to_xyxy

PREFIX = "object_detection_"
MIN_OVERLAP = 0.1
MIN_SCORE = 0.2


class ObjectDetectionInputError(ValueError):
    """Labels or predictions that cannot be passed to cleanlab (unknown classes, scores outside [0, 1]...)."""


@dataclass
class CleanlabInputs:
    """Our object tables in cleanlab's per-image formats, with the ids to map results back.

    ``labels[i] = {"bboxes": (L, 4) xyxy, "labels": (L,) int, "image_name": sample_id}``;
    ``predictions[i]`` = list over classes ``k`` of ``(M_k, 5)`` arrays ``[x1, y1, x2, y2, confidence]``.
    ``label_ids[i]`` follows the rows of ``labels[i]["bboxes"]``; ``prediction_ids[i]`` follows cleanlab's
    flattened order of ``predictions[i]`` (class 0's boxes, then class 1's, ...), the order of overlooked scores.
    """

    sample_ids: list[str]
    class_names: list[str]
    labels: list[dict[str, Any]]
    predictions: list[list[np.ndarray]]
    label_ids: list[list[str]]
    prediction_ids: list[list[str]]


@dataclass
class ObjectLabelQuality:
    """What :func:`object_label_quality` returns (all columns prefixed ``object_detection_``).

    ``images``: per sample id: ``label_quality``, ``is_issue``, pooled ``overlooked_score``, ``swap_score``,
    ``badloc_score``, ``n_labels``, ``n_predictions``. ``labels``: per label object id (the index of the labels
    table): cleanlab's ``swap_score``, ``badloc_score``, ``is_swap_issue``, ``is_badloc_issue``, the columns of
    :func:`prediction_evidence`, and ``location_issue_score``, the mean of ``location_score`` (0 when NaN) and
    ``1 - badloc_score`` (the best location ranking measured on the demo). ``overlooked``: per prediction id
    that cleanlab scored for being overlooked (confident, overlapping no label): ``sample_id``, ``label``, box,
    ``score`` (the detector's confidence), ``overlooked_score``, ``is_overlooked_issue``. ``unlabelled``:
    :func:`prediction_evidence`'s unlabelled detections (``best_label_iou``, ``missing_score``). ``metrics``:
    JSON-safe counts.
    """

    images: pd.DataFrame
    labels: pd.DataFrame
    overlooked: pd.DataFrame
    unlabelled: pd.DataFrame
    metrics: dict[str, Any] = field(default_factory=dict)


def _check_table(table: pd.DataFrame, name: str, need_score: bool) -> None:
    needed = ["sample_id", "label", "x", "y", "w", "h"] + (["score"] if need_score else [])
    missing = [c for c in needed if c not in table.columns]
    if missing:
        raise ObjectDetectionInputError(f"{name} lack columns {missing}")
    if not table.index.is_unique:
        raise ObjectDetectionInputError(f"{name} ids (the index) must be unique")
    if need_score:
        score = table["score"].to_numpy(float)
        bad = ~np.isfinite(score) | (score < 0) | (score > 1)
        if bad.any():
            where = table.index[bad][0]
            raise ObjectDetectionInputError(
                f"prediction {where!r} has confidence {table.loc[where, 'score']!r}; cleanlab needs scores in [0, 1]")


def to_cleanlab_inputs(labels: pd.DataFrame, predictions: pd.DataFrame, class_names: list[str] | None = None,
                       sample_ids: list[str] | None = None) -> CleanlabInputs:
    """Convert label and prediction object tables to cleanlab's object-detection inputs.

    ``sample_ids`` fixes the images and their order (default: every image in either table, sorted); an image with
    no labels or no predictions is kept, with empty arrays. Negative widths/heights are treated as empty boxes.
    """
    _check_table(labels, "labels", need_score=False)
    _check_table(predictions, "predictions", need_score=True)
    names = list(class_names) if class_names is not None else sorted(
        set(labels["label"].astype(str)) | set(predictions["label"].astype(str)))
    codes = {c: i for i, c in enumerate(names)}
    for table, what in ((labels, "labels"), (predictions, "predictions")):
        unknown = sorted(set(table["label"].astype(str)) - set(codes))
        if unknown:
            raise ObjectDetectionInputError(f"{what} use classes {unknown[:5]} that are not in class_names")
    ids = list(sample_ids) if sample_ids is not None else sorted(
        set(labels["sample_id"].astype(str)) | set(predictions["sample_id"].astype(str)))
    stray = sorted((set(labels["sample_id"].astype(str)) | set(predictions["sample_id"].astype(str))) - set(ids))
    if stray:
        raise ObjectDetectionInputError(f"objects on images {stray[:3]} that are not in sample_ids")
    label_rows = _rows_by_image(labels)
    pred_rows = _rows_by_image(predictions)
    label_boxes, pred_boxes = _xyxy(labels), _xyxy(predictions)
    label_codes = labels["label"].astype(str).map(codes).to_numpy(int)
    pred_codes = predictions["label"].astype(str).map(codes).to_numpy(int)
    pred_scores = predictions["score"].to_numpy(float)
    label_index = np.asarray(labels.index.astype(str), dtype=object)
    pred_index = np.asarray(predictions.index.astype(str), dtype=object)
    empty = np.zeros(0, int)
    out_labels, out_predictions, label_ids, prediction_ids = [], [], [], []
    for sample_id in ids:
        own = label_rows.get(sample_id, empty)
        out_labels.append({"bboxes": label_boxes[own], "labels": label_codes[own], "image_name": sample_id})
        label_ids.append(list(label_index[own]))
        rows = pred_rows.get(sample_id, empty)
        rows = rows[np.argsort(pred_codes[rows], kind="stable")]  # cleanlab's flattened order: class by class
        per_class = [np.column_stack([pred_boxes[rows[pred_codes[rows] == k]],
                                      pred_scores[rows[pred_codes[rows] == k]]]).reshape(-1, 5)
                     for k in range(len(names))]
        out_predictions.append(per_class)
        prediction_ids.append(list(pred_index[rows]))
    return CleanlabInputs(ids, names, out_labels, out_predictions, label_ids, prediction_ids)


def _rows_by_image(table: pd.DataFrame) -> dict[str, np.ndarray]:
    samples = table["sample_id"].astype(str).to_numpy(dtype=object)
    return {k: np.asarray(v) for k, v in pd.Series(samples).groupby(samples, sort=False).indices.items()}


def _xyxy(table: pd.DataFrame) -> np.ndarray:
    boxes = table[["x", "y", "w", "h"]].to_numpy(float).reshape(-1, 4).copy()
    boxes[:, 2:] = np.maximum(boxes[:, 2:], 0)
    return xywh_to_xyxy(boxes).reshape(-1, 4)


def _per_box_issue_flags(inputs: CleanlabInputs, swap: list[np.ndarray], badloc: list[np.ndarray],
                         overlooked: list[np.ndarray]) -> tuple[list, list, list] | None:
    """cleanlab's per-box rule of ``find_label_issues`` (score <= 0.8 x 0.25 x class mAP), or None if the
    helpers moved."""
    try:
        from cleanlab.internal.constants import (
            BADLOC_THRESHOLD_FACTOR,
            OVERLOOKED_THRESHOLD_FACTOR,
            SWAP_THRESHOLD_FACTOR,
        )
        from cleanlab.object_detection.filter import (
            _find_label_issues_per_box,
            _get_per_class_ap,
            _process_class_list,
        )
        from cleanlab.object_detection.rank import _separate_prediction
    except ImportError:  # pragma: no cover - only with a cleanlab that reorganised its internals
        return None
    per_class_ap = _get_per_class_ap(inputs.labels, inputs.predictions)
    lab_thresholds = _process_class_list([label["labels"] for label in inputs.labels], per_class_ap)
    pred_thresholds = _process_class_list([_separate_prediction(p)[1] for p in inputs.predictions], per_class_ap)
    copy = [np.array(s, dtype=float, copy=True) for s in swap]  # cleanlab overwrites NaN in place
    swap_flags = _find_label_issues_per_box(copy, lab_thresholds, SWAP_THRESHOLD_FACTOR)
    copy = [np.array(s, dtype=float, copy=True) for s in badloc]
    badloc_flags = _find_label_issues_per_box(copy, lab_thresholds, BADLOC_THRESHOLD_FACTOR)
    copy = [np.array(s, dtype=float, copy=True) for s in overlooked]
    overlooked_flags = _find_label_issues_per_box(copy, pred_thresholds, OVERLOOKED_THRESHOLD_FACTOR)
    # cleanlab returns [False] for an image without boxes; trim to the real number of boxes
    trim = [f[: len(s)] for f, s in zip(swap_flags, swap, strict=True)]
    trim_b = [f[: len(s)] for f, s in zip(badloc_flags, badloc, strict=True)]
    trim_o = [f[: len(s)] for f, s in zip(overlooked_flags, overlooked, strict=True)]
    return trim, trim_b, trim_o


def object_label_quality(labels: pd.DataFrame, predictions: pd.DataFrame, class_names: list[str] | None = None,
                         sample_ids: list[str] | None = None, overlapping_label_check: bool = True,
                         iou_threshold: float = 0.5, min_overlap: float = MIN_OVERLAP) -> ObjectLabelQuality:
    """Score given object labels against a detector's predictions (cleanlab ObjectLab + label-audit's support).

    Parameters
    ----------
    labels
        Object table of the labels to audit (one annotator or the shipped labels); ``score`` is ignored.
    predictions
        Object table of the detector's output; ``score`` (confidence in the row's class, 0..1) is required. One
        box may appear once per class with that class's probability (as MMDetection returns), or once with its
        top class.
    class_names
        Class order (default: sorted union of both tables' classes).
    sample_ids
        Images to score (default: every image in either table). Images in neither table need listing here.
    overlapping_label_check
        cleanlab's option: a label box overlapping (IoU >= 0.95) a label box of another class gets a low swap
        score.
    iou_threshold, min_overlap
        For :func:`prediction_evidence`: IoU from which a prediction is "on" a label box (class evidence), and
        from which it overlaps it at all (support, location, unlabelled detections).
    """
    from cleanlab.object_detection.filter import find_label_issues
    from cleanlab.object_detection.rank import (
        compute_badloc_box_scores,
        compute_overlooked_box_scores,
        compute_swap_box_scores,
        get_label_quality_scores,
        pool_box_scores_per_image,
    )

    inputs = to_cleanlab_inputs(labels, predictions, class_names, sample_ids)
    if not inputs.sample_ids:
        raise ObjectDetectionInputError("no images to score")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        quality = get_label_quality_scores(inputs.labels, inputs.predictions,
                                           overlapping_label_check=overlapping_label_check, verbose=False)
        overlooked = compute_overlooked_box_scores(labels=inputs.labels, predictions=inputs.predictions)
        swap = compute_swap_box_scores(labels=inputs.labels, predictions=inputs.predictions,
                                       overlapping_label_check=overlapping_label_check)
        badloc = compute_badloc_box_scores(labels=inputs.labels, predictions=inputs.predictions)
        flags = _per_box_issue_flags(inputs, swap, badloc, overlooked)
        if flags is None:
            is_issue = find_label_issues(inputs.labels, inputs.predictions,
                                         overlapping_label_check=overlapping_label_check)
        else:  # find_label_issues' own pooling (any flagged box), without computing the class mAPs twice
            is_issue = [bool(np.any(a) or np.any(b) or np.any(c)) for a, b, c in zip(*flags, strict=True)]

    images = pd.DataFrame({
        "label_quality": np.asarray(quality, float),
        "is_issue": np.asarray(is_issue, bool),
        "overlooked_score": pool_box_scores_per_image([np.array(s, float) for s in overlooked]),
        "swap_score": pool_box_scores_per_image([np.array(s, float) for s in swap]),
        "badloc_score": pool_box_scores_per_image([np.array(s, float) for s in badloc]),
        "n_labels": [len(ids) for ids in inputs.label_ids],
        "n_predictions": [len(ids) for ids in inputs.prediction_ids],
    }, index=pd.Index(inputs.sample_ids, name="sample_id"))

    label_index = [i for ids in inputs.label_ids for i in ids]
    per_label = pd.DataFrame({
        "swap_score": np.concatenate([np.asarray(s, float) for s in swap]) if label_index else [],
        "badloc_score": np.concatenate([np.asarray(s, float) for s in badloc]) if label_index else [],
    }, index=pd.Index(label_index, name=labels.index.name or "object_id"))
    if flags is not None:
        per_label["is_swap_issue"] = np.concatenate([np.zeros(0, bool), *flags[0]]).astype(bool)
        per_label["is_badloc_issue"] = np.concatenate([np.zeros(0, bool), *flags[1]]).astype(bool)
    evidence, unlabelled = prediction_evidence(labels, predictions, iou_threshold, min_overlap)
    per_label = per_label.reindex(labels.index).join(evidence)
    # ObjectLab's badloc and our location score see different things (same-class similarity above p 0.5, versus
    # the best-overlapping detection of any class): their mean ranked location errors better than either alone
    # on the detection demo with both detectors (audit.demos.detection, 3 seeds).
    per_label["location_issue_score"] = (per_label["location_score"].fillna(0.0)
                                         + 1.0 - per_label["badloc_score"].fillna(1.0)) / 2

    pred_index = [i for ids in inputs.prediction_ids for i in ids]
    over = pd.DataFrame({"overlooked_score": np.concatenate([np.asarray(s, float) for s in overlooked])
                         if pred_index else []}, index=pd.Index(pred_index, name=predictions.index.name or "object_id"))
    if flags is not None:
        over["is_overlooked_issue"] = np.concatenate([np.zeros(0, bool), *flags[2]]).astype(bool)
    over = over[over["overlooked_score"].notna()]
    over = predictions.loc[over.index, ["sample_id", "label", "x", "y", "w", "h", "score"]].join(
        over.rename(columns=lambda c: f"{PREFIX}{c}"))

    metrics = {
        "n_images": len(images),
        "n_labels": len(labels),
        "n_predictions": len(predictions),
        "n_images_with_issues": int(images["is_issue"].sum()),
        "mean_label_quality": float(images["label_quality"].mean()),
        "n_swap_issues": int(per_label.get("is_swap_issue", pd.Series(dtype=bool)).fillna(False).sum()),
        "n_badloc_issues": int(per_label.get("is_badloc_issue", pd.Series(dtype=bool)).fillna(False).sum()),
        "n_overlooked_issues": int(over.get(f"{PREFIX}is_overlooked_issue", pd.Series(dtype=bool)).sum()),
        "n_overlooked_candidates": len(over),
        "per_box_flags": flags is not None,
        "method": "cleanlab.object_detection (ObjectLab) defaults",
    }
    metrics["n_unlabelled_detections"] = len(unlabelled)
    images.columns = [f"{PREFIX}{c}" for c in images.columns]
    per_label.columns = [f"{PREFIX}{c}" for c in per_label.columns]
    unlabelled = unlabelled.rename(columns={"best_label_iou": f"{PREFIX}best_label_iou",
                                            "missing_score": f"{PREFIX}missing_score"})
    return ObjectLabelQuality(images=images, labels=per_label, overlooked=over, unlabelled=unlabelled,
                              metrics=metrics)


def prediction_evidence(labels: pd.DataFrame, predictions: pd.DataFrame, iou_threshold: float = 0.5,
                        min_overlap: float = MIN_OVERLAP, min_score: float = MIN_SCORE,
                        ) -> tuple[pd.DataFrame, pd.DataFrame]:
    """What the detector says about each label box and each unlabelled detection (label-audit's scores; they need
    predictions but not confident ones, unlike ObjectLab's 0.95 thresholds).

    Per label box (indexed like ``labels``):

    - ``support``: highest confidence of any prediction (any class) with ``IoU >= min_overlap`` (0 when none);
      ``spurious_score = 1 - support``: high when the detector sees no object there.
    - ``best_prediction_iou`` (any class), ``same_class_iou`` (predictions of the label's class; 0 when none).
    - ``given_class_score`` / ``other_class_score``: highest confidence of a prediction of the label's class / of
      any other class among those with ``IoU >= iou_threshold`` (0 when none); ``other_class`` names the latter;
      ``class_margin = other_class_score - given_class_score`` (> 0: the detector prefers another class here).
    - ``location_score = 1 - IoU`` of the best-overlapping prediction with confidence >= ``min_score`` among
      those with ``IoU >= min_overlap`` (NaN when none): high when the detector sees the object elsewhere.

    Per unlabelled detection (second frame, indexed by prediction id): predictions whose best IoU with any label
    box is below ``min_overlap``, one per distinct box (its most confident class), with ``best_label_iou`` and
    ``missing_score`` = the confidence: likely objects nobody boxed.
    """
    _check_table(labels, "labels", need_score=False)
    _check_table(predictions, "predictions", need_score=True)
    n = len(labels)
    support, best_iou, same_iou = np.zeros(n), np.zeros(n), np.zeros(n)
    given_score, other_score = np.zeros(n), np.zeros(n)
    other_class = np.full(n, None, dtype=object)
    location = np.full(n, np.nan)
    best_label = np.zeros(len(predictions))
    label_boxes = labels[["x", "y", "w", "h"]].to_numpy(float)
    pred_boxes = predictions[["x", "y", "w", "h"]].to_numpy(float)
    label_names = labels["label"].astype(str).to_numpy(dtype=object)
    pred_names = predictions["label"].astype(str).to_numpy(dtype=object)
    scores = predictions["score"].to_numpy(float)
    label_rows = _rows_by_image(labels)
    for sample_id, rows in _rows_by_image(predictions).items():
        own = label_rows.get(sample_id)
        if own is None:
            continue
        iou = box_iou_matrix(label_boxes[own], pred_boxes[rows])
        best_label[rows] = iou.max(axis=0)
        score = scores[rows][None, :]
        same = label_names[own][:, None] == pred_names[rows][None, :]
        close, overlapping = iou >= iou_threshold, iou >= min_overlap
        other_scores = np.where(close & ~same, score, 0.0)
        located = np.where(overlapping & (score >= min_score), iou, -1.0).max(axis=1)
        support[own] = np.where(overlapping, score, 0.0).max(axis=1)
        best_iou[own] = iou.max(axis=1)
        same_iou[own] = np.where(same, iou, 0.0).max(axis=1)
        given_score[own] = np.where(close & same, score, 0.0).max(axis=1)
        other_score[own] = other_scores.max(axis=1)
        other_class[own] = np.where(other_score[own] > 0, pred_names[rows][other_scores.argmax(axis=1)], None)
        location[own] = np.where(located >= 0, 1.0 - located, np.nan)
    out = pd.DataFrame({"support": support, "spurious_score": 1.0 - support, "best_prediction_iou": best_iou,
                        "same_class_iou": same_iou, "given_class_score": given_score,
                        "other_class_score": other_score, "other_class": other_class,
                        "class_margin": other_score - given_score, "location_score": location}, index=labels.index)
    best_label_iou = pd.Series(best_label, index=predictions.index)

    unlabelled = predictions.assign(best_label_iou=best_label_iou)
    unlabelled = unlabelled[unlabelled["best_label_iou"] < min_overlap]
    unlabelled = (unlabelled.sort_values("score", ascending=False, kind="stable")
                  .drop_duplicates(["sample_id", "x", "y", "w", "h"]))
    unlabelled = unlabelled[["sample_id", "label", "x", "y", "w", "h", "score", "best_label_iou"]].assign(
        missing_score=unlabelled["score"])
    return out, unlabelled


def label_class_probs(labels: pd.DataFrame, predictions: pd.DataFrame, class_names: list[str],
                      iou_threshold: float = 0.5) -> np.ndarray:
    """Per label box, what the detector believes its class is: ``(n_labels, n_classes)``.

    Entry ``[i, k]`` is the highest confidence of a class-``k`` prediction with ``IoU >= iou_threshold`` with
    label box ``i``; rows are normalised to sum to 1 (a detector's per-class scores at one place need not), and
    are NaN where no prediction overlaps that much. These are the ``pred_probs`` to audit object classes with
    the image pipeline's rules (cleanlab confident learning), when a detector's predictions exist.
    """
    _check_table(labels, "labels", need_score=False)
    _check_table(predictions, "predictions", need_score=True)
    codes = {c: i for i, c in enumerate(class_names)}
    unknown = sorted(set(predictions["label"].astype(str)) - set(codes))
    if unknown:
        raise ObjectDetectionInputError(f"predictions use classes {unknown[:5]} that are not in class_names")
    probs = np.zeros((len(labels), len(class_names)))
    label_boxes = labels[["x", "y", "w", "h"]].to_numpy(float)
    pred_boxes = predictions[["x", "y", "w", "h"]].to_numpy(float)
    pred_codes = predictions["label"].astype(str).map(codes).to_numpy(int)
    scores = predictions["score"].to_numpy(float)
    label_rows = _rows_by_image(labels)
    for sample_id, rows in _rows_by_image(predictions).items():
        own = label_rows.get(sample_id)
        if own is None:
            continue
        i, j = np.nonzero(box_iou_matrix(label_boxes[own], pred_boxes[rows]) >= iou_threshold)
        np.maximum.at(probs, (own[i], pred_codes[rows[j]]), scores[rows[j]])
    total = probs.sum(axis=1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(total > 0, probs / total, np.nan)


# ------------------------------------------------------------------------------------------ the check


@register
class ObjectDetectionCheck(Check):
    """With a detector's predictions: cleanlab ObjectLab per image and its swapped / badly located / overlooked
    subtypes mapped back to boxes, plus label-audit's own evidence from the same predictions."""

    name: ClassVar[str] = "object_detection"
    level: ClassVar[str] = "object"
    requires: ClassVar[tuple[Requirement, ...]] = ("object_predictions",)
    description: ClassVar[str] = (
        "needs your detector's predictions: cleanlab ObjectLab label quality per image, swapped / badly located "
        "boxes, overlooked objects, and spurious boxes and missing objects from the same predictions")
    thresholds: ClassVar[tuple[Threshold, ...]] = (
        Threshold("min_object_label_quality", "objects.checks.object_detection.mean_label_quality", ">=", "rate",
                  "mean per-image label quality (ObjectLab)", "needs predictions: cleanlab's mean per-image "
                  "label quality"),
        Threshold("max_images_with_box_issues", "objects.checks.object_detection.n_images_with_issues", "<=",
                  "count", "images with box issues (ObjectLab)", "needs predictions: images cleanlab flags"),
    )
    trends: ClassVar[tuple[Trend, ...]] = (
        Trend("Mean per-image box label quality (ObjectLab)", "objects.checks.object_detection.mean_label_quality"),
    )
    report_sections: ClassVar[tuple[ReportSection, ...]] = (
        ReportSection("object-detection", "With predictions", "_object_detection.html.j2",
                      lambda si: object_detection_section(si), 37),
    )

    @classmethod
    def summary_line(cls, metrics: dict[str, Any]) -> str:
        if "skipped" in metrics:
            return f"skipped: {metrics['skipped']}"
        return (f"{metrics['n_images_with_issues']:,} of {metrics['n_images']:,} images with box issues; "
                f"{metrics['n_swap_issues']} swapped, {metrics['n_badloc_issues']} badly located, "
                f"{metrics['n_overlooked_issues']} overlooked")

    @classmethod
    def tiles(cls, state: dict[str, Any]) -> list[Tile]:
        from audit.presentation import format_float, format_number

        if state["status"] != "ok":
            return []
        m = state["metrics"]
        return [Tile("Box label quality", format_float(m.get("mean_label_quality")),
                     f"{format_number(m.get('n_images_with_issues'))} images flagged (needs predictions)")]

    def run(self, context: CheckContext) -> CheckResult:
        objects = context.extra["objects"]
        predictions = objects[objects["annotator"].astype(str) == "predictions"]
        items = context.samples
        images = context.extra.get("images")
        sample_ids = [str(s) for s in images.index] if images is not None else None
        classes = sorted(set(items["label"].astype(str)) | set(predictions["label"].astype(str)))
        result = object_label_quality(items, predictions, classes, sample_ids)
        per_item = result.labels.reindex(items.index)
        image_columns = result.images.reindex(items["sample_id"].astype(str).to_numpy())
        per_item[f"{PREFIX}image_label_quality"] = image_columns[f"{PREFIX}label_quality"].to_numpy()
        others = result.overlooked.drop(columns=["sample_id", "label", "x", "y", "w", "h", "score"],
                                        errors="ignore")
        metrics = dict(result.metrics)
        metrics["unlabelled_detections"] = json_safe(
            result.unlabelled.head(200).reset_index().to_dict(orient="records")) if len(result.unlabelled) else []
        return CheckResult(self.name, per_item, json_safe(metrics), others=others)


def object_detection_section(si: Any) -> dict[str, Any] | None:
    if si.state["status"] == "absent":
        return None
    return {"state": si.state, "metrics": si.state["metrics"]}
