"""The user's own embeddings (a .npy file or a FiftyOne field), validated and L2-normalised."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from audit.embeddings.embedders import EmbedderError


def load_precomputed(path: Path, n_samples: int) -> np.ndarray:
    """User embeddings from a .npy file, one row per sample in source order, L2-normalised here."""
    path = Path(path)
    if not path.is_file():
        raise EmbedderError(f"embeddings file {path} does not exist")
    try:
        array = np.load(path, allow_pickle=False)
    except (ValueError, OSError) as exc:
        raise EmbedderError(f"embeddings file {path} is not a readable .npy array: {exc}") from exc
    return normalise_precomputed(array, n_samples, str(path))


def normalise_precomputed(array: np.ndarray, n_samples: int, where: str) -> np.ndarray:
    if array.ndim != 2 or array.shape[0] != n_samples:
        raise EmbedderError(f"embeddings from {where} have shape {array.shape}; expected ({n_samples}, dim), "
                            "one row per sample in source order")
    array = array.astype(np.float32)
    bad = np.flatnonzero(~np.isfinite(array).all(axis=1))
    if len(bad):
        raise EmbedderError(f"embeddings from {where} have NaN/inf in {len(bad)} row(s), first rows {bad[:5].tolist()}"
                            "; remove those samples or fix their vectors")
    norms = np.linalg.norm(array, axis=1, keepdims=True)
    if (norms == 0).any():
        raise EmbedderError(f"embeddings from {where} have all-zero rows, e.g. {np.flatnonzero(norms[:, 0] == 0)[:5]}")
    return array / norms
