"""CVAT for images 1.1: the review file's structure (as CVAT documents it), export -> import, reviewer edits."""

from __future__ import annotations

import os
import xml.etree.ElementTree as ET
import zipfile
from pathlib import Path

import pandas as pd
import pytest

from audit import review
from audit.integrations import cvat
from audit.results import write_run
from tests.test_review import DESIGN, FLAGGED_BY_QUALITY, make_review_run

CLASSES = ["0", "1", "2"]
ASTRONAUT_BOXES = {"o-face": (170.0, 20.0, 130.0, 160.0, "flag", "face", 0.05),
                   "o-rocket": (0.0, 0.0, 120.0, 250.0, "rocket", "flag", 0.20)}


@pytest.fixture(scope="module")
def review_run(tmp_path_factory):
    return make_review_run(tmp_path_factory.mktemp("cvat-review"))


@pytest.fixture(scope="module")
def queue(review_run):
    return review.build_review_queue(review_run.run_dir, k=None)


@pytest.fixture(scope="module")
def object_queue(tmp_path_factory):
    from PIL import Image
    from skimage import data

    folder = tmp_path_factory.mktemp("cvat-objects")
    image_path = folder / "photos" / "astronaut.png"
    image_path.parent.mkdir()
    Image.fromarray(data.astronaut()).save(image_path)
    samples = pd.DataFrame({"filepath": [str(image_path)], "label": [None], "split": ["all"], "readable": [True],
                            "problems": [""], "content_hash": ["astronaut-v1"]},
                           index=pd.Index(["astronaut.png"], name="sample_id"))
    write_run(folder / "run", samples, {"run_name": "objects", "class_names": ["face", "flag", "rocket"]})
    objects = pd.DataFrame([
        {"object_id": oid, "sample_id": "astronaut.png", "label": given, "x": x, "y": y, "w": w, "h": h,
         "xn": x / 512, "yn": y / 512, "wn": w / 512, "hn": h / 512, "image_width": 512, "image_height": 512,
         "mistakes_is_issue": True, "mistakes_label_quality": quality, "mistakes_suggested_label": suggested}
        for oid, (x, y, w, h, given, suggested, quality) in ASTRONAUT_BOXES.items()]).set_index("object_id")
    return review.build_review_queue(folder / "run", objects=objects)


def _attributes(shape: ET.Element) -> dict[str, str]:
    return {a.get("name"): a.text or "" for a in shape.findall("attribute")}


def test_the_file_has_the_documented_structure(queue, review_run, tmp_path):
    data = review_run.manifest.parent  # image names relative to it are the sample ids ("images/0_2.png")
    path = cvat.write_cvat_xml(queue, tmp_path / "review.xml", CLASSES, task_name="weekly review", image_root=data)
    root = ET.parse(path).getroot()
    assert root.tag == "annotations" and root.findtext("version") == "1.1"
    task = root.find("meta/task")
    assert task.findtext("name") == "weekly review" and task.findtext("mode") == "annotation"
    assert task.findtext("flipped") == "False" and root.findtext("meta/dumped")
    assert [label.findtext("name") for label in task.findall("labels/label")] == CLASSES
    for label in task.findall("labels/label"):
        specs = {a.findtext("name"): (a.findtext("input_type"), a.findtext("mutable"), a.findtext("values"))
                 for a in label.findall("attributes/attribute")}
        assert specs["review"] == ("select", "False", "unreviewed\ncorrect\nwrong\nunsure")
        assert {name for name, spec in specs.items() if spec[0] == "text"} == {
            "item_id", "sample_id", "given_label", "suggested_label", "score", "reason", "content_hash"}
    images = root.findall("image")
    # one <image> per reviewed file; ids are the index in lexical order of the names; size counts them
    assert int(task.findtext("size")) == len(images) == len(FLAGGED_BY_QUALITY)
    names = [image.get("name") for image in images]
    assert names == sorted(FLAGGED_BY_QUALITY) and [int(i.get("id")) for i in images] == list(range(len(images)))
    for image in images:
        assert (image.get("width"), image.get("height")) == ("32", "32")  # the digits are saved at 32 x 32
        (tag,) = image
        assert tag.tag == "tag" and tag.get("source") == "manual"
        _, given, _, quality, suggested = DESIGN[image.get("name")]
        attributes = _attributes(tag)
        assert tag.get("label") == given == attributes["given_label"]
        assert attributes["item_id"] == image.get("name") and attributes["suggested_label"] == suggested
        assert float(attributes["score"]) == pytest.approx(1 - quality) and attributes["review"] == "unreviewed"
    assert cvat.validate_cvat_xml(root)["0"]["review"]["values"] == ["unreviewed", "correct", "wrong", "unsure"]


def test_an_independent_reader_parses_it(queue, object_queue, tmp_path):
    """FiftyOne's CVAT importer (Voxel51's implementation of the same format) reads our labels and boxes."""
    os.environ.setdefault("FIFTYONE_DO_NOT_TRACK", "true")
    import fiftyone.utils.cvat as fouc

    _, task_labels, images = fouc.load_cvat_image_annotations(str(
        cvat.write_cvat_xml(queue, tmp_path / "tags.xml", CLASSES)))
    assert [label["name"] for label in task_labels.labels] == CLASSES
    tags = {image.name: [(t.label, {a.name: a.value for a in t.attributes}["item_id"]) for t in image.tags]
            for image in images}
    assert tags == {Path(sid).name: [(DESIGN[sid][1], sid)] for sid in FLAGGED_BY_QUALITY}
    _, _, images = fouc.load_cvat_image_annotations(str(
        cvat.write_cvat_xml(object_queue, tmp_path / "boxes.xml", ["face", "flag", "rocket"])))
    (image,) = images
    assert (image.name, image.width, image.height) == ("astronaut.png", 512, 512)
    boxes = {{a.name: a.value for a in b.attributes}["item_id"]: (b.label, b.xtl, b.ytl, b.xbr, b.ybr)
             for b in image.boxes}
    assert boxes == {oid: (given, x, y, x + w, y + h) for oid, (x, y, w, h, given, _, _) in ASTRONAUT_BOXES.items()}


