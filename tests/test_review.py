"""The review ledger: queue, export/verdict merging, corrected labels, confirmed items, the audit's own precision.

Also home of :func:`make_review_run`, a tiny run folder of real digit scans with hand-placed label errors and
flags, which the integration tests (Label Studio, CVAT) share.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from audit import review
from audit.results import write_run
from tests.conftest import write_digit

T0 = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)

# sample id -> (true class, given label, flagged, label quality, suggested label), designed by hand:
# three labels are wrong (1_0, 2_1, 0_2), five items are flagged, two of them (0_3, 2_3) falsely.
DESIGN = {
    "images/0_0.png": ("0", "0", False, 0.97, "0"),
    "images/0_1.png": ("0", "0", False, 0.95, "0"),
    "images/0_2.png": ("0", "1", True, 0.20, "0"),
    "images/0_3.png": ("0", "0", True, 0.10, "2"),
    "images/1_0.png": ("1", "2", True, 0.02, "1"),
    "images/1_1.png": ("1", "1", False, 0.91, "1"),
    "images/1_2.png": ("1", "1", False, 0.88, "1"),
    "images/1_3.png": ("1", "1", False, 0.93, "1"),
    "images/2_0.png": ("2", "2", False, 0.90, "2"),
    "images/2_1.png": ("2", "0", True, 0.05, "2"),
    "images/2_2.png": ("2", "2", False, 0.86, "2"),
    "images/2_3.png": ("2", "2", True, 0.30, "1"),
}
FLAGGED_BY_QUALITY = ["images/1_0.png", "images/2_1.png", "images/0_3.png", "images/0_2.png", "images/2_3.png"]


@dataclass
class ReviewRun:
    run_dir: Path
    manifest: Path
    samples: pd.DataFrame


def file_hash(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def make_review_run(folder: Path) -> ReviewRun:
    """A run folder (``samples.parquet`` + ``summary.json``) over 12 real digit PNGs and the user's manifest."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    data = folder / "data"
    rows = []
    for sample_id, (truth, given, flagged, quality, suggested) in DESIGN.items():
        k = int(sample_id.split("_")[1][0])
        index = int(np.flatnonzero(digits.target == int(truth))[k])
        path = write_digit(data / sample_id, digits.images[index])
        rows.append({"sample_id": sample_id, "filepath": str(path.resolve()), "label": given, "split": "all",
                     "readable": True, "problems": "", "content_hash": file_hash(path),
                     "mistakes_audited_label": given, "mistakes_is_issue": flagged,
                     "mistakes_label_quality": quality, "mistakes_suggested_label": suggested,
                     "mistakes_suggested_prob": 1 - quality, "mistakes_given_prob": quality})
    samples = pd.DataFrame(rows).set_index("sample_id")
    manifest = data / "labels.csv"
    notes = {"images/1_1.png": "scan batch 3", "images/2_1.png": "re-labelled, 2024"}
    pd.DataFrame({"filepath": samples.index, "label": samples["label"].to_numpy(),
                  "split": "all", "notes": [notes.get(s, "") for s in samples.index]}).to_csv(manifest, index=False)
    run_dir = folder / "reports" / "weekly"
    write_run(run_dir, samples, {"run_name": "weekly", "class_names": ["0", "1", "2"],
                                 "dataset": {"kind": "manifest", "path": str(manifest)}})
    return ReviewRun(run_dir=run_dir, manifest=manifest, samples=samples)


@pytest.fixture()
def run(tmp_path) -> ReviewRun:
    return make_review_run(tmp_path)


def verdict_rows(items: dict[str, tuple[str | None, str | None]], samples: pd.DataFrame, at: datetime,
                 reviewer: str = "ana", tool: str = "labelstudio") -> pd.DataFrame:
    """Ledger rows as an integration would return them: ``{sample_id: (verdict, corrected_label)}``."""
    return pd.DataFrame([{"item_id": sid, "item_kind": "image", "given_label": samples.loc[sid, "label"],
                          "verdict": verdict, "corrected_label": corrected, "reviewer": reviewer,
                          "reviewed_at": at, "tool": tool} for sid, (verdict, corrected) in items.items()])


