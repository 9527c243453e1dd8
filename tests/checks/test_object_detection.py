"""cleanlab ObjectLab through our object tables: the conversion, the mapping back to ids (checked against
cleanlab called directly on hand-written inputs), and label-audit's prediction evidence worked out by hand."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from audit.checks.object_detection import (
    PREFIX,
    ObjectDetectionInputError,
    label_class_probs,
    object_label_quality,
    prediction_evidence,
    to_cleanlab_inputs,
)
from audit.geometry import build_object_table

CLASSES = ["cat", "dog"]


def objects(rows: list[tuple], annotator: str = "") -> pd.DataFrame:
    """rows: (object_id, sample_id, label, x, y, w, h[, score])."""
    records = [{"object_id": r[0], "sample_id": r[1], "label": r[2], "x": r[3], "y": r[4], "w": r[5], "h": r[6],
                "score": r[7] if len(r) > 7 else np.nan, "image_width": 100, "image_height": 100,
                "annotator": annotator} for r in rows]
    return build_object_table(records)


LABELS = objects([
    ("L1", "img1", "cat", 10, 10, 20, 20),  # the detector sees a dog here: wrong class
    ("L2", "img2", "dog", 50, 50, 20, 20),  # fine
    ("L3", "img3", "cat", 0, 0, 10, 10),  # the detector sees nothing here: spurious
    ("L4", "img3", "cat", 30, 30, 10, 10),  # the detector sees the cat 6 px to the right: badly located
])
PREDICTIONS = objects([
    ("P1", "img1", "dog", 10, 10, 20, 20, 0.99),
    ("P2", "img2", "dog", 52, 50, 20, 20, 0.98),
    ("P3", "img2", "cat", 5, 5, 20, 20, 0.97),  # no label anywhere near: overlooked
    ("P5", "img2", "cat", 50, 50, 20, 20, 0.30),  # a weak second opinion on L2
    ("P4", "img3", "cat", 36, 30, 10, 10, 0.60),
], annotator="predictions")
SAMPLES = ["img1", "img2", "img3", "img4"]  # img4: an image with nothing on it

# The same data written by hand in cleanlab's formats (xyxy boxes; predictions per class, [x1, y1, x2, y2, p]).
HAND_LABELS = [
    {"bboxes": np.array([[10, 10, 30, 30]], float), "labels": np.array([0])},
    {"bboxes": np.array([[50, 50, 70, 70]], float), "labels": np.array([1])},
    {"bboxes": np.array([[0, 0, 10, 10], [30, 30, 40, 40]], float), "labels": np.array([0, 0])},
    {"bboxes": np.zeros((0, 4)), "labels": np.zeros(0, int)},
]
HAND_PREDICTIONS = [
    [np.zeros((0, 5)), np.array([[10, 10, 30, 30, 0.99]])],
    [np.array([[5, 5, 25, 25, 0.97], [50, 50, 70, 70, 0.30]]), np.array([[52, 50, 72, 70, 0.98]])],
    [np.array([[36, 30, 46, 40, 0.60]]), np.zeros((0, 5))],
    [np.zeros((0, 5)), np.zeros((0, 5))],
]


def test_conversion_to_cleanlab_formats_matches_the_hand_written_inputs():
    inputs = to_cleanlab_inputs(LABELS, PREDICTIONS, CLASSES, SAMPLES)
    assert inputs.sample_ids == SAMPLES
    for ours, hand in zip(inputs.labels, HAND_LABELS, strict=True):
        assert np.array_equal(ours["bboxes"], hand["bboxes"]) and np.array_equal(ours["labels"], hand["labels"])
    for ours, hand in zip(inputs.predictions, HAND_PREDICTIONS, strict=True):
        assert len(ours) == len(CLASSES)
        for a, b in zip(ours, hand, strict=True):
            assert a.shape[1] == 5 and np.allclose(a.reshape(-1, 5), b.reshape(-1, 5))
    assert inputs.label_ids == [["L1"], ["L2"], ["L3", "L4"], []]
    assert inputs.prediction_ids == [["P1"], ["P3", "P5", "P2"], ["P4"], []]  # class by class, as cleanlab flattens


def test_scores_map_back_to_ids_exactly_as_cleanlab_computes_them():
    from cleanlab.object_detection.filter import find_label_issues
    from cleanlab.object_detection.rank import (
        compute_badloc_box_scores,
        compute_overlooked_box_scores,
        compute_swap_box_scores,
        get_label_quality_scores,
    )

    result = object_label_quality(LABELS, PREDICTIONS, CLASSES, SAMPLES)
    swap = np.concatenate(compute_swap_box_scores(labels=HAND_LABELS, predictions=HAND_PREDICTIONS))
    badloc = np.concatenate(compute_badloc_box_scores(labels=HAND_LABELS, predictions=HAND_PREDICTIONS))
    overlooked = compute_overlooked_box_scores(labels=HAND_LABELS, predictions=HAND_PREDICTIONS)
    per = result.labels
    assert np.allclose(per.loc[["L1", "L2", "L3", "L4"], f"{PREFIX}swap_score"], swap)
    assert np.allclose(per.loc[["L1", "L2", "L3", "L4"], f"{PREFIX}badloc_score"], badloc)
    # P3 is the only confident prediction overlapping no label: the only overlooked candidate
    assert result.overlooked.index.tolist() == ["P3"]
    assert result.overlooked.loc["P3", f"{PREFIX}overlooked_score"] == pytest.approx(overlooked[1][0])
    assert result.overlooked.loc["P3", "score"] == pytest.approx(0.97)
    images = result.images
    assert images.index.tolist() == SAMPLES
    assert np.allclose(images[f"{PREFIX}label_quality"],
                       get_label_quality_scores(HAND_LABELS, HAND_PREDICTIONS, verbose=False))
    assert images[f"{PREFIX}is_issue"].tolist() == find_label_issues(HAND_LABELS, HAND_PREDICTIONS).tolist()
    assert images[f"{PREFIX}n_labels"].tolist() == [1, 1, 2, 0]
    # the wrong class is the lowest swap score, and its per-box flag pools into its image's flag
    assert per[f"{PREFIX}swap_score"].idxmin() == "L1"
    by_image = per.groupby(LABELS["sample_id"])[[f"{PREFIX}is_swap_issue", f"{PREFIX}is_badloc_issue"]].any()
    for sample_id, flagged in images[f"{PREFIX}is_issue"].items():
        box_flags = bool(by_image.loc[sample_id].any()) if sample_id in by_image.index else False
        over = result.overlooked[result.overlooked["sample_id"] == sample_id]
        box_flags |= bool(over[f"{PREFIX}is_overlooked_issue"].any())
        assert box_flags == flagged


def test_prediction_evidence_by_hand():
    evidence, unlabelled = prediction_evidence(LABELS, PREDICTIONS)
    e = evidence
    # L1: a dog prediction on the same box (IoU 1)
    assert e.loc["L1", ["support", "given_class_score", "other_class_score", "class_margin"]].tolist() == \
        pytest.approx([0.99, 0.0, 0.99, 0.99])
    assert e.loc["L1", "other_class"] == "dog" and e.loc["L1", "location_score"] == pytest.approx(0.0)
    # L2: P2 moved 2 px, IoU 18 x 20 / (22 x 20) = 9/11; P5 (cat, 0.30) on the very box
    assert e.loc["L2", "given_class_score"] == pytest.approx(0.98)
    assert e.loc["L2", "other_class_score"] == pytest.approx(0.30)
    assert e.loc["L2", "class_margin"] == pytest.approx(0.30 - 0.98)
    assert e.loc["L2", "same_class_iou"] == pytest.approx(9 / 11)
    assert e.loc["L2", "location_score"] == pytest.approx(0.0)  # P5 covers the box exactly
    # L3: nothing there
    assert e.loc["L3", "spurious_score"] == 1.0 and np.isnan(e.loc["L3", "location_score"])
    # L4: P4 moved 6 px, IoU 4 x 10 / (16 x 10) = 0.25: below 0.5 for class evidence, but it locates the cat
    assert e.loc["L4", ["given_class_score", "other_class_score"]].tolist() == [0.0, 0.0]
    assert e.loc["L4", "support"] == pytest.approx(0.6)
    assert e.loc["L4", "location_score"] == pytest.approx(0.75)
    assert unlabelled.index.tolist() == ["P3"] and unlabelled.loc["P3", "missing_score"] == pytest.approx(0.97)


def test_label_class_probs_by_hand():
    probs = label_class_probs(LABELS, PREDICTIONS, CLASSES)
    assert probs[0].tolist() == [0.0, 1.0]
    assert probs[1] == pytest.approx(np.array([0.30, 0.98]) / 1.28)
    assert np.isnan(probs[2]).all() and np.isnan(probs[3]).all()


def test_bad_input_is_refused_with_a_reason():
    bad = PREDICTIONS.copy()
    bad.loc["P1", "score"] = 1.5
    with pytest.raises(ObjectDetectionInputError, match="P1"):
        to_cleanlab_inputs(LABELS, bad, CLASSES)
    with pytest.raises(ObjectDetectionInputError, match="class_names"):
        to_cleanlab_inputs(LABELS, PREDICTIONS, ["cat"])
    with pytest.raises(ObjectDetectionInputError, match="sample_ids"):
        to_cleanlab_inputs(LABELS, PREDICTIONS, CLASSES, ["img1"])
    with pytest.raises(ObjectDetectionInputError, match="score"):
        to_cleanlab_inputs(LABELS, PREDICTIONS.drop(columns="score"), CLASSES)


def test_on_the_demo_a_perfect_detector_exposes_every_injected_error(tmp_path):
    """With predictions that miss nothing, confuse nothing and invent nothing, every missing object is an
    unlabelled detection, every wrong class has a positive class margin and every spurious box no support."""
    from audit.demos.detection import CLASSES as DIGITS
    from audit.demos.detection import build_detection_demo, simulate_predictions
    from audit.geometry import box_iou_matrix

    demo = build_detection_demo(tmp_path, n_images=40, seed=5)
    predictions = simulate_predictions(demo.truth, jitter=0.02, miss_rate=0, confusion_rate=0,
                                       false_positive_rate=0, seed=1)
    result = object_label_quality(demo.given, predictions, DIGITS, list(demo.samples.index))
    errors = demo.errors[demo.errors["label_set"] == "given"]
    per = result.labels
    wrong = errors.loc[errors["kind"] == "wrong_class", "object_id"]
    assert (per.loc[wrong, f"{PREFIX}class_margin"] > 0).all()
    spurious = errors.loc[errors["kind"] == "spurious", "object_id"]
    assert (per.loc[spurious, f"{PREFIX}spurious_score"] == 1.0).all()
    missing = errors[errors["kind"] == "missing"]
    places = result.unlabelled
    for _, row in missing.iterrows():
        same = places[places["sample_id"] == row["sample_id"]]
        iou = box_iou_matrix(row[["x", "y", "w", "h"]].to_numpy(float)[None, :], same[["x", "y", "w", "h"]]
                             .to_numpy(float))
        assert iou.size and iou.max() >= 0.5
    assert len(places) == len(missing)  # and nothing else is unlabelled
