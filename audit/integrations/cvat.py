"""CVAT: the review queue as a "CVAT for images 1.1" annotation file, and the reviewers' verdicts read back.

CVAT's server is not something we can install, so this is the file format only (the format CVAT's *Upload
annotations* and *Export task dataset* use; see https://docs.cvat.ai/docs/other/xml_format/). Create a CVAT task
with the queue's images (:func:`write_images_zip` packs them under the names the XML uses), upload the XML, review,
export as "CVAT for images 1.1", and read it back with :func:`read_cvat_xml`.

Each image item is a ``<tag>`` whose label is the *given* label; each object item a ``<box>``. Every shape carries
text attributes ``item_id``, ``sample_id``, ``given_label``, ``suggested_label``, ``score``, ``reason``,
``content_hash`` (ledger fields, so the file alone is enough to import) and a ``review`` select
(``unreviewed``, ``correct``, ``wrong``, ``unsure``).
Reading back: a shape whose label differs from ``given_label`` -> ``wrong`` with that label as the correction;
otherwise the ``review`` attribute decides (``wrong`` without a label change: wrong, no better label known);
``unreviewed`` with the label unchanged -> no verdict. A shape the reviewer added (no ``item_id``) is ignored; a
deleted one is simply absent (no verdict).
"""

from __future__ import annotations

import io
import os
import xml.etree.ElementTree as ET
import zipfile
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from audit.results import atomic_write_bytes
from audit.review import LEDGER_COLUMNS, OBJECT_BOX_COLUMNS, ReviewError, normalise_ledger

TOOL = "cvat"
FORMAT_VERSION = "1.1"
REVIEW_ATTRIBUTE = "review"
REVIEW_VALUES = ("unreviewed", "correct", "wrong", "unsure")
TEXT_ATTRIBUTES = ("item_id", "sample_id", "given_label", "suggested_label", "score", "reason", "content_hash")
# From CVAT's XML format documentation (version 1.1).
LABEL_TYPES = ("any", "bbox", "rectangle", "cuboid", "ellipse", "mask", "polygon", "polyline", "points", "skeleton",
               "tag")
INPUT_TYPES = ("select", "checkbox", "radio", "number", "text")
MODES = ("annotation", "interpolation")
SHAPES = ("box", "polygon", "polyline", "points", "tag", "skeleton", "mask", "ellipse", "cuboid")


class CvatFormatError(ReviewError):
    """The file is not CVAT for images 1.1 as documented (the message names the element at fault)."""


# ------------------------------------------------------------------------------------------------- writing


def _common_root(paths: Sequence[str]) -> Path:
    parents = [str(Path(p).resolve().parent) for p in paths]
    return Path(os.path.commonpath(parents)) if parents else Path(".")


def image_names(filepaths: Sequence[str], image_root: str | os.PathLike | None = None) -> dict[str, str]:
    """``{filepath: name in the CVAT task}``: the path relative to ``image_root`` (default: the images' common
    folder), with ``/`` separators, as CVAT keeps it for files uploaded in a folder or zip."""
    root = Path(image_root).resolve() if image_root is not None else _common_root(filepaths)
    names = {}
    for path in filepaths:
        try:
            names[path] = Path(path).resolve().relative_to(root).as_posix()
        except ValueError as exc:
            raise ReviewError(f"image {path} is not under the CVAT image root {root}") from exc
    return names


def _image_size(row: pd.Series) -> tuple[int, int]:
    width, height = row.get("image_width"), row.get("image_height")
    if width is not None and height is not None and not pd.isna(width) and not pd.isna(height):
        return int(width), int(height)
    from PIL import Image

    with Image.open(row["filepath"]) as image:
        return image.size


def _text(value: Any) -> str:
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return ""
    if isinstance(value, float | np.floating):
        return repr(float(value))
    return str(value)


def _sub(parent: ET.Element, tag: str, text: str | None = None, **attrib: str) -> ET.Element:
    element = ET.SubElement(parent, tag, attrib)
    if text is not None:
        element.text = text
    return element


def _labels(parent: ET.Element, class_names: Sequence[str]) -> None:
    labels = _sub(parent, "labels")
    for name in class_names:
        label = _sub(labels, "label")
        _sub(label, "name", name)
        _sub(label, "type", "any")
        attributes = _sub(label, "attributes")
        for attribute in TEXT_ATTRIBUTES:
            element = _sub(attributes, "attribute")
            _sub(element, "name", attribute)
            _sub(element, "mutable", "False")
            _sub(element, "input_type", "text")
            _sub(element, "default_value", "")
            _sub(element, "values", "")
        element = _sub(attributes, "attribute")
        _sub(element, "name", REVIEW_ATTRIBUTE)
        _sub(element, "mutable", "False")
        _sub(element, "input_type", "select")
        _sub(element, "default_value", REVIEW_VALUES[0])
        _sub(element, "values", "\n".join(REVIEW_VALUES))


