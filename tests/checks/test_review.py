"""The review check on a hand-built run and ledger: verdict counts, per-sample verdicts, precision at k, the error
rate estimate with the audit's flags as they were before review, per-annotator feedback, gate rules, the report.

Every expected value below is worked out by hand from the design tables (see the comments)."""

from __future__ import annotations

import html
import math
import re
from datetime import UTC, datetime

import numpy as np
import pandas as pd
import pytest

from audit import gate, review
from audit.checks import REGISTRY
from audit.checks.base import CheckContext, CheckInputError, CheckResult, validate_result
from audit.checks.review import ReviewCheck, annotator_slug
from audit.results import write_run

CLASSES = ["a", "b", "c"]
T0 = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)
# sample -> (label = consensus, flagged, unflagged by review, suggested). s2 was flagged, but a reviewer
# confirmed it, so this run no longer flags it (mistakes_unflagged_by_review).
SAMPLES = {
    "s0": ("a", True, False, "b"), "s1": ("b", True, False, "c"), "s2": ("c", False, True, "a"),
    "s3": ("a", True, False, "c"), "s4": ("b", False, False, "b"), "s5": ("c", False, False, "c"),
    "s6": ("a", False, False, "a"), "s7": ("b", False, False, "b"), "s8": ("c", False, False, "c"),
    "s9": ("a", False, False, "a"),
}
# ledger: item -> (kind, selection, score, verdict, corrected, content hash); s7's image changed since ("old").
LEDGER = {
    "o1": ("object", "top_k", 0.95, "correct", None, "ho"),
    "s0": ("image", "top_k", 0.90, "wrong", "b", "h-s0"),
    "s1": ("image", "top_k", 0.80, "wrong", None, "h-s1"),
    "s2": ("image", "top_k", 0.70, "correct", None, "h-s2"),
    "s3": ("image", "top_k", 0.60, "unsure", None, "h-s3"),
    "s6": ("image", "top_k", 0.50, None, None, "h-s6"),
    "s4": ("image", "random_audit", 0.10, "correct", None, "h-s4"),
    "s5": ("image", "random_audit", 0.05, "wrong", "a", "h-s5"),
    "s7": ("image", "random_audit", 0.02, "correct", None, "old"),
}
ANNOTATIONS = {
    "ann1": {"s0": "a", "s1": "b", "s2": "c", "s3": "a", "s4": "c", "s5": "c", "s6": "a", "s7": "a", "s8": "c",
             "s9": "a"},
    "ann <2>": {"s0": "b", "s1": "a", "s2": "a", "s3": "c", "s4": "b"},
}


def _samples() -> pd.DataFrame:
    index = pd.Index(list(SAMPLES), name="sample_id")
    return pd.DataFrame({"filepath": [f"/nowhere/{s}.png" for s in index],
                         "label": [v[0] for v in SAMPLES.values()], "split": "all", "readable": True,
                         "problems": "", "content_hash": [f"h-{s}" for s in index]}, index=index)


def _mistakes() -> pd.DataFrame:
    index = pd.Index(list(SAMPLES), name="sample_id")
    return pd.DataFrame({"mistakes_audited_label": [v[0] for v in SAMPLES.values()],
                         "mistakes_is_issue": [v[1] for v in SAMPLES.values()],
                         "mistakes_unflagged_by_review": [v[2] for v in SAMPLES.values()],
                         "mistakes_confirmed_correct": [s in ("s2", "s4") for s in index],
                         "mistakes_suggested_label": [v[3] for v in SAMPLES.values()],
                         "mistakes_label_quality": 0.5}, index=index)


def _ledger() -> pd.DataFrame:
    samples = _samples()
    rows = [{"item_id": item, "item_kind": kind, "sample_id": "s8" if kind == "object" else item,
             "given_label": "c" if kind == "object" else samples.loc[item, "label"], "selection": selection,
             "score": score, "verdict": verdict, "corrected_label": corrected, "content_hash": content,
             "reviewer": "rita" if verdict else None, "reviewed_at": T0 if verdict else None, "tool": "labelstudio"}
            for item, (kind, selection, score, verdict, corrected, content) in LEDGER.items()]
    return review.normalise_ledger(pd.DataFrame(rows))


def _annotations() -> pd.DataFrame:
    return pd.DataFrame([{"sample_id": s, "annotator": a, "label": lab}
                         for a, labels in ANNOTATIONS.items() for s, lab in labels.items()])


def _context(**overrides) -> CheckContext:
    mistakes = _mistakes()
    options = {"samples": _samples(), "class_names": CLASSES, "annotations": _annotations(), "ledger": _ledger(),
               "prior": {"mistakes": CheckResult("mistakes", mistakes, {})}}
    options.update(overrides)
    return CheckContext(**options)


