"""The content-addressed embedding cache: image hash -> (vector, problem codes), one folder per embedder identity.

A weekly re-run therefore embeds only new or changed images. The cache is written in small shard files, each
renamed into place when complete, so an interrupted run keeps everything up to its last shard and the next run
resumes from there.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
import uuid
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from audit.results import _atomic_save

if TYPE_CHECKING:
    from audit.embeddings.embedders import Embedder

CACHE_FORMAT = 1
DEFAULT_CACHE_DIR = Path(os.environ.get("LABEL_AUDIT_CACHE", Path.home() / ".cache" / "label-audit")) / "embeddings"


def hash_file(path: str) -> str | None:
    try:
        with open(path, "rb") as handle:
            return hashlib.file_digest(handle, "blake2b").hexdigest()[:32]
    except OSError:
        return None


class EmbeddingCache:
    """Content-addressed store: image hash -> (vector, problem codes), one folder per embedder identity."""

    def __init__(self, root: Path, embedder: Embedder, flush_every: int = 1024) -> None:
        self.folder = Path(root) / embedder.cache_key
        self.folder.mkdir(parents=True, exist_ok=True)
        identity_file = self.folder / "embedder.json"
        if not identity_file.exists():
            from audit.results import atomic_write_text

            atomic_write_text(identity_file, json.dumps(embedder.describe(), indent=2, default=str))
        self.dim = embedder.dim
        self.flush_every = flush_every
        self.vectors: dict[str, np.ndarray] = {}
        self.problems: dict[str, str] = {}
        self._pending: list[tuple[str, np.ndarray | None, str]] = []
        self._load()

    def _shards(self) -> list[Path]:
        return sorted(self.folder.glob("shard-*.npz"))

    def _load(self) -> None:
        shards = self._shards()
        for shard in shards:
            try:
                with np.load(shard, allow_pickle=False) as data:
                    for key, vector, problem in zip(data["hashes"], data["vectors"], data["problems"], strict=True):
                        if problem.startswith("!"):  # unreadable: no vector
                            self.problems[str(key)] = problem[1:]
                        else:
                            self.vectors[str(key)] = vector
                            self.problems[str(key)] = problem
            except (OSError, ValueError, KeyError):
                shard.unlink(missing_ok=True)  # a damaged shard only costs re-embedding its images
        if len(shards) > 64:
            self._compact(shards)

    def _compact(self, shards: list[Path]) -> None:
        self._pending = [(k, self.vectors.get(k), self._raw_problem(k)) for k in self.problems]
        self.flush()
        for shard in shards:
            shard.unlink(missing_ok=True)

    def _raw_problem(self, key: str) -> str:
        return self.problems[key] if key in self.vectors else "!" + self.problems[key]

    def __contains__(self, key: str) -> bool:
        return key in self.problems

    def get(self, key: str) -> tuple[np.ndarray | None, str]:
        return self.vectors.get(key), self.problems[key]

    def put(self, key: str, vector: np.ndarray | None, problems: str, unreadable: bool) -> None:
        if unreadable:
            self.problems[key] = problems
            self._pending.append((key, None, "!" + problems))
        else:
            self.vectors[key] = vector
            self.problems[key] = problems
            self._pending.append((key, vector, problems))
        if len(self._pending) >= self.flush_every:
            self.flush()

    def flush(self) -> None:
        """Write pending entries as one new shard, atomically."""
        if not self._pending:
            return
        keys = np.array([k for k, _, _ in self._pending])
        vectors = np.stack([v if v is not None else np.zeros(self.dim, np.float32) for _, v, _ in self._pending])
        problems = np.array([p for _, _, p in self._pending])
        target = self.folder / f"shard-{time.time_ns()}-{uuid.uuid4().hex[:8]}.npz"

        def write(tmp: str) -> None:
            with open(tmp, "wb") as handle:
                np.savez(handle, hashes=keys, vectors=vectors.astype(np.float32), problems=problems)

        _atomic_save(target, write)
        self._pending = []
