"""Pascal VOC on real files: FiftyOne's VOC exporter (as a VOC root with ImageSets splits, and in its own flat
layout), Label Studio's VOC converter, and the errors bad files must give."""

from __future__ import annotations

import json
import shutil
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


@pytest.mark.fiftyone
@pytest.mark.parametrize("layout", ["voc", "voc_plain"])
def test_fiftyone_voc_export(data, layout):
    table = load_source(SourceConfig(kind="voc", path=data.exports[layout]))
    assert sorted(od.image_of(p) for p in table.samples["filepath"]) == sorted(data.images)
    assert table.samples["readable"].all()
    splits = {od.image_of(p): s for p, s in zip(table.samples["filepath"], table.samples["split"], strict=True)}
    assert splits == (data.splits if layout == "voc" else dict.fromkeys(data.images, "all"))
    objects = od.by_image_and_label(table, table.objects)
    assert len(objects) == len(data.truth)
    for truth in data.truth:
        row = objects[(truth.image, truth.label)]
        assert (row.x, row.y, row.w, row.h) == truth.box  # power-of-two sides: FiftyOne's int() is exact
        assert (row.image_width, row.image_height) == data.sizes[truth.image]
        assert bool(row.iscrowd) == truth.iscrowd and row["mask"] is None


@pytest.mark.fiftyone
def test_label_studio_converter_voc(data, tmp_path):
    """Label Studio's own VOC converter: ``Annotations/`` and an ``images/`` folder of the uploads."""
    from label_studio_sdk.converter import Converter

    export = od.write_ls_export(data, tmp_path / "ls")
    tasks = json.loads(export.read_text())  # a one-annotator project: the rectangles of user 1
    export.write_text(json.dumps([{**t, "annotations": t["annotations"][:1]} for t in tasks]))
    out = tmp_path / "ls-voc"
    Converter(od.LS_CONFIG, project_dir=str(tmp_path / "ls"), download_resources=False).convert(
        str(export), str(out), "VOC", is_dir=False)
    for name, path in data.images.items():
        shutil.copyfile(path, out / "images" / od.upload_name(name))
    table = load_source(SourceConfig(kind="voc", path=out))
    assert table.samples["readable"].all()
    assert len(table.samples) == len({o.image for o in data.truth}), "the converter writes no XML for coins.png"
    loaded = od.by_image_and_label(table, table.objects)
    truth = {(o.image, o.label): o for o in data.truth}
    assert set(loaded) == set(truth)
    for key, row in loaded.items():
        # the converter truncates percent -> pixel corners with int(): within one pixel
        assert np.allclose([row.x, row.y, row.w, row.h], truth[key].box, atol=1.0)


# ------------------------------------------------------------------------------------------------ small files

_XML = """<annotation>
  <filename>{name}</filename>
  {size}
  <object><name>cat</name><difficult>0</difficult>
    <bndbox><xmin>{xmin}</xmin><ymin>10</ymin><xmax>60</xmax><ymax>40</ymax></bndbox></object>
</annotation>"""
_SIZE = "<size><width>200</width><height>100</height><depth>3</depth></size>"


def _voc(tmp_path: Path, xmls: dict[str, str], image: bool = True) -> Path:
    from PIL import Image
    from skimage.data import chelsea

    root = tmp_path / "VOC"
    (root / "Annotations").mkdir(parents=True)
    (root / "JPEGImages").mkdir()
    if image:
        Image.fromarray(chelsea()).resize((200, 100)).save(root / "JPEGImages" / "cat.jpg")
    for name, text in xmls.items():
        (root / "Annotations" / name).write_text(text)
    return root


def test_a_hand_written_voc_file(tmp_path):
    root = _voc(tmp_path, {"cat.xml": _XML.format(name="cat.jpg", size=_SIZE, xmin=20)})
    table = load_source(SourceConfig(kind="voc", path=root))
    row = table.objects.iloc[0]
    assert (row.label, row.x, row.y, row.w, row.h, row.xn, row.hn) == ("cat", 20, 10, 40, 30, 0.1, 0.3)
    assert row.source == "cat.xml object #0"
    # no <size>: the image header gives it
    (root / "Annotations" / "cat.xml").write_text(_XML.format(name="cat.jpg", size="", xmin=20))
    assert load_source(SourceConfig(kind="voc", path=root)).objects.iloc[0].image_width == 200


@pytest.mark.parametrize(("xmls", "image", "message"), [
    ({"cat.xml": _XML.format(name="cat.jpg", size=_SIZE, xmin="abc")}, True,
     r"cat.xml: object #0: xmin 'abc' is not a number"),
    ({"cat.xml": _XML.format(name="cat.jpg", size=_SIZE, xmin=1).replace("<name>cat</name>", "")}, True,
     r"cat.xml: object #0 has no <name>"),
    ({"cat.xml": _XML.format(name="cat.jpg", size=_SIZE, xmin=1).replace("<xmax>60</xmax>", "")}, True,
     r"cat.xml: object #0 \(cat\): <bndbox> lacks <xmax>"),
    ({"a.xml": _XML.format(name="cat.jpg", size=_SIZE, xmin=1),
      "b.xml": _XML.format(name="cat.jpg", size=_SIZE, xmin=2)}, True,
     r"b.xml: duplicate image 'cat.jpg' \(also annotated in a.xml\)"),
    ({"cat.xml": _XML.format(name="cat.jpg", size="", xmin=1)}, False,
     r"cat.xml: no usable <size> and the image .*cat.jpg cannot be read"),
    ({"cat.xml": "<annotation><filename>cat.jpg</filename"}, True, r"cat.xml is not valid XML"),
])
def test_bad_voc_files_name_the_file_and_the_record(tmp_path, xmls, image, message):
    with pytest.raises(SourceError, match=message):
        load_source(SourceConfig(kind="voc", path=_voc(tmp_path, xmls, image=image)))
