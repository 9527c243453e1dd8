"""The agreement check on published worked examples, CROWDLAB consensus and awkward annotation tables."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from audit.checks.agreement import AgreementCheck
from audit.checks.base import CheckContext, CheckInputError, validate_result


def make_context(annotations: list[tuple[str, str, str | None]], sample_ids: list[str] | None = None,
                 class_names: list[str] | None = None, **kwargs) -> CheckContext:
    table = pd.DataFrame(annotations, columns=["sample_id", "annotator", "label"])
    ids = sample_ids or sorted(table["sample_id"].unique())
    samples = pd.DataFrame(
        {"filepath": [f"/data/{i}.png" for i in ids], "label": "x", "split": "all", "readable": True},
        index=pd.Index(ids, name="sample_id"),
    )
    names = class_names or sorted(table["label"].dropna().unique())
    return CheckContext(samples=samples, class_names=names, annotations=table, **kwargs)


def run(context: CheckContext):
    result = AgreementCheck().run(context)
    validate_result(result, context.samples.index)  # index, column prefix, JSON-safe metrics
    return result


# --- Published worked examples --------------------------------------------------------------------

# Krippendorff (2011), "Computing Krippendorff's Alpha-Reliability", section C: 4 observers, 12 units, nominal
# data with missing values; the paper gives alpha = 0.743.
KRIPPENDORFF_2011 = {
    "A": [1, 2, 3, 3, 2, 1, 4, 1, 2, None, None, None],
    "B": [1, 2, 3, 3, 2, 2, 4, 1, 2, 5, None, 3],
    "C": [None, 3, 3, 3, 2, 3, 4, 2, 2, 5, 1, None],
    "D": [1, 2, 3, 3, 2, 4, 4, 1, 2, 5, 1, None],
}


def test_krippendorff_alpha_matches_krippendorff_2011_worked_example():
    rows = [(f"unit{u + 1:02d}", coder, str(v)) for coder, values in KRIPPENDORFF_2011.items()
            for u, v in enumerate(values) if v is not None]
    result = run(make_context(rows))
    metrics = result.metrics
    assert round(metrics["krippendorff_alpha"], 3) == 0.743
    # unit 12 has a single value: it cannot be paired, so it is not an agreement item
    assert metrics["n_items"] == 11
    assert result.samples.loc["unit12", "agreement_n_annotations"] == 1
    assert result.samples.loc["unit01", "agreement_n_annotations"] == 3


# Fleiss (1971) as worked on Wikipedia's "Fleiss' kappa" page: 10 subjects, 14 raters, 5 categories;
# row = how many raters put the subject in each category. Published: P-bar = 0.378, kappa = 0.210.
FLEISS_TABLE = np.array([
    [0, 0, 0, 0, 14],
    [0, 2, 6, 4, 2],
    [0, 0, 3, 5, 6],
    [0, 3, 9, 2, 0],
    [2, 2, 8, 1, 1],
    [7, 7, 0, 0, 0],
    [3, 2, 6, 3, 0],
    [2, 5, 3, 2, 2],
    [6, 5, 2, 1, 0],
    [0, 2, 2, 3, 7],
])


def fleiss_rows() -> list[tuple[str, str, str]]:
    rows = []
    for subject, counts in enumerate(FLEISS_TABLE):
        labels = [str(category + 1) for category, n in enumerate(counts) for _ in range(n)]
        rows += [(f"subject{subject + 1:02d}", f"rater{r + 1:02d}", label) for r, label in enumerate(labels)]
    return rows


def test_fleiss_kappa_matches_fleiss_1971_worked_example():
    metrics = run(make_context(fleiss_rows())).metrics
    assert round(metrics["fleiss_kappa"], 3) == 0.210
    assert round(metrics["percent_agreement"], 3) == 0.378
    assert metrics["fleiss_items"] == 10
    assert metrics["fleiss_raters_per_item"] == 14
    assert metrics["n_annotators"] == 14


def test_per_class_fleiss_kappa_is_fleiss_1971_per_category_kappa():
    """Fleiss (1971) defines kappa_j = 1 - sum_i n_ij (n - n_ij) / (N n (n - 1) p_j q_j); the check computes
    it as one-versus-rest Fleiss' kappa, which must agree."""
    metrics = run(make_context(fleiss_rows())).metrics
    subjects, raters = FLEISS_TABLE.shape[0], 14
    p = FLEISS_TABLE.sum(axis=0) / (subjects * raters)
    for j in range(5):
        n_j = FLEISS_TABLE[:, j]
        expected = 1 - (n_j * (raters - n_j)).sum() / (subjects * raters * (raters - 1) * p[j] * (1 - p[j]))
        assert metrics["per_class"][str(j + 1)]["fleiss_kappa"] == pytest.approx(expected, abs=1e-9)
    # specific agreement of category 1 by hand: sum n_ij (n_ij - 1) / sum n_ij (n_i - 1)
    n_1 = FLEISS_TABLE[:, 0]
    assert metrics["per_class"]["1"]["percent_agreement"] == pytest.approx(
        (n_1 * (n_1 - 1)).sum() / (n_1 * (raters - 1)).sum()
    )
    assert metrics["per_class"]["1"]["n_items"] == 5


