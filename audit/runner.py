"""The orchestrator: sources -> embeddings -> projection -> checks -> run folder -> report.

Each stage is a plain function; this module only composes them, times and announces them (one line per stage on
stderr, see :mod:`audit.progress`), validates the checks' outputs and joins them into one per-sample table and one
summary. A check that fails stops the run with its error. A weekly re-run does only what changed: embeddings come
from the content cache (the model is not even loaded when every image is cached) and last week's map is reused.
"""

from __future__ import annotations

import platform
import re
from collections import Counter
from datetime import UTC, datetime
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import numpy as np

from audit.checks.base import CheckContext, json_safe, run_check, validate_result
from audit.config import AuditConfig
from audit.progress import Progress, as_progress
from audit.results import RunResults, dataset_key, previous_run, write_run
from audit.sources import SampleTable, add_problems, load_source

VERSIONED = ["label-audit", "torch", "open-clip-torch", "umap-learn", "cleanlab", "scikit-learn", "pandas",
             "numpy", "plotly", "fiftyone"]
NO_EARLIER_RUN = "no earlier run of this dataset"


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


def _add_image_stats(samples, stats: np.ndarray | None) -> None:
    """Pixel statistics as ``image_<stat>`` columns (NaN where unknown), for the image-quality check."""
    from audit.sources.images import STAT_KEYS

    for j, key in enumerate(STAT_KEYS):
        samples[f"image_{key}"] = stats[:, j] if stats is not None else np.nan


def compute_embeddings(config: AuditConfig, table: SampleTable, progress: Progress):
    """Embeddings in sample order (NaN rows for unreadable samples), the embedder's description and counts, and
    the embedder itself (None for the user's own vectors), which object crops reuse.

    Every image is hashed (the content hash keys the cache, finds exact duplicates and tells what changed since
    the last run) and gets its pixel statistics, whatever the embedder.
    """
    from audit.embeddings import (
        DEFAULT_CACHE_DIR,
        EmbedderError,
        embed_samples,
        embedder_for_run,
        hash_files,
        load_precomputed,
        normalise_precomputed,
    )
    from audit.embeddings.local import default_workers, stats_for_files

    samples = table.samples
    cfg = config.embedder
    paths = samples["filepath"].astype(str).tolist()
    hashes = hash_files(paths, progress)
    samples["content_hash"] = [h or "" for h in hashes]
    if cfg.kind in ("none", "precomputed"):  # no decoding for embeddings: one pass for the pixel statistics
        workers = default_workers() if cfg.workers is None else cfg.workers
        _add_image_stats(samples, stats_for_files(paths, hashes, workers))
    if cfg.kind == "none":
        return None, {"kind": "none", "name": "no embeddings"}, {}, None
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
        return vectors, description, {"n_embedded": 0, "n_cached": 0}, None
    cache_root = cfg.cache_dir or DEFAULT_CACHE_DIR
    if cfg.engine == "ray":  # the images embedded on the cluster, into the same cache; object crops stay local
        from audit.embeddings import embed

        outcome, ray_description = embed(samples, cfg, progress=progress, hashes=hashes)
        embedder = (embedder_for_run(cfg, cache_root, use_cache=cfg.use_cache)
                    if table.objects is not None and len(table.objects) else None)
    else:
        ray_description = None
        embedder = embedder_for_run(cfg, cache_root, use_cache=cfg.use_cache)
        outcome = embed_samples(samples, embedder, cache_dir=cache_root, use_cache=cfg.use_cache,
                                batch_size=cfg.batch_size, workers=cfg.workers, progress=progress, hashes=hashes,
                                flush_seconds=cfg.flush_seconds)
    add_problems(samples, outcome.problems)
    _add_image_stats(samples, outcome.stats)
    samples["embedding_row"] = np.where(outcome.rows >= 0, np.arange(len(samples)), -1)
    full = np.full((len(samples), outcome.vectors.shape[1]), np.nan, dtype=np.float32)
    ok = outcome.rows >= 0
    full[ok] = outcome.vectors[outcome.rows[ok]]
    counts = {"n_embedded": outcome.n_embedded, "n_cached": outcome.n_cached,
              **{f"embed_{k}_s": round(v, 3) for k, v in outcome.timings.items()}}
    if ray_description is not None:
        description = ray_description
    else:
        description = {**embedder.describe(), "cache_key": embedder.cache_key, "engine": "local",
                       "model_loaded": outcome.model_loaded}
    return full, description, counts, embedder


