"""The object stage of a run (detection and instance-segmentation datasets): which boxes are audited, their crop
embeddings, the map of objects, and the object-level checks, all through the image machinery.

The audited objects are the dataset's shipped boxes (annotator ``""``); without them, the consensus of the
annotators (boxes kept by a majority, fused; :func:`audit.checks.object_agreement.object_agreement`); with a single
annotator, theirs. Each audited box is embedded as an image (its crop with a little context, the same embedder and
cache as the images, :func:`audit.embeddings.crops.embed_crops`), mapped with the same seeded UMAP (reusing last
week's object map like the image map), and audited by every registered check whose ``level`` is ``"object"``
(with a :class:`~audit.checks.base.CheckContext` whose "samples" are the audited objects). Every object, of every
annotator and detector, lands in ``objects.parquet``; the audited ones carry the checks' columns.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from audit.checks.base import CheckContext, run_check

if TYPE_CHECKING:
    from audit.config import AuditConfig
    from audit.progress import Progress
    from audit.results import RunResults
    from audit.sources import SampleTable

PREDICTIONS = "predictions"
CONSENSUS = "consensus"
OBJECT_MAP_FILE = "object_projection.joblib"


@dataclass
class ObjectStage:
    """What the object stage adds to a run: the object table, crop embeddings, the object map's model, metrics."""

    objects: pd.DataFrame
    embeddings: np.ndarray | None
    model: object | None
    summary: dict[str, Any] = field(default_factory=dict)


def audited_objects(objects: pd.DataFrame, agreement: Any | None) -> tuple[pd.DataFrame, str]:
    """The boxes the object checks audit and a line saying which they are."""
    humans = objects[objects["annotator"].astype(str) != PREDICTIONS]
    given = humans[humans["annotator"].astype(str) == ""]
    if len(given):
        return given, "the dataset's shipped boxes"
    if agreement is not None and len(agreement.consensus):
        consensus = agreement.consensus.copy()
        return consensus, f"the annotators' consensus boxes ({len(consensus):,}, kept by a majority)"
    return humans, f"the boxes of annotator {humans['annotator'].iloc[0]!r}" if len(humans) else "no boxes"


def _with_image_columns(items: pd.DataFrame, samples: pd.DataFrame) -> pd.DataFrame:
    """Object items with their image's file, split, readability and content hash (what crops and checks need)."""
    out = items.copy()
    for column in ("filepath", "split", "readable", "content_hash"):
        out[column] = samples[column].reindex(out["sample_id"].astype(str)).to_numpy() if column in samples else None
    out["readable"] = out["readable"].fillna(False).astype(bool) & ~out["problems"].fillna("").astype(str).str.contains(
        "zero_size|negative_size")
    return out


