"""The content-addressed embedding cache: image hash -> (vector, problem codes), one folder per embedder identity.

A weekly re-run therefore embeds only new or changed images. The cache is written in small shard files, each
renamed into place when complete, every ``flush_every`` images or ``flush_seconds`` seconds, whichever comes first,
so a run that is killed (even with SIGKILL) loses at most the last half-minute of work and the next run resumes.

Beside each vector the cache keeps the image's problem codes and its cheap pixel statistics
(:data:`audit.sources.images.STAT_KEYS`, computed while decoding for the image-quality check), so a warm run
needs neither the model nor the image files' pixels.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from audit.results import _atomic_save

if TYPE_CHECKING:
    from audit.config import EmbedderConfig


class Embedder(Protocol):
    """What the cache needs of an embedder (:class:`audit.embeddings.embedders.Embedder` and the cached-identity
    embedder have it), named here so that this module need not import the embedders, which import it."""

    @property
    def cache_key(self) -> str: ...

    @property
    def dim(self) -> int: ...

    def describe(self) -> dict[str, Any]: ...

CACHE_FORMAT = 1
DEFAULT_CACHE_DIR = Path(os.environ.get("LABEL_AUDIT_CACHE", Path.home() / ".cache" / "label-audit")) / "embeddings"


def hash_file(path: str) -> str | None:
    try:
        with open(path, "rb") as handle:
            return hashlib.file_digest(handle, "blake2b").hexdigest()[:32]
    except OSError:
        return None


class EmbeddingCache:
    """Content-addressed store: image hash -> (vector, problem codes, pixel statistics), one folder per embedder
    identity. ``embedder`` needs only ``cache_key``, ``dim`` and ``describe()``, so a cache can be opened (and a
    warm run completed) without loading the model."""

    def __init__(self, root: Path, embedder: Embedder, flush_every: int = 1024, flush_seconds: float = 30.0) -> None:
        from audit.sources.images import STAT_KEYS, STATS_VERSION

        self.stats_version = STATS_VERSION
        self.folder = Path(root) / embedder.cache_key
        self.folder.mkdir(parents=True, exist_ok=True)
        identity_file = self.folder / "embedder.json"
        if not identity_file.exists():
            from audit.results import atomic_write_text

            atomic_write_text(identity_file, json.dumps(embedder.describe(), indent=2, default=str))
        self.key = embedder.cache_key
        self.dim = embedder.dim
        self.stat_keys = STAT_KEYS
        self.flush_every = flush_every
        self.flush_seconds = flush_seconds
        self.vectors: dict[str, np.ndarray] = {}
        self.problems: dict[str, str] = {}
        self.image_stats: dict[str, np.ndarray] = {}
        self._pending: list[tuple[str, np.ndarray | None, str, np.ndarray | None]] = []
        self._last_flush = time.monotonic()
        self._load()

    def _shards(self) -> list[Path]:
        return sorted(self.folder.glob("shard-*.npz"))

    def _load(self) -> None:
        shards = self._shards()
        for shard in shards:
            try:
                with np.load(shard, allow_pickle=False) as data:
                    stats = data["stats"] if "stats" in data.files else None
                    names = [str(n) for n in data["stat_keys"]] if "stat_keys" in data.files else []
                    version = int(data["stats_version"]) if "stats_version" in data.files else 1
                    if version != self.stats_version:
                        stats = None  # statistics of an older definition: computed again
                    for i, (key, vector, problem) in enumerate(zip(data["hashes"], data["vectors"], data["problems"],
                                                                   strict=True)):
                        key = str(key)
                        if problem.startswith("!"):  # unreadable: no vector
                            self.problems[key] = problem[1:]
                        else:
                            self.vectors[key] = vector
                            self.problems[key] = problem
                        if stats is not None and names == list(self.stat_keys) and np.isfinite(stats[i]).any():
                            self.image_stats[key] = stats[i]
            except (OSError, ValueError, KeyError):
                shard.unlink(missing_ok=True)  # a damaged shard only costs re-embedding its images
        if len(shards) > 64:
            self._compact(shards)

    def _compact(self, shards: list[Path]) -> None:
        self._pending = [(k, self.vectors.get(k), self._raw_problem(k), self.image_stats.get(k)) for k in self.problems]
        self.flush()
        for shard in shards:
            shard.unlink(missing_ok=True)

    def _raw_problem(self, key: str) -> str:
        return self.problems[key] if key in self.vectors else "!" + self.problems[key]

    def __contains__(self, key: str) -> bool:
        return key in self.problems

    def get(self, key: str) -> tuple[np.ndarray | None, str]:
        return self.vectors.get(key), self.problems[key]

    def stats(self, key: str) -> np.ndarray | None:
        """The image's pixel statistics in ``stat_keys`` order, or None when an older cache entry lacks them."""
        return self.image_stats.get(key)

    def put(self, key: str, vector: np.ndarray | None, problems: str, unreadable: bool,
            stats: np.ndarray | None = None) -> None:
        if unreadable:
            self.problems[key] = problems
            self._pending.append((key, None, "!" + problems, stats))
        else:
            self.vectors[key] = vector
            self.problems[key] = problems
            self._pending.append((key, vector, problems, stats))
        if stats is not None:
            self.image_stats[key] = stats
        if len(self._pending) >= self.flush_every or time.monotonic() - self._last_flush >= self.flush_seconds:
            self.flush()

    def flush(self) -> None:
        """Write pending entries as one new shard, atomically."""
        self._last_flush = time.monotonic()
        if not self._pending:
            return
        keys = np.array([k for k, _, _, _ in self._pending])
        vectors = np.stack([v if v is not None else np.zeros(self.dim, np.float32) for _, v, _, _ in self._pending])
        problems = np.array([p for _, _, p, _ in self._pending])
        empty = np.full(len(self.stat_keys), np.nan, np.float32)
        stats = np.stack([s if s is not None else empty for _, _, _, s in self._pending]).astype(np.float32)
        target = self.folder / f"shard-{time.time_ns()}-{uuid.uuid4().hex[:8]}.npz"

        def write(tmp: str) -> None:
            with open(tmp, "wb") as handle:
                np.savez(handle, hashes=keys, vectors=vectors.astype(np.float32), problems=problems, stats=stats,
                         stat_keys=np.array(self.stat_keys), stats_version=np.array(self.stats_version))

        _atomic_save(target, write)
        self._pending = []


