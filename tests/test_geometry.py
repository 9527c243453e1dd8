"""Boxes, RLE masks, IoU and matching against hand-computed values and brute force."""

from __future__ import annotations

import itertools

import numpy as np
import pandas as pd
import pytest

from audit import geometry as g

# --- boxes ----------------------------------------------------------------------------------------


def test_box_conversions_round_trip_and_normalise_by_image_size():
    boxes = np.array([[10.0, 20.0, 30.0, 40.0], [0.0, 0.0, 1.0, 2.0]])
    corners = g.xywh_to_xyxy(boxes)
    assert corners.tolist() == [[10, 20, 40, 60], [0, 0, 1, 2]]
    assert g.xyxy_to_xywh(corners).tolist() == boxes.tolist()
    normalised = g.normalize_boxes(boxes, width=200, height=100)
    assert normalised[0].tolist() == [0.05, 0.2, 0.15, 0.4]
    assert np.allclose(g.denormalize_boxes(normalised, 200, 100), boxes)
    with pytest.raises(g.GeometryError):
        g.xywh_to_xyxy(np.zeros((2, 3)))
    with pytest.raises(g.GeometryError):
        g.normalize_boxes(boxes, width=0, height=100)


def test_clip_boxes_flags_only_boxes_that_changed():
    boxes = np.array([
        [10, 10, 20, 20],  # inside
        [-5, 90, 20, 20],  # sticks out left and bottom of a 100 x 100 image
        [150, 150, 10, 10],  # wholly outside: clipped to zero size on the corner
        [10, 10, -4, 5],  # negative width: left alone, not "clipped"
    ], dtype=float)
    clipped, flag = g.clip_boxes(boxes, 100, 100)
    assert clipped.tolist() == [[10, 10, 20, 20], [0, 90, 15, 10], [100, 100, 0, 0], [10, 10, -4, 5]]
    assert flag.tolist() == [False, True, True, False]


def test_box_iou_matches_hand_computed_values():
    a = np.array([[0, 0, 10, 10]], float)
    b = np.array([
        [0, 0, 10, 10],  # identical: 1
        [5, 5, 10, 10],  # overlap 5x5 = 25, union 175: 1/7
        [2, 2, 5, 5],  # inside: 25 / 100
        [10, 0, 10, 10],  # touching edge: 0
        [20, 20, 5, 5],  # disjoint: 0
        [0, 0, -3, 10],  # negative width counts as empty: 0
    ], float)
    assert np.allclose(g.box_iou_matrix(a, b), [[1.0, 1 / 7, 0.25, 0.0, 0.0, 0.0]])
    assert g.box_iou_matrix(np.zeros((0, 4)), b).shape == (0, 6)
    assert g.box_iou_matrix(a, np.zeros((0, 4))).shape == (1, 0)


# --- masks ----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def coins_mask() -> np.ndarray:
    """Real shapes: the coins of scikit-image's coins photo, thresholded."""
    from skimage.data import coins

    return coins() > 120


def test_rle_round_trip_area_and_box_on_a_real_mask(coins_mask):
    height, width = coins_mask.shape
    counts = g.mask_to_rle(coins_mask)
    assert isinstance(counts, str)
    assert np.array_equal(g.rle_to_mask(counts, height, width), coins_mask)
    assert g.rle_area(counts, height, width) == int(coins_mask.sum())
    ys, xs = np.nonzero(coins_mask)
    expected = [xs.min(), ys.min(), xs.max() - xs.min() + 1, ys.max() - ys.min() + 1]
    assert g.rle_to_box(counts, height, width).tolist() == expected


