"""Embeddings of object crops: each box (with a little context around it) cut from its image and embedded by the
same embedder, through the same content-addressed cache as whole images.

The cache key of a crop is its image's content hash plus the box and the context margin, so a weekly re-run
embeds only new or moved boxes, and an image whose content changed gets its crops embedded again. Each image is
decoded once for all its boxes.
"""

from __future__ import annotations

import hashlib
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from audit.embeddings.cache import DEFAULT_CACHE_DIR, EmbeddingCache
from audit.embeddings.local import default_workers

CONTEXT_MARGIN = 0.1  # share of the box's width / height added on each side: a little context helps the embedder
CROP_KEY_VERSION = "crop-v1"


def crop_key(image_hash: str, x: float, y: float, w: float, h: float, margin: float = CONTEXT_MARGIN) -> str:
    """The cache key of one crop: image content, box (to 0.1 px) and margin."""
    text = f"{CROP_KEY_VERSION}|{image_hash}|{x:.1f},{y:.1f},{w:.1f},{h:.1f}|{margin:g}"
    return hashlib.blake2b(text.encode(), digest_size=16).hexdigest()


def crop_box(x: float, y: float, w: float, h: float, width: int, height: int,
             margin: float = CONTEXT_MARGIN) -> tuple[int, int, int, int] | None:
    """The pixel box ``(left, top, right, bottom)`` to cut: the object's box grown by ``margin`` on each side,
    clipped to the image; None when nothing of it lies inside the image."""
    dx, dy = w * margin, h * margin
    left, top = max(0, int(np.floor(x - dx))), max(0, int(np.floor(y - dy)))
    right, bottom = min(width, int(np.ceil(x + w + dx))), min(height, int(np.ceil(y + h + dy)))
    if right - left < 1 or bottom - top < 1:
        return None
    return left, top, right, bottom


@dataclass
class CropOutcome:
    """Crop vectors in item order (NaN rows for crops that could not be made) and what was reused."""

    vectors: np.ndarray
    keys: list[str]
    n_cached: int
    n_embedded: int
    model_loaded: bool = True
    timings: dict[str, float] = field(default_factory=dict)


def embed_crops(items: pd.DataFrame, embedder: Any, cache_dir: Path | None = None, use_cache: bool = True,
                batch_size: int = 64, workers: int | None = None, progress: Any = False,
                margin: float = CONTEXT_MARGIN, flush_seconds: float = 30.0) -> CropOutcome:
    """Embed the crops of ``items`` (columns ``filepath``, ``content_hash``, ``x, y, w, h`` in pixels).

    ``embedder`` may be lazy (:class:`~audit.embeddings.embedders.LazyEmbedder`): the model is loaded only when a
    crop is missing from the cache.
    """
    from audit.progress import as_progress
    from audit.sources.images import load_image

    started = time.perf_counter()
    reporter = as_progress(progress)
    keys = [crop_key(str(h), float(x), float(y), float(w), float(h_)) if h else ""
            for h, x, y, w, h_ in zip(items["content_hash"], items["x"], items["y"], items["w"], items["h"],
                                      strict=True)]
    root = cache_dir or DEFAULT_CACHE_DIR
    cache = EmbeddingCache(root, embedder, flush_seconds=flush_seconds) if use_cache else None
    todo = [i for i, k in enumerate(keys) if k and (cache is None or k not in cache)]
    n_cached = sum(1 for i, k in enumerate(keys) if k and cache is not None and k in cache)
    loaded = not getattr(embedder, "lazy", False)
    if todo and not loaded:
        embedder = embedder.load()
        loaded = True
        if cache is not None and embedder.cache_key != cache.key:
            cache = EmbeddingCache(root, embedder, flush_seconds=flush_seconds)
            todo = [i for i, k in enumerate(keys) if k and k not in cache]
            n_cached = sum(1 for k in keys if k and k in cache)
    fresh: dict[str, np.ndarray] = {}
    if todo:
        by_image: dict[str, list[int]] = {}
        for i in todo:
            by_image.setdefault(str(items["filepath"].iloc[i]), []).append(i)

        def cut(path: str) -> list[tuple[int, Any]]:
            image, _ = load_image(path)
            if image is None:
                return [(i, None) for i in by_image[path]]
            out = []
            for i in by_image[path]:
                row = items.iloc[i]
                box = crop_box(float(row["x"]), float(row["y"]), float(row["w"]), float(row["h"]), *image.size,
                               margin=margin)
                out.append((i, None if box is None else embedder.preprocess(image.crop(box).convert("RGB"))))
            return out

        bar = reporter.bar(len(todo), f"embedding crops ({embedder.name})", "crops")
        pending: list[tuple[int, Any]] = []

        def run(batch: list[tuple[int, Any]]) -> None:
            ready = [(i, x) for i, x in batch if x is not None]
            if ready:
                first = ready[0][1]
                if isinstance(first, np.ndarray):
                    stacked = np.stack([x for _, x in ready])
                else:
                    import torch

                    stacked = torch.stack([x for _, x in ready])
                for (i, _), vector in zip(ready, embedder.forward(stacked), strict=True):
                    fresh[keys[i]] = vector
                    if cache is not None:
                        cache.put(keys[i], vector, "", False)
            bar.update(len(batch))

        try:
            with ThreadPoolExecutor(max_workers=default_workers() if workers is None else max(1, workers)) as pool:
                for crops in pool.map(cut, list(by_image)):
                    pending.extend(crops)
                    while len(pending) >= batch_size:
                        run(pending[:batch_size])
                        pending = pending[batch_size:]
            if pending:
                run(pending)
        finally:
            bar.close()
            if cache is not None:
                cache.flush()
    vectors = np.full((len(items), embedder.dim), np.nan, dtype=np.float32)
    for i, key in enumerate(keys):
        if not key:
            continue
        vector = fresh.get(key)
        if vector is None and cache is not None and key in cache:
            vector = cache.get(key)[0]
        if vector is not None:
            vectors[i] = vector
    return CropOutcome(vectors=vectors, keys=keys, n_cached=n_cached, n_embedded=len(fresh), model_loaded=loaded,
                       timings={"total": time.perf_counter() - started})
