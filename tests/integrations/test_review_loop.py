"""The weekly loop through the CLI against a real Label Studio: run -> review export -> a reviewer answers through
the API -> review import -> corrected manifest -> next week's run honours the verdicts -> report and gate.

The data are real digit scans (sklearn) with some labels made wrong on purpose; the reviewer answers with the
truth (the digits' own targets), so every expected verdict, correction, precision and error-rate figure below is
derived from the truth and the answers, not from label-audit's output.
"""

from __future__ import annotations

import html
import json
import re
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from audit import review
from audit.cli import app
from audit.integrations import labelstudio as ls
from audit.results import RunResults
from tests.conftest import write_digit

pytestmark = pytest.mark.slow

N_IMAGES = 150
WRONG = {3: "8", 10: "5", 17: "1", 25: "9", 40: "2", 55: "7", 71: "3", 90: "4"}  # index -> the wrong label given
TITLE = "digits weekly review"


def invoke(*args: str | Path, code: int = 0):
    result = CliRunner().invoke(app, [str(a) for a in args])
    assert result.exit_code == code, result.output + (repr(result.exception) if result.exception else "")
    return result


@pytest.fixture(scope="module")
def week1(tmp_path_factory, digit_images):
    """A real run (`label-audit run`, pixel embeddings) of 150 digit PNGs whose manifest has 8 wrong labels."""
    images, targets = digit_images
    root = tmp_path_factory.mktemp("review-loop")
    data = root / "data"
    rows = []
    for i in range(N_IMAGES):
        write_digit(data / "images" / f"d{i:04d}.png", images[i])
        rows.append({"filepath": f"images/d{i:04d}.png", "label": WRONG.get(i, str(targets[i]))})
    manifest = data / "labels.csv"
    pd.DataFrame(rows).to_csv(manifest, index=False)
    config = root / "label-audit.yaml"
    # predicted_neq_given: the high-recall flags, so the reviewer also meets false alarms to confirm correct
    config.write_text(f"projection: {{enabled: false}}\nembedder: {{cache_dir: '{root / 'cache'}'}}\n"
                      f"output_dir: '{root / 'reports'}'\n"
                      "checks: {mistakes: {filter_by: [low_margin_calibrated_count, predicted_neq_given]}}\n")
    invoke("run", "--manifest", manifest, "--embedder", "pixels", "--config", config, "--run-name", "week1")
    truth = {f"images/d{i:04d}.png": str(targets[i]) for i in range(N_IMAGES)}
    return {"root": root, "manifest": manifest, "config": config, "truth": truth,
            "run": RunResults.load(root / "reports" / "week1")}


def _choice(value: str) -> list[dict]:
    return [{"from_name": "label", "to_name": "image", "type": "choices", "value": {"choices": [value]}}]


def _section_text(page: str, section_id: str) -> str:
    start = page.index(f'<section id="{section_id}"')
    block = page[start: page.index("</section>", start)]
    return re.sub(r"\s+", " ", html.unescape(re.sub(r"<[^>]+>", " ", block)))


