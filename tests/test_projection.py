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
