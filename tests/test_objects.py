"""Objects as audited items, end to end on the detection demo (real digit scans on real photo backgrounds, exact
boxes and masks, 10% errors of each kind in the shipped boxes, three annotators): the crops are embedded through
the image machinery, the object checks find the injected errors, and the report, gate and FiftyOne export show
them."""

from __future__ import annotations

import json

import numpy as np
import pytest

from audit import gate
from audit.results import RunResults


@pytest.fixture(scope="module")
def detection(tmp_path_factory):
    from audit.demos.detection import run_detection_demo

    root = tmp_path_factory.mktemp("detection")
    outcome = run_detection_demo(output_dir=root, n_images=300, embedder="pixels", predictions="simulated",
                                 cache_dir=root / "cache", progress=False)
    return outcome, RunResults.load(outcome.run_path)


def test_wrong_class_boxes_are_found_without_predictions(detection) -> None:
    outcome, _ = detection
    wrong = outcome.per_kind.loc["wrong_class"]
    # acceptance: wrong-class boxes found with F1 >= 0.9 (the flags come from the crops alone: object_mistakes)
    assert wrong["n_errors"] > 100 and wrong["f1"] >= 0.9, outcome.per_kind
    # the other kinds are found far above chance (10% of the boxes carry each error)
    for kind in ("missing", "duplicate"):
        assert outcome.per_kind.loc[kind, "f1"] >= 0.9, outcome.per_kind
    for kind in ("location", "spurious"):
        assert outcome.per_kind.loc[kind, "precision"] >= 0.6 and outcome.per_kind.loc[kind, "recall"] >= 0.5


def test_objects_reuse_the_image_machinery(detection) -> None:
    _, run = detection
    objects = run.objects
    audited = objects[objects["audited"]]
    assert set(objects["annotator"]) == {"", "alice", "bob", "carol", "consensus", "predictions"}
    assert (audited["annotator"] == "").all() and len(audited) == run.summary["objects"]["counts"]["audited"]
    crops = run.object_embeddings
    assert crops is not None and crops.shape == (len(audited), run.summary["embedder"]["dim"])
    assert np.isfinite(audited[["umap_x", "umap_y"]].to_numpy()).all()
    summary = run.summary["objects"]
    assert summary["audited"] == "the dataset's shipped boxes"
    assert set(summary["checks"]) == {"object_agreement", "object_detection", "object_distribution",
                                      "object_mistakes"}
    wrong = audited[audited["object_mistakes_kind"] == "wrong_class"]
    assert (wrong["object_mistakes_suggested_label"] != wrong["label"]).all()
    # the crop cache key is the image's content hash plus the box: a re-run finds every crop
    assert audited["crop_key"].str.len().eq(32).all()


def test_object_gate_rules_read_the_object_metrics(detection) -> None:
    _, run = detection
    verdict = gate.evaluate(run, None, {"max_object_issue_rate": 0.05, "min_box_mean_iou": 0.5,
                                        "min_objects_per_class": 1, "max_class_object_issue_rate": 0.99})
    rules = {r.name: r for r in verdict.rules}
    issue_rate = run.summary["objects"]["checks"]["object_mistakes"]["issue_rate"]
    assert rules["max_object_issue_rate"].value == pytest.approx(issue_rate) and not rules[
        "max_object_issue_rate"].passed
    assert rules["min_box_mean_iou"].passed and rules["min_objects_per_class[0]"].passed
    assert sum(name.startswith("max_class_object_issue_rate[") for name in rules) == 10


def test_report_shows_the_object_sections(detection) -> None:
    _, run = detection
    html = (run.path / "index.html").read_text(encoding="utf-8")
    for anchor in ('id="object-suspects"', 'id="object-map"', 'id="object-distribution"', 'id="object-agreement"',
                   'id="object-detection"'):
        assert anchor in html
    assert 'id="gallery"' not in html  # images carry boxes, not a label: no image-label sections
    summary = json.loads((run.path / "summary.json").read_text())
    assert summary["checks"]["mistakes"]["skipped"]


@pytest.mark.fiftyone
def test_fiftyone_gets_detections_with_the_checks_attributes(detection) -> None:
    import fiftyone as fo

    from audit.integrations import fiftyone as af
    from tests.fiftyone_helpers import unique_name

    _, run = detection
    name = af.export_run(run.path, unique_name("detection"))
    try:
        dataset = fo.load_dataset(name)
        audited = run.objects[run.objects["audited"]]
        assert dataset.count(f"{af.FIELD_OBJECTS}.detections") == len(audited)
        suspects = dataset.load_saved_view(af.VIEW_SUSPECT_BOXES)
        assert suspects.count(f"{af.FIELD_OBJECTS}.detections") == int(audited["object_mistakes_is_issue"].sum())
        assert dataset.count_label_tags()[af.TAG_SUSPECT_BOX] == int(audited["object_mistakes_is_issue"].sum())
        assert af.OBJECT_VISUALIZATION_KEY in dataset.list_brain_runs()
        detection_ = dataset.first()[af.FIELD_OBJECTS].detections[0]
        assert detection_["object_mistakes_label_quality"] is not None and detection_.mask is not None
    finally:
        fo.delete_dataset(name)