# ------------------------------------------------------------------------------------------- identities


def embedder_request(config: EmbedderConfig) -> str:
    """A key for what the config asks for (model, weights file and its size and date, precision, device), from
    which the last run's resolved embedder identity is looked up, so a warm run can find its cache folder
    without loading the model."""
    from importlib.metadata import PackageNotFoundError, version

    checkpoint = None
    if config.pretrained and Path(config.pretrained).is_file():
        stat = Path(config.pretrained).stat()
        checkpoint = [str(Path(config.pretrained).resolve()), stat.st_size, stat.st_mtime_ns]
    model = config.model
    if model and Path(model).suffix == ".json" and Path(model).is_file():
        stat = Path(model).stat()
        model = f"{Path(model).resolve()}:{stat.st_size}:{stat.st_mtime_ns}"
    try:
        open_clip_version = version("open-clip-torch")
    except PackageNotFoundError:
        open_clip_version = None
    blob = json.dumps({"format": CACHE_FORMAT, "kind": config.kind, "model": model, "pretrained": config.pretrained,
                       "checkpoint": checkpoint, "precision": config.precision, "device": config.device,
                       "pixel_size": config.pixel_size, "open_clip": open_clip_version}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:24]


def _identities_file(root: Path) -> Path:
    return Path(root) / "identities.json"


def lookup_identity(root: Path, request: str) -> dict | None:
    """``{"cache_key", "dim", "describe"}`` recorded for this request by an earlier run, or None."""
    try:
        known = json.loads(_identities_file(root).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    entry = known.get(request) if isinstance(known, dict) else None
    if not isinstance(entry, dict) or not {"cache_key", "dim", "describe"} <= set(entry):
        return None
    return entry if (Path(root) / entry["cache_key"]).is_dir() else None


def record_identity(root: Path, request: str, embedder: Embedder) -> None:
    """Remember which cache folder this request resolved to (see :func:`embedder_request`)."""
    from audit.results import atomic_write_text

    file = _identities_file(root)
    try:
        known = json.loads(file.read_text(encoding="utf-8"))
        known = known if isinstance(known, dict) else {}
    except (OSError, ValueError):
        known = {}
    known[request] = {"cache_key": embedder.cache_key, "dim": embedder.dim,
                      "describe": json.loads(json.dumps(embedder.describe(), default=str))}
    atomic_write_text(file, json.dumps(known, indent=2))
