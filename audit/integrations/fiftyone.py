"""Writing a run into FiftyOne for review (the only module besides the FiftyOne source that imports fiftyone,
lazily, so other commands start fast).

:func:`export_run` writes a run folder's results into a dataset: ``label_audit_*`` fields, the tags
``suspected_mislabel``, ``low_agreement`` and ``unreadable``, saved views named ``la-*``, the run's UMAP as a
brain visualization and its embeddings as a similarity index; :func:`launch_app` opens the App on the suspects
view. The MongoDB is FiftyOne's own choice: the one it starts itself, or the server named by
``FIFTYONE_DATABASE_URI`` / ``database_uri`` in FiftyOne's config (FiftyOne connects once per process, so it is
set there, before the first call, rather than per call).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from audit.declarations import FiftyOneField, FiftyOneTag, FiftyOneView


def _fo():
    os.environ.setdefault("FIFTYONE_DO_NOT_TRACK", "true")
    import fiftyone as fo

    return fo


# ----------------------------------------------------------------------------------------------------
# Writing: a run's results into a FiftyOne dataset, for review in the App. Everything here reads the run
# folder and never recomputes; all fields, tags, views and brain keys it owns are namespaced, so a second
# export replaces exactly what the first wrote and leaves the user's own fields and tags alone.
# ----------------------------------------------------------------------------------------------------

# The export's own fields, tags and views; each check declares its own (``Check.fiftyone``) and this module writes
# them all. Everything is namespaced, so a second export replaces exactly what the first wrote.
FIELD_RUN = "label_audit_run"
FIELD_LABEL = "label_audit_label"
FIELD_SPLIT = "label_audit_split"
FIELD_PROBLEMS = "label_audit_problems"
FIELD_UMAP = "label_audit_umap"
TAG_UNREADABLE = "unreadable"

VIEW_PREFIX = "la-"
VIEW_SUSPECTS = "la-suspected-mislabels"  # the view the App opens on (declared by the mistakes check)
VIEW_UNREADABLE = "la-unreadable"
VISUALIZATION_KEY = "label_audit_umap"
SIMILARITY_KEY = "label_audit_similarity"
WORKSPACE = "label-audit"
DEFAULT_LABEL_FIELD = "ground_truth"
INFO_KEY = "label_audit"
_FIELD_TYPES = {"float": "FloatField", "bool": "BooleanField", "string": "StringField"}
_MEDIA_LABELS = {"segmentation": "Segmentation", "heatmap": "Heatmap"}  # labels stored as a file path (0..255)


class FiftyOneExportError(ValueError):
    """The run cannot be written into the chosen FiftyOne dataset; the message says why and what to do."""


def declared() -> tuple[list[FiftyOneField], list[FiftyOneTag], list[FiftyOneView], list[Any]]:
    """The export's own fields, tags and views, then every registered check's, and the checks' dynamic views."""
    from audit.checks import REGISTRY
    from audit.sources import UNREADABLE

    fields = [
        FiftyOneField(FIELD_RUN, "string", "label-audit run the label_audit_* fields come from",
                      lambda run: [run.name] * len(run.samples)),
        FiftyOneField(FIELD_LABEL, "string", "label audited: annotators' consensus when there are annotators, "
                      "else the dataset's label", _audited_labels),
        FiftyOneField(FIELD_SPLIT, "string", "split of the sample in the run (all when none)",
                      lambda run: _column(run.samples, "split")),
        FiftyOneField(FIELD_PROBLEMS, "string_list",
                      "problems found reading the sample (missing_file, corrupt_image, ...)", _problem_lists),
    ]
    tags = [FiftyOneTag(TAG_UNREADABLE, lambda run: _unreadable_mask(run.samples))]
    views = [FiftyOneView(VIEW_UNREADABLE,
                          "Samples that could not be read (missing, empty, corrupt or truncated files)",
                          lambda dataset, F: dataset.match(F(FIELD_PROBLEMS).contains(sorted(UNREADABLE))))]
    dynamic = []
    for check in REGISTRY.values():
        fields += check.fiftyone.fields
        tags += check.fiftyone.tags
        views += check.fiftyone.views
        if check.fiftyone.dynamic_views is not None:
            dynamic.append(check.fiftyone.dynamic_views)
    return fields, tags, views, dynamic


