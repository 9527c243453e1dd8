"""A whole run of a segmentation dataset (the segmentation demo: real digit scans on real photos, injected mask errors,
three annotators): the mask checks' figures against brute-force counts of the mask files, wrong-class regions
found through the object pipeline and the image ranking scored against the injected truth, the gate's mask rules,
the report's sections, a run with per-pixel probabilities, and the FiftyOne export into a real MongoDB."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from audit import gate
from audit.config import build_config
from audit.demos.segmentation import (
    CLASSES,
    SegmentationDemoOutcome,
    build_segmentation_demo,
    evaluate,
    findings_from_run,
    run_segmentation_demo,
    simulate_pixel_probabilities,
)
from audit.results import RunResults
from audit.runner import run as run_audit

N_IMAGES = 200


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    return build_segmentation_demo(tmp_path_factory.mktemp("segrun") / "data", n_images=N_IMAGES, seed=0)


def audit_demo(demo, output: Path, name: str, **more) -> RunResults:
    config = build_config(overrides={
        "source": {"kind": "masks", "path": demo.manifest, "class_map": demo.class_map,
                   "annotator_files": demo.annotator_folders()},
        "embedder": {"kind": "pixels", "cache_dir": output / "cache"}, "projection": {"enabled": False},
        "output_dir": output, "run_name": name, **more})
    return run_audit(config, progress=False)


@pytest.fixture(scope="module")
def run(demo, tmp_path_factory) -> RunResults:
    """No model: regions audited as objects, and the annotators' consensus."""
    return audit_demo(demo, tmp_path_factory.mktemp("segruns"), "seg")


@pytest.fixture(scope="module")
def predicted(demo, tmp_path_factory) -> RunResults:
    """With per-pixel probabilities (simulated from the truth), no report."""
    folder = simulate_pixel_probabilities(demo.samples, demo.spec, demo.root / "pred_probs", seed=0)
    return audit_demo(demo, tmp_path_factory.mktemp("segpred"), "seg-probs", mask_probs=folder, report=False)


def pixels(path) -> np.ndarray:
    return np.asarray(Image.open(path))


# ------------------------------------------------------------------------------------------------ the checks


def test_pixel_shares_match_a_count_of_the_mask_files(run, demo) -> None:
    counts = np.zeros(len(CLASSES), np.int64)
    for path in demo.samples["mask"]:
        counts += np.bincount(pixels(path).ravel(), minlength=256)[: len(CLASSES)]
    metrics = run.check_metrics("mask_stats")
    shares = {name: entry["share"] for name, entry in metrics["classes"].items()}
    assert shares == {name: pytest.approx(counts[i] / counts.sum()) for i, name in enumerate(CLASSES)}
    assert metrics["n_images"] == N_IMAGES and metrics["ignore_share"] == 0.0
    first = demo.samples.index[0]
    mask = pixels(demo.samples.at[first, "mask"])
    assert run.samples.at[first, "mask_stats_share:3"] == pytest.approx((mask == 4).mean())


def test_pairwise_iou_matches_a_count_of_the_annotators_masks(run, demo) -> None:
    inter = union = 0
    folders = demo.annotator_folders()
    for sample_id in demo.samples.index:
        a = pixels(folders["alice"] / f"{sample_id}.png") == 4  # class "3"
        b = pixels(folders["carol"] / f"{sample_id}.png") == 4
        inter += int((a & b).sum())
        union += int((a | b).sum())
    pair = next(p for p in run.check_metrics("mask_agreement")["pairwise"] if p["annotators"] == ["alice", "carol"])
    assert pair["per_class"]["3"]["iou"] == pytest.approx(inter / union)
    assert pair["n_images"] == N_IMAGES


def test_consensus_masks_are_the_majority_of_three(run, demo) -> None:
    folders = demo.annotator_folders()
    for sample_id in demo.samples.index[:10]:
        a, b, c = (pixels(folders[name] / f"{sample_id}.png").astype(int) for name in ("alice", "bob", "carol"))
        majority = np.where((a == b) | (a == c), a, np.where(b == c, b, 255))
        written = pixels(run.path / run.samples.at[sample_id, "mask_agreement_consensus_mask"])
        assert np.array_equal(written, majority)


