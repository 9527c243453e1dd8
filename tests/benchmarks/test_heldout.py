"""The held-out benchmark: its noise structures are what they claim, its sets are split, and on the quick
held-out sets the default flag rule meets the facts issue 17 asks for that hold on any machine."""

from __future__ import annotations

import json

import numpy as np
import pytest

from benchmarks.heldout import (
    BEFORE,
    CLEANLAB,
    HELDOUT,
    HELDOUT_SEEDS,
    LABEL_AUDIT,
    LONG_TAIL_IMBALANCE,
    LOOKALIKE,
    NO_REFIT,
    PREVIOUS,
    QUICK,
    TUNING,
    TUNING_SEEDS,
    NoiseSet,
    main,
    make_labels,
)


@pytest.fixture(scope="module")
def digits() -> np.ndarray:
    from sklearn.datasets import load_digits

    return load_digits().target


@pytest.fixture(scope="module")
def quick(tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("heldout") / "heldout.json"
    assert main(["--quick", "--out", str(out)]) == 0
    assert "**Held-out sets**" in out.with_suffix(".md").read_text(encoding="utf-8")
    return json.loads(out.read_text(encoding="utf-8"))


def test_tuning_and_heldout_sets_never_share_a_seed():
    assert not set(TUNING_SEEDS) & set(HELDOUT_SEEDS)
    assert {s.seed for s in TUNING} == set(TUNING_SEEDS) and {s.seed for s in HELDOUT} == set(HELDOUT_SEEDS)
    assert {s.role for s in TUNING} == {"tuning"} and {s.role for s in HELDOUT} == {"held-out"}
    assert set(QUICK) <= set(HELDOUT)
    assert {s.structure for s in QUICK} == {s.structure for s in HELDOUT}


def test_lookalike_noise_flips_exactly_the_stated_share_of_each_source_digit(digits):
    rows, given, annotations = make_labels(NoiseSet("look-alike", 0.10, 7, "held-out"), digits)
    assert annotations is None and len(rows) == len(digits)
    true = digits[rows]
    counts = np.bincount(true, minlength=10)
    scale = 0.10 * len(true) / sum(weight * counts[c] for c, (_, weight) in LOOKALIKE.items())
    for digit in range(10):
        wrong = given[true == digit][given[true == digit] != digit]
        if digit not in LOOKALIKE:
            assert len(wrong) == 0
            continue
        partner, weight = LOOKALIKE[digit]
        assert set(wrong) == {partner}
        assert len(wrong) == round(weight * scale * counts[digit])
    assert (given != true).mean() == pytest.approx(0.10, abs=0.005)


def test_long_tailed_sets_fall_by_the_stated_imbalance(digits):
    rows, given, _ = make_labels(NoiseSet("long-tailed symmetric", 0.10, 7, "held-out"), digits)
    sizes = np.sort(np.bincount(digits[rows], minlength=10))[::-1]
    assert sizes[0] == np.bincount(digits).min()
    assert sizes[0] / sizes[-1] == pytest.approx(LONG_TAIL_IMBALANCE, rel=0.1)
    assert (np.diff(sizes) < 0).all()
    assert 0.06 < (given != digits[rows]).mean() < 0.14


def test_shared_annotator_error_ships_the_majority_of_annotators_who_share_a_confusion(digits):
    rows, shipped, annotations = make_labels(NoiseSet("shared annotator error", 0.0, 7, "held-out"), digits)
    assert set(annotations["annotator"]) == {"alice", "bob", "carol"}
    per_sample = annotations.groupby("row")["label"].agg(list)
    assert per_sample.index.tolist() == list(range(len(rows)))
    for row, votes in per_sample.items():
        counts = np.bincount(votes, minlength=10)
        assert counts[shipped[row]] == counts.max()
    # 30% of the 4s are a 9 to every annotator: most of those votes survive as the shipped label
    fours = digits[rows] == 4
    assert 0.2 < (shipped[fours] == 9).mean() < 0.45
    assert (shipped[digits[rows] == 0] != 0).mean() < 0.1  # no shared confusion for 0: only random errors


def test_quick_form_reports_heldout_sets_only(quick):
    assert quick["quick"] is True and quick["tuning_sets"] == []
    assert {s["role"] for s in quick["sets"]} == {"held-out"}
    assert {s["seed"] for s in quick["sets"]} == {HELDOUT_SEEDS[0]}
    for s in quick["sets"]:
        ours = s["methods"][LABEL_AUDIT]
        # the default flags are a top cut of the rule's own ranking, so they cannot beat its best cut
        assert ours["f1"] <= s["ceiling_f1"] + 1e-9


def test_default_rule_meets_issue_17_on_the_heldout_sets(quick):
    sets = {s["name"]: s for s in quick["sets"]}
    f1 = {name: s["methods"][LABEL_AUDIT]["f1"] for name, s in sets.items()}
    theirs = {name: s["methods"][CLEANLAB]["f1"] for name, s in sets.items()}
    # the issue's own case (look-alike confusions, about 10% wrong) and the demo's noise at 10%
    for group in ("symmetric 10%", "pairs 10%", "look-alike 10%"):
        assert f1[f"{group}, seed {HELDOUT_SEEDS[0]}"] >= 0.95
    # at least cleanlab's defaults on the same probabilities on every set (0.924 vs 0.922 at look-alike 20%, seed
    # 107, the closest; the slack allows for another BLAS), and well ahead on average (0.955 vs 0.910 measured)
    for name in sets:
        assert f1[name] >= theirs[name] - 0.005, name
    assert np.mean(list(f1.values())) > np.mean(list(theirs.values())) + 0.02
    without_annotators = [s for s in sets.values() if s["structure"] != "shared annotator error"]
    assert min(s["methods"][LABEL_AUDIT]["f1"] for s in without_annotators) >= 0.85  # long-tailed symmetric 0.877
    # with annotators the consensus is audited and the count raised toward the disagreements: F1 0.958 at seed
    # 107 (cleanlab's defaults 0.817), still precise
    shared = sets[f"shared annotator error, seed {HELDOUT_SEEDS[0]}"]
    assert shared["methods"][LABEL_AUDIT]["precision"] >= 0.9
    assert shared["methods"][LABEL_AUDIT]["f1"] >= shared["methods"][CLEANLAB]["f1"] + 0.05


def test_refit_and_new_rule_beat_the_single_fit_rules(quick):
    without_annotators = [s["methods"] for s in quick["sets"] if BEFORE in s["methods"]]
    assert len(without_annotators) == len(quick["sets"]) - 1
    mean = {name: np.mean([m[name]["f1"] for m in without_annotators]) for name in (LABEL_AUDIT, NO_REFIT, BEFORE)}
    assert mean[LABEL_AUDIT] > mean[NO_REFIT] and mean[LABEL_AUDIT] > mean[BEFORE]
    # and the noise posterior beats the previous default (low margin) on the same probabilities
    every = [s["methods"] for s in quick["sets"]]
    assert np.mean([m[LABEL_AUDIT]["f1"] for m in every]) > np.mean([m[PREVIOUS]["f1"] for m in every])