def our_tags() -> tuple[str, ...]:
    """Every tag an export may set (and removes where it no longer applies)."""
    return tuple(tag.name for tag in declared()[1])


def _field_specs(fo) -> dict[str, tuple[Any, dict[str, Any], str]]:
    """Our sample fields: type, type arguments, and the description shown in the App's sidebar."""
    specs: dict[str, tuple[Any, dict[str, Any], str]] = {}
    for field in declared()[0]:
        if field.kind == "classification":
            specs[field.name] = (fo.EmbeddedDocumentField, {"embedded_doc_type": fo.Classification},
                                 field.description)
        elif field.kind in _MEDIA_LABELS:
            specs[field.name] = (fo.EmbeddedDocumentField,
                                 {"embedded_doc_type": getattr(fo, _MEDIA_LABELS[field.kind])}, field.description)
        elif field.kind == "string_list":
            specs[field.name] = (fo.ListField, {"subfield": fo.StringField}, field.description)
        else:
            specs[field.name] = (getattr(fo, _FIELD_TYPES[field.kind]), {}, field.description)
    return specs


def _ensure_fields(dataset, fo) -> None:
    """Declare our fields; refuse, before anything is written, a same-named field of another type."""
    schema = dataset.get_field_schema()
    specs = _field_specs(fo)
    for name, (ftype, kwargs, _) in specs.items():
        existing = schema.get(name)
        if existing is None:
            continue
        same_type = isinstance(existing, ftype)
        if same_type and "embedded_doc_type" in kwargs:
            same_type = issubclass(existing.document_type, kwargs["embedded_doc_type"])
        if not same_type:
            raise FiftyOneExportError(
                f"FiftyOne dataset {dataset.name!r} already has a field {name!r} of type "
                f"{type(existing).__name__}; delete it or export into another dataset with --dataset"
            )
    for name, (ftype, kwargs, description) in specs.items():
        if name not in schema:
            dataset.add_sample_field(name, ftype, description=description, **kwargs)


def _clean(value: Any) -> Any:
    """NaN/None -> None, numpy scalars -> Python, so MongoDB stores plain values."""
    if value is None:
        return None
    if isinstance(value, float | np.floating) and not np.isfinite(value):
        return None
    if isinstance(value, np.generic):
        return value.item()
    if value is pd.NA or value is pd.NaT:
        return None
    return value


def _column(samples: pd.DataFrame, name: str) -> list[Any]:
    if name not in samples.columns:
        return [None] * len(samples)
    return [_clean(v) for v in samples[name].tolist()]


def _unreadable_mask(samples: pd.DataFrame) -> np.ndarray:
    from audit.sources import UNREADABLE

    readable = samples["readable"].astype(bool).to_numpy() if "readable" in samples else None
    problems = samples["problems"].fillna("").astype(str) if "problems" in samples else None
    by_code = (np.array([bool(set(p.split(";")) & UNREADABLE) for p in problems], dtype=bool)
               if problems is not None else np.zeros(len(samples), dtype=bool))
    return by_code | (~readable if readable is not None else False)


def _audited_labels(run) -> list[Any]:
    audited = _column(run.samples, "mistakes_audited_label")
    return [a if a is not None else lab for a, lab in zip(audited, _column(run.samples, "label"), strict=True)]


def _problem_lists(run) -> list[list[str]]:
    samples = run.samples
    problems = samples["problems"].fillna("").astype(str) if "problems" in samples else [""] * len(samples)
    return [[c for c in p.split(";") if c] for p in problems]


def _per_sample_values(run) -> tuple[dict[str, list[Any]], set[str]]:
    """Every declared field's values in run sample order, and which fields are classifications (given as
    ``(label, confidence)`` pairs, see :func:`_set_classifications`)."""
    fields = declared()[0]
    values = {f.name: [_clean(v) if not isinstance(v, tuple | list) else v for v in f.values(run)] for f in fields}
    return values, {f.name for f in fields if f.kind == "classification"}