def test_wrong_class_regions_are_found_through_the_object_pipeline(run, demo) -> None:
    found = findings_from_run(run)
    by_regions = found[found["evidence"].str.startswith("region classifier")]
    scores = evaluate(demo, by_regions, run.samples["mask_mistakes_score"])
    assert scores["wrong_class_f1"] >= 0.9, scores
    # each is a shipped region the object stage's crop classifier flagged as another class
    objects = run.objects
    table = pd.read_parquet(run.path / "mask_findings.parquet")
    wrong = table[(table["kind"] == "wrong_class") & table["evidence"].str.startswith("region classifier")]
    assert len(wrong) and (objects.loc[wrong["object_id"], "object_mistakes_kind"] == "wrong_class").all()
    assert (objects.loc[wrong["object_id"], "annotator"] == "").all()
    assert (objects.loc[wrong["object_id"], "mask_mistakes_region_finding"] == "wrong_class").all()


def test_images_with_mask_errors_are_ranked_first(run, demo) -> None:
    scores = evaluate(demo, findings_from_run(run), run.samples["mask_mistakes_score"])
    assert scores["image_auroc"] >= 0.9, scores
    flags = run.samples["mask_mistakes_is_issue"].astype(bool)
    metrics = run.check_metrics("mask_mistakes")
    assert metrics["issue_image_rate"] == pytest.approx(flags.mean())
    # every flagged image has its issue pixels on file, and only those
    assert run.samples.loc[flags, "mask_mistakes_issue_mask"].map(lambda p: (run.path / p).is_file()).all()
    assert run.samples.loc[~flags, "mask_mistakes_issue_mask"].isna().all()


def test_with_pixel_probabilities(predicted, demo) -> None:
    metrics = predicted.check_metrics("mask_mistakes")
    assert metrics["mode"] == "predictions"
    scores = evaluate(demo, findings_from_run(predicted), predicted.samples["mask_mistakes_score"])
    assert scores["image_auroc"] >= 0.9, scores
    sample_id = predicted.samples.index[3]
    probs = np.load(demo.root / "pred_probs" / f"{sample_id}.npy")
    shipped = pixels(demo.samples.at[sample_id, "mask"]).astype(np.int64)
    own = np.take_along_axis(probs, shipped[None], axis=0)[0]
    doubt = pixels(predicted.path / predicted.samples.at[sample_id, "mask_mistakes_doubt_map"])
    assert np.abs(doubt.astype(int) - np.round((1 - own) * 255)).max() <= 1


# ------------------------------------------------------------------------------------------------ gate


def test_gate_rules(run, tmp_path) -> None:
    agreement = run.check_metrics("mask_agreement")["per_class"]
    rate = run.check_metrics("mask_mistakes")["issue_image_rate"]
    limit = 0.6
    verdict = gate.evaluate(run, None, {"min_class_mask_iou": limit, "max_mask_issue_image_share": rate,
                                        "max_class_pixel_share_shift": 0.01})
    rules = {r.name: r for r in verdict.rules}
    for name, values in agreement.items():
        rule = rules[f"min_class_mask_iou[{name}]"]
        assert rule.value == pytest.approx(values["mean_pairwise_iou"])
        assert rule.passed == (values["mean_pairwise_iou"] >= limit)
    assert rules["max_mask_issue_image_share"].passed
    shift = rules["max_class_pixel_share_shift"]
    assert not shift.passed and "needs a baseline" in shift.message
    skipped = gate.evaluate(run, None, {"max_class_pixel_share_shift": 0.01}, no_baseline="no earlier run")
    assert skipped.passed and skipped.rules[0].skipped
    # A baseline whose background had 5 points more of the pixels and class "3" 5 points fewer.
    before = tmp_path / "before"
    shutil.copytree(run.path, before, ignore=shutil.ignore_patterns("*.html", "mask_*"))
    summary = json.loads((before / "summary.json").read_text())
    classes = summary["checks"]["mask_stats"]["classes"]
    classes["background"]["share"] += 0.05
    classes["3"]["share"] -= 0.05
    (before / "summary.json").write_text(json.dumps(summary))
    verdict = gate.evaluate(run, RunResults.load(before), {"max_class_pixel_share_shift": 0.04,
                                                           "max_mask_issue_image_share": rate - 0.01})
    failed = {r.name: r.value for r in verdict.rules if not r.passed}
    assert failed == {"max_class_pixel_share_shift[background]": pytest.approx(0.05),
                      "max_class_pixel_share_shift[3]": pytest.approx(0.05),
                      "max_mask_issue_image_share": pytest.approx(rate)}
    assert len(verdict.rules) == len(CLASSES) + 1


