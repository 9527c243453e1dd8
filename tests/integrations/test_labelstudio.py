"""Label Studio round trip against a real server: export the review queue, answer as a reviewer, import.

The server comes from the session fixture ``labelstudio`` (tests/labelstudio_server.py). Expected verdicts are
what the test's reviewer answered, and the run's truths come from the hand-made design in tests/test_review.py.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import httpx
import numpy as np
import pandas as pd
import pytest

from audit import review
from audit.integrations import labelstudio as ls
from audit.results import write_run
from tests.test_review import DESIGN, make_review_run

CLASSES = ["0", "1", "2"]


@pytest.fixture(scope="module")
def review_run(tmp_path_factory):
    return make_review_run(tmp_path_factory.mktemp("labelstudio-review"))


def _http(server) -> httpx.Client:
    return httpx.Client(base_url=server.url, headers={"Authorization": f"Token {server.token}"}, timeout=30)


def _tasks_by_item(client, project_id: int) -> dict[str, dict]:
    tasks = [t.model_dump() for t in client.tasks.list(project=project_id, fields="all")]
    return {t["data"]["item_id"]: t for t in tasks}


def _served_bytes(server, url: str) -> bytes:
    with _http(server) as http:
        response = http.get(url)
    assert response.status_code == 200, (url, response.status_code)
    return response.content


def _choice(value: str) -> list[dict]:
    return [{"from_name": "label", "to_name": "image", "type": "choices", "value": {"choices": [value]}}]


def test_review_round_trip(labelstudio, review_run, tmp_path):
    server = labelstudio
    client = labelstudio_client(server)
    queue = review.build_review_queue(review_run.run_dir, k=5)
    title = "label-audit weekly review"
    exported = labelstudio_export(queue, server, title)
    assert (exported.created, exported.n_created, exported.n_updated, exported.n_kept) == (True, 5, 0, 0)
    ledger = review.record_export(review.empty_ledger(), queue, "labelstudio", exported_at=datetime.now(UTC))

    tasks = _tasks_by_item(client, exported.project_id)
    assert set(tasks) == set(queue.index)
    for item_id, task in tasks.items():
        _, given, _, quality, suggested = DESIGN[item_id]
        assert task["data"]["given_label"] == given
        assert given in task["data"]["prompt"] and suggested in task["data"]["prompt"]
        (prediction,) = task["predictions"]
        assert prediction["result"][0]["value"]["choices"] == [suggested]
        assert prediction["score"] == pytest.approx(1 - quality)
        # the image was uploaded: the server serves the very same bytes
        assert task["data"]["image"].startswith("/data/upload/")
        assert _served_bytes(server, task["data"]["image"]) == Path(review_run.samples.loc[item_id, "filepath"]
                                                                    ).read_bytes()

    # The reviewer: 1_0 (labelled 2) is a 1; 0_3 is right as labelled; 2_1 cannot tell; skips 0_2; 2_3 untouched.
    answers = {
        "images/1_0.png": client.annotations.create(id=tasks["images/1_0.png"]["id"], result=_choice("1")),
        "images/0_3.png": client.annotations.create(id=tasks["images/0_3.png"]["id"], result=_choice("0")),
        "images/2_1.png": client.annotations.create(id=tasks["images/2_1.png"]["id"],
                                                    result=_choice(ls.UNSURE_ALIAS)),
    }
    client.annotations.create(id=tasks["images/0_2.png"]["id"], result=[], was_cancelled=True)

    verdicts = ls.read_project_verdicts(url=server.url, api_key=server.token, title=title)
    ledger = review.merge_verdicts(ledger, verdicts)
    expected = {"images/1_0.png": ("wrong", "1"), "images/0_3.png": ("correct", None),
                "images/2_1.png": ("unsure", None), "images/0_2.png": (None, None), "images/2_3.png": (None, None)}
    got = {sid: (row["verdict"], row["corrected_label"]) for sid, row in ledger.iterrows()}
    assert got == expected
    for sid, annotation in answers.items():
        assert ledger.loc[sid, "reviewer"] == server.username
        assert ledger.loc[sid, "reviewed_at"] == pd.Timestamp(annotation.updated_at)
        assert ledger.loc[sid, "tool"] == "labelstudio"
        assert ledger.loc[sid, "content_hash"] == review_run.samples.loc[sid, "content_hash"]
    pd.testing.assert_frame_equal(review.merge_verdicts(ledger, verdicts), ledger)  # importing twice: no change
    review.write_ledger(review_run.run_dir, ledger)
    pd.testing.assert_frame_equal(review.read_ledger(review_run.run_dir), ledger)

    # corrected labels: a new manifest where only 1_0 changed (to what the reviewer chose); the source untouched
    source_bytes = review_run.manifest.read_bytes()
    files = review.write_corrected_labels(ledger, review_run.run_dir, tmp_path / "fixed")
    assert review_run.manifest.read_bytes() == source_bytes
    source = pd.read_csv(review_run.manifest, dtype=str, keep_default_na=False)
    corrected = pd.read_csv(files.manifest, dtype=str, keep_default_na=False)
    assert (corrected != source).sum().sum() == 1
    assert corrected.loc[source["filepath"] == "images/1_0.png", "label"].item() == "1"
    # the reviewer's "0_3 is right" means it is not flagged again while image and label stay the same
    assert list(review.confirmed_correct(ledger, review_run.samples)) == ["images/0_3.png"]

    # exporting again updates the same project: answered tasks kept, pending ones refreshed, nothing added
    again = labelstudio_export(queue, server, title)
    assert (again.project_id, again.created, again.n_created, again.n_kept, again.n_updated) == (
        exported.project_id, False, 0, 3, 2)
    assert [p.id for p in client.projects.list() if p.title == title] == [exported.project_id]
    assert len(_tasks_by_item(client, exported.project_id)) == 5

    # Label Studio's own JSON export (the Export button) reads back to the same verdicts
    with _http(server) as http:
        response = http.get(f"/api/projects/{exported.project_id}/export", params={"exportType": "JSON"})
    assert response.status_code == 200
    export_file = tmp_path / "export.json"
    export_file.write_bytes(response.content)
    from_file = ls.read_export_file(export_file, reviewers={1: server.username})
    pd.testing.assert_frame_equal(from_file.sort_index(), verdicts.sort_index())


def labelstudio_client(server):
    return ls.connect(server.url, server.token)


def labelstudio_export(queue, server, title, **options):
    return ls.export_to_project(queue, CLASSES, url=server.url, api_key=server.token, title=title, **options)


def test_local_files_and_the_manual_import_file(labelstudio, review_run, tmp_path):
    server = labelstudio
    client = labelstudio_client(server)
    queue = review.build_review_queue(review_run.run_dir, k=3)
    written = ls.write_tasks_json(queue, tmp_path / "tasks.json", CLASSES, document_root=server.document_root)
    assert written.n_tasks == 3
    # what a user does with the two files: a project with the config, a local-files storage, Import the JSON
    project = client.projects.create(title="manual import", label_config=written.label_config.read_text())
    client.import_storage.local.create(project=project.id, path=str(review_run.run_dir.parents[1] / "data"),
                                       use_blob_urls=True)
    with _http(server) as http, open(written.tasks, "rb") as handle:
        response = http.post(f"/api/projects/{project.id}/import", files={"file": ("tasks.json", handle)})
    assert response.status_code == 201, response.text
    assert response.json()["task_count"] == 3 and response.json()["prediction_count"] == 3
    tasks = _tasks_by_item(client, project.id)
    assert set(tasks) == set(queue.index)
    for item_id, task in tasks.items():
        assert task["data"]["image"].startswith("/data/local-files/?d=")
        assert _served_bytes(server, task["data"]["image"]) == Path(queue.loc[item_id, "filepath"]).read_bytes()

    # the same through the API: images="local-files" adds the storage itself and copies nothing
    exported = labelstudio_export(queue, server, "local files review", images="local-files",
                                  document_root=server.document_root)
    assert exported.n_created == 3
    for item_id, task in _tasks_by_item(client, exported.project_id).items():
        assert _served_bytes(server, task["data"]["image"]) == Path(queue.loc[item_id, "filepath"]).read_bytes()


def test_object_review_with_boxes(labelstudio, tmp_path_factory):
    """Boxes on a real photo (scikit-image's astronaut): the suspect box comes pre-drawn with the suggestion."""
    from PIL import Image
    from skimage import data

    server = labelstudio
    client = labelstudio_client(server)
    folder = tmp_path_factory.mktemp("labelstudio-objects")
    image_path = folder / "astronaut.png"
    Image.fromarray(data.astronaut()).save(image_path)  # 512 x 512
    samples = pd.DataFrame({"filepath": [str(image_path)], "label": [None], "split": ["all"], "readable": [True],
                            "problems": [""], "content_hash": ["astronaut-v1"]},
                           index=pd.Index(["astronaut.png"], name="sample_id"))
    run_dir = folder / "run"
    write_run(run_dir, samples, {"run_name": "objects", "class_names": ["face", "flag", "rocket"]})
    boxes = {"o-face": (170.0, 20.0, 130.0, 160.0, "flag", "face", 0.05),
             "o-rocket": (0.0, 0.0, 120.0, 250.0, "rocket", "flag", 0.20),
             "o-flag": (400.0, 180.0, 60.0, 40.0, "flag", "rocket", 0.30)}
    objects = pd.DataFrame([
        {"object_id": oid, "sample_id": "astronaut.png", "label": given, "x": x, "y": y, "w": w, "h": h,
         "xn": x / 512, "yn": y / 512, "wn": w / 512, "hn": h / 512, "image_width": 512, "image_height": 512,
         "mistakes_is_issue": True, "mistakes_label_quality": quality, "mistakes_suggested_label": suggested}
        for oid, (x, y, w, h, given, suggested, quality) in boxes.items()]).set_index("object_id")
    queue = review.build_review_queue(run_dir, k=10, objects=objects)
    assert list(queue.index) == ["o-face", "o-rocket", "o-flag"] and set(queue["item_kind"]) == {"object"}
    exported = ls.export_to_project(queue, ["face", "flag", "rocket"], url=server.url, api_key=server.token,
                                             title="object review")
    assert exported.n_created == 3
    tasks = _tasks_by_item(client, exported.project_id)
    for oid, (x, y, w, h, _, suggested, _) in boxes.items():
        region = tasks[oid]["predictions"][0]["result"][0]
        assert region["value"]["rectanglelabels"] == [suggested]
        assert [region["value"][k] for k in ("x", "y", "width", "height")] == pytest.approx(
            [x / 5.12, y / 5.12, w / 5.12, h / 5.12])

    def region(oid: str, label: str, shift: float = 0.0) -> list[dict]:
        x, y, w, h = boxes[oid][:4]
        return [{"from_name": "label", "to_name": "image", "type": "rectanglelabels", "original_width": 512,
                 "original_height": 512, "value": {"x": x / 5.12 + shift, "y": y / 5.12, "width": w / 5.12,
                                                   "height": h / 5.12, "rotation": 0, "rectanglelabels": [label]}}]

    # The reviewer: the face box is a face (nudged a little), the rocket is a rocket, the "flag" box is nothing.
    client.annotations.create(id=tasks["o-face"]["id"], result=region("o-face", "face", shift=1.5))
    client.annotations.create(id=tasks["o-rocket"]["id"], result=region("o-rocket", "rocket"))
    client.annotations.create(id=tasks["o-flag"]["id"], result=[])
    verdicts = ls.read_project_verdicts(url=server.url, api_key=server.token,
                                                 project_id=exported.project_id)
    got = {oid: (row["verdict"], row["corrected_label"], row["sample_id"]) for oid, row in verdicts.iterrows()}
    assert got == {"o-face": ("wrong", "face", "astronaut.png"), "o-rocket": ("correct", None, "astronaut.png"),
                   "o-flag": ("wrong", None, "astronaut.png")}
    assert set(verdicts["item_kind"]) == {"object"}
    assert np.allclose(verdicts.loc[list(boxes), "score"], [0.95, 0.80, 0.70])


def test_foreign_or_broken_exports_are_refused(tmp_path):
    foreign = tmp_path / "foreign.json"
    foreign.write_text(json.dumps([{"id": 1, "data": {"image": "x.png"}, "annotations": []}]))
    with pytest.raises(ls.LabelStudioError, match="not label-audit review tasks"):
        ls.read_export_file(foreign)
    broken = tmp_path / "broken.json"
    broken.write_text('{"tasks": ')
    with pytest.raises(ls.LabelStudioError, match="could not be read"):
        ls.read_export_file(broken)
    with pytest.raises(ls.LabelStudioError, match="reserved"):
        ls.label_config(["cat", ls.UNSURE_VALUE])
