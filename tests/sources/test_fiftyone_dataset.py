"""A FiftyOne dataset as the source of a run, through a real MongoDB: labels, annotator fields, splits from
tags, embeddings and predictions stored in fields, and the errors for bad names."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import audit
from audit.config import SourceConfig
from audit.sources import SourceError, load_source
from tests.fiftyone_helpers import unique_name, write_digit_images

pytestmark = pytest.mark.fiftyone


@pytest.fixture()
def digits_dataset(tmp_path: Path):
    import fiftyone as fo

    images = write_digit_images(tmp_path / "imgs", n=120)
    rng = np.random.default_rng(0)
    dataset = fo.Dataset(unique_name("la-src"))
    samples = []
    for i, (_, row) in enumerate(images.iterrows()):
        sample = fo.Sample(filepath=row["filepath"], tags=["train" if i % 4 else "test", "mine"])
        sample["ground_truth"] = fo.Classification(label=row["true_label"])
        sample["ann_a"] = fo.Classification(label=row["true_label"])
        if i % 3:
            sample["ann_b"] = fo.Classification(label=row["true_label"] if rng.random() > 0.2 else "0")
        pixels = np.asarray(row["pixels"], dtype=np.float32)
        sample["pixel_vec"] = (pixels - pixels.mean()).tolist()
        logits = np.full(10, -2.0)
        logits[int(row["true_label"])] = 3.0
        sample["model"] = fo.Classification(label=row["true_label"], logits=logits.tolist())
        samples.append(sample)
    dataset.add_samples(samples)
    yield dataset
    dataset.delete()


def test_fiftyone_source_reads_labels_annotators_and_splits(digits_dataset) -> None:
    table = load_source(SourceConfig(kind="fiftyone", dataset=digits_dataset.name, label_field="ground_truth",
                                     annotator_fields=["ann_a", "ann_b"]))
    assert len(table.samples) == 120 and set(table.samples.index) == {str(i) for i in digits_dataset.values("id")}
    assert sorted(table.samples["split"].unique()) == ["test", "train"]
    assert set(table.annotations["annotator"]) == {"ann_a", "ann_b"}
    assert len(table.annotations) == 120 + 80
    assert table.class_names == [str(d) for d in range(10)]


def test_run_on_a_fiftyone_source_with_its_own_embeddings_and_predictions(digits_dataset, tmp_path: Path) -> None:
    config = audit.build_config(overrides={
        "source": {"kind": "fiftyone", "dataset": digits_dataset.name, "label_field": "ground_truth"},
        "embedder": {"kind": "precomputed", "field": "pixel_vec"}, "pred_probs": {"field": "model"},
        "output_dir": tmp_path, "run_name": "fo", "report": False})
    run = audit.run(config, progress=False)
    assert run.summary["dataset"] == {"kind": "fiftyone", "name": digits_dataset.name, "path": None,
                                      "label_field": "ground_truth", "label_from": "label", "annotations_key": None}
    assert "pixel_vec" in run.summary["embedder"]["name"]
    assert "softmax" in run.check_metrics("mistakes")["pred_probs_source"]
    assert run.check_metrics("mistakes")["n_issues"] == 0, "the stored predictions agree with every label"
    assert run.samples["umap_x"].notna().all()


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"dataset": "no-such-dataset-xyz"}, "no FiftyOne dataset named 'no-such-dataset-xyz'"),
        ({"label_field": "nope"}, "has no label field 'nope'"),
        ({"label_field": "pixel_vec"}, "is not a Classification field"),
        ({"annotator_fields": ["ghost"]}, "has no annotator field 'ghost'"),
    ],
)
def test_bad_fiftyone_sources_are_clear_errors(digits_dataset, overrides: dict, message: str) -> None:
    settings = {"kind": "fiftyone", "dataset": digits_dataset.name, "label_field": "ground_truth", **overrides}
    with pytest.raises(SourceError, match=message):
        load_source(SourceConfig(**settings))


def test_empty_fiftyone_dataset_is_an_error() -> None:
    import fiftyone as fo

    dataset = fo.Dataset(unique_name("la-empty"))
    try:
        with pytest.raises(SourceError, match="is empty"):
            load_source(SourceConfig(kind="fiftyone", dataset=dataset.name))
    finally:
        dataset.delete()


# ------------------------------------------------------------------------------------------------ Detections


@pytest.fixture(scope="session")
def object_dataset(tmp_path_factory):
    from tests.sources import object_data as od

    built = od.object_data(tmp_path_factory)
    yield built
    od.delete_dataset(built)


def test_a_detections_field_gives_objects_and_annotators(object_dataset) -> None:
    import fiftyone as fo

    from tests.sources import object_data as od

    data = object_dataset
    table = load_source(SourceConfig(kind="fiftyone", dataset=data.dataset_name, label_field="gt",
                                     annotator_fields=["ann_b"]))
    dataset = fo.load_dataset(data.dataset_name)
    assert set(table.samples.index) == {str(i) for i in dataset.values("id")}
    assert {od.image_of(p): s for p, s in zip(table.samples["filepath"], table.samples["split"], strict=True)} == \
        data.splits
    truth_objects = table.objects[table.objects["annotator"] == ""]
    loaded = od.by_image_and_label(table, truth_objects)
    assert len(loaded) == len(data.truth)
    for truth in data.truth:
        row = loaded[(truth.image, truth.label)]
        width, height = data.sizes[truth.image]
        assert (row.x, row.y, row.w, row.h) == truth.box
        assert np.array_equal(od.decode(row["mask"], width, height), truth.mask)  # FiftyOne renders the crop back
        assert bool(row.iscrowd) == truth.iscrowd
    second = table.objects[table.objects["annotator"] == "ann_b"]
    assert len(second) == len(data.truth) - 1 and all(i.startswith("ann_b/") for i in second.index)
    moved = od.by_image_and_label(table, second)
    first = data.objects_of("coffee.jpg")[0]
    assert moved[("coffee.jpg", first.label)].x == first.box[0] + 6
    assert second["mask"].isna().all()
    coverage = table.description["object_coverage"]
    assert set(coverage["annotator"]) == {"", "ann_b"} and len(coverage) == 2 * len(data.images)


def test_detections_predictions_field(object_dataset) -> None:
    from audit.sources.fiftyone_dataset import load_fiftyone_object_predictions
    from tests.sources import object_data as od

    data = object_dataset
    table = load_source(SourceConfig(kind="fiftyone", dataset=data.dataset_name, label_field="gt"))
    predictions = load_fiftyone_object_predictions(data.dataset_name, "predictions", table.samples)
    assert set(predictions["annotator"]) == {"predictions"} and len(predictions) == len(data.truth)
    keyed = od.by_image_and_label(table, predictions)
    for name in data.images:
        for k, truth in enumerate(data.objects_of(name)):
            row = keyed[(name, truth.label)]
            assert row.score == pytest.approx(0.5 + 0.05 * k)
            assert (row.x, row.y, row.w, row.h) == truth.box
    with pytest.raises(SourceError, match="is not a Detections field"):
        load_fiftyone_object_predictions(data.dataset_name, "scene", table.samples)


def test_detections_with_a_classification_annotator_is_refused(object_dataset) -> None:
    with pytest.raises(SourceError, match=r"annotator field 'scene' .* is not a Detections field"):
        load_source(SourceConfig(kind="fiftyone", dataset=object_dataset.dataset_name, label_field="gt",
                                 annotator_fields=["scene"]))
