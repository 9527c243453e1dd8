"""CVAT for images 1.1 on real files: FiftyOne's CVAT exporter (boxes, polygons, tags), a project export with
``<mask>`` shapes written the way CVAT's own dumper writes them, and the errors bad files must give."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from audit.config import SourceConfig
from audit.sources import SourceError, load_source
from tests.sources import object_data as od


@pytest.fixture(scope="session")
def data(tmp_path_factory):
    built = od.object_data(tmp_path_factory)
    yield built
    od.delete_dataset(built)


@pytest.fixture(scope="session")
def photos(tmp_path_factory):
    return od.photo_data(tmp_path_factory)


@pytest.mark.fiftyone
def test_fiftyone_cvat_export_boxes_polygons_and_tags(data):
    table = load_source(SourceConfig(kind="cvat", path=data.exports["cvat"]))
    assert sorted(od.image_of(p) for p in table.samples["filepath"]) == sorted(data.images)
    assert table.samples["readable"].all()
    # the one tag of each image is its label
    tags = {od.image_of(p): t for p, t in zip(table.samples["filepath"], table.samples["label"], strict=True)}
    assert tags == {name: f"scene_{split}" for name, split in data.splits.items()}
    boxes = table.objects[table.objects["mask"].isna()]
    polygons = table.objects[table.objects["mask"].notna()]
    assert len(boxes) == len(polygons) == len(data.truth)
    loaded_boxes, loaded_polygons = od.by_image_and_label(table, boxes), od.by_image_and_label(table, polygons)
    for truth in data.truth:
        box = loaded_boxes[(truth.image, truth.label)]
        assert (box.x, box.y, box.w, box.h) == truth.box
        assert bool(box.iscrowd) == truth.iscrowd  # FiftyOne writes iscrowd as a shape attribute
        polygon = loaded_polygons[(truth.image, truth.label)]
        width, height = data.sizes[truth.image]
        assert od.mask_iou(od.decode(polygon["mask"], width, height), truth.mask) > 0.8
        assert np.allclose([polygon.x, polygon.y, polygon.w, polygon.h], truth.box, atol=1.0)


# ------------------------------------------------------------------------------------------------ <mask>


def cvat_runs(crop: np.ndarray) -> list[int]:
    """cvat-core's mask2Rle: run lengths of the row-major crop, the first run counting background pixels."""
    runs: list[int] = []
    for index, value in enumerate(crop.ravel().astype(int)):
        if index == 0:
            runs += [0, 1] if value else [1]
        elif value == crop.ravel()[index - 1]:
            runs[-1] += 1
        else:
            runs.append(1)
    return runs


def mask_element(obj: od.TrueObject, attributes: str = "") -> str:
    """A ``<mask>`` as CVAT's exporter dumps it: ``rle`` (``", "``-joined runs), ``left top width height``."""
    x, y, w, h = obj.box
    runs = cvat_runs(obj.mask[y:y + h, x:x + w])
    return (f'<mask label="{obj.label}" source="manual" occluded="0" rle="{", ".join(map(str, runs))}" '
            f'left="{x}" top="{y}" width="{w}" height="{h}" z_order="0">{attributes}</mask>')


def project_export(data: od.ObjectData, folder: Path, shapes: dict[str, str] | None = None,
                   labels: list[str] | None = None) -> Path:
    """A CVAT project export (``subset``/``task_id`` on images, images under ``images/<subset>/``)."""
    labels = labels or od.CLASSES
    meta = "".join(f"<label><name>{n}</name><type>any</type><attributes></attributes></label>" for n in labels)
    images = []
    for k, (name, (width, height)) in enumerate(data.sizes.items()):
        subset = data.splits[name].capitalize()
        (folder / "images" / subset).mkdir(parents=True, exist_ok=True)
        (folder / "images" / subset / name).write_bytes(data.images[name].read_bytes())
        body = (shapes or {}).get(name, "".join(mask_element(o) for o in data.objects_of(name)))
        images.append(f'<image id="{k}" name="{name}" subset="{subset}" task_id="{1 if subset == "Train" else 2}" '
                      f'width="{width}" height="{height}">{body}</image>')
    xml = folder / "annotations.xml"
    xml.write_text(f'<?xml version="1.0" encoding="utf-8"?>\n<annotations><version>1.1</version><meta><project>'
                   f"<id>1</id><name>digits</name><labels>{meta}</labels><subsets>Train\nVal</subsets></project>"
                   f"</meta>{''.join(images)}</annotations>")
    return xml