def default_dataset_name(run) -> str:
    """The dataset a run goes into: its own for a FiftyOne source, else ``label-audit-<source folder>``."""
    source = run.summary.get("dataset", {}) or {}
    if source.get("kind") == "fiftyone":
        return str(source["name"])
    path = source.get("path")
    if not path:
        return f"label-audit-{run.name}"
    path = Path(path)
    folder = path.parent if path.suffix else path
    return f"label-audit-{folder.name}"


def _norm_path(path: str) -> str:
    return os.path.normpath(os.path.abspath(os.path.expanduser(str(path))))


def _open_target(run, dataset_name: str | None, fo):
    """The dataset to write into and the run's label field there; folder/manifest datasets are created."""
    source = run.summary.get("dataset", {}) or {}
    name = dataset_name or default_dataset_name(run)
    if source.get("kind") == "fiftyone":
        if name not in fo.list_datasets():
            raise FiftyOneExportError(
                f"no FiftyOne dataset named {name!r}: run {run.name!r} was made from a FiftyOne dataset and is "
                "written into an existing one (that dataset, or a copy with the same file paths, via --dataset)"
            )
        return fo.load_dataset(name), str(source.get("label_field") or DEFAULT_LABEL_FIELD)
    if name in fo.list_datasets():
        dataset = fo.load_dataset(name)
    else:
        dataset = fo.Dataset(name, persistent=True)
        dataset.info[INFO_KEY] = {"created_by": "label-audit", "source": {k: source.get(k) for k in
                                                                          ("kind", "name", "path")}}
        dataset.save()
    label_field = DEFAULT_LABEL_FIELD
    kind = dataset.get_field_schema().get(label_field)
    if kind is not None and not (isinstance(kind, fo.EmbeddedDocumentField)
                                 and issubclass(kind.document_type, fo.Classification)):
        raise FiftyOneExportError(
            f"FiftyOne dataset {name!r} has a {label_field!r} field that is not a Classification; "
            "export into another dataset with --dataset"
        )
    return dataset, label_field


def _owned(dataset) -> bool:
    return (dataset.info or {}).get(INFO_KEY, {}).get("created_by") == "label-audit"


def _match_samples(run, dataset, label_field: str, fo) -> list[str | None]:
    """FiftyOne sample id per run sample: by id for a FiftyOne source, else (or failing that) by filepath.

    Samples of a folder or manifest source that the dataset lacks are added, with their label as a
    Classification in ``label_field``; in a dataset label-audit created, that label follows the source.
    """
    samples = run.samples
    fo_ids, fo_paths = dataset.values(["id", "filepath"])
    by_path = {_norm_path(p): str(i) for i, p in zip(fo_ids, fo_paths, strict=True)}
    known_ids = {str(i) for i in fo_ids}
    from_fiftyone = (run.summary.get("dataset", {}) or {}).get("kind") == "fiftyone"
    matched: list[str | None] = []
    for sample_id, filepath in zip(samples.index.astype(str), samples["filepath"].astype(str), strict=True):
        if from_fiftyone and sample_id in known_ids:
            matched.append(sample_id)
        else:
            matched.append(by_path.get(_norm_path(filepath)))
    if from_fiftyone:
        return matched
    labels = _column(samples, "label")
    missing = [i for i, m in enumerate(matched) if m is None]
    if missing:
        new = [fo.Sample(filepath=_norm_path(samples["filepath"].iloc[i]),
                         **{label_field: fo.Classification(label=str(labels[i])) if labels[i] is not None
                            else None})
               for i in missing]
        for i, new_id in zip(missing, dataset.add_samples(new, progress=False), strict=True):
            matched[i] = str(new_id)
    if _owned(dataset):
        _set_classifications(dataset, label_field, {
            m: None if lab is None else (str(lab), None) for m, lab in zip(matched, labels, strict=True)
            if m is not None
        }, fo)
    return matched


