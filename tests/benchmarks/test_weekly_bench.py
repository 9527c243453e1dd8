"""``python -m benchmarks.weekly --quick``: the cold and the unchanged warm run of one dataset, side by side, by the
committed command (issue 18's benchmark row); its timings are not judged here, only what each run did."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.slow


def test_cold_then_warm_side_by_side(tmp_path: Path) -> None:
    out = tmp_path / "weekly.json"
    subprocess.run([sys.executable, "-m", "benchmarks.weekly", "--quick", "--images", "60", "--out", str(out)],
                   cwd=REPO, check=True, timeout=900, capture_output=True)
    result = json.loads(out.read_text(encoding="utf-8"))
    cold, warm = result["runs"]["cold"], result["runs"]["warm"]
    assert (cold["n_embedded"], cold["n_cached"], cold["model_loaded"]) == (60, 0, True)
    assert (warm["n_embedded"], warm["n_cached"], warm["model_loaded"]) == (0, 60, False)
    assert (cold["map"], warm["map"]) == ("umap", "umap (reused)")
    assert result["speedup"] == pytest.approx(cold["wall_seconds"] / warm["wall_seconds"])
    markdown = out.with_suffix(".md").read_text(encoding="utf-8")
    assert markdown.startswith("Command: `python -m benchmarks.weekly --quick --images 60`")
    assert "| images embedded / from the cache | 60 / 0 | 0 / 60 |" in markdown
