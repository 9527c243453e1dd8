"""Object detection benchmark (issue 11): box-error detection against cleanlab ObjectLab and FiftyOne Brain, crop
embedding speed, and the object stage at 10k images / 100k objects.

1. **Quality.** The detection demo (:mod:`audit.demos.detection`: real digit scans on real grass photos, exact
   boxes, ``round(r x n)`` errors of each kind at rate ``r`` = 5%, 10% and 20%, three annotators with 2/5/10%)
   is audited by the pipeline itself, :func:`audit.demos.detection.run_detection_demo` (``label-audit run``
   with the pixels embedder: CLIP weights cannot be downloaded here), once without predictions (crops +
   annotators) and once per prediction source. Each run writes the detector's boxes to ``predictions.json``;
   the peers get exactly those boxes (read back from that file) and the same shipped labels:

   * **cleanlab ObjectLab** (``cleanlab.object_detection``, defaults, through
     :func:`audit.checks.object_detection.object_label_quality`): per box, its swap score (wrong class), badloc
     score (location) and, per predicted box, its overlooked score (missing), with cleanlab's own per-box flag
     rule; and per image, ``get_label_quality_scores`` / ``find_label_issues`` (every box of an image shares
     its score and flag);
   * **FiftyOne Brain** ``compute_mistakenness(dataset, "predictions", label_field="ground_truth")`` on a real
     FiftyOne dataset (its MongoDB) with ``Detections`` fields, defaults (confidence, not logits): per label
     box ``mistakenness`` (wrong class; flagged here above 0.5, which by its formula is "the matched prediction
     has another class") and ``mistakenness_loc`` (location; above 0.5 is "matched at IoU < 0.75"),
     ``possible_spurious`` on label boxes and ``possible_missing`` on predicted boxes (FiftyOne's own flags,
     scored by the flag alone: it gives no score for them). A detector's output in FiftyOne is one
     detection per box: a box the classifier source lists once per class is given with its top class.

   Findings are scored per error kind with :func:`audit.demos.detection.evaluate_findings`; a method that says
   nothing about a kind gets "—", not 0.

2. **Speed.** Objects per second through :func:`audit.embeddings.crops.embed_crops` against images per second
   through :func:`audit.embeddings.embed_samples`, on the same JPEG photos (:func:`benchmarks.speed.make_photos`)
   with :data:`BOXES_PER_PHOTO` boxes each, same embedder, cold cache, content hashes given to both (a run
   hashes each image once).

3. **Scale.** The object stage after embedding at 1k / 10k images (10 boxes each: 10k / 100k audited boxes,
   three annotators who drew ~300k more) on synthetic boxes and synthetic 512-d crop embeddings, each size in
   a fresh process (honest peak memory): time and peak resident memory of each step.

``python -m benchmarks`` runs this as its ``objects`` part; ``python -m benchmarks.objects [--quick]`` runs it
alone (``objects.json`` / ``objects.md``); ``--scale-images N --out F`` is one scale size (the subprocess).
"""

from __future__ import annotations

import argparse
import contextlib
import inspect
import json
import math
import os
import subprocess
import sys
import tempfile
import time
import uuid
import warnings
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

RESULTS = Path(__file__).parent / "results"
ERROR_KINDS = ("wrong_class", "location", "missing", "spurious", "duplicate")
LA_NONE = "label-audit, no predictions (crops + annotators)"
LA_PRED = "label-audit with predictions (the run)"
LA_EVIDENCE = "label-audit, predictions only (same inputs as the peers)"
CLEANLAB_BOX = "cleanlab ObjectLab, per box"
CLEANLAB_IMAGE = "cleanlab ObjectLab, per image"
FIFTYONE = "FiftyOne compute_mistakenness"
PEERS = (CLEANLAB_BOX, CLEANLAB_IMAGE, FIFTYONE)
SOURCES = ("classifier", "simulated")
FULL = {"n_images": 300, "noise_levels": [0.05, 0.10, 0.20], "speed_images": 256, "speed_model": "ViT-B-32",
        "scale_images": [1_000, 10_000]}
# The quick form (CI, through tests/benchmarks/test_bench_quick.py) shows every piece runs on a few dozen images.
QUICK = {"n_images": 36, "noise_levels": [0.10], "speed_images": 12, "speed_model": "label-audit-bench-tiny",
         "scale_images": [60]}
SPEED_CHUNK = 32  # images per paired chunk of the speed part
ACCEPTANCE_NOISE = 0.10
BOXES_PER_PHOTO = 7
SCALE_OBJECTS_PER_IMAGE = 10
SCALE_IMAGE_SIZE = (640, 480)
SCALE_DIM = 512
SCALE_CLASSES = 10
SCALE_GIVEN_RATE = 0.05  # per error kind, shipped boxes
SCALE_ANNOTATOR_RATES = {"ann_a": 0.02, "ann_b": 0.05, "ann_c": 0.10}
GIB = 2**30


# ------------------------------------------------------------------------------------------------ quality


def prediction_sources() -> dict[str, str]:
    """How each prediction source is made, in words (the simulated rates read from the function's defaults)."""
    from audit.demos.detection import simulate_predictions

    p = {k: v.default for k, v in inspect.signature(simulate_predictions).parameters.items()
         if v.default is not inspect.Parameter.empty}
    return {
        "classifier": (
            "classifier_predictions: a crop classifier trained out of fold by image (5 folds: no model saw the "
            "labels of the image it predicts). Boxes: connected components of the bright pixels (>= 128, merged "
            "by a 2-px dilation), from the pixels alone. Class probabilities: logistic regression (C=0.1) + "
            "distance-weighted 10-NN on 8x8 grey crops, trained on the shipped (noisy) boxes plus two background "
            "windows per image; one prediction per box and class with probability >= 0.02 (score = that "
            "probability)."),
        "simulated": (
            f"simulate_predictions: from the truth; each true object is missed with probability "
            f"{p['miss_rate']:g}, else its box corners move by N(0, {p['jitter']:g} x side) and its class is "
            f"swapped to another digit with probability {p['confusion_rate']:g}; confidence Beta(40, 1) (mean "
            f"0.976) for every detection; round({p['false_positive_rate']:g} x n) false positives (12-30 x 20-40 "
            f"px, random class, anywhere on a random image, may overlap objects) with confidence U(0.3, 0.99)."),
    }


