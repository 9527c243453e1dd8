"""A FiftyOne dataset as a source: labels, annotator fields, splits, and embeddings or predictions in its fields.

A ``Detections`` label field makes it an object source: the canonical object table (:mod:`audit.sources.objects`)
from its boxes and instance masks, annotator ``Detections`` fields as annotators, and a detector's ``Detections``
field as predictions (:func:`load_fiftyone_object_predictions`).

Reading a dataset is a source like any other; writing a run into FiftyOne is :mod:`audit.integrations.fiftyone`.
FiftyOne is imported lazily, so other sources and commands start fast.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from audit.sources.table import DEFAULT_SPLIT, SPLIT_NAMES, SampleTable, SourceError, register_format

if TYPE_CHECKING:
    from audit.config import SourceConfig


@register_format("fiftyone", needs=("dataset",),
                 description="an existing FiftyOne dataset (Classification or Detections fields)")
def load_fiftyone_dataset_source(config: SourceConfig) -> SampleTable:
    return load_fiftyone_source(config.dataset, config.label_field, config.annotator_fields,
                                split_field=config.split_field)


def _fo():
    os.environ.setdefault("FIFTYONE_DO_NOT_TRACK", "true")
    import fiftyone as fo

    return fo


def _load_dataset(name: str):
    fo = _fo()
    if name not in fo.list_datasets():
        known = ", ".join(fo.list_datasets()[:10]) or "none"
        raise SourceError(f"no FiftyOne dataset named {name!r} (datasets: {known})")
    return fo.load_dataset(name)


def _classification_field(dataset, field: str, role: str) -> None:
    fo = _fo()
    schema = dataset.get_field_schema()
    if field not in schema:
        raise SourceError(
            f"FiftyOne dataset {dataset.name!r} has no {role} field {field!r} (fields: {', '.join(schema)})"
        )
    kind = schema[field]
    if not (isinstance(kind, fo.EmbeddedDocumentField) and issubclass(kind.document_type, fo.Classification)):
        raise SourceError(f"{role} field {field!r} of dataset {dataset.name!r} is not a Classification field "
                          "(nor a Detections field)")


def _is_detections(dataset, field: str) -> bool:
    fo = _fo()
    kind = dataset.get_field_schema().get(field)
    return isinstance(kind, fo.EmbeddedDocumentField) and issubclass(kind.document_type, fo.Detections)


def load_fiftyone_source(
    name: str, label_field: str, annotator_fields: list[str] | None = None, split_field: str | None = None
) -> SampleTable:
    """A FiftyOne dataset as a sample table; the sample id is FiftyOne's sample id, the split comes from
    ``split_field`` or from a train/val/test tag."""
    dataset = _load_dataset(name)
    if len(dataset) == 0:
        raise SourceError(f"FiftyOne dataset {name!r} is empty")
    if _is_detections(dataset, label_field):
        return _load_detections_source(dataset, label_field, annotator_fields or [], split_field)
    _classification_field(dataset, label_field, "label")
    for field in annotator_fields or []:
        _classification_field(dataset, field, "annotator")
    ids, paths, labels, tags = dataset.values(["id", "filepath", f"{label_field}.label", "tags"])
    if split_field:
        if split_field not in dataset.get_field_schema():
            raise SourceError(f"FiftyOne dataset {name!r} has no split field {split_field!r}")
        splits = [str(s) if s is not None else DEFAULT_SPLIT for s in dataset.values(split_field)]
    else:
        splits = [next((t for t in (tg or []) if t.lower() in SPLIT_NAMES), DEFAULT_SPLIT) for tg in tags]
    samples = pd.DataFrame(
        {"filepath": paths, "label": [None if v is None else str(v) for v in labels], "split": splits},
        index=pd.Index([str(i) for i in ids], name="sample_id"),
    )
    annotations = None
    if annotator_fields:
        rows = []
        for field in annotator_fields:
            for sample_id, value in zip(ids, dataset.values(f"{field}.label"), strict=True):
                if value is not None:
                    rows.append((str(sample_id), field, str(value)))
        annotations = pd.DataFrame(rows, columns=["sample_id", "annotator", "label"])
    description: dict[str, Any] = {"kind": "fiftyone", "name": name, "label_field": label_field}
    return SampleTable(samples, annotations=annotations, description=description)


def load_field_array(name: str, field: str, sample_ids: pd.Index) -> np.ndarray:
    """A vector field (embeddings) or a Classification's ``logits`` as an array in ``sample_ids`` order."""
    dataset = _load_dataset(name)
    if field not in dataset.get_field_schema():
        raise SourceError(f"FiftyOne dataset {name!r} has no field {field!r}")
    ids, values = dataset.values(["id", field])
    by_id = dict(zip(map(str, ids), values, strict=True))
    rows = []
    for sample_id in sample_ids:
        value = by_id.get(str(sample_id))
        if value is not None and hasattr(value, "logits"):
            value = value.logits
        if value is None:
            raise SourceError(f"field {field!r} is empty for sample {sample_id}")
        rows.append(np.asarray(value, dtype=np.float32))
    return np.stack(rows)


# ------------------------------------------------------------------------------------------------ Detections


def _splits(dataset, split_field: str | None) -> list[str]:
    if split_field:
        if split_field not in dataset.get_field_schema():
            raise SourceError(f"FiftyOne dataset {dataset.name!r} has no split field {split_field!r}")
        return [str(s) if s is not None else DEFAULT_SPLIT for s in dataset.values(split_field)]
    return [next((t for t in (tg or []) if t.lower() in SPLIT_NAMES), DEFAULT_SPLIT) for tg in dataset.values("tags")]


