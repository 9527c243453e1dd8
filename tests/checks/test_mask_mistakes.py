"""Mask mistakes: the streamed cleanlab segmentation against cleanlab's own functions, and regions as objects."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from audit.checks.mask_mistakes import (
    ArrayFile,
    MaskPredictionError,
    _kth_smallest,
    mask_regions,
    region_label_issues,
    region_objects,
    segmentation_label_quality,
)
from audit.geometry import mask_to_rle, rle_to_mask
from audit.sources.masks import IGNORE, MaskSpec

SPEC = MaskSpec(classes=("background", "a", "b", "c"), values=(0, 1, 2, 3), ignore_values=(255,), background=0,
                source="test")


def random_dataset(root: Path, n: int = 10, height: int = 18, width: int = 22, seed: int = 0,
                   ignore_share: float = 0.0) -> tuple[pd.Series, np.ndarray, np.ndarray]:
    """Masks (written as PNGs) of 8x8 real digit scans' ink levels (sklearn) scaled up, and noisy probabilities."""
    from sklearn.datasets import load_digits

    rng = np.random.default_rng(seed)
    digits = load_digits().images
    labels = np.zeros((n, height, width), np.int64)
    for i in range(n):
        levels = np.kron(digits[i], np.ones((3, 3)))[:height, :width]
        labels[i] = np.digitize(levels, [2, 8, 13])  # ink levels -> classes 0..3
    k = SPEC.n_classes
    logits = rng.normal(0, 1.5, (n, k, height, width))
    logits[np.arange(n)[:, None, None], labels, np.arange(height)[:, None], np.arange(width)] += 2.5
    probs = np.exp(logits)
    probs = (probs / probs.sum(axis=1, keepdims=True)).astype(np.float32)
    probs /= probs.sum(axis=1, keepdims=True)
    written = labels.astype(np.uint8)
    if ignore_share:
        written[rng.random(written.shape) < ignore_share] = 255
    root.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        path = root / f"s{i}.png"
        Image.fromarray(written[i], mode="L").save(path)
        paths.append(str(path))
    return pd.Series(paths, index=[f"s{i}" for i in range(n)]), written, probs


@pytest.mark.parametrize("batch_size", [10_000, 3_000, 50])
def test_streamed_issues_equal_cleanlabs(tmp_path: Path, batch_size: int) -> None:
    from cleanlab.segmentation.filter import find_label_issues
    from cleanlab.segmentation.rank import get_label_quality_scores

    masks, labels, probs = random_dataset(tmp_path / "m")
    file = tmp_path / "probs.npy"
    np.save(file, probs)
    result = segmentation_label_quality(masks, SPEC, file, batch_size=batch_size, issue_dir=tmp_path / "issues")
    expected = find_label_issues(labels.astype(int), probs, batch_size=batch_size, n_jobs=1, verbose=False)
    found = np.stack([np.asarray(Image.open(p)) > 0 for p in result.per_image["mask_mistakes_issue_mask"]])
    assert expected.sum() > 50 and (found == expected).all()
    scores, _ = get_label_quality_scores(labels.astype(int), probs, verbose=False)
    assert np.allclose(result.per_image["mask_mistakes_label_quality"].to_numpy(), scores, rtol=0, atol=1e-12)
    assert result.per_image["mask_mistakes_issue_pixels"].tolist() == expected.sum(axis=(1, 2)).tolist()
    assert result.metrics["n_issue_pixels"] == int(expected.sum())


def test_probabilities_from_a_folder_or_an_array_give_the_same(tmp_path: Path) -> None:
    masks, _, probs = random_dataset(tmp_path / "m", n=4)
    folder = tmp_path / "per-image"
    folder.mkdir()
    for i, sample_id in enumerate(masks.index):
        np.save(folder / f"{sample_id}.npy", probs[i])
    from_folder = segmentation_label_quality(masks, SPEC, folder)
    from_array = segmentation_label_quality(masks, SPEC, probs)
    pd.testing.assert_frame_equal(from_folder.per_image, from_array.per_image)