def load_demo(root: Path) -> Any:
    """The shipped labels, errors and images a ``run_detection_demo`` wrote under ``root`` (given.json,
    errors.csv, samples.csv), as a :class:`audit.demos.detection.DetectionDemo` without truth or annotators."""
    from audit.demos.detection import DetectionDemo
    from audit.geometry import build_object_table

    samples = pd.read_csv(root / "samples.csv", index_col="sample_id")
    samples.index = samples.index.astype(str)
    coco = json.loads((root / "given.json").read_text(encoding="utf-8"))
    files = {image["id"]: Path(image["file_name"]).stem for image in coco["images"]}
    names = {c["id"]: c["name"] for c in coco["categories"]}
    given = build_object_table([
        {"object_id": a["object_id"], "sample_id": files[a["image_id"]], "label": names[a["category_id"]],
         "x": a["bbox"][0], "y": a["bbox"][1], "w": a["bbox"][2], "h": a["bbox"][3],
         "image_width": int(samples.loc[files[a["image_id"]], "width"]),
         "image_height": int(samples.loc[files[a["image_id"]], "height"]), "mask": a["segmentation"]["counts"],
         "source": f"given.json annotation id {a['id']}"} for a in coco["annotations"]])
    errors = pd.read_csv(root / "errors.csv", dtype={"object_id": object, "true_object_id": object,
                                                     "related_object_id": object, "sample_id": str})
    return DetectionDemo(root=root, samples=samples, truth=given.iloc[:0], given=given,
                         annotations=given.iloc[:0], errors=errors, rates={})


def load_predictions(path: Path, samples: pd.DataFrame) -> pd.DataFrame:
    """A COCO results file written by :func:`audit.demos.detection.write_coco_results` as an object table (image
    ``n`` is the ``n``-th sample, category ``k`` is digit ``k - 1``)."""
    from audit.geometry import build_object_table

    ids = list(samples.index)
    rows = [{"object_id": f"pred:{n:06d}", "sample_id": ids[r["image_id"] - 1], "label": str(r["category_id"] - 1),
             "x": r["bbox"][0], "y": r["bbox"][1], "w": r["bbox"][2], "h": r["bbox"][3],
             "image_width": int(samples["width"].iloc[r["image_id"] - 1]),
             "image_height": int(samples["height"].iloc[r["image_id"] - 1]), "score": r["score"],
             "annotator": "predictions", "source": f"predictions.json result {n}"}
            for n, r in enumerate(json.loads(path.read_text(encoding="utf-8")))]
    return build_object_table(rows)


def _number(value: Any) -> float | None:
    return None if value is None or not math.isfinite(float(value)) else float(value)


def scored(per_kind: pd.DataFrame, flags: Sequence[str] = ERROR_KINDS, scores: Sequence[str] = ERROR_KINDS,
           score_from_flag: Sequence[str] = ()) -> dict[str, dict[str, Any] | None]:
    """JSON-safe metrics per error kind from :func:`evaluate_findings`' table; None for a kind the method says
    nothing about; flag metrics None where it gives no flag, AP None where it gives no score."""
    out: dict[str, dict[str, Any] | None] = {}
    for kind in ERROR_KINDS:
        if kind not in flags and kind not in scores:
            out[kind] = None
            continue
        row = per_kind.loc[kind]
        has_flag = kind in flags
        ap = _number(row["average_precision"])
        if ap is None and kind in scores and int(row["n_errors"]) > 0:
            ap = 0.0  # the method speaks of this kind but put no candidate forward: no error is ever reached
        out[kind] = {
            "n_errors": int(row["n_errors"]),
            "n_flagged": int(row["n_flagged"]) if has_flag else None,
            "precision": _number(row["precision"]) if has_flag else None,
            "recall": _number(row["recall"]) if has_flag else None,
            "f1": _number(row["f1"]) if has_flag else None,
            "average_precision": ap if kind in scores else None,
            "ap_from_flag": kind in score_from_flag,
        }
    return out


def cleanlab_findings(labels: pd.DataFrame, predictions: pd.DataFrame, sample_ids: list[str],
                      ) -> tuple[pd.DataFrame, pd.DataFrame, dict[str, Any]]:
    """ObjectLab's per-box subtype scores and flags (swap -> wrong class, badloc -> location, overlooked ->
    missing), and its per-image quality and flag given to every box of the image (every kind on label boxes)."""
    from audit.checks.object_detection import PREFIX, object_label_quality
    from audit.demos.detection import CLASSES

    result = object_label_quality(labels, predictions, class_names=CLASSES, sample_ids=sample_ids)
    per, over = result.labels, result.overlooked
    per_box = pd.concat([
        pd.DataFrame({"kind": "wrong_class", "object_id": per.index, "score": 1 - per[f"{PREFIX}swap_score"],
                      "is_issue": per[f"{PREFIX}is_swap_issue"]}),
        pd.DataFrame({"kind": "location", "object_id": per.index, "score": 1 - per[f"{PREFIX}badloc_score"],
                      "is_issue": per[f"{PREFIX}is_badloc_issue"]}),
        pd.DataFrame({"kind": "missing", "object_id": None, "sample_id": over["sample_id"], "x": over["x"],
                      "y": over["y"], "w": over["w"], "h": over["h"],
                      "score": 1 - over[f"{PREFIX}overlooked_score"],
                      "is_issue": over[f"{PREFIX}is_overlooked_issue"]}),
    ], ignore_index=True)
    images = result.images.reindex(labels["sample_id"].astype(str).to_numpy())
    image_score = 1 - images[f"{PREFIX}label_quality"].to_numpy(float)
    image_flag = images[f"{PREFIX}is_issue"].fillna(False).to_numpy(bool)
    per_image = pd.concat([pd.DataFrame({"kind": kind, "object_id": labels.index, "score": image_score,
                                         "is_issue": image_flag}) for kind in ERROR_KINDS if kind != "missing"],
                          ignore_index=True)
    return per_box, per_image, result.metrics


