"""Out-of-sample predicted probabilities from embeddings, shared by the checks that need them.

``agreement`` (to weigh annotators, CROWDLAB) and ``mistakes`` (to audit labels) both need probabilities that no
model saw the label of; computing them once per run and passing them on (``CheckResult.arrays``) halves the
cost. The model and its settings are explained in :mod:`audit.checks.mistakes`.
"""

from __future__ import annotations

import math
import warnings

import numpy as np

LOGREG_C = 0.1  # on embeddings scaled to unit mean square per coordinate; see audit.checks.mistakes
LOGREG_MAX_ITER = 300


def cross_validated_pred_probs(
    embeddings: np.ndarray, labels: np.ndarray, n_classes: int, folds: int = 5, knn_neighbors: int = 10,
    seed: int = 0,
) -> tuple[np.ndarray, int, str, list[str]]:
    """Out-of-sample probabilities ``(m, n_classes)`` from stratified K-fold cross-validation.

    Every class in ``labels`` needs at least two samples (a fold must be able to train on it). Columns of classes
    absent from ``labels`` are 0. Returns the probabilities, the folds used, a one-line description and notes.
    """
    from threadpoolctl import threadpool_limits

    # One BLAS thread: lbfgs on these sizes makes many small matrix products, where OpenBLAS threads spin and
    # contend. Measured on 2 cores: 1,439 x 256 digits 0.2 s with one thread, 13.5 s with two on a busy machine.
    with threadpool_limits(1, user_api="blas"):
        return _cross_validated_pred_probs(embeddings, labels, n_classes, folds, knn_neighbors, seed)


def _cross_validated_pred_probs(
    embeddings: np.ndarray, labels: np.ndarray, n_classes: int, folds: int, knn_neighbors: int, seed: int,
) -> tuple[np.ndarray, int, str, list[str]]:
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_predict
    from sklearn.neighbors import KNeighborsClassifier

    present, compact = np.unique(labels, return_inverse=True)
    folds_used = int(min(folds, np.bincount(compact).max()))
    x = np.asarray(embeddings, dtype=np.float32)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    x = x / np.where(norms > 0, norms, 1.0) * np.float32(math.sqrt(x.shape[1]))
    splitter = StratifiedKFold(n_splits=folds_used, shuffle=True, random_state=seed)
    notes: list[str] = []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ConvergenceWarning)
        warnings.filterwarnings("ignore", message="The least populated class", category=UserWarning)
        logreg = LogisticRegression(C=LOGREG_C, max_iter=LOGREG_MAX_ITER)
        out = cross_val_predict(logreg, x, compact, cv=splitter, method="predict_proba")
    if any(issubclass(w.category, ConvergenceWarning) for w in caught):
        notes.append(f"logistic regression stopped at {LOGREG_MAX_ITER} iterations before full convergence")
    description = f"{folds_used}-fold cross-validated logistic regression"
    smallest_train = len(labels) - int(np.ceil(len(labels) / folds_used))
    neighbours = int(min(knn_neighbors, smallest_train))
    if neighbours > 0:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="The least populated class", category=UserWarning)
            knn = KNeighborsClassifier(n_neighbors=neighbours, weights="distance", algorithm="brute")
            out = (out + cross_val_predict(knn, x, compact, cv=splitter, method="predict_proba")) / 2.0
        description += f" averaged with a {neighbours}-nearest-neighbour vote"
    full = np.zeros((len(labels), n_classes))
    full[:, present] = out
    return full, folds_used, description + " on the embeddings", notes
