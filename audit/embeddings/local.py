"""The local embedding engine: hash every image, embed what the cache lacks (decoded in parallel), return
vectors in sample order with the problems found while decoding."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

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
        from audit.sources import load_image

        image, problems = load_image(self.paths[index], draft_size=self.draft_size)
        return index, (None if image is None else self.preprocess(image)), problems


def _collate(items):
    import torch

    indices = [i for i, x, _ in items if x is not None]
    tensors = [x for _, x, _ in items if x is not None]
    if tensors and isinstance(tensors[0], np.ndarray):
        batch = np.stack(tensors)
    else:
        batch = torch.stack(tensors) if tensors else None
    return indices, batch, [(i, p, x is None) for i, x, p in items]


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


def default_workers() -> int:
    """The cores this process may use (a container's CPU quota, not the host's count), at most 8."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    return max(1, min(cores, 8))


def embed_samples(
    samples: pd.DataFrame,
    embedder: Embedder,
    cache_dir: Path | None = None,
    use_cache: bool = True,
    batch_size: int = 64,
    workers: int | None = None,
    progress: bool = True,
    decoding: str = "auto",
) -> EmbeddingOutcome:
    """Embed every sample whose file can be decoded; cached images are not decoded again.

    ``decoding``: ``threads`` (decode a batch on all cores, then run the model: best when the model runs on the
    CPU), ``processes`` (workers decode ahead while the model runs: best on a GPU), or ``auto`` (by device).
    """
    from tqdm.auto import tqdm

    from audit.sources import UNREADABLE

    started = time.perf_counter()
    paths = samples["filepath"].astype(str).tolist()
    with ThreadPoolExecutor(max_workers=4) as pool:
        hashes = list(tqdm(pool.map(hash_file, paths, chunksize=64), total=len(paths), desc="hashing images",
                           disable=not progress or None, leave=False))
    timings = {"hash": time.perf_counter() - started}
    cache = EmbeddingCache(cache_dir or DEFAULT_CACHE_DIR, embedder) if use_cache else None
    results: dict[str, tuple[np.ndarray | None, str]] = {}
    todo_keys: list[str] = []
    todo_paths: list[str] = []
    for path, key in zip(paths, hashes, strict=True):
        if key is None or key in results:
            continue
        if cache is not None and key in cache:
            results[key] = cache.get(key)
        else:  # a duplicate of this content is caught by ``key in results`` above (a list lookup was O(n^2))
            results[key] = (None, "")  # placeholder, filled below
            todo_keys.append(key)
            todo_paths.append(path)
    n_cached = len(results) - len(todo_keys)
    step = time.perf_counter()
    workers = default_workers() if workers is None else workers
    try:
        with tqdm(total=len(todo_paths), desc=f"embedding ({embedder.name})", unit="img",
                  disable=not progress or None) as bar:
            for indices, batch, infos in _batches(todo_paths, embedder, batch_size, workers, decoding):
                vectors = embedder.forward(batch) if batch is not None else np.empty((0, embedder.dim), np.float32)
                by_index = dict(zip(indices, vectors, strict=True))
                for index, problems, unreadable in infos:
                    key = todo_keys[index]
                    vector = by_index.get(index)
                    results[key] = (vector, ";".join(problems))
                    if cache is not None:
                        cache.put(key, vector, ";".join(problems), unreadable)
                bar.update(len(infos))
    finally:
        if cache is not None:
            cache.flush()
    timings["embed"] = time.perf_counter() - step
    rows = np.full(len(paths), -1, dtype=np.int64)
    found: dict[str, list[str]] = {}
    vectors_out: list[np.ndarray] = []
    for i, (sample_id, key) in enumerate(zip(samples.index, hashes, strict=True)):
        if key is None:
            continue  # missing file: already recorded by the source
        vector, problem_text = results[key]
        codes = [c for c in problem_text.split(";") if c]
        if codes:
            found[str(sample_id)] = codes
        if vector is not None and not (set(codes) & UNREADABLE):
            rows[i] = len(vectors_out)
            vectors_out.append(np.asarray(vector, dtype=np.float32))
    matrix = np.stack(vectors_out) if vectors_out else np.empty((0, embedder.dim), np.float32)
    timings["total"] = time.perf_counter() - started
    return EmbeddingOutcome(vectors=matrix, rows=rows, hashes=hashes, problems=found, n_cached=n_cached,
                            n_embedded=len(todo_keys), timings=timings)
