"""A FiftyOne dataset as a source: labels, annotator fields, splits, and embeddings or predictions in its fields.

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


@register_format("fiftyone", needs=("dataset",), description="an existing FiftyOne dataset (Classification fields)")
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
        raise SourceError(f"{role} field {field!r} of dataset {dataset.name!r} is not a Classification field")


def load_fiftyone_source(
    name: str, label_field: str, annotator_fields: list[str] | None = None, split_field: str | None = None
) -> SampleTable:
    """A FiftyOne dataset as a sample table; the sample id is FiftyOne's sample id, the split comes from
    ``split_field`` or from a train/val/test tag."""
    dataset = _load_dataset(name)
    if len(dataset) == 0:
        raise SourceError(f"FiftyOne dataset {name!r} is empty")
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
