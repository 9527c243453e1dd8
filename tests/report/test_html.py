"""The report's HTML and suspects CSV, read as files (the browser tests check what a reader actually sees)."""

from __future__ import annotations

import base64
import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from audit.report import ReportLimits, render_report
from audit.report.html import script_json, thumbnail_uri
from audit.results import RunNotFoundError, RunResults

SCRIPT_LABEL = "<script>alert(1)</script>"
IMG_ANNOTATOR = "<img src=x onerror=alert(2)>"
ODD_FILE = '"><img src=x onerror=alert(3)>.png'


def decode_plotly_array(value: dict | list) -> np.ndarray:
    """Plotly writes numpy arrays as base64 typed arrays ({"dtype", "bdata"})."""
    if isinstance(value, list):
        return np.asarray(value)
    return np.frombuffer(base64.b64decode(value["bdata"]), dtype=value["dtype"])


def figure_spec(page: str, name: str) -> dict | None:
    match = re.search(rf'<script type="application/json" id="figure-{name}">(.*?)</script>', page, re.S)
    return json.loads(match.group(1)) if match else None


def read_csv(path: Path) -> pd.DataFrame:
    return pd.read_csv(
        path,
        dtype={"sample_id": str, "label": str, "suggested_label": str, "audited_label": str},
        keep_default_na=False,
        na_values=[""],
    )


def test_report_and_review_queue_come_from_the_stored_results(make_run):
    run = make_run("week1")
    html_path = render_report(run.path)
    assert html_path == run.path / "index.html"
    page = html_path.read_text(encoding="utf-8")

    issues = run.samples[run.samples["mistakes_is_issue"].astype(bool)]
    queue = read_csv(run.path / "suspects.csv")
    assert len(issues) > 0
    assert set(queue["sample_id"]) == set(issues.index)
    assert queue["label_quality"].is_monotonic_increasing  # worst first
    assert list(queue["rank"]) == list(range(1, len(queue) + 1))
    worst = issues["mistakes_label_quality"].idxmin()
    assert queue.iloc[0]["sample_id"] == worst
    assert queue.iloc[0]["suggested_label"] == issues.at[worst, "mistakes_suggested_label"]

    for section in (
        "headline",
        "distribution",
        "map",
        "gallery",
        "suggestions",
        "agreement",
        "pairs",
        "problems",
        "since",
        "details",
    ):
        assert f'id="{section}"' in page
    assert re.search(rf'Suspected mislabels</div>\s*<div class="tile-value">{len(issues)}<', page)
    markup = re.sub(r"<script[^>]*>.*?</script>", "", page, flags=re.S)
    assert not re.search(r'(src|href)="(https?:)?//', markup)  # nothing to fetch: it all lives in the file
    # Every figure is a JSON block drawn by Plotly.newPlot, and the map uses WebGL.
    blocks = dict(re.findall(r'<script type="application/json" id="figure-([\w-]+)">(.*?)</script>', page, re.S))
    assert {"distribution", "map", "suggestions", "class-issues", "kappa", "annotator-quality"} <= set(blocks)
    map_spec = json.loads(blocks["map"])
    assert {t["type"] for t in map_spec["data"]} == {"scattergl"}
    assert map_spec["data"][-1]["name"] == "suspected mislabel"
    assert "Plotly.newPlot" in page
    # The unreadable files are listed as sample problems, with their codes.
    assert "digits/gone.png" in page and "missing_file" in page and "corrupt_image" in page


def test_gallery_shows_worst_suspects_with_their_own_thumbnails(make_run):
    run = make_run("week1")
    page = render_report(run.path, limits=ReportLimits(gallery=5)).read_text(encoding="utf-8")
    gallery = page.split('id="gallery"', 1)[1].split("</section>", 1)[0]
    cards = re.findall(r'<figure class="suspect".*?</figure>', gallery, re.S)
    assert len(cards) == 5
    queue = read_csv(run.path / "suspects.csv")
    for card, (_, row) in zip(cards, queue.head(5).iterrows(), strict=True):
        assert row["sample_id"] in card
        assert re.search(r'src="data:image/(png|jpeg);base64,[A-Za-z0-9+/=]+"', card)
    assert f"Showing the worst 5 of {len(queue)}" in gallery