def fiftyone_findings(labels: pd.DataFrame, predictions: pd.DataFrame, samples: pd.DataFrame) -> pd.DataFrame:
    """``compute_mistakenness`` on a temporary FiftyOne dataset (a real MongoDB), deleted afterwards."""
    os.environ.setdefault("FIFTYONE_DO_NOT_TRACK", "true")
    import fiftyone as fo
    import fiftyone.brain as fob

    top = predictions.sort_values("score", ascending=False, kind="stable").drop_duplicates(
        ["sample_id", "x", "y", "w", "h"])
    by_image = {"labels": dict(tuple(labels.groupby("sample_id"))),
                "predictions": dict(tuple(top.groupby("sample_id")))}

    def detections(table: pd.DataFrame | None, width: float, height: float, confident: bool) -> Any:
        if table is None:
            return fo.Detections(detections=[])
        return fo.Detections(detections=[
            fo.Detection(label=str(r.label), bounding_box=[r.x / width, r.y / height, r.w / width, r.h / height],
                         audit_id=str(object_id), **({"confidence": float(r.score)} if confident else {}))
            for object_id, r in zip(table.index, table.itertuples(), strict=True)])

    dataset = fo.Dataset(f"label-audit-objects-{uuid.uuid4().hex[:12]}")
    try:
        dataset.add_samples([
            fo.Sample(filepath=str(r.filepath),
                      ground_truth=detections(by_image["labels"].get(sample_id), r.width, r.height, False),
                      predictions=detections(by_image["predictions"].get(sample_id), r.width, r.height, True))
            for sample_id, r in zip(samples.index, samples.itertuples(), strict=True)], progress=False)
        fob.compute_mistakenness(dataset, "predictions", label_field="ground_truth", progress=False)

        def flat(path: str) -> list:
            return [v for image in dataset.values(path) for v in (image or [])]

        label_ids = flat("ground_truth.detections.audit_id")
        mistakenness = np.array([np.nan if v is None else v for v in flat("ground_truth.detections.mistakenness")],
                                float)
        loc = np.array([np.nan if v is None else v for v in flat("ground_truth.detections.mistakenness_loc")], float)
        spurious = np.array([bool(v) for v in flat("ground_truth.detections.possible_spurious")], bool)
        pred_ids = flat("predictions.detections.audit_id")
        missing = np.array([bool(v) for v in flat("predictions.detections.possible_missing")], bool)
    finally:
        dataset.delete()
    places = top.loc[np.asarray(pred_ids, dtype=object)[missing]]
    return pd.concat([
        pd.DataFrame({"kind": "wrong_class", "object_id": label_ids, "score": mistakenness,
                      "is_issue": mistakenness > 0.5}),
        pd.DataFrame({"kind": "location", "object_id": label_ids, "score": loc, "is_issue": loc > 0.5}),
        pd.DataFrame({"kind": "spurious", "object_id": label_ids, "score": spurious.astype(float),
                      "is_issue": spurious}),
        pd.DataFrame({"kind": "missing", "object_id": None, "sample_id": places["sample_id"], "x": places["x"],
                      "y": places["y"], "w": places["w"], "h": places["h"], "score": 1.0, "is_issue": True}),
    ], ignore_index=True)


def _cross_kind(findings: pd.DataFrame, errors: pd.DataFrame, flagged_as: str, kinds: Sequence[str]) -> dict:
    """Recall of one kind's flags on the errors of other kinds (e.g. FiftyOne's ``possible_spurious`` on
    duplicates and badly located boxes: boxes its one-to-one matching leaves unmatched)."""
    from audit.demos.detection import GIVEN, evaluate_findings

    own = findings[findings["kind"] == flagged_as]
    out = {}
    for kind in kinds:
        table = evaluate_findings(own.assign(kind=kind), errors, GIVEN)
        out[kind] = _number(table.loc[kind, "recall"])
    return out


def verdict(methods: dict[str, Any], metric: str = "average_precision", ours: str = LA_PRED) -> dict[str, Any]:
    """Per error kind: label-audit's ``metric`` (row ``ours``: the run with predictions, or its prediction evidence
    alone) against the best peer's (peers that give it for that kind). The acceptance criterion is the run's AP;
    F1 (the flags) and the evidence row are reported beside it."""
    mine_all = methods[ours]
    behind, ahead = {}, {}
    for kind in ERROR_KINDS:
        mine = (mine_all.get(kind) or {}).get(metric)
        peers = {p: (methods[p].get(kind) or {}).get(metric) for p in PEERS if p in methods}
        peers = {p: v for p, v in peers.items() if v is not None}
        if mine is None or not peers:
            continue
        best = max(peers, key=lambda p: peers[p])
        gap = peers[best] - mine
        (behind if gap > 1e-9 else ahead)[kind] = {"peer": best, "peer_value": peers[best], "value": mine,
                                                   "gap": gap}
    return {"metric": metric, "row": ours, "behind": behind, "best_or_equal": ahead,
            "all_best_or_equal": not behind}


