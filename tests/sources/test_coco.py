"""COCO on real files: FiftyOne's COCO exporter (polygons, crowd RLE), Label Studio's converter, pycocotools'
own RLE encoder for predictions, and the errors bad files must give."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from audit.config import SourceConfig
from audit.sources import SourceError, load_source
from audit.sources.coco import load_object_predictions, read_coco
from tests.sources import object_data as od

pytestmark = pytest.mark.fiftyone


@pytest.fixture(scope="session")
def data(tmp_path_factory):
    built = od.object_data(tmp_path_factory)
    yield built
    od.delete_dataset(built)


def test_fiftyone_coco_export_boxes_polygons_and_crowd_rle(data):
    from pycocotools.coco import COCO

    path = data.exports["coco_train"]
    table = load_source(SourceConfig(kind="coco", path=path))
    train = [n for n, s in data.splits.items() if s == "train"]
    assert sorted(od.image_of(p) for p in table.samples["filepath"]) == sorted(train)
    assert set(table.samples["split"]) == {"train"}, "instances_train.json names its split"
    assert table.samples["readable"].all() and table.samples["label"].isna().all()
    objects = od.by_image_and_label(table, table.objects)
    expected = [o for o in data.truth if o.image in train]
    assert len(objects) == len(expected) == len(table.objects)
    reference = COCO(str(path))  # pycocotools' own reading of the same file, for the masks
    by_name = {img["file_name"]: img["id"] for img in reference.dataset["images"]}
    for truth in expected:
        row = objects[(truth.image, truth.label)]
        width, height = data.sizes[truth.image]
        assert (row.x, row.y, row.w, row.h) == truth.box
        assert (row.xn, row.wn) == (truth.box[0] / width, truth.box[2] / width)
        assert (row.image_width, row.image_height) == (width, height)
        assert bool(row.iscrowd) == truth.iscrowd and row.annotator == "" and np.isnan(row.score)
        mask = od.decode(row["mask"], width, height)
        ann = next(a for a in reference.imgToAnns[by_name[truth.image]] if a["category_id"] ==
                   next(c["id"] for c in reference.dataset["categories"] if c["name"] == truth.label))
        assert np.array_equal(mask, reference.annToMask(ann).astype(bool))
        if truth.iscrowd:  # crowd objects are written as uncompressed RLE: exact
            assert np.array_equal(mask, truth.mask)
        else:  # polygons traced by FiftyOne: close to the pasted digit
            assert od.mask_iou(mask, truth.mask) > 0.8
        assert row.problems == ""
        assert row.source.startswith("instances_train.json annotation id ")


def test_val_split_keeps_images_without_objects(data):
    table = load_source(SourceConfig(kind="coco", path=data.exports["coco_val"]))
    assert set(table.samples["split"]) == {"val"}
    coins = table.samples.index[[od.image_of(p) == "coins.png" for p in table.samples["filepath"]]]
    assert len(coins) == 1 and coins[0] not in set(table.objects["sample_id"])
    assert len(table.objects) == len([o for o in data.truth if data.splits[o.image] == "val"])


def test_one_file_per_annotator(data):
    config = SourceConfig(kind="coco", path=data.exports["coco_train"],
                          annotator_files={"bob": data.exports["coco_bob_train"]})
    table = load_source(config)
    objects = table.objects
    assert sorted(objects["annotator"].unique()) == ["", "bob"]
    bob = objects[objects["annotator"] == "bob"]
    assert all(i.startswith("bob/") for i in bob.index)
    assert objects.index.is_unique
    assert len(table.samples) == 3, "bob's file names the same three images"
    # bob moved the first object of each image 6 px right and skipped astronaut's last one (see object_data)
    assert len(bob) == len(objects) - len(bob) - 1
    mine = od.by_image_and_label(table, bob)
    first = {name: data.objects_of(name)[0] for name in ("astronaut.png", "coffee.jpg", "chelsea.png")}
    for name, truth in first.items():
        assert mine[(name, truth.label)].x == truth.box[0] + 6
    coverage = table.description["object_coverage"]
    assert set(coverage[coverage["annotator"] == "bob"]["sample_id"]) == set(table.samples.index)


def test_annotator_files_alone_and_config_needs(data):
    table = load_source(SourceConfig(kind="coco", annotator_files={"a": data.exports["coco_train"],
                                                                    "b": data.exports["coco_bob_train"]}))
    assert sorted(table.objects["annotator"].unique()) == ["a", "b"]
    with pytest.raises(ValueError, match="needs a path or annotator_files"):
        SourceConfig(kind="coco")


def test_label_studio_converter_coco(data, tmp_path):
    """A second writer: Label Studio's own COCO converter, from a Label Studio export of the same objects."""
    from label_studio_sdk.converter import Converter

    export = od.write_ls_export(data, tmp_path / "ls")
    out = tmp_path / "ls-coco"
    Converter(od.LS_CONFIG, project_dir=str(tmp_path / "ls"), download_resources=False).convert(
        str(export), str(out), "COCO", is_dir=False)
    (out / "images").mkdir(exist_ok=True)
    for name in data.images:  # "COCO with images" copies the uploads in under their upload names
        (out / "images" / od.upload_name(name)).write_bytes(data.images[name].read_bytes())
    table = load_source(SourceConfig(kind="coco", path=out / "result.json"))
    assert table.samples["readable"].all()
    loaded = table.objects
    # the converter writes the rectangles of every annotation and the polygons as boxes with a segmentation
    rects = loaded[loaded["mask"].isna()]
    for truth in data.truth:
        match = rects[(rects["label"] == truth.label) & (rects["sample_id"] == od.upload_name(truth.image))]
        assert len(match) == 1
        assert np.allclose(match[["x", "y", "w", "h"]].to_numpy()[0], truth.box, atol=1e-6)