def test_outside_strings_are_escaped_everywhere(make_run):
    rename = {"3": SCRIPT_LABEL, "5": "A&B \"quoted\" 'single'"}
    baseline = make_run("before", seed=1, rename=rename, annotators=("alice", "bob", IMG_ANNOTATOR))
    run = make_run(
        "after",
        seed=2,
        rename=rename,
        annotators=("alice", "bob", IMG_ANNOTATOR),
        odd_file_name=ODD_FILE,
        baseline=baseline,
        gate={
            "passed": False,
            "rules": [{"name": SCRIPT_LABEL, "value": 0.2, "threshold": 0.1, "passed": False, "detail": IMG_ANNOTATOR}],
        },
    )
    page = render_report(run.path, baseline.path).read_text(encoding="utf-8")
    for raw in (SCRIPT_LABEL, IMG_ANNOTATOR, "<img src=x", "onerror=alert(3)>"):
        assert raw not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page  # shown as text in HTML
    assert "\\u003cscript\\u003e" in page  # and inert inside embedded JSON
    # The only script elements are the report's own (plotly.js, its JSON blocks, its code).
    tags = re.findall(r"<script[^>]*>", page)
    assert set(tags) <= {"<script>"} | {t for t in tags if 'type="application/json"' in t}
    # The review queue is machine-readable: raw values, CSV-quoted.
    queue = read_csv(run.path / "suspects.csv")
    assert SCRIPT_LABEL in set(queue["label"]) | set(queue["suggested_label"]) | set(queue["audited_label"])


def test_report_without_annotators_says_agreement_was_skipped(make_run):
    run = make_run("solo", annotators=())
    assert run.annotations is None
    page = render_report(run.path).read_text(encoding="utf-8")
    agreement = page.split('id="agreement"', 1)[1].split("</section>", 1)[0]
    assert "Skipped: no annotator labels." in agreement
    assert 'id="figure-kappa"' not in page
    queue = read_csv(run.path / "suspects.csv")
    assert "consensus_label" not in queue.columns and len(queue) > 0


def test_report_without_issues(make_run):
    run = make_run("clean", issues=False)
    page = render_report(run.path).read_text(encoding="utf-8")
    assert "No suspected mislabels" in page
    assert 'id="figure-suggestions"' not in page
    queue = read_csv(run.path / "suspects.csv")
    assert queue.empty and "suggested_label" in queue.columns
    assert "suspected mislabel" not in [trace["name"] for trace in figure_spec(page, "map")["data"]]


def test_report_degrades_without_map_and_mistakes(make_run):
    run = make_run("bare", with_map=False, with_mistakes=False, annotators=(), broken_files=False)
    page = render_report(run.path).read_text(encoding="utf-8")
    assert "No map: the run has no embeddings." in page
    assert page.count("Skipped: no embeddings and no predicted probabilities.") >= 3  # gallery, matrix, pairs
    assert "No sample-level problems" in page
    assert read_csv(run.path / "suspects.csv").empty


def test_report_of_run_without_check_sections_at_all(make_run):
    """A summary written before a check existed (no key at all) still renders."""
    run = make_run("old")
    summary = dict(run.summary)
    summary["checks"] = {"distribution": summary["checks"]["distribution"]}
    (run.path / "summary.json").write_text(json.dumps(summary), encoding="utf-8")
    samples = run.samples.drop(columns=[c for c in run.samples if c.startswith(("mistakes_", "agreement_"))])
    samples.reset_index().to_parquet(run.path / "samples.parquet", index=False)
    page = render_report(run.path).read_text(encoding="utf-8")
    assert "Not available: the mistakes check did not run." in page
    assert "Not available: the agreement check did not run." in page


