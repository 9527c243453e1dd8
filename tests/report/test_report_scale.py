"""The report-scale benchmark runs as a function (the nox bench session calls it) and measures what it says."""

from __future__ import annotations

import json

from benchmarks.report_scale import run


def test_benchmark_renders_a_small_run_and_writes_its_results(tmp_path):
    output = tmp_path / "report_scale.json"
    rows = run(sizes=(400,), n_classes=5, browser=False, output=output, work_dir=tmp_path, photo_pool=12)
    assert len(rows) == 1
    row = rows[0]
    assert row["n_samples"] == 400 and row["n_classes"] == 5
    assert row["render_seconds"] > 0 and row["html_bytes"] > 1_000_000  # plotly.js alone is ~4.8 MB
    assert 0 < row["n_suspects"] == row["gallery_cards"] < 400
    assert row["map_points"] >= 390  # every readable sample (0.2% are missing files)
    assert row["browser_open_seconds"] is None
    saved = json.loads(output.read_text())
    assert saved["results"] == rows and saved["benchmark"] == "report_scale"