def _set_classifications(dataset, field: str, wanted: dict[str, tuple[str, float | None] | None], fo) -> None:
    """Set a Classification field per sample id from ``(label, confidence)`` (None clears it).

    A Classification already there is edited in place, so its id, and any label tags a reviewer put on it,
    survive a re-export; only samples without one get a new Classification.
    """
    if not wanted or (all(v is None for v in wanted.values()) and field not in dataset.get_field_schema()):
        return  # nothing to write (a detection dataset's images carry no label of their own)
    current: dict[str, Any] = {}
    if field in dataset.get_field_schema():
        ids, label_ids = dataset.select(list(wanted)).values(["id", f"{field}.id"])
        current = dict(zip(map(str, ids), label_ids, strict=True))
    in_place = {i: v for i, v in wanted.items() if v is not None and current.get(i) is not None}
    replaced = {i: None if v is None else fo.Classification(label=v[0], confidence=v[1])
                for i, v in wanted.items() if i not in in_place}
    if in_place:
        dataset.set_values(f"{field}.label", {i: v[0] for i, v in in_place.items()}, key_field="id",
                           progress=False)
        dataset.set_values(f"{field}.confidence", {i: v[1] for i, v in in_place.items()}, key_field="id",
                           progress=False)
    if replaced:
        dataset.set_values(field, replaced, key_field="id", progress=False)


def _write_fields(run, dataset, matched: list[str | None], fo) -> list[str]:
    """Set our fields on the run's samples and clear them on samples the run does not cover."""
    values, classifications = _per_sample_values(run)
    keep = [i for i, m in enumerate(matched) if m is not None]
    ids = [matched[i] for i in keep]
    media = {f.name: f.kind for f in declared()[0] if f.kind in _MEDIA_LABELS}
    for field, column in values.items():
        by_id = {ids[j]: column[i] for j, i in enumerate(keep)}
        if field in classifications:
            _set_classifications(dataset, field, by_id, fo)
        elif field in media:
            dataset.set_values(field, {i: _media_label(media[field], path, fo) for i, path in by_id.items()},
                               key_field="id", progress=False)
        else:
            dataset.set_values(field, by_id, key_field="id", progress=False)
    others = dataset.exclude(ids)
    if len(others):
        for field in values:
            others.clear_sample_field(field)
    _set_mask_targets(run, dataset)
    return ids


def _media_label(kind: str, path: str | None, fo) -> Any:
    """A Segmentation or Heatmap (values 0..255) read by the App from a file the run keeps, or None."""
    if path is None:
        return None
    return fo.Segmentation(mask_path=path) if kind == "segmentation" else fo.Heatmap(map_path=path, range=[0, 255])


def _set_mask_targets(run, dataset) -> None:
    """The class each value of our segmentation fields stands for (the App's legend and colours)."""
    targets = {f.name: f.targets(run) for f in declared()[0] if f.targets is not None}
    targets = {name: t for name, t in targets.items() if t}
    if targets:
        dataset.mask_targets = {**(dataset.mask_targets or {}), **targets}
        dataset.save()


def _write_tags(run, dataset, matched: list[str | None]) -> dict[str, int]:
    """Our tags on exactly the flagged samples: added where flagged, removed where no longer flagged."""
    flags = {tag.name: np.asarray(tag.mask(run), dtype=bool) for tag in declared()[1]}
    counts = {}
    for tag, mask in flags.items():
        flagged = [m for m, f in zip(matched, mask, strict=True) if f and m is not None]
        if flagged:
            dataset.select(flagged).tag_samples(tag)
        dataset.match_tags(tag).exclude(flagged).untag_samples(tag)
        counts[tag] = len(flagged)
    return counts


def _save_views(run, dataset, fo) -> list[str]:
    """(Re-)save every declared review view that applies to this run and drop ``la-*`` views an earlier run saved
    that this run no longer has."""
    F = fo.ViewField
    _, _, declared_views, dynamic = declared()
    chosen = [v for v in declared_views if v.applies(run)] + [v for make in dynamic for v in make(run)]
    views = {v.name: (v.build(dataset, F), v.description) for v in chosen}
    for name in dataset.list_saved_views():
        if name.startswith(VIEW_PREFIX) and name not in views:
            dataset.delete_saved_view(name)
    for name, (view, description) in views.items():
        dataset.save_view(name, view, description=f"{description} (label-audit run {run.name})",
                          overwrite=True)
    return list(views)