# ------------------------------------------------------------------------------------------------ report


def test_report_has_the_mask_sections(run) -> None:
    html = (run.path / "index.html").read_text()
    sections = {m: html.find(f'<section id="{m}"') for m in ("mask-distribution", "mask-agreement", "mask-suspects")}
    assert all(at > 0 for at in sections.values())
    suspects = html[sections["mask-suspects"]:html.find("</section>", sections["mask-suspects"])]
    flagged = int(run.samples["mask_mistakes_is_issue"].sum())
    cards = suspects.count('<figure class="suspect"')
    assert cards == min(24, flagged)
    # three overlays per card (shipped mask, consensus, issues), drawn small
    images = re.findall(r'src="(data:image/[a-z]+;base64,[^"]+)"', suspects)
    assert len(images) == 3 * cards and max(len(i) for i in images) < 40_000
    assert 'id="plot-mask-shares"' in html and 'id="plot-mask-iou"' in html
    worst = run.samples.sort_values("mask_mistakes_score", ascending=False).index[0]
    assert worst in suspects


def test_demo_outcome_lines(run, demo) -> None:
    found = findings_from_run(run)
    scores = evaluate(demo, found, run.samples["mask_mistakes_score"])
    outcome = SegmentationDemoOutcome(run_path=run.path, embedder="pixels", predictions="none", scores=scores,
                                      region_scores=None, n_flagged=3)
    table = outcome.per_kind()
    assert table.loc["dilated", "finding_kind"] == "extra" and table.loc["eroded", "finding_kind"] == "missing"
    assert table.loc["wrong_class", "recall"] == scores["recall"]["wrong_class"]
    text = "\n".join(outcome.lines())
    assert f"AUROC of the image score {scores['image_auroc']:.2f}" in text and "report:" in text
    with pytest.raises(ValueError, match="predictions must be one of"):
        run_segmentation_demo(output_dir=Path("unused"), predictions="detector")


# ------------------------------------------------------------------------------------------------ FiftyOne


@pytest.mark.fiftyone
def test_fiftyone_segmentation_fields_and_views(run, predicted) -> None:
    import fiftyone as fo

    from audit.integrations.fiftyone import export_run
    from tests.fiftyone_helpers import unique_name

    names = [unique_name("la-seg"), unique_name("la-seg")]
    try:
        dataset = fo.load_dataset(export_run(run.path, names[0]))
        by_path = dict(zip(*dataset.values(["filepath", "id"]), strict=True))
        samples = run.samples
        sample_id = samples.index[samples["mask_mistakes_is_issue"].astype(bool)][0]
        sample = dataset[by_path[samples.at[sample_id, "filepath"]]]
        assert sample["label_audit_mask"].mask_path == samples.at[sample_id, "mask"]
        assert sample["label_audit_mask_consensus"].mask_path == str(run.path / f"mask_consensus/{sample_id}.png")
        assert sample["label_audit_mask_issues"].mask_path == str(run.path / f"mask_issues/{sample_id}.png")
        assert sample["label_audit_mask_doubt"] is None  # no model, no per-pixel doubt
        assert sample["label_audit_mask_score"] == pytest.approx(samples.at[sample_id, "mask_mistakes_score"])
        targets = dataset.mask_targets
        assert targets["label_audit_mask"] == dict(enumerate(CLASSES))
        assert targets["label_audit_mask_issues"] == {255: "issue"}
        flagged = int(samples["mask_mistakes_is_issue"].sum())
        view = dataset.load_saved_view("la-mask-issues")
        scores = view.values("label_audit_mask_score")
        assert len(view) == flagged == dataset.count_sample_tags()["mask_issue"]
        assert scores == sorted(scores, reverse=True)
        disputed = dataset.load_saved_view("la-mask-disputed")
        assert len(disputed) == int((samples["mask_agreement_n_disputed_regions"] > 0).sum())
        with_model = fo.load_dataset(export_run(predicted.path, names[1]))
        heat = with_model.first()["label_audit_mask_doubt"]
        assert isinstance(heat, fo.Heatmap) and list(heat.range) == [0, 255]
        assert Path(heat.map_path).parent == predicted.path / "mask_doubt"
    finally:
        for name in names:
            if name in fo.list_datasets():
                fo.delete_dataset(name)
