"""COCO instances JSON as an object source, and COCO results JSON as a detector's predictions.

Ground truth (``kind: coco``, ``path`` = the instances file): ``images`` (id, file_name, width, height),
``categories`` (id, name) and ``annotations`` (id, image_id, category_id, bbox ``[x, y, w, h]`` in pixels,
optional ``segmentation`` as polygons, uncompressed RLE or compressed RLE, ``iscrowd``). Images are looked for
under ``images`` (config), else ``images/`` or ``data/`` beside the JSON (FiftyOne's export layout), else beside
it. The split comes from the file name (``instances_val2017.json`` -> val). An optional per-annotation
``annotator`` (or ``attributes.annotator``) field is the annotator column.

Predictions (:func:`load_object_predictions`): the results format every COCO evaluator reads, a list of
``{image_id, category_id, bbox, score[, segmentation]}``, matched to the samples by COCO image id.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

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
    split_from_name,
)
from audit.sources.table import SampleTable, SourceError, register_format

if TYPE_CHECKING:
    from audit.config import SourceConfig


@register_format("coco", needs=("path|annotator_files",),
                 description="COCO instances JSON: boxes, polygon and RLE masks, iscrowd")
def load_coco_source(config: SourceConfig) -> SampleTable:
    return load_object_source(config, read_coco)


def _records(data: dict, key: str, path: Path, required: bool = True) -> list[dict]:
    value = data.get(key)
    if value is None and not required:
        return []
    if not isinstance(value, list) or not all(isinstance(v, dict) for v in value):
        raise SourceError(f"{path.name}: '{key}' must be a list of objects (is this a COCO instances file?)")
    return value


def _categories(data: dict, path: Path) -> dict[int, str]:
    categories: dict[int, str] = {}
    for k, category in enumerate(_records(data, "categories", path)):
        if "id" not in category or "name" not in category:
            raise SourceError(f"{path.name}: category #{k} lacks 'id' or 'name'")
        cid = int(number(category["id"], path, f"category #{k}", "id"))
        if cid in categories:
            raise SourceError(f"{path.name}: duplicate category id {cid} ({categories[cid]!r} and "
                              f"{category['name']!r})")
        categories[cid] = str(category["name"])
    return categories


def coco_mask(segmentation: Any, height: int, width: int, path: Path, ref: str) -> str | None:
    """A COCO ``segmentation`` (polygons, uncompressed RLE or compressed RLE) as the canonical RLE string."""
    from audit.geometry import GeometryError, rle_area, uncompressed_rle_to_rle

    if segmentation is None or (isinstance(segmentation, list) and not segmentation):
        return None
    if isinstance(segmentation, list):
        rings = segmentation if all(isinstance(r, list) for r in segmentation) else [segmentation]
        return polygon_mask(rings, height, width, path, ref)
    if isinstance(segmentation, dict) and "counts" in segmentation:
        size = segmentation.get("size")
        if not isinstance(size, list) or [int(v) for v in size] != [int(height), int(width)]:
            raise SourceError(f"{path.name}: {ref}: RLE mask size {size} is not the image size "
                              f"[{height}, {width}] (height, width)")
        counts = segmentation["counts"]
        try:
            if isinstance(counts, list):
                return uncompressed_rle_to_rle(counts, height, width)
            if isinstance(counts, str) and counts:
                rle_area(counts, height, width)  # pycocotools parses the string: garbage fails here
                return counts
        except (GeometryError, ValueError, TypeError) as exc:
            raise SourceError(f"{path.name}: {ref}: malformed RLE mask: {exc}") from exc
    raise SourceError(f"{path.name}: {ref}: segmentation is neither polygons nor RLE ({str(segmentation)[:60]})")


def _box(annotation: dict, mask: str | None, height: int, width: int, path: Path, ref: str) -> list[float]:
    bbox = annotation.get("bbox")
    if bbox is None or (isinstance(bbox, list) and not bbox):
        if mask is None:
            raise SourceError(f"{path.name}: {ref}: has neither a bbox nor a segmentation")
        return mask_box(mask, height, width)
    if not isinstance(bbox, list | tuple) or len(bbox) != 4:
        raise SourceError(f"{path.name}: {ref}: bbox must be [x, y, width, height], got {bbox!r}")
    return [number(v, path, ref, "bbox value") for v in bbox]


def _annotator(annotation: dict) -> str:
    value = annotation.get("annotator")
    if value is None and isinstance(annotation.get("attributes"), dict):
        value = annotation["attributes"].get("annotator")
    return "" if value is None else str(value)


def _image_roots(path: Path, images: Path | None) -> list[Path]:
    if images is not None:
        return [Path(images)]
    here = path.parent
    return [p for p in (here / "images", here / "data", here, here.parent / "images") if p.is_dir()] or [here]


def read_coco(path: Path, images: Path | None = None) -> SampleTable:
    """One COCO instances file -> samples (every listed image, annotated or not) and objects."""
    path = Path(path)
    data = read_json(path, "COCO file")
    if not isinstance(data, dict) or "images" not in data:
        raise SourceError(f"COCO file {path} has no 'images' list (a results file of predictions goes to "
                          "load_object_predictions, not to the source)")
    categories = _categories(data, path) if "categories" in data or "annotations" in data else {}
    index = ImageIndex(_image_roots(path, images))
    split = split_from_name(path.name)
    by_id: dict[int, dict[str, Any]] = {}
    by_name: dict[str, int] = {}
    rows = []
    for k, image in enumerate(_records(data, "images", path)):
        if "id" not in image or "file_name" not in image:
            raise SourceError(f"{path.name}: image #{k} lacks 'id' or 'file_name'")
        image_id = int(number(image["id"], path, f"image #{k}", "id"))
        name = str(image["file_name"])
        if image_id in by_id:
            raise SourceError(f"{path.name}: duplicate image id {image_id} ({by_id[image_id]['sample_id']!r} and "
                              f"{name!r})")
        width, height = image.get("width"), image.get("height")
        if name in by_name:  # Label Studio's converter lists an image once per annotation: one sample, two ids
            first = by_id[by_name[name]]
            if (first["width"], first["height"]) != (width, height):
                raise SourceError(f"{path.name}: image file_name {name!r} is listed twice with different sizes "
                                  f"(image ids {by_name[name]} and {image_id})")
            by_id[image_id] = first
            continue
        file = index.locate(name)
        sample_id = Path(name).name if Path(name).is_absolute() else Path(name).as_posix()
        by_id[image_id] = {"sample_id": sample_id, "file": file, "width": width, "height": height}
        by_name[name] = image_id
        rows.append((sample_id, file, split))
    records = ObjectRecords(path)
    for k, annotation in enumerate(_records(data, "annotations", path, required=False)):
        ref = f"annotation id {annotation['id']}" if "id" in annotation else f"annotation #{k} (no id)"
        image_id = annotation.get("image_id")
        image = by_id.get(image_id) if isinstance(image_id, int | float) else None
        if image is None:
            raise SourceError(f"{path.name}: {ref}: image id {image_id!r} is not in 'images' (missing image)")
        category_id = annotation.get("category_id")
        if category_id not in categories:
            known = ", ".join(map(str, sorted(categories)[:20]))
            raise SourceError(f"{path.name}: {ref}: unknown category id {category_id!r} (categories: {known})")
        width, height = _size(image, path, ref)
        mask = coco_mask(annotation.get("segmentation"), height, width, path, ref)
        box = _box(annotation, mask, height, width, path, ref)
        object_id = str(annotation["id"]) if "id" in annotation else f"#{k}"
        records.add(object_id, image["sample_id"], categories[category_id], box, width, height,
                    source=f"{path.name} {ref}", mask=mask, iscrowd=bool(annotation.get("iscrowd", 0)),
                    annotator=_annotator(annotation))
    samples = image_samples(rows, what=path.name)
    description = {"kind": "coco", "path": str(path.resolve()), "categories": categories,
                   "image_ids": {i: v["sample_id"] for i, v in by_id.items()}}
    return object_table(samples, records.table(), description)


def _size(image: dict[str, Any], path: Path, ref: str) -> tuple[int, int]:
    """The image's (width, height): from the file's record, else from the image header."""
    width, height = image.get("width"), image.get("height")
    if width and height:
        return int(number(width, path, ref, "image width")), int(number(height, path, ref, "image height"))
    size = image_size(image["file"])
    if size is None:
        raise SourceError(f"{path.name}: {ref}: image {image['sample_id']!r} has no width/height in the file and "
                          f"{image['file']} cannot be read to find them")
    image["width"], image["height"] = size
    return size


# ------------------------------------------------------------------------------------------------ predictions


def _category_names(class_names: Sequence[str] | Mapping[int, str], data: Any, ground_truth: dict | None,
                    table: SampleTable | None, path: Path) -> dict[int, str]:
    if isinstance(class_names, Mapping):
        return {int(k): str(v) for k, v in class_names.items()}
    if ground_truth is not None and "categories" in ground_truth:
        return _categories(ground_truth, path)
    if isinstance(data, dict) and "categories" in data:
        return _categories(data, path)
    if table is not None and isinstance(table.description.get("categories"), dict):
        return dict(table.description["categories"])
    raise SourceError(
        f"{path.name}: COCO category ids cannot be named from a plain list of class names (ids are the dataset's "
        "own, often 1-based with gaps); pass class_names as {category_id: name}, or ground_truth=<instances.json>"
    )


def _image_map(samples: pd.DataFrame, data: Any, ground_truth: dict | None, table: SampleTable | None,
               path: Path) -> dict[int, str]:
    """COCO image id -> sample id: from the ground-truth file's images, the predictions file's own images, the
    COCO source that made the samples, or (last) file names that are the id (``000000397133.jpg``)."""
    by_name: dict[str, str] = {}
    for sample_id, file in zip(samples.index, samples["filepath"], strict=True):
        by_name.setdefault(str(sample_id), str(sample_id))
        by_name.setdefault(Path(str(file)).name, str(sample_id))
    out: dict[int, str] = {}
    for source in (ground_truth, data if isinstance(data, dict) else None):
        for image in (source or {}).get("images", []) or []:
            name = str(image.get("file_name", ""))
            sample_id = by_name.get(Path(name).as_posix()) or by_name.get(Path(name).name)
            if sample_id is not None and "id" in image:
                out.setdefault(int(image["id"]), sample_id)
    if table is not None and isinstance(table.description.get("image_ids"), dict):
        for image_id, sample_id in table.description["image_ids"].items():
            if sample_id in samples.index:
                out.setdefault(int(image_id), sample_id)
    for sample_id, file in zip(samples.index, samples["filepath"], strict=True):
        stem = Path(str(file)).stem
        if stem.isdigit():
            out.setdefault(int(stem), str(sample_id))
    return out


def load_object_predictions(path: str | Path, samples: pd.DataFrame | SampleTable,
                            class_names: Sequence[str] | Mapping[int, str], *, ground_truth: str | Path | None = None,
                            annotator: str = "predictions") -> pd.DataFrame:
    """A detector's COCO results JSON as an object table (``annotator = "predictions"``, ``score`` set).

    Parameters
    ----------
    path
        A COCO results file (a list of ``{image_id, category_id, bbox, score[, segmentation]}``), or a full
        COCO file whose annotations carry ``score``.
    samples
        The sample table the predictions belong to (a :class:`SampleTable` from a COCO source also carries the
        COCO image and category ids, so nothing else is needed).
    class_names
        ``{category_id: name}``; a plain list is accepted only when the ids can be named from ``ground_truth``,
        the file or the source, because COCO ids are the dataset's own (1-based, with gaps).
    ground_truth
        The instances JSON the detector was evaluated on, for its image and category ids.
    """
    path = Path(path)
    table = samples if isinstance(samples, SampleTable) else None
    frame = table.samples if table is not None else samples
    data = read_json(path, "COCO predictions file")
    truth = read_json(Path(ground_truth), "COCO ground-truth file") if ground_truth is not None else None
    if isinstance(data, dict):
        results = _records(data, "annotations", path)
    elif isinstance(data, list) and all(isinstance(v, dict) for v in data):
        results = data
    else:
        raise SourceError(f"{path.name}: a COCO results file is a list of {{image_id, category_id, bbox, score}}")
    categories = _category_names(class_names, data, truth, table, path)
    image_ids = _image_map(frame, data, truth, table, path)
    sizes = _known_sizes(frame, truth, data, table, image_ids)
    records = ObjectRecords(path)
    for k, result in enumerate(results):
        ref = f"prediction #{k}"
        image_id = result.get("image_id")
        sample_id = image_ids.get(int(image_id)) if isinstance(image_id, int | float | str) and \
            str(image_id).lstrip("-").isdigit() else None
        if sample_id is None:
            raise SourceError(f"{path.name}: {ref}: image id {image_id!r} matches no sample (missing image)")
        category_id = result.get("category_id")
        if category_id not in categories:
            raise SourceError(f"{path.name}: {ref}: unknown category id {category_id!r} "
                              f"(known: {', '.join(map(str, sorted(categories)[:20]))})")
        if "score" not in result:
            raise SourceError(f"{path.name}: {ref}: a prediction needs a 'score'")
        score = number(result["score"], path, ref, "score")
        size = sizes.get(sample_id) or image_size(frame.at[sample_id, "filepath"])
        if size is None:
            raise SourceError(f"{path.name}: {ref}: the size of image {sample_id!r} is unknown and its file "
                              "cannot be read")
        sizes[sample_id] = size
        width, height = size
        mask = coco_mask(result.get("segmentation"), height, width, path, ref)
        box = _box(result, mask, height, width, path, ref)
        records.add(f"{annotator}/{k}", sample_id, categories[category_id], box, width, height,
                    source=f"{path.name} {ref}", mask=mask, iscrowd=False, annotator=annotator, score=score)
    return records.table()


def _known_sizes(samples: pd.DataFrame, truth: dict | None, data: Any, table: SampleTable | None,
                 image_ids: dict[int, str]) -> dict[str, tuple[int, int]]:
    sizes: dict[str, tuple[int, int]] = {}
    if table is not None and table.objects is not None and len(table.objects):
        first = table.objects.drop_duplicates("sample_id").set_index("sample_id")
        for sample_id, w, h in zip(first.index, first["image_width"], first["image_height"], strict=True):
            sizes[str(sample_id)] = (int(w), int(h))
    for source in (truth, data if isinstance(data, dict) else None):
        for image in (source or {}).get("images", []) or []:
            sample_id = image_ids.get(int(image.get("id", -1)))
            if sample_id is not None and image.get("width") and image.get("height"):
                sizes.setdefault(sample_id, (int(image["width"]), int(image["height"])))
    return {k: v for k, v in sizes.items() if k in samples.index and np.all(np.asarray(v) > 0)}