def _write_brain_results(run, dataset, matched: list[str | None], label_field: str, fo) -> list[str]:
    """The run's own 2D UMAP as a brain visualization (the App's Embeddings panel shows the report's map) and
    its embeddings as a similarity index; previous results under our keys are replaced."""
    import fiftyone.brain as fob

    samples = run.samples
    written = []
    for key in (VISUALIZATION_KEY, SIMILARITY_KEY):
        if dataset.has_brain_run(key):
            dataset.delete_brain_run(key)
    if {"umap_x", "umap_y"} <= set(samples.columns):
        xy = samples[["umap_x", "umap_y"]].to_numpy(dtype=np.float64)
        points = {m: xy[i] for i, m in enumerate(matched) if m is not None and np.isfinite(xy[i]).all()}
        if points:
            fob.compute_visualization(dataset, points=points, brain_key=VISUALIZATION_KEY,
                                      create_index=True, points_field=FIELD_UMAP, progress=False)
            written.append(VISUALIZATION_KEY)
    embeddings = run.sample_embeddings()
    if embeddings is not None and hasattr(fob, "compute_similarity"):
        vectors = {m: embeddings[i] for i, m in enumerate(matched)
                   if m is not None and np.isfinite(embeddings[i]).all()}
        if vectors:
            fob.compute_similarity(dataset, embeddings=vectors, brain_key=SIMILARITY_KEY, backend="sklearn",
                                   progress=False)
            written.append(SIMILARITY_KEY)
    panel = fo.Panel(type="Embeddings", state={"brainResult": VISUALIZATION_KEY,
                                               "colorByField": f"{label_field}.label"})
    space = fo.Space(children=[fo.Panel(type="Samples", pinned=True), panel], orientation="horizontal")
    dataset.save_workspace(WORKSPACE, space, description="Samples grid beside the run's embeddings map",
                           overwrite=True)
    return written


FIELD_OBJECTS = "label_audit_objects"
FIELD_PREDICTIONS = "label_audit_predictions"
TAG_SUSPECT_BOX = "suspect_box"
VIEW_SUSPECT_BOXES = "la-suspect-boxes"
OBJECT_VISUALIZATION_KEY = "label_audit_object_umap"


def _object_attributes(objects: pd.DataFrame) -> list[str]:
    """The object checks' own columns (prefixed with an object-level check's name), written as label attributes."""
    from audit.checks import REGISTRY

    prefixes = tuple(f"{name}_" for name, check in REGISTRY.items() if getattr(check, "level", "image") == "object")
    return [c for c in objects.columns if c.startswith(prefixes)]


def _detections(rows: pd.DataFrame, attributes: list[str], fo) -> Any:
    """One sample's boxes as FiftyOne Detections (relative boxes; instance masks cut to their box)."""
    from audit.geometry import rle_to_mask

    detections = []
    for object_id, row in rows.iterrows():
        extra = {c: _clean(row[c]) for c in attributes if c in row.index}
        extra = {k: v for k, v in extra.items() if v is not None and not isinstance(v, list | dict)}
        quality = extra.get("object_mistakes_label_quality")
        detection = fo.Detection(label=str(row["label"]), bounding_box=[float(row["xn"]), float(row["yn"]),
                                                                        float(row["wn"]), float(row["hn"])],
                                 confidence=_clean(row.get("score")) if quality is None else quality,
                                 label_audit_object_id=str(object_id),
                                 label_audit_annotator=str(row.get("annotator") or ""), **extra)
        if extra.get("object_mistakes_is_issue"):
            detection.tags = [TAG_SUSPECT_BOX]
        mask = row.get("mask")
        if isinstance(mask, str) and mask:
            full = rle_to_mask(mask, int(row["image_height"]), int(row["image_width"]))
            x, y = int(row["x"]), int(row["y"])
            detection.mask = full[y:y + max(1, round(float(row["h"]))), x:x + max(1, round(float(row["w"])))]
        detections.append(detection)
    return fo.Detections(detections=detections)