@pytest.fixture(scope="module")
def result() -> CheckResult:
    return ReviewCheck().run(_context())


def test_registered_after_mistakes_and_needs_a_ledger():
    names = list(REGISTRY)
    assert names.index("review") > names.index("mistakes")
    assert ReviewCheck.requires == ("ledger",)


def test_verdict_counts_and_per_sample_columns(result):
    validate_result(result, _samples().index)
    m = result.metrics
    # correct: o1 s2 s4 s7; wrong: s0 s1 s5; unsure: s3; pending: s6
    assert m["verdicts"] == {"correct": 4, "wrong": 3, "unsure": 1, "pending": 1}
    assert (m["n_items"], m["n_images"], m["n_objects"], m["n_corrected"]) == (9, 8, 1, 2)
    # s0..s5 still hold; s7's image changed since its review
    assert (m["n_current"], m["n_outdated"]) == (6, 1)
    assert m["reviewers"] == {"rita": 8} and m["tools"] == {"labelstudio": 9}
    verdicts = result.samples["review_verdict"]
    assert verdicts.to_dict() == {"s0": "wrong", "s1": "wrong", "s2": "correct", "s3": "unsure", "s4": "correct",
                                  "s5": "wrong", "s6": None, "s7": None, "s8": None, "s9": None}
    assert result.samples["review_corrected_label"].to_dict() == {
        "s0": "b", "s1": None, "s2": None, "s3": None, "s4": None, "s5": "a", "s6": None, "s7": None, "s8": None,
        "s9": None}


def wilson(x: int, n: int, z: float = 1.959963984540054) -> tuple[float, float]:
    """Wilson's score interval, written out (Wilson 1927)."""
    p = x / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return centre - half, centre + half


def test_precision_at_k(result):
    p = result.metrics["precision_at_k"]
    # top_k items: o1 correct, s0 wrong, s1 wrong, s2 correct, s3 unsure, s6 pending -> 2 wrong of 4 decisive
    assert (p["n_items"], p["n_wrong"], p["n_correct"], p["n_unsure"], p["n_pending"]) == (6, 2, 2, 1, 1)
    assert p["precision"] == pytest.approx(0.5)
    assert (p["lower"], p["upper"]) == pytest.approx(wilson(2, 4))
    top3 = ReviewCheck().run(_context(params={"k": 3})).metrics["precision_at_k"]
    # the three highest scores: o1 (correct), s0, s1 (wrong)
    assert (top3["k"], top3["n_reviewed"], top3["precision"]) == (3, 3, pytest.approx(2 / 3))


def test_error_rate_counts_confirmed_flags_in_the_flagged_stratum(result):
    e = result.metrics["error_rate"]
    # flagged before review: s0 s1 s3 + s2 (4 of 10); current decisive verdicts there: s0 w, s1 w, s2 c (s3 unsure)
    # unflagged (6): the random audit items s4 c, s5 w count; s7's verdict is outdated
    assert e["strata"]["flagged"]["size"] == 4 and e["strata"]["flagged"]["reviewed"] == 3
    assert e["strata"]["flagged"]["wrong"] == 2
    assert (e["strata"]["unflagged"]["size"], e["strata"]["unflagged"]["reviewed"],
            e["strata"]["unflagged"]["wrong"]) == (6, 2, 1)
    assert e["complete"] is True
    assert e["estimate"] == pytest.approx(0.4 * 2 / 3 + 0.6 * 1 / 2)
    expected = review.stratified_error_rate([review.Stratum("flagged", 4, 3, 2), review.Stratum("unflagged", 6, 2, 1)])
    assert (e["lower"], e["upper"]) == pytest.approx((expected["lower"], expected["upper"]))
    # without the "unflagged by review" column s2 would be an unflagged item outside the audit sample: not counted
    plain = _mistakes().drop(columns="mistakes_unflagged_by_review")
    other = ReviewCheck().run(_context(prior={"mistakes": CheckResult("mistakes", plain, {})})).metrics
    assert other["error_rate"]["strata"]["flagged"]["reviewed"] == 2


def test_without_an_audit_sample_the_estimate_is_incomplete():
    ledger = _ledger()
    ledger = ledger[ledger["selection"] != "random_audit"]
    e = ReviewCheck().run(_context(ledger=ledger)).metrics["error_rate"]
    # flagged part only: 4/10 of the images, 2 of 3 reviewed wrong; the unflagged part assumed clean
    assert e["complete"] is False
    assert e["estimate"] == pytest.approx(0.4 * 2 / 3)