def test_export_then_import_gives_back_the_same_items_unreviewed(queue, object_queue, tmp_path):
    for items, classes in ((queue, CLASSES), (object_queue, ["face", "flag", "rocket"])):
        path = cvat.write_cvat_xml(items, tmp_path / "review.xml", classes)
        back = cvat.read_cvat_xml(path)
        columns = ["item_kind", "sample_id", "given_label", "suggested_label", "score", "reason", "content_hash"]
        pd.testing.assert_frame_equal(back[columns].sort_index(), items[columns].sort_index(), check_names=False)
        assert back["verdict"].isna().all() and back["reviewed_at"].isna().all()


def test_reviewer_edits_become_verdicts(queue, tmp_path):
    path = cvat.write_cvat_xml(queue, tmp_path / "review.xml", CLASSES)
    tree = ET.parse(path)
    shapes = {_attributes(tag)["item_id"]: tag for tag in tree.getroot().iter("tag")}

    def set_review(item: str, value: str) -> None:
        next(a for a in shapes[item].findall("attribute") if a.get("name") == "review").text = value

    # what a reviewer does in CVAT: relabel 1_0 to 1; mark 0_3 correct; 2_1 unsure; 0_2 wrong without a label
    shapes["images/1_0.png"].set("label", "1")
    set_review("images/0_3.png", "correct")
    set_review("images/2_1.png", "unsure")
    set_review("images/0_2.png", "wrong")
    tree.getroot().find("meta/dumped").text = "2026-03-02 10:30:00+01:00"
    tree.write(path, encoding="utf-8", xml_declaration=True)
    verdicts = cvat.read_cvat_xml(path, reviewer="ana")
    got = {sid: (row["verdict"], row["corrected_label"]) for sid, row in verdicts.iterrows()}
    assert got == {"images/1_0.png": ("wrong", "1"), "images/0_3.png": ("correct", None),
                   "images/2_1.png": ("unsure", None), "images/0_2.png": ("wrong", None),
                   "images/2_3.png": (None, None)}
    answered = verdicts[verdicts["verdict"].notna()]
    assert set(answered["reviewer"]) == {"ana"} and set(answered["tool"]) == {"cvat"}
    assert set(answered["reviewed_at"]) == {pd.Timestamp("2026-03-02 09:30:00", tz="UTC")}
    ledger = review.merge_verdicts(review.record_export(review.empty_ledger(), queue, "cvat"), verdicts)
    assert ledger.loc["images/1_0.png", "corrected_label"] == "1"
    assert ledger.loc["images/2_3.png", "verdict"] is None and len(ledger) == len(queue)


def test_images_zip_uses_the_names_of_the_xml(queue, tmp_path):
    archive = cvat.write_images_zip(queue, tmp_path / "images.zip")
    root = ET.parse(cvat.write_cvat_xml(queue, tmp_path / "review.xml", CLASSES)).getroot()
    # by default names are relative to the images' common folder (here data/images/)
    names = sorted(Path(sid).name for sid in FLAGGED_BY_QUALITY)
    assert [image.get("name") for image in root.findall("image")] == names
    with zipfile.ZipFile(archive) as zipped:
        assert sorted(zipped.namelist()) == names
        for name in names:
            assert zipped.read(name) == Path(queue.loc[f"images/{name}", "filepath"]).read_bytes()


@pytest.mark.parametrize(("edit", "message"), [
    (lambda root: setattr(root.find("version"), "text", "2.0"), "knows CVAT for images 1.1"),
    (lambda root: root.find("image/tag").set("label", "cat"), "label 'cat', not declared"),
    (lambda root: root.find("image").set("id", "x"), "not an integer"),
    (lambda root: root.find("meta/task/size").__setattr__("text", "99"), "says 99 images"),
    (lambda root: next(a for a in root.find("image/tag").findall("attribute")
                       if a.get("name") == "review").__setattr__("text", "maybe"), "'maybe' is not one of"),
    (lambda root: ET.SubElement(root.find("image/tag"), "attribute", name="colour"), "'colour' is not declared"),
])
def test_files_that_break_the_format_are_refused(queue, tmp_path, edit, message):
    path = cvat.write_cvat_xml(queue, tmp_path / "review.xml", CLASSES)
    tree = ET.parse(path)
    edit(tree.getroot())
    tree.write(path, encoding="utf-8", xml_declaration=True)
    with pytest.raises(cvat.CvatFormatError, match=message):
        cvat.read_cvat_xml(path)


def test_reversed_boxes_are_refused(object_queue, tmp_path):
    path = cvat.write_cvat_xml(object_queue, tmp_path / "boxes.xml", ["face", "flag", "rocket"])
    tree = ET.parse(path)
    box = tree.getroot().find("image/box")
    box.set("xbr", str(float(box.get("xtl")) - 1))
    tree.write(path, encoding="utf-8", xml_declaration=True)
    with pytest.raises(cvat.CvatFormatError, match="corners are reversed"):
        cvat.read_cvat_xml(path)
