"""The distribution check on hand-countable tables and against a baseline run folder written to disk."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from sklearn.datasets import load_digits

from audit.checks.base import CheckContext, CheckInputError, validate_result
from audit.checks.distribution import DistributionCheck
from audit.results import write_run


def make_samples(labels: list[str | None], splits: list[str] | None = None) -> pd.DataFrame:
    ids = [f"img{i:04d}.png" for i in range(len(labels))]
    return pd.DataFrame(
        {
            "filepath": [f"/data/{i}" for i in ids],
            "label": pd.Series(labels, dtype=object).to_numpy(),
            "split": splits or ["all"] * len(labels),
            "readable": True,
        },
        index=pd.Index(ids, name="sample_id"),
    )


def run(samples: pd.DataFrame, class_names: list[str] | None = None, **kwargs):
    names = class_names or sorted(samples["label"].dropna().unique())
    context = CheckContext(samples=samples, class_names=names, **kwargs)
    result = DistributionCheck().run(context)
    validate_result(result, samples.index)
    return result


def write_baseline(tmp_path, labels: list[str], name: str = "last-week"):
    samples = make_samples(labels)
    return write_run(tmp_path / name, samples, {"run_name": name, "class_names": sorted(set(labels))})


def test_figures_on_a_small_table_match_hand_counts():
    # train: 5 cat, 2 dog, 1 bird; val: 1 cat, 1 dog; plus one sample without a label
    labels = ["cat"] * 5 + ["dog"] * 2 + ["bird"] + ["cat", "dog"] + [None]
    splits = ["train"] * 8 + ["val"] * 2 + ["train"]
    result = run(make_samples(labels, splits))
    metrics = result.metrics

    assert metrics["n_labelled"] == 10 and metrics["n_missing_label"] == 1
    assert metrics["classes"] == {
        "bird": {"count": 1, "share": 0.1},
        "cat": {"count": 6, "share": 0.6},
        "dog": {"count": 3, "share": 0.3},
    }
    assert metrics["imbalance_ratio"] == 6.0
    entropy = -sum(p * math.log(p) for p in (0.1, 0.6, 0.3))
    assert metrics["normalized_entropy"] == pytest.approx(entropy / math.log(3))
    assert metrics["rare_share_threshold"] == pytest.approx(0.5 / 3)
    assert metrics["rare_classes"] == ["bird"]
    assert metrics["min_class_count"] == 1 and metrics["min_class"] == "bird"
    assert metrics["split_only_classes"] == {"bird": ["train"]}
    assert metrics["per_split"]["val"] == {
        "bird": {"count": 0, "share": 0.0},
        "cat": {"count": 1, "share": 0.5},
        "dog": {"count": 1, "share": 0.5},
    }
    assert metrics["per_split"]["train"]["cat"] == {"count": 5, "share": 5 / 8}
    assert metrics["baseline"] is None

    share = result.samples["distribution_class_share"]
    assert list(result.samples.columns) == ["distribution_class_share"]
    assert share.iloc[0] == pytest.approx(0.6) and share.iloc[7] == pytest.approx(0.1)
    assert np.isnan(share.iloc[-1])


def test_rare_share_parameter_and_unused_classes():
    samples = make_samples(["a"] * 7 + ["b"] * 2 + ["c"])
    metrics = run(samples, ["a", "b", "c", "d"], params={"rare_share": 0.25}).metrics
    assert metrics["rare_share_threshold"] == 0.25
    assert metrics["rare_classes"] == ["b", "c"]
    assert metrics["empty_classes"] == ["d"]
    assert metrics["classes"]["d"] == {"count": 0, "share": 0.0}
    assert metrics["n_classes"] == 3
    assert metrics["split_only_classes"] == {}


def test_a_single_class_has_no_entropy_and_no_imbalance():
    metrics = run(make_samples(["only"] * 4)).metrics
    assert metrics["normalized_entropy"] is None
    assert metrics["imbalance_ratio"] == 1.0
    assert metrics["rare_classes"] == []


@pytest.mark.parametrize(("params", "message"), [({"rare": 0.1}, "unknown distribution parameter"),
                                                  ({"rare_share": 1.5}, "rare_share")])
def test_bad_parameters_raise(params, message):
    with pytest.raises(CheckInputError, match=message):
        run(make_samples(["a", "b"]), params=params)


def digits_labels() -> np.ndarray:
    """The 1,797 real class labels of sklearn's digits data set, as strings."""
    return load_digits().target.astype(str)


