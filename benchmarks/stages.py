"""Post-embedding stages at growing sizes: how time and memory grow from 1k to a million samples.

The inputs are synthetic (embeddings cannot be computed for a million images here, and the stages after the
embedding only see vectors): ``n`` L2-normalised 512-d vectors around 10 class centres, 10% of the labels
swapped to another class, and three annotators (error rates 5, 15 and 30%, each labelling about 80% of the
samples, every sample labelled at least once). Each size runs in a fresh process so that its peak memory is its
own; inside it, each stage is timed and its peak resident memory recorded (the kernel's exact high-water mark,
restarted per stage, and a sampler thread that also covers any worker processes).

Stages, each the code a run executes: ``umap`` (:func:`audit.projection.project`), ``cross-validation``
(:func:`audit.checks.mistakes.cross_validated_pred_probs`), ``cleanlab`` (the mistakes check given those
probabilities: confident-learning flags, quality scores, health, overlapping classes), ``agreement`` (the
agreement check: kappas, Krippendorff, CROWDLAB consensus with its own cross-validated classifier),
``distribution``, ``outputs`` (what a run writes: ``samples.parquet`` with every check's columns, the
embeddings, annotations and probabilities, ``summary.json`` and the UMAP model, read back once) and ``report``
(:mod:`benchmarks.report_scale`: a synthetic run folder of the same size rendered by
:func:`audit.report.render_report`; its seconds are the render's, its memory covers the set-up too). With
``--browser`` the report is then opened in headless Chromium (outside the stage), timed until every plot is
drawn; with ``--umap-quality`` the map of a UMAP fitted on 10% of the points (the share a million-point map
uses, see :mod:`audit.projection`) is compared with the full fit (:func:`umap_quality`).

Run one size: ``python -m benchmarks.stages --n 10000 --out stages-10000.json``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

DIM = 512
N_CLASSES = 10
NOISE = 0.10
ANNOTATOR_ERRORS = {"ann_a": 0.05, "ann_b": 0.15, "ann_c": 0.30}
COVERAGE = 0.8
GIB = 2**30


def synthetic_inputs(n: int, seed: int = 0) -> tuple[pd.DataFrame, np.ndarray, pd.DataFrame, list[str]]:
    """Sample table, embeddings and annotations of ``n`` synthetic samples (see the module docstring)."""
    samples, vectors, annotations, classes, _ = synthetic_truth(n, seed)
    return samples, vectors, annotations, classes


def synthetic_truth(n: int, seed: int = 0) -> tuple[pd.DataFrame, np.ndarray, pd.DataFrame, list[str], np.ndarray]:
    """:func:`synthetic_inputs` plus each sample's true class code (before the label noise)."""
    rng = np.random.default_rng(seed)
    classes = [f"class_{i:02d}" for i in range(N_CLASSES)]
    true = rng.integers(0, N_CLASSES, n)
    centres = rng.normal(size=(N_CLASSES, DIM)).astype(np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    vectors = centres[true] + rng.normal(scale=1.6 / np.sqrt(DIM), size=(n, DIM)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    given = np.where(rng.random(n) < NOISE, (true + rng.integers(1, N_CLASSES, n)) % N_CLASSES, true)
    names = np.array(classes, dtype=object)
    ids = pd.Index([f"s{i:07d}" for i in range(n)], name="sample_id")
    samples = pd.DataFrame({"filepath": [f"/data/{i}.jpg" for i in range(n)], "label": names[given],
                            "split": "all", "readable": True}, index=ids)
    chosen = rng.random((n, len(ANNOTATOR_ERRORS))) < COVERAGE
    chosen[~chosen.any(axis=1), 0] = True
    frames = []
    for j, (annotator, rate) in enumerate(ANNOTATOR_ERRORS.items()):
        rows = np.flatnonzero(chosen[:, j])
        wrong = rng.random(len(rows)) < rate
        label = np.where(wrong, (given[rows] + rng.integers(1, N_CLASSES, len(rows))) % N_CLASSES, given[rows])
        frames.append(pd.DataFrame({"sample_id": ids[rows], "annotator": annotator, "label": names[label]}))
    return samples, vectors, pd.concat(frames, ignore_index=True), classes, true


def _high_water() -> int | None:
    """Peak resident memory of this process's address space, in bytes (``VmHWM``; Linux only).

    Unlike ``getrusage``'s ``ru_maxrss``, which a process started by ``exec`` inherits from its parent, this
    belongs to this process alone, and :func:`_reset_high_water` can restart it, so a stage's own peak is exact
    even when it lies between two samples of :class:`_PeakMemory`.
    """
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def _reset_high_water() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")  # 5: reset the peak RSS to the current RSS
        return True
    except OSError:
        return False


class _PeakMemory:
    """Peak resident memory of this process (and any worker processes) while a stage runs, sampled every 10 ms."""

    def __init__(self) -> None:
        import psutil

        self.process = psutil.Process()
        self.peak = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _rss(self) -> int:
        total = self.process.memory_info().rss
        for child in self.process.children(recursive=True):
            with contextlib.suppress(Exception):  # a worker that ended between listing and reading
                total += child.memory_info().rss
        return total

    def _sample(self) -> None:
        while not self._stop.wait(0.01):
            self.peak = max(self.peak, self._rss())

    def __enter__(self) -> _PeakMemory:
        self.peak = self._rss()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self.peak = max(self.peak, self._rss())


QUALITY_FIT_SHARE = 0.1  # the UMAP quality check fits on 10% of the points, the share a million-point map uses
QUALITY_QUERIES = 2_000
QUALITY_NEIGHBOURS = 10


def neighbourhood_overlap(a: np.ndarray, b: np.ndarray, rows: np.ndarray, k: int = QUALITY_NEIGHBOURS) -> float:
    """Mean share of each query point's ``k`` nearest neighbours on map ``a`` that are also among its ``k``
    nearest on map ``b`` (neighbours among all points; 1 = the same neighbourhoods, about ``k / n`` = none)."""
    from sklearn.neighbors import NearestNeighbors

    def neighbours(points: np.ndarray) -> np.ndarray:
        index = NearestNeighbors(n_neighbors=k + 1).fit(points)
        found = index.kneighbors(points[rows], return_distance=False)
        return np.array([[j for j in row if j != i][:k] for i, row in zip(rows, found, strict=True)])

    first, second = neighbours(a), neighbours(b)
    return float(np.mean([len(set(x) & set(y)) / k for x, y in zip(first, second, strict=True)]))


def class_purity(points: np.ndarray, classes: np.ndarray, rows: np.ndarray, k: int = QUALITY_NEIGHBOURS,
                 metric: str = "euclidean") -> float:
    """Mean share of each query point's ``k`` nearest neighbours (on the map, or in the embedding space with
    ``metric="cosine"``) that have its true class: how well the layout keeps the classes apart."""
    from sklearn.neighbors import NearestNeighbors

    index = NearestNeighbors(n_neighbors=k + 1, metric=metric,
                             algorithm="brute" if metric == "cosine" else "auto").fit(points)
    found = index.kneighbors(points[rows], return_distance=False)
    same = [np.mean(classes[[j for j in row if j != i][:k]] == classes[i]) for i, row in zip(rows, found, strict=True)]
    return float(np.mean(same))


def umap_quality(vectors: np.ndarray, true: np.ndarray, full: np.ndarray, seed: int = 0) -> dict[str, Any]:
    """The sampled map (fit on ``QUALITY_FIT_SHARE`` of the points, the rest placed with ``transform``) against the
    full fit ``full`` of the same points: neighbourhoods kept between the two maps, and each map's
    trustworthiness and class purity. A second full fit with another seed gives UMAP's own run-to-run
    variation, the scale against which the overlap is read."""
    from sklearn.manifold import trustworthiness

    from audit.config import ProjectionConfig
    from audit.projection import project

    n = len(vectors)
    fit_points = max(int(n * QUALITY_FIT_SHARE), 100)
    started = time.perf_counter()
    sampled = project(vectors, ProjectionConfig(seed=seed), max_fit_points=fit_points)
    sampled_seconds = time.perf_counter() - started
    other = project(vectors, ProjectionConfig(seed=seed + 1)).points
    rng = np.random.default_rng(seed)
    rows = np.sort(rng.choice(n, size=min(QUALITY_QUERIES, n), replace=False))
    small = np.sort(rng.choice(n, size=min(5_000, n), replace=False))
    maps = {"full fit": full, "sampled fit + transform": sampled.points, "full fit, other seed": other}
    return {
        "n_samples": n, "fit_points": fit_points, "sampled_seconds": sampled_seconds,
        "neighbours": QUALITY_NEIGHBOURS, "queries": len(rows), "trustworthiness_points": len(small),
        "overlap_with_full_fit": {name: neighbourhood_overlap(full, points, rows)
                                  for name, points in maps.items() if name != "full fit"},
        "trustworthiness": {name: float(trustworthiness(vectors[small], points[small],
                                                        n_neighbors=QUALITY_NEIGHBOURS, metric="cosine"))
                            for name, points in maps.items()},
        "class_purity": {**{name: class_purity(points, true, rows) for name, points in maps.items()},
                         "embeddings (cosine, the ceiling)": class_purity(vectors, true, rows, metric="cosine")},
    }


def measure_size(n: int, seed: int = 0, report: bool = True, umap_quality_check: bool = False,
                 browser: bool = False) -> dict[str, Any]:
    """Run every stage on ``n`` synthetic samples in this process; seconds and peak memory per stage.

    ``umap_quality_check`` adds :func:`umap_quality` (outside the stages); ``browser`` times opening the report in
    headless Chromium after the report stage (outside it, so the browser's memory is not the stage's).
    """
    from audit.checks.agreement import AgreementCheck
    from audit.checks.base import CheckContext
    from audit.checks.distribution import DistributionCheck
    from audit.checks.mistakes import DEFAULTS, MistakesCheck, cross_validated_pred_probs
    from audit.config import ProjectionConfig
    from audit.projection import project, save_model
    from audit.results import write_run

    samples, vectors, annotations, classes, true = synthetic_truth(n, seed)
    codes = samples["label"].map({c: i for i, c in enumerate(classes)}).to_numpy(int)
    stages: dict[str, Any] = {}
    extra: dict[str, Any] = {}

    process_peak = _high_water() or 0

    @contextlib.contextmanager
    def stage(name: str):
        nonlocal process_peak
        process_peak = max(process_peak, _high_water() or 0)
        exact = _reset_high_water()
        started = time.perf_counter()
        with _PeakMemory() as memory:
            yield
        seconds = time.perf_counter() - started
        peak = max(memory.peak, (_high_water() or 0) if exact else 0)
        process_peak = max(process_peak, peak)
        stages[name] = {"seconds": seconds, "peak_rss_gib": peak / GIB, "peak_exact": exact}

    with stage("umap"):
        projection = project(vectors, ProjectionConfig(seed=seed))
    extra["umap_settings"] = {k: v for k, v in projection.settings.items() if k != "note"}
    if umap_quality_check:
        extra["umap_quality"] = umap_quality(vectors, true, projection.points, seed)
    with stage("cross-validation"):
        probs, _, source, _ = cross_validated_pred_probs(vectors, codes, N_CLASSES, DEFAULTS["folds"],
                                                         DEFAULTS["knn_neighbors"], seed)
    extra["cv_accuracy"] = float((probs.argmax(axis=1) == codes).mean())
    extra["cv_accuracy_true_class"] = float((probs.argmax(axis=1) == true).mean())
    extra["pred_probs"] = source
    with stage("cleanlab"):
        mistakes = MistakesCheck().run(CheckContext(samples=samples, class_names=classes, pred_probs=probs,
                                                    seed=seed))
    extra["issue_rate"] = mistakes.metrics["issue_rate"]
    noisy = codes != true
    flagged = mistakes.samples["mistakes_is_issue"].to_numpy(bool)
    extra["flags_f1_vs_injected_noise"] = float(2 * (flagged & noisy).sum() / max(flagged.sum() + noisy.sum(), 1))
    with stage("agreement"):
        agreement = AgreementCheck().run(CheckContext(samples=samples, class_names=classes, embeddings=vectors,
                                                      annotations=annotations, seed=seed))
    extra["agreement_pred_probs"] = agreement.metrics.get("pred_probs_source")
    with stage("distribution"):
        distribution = DistributionCheck().run(CheckContext(samples=samples, class_names=classes, seed=seed))
    with stage("outputs"), tempfile.TemporaryDirectory(prefix="label-audit-outputs-") as tmp:
        # What a run writes (audit.runner's "write" stage): samples.parquet with every check's columns, the
        # embeddings, the annotations, the probabilities, summary.json and the UMAP model; then read back.
        table = samples.assign(problems="", umap_x=projection.points[:, 0], umap_y=projection.points[:, 1],
                               embedding_row=np.arange(n))
        table = table.join(agreement.samples).join(mistakes.samples).join(distribution.samples)
        summary = {"run_name": f"stages-{n}", "class_names": classes, "projection": extra["umap_settings"],
                   "checks": {"mistakes": mistakes.metrics, "agreement": agreement.metrics,
                              "distribution": distribution.metrics}}
        written = write_run(Path(tmp) / "run", table, summary, embeddings=vectors, annotations=annotations,
                            pred_probs=probs)
        if projection.model is not None:
            save_model(projection.model, written.path)
        extra["outputs_mb"] = {f.name: round(f.stat().st_size / 2**20, 1) for f in sorted(written.path.iterdir())}
        del table, written
    del projection, agreement, mistakes, distribution, probs
    if report:
        from benchmarks import report_scale

        with tempfile.TemporaryDirectory(prefix="label-audit-stages-") as keep:
            html = Path(keep) / "index.html"
            with stage("report"), tempfile.TemporaryDirectory(prefix="label-audit-stages-") as tmp:
                row = report_scale.run([n], n_classes=N_CLASSES, browser=False, output=None, work_dir=Path(tmp),
                                       seed=seed, keep_html=html)[0]
            open_seconds = report_scale.browser_open_seconds(html) if browser else None
        # The stage's time also covers writing report_scale's synthetic run folders and photos; keep the render.
        stages["report"]["seconds_with_setup"] = stages["report"]["seconds"]
        stages["report"]["seconds"] = row["render_seconds"]
        extra["report"] = {"render_seconds": row["render_seconds"], "html_mb": row["html_mb"],
                           "map_points": row["map_points"], "map_suspects": row["map_suspects"],
                           "n_suspects": row["n_suspects"], "browser_open_seconds": open_seconds}
    return {"n_samples": n, "dim": DIM, "n_classes": N_CLASSES, "n_annotations": len(annotations),
            "stages": stages, "process_peak_rss_gib": max(process_peak, _high_water() or 0) / GIB,
            "total_seconds": sum(s["seconds"] for s in stages.values()), **extra}


def run_stages(sizes: Sequence[int], seed: int = 0, report: bool = True,
               log: Callable[[str], None] = print, umap_quality_size: int | None = None,
               browser: bool = False) -> list[dict[str, Any]]:
    """Each size in a fresh Python process (so peak memory is per size); one result per size. At
    ``umap_quality_size`` the sampled UMAP is also compared with the full fit; ``browser`` times opening each
    report in headless Chromium."""
    rows = []
    with tempfile.TemporaryDirectory(prefix="label-audit-stages-") as tmp:
        for n in sizes:
            out = Path(tmp) / f"stages-{n}.json"
            command = [sys.executable, "-m", "benchmarks.stages", "--n", str(n), "--seed", str(seed),
                       "--out", str(out)] + ([] if report else ["--no-report"])
            command += (["--umap-quality"] if n == umap_quality_size else []) + (["--browser"] if browser else [])
            log(f"stages: {n:,} samples ...")
            subprocess.run(command, check=True, cwd=Path(__file__).resolve().parents[1],
                           env={**os.environ, "FIFTYONE_DO_NOT_TRACK": "true"}, stdout=subprocess.DEVNULL)
            rows.append(json.loads(out.read_text(encoding="utf-8")))
    return rows


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--n", type=int, required=True)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-report", action="store_true")
    parser.add_argument("--umap-quality", action="store_true", help="compare the sampled UMAP with the full fit")
    parser.add_argument("--browser", action="store_true", help="time opening the report in headless Chromium")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    result = measure_size(args.n, args.seed, report=not args.no_report, umap_quality_check=args.umap_quality,
                          browser=args.browser)
    args.out.write_text(json.dumps(result, indent=2), encoding="utf-8")


if __name__ == "__main__":
    main()
