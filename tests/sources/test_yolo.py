"""YOLO on real files: FiftyOne's YOLOv5 exporter (boxes, and segments traced from masks), Label Studio's YOLO
converter (classes.txt, flat folders), a data.yaml with a list of names, and the errors bad files must give."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml

from audit.config import SourceConfig
from audit.sources import SourceError, load_source
from tests.sources import object_data as od


@pytest.fixture(scope="session")
def data(tmp_path_factory):
    built = od.object_data(tmp_path_factory)
    yield built
    od.delete_dataset(built)


@pytest.mark.fiftyone
def test_fiftyone_yolov5_export_boxes_and_splits(data):
    table = load_source(SourceConfig(kind="yolo", path=data.exports["yolo"]))
    assert len(table.samples) == len(data.images)
    assert {od.image_of(p): s for p, s in zip(table.samples["filepath"], table.samples["split"], strict=True)} == \
        data.splits
    assert table.samples.loc["images/val/coins.png", "split"] == "val"
    objects = od.by_image_and_label(table, table.objects)
    assert len(objects) == len(data.truth)
    for truth in data.truth:
        row = objects[(truth.image, truth.label)]
        # YOLO stores centre and size with 6 decimals: the box comes back within a thousandth of a pixel
        assert np.allclose([row.x, row.y, row.w, row.h], truth.box, atol=1e-3)
        assert row["mask"] is None and not row.iscrowd and np.isnan(row.score) and row.problems == ""
        assert (row.image_width, row.image_height) == data.sizes[truth.image]
    assert table.objects.loc["images/train/coffee.jpg#2", "source"] == "coffee.txt line 2"


@pytest.mark.fiftyone
def test_fiftyone_yolov5_segments_give_masks(data):
    table = load_source(SourceConfig(kind="yolo", path=data.exports["yolo_seg"] / "dataset.yaml"))
    objects = od.by_image_and_label(table, table.objects)
    assert len(objects) == len(data.truth)
    for truth in data.truth:
        row = objects[(truth.image, truth.label)]
        width, height = data.sizes[truth.image]
        mask = od.decode(row["mask"], width, height)
        assert od.mask_iou(mask, truth.mask) > 0.8
        # the box is the polygon's bounds (Ultralytics' rule); the polygon runs through pixel centres
        assert np.allclose([row.x, row.y, row.w, row.h], truth.box, atol=1.0)


@pytest.mark.fiftyone
def test_data_yaml_with_a_list_of_names_and_a_relative_path(data, tmp_path):
    root = tmp_path / "copy"
    shutil.copytree(data.exports["yolo"], root)
    (root / "dataset.yaml").unlink()
    (root / "data.yaml").write_text(yaml.safe_dump({"path": ".", "train": "images/train", "val": "images/val",
                                                    "nc": len(od.CLASSES), "names": od.CLASSES}))
    table = load_source(SourceConfig(kind="yolo", path=root))
    assert len(table.objects) == len(data.truth)
    assert sorted(table.objects["label"].unique()) == sorted({o.label for o in data.truth})


@pytest.mark.fiftyone
def test_label_studio_converter_yolo(data, tmp_path):
    """Label Studio's own YOLO converter: ``classes.txt``, flat ``images/`` and ``labels/``."""
    from label_studio_sdk.converter import Converter

    export = od.write_ls_export(data, tmp_path / "ls")
    out = tmp_path / "ls-yolo"
    Converter(od.LS_CONFIG, project_dir=str(tmp_path / "ls"), download_resources=False).convert(
        str(export), str(out), "YOLO", is_dir=False)
    assert (out / "classes.txt").is_file() and not list(out.glob("*.yaml"))
    (out / "images").mkdir(exist_ok=True)
    for name, path in data.images.items():  # "YOLO with images" copies the uploads in
        shutil.copyfile(path, out / "images" / od.upload_name(name))
    table = load_source(SourceConfig(kind="yolo", path=out))
    assert set(table.samples["split"]) == {"all"} and len(table.samples) == len(data.images)
    # the converter keeps one annotation per task (here the polygons; it skips brush masks), with classes in
    # alphabetical order in classes.txt: every polygon must come back on its object, under its class
    loaded = od.by_image_and_label(table, table.objects)
    truth = {(o.image, o.label): o for o in data.truth}
    assert set(loaded) == {key for key, o in truth.items() if not o.iscrowd}
    for key, row in loaded.items():
        assert np.allclose([row.x, row.y, row.w, row.h], truth[key].box, atol=1e-3)
        assert row["mask"] is not None


