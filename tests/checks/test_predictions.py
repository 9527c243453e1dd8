"""The cross-validated classifier's large-dataset form: the shared neighbour search gives scikit-learn's vote,
the sampled logistic regression trains on at most its cap, and the whole still finds real label errors.

The thresholds are lowered so that real digit scans (1,797 of them) take the path a million samples take."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.datasets import load_digits
from sklearn.model_selection import StratifiedKFold
from sklearn.neighbors import KNeighborsClassifier, NearestNeighbors

from audit.checks import predictions
from audit.checks.predictions import cross_validated_pred_probs


@pytest.fixture(scope="module")
def digits() -> tuple[np.ndarray, np.ndarray]:
    data = load_digits()
    x = data.data.astype(np.float32)
    x -= x.mean(axis=0)
    return x / np.linalg.norm(x, axis=1, keepdims=True), data.target


def _noisy(labels: np.ndarray, rate: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    wrong = rng.random(len(labels)) < rate
    return np.where(wrong, (labels + rng.integers(1, 10, len(labels))) % 10, labels), wrong


def test_the_vote_from_one_shared_search_is_scikit_learns_per_fold_vote(digits) -> None:
    """Given exact neighbours, the shared-search vote equals KNeighborsClassifier(weights="distance") fitted on
    each fold's training rows, for every sample whose 32 nearest rows hold 10 outside its fold."""
    x, y = digits
    scaled = x * np.sqrt(x.shape[1])
    splits = list(StratifiedKFold(5, shuffle=True, random_state=0).split(x, y))
    fold_of = np.empty(len(y), int)
    for fold, (_, test) in enumerate(splits):
        fold_of[test] = fold
    trainable = np.random.default_rng(1).random(len(y)) > 0.1  # as in the refit: some rows may not train
    distances, indices = NearestNeighbors(n_neighbors=33).fit(scaled).kneighbors(scaled)
    found = (1.0 - distances[:, 1:] ** 2 / (2 * x.shape[1]), indices[:, 1:])  # cosine similarity, self dropped
    vote = predictions._vote_from_neighbours(found, y, 10, fold_of, trainable, 10, x.shape[1])

    expected = np.zeros((len(y), 10))
    for train, test in splits:
        train = train[trainable[train]]
        model = KNeighborsClassifier(10, weights="distance", algorithm="brute").fit(scaled[train], y[train])
        expected[test] = model.predict_proba(scaled[test])
    usable = (fold_of[indices[:, 1:]] != fold_of[:, None]) & trainable[indices[:, 1:]]
    complete = usable.sum(axis=1) >= 10
    assert complete.mean() > 0.99
    np.testing.assert_allclose(vote[complete], expected[complete], atol=1e-5)


def test_a_sample_without_usable_neighbours_falls_back_to_nothing() -> None:
    similarities = np.array([[0.9, 0.8], [0.9, 0.8]], dtype=np.float32)
    indices = np.array([[1, -1], [0, -1]])
    vote = predictions._vote_from_neighbours((similarities, indices), np.array([0, 1]), 2, np.array([0, 0]),
                                             np.ones(2, bool), 1, 4)
    assert np.isnan(vote).all()  # the only neighbour is in the same fold


def test_large_path_on_real_digits_matches_the_exact_path_and_finds_the_noise(digits, monkeypatch) -> None:
    x, truth = digits
    given, wrong = _noisy(truth, 0.10)
    exact, _, exact_text, _ = cross_validated_pred_probs(x, given, 10, seed=0)
    assert "approximate" not in exact_text and "seeded sample" not in exact_text

    from sklearn.linear_model import LogisticRegression

    fits: list[int] = []

    original = LogisticRegression.fit

    def counting_fit(self, features, target, *args, **kwargs):
        fits.append(len(features))
        return original(self, features, target, *args, **kwargs)

    monkeypatch.setattr(LogisticRegression, "fit", counting_fit)
    monkeypatch.setattr(predictions, "KNN_EXACT_MAX_ROWS", 500)
    monkeypatch.setattr(predictions, "LOGREG_MAX_TRAIN", 900)
    large, folds, text, _ = cross_validated_pred_probs(x, given, 10, seed=0)
    assert folds == 5 and "approximate neighbours" in text and "sample of 900" in text
    assert fits and max(fits) == 900, "each fold's logistic regression trains on at most the cap"
    np.testing.assert_allclose(large.sum(axis=1), 1.0, atol=1e-6)  # float32 model outputs
    # Same model, approximated: it agrees with the exact path and recovers the true digits as well.
    assert np.mean(large.argmax(axis=1) == exact.argmax(axis=1)) > 0.97
    assert np.mean(large.argmax(axis=1) == truth) > 0.93
    # The wrong labels get far less probability than the right ones.
    given_prob = large[np.arange(len(given)), given]
    assert np.median(given_prob[wrong]) < 0.2 < np.median(given_prob[~wrong])


def test_default_thresholds_keep_todays_sizes_on_the_exact_model() -> None:
    assert predictions.KNN_EXACT_MAX_ROWS >= 50_000 and predictions.LOGREG_MAX_TRAIN >= 200_000
