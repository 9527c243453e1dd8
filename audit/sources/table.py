"""The canonical sample table every source produces, its problem codes, and the registry of source formats.

The canonical table is indexed by ``sample_id`` (stable across runs, so weekly runs can be compared) and has
the columns ``filepath`` (absolute), ``label`` (str), ``split`` (str), ``readable`` (bool) and ``problems``
(``;``-separated codes). Per-annotator labels, when present, travel beside it as a long table
``sample_id, annotator, label``. Whole-source errors (no such folder, missing column, empty dataset) raise
:class:`SourceError`; per-sample trouble (missing file, corrupt image...) is recorded in ``problems`` and the
sample is kept, so nothing is dropped silently.

A source format is one module that registers a loader with :func:`register_format`; ``load_source`` in
``audit/sources/__init__.py`` dispatches on the config's ``kind``.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from audit.declarations import Threshold, Unavailable, lookup

if TYPE_CHECKING:
    from audit.config import SourceConfig

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp"}
SPLIT_NAMES = {"train", "val", "valid", "validation", "test", "dev"}
DEFAULT_SPLIT = "all"

# Problem codes. Those in UNREADABLE mean the sample has no embedding; the others are notes on a conversion.
MISSING_FILE = "missing_file"
EMPTY_FILE = "empty_file"
CORRUPT_IMAGE = "corrupt_image"
TRUNCATED_IMAGE = "truncated_image"
TOO_LARGE = "too_large"  # more pixels than label-audit decodes (audit.sources.images.MAX_DECODE_PIXELS)
MISSING_LABEL = "missing_label"
CONVERTED_16BIT = "converted_16bit"
CONVERTED_CMYK = "converted_cmyk"
CONVERTED_PALETTE = "converted_palette"
CONVERTED_ALPHA = "converted_alpha"
EXIF_ROTATED = "exif_rotated"
UNREADABLE = {MISSING_FILE, EMPTY_FILE, CORRUPT_IMAGE, TRUNCATED_IMAGE, TOO_LARGE}



def _unreadable_rate(summary: dict, baseline: dict | None) -> float | Unavailable:
    unreadable, total = lookup(summary, "counts.unreadable"), lookup(summary, "counts.samples")
    if isinstance(unreadable, Unavailable) or not isinstance(unreadable, int | float):
        return Unavailable("counts.unreadable is not available in this run")
    if not isinstance(total, int | float) or total <= 0:
        return Unavailable("counts.samples is not available (or 0) in this run")
    return unreadable / total


# Gate thresholds on what every source reports (see audit.gate).
THRESHOLDS = (
    Threshold("max_unreadable", "counts.unreadable", "<=", "count", "unreadable samples",
              "at most this many samples may be unreadable (missing, empty, corrupt or truncated files)"),
    Threshold("max_unreadable_rate", "counts.unreadable/counts.samples", "<=", "rate", "share of unreadable samples",
              "at most this share of samples may be unreadable", compute=_unreadable_rate),
)


class SourceError(ValueError):
    """The dataset as a whole cannot be read; the message says what is wrong and where."""


@dataclass
class SampleTable:
    """The canonical samples plus, optionally, per-annotator labels and objects.

    ``objects`` is the canonical object table (boxes and instance masks, from every annotator and detector; see
    :mod:`audit.sources.objects`) for detection and instance-segmentation datasets, else None.
    ``mask_annotations`` is the long table ``sample_id, annotator, mask_path`` of a semantic-segmentation dataset's
    annotators (see :mod:`audit.sources.masks`; the shipped mask is ``samples["mask"]``), else None.
    """

    samples: pd.DataFrame
    annotations: pd.DataFrame | None = None
    description: dict[str, object] = field(default_factory=dict)
    objects: pd.DataFrame | None = None
    mask_annotations: pd.DataFrame | None = None

    @property
    def class_names(self) -> list[str]:
        labels = set(self.samples["label"].dropna())
        if self.annotations is not None:
            labels |= set(self.annotations["label"].dropna())
        if self.objects is not None and "label" in self.objects:
            labels |= set(self.objects["label"].dropna().astype(str))
        mask_spec = self.description.get("mask_spec")
        if isinstance(mask_spec, dict):
            labels |= set(mask_spec["classes"])
        return sorted(labels)



@dataclass(frozen=True)
class SourceFormat:
    """A registered input format: its loader, the config fields it needs, and a line for ``--help``."""

    kind: str
    load: Callable[[SourceConfig], SampleTable]
    needs: tuple[str, ...]
    description: str


FORMATS: dict[str, SourceFormat] = {}


def register_format(kind: str, needs: tuple[str, ...], description: str):
    """Decorator: make ``load(config) -> SampleTable`` the reader of source ``kind``."""

    def decorate(load: Callable[[SourceConfig], SampleTable]) -> Callable[[SourceConfig], SampleTable]:
        if kind in FORMATS:
            raise ValueError(f"a source format named {kind!r} is already registered")
        FORMATS[kind] = SourceFormat(kind, load, needs, description)
        return load

    return decorate


def finalise(table: SampleTable) -> SampleTable:
    """Check the table as a whole and record per-sample problems that need no decoding."""
    samples = table.samples
    if samples.empty:
        raise SourceError("the dataset has no samples")
    samples = samples.copy()
    samples.index = samples.index.astype(str)
    samples["label"] = samples["label"].astype(object)
    # Images of a detection / segmentation dataset carry objects, not one label: no label is not a problem there.
    has_objects = (table.objects is not None and len(table.objects) > 0) or "mask" in samples.columns
    # Codes a loader already found (e.g. empty masks, found while scanning them) are kept.
    found = samples["problems"].fillna("").astype(str) if "problems" in samples else pd.Series("", samples.index)
    file_codes = file_problems(samples["filepath"].astype(str).tolist())
    no_label = samples["label"].isna().to_numpy() & (not has_objects)
    # Most samples have no problem: only rows with a code are joined one by one.
    noted = (found != "").to_numpy() | (file_codes != "") | no_label
    problems = np.full(len(samples), "", dtype=object)
    readable = np.ones(len(samples), dtype=bool)
    for i in np.flatnonzero(noted):
        codes = [c for c in found.iat[i].split(";") if c] + ([file_codes[i]] if file_codes[i] else []) + (
            [MISSING_LABEL] if no_label[i] else [])
        problems[i] = ";".join(codes)
        readable[i] = not (set(codes) & UNREADABLE)
    samples["readable"] = readable
    samples["problems"] = problems
    if samples["label"].isna().all() and not has_objects:
        raise SourceError("no sample has a label")
    table.samples = samples
    return table


FILE_CHECK_THREADS = 8
FILE_CHECK_CHUNK = 4096


def file_problems(paths: list[str]) -> np.ndarray:
    """``missing_file``, ``empty_file`` or "" for each path: one ``os.stat`` per file (``Path.is_file`` then
    ``stat`` made two, and built a Path per row), in threads that each take a chunk of paths, since the call
    releases the GIL while a network filesystem answers."""
    from concurrent.futures import ThreadPoolExecutor

    def check(chunk: list[str]) -> list[str]:
        out = []
        for path in chunk:
            try:
                info = os.stat(path)
            except (OSError, ValueError):
                out.append(MISSING_FILE)
                continue
            out.append(MISSING_FILE if not stat.S_ISREG(info.st_mode) else EMPTY_FILE if info.st_size == 0 else "")
        return out

    chunks = [paths[i:i + FILE_CHECK_CHUNK] for i in range(0, len(paths), FILE_CHECK_CHUNK)]
    if len(chunks) <= 1:
        return np.array(check(paths), dtype=object)
    with ThreadPoolExecutor(min(FILE_CHECK_THREADS, len(chunks))) as pool:
        return np.array([code for part in pool.map(check, chunks) for code in part], dtype=object)


def add_problems(samples: pd.DataFrame, found: dict[str, list[str]]) -> None:
    """Merge problems found later (while decoding) into the table, in place."""
    for sample_id, codes in found.items():
        if not codes:
            continue
        old = [c for c in str(samples.at[sample_id, "problems"]).split(";") if c]
        merged = old + [c for c in codes if c not in old]
        samples.at[sample_id, "problems"] = ";".join(merged)
        if set(codes) & UNREADABLE:
            samples.at[sample_id, "readable"] = False

