"""Image quality (audit.checks.quality): statistics by hand on constructed images, and flags on real photo tiles
with injected defects (darkened, over-exposed, blurred, greyscale, flat, tiny, squashed).

The tiles are textured 64x64 crops of scikit-image colour photos, written as JPEG and decoded with the pipeline's
``load_image``, as the decoding workers see them. Expectations come from the injection or from arithmetic.
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from PIL import Image, ImageFilter

from audit.checks.quality import DEFAULT_PARAMS, ISSUES, STAT_KEYS, flag_quality, image_stats, modified_z


def test_uniform_image_by_hand() -> None:
    stats = image_stats(Image.new("RGB", (100, 50), (128, 128, 128)))
    assert set(stats) == set(STAT_KEYS)
    assert stats["width"] == 100 and stats["height"] == 50 and stats["aspect_ratio"] == 2.0
    assert stats["brightness"] == pytest.approx(128 / 255)
    assert stats["brightness_p01"] == stats["brightness_p99"] == pytest.approx(128 / 255)
    assert stats["contrast"] == 0 and stats["entropy"] == 0 and stats["sharpness"] == 0
    assert stats["colourfulness"] == 0 and stats["colour_share"] == 0
    assert stats["dark_share"] == 0 and stats["bright_share"] == 0


def test_half_black_half_white_by_hand() -> None:
    pixels = np.zeros((64, 64, 3), dtype=np.uint8)
    pixels[:, 32:] = 255
    stats = image_stats(pixels)  # a numpy array is accepted as well
    assert stats["brightness"] == pytest.approx(0.5)
    assert stats["entropy"] == pytest.approx(1.0)  # two equally likely grey levels: one bit
    assert stats["contrast"] == pytest.approx(0.5)  # standard deviation of {0, 255} / 255
    assert stats["dark_share"] == pytest.approx(0.5) and stats["bright_share"] == pytest.approx(0.5)
    assert stats["brightness_p01"] == 0.0 and stats["brightness_p99"] == 1.0
    assert stats["sharpness"] > 0  # the edge down the middle


def test_colour_measures_by_hand() -> None:
    red = image_stats(Image.new("RGB", (40, 40), (255, 0, 0)))
    assert red["colourfulness"] == pytest.approx(1.0)  # (|255-0| + |0-0|) / 255
    assert red["colour_share"] == 1.0
    assert red["brightness"] == pytest.approx(76 / 255, abs=1 / 255)  # luma of pure red: 0.299 x 255


def test_numpy_and_pil_give_the_same_numbers() -> None:
    import skimage.data

    photo = skimage.data.astronaut()
    assert image_stats(photo) == image_stats(Image.fromarray(photo))


def test_greyscale_content_in_an_rgb_jpeg_has_no_colour(tmp_path) -> None:
    import skimage.data

    from audit.sources import load_image

    path = tmp_path / "grey.jpg"
    Image.fromarray(skimage.data.coffee()).convert("L").convert("RGB").save(path, quality=90)
    image, _ = load_image(path)
    assert image.mode == "RGB"
    assert image_stats(image)["colour_share"] == 0.0
    assert image_stats(Image.fromarray(skimage.data.coffee()))["colour_share"] > 0.5


def test_sharpness_is_measured_at_a_fixed_scale() -> None:
    """The same photo at 512 and 1024 px gets a similar sharpness; blurred, it falls below the blur threshold,
    darkened it does not change much (the statistic is relative to the gradient energy)."""
    import skimage.data

    threshold = DEFAULT_PARAMS["blurry_sharpness"]
    photo = Image.fromarray(skimage.data.astronaut())
    large = photo.resize((1024, 1024), Image.Resampling.LANCZOS)
    small, big = image_stats(photo)["sharpness"], image_stats(large)["sharpness"]
    assert 0.5 < small / big < 2.0 and small > threshold
    assert image_stats(photo.filter(ImageFilter.GaussianBlur(4)))["sharpness"] < threshold
    dark = Image.fromarray((np.asarray(photo, dtype=np.float32) * 0.3).astype(np.uint8))
    assert image_stats(dark)["sharpness"] > threshold


# ------------------------------------------------------------------------------------------- flagging


def _tiles(side: int = 64) -> list[np.ndarray]:
    import skimage.data

    out = []
    for photo in (skimage.data.astronaut(), skimage.data.coffee(), skimage.data.chelsea(), skimage.data.rocket()):
        for top in range(0, photo.shape[0] - side + 1, side):
            for left in range(0, photo.shape[1] - side + 1, side):
                tile = photo[top:top + side, left:left + side]
                grey = tile @ np.array([0.299, 0.587, 0.114])
                if grey.std() > 25 and 0.3 * 255 < grey.mean() < 0.7 * 255:
                    out.append(np.ascontiguousarray(tile))
    return out[::2][:40]


INJECTED = {
    "dark": lambda im: Image.fromarray((np.asarray(im, dtype=np.float32) * 0.15).astype(np.uint8)),
    "overexposed": lambda im: Image.fromarray((np.asarray(im, dtype=np.float32) * 2.5 + 30).clip(0, 255)
                                              .astype(np.uint8)),
    "blurry": lambda im: im.filter(ImageFilter.GaussianBlur(4)),
    "grayscale": lambda im: im.convert("L").convert("RGB"),
    "low_information": lambda im: Image.fromarray(
        (np.full((64, 64, 3), np.asarray(im).reshape(-1, 3).mean(axis=0))
         + np.random.default_rng(0).normal(0, 1.5, (64, 64, 3))).clip(0, 255).astype(np.uint8)),
    "odd_size": lambda im: im.resize((16, 16), Image.Resampling.BILINEAR),
    "odd_aspect_ratio": lambda im: im.resize((256, 32), Image.Resampling.BILINEAR),
}


@pytest.fixture(scope="module")
def tile_stats(tmp_path_factory) -> tuple[pd.DataFrame, dict[str, str]]:
    from audit.sources import load_image

    folder = tmp_path_factory.mktemp("quality")
    tiles = _tiles()
    images, truth = {}, {}
    for i, tile in enumerate(tiles):
        images[f"tile-{i:02d}"] = Image.fromarray(tile)
    for j, (issue, make) in enumerate(INJECTED.items()):
        for k in range(2):
            source = Image.fromarray(tiles[(7 * j + k) % len(tiles)])
            images[f"{issue}-{k}"] = make(source)
            truth[f"{issue}-{k}"] = issue
    rows = {}
    for name, image in images.items():
        path = folder / f"{name}.jpg"
        image.save(path, quality=90)
        decoded, _ = load_image(path)
        rows[name] = image_stats(decoded)
    return pd.DataFrame.from_dict(rows, orient="index"), truth


def test_every_injected_defect_is_flagged_and_no_clean_tile(tile_stats) -> None:
    stats, truth = tile_stats
    frame, metrics = flag_quality(stats)
    for issue in ISSUES:
        flagged = set(frame.index[frame[f"quality_is_{issue}"]])
        expected = {name for name, kind in truth.items() if kind == issue}
        assert expected <= flagged, issue
        clean = {name for name in flagged if name.startswith("tile-")}
        # a photo tile can be soft by nature (an out-of-focus background): one of 40 may be called blurry
        assert len(clean) <= (1 if issue == "blurry" else 0), (issue, clean)
    assert metrics["relative"] == []  # no rule covered most of this dataset
    for issue in ISSUES:  # each injected image carries its own issue in quality_issues
        for name in (n for n, kind in truth.items() if kind == issue):
            assert issue in frame.loc[name, "quality_issues"].split(";")


def test_scores_rank_the_injected_images_first(tile_stats) -> None:
    stats, truth = tile_stats
    frame, _ = flag_quality(stats)
    for issue in ("dark", "overexposed", "blurry", "low_information", "grayscale"):
        expected = {name for name, kind in truth.items() if kind == issue}
        top = set(frame[f"quality_{issue}_score"].sort_values(ascending=False).index[:len(expected)])
        assert top == expected, issue


def test_a_rule_covering_most_of_the_dataset_turns_relative() -> None:
    """All tiles darkened x0.2 (a night-photo dataset) and two far darker: only those two are dark."""
    tiles = _tiles()
    rows = {}
    for i, tile in enumerate(tiles):
        rows[f"night-{i:02d}"] = image_stats((tile.astype(np.float32) * 0.2).astype(np.uint8))
    for k in range(2):
        rows[f"black-{k}"] = image_stats((tiles[k].astype(np.float32) * 0.03).astype(np.uint8))
    frame, metrics = flag_quality(pd.DataFrame.from_dict(rows, orient="index"))
    assert "dark" in metrics["relative"]
    assert set(frame.index[frame["quality_is_dark"]]) == {"black-0", "black-1"}


def test_greyscale_dataset_flags_no_greyscale(digit_images) -> None:
    images, _ = digit_images
    rows = {f"d{i}": image_stats(Image.fromarray((images[i] * 255 / 16).astype(np.uint8)).convert("RGB"))
            for i in range(60)}
    rows["colour"] = image_stats(Image.fromarray(_tiles()[0]))
    frame, metrics = flag_quality(pd.DataFrame.from_dict(rows, orient="index"))
    assert not frame["quality_is_grayscale"].any() and "grayscale" in metrics["relative"]
    assert metrics["grayscale_share"] == pytest.approx(60 / 61)


def test_unreadable_rows_metrics_and_parameters(tile_stats) -> None:
    stats, _ = tile_stats
    stats = stats.copy()
    stats.loc["broken"] = np.nan
    frame, metrics = flag_quality(stats)
    assert frame.loc["broken", [f"quality_{i}_score" for i in ISSUES]].isna().all()
    assert not frame.loc["broken", "quality_any"] and frame.loc["broken", "quality_issues"] == ""
    assert metrics["n_images"] == len(stats) - 1
    json.dumps(metrics, allow_nan=False)
    looser, _ = flag_quality(stats, {"dark_p99": 0.0})
    assert not looser["quality_is_dark"].any()
    with pytest.raises(ValueError, match="unknown quality parameter"):
        flag_quality(stats, {"dark_threshold": 0.3})
    with pytest.raises(ValueError, match="lack column"):
        flag_quality(stats.drop(columns=["entropy"]))


def test_modified_z_by_hand() -> None:
    np.testing.assert_allclose(modified_z(np.array([1.0, 2.0, 3.0, 4.0, 100.0])),
                               0.6745 * (np.array([1.0, 2.0, 3.0, 4.0, 100.0]) - 3.0))
    # MAD of 0: the mean absolute deviation (x 1.253314) stands in
    values = np.array([5.0, 5.0, 5.0, 5.0, 9.0])
    np.testing.assert_allclose(modified_z(values), (values - 5.0) / (1.253314 * 0.8))
    assert (modified_z(np.full(4, 2.0)) == 0).all()