def resolve_baseline(config: AuditConfig, key: str, created: str) -> tuple[RunResults | None, dict[str, Any] | None]:
    """The baseline run and what the summary records about it: a folder, ``auto`` (the latest earlier run of the
    same dataset in the output folder), or none."""
    if config.baseline is None:
        return None, None
    if str(config.baseline) == "auto":
        found = previous_run(config.output_dir, key, before=created)
        if found is None:
            return None, {"auto": True, "found": False, "note": NO_EARLIER_RUN}
        baseline = RunResults.load(found.path)
        return baseline, {"run_name": baseline.name, "path": str(baseline.path), "auto": True, "found": True}
    baseline = RunResults.load(config.baseline)
    return baseline, {"run_name": baseline.name, "path": str(baseline.path)}


def run(config: AuditConfig, progress: bool | Progress = True) -> RunResults:
    """Run every stage and write ``<output_dir>/<run_name>/``; returns the written results.

    ``progress``: True prints one line per stage on stderr (a bar on a terminal), False is silent; or a
    :class:`audit.progress.Progress` with its own verbosity.
    """
    from audit.checks import REGISTRY
    from audit.projection import project_with_reuse, save_model

    reporter = as_progress(progress)
    created = datetime.now(UTC)
    with reporter.stage("sources") as stage:
        table = load_source(config.source)
        stage.result = (f"{len(table.samples):,} samples, {len(table.class_names):,} classes"
                        + (f", {table.annotations['annotator'].nunique()} annotators"
                           if table.annotations is not None and len(table.annotations) else "")
                        + f" ({config.source.kind} {table.description.get('path') or table.description.get('name')})")
    if "mask" in table.samples.columns and table.objects is None:
        with reporter.stage("mask regions") as stage:
            table.objects = mask_regions_as_objects(table)
            stage.result = f"{len(table.objects):,} connected regions, audited as objects"
    samples = table.samples
    samples["content_hash"] = ""
    samples["embedding_row"] = -1
    class_names = table.class_names
    description = {"kind": config.source.kind, "path": table.description.get("path"),
                   "name": dataset_name(table)}
    key = dataset_key({"dataset": description})
    baseline, baseline_record = resolve_baseline(config, key, created.isoformat(timespec="seconds"))
    if baseline_record and baseline_record.get("auto"):
        reporter.line(f"baseline: {baseline_record['run_name']} (the latest earlier run of this dataset)"
                      if baseline_record["found"] else f"baseline: auto, but {NO_EARLIER_RUN}: rules that need "
                      "a baseline are skipped")
    # The previous run of this dataset: the baseline, else the latest earlier run in the output folder. Its map is
    # reused and its review ledger carried forward (reviewers' verdicts hold until the image or label changes).
    previous = baseline
    if previous is None:
        found = previous_run(config.output_dir, key, before=created.isoformat(timespec="seconds"))
        previous = RunResults.load(found.path) if found is not None else None
    ledger = _carried_ledger(previous)
    pred_probs, pred_probs_source = load_pred_probs(config, table)
    with reporter.stage("embeddings", f"{len(samples):,} images, embedder {config.embedder.kind}") as stage:
        embeddings, embedder_description, embed_stats, embedder = compute_embeddings(config, table, reporter)
        if embeddings is not None and "n_embedded" in embed_stats:
            embedded = embed_stats["n_embedded"]
            rate = embedded / embed_stats["embed_embed_s"] if embed_stats.get("embed_embed_s") else 0.0
            stage.result = (f"{embed_stats['n_cached']:,} from the cache, {embedded:,} embedded"
                            + (f" at {rate:,.1f} images/s" if embedded else "")
                            + ("" if embedder_description.get("model_loaded", True) else "; model not loaded")
                            + f" with {embedder_description.get('name')}")
        else:
            stage.result = str(embedder_description.get("name"))
    samples["umap_x"] = np.nan
    samples["umap_y"] = np.nan
    projection_settings: dict[str, Any] = {"method": None}
    model_to_save = None
    if embeddings is not None and config.projection.enabled:
        usable = np.isfinite(embeddings).all(axis=1)
        if usable.any():
            with reporter.stage("map", f"UMAP of {int(usable.sum()):,} images") as stage:
                projection, model_to_save = project_with_reuse(
                    embeddings[usable], samples.loc[usable, "content_hash"].astype(str).tolist(), config.projection,
                    previous, embedder_description.get("cache_key"))
                stage.result = str(projection.settings.get("note") or
                                   f"fitted ({projection.settings.get('not_reused', 'no previous map')})")
            samples.loc[usable, "umap_x"] = projection.points[:, 0]
            samples.loc[usable, "umap_y"] = projection.points[:, 1]
            projection_settings = projection.settings
    run_name = config.run_name or default_run_name(table)
    folder = Path(config.output_dir) / run_name  # checks of segmentation masks write mask files into it
    check_metrics: dict[str, Any] = {}
    prior = {}
    available = {"embeddings": embeddings is not None, "pred_probs": pred_probs is not None,
                 "annotations": table.annotations is not None and len(table.annotations) > 0,
                 "baseline": baseline is not None, "ledger": ledger is not None and len(ledger) > 0}
    for name, check_class in REGISTRY.items():
        if getattr(check_class, "level", "image") != "image":
            continue
        if name in config.disabled_checks:
            check_metrics[name] = {"skipped": "disabled in the config"}
            continue
        missing = [r for r in check_class.requires if not available[r]]
        if missing:
            check_metrics[name] = {"skipped": f"needs {', '.join(missing)}"}
            reporter.line(f"check {name}: skipped (needs {', '.join(missing)})")
            continue
        context = CheckContext(samples=samples, class_names=class_names, embeddings=embeddings,
                               pred_probs=pred_probs, annotations=table.annotations,
                               params=dict(config.checks.get(name, {})), baseline=baseline, prior=prior,
                               seed=config.seed, ledger=ledger,
                               extra={**_image_extra(table, config.mask_probs, folder),
                                      "embedder": embedder_description, "previous_run": previous})
        result = run_check(check_class, context, reporter)
        prior[name] = result
        samples = samples.join(result.samples)
        check_metrics[name] = result.metrics
    if pred_probs_source and "mistakes" in check_metrics and isinstance(check_metrics["mistakes"], dict):
        check_metrics["mistakes"]["pred_probs_source"] = pred_probs_source  # names the user's file or field
    objects_stage = None
    if table.objects is not None and len(table.objects):
        from audit.objects import audit_objects

        objects_stage = audit_objects(config, table, samples, embedder, embedder_description, previous, baseline,
                                      ledger, reporter)
    if (check_metrics.get("mask_mistakes") or {}).get("mode") == "regions":
        samples = _mask_findings_after_objects(samples, check_metrics, objects_stage, table, config, folder,
                                               reporter)
    problem_counts = Counter(c for text in samples["problems"] for c in str(text).split(";") if c)
    summary = {
        "run_name": run_name,
        "created_at": created.isoformat(timespec="seconds"),
        "dataset": {**description, "label_field": table.description.get("label_field"),
                    "label_from": table.description.get("label_from", "label"),
                    "annotations_key": table.description.get("annotations_key")},
        "counts": {"samples": len(samples), "readable": int(samples["readable"].sum()),
                   "unreadable": int((~samples["readable"]).sum()), "classes": len(class_names),
                   "with_problems": int((samples["problems"] != "").sum()), "problems": dict(problem_counts),
                   "annotators": int(table.annotations["annotator"].nunique()) if available["annotations"] else 0,
                   **embed_stats},
        "class_names": class_names,
        "embedder": embedder_description,
        "projection": projection_settings,
        "timings": reporter.timings,
        "versions": versions(),
        "config": config.model_dump(mode="json"),
        "baseline": baseline_record,
        "checks": check_metrics,
    }
    if objects_stage is not None:
        summary["objects"] = objects_stage.summary
    pred_probs_used = prior["mistakes"].arrays.get("pred_probs") if "mistakes" in prior else None
    with reporter.stage("write", f"run folder {folder}"):
        results = write_run(folder, samples, json_safe(summary), embeddings=embeddings, annotations=table.annotations,
                            pred_probs=pred_probs_used if pred_probs_used is not None else pred_probs,
                            objects=objects_stage.objects if objects_stage is not None else None,
                            object_embeddings=objects_stage.embeddings if objects_stage is not None else None)
        if objects_stage is not None and objects_stage.model is not None:
            save_model(objects_stage.model, results.path, name="object_projection.joblib")
        if model_to_save is not None:
            save_model(model_to_save, results.path)
        if ledger is not None and len(ledger):
            from audit.review import write_ledger

            write_ledger(results.path, ledger)
    if config.report:
        from audit.report import render_report

        with reporter.stage("report") as stage:
            html = render_report(results.path, baseline.path if baseline is not None else None)
            stage.result = str(html)
    _refresh_trends(config.output_dir, reporter)
    return RunResults.load(results.path)