def test_the_weekly_loop_against_label_studio(labelstudio, week1, tmp_path):
    server, run, truth = labelstudio, week1["run"], week1["truth"]
    samples = run.samples
    flagged = sorted(samples.index[samples["mistakes_is_issue"]])
    false_flags = [s for s in flagged if samples.loc[s, "label"] == truth[s]]
    wrong_flags = [s for s in flagged if samples.loc[s, "label"] != truth[s]]
    assert false_flags and len(wrong_flags) >= 3, "the loop needs a false alarm and three real errors to review"
    source_bytes = week1["manifest"].read_bytes()
    refused = invoke("review", "export", run.path, "--to", "labelstudio", "--url", server.url, "--api-key", "not-it",
                     "--project", TITLE, code=2)
    errors = [line for line in refused.output.splitlines() if line.startswith("label-audit: error:")]
    assert errors == ["label-audit: error: Label Studio answered HTTP 401: Invalid token."]
    assert review.read_ledger(run.path).empty  # nothing is noted as sent when the tool refused

    # 1. export: every suspect (k=20 > flags) and a random audit sample of 8 unflagged images
    out = invoke("review", "export", run.path, "--to", "labelstudio", "--url", server.url, "--api-key",
                 server.token, "--project", TITLE, "--k", "20", "--audit-sample", "8").output
    assert f"exported {len(flagged)} suspects and 8 random audit images" in out
    ledger = review.read_ledger(run.path)
    audit_items = sorted(ledger.index[ledger["selection"] == "random_audit"])
    assert sorted(ledger.index[ledger["selection"] == "top_k"]) == flagged and len(audit_items) == 8
    assert not samples.loc[audit_items, "mistakes_is_issue"].any() and ledger["verdict"].isna().all()
    tasks_file = json.loads((run.path / "review" / "labelstudio-tasks.json").read_text())
    assert sorted(t["data"]["item_id"] for t in tasks_file) == sorted(flagged + audit_items)
    record = json.loads((run.path / "review" / "labelstudio.json").read_text())
    assert record["url"] == server.url and server.token not in json.dumps(record)
    client = ls.connect(server.url, server.token)
    (project,) = [p for p in client.projects.list() if p.title == TITLE]
    tasks = {t.data["item_id"]: t for t in client.tasks.list(project=project.id, fields="all")}
    assert set(tasks) == set(flagged + audit_items)
    for sid in flagged:
        assert tasks[sid].data["given_label"] == samples.loc[sid, "label"]
        assert tasks[sid].predictions[0].result[0]["value"]["choices"] == [samples.loc[sid, "mistakes_suggested_label"]]

    # 2. the reviewer answers with the truth, except: one real error "unsure", another left unanswered
    unsure, unanswered = wrong_flags[0], wrong_flags[-1]
    expected: dict[str, tuple[str | None, str | None]] = {}
    for sid in flagged + audit_items:
        if sid == unanswered:
            expected[sid] = (None, None)
            continue
        answer = ls.UNSURE_ALIAS if sid == unsure else truth[sid]
        client.annotations.create(id=tasks[sid].id, result=_choice(answer))
        given = samples.loc[sid, "label"]
        expected[sid] = ("unsure", None) if sid == unsure else (
            ("correct", None) if answer == given else ("wrong", answer))

    # 3. import: verdicts in the ledger, corrected labels written, the source untouched
    out = invoke("review", "import", run.path, "--from", "labelstudio", "--api-key", server.token).output
    answered = [s for s, (verdict, _) in expected.items() if verdict]
    assert f"imported {len(answered)} answers from labelstudio" in out
    ledger = review.read_ledger(run.path)
    assert {s: (r["verdict"], r["corrected_label"]) for s, r in ledger.iterrows()} == expected
    assert set(ledger.loc[answered, "reviewer"]) == {server.username}
    assert week1["manifest"].read_bytes() == source_bytes
    corrected = pd.read_csv(run.path / "corrections" / "labels.corrected.csv", dtype=str, keep_default_na=False)
    source = pd.read_csv(week1["manifest"], dtype=str, keep_default_na=False)
    fixes = {s: c for s, (v, c) in expected.items() if v == "wrong"}
    changed = corrected[corrected["label"] != source["label"]]
    assert dict(zip(changed["filepath"], changed["label"], strict=True)) == fixes
    changes = pd.read_csv(run.path / "corrections" / "label_changes.csv", dtype=str)
    assert set(changes["sample_id"]) == set(fixes) and set(changes["status"]) == {"applied"}
    again = invoke("review", "import", run.path, "--from", "labelstudio", "--api-key", server.token).output
    assert "0 ledger items changed" in again  # importing twice changes nothing

    # what the audit measured, by hand: precision of the flags, and the error rate per stratum
    decided_flags = [s for s in flagged if expected[s][0] in ("correct", "wrong")]
    n_wrong_flags = sum(expected[s][0] == "wrong" for s in decided_flags)
    precision = n_wrong_flags / len(decided_flags)
    audit_wrong = sum(expected[s][0] == "wrong" for s in audit_items)
    estimate = (len(flagged) / N_IMAGES * n_wrong_flags / len(decided_flags)
                + (N_IMAGES - len(flagged)) / N_IMAGES * audit_wrong / len(audit_items))
    now = RunResults.load(run.path).summary["checks"]["review"]  # `review import` refreshed this run's figures
    assert now["precision_at_k"]["precision"] == pytest.approx(precision)
    assert now["error_rate"]["estimate"] == pytest.approx(estimate) and now["error_rate"]["complete"] is True

    # 4. next week's run of the same manifest carries the ledger: confirmed labels are not flagged again
    invoke("run", "--manifest", week1["manifest"], "--embedder", "pixels", "--config", week1["config"],
           "--run-name", "week2")
    week2 = RunResults.load(week1["root"] / "reports" / "week2")
    confirmed = {s for s in flagged if expected[s][0] == "correct"}
    assert confirmed == set(false_flags)
    now_flagged = set(week2.samples.index[week2.samples["mistakes_is_issue"]])
    assert now_flagged == set(flagged) - confirmed
    assert set(week2.samples.index[week2.samples["mistakes_unflagged_by_review"]]) == confirmed
    assert len(review.read_ledger(week2.path)) == len(ledger)
    metrics = week2.summary["checks"]["review"]
    assert metrics["precision_at_k"]["precision"] == pytest.approx(precision)
    assert metrics["error_rate"]["estimate"] == pytest.approx(estimate)
    assert metrics["error_rate"]["strata"]["flagged"]["size"] == len(flagged)

    # 5. the report shows precision@k and the error-rate estimate; the gate reads them
    text = _section_text((week2.path / "index.html").read_text(), "review")
    assert f"precision@{len(flagged)} {100 * precision:.1f}%" in text
    assert f"{100 * estimate:.1f}% of the {N_IMAGES} labelled images are estimated to be wrong" in text
    upper = metrics["error_rate"]["upper"]
    gate_ok = invoke("gate", week2.path, "--set", f"max_estimated_error_rate={min(1.0, upper + 0.01):.4f}")
    assert "PASS  max_estimated_error_rate" in gate_ok.output
    gate_fail = invoke("gate", week2.path, "--set", f"min_review_precision={min(1.0, precision + 0.01):.4f}", code=1)
    assert "FAIL  min_review_precision" in gate_fail.output

    # 6. exporting week 2 to the same project sends only what nobody decided (the unsure and the unanswered item)
    out = invoke("review", "export", week2.path, "--to", "labelstudio", "--url", server.url, "--api-key",
                 server.token, "--project", TITLE, "--k", "20").output
    assert "exported 2 suspects" in out and "0 tasks created, 1 refreshed, 1 already answered" in out