def test_baseline_comparison_lists_new_and_resolved_suspects(make_run):
    before = make_run("before", seed=1, n=230)
    after = make_run("after", seed=2, n=240, start=20)
    page = render_report(after.path, before.path).read_text(encoding="utf-8")
    since = page.split('id="since"', 1)[1].split("</section>", 1)[0]

    flagged_before = set(before.samples.index[before.samples["mistakes_is_issue"].astype(bool)])
    flagged_after = set(after.samples.index[after.samples["mistakes_is_issue"].astype(bool)])
    new, resolved = flagged_after - flagged_before, flagged_before - flagged_after
    assert new and resolved
    assert re.search(rf"New suspects</div><div class=\"tile-value\">{len(new)}<", since)
    assert re.search(rf"Resolved suspects</div><div class=\"tile-value\">{len(resolved)}<", since)
    new_table = since.split('id="new-suspects"', 1)[1].split("</table>", 1)[0]
    resolved_table = since.split('id="resolved-suspects"', 1)[1].split("</table>", 1)[0]
    assert all(s in new_table for s in new) and not any(f">{s}<" in new_table for s in resolved)
    assert all(s in resolved_table for s in resolved)
    removed = set(before.samples.index) - set(after.samples.index)
    added = set(after.samples.index) - set(before.samples.index)
    assert resolved & removed  # images 0-19 left the dataset; some were suspects
    assert resolved_table.count("removed from the dataset") == len(resolved & removed)
    assert f"{len(added)} added, {len(removed)} removed" in since
    # The class shift is the distribution check's chi-square test on the two runs' labels.
    assert "Chi-square test of the two label distributions" in since
    assert 'id="class-shifts"' in since
    assert "compared with <code>before</code>" in page


def test_recorded_baseline_is_used_when_none_is_given(make_run):
    before = make_run("before", seed=1)
    after = make_run("after", seed=2, baseline=before)
    page = render_report(after.path).read_text(encoding="utf-8")
    assert "Compared with <code>before</code>" in page
    assert f"Shift since <code>{before.name}</code>" in page


def test_large_runs_are_thinned_and_capped_and_the_report_says_so(make_run):
    run = make_run("big")
    n_suspects = int(run.samples["mistakes_is_issue"].astype(bool).sum())
    limits = ReportLimits(map_background_points=50, gallery=10, suspect_thumbnails=10, other_thumbnails=5)
    page = render_report(run.path, limits=limits).read_text(encoding="utf-8")
    spec = figure_spec(page, "map")
    drawn = [cd[0] for trace in spec["data"][:-1] for cd in trace["customdata"]]
    ringed = spec["data"][-1]
    assert ringed["name"] == "suspected mislabel" and ringed["hoverinfo"] == "skip"
    assert len(decode_plotly_array(ringed["x"])) == n_suspects  # every suspect kept
    suspects = set(run.samples.index[run.samples["mistakes_is_issue"].astype(bool)])
    assert suspects <= set(drawn)
    assert len(drawn) - n_suspects <= 50 + 10  # thinned background (at least one point per class)
    assert len(set(run.samples.loc[[d for d in drawn if d in run.samples.index], "label"])) == 10
    assert "Thinned for speed" in page
    thumbs = json.loads(re.search(r'id="map-thumbs">(.*?)</script>', page, re.S).group(1))
    assert len(thumbs) <= 15
    assert f"Showing the worst 10 of {n_suspects}" in page


def test_the_map_rings_only_the_worst_suspects_beyond_its_cap(make_run):
    """At a million samples a 5% suspect rate is 50,000 suspects: the map keeps the worst ones (the review
    queue's order: lowest label quality, then sample id) and says how many it left out."""
    run = make_run("many-suspects")
    samples = run.samples
    suspects = samples[samples["mistakes_is_issue"].astype(bool)]
    cap = len(suspects) // 3
    expected = set(suspects.sort_values("mistakes_label_quality", kind="stable").index[:cap])  # by hand: sort, cut
    page = render_report(run.path, limits=ReportLimits(map_background_points=50, map_suspect_points=cap)).read_text(
        encoding="utf-8")
    spec = figure_spec(page, "map")
    ringed = spec["data"][-1]
    assert ringed["name"] == "suspected mislabel" and len(decode_plotly_array(ringed["x"])) == cap
    drawn = {cd[0] for trace in spec["data"][:-1] for cd in trace["customdata"]}
    assert drawn & set(suspects.index) == expected
    assert f"the {cap} worst of {len(suspects)} suspects" in page