def quality_setting(work: Path, n_images: int, noise: float, seed: int = 0, with_fiftyone: bool = True,
                    sources: Sequence[str] = SOURCES, log: Callable[[str], None] = print) -> dict[str, Any]:
    """One noise level: label-audit runs (without predictions, and per source) and the peers on the same
    labels and predictions."""
    from audit.demos.detection import GIVEN, evaluate_findings, findings_from_predictions, run_detection_demo

    tag = f"{round(noise * 100):02d}"
    runs, cache = work / "runs", work / "cache"

    def audit(predictions: str) -> tuple[Any, float]:
        started = time.perf_counter()
        outcome = run_detection_demo(runs, n_images=n_images, error_rate=noise, embedder="pixels",
                                     predictions=predictions, run_name=f"{predictions}-{tag}", seed=seed,
                                     report=False, cache_dir=cache, progress=False)
        return outcome, time.perf_counter() - started

    log(f"objects: {noise:.0%} per kind, label-audit without predictions ...")
    none, none_seconds = audit("none")
    demo = load_demo(runs / f"none-{tag}-data")
    errors = demo.errors
    given_errors = errors[errors["label_set"] == GIVEN]
    setting: dict[str, Any] = {
        "noise": noise, "n_images": len(demo.samples), "n_given_boxes": len(demo.given),
        "n_errors": {k: int((given_errors["kind"] == k).sum()) for k in ERROR_KINDS},
        "embedder": none.embedder, "sources": {},
    }
    no_predictions = {**scored(none.per_kind), "seconds": none_seconds}
    sample_ids = [str(s) for s in demo.samples.index]
    for source in sources:
        log(f"objects: {noise:.0%} per kind, {source} predictions: label-audit, cleanlab, FiftyOne ...")
        outcome, seconds = audit(source)
        root = runs / f"{source}-{tag}-data"
        same = load_demo(root).given
        if not (same.index.equals(demo.given.index) and np.array_equal(
                same[["x", "y", "w", "h"]].to_numpy(), demo.given[["x", "y", "w", "h"]].to_numpy())):
            raise RuntimeError(f"the {source} run's shipped labels differ from the run without predictions")
        predictions = load_predictions(root / "predictions.json", demo.samples)
        methods: dict[str, Any] = {LA_NONE: no_predictions, LA_PRED: {**scored(outcome.per_kind), "seconds": seconds}}
        started = time.perf_counter()
        evidence = findings_from_predictions(demo.given, predictions, sample_ids)[0]["evidence"]
        methods[LA_EVIDENCE] = {**scored(evaluate_findings(evidence, errors, GIVEN)),
                                "seconds": time.perf_counter() - started}
        started = time.perf_counter()
        per_box, per_image, cleanlab_metrics = cleanlab_findings(demo.given, predictions, sample_ids)
        cleanlab_seconds = time.perf_counter() - started
        methods[CLEANLAB_BOX] = {**scored(evaluate_findings(per_box, errors, GIVEN),
                                          flags=("wrong_class", "location", "missing"),
                                          scores=("wrong_class", "location", "missing")),
                                 "seconds": cleanlab_seconds}
        image_kinds = tuple(k for k in ERROR_KINDS if k != "missing")
        methods[CLEANLAB_IMAGE] = {**scored(evaluate_findings(per_image, errors, GIVEN), flags=image_kinds,
                                            scores=image_kinds), "seconds": cleanlab_seconds}
        cross = {}
        if with_fiftyone:
            started = time.perf_counter()
            found = fiftyone_findings(demo.given, predictions, demo.samples)
            methods[FIFTYONE] = {**scored(evaluate_findings(found, errors, GIVEN),
                                          flags=("wrong_class", "location", "missing", "spurious"),
                                          scores=("wrong_class", "location", "missing", "spurious"),
                                          score_from_flag=("missing", "spurious")),
                                 "seconds": time.perf_counter() - started}
            cross["FiftyOne possible_spurious, recall on"] = _cross_kind(found, errors, "spurious",
                                                                         ("duplicate", "location"))
        top = predictions.groupby(["sample_id", "x", "y", "w", "h"])["score"].max()
        setting["sources"][source] = {
            "n_predictions": len(predictions), "n_predicted_boxes": len(top),
            "share_of_boxes_top_confidence_over_0.95": float((top > 0.95).mean()),
            "cleanlab": {k: v for k, v in cleanlab_metrics.items() if k != "method"},
            "methods": methods, "cross_kind": cross, "verdict": verdict(methods),
            "verdict_f1": verdict(methods, "f1"),
            "verdict_evidence": verdict(methods, ours=LA_EVIDENCE),
            "verdict_evidence_f1": verdict(methods, "f1", ours=LA_EVIDENCE),
        }
    return setting


# ------------------------------------------------------------------------------------------------ speed


