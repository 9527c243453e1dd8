"""Annotator feedback pages from hand-built run folders: what was overturned and by whom, the confusion matrix,
the history across runs of the same dataset, thumbnails, and escaping. Expected values are worked out by hand in
the comments."""

from __future__ import annotations

import html
import re
from datetime import UTC, datetime

import numpy as np
import pandas as pd
import pytest

from audit import review
from audit.checks.review import annotator_slug
from audit.feedback import FeedbackError, md_escape, write_feedback
from audit.results import write_run
from tests.conftest import write_digit

CLASSES = ["0", "1", "2"]
ODD = "<b>x</b>|y"  # an annotator name that must be escaped everywhere
LABELS = {"s0": "0", "s1": "1", "s2": "2", "s3": "0"}  # the consensus (= the dataset's label)
ANNOTATIONS = {"ann": {"s0": "0", "s1": "1", "s2": "1", "s3": "0"}, ODD: {"s0": "0", "s1": "2", "s2": "2"}}


def _run(folder, name: str, created: str, flagged: dict[str, str], agreement: dict, dataset: str = "labels.csv",
         ledger: pd.DataFrame | None = None, digit_images=None):
    images, targets = digit_images
    ids = list(LABELS)
    paths = [write_digit(folder / "data" / f"{s}.png", images[int(np.flatnonzero(targets == int(LABELS[s]))[0])])
             for s in ids]
    samples = pd.DataFrame({"filepath": [str(p) for p in paths], "label": list(LABELS.values()), "split": "all",
                            "readable": True, "problems": "", "content_hash": [f"h-{s}" for s in ids],
                            "mistakes_audited_label": list(LABELS.values()),
                            "mistakes_is_issue": [s in flagged for s in ids],
                            "mistakes_suggested_label": [flagged.get(s, LABELS[s]) for s in ids]},
                           index=pd.Index(ids, name="sample_id"))
    annotations = pd.DataFrame([{"sample_id": s, "annotator": a, "label": lab}
                                for a, labels in ANNOTATIONS.items() for s, lab in labels.items()])
    run = write_run(folder / "reports" / name, samples, {
        "run_name": name, "created_at": created, "class_names": CLASSES,
        "dataset": {"kind": "manifest", "path": str(folder / "data" / dataset), "name": "data"},
        "checks": {"agreement": {"per_annotator": agreement}}}, annotations=annotations)
    if ledger is not None:
        review.write_ledger(run.path, ledger)
    return run


@pytest.fixture()
def runs(tmp_path, digit_images):
    """week1 (nothing flagged, no reviews), week2 (s3 flagged, suggestion "2"; a reviewer says s1 is a "2"),
    a later week3 and a run of another dataset in the same folder (neither belongs in week2's history)."""
    make = {"digit_images": digit_images}
    _run(tmp_path, "week1", "2026-03-02T09:00:00+00:00", {}, {"ann": {"agreement_with_consensus": 0.5,
                                                                    "quality": 0.7}}, **make)
    ledger = review.normalise_ledger(pd.DataFrame([{
        "item_id": "s1", "given_label": "1", "verdict": "wrong", "corrected_label": "2", "reviewer": "rita",
        "reviewed_at": datetime(2026, 3, 9, 10, tzinfo=UTC), "content_hash": "h-s1", "selection": "top_k"}]))
    week2 = _run(tmp_path, "week2", "2026-03-09T09:00:00+00:00", {"s3": "2"},
                 {"ann": {"agreement_with_consensus": 0.6, "quality": 0.8}}, ledger=ledger, **make)
    _run(tmp_path, "week3", "2026-03-16T09:00:00+00:00", {}, {}, **make)
    _run(tmp_path, "other", "2026-03-05T09:00:00+00:00", {}, {}, dataset="other.csv", **make)
    return week2


def _text(page: str) -> str:
    return re.sub(r"\s+", " ", html.unescape(re.sub(r"<[^>]+>", " ", page)))


def test_pages_say_what_was_overturned_and_by_whom(runs):
    pages = {p.annotator: p for p in write_feedback(runs.path)}
    assert set(pages) == {"ann", ODD}
    # ann: s1 "1" (a reviewer says 2), s2 "1" (consensus 2), s3 "0" (flagged, the audit suggests 2); s0 agrees
    assert (pages["ann"].n_labels, pages["ann"].n_overturned) == (4, 3)
    markdown = pages["ann"].markdown.read_text()
    assert "Of your 4 labels in this run, 4 could be checked" in markdown
    assert "**3** (75.0%) were overturned: 1 by a reviewer, 2 by the consensus." in markdown
    table = [line for line in markdown.splitlines() if line.startswith("| s")]
    assert table == [f"| s1 | 1 | 2 | review (rita) | {md_escape(ODD)}: 2 |",
                     f"| s2 | 1 | 2 | consensus | {md_escape(ODD)}: 2 |",
                     "| s3 | 0 | 2 | consensus | — |"]
    # confusion: yours 0 -> believed 0 (s0) and 2 (s3); yours 1 -> believed 2 (s1, s2)
    assert "| **0** | 1 | 0 | 1 |" in markdown and "| **1** | 0 | 0 | 2 |" in markdown
    page = pages["ann"].html.read_text()
    assert page.count('<img class="thumb" src="data:image/') == 3
    assert "review (rita)" in _text(page)
    # the other annotator: every label agrees with what is believed (s1's "2" is what the reviewer said)
    assert pages[ODD].n_overturned == 0 and "None this run." in pages[ODD].markdown.read_text()


def test_history_covers_earlier_runs_of_the_same_dataset(runs):
    pages = {p.annotator: p for p in write_feedback(runs.path)}
    markdown = pages["ann"].markdown.read_text()
    rows = [line for line in markdown.splitlines() if line.startswith("| week") or line.startswith("| other")]
    # week1: nothing flagged, no review: only s2 ("1" vs consensus "2") overturned, 1 of 4
    assert rows == ["| week1 | 2026-03-02 09:00:00+00:00 | 4 | 1 | 25.0% | 50.0% | 0.700 |",
                    "| week2 | 2026-03-09 09:00:00+00:00 | 4 | 3 | 75.0% | 60.0% | 0.800 |"]
    odd = pages[ODD].markdown.read_text()
    # week1: its "2" on s1 disagreed with the consensus "1"; in week2 a reviewer agreed with it
    assert "| week1 | 2026-03-02 09:00:00+00:00 | 3 | 1 | 33.3% | — | — |" in odd


def test_names_are_escaped_and_files_are_safe(runs):
    pages = {p.annotator: p for p in write_feedback(runs.path)}
    page = pages[ODD]
    assert page.html.name == f"{annotator_slug(ODD)}.html" and re.fullmatch(r"[A-Za-z0-9._-]+\.html", page.html.name)
    text = page.html.read_text()
    assert "<b>x</b>" not in text and "&lt;b&gt;x&lt;/b&gt;|y" in text
    assert page.markdown.read_text().startswith("# Label feedback for \\<b\\>x\\</b\\>\\|y")
    index = (runs.path / "feedback" / "index.html").read_text()
    assert f'href="{annotator_slug(ODD)}.html"' in index and "<b>x</b>" not in index


def test_a_run_without_annotators_has_no_feedback(tmp_path):
    samples = pd.DataFrame({"filepath": ["/x.png"], "label": ["0"], "split": "all", "readable": True,
                            "problems": ""}, index=pd.Index(["x"], name="sample_id"))
    run = write_run(tmp_path / "run", samples, {"run_name": "run", "class_names": CLASSES})
    with pytest.raises(FeedbackError, match="no per-annotator labels"):
        write_feedback(run.path)
