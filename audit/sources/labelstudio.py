"""Label Studio JSON exports as an object source (the "JSON" and "JSON_MIN" export formats).

``kind: labelstudio``, ``path`` = the export file. Regions read:

- ``rectanglelabels`` (``x, y, width, height`` in percent of the image, ``rotation`` in degrees about the top-left
  corner; a rotated rectangle becomes its axis-aligned hull);
- ``polygonlabels`` (``points`` in percent): an instance mask and its box;
- ``brushlabels`` (``format: rle``): Label Studio's own RLE of an RGBA image, decoded with
  ``label_studio_sdk.converter.brush.decode_rle``; the alpha channel is the mask (as in the SDK's converters).

A region with several labels gives one object per label. Other result types (choices, keypoints, text...) are
counted in the description (``ignored_results``), as are cancelled annotations and stored predictions.

Images: the task's image URL (``/data/upload/<project>/<8 hex>-name.jpg``, ``/data/local-files/?d=path``,
``s3://...``, ``http://...``) is mapped to a local file by name under ``images`` (config), else ``images/``
beside the export, else the export's folder; upload prefixes (``6f4b7e3c-``) are tried with and without.

Several annotators: every annotation of a task is read; ``completed_by`` (the user's email when the export
expands users, else the user id) is the annotator. A file with a single annotator gives annotator "".
"""

from __future__ import annotations

import math
import re
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, unquote, urlparse

import numpy as np
import pandas as pd

from audit.sources.objects import (
    ImageIndex,
    ObjectRecords,
    image_samples,
    image_size,
    load_object_source,
    mask_box,
    number,
    object_table,
    polygon_mask,
    read_json,
    relative_id,
)
from audit.sources.table import DEFAULT_SPLIT, IMAGE_SUFFIXES, SampleTable, SourceError, register_format

if TYPE_CHECKING:
    from audit.config import SourceConfig

_LABEL_KEYS = ("rectanglelabels", "polygonlabels", "brushlabels", "labels")
_UPLOAD_PREFIX = re.compile(r"^[0-9a-f]{8}-(.+)$")
_JSON_MIN_META = {"id", "annotator", "annotation_id", "created_at", "updated_at", "lead_time", "agreement"}


@register_format("labelstudio", needs=("path|annotator_files",),
                 description="Label Studio JSON / JSON_MIN export: rectangles, polygons, brush masks")
def load_labelstudio_source(config: SourceConfig) -> SampleTable:
    return load_object_source(config, read_labelstudio)


def image_name_candidates(url: str) -> list[str]:
    """Local names an image URL of a Label Studio task may have, most specific first."""
    parsed = urlparse(url)
    query = parse_qs(parsed.query)
    names: list[str] = []
    if "d" in query:  # local files storage: /data/local-files/?d=relative/path.jpg
        local = unquote(query["d"][0]).lstrip("/")
        names += [local, Path(local).name]
    else:
        names.append(Path(unquote(parsed.path)).name)
    for name in list(names):
        match = _UPLOAD_PREFIX.match(Path(name).name)
        if match:
            names.append(match.group(1))
    return list(dict.fromkeys(n for n in names if n))


def _image_url(data: dict[str, Any], task_ref: str, file: Path) -> str:
    if isinstance(data.get("image"), str):
        return data["image"]
    for value in data.values():
        if isinstance(value, str) and (Path(urlparse(value).path).suffix.lower() in IMAGE_SUFFIXES
                                       or value.startswith("data:image")):
            return value
    raise SourceError(f"{file.name}: {task_ref} has no image URL in its data ({', '.join(map(str, data))})")


def _annotator_name(completed_by: Any) -> str:
    if isinstance(completed_by, dict):
        return str(completed_by.get("email") or completed_by.get("id") or "")
    return "" if completed_by is None else str(completed_by)