def photo_boxes(samples: pd.DataFrame, per_photo: int = BOXES_PER_PHOTO, seed: int = 0) -> pd.DataFrame:
    """``per_photo`` boxes per photo, sides 10-60% of the photo's, anywhere in it (no pixel work needed)."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    rows = []
    for sample_id, path in samples["filepath"].items():
        with Image.open(path) as image:
            width, height = image.size
        for _ in range(per_photo):
            w, h = rng.uniform(0.1, 0.6) * width, rng.uniform(0.1, 0.6) * height
            rows.append({"sample_id": sample_id, "filepath": path, "x": rng.uniform(0, width - w),
                         "y": rng.uniform(0, height - h), "w": w, "h": h})
    return pd.DataFrame(rows)


def run_crop_speed(work: Path, n_images: int, model: str, chunk: int = SPEED_CHUNK, seed: int = 0) -> dict[str, Any]:
    """Objects per second through the crop path against images per second through the image path (see the
    module docstring), measured in turns on chunks of ``chunk`` images: the chunk's images through
    ``embed_samples``, then its boxes through ``embed_crops``, each with a fresh cache. On a shared machine the
    speed of a core changed 4x within minutes here; pairing every chunk keeps both paths under the same load, and
    the per-chunk ratios show how steady that was."""
    import open_clip
    import torch

    from audit.embeddings import clip_embedder, embed_samples
    from audit.embeddings.crops import embed_crops
    from audit.embeddings.local import hash_files
    from benchmarks.speed import BATCH, TINY_MODEL, WEIGHTS_LABEL, make_photos, register_tiny_model

    samples = make_photos(work / "photos", n_images, seed)
    boxes = photo_boxes(samples, seed=seed)
    if model == TINY_MODEL:
        register_tiny_model(work / "model")
    torch.manual_seed(seed)
    net, _, preprocess = open_clip.create_model_and_transforms(model, pretrained=None)
    identity = {"model": model, "pretrained": None, "checkpoint": None, "weights": WEIGHTS_LABEL, "seed": seed}
    embedder = clip_embedder(net.visual, preprocess, name=f"open_clip {model} / {WEIGHTS_LABEL}", identity=identity,
                             device="cpu", note=WEIGHTS_LABEL)
    del net
    from PIL import Image

    first = [embedder.preprocess(Image.open(p).convert("RGB")) for p in samples["filepath"][:BATCH]]
    embedder.forward(np.stack(first))  # kernels are chosen on first use
    hashes = hash_files(samples["filepath"].tolist())
    samples["content_hash"] = hashes
    boxes["content_hash"] = samples["content_hash"].reindex(boxes["sample_id"]).to_numpy()
    chunks = []
    for n, start in enumerate(range(0, n_images, chunk)):
        images = samples.iloc[start:start + chunk]
        own = boxes[boxes["sample_id"].isin(images.index)]
        started = time.perf_counter()
        outcome = embed_samples(images.drop(columns="content_hash"), embedder, cache_dir=work / f"images-{n}",
                                progress=False, hashes=images["content_hash"].tolist())
        image_seconds = time.perf_counter() - started
        started = time.perf_counter()
        crops = embed_crops(own, embedder, cache_dir=work / f"crops-{n}", progress=False)
        crop_seconds = time.perf_counter() - started
        assert outcome.n_embedded == len(images) and crops.n_embedded == len(own) and np.isfinite(crops.vectors).all()
        chunks.append({"images": len(images), "objects": len(own), "image_seconds": image_seconds,
                       "crop_seconds": crop_seconds,
                       "ratio": (len(own) / crop_seconds) / (len(images) / image_seconds)})
    image_seconds = sum(c["image_seconds"] for c in chunks)
    crop_seconds = sum(c["crop_seconds"] for c in chunks)
    ratios = [c["ratio"] for c in chunks]
    return {
        "model": f"open_clip {model}, {WEIGHTS_LABEL}", "precision": embedder.identity["precision"],
        "images": f"{n_images} JPEG photos (benchmarks.speed.make_photos), {BOXES_PER_PHOTO} boxes each (sides "
                  "10-60% of the photo's)", "n_images": n_images, "n_objects": len(boxes),
        "torch_threads": torch.get_num_threads(), "chunk_images": chunk, "n_chunks": len(chunks),
        "images_per_s": n_images / image_seconds, "objects_per_s": len(boxes) / crop_seconds,
        "objects_per_s_over_images_per_s": (len(boxes) / crop_seconds) / (n_images / image_seconds),
        "chunk_ratio": {"min": min(ratios), "median": float(np.median(ratios)), "max": max(ratios)},
        "seconds": {"images": image_seconds, "crops": crop_seconds}, "chunks": chunks,
    }


# ------------------------------------------------------------------------------------------------ scale


def synthetic_objects(n_images: int, seed: int = 0) -> dict[str, Any]:
    """Images, shipped boxes, three annotators' boxes and 512-d crop embeddings, all synthetic (no pixels).

    Each 640x480 image holds :data:`SCALE_OBJECTS_PER_IMAGE` boxes, one per cell of a 4 x 3 grid (sides 30-90%
    of a cell), of 10 classes. The shipped boxes have 5% errors of each kind (wrong class, shifted by half
    their size, missing, duplicate, spurious); each annotator jitters every corner by N(0, 2 px) and makes
    2/5/10% wrong-class, missing and spurious errors. A crop embedding is its class centre plus noise (a box on
    background: a background centre; a shifted box: halfway), L2-normalised.
    """
    from audit.geometry import build_object_table

    rng = np.random.default_rng(seed)
    width, height = SCALE_IMAGE_SIZE
    cols, rows_ = 4, 3
    cell_w, cell_h = width / cols, height / rows_
    per = SCALE_OBJECTS_PER_IMAGE
    cells = np.argsort(rng.random((n_images, cols * rows_)), axis=1)[:, :per].ravel()
    image = np.repeat(np.arange(n_images), per)
    n = len(image)
    w, h = rng.uniform(0.3, 0.9, n) * cell_w, rng.uniform(0.3, 0.9, n) * cell_h
    x = (cells % cols) * cell_w + rng.uniform(0, 1, n) * (cell_w - w)
    y = (cells // cols) * cell_h + rng.uniform(0, 1, n) * (cell_h - h)
    label = rng.integers(0, SCALE_CLASSES, n)
    sample_ids = np.array([f"img-{i:06d}" for i in range(n_images)], dtype=object)
    images = pd.DataFrame({"filepath": [f"/data/{s}.jpg" for s in sample_ids], "split": "all", "readable": True,
                           "content_hash": [f"hash-{s}" for s in sample_ids], "image_width": width,
                           "image_height": height}, index=pd.Index(sample_ids, name="sample_id"))
    centres = rng.normal(size=(SCALE_CLASSES + 1, SCALE_DIM)).astype(np.float32)  # the last: background

    def records(name: str, rate: float, jitter: float, kinds: Sequence[str],
                ) -> tuple[dict[str, np.ndarray], np.ndarray]:
        kind = np.full(n, "", dtype=object)
        chosen = rng.permutation(n)
        k = round(rate * n)
        for j, what in enumerate(kd for kd in kinds if kd != "spurious"):  # spurious boxes are extra boxes
            kind[chosen[j * k:(j + 1) * k]] = what
        keep = kind != "missing"
        bx = x + rng.normal(0, jitter, n)
        by = y + rng.normal(0, jitter, n)
        bw, bh = w + rng.normal(0, jitter, n), h + rng.normal(0, jitter, n)
        shifted = kind == "location"
        bx, by = np.where(shifted, bx + 0.5 * w, bx), np.where(shifted, by + 0.5 * h, by)
        lab = np.where(kind == "wrong_class", (label + rng.integers(1, SCALE_CLASSES, n)) % SCALE_CLASSES, label)
        mix = np.where(shifted, 0.5, 0.0)
        out = {"image": image[keep], "x": bx[keep], "y": by[keep], "w": bw[keep], "h": bh[keep], "label": lab[keep],
               "true": label[keep], "mix": mix[keep]}
        dup = kind == "duplicate"
        spurious = rng.integers(0, n_images, k if "spurious" in kinds else 0)  # images of the extra boxes
        m = len(spurious)
        extra = {"image": np.r_[image[dup], spurious],
                 "x": np.r_[bx[dup] + rng.integers(-2, 3, dup.sum()), rng.uniform(0, width - 60, m)],
                 "y": np.r_[by[dup] + rng.integers(-2, 3, dup.sum()), rng.uniform(0, height - 60, m)],
                 "w": np.r_[bw[dup], rng.uniform(20, 60, m)], "h": np.r_[bh[dup], rng.uniform(20, 60, m)],
                 "label": np.r_[lab[dup], rng.integers(0, SCALE_CLASSES, m)],
                 "true": np.r_[label[dup], np.full(m, SCALE_CLASSES)], "mix": np.r_[mix[dup], np.zeros(m)]}
        table = {c: np.r_[out[c], extra[c]] for c in out}
        table["object_id"] = np.array([f"{name}:{i:07d}" for i in range(len(table["x"]))], dtype=object)
        return table, table["true"]

    tables, vectors = {}, None
    for name, rate, jitter, kinds in [("given", SCALE_GIVEN_RATE, 0.0, ERROR_KINDS),
                                      *[(a, r, 2.0, ("wrong_class", "missing", "spurious"))
                                        for a, r in SCALE_ANNOTATOR_RATES.items()]]:
        table, true = records(name, rate, jitter, kinds)
        tables[name] = pd.DataFrame({"object_id": table["object_id"], "sample_id": sample_ids[table["image"]],
                                     "label": [f"class_{c}" for c in table["label"]], "x": table["x"],
                                     "y": table["y"], "w": table["w"], "h": table["h"], "image_width": width,
                                     "image_height": height, "annotator": "" if name == "given" else name})
        if name == "given":
            base = np.where((true < SCALE_CLASSES)[:, None], centres[np.minimum(true, SCALE_CLASSES - 1)],
                            centres[SCALE_CLASSES])
            base = (1 - table["mix"])[:, None] * base + table["mix"][:, None] * centres[SCALE_CLASSES]
            vectors = _noisy(base.astype(np.float32), rng)
    started = time.perf_counter()
    given = build_object_table(tables["given"])
    annotators = build_object_table(pd.concat([tables[a] for a in SCALE_ANNOTATOR_RATES], ignore_index=True))
    return {"images": images, "given": given, "annotators": annotators, "vectors": vectors, "centres": centres,
            "table_seconds": time.perf_counter() - started}


def _noisy(base: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    out = base + rng.normal(scale=2.0 / np.sqrt(SCALE_DIM), size=base.shape).astype(np.float32)
    return out / np.linalg.norm(out, axis=1, keepdims=True)


def measure_scale(n_images: int, seed: int = 0) -> dict[str, Any]:
    """The object stage's steps after embedding on :func:`synthetic_objects`, in this process: seconds and peak
    resident memory of each (the way :mod:`benchmarks.stages` measures the image stages)."""
    from audit.checks.base import CheckContext
    from audit.checks.object_agreement import ObjectAgreementCheck, object_agreement
    from audit.checks.object_distribution import ObjectDistributionCheck
    from audit.checks.object_mistakes import BACKGROUND, ObjectMistakesCheck
    from audit.config import ProjectionConfig
    from audit.projection import project
    from benchmarks.stages import _high_water, _PeakMemory, _reset_high_water

    started_all = time.perf_counter()
    data = synthetic_objects(n_images, seed)
    images, given, annotators, vectors = data["images"], data["given"], data["annotators"], data["vectors"]
    items = given.assign(**{c: images[c].reindex(given["sample_id"]).to_numpy()
                            for c in ("filepath", "split", "readable", "content_hash")})
    objects = pd.concat([given, annotators])
    classes = sorted(set(items["label"]))
    rng = np.random.default_rng(seed + 1)
    steps: dict[str, Any] = {}
    process_peak = _high_water() or 0

    @contextlib.contextmanager
    def step(name: str):
        nonlocal process_peak
        process_peak = max(process_peak, _high_water() or 0)
        exact = _reset_high_water()
        started = time.perf_counter()
        with _PeakMemory() as memory:
            yield
        peak = max(memory.peak, (_high_water() or 0) if exact else 0)
        process_peak = max(process_peak, peak)
        steps[name] = {"seconds": time.perf_counter() - started, "peak_rss_gib": peak / GIB, "peak_exact": exact}

    # Numba compiles UMAP's (and pynndescent's) functions once per process, 10-30 s; a run has compiled most of
    # them for the image map. Compile them here, untimed, on 5,000 points: from 4,096 points on UMAP searches
    # neighbours with pynndescent, below that exactly, so a smaller warm-up would leave that path to the timing.
    warm = time.perf_counter()
    project(vectors[: min(len(vectors), 5_000)], ProjectionConfig(seed=seed))
    umap_compile_seconds = time.perf_counter() - warm
    prior: dict[str, Any] = {}
    with step("object agreement (3 annotators)"):
        agreement = object_agreement(annotators)
        prior["object_agreement"] = ObjectAgreementCheck().run(CheckContext(
            samples=items, class_names=classes, seed=seed,
            extra={"objects": objects, "images": images, "agreement": agreement}))
    with step("object distribution"):
        ObjectDistributionCheck().run(CheckContext(samples=items, class_names=classes, seed=seed,
                                                   extra={"objects": objects, "images": images}))
    with step("negative examples (background, misplaced boxes)"):
        negatives = ObjectMistakesCheck.extra_crops(items, images, seed)
    # Their crop embeddings (synthetic, untimed, as embedding is): background windows near the background centre,
    # misplaced copies halfway between their box's class and the background.
    centres = data["centres"]
    is_background = (negatives["label"] == BACKGROUND).to_numpy()
    n_background = int(is_background.sum())
    misplaced_class = rng.integers(0, SCALE_CLASSES, len(negatives) - n_background)
    base = np.empty((len(negatives), SCALE_DIM), np.float32)
    base[is_background] = centres[SCALE_CLASSES]
    base[~is_background] = 0.5 * centres[misplaced_class] + 0.5 * centres[SCALE_CLASSES]
    negative_vectors = _noisy(base, rng)
    with step("object mistakes (cross-validated classifier, flags)"):
        mistakes = ObjectMistakesCheck().run(CheckContext(
            samples=items, class_names=classes, embeddings=vectors, seed=seed, prior=prior,
            extra={"objects": objects, "images": images, "agreement": agreement,
                   "crops": {"object_mistakes": (negatives, negative_vectors)}}))
    with step("object map (UMAP)"):
        projection = project(vectors, ProjectionConfig(seed=seed))
    return {"n_images": n_images, "n_objects": len(given), "n_annotator_boxes": len(annotators),
            "n_negative_examples": len(negatives), "dim": SCALE_DIM, "steps": steps,
            "object_table_seconds": data["table_seconds"], "umap_compile_seconds_untimed": umap_compile_seconds,
            "process_peak_rss_gib": max(process_peak, _high_water() or 0) / GIB,
            "total_seconds": sum(s["seconds"] for s in steps.values()),
            "wall_seconds_with_setup": time.perf_counter() - started_all,
            "cv_accuracy": mistakes.metrics.get("cv_accuracy"), "n_flagged": mistakes.metrics.get("n_issues"),
            "n_consensus": agreement.metrics.get("n_consensus"), "umap": projection.settings.get("method")}


def run_scale(sizes: Sequence[int], seed: int = 0, log: Callable[[str], None] = print,
              fresh_process: bool = True) -> list[dict[str, Any]]:
    """Each size in a fresh Python process (peak memory per size); ``fresh_process=False`` (the quick form, which
    only shows the steps run) measures in this process, where UMAP's JIT compilation is already done."""
    if not fresh_process:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return [{**measure_scale(n, seed), "fresh_process": False} for n in sizes]
    rows = []
    with tempfile.TemporaryDirectory(prefix="label-audit-objects-scale-") as tmp:
        for n in sizes:
            out = Path(tmp) / f"scale-{n}.json"
            log(f"objects: scale, {n:,} images ...")
            subprocess.run([sys.executable, "-m", "benchmarks.objects", "--scale-images", str(n), "--seed", str(seed),
                            "--out", str(out)], check=True, cwd=Path(__file__).resolve().parents[1],
                           env={**os.environ, "FIFTYONE_DO_NOT_TRACK": "true"}, stdout=subprocess.DEVNULL)
            rows.append({**json.loads(out.read_text(encoding="utf-8")), "fresh_process": True})
    return rows


