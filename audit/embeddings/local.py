"""The local embedding engine: hash every image, embed what the cache lacks (decoded in parallel), return
vectors in sample order with the problems and pixel statistics found while decoding.

The model is loaded only when an image needs embedding: an :class:`~audit.embeddings.embedders.LazyEmbedder`
knows its cache folder from the last run, so an unchanged weekly re-run never loads it."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from audit.embeddings.cache import DEFAULT_CACHE_DIR, EmbeddingCache, hash_file
from audit.embeddings.embedders import Embedder


class _DecodeDataset:
    """Map-style dataset for torch's DataLoader: decoding and preprocessing happen in its workers."""

    def __init__(self, paths: list[str], preprocess: Callable, draft_size: int | None) -> None:
        self.paths, self.preprocess, self.draft_size = paths, preprocess, draft_size

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int):
        image, problems, stats = decode_with_stats(self.paths[index], self.draft_size)
        return index, (None if image is None else self.preprocess(image)), problems, stats


def decode_with_stats(path: str, draft_size: int | None) -> tuple:
    """The decoded image, its problem codes, and its pixel statistics (``STAT_KEYS`` order; None if unreadable)."""
    from audit.sources.images import STAT_KEYS, image_stats, load_image

    image, problems = load_image(path, draft_size=draft_size)
    if image is None:
        return None, problems, None
    values = image_stats(image)
    values["width"], values["height"] = map(float, image.info.get("original_size", image.size))
    values["aspect_ratio"] = values["width"] / values["height"] if values["height"] else float("nan")
    return image, problems, np.array([values[k] for k in STAT_KEYS], dtype=np.float32)


def _collate(items):
    indices = [i for i, x, _, _ in items if x is not None]
    tensors = [x for _, x, _, _ in items if x is not None]
    if not tensors:
        batch = None
    elif isinstance(tensors[0], np.ndarray):
        batch = np.stack(tensors)
    else:
        import torch

        batch = torch.stack(tensors)
    return indices, batch, [(i, p, x is None, s) for i, x, p, s in items]


def _worker_init(_: int) -> None:
    import torch

    torch.set_num_threads(1)


def _batches(paths: list[str], embedder: Embedder, batch_size: int, workers: int, decoding: str = "auto") -> Iterator:
    """Decoded, preprocessed batches, by the strategy that suits where the model runs.

    On a GPU the model waits for the CPU, so worker processes decode ahead while it runs. On a CPU the model
    already uses every core: decoding beside it only makes both fight for the cores (a forward pass is as slow
    as its slowest thread), so a thread pool decodes one batch on all cores, then the model runs, in turns.
    Pillow releases the GIL while it decodes and resizes, so the threads scale like processes here, without
    their start-up and pickling costs.
    """
    if decoding not in ("auto", "threads", "processes"):
        raise ValueError(f"decoding must be 'auto', 'threads' or 'processes', not {decoding!r}")
    dataset = _DecodeDataset(paths, embedder.preprocess, embedder.draft_size)
    if decoding == "auto":
        decoding = "processes" if embedder.device.startswith("cuda") else "threads"
    if workers and decoding == "processes":
        from torch.utils.data import DataLoader

        yield from DataLoader(dataset, batch_size=batch_size, num_workers=workers, collate_fn=_collate,
                              worker_init_fn=_worker_init, prefetch_factor=4, persistent_workers=False)
        return
    pool = ThreadPoolExecutor(max_workers=workers) if workers else None
    try:
        for start in range(0, len(paths), batch_size):
            indices = range(start, min(start + batch_size, len(paths)))
            items = list(pool.map(dataset.__getitem__, indices)) if pool else [dataset[i] for i in indices]
            yield _collate(items)
    finally:
        if pool is not None:
            pool.shutdown()


@dataclass
class EmbeddingOutcome:
    """Vectors for the readable samples, and what was found on the way."""

    vectors: np.ndarray  # (n_readable, dim) float32, rows listed in ``rows``
    rows: np.ndarray  # per sample: row into ``vectors`` or -1
    hashes: list[str | None]
    problems: dict[str, list[str]]  # sample id -> problem codes found while decoding
    n_cached: int
    n_embedded: int
    timings: dict[str, float] = field(default_factory=dict)
    stats: np.ndarray | None = None  # (n_samples, len(STAT_KEYS)) pixel statistics, NaN where unknown
    model_loaded: bool = True