def test_feedback_per_annotator(result):
    annotators = result.metrics["annotators"]
    # ann1: overturned by review s0 (a, corrected b), s1 (b, called wrong), s4 (c vs confirmed b), s5 (c vs a);
    # by the consensus s3 (a; flagged, suggestion c) and s7 (a vs b, its review is outdated)
    assert annotators["ann1"] == {
        "n_labels": 10, "n_judged": 10, "n_overturned": 6, "n_overturned_by_review": 4,
        "n_overturned_by_consensus": 2, "overturn_rate": 0.6,
        "confusion": {"a": {"a": 2, "b": 2, "c": 1}, "c": {"a": 1, "b": 1, "c": 2}}}
    # ann <2>: s2 (a, but a reviewer confirmed c); s1's "a" is not the rejected "b", so it is not overturned
    assert annotators["ann <2>"] == {
        "n_labels": 5, "n_judged": 5, "n_overturned": 1, "n_overturned_by_review": 1,
        "n_overturned_by_consensus": 0, "overturn_rate": 0.2,
        "confusion": {"a": {"c": 1}, "b": {"b": 2}, "c": {"c": 1}}}


def test_no_annotators_no_feedback_and_bad_parameters():
    assert "annotators" not in ReviewCheck().run(_context(annotations=None)).metrics
    with pytest.raises(CheckInputError, match=r"checks\.review\.k"):
        ReviewCheck().run(_context(params={"k": 0}))
    with pytest.raises(CheckInputError, match="unknown review parameter"):
        ReviewCheck().run(_context(params={"kk": 3}))


def _run_folder(tmp_path, metrics: dict, name: str = "weekly"):
    samples = _samples().join(_mistakes())
    return write_run(tmp_path / name, samples, {"run_name": name, "class_names": CLASSES,
                                                "checks": {"review": metrics}})


def test_gate_rules(result, tmp_path):
    run = _run_folder(tmp_path, result.metrics)
    upper = result.metrics["error_rate"]["upper"]
    verdict = gate.evaluate(run, None, {"max_estimated_error_rate": round(upper + 0.01, 4),
                                        "min_review_precision": 0.6})
    rules = {r.name: r for r in verdict.rules}
    assert rules["max_estimated_error_rate"].passed and rules["max_estimated_error_rate"].value == pytest.approx(upper)
    assert not rules["min_review_precision"].passed and rules["min_review_precision"].value == pytest.approx(0.5)
    assert not gate.evaluate(run, None, {"max_estimated_error_rate": round(upper - 0.01, 4)}).passed
    # an incomplete estimate is no upper bound: the rule says why it has no value
    ledger = _ledger()
    partial = ReviewCheck().run(_context(ledger=ledger[ledger["selection"] != "random_audit"])).metrics
    rule = gate.evaluate(_run_folder(tmp_path, partial, "partial"), None, {"max_estimated_error_rate": 0.9}).rules[0]
    assert not rule.passed and rule.value is None and "audit sample" in rule.message
    nothing = ReviewCheck().run(_context(ledger=ledger[ledger["verdict"].isna()])).metrics
    rule = gate.evaluate(_run_folder(tmp_path, nothing, "none"), None, {"min_review_precision": 0.5}).rules[0]
    assert not rule.passed and "no queued suspect has a decisive verdict" in rule.message


def test_report_section_shows_the_figures_and_escapes_names(result, tmp_path):
    from audit.report import render_report

    run = _run_folder(tmp_path, result.metrics)
    page = render_report(run.path).read_text()
    section = page[page.index('<section id="review"'):]
    section = section[: section.index("</section>")]
    text = re.sub(r"\s+", " ", html.unescape(re.sub(r"<[^>]+>", " ", section)))
    assert "precision@6 50.0%" in text
    low, high = wilson(2, 4)
    assert f"{100 * low:.1f}%–{100 * high:.1f}%" in text
    e = result.metrics["error_rate"]
    assert f"{100 * e['estimate']:.1f}% of the 10 labelled images" in text and "Complete" in text
    assert "<2>" not in section and "ann &lt;2&gt;" in section  # names are escaped
    anchor = f"review-annotator-{annotator_slug('ann <2>')}"
    assert f'id="{anchor}"' in section and f'href="#{anchor}"' in section
    assert re.fullmatch(r"[A-Za-z0-9._-]+", annotator_slug("ann <2>"))
    assert annotator_slug("ann1") == "ann1" and annotator_slug("a/b") != annotator_slug("a b")
    assert 'class="tile-label">Review precision' in page and "Estimated wrong labels" in page


def test_summary_line_and_tiles(result):
    line = ReviewCheck.summary_line(result.metrics)
    assert "4 correct, 3 wrong, 1 unsure, 1 pending" in line and "50.0%" in line
    tiles = ReviewCheck.tiles({"status": "ok", "metrics": result.metrics})
    assert [t.label for t in tiles] == ["Review precision", "Estimated wrong labels"]
    assert tiles[1].value == f"{100 * result.metrics['error_rate']['estimate']:.1f}%"
    assert np.isclose(result.metrics["precision_at_k"]["precision"], 0.5)