# Wikipedia "Cohen's kappa": 50 grant proposals read by A and B; both yes 20, A yes/B no 5, A no/B yes 10,
# both no 15. Published: p_o = 0.7, p_e = 0.5, kappa = 0.4.
def cohen_rows() -> list[tuple[str, str, str]]:
    pairs = [("Yes", "Yes")] * 20 + [("Yes", "No")] * 5 + [("No", "Yes")] * 10 + [("No", "No")] * 15
    return [row for i, (a, b) in enumerate(pairs) for row in ((f"p{i:02d}", "A", a), (f"p{i:02d}", "B", b))]


def test_cohen_kappa_matches_wikipedia_worked_example():
    metrics = run(make_context(cohen_rows())).metrics
    matrix = metrics["cohen_kappa_matrix"]
    assert matrix["annotators"] == ["A", "B"]
    assert round(matrix["matrix"][0][1], 1) == 0.4
    assert matrix["matrix"][1][0] == matrix["matrix"][0][1]
    assert round(metrics["mean_cohen_kappa"], 1) == 0.4
    assert metrics["percent_agreement"] == pytest.approx(0.7)
    # with two raters Fleiss' kappa is Scott's pi: p_e = 0.55^2 + 0.45^2 = 0.505, pi = (0.7 - 0.505) / 0.495
    assert metrics["fleiss_kappa"] == pytest.approx((0.7 - 0.505) / 0.495)


# --- Consensus ------------------------------------------------------------------------------------

def colluding_annotators(seed: int = 0, n: int = 160, k: int = 4):
    """A and B are right half the time and, on every fifth sample, agree on the same wrong class; C is always
    right. Majority vote follows A and B there; a quality-weighted consensus should follow C."""
    rng = np.random.default_rng(seed)
    classes = [f"c{i}" for i in range(k)]
    truth = np.arange(n) % k
    a = np.where(rng.random(n) < 0.5, truth, rng.integers(0, k, n))
    b = np.where(rng.random(n) < 0.5, truth, rng.integers(0, k, n))
    collude = np.arange(n) % 5 == 0
    a[collude] = b[collude] = (truth[collude] + 1) % k
    ids = [f"s{i:03d}" for i in range(n)]
    rows = [(ids[i], name, classes[v[i]]) for name, v in (("A", a), ("B", b), ("C", truth)) for i in range(n)]
    return rows, ids, classes, truth, collude, rng


def test_consensus_follows_the_reliable_annotator_when_probabilities_back_it():
    rows, ids, classes, truth, collude, _ = colluding_annotators()
    probs = np.full((len(ids), len(classes)), 0.1)
    probs[np.arange(len(ids)), truth] = 0.7
    result = run(make_context(rows, ids, classes, pred_probs=probs))
    consensus = result.samples["agreement_consensus_label"].to_numpy()
    right = np.array(classes, dtype=object)[truth]
    assert (consensus[collude] == right[collude]).all()
    metrics = result.metrics
    assert metrics["consensus_method"].startswith("cleanlab")
    assert metrics["pred_probs_source"] == "user-supplied pred_probs"
    quality = {name: stats["quality"] for name, stats in metrics["per_annotator"].items()}
    assert quality["C"] > quality["A"] and quality["C"] > quality["B"]
    # where two annotators were outvoted the consensus is less certain than where all three agree
    consensus_quality = result.samples["agreement_consensus_quality"].to_numpy()
    unanimous = result.samples["agreement_rate"].to_numpy() == 1
    assert unanimous.any() and consensus_quality[collude].max() < consensus_quality[unanimous].min()
    # on the colluding samples two of three annotators disagree with the consensus
    assert np.allclose(result.samples["agreement_rate"].to_numpy()[collude], 1 / 3)

    # without probabilities the fallback is the plain majority vote, which follows the colluders
    plain = run(make_context(rows, ids, classes)).samples["agreement_consensus_label"].to_numpy()
    assert not (plain[collude] == right[collude]).any()


