"""Real run folders and FiftyOne datasets for the FiftyOne tests, built from sklearn's digits.

The run folder is written with :func:`audit.results.write_run` and has the contract's columns, computed the
way a run computes them in spirit: pixel embeddings, out-of-sample probabilities from a cross-validated
logistic regression, cleanlab's label issues and quality scores, a majority-vote consensus of simulated
annotators. Only the 2D map is a PCA stand-in for UMAP (the export copies whatever coordinates it is given).
"""

from __future__ import annotations

import hashlib
import os
import uuid
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from audit.results import RunResults, write_run

ANNOTATOR_ERROR_RATES = {"ann_a": 0.05, "ann_b": 0.2, "ann_c": 0.35}


def unique_name(prefix: str = "la-test") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def write_digit_images(root: Path, n: int = 200, seed: int = 0) -> pd.DataFrame:
    """PNG files ``root/<class>/<i>.png`` of the first ``n`` digits, with their true class."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    rows = []
    for i in range(n):
        label = str(int(digits.target[i]))
        file = root / label / f"digit_{i:04d}.png"
        file.parent.mkdir(parents=True, exist_ok=True)
        pixels = (digits.images[i] * (255.0 / 16.0)).astype(np.uint8)
        Image.fromarray(pixels, mode="L").resize((32, 32), Image.Resampling.NEAREST).save(file)
        rows.append((file.relative_to(root).as_posix(), str(file.resolve()), label, digits.data[i]))
    return pd.DataFrame(rows, columns=["sample_id", "filepath", "true_label", "pixels"]).set_index("sample_id")


def build_run(run_dir: Path, images: pd.DataFrame, *, noise: float = 0.1, annotators: bool = True,
              unreadable: int = 2, seed: int = 0, run_name: str | None = None,
              source: dict | None = None) -> RunResults:
    """A complete run folder over ``images`` (from :func:`write_digit_images`) with injected label noise.

    ``unreadable`` samples get their file emptied and the matching problem code, no embedding and no map
    position, as the runner records them.
    """
    from cleanlab.filter import find_label_issues
    from cleanlab.rank import get_label_quality_scores
    from sklearn.decomposition import PCA
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import cross_val_predict

    rng = np.random.default_rng(seed)
    n = len(images)
    class_names = sorted(images["true_label"].unique())
    truth = images["true_label"].to_numpy()
    given = truth.copy()
    noisy = rng.choice(n, size=int(noise * n), replace=False)
    for i in noisy:
        given[i] = rng.choice([c for c in class_names if c != truth[i]])
    samples = pd.DataFrame({"filepath": images["filepath"], "label": given, "split": "all"}, index=images.index)
    samples["readable"] = True
    samples["problems"] = ""
    bad = rng.choice(np.setdiff1d(np.arange(n), noisy), size=unreadable, replace=False)
    for i in bad:
        Path(samples["filepath"].iloc[i]).write_bytes(b"")
        samples.iloc[i, samples.columns.get_loc("readable")] = False
        samples.iloc[i, samples.columns.get_loc("problems")] = "empty_file"
    samples["content_hash"] = [hashlib.sha1(Path(p).read_bytes()).hexdigest() for p in samples["filepath"]]
    ok = samples["readable"].to_numpy()

    embeddings = np.stack(images["pixels"].to_numpy())[ok].astype(np.float32) / 16.0
    rows = np.full(n, -1)
    rows[ok] = np.arange(ok.sum())
    samples["embedding_row"] = rows
    xy = PCA(n_components=2, random_state=seed).fit_transform(embeddings)
    samples["umap_x"], samples["umap_y"] = np.nan, np.nan
    samples.loc[ok, "umap_x"], samples.loc[ok, "umap_y"] = xy[:, 0], xy[:, 1]
    samples["distribution_class_share"] = samples["label"].map(samples["label"].value_counts(normalize=True))

    annotations = None
    audited = samples["label"].copy()
    if annotators:
        long = []
        for name, rate in ANNOTATOR_ERROR_RATES.items():
            for sample_id, label in zip(samples.index, given, strict=True):
                if rng.random() < rate:
                    label = rng.choice([c for c in class_names if c != label])
                long.append((sample_id, name, str(label)))
        annotations = pd.DataFrame(long, columns=["sample_id", "annotator", "label"])
        votes = annotations.groupby(["sample_id", "label"]).size().reset_index(name="n")
        votes = votes.sort_values(["sample_id", "n", "label"], ascending=[True, False, True])
        consensus = votes.drop_duplicates("sample_id").set_index("sample_id")
        n_ann = annotations.groupby("sample_id").size()
        samples["agreement_consensus_label"] = consensus["label"].reindex(samples.index)
        samples["agreement_n_annotations"] = n_ann.reindex(samples.index).astype(int)
        samples["agreement_rate"] = (consensus["n"] / n_ann).reindex(samples.index).astype(float)
        samples["agreement_consensus_quality"] = samples["agreement_rate"] * 0.9
        audited = samples["agreement_consensus_label"]

    labels = audited[ok].map({c: i for i, c in enumerate(class_names)}).to_numpy()
    probs = cross_val_predict(LogisticRegression(max_iter=300), embeddings, labels, cv=3, method="predict_proba")
    issues = find_label_issues(labels, probs)
    quality = get_label_quality_scores(labels, probs)
    suggested = probs.argmax(axis=1)
    samples["mistakes_audited_label"] = audited.astype(object)
    samples["mistakes_is_issue"] = False
    samples["mistakes_label_quality"] = np.nan
    samples["mistakes_suggested_label"] = None
    samples["mistakes_suggested_prob"] = np.nan
    samples["mistakes_given_prob"] = np.nan
    samples.loc[ok, "mistakes_is_issue"] = issues
    samples.loc[ok, "mistakes_label_quality"] = quality
    samples.loc[ok, "mistakes_suggested_label"] = [class_names[k] for k in suggested]
    samples.loc[ok, "mistakes_suggested_prob"] = probs.max(axis=1)
    samples.loc[ok, "mistakes_given_prob"] = probs[np.arange(len(labels)), labels]

    pair_counts: dict[tuple[str, str], int] = {}
    flagged = samples[samples["mistakes_is_issue"]]
    for a, b in zip(flagged["mistakes_audited_label"], flagged["mistakes_suggested_label"], strict=True):
        if a != b:
            key = tuple(sorted((a, b)))
            pair_counts[key] = pair_counts.get(key, 0) + 1
    pairs = sorted(pair_counts.items(), key=lambda kv: -kv[1])[:10]
    run_name = run_name or run_dir.name
    root = Path(os.path.commonpath(list(images["filepath"])))
    summary = {
        "run_name": run_name,
        "created_at": pd.Timestamp.now(tz="UTC").isoformat(),
        "dataset": source or {"kind": "folder", "name": root.name, "path": str(root)},
        "counts": {"samples": n, "readable": int(ok.sum()), "unreadable": int((~ok).sum())},
        "class_names": class_names,
        "checks": {
            "mistakes": {
                "audited": "consensus" if annotators else "label", "n_issues": int(issues.sum()),
                "overlapping_class_pairs": [
                    {"class_a": a, "class_b": b, "joint_probability": 0.01, "n_confused": c} for (a, b), c in pairs
                ],
            },
            "agreement": ({"low_agreement_threshold": 0.5} if annotators else {"skipped": "no annotator labels"}),
        },
    }
    return write_run(run_dir, samples, summary, embeddings=embeddings, annotations=annotations,
                     pred_probs=None)
