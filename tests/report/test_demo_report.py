"""The report of a real run: the embedded digits demo audited end to end (pixels embedder, small)."""

from __future__ import annotations

import pandas as pd
import pytest

from audit.report import render_report
from audit.results import RunResults
from tests.report.browser import open_page, require_chromium

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory: pytest.TempPathFactory) -> RunResults:
    from audit.demo import run_demo

    root = tmp_path_factory.mktemp("demo")
    outcome = run_demo(output_dir=root, embedder="pixels", limit=200, run_name="demo", seed=0, report=True,
                       progress=False, cache_dir=root / "cache")
    assert (outcome.n_samples, outcome.unreadable) == (202, 2)  # 200 digits, a truncated and a missing file
    return RunResults.load(root / "demo")


def test_demo_run_report_matches_its_results(demo_run):
    html = demo_run.path / "index.html"
    assert html.is_file()  # the run renders its report by default
    assert render_report(demo_run.path) == html
    page = html.read_text(encoding="utf-8")
    queue = pd.read_csv(demo_run.path / "suspects.csv", dtype=str, keep_default_na=False)
    flagged = demo_run.samples.index[demo_run.samples["mistakes_is_issue"].fillna(False).astype(bool)]
    assert set(queue["sample_id"]) == set(flagged) and len(flagged) > 0
    assert demo_run.summary["embedder"]["name"] in page
    for sample_id in queue["sample_id"].head(10):
        assert sample_id in page


@pytest.mark.browser
def test_demo_report_opens_offline_without_errors(demo_run, tmp_path):
    require_chromium()
    page = open_page(
        (demo_run.path / "index.html").as_uri(), until="document.body.dataset.plotsReady",
        evaluate={"ready": "document.body.dataset.plotsReady",
                  "figures": "document.querySelectorAll('[data-figure] .main-svg').length > 0 && "
                             "document.querySelectorAll('[data-figure]').length",
                  "images": "[...document.querySelectorAll('#gallery img')].every(i => i.naturalWidth > 0 && "
                            "i.src.startsWith('data:image/'))",
                  "cards": "document.querySelectorAll('#gallery figure').length"},
        screenshot=tmp_path / "demo.png",
    )
    assert page.console_errors == [] and page.dialogs == []
    assert page.values["ready"] == str(page.values["figures"]) and page.values["figures"] >= 4
    assert page.values["images"] is True and page.values["cards"] > 0
    assert {url.split(":", 1)[0] for url in page.requests} <= {"file", "data"}
    assert (tmp_path / "demo.png").stat().st_size > 50_000
