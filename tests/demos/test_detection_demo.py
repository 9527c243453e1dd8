"""The detection demo's truth is exact and its injected errors are what they claim; the predictions and the
evaluation behave as documented."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from audit.demos import detection as d
from audit.geometry import box_iou_matrix, rle_to_box, rle_to_mask


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> d.DetectionDemo:
    return d.build_detection_demo(tmp_path_factory.mktemp("detection"), n_images=60, error_rate=0.1, seed=11)


def test_truth_boxes_are_the_masks_boxes_and_the_masks_are_the_bright_pixels(demo):
    truth = demo.truth
    assert len(truth) >= 60 * d.DIGITS_PER_IMAGE[0] * 0.9 and set(truth["label"]) == set(d.CLASSES)
    for _, row in truth.iterrows():
        assert rle_to_box(row["mask"], d.CANVAS, d.CANVAS).tolist() == [row["x"], row["y"], row["w"], row["h"]]
    # Independent of the masks' construction: the background is at most 70 and a digit pixel at alpha >= 0.3
    # is at least 0.3 x 255 = 76.5, while a blended edge pixel (alpha < 0.3) is at most 70 x 0.7 + 76.5 < 126.
    for sample_id, group in truth.groupby("sample_id"):
        pixels = d.load_grey(demo.samples.loc[sample_id, "filepath"])
        inside = np.zeros(pixels.shape, bool)
        for counts in group["mask"]:
            mask = rle_to_mask(counts, d.CANVAS, d.CANVAS)
            assert not (inside & mask).any()  # objects never overlap
            inside |= mask
        assert pixels[inside].min() >= 76
        assert (pixels[~inside] < 126).all()


def test_coco_files_hold_the_same_objects(demo):
    from pycocotools.coco import COCO

    coco = COCO(str(demo.root / "truth.json"))
    assert len(coco.getAnnIds()) == len(demo.truth)
    first = coco.loadAnns(coco.getAnnIds())[0]
    row = demo.truth.loc[first["object_id"]]
    assert np.array_equal(coco.annToMask(first).astype(bool), rle_to_mask(row["mask"], d.CANVAS, d.CANVAS))
    assert first["bbox"] == [row["x"], row["y"], row["w"], row["h"]]
    given = COCO(str(demo.root / "given.json"))
    assert len(given.getAnnIds()) == len(demo.given)
    assert (demo.root / "annotators" / "carol.json").is_file() and (demo.root / "errors.csv").is_file()


def test_injected_counts_match_the_rates(demo):
    n = len(demo.truth)
    counts = demo.errors.groupby(["label_set", "kind"]).size()
    for label_set, rate in demo.rates.items():
        k = round(rate * n)
        for kind in d.ERROR_KINDS:
            assert counts.get((label_set, kind), 0) == k, (label_set, kind)
        # every true object is kept once, minus the missing ones, plus one per duplicate and spurious box
        assert len(demo.label_set(label_set)) == n - k + k + k
    assert demo.label_set("given")["annotator"].eq("").all()
    assert sorted(demo.annotations["annotator"].unique()) == sorted(d.ANNOTATOR_ERROR_RATES)


def test_each_error_is_what_it_says_and_clean_objects_equal_the_truth(demo):
    truth = demo.truth
    for label_set in demo.rates:
        objects = demo.label_set(label_set)
        errors = demo.errors[demo.errors["label_set"] == label_set]
        box = objects[["x", "y", "w", "h"]]
        for _, e in errors.iterrows():
            if e["kind"] == "missing":
                same = objects[objects["sample_id"] == e["sample_id"]]
                true_box = truth.loc[[e["true_object_id"]], ["x", "y", "w", "h"]].to_numpy(float)
                assert box_iou_matrix(true_box, same[["x", "y", "w", "h"]].to_numpy(float)).max(initial=0) < 0.5
                continue
            obj = objects.loc[e["object_id"]]
            if e["kind"] == "spurious":
                others = truth[truth["sample_id"] == obj["sample_id"]][["x", "y", "w", "h"]].to_numpy(float)
                assert box_iou_matrix(box.loc[[e["object_id"]]].to_numpy(float), others).max(initial=0) == 0
                continue
            true = truth.loc[e["true_object_id"]]
            iou = box_iou_matrix(box.loc[[e["object_id"]]].to_numpy(float),
                                 true[["x", "y", "w", "h"]].to_numpy(float)[None, :])[0, 0]
            if e["kind"] == "wrong_class":
                assert obj["label"] != true["label"] and iou == 1.0
            elif e["kind"] == "location":
                assert obj["label"] == true["label"] and 0.15 <= iou <= 0.6, iou
            elif e["kind"] == "duplicate":
                original = objects.loc[e["related_object_id"]]
                assert obj["label"] == original["label"] == true["label"] and iou >= 0.6
        clean = objects.index.difference(pd.Index(errors["object_id"].dropna()))
        # a clean object (including the original of a duplicate pair) is a true object, untouched
        for object_id in clean[:50]:
            obj = objects.loc[object_id]
            candidates = truth[(truth["sample_id"] == obj["sample_id"]) & (truth["mask"] == obj["mask"])]
            assert len(candidates) == 1 and candidates["label"].iloc[0] == obj["label"]


def test_simulated_predictions_follow_their_stated_rates(demo):
    exact = d.simulate_predictions(demo.truth, jitter=0, miss_rate=0, confusion_rate=0, false_positive_rate=0)
    assert len(exact) == len(demo.truth)
    assert exact[["x", "y", "w", "h"]].to_numpy().tolist() == demo.truth[["x", "y", "w", "h"]].to_numpy().tolist()
    assert exact["label"].tolist() == demo.truth["label"].tolist()
    noisy = d.simulate_predictions(demo.truth, miss_rate=0.2, false_positive_rate=0.1, confusion_rate=0, seed=2)
    kept = noisy[~noisy.index.str.startswith("pred:fp:")]
    assert abs(len(kept) / len(demo.truth) - 0.8) < 0.1
    assert (noisy.index.str.startswith("pred:fp:")).sum() == round(0.1 * len(demo.truth))
    assert noisy["score"].between(0, 1).all()


def test_classifier_predictions_come_from_the_pixels(demo):
    predictions = d.classifier_predictions(demo.samples, demo.given, seed=0)
    assert predictions["annotator"].eq("predictions").all() and predictions["score"].between(0.02, 1).all()
    # the label-free proposals find the true objects (tight boxes of the same bright pixels)
    places = predictions.drop_duplicates(["sample_id", "x", "y", "w", "h"])
    found = 0
    for sample_id, group in demo.truth.groupby("sample_id"):
        own = places[places["sample_id"] == sample_id][["x", "y", "w", "h"]].to_numpy(float)
        if len(own):
            found += int((box_iou_matrix(group[["x", "y", "w", "h"]].to_numpy(float), own).max(axis=1) >= 0.7).sum())
    assert found / len(demo.truth) >= 0.95
    # the out-of-fold classifier mostly agrees with the truth on the detected digits
    top = predictions.sort_values("score", ascending=False).drop_duplicates(["sample_id", "x", "y", "w", "h"])
    agree = 0
    for _, p in top.iterrows():
        truth = demo.truth[demo.truth["sample_id"] == p["sample_id"]]
        iou = box_iou_matrix(p[["x", "y", "w", "h"]].to_numpy(float)[None, :],
                             truth[["x", "y", "w", "h"]].to_numpy(float))[0]
        agree += bool(iou.max() >= 0.7 and truth["label"].iloc[iou.argmax()] == p["label"])
    assert agree / len(top) >= 0.8


def test_average_precision_equals_scikit_learn_when_every_error_is_ranked():
    from sklearn.metrics import average_precision_score

    rng = np.random.default_rng(0)
    scores = rng.integers(0, 20, 200).astype(float)  # ties on purpose
    hits = rng.random(200) < 0.2
    assert d.average_precision(scores, hits, int(hits.sum())) == pytest.approx(average_precision_score(hits, scores))
    # errors never ranked count against recall: half the errors missing halves AP of a perfect ranking
    assert d.average_precision(np.array([3.0, 2.0, 1.0]), np.array([True, True, False]), 4) == pytest.approx(0.5)


def test_evaluate_findings_counts_units_by_hand():
    errors = pd.DataFrame([
        {"label_set": "given", "object_id": "w1", "related_object_id": None, "kind": "wrong_class"},
        {"label_set": "given", "object_id": "w2", "related_object_id": None, "kind": "wrong_class"},
        {"label_set": "given", "object_id": "d1", "related_object_id": "o1", "kind": "duplicate"},
        {"label_set": "given", "object_id": None, "related_object_id": None, "kind": "missing", "sample_id": "s",
         "x": 0.0, "y": 0.0, "w": 10.0, "h": 10.0},
    ])
    findings = pd.DataFrame([
        {"kind": "wrong_class", "object_id": "w1", "score": 0.9, "is_issue": True},
        {"kind": "wrong_class", "object_id": "c1", "score": 0.8, "is_issue": True},
        {"kind": "wrong_class", "object_id": "w2", "score": 0.1, "is_issue": False},
        {"kind": "duplicate", "object_id": "o1", "score": 0.9, "is_issue": True},  # either box of the pair counts
        {"kind": "duplicate", "object_id": "d1", "score": 0.9, "is_issue": True},  # ... once
        {"kind": "missing", "object_id": None, "sample_id": "s", "x": 1.0, "y": 0.0, "w": 10.0, "h": 10.0,
         "score": 0.7, "is_issue": True},
        {"kind": "missing", "object_id": None, "sample_id": "s", "x": 0.0, "y": 0.0, "w": 10.0, "h": 10.0,
         "score": 0.5, "is_issue": True},  # matches too, but the better-scored place took the object
    ])
    table = d.evaluate_findings(findings, errors, "given")
    wrong = table.loc["wrong_class"]
    assert (wrong["n_flagged"], wrong["n_found"], wrong["precision"], wrong["recall"]) == (2, 1, 0.5, 0.5)
    assert wrong["average_precision"] == pytest.approx((1 / 1 + 2 / 3) / 2)  # hits at ranks 1 and 3
    duplicate = table.loc["duplicate"]
    assert (duplicate["n_errors"], duplicate["precision"], duplicate["recall"]) == (1, 1.0, 1.0)
    assert duplicate["average_precision"] == 1.0
    missing = table.loc["missing"]
    assert (missing["precision"], missing["recall"], missing["average_precision"]) == (0.5, 1.0, 1.0)
    assert np.isnan(table.loc["spurious", "precision"])


def test_crop_classifier_without_predictions_finds_wrong_classes(demo):
    """The measurement's no-prediction path on a small demo: most wrong-class boxes are flagged and ranked
    first (the full-size numbers are in the report, `python -m audit.demos.detection`)."""
    table = d.evaluate_findings(d.findings_without_predictions(demo, "given", seed=0), demo.errors, "given")
    assert table.loc["wrong_class", "recall"] >= 0.7 and table.loc["wrong_class", "average_precision"] >= 0.7
    assert table.loc["duplicate", "recall"] == 1.0
    assert table.loc["spurious", "average_precision"] >= 0.8