# ------------------------------------------------------------------------------------------------- queue


def test_queue_is_the_worst_k_suspects_with_their_labels(run):
    queue = review.build_review_queue(run.run_dir, k=3)
    assert list(queue.index) == FLAGGED_BY_QUALITY[:3]
    assert list(queue["rank"]) == [1, 2, 3]
    for sid in queue.index:
        _, given, _, quality, suggested = DESIGN[sid]
        row = queue.loc[sid]
        assert (row["given_label"], row["suggested_label"]) == (given, suggested)
        assert row["score"] == pytest.approx(1 - quality)
        assert row["filepath"] == run.samples.loc[sid, "filepath"]
        assert row["content_hash"] == file_hash(Path(row["filepath"]))
        assert row["item_kind"] == "image" and row["sample_id"] == sid and row["selection"] == "top_k"
        assert f"{quality:.3f}" in row["reason"] and repr(suggested) in row["reason"]
        assert row["verdict"] is None
    everything = review.build_review_queue(run.run_dir, k=None)
    assert list(everything.index) == FLAGGED_BY_QUALITY


def test_queue_leaves_out_items_confirmed_correct(run):
    ledger = verdict_rows({"images/2_1.png": ("correct", None)}, run.samples, T0)
    ledger["content_hash"] = run.samples.loc["images/2_1.png", "content_hash"]
    queue = review.build_review_queue(run.run_dir, k=3, ledger=ledger)
    assert list(queue.index) == ["images/1_0.png", "images/0_3.png", "images/0_2.png"]


def test_audit_sample_draws_only_unflagged_items_at_random(run):
    unflagged = [s for s, d in DESIGN.items() if not d[2]]
    first = review.draw_audit_sample(run.run_dir, 4, seed=1)
    assert len(first) == 4 and set(first.index) <= set(unflagged)
    assert (first["selection"] == "random_audit").all()
    assert list(review.draw_audit_sample(run.run_dir, 4, seed=1).index) == list(first.index)
    rest = review.draw_audit_sample(run.run_dir, 10, seed=2, ledger=first)
    assert set(rest.index) == set(unflagged) - set(first.index)


# ------------------------------------------------------------------------------------------ ledger merges


def test_ledger_round_trips_through_parquet(run):
    queue = review.build_review_queue(run.run_dir, k=5)
    ledger = review.record_export(review.empty_ledger(), queue, "cvat", exported_at=T0)
    ledger = review.merge_verdicts(ledger, verdict_rows({"images/1_0.png": ("wrong", "1")}, run.samples, T0))
    path = review.write_ledger(run.run_dir, ledger)
    assert path == run.run_dir / "review.parquet"
    back = review.read_ledger(run.run_dir)
    pd.testing.assert_frame_equal(back, ledger)
    assert back.loc["images/1_0.png", "reviewed_at"] == pd.Timestamp(T0)
    assert review.read_ledger(run.run_dir / "nothing-here").empty


