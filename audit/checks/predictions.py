"""Out-of-sample predicted probabilities from embeddings, shared by the checks that need them.

``agreement`` (to weigh annotators, CROWDLAB) and ``mistakes`` (to audit labels) both need probabilities that no
model saw the label of; computing them once per run and passing them on (``CheckResult.arrays``) halves the
cost. The model and its settings are explained in :mod:`audit.checks.mistakes`.

The model is fitted twice on the same folds (``refit``, on by default): the second time each fold's training set
leaves out the samples that the first fit's probabilities rank as likely mislabelled (the top of the
``mistakes`` default ranking, as many as cleanlab's calibrated count, including labels the model still agrees
with: :func:`audit.checks.flag_rule.likely_mislabelled_for_refit`), so fewer wrong labels teach the model that
predicts the held-out fold; every sample still gets a prediction from a model that never trained on it. This is
cleanlab's "train on the cleaned data" idea applied to the out-of-fold probabilities, and it doubles the cost
of this stage. A sample's own label can reach its second-fit prediction only through the first fit's choice of
which *other* samples to leave out. On the 110 tuning sets of ``python -m benchmarks.heldout`` without
annotators the default flags reach a mean F1 of 0.966 with the refit and 0.916 on the single fit (held-out
sets: 0.968 and 0.914).

Very large datasets
-------------------
Up to ``KNN_EXACT_MAX_ROWS`` samples (and ``LOGREG_MAX_TRAIN`` training rows per fold) the model is exactly the one
described above. Beyond, two parts would not scale, so they change (``python -m benchmarks`` measures both forms):

* the neighbour vote: scikit-learn's brute-force search per fold costs ``n^2 d`` (about 2.5 hours at a million
  512-d vectors on one core). Instead one approximate search over all rows (faiss HNSW through
  :func:`audit.neighbours.knn`, lighter settings than the duplicate search: ``M = 16``, ``efConstruction = 40``,
  ``efSearch = 64``) finds each sample's ``KNN_SEARCH`` nearest rows once, for both fits; each fold's vote then
  keeps, per held-out sample, its ``knn_neighbors`` most similar rows that lie outside its fold (and, in the
  refit, were not left out), weighted by inverse Euclidean distance exactly as scikit-learn weighs them. A
  sample whose search returned fewer such rows votes with those it has (none: its probabilities are the
  logistic regression's alone);
* the logistic regression trains, per fold, on a seeded random sample of at most ``LOGREG_MAX_TRAIN`` of the
  fold's training rows (a linear probe with ``classes x dim`` weights is pinned down long before that); every
  held-out sample is still predicted, and the cost no longer grows with ``n`` beyond the predictions.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable

import numpy as np

from audit.checks.flag_rule import likely_mislabelled_for_refit

LOGREG_C = 0.1  # on embeddings scaled to unit mean square per coordinate; see audit.checks.mistakes
LOGREG_MAX_ITER = 300
LOGREG_MAX_TRAIN = 200_000  # training rows per fold above which the logistic regression trains on a sample
KNN_EXACT_MAX_ROWS = 50_000  # above this many samples the neighbour vote uses one approximate search
KNN_SEARCH = 32  # neighbours found per sample by that search (about 80% lie outside the sample's own fold)
KNN_HNSW = {"hnsw_m": 16, "ef_construction": 40, "ef_search": 64}  # a vote needs no duplicate-search recall
PREDICT_BATCH = 65_536  # rows per predict_proba call on the large path (bounds its temporary arrays)


def cross_validated_pred_probs(
    embeddings: np.ndarray, labels: np.ndarray, n_classes: int, folds: int = 5, knn_neighbors: int = 10,
    seed: int = 0, refit: bool = True,
    refit_rule: Callable[[np.ndarray, np.ndarray], np.ndarray] = likely_mislabelled_for_refit,
) -> tuple[np.ndarray, int, str, list[str]]:
    """Out-of-sample probabilities ``(m, n_classes)`` from stratified K-fold cross-validation.

    Every class in ``labels`` needs at least two samples (a fold must be able to train on it). Columns of classes
    absent from ``labels`` are 0. With ``refit`` the model is fitted a second time without the samples
    ``refit_rule(labels, probs)`` marks in the first fit (module docstring; classifiers trained with
    made-up negative classes pass the low-margin rule, see :mod:`audit.checks.object_mistakes`). Returns the
    probabilities, the folds used, a one-line description and notes.
    """
    from threadpoolctl import threadpool_limits

    found = _shared_neighbours(embeddings, labels, knn_neighbors)
    # One BLAS thread: lbfgs on these sizes makes many small matrix products, where OpenBLAS threads spin and
    # contend with each other and with the rest of the run.
    with threadpool_limits(1, user_api="blas"):
        probs, folds_used, description, notes = _cross_validated_pred_probs(
            embeddings, labels, n_classes, folds, knn_neighbors, seed, found=found)
        refitted = (_refit(embeddings, labels, n_classes, probs, folds, knn_neighbors, seed, refit_rule, found)
                    if refit else None)
    if refitted is None:
        return probs, folds_used, description, notes
    probs, folds_used, description, more = refitted
    return probs, folds_used, description, notes + [n for n in more if n not in notes]


def refit_without_flagged(embeddings: np.ndarray, labels: np.ndarray, n_classes: int, first_fit: np.ndarray,
                          folds: int = 5, knn_neighbors: int = 10, seed: int = 0,
                          ) -> tuple[np.ndarray, int, str, list[str]] | None:
    """The second fit of :func:`cross_validated_pred_probs` alone, from out-of-sample probabilities fitted
    elsewhere (the agreement check's, on majority votes): the model retrained on ``labels`` without the samples
    ``first_fit`` ranks as likely mislabelled. None when there are none (the first fit then stands)."""
    from threadpoolctl import threadpool_limits

    with threadpool_limits(1, user_api="blas"):
        return _refit(embeddings, labels, n_classes, first_fit, folds, knn_neighbors, seed,
                      likely_mislabelled_for_refit, _shared_neighbours(embeddings, labels, knn_neighbors))


def _shared_neighbours(embeddings: np.ndarray, labels: np.ndarray, knn_neighbors: int,
                       ) -> tuple[np.ndarray, np.ndarray] | None:
    """Above ``KNN_EXACT_MAX_ROWS`` the vote's neighbours come from one approximate search, shared by both fits;
    None below (each fold searches exactly)."""
    return (_approximate_neighbours(embeddings) if knn_neighbors > 0 and len(labels) > KNN_EXACT_MAX_ROWS
            else None)


def _refit(embeddings: np.ndarray, labels: np.ndarray, n_classes: int, first_fit: np.ndarray, folds: int,
           knn_neighbors: int, seed: int, rule: Callable[[np.ndarray, np.ndarray], np.ndarray],
           found: tuple[np.ndarray, np.ndarray] | None) -> tuple[np.ndarray, int, str, list[str]] | None:
    """The second fit on the same folds, without the samples ``rule`` marks in ``first_fit``; None when it marks
    none."""
    left_out = _refit_left_out(labels, first_fit, rule)
    if not left_out.any():
        return None
    return _cross_validated_pred_probs(embeddings, labels, n_classes, folds, knn_neighbors, seed,
                                       train_mask=~left_out, found=found)


def _unit_rows(embeddings: np.ndarray) -> np.ndarray:
    """float32 rows scaled to unit length (zero rows stay zero)."""
    x = np.array(embeddings, dtype=np.float32)  # a copy: scaled in place below
    norms = np.sqrt(np.einsum("ij,ij->i", x, x))[:, None]  # no (n, d) temporary, unlike np.linalg.norm
    x /= np.where(norms > 0, norms, np.float32(1.0))
    return x


def _approximate_neighbours(embeddings: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each row's ``KNN_SEARCH`` most similar other rows ``(cosine similarities, indices)``, by one faiss HNSW
    search (see the module docstring); -1 / NaN where fewer were found."""
    from audit.neighbours import knn

    unit = _unit_rows(embeddings)
    zero = ~unit.any(axis=1)  # the search needs unit vectors; a zero row gets a fixed direction
    unit[zero, 0] = 1.0
    return knn(unit, k=min(KNN_SEARCH, len(unit) - 1), method="hnsw", **KNN_HNSW)


def _vote_from_neighbours(found: tuple[np.ndarray, np.ndarray], compact: np.ndarray, n_present: int,
                          fold_of: np.ndarray, trainable: np.ndarray, k: int, dim: int) -> np.ndarray:
    """scikit-learn's distance-weighted ``KNeighborsClassifier.predict_proba`` for every sample, from the shared
    search: each sample's ``k`` most similar rows outside its own fold that may train (``trainable``).

    Distances are those between the embeddings scaled to norm ``sqrt(dim)``, as the exact path measures them:
    ``sqrt(2 dim (1 - cosine))``. As in scikit-learn, a neighbour at distance 0 takes all the weight. Rows with
    no usable neighbour are NaN (the caller falls back to the logistic regression there).
    """
    similarities, indices = found
    usable = indices >= 0
    safe = np.where(usable, indices, 0)
    usable &= (fold_of[safe] != fold_of[:, None]) & trainable[safe]
    usable &= np.cumsum(usable, axis=1) <= k  # the k most similar usable rows (answers are sorted)
    distance = np.sqrt(np.maximum(2.0 * dim * (1.0 - similarities.astype(np.float64)), 0.0))
    with np.errstate(divide="ignore", invalid="ignore"):
        weight = np.where(usable, 1.0 / distance, 0.0)
    exact_match = np.isinf(weight)
    on_match = exact_match.any(axis=1)
    weight[on_match] = exact_match[on_match]
    n = len(compact)
    cells = np.arange(n)[:, None] * n_present + compact[safe]
    votes = np.bincount(cells[usable], weights=weight[usable], minlength=n * n_present).reshape(n, n_present)
    total = votes.sum(axis=1, keepdims=True)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(total > 0, votes / total, np.nan)


def _sampled_logreg(x: np.ndarray, compact: np.ndarray, n_present: int,
                    splits: list[tuple[np.ndarray, np.ndarray]], seed: int) -> np.ndarray:
    """Out-of-fold ``predict_proba`` of the logistic regression, each fold trained on a seeded sample of at most
    ``LOGREG_MAX_TRAIN`` of its training rows, predicted in batches."""
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(seed)
    out = np.zeros((len(compact), n_present))
    for train, test in splits:
        if len(train) > LOGREG_MAX_TRAIN:
            train = np.sort(rng.choice(train, LOGREG_MAX_TRAIN, replace=False))
        model = LogisticRegression(C=LOGREG_C, max_iter=LOGREG_MAX_ITER).fit(x[train], compact[train])
        for start in range(0, len(test), PREDICT_BATCH):
            rows = test[start:start + PREDICT_BATCH]
            out[rows[:, None], model.classes_[None, :]] = model.predict_proba(x[rows])
    return out


def _refit_left_out(labels: np.ndarray, probs: np.ndarray,
                    rule: Callable[[np.ndarray, np.ndarray], np.ndarray]) -> np.ndarray:
    """The samples the second fit trains without: those ``rule`` marks, except in a class that would keep fewer
    than two samples (a class the model never sees could never be predicted)."""

    present, compact = np.unique(labels, return_inverse=True)
    flagged = rule(compact, probs[:, present])
    kept = np.bincount(compact[~flagged], minlength=len(present))
    return flagged & (kept[compact] >= 2)


def _cross_validated_pred_probs(
    embeddings: np.ndarray, labels: np.ndarray, n_classes: int, folds: int, knn_neighbors: int, seed: int,
    train_mask: np.ndarray | None = None, found: tuple[np.ndarray, np.ndarray] | None = None,
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
    notes: list[str] = []
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The least populated class", category=UserWarning)
        splits = list(StratifiedKFold(n_splits=folds_used, shuffle=True, random_state=seed).split(x, compact))
    if train_mask is not None:  # same test folds (a partition), smaller training sets
        splits = [(train[train_mask[train]], test) for train, test in splits]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ConvergenceWarning)
        warnings.filterwarnings("ignore", message="Number of classes in training fold", category=RuntimeWarning)
        sampled = max(len(train) for train, _ in splits) > LOGREG_MAX_TRAIN
        if sampled:
            out = _sampled_logreg(x, compact, len(present), splits, seed)
        else:
            logreg = LogisticRegression(C=LOGREG_C, max_iter=LOGREG_MAX_ITER)
            out = cross_val_predict(logreg, x, compact, cv=splits, method="predict_proba")
    if any(issubclass(w.category, ConvergenceWarning) for w in caught):
        notes.append(f"logistic regression stopped at {LOGREG_MAX_ITER} iterations before full convergence")
    description = f"{folds_used}-fold cross-validated logistic regression"
    if sampled:
        description += f" (each fold trained on a seeded sample of {LOGREG_MAX_TRAIN:,} of its rows)"
    smallest_train = min(len(train) for train, _ in splits)
    neighbours = int(min(knn_neighbors, smallest_train))
    if neighbours > 0 and found is not None:
        fold_of = np.empty(len(compact), dtype=np.int64)
        for fold, (_, test) in enumerate(splits):
            fold_of[test] = fold
        trainable = np.ones(len(compact), bool) if train_mask is None else train_mask
        vote = _vote_from_neighbours(found, compact, len(present), fold_of, trainable, neighbours, x.shape[1])
        out = (out + np.where(np.isnan(vote), out, vote)) / 2.0
        description += (f" averaged with a {neighbours}-nearest-neighbour vote (approximate neighbours: one faiss "
                        f"HNSW search of {found[1].shape[1]} per sample)")
    elif neighbours > 0:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Number of classes in training fold", category=RuntimeWarning)
            knn = KNeighborsClassifier(n_neighbors=neighbours, weights="distance", algorithm="brute")
            out = (out + cross_val_predict(knn, x, compact, cv=splits, method="predict_proba")) / 2.0
        description += f" averaged with a {neighbours}-nearest-neighbour vote"
    if train_mask is not None:
        left_out = int((~train_mask).sum())
        description += f" (refitted without the {left_out} samples a first fit found likely mislabelled)"
    full = np.zeros((len(labels), n_classes))
    full[:, present] = out
    return full, folds_used, description + " on the embeddings", notes