def test_mask_iou_matches_pixel_counts(coins_mask):
    height, width = coins_mask.shape
    shifted = np.zeros_like(coins_mask)
    shifted[:, 7:] = coins_mask[:, :-7]
    half = coins_mask.copy()
    half[: height // 2] = False
    masks = [coins_mask, shifted, half]

    def by_hand(a, b):
        return np.logical_and(a, b).sum() / np.logical_or(a, b).sum()

    expected = [[by_hand(a, b) for b in masks] for a in masks]
    got = g.mask_iou_matrix([g.mask_to_rle(m) for m in masks], [g.mask_to_rle(m) for m in masks], height, width)
    assert np.allclose(got, expected)


def test_polygons_rasterise_to_the_enclosed_pixels():
    # COCO polygons use pixel-edge coordinates: the square with corners (1, 1) and (5, 4) covers columns 1..4
    # and rows 1..3, i.e. 4 x 3 = 12 pixels; a second ring of the same instance adds its own 2 x 2.
    counts = g.polygons_to_rle([[1, 1, 5, 1, 5, 4, 1, 4], [6, 0, 8, 0, 8, 2, 6, 2]], height=6, width=9)
    mask = g.rle_to_mask(counts, 6, 9)
    expected = np.zeros((6, 9), bool)
    expected[1:4, 1:5] = True
    expected[0:2, 6:8] = True
    assert np.array_equal(mask, expected)
    with pytest.raises(g.GeometryError):
        g.polygons_to_rle([[1, 1, 5, 1]], 6, 9)


def test_uncompressed_rle_is_read_column_major():
    runs = [8, 3, 3, 3, 3, 3, 25]  # 6 x 8 image: runs alternate background / foreground, column by column
    flat = np.concatenate([np.full(n, i % 2, bool) for i, n in enumerate(runs)])
    expected = flat.reshape(8, 6).T  # column-major
    assert np.array_equal(g.rle_to_mask(g.uncompressed_rle_to_rle(runs, 6, 8), 6, 8), expected)
    with pytest.raises(g.GeometryError):
        g.uncompressed_rle_to_rle([1, 2], 6, 8)


def test_majority_mask_keeps_pixels_in_more_than_half():
    a, b, c = (np.zeros((4, 4), bool) for _ in range(3))
    a[0, :3] = True
    b[0, 1:4] = True
    c[0, 2] = True
    fused = g.rle_to_mask(g.majority_mask([g.mask_to_rle(m) for m in (a, b, c)], 4, 4), 4, 4)
    assert np.flatnonzero(fused[0]).tolist() == [1, 2]  # pixels 1 and 2 are in two or three masks
    assert g.majority_mask([], 4, 4) is None


# --- matching -------------------------------------------------------------------------------------


def brute_force_best(iou: np.ndarray, threshold: float) -> float:
    """Largest summed IoU of a one-to-one matching using only pairs with IoU >= threshold (and > 0)."""
    n_a, n_b = iou.shape
    best = 0.0
    for k in range(min(n_a, n_b) + 1):
        for rows in itertools.combinations(range(n_a), k):
            for cols in itertools.permutations(range(n_b), k):
                values = iou[list(rows), list(cols)]
                if np.all((values >= threshold) & (values > 0)):
                    best = max(best, float(values.sum()))
    return best


@pytest.mark.parametrize("seed", range(12))
def test_match_is_the_best_assignment_found_by_brute_force(seed):
    rng = np.random.default_rng(seed)
    n_a, n_b = int(rng.integers(1, 6)), int(rng.integers(1, 6))
    boxes_a = np.column_stack([rng.uniform(0, 30, (n_a, 2)), rng.uniform(5, 25, (n_a, 2))])
    boxes_b = np.column_stack([rng.uniform(0, 30, (n_b, 2)), rng.uniform(5, 25, (n_b, 2))])
    iou = g.box_iou_matrix(boxes_a, boxes_b)
    threshold = [0.0, 0.1, 0.3, 0.5][seed % 4]
    result = g.match(iou, threshold)
    rows, cols = result.pairs[:, 0], result.pairs[:, 1]
    assert len(set(rows)) == len(rows) and len(set(cols)) == len(cols)
    assert np.all(result.iou >= threshold) and np.all(result.iou > 0)
    assert np.allclose(result.iou, iou[rows, cols])
    assert result.iou.sum() == pytest.approx(brute_force_best(iou, threshold))
    assert sorted([*rows, *result.unmatched_a]) == list(range(n_a))
    assert sorted([*cols, *result.unmatched_b]) == list(range(n_b))


def test_match_never_lets_a_weak_pair_displace_a_valid_one():
    # Greedy-by-row would give row 0 column 0 (0.6) and leave row 1 without its only partner.
    iou = np.array([[0.6, 0.55], [0.58, 0.0]])
    result = g.match(iou, 0.5)
    assert {tuple(p) for p in result.pairs} == {(0, 1), (1, 0)}
    empty = g.match(np.zeros((0, 3)), 0.5)
    assert empty.pairs.shape == (0, 2) and empty.unmatched_b.tolist() == [0, 1, 2]
    with pytest.raises(g.GeometryError):
        g.match(iou, 1.5)


# --- problem codes and the object table -----------------------------------------------------------


def test_problem_codes_by_hand():
    raw = np.array([
        [10, 10, 20, 20],  # fine
        [10, 10, 0, 5],  # zero_size
        [10, 10, -3, 5],  # negative_size
        [90, 90, 20, 20],  # clipped (100 x 100 image)
        [10, 10, 1, 30],  # tiny: 1 px wide
        [1, 1, 99, 99],  # whole_image: 98% of the image
    ], float)
    clipped, flag = g.clip_boxes(raw, 100, 100)
    assert g.box_problem_codes(clipped, 100, 100, flag) == ["", "zero_size", "negative_size", "clipped", "tiny",
                                                           "whole_image"]
    assert g.join_codes("tiny;clipped", ["clipped", "custom"]) == "clipped;tiny;custom"


def test_build_object_table_clips_normalises_and_flags_duplicates():
    records = [
        {"object_id": "a", "sample_id": "s1", "label": "cat", "x": 10, "y": 10, "w": 20, "h": 20},
        {"object_id": "b", "sample_id": "s1", "label": "cat", "x": 10, "y": 10, "w": 20, "h": 20.2},  # IoU 0.99
        {"object_id": "c", "sample_id": "s1", "label": "dog", "x": 10, "y": 10, "w": 20, "h": 20},  # other class
        {"object_id": "d", "sample_id": "s1", "label": "cat", "x": 190, "y": 0, "w": 20, "h": 10,
         "problems": "custom"},
    ]
    for r in records:
        r.update(image_width=200, image_height=100)
    table = g.build_object_table(pd.DataFrame(records))
    assert list(table.columns) == list(g.OBJECT_COLUMNS)
    assert table.index.name == "object_id"
    assert table.loc["a", "problems"] == "duplicate_box" and table.loc["b", "problems"] == "duplicate_box"
    assert table.loc["c", "problems"] == ""
    assert table.loc["d", ["x", "w", "xn", "wn"]].tolist() == [190, 10, 0.95, 0.05]
    assert table.loc["d", "problems"] == "clipped;custom"
    assert table["annotator"].tolist() == [""] * 4 and table["score"].isna().all()
    assert g.same_class_overlap(table).loc["a"] == pytest.approx(400 / 404)
    with pytest.raises(g.GeometryError, match="unique"):
        g.build_object_table(pd.DataFrame([records[0], records[0]]))
    with pytest.raises(g.GeometryError, match="columns"):
        g.build_object_table(pd.DataFrame([{"object_id": "x"}]))


def test_paired_box_iou_is_the_diagonal_of_pycocotools_matrix():
    rng = np.random.default_rng(3)
    a = np.column_stack([rng.uniform(0, 50, (500, 2)), rng.uniform(-5, 40, (500, 2))])
    b = a + rng.normal(0, 8, a.shape)
    b[:20] = a[:20]  # identical boxes: IoU 1 (unless empty)
    b[20:40, 2:] = 0  # empty boxes: IoU 0
    assert np.allclose(g.paired_box_iou(a, b), np.diag(g.box_iou_matrix(a, b)), rtol=0, atol=1e-12)
    assert g.paired_box_iou([[0, 0, 10, 10]], [[5, 0, 10, 10]]).tolist() == [50 / 150]
    with pytest.raises(g.GeometryError, match="same shape"):
        g.paired_box_iou(a, b[:3])


def _same_class_overlap_by_brute_force(objects: pd.DataFrame) -> np.ndarray:
    boxes = objects[["x", "y", "w", "h"]].to_numpy(float)
    keys = list(zip(objects["sample_id"], objects.get("annotator", pd.Series("", index=objects.index)),
                    objects["label"], strict=True))
    iou = g.box_iou_matrix(boxes, boxes)
    out = np.zeros(len(objects))
    for i, j in itertools.permutations(range(len(objects)), 2):
        if keys[i] == keys[j] and not any(pd.isna(k) for k in keys[i]):
            out[i] = max(out[i], iou[i, j])
    return out


@pytest.mark.parametrize("seed", [0, 1])
def test_same_class_overlap_equals_brute_force(seed):
    rng = np.random.default_rng(seed)
    n = 240
    table = pd.DataFrame({"sample_id": rng.choice(["s1", "s2", "s3", "s4"], n),
                          "annotator": rng.choice(["", "ann"], n),
                          "label": rng.choice(["cat", "dog", "fox"], n).astype(object),
                          "x": rng.uniform(0, 60, n), "y": rng.uniform(0, 60, n),
                          "w": rng.uniform(1, 40, n), "h": rng.uniform(1, 40, n)},
                         index=[f"o{i}" for i in range(n)])
    table.loc[table.index[:5], "label"] = None  # no class: compared with nothing
    found = g.same_class_overlap(table)
    assert list(found.index) == list(table.index)
    expected = _same_class_overlap_by_brute_force(table)
    assert np.allclose(found.to_numpy(), expected, rtol=0, atol=1e-12)
    assert (found.iloc[:5] == 0).all() and (expected > 0).sum() > n / 2
    # without an annotator column every box counts as the same annotator's
    plain = table.drop(columns="annotator")
    assert np.allclose(g.same_class_overlap(plain).to_numpy(), _same_class_overlap_by_brute_force(
        plain.assign(annotator="")), rtol=0, atol=1e-12)
    assert g.same_class_overlap(table.iloc[:1]).tolist() == [0.0] and g.same_class_overlap(table.iloc[:0]).empty


def test_same_class_overlap_on_one_crowded_image_spans_several_chunks():
    # 2,100 boxes of one class on one image: 4.4 million pairs, more than one step of the vectorised pairs
    rng = np.random.default_rng(7)
    n = 2100
    table = pd.DataFrame({"sample_id": "s", "label": "cat", "x": rng.uniform(0, 2000, n), "y": rng.uniform(0, 50, n),
                          "w": rng.uniform(5, 30, n), "h": rng.uniform(5, 30, n)})
    iou = g.box_iou_matrix(table[["x", "y", "w", "h"]].to_numpy(float), table[["x", "y", "w", "h"]].to_numpy(float))
    np.fill_diagonal(iou, 0.0)
    assert np.allclose(g.same_class_overlap(table).to_numpy(), iou.max(axis=1), rtol=0, atol=1e-12)