def test_consensus_from_cross_validated_embeddings_and_unreadable_samples_still_count():
    rows, ids, classes, truth, collude, rng = colluding_annotators(seed=0)
    embeddings = np.eye(len(classes), 6)[truth] * 2 + rng.normal(size=(len(ids), 6)) * 0.5
    embeddings /= np.linalg.norm(embeddings, axis=1, keepdims=True)
    context = make_context(rows, ids, classes, embeddings=embeddings.astype(np.float32))
    unreadable = np.arange(len(ids)) < 6
    context.samples["readable"] = ~unreadable
    context.embeddings[unreadable] = np.nan
    result = run(context)
    metrics = result.metrics
    assert metrics["pred_probs_source"].startswith("5-fold cross-validated logistic regression")
    assert metrics["pred_probs_source"].endswith("on the embeddings (majority-vote targets)")
    fitted = result.arrays["pred_probs"]
    assert np.isnan(fitted[unreadable]).all() and np.allclose(fitted[~unreadable].sum(axis=1), 1)
    consensus = result.samples["agreement_consensus_label"].to_numpy()
    right = np.array(classes, dtype=object)[truth]
    # the classifier learns from the noisy majority labels, so it is not perfect, but it overrules most of the
    # collusion (majority vote: none of it) and the consensus beats the majority vote overall
    majority = run(make_context(rows, ids, classes)).samples["agreement_consensus_label"].to_numpy()
    readable_collusion = collude & ~unreadable
    assert (consensus[readable_collusion] == right[readable_collusion]).mean() >= 0.6
    assert (consensus == right).mean() >= (majority == right).mean() + 0.1
    # unreadable samples have no image to classify: a uniform prior, so their annotators alone decide
    assert (consensus[collude & unreadable] == majority[collude & unreadable]).all()
    # unreadable samples keep their annotations, consensus and place in the agreement statistics
    assert (result.samples.loc[unreadable, "agreement_n_annotations"] == 3).all()
    assert result.samples.loc[unreadable, "agreement_consensus_label"].notna().all()
    readable_only = run(make_context(rows, ids, classes)).metrics
    assert metrics["percent_agreement"] == readable_only["percent_agreement"]
    assert metrics["krippendorff_alpha"] == readable_only["krippendorff_alpha"]


# --- Edge cases -----------------------------------------------------------------------------------

