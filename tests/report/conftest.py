"""Run folders for the report tests, built from real images (sklearn's digits written as PNG files).

``make_run`` writes a run folder with :func:`audit.results.write_run` holding every per-sample column and
summary key of the contract: labels with injected noise, simulated annotators, out-of-sample predicted
probabilities from a cross-validated logistic regression on the pixels, a PCA map in place of UMAP, the real
distribution, agreement and mistakes checks, and a missing and a corrupt file. Its options switch parts off
(no annotators, no issues, no map, no mistakes check) so each degraded report can be tested. Runs are built
once per session and copied into each test's folder, so tests may change them freely.
"""

from __future__ import annotations

import hashlib
import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from audit.results import RunResults, write_run

N_IMAGES = 480
ANNOTATOR_ERROR_RATES = (0.05, 0.15, 0.30)


@dataclass
class DigitImages:
    """Digits written as 32x32 PNG files; ``ids[i]`` is the sample id of ``paths[i]``."""

    root: Path
    ids: list[str]
    paths: list[str]
    target: np.ndarray
    pixels: np.ndarray


@pytest.fixture(scope="session")
def digit_images(tmp_path_factory: pytest.TempPathFactory) -> DigitImages:
    from sklearn.datasets import load_digits

    digits = load_digits()
    root = tmp_path_factory.mktemp("digits")
    ids, paths = [], []
    for i in range(N_IMAGES):
        grey = (255 - digits.images[i] * (255 / 16)).astype(np.uint8)
        file = root / f"img_{i:04d}.png"
        Image.fromarray(grey, mode="L").resize((32, 32), Image.Resampling.NEAREST).save(file)
        ids.append(f"digits/img_{i:04d}.png")
        paths.append(str(file))
    return DigitImages(root, ids, paths, digits.target[:N_IMAGES].copy(), digits.data[:N_IMAGES] / 16.0)


def _other(rng: np.random.Generator, label: str, classes: Sequence[str]) -> str:
    choices = [c for c in classes if c != label]
    return choices[int(rng.integers(len(choices)))]


