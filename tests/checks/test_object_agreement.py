"""Object agreement on hand-built cases (expected values worked out by hand), published agreement examples laid
out as boxes, and the demo's annotators of known reliability."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from audit.checks.object_agreement import (
    PREFIX,
    ObjectAgreementInputError,
    object_agreement,
    pairwise_matches,
)
from audit.geometry import build_object_table, mask_to_rle


def table(rows: list[tuple], size: int = 100) -> pd.DataFrame:
    """rows: (object_id, annotator, label, x, y, w, h[, sample_id])."""
    records = []
    if not rows:
        return build_object_table(pd.DataFrame(columns=["object_id", "sample_id", "label", "x", "y", "w", "h",
                                                        "image_width", "image_height"]))
    for row in rows:
        object_id, annotator, label, x, y, w, h, *rest = row
        records.append({"object_id": object_id, "sample_id": rest[0] if rest else "img1", "label": label, "x": x,
                        "y": y, "w": w, "h": h, "image_width": size, "image_height": size, "annotator": annotator})
    return build_object_table(records)


def col(result, name: str) -> pd.Series:
    return result.objects[f"{PREFIX}{name}"]


# --- two annotators, worked by hand -------------------------------------------------------------------

TWO = [
    ("a1", "alice", "cat", 0, 0, 10, 10),
    ("a2", "alice", "dog", 50, 50, 10, 10),
    ("b1", "bob", "cat", 0, 0, 10, 10),  # = a1, IoU 1
    ("b2", "bob", "dog", 52, 50, 10, 10),  # a2 moved 2 px: overlap 8 x 10 = 80, union 120, IoU 2/3
    ("b3", "bob", "cat", 80, 80, 10, 10),  # nobody else drew it
]


def test_two_annotators_precision_recall_iou_by_hand():
    result = object_agreement(table(TWO))
    m = result.metrics
    vs = m["per_annotator"]["alice"]["vs_annotators"]["bob"]
    # 2 matched of alice's 2 and bob's 3
    assert vs["n_matched"] == 2
    assert vs["precision"] == pytest.approx(1.0) and vs["recall"] == pytest.approx(2 / 3)
    assert vs["f1"] == pytest.approx(2 * 2 / (2 + 3))
    assert vs["mean_iou"] == pytest.approx((1 + 2 / 3) / 2)
    bob = m["per_annotator"]["bob"]["vs_annotators"]["alice"]
    assert bob["precision"] == pytest.approx(2 / 3) and bob["recall"] == pytest.approx(1.0)
    assert m["mean_iou"] == pytest.approx(5 / 6)
    # Consensus needs both of two annotators: cat at (0, 0) and dog fused to the mean corners (51, 50)-(61, 60).
    consensus = result.consensus.sort_values("x")
    assert consensus["label"].tolist() == ["cat", "dog"]
    assert consensus[["x", "y", "w", "h"]].to_numpy().tolist() == [[0, 0, 10, 10], [51, 50, 10, 10]]
    assert consensus["annotator"].eq("consensus").all() and consensus["support"].tolist() == [2, 2]
    # Against the consensus: alice 2 of 2 and 2 of 2; bob 2 of 3 and 2 of 2. IoU of a2 and the fused dog box
    # is 9 x 10 / (11 x 10).
    alice, bob = m["per_annotator"]["alice"], m["per_annotator"]["bob"]
    assert (alice["precision"], alice["recall"]) == (1.0, 1.0)
    assert bob["precision"] == pytest.approx(2 / 3) and bob["recall"] == 1.0
    assert alice["mean_iou"] == pytest.approx((1 + 9 / 11) / 2)
    assert m["n_consensus"] == 2


def test_two_annotators_disputes_and_suspects():
    result = object_agreement(table(TWO))
    assert col(result, "reasons")["b3"] == "missing_in_some"
    assert col(result, "suspect")["b3"] == "unsupported"
    assert col(result, "is_disputed").to_dict() == {"a1": False, "a2": False, "b1": False, "b2": False, "b3": True}
    assert col(result, "best_iou")["a2"] == pytest.approx(2 / 3)
    assert col(result, "best_iou")["b3"] == 0.0
    assert result.missing.empty  # both drew both consensus objects
    assert result.disputed.index.tolist() == ["b3"]
    json.dumps(result.metrics, allow_nan=False)


def test_pairwise_matches_lists_matched_and_unmatched_objects():
    matches = pairwise_matches(table(TWO))
    matched = matches.dropna(subset=["object_a", "object_b"])
    assert set(zip(matched["object_a"], matched["object_b"], strict=True)) == {("a1", "b1"), ("a2", "b2")}
    lone = matches[matches["object_a"].isna()]
    assert lone["object_b"].tolist() == ["b3"] and lone["best_iou"].tolist() == [0.0]


# --- three annotators: class, location, duplicate, missing -----------------------------------------

THREE = [
    # object 1: carol gives another class -> consensus "cat", carol's is the wrong class
    ("a1", "alice", "cat", 0, 0, 20, 20), ("b1", "bob", "cat", 0, 0, 20, 20), ("c1", "carol", "dog", 1, 0, 20, 20),
    # object 2: alice's box moved by 10 px (IoU 10 x 20 / (30 x 20) = 1/3): misplaced
    ("a2", "alice", "dog", 60, 0, 20, 20), ("b2", "bob", "dog", 50, 0, 20, 20), ("c2", "carol", "dog", 50, 0, 20, 20),
    # object 3: bob skipped it
    ("a3", "alice", "cat", 0, 50, 20, 20), ("c3", "carol", "cat", 0, 50, 20, 20),
    # object 4: carol drew it twice
    ("a4", "alice", "dog", 50, 50, 20, 20), ("b4", "bob", "dog", 50, 50, 20, 20),
    ("c4", "carol", "dog", 50, 50, 20, 20), ("c4x", "carol", "dog", 51, 50, 20, 20),
]


def test_three_annotators_consensus_and_suspects():
    result = object_agreement(table(THREE))
    suspect = col(result, "suspect")
    assert suspect["c1"] == "wrong_class"
    assert suspect["a2"] == "misplaced"
    assert col(result, "consensus_best_iou")["a2"] == pytest.approx(1 / 3)
    assert {suspect["c4"], suspect["c4x"]} == {"", "duplicate"}
    assert suspect[["a1", "b1", "b2", "c2", "a3", "c3", "a4", "b4"]].eq("").all()
    reasons = col(result, "reasons")
    assert reasons["a1"] == "class_disagreement" and reasons["c1"] == "class_disagreement"
    assert "location_disagreement" in reasons["a2"] and "location_disagreement" in reasons["b2"]
    assert reasons["a3"] == "missing_in_some"
    assert "duplicate" in reasons["c4"] and "duplicate" in reasons["c4x"]
    consensus = result.consensus.sort_values(["y", "x"])
    assert consensus["label"].tolist() == ["cat", "dog", "cat", "dog"]
    assert consensus["support"].tolist() == [3, 2, 2, 3]  # object 2: bob and carol only (alice's is elsewhere)
    # bob did not draw object 3 (skipped: nothing of his overlaps it), alice drew object 2 elsewhere
    missing = result.missing.set_index("annotator")
    assert set(result.missing["annotator"]) == {"alice", "bob"}
    assert bool(missing.loc["bob", "skipped"]) and missing.loc["bob", "best_iou"] == 0.0
    assert not bool(missing.loc["alice", "skipped"]) and missing.loc["alice", "best_iou"] == pytest.approx(1 / 3)
    # class agreement of carol with the consensus: object 1 wrong of her 4 consensus objects (one box of her
    # duplicate pair belongs to object 4)
    assert result.metrics["per_annotator"]["carol"]["class_agreement"] == pytest.approx(3 / 4)
    assert result.metrics["suspects"] == {"wrong_class": 1, "misplaced": 1, "unsupported": 0, "duplicate": 1}


def test_a_tie_goes_to_the_annotator_who_agrees_more_often():
    rows = [
        # bob disagrees with both others on objects 1 and 2, so he agrees less often than carol
        ("a1", "alice", "cat", 0, 0, 20, 20), ("b1", "bob", "dog", 0, 0, 20, 20), ("c1", "carol", "cat", 0, 0, 20, 20),
        ("a2", "alice", "cat", 50, 0, 20, 20), ("b2", "bob", "dog", 50, 0, 20, 20),
        ("c2", "carol", "cat", 50, 0, 20, 20),
        # object 3: only bob and carol, who disagree: carol's class wins
        ("b3", "bob", "dog", 0, 50, 20, 20), ("c3", "carol", "cat", 0, 50, 20, 20),
    ]
    result = object_agreement(table(rows))
    assert col(result, "consensus_label")["b3"] == "cat"
    assert col(result, "suspect")["b3"] == "wrong_class" and col(result, "suspect")["c3"] == ""
    assert col(result, "class_support")["c3"] > col(result, "class_support")["b3"]


def test_clusters_never_hold_two_objects_of_one_annotator():
    # A chain a1-b1 (IoU 0.8), b1-c1 (0.8), c1-a2 (0.8) must not fuse a1 and a2.
    rows = [("a1", "alice", "x", 0, 0, 10, 10), ("b1", "bob", "x", 1, 0, 10, 10),
            ("c1", "carol", "x", 2, 0, 10, 10), ("a2", "alice", "x", 3, 0, 10, 10)]
    result = object_agreement(table(rows), iou_threshold=0.5)
    clusters = col(result, "cluster")
    assert clusters["a1"] != clusters["a2"]
    for _, members in result.objects.groupby(f"{PREFIX}cluster"):
        annotators = table(rows).loc[members.index, "annotator"]
        assert annotators.is_unique


# --- published agreement statistics, laid out as boxes ---------------------------------------------------

# Krippendorff (2011), "Computing Krippendorff's Alpha-Reliability", section C: alpha = 0.743 (nominal).
KRIPPENDORFF_2011 = {
    "A": [1, 2, 3, 3, 2, 1, 4, 1, 2, None, None, None],
    "B": [1, 2, 3, 3, 2, 2, 4, 1, 2, 5, None, 3],
    "C": [None, 3, 3, 3, 2, 3, 4, 2, 2, 5, 1, None],
    "D": [1, 2, 3, 3, 2, 4, 4, 1, 2, 5, 1, None],
}


def test_krippendorff_alpha_on_matched_objects_is_krippendorff_2011():
    rows = [(f"{coder}{u}", coder, str(v), 10, 10, 30, 30, f"unit{u:02d}")
            for coder, values in KRIPPENDORFF_2011.items() for u, v in enumerate(values) if v is not None]
    result = object_agreement(table(rows))
    assert round(result.metrics["krippendorff_alpha"], 3) == 0.743
    # only unit 1 (0-based) through 8 were boxed by all four coders: Fleiss uses those 8
    assert result.metrics["fleiss_items"] == 8


FLEISS_TABLE = np.array([
    [0, 0, 0, 0, 14], [0, 2, 6, 4, 2], [0, 0, 3, 5, 6], [0, 3, 9, 2, 0], [2, 2, 8, 1, 1],
    [7, 7, 0, 0, 0], [3, 2, 6, 3, 0], [2, 5, 3, 2, 2], [6, 5, 2, 1, 0], [0, 2, 2, 3, 7],
])


def test_fleiss_kappa_on_objects_drawn_by_everyone_is_fleiss_1971():
    # Wikipedia's "Fleiss' kappa" example: 10 subjects, 14 raters, published kappa 0.210.
    rows = []
    for subject, counts in enumerate(FLEISS_TABLE):
        labels = [str(c + 1) for c, n in enumerate(counts) for _ in range(n)]
        rows += [(f"s{subject}r{r}", f"rater{r:02d}", label, 5, 5, 40, 40, f"subject{subject}")
                 for r, label in enumerate(labels)]
    result = object_agreement(table(rows))
    assert round(result.metrics["fleiss_kappa"], 3) == 0.210
    assert result.metrics["fleiss_items"] == 10


# --- masks and coverage ------------------------------------------------------------------------------


def test_mask_iou_separates_objects_that_share_a_box():
    # Two strokes in the same 10 x 10 box: the left and the right column halves. Box IoU 1, mask IoU 0.
    left, right = np.zeros((40, 40), bool), np.zeros((40, 40), bool)
    left[0:10, 0:5], right[0:10, 5:10] = True, True
    left[0, 9] = right[9, 0] = True  # one pixel each so both boxes span the full 10 x 10
    base = table([("a1", "alice", "x", 0, 0, 10, 10), ("b1", "bob", "x", 0, 0, 10, 10)], size=40)
    base["mask"] = [mask_to_rle(left), mask_to_rle(right)]
    by_box = object_agreement(base, iou_type="box")
    by_mask = object_agreement(base, iou_type="auto")
    assert by_box.metrics["n_matched_pairs"] == 1 and by_box.metrics["iou_type"] == "box"
    assert by_mask.metrics["n_matched_pairs"] == 0 and by_mask.metrics["iou_type"] == "mask"
    with pytest.raises(ObjectAgreementInputError, match="mask"):
        object_agreement(table(TWO), iou_type="mask")


def test_coverage_decides_who_could_have_drawn_an_object():
    rows = [("a1", "alice", "cat", 0, 0, 10, 10, "img1"), ("b1", "bob", "cat", 0, 0, 10, 10, "img1"),
            ("a2", "alice", "cat", 0, 0, 10, 10, "img2")]
    everyone = object_agreement(table(rows))
    # bob covered img2 by default and drew nothing there: his recall against alice is 1 of 2
    assert everyone.metrics["per_annotator"]["bob"]["vs_annotators"]["alice"]["recall"] == pytest.approx(0.5)
    assert col(everyone, "reasons")["a2"] == "missing_in_some"
    coverage = pd.DataFrame({"sample_id": ["img1", "img1", "img2"], "annotator": ["alice", "bob", "alice"]})
    only_seen = object_agreement(table(rows), coverage=coverage)
    assert only_seen.metrics["per_annotator"]["bob"]["vs_annotators"]["alice"]["recall"] == 1.0
    assert col(only_seen, "reasons")["a2"] == "" and col(only_seen, "in_consensus")["a2"]
    with pytest.raises(ObjectAgreementInputError, match="coverage"):
        object_agreement(table(rows), coverage=coverage[coverage["annotator"] == "alice"])


def test_bad_input_is_refused_with_a_reason():
    with pytest.raises(ObjectAgreementInputError, match="lacks columns"):
        object_agreement(pd.DataFrame({"sample_id": ["a"]}))
    with pytest.raises(ObjectAgreementInputError, match="class_names"):
        object_agreement(table(TWO), class_names=["cat"])
    with pytest.raises(ObjectAgreementInputError, match="iou_threshold"):
        object_agreement(table(TWO), iou_threshold=0)


# --- the demo's annotators --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    from audit.demos.detection import build_detection_demo

    return build_detection_demo(tmp_path_factory.mktemp("detection-demo"), n_images=80, seed=3)


def test_demo_annotators_are_ranked_by_their_reliability(demo):
    from audit.demos.detection import ANNOTATOR_ERROR_RATES, CLASSES

    result = object_agreement(demo.annotations, class_names=CLASSES)
    per = result.metrics["per_annotator"]
    ordered = sorted(ANNOTATOR_ERROR_RATES, key=ANNOTATOR_ERROR_RATES.get)  # most reliable first
    for key in ("f1", "class_agreement"):
        values = [per[a][key] for a in ordered]
        assert values == sorted(values, reverse=True), (key, values)
    # the least reliable annotator is the odd one out most often
    suspects = col(result, "suspect").ne("").groupby(demo.annotations["annotator"]).mean()
    assert suspects.idxmax() == ordered[-1] and suspects.idxmin() == ordered[0]
    json.dumps(result.metrics, allow_nan=False)


def test_an_empty_table_or_a_single_annotator_gives_null_statistics_with_reasons():
    empty = object_agreement(table([]))
    assert empty.objects.empty and empty.consensus.empty and empty.metrics["n_objects"] == 0
    assert empty.metrics["krippendorff_alpha"] is None and "krippendorff_alpha" in empty.metrics["null_reasons"]
    alone = object_agreement(table([("a1", "alice", "cat", 0, 0, 10, 10)]))
    assert alone.metrics["fleiss_kappa"] is None and alone.metrics["per_annotator"]["alice"]["vs_annotators"] == {}
    assert alone.consensus["members"].tolist() == ["a1"]  # one of one annotators is a majority


def test_shipped_boxes_are_matched_to_the_consensus_box_of_their_own_image():
    from audit.checks.object_agreement import _match_to

    consensus = pd.DataFrame({"sample_id": ["s1", "s1", "s2"], "label": ["cat", "dog", "cat"],
                              "x": [0.0, 20.0, 0.0], "y": 0.0, "w": 10.0, "h": 10.0}, index=["c1", "c2", "c3"])
    items = pd.DataFrame({"sample_id": ["s2", "s1", "s1", "s3"], "label": "cat",
                          "x": [5.0, 0.0, 25.0, 0.0], "y": 0.0, "w": 10.0, "h": 10.0}, index=["i1", "i2", "i3", "i4"])
    iou, label = _match_to(items, consensus)
    # by hand: i1 overlaps c3 by 5 x 10 = 50 of 150 px; i2 is c1; i3 overlaps c2 by 50 of 150; s3 has no consensus
    assert iou.tolist() == pytest.approx([1 / 3, 1.0, 1 / 3, 0.0])
    assert label.tolist() == ["cat", "cat", "dog", None]
    back, back_label = _match_to(consensus, items)
    assert back.tolist() == pytest.approx([1.0, 1 / 3, 1 / 3]) and back_label.tolist() == ["cat", "cat", "cat"]
    assert _match_to(items, consensus.iloc[:0])[0].tolist() == [0.0] * 4
