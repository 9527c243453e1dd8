"""CVAT for images 1.1 XML (``annotations.xml``) as an object source.

``kind: cvat``, ``path`` = the XML (or the folder of a CVAT export holding ``annotations.xml``); images under
``images`` (config), else ``images/`` (CVAT's export), ``data/`` (FiftyOne's) or beside the XML. Per
``<image id name width height [subset]>``:

- ``<box xtl ytl xbr ybr [rotation]>``: a box (a rotated box becomes its axis-aligned hull);
- ``<polygon points="x,y;x,y;...">``: an instance mask (rasterised) and its box;
- ``<mask rle left top width height>``: CVAT's own RLE (run lengths inside the ``left, top, width, height``
  rectangle, row by row, starting with a run of background), as written by CVAT's exporter;
- ``<ellipse cx cy rx ry>``: its box;
- ``<tag label>``: an image-level label: the sample's ``label`` when the image has exactly one tag.

``<polyline>``, ``<points>``, ``<cuboid>`` and ``<skeleton>`` are not objects of a box/mask audit: they are
counted in the description (``ignored_shapes``), not silently lost. An ``annotator`` attribute on a shape is the
annotator column; the ``subset`` attribute of project exports is the split. Video exports (``<track>``) are
refused: export the task as "CVAT for images 1.1".
"""

from __future__ import annotations

import math
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

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
    split_from_name,
)
from audit.sources.table import DEFAULT_SPLIT, SampleTable, SourceError, register_format

if TYPE_CHECKING:
    from xml.etree.ElementTree import Element

    from audit.config import SourceConfig

_IGNORED = ("polyline", "points", "cuboid", "skeleton")


@register_format("cvat", needs=("path|annotator_files",),
                 description="CVAT for images 1.1 XML: boxes, polygons, masks, tags")
def load_cvat_source(config: SourceConfig) -> SampleTable:
    return load_object_source(config, read_cvat)


def cvat_rle_to_mask(counts: list[int], left: int, top: int, box_width: int, box_height: int, width: int,
                     height: int) -> np.ndarray:
    """CVAT's ``<mask>`` runs -> a full-image boolean mask (runs alternate background / foreground, row-major
    inside the ``box_width x box_height`` rectangle at ``left, top``, the first run being background)."""
    values = np.zeros(sum(counts), dtype=bool)
    position = 0
    for k, run in enumerate(counts):
        if k % 2:
            values[position:position + run] = True
        position += run
    full = np.zeros((height, width), dtype=bool)
    patch = values.reshape(box_height, box_width)
    bottom, right = min(top + box_height, height), min(left + box_width, width)
    full[top:bottom, left:right] = patch[: bottom - top, : right - left]
    return full


def _attributes(element: Element) -> dict[str, str]:
    return {a.get("name", ""): (a.text or "").strip() for a in element.findall("attribute")}


def _points(element: Element, xml: Path, ref: str) -> list[float]:
    text = element.get("points", "").strip()
    coordinates: list[float] = []
    for pair in filter(None, text.split(";")):
        values = pair.split(",")
        if len(values) != 2:
            raise SourceError(f"{xml.name}: {ref}: malformed polygon point {pair!r} (expected 'x,y')")
        coordinates += [number(v, xml, ref, "polygon coordinate") for v in values]
    return coordinates


def _rotated_hull(x1: float, y1: float, x2: float, y2: float, degrees: float) -> list[float]:
    """Axis-aligned box around a box rotated by ``degrees`` (clockwise, about its centre, as CVAT draws it)."""
    cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
    half_w, half_h = (x2 - x1) / 2, (y2 - y1) / 2
    c, s = abs(math.cos(math.radians(degrees))), abs(math.sin(math.radians(degrees)))
    hw, hh = half_w * c + half_h * s, half_w * s + half_h * c
    return [cx - hw, cy - hh, 2 * hw, 2 * hh]


def _xml(path: Path) -> Path:
    if path.is_dir():
        candidates = [path / "annotations.xml", *sorted(path.glob("*.xml"))]
        found = next((c for c in candidates if c.is_file()), None)
        if found is None:
            raise SourceError(f"CVAT export {path} holds no annotations.xml")
        return found
    if not path.is_file():
        raise SourceError(f"CVAT file {path} does not exist")
    return path


