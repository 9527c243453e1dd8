"""The mislabel flag rules of label-audit's own, shared by the mistakes check (which flags with them) and the
out-of-fold classifier (which refits without the samples the default ranks as likely mislabelled): a module of
its own so neither imports the other. Why the default: see :mod:`audit.checks.mistakes`."""

from __future__ import annotations

import numpy as np


def low_margin_calibrated_count(labels: np.ndarray, probs: np.ndarray) -> np.ndarray:
    """The default before :func:`noise_posterior` (still a ``filter_by`` choice): the ``n`` samples with the
    lowest normalized margin, where ``n`` is cleanlab's
    calibrated estimate of the number of label issues; a sample whose label is its most likely class is never
    flagged.

    ``n`` is :func:`cleanlab.count.num_label_issues` with ``estimation_method="off_diagonal_calibrated"`` (the
    confident joint rescaled to the observed class counts), which cleanlab documents as a cutoff for its ranking
    scores; the margin is :func:`cleanlab.rank.get_label_quality_scores` ``method="normalized_margin"``
    (probability of the label minus the largest other probability). One global ranking, not one per class.
    Why this rule and not another: see the module docstring. Deterministic: ties keep sample order.
    """
    from cleanlab.count import num_label_issues
    from cleanlab.rank import get_label_quality_scores

    labels = np.asarray(labels)
    if len(labels) == 0:
        return np.zeros(0, dtype=bool)
    count = int(num_label_issues(labels, probs, estimation_method="off_diagonal_calibrated"))
    margin = get_label_quality_scores(labels, probs, method="normalized_margin")
    flags = _first(np.argsort(margin, kind="stable"), count)
    given, best_other = _given_and_best_other(labels, probs)
    return flags & (best_other > given)


CONFIDENT_MARGIN = 0.8  # another class this much more likely than the label: flagged whatever the count


def noise_posterior(labels: np.ndarray, probs: np.ndarray, consensus: bool = False) -> np.ndarray:
    """The default flag rule: every sample the model confidently puts in another class, then the samples most
    likely mislabelled under cleanlab's estimated noise, up to an estimate of the number of errors.

    * **Confident disagreements** (normalized margin below ``-CONFIDENT_MARGIN``: another class at least 0.8
      more likely than the label) are always flagged. They hold errors in class pairs the noise estimate calls
      rare, which the posterior below would discount (some CIFAR-10 validated errors are of this kind).
    * **The rest** is ranked by the posterior probability that the label is wrong,
      ``1 - p(l|x) T(l|l) / sum_c p(c|x) T(l|c)``, where ``T(given|true)`` is cleanlab's noise matrix
      (:func:`cleanlab.count.estimate_py_and_noise_matrices_from_probabilities`): a sample labelled 7 that looks
      a little like a 1 is suspect where many 1s are labelled 7, and not where none are. This is what wins where
      confusions concentrate on a few class pairs (look-alike digits, long tails).
    * **How many**: the mean of cleanlab's calibrated confident-joint count
      (:func:`cleanlab.count.num_label_issues`, ``off_diagonal_calibrated``) and the posterior's expected number
      of errors: two estimates that miss in opposite directions on the tuning sets (the first overshoots with
      imbalanced classes, the second undershoots when noise is spread thinly). Confident disagreements beyond
      that count are flagged all the same.
    * **A consensus of annotators** (``consensus=True``: the labels are the annotators' consensus) keeps the
      errors the annotators share, and the classifier, trained on those labels, learns part of them: on the
      tuning sets' shared-annotator sets both estimates undershoot by about a third, while the number of
      samples whose most likely class is not their label overshoots. The count is the midpoint of that number
      and the estimate above.

    A sample whose label is its most likely class is never flagged. Chosen on the tuning sets of
    ``python -m benchmarks.heldout`` and the CIFAR-10 / MNIST validated errors (:mod:`audit.checks.mistakes`).
    """
    ranked, calibrated, expected, disagrees, confident = noise_ranking(labels, probs)
    count = round((calibrated + expected) / 2)
    if consensus:
        count = round((count + int(disagrees.sum())) / 2)
    return _first(ranked, max(count, int(confident.sum()))) & disagrees


def likely_mislabelled_for_refit(labels: np.ndarray, probs: np.ndarray) -> np.ndarray:
    """The samples a refit trains without: the top of :func:`noise_posterior`'s ranking, as many as cleanlab's
    calibrated count (the larger estimate), including samples the model still predicts as labelled (a 1 among
    many 1s labelled 7 can look like a 7 to a model trained on them). Chosen on the same tuning sets."""
    ranked, calibrated, _, _, confident = noise_ranking(labels, probs)
    return _first(ranked, max(calibrated, int(confident.sum())))


def noise_ranking(labels: np.ndarray, probs: np.ndarray,
                   ) -> tuple[np.ndarray, int, float, np.ndarray, np.ndarray]:
    """The ranking behind :func:`noise_posterior`: sample rows from most to least likely mislabelled (confident
    disagreements first, then by the noise posterior), cleanlab's calibrated count, the posterior's expected
    count, and the masks of samples whose most likely class is not their label and of confident disagreements.
    Classes absent from ``labels`` take no part in the noise estimate (their columns still count in the margin).
    Ties keep sample order."""
    from cleanlab.count import estimate_py_and_noise_matrices_from_probabilities, num_label_issues

    labels = np.asarray(labels)
    probs = np.asarray(probs, dtype=float)
    rows = np.arange(len(labels))
    present, compact = np.unique(labels, return_inverse=True)
    if len(present) < 2:  # nothing a label could be confused with
        nothing = np.zeros(len(labels), dtype=bool)
        return rows, 0, 0.0, nothing, nothing
    given, best_other = _given_and_best_other(labels, probs)
    disagrees = best_other > given
    confident = disagrees & (given - best_other < -CONFIDENT_MARGIN)

    inside = probs[:, present]
    sums = inside.sum(axis=1, keepdims=True)
    inside = inside / np.where(sums > 0, sums, 1.0)
    _, noise_matrix, _, _ = estimate_py_and_noise_matrices_from_probabilities(compact, inside)
    joint = inside * np.nan_to_num(noise_matrix)[compact, :]  # p(true c | x) * T(given label | true c)
    total = joint.sum(axis=1)
    wrong = np.where(total > 0, 1.0 - joint[rows, compact] / np.where(total > 0, total, 1.0), 0.0)
    calibrated = int(num_label_issues(compact, inside, estimation_method="off_diagonal_calibrated"))
    ranked = np.argsort(-np.where(confident, 2.0, wrong), kind="stable")
    return ranked, calibrated, float(wrong.sum()), disagrees, confident


def _given_and_best_other(labels: np.ndarray, probs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each sample's probability of its label and the largest probability of another class."""
    rows = np.arange(len(labels))
    others = np.array(probs, dtype=float)
    others[rows, labels] = -np.inf
    return np.asarray(probs, dtype=float)[rows, labels], others.max(axis=1)


def _first(ranked: np.ndarray, n: int) -> np.ndarray:
    """A mask of the first ``n`` rows of ``ranked``."""
    flags = np.zeros(len(ranked), dtype=bool)
    flags[ranked[:n]] = True
    return flags