def test_cvat_masks_subsets_and_other_shapes(photos, tmp_path):
    data = photos
    astronaut = data.objects_of("astronaut.png")
    extra = {"astronaut.png": "".join(mask_element(o, '<attribute name="annotator">ann</attribute>')
                                      for o in astronaut)
             + '<polyline label="one" source="manual" occluded="0" points="1.00,2.00;3.00,4.00" z_order="0"/>'
             + '<points label="one" source="manual" occluded="0" points="5.00,6.00" z_order="0"/>'
             + '<box label="two" source="manual" occluded="0" xtl="40.00" ytl="40.00" xbr="60.00" ybr="50.00" '
               'rotation="30.00" z_order="0"/>'
             + '<tag label="one" source="manual"/><tag label="two" source="manual"/>'}
    xml = project_export(data, tmp_path / "project", extra)
    table = load_source(SourceConfig(kind="cvat", path=tmp_path / "project"))
    assert table.samples.loc["Train/coffee.jpg", "split"] == "train"
    assert table.samples.loc["Val/rocket.jpg", "split"] == "val"
    assert table.samples["readable"].all() and table.samples["label"].isna().all(), "two tags: no single label"
    assert table.description["ignored_shapes"] == {"polyline": 1, "points": 1}
    masks = table.objects[table.objects["mask"].notna()]
    loaded = od.by_image_and_label(table, masks)
    assert len(loaded) == len(data.truth)
    for truth in data.truth:
        row = loaded[(truth.image, truth.label)]
        width, height = data.sizes[truth.image]
        assert np.array_equal(od.decode(row["mask"], width, height), truth.mask)
        assert (row.x, row.y, row.w, row.h) == truth.box
        assert row.annotator == ("ann" if truth.image == "astronaut.png" else "")
    rotated = table.objects[table.objects["mask"].isna()].iloc[0]
    c, s = math.cos(math.radians(30)), math.sin(math.radians(30))
    half_w, half_h = 10 * c + 5 * s, 10 * s + 5 * c  # hull of a 20 x 10 box turned 30 degrees about its centre
    assert (rotated.x, rotated.y, rotated.w, rotated.h) == pytest.approx((50 - half_w, 45 - half_h, 2 * half_w,
                                                                          2 * half_h))
    assert xml.name == "annotations.xml"


def _image(body: str, name: str = "a.png", extra: str = "") -> str:
    return f'<image id="0" name="{name}" width="64" height="32"{extra}>{body}</image>'


@pytest.mark.parametrize(("images", "message"), [
    (_image('<box label="dog" xtl="1" ytl="1" xbr="5" ybr="5"/>'),
     r"annotations.xml: image 'a.png' box #0: unknown label 'dog' \(task labels: cat\)"),
    (_image('<polygon label="cat" points="1,1;5,1;5"/>'),
     r"annotations.xml: image 'a.png' polygon #0: malformed polygon point '5'"),
    (_image('<polygon label="cat" points="1,1;5,1"/>'),
     r"annotations.xml: image 'a.png' polygon #0: malformed polygon \(ring 0 has 4 coordinates"),
    (_image('<mask label="cat" rle="3, 4" left="0" top="0" width="3" height="3"/>'),
     r"image 'a.png' mask #0: malformed mask: the RLE runs sum to 7, not width x height = 9"),
    (_image('<box label="cat" xtl="a" ytl="1" xbr="5" ybr="5"/>'), r"image 'a.png' box #0: xtl 'a' is not a number"),
    (_image("") + _image("", name="b.png"), r"annotations.xml: duplicate image id 0 \('a.png' and 'b.png'\)"),
    ('<track id="0" label="cat"><box frame="0" xtl="1" ytl="1" xbr="2" ybr="2"/></track>',
     r"is a video export \(<track>\)"),
])
def test_bad_cvat_files_name_the_file_and_the_record(tmp_path, images, message):
    xml = tmp_path / "annotations.xml"
    xml.write_text('<annotations><version>1.1</version><meta><task><labels><label><name>cat</name></label>'
                   f"</labels></task></meta>{images}</annotations>")
    with pytest.raises(SourceError, match=message):
        load_source(SourceConfig(kind="cvat", path=xml))


def test_cvat_mask_runs_decode_row_major_from_background(tmp_path):
    """A hand-checked ``<mask>``: a 3 x 2 rectangle at (2, 1) whose runs 1, 2, 2, 1 mean rows 0 1 1 / 0 0 1."""
    xml = tmp_path / "annotations.xml"
    xml.write_text('<annotations><version>1.1</version><meta><task><labels><label><name>cat</name></label>'
                   "</labels></task></meta>"
                   + _image('<mask label="cat" rle="1, 2, 2, 1" left="2" top="1" width="3" height="2"/>')
                   + "</annotations>")
    row = load_source(SourceConfig(kind="cvat", path=xml)).objects.iloc[0]
    mask = od.decode(row["mask"], 64, 32)
    expected = np.zeros((32, 64), dtype=bool)
    expected[1, 3:5] = True
    expected[2, 4] = True
    assert np.array_equal(mask, expected)
    assert (row.x, row.y, row.w, row.h) == (3, 1, 2, 2), "the box is the mask's, not the rectangle's"
