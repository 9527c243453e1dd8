"""FiftyOne as the review tool, in a real MongoDB (FiftyOne starts its own): the queue as the saved view
``la-review`` with the items tagged, the reviewer's ``review:*`` tags read back as verdicts, through the CLI.

The run is the hand-made one of tests/test_review.py (12 real digit scans, five flagged); what the reviewer tags
is decided here, so every expected verdict is ours."""

from __future__ import annotations

import os

import pandas as pd
import pytest
from typer.testing import CliRunner

from audit import review
from audit.checks.review import FIELD_RANK, TAG_QUEUED, VIEW_REVIEW
from audit.cli import app
from audit.integrations import fiftyone_review
from tests.fiftyone_helpers import unique_name
from tests.test_review import DESIGN, FLAGGED_BY_QUALITY, make_review_run

pytestmark = pytest.mark.fiftyone


@pytest.fixture(scope="module")
def fo():
    os.environ.setdefault("FIFTYONE_DO_NOT_TRACK", "true")
    import fiftyone

    return fiftyone


@pytest.fixture()
def dataset_name(fo):
    name = unique_name("la-review")
    yield name
    if name in fo.list_datasets():
        fo.delete_dataset(name)


def invoke(*args, code: int = 0):
    result = CliRunner().invoke(app, [str(a) for a in args])
    assert result.exit_code == code, result.output + (repr(result.exception) if result.exception else "")
    return result


def _by_item(dataset, run) -> dict:
    paths = dict(zip(dataset.values("filepath"), dataset, strict=True))
    return {sid: paths[path] for sid, path in run.samples["filepath"].items()}


def test_review_tags_round_trip(fo, dataset_name, tmp_path):
    run = make_review_run(tmp_path)
    out = invoke("review", "export", run.run_dir, "--to", "fiftyone", "--dataset", dataset_name, "--k", "10",
                 "--audit-sample", "2").output
    assert f"FiftyOne dataset {dataset_name!r}: 7 samples tagged 'review:queued'" in out
    ledger = review.read_ledger(run.run_dir)
    audit = list(ledger.index[ledger["selection"] == "random_audit"])
    queue_order = FLAGGED_BY_QUALITY + audit  # worst suspects first, then the random audit sample
    dataset = fo.load_dataset(dataset_name)
    view = dataset.load_saved_view(VIEW_REVIEW)
    by_path = {p: s for s, p in run.samples["filepath"].items()}
    assert [by_path[p] for p in view.values("filepath")] == queue_order
    assert view.values(FIELD_RANK) == list(range(1, 8))
    assert {by_path[p] for p in dataset.match_tags(TAG_QUEUED).values("filepath")} == set(queue_order)
    assert view.values(fiftyone_review.FIELD_SUGGESTED)[:5] == [DESIGN[s][4] for s in FLAGGED_BY_QUALITY]

    # the reviewer in the App: 1_0 is a "1" (fix tag), 0_3 is right, 2_1 cannot tell, 0_2 wrong without a class;
    # someone also tags a sample that was never queued (ignored, and said so)
    samples = _by_item(dataset, run)
    outsider = next(s for s in DESIGN if s not in queue_order)
    for sid, tags in {"images/1_0.png": ["review:fix:1"], "images/0_3.png": ["review:correct"],
                      "images/2_1.png": ["review:unsure"], "images/0_2.png": ["review:wrong"],
                      audit[0]: ["review:correct"], outsider: ["review:wrong"]}.items():
        samples[sid].tags.extend(tags)
        samples[sid].save()
    out = invoke("review", "import", run.run_dir, "--from", "fiftyone", "--dataset", dataset_name,
                 "--reviewer", "zoe").output
    ledger = review.read_ledger(run.run_dir)
    expected = {"images/1_0.png": ("wrong", "1"), "images/0_3.png": ("correct", None),
                "images/2_1.png": ("unsure", None), "images/0_2.png": ("wrong", None), "images/2_3.png": (None, None),
                audit[0]: ("correct", None), audit[1]: (None, None)}
    assert {s: (r["verdict"], r["corrected_label"]) for s, r in ledger.iterrows()} == expected
    answered = ledger[ledger["verdict"].notna()]
    assert set(answered["reviewer"]) == {"zoe"} and set(answered["tool"]) == {"fiftyone"}
    assert "ignored the review tags of 1 sample(s) that are not in the review ledger" in out
    corrected = pd.read_csv(run.run_dir / "corrections" / "labels.corrected.csv", dtype=str, keep_default_na=False)
    assert corrected.set_index("filepath").loc["images/1_0.png", "label"] == "1"

    # importing again stamps nothing; `label-audit fiftyone` keeps the review view (the review check declares it)
    assert "0 ledger items changed" in invoke("review", "import", run.run_dir, "--from", "fiftyone", "--dataset",
                                              dataset_name).output
    invoke("fiftyone", run.run_dir, "--dataset", dataset_name)
    assert fo.load_dataset(dataset_name).has_saved_view(VIEW_REVIEW)
    values = dict(zip(dataset.values("filepath"), dataset.values("label_audit_review_verdict"), strict=True))
    assert values[run.samples.loc["images/0_3.png", "filepath"]] == "correct"

    # the next export queues only what nobody decided: the unsure 2_1 and the unanswered 2_3; the tag moves
    invoke("review", "export", run.run_dir, "--to", "fiftyone", "--dataset", dataset_name, "--k", "10")
    queued = {by_path[p] for p in fo.load_dataset(dataset_name).match_tags(TAG_QUEUED).values("filepath")}
    assert queued == {"images/2_1.png", "images/2_3.png"}


def test_conflicting_or_unknown_tags_are_refused(fo, dataset_name, tmp_path):
    run = make_review_run(tmp_path)
    invoke("review", "export", run.run_dir, "--to", "fiftyone", "--dataset", dataset_name, "--k", "3")
    dataset = fo.load_dataset(dataset_name)
    sample = _by_item(dataset, run)["images/1_0.png"]
    sample.tags.extend(["review:correct", "review:wrong"])
    sample.save()
    result = invoke("review", "import", run.run_dir, "--from", "fiftyone", "--dataset", dataset_name, code=2)
    assert "conflicting review tags" in result.output
    sample.tags = ["review:fix:seven"]
    sample.save()
    result = invoke("review", "import", run.run_dir, "--from", "fiftyone", "--dataset", dataset_name, code=2)
    assert "'seven' is not one of the run's classes" in result.output
    assert review.read_ledger(run.run_dir)["verdict"].isna().all()
    missing = invoke("review", "import", run.run_dir, "--from", "fiftyone", "--dataset", unique_name("none"), code=2)
    assert "no FiftyOne dataset named" in missing.output