def mask_regions_as_objects(table: SampleTable):
    """A segmentation dataset's connected regions (of the shipped masks and of every annotator's) as objects, so
    the object pipeline (crop embeddings -> cross-validated classifier -> cleanlab; agreement between annotators)
    audits each region as it audits a box."""
    import pandas as pd

    from audit.checks.mask_mistakes import region_objects
    from audit.sources.masks import spec_of

    spec = spec_of(table)
    frames = [region_objects(table.samples["mask"], spec)]
    annotators = table.mask_annotations
    if annotators is not None and len(annotators):
        for name, rows in annotators.groupby("annotator"):
            frames.append(region_objects(rows.set_index("sample_id")["mask_path"], spec, annotator=str(name)))
    return pd.concat(frames)


def _image_extra(table: SampleTable, mask_probs: Path | None = None, run_dir: Path | None = None) -> dict:
    """What image-level checks may need besides the samples: every object, and a segmentation dataset's masks,
    the user's per-pixel probabilities and the run folder (where mask checks write their mask files)."""
    extra: dict = {}
    if table.objects is not None:
        extra["objects"] = table.objects
    if "mask" in table.samples.columns:
        from audit.sources.masks import spec_of

        extra["mask_spec"] = spec_of(table)
        extra["mask_annotations"] = table.mask_annotations
        extra["mask_probs"] = mask_probs
        extra["run_dir"] = run_dir
    return extra