def cvat_xml(queue: pd.DataFrame, class_names: Sequence[str], *, task_name: str = "label-audit review",
             image_root: str | os.PathLike | None = None, task_id: int = 0,
             created: datetime | None = None) -> bytes:
    """The review queue as CVAT for images 1.1 XML (UTF-8 bytes)."""
    names = [str(c) for c in class_names]
    if len(set(names)) != len(names) or not names:
        raise ReviewError("CVAT labels need a non-empty list of distinct class names")
    if "filepath" not in queue.columns:
        raise ReviewError("the review queue has no 'filepath' column; build it with audit.review.build_review_queue")
    rows = normalise_ledger(queue, where="review queue").reset_index()
    extra = queue.reset_index(drop="item_id" in queue.columns)  # same row order as ``rows``
    for column in ("filepath", *OBJECT_BOX_COLUMNS):
        if column in extra.columns:
            rows[column] = extra[column].to_numpy()
    rows = rows.set_index("item_id")
    unknown = sorted({v for v in pd.concat([rows["given_label"], rows["suggested_label"]]).dropna()} - set(names))
    if unknown:
        raise ReviewError(f"labels {unknown[:5]} of the review queue are not among the class names")
    files = sorted({str(p) for p in rows["filepath"]})
    missing = [p for p in files if not Path(p).is_file()]
    if missing:
        raise ReviewError(f"images of the review queue do not exist: {missing[:3]}")
    by_file = image_names(files, image_root)
    order = sorted(files, key=lambda p: by_file[p])  # CVAT numbers images in lexical order of their names
    now = (created or datetime.now(UTC)).isoformat(sep=" ")
    root = ET.Element("annotations")
    _sub(root, "version", FORMAT_VERSION)
    meta = _sub(root, "meta")
    task = _sub(meta, "task")
    for tag, text in (("id", str(task_id)), ("name", task_name), ("size", str(len(order))), ("mode", "annotation"),
                      ("overlap", "0"), ("bugtracker", ""), ("flipped", "False"), ("created", now),
                      ("updated", now)):
        _sub(task, tag, text)
    _labels(task, names)
    segments = _sub(task, "segments")
    segment = _sub(segments, "segment")
    for tag, text in (("id", "0"), ("start", "0"), ("stop", str(max(len(order) - 1, 0))), ("url", "")):
        _sub(segment, tag, text)
    owner = _sub(task, "owner")
    _sub(owner, "username", "label-audit")
    _sub(owner, "email", "")
    _sub(meta, "dumped", now)
    for index, path in enumerate(order):
        items = rows[rows["filepath"].astype(str) == path]
        width, height = _image_size(items.iloc[0])
        image = _sub(root, "image", id=str(index), name=by_file[path], width=str(width), height=str(height))
        for item_id, row in items.iterrows():
            if row["given_label"] is None:
                raise ReviewError(f"review item {item_id!r} has no given label to review")
            if row["item_kind"] == "object":
                x, y, w, h = (float(row[c]) for c in ("x", "y", "w", "h"))
                shape = _sub(image, "box", label=row["given_label"], source="manual", occluded="0",
                             xtl=f"{x:.2f}", ytl=f"{y:.2f}", xbr=f"{x + w:.2f}", ybr=f"{y + h:.2f}", z_order="0")
            else:
                shape = _sub(image, "tag", label=row["given_label"], source="manual")
            values = {**row.to_dict(), "item_id": str(item_id)}
            for attribute in TEXT_ATTRIBUTES:
                _sub(shape, "attribute", _text(values[attribute]), name=attribute)
            _sub(shape, "attribute", REVIEW_VALUES[0], name=REVIEW_ATTRIBUTE)
    ET.indent(root, space="  ")
    buffer = io.BytesIO()
    ET.ElementTree(root).write(buffer, encoding="utf-8", xml_declaration=True)
    return buffer.getvalue()


def write_cvat_xml(queue: pd.DataFrame, path: str | os.PathLike, class_names: Sequence[str], *,
                   task_name: str = "label-audit review", image_root: str | os.PathLike | None = None) -> Path:
    """Write :func:`cvat_xml` to ``path`` (atomically); returns the path."""
    path = Path(path)
    atomic_write_bytes(path, cvat_xml(queue, class_names, task_name=task_name, image_root=image_root))
    return path