def build_run(
    path: Path,
    images: DigitImages,
    *,
    n: int = 240,
    start: int = 0,
    noise: float = 0.12,
    seed: int = 0,
    annotators: Sequence[str] = ("alice", "bob", "carol"),
    rename: dict[str, str] | None = None,
    issues: bool = True,
    with_map: bool = True,
    with_mistakes: bool = True,
    broken_files: bool = True,
    odd_file_name: str | None = None,
    gate: dict[str, Any] | None = None,
    baseline: RunResults | None = None,
    split: bool = True,
) -> RunResults:
    """Write a realistic run folder at ``path`` from ``images[start:start+n]`` (see the module docstring)."""
    from sklearn.decomposition import PCA
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_predict
    from threadpoolctl import threadpool_limits

    from audit.checks.agreement import AgreementCheck
    from audit.checks.base import CheckContext
    from audit.checks.distribution import DistributionCheck
    from audit.checks.mistakes import MistakesCheck

    rng = np.random.default_rng(seed)
    rename = rename or {}
    chosen = slice(start, start + n)
    ids = list(images.ids[chosen])
    paths = list(images.paths[chosen])
    truth = [rename.get(str(t), str(t)) for t in images.target[chosen]]
    pixels = images.pixels[chosen]
    classes = sorted(set(truth))
    given = list(truth)
    for i in rng.choice(n, size=round(noise * n), replace=False):
        given[i] = _other(rng, truth[i], classes)
    if odd_file_name is not None:
        odd = images.root / odd_file_name
        odd.write_bytes(Path(paths[0]).read_bytes())
        paths[0] = str(odd)
        ids[0] = f"digits/{odd_file_name}"

    samples = pd.DataFrame({"filepath": paths, "label": given}, index=pd.Index(ids, name="sample_id"))
    samples["split"] = np.where(np.arange(n) % 5 == 0, "val", "train") if split else "all"
    samples["readable"] = True
    samples["problems"] = ""
    if broken_files:
        corrupt = images.root / f"corrupt_{seed}_{start}.png"
        corrupt.write_bytes(b"this is not an image")
        broken = pd.DataFrame(
            {
                "filepath": [str(images.root / "gone.png"), str(corrupt)],
                "label": [classes[0], classes[1]],
                "split": ["train", "train"],
                "readable": [False, False],
                "problems": ["missing_file", "corrupt_image"],
            },
            index=pd.Index(["digits/gone.png", f"digits/corrupt_{seed}_{start}.png"], name="sample_id"),
        )
        samples = pd.concat([samples, broken])
    readable = samples["readable"].to_numpy()
    samples["content_hash"] = [f"{hash(p) & 0xFFFFFFFF:08x}" for p in samples["filepath"]]
    samples["embedding_row"] = np.where(readable, np.cumsum(readable) - 1, -1)

    x = pixels.astype(np.float32)
    embeddings = np.full((len(samples), x.shape[1]), np.nan, dtype=np.float32)
    embeddings[readable] = x / np.linalg.norm(x, axis=1, keepdims=True)
    annotations = None
    if annotators:
        rows = []
        for sid, label in samples.loc[readable, "label"].items():
            labelled_by = [a for a in annotators if rng.random() < 0.8] or [annotators[0]]
            for name in labelled_by:
                rate = ANNOTATOR_ERROR_RATES[list(annotators).index(name) % len(ANNOTATOR_ERROR_RATES)]
                rows.append((sid, name, _other(rng, label, classes) if rng.random() < rate else label))
        annotations = pd.DataFrame(rows, columns=["sample_id", "annotator", "label"])

    # Out-of-sample probabilities (3-fold logistic regression on the pixels), given to the checks as a
    # user's pred_probs would be, so the checks themselves train nothing and the fixture stays fast.
    codes = samples["label"].map({c: i for i, c in enumerate(classes)}).to_numpy(int)
    folds = StratifiedKFold(n_splits=3, shuffle=True, random_state=seed)
    with threadpool_limits(1):
        cv_probs = cross_val_predict(
            LogisticRegression(max_iter=200), x, codes[readable], cv=folds, method="predict_proba"
        )
    pred_probs = np.full((len(samples), len(classes)), 1 / len(classes))
    pred_probs[readable] = cv_probs

    checks: dict[str, Any] = {}
    prior: dict[str, Any] = {}

    def run_check(check: Any, probs: np.ndarray | None) -> None:
        nonlocal samples
        result = check.run(
            CheckContext(
                samples=samples,
                class_names=classes,
                embeddings=embeddings,
                pred_probs=probs,
                annotations=annotations,
                baseline=baseline,
                prior=dict(prior),
                seed=seed,
            )
        )
        samples = samples.join(result.samples)
        checks[check.name] = result.metrics
        prior[check.name] = result

    run_check(DistributionCheck(), None)
    if annotations is not None:
        run_check(AgreementCheck(), pred_probs)
    else:
        checks["agreement"] = {"skipped": "no annotator labels"}
    if with_mistakes:
        if not issues:  # a model that agrees with every audited label: a clean dataset
            audited = samples.get("agreement_consensus_label", samples["label"]).fillna(samples["label"])
            agreeing = np.eye(len(classes))[audited.map({c: i for i, c in enumerate(classes)}).to_numpy(int)]
            pred_probs = 0.9 * agreeing + 0.1 / len(classes)
        run_check(MistakesCheck(), pred_probs)
    else:
        checks["mistakes"] = {"skipped": "no embeddings and no predicted probabilities"}
        pred_probs = None

    projection: dict[str, Any] = {
        "method": "pca",
        "n_neighbors": None,
        "min_dist": None,
        "seed": seed,
        "metric": "euclidean",
    }
    samples["umap_x"] = np.nan
    samples["umap_y"] = np.nan
    if with_map:
        xy = PCA(n_components=2, random_state=seed).fit_transform(x)
        samples.loc[readable, "umap_x"] = xy[:, 0]
        samples.loc[readable, "umap_y"] = xy[:, 1]
    else:
        projection = {"skipped": "the run has no embeddings"}

    problems = samples["problems"][samples["problems"] != ""].value_counts().to_dict()
    summary: dict[str, Any] = {
        "run_name": path.name,
        "created_at": datetime(2025, 3, 3, 9, 30, tzinfo=UTC).isoformat(),
        "dataset": {"kind": "manifest", "name": "digits (test)", "path": str(images.root), "label_field": "label"},
        "counts": {
            "samples": len(samples),
            "readable": int(readable.sum()),
            "unreadable": int((~readable).sum()),
            "classes": len(classes),
            "with_problems": int(sum(problems.values())),
            "problems": problems,
        },
        "class_names": classes,
        "embedder": {
            "kind": "pixels",
            "name": "pixels 8x8 (test fixture)",
            "model": None,
            "pretrained": None,
            "checkpoint": None,
            "device": "cpu",
            "precision": "fp32",
            "dim": int(x.shape[1]),
            "note": "pixel baseline: not a semantic embedding",
        },
        "projection": projection,
        "timings": {"load": 0.1, "embed": 0.2, "checks": 0.3},
        "versions": {"label_audit": "0.1.0", "python": "3.11"},
        "config": {"seed": seed},
        "baseline": {"run_name": baseline.name, "path": str(baseline.path)} if baseline is not None else None,
        "checks": checks,
    }
    if gate is not None:
        summary["gate"] = gate
    return write_run(
        path, samples, summary, embeddings=embeddings[readable], annotations=annotations, pred_probs=pred_probs
    )


@pytest.fixture(scope="session")
def _built_runs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Path]]:
    return tmp_path_factory.mktemp("runs"), {}


@pytest.fixture
def make_run(digit_images: DigitImages, tmp_path: Path,
             _built_runs: tuple[Path, dict[str, Path]]) -> Callable[..., RunResults]:
    """``make_run(name, **options)``: the run :func:`build_run` writes, copied to ``tmp_path/name``."""
    root, built = _built_runs

    def make(name: str = "run", **options: Any) -> RunResults:
        baseline = options.get("baseline")
        key_options = {**options, "baseline": None if baseline is None else
                       hashlib.sha256((baseline.path / "samples.parquet").read_bytes()).hexdigest()}
        key = hashlib.sha256(repr((name, sorted(key_options.items()))).encode()).hexdigest()[:16]
        if key not in built:
            build_run(root / key / name, digit_images, **options)
            built[key] = root / key / name
        shutil.copytree(built[key], tmp_path / name)
        return RunResults.load(tmp_path / name)

    return make