# ------------------------------------------------------------------------------------------------ small files


def _dataset(tmp_path: Path, lines: str, names=("cat", "dog"), image: bool = True) -> Path:
    from PIL import Image
    from skimage.data import chelsea

    root = tmp_path / "ds"
    (root / "images" / "train").mkdir(parents=True)
    (root / "labels" / "train").mkdir(parents=True)
    if image:
        Image.fromarray(chelsea()).resize((200, 100)).save(root / "images" / "train" / "cat.jpg")
    (root / "labels" / "train" / "cat.txt").write_text(lines)
    (root / "data.yaml").write_text(yaml.safe_dump({"names": dict(enumerate(names)), "train": "images/train"}))
    return root


def test_boxes_scores_and_segments_from_a_hand_written_label_file(tmp_path):
    root = _dataset(tmp_path, "0 0.5 0.5 0.2 0.4\n1 0.25 0.25 0.1 0.1 0.87\n\n1 0.1 0.1 0.3 0.1 0.3 0.3 0.1 0.3\n")
    table = load_source(SourceConfig(kind="yolo", path=root))
    objects = table.objects
    assert objects.index.tolist() == ["images/train/cat.jpg#1", "images/train/cat.jpg#2", "images/train/cat.jpg#4"]
    first, second, third = (objects.iloc[i] for i in range(3))
    assert (first.label, first.x, first.y, first.w, first.h) == ("cat", 80.0, 30.0, 40.0, 40.0)
    assert (first.xn, first.yn, first.wn, first.hn) == (0.4, 0.3, 0.2, 0.4)
    assert second.score == 0.87 and np.isnan(first.score)
    assert (third.x, third.y, third.w, third.h) == pytest.approx((20.0, 10.0, 40.0, 20.0))
    mask = od.decode(third["mask"], 200, 100)
    assert mask[10:30, 20:60].all() and mask.sum() == 800


@pytest.mark.parametrize(("lines", "message"), [
    ("7 0.5 0.5 0.1 0.1\n", r"cat.txt: line 1: unknown category id 7 \(data.yaml names 2 classes"),
    ("0 0.5 0.5\n", r"cat.txt: line 1: malformed polygon or box \(2 numbers"),
    ("0 0.1 0.1 0.3\n", r"cat.txt: line 1: malformed polygon or box \(3 numbers"),
    ("0 0.1 0.1 0.3 0.1 0.3 0.3 0.1\n", r"cat.txt: line 1: malformed polygon or box \(7 numbers"),
    ("cat 0.5 0.5 0.1 0.1\n", r"cat.txt: line 1: not a class index followed by numbers"),
])
def test_bad_label_lines_name_the_file_and_the_line(tmp_path, lines, message):
    with pytest.raises(SourceError, match=message):
        load_source(SourceConfig(kind="yolo", path=_dataset(tmp_path, lines)))


def test_a_label_file_without_its_image_is_an_error(tmp_path):
    root = _dataset(tmp_path, "0 0.5 0.5 0.1 0.1\n", image=False)
    with pytest.raises(SourceError, match=r"cat.txt: label file without an image \(missing image cat\.\*\)"):
        load_source(SourceConfig(kind="yolo", path=root))


def test_missing_class_names_is_an_error(tmp_path):
    root = _dataset(tmp_path, "0 0.5 0.5 0.1 0.1\n")
    (root / "data.yaml").write_text(yaml.safe_dump({"train": "images/train"}))
    with pytest.raises(SourceError, match="no class names"):
        load_source(SourceConfig(kind="yolo", path=root))