def test_predictions_from_a_results_file_with_pycocotools_rle(data, tmp_path):
    """Predictions as detectors write them: bbox, score and a compressed RLE from ``pycocotools.mask.encode``."""
    from pycocotools import mask as mask_utils

    source = read_coco(data.exports["coco_train"])
    gt = json.loads(data.exports["coco_train"].read_text())
    image_id = {img["file_name"]: img["id"] for img in gt["images"]}
    category = {c["name"]: c["id"] for c in gt["categories"]}
    results = []
    for k, truth in enumerate(o for o in data.truth if data.splits[o.image] == "train"):
        rle = mask_utils.encode(np.asfortranarray(truth.mask.astype(np.uint8)))
        results.append({"image_id": image_id[truth.image], "category_id": category[truth.label],
                        "bbox": [float(v) for v in truth.box], "score": round(0.9 - 0.1 * k, 2),
                        "segmentation": {"size": rle["size"], "counts": rle["counts"].decode("ascii")}})
    path = tmp_path / "detections.json"
    path.write_text(json.dumps(results))
    predictions = load_object_predictions(path, source, source.class_names)
    assert len(predictions) == len(results) and set(predictions["annotator"]) == {"predictions"}
    assert predictions["score"].tolist() == [r["score"] for r in results]
    keyed = od.by_image_and_label(source, predictions)
    for truth in (o for o in data.truth if data.splits[o.image] == "train"):
        row = keyed[(truth.image, truth.label)]
        width, height = data.sizes[truth.image]
        assert (row.x, row.y, row.w, row.h) == truth.box
        assert np.array_equal(od.decode(row["mask"], width, height), truth.mask)
    # a plain sample DataFrame needs the ids from the ground-truth file (or an id -> name mapping)
    again = load_object_predictions(path, source.samples, {v: k for k, v in category.items()},
                                    ground_truth=data.exports["coco_train"])
    assert again[["sample_id", "label", "x", "y", "w", "h"]].equals(predictions[["sample_id", "label", "x", "y", "w",
                                                                                 "h"]])
    with pytest.raises(SourceError, match="pass class_names as"):
        load_object_predictions(path, source.samples, source.class_names)
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps([{**results[0], "image_id": 999}]))
    with pytest.raises(SourceError, match=r"bad.json: prediction #0: image id 999 matches no sample"):
        load_object_predictions(bad, source, source.class_names)
    bad.write_text(json.dumps([{**results[0], "category_id": 77}]))
    with pytest.raises(SourceError, match=r"bad.json: prediction #0: unknown category id 77"):
        load_object_predictions(bad, source, source.class_names)


# ------------------------------------------------------------------------------------------------ bad files


