"""The run folder: the one place results live, read by the report, FiftyOne and the gate (none recompute).

Layout of ``reports/<run-name>/``::

    samples.parquet      one row per sample, index ``sample_id``
    summary.json         run-level results, ``schema_version`` = SCHEMA_VERSION
    embeddings.npy       float32 (n, d); row ``embedding_row`` of samples.parquet (-1: none)
    annotations.parquet  long table sample_id, annotator, label (only with several annotators)
    pred_probs.npy       (n, k) predicted probabilities the mistakes check used (optional)

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


class RunNotFoundError(FileNotFoundError):
    """The folder is not a label-audit run (or was written by an incompatible version)."""


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write via a temporary file and rename, so readers never see half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.replace(tmp, path)
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
        os.replace(tmp, path)
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
