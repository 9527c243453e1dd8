"""Label Studio exports: the documented "JSON" export (rectangles, polygons, brush masks encoded by the SDK's own
RLE encoder, two annotators), "JSON_MIN" written by the SDK's own converter from it, a real server's export when
the session's Label Studio fixture can start, and the errors bad exports must give."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from audit.config import SourceConfig
from audit.sources import SourceError, load_source
from audit.sources.labelstudio import image_name_candidates
from tests.sources import object_data as od


@pytest.fixture(scope="session")
def photos(tmp_path_factory):
    return od.photo_data(tmp_path_factory)


def _check_against_truth(table, data: od.ObjectData, annotators: tuple[str, str] = ("1", "2")) -> None:
    """User 1 drew rectangles, user 2 polygons on the boxes (brush masks on crowd objects); see ls_export."""
    rectangles, second = (table.objects[table.objects["annotator"] == a] for a in annotators)
    assert len(rectangles) == len(second) == len(data.truth)
    mine, theirs = od.by_image_and_label(table, rectangles), od.by_image_and_label(table, second)
    for truth in data.truth:
        width, height = data.sizes[truth.image]
        rect = mine[(truth.image, truth.label)]
        assert np.allclose([rect.x, rect.y, rect.w, rect.h], truth.box, atol=1e-9)
        assert rect["mask"] is None and (rect.image_width, rect.image_height) == (width, height)
        other = theirs[(truth.image, truth.label)]
        mask = od.decode(other["mask"], width, height)
        if truth.iscrowd:  # the brush mask is the digit, pixel for pixel
            assert np.array_equal(mask, truth.mask)
            assert (other.x, other.y, other.w, other.h) == truth.box
        else:  # a polygon on the box corners covers the box
            x, y, w, h = truth.box
            box_mask = np.zeros((height, width), dtype=bool)
            box_mask[y:y + h, x:x + w] = True
            assert np.array_equal(mask, box_mask)
            assert np.allclose([other.x, other.y, other.w, other.h], truth.box, atol=1e-9)


def test_json_export_with_two_annotators(photos, tmp_path):
    export = od.write_ls_export(photos, tmp_path / "ls")
    table = load_source(SourceConfig(kind="labelstudio", path=export))
    assert sorted(od.image_of(p) for p in table.samples["filepath"]) == sorted(photos.images)
    assert table.samples["readable"].all(), "upload names found under images/"
    assert sorted(table.objects["annotator"].unique()) == ["1", "2"]
    _check_against_truth(table, photos)
    coverage = table.description["object_coverage"]
    coins = od.upload_name("coins.png")
    assert set(coverage.loc[coverage["sample_id"] == coins, "annotator"]) == {"1"}, "user 2 never saw coins"
    assert table.objects.index.is_unique


def test_json_min_written_by_the_sdk_converter(photos, tmp_path):
    from label_studio_sdk.converter import Converter

    export = od.write_ls_export(photos, tmp_path / "ls")
    Converter(od.LS_CONFIG, project_dir=str(tmp_path / "ls"), download_resources=False).convert_to_json_min(
        str(export), str(tmp_path / "min"), is_dir=False)
    path = tmp_path / "min" / "result.json"
    records = json.loads(path.read_text())
    assert {"box", "annotator", "annotation_id"} <= set(records[0]), "the converter's own JSON_MIN layout"
    table = load_source(SourceConfig(kind="labelstudio", path=path, images=tmp_path / "ls" / "images"))
    _check_against_truth(table, photos)
    full = load_source(SourceConfig(kind="labelstudio", path=export))
    columns = ["sample_id", "label", "x", "y", "w", "h", "mask", "annotator"]
    order = ["annotator", "sample_id", "label"]
    pd.testing.assert_frame_equal(table.objects[columns].sort_values(order).reset_index(drop=True),
                                  full.objects[columns].sort_values(order).reset_index(drop=True))


def test_label_studio_export_as_one_annotator_file(photos, tmp_path):
    export = od.write_ls_export(photos, tmp_path / "ls")
    table = load_source(SourceConfig(kind="labelstudio", annotator_files={"vendor": export}))
    assert sorted(table.objects["annotator"].unique()) == ["vendor:1", "vendor:2"]
    assert all(i.startswith("vendor/") for i in table.objects.index)
    coverage = table.description["object_coverage"]
    assert set(coverage["annotator"]) == {"vendor:1", "vendor:2"}


def test_image_urls_map_to_local_names():
    assert image_name_candidates("/data/upload/3/6f4b7e3c-cat.jpg") == ["6f4b7e3c-cat.jpg", "cat.jpg"]
    assert image_name_candidates("/data/local-files/?d=photos/a%20b.png") == ["photos/a b.png", "a b.png"]
    assert image_name_candidates("s3://bucket/x/dog.png") == ["dog.png"]


def _task(result, *, url="/data/local-files/?d=pics/cat.jpg", cancelled=False, completed_by=7) -> dict:
    return {"id": 1, "data": {"image": url}, "annotations": [
        {"id": 5, "completed_by": completed_by, "was_cancelled": cancelled, "result": result}], "predictions": []}


def _rect(**value) -> dict:
    return {"id": "r1", "type": "rectanglelabels", "from_name": "box", "to_name": "image", "original_width": 200,
            "original_height": 100, "value": {"x": 10, "y": 20, "width": 25, "height": 30, "rotation": 0,
                                              "rectanglelabels": ["cat"], **value}}


def _write(tmp_path: Path, tasks: list[dict]) -> Path:
    from PIL import Image
    from skimage.data import chelsea

    (tmp_path / "pics").mkdir(exist_ok=True)
    Image.fromarray(chelsea()).resize((200, 100)).save(tmp_path / "pics" / "cat.jpg")
    path = tmp_path / "export.json"
    path.write_text(json.dumps(tasks))
    return path


def test_rotation_several_labels_local_files_and_cancelled(tmp_path):
    tasks = [_task([_rect(rotation=90, rectanglelabels=["cat", "pet"])]),
             {**_task([_rect()], cancelled=True), "id": 2}]
    path = _write(tmp_path, tasks)
    table = load_source(SourceConfig(kind="labelstudio", path=path, images=tmp_path))
    assert table.samples.index.tolist() == ["pics/cat.jpg"] and table.samples["readable"].all()
    assert table.objects["label"].tolist() == ["cat", "pet"]
    row = table.objects.iloc[0]
    # a 50 x 30 px box turned 90 degrees clockwise about its top-left corner (20, 20) spans x -10..20, y 20..70;
    # clipped to the image: x 0..20
    assert (row.x, row.y, row.w, row.h) == pytest.approx((0.0, 20.0, 20.0, 50.0))
    assert row.problems == "clipped"
    assert math.isclose(row.wn, 20 / 200) and math.isclose(row.hn, 50 / 100)
    assert table.description["ignored_results"] == {"cancelled annotations": 1}
    assert set(table.objects["annotator"]) == {""}, "a single annotator is the ground truth"


@pytest.mark.parametrize(("result", "message"), [
    ([{"id": "p", "type": "polygonlabels", "original_width": 200, "original_height": 100,
       "value": {"points": [[1, 2, 3], [4, 5]], "polygonlabels": ["cat"]}}],
     r"export.json: task 1 annotation 5 region p: malformed polygon"),
    ([{"id": "p", "type": "polygonlabels", "original_width": 200, "original_height": 100,
       "value": {"points": [[1, 2], [4, 5]], "polygonlabels": ["cat"]}}],
     r"task 1 annotation 5 region p: malformed polygon \(ring 0 has 4 coordinates"),
    ([{"id": "b", "type": "brushlabels", "original_width": 200, "original_height": 100,
       "value": {"format": "rle", "rle": [0, 0, 0, 16, 15, 56], "brushlabels": ["cat"]}}],
     r"task 1 annotation 5 region b: malformed brush RLE for a 200 x 100 image"),
    ([{"id": "r", "type": "rectanglelabels", "value": {"x": 1, "y": 1, "width": 2, "height": 2,
                                                       "rectanglelabels": ["cat"]}}], None),
])
def test_bad_regions_name_the_file_and_the_region(tmp_path, result, message):
    path = _write(tmp_path, [_task(result)])
    if message is None:  # no original size: the image header gives it
        table = load_source(SourceConfig(kind="labelstudio", path=path, images=tmp_path))
        assert table.objects.iloc[0].image_width == 200
        return
    with pytest.raises(SourceError, match=message):
        load_source(SourceConfig(kind="labelstudio", path=path, images=tmp_path))


def test_an_export_without_image_urls_is_an_error(tmp_path):
    path = _write(tmp_path, [{"id": 3, "data": {"text": "hello"}, "annotations": []}])
    with pytest.raises(SourceError, match=r"export.json: task 3 has no image URL in its data \(text\)"):
        load_source(SourceConfig(kind="labelstudio", path=path))


# ------------------------------------------------------------------------------------------------ real server


@pytest.mark.slow
def test_a_real_label_studio_export(labelstudio, photos, tmp_path):
    """Import tasks with both annotators' annotations into a real server, export JSON and JSON_MIN from it,
    and load what the server wrote. Images are served from the server's local-files root."""
    import httpx

    root = labelstudio.document_root
    relative = {name: path.resolve().relative_to(Path(root).resolve()).as_posix()
                for name, path in photos.images.items()}
    tasks = od.ls_export(photos, lambda name: f"/data/local-files/?d={relative[name]}")
    headers = {"Authorization": f"Token {labelstudio.token}"}
    with httpx.Client(base_url=labelstudio.url, headers=headers, timeout=60) as http:
        first = http.get("/api/current-user/whoami").json()
        second = http.post("/api/users/", json={"email": "second@example.com", "username": "second",
                                                 "first_name": "Second", "last_name": "Annotator"})
        assert second.status_code in (200, 201), second.text[:500]
        user = {1: first["id"], 2: second.json()["id"]}
        imported = [{"data": t["data"], "annotations": [{"result": a["result"],
                                                         "completed_by": user[a["completed_by"]]}
                                                        for a in t["annotations"]]} for t in tasks]
        project = http.post("/api/projects", json={"title": "object sources", "label_config": od.LS_CONFIG})
        project.raise_for_status()
        pid = project.json()["id"]
        response = http.post(f"/api/projects/{pid}/import", json=imported)
        assert response.status_code == 201, response.text[:2000]
        for kind in ("JSON", "JSON_MIN"):
            response = http.get(f"/api/projects/{pid}/export", params={"exportType": kind})
            response.raise_for_status()
            (tmp_path / f"{kind}.json").write_bytes(response.content)
    for kind in ("JSON", "JSON_MIN"):
        table = load_source(SourceConfig(kind="labelstudio", path=tmp_path / f"{kind}.json", images=root))
        assert table.samples["readable"].all()
        assert len(table.samples) == len(photos.images)
        # the server keeps each annotation's author: user 1 drew rectangles, user 2 polygons and brushes
        assert sorted(table.objects["annotator"].unique()) == sorted(str(u) for u in user.values())
        _check_against_truth(table, photos, (str(user[1]), str(user[2])))