# ------------------------------------------------------------------------------------------------ the part


def run_objects(quick: bool = False, seed: int = 0, with_fiftyone: bool = True, out_dir: Path | None = RESULTS,
                log: Callable[[str], None] = print) -> dict[str, Any]:
    """Quality, speed and scale (see the module docstring); JSON-safe. Writes ``objects.json`` (``objects-quick``
    with ``quick``) under ``out_dir`` unless it is None."""
    from benchmarks.environment import load_average, machine

    sizes = QUICK if quick else FULL
    started = time.perf_counter()
    results: dict[str, Any] = {"quick": quick, "sizes": sizes, "created_at": datetime.now(UTC).isoformat(
        timespec="seconds"), "machine": machine(), "load_average": {"start": load_average()},
        "prediction_sources": prediction_sources(), "seconds": {}}
    with tempfile.TemporaryDirectory(prefix="label-audit-objects-") as tmp:
        part = time.perf_counter()
        results["quality"] = [quality_setting(Path(tmp) / "quality", sizes["n_images"], noise, seed, with_fiftyone,
                                              log=log) for noise in sizes["noise_levels"]]
        results["seconds"]["quality"] = time.perf_counter() - part
        log("objects: crop embedding against the image path ...")
        results["load_average"]["before_speed"] = load_average()
        part = time.perf_counter()
        results["speed"] = run_crop_speed(Path(tmp) / "speed", sizes["speed_images"], sizes["speed_model"],
                                          seed=seed)
        results["seconds"]["speed"] = time.perf_counter() - part
    results["load_average"]["before_scale"] = load_average()
    part = time.perf_counter()
    results["scale"] = run_scale(sizes["scale_images"], seed, log=log, fresh_process=not quick)
    results["seconds"]["scale"] = time.perf_counter() - part
    results["seconds"]["total"] = time.perf_counter() - started
    results["load_average"]["end"] = load_average()
    results["acceptance"] = acceptance_rows(results)
    if out_dir is not None:
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / f"objects{'-quick' if quick else ''}.json").write_text(
            json.dumps(results, indent=2, allow_nan=False) + "\n", encoding="utf-8")
    return results


