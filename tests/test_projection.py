"""UMAP projection: seeded, reproducible, and tolerant of tiny inputs."""

from __future__ import annotations

import numpy as np

from audit.config import ProjectionConfig
from audit.projection import project


def _digit_vectors(digit_images) -> tuple[np.ndarray, np.ndarray]:
    images, targets = digit_images
    x = images[:400].reshape(400, -1).astype(np.float32)
    x -= x.mean(axis=1, keepdims=True)
    return x / np.linalg.norm(x, axis=1, keepdims=True), targets[:400]


def test_umap_is_reproducible_with_a_seed(digit_images) -> None:
    vectors, _ = _digit_vectors(digit_images)
    first = project(vectors, ProjectionConfig(seed=7))
    second = project(vectors, ProjectionConfig(seed=7))
    np.testing.assert_array_equal(first.points, second.points)
    other = project(vectors, ProjectionConfig(seed=8))
    assert not np.array_equal(first.points, other.points)
    assert first.settings["metric"] == "cosine" and first.points.shape == (400, 2)


def test_umap_keeps_classes_apart(digit_images) -> None:
    from sklearn.model_selection import cross_val_score
    from sklearn.neighbors import KNeighborsClassifier

    vectors, targets = _digit_vectors(digit_images)
    points = project(vectors, ProjectionConfig(seed=0)).points
    accuracy = cross_val_score(KNeighborsClassifier(5), points, targets, cv=5).mean()
    assert accuracy > 0.85, "the 2D map should keep digit classes in separate regions"


def test_tiny_inputs() -> None:
    assert project(np.eye(3, dtype=np.float32)).points.shape == (3, 2)
    assert project(np.eye(6, dtype=np.float32)).points.shape == (6, 2)


def test_above_the_fit_size_umap_fits_a_seeded_sample_and_places_the_rest(digit_images) -> None:
    """The large-dataset form on real digits: the sample's points are exactly a seeded full fit of that sample,
    the others are placed by the fitted model, the settings say so, and the map still separates the digits."""
    from sklearn.model_selection import cross_val_score
    from sklearn.neighbors import KNeighborsClassifier

    vectors, targets = _digit_vectors(digit_images)
    config = ProjectionConfig(seed=3)
    sampled = project(vectors, config, max_fit_points=250, transform_batch=60)
    assert sampled.settings["fit_points"] == 250 and sampled.settings["n_transformed"] == 150
    assert "transform" in sampled.settings["note"]
    chosen = np.zeros(len(vectors), bool)
    chosen[np.random.default_rng(3).choice(len(vectors), size=250, replace=False)] = True
    np.testing.assert_array_equal(sampled.points[chosen], project(vectors[chosen], config).points)
    np.testing.assert_array_equal(sampled.points, project(vectors, config, max_fit_points=250,
                                                          transform_batch=60).points)
    assert np.isfinite(sampled.points).all()
    placed = cross_val_score(KNeighborsClassifier(5), sampled.points[~chosen], targets[~chosen], cv=5).mean()
    assert placed > 0.8, "placed points land among their own digit"


def test_batches_place_the_same_points_as_one_call_when_the_batch_covers_them(digit_images) -> None:
    from audit.projection import transform_in_batches

    vectors, _ = _digit_vectors(digit_images)
    model = project(vectors[:300], ProjectionConfig(seed=0)).model
    rows = np.zeros(len(vectors), bool)
    rows[300:] = True
    once = model.transform(vectors[300:])
    np.testing.assert_allclose(transform_in_batches(model, vectors, rows, batch=1000), once)
    assert transform_in_batches(model, vectors, rows, batch=40).shape == (100, 2)


def test_transform_neighbours_come_from_faiss_in_umaps_format(digit_images) -> None:
    """The stand-in for UMAP's index answers like pynndescent's ``query``: int32 indices of the fitted points and
    cosine distances, here checked against an exact cosine search on the digits."""
    from sklearn.neighbors import NearestNeighbors

    from audit.projection import _FaissNeighbours

    vectors, _ = _digit_vectors(digit_images)
    fitted, queries = vectors[:300], vectors[300:]
    indices, distances = _FaissNeighbours(fitted, object()).query(queries, 10)
    assert indices.dtype == np.int32 and distances.dtype == np.float32 and indices.shape == (100, 10)
    exact_distances, exact = NearestNeighbors(n_neighbors=10, metric="cosine").fit(fitted).kneighbors(queries)
    recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(indices, exact, strict=True)])
    assert recall > 0.95
    own = 1.0 - np.einsum("ij,ij->i", np.repeat(queries, 10, axis=0), fitted[indices.ravel()]).reshape(100, 10)
    np.testing.assert_allclose(distances, own, atol=1e-5)
    np.testing.assert_allclose(np.sort(distances, axis=1)[:, 0], exact_distances[:, 0], atol=1e-5)


def test_the_model_keeps_its_own_index_after_placing_points(digit_images) -> None:
    """``transform_in_batches`` swaps the index only while it places points (the saved model stays UMAP's)."""
    from audit.projection import _FaissNeighbours, transform_in_batches

    class Model:  # the attributes of a fitted UMAP that the placement reads
        _small_data = False

        def __init__(self, raw: np.ndarray) -> None:
            self._raw_data, self._knn_search_index, self.seen = raw, "pynndescent index", []

        def transform(self, x: np.ndarray) -> np.ndarray:
            self.seen.append(type(self._knn_search_index))
            return x[:, :2]

    vectors, _ = _digit_vectors(digit_images)
    model = Model(vectors[:200])
    rows = np.zeros(len(vectors), bool)
    rows[200:] = True
    out = transform_in_batches(model, vectors, rows, batch=80)
    np.testing.assert_array_equal(out, vectors[200:, :2])
    assert model.seen == [_FaissNeighbours] * 3 and model._knn_search_index == "pynndescent index"