def test_hand_computed_rates_missing_annotations_and_an_annotator_with_no_labels():
    rows = [
        ("s1", "ann", "cat"), ("s1", "bob", "cat"), ("s1", "cy", "dog"),   # 1 agreeing pair of 3
        ("s2", "ann", "dog"), ("s2", "bob", "dog"),                        # full agreement
        ("s3", "ann", "cat"),                                              # single annotation
        ("s4", "idle", None),                                              # idle never labelled anything
    ]
    result = run(make_context(rows, ["s1", "s2", "s3", "s4", "s5"]))
    samples, metrics = result.samples, result.metrics
    assert list(samples.columns) == ["agreement_consensus_label", "agreement_consensus_quality",
                                     "agreement_n_annotations", "agreement_rate"]
    assert samples["agreement_n_annotations"].tolist() == [3, 2, 1, 0, 0]
    assert samples["agreement_consensus_label"].tolist() == ["cat", "dog", "cat", None, None]
    assert samples.loc["s1", "agreement_rate"] == pytest.approx(2 / 3)
    assert samples.loc["s3", "agreement_rate"] == 1.0
    assert samples[["agreement_rate"]].loc[["s4", "s5"]].isna().all().all()
    assert samples["agreement_consensus_quality"].isna().all()  # no embeddings, no pred_probs
    assert metrics["percent_agreement"] == pytest.approx((1 / 3 + 1) / 2)
    assert metrics["n_items"] == 2 and metrics["n_single_annotation"] == 1 and metrics["n_unannotated"] == 2
    assert metrics["annotators"] == ["ann", "bob", "cy", "idle"]
    assert metrics["per_annotator"]["idle"] == {"n_labels": 0, "n_shared_items": 0,
                                                "agreement_with_consensus": None,
                                                "cohen_kappa_with_consensus": None, "quality": None}
    assert metrics["per_annotator"]["cy"]["agreement_with_consensus"] == 0.0
    assert metrics["cohen_kappa_matrix"]["matrix"][3] == [None, None, None, None]
    assert metrics["cohen_kappa_matrix"]["matrix"][0][2] is None  # ann and cy share one sample only
    assert "quality" in metrics["null_reasons"]
    # specific agreement of "cat": s1 has 2 cat votes of 3 -> 2*1 / (2*2)
    assert metrics["per_class"]["cat"]["percent_agreement"] == pytest.approx(0.5)
    assert metrics["per_class"]["dog"]["percent_agreement"] == pytest.approx((0 + 2) / (1 * 2 + 2 * 1))
    assert metrics["n_low_agreement"] == 0


def test_low_agreement_threshold_counts_samples_below_it():
    rows = [("s1", "a", "x"), ("s1", "b", "y"), ("s1", "c", "z"),      # rate 1/3
            ("s2", "a", "x"), ("s2", "b", "x"), ("s2", "c", "y"),      # rate 2/3
            ("s3", "a", "x"), ("s3", "b", "x"), ("s3", "c", "x")]      # rate 1
    assert run(make_context(rows)).metrics["n_low_agreement"] == 1
    context = make_context(rows, params={"low_agreement_threshold": 0.9})
    metrics = run(context).metrics
    assert metrics["low_agreement_threshold"] == 0.9
    assert metrics["n_low_agreement"] == 2


def test_single_annotator_gives_null_agreement_with_a_reason():
    rows = [("s1", "solo", "cat"), ("s2", "solo", "dog"), ("s3", "solo", "dog")]
    result = run(make_context(rows, embeddings=np.eye(3, 4, dtype=np.float32)))
    metrics = result.metrics
    for key in ("percent_agreement", "mean_cohen_kappa", "fleiss_kappa", "krippendorff_alpha"):
        assert metrics[key] is None, key
    assert "one annotator" in metrics["null_reasons"]["agreement"]
    assert metrics["null_reasons"]["quality"]
    assert metrics["per_annotator"]["solo"]["quality"] is None
    assert result.samples["agreement_consensus_label"].tolist() == ["cat", "dog", "dog"]
    assert (result.samples["agreement_rate"] == 1.0).all()


def test_no_labels_at_all_is_reported_as_skipped():
    result = run(make_context([("s1", "a", None), ("s1", "b", None)], class_names=["cat"]))
    assert result.metrics == {"skipped": "no annotator labels"}
    assert result.samples.columns.empty


@pytest.mark.parametrize(
    ("rows", "params", "message"),
    [
        ([("s1", "a", "cat"), ("s1", "b", "cow")], {}, "not in class_names"),
        ([("s1", "a", "cat"), ("nope", "b", "cat")], {}, "not in the dataset"),
        ([("s1", "a", "cat"), ("s1", "a", "dog")], {}, "more than once"),
        ([("s1", "a", "cat"), ("s1", "b", "cat")], {"low_agreement": 0.3}, "unknown agreement parameter"),
        ([("s1", "a", "cat"), ("s1", "b", "cat")], {"low_agreement_threshold": 2}, "must be in [0, 1]"),
    ],
)
def test_bad_input_raises_check_input_error(rows, params, message):
    context = make_context(rows, ["s1"], ["cat", "dog"], params=params)
    with pytest.raises(CheckInputError, match=message.replace("[", r"\[").replace("]", r"\]")):
        AgreementCheck().run(context)


