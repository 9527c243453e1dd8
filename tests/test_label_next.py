"""Label next on hand-built runs whose right order is known by construction: classifier uncertainty (least
confidence, margin) from stored probabilities, probabilities predicted for unlabelled images from embeddings,
cleanlab's ActiveLab with annotators, and items the ledger already holds left out."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from audit import review
from audit.label_next import SELECTION, LabelNextError, label_next_queue
from audit.results import write_run

CLASSES = ["a", "b", "c"]
# sample -> (label, probabilities); least confidence 1 - max p and margin 1 - (p1 - p2) worked out beside each
DESIGN = {
    "u1": (None, [1 / 3, 1 / 3, 1 / 3]),  # LC 0.667, margin 1.00
    "u2": (None, [0.50, 0.45, 0.05]),  # LC 0.50, margin 0.95
    "u3": (None, [0.90, 0.05, 0.05]),  # LC 0.10, margin 0.15
    "l1": ("a", [0.40, 0.30, 0.30]),  # LC 0.60, margin 0.90
    "l2": ("b", [0.05, 0.90, 0.05]),  # LC 0.10, margin 0.15 (ties with u3: sample id order)
    "l3": ("c", [0.60, 0.00, 0.40]),  # LC 0.40, margin 0.80
    "x9": (None, [1 / 3, 1 / 3, 1 / 3]),  # unreadable: never a candidate
}


def _samples(ids, labels, readable=None) -> pd.DataFrame:
    index = pd.Index(ids, name="sample_id")
    return pd.DataFrame({"filepath": [f"/data/{s}.png" for s in ids], "label": labels, "split": "all",
                         "readable": readable if readable is not None else True, "problems": "",
                         "content_hash": [f"h-{s}" for s in ids]}, index=index)


@pytest.fixture()
def uncertainty_run(tmp_path):
    ids = list(DESIGN)
    samples = _samples(ids, [v[0] for v in DESIGN.values()], readable=[s != "x9" for s in ids])
    probs = np.array([v[1] for v in DESIGN.values()])
    return write_run(tmp_path / "run", samples, {"run_name": "run", "class_names": CLASSES}, pred_probs=probs)


def test_least_confidence_and_margin_orders(uncertainty_run):
    ranked = label_next_queue(uncertainty_run, k=None)
    assert list(ranked.queue.index) == ["u1", "l1", "u2", "l3", "l2", "u3"]
    assert ranked.queue["score"].tolist() == pytest.approx([2 / 3, 0.6, 0.5, 0.4, 0.1, 0.1])
    assert list(label_next_queue(uncertainty_run, k=None, method="margin").queue.index) == [
        "u1", "u2", "l1", "l3", "l2", "u3"]
    assert list(label_next_queue(uncertainty_run, k=None, include_labelled=False).queue.index) == ["u1", "u2", "u3"]
    top = label_next_queue(uncertainty_run, k=2).queue
    assert list(top.index) == ["u1", "l1"] and list(top["rank"]) == [1, 2]
    assert top.loc["l1", "given_label"] == "a" and top.loc["u1", "given_label"] is None
    assert list(top["suggested_label"]) == ["a", "a"] and set(top["selection"]) == {SELECTION}
    assert top["reason"].str.startswith("label next: least confidence").all()


def test_items_the_ledger_holds_are_not_queued_again(uncertainty_run):
    queue = label_next_queue(uncertainty_run, k=None).queue
    ledger = review.record_export(review.empty_ledger(), queue.loc[["u1", "l1"]], "labelstudio")
    assert list(label_next_queue(uncertainty_run, k=None, ledger=ledger).queue.index) == ["u2", "l3", "l2", "u3"]
    changed = ledger.copy()
    changed.loc["u1", "content_hash"] = "an older image"  # the image changed since: it may be queued again
    assert "u1" in label_next_queue(uncertainty_run, k=None, ledger=changed).queue.index


def test_unlabelled_images_get_probabilities_from_the_embeddings(tmp_path):
    """Three labelled clusters on the unit circle at 0, 120 and 240 degrees; unlabelled points at 60 and 180
    degrees (halfway between two classes) are the uncertain ones, the point at 0 degrees the sure one."""
    rng = np.random.default_rng(0)
    ids, labels, angles = [], [], []
    for name, centre in zip(CLASSES, (0, 120, 240), strict=True):
        for i in range(10):
            ids.append(f"{name}{i}")
            labels.append(name)
            angles.append(centre + rng.normal(0, 5))
    ids += ["mid-ab", "mid-bc", "at-a"]
    labels += [None, None, None]
    angles += [60, 180, 0]
    radians = np.deg2rad(angles)
    embeddings = np.stack([np.cos(radians), np.sin(radians)], axis=1).astype(np.float32)
    samples = _samples(ids, labels)
    samples["embedding_row"] = np.arange(len(ids))
    probs = np.full((len(ids), 3), np.nan)
    labelled = np.array([lab is not None for lab in labels])
    probs[labelled] = np.eye(3)[[CLASSES.index(lab) for lab in labels if lab is not None]] * 0.9 + 0.1 / 3
    run = write_run(tmp_path / "run", samples, {"run_name": "run", "class_names": CLASSES}, embeddings=embeddings,
                    pred_probs=probs)
    ranked = label_next_queue(run, k=None, include_labelled=False)
    assert set(ranked.queue.index[:2]) == {"mid-ab", "mid-bc"} and ranked.queue.index[2] == "at-a"
    assert ranked.queue.loc["at-a", "suggested_label"] == "a"
    assert ranked.queue.loc["at-a", "score"] < 0.2 < ranked.queue.loc["mid-ab", "score"]
    assert any("3 unlabelled images predicted" in note for note in ranked.notes)


def test_activelab_with_annotators(tmp_path):
    """Two annotators; ActiveLab scores the labelled images against the probabilities and the unlabelled ones on
    the probabilities alone. Images two people labelled are not candidates. The order is cleanlab's own, computed
    here from the same inputs; by construction the unlabelled image with flat probabilities comes first and the
    single label that agrees with a confident prediction last."""
    from cleanlab.multiannotator import get_active_learning_scores

    rng = np.random.default_rng(3)
    ids = [f"s{i:02d}" for i in range(24)]
    truth = [i % 3 for i in range(24)]
    probs = np.array([np.eye(3)[t] * 0.8 + 0.2 / 3 for t in truth])
    probs[20] = 1 / 3  # s20: unlabelled, the model cannot tell
    probs[21] = [0.45, 0.45, 0.10]  # s21: unlabelled, torn between a and b
    rows = []
    for i in range(20):  # s00..s13 labelled by both, s14..s19 by "ann1" only; ann2 errs now and then
        rows.append({"sample_id": ids[i], "annotator": "ann1", "label": CLASSES[truth[i]]})
        if i < 14:
            wrong = rng.random() < 0.3
            rows.append({"sample_id": ids[i], "annotator": "ann2", "label": CLASSES[(truth[i] + wrong) % 3]})
    annotations = pd.DataFrame(rows)
    samples = _samples(ids, [None] * 24)
    run = write_run(tmp_path / "run", samples, {"run_name": "run", "class_names": CLASSES},
                    annotations=annotations, pred_probs=probs)
    ranked = label_next_queue(run, k=None)

    wide = annotations.assign(code=annotations["label"].map(CLASSES.index)).pivot(
        index="sample_id", columns="annotator", values="code").reindex(ids[:20])
    scores, unlabelled_scores = get_active_learning_scores(wide, probs[:20], probs[20:])
    by_id = dict(zip(ids, np.concatenate([scores, unlabelled_scores]), strict=True))
    candidates = ids[14:]  # one annotation (s14..s19) or none (s20..s23)
    expected = sorted(candidates, key=lambda s: (by_id[s], s))
    assert list(ranked.queue.index) == expected
    assert ranked.queue.index[0] == "s20" and ranked.method == "cleanlab ActiveLab score"
    assert ranked.queue["score"].tolist() == pytest.approx([1 - by_id[s] for s in expected])
    assert not math.isnan(ranked.queue["score"].iloc[-1])
    assert set(ranked.queue.index[-3:]) <= set(ids[14:20])  # confident single labels come last


def test_what_cannot_be_ranked_is_refused(tmp_path):
    samples = _samples(["a0", "a1"], [None, None])
    run = write_run(tmp_path / "run", samples, {"run_name": "run", "class_names": CLASSES})
    with pytest.raises(LabelNextError, match="no class probabilities"):
        label_next_queue(run)
    with pytest.raises(LabelNextError, match="method must be one of"):
        label_next_queue(run, method="coin")