def acceptance_rows(results: dict[str, Any]) -> list[dict[str, Any]]:
    """Issue 11's acceptance criteria against the measured numbers (at :data:`ACCEPTANCE_NOISE` per kind)."""
    rows = []
    setting = next((s for s in results.get("quality", []) if abs(s["noise"] - ACCEPTANCE_NOISE) < 1e-9), None)
    if setting is not None:
        source = next(iter(setting["sources"].values()))
        f1 = source["methods"][LA_NONE]["wrong_class"]["f1"]
        rows.append({"criterion": "objects: wrong-class boxes F1 >= 0.9 without predictions (detection demo, 10% "
                                  "errors of each kind)", "measured": f"F1 {f1:.3f}", "passed": f1 >= 0.9})
        behind = [f"{kind} ({name}: AP {v['value']:.3f} vs {v['peer']} {v['peer_value']:.3f})"
                  for name, s in setting["sources"].items() for kind, v in s["verdict"]["behind"].items()]
        rows.append({"criterion": "objects: with predictions, AP of every error kind >= the best peer's (10% per "
                                  "kind, both prediction sources)",
                     "measured": "yes" if not behind else "behind on " + "; ".join(behind),
                     "passed": not behind})
    scale = results.get("scale") or []
    if scale:
        largest = max(scale, key=lambda r: r["n_objects"])
        peak = max([largest["process_peak_rss_gib"], *(s["peak_rss_gib"] for s in largest["steps"].values())])
        rows.append({"criterion": f"objects: object stage at {largest['n_images']:,} images / "
                                  f"{largest['n_objects']:,} objects within 24 GiB",
                     "measured": f"process peak {peak:.2f} GiB, {largest['total_seconds']:.0f} s",
                     "passed": peak <= 24.0})
    return rows


# ------------------------------------------------------------------------------------------------ Markdown


def _cell(metrics: dict[str, Any] | None, best_ap: float | None) -> str:
    if metrics is None:
        return "—"

    def fmt(value: float | None) -> str:
        return "—" if value is None else f"{value:.2f}"

    ap = metrics["average_precision"]
    precision = "n/a" if metrics["n_flagged"] == 0 else fmt(metrics["precision"])  # flags nothing: undefined
    ap_text = fmt(ap) + ("\u2020" if metrics.get("ap_from_flag") and ap is not None else "")
    if ap is not None and best_ap is not None and abs(ap - best_ap) < 1e-9:
        ap_text = f"**{ap_text}**"
    return f"{precision} / {fmt(metrics['recall'])} / {fmt(metrics['f1'])} / {ap_text}"


def quality_markdown(results: dict[str, Any]) -> str:
    """One table per prediction source: rows = noise level x method, cells = P / R / F1 / AP per error kind."""
    out = []
    methods = [LA_NONE, LA_PRED, LA_EVIDENCE, *PEERS]
    for source in SOURCES:
        settings = [s for s in results["quality"] if source in s["sources"]]
        if not settings:
            continue
        out.append(f"**Predictions: {source}.** {results['prediction_sources'][source]}\n")
        out.append("| errors per kind | method | " + " | ".join(ERROR_KINDS) + " |")
        out.append("| --- | --- |" + " --- |" * len(ERROR_KINDS))
        for setting in settings:
            block = setting["sources"][source]["methods"]
            best = {k: max((m[k]["average_precision"] for m in block.values()
                            if m.get(k) and m[k]["average_precision"] is not None), default=None)
                    for k in ERROR_KINDS}
            for name in methods:
                if name in block:
                    cells = " | ".join(_cell(block[name][k], best[k]) for k in ERROR_KINDS)
                    label = f"{setting['noise']:.0%} ({setting['n_errors']['wrong_class']} each)"
                    out.append(f"| {label} | {name} | {cells} |")
        out.append("")
    return "\n".join(out)