def default_workers() -> int:
    """The cores this process may use (a container's CPU quota, not the host's count), at most 8."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    return max(1, min(cores, 8))


def hash_files(paths: list[str], progress: Any = False) -> list[str | None]:
    """Content hashes of the files (None for a missing one), read in parallel."""
    from audit.progress import as_progress

    bar = as_progress(progress).bar(len(paths), "hashing images", "files")
    out: list[str | None] = []
    with ThreadPoolExecutor(max_workers=4) as pool:
        for digest in pool.map(hash_file, paths, chunksize=64):
            out.append(digest)
            bar.update(1)
    bar.close()
    return out


def embed_samples(
    samples: pd.DataFrame,
    embedder: Embedder,
    cache_dir: Path | None = None,
    use_cache: bool = True,
    batch_size: int = 64,
    workers: int | None = None,
    progress: Any = True,
    decoding: str = "auto",
    hashes: list[str | None] | None = None,
    flush_seconds: float = 30.0,
) -> EmbeddingOutcome:
    """Embed every sample whose file can be decoded; cached images are not decoded again.

    ``embedder`` may be a :class:`~audit.embeddings.embedders.LazyEmbedder`: its model is loaded only if an image
    is missing from the cache. ``decoding``: ``threads`` (decode a batch on all cores, then run the model: best
    when the model runs on the CPU), ``processes`` (workers decode ahead while the model runs: best on a GPU), or
    ``auto`` (by device). ``progress``: a bool or an :class:`audit.progress.Progress`. ``hashes``: content hashes
    already computed (one per sample). Finished work is flushed to the cache every ``flush_seconds``.
    """
    from audit.progress import as_progress
    from audit.sources import UNREADABLE

    reporter = as_progress(progress)
    started = time.perf_counter()
    paths = samples["filepath"].astype(str).tolist()
    if hashes is None:
        hashes = hash_files(paths, reporter)
    timings = {"hash": time.perf_counter() - started}
    root = cache_dir or DEFAULT_CACHE_DIR

    def plan(cache: EmbeddingCache | None) -> tuple[dict, list[str], list[str], list[str]]:
        """What the cache has, what must be embedded, and what needs only its pixel statistics."""
        results: dict[str, tuple[np.ndarray | None, str]] = {}
        todo_keys: list[str] = []
        todo_paths: list[str] = []
        stats_only: list[str] = []
        for path, key in zip(paths, hashes, strict=True):
            if key is None or key in results:
                continue  # a duplicate of this content is caught by ``key in results``
            if cache is not None and key in cache:
                results[key] = cache.get(key)
                if cache.stats(key) is None and not set(results[key][1].split(";")) & UNREADABLE:
                    stats_only.append(path)
            else:
                results[key] = (None, "")  # placeholder, filled below
                todo_keys.append(key)
                todo_paths.append(path)
        return results, todo_keys, todo_paths, stats_only

    cache = EmbeddingCache(root, embedder, flush_seconds=flush_seconds) if use_cache else None
    results, todo_keys, todo_paths, stats_only = plan(cache)
    loaded = not getattr(embedder, "lazy", False)
    if todo_paths and not loaded:
        embedder = embedder.load()  # something needs the model: load it (its real identity may differ)
        loaded = True
        if cache is not None and embedder.cache_key != cache.key:
            cache = EmbeddingCache(root, embedder, flush_seconds=flush_seconds)
            results, todo_keys, todo_paths, stats_only = plan(cache)
    n_cached = len(results) - len(todo_keys)
    image_stats: dict[str, np.ndarray] = {}
    step = time.perf_counter()
    workers = default_workers() if workers is None else workers
    try:
        if todo_paths:
            bar = reporter.bar(len(todo_paths), f"embedding ({embedder.name})", "img")
            for indices, batch, infos in _batches(todo_paths, embedder, batch_size, workers, decoding):
                vectors = embedder.forward(batch) if batch is not None else np.empty((0, embedder.dim), np.float32)
                by_index = dict(zip(indices, vectors, strict=True))
                for index, problems, unreadable, stats in infos:
                    key = todo_keys[index]
                    vector = by_index.get(index)
                    results[key] = (vector, ";".join(problems))
                    if stats is not None:
                        image_stats[key] = stats
                    if cache is not None:
                        cache.put(key, vector, ";".join(problems), unreadable, stats)
                bar.update(len(infos))
            bar.close()
    finally:
        if cache is not None:
            cache.flush()
    timings["embed"] = time.perf_counter() - step
    if stats_only:  # cache entries from before pixel statistics were kept: decode once more, without the model
        for key, stats in _stats_by_hash(stats_only, paths, hashes, workers).items():
            image_stats[key] = stats
    matrix, rows, found, stats_matrix = per_sample_outputs(samples.index, hashes, results, image_stats, cache,
                                                           embedder.dim)
    timings["total"] = time.perf_counter() - started
    return EmbeddingOutcome(vectors=matrix, rows=rows, hashes=hashes, problems=found, n_cached=n_cached,
                            n_embedded=len(todo_keys), timings=timings, stats=stats_matrix, model_loaded=loaded)


def stats_for_files(paths: list[str], hashes: list[str | None], workers: int) -> np.ndarray:
    """``(n, len(STAT_KEYS))`` pixel statistics of the files (NaN rows for missing or unreadable ones), decoded in
    parallel, without a model: for runs whose embeddings are the user's own."""
    from audit.sources.images import STAT_KEYS

    found = _stats_by_hash([p for p, h in zip(paths, hashes, strict=True) if h], paths, hashes, workers)
    out = np.full((len(paths), len(STAT_KEYS)), np.nan, np.float32)
    for i, key in enumerate(hashes):
        if key in found:
            out[i] = found[key]
    return out


