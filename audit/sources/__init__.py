"""Sources: a folder tree, a CSV/Parquet manifest, a FiftyOne dataset (and, per module, more formats) -> one
canonical sample table (see :mod:`audit.sources.table`).

Each input format is one module here that registers its loader with :func:`register_format`; this package
imports them, and :func:`load_source` dispatches on ``config.kind``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from audit.sources import (  # noqa: F401  (registers the formats)
    coco,
    cvat,
    fiftyone_dataset,
    folder,
    labelstudio,
    manifest,
    masks,
    voc,
    yolo,
)
from audit.sources.folder import load_folder
from audit.sources.images import load_image
from audit.sources.manifest import load_annotations, load_manifest, majority_label, read_table
from audit.sources.table import (
    CONVERTED_16BIT,
    CONVERTED_ALPHA,
    CONVERTED_CMYK,
    CONVERTED_PALETTE,
    CORRUPT_IMAGE,
    DEFAULT_SPLIT,
    EMPTY_FILE,
    EXIF_ROTATED,
    FORMATS,
    IMAGE_SUFFIXES,
    MISSING_FILE,
    MISSING_LABEL,
    SPLIT_NAMES,
    TOO_LARGE,
    TRUNCATED_IMAGE,
    UNREADABLE,
    SampleTable,
    SourceError,
    SourceFormat,
    add_problems,
    finalise,
    register_format,
)

if TYPE_CHECKING:
    from audit.config import SourceConfig


def load_source(config: SourceConfig) -> SampleTable:
    """Read the configured source into a :class:`SampleTable` (files are checked to exist, not decoded yet)."""
    form = FORMATS.get(config.kind)
    if form is None:
        raise SourceError(f"unknown source kind {config.kind!r}; known: {', '.join(sorted(FORMATS))}")
    table = form.load(config)
    if config.annotations is not None:
        if config.kind == "fiftyone":
            raise SourceError("an annotations file goes with a folder or manifest source; use annotator_fields")
        table.annotations = load_annotations(config.annotations, table.samples)
        table.description["annotations_key"] = table.annotations.attrs.get("key", "sample")
        if table.samples["label"].isna().all():
            table.samples["label"] = majority_label(table.annotations, table.samples.index)
            table.description["label_from"] = "annotator majority vote"
    return finalise(table)


__all__ = [
    "CONVERTED_16BIT", "CONVERTED_ALPHA", "CONVERTED_CMYK", "CONVERTED_PALETTE", "CORRUPT_IMAGE", "DEFAULT_SPLIT",
    "EMPTY_FILE", "EXIF_ROTATED", "FORMATS", "IMAGE_SUFFIXES", "MISSING_FILE", "MISSING_LABEL", "SPLIT_NAMES",
    "TOO_LARGE", "TRUNCATED_IMAGE", "UNREADABLE", "SampleTable", "SourceError", "SourceFormat", "add_problems",
    "finalise", "load_annotations", "load_folder", "load_image", "load_manifest", "load_source", "majority_label",
    "read_table", "register_format",
]
