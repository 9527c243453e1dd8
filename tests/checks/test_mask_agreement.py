"""Mask agreement against IoU, Dice, consensus and Krippendorff's alpha worked out by hand on 4x4 masks."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from audit.checks.mask_agreement import consensus_mask, mask_agreement
from audit.sources.masks import IGNORE, MaskSpec

TWO = MaskSpec(classes=("background", "fg"), values=(0, 1), ignore_values=(255,), background=0, source="test")
THREE = MaskSpec(classes=("background", "a", "b"), values=(0, 1, 2), ignore_values=(255,), background=0,
                 source="test")

# Two annotators, one image: they agree on 14 of 16 pixels.
A2 = np.array([[1, 1, 0, 0], [1, 1, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0]], np.uint8)
B2 = np.array([[1, 1, 1, 0], [1, 0, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0]], np.uint8)

# Three annotators; B left one pixel unlabelled (255); at (1, 1) all three differ (a tie).
A3 = np.array([[1, 1, 0, 0], [1, 1, 0, 0], [0, 0, 2, 2], [0, 0, 2, 2]], np.uint8)
B3 = np.array([[1, 1, 0, 0], [1, 0, 0, 0], [0, 0, 2, 2], [0, 0, 2, 255]], np.uint8)
C3 = np.array([[1, 1, 1, 0], [1, 2, 0, 0], [0, 0, 2, 1], [0, 0, 2, 2]], np.uint8)


def write(folder: Path, masks: dict[str, dict[str, np.ndarray]]) -> pd.DataFrame:
    """``{annotator: {sample_id: mask}}`` as PNGs and the long table."""
    rows = []
    for annotator, per_image in masks.items():
        (folder / annotator).mkdir(parents=True, exist_ok=True)
        for sample_id, mask in per_image.items():
            path = folder / annotator / f"{sample_id}.png"
            Image.fromarray(mask, mode="L").save(path)
            rows.append((sample_id, annotator, str(path)))
    return pd.DataFrame(rows, columns=["sample_id", "annotator", "mask_path"])


def test_two_annotators_by_hand(tmp_path: Path) -> None:
    long = write(tmp_path, {"ann": {"x": A2}, "bob": {"x": B2}})
    result = mask_agreement(long, TWO, min_region_pixels=1)
    pair = result.metrics["pairwise"][0]
    assert pair["annotators"] == ["ann", "bob"] and pair["n_pixels"] == 16
    # fg: 3 shared pixels, 4 + 4 - 3 = 5 in the union; background: 11 shared, 12 + 12 - 11 = 13.
    assert pair["per_class"]["fg"]["iou"] == pytest.approx(3 / 5)
    assert pair["per_class"]["fg"]["dice"] == pytest.approx(2 * 3 / 8)
    assert pair["per_class"]["background"]["iou"] == pytest.approx(11 / 13)
    assert pair["per_class"]["background"]["dice"] == pytest.approx(2 * 11 / 24)
    assert pair["mean_iou"] == pytest.approx((3 / 5 + 11 / 13) / 2)
    assert pair["pixel_agreement"] == pytest.approx(14 / 16)
    assert result.metrics["iou_matrix"]["matrix"] == [[1.0, pytest.approx((3 / 5 + 11 / 13) / 2)],
                                                      [pytest.approx((3 / 5 + 11 / 13) / 2), 1.0]]
    # Krippendorff's alpha (nominal) from the coincidence matrix: o_00 = 22, o_11 = 6, o_01 = o_10 = 2,
    # n_0 = 24, n_1 = 8, n = 32: alpha = 1 - (n - 1) * 4 / (2 * 24 * 8) = 260 / 384.
    assert result.metrics["krippendorff_alpha"] == pytest.approx(260 / 384)
    assert result.metrics["krippendorff_alpha_pixels"] == 16
    # Two annotators who differ tie: those two pixels have no consensus, so each agrees with it fully.
    assert result.metrics["consensus"]["tie_pixels"] == 2
    assert result.metrics["per_annotator"]["ann"]["quality"] == 1.0
    # The two disputed pixels (1, 1) and (0, 2) touch diagonally: one region.
    row = result.per_image.loc["x"]
    assert row["mask_agreement_disputed_pixels"] == 2 and row["mask_agreement_n_disputed_regions"] == 1
    assert row["mask_agreement_pixel_agreement"] == pytest.approx(14 / 16)
    region = result.regions.iloc[0]
    assert (region["x"], region["y"], region["w"], region["h"], region["area"]) == (1, 0, 2, 2, 2)
    assert region["labels"] == "background;fg"


def test_lowest_class_tie_rule_by_hand(tmp_path: Path) -> None:
    long = write(tmp_path, {"ann": {"x": A2}, "bob": {"x": B2}})
    result = mask_agreement(long, TWO, tie_rule="lowest_class")
    # Both tied pixels become background: ann has fg 4 px vs consensus 3 (IoU 3/4), background 12 vs 13 (12/13).
    ann = result.metrics["per_annotator"]["ann"]
    assert ann["per_class_iou"] == {"fg": pytest.approx(3 / 4), "background": pytest.approx(12 / 13)}
    assert ann["mean_iou_with_consensus"] == pytest.approx((3 / 4 + 12 / 13) / 2)


def test_three_annotators_with_a_tie_and_an_unlabelled_pixel(tmp_path: Path) -> None:
    shipped = A3.copy()
    shipped[0, 0] = 2  # the shipped mask paints one pixel of class a as b
    given_dir = tmp_path / "given"
    given_dir.mkdir()
    Image.fromarray(shipped, mode="L").save(given_dir / "x.png")
    long = write(tmp_path, {"A": {"x": A3}, "B": {"x": B3}, "C": {"x": C3}})
    result = mask_agreement(long, THREE, given=pd.Series({"x": str(given_dir / "x.png")}), min_region_pixels=1)
    metrics = result.metrics
    # Krippendorff: o_00 = 22, o_11 = 9, o_22 = 9, o_01 = o_10 = o_12 = o_21 = 1.5, o_02 = o_20 = 0.5;
    # n = (24, 12, 11), 47 values: alpha = 1 - 46 * 7 / (2 * (24*12 + 24*11 + 12*11)) = 1046 / 1368.
    assert metrics["krippendorff_alpha"] == pytest.approx(1046 / 1368)
    ab = next(p for p in metrics["pairwise"] if p["annotators"] == ["A", "B"])
    assert ab["n_pixels"] == 15  # B's unlabelled pixel is left out
    assert ab["per_class"]["a"]["iou"] == pytest.approx(3 / 4) and ab["per_class"]["a"]["dice"] == pytest.approx(6 / 7)
    assert ab["per_class"]["b"]["iou"] == 1.0 and ab["per_class"]["background"]["iou"] == pytest.approx(8 / 9)
    # Consensus: everything by majority except the all-different (1, 1), which is left out.
    assert metrics["consensus"]["tie_pixels"] == 1
    assert metrics["per_annotator"]["A"]["quality"] == 1.0 and metrics["per_annotator"]["B"]["quality"] == 1.0
    assert metrics["per_annotator"]["C"]["per_class_iou"] == {"background": pytest.approx(7 / 8),
                                                               "a": pytest.approx(3 / 5), "b": pytest.approx(3 / 4)}
    assert metrics["per_annotator"]["C"]["quality"] == pytest.approx((7 / 8 + 3 / 5 + 3 / 4) / 3)
    row = result.per_image.loc["x"]
    # Disputed: (0, 2) and (1, 1) (one diagonal region) and (2, 3); (3, 3) is not (B did not label it).
    assert row["mask_agreement_disputed_pixels"] == 3 and row["mask_agreement_n_disputed_regions"] == 2
    assert row["mask_agreement_disputed_share"] == pytest.approx(3 / 16)
    assert row["mask_agreement_largest_disputed_region"] == 2
    lone = result.regions[result.regions["area"] == 1].iloc[0]
    assert (lone["x"], lone["y"], lone["labels"], lone["consensus_label"], lone["annotators_differing"]) == (
        3, 2, "a;b", "b", "C")
    # The shipped mask differs from the consensus at one pixel: a -> b.
    given = result.given_regions
    assert len(given) == 1 and (given.iloc[0]["x"], given.iloc[0]["y"]) == (0, 0)
    assert (given.iloc[0]["given_label"], given.iloc[0]["consensus_label"]) == ("b", "a")
    # Shipped vs consensus over the 15 consensus pixels: a 2/3, b 4/5, background 8/8.
    assert row["mask_agreement_given_iou"] == pytest.approx((2 / 3 + 4 / 5 + 1) / 3)


def test_consensus_mask_rules() -> None:
    a = np.array([[1, 0, IGNORE]], np.int16)
    b = np.array([[1, 2, IGNORE]], np.int16)
    c = np.array([[2, 1, 3]], np.int16)
    consensus, ties = consensus_mask([a, b, c])
    assert consensus.tolist() == [[1, IGNORE, 3]] and ties.tolist() == [[False, True, False]]
    lowest, _ = consensus_mask([a, b, c], tie_rule="lowest_class")
    assert lowest.tolist() == [[1, 0, 3]]
    with pytest.raises(ValueError, match="tie_rule"):
        consensus_mask([a, b], tie_rule="coin")


def test_figures_are_accumulated_over_images_not_averaged(tmp_path: Path) -> None:
    second_a = np.array([[1, 0], [0, 0]], np.uint8)
    long = write(tmp_path, {"ann": {"x": A2, "y": second_a}, "bob": {"x": B2, "y": second_a}})
    result = mask_agreement(long, TWO)
    fg = result.metrics["pairwise"][0]["per_class"]["fg"]
    # Image x: 3 shared of a 5-px union; image y: 1 of 1. Summed: 4 / 6 (a per-image mean would say 0.8).
    assert fg["iou"] == pytest.approx(4 / 6) and fg["intersection"] == 4
    assert result.per_image.loc["y", "mask_agreement_mean_pairwise_iou"] == 1.0


def test_single_annotator_images_are_not_compared(tmp_path: Path) -> None:
    long = write(tmp_path, {"ann": {"x": A2, "y": B2}, "bob": {"x": B2}})
    result = mask_agreement(long, TWO, sample_ids=["x", "y", "z"])
    assert result.metrics["n_images"] == 1
    assert result.per_image["mask_agreement_n_annotators"].tolist() == [2, 1, 0]
    assert np.isnan(result.per_image.loc["y", "mask_agreement_pixel_agreement"])
    assert result.metrics["per_annotator"]["ann"]["n_images"] == 1


def test_alpha_over_all_pixels_equals_the_krippendorff_package(tmp_path: Path, digit_images) -> None:
    """Real digit shapes (sklearn's scans at three ink thresholds, 4x upscaled) as three annotators' masks, with
    some pixels left unlabelled: the streamed coincidence matrix gives the package's alpha on all pixels at once."""
    import krippendorff

    images, _ = digit_images
    rng = np.random.default_rng(0)
    sets: dict[str, dict[str, np.ndarray]] = {}
    for name, (low, high) in {"ann": (5, 12), "bob": (7, 13), "cat": (4, 10)}.items():
        sets[name] = {}
        for i in range(12):
            mask = np.digitize(np.kron(images[i], np.ones((4, 4))), [low, high]).astype(np.uint8)
            mask[rng.random(mask.shape) < 0.1] = 255
            sets[name][f"d{i:02d}"] = mask
    result = mask_agreement(write(tmp_path, sets), THREE)
    stacked = {name: np.concatenate([m.ravel() for _, m in sorted(per.items())]) for name, per in sets.items()}
    reliability = np.stack([np.where(v == 255, np.nan, v).astype(float) for v in stacked.values()])
    expected = krippendorff.alpha(reliability_data=reliability, level_of_measurement="nominal", value_domain=[0, 1, 2])
    assert result.metrics["krippendorff_alpha"] == pytest.approx(expected, rel=1e-12)
    assert result.metrics["krippendorff_alpha_pixels"] == int((np.isfinite(reliability).sum(axis=0) >= 2).sum())
    for c, name in enumerate(THREE.classes):
        binary = np.where(np.isnan(reliability), np.nan, reliability == c)
        expected_c = krippendorff.alpha(reliability_data=binary, level_of_measurement="nominal", value_domain=[0, 1])
        assert result.metrics["per_class"][name]["krippendorff_alpha"] == pytest.approx(expected_c, rel=1e-12)
    assert 0.3 < expected < 0.95