def test_baseline_without_shift_has_a_large_p_value(tmp_path):
    labels = digits_labels()
    baseline = write_baseline(tmp_path, list(labels))
    # this week: a random 60% of the same data set, i.e. the same distribution up to sampling noise
    rng = np.random.default_rng(0)
    this_week = rng.choice(labels, size=int(0.6 * len(labels)), replace=False)
    shift = run(make_samples(list(this_week)), baseline=baseline).metrics["baseline"]
    assert shift["run_name"] == "last-week"
    assert shift["p_value"] > 0.5
    assert shift["max_share_shift"] < 0.02
    assert shift["dof"] == 9
    assert shift["new_classes"] == [] and shift["vanished_classes"] == []

    same = run(make_samples(list(labels)), baseline=baseline).metrics["baseline"]
    assert same["chi2"] == pytest.approx(0.0) and same["p_value"] == pytest.approx(1.0)
    assert all(d["count_delta"] == 0 for d in same["deltas"].values())


def test_baseline_with_a_real_shift_is_detected(tmp_path):
    labels = digits_labels()
    baseline = write_baseline(tmp_path, list(labels))
    # this week: most "3"s were dropped, the "7"s doubled, and the "9"s vanished
    keep = [lab for i, lab in enumerate(labels) if lab != "9" and not (lab == "3" and i % 4)]
    this_week = keep + [lab for lab in labels if lab == "7"]
    metrics = run(make_samples(this_week), baseline=baseline).metrics
    shift = metrics["baseline"]

    assert shift["p_value"] < 1e-10
    assert shift["vanished_classes"] == ["9"] and shift["new_classes"] == []
    before = pd.Series(labels).value_counts()
    now = pd.Series(this_week).value_counts()
    assert shift["deltas"]["7"]["count"] == 2 * before["7"]
    assert shift["deltas"]["7"]["count_delta"] == before["7"]
    assert shift["deltas"]["7"]["previous_share"] == pytest.approx(before["7"] / len(labels))
    share_delta = now["3"] / len(this_week) - before["3"] / len(labels)
    assert shift["deltas"]["3"]["share_delta"] == pytest.approx(share_delta)
    # Pearson's chi-square of homogeneity by hand on the 2 x 10 table
    table = pd.DataFrame({"now": now, "before": before}).fillna(0).T.to_numpy()
    expected = table.sum(axis=1, keepdims=True) * table.sum(axis=0, keepdims=True) / table.sum()
    assert shift["chi2"] == pytest.approx(((table - expected) ** 2 / expected).sum())
    assert shift["dof"] == 9
    deltas = {c: abs(d["share_delta"]) for c, d in shift["deltas"].items()}
    assert shift["max_share_shift_class"] == max(deltas, key=deltas.get)
    assert shift["max_share_shift"] == pytest.approx(max(deltas.values()))
    # Cramer's V of a 2-row table by hand: sqrt(chi2 / n)
    assert shift["cramers_v"] == pytest.approx(np.sqrt(((table - expected) ** 2 / expected).sum() / table.sum()))


def test_new_classes_against_the_baseline(tmp_path):
    baseline = write_baseline(tmp_path, ["cat"] * 10 + ["dog"] * 10)
    this_week = make_samples(["cat"] * 10 + ["dog"] * 10 + ["fox"] * 5)
    shift = run(this_week, baseline=baseline).metrics["baseline"]
    assert shift["new_classes"] == ["fox"]
    assert shift["deltas"]["fox"] == {"count": 5, "previous_count": 0, "count_delta": 5, "share": 0.2,
                                      "previous_share": 0.0, "share_delta": 0.2}
    assert shift["max_share_shift_class"] == "fox"
