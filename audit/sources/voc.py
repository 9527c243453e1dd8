"""Pascal VOC XML as an object source.

``kind: voc``, ``path`` = a VOC root (``Annotations/*.xml``, images in ``JPEGImages/``, splits from
``ImageSets/Main/{train,val,test}.txt``), FiftyOne's VOC export (``labels/*.xml`` + ``data/``), or a folder of
XML files (images under ``images`` (config), the XML's ``<path>``, or beside the XMLs).

Each ``<object>`` needs ``<name>`` and ``<bndbox>`` (``xmin ymin xmax ymax``). The box is taken as corner
coordinates, ``x = xmin, w = xmax - xmin`` (the convention of FiftyOne, CVAT and Datumaro; Pascal's original
1-based inclusive pixels differ by at most one pixel). ``<size>`` gives the image size; without it the image
header is read. ``difficult`` / ``truncated`` / ``occluded`` are kept out of the table (no column for them).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from audit.sources.objects import (
    ImageIndex,
    ObjectRecords,
    image_samples,
    image_size,
    load_object_source,
    number,
    object_table,
)
from audit.sources.table import DEFAULT_SPLIT, SampleTable, SourceError, register_format

if TYPE_CHECKING:
    from xml.etree.ElementTree import Element

    from audit.config import SourceConfig

_SPLIT_FILES = ("train", "val", "test")


@register_format("voc", needs=("path|annotator_files",),
                 description="Pascal VOC XML (Annotations/ + JPEGImages/, or a folder of XMLs)")
def load_voc_source(config: SourceConfig) -> SampleTable:
    return load_object_source(config, read_voc)


def _layout(path: Path, images: Path | None) -> tuple[list[Path], list[Path], Path | None]:
    """(XML files, image roots, ImageSets/Main folder or None)."""
    if path.is_file():
        return [path], [Path(images)] if images else [path.parent], None
    if not path.is_dir():
        raise SourceError(f"VOC dataset {path} does not exist")
    if (path / "Annotations").is_dir():
        xml_dir, default_images = path / "Annotations", [path / "JPEGImages", path / "images"]
    elif (path / "labels").is_dir() and any((path / "labels").glob("*.xml")):
        xml_dir, default_images = path / "labels", [path / "data"]
    else:
        xml_dir, default_images = path, [path / "images", path / "JPEGImages", path]
    xmls = sorted(xml_dir.rglob("*.xml"))
    if not xmls:
        raise SourceError(f"VOC dataset {path} holds no XML annotation files (looked in {xml_dir})")
    sets = path / "ImageSets" / "Main"
    return xmls, [Path(images)] if images else default_images, sets if sets.is_dir() else None


def _splits(sets: Path | None) -> dict[str, str]:
    """Image stem -> split from ``ImageSets/Main/{train,val,test}.txt`` (``trainval`` only when alone)."""
    if sets is None:
        return {}
    out: dict[str, str] = {}
    names = [n for n in _SPLIT_FILES if (sets / f"{n}.txt").is_file()] or (
        ["trainval"] if (sets / "trainval.txt").is_file() else [])
    for name in names:
        for line in (sets / f"{name}.txt").read_text(encoding="utf-8").split("\n"):
            stem = line.split()[0] if line.split() else ""
            if stem:
                out.setdefault(stem, name)
    return out


def _text(element: Element, tag: str) -> str | None:
    found = element.find(tag)
    return found.text.strip() if found is not None and found.text and found.text.strip() else None


def _parse(file: Path) -> Element:
    from defusedxml import ElementTree

    try:
        root = ElementTree.parse(file).getroot()
    except Exception as exc:  # ParseError, or defusedxml refusing an entity bomb
        raise SourceError(f"VOC file {file} is not valid XML: {exc}") from exc
    if root.tag != "annotation":
        raise SourceError(f"VOC file {file}: the root element is <{root.tag}>, not <annotation>")
    return root


def read_voc(path: Path, images: Path | None = None) -> SampleTable:
    """VOC XMLs -> samples (one per XML) and objects."""
    path = Path(path)
    xmls, roots, sets = _layout(path, images)
    index = ImageIndex(roots)
    split_of = _splits(sets)
    first = xmls[0]
    records = ObjectRecords(path if path.is_file() else first.parent)
    rows = []
    owner: dict[str, Path] = {}
    for xml in xmls:
        root = _parse(xml)
        name = _text(root, "filename") or f"{xml.stem}.jpg"
        listed = _text(root, "path")
        file = index.find(name) or (Path(listed) if listed and Path(listed).is_file() else None) or index.locate(name)
        sample_id = Path(name).as_posix()
        if sample_id in owner:
            raise SourceError(f"{xml}: duplicate image {sample_id!r} (also annotated in {owner[sample_id].name})")
        owner[sample_id] = xml
        rows.append((sample_id, file, split_of.get(Path(name).stem, split_of.get(xml.stem, DEFAULT_SPLIT))))
        objects = root.findall("object")
        if not objects:
            continue
        width, height = _size(root, xml, file)
        for k, obj in enumerate(objects):
            ref = f"object #{k}"
            label = _text(obj, "name")
            if label is None:
                raise SourceError(f"{xml}: {ref} has no <name>")
            box = obj.find("bndbox")
            if box is None:
                raise SourceError(f"{xml}: {ref} ({label}) has no <bndbox>")
            corners = []
            for tag in ("xmin", "ymin", "xmax", "ymax"):
                value = _text(box, tag)
                if value is None:
                    raise SourceError(f"{xml}: {ref} ({label}): <bndbox> lacks <{tag}>")
                corners.append(number(value, xml, ref, tag))
            x1, y1, x2, y2 = corners
            score = _text(obj, "score") or _text(obj, "confidence")
            records.add(f"{sample_id}#{k}", sample_id, label, [x1, y1, x2 - x1, y2 - y1], width, height,
                        source=f"{xml.name} {ref}", iscrowd=_text(obj, "iscrowd") in ("1", "true", "True"),
                        annotator=_text(obj, "annotator") or "",
                        score=number(score, xml, ref, "score") if score else float("nan"))
    samples = image_samples(rows, what=f"VOC dataset {path}")
    description = {"kind": "voc", "path": str(path.resolve())}
    return object_table(samples, records.table(), description)


def _size(root: Element, xml: Path, file: Path) -> tuple[int, int]:
    size = root.find("size")
    if size is not None and _text(size, "width") and _text(size, "height"):
        width = int(number(_text(size, "width"), xml, "<size>", "width"))
        height = int(number(_text(size, "height"), xml, "<size>", "height"))
        if width > 0 and height > 0:
            return width, height
    found = image_size(file)
    if found is None:
        raise SourceError(f"{xml}: no usable <size> and the image {file} cannot be read to find it")
    return found
