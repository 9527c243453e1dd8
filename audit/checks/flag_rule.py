"""The default mislabel flag rule, shared by the mistakes check (which flags with it) and the out-of-fold
classifier (which refits without the samples it flags): a module of its own so neither imports the other.
Why this rule: see :mod:`audit.checks.mistakes`."""

from __future__ import annotations

import numpy as np


def low_margin_calibrated_count(labels: np.ndarray, probs: np.ndarray) -> np.ndarray:
    """The default flag rule: the ``n`` samples with the lowest normalized margin, where ``n`` is cleanlab's
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
    rows = np.arange(len(labels))
    flags = np.zeros(len(labels), dtype=bool)
    if len(labels) == 0:
        return flags
    count = int(num_label_issues(labels, probs, estimation_method="off_diagonal_calibrated"))
    margin = get_label_quality_scores(labels, probs, method="normalized_margin")
    flags[np.argsort(margin, kind="stable")[:count]] = True
    others = probs.copy()
    others[rows, labels] = -np.inf
    return flags & (others.max(axis=1) > probs[rows, labels])
