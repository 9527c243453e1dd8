"""The mistakes check on real digits (sklearn's scans as pixel embeddings, no image files) and on bad input."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from cleanlab.count import num_label_issues

from audit.checks.base import CheckContext, CheckInputError, CheckResult, validate_result
from audit.checks.mistakes import MistakesCheck

CLASSES = [str(c) for c in range(10)]
NOISE = 0.1


@pytest.fixture(scope="module")
def digits() -> tuple[np.ndarray, np.ndarray]:
    """1,797 real 8x8 digit scans as L2-normalised 64-d pixel vectors, and their true classes."""
    from sklearn.datasets import load_digits

    pixels, target = load_digits(return_X_y=True)
    pixels = pixels / 16.0
    return (pixels / np.linalg.norm(pixels, axis=1, keepdims=True)).astype(np.float32), target


def inject_symmetric_noise(target: np.ndarray, rate: float, seed: int) -> np.ndarray:
    """Give a share ``rate`` of the samples a uniformly chosen wrong class."""
    rng = np.random.default_rng(seed)
    noisy = target.copy()
    chosen = rng.choice(len(target), round(rate * len(target)), replace=False)
    noisy[chosen] = (target[chosen] + rng.integers(1, 10, len(chosen))) % 10
    return noisy


def table(labels, readable=None) -> pd.DataFrame:
    labels = [None if v is None else str(v) for v in labels]
    return pd.DataFrame(
        {"filepath": "", "label": labels, "split": "all",
         "readable": np.ones(len(labels), bool) if readable is None else readable},
        index=pd.Index([f"img{i:04d}" for i in range(len(labels))], name="sample_id"),
    )


def confident_probs(classes: np.ndarray, k: int = 10, confidence: float = 0.9) -> np.ndarray:
    probs = np.full((len(classes), k), (1 - confidence) / (k - 1))
    probs[np.arange(len(classes)), classes] = confidence
    return probs


@pytest.fixture(scope="module")
def noisy_run(digits):
    embeddings, target = digits
    noisy = inject_symmetric_noise(target, NOISE, seed=0)
    context = CheckContext(samples=table(noisy), class_names=CLASSES, embeddings=embeddings)
    return noisy, target, context, MistakesCheck().run(context)


def test_flags_recover_injected_noise_on_real_digits(noisy_run):
    noisy, target, _, result = noisy_run
    truth = noisy != target
    flags = result.samples["mistakes_is_issue"].to_numpy(bool)
    recall, precision = (flags & truth).sum() / truth.sum(), (flags & truth).sum() / flags.sum()
    # measured over noise seeds 0-5: recall 0.90-0.93, precision 0.93-0.97
    assert recall >= 0.85, recall
    assert precision >= 0.88, precision
    quality = result.samples["mistakes_label_quality"].to_numpy()
    assert quality[truth].mean() < 0.3 < quality[~truth].mean()
    assert (result.samples["mistakes_suggested_label"].to_numpy()[flags & truth] == target[flags & truth].astype(str)
            ).mean() > 0.9


def test_knn_vote_improves_on_logistic_regression_alone(digits, noisy_run):
    noisy, target, context, default = noisy_run
    truth = noisy != target
    alone = MistakesCheck().run(CheckContext(samples=context.samples, class_names=CLASSES,
                                             embeddings=digits[0], params={"knn_neighbors": 0}))

    def f1(result: CheckResult) -> float:
        flags = result.samples["mistakes_is_issue"].to_numpy(bool)
        return 2 * (flags & truth).sum() / (flags.sum() + truth.sum())

    assert "nearest-neighbour" in default.metrics["pred_probs_source"]
    assert "nearest-neighbour" not in alone.metrics["pred_probs_source"]
    assert f1(default) > f1(alone)


def test_result_follows_the_contract(noisy_run):
    noisy, _, context, result = noisy_run
    validate_result(result, context.samples.index)
    json.dumps(result.metrics, allow_nan=False)
    metrics = result.metrics
    assert metrics["audited"] == "label" and metrics["cv_accuracy"] > 0.8 and metrics["folds"] == 5
    assert metrics["n_audited"] == len(noisy)
    assert metrics["n_issues"] == int(result.samples["mistakes_is_issue"].sum())
    assert metrics["issue_rate"] == pytest.approx(metrics["n_issues"] / len(noisy))
    # cleanlab's health score is 1 - (estimated issues / n); the estimate is near the injected 10% noise
    estimated = num_label_issues(noisy, result.arrays["pred_probs"])
    assert metrics["label_health"] == pytest.approx(1 - estimated / len(noisy))
    assert metrics["label_health"] == pytest.approx(1 - NOISE, abs=0.03)
    assert sum(c["n"] for c in metrics["per_class"].values()) == len(noisy)
    assert sum(n for row in metrics["confusion"].values() for n in row.values()) == metrics["n_issues"]
    pairs = metrics["overlapping_class_pairs"]
    assert 0 < len(pairs) <= 10 and {pairs[0]["class_a"], pairs[0]["class_b"]} <= set(CLASSES)
    assert [p["joint_probability"] for p in pairs] == sorted((p["joint_probability"] for p in pairs), reverse=True)
    assert "annotator_mistakes" not in metrics
    probs = result.arrays["pred_probs"]
    assert probs.shape == (len(noisy), 10)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-6)
    frame = result.samples
    np.testing.assert_allclose(frame["mistakes_given_prob"], probs[np.arange(len(noisy)), noisy])
    np.testing.assert_allclose(frame["mistakes_suggested_prob"], probs.max(axis=1))
    # the score is cleanlab's self-confidence: the out-of-sample probability of the audited label
    np.testing.assert_allclose(frame["mistakes_label_quality"], probs[np.arange(len(noisy)), noisy])


def test_is_deterministic_under_a_seed(digits):
    embeddings, target = digits
    subset = np.arange(0, len(target), 3)
    noisy = inject_symmetric_noise(target[subset], NOISE, seed=1)
    runs = [MistakesCheck().run(CheckContext(samples=table(noisy), class_names=CLASSES,
                                             embeddings=embeddings[subset], seed=7)) for _ in range(2)]
    pd.testing.assert_frame_equal(runs[0].samples, runs[1].samples)
    assert runs[0].metrics == runs[1].metrics


def test_unreadable_and_unlabelled_samples_are_not_audited(digits):
    embeddings, target = digits
    subset = np.arange(0, 600)
    vectors = embeddings[subset].copy()
    labels = list(target[subset])
    readable = np.ones(len(subset), bool)
    readable[:3] = False
    vectors[:3] = np.nan  # unreadable rows carry NaN embeddings: allowed
    labels[3] = None
    result = MistakesCheck().run(CheckContext(samples=table(labels, readable), class_names=CLASSES,
                                              embeddings=vectors))
    frame = result.samples
    assert frame["mistakes_label_quality"].iloc[:4].isna().all()
    assert not frame["mistakes_is_issue"].iloc[:4].any()
    assert frame["mistakes_audited_label"].iloc[:4].isna().all()
    assert frame["mistakes_label_quality"].iloc[4:].notna().all()
    assert result.metrics["n_audited"] == len(subset) - 4
    assert np.isnan(result.arrays["pred_probs"][:4]).all()


def test_user_pred_probs_are_audited_without_embeddings():
    rng = np.random.default_rng(0)
    truth = np.repeat(np.arange(10), 30)
    labels = truth.copy()
    wrong = rng.choice(len(labels), 12, replace=False)
    labels[wrong] = (labels[wrong] + 3) % 10
    result = MistakesCheck().run(CheckContext(samples=table(labels), class_names=CLASSES,
                                              pred_probs=confident_probs(truth)))
    assert set(np.flatnonzero(result.samples["mistakes_is_issue"].to_numpy())) == set(wrong)
    assert result.metrics["cv_accuracy"] is None and result.metrics["folds"] is None
    assert result.metrics["pred_probs_source"] == "user-supplied predicted probabilities"
    assert (result.samples["mistakes_suggested_label"].iloc[wrong] == truth[wrong].astype(str)).all()


def test_min_quality_adds_every_sample_below_it():
    truth = np.repeat(np.arange(10), 30)
    probs = confident_probs(truth)
    probs[0] = confident_probs(np.array([0]), confidence=0.35)[0]  # right label, but unsure
    base = CheckContext(samples=table(truth), class_names=CLASSES, pred_probs=probs)
    assert not MistakesCheck().run(base).samples["mistakes_is_issue"].iloc[0]
    base.params = {"min_quality": 0.4}
    result = MistakesCheck().run(base)
    assert result.samples["mistakes_is_issue"].iloc[0] and result.metrics["n_issues"] == 1


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda p: p[:-1], "has shape"),
        (lambda p: p[:, :-1], "columns but there are 10 classes"),
        (lambda p: np.where(np.arange(p.size).reshape(p.shape) == 25, np.nan, p), "row 2 .*NaN"),
        (lambda p: p * np.where(np.arange(len(p)) == 7, 0.9, 1.0)[:, None], r"row 7 \(sample 'img0007'\) sums to 0.9"),
        (lambda p: p - np.where(np.arange(p.size).reshape(p.shape) == 1, 0.5, 0.0), "negative"),
    ],
    ids=["rows", "columns", "nan", "sum", "negative"],
)
def test_bad_pred_probs_are_refused(change, message):
    truth = np.repeat(np.arange(10), 5)
    probs = confident_probs(truth)
    probs[3] *= 1.0005  # within the 1e-3 tolerance: accepted, and the worst row (7) is the one named
    context = CheckContext(samples=table(truth), class_names=CLASSES, pred_probs=change(probs))
    with pytest.raises(CheckInputError, match=message):
        MistakesCheck().run(context)


def test_logits_are_not_silently_renormalised():
    truth = np.repeat(np.arange(10), 5)
    logits = confident_probs(truth) * 8.0
    with pytest.raises(CheckInputError, match="does not renormalise"):
        MistakesCheck().run(CheckContext(samples=table(truth), class_names=CLASSES, pred_probs=logits))


def test_needs_embeddings_or_pred_probs():
    with pytest.raises(CheckInputError, match="neither"):
        MistakesCheck().run(CheckContext(samples=table([0, 1]), class_names=["0", "1"]))


def test_nan_embedding_of_a_readable_sample_is_refused(digits):
    vectors = digits[0][:100].copy()
    vectors[5, 2] = np.nan
    context = CheckContext(samples=table(digits[1][:100]), class_names=CLASSES, embeddings=vectors)
    with pytest.raises(CheckInputError, match="img0005"):
        MistakesCheck().run(context)


def test_embeddings_of_the_wrong_length_are_refused(digits):
    context = CheckContext(samples=table(digits[1][:100]), class_names=CLASSES, embeddings=digits[0][:99])
    with pytest.raises(CheckInputError, match="shape"):
        MistakesCheck().run(context)


@pytest.mark.parametrize(
    ("params", "message"),
    [({"fold": 3}, "unknown"), ({"folds": 1}, "folds"), ({"filter_by": "best"}, "filter_by"),
     ({"min_quality": 2}, "min_quality"), ({"knn_neighbors": -1}, "knn_neighbors")],
)
def test_bad_params_are_refused(params, message):
    context = CheckContext(samples=table([0, 1]), class_names=["0", "1"], pred_probs=np.eye(2), params=params)
    with pytest.raises(CheckInputError, match=message):
        MistakesCheck().run(context)


def test_a_single_sample_class_is_unauditable_on_embeddings(digits):
    embeddings, target = digits
    keep = np.flatnonzero(target != 9)[:400]
    lonely = np.flatnonzero(target == 9)[0]
    rows = np.append(keep, lonely)
    context = CheckContext(samples=table(target[rows]), class_names=CLASSES, embeddings=embeddings[rows])
    result = MistakesCheck().run(context)
    assert result.metrics["unauditable_classes"] == ["9"]
    assert result.metrics["n_unauditable"] == 1
    last = result.samples.iloc[-1]
    assert np.isnan(last["mistakes_label_quality"]) and not last["mistakes_is_issue"]
    assert result.samples["mistakes_label_quality"].iloc[:-1].notna().all()
    # no sample may be suggested a class the classifier never saw
    assert "9" not in set(result.samples["mistakes_suggested_label"].dropna())

    with_probs = MistakesCheck().run(CheckContext(samples=context.samples, class_names=CLASSES,
                                                  pred_probs=confident_probs(target[rows])))
    assert with_probs.metrics["unauditable_classes"] == []
    assert with_probs.samples["mistakes_label_quality"].notna().all()


def test_a_single_class_is_skipped_with_a_reason(digits):
    embeddings, target = digits
    rows = np.flatnonzero(target == 3)[:50]
    result = MistakesCheck().run(CheckContext(samples=table(target[rows]), class_names=CLASSES,
                                              embeddings=embeddings[rows]))
    assert "fewer than two classes" in result.metrics["skipped"]
    assert list(result.samples.columns) == [] and result.samples.index.equals(table(target[rows]).index)


def test_audits_the_consensus_and_counts_each_annotators_mistakes(digits):
    """A hand-made agreement result: the consensus is the true class (None on a few samples), the shipped
    label is noisy; annotator 'careful' copies the truth, 'careless' is wrong on 30% of its labels."""
    embeddings, target = digits
    rows = np.arange(0, 900)
    truth = target[rows]
    shipped = inject_symmetric_noise(truth, 0.2, seed=3)
    samples = table(shipped)
    consensus = pd.Series(truth.astype(str), index=samples.index, dtype=object)
    consensus.iloc[:5] = None
    agreement = CheckResult("agreement", pd.DataFrame({"agreement_consensus_label": consensus}), {})
    careless = inject_symmetric_noise(truth, 0.3, seed=4)
    annotations = pd.concat([
        pd.DataFrame({"sample_id": samples.index, "annotator": "careful", "label": truth.astype(str)}),
        pd.DataFrame({"sample_id": samples.index, "annotator": "careless", "label": careless.astype(str)}),
    ]).sample(frac=0.8, random_state=1)
    context = CheckContext(samples=samples, class_names=CLASSES, embeddings=embeddings[rows],
                           annotations=annotations, prior={"agreement": agreement})
    result = MistakesCheck().run(context)
    frame = result.samples
    assert result.metrics["audited"] == "consensus"
    expected_audited = consensus.where(consensus.notna(), samples["label"])
    assert (frame["mistakes_audited_label"] == expected_audited).all()
    # the consensus is right, so few of its labels are flagged, far fewer than the 20% noisy shipped labels
    assert result.metrics["issue_rate"] < 0.05

    counts = result.metrics["annotator_mistakes"]
    assert set(counts) == {"careful", "careless"}
    believed = frame["mistakes_audited_label"].where(~frame["mistakes_is_issue"], frame["mistakes_suggested_label"])
    for name, row in counts.items():
        mine = annotations[annotations["annotator"] == name]
        assert row["n_labels"] == len(mine)
        assert row["n_mistakes"] == int((mine["label"].to_numpy() != believed[mine["sample_id"]].to_numpy()).sum())
    assert counts["careful"]["rate"] < 0.05
    assert 0.2 < counts["careless"]["rate"] < 0.4


def test_starts_from_the_agreement_checks_probabilities_and_fits_once(digits, noisy_run, monkeypatch):
    """When agreement already cross-validated the model on these embeddings, its probabilities are the first fit:
    mistakes only refits on the audited labels without the samples they flag (one fit, not two); when they flag
    nothing they are used as they are; partial coverage means fitting from scratch."""
    import audit.checks.predictions as predictions

    noisy_labels, target, context, fitted_here = noisy_run
    fits = []
    real_fit = predictions._cross_validated_pred_probs
    monkeypatch.setattr(predictions, "_cross_validated_pred_probs",
                        lambda *args, **kwargs: fits.append(kwargs.get("train_mask")) or real_fit(*args, **kwargs))
    probs = fitted_here.arrays["pred_probs"]
    agreement = CheckResult("agreement", pd.DataFrame(index=context.samples.index),
                            {"pred_probs_source": "from agreement"}, arrays={"pred_probs": probs})

    def audit_with(agreement_probs):
        fits.clear()
        agreement.arrays["pred_probs"] = agreement_probs
        return MistakesCheck().run(CheckContext(samples=context.samples, class_names=CLASSES,
                                                embeddings=context.embeddings, prior={"agreement": agreement}))

    shared = audit_with(probs)
    assert len(fits) == 1 and fits[0] is not None and (~fits[0]).sum() > 0  # one fit, some samples left out
    assert "agreement check" in shared.metrics["notes"][0] and "refitted" in shared.metrics["pred_probs_source"]
    # the refit finds the injected noise as well as a fit of its own (the fixture's run)
    wrong = noisy_labels != target
    found_shared = (shared.samples["mistakes_is_issue"].to_numpy() & wrong).sum()
    found_own = (fitted_here.samples["mistakes_is_issue"].to_numpy() & wrong).sum()
    assert found_shared >= 0.95 * found_own

    certain = np.eye(len(CLASSES))[noisy_labels]  # probabilities that agree with every label flag nothing
    as_is = audit_with(certain)
    assert fits == [] and as_is.metrics["pred_probs_source"] == "from agreement"
    assert not as_is.samples["mistakes_is_issue"].any()

    partial = probs.copy()
    partial[:3] = np.nan
    refit = audit_with(partial)
    assert len(fits) == 2 and fits[0] is None  # a first fit of its own, then the refit
    assert refit.metrics["pred_probs_source"] != "from agreement"