def _write_objects(run, dataset, matched: list[str | None], fo) -> dict[str, Any]:
    """A detection run's boxes: the audited ones (with the object checks' attributes and a ``suspect_box`` label
    tag) in ``label_audit_objects``, a detector's in ``label_audit_predictions``, a saved view of the suspect
    boxes, and the map of boxes as a brain visualization on those patches."""
    objects = run.objects
    if objects is None:
        return {}
    import fiftyone.brain as fob

    by_sample = dict(zip(run.samples.index.astype(str), matched, strict=True))
    attributes = _object_attributes(objects)
    audited = objects[objects["audited"].fillna(False).astype(bool)] if "audited" in objects else objects
    written: dict[str, Any] = {"views": [], "brain_keys": []}
    for field, table in ((FIELD_OBJECTS, audited),
                         (FIELD_PREDICTIONS, objects[objects["annotator"].astype(str) == "predictions"])):
        if table.empty:
            continue
        values = {}
        for sample_id, rows in table.groupby(table["sample_id"].astype(str)):
            if by_sample.get(sample_id) is not None:
                values[by_sample[sample_id]] = _detections(rows, attributes, fo)
        for fo_id in matched:  # a sample without boxes gets an empty list, not last week's boxes
            if fo_id is not None and fo_id not in values:
                values[fo_id] = fo.Detections(detections=[])
        dataset.set_values(field, values, key_field="id", progress=False)
        written[field] = len(table)
    if FIELD_OBJECTS in written:
        F = fo.ViewField
        view = dataset.filter_labels(FIELD_OBJECTS, F("object_mistakes_is_issue") == True)  # noqa: E712
        dataset.save_view(VIEW_SUSPECT_BOXES, view, description=f"Boxes label-audit suspects (run {run.name})",
                          overwrite=True)
        written["views"].append(VIEW_SUSPECT_BOXES)
        if dataset.has_brain_run(OBJECT_VISUALIZATION_KEY):
            dataset.delete_brain_run(OBJECT_VISUALIZATION_KEY)
        ids, object_ids = dataset.values([f"{FIELD_OBJECTS}.detections.id",
                                          f"{FIELD_OBJECTS}.detections.label_audit_object_id"], unwind=True)
        xy = audited[["umap_x", "umap_y"]].to_numpy(float) if {"umap_x", "umap_y"} <= set(audited) else None
        if xy is not None and np.isfinite(xy).any():
            where = dict(zip(audited.index.astype(str), xy, strict=True))
            points = {label_id: where[oid] for label_id, oid in zip(ids, object_ids, strict=True)
                      if oid in where and np.isfinite(where[oid]).all()}
            if points:
                fob.compute_visualization(dataset, patches_field=FIELD_OBJECTS, points=points,
                                          brain_key=OBJECT_VISUALIZATION_KEY, progress=False)
                written["brain_keys"].append(OBJECT_VISUALIZATION_KEY)
    return written


def export_run(run_dir: Path, dataset_name: str | None = None) -> str:
    """Write a run's per-sample results, tags, review views and embeddings map into a FiftyOne dataset.

    A run made from a FiftyOne dataset is written into that dataset (samples matched by id); a folder or
    manifest run goes into a persistent ``label-audit-<source folder>`` dataset, created on first export
    (samples matched by file path, new ones added). Exporting again replaces what label-audit wrote before,
    and nothing else.

    Returns
    -------
    str
        The dataset's name.
    """
    from audit.results import RunResults

    run = RunResults.load(run_dir)
    fo = _fo()
    dataset, label_field = _open_target(run, dataset_name, fo)
    _ensure_fields(dataset, fo)
    matched = _match_samples(run, dataset, label_field, fo)
    if not any(m is not None for m in matched):
        raise FiftyOneExportError(
            f"none of run {run.name!r}'s samples are in FiftyOne dataset {dataset.name!r} (matched by id and "
            "file path); give the dataset the run was made from with --dataset"
        )
    _write_fields(run, dataset, matched, fo)
    tag_counts = _write_tags(run, dataset, matched)
    views = _save_views(run, dataset, fo)
    brain_keys = _write_brain_results(run, dataset, matched, label_field, fo)
    object_record = _write_objects(run, dataset, matched, fo)
    views += object_record.pop("views", [])
    brain_keys += object_record.pop("brain_keys", [])
    info = dict(dataset.info or {})
    record = dict(info.get(INFO_KEY, {}))
    record.update({
        "run": run.name, "run_dir": str(Path(run_dir).resolve()),
        "run_created_at": run.summary.get("created_at"),
        "label_field": label_field, "views": views, "brain_keys": brain_keys, "tags": tag_counts,
        "objects": object_record,
        "samples_matched": sum(m is not None for m in matched), "samples_missing": matched.count(None),
    })
    info[INFO_KEY] = record
    dataset.info = info
    dataset.save()
    return dataset.name


