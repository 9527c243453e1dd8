"""The CI form of the segmentation benchmark: ``python -m benchmarks.segmentation --quick`` runs every part and
writes parseable, sane results. Speed and the acceptance targets at full size belong to the full form."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def quick(tmp_path_factory) -> tuple[dict, str]:
    out = tmp_path_factory.mktemp("segbench")
    subprocess.run([sys.executable, "-m", "benchmarks.segmentation", "--quick", "--out-dir", str(out),
                    "--work-dir", str(out)], cwd=REPO, check=True, timeout=600,
                   env={**os.environ, "FIFTYONE_DO_NOT_TRACK": "true"}, capture_output=True)
    return (json.loads((out / "segmentation-quick.json").read_text(encoding="utf-8")),
            (out / "SEGMENTATION-quick.md").read_text(encoding="utf-8"))


def test_quality_part(quick) -> None:
    results = quick[0]["quality"]
    assert set(results["results"]) == {
        "label-audit, no model (region crop classifier)", "label-audit, no model (annotator consensus)",
        "cleanlab segmentation (simulated probabilities)", "label-audit with predictions (simulated probabilities)"}
    for name, result in results["results"].items():
        assert 0.5 < result["image_auroc"] <= 1, name
        assert {k: v for k, v in result["n_errors"].items() if v} == results["n_errors"], name
    # Facts of the seeded demo that do not depend on the machine: given the same probabilities, label-audit's
    # regions are far fewer and mostly real, and it ranks the images with errors well.
    cleanlab = results["results"]["cleanlab segmentation (simulated probabilities)"]
    ours = results["results"]["label-audit with predictions (simulated probabilities)"]
    assert ours["n_findings"]["any"] < cleanlab["n_findings"]["any"]
    assert ours["precision"]["any"] > cleanlab["precision"]["any"]
    assert ours["image_auroc"] >= 0.9


def test_scale_part(quick) -> None:
    scale = quick[0]["scale"]
    functions = {r["function"] for r in scale["rows"]}
    assert functions == {"load", "stats", "agreement", "cleanlab", "regions", "cleanlab direct"}
    for row in scale["rows"]:
        assert row["seconds"] > 0 and math.isfinite(row["peak_traced_mib"]) and row["peak_traced_mib"] >= 0


def test_acceptance_and_markdown(quick) -> None:
    results, text = quick
    criteria = [r["criterion"] for r in results["acceptance"]]
    assert any("F1 >= 0.9" in c for c in criteria) and any("AUROC >= 0.9" in c for c in criteria)
    assert sum("memory flat" in c for c in criteria) == 5
    assert all(r["passed"] for r in results["acceptance"] if "memory flat" in r["criterion"])
    assert all(isinstance(r["passed"], bool) for r in results["acceptance"])
    assert "| label-audit with predictions (simulated probabilities) |" in text
    assert "python -m benchmarks.segmentation --quick" in text
