"""The default flag rule on real digit scans: what it always flags, what it never flags, and that it beats the
low-margin rule and cleanlab's defaults where confusions concentrate on a few class pairs."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from sklearn.datasets import load_digits

from audit.checks.flag_rule import (
    CONFIDENT_MARGIN,
    likely_mislabelled_for_refit,
    low_margin_calibrated_count,
    noise_posterior,
    noise_ranking,
)
from audit.checks.predictions import cross_validated_pred_probs
from benchmarks.heldout import NoiseSet, make_labels


def _f1(truth: np.ndarray, flags: np.ndarray) -> float:
    return 2 * (truth & flags).sum() / (truth.sum() + flags.sum())


@pytest.fixture(scope="module")
def lookalike() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Real digits with one-directional look-alike confusions (1->7 fastest) at 20%, a tuning seed of the
    held-out benchmark, and out-of-fold probabilities from the check's own classifier: labels, probs, truth."""
    data = load_digits()
    _, labels, _ = make_labels(NoiseSet("look-alike", 0.20, 0, "tuning"), data.target)
    probs, *_ = cross_validated_pred_probs(data.data.astype(np.float32), labels, 10, seed=0)
    return labels, probs, labels != data.target


def _margin(labels: np.ndarray, probs: np.ndarray) -> np.ndarray:
    rows = np.arange(len(labels))
    others = probs.copy()
    others[rows, labels] = -np.inf
    return probs[rows, labels] - others.max(axis=1)


def test_flags_every_confident_disagreement_and_never_a_label_the_model_agrees_with(lookalike):
    labels, probs, _ = lookalike
    flags = noise_posterior(labels, probs)
    margin = _margin(labels, probs)
    assert (margin < -CONFIDENT_MARGIN).sum() > 0
    assert flags[margin < -CONFIDENT_MARGIN].all()
    assert not flags[margin >= 0].any()


def test_confident_disagreements_are_flagged_beyond_the_estimated_count():
    """Ten samples of one class that the model puts in another with certainty, among 200 it agrees with: the
    noise estimate sees a rare confusion, yet every one of the ten is flagged."""
    digits = load_digits()
    keep = np.isin(digits.target, [0, 1])
    labels = digits.target[keep][:200].copy()
    probs = np.full((len(labels), 2), 0.02)
    probs[np.arange(len(labels)), labels] = 0.98
    swapped = np.flatnonzero(labels == 0)[:10]
    labels[swapped] = 1  # labelled 1, certainly a 0
    flags = noise_posterior(labels, probs)
    assert flags[swapped].all() and flags.sum() == 10


def test_beats_the_low_margin_rule_and_cleanlab_where_confusions_concentrate(lookalike):
    from cleanlab.filter import find_label_issues

    labels, probs, truth = lookalike
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cleanlab = find_label_issues(labels, probs, n_jobs=1)
    ours = _f1(truth, noise_posterior(labels, probs))
    assert ours > _f1(truth, low_margin_calibrated_count(labels, probs))
    assert ours > _f1(truth, cleanlab)
    assert ours >= 0.95


def test_the_refit_leaves_out_more_mislabelled_samples_than_are_flagged(lookalike):
    """The refit trains without the calibrated count from the top of the same ranking, whether or not the model
    agrees with the label: more of the wrong labels leave the training set than the flags name, at high
    precision."""
    labels, probs, truth = lookalike
    left_out = likely_mislabelled_for_refit(labels, probs)
    flags = noise_posterior(labels, probs)
    assert (left_out & truth).sum() > (flags & truth).sum()
    assert truth[left_out].mean() > 0.95


def test_a_class_nobody_used_changes_nothing(lookalike):
    labels, probs, _ = lookalike
    wider = np.hstack([probs, np.zeros((len(labels), 1))])
    assert (noise_posterior(labels, wider) == noise_posterior(labels, probs)).all()
    ranked, *_ = noise_ranking(labels, wider)
    assert sorted(ranked) == list(range(len(labels)))


def test_one_class_flags_nothing():
    labels = np.zeros(5, dtype=int)
    probs = np.tile([0.1, 0.9], (5, 1))  # the model disagrees, but there is no other class in the labels
    assert not noise_posterior(labels, probs).any()
    assert not likely_mislabelled_for_refit(labels, probs).any()


def test_a_consensus_of_annotators_who_share_confusions_gets_more_flags_and_a_better_f1():
    """Three annotators who all read some 4s as 9s (and 1s as 7s, 3s as 8s), shipped by majority vote: the
    classifier learns part of the shared confusion, so the plain count undershoots; the consensus count fixes
    that and beats cleanlab's defaults on the same probabilities."""
    from cleanlab.filter import find_label_issues

    data = load_digits()
    _, labels, _ = make_labels(NoiseSet("shared annotator error", 0.0, 0, "tuning"), data.target)
    probs, *_ = cross_validated_pred_probs(data.data.astype(np.float32), labels, 10, seed=0)
    truth = labels != data.target
    plain, consensus = noise_posterior(labels, probs), noise_posterior(labels, probs, consensus=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cleanlab = find_label_issues(labels, probs, n_jobs=1)
    assert consensus.sum() > plain.sum()
    assert _f1(truth, consensus) > max(_f1(truth, plain), _f1(truth, cleanlab))
    assert not consensus[_margin(labels, probs) >= 0].any()