def test_user_pred_probs_of_the_wrong_shape_are_rejected():
    rows = [("s1", "a", "cat"), ("s1", "b", "dog"), ("s2", "a", "cat"), ("s2", "b", "cat")]
    context = make_context(rows, pred_probs=np.full((2, 3), 1 / 3))
    with pytest.raises(CheckInputError, match="pred_probs has shape"):
        AgreementCheck().run(context)


def test_metrics_use_the_contract_keys():
    metrics = run(make_context(cohen_rows())).metrics
    for key in ("n_annotators", "annotators", "n_items", "percent_agreement", "cohen_kappa_matrix",
                "mean_cohen_kappa", "fleiss_kappa", "krippendorff_alpha", "per_class", "per_annotator",
                "low_agreement_threshold", "n_low_agreement", "fleiss_items"):
        assert key in metrics, key
    assert set(metrics["per_class"]["Yes"]) >= {"n_items", "percent_agreement", "fleiss_kappa",
                                                "krippendorff_alpha"}
    assert set(metrics["per_annotator"]["A"]) >= {"n_labels", "agreement_with_consensus",
                                                  "cohen_kappa_with_consensus", "quality"}
    assert not any(isinstance(v, float) and math.isnan(v) for v in metrics.values())


# --- Scale: the counting shortcuts give the library's answers ------------------------------------------


def _digit_annotators(n_annotators: int = 4, seed: int = 0) -> tuple[np.ndarray, list[tuple[str, str, str]]]:
    """Annotators (error rates 5-40%, each skipping 30% of the items) over the real digit targets of
    scikit-learn's 1,797 scans: ratings as annotators x items (NaN: missing) and as long rows."""
    from sklearn.datasets import load_digits

    truth = load_digits().target
    rng = np.random.default_rng(seed)
    ratings = np.full((n_annotators, len(truth)), np.nan)
    for a, rate in enumerate([0.05, 0.2, 0.4, 0.1][:n_annotators]):
        given = np.where(rng.random(len(truth)) < rate, rng.integers(0, 10, len(truth)), truth).astype(float)
        given[rng.random(len(truth)) < 0.3] = np.nan
        ratings[a] = given
    rows = [(f"s{i:04d}", f"ann{a}", str(int(ratings[a, i]))) for a in range(n_annotators)
            for i in range(len(truth)) if ratings[a, i] == ratings[a, i]]
    return ratings, rows


def test_per_class_alpha_from_counts_equals_the_krippendorff_package_on_binarised_ratings():
    from audit.checks.agreement import binary_alpha_from_counts, krippendorff_alpha

    ratings, _ = _digit_annotators()
    counts = np.stack([(ratings == j).sum(axis=0) for j in range(10)], axis=1)
    for j in range(10):
        library = krippendorff_alpha(np.where(np.isnan(ratings), np.nan, ratings == j), [0, 1])
        assert binary_alpha_from_counts(counts[:, j], counts.sum(axis=1)) == pytest.approx(library, abs=1e-12)
    # Undefined cases: nobody chose the class, or no item has two ratings.
    assert binary_alpha_from_counts(np.zeros(5), np.full(5, 3)) is None
    assert binary_alpha_from_counts(np.ones(5), np.ones(5)) is None


def test_matrix_and_vote_counts_equal_a_pivot_and_a_per_class_count():
    from audit.checks.agreement import annotation_matrix, vote_counts

    ratings, rows = _digit_annotators()
    ids = [f"s{i:04d}" for i in range(ratings.shape[1])]
    context = make_context(rows[::-1], sample_ids=ids, class_names=[str(d) for d in range(10)])  # any row order
    annotators, wide = annotation_matrix(context)
    table = pd.DataFrame(rows, columns=["sample_id", "annotator", "label"])
    pivot = table.assign(code=table["label"].astype(float)).pivot(index="sample_id", columns="annotator",
                                                                  values="code").reindex(ids)
    np.testing.assert_array_equal(wide.to_numpy(), pivot.to_numpy())
    assert annotators == list(wide.columns) == ["ann0", "ann1", "ann2", "ann3"]
    by_item = ratings.transpose()
    expected = np.stack([(by_item == j).sum(axis=1) for j in range(10)], axis=1)
    np.testing.assert_array_equal(vote_counts(wide, 10), expected)
