"""The real-data benchmark: human-validated label errors in the CIFAR-10 and MNIST test sets (no images)."""

from __future__ import annotations

import json

import pytest

from benchmarks.label_errors import data_dir, main


@pytest.fixture(scope="module")
def results(tmp_path_factory) -> dict:
    assert data_dir().is_dir(), f"label-errors data missing at {data_dir()} (set LABEL_AUDIT_SHARED)"
    out = tmp_path_factory.mktemp("bench") / "label_errors.json"
    assert main(["--quick", "--out", str(out)]) == 0
    assert out.with_suffix(".md").read_text(encoding="utf-8").count("\n") == 2 + 2 * 5
    return json.loads(out.read_text(encoding="utf-8"))


def test_uses_the_papers_validated_errors(results):
    datasets = results["datasets"]
    assert (datasets["cifar10"]["n_validated_errors"], datasets["cifar10"]["n_candidates"]) == (54, 275)
    assert (datasets["mnist"]["n_validated_errors"], datasets["mnist"]["n_candidates"]) == (15, 100)
    assert results["quick"] is True


def test_flags_more_validated_errors_than_cleanlab_at_a_higher_hit_rate(results):
    """The default rule does not contain cleanlab's flags (it ranks by a noise posterior against its own count),
    so each of these can fail: a rule that finds fewer errors, or finds them by flagging more, is caught."""
    cifar, mnist = (results["datasets"][d]["methods"] for d in ("cifar10", "mnist"))
    ours, theirs = "label-audit (defaults)", "cleanlab defaults"
    assert cifar[ours]["validated_flagged"] >= 52  # issue 17: keep CIFAR-10 at >= 52 of 54
    assert cifar[ours]["total_flags"] <= cifar[theirs]["total_flags"]
    # MNIST: every confident disagreement is flagged (32 flags against cleanlab's 15), for more validated errors
    assert mnist[ours]["validated_flagged"] > mnist[theirs]["validated_flagged"]
    # over both sets, a larger share of the flags are validated errors (unreviewed flags count as not validated)
    found = {m: cifar[m]["validated_flagged"] + mnist[m]["validated_flagged"] for m in (ours, theirs)}
    flags = {m: cifar[m]["total_flags"] + mnist[m]["total_flags"] for m in (ours, theirs)}
    assert found[ours] / flags[ours] > found[theirs] / flags[theirs]
    assert cifar["label-audit filter_by=predicted_neq_given"]["validated_flagged"] == 54


def test_flags_only_label_audit_raises_hold_more_validated_errors_than_those_it_drops(results):
    versus = [results["datasets"][d]["versus_cleanlab"] for d in ("cifar10", "mnist")]
    added = sum(v["only_label_audit"]["validated"] for v in versus)
    dropped = sum(v["only_cleanlab"]["validated"] for v in versus)
    assert added > dropped
    for v in versus:  # each breakdown adds up to the flags it describes
        for side in v.values():
            assert side["validated"] + side["fine"] + side["unreviewed"] == side["flags"]


def test_reviewed_precision_and_f1_are_computed_over_reviewed_flags_only(results):
    for data in results["datasets"].values():
        for m in data["methods"].values():
            assert m["reviewed_flags"] == m["validated_flagged"] + m["fine_candidates_flagged"] <= m["total_flags"]
            assert m["precision_over_reviewed"] == pytest.approx(m["validated_flagged"] / m["reviewed_flags"])
            recall = m["validated_flagged"] / data["n_validated_errors"]
            assert m["f1_over_reviewed"] == pytest.approx(2 * m["precision_over_reviewed"] * recall
                                                          / (m["precision_over_reviewed"] + recall))


def test_ranks_validated_errors_above_fine_candidates(results):
    # measured AUROC 0.591 (CIFAR-10) and 0.727 (MNIST), the same as cleanlab's default ranking
    cifar, mnist = (results["datasets"][d]["methods"]["label-audit (defaults)"] for d in ("cifar10", "mnist"))
    assert cifar["auroc"] > 0.55 and mnist["auroc"] > 0.65
    assert cifar["average_precision"] > 54 / 275 and mnist["average_precision"] > 15 / 100