def test_merge_is_idempotent_and_the_latest_verdict_wins(run):
    queue = review.build_review_queue(run.run_dir, k=5)
    ledger = review.record_export(review.empty_ledger(), queue, "labelstudio", exported_at=T0)
    first = verdict_rows({"images/1_0.png": ("unsure", None), "images/0_3.png": ("correct", None)}, run.samples,
                         T0 + timedelta(hours=1))
    once = review.merge_verdicts(ledger, first)
    pd.testing.assert_frame_equal(review.merge_verdicts(once, first), once)
    assert once.loc["images/1_0.png", "verdict"] == "unsure"
    # the export columns survive a verdict that does not carry them
    assert once.loc["images/1_0.png", "score"] == pytest.approx(0.98)
    assert once.loc["images/1_0.png", "exported_at"] == pd.Timestamp(T0)
    later = verdict_rows({"images/1_0.png": ("wrong", "1")}, run.samples, T0 + timedelta(hours=2), reviewer="bo")
    merged = review.merge_verdicts(once, later)
    assert tuple(merged.loc["images/1_0.png", ["verdict", "corrected_label", "reviewer"]]) == ("wrong", "1", "bo")
    # an older answer arriving late does not replace a newer one; an unanswered row erases nothing
    stale = verdict_rows({"images/1_0.png": ("correct", None)}, run.samples, T0 + timedelta(minutes=90))
    pending = verdict_rows({"images/0_3.png": (None, None)}, run.samples, None)
    again = review.merge_verdicts(merged, pd.concat([stale, pending]))
    assert again.loc["images/1_0.png", "verdict"] == "wrong"
    assert again.loc["images/0_3.png", "verdict"] == "correct"
    assert len(again) == 5


def test_reexport_keeps_verdicts_of_unchanged_items_only(run):
    queue = review.build_review_queue(run.run_dir, k=2)
    ledger = review.record_export(review.empty_ledger(), queue, "labelstudio", exported_at=T0)
    ledger = review.merge_verdicts(ledger, verdict_rows(
        {"images/1_0.png": ("wrong", "1"), "images/2_1.png": ("wrong", "2")}, run.samples, T0))
    changed = queue.copy()
    changed.loc["images/2_1.png", "content_hash"] = "another image now"
    again = review.record_export(ledger, changed, "labelstudio", exported_at=T0 + timedelta(days=7))
    assert again.loc["images/1_0.png", "verdict"] == "wrong"
    assert again.loc["images/1_0.png", "exported_at"] == pd.Timestamp(T0 + timedelta(days=7))
    assert again.loc["images/2_1.png", "verdict"] is None


def test_bad_ledger_rows_are_refused_with_the_item():
    with pytest.raises(review.ReviewError, match=r"'x'.*verdict 'maybe'"):
        review.normalise_ledger(pd.DataFrame({"item_id": ["x"], "verdict": ["maybe"]}))
    with pytest.raises(review.ReviewError, match="no item_id"):
        review.normalise_ledger(pd.DataFrame({"item_id": [None], "verdict": ["wrong"]}))


def test_review_tags_become_verdicts(run):
    queue = review.build_review_queue(run.run_dir, k=3)
    tags = {"images/1_0.png": ["review:wrong", "fixed"], "images/2_1.png": ["review:unsure"],
            "images/0_3.png": ["something else"]}
    rows = review.verdicts_from_tags(tags, queue, reviewer="cy", reviewed_at=T0, corrected={"images/1_0.png": "1"})
    assert dict(zip(rows.index, rows["verdict"], strict=True)) == {"images/1_0.png": "wrong",
                                                                   "images/2_1.png": "unsure"}
    assert rows.loc["images/1_0.png", "corrected_label"] == "1"
    assert rows.loc["images/1_0.png", "given_label"] == "2" and rows.loc["images/1_0.png", "tool"] == "fiftyone"
    with pytest.raises(review.ReviewError, match="conflicting"):
        review.verdicts_from_tags({"images/1_0.png": ["review:wrong", "review:correct"]}, queue)


# ---------------------------------------------------------------------------------------- confirmed items


def test_confirmed_correct_needs_same_image_and_label(run):
    samples = run.samples
    ledger = verdict_rows({"images/0_3.png": ("correct", None), "images/2_3.png": ("correct", None),
                           "images/1_0.png": ("wrong", "1"), "images/0_0.png": ("correct", None),
                           "images/1_1.png": ("correct", None)}, samples, T0)
    ledger["content_hash"] = samples["content_hash"].reindex(ledger["item_id"]).to_numpy()
    ledger.loc[ledger["item_id"] == "images/1_1.png", "content_hash"] = ""  # unknown: cannot prove unchanged
    now = samples.copy()
    now.loc["images/2_3.png", "content_hash"] = "re-scanned"  # the image changed
    now.loc["images/0_0.png", "label"] = "1"  # the label changed
    assert list(review.confirmed_correct(ledger, now)) == ["images/0_3.png"]
    assert set(review.confirmed_correct(ledger, samples)) == {"images/0_3.png", "images/2_3.png", "images/0_0.png"}


