"""The hygiene checks in a real run, as one file each declares them: a delivery that re-adds images under new ids
(one in the test split with another label), a darkened image and a blurred one, among real digit scans; the
run's duplicates, leakage and quality findings, the gate rule ``max_split_leakage``, the report sections and the
FiftyOne tags all come from the declarations."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image, ImageFilter

from audit import gate
from tests.conftest import write_digit

N = 300


@pytest.fixture(scope="module")
def hygiene_run(tmp_path_factory, digit_images):
    import audit

    images, targets = digit_images
    root = tmp_path_factory.mktemp("hygiene")
    rows = []
    for i in range(N):
        path = write_digit(root / "images" / f"d{i:04d}.png", images[i], side=48)
        rows.append({"sample_id": f"d{i:04d}", "filepath": str(path), "label": str(targets[i]), "split": "train"})
    # the week's delivery: exact copies under new ids (one in test with another label), a resized copy
    for k, source in enumerate((3, 4, 5)):
        copy = root / "images" / f"copy{k}.png"
        copy.write_bytes(Path(rows[source]["filepath"]).read_bytes())
        label = rows[source]["label"] if k else str((int(rows[source]["label"]) + 1) % 10)
        rows.append({"sample_id": f"copy{k}", "filepath": str(copy), "label": label, "split": "test" if k == 0
                     else "train"})
    Image.open(rows[6]["filepath"]).resize((64, 64)).save(root / "images" / "resized.png")
    rows.append({"sample_id": "resized", "filepath": str(root / "images" / "resized.png"), "label": rows[6]["label"],
                 "split": "train"})
    photo = Image.fromarray(np.asarray(Image.open(rows[7]["filepath"]).convert("RGB")) // 12)
    photo.save(root / "images" / "dark.png")
    rows.append({"sample_id": "dark", "filepath": str(root / "images" / "dark.png"), "label": rows[7]["label"],
                 "split": "train"})
    Image.open(rows[8]["filepath"]).filter(ImageFilter.GaussianBlur(4)).save(root / "images" / "blurry.png")
    rows.append({"sample_id": "blurry", "filepath": str(root / "images" / "blurry.png"), "label": rows[8]["label"],
                 "split": "train"})
    manifest = root / "manifest.csv"
    pd.DataFrame(rows).to_csv(manifest, index=False)
    config = audit.build_config(overrides={
        "source": {"kind": "manifest", "path": manifest}, "embedder": {"kind": "pixels", "cache_dir": root / "c"},
        "output_dir": root / "reports", "run_name": "hygiene"})
    return audit.run(config, progress=False)


def test_copies_are_grouped_with_the_conflict_and_the_leakage(hygiene_run) -> None:
    samples = hygiene_run.samples
    metrics = hygiene_run.check_metrics("duplicates")
    group = samples.at["copy0", "duplicates_group"]
    assert group >= 0 and samples.at["d0003", "duplicates_group"] == group
    assert samples.at["copy0", "duplicates_is_conflict"] and samples.at["copy0", "duplicates_leakage"]
    assert samples.at["resized", "duplicates_group"] == samples.at["d0006", "duplicates_group"] >= 0
    assert metrics["leakage"] == {"train|test": 1} and metrics["n_conflicts"] >= 1
    # one copy per group is kept; the resized copy is the larger one
    assert samples.at["resized", "duplicates_keep"] and not samples.at["d0006", "duplicates_keep"]
    assert metrics["top_groups"][0]["conflict"]  # conflicts listed first


def test_quality_flags_the_dark_and_the_blurred_image(hygiene_run) -> None:
    samples = hygiene_run.samples
    assert samples.at["dark", "quality_is_dark"]
    assert samples.at["blurry", "quality_is_blurry"]
    assert samples["quality_any"].sum() <= 10  # the plain scans are left alone


def test_gate_rule_from_the_duplicates_declaration(hygiene_run) -> None:
    verdict = gate.evaluate(hygiene_run, None, {"max_split_leakage": 0, "max_duplicate_conflicts": 5})
    rules = {r.name: r for r in verdict.rules}
    assert not rules["max_split_leakage"].passed and rules["max_split_leakage"].value == 1
    assert rules["max_duplicate_conflicts"].passed


def test_report_shows_the_hygiene_sections(hygiene_run) -> None:
    html = (hygiene_run.path / "index.html").read_text(encoding="utf-8")
    for anchor in ('id="duplicates"', 'id="outliers"', 'id="quality"'):
        assert anchor in html
    assert "train ↔ test" in html


@pytest.mark.fiftyone
def test_fiftyone_tags_from_the_declarations(hygiene_run) -> None:
    import fiftyone as fo

    from audit.integrations import fiftyone as af
    from tests.fiftyone_helpers import unique_name

    name = af.export_run(hygiene_run.path, unique_name("hygiene"))
    try:
        dataset = fo.load_dataset(name)
        tags = dataset.count_sample_tags()
        assert tags["split_leakage"] == int(hygiene_run.samples["duplicates_leakage"].sum())
        assert tags["image_quality"] == int(hygiene_run.samples["quality_any"].sum())
        assert {"la-duplicates", "la-split-leakage", "la-image-quality"} <= set(dataset.list_saved_views())
    finally:
        fo.delete_dataset(name)
