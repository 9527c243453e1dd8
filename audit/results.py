"""The run folder: the one place results live, read by the report, FiftyOne and the gate (none recompute).

Layout of ``reports/<run-name>/``::

    samples.parquet      one row per sample, index ``sample_id``
    summary.json         run-level results, ``schema_version`` = SCHEMA_VERSION
    embeddings.npy       float32 (n, d); row ``embedding_row`` of samples.parquet (-1: none)
    annotations.parquet  long table sample_id, annotator, label (only with several annotators)
    pred_probs.npy       (n, k) predicted probabilities the mistakes check used (optional)
    objects.parquet      one row per object (box / instance mask) of a detection dataset, index ``object_id``:
                         the canonical object columns (see audit.sources.objects), ``audited`` (the objects the
                         object checks audit), ``umap_x, umap_y`` and the object checks' prefixed columns
    object_embeddings.npy  float32 crop embeddings, row ``embedding_row`` of objects.parquet (-1: none)

Per-sample columns written by the core pipeline: ``filepath, label, split, readable, problems, content_hash,
embedding_row, umap_x, umap_y``; each check adds columns prefixed with its name. ``problems`` is a
``;``-separated string of problem codes (empty when none), see :mod:`audit.sources`.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

SCHEMA_VERSION = "1.0"
SAMPLES_FILE = "samples.parquet"
SUMMARY_FILE = "summary.json"
EMBEDDINGS_FILE = "embeddings.npy"
ANNOTATIONS_FILE = "annotations.parquet"
PRED_PROBS_FILE = "pred_probs.npy"
OBJECTS_FILE = "objects.parquet"
OBJECT_EMBEDDINGS_FILE = "object_embeddings.npy"


class RunNotFoundError(FileNotFoundError):
    """The folder is not a label-audit run (or was written by an incompatible version)."""


def _umask() -> int:
    """The process umask (read by setting it and putting it back; there is no getter)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _publish(tmp: str, path: Path) -> None:
    """Give the temporary file the permissions any file the user writes gets (0666 minus the umask; mkstemp makes
    it 0600, which a CI artifact server or a web server running as another user could not read), then rename it
    into place so readers never see half a file."""
    os.chmod(tmp, 0o666 & ~_umask())
    os.replace(tmp, path)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write via a temporary file and rename, so readers never see half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        _publish(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def _atomic_save(path: Path, writer) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        writer(tmp)
        _publish(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


@dataclass
class RunResults:
    """A run folder, loaded lazily: ``samples`` and ``summary`` always, arrays on first use."""

    path: Path
    samples: pd.DataFrame
    summary: dict[str, Any]

    @classmethod
    def load(cls, path: str | os.PathLike) -> RunResults:
        path = Path(path)
        if not (path / SUMMARY_FILE).is_file() or not (path / SAMPLES_FILE).is_file():
            raise RunNotFoundError(
                f"{path} is not a label-audit run folder (expected {SUMMARY_FILE} and {SAMPLES_FILE}); "
                "create one with `label-audit run`"
            )
        summary = json.loads((path / SUMMARY_FILE).read_text(encoding="utf-8"))
        major = str(summary.get("schema_version", "0")).split(".")[0]
        if major != SCHEMA_VERSION.split(".")[0]:
            raise RunNotFoundError(
                f"{path} was written with results schema {summary.get('schema_version')!r}; "
                f"this label-audit reads schema {SCHEMA_VERSION}"
            )
        samples = pd.read_parquet(path / SAMPLES_FILE)
        if "sample_id" in samples.columns:
            samples = samples.set_index("sample_id")
        return cls(path=path, samples=samples, summary=summary)

    @cached_property
    def embeddings(self) -> np.ndarray | None:
        file = self.path / EMBEDDINGS_FILE
        return np.load(file, mmap_mode="r") if file.is_file() else None

    @cached_property
    def annotations(self) -> pd.DataFrame | None:
        file = self.path / ANNOTATIONS_FILE
        return pd.read_parquet(file) if file.is_file() else None

    @cached_property
    def objects(self) -> pd.DataFrame | None:
        """The run's objects (detection datasets), or None."""
        file = self.path / OBJECTS_FILE
        if not file.is_file():
            return None
        table = pd.read_parquet(file)
        return table.set_index("object_id") if "object_id" in table.columns else table

    @cached_property
    def object_embeddings(self) -> np.ndarray | None:
        file = self.path / OBJECT_EMBEDDINGS_FILE
        return np.load(file, mmap_mode="r") if file.is_file() else None

    def object_metrics(self, name: str) -> dict[str, Any] | None:
        """The run-level metrics an object-level check wrote, or None when it did not run."""
        return ((self.summary.get("objects") or {}).get("checks") or {}).get(name)

    @cached_property
    def pred_probs(self) -> np.ndarray | None:
        file = self.path / PRED_PROBS_FILE
        return np.load(file) if file.is_file() else None

    @property
    def name(self) -> str:
        return str(self.summary.get("run_name", self.path.name))

    @property
    def class_names(self) -> list[str]:
        return list(self.summary.get("class_names", []))

    def check_metrics(self, name: str) -> dict[str, Any] | None:
        """The run-level metrics a check wrote, or None when the check did not run."""
        return self.summary.get("checks", {}).get(name)

    def sample_embeddings(self) -> np.ndarray | None:
        """Embeddings in sample order (rows of unreadable samples are NaN)."""
        if self.embeddings is None or "embedding_row" not in self.samples:
            return None
        rows = self.samples["embedding_row"].to_numpy()
        out = np.full((len(rows), self.embeddings.shape[1]), np.nan, dtype=np.float32)
        ok = rows >= 0
        out[ok] = self.embeddings[rows[ok]]
        return out


def write_run(
    path: Path,
    samples: pd.DataFrame,
    summary: dict[str, Any],
    embeddings: np.ndarray | None = None,
    annotations: pd.DataFrame | None = None,
    pred_probs: np.ndarray | None = None,
    objects: pd.DataFrame | None = None,
    object_embeddings: np.ndarray | None = None,
) -> RunResults:
    """Write a run folder atomically file by file; ``summary.json`` goes last so a folder with it is complete."""
    path.mkdir(parents=True, exist_ok=True)
    summary = {"schema_version": SCHEMA_VERSION, **summary}
    if embeddings is not None:
        _atomic_save(path / EMBEDDINGS_FILE, lambda tmp: _save_npy(tmp, embeddings))
    if pred_probs is not None:
        _atomic_save(path / PRED_PROBS_FILE, lambda tmp: _save_npy(tmp, pred_probs))
    if annotations is not None and len(annotations):
        _atomic_save(path / ANNOTATIONS_FILE, lambda tmp: annotations.to_parquet(tmp, index=False))
    if objects is not None:
        table = objects.copy()
        table.index.name = "object_id"
        _atomic_save(path / OBJECTS_FILE, lambda tmp: table.reset_index().to_parquet(tmp, index=False))
    if object_embeddings is not None:
        _atomic_save(path / OBJECT_EMBEDDINGS_FILE, lambda tmp: _save_npy(tmp, object_embeddings))
    table = samples.copy()
    table.index.name = "sample_id"
    _atomic_save(path / SAMPLES_FILE, lambda tmp: table.reset_index().to_parquet(tmp, index=False))
    atomic_write_text(path / SUMMARY_FILE, json.dumps(summary, indent=2, sort_keys=False, allow_nan=False))
    return RunResults.load(path)


def update_summary(path: Path, key: str, value: Any) -> None:
    """Add one top-level section to an existing summary (used by the gate to record its verdict)."""
    file = Path(path) / SUMMARY_FILE
    summary = json.loads(file.read_text(encoding="utf-8"))
    summary[key] = value
    atomic_write_text(file, json.dumps(summary, indent=2, allow_nan=False))


def _save_npy(tmp: str, array: np.ndarray) -> None:
    with open(tmp, "wb") as handle:
        np.save(handle, np.asarray(array))


# ------------------------------------------------------------------------------------------- run history


def dataset_key(summary: dict[str, Any]) -> str:
    """What identifies "the same dataset" across weekly runs: its source kind and path (or FiftyOne name)."""
    dataset = summary.get("dataset") or {}
    where = dataset.get("path") or dataset.get("name") or ""
    return f"{dataset.get('kind', '')}:{where}"


@dataclass
class RunRecord:
    """A run folder found in an output folder, its summary read leniently (any schema version)."""

    path: Path
    summary: dict[str, Any]

    @property
    def created_at(self) -> str:
        return str(self.summary.get("created_at") or "")

    @property
    def name(self) -> str:
        return str(self.summary.get("run_name") or self.path.name)

    @property
    def schema_version(self) -> str:
        return str(self.summary.get("schema_version", "0"))

    @property
    def readable(self) -> bool:
        """Whether this version of label-audit can open it as a run (same schema major version)."""
        return self.schema_version.split(".")[0] == SCHEMA_VERSION.split(".")[0]


def list_runs(output_dir: str | os.PathLike) -> list[RunRecord]:
    """Every run folder directly inside ``output_dir``, oldest first (by the time the run was created)."""
    root = Path(output_dir)
    records = []
    if not root.is_dir():
        return records
    for child in root.iterdir():
        file = child / SUMMARY_FILE
        if not child.is_dir() or not file.is_file():
            continue
        try:
            summary = json.loads(file.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if isinstance(summary, dict):
            records.append(RunRecord(child, summary))
    return sorted(records, key=lambda r: (r.created_at, r.name))


def previous_run(output_dir: str | os.PathLike, key: str, before: str | None = None,
                 exclude: Path | None = None) -> RunRecord | None:
    """The latest run of the same dataset (``dataset_key``) in ``output_dir`` created before ``before`` (ISO time;
    None: any), that this version can read; None when there is none."""
    candidates = [r for r in list_runs(output_dir)
                  if r.readable and dataset_key(r.summary) == key and (before is None or r.created_at < before)
                  and (exclude is None or r.path.resolve() != Path(exclude).resolve())]
    return candidates[-1] if candidates else None