def losses_markdown(results: dict[str, Any], key: str = "verdict") -> str:
    """Where a label-audit row is behind the best peer (``key``: one of the ``verdict*`` entries of a source)."""
    lines = []
    for setting in results["quality"]:
        for source, block in setting["sources"].items():
            v_all = block[key]
            name = "AP" if v_all["metric"] == "average_precision" else "F1"
            for kind, v in v_all["behind"].items():
                lines.append(f"- {setting['noise']:.0%}, {source} predictions, {kind}: {name} {v['value']:.3f} "
                             f"against {v['peer']} {v['peer_value']:.3f}")
    return "\n".join(lines) + "\n" if lines else "- nowhere: best or equal on every kind, level and source\n"


def speed_markdown(speed: dict[str, Any]) -> str:
    ratio = speed["chunk_ratio"]
    return (f"Model: {speed['model']} ({speed['precision']}); {speed['images']}; {speed['torch_threads']} torch "
            f"threads; cold cache; measured in turns on {speed['n_chunks']} chunk(s) of up to "
            f"{speed['chunk_images']} images (a chunk's images, then its boxes), so both paths share the machine's "
            "load.\n\n"
            "| path | items | seconds | per second |\n| --- | --- | --- | --- |\n"
            f"| image path (`embed_samples`) | {speed['n_images']} images | {speed['seconds']['images']:.2f} | "
            f"{speed['images_per_s']:,.1f} images/s |\n"
            f"| crop path (`embed_crops`) | {speed['n_objects']} objects | {speed['seconds']['crops']:.2f} | "
            f"{speed['objects_per_s']:,.1f} objects/s |\n\n"
            f"Objects per second / images per second: **{speed['objects_per_s_over_images_per_s']:.2f}** (per "
            f"chunk: {ratio['min']:.2f} to {ratio['max']:.2f}, median {ratio['median']:.2f}).\n")


def scale_markdown(scale: list[dict[str, Any]]) -> str:
    names = list(scale[0]["steps"])
    lines = ["Seconds / peak resident memory (GiB) of each step after embedding; synthetic boxes (10 per image) and "
             "512-d crop embeddings, 3 annotators; each size in a fresh process, UMAP's numba compilation done "
             "beforehand and left out (once per process: "
             + ", ".join(f"{r.get('umap_compile_seconds_untimed', float('nan')):.0f} s" for r in scale) + ").\n",
             "| step | " + " | ".join(f"{r['n_images']:,} images / {r['n_objects']:,} objects" for r in scale) + " |",
             "| --- |" + " --- |" * len(scale)]
    for name in names:
        lines.append(f"| {name} | " + " | ".join(f"{r['steps'][name]['seconds']:.1f} s / "
                                                  f"{r['steps'][name]['peak_rss_gib']:.2f} GiB" for r in scale) + " |")
    lines.append("| **total** | " + " | ".join(f"**{r['total_seconds']:.0f} s**" for r in scale) + " |")
    lines.append("| process peak | " + " | ".join(f"{r['process_peak_rss_gib']:.2f} GiB" for r in scale) + " |")
    lines.append("| annotators' boxes | " + " | ".join(f"{r['n_annotator_boxes']:,}" for r in scale) + " |")
    lines.append("| object tables (loading, before the stage) | "
                 + " | ".join(f"{r['object_table_seconds']:.1f} s" for r in scale) + " |")
    return "\n".join(lines) + "\n"


def to_markdown(results: dict[str, Any]) -> str:
    """The objects part's tables (BENCH.md's section and objects.md)."""
    first = results["quality"][0]
    where = results.get("machine") or {}
    load = results.get("load_average") or {}
    out = [f"`python -m benchmarks.objects{' --quick' if results['quick'] else ''}` (or the `objects` part of "
           f"`python -m benchmarks`): {results['created_at']}, {results['seconds']['total']:.0f} s, on "
           f"{where.get('cpu')} ({where.get('cpu_count')} cores), load average at start {load.get('start')}, end "
           f"{load.get('end')}.\n",
           f"Detection demo: {first['n_images']} images, {first['n_given_boxes']} shipped boxes at "
           f"{first['noise']:.0%}; `run_detection_demo` (embedder {first['embedder']}), then the peers on the same "
           "labels and predictions. "
           "Cells: precision / recall / F1 of the flags / average precision of the score; — where the method says "
           "nothing of that kind; \u2020 AP of a flag (the method gives no score); best AP of each block in bold.\n",
           quality_markdown(results),
           "Where the run with predictions (crops + annotators + predictions) is behind the best peer on AP:\n",
           losses_markdown(results), "... and on F1 of the flags (the run's flags, as `findings_from_run` reads "
           "them, come from the crops and the annotators; the predictions re-rank):\n",
           losses_markdown(results, "verdict_f1"),
           "Where label-audit on the peers' inputs alone (labels + predictions: the `object_detection` check's "
           "evidence, `findings_from_predictions`) is behind the best peer on AP:\n",
           losses_markdown(results, "verdict_evidence"), "... and on F1:\n",
           losses_markdown(results, "verdict_evidence_f1")]
    if results.get("speed"):
        out += ["**Crop embedding against the image path.**\n", speed_markdown(results["speed"])]
    if results.get("scale"):
        out += ["**The object stage by size.**\n", scale_markdown(results["scale"])]
    return "\n".join(out)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.objects", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a few dozen images (CI)")
    parser.add_argument("--out-dir", type=Path, default=RESULTS)
    parser.add_argument("--no-fiftyone", action="store_true", help="leave FiftyOne Brain out (no MongoDB)")
    parser.add_argument("--scale-images", type=int, help="measure one scale size in this process (internal)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, help="with --scale-images: the JSON file to write")
    args = parser.parse_args(argv)
    os.environ.setdefault("FIFTYONE_DO_NOT_TRACK", "true")
    if args.scale_images:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            result = measure_scale(args.scale_images, args.seed)
        args.out.write_text(json.dumps(result, indent=2), encoding="utf-8")
        return 0
    started = time.perf_counter()

    def log(message: str) -> None:
        print(f"[{time.perf_counter() - started:6.0f} s] {message}", file=sys.stderr, flush=True)

    results = run_objects(args.quick, args.seed, not args.no_fiftyone, args.out_dir, log)
    markdown = to_markdown(results)
    (args.out_dir / f"objects{'-quick' if args.quick else ''}.md").write_text(markdown, encoding="utf-8")
    print(markdown)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
