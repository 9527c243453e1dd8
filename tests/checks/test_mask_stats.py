"""Mask statistics against figures counted by hand on small masks, the baseline comparison, and flat memory.

The memory test streams many masks through every streamed function (statistics, agreement, cleanlab
segmentation) and checks with ``tracemalloc`` that the peak does not grow with their number.
"""

from __future__ import annotations

import tracemalloc
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from audit.checks.mask_stats import compare_with_baseline, image_mask_stats, mask_statistics
from audit.sources.masks import IGNORE, MaskSpec

SPEC = MaskSpec(classes=("background", "a", "b"), values=(0, 1, 2), ignore_values=(255,), background=0,
                source="test")

# Class 1 ("a"): a 13-px ring (rows 0-2, cols 0-4) around a 2-px hole, and a lone pixel at (6, 4).
# Class 2 ("b"): two lone pixels (0, 7) and (2, 6), which do not touch, and a 3x3 block. 255: 4 unlabelled px.
MASK = np.array([
    [1, 1, 1, 1, 1, 0, 0, 2],
    [1, 0, 0, 1, 1, 0, 0, 0],
    [1, 1, 1, 1, 1, 0, 2, 0],
    [0, 0, 0, 0, 0, 0, 0, 0],
    [2, 2, 2, 0, 0, 255, 255, 0],
    [2, 2, 2, 0, 0, 255, 255, 0],
    [2, 2, 2, 0, 1, 0, 0, 0],
    [0, 0, 0, 0, 0, 0, 0, 0],
], np.uint8)


def codes_of(values: np.ndarray) -> np.ndarray:
    return np.where(values == 255, IGNORE, values.astype(np.int16)).astype(np.int16)


def test_one_mask_counted_by_hand() -> None:
    stats = image_mask_stats(codes_of(MASK), SPEC)
    assert stats.pixels.tolist() == [35, 14, 11] and stats.ignore == 4
    # Background: the outside (33 px) and the ring's 2-px hole, which 8-connectivity cannot leave.
    assert stats.regions.tolist() == [2, 2, 3]
    assert sorted(stats.region_sizes[0].tolist()) == [2, 33]
    assert sorted(stats.region_sizes[1].tolist()) == [1, 13]
    assert sorted(stats.region_sizes[2].tolist()) == [1, 1, 9]
    assert stats.tiny_pixels == 4  # max(4, 0.01% of 64 px)
    assert stats.tiny.tolist() == [1, 1, 2]
    # One hole of 2 px in class a; none in b; background holes are not counted.
    assert stats.holes.tolist() == [0, 1, 0] and stats.hole_pixels.tolist() == [0, 2, 0]


def test_diagonal_pixels_join_and_holes_need_full_enclosure() -> None:
    # A diagonal line is one 8-connected region; a "hole" open through a diagonal gap is still enclosed for
    # 4-connected background, as binary_fill_holes defines it.
    mask = np.zeros((6, 6), np.int16)
    mask[[0, 1, 2], [0, 1, 2]] = 1
    ring = np.zeros((6, 6), np.int16)
    ring[1:5, 1:5] = 2
    ring[2:4, 2:4] = 0
    ring[1, 1] = 0  # corner cut: the hole's 4-connected background cannot get out
    assert image_mask_stats(mask, SPEC).regions[1] == 1
    stats = image_mask_stats(ring, SPEC)
    assert stats.holes[2] == 1 and stats.hole_pixels[2] == 4


def write_masks(folder: Path, masks: list[np.ndarray]) -> list[str]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, mask in enumerate(masks):
        path = folder / f"m{i:04d}.png"
        Image.fromarray(mask, mode="L").save(path)
        paths.append(str(path))
    return paths


def test_dataset_metrics_by_hand(tmp_path: Path) -> None:
    paths = write_masks(tmp_path, [MASK, np.zeros((8, 8), np.uint8)])
    samples = pd.DataFrame({"mask": [*paths, None], "split": ["train", "val", "val"]}, index=["x", "y", "z"])
    result = mask_statistics(samples, SPEC)
    metrics = result.metrics
    assert metrics["n_images"] == 2 and metrics["n_without_mask"] == 1
    assert metrics["n_pixels"] == 128 and metrics["n_labelled_pixels"] == 124
    assert metrics["ignore_share"] == pytest.approx(4 / 128)
    classes = metrics["classes"]
    assert classes["background"]["pixels"] == 99 and classes["background"]["share"] == pytest.approx(99 / 124)
    assert classes["a"]["share"] == pytest.approx(14 / 124) and classes["b"]["share"] == pytest.approx(11 / 124)
    assert classes["a"]["images"] == 1 and classes["a"]["image_share"] == pytest.approx(0.5)
    assert classes["background"]["n_regions"] == 3 and classes["background"]["mean_region_pixels"] == 33
    assert classes["background"]["min_region_pixels"] == 2 and classes["background"]["max_region_pixels"] == 64
    assert classes["b"]["n_regions"] == 3 and classes["b"]["mean_region_pixels"] == pytest.approx(11 / 3)
    assert classes["b"]["region_size_bins"] == [2, 0, 0, 1]  # sizes 1, 1 in [1, 2); 9 in [8, 16)
    assert classes["a"]["n_holes"] == 1 and classes["a"]["hole_pixels"] == 2
    assert classes["background"]["n_holes"] is None
    assert metrics["n_regions"] == 5 and metrics["n_tiny_fragments"] == 4 and metrics["n_holes"] == 1
    assert metrics["problems"] == {"empty_mask": 1}
    assert metrics["per_split"]["train"]["classes"]["a"]["share"] == pytest.approx(14 / 60)
    assert metrics["per_split"]["val"]["n_images"] == 1
    assert metrics["per_split"]["val"]["classes"]["background"]["share"] == 1.0
    per_image = result.per_image
    assert per_image.loc["x", "mask_share:a"] == pytest.approx(14 / 60)
    assert per_image.loc["x", "mask_ignore_share"] == pytest.approx(4 / 64)
    assert per_image.loc["x", ["mask_n_regions", "mask_n_tiny_fragments", "mask_n_holes"]].tolist() == [5, 4, 1]
    assert per_image.loc["y", "mask_problems"] == "empty_mask" and per_image.loc["y", "mask_n_classes"] == 1
    assert per_image.loc["z"].isna().all()