def test_unlabelled_pixels_take_no_part(tmp_path: Path) -> None:
    masks, written, probs = random_dataset(tmp_path / "m", n=3, ignore_share=0.2)
    result = segmentation_label_quality(masks, SPEC, probs, issue_dir=tmp_path / "issues", temperature=0.1)
    for i, sample_id in enumerate(masks.index):
        valid = written[i] != 255
        issue = np.asarray(Image.open(result.per_image.loc[sample_id, "mask_mistakes_issue_mask"])) > 0
        assert not issue[~valid].any()
        assert result.per_image.loc[sample_id, "mask_mistakes_n_pixels"] == valid.sum()
        # cleanlab's softmin by its formula on the labelled pixels only: sum(s * softmax((1 - s) / T)).
        s = probs[i][written[i][valid].astype(int), *np.nonzero(valid)].astype(float)
        weights = np.exp((1 - s) / 0.1 - ((1 - s) / 0.1).max())
        assert result.per_image.loc[sample_id, "mask_mistakes_label_quality"] == pytest.approx(
            float((s * weights).sum() / weights.sum()), rel=1e-9)


def test_issue_regions_have_kinds_and_a_size_floor(tmp_path: Path) -> None:
    """One image whose mask says class a on a 5x5 square the model calls b, and background elsewhere."""
    mask = np.zeros((20, 20), np.uint8)
    mask[2:7, 2:7] = 1
    path = tmp_path / "x.png"
    Image.fromarray(mask, mode="L").save(path)
    masks = pd.Series({"x": str(path)})
    probs = np.full((1, 4, 20, 20), 0.02, np.float32)
    probs[0, 0] = 0.94
    probs[0, :, 2:7, 2:7] = np.array([0.02, 0.02, 0.94, 0.02], np.float32)[:, None, None]
    result = segmentation_label_quality(masks, SPEC, probs)
    regions = result.issue_regions
    assert len(regions) == 1
    region = regions.iloc[0]
    assert (region["x"], region["y"], region["w"], region["h"], region["area"]) == (2, 2, 5, 5, 25)
    assert (region["given_label"], region["predicted_label"]) == ("a", "b")
    assert rle_to_mask(region["mask"], 20, 20).sum() == 25
    assert bool(result.per_image.loc["x", "mask_mistakes_is_issue"])
    assert result.per_image.loc["x", "mask_mistakes_issue_share"] == pytest.approx(25 / 400)
    # With a floor above 25 px the same pixels are issues but form no region big enough to flag the image.
    quiet = segmentation_label_quality(masks, SPEC, probs, min_issue_pixels=26)
    assert quiet.per_image.loc["x", "mask_mistakes_issue_pixels"] == 25
    assert not quiet.per_image.loc["x", "mask_mistakes_is_issue"] and quiet.issue_regions.empty


def test_bad_probabilities_are_refused_with_the_image_named(tmp_path: Path) -> None:
    masks, _, probs = random_dataset(tmp_path / "m", n=3)
    logits = probs.copy()
    logits[1, :, 4, 5] *= 3
    with pytest.raises(MaskPredictionError, match=r"row 1 \(image s1\): probabilities at pixel \(x=5, y=4\) sum to"):
        segmentation_label_quality(masks, SPEC, logits)
    with pytest.raises(MaskPredictionError, match=r"row 0 \(image s0\) has shape \(3, 18, 22\); expected \(classes, "
                                                  r"height, width\) = \(4, 18, 22\)"):
        segmentation_label_quality(masks, SPEC, probs[:, :3])
    with pytest.raises(MaskPredictionError, match=r"has shape \(2, 4, 18, 22\); expected .* with 3 images"):
        segmentation_label_quality(masks, SPEC, probs[:2])
    folder = tmp_path / "per-image"
    folder.mkdir()
    np.save(folder / "s0.npy", probs[0])
    with pytest.raises(MaskPredictionError, match=r"no predicted probabilities for image s1: .*s1\.npy"):
        segmentation_label_quality(masks, SPEC, folder)
    np.save(folder / "s1.npy", probs[1][:, :10])
    np.save(folder / "s2.npy", probs[2])
    with pytest.raises(MaskPredictionError, match=r"s1\.npy has shape \(4, 10, 22\); expected .* \(4, 18, 22\)"):
        segmentation_label_quality(masks, SPEC, folder)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_radix_selection_equals_sorting(tmp_path: Path, dtype) -> None:
    rng = np.random.default_rng(1)
    values = np.concatenate([rng.random(5000), np.zeros(300), np.full(200, 0.5), np.ones(10)]).astype(dtype)
    rng.shuffle(values)
    stored = ArrayFile(tmp_path / "v.bin", dtype)
    for part in np.array_split(values, 7):
        stored.append(part)
    stored.close()
    assert len(stored) == len(values) and (stored[100:2100] == values[100:2100]).all()
    ordered = np.sort(values)
    for k in (0, 1, 299, 300, 2750, 2751, len(values) - 1):
        assert _kth_smallest(stored, k, chunk=777) == ordered[k]


