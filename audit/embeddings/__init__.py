"""Image embeddings: open_clip (or an honest pixel baseline), batched, decoded in parallel, cached by content.

Modules: :mod:`~audit.embeddings.embedders` (what turns an image into a vector), :mod:`~audit.embeddings.cache`
(the content-addressed store), :mod:`~audit.embeddings.local` (the engine that runs on this machine),
:mod:`~audit.embeddings.ray_engine` (the same on a Ray cluster) and :mod:`~audit.embeddings.precomputed` (the
user's own vectors). :func:`embed` runs the engine the config names.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from audit.embeddings.cache import CACHE_FORMAT, DEFAULT_CACHE_DIR, EmbeddingCache, hash_file
from audit.embeddings.embedders import (
    Embedder,
    EmbedderError,
    LazyEmbedder,
    build_embedder,
    clip_embedder,
    clip_weights_available,
    cpu_has_native_bf16,
    embedder_for_run,
    load_clip,
    pixel_embedder,
    resolve_device,
    resolve_precision,
    split_clip_transform,
)
from audit.embeddings.local import EmbeddingOutcome, default_workers, embed_samples, hash_files
from audit.embeddings.precomputed import load_precomputed, normalise_precomputed

if TYPE_CHECKING:
    import pandas as pd

    from audit.config import EmbedderConfig


def embed(samples: pd.DataFrame, config: EmbedderConfig, progress: Any = True,
          hashes: list[str | None] | None = None) -> tuple[EmbeddingOutcome, dict[str, Any]]:
    """Embed ``samples`` with the engine ``config.engine`` names (an :class:`~audit.config.EmbedderConfig`): the
    outcome, and the embedder's description with its ``cache_key``, ``engine`` and ``model_loaded`` (plus, for
    Ray, how the cluster was used). Both engines give the same vectors and share the cache."""
    root = config.cache_dir or DEFAULT_CACHE_DIR
    common = {"cache_dir": root, "use_cache": config.use_cache, "batch_size": config.batch_size,
              "progress": progress, "hashes": hashes, "flush_seconds": config.flush_seconds}
    if config.engine == "ray":
        from audit.embeddings.ray_engine import embed_samples_ray

        outcome = embed_samples_ray(samples, config, address=config.ray_address, **common)
        return outcome, {**outcome.embedder, "cache_key": outcome.cache_key, "engine": "ray",
                         "model_loaded": outcome.model_loaded, "ray": outcome.cluster}
    embedder = embedder_for_run(config, root, use_cache=config.use_cache)
    outcome = embed_samples(samples, embedder, workers=config.workers, **common)
    return outcome, {**embedder.describe(), "cache_key": embedder.cache_key, "engine": "local",
                     "model_loaded": outcome.model_loaded}


__all__ = [
    "CACHE_FORMAT", "DEFAULT_CACHE_DIR", "Embedder", "EmbedderError", "EmbeddingCache", "EmbeddingOutcome",
    "LazyEmbedder", "build_embedder", "clip_embedder", "clip_weights_available", "cpu_has_native_bf16",
    "default_workers", "embed", "embed_samples", "embedder_for_run", "hash_file", "hash_files", "load_clip",
    "load_precomputed", "normalise_precomputed", "pixel_embedder", "resolve_device", "resolve_precision",
    "split_clip_transform",
]
