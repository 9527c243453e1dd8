"""The CI form of the benchmarks, end to end: ``python -m benchmarks --quick`` writes parseable, sane results.

No timing thresholds here (speed targets live in the benchmark's own output): only that every part ran, every
number is finite and in its range, and the accuracy facts that do not depend on the machine hold.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
METHODS = {"label-audit", "cleanlab find_label_issues", "cleanlab Datalab", "FiftyOne compute_mistakenness"}


@pytest.fixture(scope="module")
def quick(tmp_path_factory) -> tuple[dict, str]:
    out = tmp_path_factory.mktemp("bench")
    subprocess.run([sys.executable, "-m", "benchmarks", "--quick", "--out-dir", str(out)], cwd=REPO, check=True,
                   env={**os.environ, "FIFTYONE_DO_NOT_TRACK": "true"}, timeout=1800)
    results = json.loads((out / "bench-quick.json").read_text(encoding="utf-8"))
    return results, (out / "BENCH-quick.md").read_text(encoding="utf-8")


pytestmark = [pytest.mark.slow, pytest.mark.fiftyone]


def _finite_positive(value: float) -> bool:
    return isinstance(value, int | float) and math.isfinite(value) and value > 0


def test_speed_part(quick) -> None:
    speed = quick[0]["speed"]
    assert "random weights (timing only)" in speed["model"]
    rates = [*speed["bare_forward"].values(), *speed["end_to_end"].values()]
    assert all(_finite_positive(r) for r in rates), rates
    assert _finite_positive(speed["ratio_e2e_to_bf16_forward"]) and _finite_positive(speed["warm_speedup"])
    # Accuracy does not depend on the machine: the default path (bf16 where the CPU has it) stays within
    # cosine 0.999 of fp32, and the batched normalisation reproduces torchvision's transform.
    cosine = speed["cosine_to_fp32"]
    assert cosine["default_end_to_end"]["min"] >= 0.999
    assert cosine["default_end_to_end"]["min"] == pytest.approx(cosine["before_optimisation_end_to_end"]["min"],
                                                                abs=1e-4)


def test_stages_part(quick) -> None:
    stages = quick[0]["stages"]
    assert [r["n_samples"] for r in stages] == quick[0]["sizes"]["stage_sizes"]
    for row in stages:
        assert set(row["stages"]) == {"umap", "cross-validation", "cleanlab", "agreement", "distribution", "outputs",
                                      "report"}
        assert {"samples.parquet", "embeddings.npy", "annotations.parquet", "pred_probs.npy"} <= set(row["outputs_mb"])
        for stage in row["stages"].values():
            assert _finite_positive(stage["seconds"]) and 0.05 < stage["peak_rss_gib"] < 64
        assert 0.5 < row["cv_accuracy"] <= 1 and 0 < row["issue_rate"] < 0.5
        assert row["report"]["map_points"] > 0.9 * row["n_samples"]


def test_detection_part(quick) -> None:
    datasets = quick[0]["detection"]["datasets"]
    names = [d["dataset"] for d in datasets]
    assert any(n.startswith("digits, symmetric") for n in names) and any(n.startswith("digits, pairs") for n in names)
    assert any("CIFAR-10" in n for n in names) and any("MNIST" in n for n in names)
    for data in datasets:
        # The quick form runs FiftyOne's mistakenness on the digits only (on 10,000 samples it takes ~30 s).
        on_digits = data["dataset"].startswith("digits")
        expected = (METHODS | {"kNN disagreement"}) if on_digits else METHODS - {"FiftyOne compute_mistakenness"}
        assert set(data["methods"]) == expected
        for metrics in data["methods"].values():  # F1 is the harmonic mean of the precision and recall shown
            p, r = metrics["precision"], metrics["recall"]
            assert metrics["f1"] == pytest.approx(2 * p * r / (p + r) if p + r else 0.0), data["dataset"]
    digits = next(d for d in datasets if d["dataset"].startswith("digits, symmetric"))
    assert digits["methods"]["label-audit"]["f1"] > 0.8 and digits["methods"]["label-audit"]["auroc"] > 0.95


def test_outputs_and_acceptance_table(quick) -> None:
    results, markdown = quick
    assert {r["criterion"].split(" ")[0] for r in results["acceptance"]} >= {"end-to-end", "warm", "detection"}
    for r in results["acceptance"]:  # the table shows the verdict the JSON records
        assert f"| {r['criterion']} | {r['measured']} | {'yes' if r['passed'] is True else '**no**'} |" in markdown
    for heading in ("## Acceptance", "## Embedding speed", "## Post-embedding stages by size",
                    "## Detection quality against the peers", "| label-audit |"):
        assert heading in markdown
    assert results["command"].startswith("python -m benchmarks --quick")
    assert len(results["load_average"]["start"]) == 3  # /proc/loadavg: 1, 5 and 15 minutes


def test_objects_part(quick) -> None:
    from benchmarks.objects import (
        CLEANLAB_BOX,
        ERROR_KINDS,
        FIFTYONE,
        LA_EVIDENCE,
        LA_NONE,
        LA_PRED,
        PEERS,
        SOURCES,
    )

    objects = quick[0]["objects"]
    assert [s["noise"] for s in objects["quality"]] == objects["sizes"]["noise_levels"]
    for setting in objects["quality"]:
        # the demo injects exactly round(rate x true objects) errors of each kind, the same number for every kind
        counts = set(setting["n_errors"].values())
        assert len(counts) == 1 and counts.pop() > 0
        assert set(setting["sources"]) == set(SOURCES)
        for source in setting["sources"].values():
            assert set(source["methods"]) == {LA_NONE, LA_PRED, LA_EVIDENCE, *PEERS}
            for name, method in source["methods"].items():
                for kind in ERROR_KINDS:
                    m = method[kind]
                    if m is None:
                        continue
                    assert m["n_errors"] == setting["n_errors"][kind]
                    if m["f1"] is not None:  # F1 is the harmonic mean of the precision and recall shown
                        p, r = m["precision"] or 0.0, m["recall"]
                        assert 0 <= r <= 1 and m["f1"] == pytest.approx(2 * p * r / (p + r) if p + r else 0.0)
                    if m["average_precision"] is not None:
                        assert 0 <= m["average_precision"] <= 1, (name, kind)
            # peers say nothing of some kinds: "—", never a made-up 0
            assert source["methods"][CLEANLAB_BOX]["spurious"] is None
            assert source["methods"][CLEANLAB_BOX]["duplicate"] is None
            assert source["methods"][FIFTYONE]["duplicate"] is None
            # label-audit's rows cover every kind, with and without predictions
            assert all(source["methods"][m][k] is not None for m in (LA_NONE, LA_PRED, LA_EVIDENCE)
                       for k in ERROR_KINDS)
            # duplicates are found by geometry alone: every copy moved by <= 2 px overlaps its original at IoU >= 0.5
            assert source["methods"][LA_NONE]["duplicate"]["recall"] == 1.0
            # the out-of-fold classifier's probabilities beat ObjectLab's swap score, which is silent below 0.95
            classifier = setting["sources"]["classifier"]["methods"]
            assert classifier[LA_PRED]["wrong_class"]["average_precision"] > \
                classifier[CLEANLAB_BOX]["wrong_class"]["average_precision"]
    speed = objects["speed"]
    assert speed["n_objects"] == 7 * speed["n_images"]
    assert _finite_positive(speed["images_per_s"]) and _finite_positive(speed["objects_per_s"])
    for row in objects["scale"]:
        assert row["n_objects"] == round(row["n_images"] * 10 * 1.05)  # 5% missing, 5% duplicates, 5% spurious
        assert row["n_annotator_boxes"] == 3 * 10 * row["n_images"]  # each annotator: as many spurious as missing
        assert set(row["steps"]) == {"object agreement (3 annotators)", "object distribution",
                                     "negative examples (background, misplaced boxes)",
                                     "object mistakes (cross-validated classifier, flags)", "object map (UMAP)"}
        for step in row["steps"].values():
            assert _finite_positive(step["seconds"]) and 0.05 < step["peak_rss_gib"] < 64
        assert 0.3 < row["cv_accuracy"] <= 1
    heading = "## Object detection against the peers (issue 11)"
    assert heading in quick[1]
    section = quick[1].split(heading)[1]
    for name in (LA_NONE, LA_PRED, LA_EVIDENCE, *PEERS):  # one row per method, noise level and prediction source
        assert section.count(f"| {name} |") == len(objects["quality"]) * len(SOURCES)
    assert [r["criterion"].split(":")[0] for r in objects["acceptance"]].count("objects") == 3
