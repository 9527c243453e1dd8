"""Detection quality side by side: label-audit against cleanlab, Datalab, FiftyOne Brain and a kNN baseline.

Every method sees the same inputs. On the demo digits (sklearn's 1,797 real scans, written as PNGs by
:func:`audit.demo.build_demo_dataset` with no annotators, so the shipped label is the noisy one) label-audit runs
end to end (pixel embeddings, since CLIP weights cannot be downloaded here; its cross-validated predicted
probabilities); the peers then get those same probabilities and embeddings:

* **cleanlab** ``find_label_issues(labels, pred_probs)`` flags and ``get_label_quality_scores`` ranking, defaults;
* **Datalab** ``Datalab(data={"labels": ...}).find_issues(pred_probs=..., features=...)`` defaults, its
  ``label`` issues (``is_label_issue``, ``label_score``);
* **FiftyOne Brain** ``compute_mistakenness`` run for real on a FiftyOne dataset whose predictions are
  ``Classification`` fields with ``logits = log(pred_probs)``. FiftyOne gives a score only; its flag here is
  ``mistakenness > 0.5``, which by its formula is exactly "the predicted class differs from the label";
* **kNN disagreement**: the share of a sample's 10 nearest neighbours (cosine, same embeddings) whose label
  differs from its own; flagged when more than half do.

Flags are scored with precision, recall and F1 against the injected truth, scores with AUROC and average precision
(higher = more suspicious). On the human-validated label errors (CIFAR-10 and MNIST test sets, see
:mod:`benchmarks.label_errors`, reused here) there are no images, so there is no kNN row and Datalab gets the
probabilities alone; only the candidates confident learning proposed were reviewed, so precision counts the
reviewed flags only (validated errors / flagged reviewed candidates) and AUROC/AP rank the reviewed candidates,
as the paper does. Those candidates were chosen by cleanlab's own method, which favours cleanlab-like rules.
"""

from __future__ import annotations

import os
import tempfile
import time
import uuid
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

DIGIT_SETTINGS = [("symmetric", 0.05), ("symmetric", 0.10), ("symmetric", 0.20), ("pairs", 0.10)]
QUICK_SETTINGS = [("symmetric", 0.10), ("pairs", 0.10)]
QUICK_LIMIT = 600  # digits per setting in the quick (CI) form; the full form uses all 1,797
KNN_NEIGHBOURS = 10
LABEL_AUDIT = "label-audit"
PEERS = ["cleanlab find_label_issues", "cleanlab Datalab", "FiftyOne compute_mistakenness", "kNN disagreement"]


def flag_metrics(truth: np.ndarray, flags: np.ndarray, suspicion: np.ndarray) -> dict[str, float]:
    """Precision, recall, F1 of the flags and AUROC / average precision of the suspicion score."""
    from sklearn.metrics import average_precision_score, precision_recall_fscore_support, roc_auc_score

    truth, flags = np.asarray(truth, bool), np.asarray(flags, bool)
    precision, recall, f1, _ = precision_recall_fscore_support(truth, flags, average="binary", zero_division=0)
    return {"precision": float(precision), "recall": float(recall), "f1": float(f1),
            "auroc": float(roc_auc_score(truth, suspicion)),
            "average_precision": float(average_precision_score(truth, suspicion)),
            "n_flagged": int(flags.sum())}


# ------------------------------------------------------------------------------------------------ peers