def _coco(tmp_path: Path, **changes) -> Path:
    """A small valid COCO file (one real photo), with ``changes`` applied to it."""
    from PIL import Image
    from skimage.data import astronaut

    Image.fromarray(astronaut()).resize((64, 64)).save(tmp_path / "a.png")
    data = {"images": [{"id": 1, "file_name": "a.png", "width": 64, "height": 64}],
            "categories": [{"id": 3, "name": "face"}],
            "annotations": [{"id": 7, "image_id": 1, "category_id": 3, "bbox": [10, 10, 20, 20], "iscrowd": 0,
                             "segmentation": [[10, 10, 30, 10, 30, 30, 10, 30]]}]}
    for key, value in changes.items():
        data[key] = value(data[key])
    path = tmp_path / "instances_test.json"
    path.write_text(json.dumps(data))
    return path


def _ann(**changes):
    return lambda anns: [{**anns[0], **changes}]


@pytest.mark.parametrize(("changes", "message"), [
    ({"annotations": _ann(category_id=9)}, r"instances_test.json: annotation id 7: unknown category id 9"),
    ({"annotations": _ann(image_id=5)}, r"instances_test.json: annotation id 7: image id 5 is not in 'images' "
                                        r"\(missing image\)"),
    ({"annotations": lambda a: [a[0], dict(a[0])]}, r"instances_test.json: duplicate object id '7'"),
    ({"annotations": _ann(segmentation=[[10, 10, 30, 10, 30]])},
     r"instances_test.json: annotation id 7: malformed polygon \(ring 0 has 5 coordinates"),
    ({"annotations": _ann(segmentation={"size": [64, 64], "counts": [10, 5]})},
     r"instances_test.json: annotation id 7: malformed RLE mask"),
    ({"annotations": _ann(segmentation={"size": [32, 64], "counts": "abc"})},
     r"annotation id 7: RLE mask size \[32, 64\] is not the image size"),
    ({"annotations": _ann(bbox=[1, 2, 3])}, r"annotation id 7: bbox must be \[x, y, width, height\]"),
    ({"images": lambda i: [i[0], {**i[0], "file_name": "b.png"}]}, r"instances_test.json: duplicate image id 1"),
    ({"categories": lambda c: [c[0], {"id": 3, "name": "hand"}]}, r"duplicate category id 3"),
])
def test_bad_coco_files_name_the_file_and_the_record(tmp_path, changes, message):
    with pytest.raises(SourceError, match=message):
        load_source(SourceConfig(kind="coco", path=_coco(tmp_path, **changes)))


def test_a_valid_small_file_loads_and_a_results_file_is_refused(tmp_path):
    table = load_source(SourceConfig(kind="coco", path=_coco(tmp_path)))
    row = table.objects.iloc[0]
    assert (row.label, row.x, row.y, row.w, row.h) == ("face", 10, 10, 20, 20)
    assert table.samples["split"].iloc[0] == "test"
    assert od.decode(row["mask"], 64, 64)[10:30, 10:30].all()
    results = tmp_path / "results.json"
    results.write_text(json.dumps([{"image_id": 1, "category_id": 3, "bbox": [1, 1, 2, 2], "score": 0.5}]))
    with pytest.raises(SourceError, match="has no 'images' list"):
        load_source(SourceConfig(kind="coco", path=results))
    (tmp_path / "broken.json").write_text("{not json")
    with pytest.raises(SourceError, match=r"broken\.json is not valid JSON"):
        load_source(SourceConfig(kind="coco", path=tmp_path / "broken.json"))


def test_an_annotator_column_in_the_annotations(tmp_path):
    """Several annotators in one file: an ``annotator`` field (or ``attributes.annotator``, as CVAT's COCO export
    writes attributes) per annotation."""
    first = {"id": 7, "image_id": 1, "category_id": 3, "bbox": [10, 10, 20, 20], "annotator": "ann1"}
    second = {**first, "id": 8, "annotator": None, "attributes": {"annotator": "ann2", "occluded": False}}
    path = _coco(tmp_path, annotations=lambda _: [first, second])
    table = load_source(SourceConfig(kind="coco", path=path))
    assert table.objects["annotator"].tolist() == ["ann1", "ann2"]
    assert table.objects["problems"].tolist() == ["", ""], "same box, different annotators: not a duplicate"
