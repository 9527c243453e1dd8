"""Image embeddings: open_clip (or an honest pixel baseline), batched, decoded in parallel, cached by content.

Modules: :mod:`~audit.embeddings.embedders` (what turns an image into a vector), :mod:`~audit.embeddings.cache`
(the content-addressed store), :mod:`~audit.embeddings.local` (the engine that runs on this machine) and
:mod:`~audit.embeddings.precomputed` (the user's own vectors).
"""

from __future__ import annotations

from audit.embeddings.cache import CACHE_FORMAT, DEFAULT_CACHE_DIR, EmbeddingCache, hash_file
from audit.embeddings.embedders import (
    Embedder,
    EmbedderError,
    build_embedder,
    clip_embedder,
    clip_weights_available,
    cpu_has_native_bf16,
    load_clip,
    pixel_embedder,
    resolve_device,
    resolve_precision,
    split_clip_transform,
)
from audit.embeddings.local import EmbeddingOutcome, default_workers, embed_samples
from audit.embeddings.precomputed import load_precomputed, normalise_precomputed

__all__ = [
    "CACHE_FORMAT", "DEFAULT_CACHE_DIR", "Embedder", "EmbedderError", "EmbeddingCache", "EmbeddingOutcome",
    "build_embedder", "clip_embedder", "clip_weights_available", "cpu_has_native_bf16", "default_workers",
    "embed_samples", "hash_file", "load_clip", "load_precomputed", "normalise_precomputed", "pixel_embedder",
    "resolve_device", "resolve_precision", "split_clip_transform",
]