def test_confirmed_correct_objects_follow_their_box(run):
    samples = run.samples
    objects = pd.DataFrame({"sample_id": ["images/0_0.png", "images/0_0.png"], "label": ["0", "0"],
                            "x": [1.0, 10.0], "y": [2.0, 12.0], "w": [5.0, 6.0], "h": [5.0, 6.0]},
                           index=pd.Index(["o1", "o2"], name="object_id"))
    image_hash = samples.loc["images/0_0.png", "content_hash"]
    ledger = pd.DataFrame({"item_id": ["o1", "o2"], "item_kind": "object", "sample_id": "images/0_0.png",
                           "given_label": "0", "verdict": "correct", "reviewed_at": T0,
                           "content_hash": [review.object_content_hash(image_hash, 1.0, 2.0, 5.0, 5.0),
                                            review.object_content_hash(image_hash, 10.0, 12.0, 6.0, 6.0)]})
    assert list(review.confirmed_correct_objects(ledger, objects, samples)) == ["o1", "o2"]
    moved = objects.copy()
    moved.loc["o2", "x"] = 14.0
    assert list(review.confirmed_correct_objects(ledger, moved, samples)) == ["o1"]
    assert review.confirmed_correct(ledger, samples).empty  # objects are not images


# --------------------------------------------------------------------------------------- corrected labels


def test_corrected_manifest_is_a_new_file_and_the_source_is_untouched(run):
    before = run.manifest.read_bytes()
    ledger = verdict_rows({"images/1_0.png": ("wrong", "1"), "images/2_1.png": ("wrong", None),
                           "images/0_3.png": ("correct", None), "images/0_2.png": ("wrong", "0")},
                          run.samples, T0, reviewer="ana")
    out = review.write_corrected_labels(ledger, run.run_dir)
    assert run.manifest.read_bytes() == before
    assert out.manifest == run.run_dir / "corrections" / "labels.corrected.csv"
    source = pd.read_csv(run.manifest, dtype=str, keep_default_na=False)
    corrected = pd.read_csv(out.manifest, dtype=str, keep_default_na=False)
    expected = source.copy()
    expected.loc[expected["filepath"] == "images/1_0.png", "label"] = "1"
    expected.loc[expected["filepath"] == "images/0_2.png", "label"] = "0"
    pd.testing.assert_frame_equal(corrected, expected)
    changes = pd.read_csv(out.changes, dtype=str, keep_default_na=False)
    assert sorted(zip(changes["sample_id"], changes["old_label"], changes["new_label"], changes["status"],
                      strict=True)) == [("images/0_2.png", "1", "0", "applied"),
                                        ("images/1_0.png", "2", "1", "applied")]
    assert set(changes["reviewer"]) == {"ana"}
    assert (out.n_applied, out.n_skipped) == (2, 0)


def test_a_label_changed_since_the_review_is_not_overwritten(run, tmp_path):
    edited = run.manifest.parent / "edited.parquet"  # beside the CSV: same relative paths
    table = pd.read_csv(run.manifest, dtype=str, keep_default_na=False)
    table.loc[table["filepath"] == "images/1_0.png", "label"] = "0"  # someone already relabelled it
    table.to_parquet(edited, index=False)
    before = edited.read_bytes()
    ledger = verdict_rows({"images/1_0.png": ("wrong", "1"), "images/0_2.png": ("wrong", "0")}, run.samples, T0)
    out = review.write_corrected_labels(ledger, run.run_dir, tmp_path / "out", source=edited)
    assert edited.read_bytes() == before
    assert out.manifest == tmp_path / "out" / "edited.corrected.parquet"
    expected = table.copy()
    expected.loc[expected["filepath"] == "images/0_2.png", "label"] = "0"
    pd.testing.assert_frame_equal(pd.read_parquet(out.manifest), expected, check_dtype=False)
    changes = pd.read_csv(out.changes, dtype=str, keep_default_na=False).set_index("sample_id")
    assert changes.loc["images/1_0.png", "status"] == "skipped: the manifest's label is now '0', not the reviewed '2'"
    assert changes.loc["images/0_2.png", "status"] == "applied"
    assert (out.n_applied, out.n_skipped) == (1, 1)