def cleanlab_defaults(labels: np.ndarray, probs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    from cleanlab.filter import find_label_issues
    from cleanlab.rank import get_label_quality_scores

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return find_label_issues(labels, probs, n_jobs=1), 1.0 - get_label_quality_scores(labels, probs)


def datalab_defaults(labels: np.ndarray, probs: np.ndarray, features: np.ndarray | None,
                     ) -> tuple[np.ndarray, np.ndarray]:
    from cleanlab import Datalab

    lab = Datalab(data={"labels": labels}, label_name="labels", verbosity=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        lab.find_issues(pred_probs=probs, features=features)
    issues = lab.get_issues("label")
    return issues["is_label_issue"].to_numpy(bool), 1.0 - issues["label_score"].to_numpy(float)


def fiftyone_mistakenness(labels: np.ndarray, probs: np.ndarray, class_names: list[str],
                          filepaths: list[str] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """``compute_mistakenness`` on a temporary FiftyOne dataset (a real MongoDB), deleted afterwards."""
    os.environ.setdefault("FIFTYONE_DO_NOT_TRACK", "true")
    import fiftyone as fo
    import fiftyone.brain as fob

    logits = np.log(np.clip(probs, 1e-12, 1.0))
    predicted = probs.argmax(axis=1)
    dataset = fo.Dataset(f"label-audit-bench-{uuid.uuid4().hex[:12]}")
    try:
        files = filepaths or [f"/nonexistent/label-audit-bench/{i:06d}.png" for i in range(len(labels))]
        samples = [
            fo.Sample(filepath=path,
                      ground_truth=fo.Classification(label=class_names[label]),
                      predictions=fo.Classification(label=class_names[guess], confidence=float(p[guess]),
                                                    logits=row.tolist()))
            for path, label, guess, p, row in zip(files, labels, predicted, probs, logits, strict=True)
        ]
        ids = dataset.add_samples(samples, progress=False)
        fob.compute_mistakenness(dataset, "predictions", label_field="ground_truth", use_logits=True,
                                 progress=False)
        by_id = dict(zip(*dataset.values(["id", "mistakenness"]), strict=True))
        score = np.array([by_id[i] for i in ids], dtype=float)
    finally:
        dataset.delete()
    return score > 0.5, score


def knn_disagreement(labels: np.ndarray, embeddings: np.ndarray, k: int = KNN_NEIGHBOURS,
                     ) -> tuple[np.ndarray, np.ndarray]:
    """Share of the ``k`` nearest neighbours (cosine) carrying another label; flagged above one half."""
    from sklearn.neighbors import NearestNeighbors

    index = NearestNeighbors(n_neighbors=k + 1, metric="cosine", algorithm="brute").fit(embeddings)
    neighbours = index.kneighbors(embeddings, return_distance=False)[:, 1:]
    share = (labels[neighbours] != labels[:, None]).mean(axis=1)
    return share > 0.5, share


# ------------------------------------------------------------------------------------------------ digits


def _digits_setting(root: Path, kind: str, noise: float, seed: int, with_fiftyone: bool,
                    limit: int | None = None) -> dict[str, Any]:
    from audit.config import build_config
    from audit.demo import build_demo_dataset
    from audit.runner import run

    data = build_demo_dataset(root / "data", noise=noise, noise_kind=kind, annotators=0, seed=seed, limit=limit)
    config = build_config(overrides={
        "source": {"kind": "manifest", "path": data.manifest},
        "embedder": {"kind": "pixels", "cache_dir": root / "cache"},
        "output_dir": root / "runs", "run_name": "bench", "seed": seed, "report": False,
        "projection": {"enabled": False},
    })
    started = time.perf_counter()
    result = run(config, progress=False)
    audit_seconds = time.perf_counter() - started
    samples = result.samples
    keep = samples["readable"].to_numpy(bool) & samples["mistakes_label_quality"].notna().to_numpy()
    ids = samples.index[keep]
    class_names = result.class_names
    labels = samples.loc[ids, "label"].map({c: i for i, c in enumerate(class_names)}).to_numpy(int)
    probs = result.pred_probs[keep]
    embeddings = result.embeddings[keep]
    truth = data.truth.loc[ids, "is_noisy"].to_numpy(bool)
    methods: dict[str, Any] = {}
    methods[LABEL_AUDIT] = {
        **flag_metrics(truth, samples.loc[ids, "mistakes_is_issue"].to_numpy(bool),
                       1.0 - samples.loc[ids, "mistakes_label_quality"].to_numpy(float)),
        "seconds": audit_seconds}
    peers = {
        "cleanlab find_label_issues": lambda: cleanlab_defaults(labels, probs),
        "cleanlab Datalab": lambda: datalab_defaults(labels, probs, embeddings),
        "kNN disagreement": lambda: knn_disagreement(labels, embeddings),
    }
    if with_fiftyone:
        peers["FiftyOne compute_mistakenness"] = lambda: fiftyone_mistakenness(
            labels, probs, class_names, samples.loc[ids, "filepath"].tolist())
    for name, method in peers.items():
        started = time.perf_counter()
        flags, suspicion = method()
        methods[name] = {**flag_metrics(truth, flags, suspicion), "seconds": time.perf_counter() - started}
    mistakes = result.check_metrics("mistakes")
    return {"dataset": f"digits, {kind} noise {noise:.0%}", "kind": kind, "noise": noise,
            "n_samples": int(keep.sum()), "n_wrong": int(truth.sum()),
            "pred_probs": mistakes.get("pred_probs_source"), "cv_accuracy": mistakes.get("cv_accuracy"),
            "embedder": result.summary["embedder"]["name"], "methods": methods}


# ------------------------------------------------------------------------------------------ label errors


def _label_errors_dataset(name: str, title: str, with_fiftyone: bool) -> dict[str, Any]:
    """One of the human-validated test sets (10,000 samples each); FiftyOne's mistakenness on it takes ~30 s,
    so the quick form leaves FiftyOne to the digits settings (``with_fiftyone=False`` here)."""
    from benchmarks import label_errors

    probs, labels, candidates = label_errors.load_dataset(label_errors.data_dir(), name)
    class_names = [str(c) for c in range(probs.shape[1])]
    ids = candidates["id"].to_numpy()
    truth = candidates["validated_error"].to_numpy(bool)

    def scored(flags: np.ndarray, suspicion: np.ndarray, seconds: float) -> dict[str, Any]:
        reviewed = flag_metrics(truth, flags[ids], suspicion[ids])
        return {**reviewed, "n_flagged_reviewed": reviewed["n_flagged"], "n_flagged": int(flags.sum()),
                "seconds": seconds}

    methods: dict[str, Any] = {}
    started = time.perf_counter()
    flags, quality, _ = label_errors.run_label_audit(probs, labels, name)
    methods[LABEL_AUDIT] = scored(flags, 1.0 - quality, time.perf_counter() - started)
    peers = {
        "cleanlab find_label_issues": lambda: cleanlab_defaults(labels, probs),
        "cleanlab Datalab": lambda: datalab_defaults(labels, probs, None),
    }
    if with_fiftyone:
        peers["FiftyOne compute_mistakenness"] = lambda: fiftyone_mistakenness(labels, probs, class_names)
    for method_name, method in peers.items():
        started = time.perf_counter()
        flags, suspicion = method()
        methods[method_name] = scored(flags, suspicion, time.perf_counter() - started)
    return {"dataset": f"{title} (human-validated errors)", "n_samples": len(labels),
            "n_reviewed": len(candidates), "n_wrong": int(truth.sum()),
            "pred_probs": "the paper's out-of-sample model probabilities", "methods": methods,
            "note": "precision over reviewed flags; AUROC/AP over the reviewed candidates; no kNN (no images)"}


def run_detection(quick: bool = False, seed: int = 0, with_fiftyone: bool = True) -> dict[str, Any]:
    """Every dataset and method; JSON-safe."""
    from benchmarks import label_errors

    datasets = []
    with tempfile.TemporaryDirectory(prefix="label-audit-bench-") as tmp:
        for i, (kind, noise) in enumerate(QUICK_SETTINGS if quick else DIGIT_SETTINGS):
            datasets.append(_digits_setting(Path(tmp) / f"digits-{i}", kind, noise, seed, with_fiftyone,
                                            limit=QUICK_LIMIT if quick else None))
    for name, title in label_errors.DATASETS.items():
        datasets.append(_label_errors_dataset(name, title, with_fiftyone and not quick))
    for data in datasets:
        data["verdict"] = verdict(data["methods"])
    return {"datasets": datasets, "knn_neighbours": KNN_NEIGHBOURS,
            "fiftyone_flag_rule": "mistakenness > 0.5 (= predicted class differs from the label)"}


def verdict(methods: dict[str, dict[str, float]]) -> dict[str, Any]:
    """Where label-audit is behind the best peer (F1 of the flags, AUROC and AP of the score), and by how much."""
    ours = methods[LABEL_AUDIT]
    behind = {}
    for metric in ("f1", "auroc", "average_precision"):
        best_name = max((m for m in methods if m != LABEL_AUDIT), key=lambda m: methods[m][metric])
        gap = methods[best_name][metric] - ours[metric]
        if gap > 1e-9:
            behind[metric] = {"peer": best_name, "gap": gap}
    return {"behind": behind, "best_or_equal": not behind}


def to_markdown(results: dict[str, Any]) -> str:
    """One table per dataset; the best value of each column in bold, and a line saying where label-audit loses."""
    out = []
    columns = ["precision", "recall", "f1", "auroc", "average_precision"]
    for data in results["datasets"]:
        methods = data["methods"]
        best = {c: max(m[c] for m in methods.values()) for c in columns}
        extra = f", {data['n_reviewed']} reviewed" if "n_reviewed" in data else ""
        out.append(f"**{data['dataset']}**: {data['n_samples']} samples{extra}, {data['n_wrong']} wrong labels; "
                   f"predicted probabilities: {data['pred_probs']}\n")
        out.append("| method | flagged | precision | recall | F1 | AUROC | AP |")
        out.append("| --- | --- | --- | --- | --- | --- | --- |")
        for name, m in methods.items():
            cells = [f"**{m[c]:.3f}**" if abs(m[c] - best[c]) < 1e-9 else f"{m[c]:.3f}" for c in columns]
            flagged = f"{m['n_flagged_reviewed']} of {m['n_flagged']}" if "n_flagged_reviewed" in m \
                else str(m["n_flagged"])
            out.append(f"| {name} | {flagged} | " + " | ".join(cells) + " |")
        behind = data["verdict"]["behind"]
        if behind:
            said = "; ".join(f"{metric.replace('average_precision', 'AP').upper() if metric != 'f1' else 'F1'} "
                             f"{v['gap']:.3f} below {v['peer']}" for metric, v in behind.items())
            out.append(f"\nlabel-audit loses here: {said}.\n")
        else:
            out.append("\nlabel-audit is best or equal on F1, AUROC and AP here.\n")
    return "\n".join(out)


def summary_markdown(results: dict[str, Any]) -> str:
    """One compact table: F1 of the flags / AUROC / AP of the score, per dataset and method (best in bold)."""
    names = [LABEL_AUDIT, *PEERS]
    lines = ["| dataset | " + " | ".join(names) + " |", "| --- |" + " --- |" * len(names)]
    for data in results["datasets"]:
        methods = data["methods"]
        cells = []
        for name in names:
            if name not in methods:
                cells.append("—")
                continue
            parts = []
            for metric in ("f1", "auroc", "average_precision"):
                value = methods[name][metric]
                best = max(m[metric] for m in methods.values())
                parts.append(f"**{value:.3f}**" if abs(value - best) < 1e-9 else f"{value:.3f}")
            cells.append(" / ".join(parts))
        lines.append(f"| {data['dataset']} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def frame(results: dict[str, Any]) -> pd.DataFrame:
    """Long table (dataset, method, metrics) for quick inspection."""
    return pd.DataFrame([{"dataset": d["dataset"], "method": name, **m}
                         for d in results["datasets"] for name, m in d["methods"].items()])