def read_cvat(path: Path, images: Path | None = None) -> SampleTable:
    """A CVAT for images 1.1 XML -> samples (every ``<image>``) and objects."""
    from defusedxml import ElementTree

    xml = _xml(Path(path))
    try:
        root = ElementTree.parse(xml).getroot()
    except Exception as exc:  # ParseError, or defusedxml refusing an entity bomb
        raise SourceError(f"CVAT file {xml} is not valid XML: {exc}") from exc
    if root.tag != "annotations":
        raise SourceError(f"CVAT file {xml}: the root element is <{root.tag}>, not <annotations>")
    if root.find("track") is not None:
        raise SourceError(f"CVAT file {xml} is a video export (<track>); export the task as 'CVAT for images 1.1'")
    known_labels = {(_n.text or "").strip() for _n in root.iterfind("meta//labels/label/name")}
    here = xml.parent
    roots = [Path(images)] if images else [p for p in (here / "images", here / "data", here) if p.is_dir()]
    index = ImageIndex(roots)
    records = ObjectRecords(xml)
    ignored: Counter[str] = Counter()
    rows, tags = [], {}
    seen_ids: dict[tuple[str, str], str] = {}
    for k, image in enumerate(root.iter("image")):
        name = image.get("name")
        if not name:
            raise SourceError(f"{xml.name}: <image> #{k} has no name")
        image_id = image.get("id", str(k))
        subset = image.get("subset")
        sample_id = f"{subset}/{name}" if subset and (here / "images" / subset).is_dir() else name
        key = (image.get("task_id", ""), image_id)  # project exports number images per task
        if key in seen_ids:
            raise SourceError(f"{xml.name}: duplicate image id {image_id} ({seen_ids[key]!r} and {name!r})")
        seen_ids[key] = name
        file = index.find(sample_id) or index.locate(name)
        split = subset.lower() if subset else DEFAULT_SPLIT
        rows.append((sample_id, file, split_from_name(split) if split_from_name(split) != DEFAULT_SPLIT else split))
        width = int(number(image.get("width", 0), xml, f"image {name!r}", "width")) if image.get("width") else 0
        height = int(number(image.get("height", 0), xml, f"image {name!r}", "height")) if image.get("height") else 0
        image_tags = [t.get("label", "") for t in image.findall("tag")]
        if len(image_tags) == 1:
            tags[sample_id] = image_tags[0]
        shapes = [s for s in image if s.tag in ("box", "polygon", "mask", "ellipse")]
        for s in image:
            if s.tag in _IGNORED:
                ignored[s.tag] += 1
        if shapes and not (width and height):
            width, height = image_size(file) or (0, 0)
        for n, shape in enumerate(shapes):
            ref = f"image {name!r} {shape.tag} #{n}"
            label = shape.get("label")
            if not label:
                raise SourceError(f"{xml.name}: {ref} has no label")
            if known_labels and label not in known_labels:
                raise SourceError(f"{xml.name}: {ref}: unknown label {label!r} (task labels: "
                                  f"{', '.join(sorted(known_labels))})")
            box, mask = _geometry(shape, width, height, xml, ref)
            attributes = _attributes(shape)
            records.add(f"{sample_id}#{n}", sample_id, label, box, width, height, source=f"{xml.name} {ref}",
                        mask=mask, iscrowd=attributes.get("iscrowd", "0") in ("1", "true", "True"),
                        annotator=attributes.get("annotator", ""))
    samples = image_samples(rows, label=tags, what=xml.name)
    description = {"kind": "cvat", "path": str(xml.resolve()), "ignored_shapes": dict(ignored),
                   "labels": sorted(known_labels)}
    return object_table(samples, records.table(), description)


def _geometry(shape: Element, width: int, height: int, xml: Path, ref: str) -> tuple[list[float], str | None]:
    from audit.geometry import mask_to_rle

    if shape.tag in ("box", "ellipse"):
        if shape.tag == "box":
            x1, y1, x2, y2 = (number(shape.get(k), xml, ref, k) for k in ("xtl", "ytl", "xbr", "ybr"))
        else:
            cx, cy, rx, ry = (number(shape.get(k), xml, ref, k) for k in ("cx", "cy", "rx", "ry"))
            x1, y1, x2, y2 = cx - rx, cy - ry, cx + rx, cy + ry
        rotation = number(shape.get("rotation", 0), xml, ref, "rotation")
        if rotation % 180:
            return _rotated_hull(x1, y1, x2, y2, rotation), None
        return [x1, y1, x2 - x1, y2 - y1], None
    if shape.tag == "polygon":
        coordinates = _points(shape, xml, ref)
        mask = polygon_mask([coordinates], height, width, xml, ref)
        xs, ys = coordinates[0::2], coordinates[1::2]
        return [min(xs), min(ys), max(xs) - min(xs), max(ys) - min(ys)], mask
    # <mask>
    try:
        counts = [int(v) for v in shape.get("rle", "").replace(" ", "").split(",") if v != ""]
        left, top, box_width, box_height = (int(shape.get(k, "")) for k in ("left", "top", "width", "height"))
    except ValueError:
        raise SourceError(f"{xml.name}: {ref}: malformed mask (rle, left, top, width and height must be "
                          "integers)") from None
    if not counts or any(c < 0 for c in counts) or sum(counts) != box_width * box_height:
        raise SourceError(f"{xml.name}: {ref}: malformed mask: the RLE runs sum to {sum(counts)}, not "
                          f"width x height = {box_width * box_height}")
    full = cvat_rle_to_mask(counts, left, top, box_width, box_height, width, height)
    mask = mask_to_rle(full)
    return mask_box(mask, height, width), mask