def test_compare_with_baseline_by_hand() -> None:
    now = {"a": 0.5, "b": 0.3, "c": 0.2}
    before = pd.Series({"a": 0.4, "b": 0.4, "d": 0.2})
    out = compare_with_baseline(now, before, "last-week")
    assert out["deltas"]["a"]["share_delta"] == pytest.approx(0.1)
    assert out["deltas"]["d"] == {"share": 0.0, "previous_share": 0.2, "share_delta": pytest.approx(-0.2)}
    assert out["new_classes"] == ["c"] and out["vanished_classes"] == ["d"]
    assert out["max_share_shift"] == pytest.approx(0.2) and out["max_share_shift_class"] == "c"
    assert out["total_variation"] == pytest.approx(0.3)
    p, q = np.array([0.5, 0.3, 0.2, 0.0]), np.array([0.4, 0.4, 0.0, 0.2])
    m = (p + q) / 2

    def kl(x: np.ndarray, y: np.ndarray) -> float:
        keep = x > 0
        return float(np.sum(x[keep] * np.log2(x[keep] / y[keep])))

    assert out["jensen_shannon"] == pytest.approx(np.sqrt((kl(p, m) + kl(q, m)) / 2))
    # Shares are renormalised over the classes either run has.
    assert compare_with_baseline({"a": 2, "b": 2}, {"a": 1, "b": 1})["total_variation"] == 0


def _memory(function) -> tuple[int, int]:
    """(working memory: peak minus what the result keeps, result size) traced while ``function`` runs."""
    tracemalloc.start()
    try:
        result = function()
        kept, peak = tracemalloc.get_traced_memory()
        del result
        return peak - kept, kept
    finally:
        tracemalloc.stop()


N_MANY, N_FEW, SIDE = 120, 12, 96


@pytest.fixture(scope="module")
def many_masks(tmp_path_factory) -> dict[str, object]:
    """120 random 96x96 shipped masks (8-px blocks of 3 classes, 5% unlabelled), three annotators' copies with 3% of
    the blocks changed, and (K, H, W) probabilities per image that mostly agree with the shipped mask."""
    root = tmp_path_factory.mktemp("many")
    rng = np.random.default_rng(0)
    ids = [f"s{i:04d}" for i in range(N_MANY)]
    probs_dir = root / "probs"
    probs_dir.mkdir()
    given = []
    for sample_id in ids:
        base = np.kron(rng.integers(0, 3, (SIDE // 8, SIDE // 8)), np.ones((8, 8), int)).astype(np.uint8)
        base[rng.random(base.shape) < 0.05] = 255
        given.append(base)
        p = rng.random((3, SIDE, SIDE)).astype(np.float32) * 0.2
        p[np.minimum(base, 2), np.arange(SIDE)[:, None], np.arange(SIDE)] += 1.0
        np.save(probs_dir / f"{sample_id}.npy", p / p.sum(axis=0, keepdims=True))
    sets = {"given": write_masks(root / "given", given)}
    for name in ("alice", "bob", "carol"):
        changed = []
        for base in given:
            mask = base.copy()
            mask[np.kron(rng.random((SIDE // 8, SIDE // 8)) < 0.03, np.ones((8, 8), bool))] = rng.integers(0, 3)
            changed.append(mask)
        sets[name] = write_masks(root / name, changed)
    return {"ids": ids, "sets": sets, "probs": probs_dir}


@pytest.mark.slow
def test_memory_stays_flat_with_many_masks(many_masks) -> None:
    from audit.checks.mask_agreement import mask_agreement
    from audit.checks.mask_mistakes import segmentation_label_quality

    ids, sets = many_masks["ids"], many_masks["sets"]

    def run(n: int) -> dict[str, tuple[int, int]]:
        samples = pd.DataFrame({"mask": sets["given"][:n], "split": "train"}, index=ids[:n])
        long = pd.DataFrame([(ids[i], a, sets[a][i]) for a in ("alice", "bob", "carol") for i in range(n)],
                            columns=["sample_id", "annotator", "mask_path"])
        return {
            "stats": _memory(lambda: mask_statistics(samples, SPEC)),
            "agreement": _memory(lambda: mask_agreement(long, SPEC, sample_ids=ids[:n], given=samples["mask"])),
            "cleanlab": _memory(lambda: segmentation_label_quality(samples, SPEC, many_masks["probs"])),
        }

    run(3)  # imports and first-call caches are not what is measured
    few, many = run(N_FEW), run(N_MANY)
    one_mask = SIDE * SIDE * 2  # a decoded mask (int16): 18 KB; with three annotators' and the probabilities, 180 KB
    for name in few:
        (work_few, kept_few), (work_many, kept_many) = few[name], many[name]
        # The working memory (peak minus the result) grows per extra image by less than half a decoded mask (the
        # building of the per-image result rows), so no mask, probability or pixel score is kept around...
        assert (work_many - work_few) / (N_MANY - N_FEW) < one_mask / 2, (name, few[name], many[name])
        # ...and the result itself holds per-image numbers and regions, not pixels.
        assert (kept_many - kept_few) / (N_MANY - N_FEW) < one_mask / 2, (name, few[name], many[name])
