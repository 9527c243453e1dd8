"""The shared object-table machinery: odd-but-legal objects kept with their problem codes (the same in every
format), image sizes from headers, split names, the image index, and the one-file-per-annotator merge."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from PIL import Image

from audit.config import SourceConfig
from audit.geometry import OBJECT_COLUMNS
from audit.sources import SourceError, load_source
from audit.sources.objects import (
    ImageIndex,
    ObjectRecords,
    empty_objects,
    image_samples,
    image_size,
    merge_annotators,
    object_table,
    split_from_name,
)
from audit.sources.table import SampleTable

W, H = 100, 50  # the photo every hand-written file below annotates


@pytest.fixture()
def photo(tmp_path: Path) -> Path:
    from skimage.data import coffee

    (tmp_path / "images").mkdir()
    path = tmp_path / "images" / "coffee.jpg"
    Image.fromarray(coffee()).resize((W, H)).save(path)
    return path


# Boxes (x, y, w, h, class) and the codes the conventions give them, worked out by hand for a 100 x 50 image:
# tiny = area < 0.01% of 5000 px (0.5 px) or a side < 2 px; whole_image = area > 95% of 5000 px.
ODD = [
    ((10, 10, 20, 20), "cup", ""),
    ((30, 10, 0, 10), "cup", "zero_size"),
    ((50, 10, -5, 10), "cup", "negative_size"),
    ((90, 40, 20, 20), "cup", "clipped"),  # kept as (90, 40, 10, 10)
    ((120, 10, 5, 5), "cup", "zero_size;clipped"),  # wholly outside: clipped to nothing on the right edge
    ((5, 40, 1, 1), "cup", "tiny"),  # area 1 px but a 1 px side
    ((0, 0, 100, 50), "table", "whole_image"),
    ((60, 5, 15, 15), "cup", "duplicate_box"),
    ((60, 5, 15, 15), "cup", "duplicate_box"),  # the exact copy: both are flagged
    ((60, 5, 15, 15), "spoon", ""),  # same box, another class: two objects, not a duplicate
]


def test_odd_but_legal_objects_are_kept_with_their_codes(photo):
    coco = {"images": [{"id": 1, "file_name": "coffee.jpg", "width": W, "height": H}],
            "categories": [{"id": 1, "name": "cup"}, {"id": 2, "name": "table"}, {"id": 3, "name": "spoon"}],
            "annotations": [{"id": 10 + k, "image_id": 1, "category_id": {"cup": 1, "table": 2, "spoon": 3}[label],
                             "bbox": list(box), "iscrowd": 0} for k, (box, label, _) in enumerate(ODD)]}
    path = photo.parent.parent / "instances.json"
    path.write_text(json.dumps(coco))
    table = load_source(SourceConfig(kind="coco", path=path))
    assert len(table.objects) == len(ODD), "nothing is dropped"
    assert table.objects["problems"].tolist() == [codes for _, _, codes in ODD]
    clipped = table.objects.loc["13"]
    assert (clipped.x, clipped.y, clipped.w, clipped.h) == (90, 40, 10, 10)
    assert (clipped.xn, clipped.yn, clipped.wn, clipped.hn) == (0.9, 0.8, 0.1, 0.2)
    negative = table.objects.loc["12"]
    assert (negative.w, negative.h) == (-5, 10), "a negative box is kept as given, flagged, not clipped"
    assert table.samples.loc["coffee.jpg", "problems"] == "", "object problems stay on the objects"


def _yolo(root: Path, photo: Path) -> Path:
    (root / "images").mkdir(parents=True)
    (root / "labels").mkdir()
    (root / "images" / photo.name).write_bytes(photo.read_bytes())
    # centre (95, 45), size 20 x 10 px: the box runs past the right edge and the bottom edge
    (root / "labels" / "coffee.txt").write_text("0 0.95 0.9 0.2 0.2\n")
    (root / "data.yaml").write_text(yaml.safe_dump({"names": ["cup"]}))
    return root


def _voc(root: Path, photo: Path) -> Path:
    root.mkdir()
    (root / photo.name).write_bytes(photo.read_bytes())
    (root / "coffee.xml").write_text(f"<annotation><filename>{photo.name}</filename><size><width>{W}</width>"
                                     f"<height>{H}</height></size><object><name>cup</name><bndbox><xmin>85</xmin>"
                                     "<ymin>40</ymin><xmax>105</xmax><ymax>50</ymax></bndbox></object></annotation>")
    return root


def _cvat(root: Path, photo: Path) -> Path:
    (root / "images").mkdir(parents=True)
    (root / "images" / photo.name).write_bytes(photo.read_bytes())
    (root / "annotations.xml").write_text(
        f'<annotations><version>1.1</version><image id="0" name="{photo.name}" width="{W}" height="{H}">'
        '<box label="cup" xtl="85" ytl="40" xbr="105" ybr="50" occluded="0"/></image></annotations>')
    return root / "annotations.xml"


def _labelstudio(root: Path, photo: Path) -> Path:
    (root / "images").mkdir(parents=True)
    (root / "images" / photo.name).write_bytes(photo.read_bytes())
    task = {"id": 1, "data": {"image": f"/data/upload/1/0a1b2c3d-{photo.name}"}, "annotations": [
        {"id": 1, "completed_by": 1, "result": [
            {"id": "a", "type": "rectanglelabels", "from_name": "box", "to_name": "image", "original_width": W,
             "original_height": H, "value": {"x": 85, "y": 80, "width": 20, "height": 20, "rotation": 0,
                                             "rectanglelabels": ["cup"]}}]}]}
    (root / "export.json").write_text(json.dumps([task]))
    return root / "export.json"


def _coco(root: Path, photo: Path) -> Path:
    (root / "images").mkdir(parents=True)
    (root / "images" / photo.name).write_bytes(photo.read_bytes())
    (root / "instances.json").write_text(json.dumps({
        "images": [{"id": 1, "file_name": photo.name, "width": W, "height": H}],
        "categories": [{"id": 1, "name": "cup"}],
        "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [85, 40, 20, 10]}]}))
    return root / "instances.json"


@pytest.mark.parametrize(("kind", "write"), [("coco", _coco), ("yolo", _yolo), ("voc", _voc), ("cvat", _cvat),
                                             ("labelstudio", _labelstudio)])
def test_every_format_clips_and_flags_the_same_way(tmp_path, photo, kind, write):
    """One box running off the bottom-right corner, x 85..105 and y 40..50+, in each format's own units."""
    path = write(tmp_path / kind, photo)
    table = load_source(SourceConfig(kind=kind, path=path))
    row = table.objects.iloc[0]
    assert (row.label, row.problems) == ("cup", "clipped")
    assert (row.x, row.y, row.w, row.h) == pytest.approx((85, 40, 15, 10))
    assert (row.image_width, row.image_height) == (W, H)
    assert table.samples["readable"].all() and table.samples["label"].isna().all()
    assert table.samples["problems"].eq("").all(), "an object image without a label is not missing_label"


