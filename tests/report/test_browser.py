"""The report as a reader sees it: opened from disk in headless Chromium, offline."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from PIL import Image

from audit.report import render_report
from tests.report.browser import BrowserPage, PageReport, open_page, require_chromium

pytestmark = pytest.mark.browser

SCRIPT_LABEL = "<script>alert(1)</script>"
IMG_ANNOTATOR = "<img src=x onerror=alert(2)>"

PAGE_STATE = {
    "ready": "document.body.dataset.plotsReady",
    "figures": "document.querySelectorAll('[data-figure]').length",
    "drawn": "[...document.querySelectorAll('[data-figure]')].filter(d => d.querySelector('.main-svg')"
             " && d.dataset.rendered === 'true').length",
    "map_canvases": "document.querySelectorAll('#plot-map canvas').length",
    "images": "[...document.querySelectorAll('img.thumb')].map(i => ({loaded: i.complete && i.naturalWidth > 0,"
              " inline: i.src.startsWith('data:image/')}))",
    "text": "document.body.innerText",
    "scripts": "document.querySelectorAll('script:not([type=\"application/json\"])').length",
    "injected_images": "document.querySelectorAll('img[src=\"x\"], img[onerror]').length",
}


def open_report(html: Path, screenshot: Path | None = None, **evaluate: str) -> PageReport:
    require_chromium()
    return open_page(html.as_uri(), until="document.body.dataset.plotsReady",
                     evaluate={**PAGE_STATE, **evaluate}, screenshot=screenshot)


def assert_healthy(page: PageReport) -> None:
    """No errors, every figure drawn, every thumbnail decoded from the file itself, nothing fetched."""
    assert page.console_errors == []
    assert page.dialogs == []
    assert page.values["ready"] == str(page.values["figures"])
    assert page.values["drawn"] == page.values["figures"]
    assert all(image["loaded"] and image["inline"] for image in page.values["images"])
    assert {url.split(":", 1)[0] for url in page.requests} <= {"file", "data"}
    assert page.values["scripts"] == 2  # plotly.js and the report's own script: nothing else can run
    assert page.values["injected_images"] == 0


def keep_screenshot(path: Path) -> None:
    """Copy a screenshot where CI collects artifacts, when it asks for them."""
    target = os.environ.get("LABEL_AUDIT_SCREENSHOTS")
    if target:
        Path(target).mkdir(parents=True, exist_ok=True)
        shutil.copy(path, Path(target) / path.name)


def test_full_report_renders_offline_with_escaped_outside_text(make_run, tmp_path):
    rename = {"3": SCRIPT_LABEL}
    annotators = ("alice", "bob", IMG_ANNOTATOR)
    before = make_run("before", seed=1, rename=rename, annotators=annotators)
    after = make_run("after", seed=2, start=10, rename=rename, annotators=annotators,
                     odd_file_name='"><img src=x onerror=alert(3)>.png', baseline=before,
                     gate={"passed": True, "rules": [{"name": "max_issue_rate", "value": 0.1, "threshold": 0.3,
                                                      "passed": True}]})
    html = render_report(after.path, before.path)
    shot = tmp_path / "report.png"
    require_chromium()
    with BrowserPage() as browser:
        browser.goto(html.as_uri(), until="document.body.dataset.plotsReady")
        # Hover the first suspect on the map with the real mouse: its thumbnail must appear beside the map.
        where = browser.evaluate("""(() => {
            const div = document.getElementById('plot-map');
            div.scrollIntoView({behavior: 'instant', block: 'center'});
            const trace = div._fullData[div._fullData.length - 1];
            const xa = div._fullLayout.xaxis, ya = div._fullLayout.yaxis, box = div.getBoundingClientRect();
            return {x: box.left + xa._offset + xa.l2p(trace.x[0]), y: box.top + ya._offset + ya.l2p(trace.y[0])};
        })()""")
        browser.mouse_move(where["x"], where["y"])
        browser.wait_for("!document.getElementById('map-preview').hidden", timeout=10)
        hover = browser.evaluate("""(() => {
            const box = document.getElementById('map-preview');
            return {src: box.querySelector('img').getAttribute('src') || '',
                    id: box.querySelector('[data-field=id]').textContent,
                    label: box.querySelector('[data-field=label]').textContent};
        })()""")
        for name, expression in {
            **PAGE_STATE,
            "ticks": "[...document.querySelectorAll('#plot-distribution .xtick text')].map(t => t.textContent)",
            "legend": "[...document.querySelectorAll('#plot-map .legendtext')].map(t => t.textContent)",
            "kappa_ticks": "[...document.querySelectorAll('#plot-kappa .ytick text')].map(t => t.textContent)",
        }.items():
            browser.report.values[name] = browser.evaluate(expression)
        browser.screenshot(shot)
    page = browser.report
    keep_screenshot(shot)
    assert_healthy(page)
    assert page.values["map_canvases"] > 0  # the map is WebGL
    assert len(page.values["images"]) >= 20
    # Outside strings show as text and run nothing.
    assert SCRIPT_LABEL in page.values["ticks"]
    assert SCRIPT_LABEL in page.values["legend"]
    assert IMG_ANNOTATOR in page.values["kappa_ticks"]
    assert SCRIPT_LABEL in page.values["text"] and IMG_ANNOTATOR in page.values["text"]
    # Hovering a suspect shows its own thumbnail and labels beside the map.
    suspects = after.samples[after.samples["mistakes_is_issue"].astype(bool)]
    assert hover["src"].startswith("data:image/")
    assert hover["id"] in suspects.index
    assert hover["label"] == suspects.at[hover["id"], "label"]
    # Since the last run, and the gate.
    assert "Release gate: PASSED" in page.values["text"]
    assert "New suspects" in page.values["text"] and "Resolved suspects" in page.values["text"]
    # The screenshot shows a real page: tall, wide, and far from blank.
    image = Image.open(shot).convert("RGB")
    assert image.width == 1400 and image.height > 4000
    assert len(image.getcolors(maxcolors=1 << 20) or []) > 200


@pytest.mark.parametrize(
    ("name", "options", "expected_text"),
    [
        ("no-annotators", {"annotators": ()}, "Skipped: no annotator labels."),
        ("no-issues", {"issues": False}, "No suspected mislabels"),
        ("bare", {"with_map": False, "with_mistakes": False, "annotators": (), "broken_files": False},
         "No map: the run has no embeddings."),
    ],
)
def test_degraded_reports_render_without_errors(make_run, name, options, expected_text):
    run = make_run(name, **options)
    page = open_report(render_report(run.path))
    assert_healthy(page)
    assert expected_text in page.values["text"]
    assert "No baseline run to compare with" in page.values["text"]


def test_map_falls_back_to_svg_without_webgl(make_run):
    """A browser without WebGL still draws the map (as SVG points) instead of an error box."""
    require_chromium()
    run = make_run("svg")
    page = open_page(render_report(run.path).as_uri(), until="document.body.dataset.plotsReady",
                     evaluate={**PAGE_STATE, "points": "document.querySelectorAll('#plot-map .point').length"},
                     extra_flags=("--disable-webgl", "--disable-3d-apis"))
    assert page.console_errors == []
    assert page.values["ready"] == str(page.values["figures"])
    assert page.values["map_canvases"] == 0
    assert page.values["points"] >= len(run.samples) - 2  # every readable sample (suspects twice)
