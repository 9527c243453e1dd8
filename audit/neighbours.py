"""k nearest neighbours of L2-normalised embeddings (cosine = inner product), with faiss, in O(n k) memory.

Duplicates, leakage and outliers all start from the same question: for every image, which images are most
similar, and how similar? Answering it with an ``n x n`` similarity matrix is 4 TB at a million images, so this
module never builds one:

* up to ``EXACT_MAX_ROWS`` rows (default 20,000) the search is exact: faiss ``IndexFlatIP``, a blocked BLAS
  scan whose cost is ``n^2 d`` flops but whose memory is the index (``n d`` floats) plus one query batch;
* above it the search is approximate: faiss ``IndexHNSWFlat`` (an HNSW graph over the raw float32 vectors, inner
  product), ``M = 32`` links per node, ``efConstruction = 80``, and ``efSearch`` 128 up to 250,000 vectors, 256
  above (at a fixed efSearch, HNSW's recall falls as the graph grows). Measured on 512-d CLIP-like synthetic
  embeddings (``benchmarks/hygiene.py``, every vector also a query, 2 cores): recall@10 against exact search
  0.9975 at 100k (efSearch 128); at 1M 0.9855 with efSearch 128, 0.9921 with 192, 0.9931 with 256, 0.9961
  with 384 (one index, the same 1,000 queries). Memory is the vectors plus about ``2 M`` int32 links per node
  (~0.25 GiB per million): 4.4 GiB peak for a million, the caller's copy of the embeddings included.
  HNSW rather than IVF: in a self-join every vector is also a query, and an IVF query scans ``nprobe / nlist``
  of all vectors (a cost per query that grows with ``n`` at a fixed recall) while an HNSW query visits about
  ``efSearch x M`` nodes whatever ``n``; at 50-100k vectors both reached recall >= 0.99 in similar time on this
  data, IVF was not measured at a million.

Queries run in batches of ``batch_size`` rows, so besides the index only the ``(n, k)`` answers and one batch of
intermediate results are held. faiss parallelises with OpenMP; ``threads`` sets its thread count for the call
(and restores the previous setting afterwards). Left to None, a small search (fewer than ``SMALL_SEARCH``
query x row products, e.g. 4,000 x 4,000) runs on one thread: OpenMP's start and barriers cost more than they
save there, and on a busy machine a descheduled thread stalls the others (measured 3x slower with 2 threads
for 2,000 x 2,000 on the 2-core CI machine).

The answers exclude the query itself (row ``i`` is never its own neighbour) and are sorted by decreasing
similarity. Where fewer than ``k`` neighbours exist (``n <= k``, or an approximate search came back short) the
missing entries have index ``-1`` and similarity NaN.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from collections.abc import Iterator

EXACT_MAX_ROWS = 20_000
HNSW_M = 32
HNSW_EF_CONSTRUCTION = 80
HNSW_EF_SEARCH = 128
HNSW_EF_SEARCH_LARGE = 256
HNSW_LARGE_ROWS = 250_000
BATCH_SIZE = 8192
SMALL_SEARCH = 16_000_000
NORM_TOLERANCE = 1e-3


class EmbeddingsError(ValueError):
    """Embeddings that cannot be searched: wrong shape or dtype, NaN/inf rows, rows that are not unit length."""


@dataclass(frozen=True)
class IndexPlan:
    """Which index a search of ``n`` rows uses and with which parameters (recorded in a run's metrics)."""

    method: str  # "exact" or "hnsw"
    params: dict[str, Any]

    def describe(self) -> dict[str, Any]:
        return {"method": self.method, **self.params}


def plan_index(n_rows: int, method: str = "auto", exact_max_rows: int = EXACT_MAX_ROWS, hnsw_m: int = HNSW_M,
               ef_construction: int = HNSW_EF_CONSTRUCTION, ef_search: int | None = None) -> IndexPlan:
    """The index for ``n_rows`` vectors: ``exact`` up to ``exact_max_rows``, ``hnsw`` above (``method="auto"``);
    ``ef_search`` None: 128, or 256 above 250,000 rows (see the module docstring)."""
    if method not in ("auto", "exact", "hnsw"):
        raise ValueError(f"neighbour search method must be 'auto', 'exact' or 'hnsw', not {method!r}")
    if method == "auto":
        method = "exact" if n_rows <= exact_max_rows else "hnsw"
    if method == "exact":
        return IndexPlan("exact", {"index": "IndexFlatIP"})
    if ef_search is None:
        ef_search = HNSW_EF_SEARCH_LARGE if n_rows > HNSW_LARGE_ROWS else HNSW_EF_SEARCH
    return IndexPlan("hnsw", {"index": "IndexHNSWFlat", "metric": "inner_product", "M": int(hnsw_m),
                              "efConstruction": int(ef_construction), "efSearch": int(max(ef_search, 1))})


def check_embeddings(embeddings: np.ndarray, name: str = "embeddings") -> np.ndarray:
    """``embeddings`` as a C-contiguous float32 ``(n, d)`` array, or :class:`EmbeddingsError` saying which rows
    are unusable (the search is only a cosine search on unit vectors)."""
    array = np.asarray(embeddings)
    if array.ndim != 2:
        raise EmbeddingsError(f"{name} must be a 2-d array (n, d), got shape {array.shape}")
    array = np.ascontiguousarray(array, dtype=np.float32)
    finite = np.isfinite(array).all(axis=1)
    if not finite.all():
        bad = np.flatnonzero(~finite)
        raise EmbeddingsError(f"{name} have NaN/inf in {len(bad)} row(s), first rows {bad[:5].tolist()}; "
                              "leave unreadable samples out of the search")
    norms = np.sqrt(np.einsum("ij,ij->i", array, array))
    off = np.flatnonzero(np.abs(norms - 1.0) > NORM_TOLERANCE)
    if len(off):
        raise EmbeddingsError(f"{name} must be L2-normalised (cosine = inner product); {len(off)} row(s) are not, "
                              f"e.g. row {off[0]} has norm {norms[off[0]]:.4f}")
    return array


@contextmanager
def faiss_threads(threads: int | None) -> Iterator[None]:
    """Run faiss with ``threads`` OpenMP threads (None: leave its setting alone), restoring the setting after."""
    import faiss

    if threads is None:
        yield
        return
    if threads < 1:
        raise ValueError(f"threads must be at least 1, got {threads}")
    previous = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(int(threads))
    try:
        yield
    finally:
        faiss.omp_set_num_threads(previous)


def build_index(embeddings: np.ndarray, plan: IndexPlan, threads: int | None = None):
    """A faiss index holding ``embeddings`` (already checked), built as ``plan`` says."""
    import faiss

    dim = embeddings.shape[1]
    with faiss_threads(threads):
        if plan.method == "exact":
            index = faiss.IndexFlatIP(dim)
        else:
            index = faiss.IndexHNSWFlat(dim, plan.params["M"], faiss.METRIC_INNER_PRODUCT)
            index.hnsw.efConstruction = plan.params["efConstruction"]
        index.add(embeddings)
        if plan.method == "hnsw":
            index.hnsw.efSearch = plan.params["efSearch"]
    return index


def search(index, queries: np.ndarray, k: int, exclude_rows: np.ndarray | None = None,
           batch_size: int = BATCH_SIZE, threads: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Top-``k`` (similarity, index) of each query row, in batches; ``exclude_rows[i]`` (an index into the
    searched set, or -1) is removed from query ``i``'s answers, which is how a point is kept from being its own
    neighbour."""
    n = len(queries)
    extra = 1 if exclude_rows is not None else 0
    similarities = np.full((n, k), np.nan, dtype=np.float32)
    indices = np.full((n, k), -1, dtype=np.int64)
    if n == 0 or k == 0:
        return similarities, indices
    with faiss_threads(threads):
        for start in range(0, n, batch_size):
            stop = min(start + batch_size, n)
            found_sim, found_idx = index.search(queries[start:stop], k + extra)
            if exclude_rows is not None:
                own = exclude_rows[start:stop, None]
                keep = (found_idx != own) | (own < 0)  # -1: nothing to exclude for this query
                # a row whose own index was not returned drops its last (least similar) answer instead
                missing_self = keep.all(axis=1)
                keep[missing_self, -1] = False
                found_sim = found_sim[keep].reshape(stop - start, k)
                found_idx = found_idx[keep].reshape(stop - start, k)
            absent = found_idx < 0
            found_sim = found_sim.astype(np.float32, copy=False)
            found_sim[absent] = np.nan
            similarities[start:stop] = found_sim
            indices[start:stop] = found_idx
    return similarities, indices


def knn(embeddings: np.ndarray, k: int = 10, queries: np.ndarray | None = None, exclude_self: bool | None = None,
        method: str = "auto", threads: int | None = None, batch_size: int = BATCH_SIZE,
        exact_max_rows: int = EXACT_MAX_ROWS, hnsw_m: int = HNSW_M, ef_construction: int = HNSW_EF_CONSTRUCTION,
        ef_search: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` most similar rows of ``embeddings`` for every query (by default every row of ``embeddings``).

    Parameters
    ----------
    embeddings
        ``(n, d)`` L2-normalised vectors (float32 or convertible); NaN rows are refused, leave them out.
    k
        Neighbours per query (at most ``n - 1`` can exist; the rest are -1 / NaN).
    queries
        ``(m, d)`` vectors to search for, e.g. the embeddings of mirrored images; default: ``embeddings``.
    exclude_self
        Remove row ``i`` from the answers of query ``i`` (needs ``m == n``); default True when ``queries`` is
        None. With mirrored images as queries, True keeps an image from matching its own mirror.
    method
        ``auto`` (exact up to ``exact_max_rows``, HNSW above), ``exact`` or ``hnsw``.
    threads
        OpenMP threads for faiss during this call (None: faiss's current setting).
    ef_search
        HNSW search breadth: higher is slower and closer to exact (see :func:`recall_against_exact`); None: by
        size, see :func:`plan_index`.

    Returns
    -------
    (similarities, indices)
        ``(m, k)`` float32 cosine similarities in decreasing order and ``(m, k)`` int64 row indices into
        ``embeddings``; -1 and NaN where no neighbour was found.
    """
    return knn_many(embeddings, k, [queries], exclude_self, method, threads, batch_size, exact_max_rows, hnsw_m,
                    ef_construction, ef_search)[0]


def knn_many(embeddings: np.ndarray, k: int, query_sets: list[np.ndarray | None], exclude_self: bool | None = None,
             method: str = "auto", threads: int | None = None, batch_size: int = BATCH_SIZE,
             exact_max_rows: int = EXACT_MAX_ROWS, hnsw_m: int = HNSW_M, ef_construction: int = HNSW_EF_CONSTRUCTION,
             ef_search: int | None = None) -> list[tuple[np.ndarray, np.ndarray]]:
    """:func:`knn` for several query sets against one index, built once (None in ``query_sets`` stands for the
    embeddings themselves); e.g. the images and their mirrors. ``exclude_self`` applies to every set (default:
    True when the set is None)."""
    if k < 0:
        raise ValueError(f"k must be non-negative, got {k}")
    base = check_embeddings(embeddings)
    checked = []
    for queries in query_sets:
        query = base if queries is None else check_embeddings(queries, "queries")
        if query.shape[1] != base.shape[1]:
            raise EmbeddingsError(f"queries have {query.shape[1]} dimensions, embeddings {base.shape[1]}")
        own = (queries is None) if exclude_self is None else exclude_self
        if own and len(query) != len(base):
            raise ValueError("exclude_self needs one query per embedding row (query i is embedding i)")
        checked.append((query, own))
    plan = plan_index(len(base), method, exact_max_rows, hnsw_m, ef_construction, ef_search)
    if threads is None and len(base) * max((len(q) for q, _ in checked), default=0) < SMALL_SEARCH:
        threads = 1
    index = build_index(base, plan, threads)
    rows = np.arange(len(base), dtype=np.int64)
    return [search(index, query, k, rows if own else None, batch_size, threads) for query, own in checked]


def recall_against_exact(embeddings: np.ndarray, indices: np.ndarray, n_queries: int = 1000, seed: int = 0,
                         threads: int | None = None, queries: np.ndarray | None = None,
                         exclude_self: bool | None = None) -> float:
    """Recall@k of ``indices`` (an answer of :func:`knn` on the same arguments) against exact search.

    ``n_queries`` query rows are drawn at random and searched exactly (``IndexFlatIP``, same self-exclusion).
    An approximate neighbour counts as found when its true similarity reaches the exact ``k``-th neighbour's
    (less 1e-6): with tied similarities (identical images) any of the tied rows is a correct answer, which a
    set comparison of indices would wrongly count as a miss. Missing answers (-1) count as misses.
    """
    base = check_embeddings(embeddings)
    query = base if queries is None else check_embeddings(queries, "queries")
    if exclude_self is None:
        exclude_self = queries is None
    indices = np.asarray(indices)
    if len(indices) != len(query):
        raise ValueError(f"indices have {len(indices)} rows, queries {len(query)}")
    k = indices.shape[1]
    if k == 0 or len(query) == 0:
        return 1.0
    rng = np.random.default_rng(seed)
    rows = np.sort(rng.choice(len(query), size=min(n_queries, len(query)), replace=False))
    index = build_index(base, IndexPlan("exact", {"index": "IndexFlatIP"}), threads)
    exclude = rows.astype(np.int64) if exclude_self else None
    exact_sim, _ = search(index, query[rows], k, exclude, threads=threads)
    kth = exact_sim[:, -1]
    approx = indices[rows]
    valid = approx >= 0
    true_sim = np.einsum("ij,ikj->ik", query[rows], base[np.where(valid, approx, 0)])
    expected = np.isfinite(exact_sim).sum(axis=1)  # fewer than k neighbours exist when n <= k
    hits = (valid & (true_sim >= (np.nan_to_num(kth, nan=-np.inf) - 1e-6)[:, None])).sum(axis=1)
    return float(np.minimum(hits, expected).sum() / max(expected.sum(), 1))