def test_corrections_find_rows_by_absolute_path_or_sample_id(run, tmp_path):
    ledger = verdict_rows({"images/1_0.png": ("wrong", "1"), "images/0_2.png": ("wrong", "0")}, run.samples, T0)
    absolute = tmp_path / "elsewhere" / "absolute.csv"
    absolute.parent.mkdir()
    pd.DataFrame({"filepath": run.samples["filepath"].to_numpy(), "label": run.samples["label"].to_numpy()}).to_csv(
        absolute, index=False)
    out = review.write_corrected_labels(ledger, run.run_dir, tmp_path / "a", source=absolute)
    labels = pd.read_csv(out.manifest, dtype=str).set_index("filepath")["label"]
    assert labels[run.samples.loc["images/1_0.png", "filepath"]] == "1"
    assert labels[run.samples.loc["images/0_2.png", "filepath"]] == "0"
    assert out.n_applied == 2
    by_id = tmp_path / "by_id.csv"
    kept = [s for s in run.samples.index if s != "images/0_2.png"]
    pd.DataFrame({"sample_id": kept, "label": run.samples.loc[kept, "label"].to_numpy()}).to_csv(by_id, index=False)
    out = review.write_corrected_labels(ledger, run.run_dir, tmp_path / "b", source=by_id)
    changes = pd.read_csv(out.changes, dtype=str, keep_default_na=False).set_index("sample_id")
    assert changes.loc["images/1_0.png", "status"] == "applied"
    assert changes.loc["images/0_2.png", "status"] == "skipped: not in the manifest"


# -------------------------------------------------------------------------------- the audit's own precision


def test_wilson_interval_matches_newcombe_1998():
    # Newcombe (1998), Stat Med 17:857, Table I, method 3 (Wilson score).
    for errors, n, low, high in ((81, 263, 0.2553, 0.3662), (15, 148, 0.0624, 0.1605), (0, 20, 0.0, 0.1611),
                                 (1, 29, 0.0061, 0.1718)):
        got = review.wilson_interval(errors, n)
        assert got == pytest.approx((low, high), abs=5e-5)
    assert review.wilson_interval(3, 10, population=10) == (0.3, 0.3)  # a census is exact
    narrow = review.wilson_interval(3, 10, population=12)
    wide = review.wilson_interval(3, 10)
    assert wide[0] < narrow[0] <= 0.3 <= narrow[1] < wide[1]


def test_stratified_estimate_and_its_interval():
    one = review.stratified_error_rate([review.Stratum("all", 10**9, 263, 81)])
    assert one["estimate"] == pytest.approx(81 / 263)
    assert (one["lower"], one["upper"]) == pytest.approx((0.2553, 0.3662), abs=5e-4)
    two = review.stratified_error_rate([review.Stratum("flagged", 40, 40, 30), review.Stratum("rest", 960, 100, 2)])
    assert two["estimate"] == pytest.approx(40 / 1000 * 30 / 40 + 960 / 1000 * 2 / 100)
    assert two["strata"]["flagged"]["lower"] == two["strata"]["flagged"]["upper"] == 0.75  # fully reviewed
    assert two["lower"] < two["estimate"] < two["upper"]
    missing = review.stratified_error_rate([review.Stratum("flagged", 40, 10, 3), review.Stratum("rest", 960, 0, 0)])
    assert missing["estimate"] is None


