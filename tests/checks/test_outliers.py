"""Outliers (audit.checks.outliers) on real digit scans with images from another source and relabelled digits.

300 sklearn digit scans of classes 0-4 (8x8 pixel vectors, mean-centred, L2-normalised), plus six 8x8 tiles of
scikit-image photos (another source), and one scan each of "0", "2", "3" and "4" labelled "1". Expectations
follow from that injection, or from hand computation.
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from audit.checks.outliers import find_outliers, outlier_score, robust_z


def _unit(rows: np.ndarray) -> np.ndarray:
    rows = np.asarray(rows, dtype=np.float64).reshape(len(rows), -1)
    rows = rows - rows.mean(axis=1, keepdims=True)
    return (rows / np.linalg.norm(rows, axis=1, keepdims=True)).astype(np.float32)


@pytest.fixture(scope="module")
def injected(digit_images) -> dict:
    import skimage.data
    from PIL import Image

    images, targets = digit_images
    rng = np.random.default_rng(0)
    chosen = np.concatenate([rng.permutation(np.flatnonzero(targets == c))[:60] for c in range(5)])
    vectors = [_unit(images[chosen])]
    labels = [str(t) for t in targets[chosen]]
    ids = [f"digit-{i}" for i in chosen]
    others = []
    for photo in (skimage.data.astronaut(), skimage.data.coffee(), skimage.data.rocket()):
        grey = Image.fromarray(photo).convert("L")
        for box in ((0, 0, 128, 128), (200, 150, 328, 278)):
            others.append(np.asarray(grey.crop(box).resize((8, 8), Image.Resampling.BOX), dtype=np.float64))
    vectors.append(_unit(np.stack(others)))
    labels += [str(rng.integers(0, 5)) for _ in others]
    ids += [f"photo-{j}" for j in range(len(others))]
    relabelled = {next(ids[i] for i in range(len(chosen)) if labels[i] == c): c for c in ("0", "2", "3", "4")}
    for sample_id in relabelled:
        labels[ids.index(sample_id)] = "1"
    samples = pd.DataFrame({"label": labels, "split": "train"}, index=pd.Index(ids, name="sample_id"))
    return {"samples": samples, "embeddings": np.concatenate(vectors), "others": ids[-len(others):],
            "relabelled": relabelled}


@pytest.fixture(scope="module")
def found(injected):
    return find_outliers(injected["samples"], injected["embeddings"])


def test_images_from_another_source_are_global_outliers(found, injected) -> None:
    frame = found.samples
    flagged = set(frame.index[frame["outliers_is_outlier"]])
    assert set(injected["others"]) <= flagged
    assert len(flagged - set(injected["others"])) <= 3  # at most 1% of the 300 real digits
    top = frame["outliers_score"].sort_values(ascending=False).index[:len(injected["others"])]
    assert set(top) == set(injected["others"])


def test_relabelled_digits_are_class_outliers_nearer_their_true_class(found, injected) -> None:
    frame = found.samples
    for sample_id, true_class in injected["relabelled"].items():
        assert frame.loc[sample_id, "outliers_is_class_outlier"], sample_id
        assert frame.loc[sample_id, "outliers_nearest_class"] == true_class
        assert frame.loc[sample_id, "outliers_centroid_margin"] > 0
        assert not frame.loc[sample_id, "outliers_is_outlier"]  # a real digit: not far from everything
    # the real digits of class "1" are not class outliers
    ones = frame.index.str.startswith("digit") & (injected["samples"]["label"] == "1") \
        & ~frame.index.isin(list(injected["relabelled"]))
    assert frame.loc[ones, "outliers_is_class_outlier"].mean() <= 0.05
    # by the documented rule: the class ratio is the own-class over the overall kNN distance
    ratio = frame["outliers_class_distance"] / frame["outliers_knn_distance"]
    np.testing.assert_allclose(frame["outliers_class_ratio"], ratio, rtol=1e-9)
    expected = (frame["outliers_class_z"] > 3.5) | (ratio > 2.0)
    assert (frame["outliers_is_class_outlier"] == expected).all()


def test_scores_follow_the_documented_rule(found) -> None:
    frame = found.samples
    flagged = frame["outliers_is_outlier"]
    assert ((frame["outliers_score"] > 0.5) == flagged).all()
    assert ((frame["outliers_z"] > found.metrics["z_threshold"]) == flagged).all()
    # the distance threshold in the metrics separates the flagged from the rest
    threshold = found.metrics["distance_threshold"]
    assert (frame.loc[flagged, "outliers_knn_distance"] > threshold - 1e-9).all()
    assert (frame.loc[~flagged, "outliers_knn_distance"] <= threshold + 1e-9).all()


def test_knn_distance_matches_brute_force(found, injected) -> None:
    vectors = injected["embeddings"].astype(np.float64)
    similarity = vectors @ vectors.T
    np.fill_diagonal(similarity, -np.inf)
    top = -np.sort(-similarity, axis=1)[:, :10]
    np.testing.assert_allclose(found.samples["outliers_knn_distance"], (1 - top).mean(axis=1), atol=1e-5)


def test_robust_z_and_score_by_hand() -> None:
    values = np.array([1.0, 2.0, 3.0, 4.0, 100.0])  # median 3, MAD 1
    np.testing.assert_allclose(robust_z(values), 0.6745 * (values - 3.0))
    assert outlier_score(np.array([3.5]))[0] == pytest.approx(0.5)
    assert outlier_score(np.array([0.0]))[0] == pytest.approx(1 / (1 + np.exp(3.5)))
    assert np.isnan(robust_z(np.array([1.0, np.nan, 3.0]))[1])


def test_unreadable_rows_and_small_classes(injected) -> None:
    samples = injected["samples"].copy()
    vectors = injected["embeddings"].copy()
    vectors[0] = np.nan
    samples.iloc[-1, samples.columns.get_loc("label")] = "tiny-class"
    result = find_outliers(samples, vectors)
    assert np.isnan(result.samples["outliers_score"].iloc[0]) and not result.samples["outliers_is_outlier"].iloc[0]
    assert np.isnan(result.samples["outliers_class_score"].iloc[-1])  # one member: no class statistics
    assert result.metrics["per_class"]["tiny-class"] == {"n": 1, "n_class_outliers": 0}
    json.dumps(result.metrics, allow_nan=False)


def test_without_labels_only_global_outliers(injected) -> None:
    result = find_outliers(injected["samples"].drop(columns=["label"]), injected["embeddings"])
    assert result.samples["outliers_class_z"].isna().all() and not result.samples["outliers_is_class_outlier"].any()
    assert result.samples["outliers_is_outlier"].sum() >= len(injected["others"])