def test_missing_images_get_a_placeholder(make_run, tmp_path):
    run = make_run("moved")
    worst = read_csv(render_report(run.path).parent / "suspects.csv").iloc[0]
    Path(worst["filepath"]).rename(tmp_path / "elsewhere.png")
    try:
        page = render_report(run.path).read_text(encoding="utf-8")
    finally:
        (tmp_path / "elsewhere.png").rename(worst["filepath"])
    first_card = re.search(r'<figure class="suspect".*?</figure>', page, re.S).group(0)
    assert 'class="thumb missing"' in first_card and "<img" not in first_card


def test_thumbnails_are_small_and_decoded_like_the_embedder(tmp_path):
    from PIL import Image

    big = tmp_path / "big.png"
    Image.new("I;16", (640, 320), 40000).save(big)
    uri = thumbnail_uri(big, 64)
    assert uri is not None and uri.startswith("data:image/")
    import base64
    import io

    image = Image.open(io.BytesIO(base64.b64decode(uri.split(",", 1)[1])))
    assert max(image.size) == 64
    assert thumbnail_uri(tmp_path / "absent.png") is None
    (tmp_path / "bad.jpg").write_bytes(b"\xff\xd8 not really")
    assert thumbnail_uri(tmp_path / "bad.jpg") is None


def test_script_json_cannot_close_the_script_element():
    text = json.dumps({"label": "</script><script>alert(1)</script>", "u": "\u2028&"})
    safe = str(script_json(text))
    assert "<" not in safe and ">" not in safe and "&" not in safe and "\u2028" not in safe
    assert json.loads(safe) == json.loads(text)


def test_rendering_twice_gives_the_same_page_apart_from_the_time(make_run):
    run = make_run("again")
    first = render_report(run.path).read_text(encoding="utf-8")
    second = render_report(run.path).read_text(encoding="utf-8")
    strip = re.compile(r"on \d{4}-\d\d-\d\d \d\d:\d\d UTC from")
    assert strip.sub("", first) == strip.sub("", second)
    assert RunResults.load(run.path).summary == run.summary  # the run itself is untouched


def test_bad_run_folders_raise_clear_errors(make_run, tmp_path):
    with pytest.raises(RunNotFoundError, match="not a label-audit run folder"):
        render_report(tmp_path / "nothing-here")
    run = make_run("ok")
    with pytest.raises(RunNotFoundError, match="not a label-audit run folder"):
        render_report(run.path, tmp_path / "no-baseline")


def test_cli_report_command_renders_and_reports_bad_folders(make_run, tmp_path):
    from typer.testing import CliRunner

    from audit.cli import app

    before = make_run("before", seed=1)
    after = make_run("after", seed=2)
    result = CliRunner().invoke(app, ["report", str(after.path), "--baseline", str(before.path)])
    assert result.exit_code == 0, result.output
    assert str(after.path / "index.html") in result.output
    assert "Compared with <code>before</code>" in (after.path / "index.html").read_text(encoding="utf-8")
    result = CliRunner().invoke(app, ["report", str(tmp_path / "missing")])
    assert result.exit_code == 2


def test_review_queue_defuses_spreadsheet_formulas():
    """A label such as =HYPERLINK(...) must not run as a formula when suspects.csv is opened in a spreadsheet."""
    from audit.report.html import spreadsheet_safe

    table = pd.DataFrame({"label": ["=HYPERLINK(\"http://x\")", "cat", "-1+2", "@SUM(A1)"],
                          "score": [0.1, -0.5, 0.2, 1]},
                         index=pd.Index(["+id", "a", "b", "c"], name="sample_id"))
    safe = spreadsheet_safe(table)
    assert list(safe["label"]) == ["'=HYPERLINK(\"http://x\")", "cat", "'-1+2", "'@SUM(A1)"]
    assert list(safe["score"]) == [0.1, -0.5, 0.2, 1]
    assert list(safe.index) == ["'+id", "a", "b", "c"]