def write_images_zip(queue: pd.DataFrame, path: str | os.PathLike,
                     image_root: str | os.PathLike | None = None) -> Path:
    """The queue's images in a zip under the names the XML uses, to create the CVAT task from."""
    files = sorted({str(p) for p in queue["filepath"]})
    names = image_names(files, image_root)
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_STORED) as archive:
        for file in sorted(files, key=lambda p: names[p]):
            archive.write(file, names[file])
    path = Path(path)
    atomic_write_bytes(path, buffer.getvalue())
    return path


# ------------------------------------------------------------------------------------------------- reading


def _fail(where: str, message: str) -> None:
    raise CvatFormatError(f"{where}: {message}")


def _int(where: str, element: ET.Element, attribute: str) -> int:
    value = element.get(attribute)
    try:
        return int(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        _fail(where, f"<{element.tag}> attribute {attribute}={value!r} is not an integer")
    raise AssertionError  # unreachable


def _float(where: str, element: ET.Element, attribute: str) -> float:
    value = element.get(attribute)
    try:
        return float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        _fail(where, f"<{element.tag}> attribute {attribute}={value!r} is not a number")
    raise AssertionError  # unreachable


def validate_cvat_xml(root: ET.Element, where: str = "CVAT XML") -> dict[str, dict[str, dict[str, Any]]]:
    """Check the structure CVAT documents for "CVAT for images 1.1"; returns ``{label: {attribute: spec}}``.

    Checked: root ``<annotations>`` with ``<version>1.1</version>``; ``meta/task`` with ``id, name, size, mode``
    (``annotation``/``interpolation``) and ``labels/label`` each with a ``name``, an optional ``type`` from the
    documented list and ``attributes/attribute`` with ``name, mutable (True/False), input_type (select, checkbox,
    radio, number, text), default_value, values``; one ``<image>`` per frame with integer ``id`` (unique),
    ``name`` (unique), ``width``, ``height``; their count equals ``size`` in annotation mode; ``<box>`` with
    numeric ``xtl <= xbr``, ``ytl <= ybr`` and ``occluded`` 0/1; ``<tag>`` with a ``label``; every shape's label
    declared, every ``<attribute name=...>`` declared for that label, select values among the declared values.
    """
    if root.tag != "annotations":
        _fail(where, f"the root element is <{root.tag}>, not <annotations>")
    version = root.findtext("version")
    if (version or "").strip() != FORMAT_VERSION:
        _fail(where, f"<version> is {version!r}; this reader knows CVAT for images {FORMAT_VERSION}")
    task = next((e for e in (root.find(f"meta/{t}") for t in ("task", "job", "project")) if e is not None), None)
    if task is None:
        _fail(where, "no <meta><task> (nor <job>, <project>) element")
    for tag in ("id", "name", "size", "mode") if task.tag == "task" else ():
        if task.find(tag) is None:
            _fail(where, f"<meta><task> has no <{tag}>")
    mode = (task.findtext("mode") or "annotation").strip()
    if mode not in MODES:
        _fail(where, f"<mode> is {mode!r}, not one of {', '.join(MODES)}")
    labels: dict[str, dict[str, dict[str, Any]]] = {}
    for label in task.findall("labels/label") or root.findall("meta/project/labels/label"):
        name = label.findtext("name")
        if name is None:
            _fail(where, "a <label> has no <name>")
        kind = (label.findtext("type") or "any").strip()
        if kind not in LABEL_TYPES:
            _fail(where, f"label {name!r} has type {kind!r}, not one of {', '.join(LABEL_TYPES)}")
        specs: dict[str, dict[str, Any]] = {}
        for attribute in label.findall("attributes/attribute"):
            attribute_name = attribute.findtext("name")
            if attribute_name is None:
                _fail(where, f"an attribute of label {name!r} has no <name>")
            mutable = (attribute.findtext("mutable") or "").strip()
            input_type = (attribute.findtext("input_type") or "").strip()
            if mutable not in ("True", "False"):
                _fail(where, f"attribute {attribute_name!r} of label {name!r}: <mutable> {mutable!r} is not True/False")
            if input_type not in INPUT_TYPES:
                _fail(where, f"attribute {attribute_name!r} of label {name!r}: <input_type> {input_type!r} is not one "
                             f"of {', '.join(INPUT_TYPES)}")
            for tag in ("default_value", "values"):
                if attribute.find(tag) is None:
                    _fail(where, f"attribute {attribute_name!r} of label {name!r} has no <{tag}>")
            values = (attribute.findtext("values") or "").split("\n")
            specs[attribute_name] = {"input_type": input_type, "values": values,
                                     "default_value": attribute.findtext("default_value") or ""}
        labels[name] = specs
    images = root.findall("image")
    ids, names = set(), set()
    for image in images:
        image_id = _int(where, image, "id")
        name = image.get("name")
        spot = f"{where}, image {name!r}"
        if not name:
            _fail(where, f"<image id={image_id}> has no name")
        if image_id in ids or name in names:
            _fail(spot, f"image id {image_id} or name repeats")
        ids.add(image_id)
        names.add(name)
        for attribute in ("width", "height"):
            if _int(spot, image, attribute) <= 0:
                _fail(spot, f"{attribute} must be positive")
        for shape in image:
            if shape.tag not in SHAPES:
                _fail(spot, f"<{shape.tag}> is not a CVAT for images shape")
            label = shape.get("label")
            if label not in labels:
                _fail(spot, f"<{shape.tag}> has label {label!r}, not declared in <meta><labels>")
            if shape.tag == "box":
                xtl, ytl = _float(spot, shape, "xtl"), _float(spot, shape, "ytl")
                xbr, ybr = _float(spot, shape, "xbr"), _float(spot, shape, "ybr")
                if xbr < xtl or ybr < ytl:
                    _fail(spot, f"<box> corners are reversed ({xtl},{ytl})-({xbr},{ybr})")
                if shape.get("occluded") not in ("0", "1"):
                    _fail(spot, f"<box> occluded={shape.get('occluded')!r} is not 0 or 1")
            for attribute in shape.findall("attribute"):
                attribute_name = attribute.get("name")
                spec = labels[label].get(attribute_name)
                if spec is None:
                    _fail(spot, f"attribute {attribute_name!r} is not declared for label {label!r}")
                if spec["input_type"] in ("select", "radio") and (attribute.text or "") not in spec["values"]:
                    _fail(spot, f"attribute {attribute_name!r} = {attribute.text!r} is not one of {spec['values']}")
    size = task.findtext("size")
    if mode == "annotation" and size is not None and task.tag == "task" and int(size) != len(images):
        _fail(where, f"<size> says {size} images but the file has {len(images)} <image> elements")
    return labels


def read_cvat_xml(path: str | os.PathLike, *, reviewer: str | None = None,
                  reviewed_at: datetime | None = None) -> pd.DataFrame:
    """Ledger rows from a CVAT for images 1.1 file written by :func:`write_cvat_xml` and reviewed in CVAT.

    One row per exported shape still in the file (verdict None where the reviewer left it untouched).
    ``reviewer`` defaults to the task owner named in the file, ``reviewed_at`` to its ``<dumped>`` time (when
    CVAT exported the answers).
    """
    path = Path(path)
    try:
        root = ET.parse(path).getroot()
    except (OSError, ET.ParseError) as exc:
        raise CvatFormatError(f"CVAT XML {path} could not be read: {exc}") from exc
    validate_cvat_xml(root, where=str(path))
    meta = root.find("meta")
    reviewer = reviewer or root.findtext("meta/task/owner/username") or root.findtext("meta/project/owner/username")
    reviewer = reviewer or None
    if reviewed_at is None:
        dumped = meta.findtext("dumped") if meta is not None else None
        reviewed_at = pd.Timestamp(dumped).tz_convert("UTC") if dumped and pd.Timestamp(dumped).tzinfo else (
            pd.Timestamp(dumped, tz="UTC") if dumped else pd.Timestamp.now(tz="UTC"))
    rows = []
    for image in root.findall("image"):
        for shape in image:
            attributes = {a.get("name"): a.text or "" for a in shape.findall("attribute")}
            if not attributes.get("item_id"):
                continue
            given = attributes.get("given_label") or None
            label = shape.get("label")
            review = attributes.get(REVIEW_ATTRIBUTE, REVIEW_VALUES[0])
            if label != given:
                verdict, corrected = "wrong", label
            elif review == "unreviewed":
                verdict, corrected = None, None
            else:
                verdict, corrected = review, None
            score = attributes.get("score")
            rows.append({
                "item_id": attributes["item_id"], "item_kind": "object" if shape.tag == "box" else "image",
                "sample_id": attributes.get("sample_id") or None, "content_hash": attributes.get("content_hash"),
                "given_label": given, "suggested_label": attributes.get("suggested_label") or None,
                "score": float(score) if score else np.nan, "reason": attributes.get("reason") or None,
                "verdict": verdict, "corrected_label": corrected, "tool": TOOL,
                "reviewer": reviewer if verdict else None, "reviewed_at": reviewed_at if verdict else None,
            })
    return normalise_ledger(pd.DataFrame(rows, columns=LEDGER_COLUMNS), where=str(path))