def _is_current(dataset, run, run_dir: Path) -> bool:
    record = (dataset.info or {}).get(INFO_KEY, {})
    return (record.get("run") == run.name and record.get("run_created_at") == run.summary.get("created_at")
            and record.get("run_dir") == str(Path(run_dir).resolve()))


def open_session(run_dir: Path, dataset_name: str | None = None, address: str = "localhost", port: int = 5151,
                 remote: bool = False):
    """Serve the App on the run's suspected-mislabels view (exporting the run first unless it already is).

    Returns
    -------
    tuple
        The FiftyOne session and the URL of the dataset's suspects view.
    """
    from urllib.parse import quote

    from audit.results import RunResults

    run = RunResults.load(run_dir)
    fo = _fo()
    from fiftyone.core.utils import to_slug

    name = dataset_name or default_dataset_name(run)
    if name not in fo.list_datasets() or not _is_current(fo.load_dataset(name), run, run_dir):
        name = export_run(run_dir, dataset_name)
    dataset = fo.load_dataset(name)
    view = dataset.load_saved_view(VIEW_SUSPECTS)
    spaces = dataset.load_workspace(WORKSPACE) if dataset.has_workspace(WORKSPACE) else None
    session = fo.launch_app(dataset, view=view, spaces=spaces, address=address, port=port, remote=remote,
                            auto=False)
    wait_until_connected(session)
    url = f"{session.url.split('?')[0].rstrip('/')}/datasets/{quote(name)}?view={to_slug(VIEW_SUSPECTS)}"
    return session, url


def wait_until_connected(session, timeout: float = 20.0) -> bool:
    """Wait for the session's link to its App server, so the session can be updated and closed at once.

    FiftyOne 1.22 opens a session's client before it starts the App server; the client's first attempt fails
    and it retries after 10 s, and until then updating or closing the session (in a notebook) raises "Client
    is not connected". By the time ``launch_app`` returns the server is up and the first attempt is over, so
    this waits for the retry. Returns whether the client is connected.
    """
    import time

    client = getattr(session, "_client", None)
    deadline = time.monotonic() + timeout
    while client is not None and not getattr(client, "_connected", True) and time.monotonic() < deadline:
        time.sleep(0.2)
    return client is None or bool(getattr(client, "_connected", True))


def launch_app(run_dir: Path, dataset_name: str | None, address: str = "localhost", port: int = 5151,
               remote: bool = False, wait: bool = True) -> str:
    """Open the FiftyOne App on the run's suspects view and print its URL; with ``wait``, serve until the
    App's tabs close (remote: until interrupted), then stop the server.

    Returns
    -------
    str
        The URL of the suspects view.
    """
    session, url = open_session(run_dir, dataset_name, address=address, port=port, remote=remote)
    print(f"FiftyOne App: {url}", flush=True)
    if remote:
        print(f"on your machine: ssh -N -L {port}:127.0.0.1:{port} <user>@<this server>, then open "
              f"http://localhost:{port}/", flush=True)
    if wait:
        try:
            session.wait(-1 if remote else 3)
        finally:
            session.close()
    return url
