"""The CI form of the hygiene benchmark: ``python -m benchmarks.hygiene --quick`` runs every method end to end
and writes parseable results (< 60 s on a slow 2-core machine, FiftyOne's MongoDB start included).

No timing thresholds (they live in the benchmark's own output); only that every part ran, the numbers are
finite and in range, and the facts that do not depend on the machine hold for label-audit: every injected
resized, re-compressed, mirrored and exact copy is found with no false pair, and so is every cross-split one.
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
pytestmark = [pytest.mark.slow, pytest.mark.fiftyone]


@pytest.fixture(scope="module")
def quick(tmp_path_factory) -> tuple[dict, str]:
    out = tmp_path_factory.mktemp("hygiene")
    subprocess.run([sys.executable, "-m", "benchmarks.hygiene", "--quick", "--out-dir", str(out)], cwd=REPO,
                   check=True, env={**os.environ, "FIFTYONE_DO_NOT_TRACK": "true"}, timeout=600,
                   capture_output=True)
    return (json.loads((out / "hygiene-quick.json").read_text(encoding="utf-8")),
            (out / "hygiene-quick.md").read_text(encoding="utf-8"))


def _unit(value) -> bool:
    return isinstance(value, int | float) and math.isfinite(value) and 0.0 <= value <= 1.0


def test_every_method_ran_on_both_sets(quick) -> None:
    results, markdown = quick
    assert [s["set"] for s in results["sets"]] == ["photos", "digits"]
    for data in results["sets"]:
        methods = data["methods"]
        expected = {"label-audit", "cleanvision", "cleanlab Datalab", "FiftyOne Brain (distance default 0.2)"}
        assert expected <= set(methods)
        for method in methods.values():
            assert method["seconds"] > 0
            for key in ("pairs", "leakage_pairs", "conflict_pairs"):
                if "duplicates" in method:
                    assert all(_unit(method["duplicates"][key][m]) for m in ("precision", "recall", "f1"))
        assert _unit(methods["label-audit"]["outliers"]["auroc"])
        assert data["speedup_vs_cleanvision"] > 0
    assert "## Acceptance" in markdown and "| label-audit |" in markdown


def test_label_audit_finds_every_copy_a_pixel_thumbnail_can_see(quick) -> None:
    for data in quick[0]["sets"]:
        duplicates = data["methods"]["label-audit"]["duplicates"]
        for key in ("pairs_without_crops", "leakage_pairs_without_crops"):
            assert duplicates[key]["recall"] == 1.0, (data["set"], key)
            assert duplicates[key]["precision"] == 1.0, (data["set"], key)
        recall = duplicates["recall_by_copy_kind"]
        assert all(recall[kind] == 1.0 for kind in ("resize", "jpeg", "flip", "exact") if recall[kind] is not None)


def test_quality_flags_and_statistics_cost(quick) -> None:
    results = quick[0]
    photos = results["sets"][0]["methods"]["label-audit"]["quality"]
    assert set(photos) == {"dark", "overexposed", "blurry", "low_information", "grayscale", "odd_size",
                           "odd_aspect_ratio"}
    for issue in ("dark", "grayscale", "odd_size", "odd_aspect_ratio"):
        assert photos[issue]["recall"] == 1.0, issue
    overhead = results["stats_overhead"]
    assert overhead["decode_ms"] > 0 and overhead["image_stats_ms"] > 0
    assert [r["criterion"] for r in results["acceptance"]]