def _stats_by_hash(wanted: list[str], paths: list[str], hashes: list[str | None],
                   workers: int) -> dict[str, np.ndarray]:
    """Pixel statistics of the given files by content hash (decoded in parallel, no model)."""
    key_of = dict(zip(paths, hashes, strict=True))
    out: dict[str, np.ndarray] = {}
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        for path, (_, _, stats) in zip(wanted, pool.map(lambda p: decode_with_stats(p, None), wanted), strict=True):
            if stats is not None and key_of.get(path):
                out[key_of[path]] = stats
    return out


def per_sample_outputs(sample_ids: pd.Index, hashes: list[str | None], results: dict[str, tuple[Any, str]],
                       image_stats: dict[str, Any], cache: EmbeddingCache | None, dim: int,
                       ) -> tuple[np.ndarray, np.ndarray, dict[str, list[str]], np.ndarray]:
    """From per-content results back to samples (copies share one result), for every engine: the vectors of the
    readable images, each sample's row among them (-1: none), each sample's problem codes, and each sample's
    pixel statistics (NaN where unknown)."""
    from audit.sources import UNREADABLE
    from audit.sources.images import STAT_KEYS

    rows = np.full(len(hashes), -1, dtype=np.int64)
    problems: dict[str, list[str]] = {}
    vectors_out: list[np.ndarray] = []
    stats_matrix = np.full((len(hashes), len(STAT_KEYS)), np.nan, dtype=np.float32)
    for i, (sample_id, key) in enumerate(zip(sample_ids, hashes, strict=True)):
        if key is None:
            continue  # missing file: already recorded by the source
        vector, problem_text = results[key]
        codes = [c for c in problem_text.split(";") if c]
        if codes:
            problems[str(sample_id)] = codes
        if vector is not None and not (set(codes) & UNREADABLE):
            rows[i] = len(vectors_out)
            vectors_out.append(np.asarray(vector, dtype=np.float32))
        stats = image_stats.get(key)
        if stats is None and cache is not None:
            stats = cache.stats(key)
        if stats is not None:
            stats_matrix[i] = stats
    matrix = np.stack(vectors_out) if vectors_out else np.empty((0, dim), np.float32)
    return matrix, rows, problems, stats_matrix