def _mask_findings_after_objects(samples, check_metrics: dict[str, Any], objects_stage, table: SampleTable,
                                 config: AuditConfig, folder: Path, reporter: Progress):
    """Segmentation without per-pixel probabilities: the mask_mistakes check judges each image by the object
    stage's verdicts on its regions (and the annotators' consensus), which exist only once that stage has run."""
    from audit.checks.mask_mistakes import MaskMistakesCheck, region_findings

    extra = {**_image_extra(table, config.mask_probs, folder),
             "objects": objects_stage.objects if objects_stage is not None else None}
    context = CheckContext(samples=samples, class_names=table.class_names,
                           params=dict(config.checks.get("mask_mistakes", {})), seed=config.seed, extra=extra)
    with reporter.stage("check mask_mistakes", "regions judged by the object stage") as stage:
        result, regions = region_findings(context)
        stage.result = MaskMistakesCheck.summary_line(result.metrics)
    validate_result(result, samples.index)
    check_metrics["mask_mistakes"] = result.metrics
    if regions is not None and objects_stage is not None:
        objects_stage.objects = objects_stage.objects.join(regions)
    return samples.join(result.samples)


def _carried_ledger(previous: RunResults | None):
    """The previous run's review ledger (reviewers' verdicts so far), or None."""
    if previous is None:
        return None
    from audit.review import LEDGER_FILE, read_ledger

    return read_ledger(previous.path) if (previous.path / LEDGER_FILE).is_file() else None


def _refresh_trends(output_dir: Path, reporter: Progress) -> None:
    """Rewrite ``<output_dir>/index.html``, the list of runs and their weekly trends."""
    from audit.report.trends import render_trends

    with reporter.stage("trends", level=2) as stage:
        stage.result = str(render_trends(output_dir))