def _tasks(data: Any, file: Path) -> list[dict[str, Any]]:
    """Both export formats as ``[{id, data, annotations: [{id, annotator, regions: [value...]}]}]``."""
    if isinstance(data, dict):
        data = [data]
    if not isinstance(data, list) or not all(isinstance(t, dict) for t in data):
        raise SourceError(f"{file.name}: a Label Studio export is a JSON list of tasks")
    tasks: dict[Any, dict[str, Any]] = {}
    for k, item in enumerate(data):
        if "data" in item or "annotations" in item or "completions" in item:  # JSON export
            task_id = item.get("id", f"#{k}")
            annotations = []
            for a, annotation in enumerate(item.get("annotations", item.get("completions")) or []):
                regions = [dict(r.get("value") or {}, _type=r.get("type", ""), _id=r.get("id"),
                                _width=r.get("original_width"), _height=r.get("original_height"))
                           for r in annotation.get("result") or []]
                annotations.append({"id": annotation.get("id", a), "annotator":
                                    _annotator_name(annotation.get("completed_by")), "regions": regions,
                                    "cancelled": bool(annotation.get("was_cancelled") or annotation.get("skipped"))})
            tasks[task_id] = {"id": task_id, "data": item.get("data") or {}, "annotations": annotations,
                              "predictions": len(item.get("predictions") or [])}
        else:  # JSON_MIN: one record per annotation, regions under each control tag's name
            task_id = item.get("id", f"#{k}")
            task = tasks.setdefault(task_id, {"id": task_id, "data": {}, "annotations": [], "predictions": 0})
            regions = []
            for key, value in item.items():
                if key in _JSON_MIN_META:
                    continue
                if isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
                    regions += [dict(v, _type="", _id=None, _width=v.get("original_width"),
                                     _height=v.get("original_height")) for v in value]
                else:
                    task["data"].setdefault(key, value)
            task["annotations"].append({"id": item.get("annotation_id", len(task["annotations"])),
                                        "annotator": _annotator_name(item.get("annotator")), "regions": regions,
                                        "cancelled": False})
    return list(tasks.values())


def read_labelstudio(path: Path, images: Path | None = None) -> SampleTable:
    """A Label Studio JSON or JSON_MIN export -> samples (one per image) and objects (every annotation)."""
    path = Path(path)
    tasks = _tasks(read_json(path, "Label Studio export"), path)
    roots = [Path(images)] if images else [p for p in (path.parent / "images", path.parent) if p.is_dir()]
    index = ImageIndex(roots)
    names = {a["annotator"] for t in tasks for a in t["annotations"] if not a["cancelled"]}
    several = len(names) > 1
    records = ObjectRecords(path)
    ignored: Counter[str] = Counter()
    rows: dict[str, tuple[str, Path, str]] = {}
    coverage: list[tuple[str, str]] = []  # who saw which image, objects or not
    for task in tasks:
        task_ref = f"task {task['id']}"
        url = _image_url(task["data"], task_ref, path)
        candidates = image_name_candidates(url)
        file = next((f for f in map(index.find, candidates) if f is not None), None)
        file = file or index.locate(candidates[-1] if candidates else url)
        sample_id = relative_id(file, index.root_for(file)) if file.is_file() else Path(candidates[-1]).as_posix()
        split = str(task["data"].get("split") or DEFAULT_SPLIT)
        rows.setdefault(sample_id, (sample_id, file, split))
        if task["predictions"]:
            ignored["predictions"] += task["predictions"]
        size_cache: list[tuple[int, int] | None] = []
        for annotation in task["annotations"]:
            if annotation["cancelled"]:
                ignored["cancelled annotations"] += 1
                continue
            coverage.append((sample_id, annotation["annotator"] if several else ""))
            for n, region in enumerate(annotation["regions"]):
                region_id = region["_id"] if region["_id"] is not None else n
                ref = f"{task_ref} annotation {annotation['id']} region {region_id}"
                kind = next((k for k in _LABEL_KEYS if region.get(k)), None)
                if kind is None:
                    ignored[region["_type"] or "unlabelled regions"] += 1
                    continue
                labels = region[kind] if isinstance(region[kind], list) else [region[kind]]
                size = _size(region, file, size_cache, path, ref)
                box, mask = _geometry(region, *size, path, ref)
                for j, label in enumerate(labels):
                    suffix = f"/{j}" if len(labels) > 1 else ""
                    records.add(f"{task['id']}/{annotation['id']}/{region_id}{suffix}", sample_id, str(label), box,
                                *size, source=f"{path.name} {ref}", mask=mask,
                                annotator=annotation["annotator"] if several else "")
    samples = image_samples(rows.values(), what=path.name)
    description = {"kind": "labelstudio", "path": str(path.resolve()), "ignored_results": dict(ignored),
                   "annotators": sorted(names) if several else [],
                   "object_coverage": pd.DataFrame(coverage, columns=["sample_id", "annotator"]).drop_duplicates()}
    return object_table(samples, records.table(), description)