def test_image_size_reads_the_header_only(tmp_path, photo):
    assert image_size(photo) == (W, H)
    big = tmp_path / "big.png"
    Image.new("RGB", (3000, 2000), (10, 20, 30)).save(big)
    head = tmp_path / "head.png"
    head.write_bytes(big.read_bytes()[:100])  # the header survives, the pixels do not
    assert image_size(head) == (3000, 2000)
    (tmp_path / "text.png").write_text("not an image")
    assert image_size(tmp_path / "text.png") is None
    assert image_size(tmp_path / "absent.png") is None


@pytest.mark.parametrize(("name", "split"), [
    ("instances_train2017.json", "train"), ("instances_val2017.json", "val"), ("labels_valid.json", "val"),
    ("image_info_test-dev2017.json", "test"), ("annotations.json", "all"), ("Training", "train"),
])
def test_split_from_name(name, split):
    assert split_from_name(name) == split


def test_image_index_finds_by_path_then_by_unique_name(tmp_path):
    for folder in ("a", "b/c"):
        (tmp_path / folder).mkdir(parents=True)
    (tmp_path / "a" / "x.png").write_bytes(b"")
    (tmp_path / "b" / "c" / "y.png").write_bytes(b"")
    (tmp_path / "b" / "c" / "x.png").write_bytes(b"")
    index = ImageIndex([tmp_path])
    assert index.find("a/x.png") == tmp_path / "a" / "x.png"
    assert index.find("elsewhere/y.png") == (tmp_path / "b" / "c" / "y.png").resolve()
    assert index.find("x.png") is None, "two files named x.png: ambiguous, not guessed"
    assert index.locate("z.png") == tmp_path / "z.png"


def _table(file: Path, paths: dict[str, Path], boxes: list[tuple[str, str, tuple[float, ...]]]) -> SampleTable:
    records = ObjectRecords(file)
    for object_id, sample_id, box in boxes:
        records.add(object_id, sample_id, "cup", box, W, H, source=f"{file.name} {object_id}")
    samples = image_samples([(s, p, "all") for s, p in paths.items()])
    return object_table(samples, records.table(), {"kind": "test", "path": str(file)})


