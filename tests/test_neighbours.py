"""k nearest neighbours (audit.neighbours) against brute force on real embeddings.

The embeddings are real: sklearn's digit scans and tiles of scikit-image photos, as mean-centred, L2-normalised
pixel vectors. Every expectation comes from an independent brute-force computation (the full similarity matrix,
which is fine at these sizes) or from a construction (identical rows).
"""

from __future__ import annotations

import numpy as np
import pytest

from audit.neighbours import EmbeddingsError, knn, plan_index, recall_against_exact


def _unit(rows: np.ndarray) -> np.ndarray:
    rows = np.asarray(rows, dtype=np.float64).reshape(len(rows), -1)
    rows = rows - rows.mean(axis=1, keepdims=True)
    return (rows / np.linalg.norm(rows, axis=1, keepdims=True)).astype(np.float32)


@pytest.fixture(scope="module")
def digit_vectors(digit_images) -> np.ndarray:
    images, _ = digit_images
    return _unit(images)


@pytest.fixture(scope="module")
def photo_vectors() -> np.ndarray:
    """16x16 grey thumbnails of 32x32 tiles of four colour photos (~1,000 real, varied vectors)."""
    import skimage.data
    from PIL import Image

    rows = []
    for photo in (skimage.data.astronaut(), skimage.data.coffee(), skimage.data.chelsea(), skimage.data.rocket()):
        grey = np.asarray(Image.fromarray(photo).convert("L"), dtype=np.float32)
        for top in range(0, grey.shape[0] - 32, 32):
            for left in range(0, grey.shape[1] - 32, 32):
                tile = grey[top:top + 32, left:left + 32]
                if tile.std() > 4:
                    rows.append(tile.reshape(16, 2, 16, 2).mean(axis=(1, 3)))
    return _unit(np.stack(rows))


def brute_force(vectors: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    similarity = vectors.astype(np.float64) @ vectors.astype(np.float64).T
    np.fill_diagonal(similarity, -np.inf)
    order = np.argsort(-similarity, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(similarity, order, axis=1), order


def test_exact_search_matches_brute_force_on_digits(digit_vectors) -> None:
    expected_sim, _ = brute_force(digit_vectors, 10)
    similarity, indices = knn(digit_vectors, k=10, method="exact")
    assert similarity.shape == indices.shape == (len(digit_vectors), 10)
    # similarities equal (indices may differ only between tied rows)
    np.testing.assert_allclose(similarity, expected_sim, atol=1e-5)
    # each returned index really has the returned similarity, and no row is its own neighbour
    recomputed = np.einsum("ij,ikj->ik", digit_vectors, digit_vectors[indices])
    np.testing.assert_allclose(recomputed, similarity, atol=1e-5)
    assert not (indices == np.arange(len(indices))[:, None]).any()
    assert (np.diff(similarity, axis=1) <= 1e-6).all()  # sorted, most similar first


@pytest.mark.parametrize("vectors_name", ["digit_vectors", "photo_vectors"])
def test_hnsw_recall_against_brute_force(vectors_name, request) -> None:
    vectors = request.getfixturevalue(vectors_name)
    expected_sim, _ = brute_force(vectors, 10)
    _, indices = knn(vectors, k=10, method="hnsw")
    found_sim = np.einsum("ij,ikj->ik", vectors, vectors[indices])
    brute_recall = (found_sim >= expected_sim[:, -1:] - 1e-6).sum() / indices.size
    assert brute_recall >= 0.99
    # the helper measures the same thing (in float32: a near-tie at the k-th place may fall either way)
    helper = recall_against_exact(vectors, indices, n_queries=len(vectors))
    assert helper == pytest.approx(brute_recall, abs=2e-3)


def test_recall_helper_counts_misses() -> None:
    rng = np.random.default_rng(0)
    vectors = _unit(rng.standard_normal((200, 16)))
    _, indices = knn(vectors, k=5, method="exact")
    assert recall_against_exact(vectors, indices, n_queries=200) == 1.0
    wrong = indices.copy()
    wrong[:, -1] = -1  # one answer in five missing
    assert recall_against_exact(vectors, wrong, n_queries=200) == pytest.approx(0.8)


def test_identical_rows_find_each_other_and_ties_count_as_found(digit_vectors) -> None:
    vectors = np.concatenate([digit_vectors[:50], digit_vectors[:3], digit_vectors[:3]])  # rows 50-55 repeat 0-2
    similarity, indices = knn(vectors, k=2, method="exact")
    for original in range(3):
        twins = {original, 50 + original, 53 + original}
        assert set(indices[original]) == twins - {original}
        np.testing.assert_allclose(similarity[original], 1.0, atol=1e-5)
    assert recall_against_exact(vectors, indices, n_queries=len(vectors)) == 1.0


def test_fewer_rows_than_k_pads_with_minus_one_and_nan(digit_vectors) -> None:
    similarity, indices = knn(digit_vectors[:4], k=6)
    assert (indices[:, 3:] == -1).all() and np.isnan(similarity[:, 3:]).all()
    assert (indices[:, :3] >= 0).all() and np.isfinite(similarity[:, :3]).all()


def test_mirrored_queries_exclude_their_own_row(photo_vectors) -> None:
    vectors = photo_vectors[:300]
    mirrored = np.ascontiguousarray(vectors.reshape(-1, 16, 16)[:, :, ::-1].reshape(len(vectors), -1))
    similarity, indices = knn(vectors, k=3, queries=mirrored, exclude_self=True)
    assert not (indices == np.arange(len(vectors))[:, None]).any()
    expected = mirrored.astype(np.float64) @ vectors.astype(np.float64).T
    np.fill_diagonal(expected, -np.inf)
    np.testing.assert_allclose(similarity[:, 0], expected.max(axis=1), atol=1e-5)


def test_batches_and_threads_do_not_change_the_answer(digit_vectors) -> None:
    import faiss

    before = faiss.omp_get_max_threads()
    one = knn(digit_vectors, k=5, method="exact", batch_size=97, threads=1)
    other = knn(digit_vectors, k=5, method="exact", batch_size=4096, threads=2)
    np.testing.assert_allclose(one[0], other[0], atol=1e-6)
    assert faiss.omp_get_max_threads() == before


def test_bad_embeddings_are_refused_with_the_rows(digit_vectors) -> None:
    broken = digit_vectors[:20].copy()
    broken[7] = np.nan
    with pytest.raises(EmbeddingsError, match=r"row\(s\), first rows \[7\]"):
        knn(broken, k=3)
    with pytest.raises(EmbeddingsError, match="L2-normalised"):
        knn(digit_vectors[:20] * 2.0, k=3)
    with pytest.raises(EmbeddingsError, match="2-d"):
        knn(digit_vectors[0], k=3)
    with pytest.raises(ValueError, match="method"):
        knn(digit_vectors[:20], k=3, method="annoy")


def test_plan_switches_to_hnsw_above_the_exact_limit() -> None:
    assert plan_index(1_000).method == "exact"
    assert plan_index(1_000, exact_max_rows=500).method == "hnsw"
    plan = plan_index(2_000_000)
    assert plan.method == "hnsw" and plan.params["M"] >= 16 and plan.params["efSearch"] >= plan.params["M"]
    # efSearch grows with the graph, as documented: 128 up to 250,000 rows, 256 above
    assert plan_index(200_000).params["efSearch"] == 128 and plan.params["efSearch"] == 256
    assert plan_index(2_000_000, ef_search=64).params["efSearch"] == 64