def _size(region: dict[str, Any], file: Path, cache: list, path: Path, ref: str) -> tuple[int, int]:
    width, height = region.get("_width"), region.get("_height")
    if width and height:
        return int(number(width, path, ref, "original_width")), int(number(height, path, ref, "original_height"))
    if not cache:
        cache.append(image_size(file))
    if cache[0] is None:
        raise SourceError(f"{path.name}: {ref} has no original_width/original_height and the image {file} cannot "
                          "be read to find them")
    return cache[0]


def _geometry(region: dict[str, Any], width: int, height: int, path: Path, ref: str
              ) -> tuple[list[float], str | None]:
    if region.get("rle") is not None or region.get("format") == "rle":
        return _brush(region, width, height, path, ref)
    if "points" in region:
        points = region["points"]
        if not isinstance(points, list) or not all(isinstance(p, list | tuple) and len(p) == 2 for p in points):
            raise SourceError(f"{path.name}: {ref}: malformed polygon (points must be [[x, y], ...] in percent)")
        ring = [number(v, path, ref, "polygon point") * (width if i % 2 == 0 else height) / 100.0
                for i, v in enumerate(c for p in points for c in p)]
        mask = polygon_mask([ring], height, width, path, ref)
        xs, ys = ring[0::2], ring[1::2]
        return [min(xs), min(ys), max(xs) - min(xs), max(ys) - min(ys)], mask
    if all(k in region for k in ("x", "y", "width", "height")):
        x = number(region["x"], path, ref, "x") * width / 100.0
        y = number(region["y"], path, ref, "y") * height / 100.0
        w = number(region["width"], path, ref, "width") * width / 100.0
        h = number(region["height"], path, ref, "height") * height / 100.0
        rotation = number(region.get("rotation", 0) or 0, path, ref, "rotation")
        if rotation % 360:
            theta = math.radians(rotation)  # about the top-left corner, clockwise on screen (y points down)
            corners = [(0.0, 0.0), (w, 0.0), (w, h), (0.0, h)]
            xs = [x + cx * math.cos(theta) - cy * math.sin(theta) for cx, cy in corners]
            ys = [y + cx * math.sin(theta) + cy * math.cos(theta) for cx, cy in corners]
            return [min(xs), min(ys), max(xs) - min(xs), max(ys) - min(ys)], None
        return [x, y, w, h], None
    raise SourceError(f"{path.name}: {ref}: a labelled region with no geometry (no x/y/width/height, points or rle)")


def _brush(region: dict[str, Any], width: int, height: int, path: Path, ref: str) -> tuple[list[float], str]:
    from label_studio_sdk.converter.brush import decode_rle

    from audit.geometry import mask_to_rle

    rle = region.get("rle")
    if region.get("format", "rle") != "rle" or not isinstance(rle, list) or not rle:
        raise SourceError(f"{path.name}: {ref}: brush region without an 'rle' list (format {region.get('format')!r})")
    try:
        flat = decode_rle(bytes(int(v) for v in rle))
        pixels = np.reshape(flat, (height, width, 4))[:, :, 3]
    except (ValueError, IndexError, TypeError) as exc:
        raise SourceError(f"{path.name}: {ref}: malformed brush RLE for a {width} x {height} image: {exc}") from exc
    mask = mask_to_rle(pixels > 0)
    return mask_box(mask, height, width), mask