def test_merge_one_file_per_annotator(tmp_path, photo):
    other = tmp_path / "images" / "other.jpg"
    other.write_bytes(photo.read_bytes())
    truth = _table(tmp_path / "gt.json", {"coffee.jpg": photo}, [("1", "coffee.jpg", (1, 1, 10, 10))])
    # ann names the same photo differently (matched by its path) and adds an image the ground truth lacks
    ann = _table(tmp_path / "ann.json", {"images/coffee.jpg": photo, "other.jpg": other},
                 [("1", "images/coffee.jpg", (2, 1, 10, 10)), ("2", "other.jpg", (0, 0, 5, 5))])
    merged = merge_annotators(truth, {"ann": ann})
    assert merged.samples.index.tolist() == ["coffee.jpg", "other.jpg"]
    assert merged.objects.index.tolist() == ["1", "ann/1", "ann/2"]
    assert merged.objects["annotator"].tolist() == ["", "ann", "ann"]
    assert merged.objects["sample_id"].tolist() == ["coffee.jpg", "coffee.jpg", "other.jpg"]
    coverage = merged.description["object_coverage"]
    assert sorted(map(tuple, coverage.to_numpy())) == [("coffee.jpg", ""), ("coffee.jpg", "ann"),
                                                      ("other.jpg", "ann")]
    with pytest.raises(SourceError, match="must not contain '/'"):
        merge_annotators(truth, {"a/b": ann})


def test_duplicate_object_ids_name_both_records(tmp_path):
    records = ObjectRecords(tmp_path / "labels.json")
    records.add("7", "a.png", "cup", (1, 1, 2, 2), W, H, source="labels.json annotation #0")
    with pytest.raises(SourceError, match=r"labels.json: duplicate object id '7' \(labels.json annotation #0 and "
                                          r"labels.json annotation #3\)"):
        records.add("7", "a.png", "cup", (1, 1, 2, 2), W, H, source="labels.json annotation #3")
    with pytest.raises(SourceError, match="of unknown or non-positive size"):
        records.add("8", "a.png", "cup", (1, 1, 2, 2), 0, H, source="labels.json annotation #4")


def test_empty_object_table_has_the_canonical_shape():
    empty = empty_objects()
    assert tuple(empty.columns) == OBJECT_COLUMNS and empty.index.name == "object_id"
    assert empty["x"].dtype == np.float64 and empty["image_width"].dtype == np.int64
    assert empty["iscrowd"].dtype == bool
    assert ObjectRecords(Path("x.json")).table().columns.tolist() == list(OBJECT_COLUMNS)
    assert isinstance(image_samples([]), pd.DataFrame)


def test_fast_build_agrees_with_the_geometry_module():
    """``build_objects`` groups duplicates by position for speed; the result must be geometry's exactly."""
    from audit.geometry import build_object_table
    from audit.sources.objects import build_objects

    rng = np.random.default_rng(3)
    records = []
    for k in range(400):
        x, y = rng.uniform(-20, 110, 2)
        w, h = rng.choice([0.0, -3.0, 0.5, *rng.uniform(1, 60, 5)], 2)
        records.append({"object_id": f"o{k}", "sample_id": f"img{k % 7}", "label": f"c{k % 3}", "x": x, "y": y,
                        "w": w, "h": h, "image_width": W, "image_height": H, "annotator": ["", "a", "b"][k % 2],
                        "problems": "", "source": f"#{k}"})
    base = {**records[0], "x": 10.0, "y": 10.0, "w": 20.0, "h": 20.0}
    records += [{**base, "object_id": "copy-a"}, {**base, "object_id": "copy-b", "x": 10.01}]
    ours, theirs = build_objects(records), build_object_table(records)
    pd.testing.assert_frame_equal(ours, theirs, check_index_type=False)
    assert ours.loc["copy-a", "problems"] == ours.loc["copy-b", "problems"] == "duplicate_box"


def test_a_source_without_any_object_is_an_error(tmp_path, photo):
    path = tmp_path / "instances.json"
    path.write_text(json.dumps({"images": [{"id": 1, "file_name": "coffee.jpg", "width": W, "height": H}],
                                "categories": [{"id": 1, "name": "cup"}], "annotations": []}))
    with pytest.raises(SourceError, match=r"coco source .*instances.json: no objects in any of its 1 images"):
        load_source(SourceConfig(kind="coco", path=path))