def test_stratified_interval_covers_the_truth_about_95_percent_of_the_time():
    """Simulate the audit: 200 flagged items (120 wrong), 4,800 unflagged (60 wrong); review a random 40 of the
    flags and a random audit sample of 150 unflagged items, 1,000 times."""
    rng = np.random.default_rng(7)
    truth = (120 + 60) / 5000
    wrong_flagged = rng.hypergeometric(120, 80, 40, size=1000)
    wrong_rest = rng.hypergeometric(60, 4740, 150, size=1000)
    covered = 0
    for a, b in zip(wrong_flagged, wrong_rest, strict=True):
        result = review.stratified_error_rate([review.Stratum("flagged", 200, 40, int(a)),
                                               review.Stratum("unflagged", 4800, 150, int(b))])
        covered += result["lower"] <= truth <= result["upper"]
    assert 0.93 <= covered / 1000 <= 0.995


def test_precision_at_k_counts_decisive_reviews_of_the_top_k():
    ledger = pd.DataFrame({"item_id": list("abcdefg"), "score": [0.99, 0.95, 0.9, 0.8, 0.7, 0.6, 0.5],
                           "verdict": ["wrong", "wrong", "correct", "unsure", "wrong", None, "correct"],
                           "selection": ["top_k"] * 6 + ["random_audit"]})
    at3 = review.precision_at_k(ledger, k=3)
    assert (at3["n_wrong"], at3["n_reviewed"], at3["precision"]) == (2, 3, pytest.approx(2 / 3))
    assert (at3["lower"], at3["upper"]) == pytest.approx(review.wilson_interval(2, 3))
    everything = review.precision_at_k(ledger)
    # g is a random-audit item, not a flag: left out; d unsure and f pending are not decisive
    assert (everything["n_items"], everything["n_wrong"], everything["n_reviewed"]) == (6, 3, 4)
    assert (everything["n_unsure"], everything["n_pending"]) == (1, 1)


def test_error_rate_of_the_run_from_reviewed_suspects_and_an_audit_sample(run):
    samples = run.samples
    # the reviewer checks all five flags (truth from DESIGN: three wrong) ...
    flags = {sid: ("wrong", DESIGN[sid][0]) if DESIGN[sid][0] != DESIGN[sid][1] else ("correct", None)
             for sid in FLAGGED_BY_QUALITY}
    ledger = review.merge_verdicts(review.empty_ledger(), verdict_rows(flags, samples, T0))
    ledger["content_hash"] = samples["content_hash"].reindex(ledger.index).to_numpy()
    partial = review.estimate_error_rate(ledger, samples)
    assert partial["complete"] is False
    assert partial["estimate"] == pytest.approx(5 / 12 * 3 / 5)
    assert partial["lower"] == partial["upper"] == pytest.approx(0.25)  # a census of the flags, nothing else
    # ... and a random audit sample of 4 of the 7 unflagged items, all right
    sample = review.draw_audit_sample(run.run_dir, 4, seed=3)
    ledger = review.record_export(ledger, sample, "labelstudio", exported_at=T0)
    ledger = review.merge_verdicts(ledger, verdict_rows({sid: ("correct", None) for sid in sample.index}, samples,
                                                        T0 + timedelta(hours=1)))
    full = review.estimate_error_rate(ledger, samples)
    assert full["complete"] is True
    assert full["estimate"] == pytest.approx(0.25)
    assert full["strata"]["unflagged"] == {"size": 7, "reviewed": 4, "wrong": 0, "rate": 0.0, "lower": 0.0,
                                           "upper": pytest.approx(review.wilson_interval(0, 4, population=7)[1])}
    assert full["lower"] == pytest.approx(0.25) and full["upper"] > 0.25
    # a verdict about an image that has since changed no longer counts
    changed = samples.copy()
    changed.loc["images/1_0.png", "content_hash"] = "new scan"
    assert review.estimate_error_rate(ledger, changed)["strata"]["flagged"]["reviewed"] == 4
