"""The orchestrator: sources -> embeddings -> projection -> checks -> run folder -> report.

Each stage is a plain function; this module only composes them, times them, validates the checks' outputs and
joins them into one per-sample table and one summary. A check that fails stops the run with its error.
"""

from __future__ import annotations

import platform
import re
import time
from collections import Counter
from contextlib import contextmanager
from datetime import UTC, datetime
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import numpy as np

from audit.checks.base import CheckContext, CheckError, json_safe, validate_result
from audit.config import AuditConfig
from audit.results import RunResults, write_run
from audit.sources import SampleTable, add_problems, load_source

VERSIONED = ["label-audit", "torch", "open-clip-torch", "umap-learn", "cleanlab", "scikit-learn", "pandas",
             "numpy", "plotly", "fiftyone"]


class _Timer:
    def __init__(self) -> None:
        self.timings: dict[str, float] = {}

    @contextmanager
    def stage(self, name: str):
        started = time.perf_counter()
        try:
            yield
        finally:
            self.timings[name] = round(time.perf_counter() - started, 3)


def versions() -> dict[str, str | None]:
    out: dict[str, str | None] = {"python": platform.python_version()}
    for package in VERSIONED:
        try:
            out[package] = version(package)
        except PackageNotFoundError:
            out[package] = None
    return out


def dataset_name(table: SampleTable) -> str:
    """A FiftyOne dataset's name, an image folder's name, or the folder a manifest lives in."""
    if table.description.get("name"):
        return str(table.description["name"])
    path = Path(str(table.description.get("path", "dataset")))
    return path.parent.name if table.description.get("kind") == "manifest" and path.parent.name else path.name


def default_run_name(table: SampleTable) -> str:
    source = dataset_name(table)
    slug = re.sub(r"[^A-Za-z0-9_.-]+", "-", str(source)).strip("-") or "dataset"
    return f"{slug}-{datetime.now(UTC).strftime('%Y%m%d-%H%M%S')}"


def load_pred_probs(config: AuditConfig, table: SampleTable) -> tuple[np.ndarray | None, str | None]:
    """The user's predicted probabilities (rows in sample order), validated by the mistakes check."""
    from audit.embeddings import EmbedderError

    if config.pred_probs.path is not None:
        path = Path(config.pred_probs.path)
        if not path.is_file():
            raise EmbedderError(f"predicted probabilities file {path} does not exist")
        return np.load(path, allow_pickle=False).astype(np.float64), f"user-supplied {path.name}"
    if config.pred_probs.field is not None:
        from audit.sources.fiftyone_dataset import load_field_array

        if config.source.kind != "fiftyone":
            raise EmbedderError("--pred-probs-field needs a FiftyOne source")
        logits = load_field_array(config.source.dataset, config.pred_probs.field, table.samples.index)
        logits = logits - logits.max(axis=1, keepdims=True)
        probs = np.exp(logits)
        return probs / probs.sum(axis=1, keepdims=True), f"softmax of FiftyOne field {config.pred_probs.field!r} logits"
    return None, None


def compute_embeddings(config: AuditConfig, table: SampleTable, progress: bool):
    """Embeddings in sample order (NaN rows for unreadable samples), the embedder's description and stats."""
    from audit.embeddings import EmbedderError, build_embedder, embed_samples, load_precomputed, normalise_precomputed

    samples = table.samples
    cfg = config.embedder
    if cfg.kind == "none":
        return None, {"kind": "none", "name": "no embeddings"}, {}
    if cfg.kind == "precomputed":
        if cfg.path is not None:
            vectors = load_precomputed(cfg.path, len(samples))
            where = str(cfg.path)
        elif cfg.field is not None:
            from audit.sources.fiftyone_dataset import load_field_array

            if config.source.kind != "fiftyone":
                raise EmbedderError("--embeddings-field needs a FiftyOne source")
            vectors = normalise_precomputed(
                load_field_array(config.source.dataset, cfg.field, samples.index), len(samples), f"field {cfg.field}")
            where = f"FiftyOne field {cfg.field!r}"
        else:
            raise EmbedderError("embedder 'precomputed' needs --embeddings FILE.npy or --embeddings-field NAME")
        samples["embedding_row"] = np.arange(len(samples))
        description = {"kind": "precomputed", "name": f"precomputed embeddings from {where}",
                       "dim": int(vectors.shape[1]), "model": None, "pretrained": None, "checkpoint": None}
        return vectors, description, {"n_embedded": 0, "n_cached": 0}
    embedder = build_embedder(cfg)
    outcome = embed_samples(samples, embedder, cache_dir=cfg.cache_dir, use_cache=cfg.use_cache,
                            batch_size=cfg.batch_size, workers=cfg.workers, progress=progress)
    add_problems(samples, outcome.problems)
    samples["content_hash"] = [h or "" for h in outcome.hashes]
    samples["embedding_row"] = np.where(outcome.rows >= 0, np.arange(len(samples)), -1)
    full = np.full((len(samples), embedder.dim), np.nan, dtype=np.float32)
    ok = outcome.rows >= 0
    full[ok] = outcome.vectors[outcome.rows[ok]]
    stats = {"n_embedded": outcome.n_embedded, "n_cached": outcome.n_cached,
             **{f"embed_{k}_s": round(v, 3) for k, v in outcome.timings.items()}}
    return full, embedder.describe(), stats