def region_mask() -> np.ndarray:
    """Class a: a 3x3 block and, 2 px to its right, a 2x1 bar; class b: one 2x2 block; background elsewhere."""
    mask = np.zeros((10, 12), np.int16)
    mask[1:4, 1:4] = 1
    mask[1:3, 6] = 1
    mask[6:8, 8:10] = 2
    mask[9, 0] = IGNORE
    return mask


def test_regions_per_class_and_merging() -> None:
    regions = list(mask_regions(region_mask(), SPEC))
    assert [(c, int(r.sum())) for c, r in regions] == [(1, 9), (1, 2), (2, 4)]
    merged = list(mask_regions(region_mask(), SPEC, merge_distance=1))
    assert [(c, int(r.sum())) for c, r in merged] == [(1, 11), (2, 4)]  # gap of 2 px <= 2 * merge_distance
    with_background = list(mask_regions(region_mask(), SPEC, include_background=True))
    assert (0, 120 - 15 - 1) in [(c, int(r.sum())) for c, r in with_background]


def test_region_objects_are_canonical_objects(tmp_path: Path) -> None:
    values = np.where(region_mask() == IGNORE, 255, region_mask()).astype(np.uint8)
    path = tmp_path / "m.png"
    Image.fromarray(values, mode="L").save(path)
    objects = region_objects(pd.Series({"img": str(path)}), SPEC, annotator="carol")
    assert list(objects.index) == ["carol:img#r000", "carol:img#r001", "carol:img#r002"]
    assert objects["label"].tolist() == ["a", "a", "b"]
    assert objects[["x", "y", "w", "h"]].to_numpy().tolist() == [[1, 1, 3, 3], [6, 1, 1, 2], [8, 6, 2, 2]]
    assert objects.loc["carol:img#r002", ["xn", "yn", "wn", "hn"]].tolist() == pytest.approx([8 / 12, 0.6, 2 / 12,
                                                                                             0.2])
    assert (rle_to_mask(objects.loc["carol:img#r001", "mask"], 10, 12) == ((region_mask() == 1) & (
        np.arange(12) >= 5))).all()
    assert objects["annotator"].unique().tolist() == ["carol"]
    assert objects.loc["carol:img#r001", "source"] == f"mask {path} region 1 (class a)"
    assert (objects[["image_width", "image_height"]].to_numpy() == [12, 10]).all()


def test_region_label_issues_by_hand() -> None:
    objects = pd.DataFrame({"sample_id": ["p", "p", "q", "q", "q", "r"] * 5,
                            "label": ["a", "b", "a", "b", "c", "c"] * 5}, index=[f"o{i}" for i in range(30)])
    pixel = np.zeros((4, 4), bool)
    pixel[1, 2] = True
    objects["mask"] = mask_to_rle(pixel)  # every region: one pixel of a 4x4 image
    objects["image_height"], objects["image_width"] = 4, 4
    codes = objects["label"].map({"a": 1, "b": 2, "c": 3}).to_numpy()
    probs = np.full((30, 4), 0.02)
    probs[np.arange(30), codes] = 0.94
    probs[3] = [0.02, 0.02, 0.02, 0.94]  # object o3, labelled b, looks like c
    result = region_label_issues(objects, probs, SPEC.classes)
    assert result.regions["region_is_issue"].tolist() == [i == 3 for i in range(30)]
    assert result.regions.loc["o3", "region_suggested_label"] == "c"
    assert result.regions.loc["o3", "region_label_quality"] == pytest.approx(0.02)
    per_image = result.per_image
    assert per_image.loc["q", "mask_regions_n_issues"] == 1 and per_image.loc["p", "mask_regions_n_issues"] == 0
    assert per_image.loc["q", "mask_regions_score"] == pytest.approx(0.98)
    assert per_image.loc["p", "mask_regions_score"] == pytest.approx(0.06)
    assert per_image.loc["q", "mask_regions_issue_area_share"] == pytest.approx(1 / 15)
    assert result.metrics["per_class"]["b"] == {"n_regions": 10, "n_issues": 1, "issue_rate": 0.1}
    with pytest.raises(ValueError, match="expected"):
        region_label_issues(objects, probs[:, :3], SPEC.classes)