def audit_objects(config: AuditConfig, table: SampleTable, samples: pd.DataFrame, embedder: Any,
                  embedder_description: dict[str, Any], previous: RunResults | None, baseline: RunResults | None,
                  ledger: pd.DataFrame | None, reporter: Progress) -> ObjectStage:
    """Run the object stage (see the module docstring)."""
    from audit.checks import REGISTRY
    from audit.projection import project_with_reuse

    objects = table.objects.copy()
    objects["annotator"] = objects["annotator"].fillna("").astype(str)
    predictions = _load_predictions(config, table, samples)
    if predictions is not None:
        objects = pd.concat([objects, predictions])
    humans = objects[(objects["annotator"] != PREDICTIONS)]
    annotators = humans[humans["annotator"] != ""]
    agreement = None
    if annotators["annotator"].nunique() >= 2:
        from audit.checks.object_agreement import object_agreement

        with reporter.stage("object agreement", f"{len(annotators):,} boxes of "
                            f"{annotators['annotator'].nunique()} annotators") as stage:
            coverage = table.description.get("object_coverage")
            if isinstance(coverage, pd.DataFrame):  # who saw which image, among the annotators compared here
                coverage = coverage[coverage["annotator"].astype(str).isin(set(annotators["annotator"]))]
            else:
                coverage = None
            agreement = object_agreement(annotators, coverage=coverage)
            stage.result = f"{agreement.metrics.get('n_consensus', 0):,} consensus boxes"
    items, which = audited_objects(objects, agreement)
    if agreement is not None:  # consensus boxes are objects of their own (audited when nobody shipped labels)
        consensus = agreement.consensus.drop(columns=["support", "members"], errors="ignore")
        objects = pd.concat([objects, consensus.loc[~consensus.index.isin(objects.index)]])
    items = _with_image_columns(items, samples)
    reporter.line(f"objects: auditing {len(items):,} boxes: {which}")

    vectors = None
    counts: dict[str, Any] = {"objects": len(objects), "audited": len(items),
                              "annotators": int(annotators["annotator"].nunique()),
                              "predictions": int((objects["annotator"] == PREDICTIONS).sum())}
    crops: dict[str, tuple[pd.DataFrame, np.ndarray]] = {}
    object_checks = {n: c for n, c in REGISTRY.items() if getattr(c, "level", "image") == "object"
                     and n not in config.disabled_checks}
    if embedder is not None:
        from audit.embeddings.crops import embed_crops

        extra = {}
        for name, check in object_checks.items():
            boxes = check.extra_crops(items, samples, config.seed)
            if boxes is not None and len(boxes):
                extra[name] = _with_image_columns(boxes.assign(problems=""), samples)
        all_boxes = pd.concat([items[["filepath", "content_hash", "x", "y", "w", "h"]],
                               *[b[["filepath", "content_hash", "x", "y", "w", "h"]] for b in extra.values()]],
                              ignore_index=True)
        cfg = config.embedder
        with reporter.stage("object crops", f"{len(all_boxes):,} crops ({len(items):,} boxes + "
                            f"{len(all_boxes) - len(items):,} training examples)") as stage:
            outcome = embed_crops(all_boxes, embedder, cache_dir=cfg.cache_dir, use_cache=cfg.use_cache,
                                  batch_size=cfg.batch_size, workers=cfg.workers, progress=reporter,
                                  flush_seconds=cfg.flush_seconds)
            stage.result = f"{outcome.n_cached:,} from the cache, {outcome.n_embedded:,} embedded"
        vectors = outcome.vectors[: len(items)]
        start = len(items)
        for name, boxes in extra.items():
            crops[name] = (boxes, outcome.vectors[start:start + len(boxes)])
            start += len(boxes)
        counts.update(n_cached=outcome.n_cached, n_embedded=outcome.n_embedded)
        items["crop_key"] = outcome.keys[: len(items)]

    objects["audited"] = objects.index.isin(items.index)
    objects["umap_x"] = np.nan
    objects["umap_y"] = np.nan
    objects["embedding_row"] = -1
    projection_settings: dict[str, Any] = {"method": None}
    model = None
    if vectors is not None and config.projection.enabled:
        usable = np.isfinite(vectors).all(axis=1)
        if usable.sum() >= 2:
            previous_objects = previous.objects if previous is not None else None
            if previous_objects is not None and "crop_key" in previous_objects:
                previous_objects = previous_objects.assign(content_hash=previous_objects["crop_key"])
            previous_view = _ObjectMapView(previous) if previous is not None else None
            with reporter.stage("object map", f"UMAP of {int(usable.sum()):,} boxes") as stage:
                projection, model = project_with_reuse(
                    vectors[usable], items.loc[usable, "crop_key"].astype(str).tolist(), config.projection,
                    previous_view, embedder_description.get("cache_key"), model_file=OBJECT_MAP_FILE,
                    previous_points=previous_objects)
                stage.result = str(projection.settings.get("note") or "fitted")
            ids = items.index[usable]
            objects.loc[ids, "umap_x"] = projection.points[:, 0]
            objects.loc[ids, "umap_y"] = projection.points[:, 1]
            items.loc[ids, "umap_x"] = projection.points[:, 0]
            items.loc[ids, "umap_y"] = projection.points[:, 1]
            projection_settings = projection.settings
        objects.loc[items.index, "embedding_row"] = np.where(usable, np.arange(len(items)), -1)
        objects.loc[items.index, "crop_key"] = items["crop_key"]

    class_names = sorted(set(items["label"].dropna().astype(str)))
    available = {"embeddings": vectors is not None, "pred_probs": False, "annotations": False,
                 "baseline": baseline is not None, "ledger": ledger is not None and len(ledger) > 0,
                 "object_annotators": agreement is not None, "object_predictions": predictions is not None}
    metrics: dict[str, Any] = {}
    prior: dict[str, Any] = {}
    for name, check_class in object_checks.items():
        missing = [r for r in check_class.requires if not available.get(r, False)]
        if missing:
            metrics[name] = {"skipped": f"needs {', '.join(missing)}"}
            reporter.line(f"check {name}: skipped (needs {', '.join(missing)})")
            continue
        context = CheckContext(samples=items, class_names=class_names, embeddings=vectors,
                               params=dict(config.checks.get(name, {})), baseline=baseline, prior=prior,
                               seed=config.seed, ledger=ledger,
                               extra={"objects": objects, "images": samples, "agreement": agreement, "crops": crops})
        result = run_check(check_class, context, reporter)
        prior[name] = result
        objects = objects.join(result.samples)
        if result.others is not None:
            objects = objects.join(result.others.reindex(objects.index), rsuffix="_other")
        metrics[name] = result.metrics
    summary = {"counts": counts, "class_names": class_names, "audited": which, "projection": projection_settings,
               "checks": metrics}
    return ObjectStage(objects=objects, embeddings=vectors, model=model, summary=summary)


class _ObjectMapView:
    """The previous run seen through its object map (summary keys the projection reuse looks at)."""

    def __init__(self, run: RunResults) -> None:
        self.path, self.name = run.path, run.name
        objects_summary = run.summary.get("objects") or {}
        self.summary = {"projection": objects_summary.get("projection") or {}, "embedder": run.summary.get("embedder")}


def _load_predictions(config: AuditConfig, table: SampleTable, samples: pd.DataFrame) -> pd.DataFrame | None:
    """A detector's boxes with scores (a COCO results file, or a FiftyOne Detections field), annotator
    ``predictions``; None when the config names none."""
    source = config.object_predictions
    if source.path is None and source.field is None:
        return None
    class_names = sorted(set(table.objects["label"].dropna().astype(str)))
    if source.path is not None:
        from audit.sources.coco import load_object_predictions

        ground_truth = config.source.path if config.source.kind == "coco" else None
        found = load_object_predictions(source.path, samples, class_names, ground_truth=ground_truth)
    else:
        from audit.sources.fiftyone_dataset import load_fiftyone_object_predictions

        found = load_fiftyone_object_predictions(config.source.dataset, source.field, samples)
    found = found.copy()
    found["annotator"] = PREDICTIONS
    return found