def _image_sizes(dataset) -> list[tuple[int, int] | None]:
    """(width, height) per sample: FiftyOne's metadata when computed, else the image header (never decoded)."""
    from audit.sources.objects import image_size

    widths, heights, paths = dataset.values(["metadata.width", "metadata.height", "filepath"])
    return [(int(w), int(h)) if w and h else image_size(p) for w, h, p in zip(widths, heights, paths, strict=True)]


def _detection_records(dataset, field: str, sample_ids: list[str], sizes: list, records, annotator: str,
                       id_prefix: str = "") -> list[str]:
    """Add one field's detections to ``records`` (boxes are relative ``[x, y, w, h]``; instance masks, ``mask`` or
    ``mask_path``, are per-box arrays, rendered into the frame by FiftyOne itself); returns the ids of the
    samples where the field is set (the annotator saw them)."""
    from audit.geometry import mask_to_rle

    seen = []
    for sample_id, size, detections in zip(sample_ids, sizes, dataset.values(f"{field}.detections"), strict=True):
        if detections is None:
            continue
        seen.append(sample_id)
        for detection in detections:
            ref = f"FiftyOne dataset {dataset.name!r} field {field!r} detection {detection.id}"
            if size is None:
                raise SourceError(f"{ref}: the image of sample {sample_id} cannot be read to find its size")
            width, height = size
            if detection.bounding_box is None or len(detection.bounding_box) != 4:
                raise SourceError(f"{ref}: bounding_box must be relative [x, y, width, height]")
            x, y, w, h = (float(v) for v in detection.bounding_box)
            mask = None
            if detection.has_mask:
                try:
                    full = detection.to_segmentation(frame_size=(width, height), target=255).get_mask()
                except Exception as exc:  # unreadable mask_path, malformed array
                    raise SourceError(f"{ref}: its instance mask cannot be read: {exc}") from exc
                mask = mask_to_rle(np.asarray(full) > 0)
            crowd = detection.get_attribute_value("iscrowd", None) if "iscrowd" in detection else None
            confidence = detection.confidence
            records.add(f"{id_prefix}{detection.id}", sample_id, str(detection.label),
                        [x * width, y * height, w * width, h * height], width, height, source=ref, mask=mask,
                        iscrowd=bool(crowd), annotator=annotator,
                        score=float(confidence) if confidence is not None else float("nan"))
    return seen


def _load_detections_source(dataset, label_field: str, annotator_fields: list[str],
                            split_field: str | None) -> SampleTable:
    """A dataset whose label field is ``Detections``: image samples plus the canonical object table; each
    annotator field (also ``Detections``) gives that annotator's objects, ids prefixed with the field name."""
    from pathlib import Path

    from audit.sources.objects import ObjectRecords, image_samples, object_table

    for field in annotator_fields:
        if not _is_detections(dataset, field):
            _classification_field(dataset, field, "annotator")  # names a missing field precisely
            raise SourceError(f"annotator field {field!r} of dataset {dataset.name!r} is not a Detections field, "
                              f"as the label field {label_field!r} is")
    ids = [str(i) for i in dataset.values("id")]
    sizes = _image_sizes(dataset)
    records = ObjectRecords(Path(f"FiftyOne dataset {dataset.name}"))
    coverage = [(s, "") for s in _detection_records(dataset, label_field, ids, sizes, records, "")]
    for field in annotator_fields:
        seen = _detection_records(dataset, field, ids, sizes, records, field, id_prefix=f"{field}/")
        coverage += [(s, field) for s in seen]
    samples = image_samples(zip(ids, dataset.values("filepath"), _splits(dataset, split_field), strict=True),
                            what=f"FiftyOne dataset {dataset.name!r}")
    description: dict[str, Any] = {"kind": "fiftyone", "name": dataset.name, "label_field": label_field,
                                   "annotators": list(annotator_fields),
                                   "object_coverage": pd.DataFrame(coverage, columns=["sample_id", "annotator"])}
    return object_table(samples, records.table(), description)


def load_fiftyone_object_predictions(name: str, field: str, samples: pd.DataFrame,
                                     annotator: str = "predictions") -> pd.DataFrame:
    """A detector's ``Detections`` field as an object table (``annotator``, ``score`` = confidence), for the
    samples given: matched by FiftyOne sample id, else by file path."""
    from pathlib import Path

    from audit.sources.objects import ObjectRecords

    dataset = _load_dataset(name)
    if field not in dataset.get_field_schema():
        raise SourceError(f"FiftyOne dataset {name!r} has no field {field!r}")
    if not _is_detections(dataset, field):
        raise SourceError(f"predictions field {field!r} of dataset {name!r} is not a Detections field")
    ids, paths = dataset.values(["id", "filepath"])
    by_path = {str(Path(p).resolve()): s for s, p in zip(samples.index, samples["filepath"], strict=True)}
    known = set(samples.index.astype(str))
    sample_ids = [str(i) if str(i) in known else by_path.get(str(Path(p).resolve()), "") for i, p in
                  zip(ids, paths, strict=True)]
    records = ObjectRecords(Path(f"FiftyOne dataset {name}"))
    _detection_records(dataset, field, sample_ids, _image_sizes(dataset), records, annotator,
                       id_prefix=f"{annotator}/")
    table = records.table()
    return table[table["sample_id"] != ""]