def run(config: AuditConfig, progress: bool = True) -> RunResults:
    """Run every stage and write ``<output_dir>/<run_name>/``; returns the written results."""
    from audit.checks import REGISTRY
    from audit.projection import project

    timer = _Timer()
    created = datetime.now(UTC)
    with timer.stage("sources"):
        table = load_source(config.source)
    samples = table.samples
    samples["content_hash"] = ""
    samples["embedding_row"] = -1
    class_names = table.class_names
    baseline = RunResults.load(config.baseline) if config.baseline else None
    with timer.stage("pred_probs"):
        pred_probs, pred_probs_source = load_pred_probs(config, table)
    with timer.stage("embeddings"):
        embeddings, embedder_description, embed_stats = compute_embeddings(config, table, progress)
    samples["umap_x"] = np.nan
    samples["umap_y"] = np.nan
    projection_settings: dict[str, Any] = {"method": None}
    if embeddings is not None and config.projection.enabled:
        usable = np.isfinite(embeddings).all(axis=1)
        if usable.any():
            with timer.stage("projection"):
                projection = project(embeddings[usable], config.projection)
            samples.loc[usable, "umap_x"] = projection.points[:, 0]
            samples.loc[usable, "umap_y"] = projection.points[:, 1]
            projection_settings = projection.settings
    check_metrics: dict[str, Any] = {}
    prior = {}
    available = {"embeddings": embeddings is not None, "pred_probs": pred_probs is not None,
                 "annotations": table.annotations is not None and len(table.annotations) > 0,
                 "baseline": baseline is not None}
    for name, check_class in REGISTRY.items():
        if name in config.disabled_checks:
            check_metrics[name] = {"skipped": "disabled in the config"}
            continue
        missing = [r for r in check_class.requires if not available[r]]
        if missing:
            check_metrics[name] = {"skipped": f"needs {', '.join(missing)}"}
            continue
        context = CheckContext(samples=samples, class_names=class_names, embeddings=embeddings,
                               pred_probs=pred_probs, annotations=table.annotations,
                               params=dict(config.checks.get(name, {})), baseline=baseline, prior=prior,
                               seed=config.seed)
        with timer.stage(f"check:{name}"):
            try:
                result = check_class().run(context)
            except (CheckError, ValueError):
                raise
            except Exception as exc:  # a broken check fails the run, loudly, with its name
                raise CheckError(f"check {name!r} failed: {type(exc).__name__}: {exc}") from exc
        validate_result(result, samples.index)
        prior[name] = result
        samples = samples.join(result.samples)
        check_metrics[name] = result.metrics
    if pred_probs_source and "mistakes" in check_metrics and isinstance(check_metrics["mistakes"], dict):
        check_metrics["mistakes"]["pred_probs_source"] = pred_probs_source  # names the user's file or field
    run_name = config.run_name or default_run_name(table)
    problem_counts = Counter(c for text in samples["problems"] for c in str(text).split(";") if c)
    summary = {
        "run_name": run_name,
        "created_at": created.isoformat(timespec="seconds"),
        "dataset": {"kind": config.source.kind,
                    "name": dataset_name(table),
                    "path": table.description.get("path"), "label_field": table.description.get("label_field"),
                    "label_from": table.description.get("label_from", "label")},
        "counts": {"samples": len(samples), "readable": int(samples["readable"].sum()),
                   "unreadable": int((~samples["readable"]).sum()), "classes": len(class_names),
                   "with_problems": int((samples["problems"] != "").sum()), "problems": dict(problem_counts),
                   "annotators": int(table.annotations["annotator"].nunique()) if available["annotations"] else 0,
                   **embed_stats},
        "class_names": class_names,
        "embedder": embedder_description,
        "projection": projection_settings,
        "timings": timer.timings,
        "versions": versions(),
        "config": config.model_dump(mode="json"),
        "baseline": {"run_name": baseline.name, "path": str(baseline.path)} if baseline else None,
        "checks": check_metrics,
    }
    pred_probs_used = prior["mistakes"].arrays.get("pred_probs") if "mistakes" in prior else None
    with timer.stage("write"):
        results = write_run(Path(config.output_dir) / run_name, samples, json_safe(summary),
                            embeddings=embeddings, annotations=table.annotations,
                            pred_probs=pred_probs_used if pred_probs_used is not None else pred_probs)
    if config.report:
        from audit.report import render_report

        with timer.stage("report"):
            render_report(results.path, Path(config.baseline) if config.baseline else None)
    return RunResults.load(results.path)
