"""The detection demo: real digit scans pasted onto real photo backgrounds, with exact boxes and masks, known
errors of every kind, three annotators of different reliability, and detector predictions.

The images
----------
Each image is a ``canvas`` x ``canvas`` grey crop of scikit-image's ``grass`` photo, darkened to 0..70, with
``digits_per_image`` of sklearn's real 8x8 digit scans (``load_digits``, 1,797 scans, each used once while any is
left) scaled to 24-40 px (bilinear) and alpha-composited in white (``alpha = ink / 16``), without overlap (a gap
of at least ``GAP`` px between their squares). The instance **mask** is the digit's stroke: the pixels with
``alpha >= INK_ALPHA``; the **box** is the mask's tight box (``pycocotools.mask.toBbox``), so truth boxes and masks
agree exactly.

The label sets and their errors
-------------------------------
The shipped label set (``given``, annotator ``""``) and three annotators (``ANNOTATOR_ERROR_RATES``: alice is the
most reliable, carol the least) are each derived from the truth with errors injected at a rate *per kind*: for
``n`` true objects and rate ``r``, exactly ``round(r * n)`` objects of each kind (disjoint true objects):

- ``wrong_class``: the class is replaced by another digit, uniformly;
- ``location``: half of them ``shifted`` (the mask and box moved so that the box IoU with the truth is ~U(0.25,
  0.45)), half ``loose`` (the mask dilated by ``p`` px so that the box IoU is ~U(0.3, 0.5));
- ``missing``: the object is left out;
- ``duplicate``: a second object of the same class, its mask moved by -2..2 px in x and y (0 included: some
  copies are exact; box IoU >= ~0.75);
- ``spurious``: ``round(r * n)`` extra boxes (12-30 x 20-40 px, a random digit, a rectangular mask) on
  background, overlapping no true object.

Object ids (``<set>:<sample>:<k>``, shuffled within the image) reveal nothing. ``errors`` records each error: the
label set, the erroneous object id (None for ``missing``), the true object id (None for ``spurious``), the kind and
a detail; for a duplicate ``related_object_id`` is the copied object (both of a pair count as the duplicate, since
nothing tells them apart); for a missing object the true box.

Predictions
-----------
:func:`simulate_predictions` draws them from the truth with stated jitter, miss, confusion and false-positive
rates. :func:`classifier_predictions` is a real (if small) detector: proposals come from the pixels alone
(connected components of the bright pixels), and each proposal's class probabilities come from a classifier on
crop pixels trained, out of fold by image, on the *given* (noisy) labels plus background crops, so the
probabilities are real model outputs that never saw the labels of the image they score. Being calibrated on
labels with wrong classes, that classifier almost never says more than 0.95, which silences cleanlab ObjectLab's
swap and overlooked subtypes (see :mod:`audit.checks.object_detection`); the simulated detector is confident.

Findings and their evaluation
-----------------------------
``findings_without_predictions`` (crop classifier + geometry, one label set), ``findings_from_agreement`` (the
three annotators) and ``findings_from_predictions`` (ObjectLab alone, and label-audit's prediction evidence) turn
each source into candidate rows ``kind, object_id | place, score, is_issue``; :func:`evaluate_findings` scores
them per error kind against ``errors``. ``python -m audit.demos.detection`` runs them all (:func:`measure`).
"""

from __future__ import annotations

import argparse
import json
import math
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from audit.checks.object_mistakes import misplaced_boxes
from audit.demos.scenes import digit_alpha, free_spot
from audit.geometry import box_iou_matrix, build_object_table, mask_to_rle, rle_to_box

CLASSES = [str(d) for d in range(10)]
ERROR_KINDS = ("wrong_class", "location", "missing", "spurious", "duplicate")
ANNOTATOR_ERROR_RATES = {"alice": 0.02, "bob": 0.05, "carol": 0.10}
GIVEN = "given"
CANVAS = 160
DIGIT_SIDES = (24, 40)
DIGITS_PER_IMAGE = (3, 6)
INK_ALPHA = 0.3
GAP = 6
BACKGROUND_MAX = 70
BACKGROUND_LABEL = "background"
MISPLACED_LABEL = "misplaced"
CROP_SIDE = 8


@dataclass
class DetectionDemo:
    """A built detection demo (files under ``root``) and its tables.

    ``samples``: indexed by ``sample_id``: ``filepath`` (absolute), ``width``, ``height``. ``truth``: the true
    objects (object table, annotator ``"truth"``). ``given``: the shipped labels (annotator ``""``).
    ``annotations``: the three annotators' objects in one object table. ``errors``: one row per injected error
    (``label_set, object_id, true_object_id, related_object_id, kind, detail, sample_id, x, y, w, h``).
    ``rates``: error rate per kind of each label set.
    """

    root: Path
    samples: pd.DataFrame
    truth: pd.DataFrame
    given: pd.DataFrame
    annotations: pd.DataFrame
    errors: pd.DataFrame
    rates: dict[str, float]

    def label_set(self, name: str) -> pd.DataFrame:
        """Objects of one label set: ``"given"`` or an annotator's name."""
        if name == GIVEN:
            return self.given
        return self.annotations[self.annotations["annotator"] == name]


# ------------------------------------------------------------------------------------------------ building


def _background(grass: np.ndarray, rng: np.random.Generator, side: int) -> np.ndarray:
    top, left = rng.integers(0, grass.shape[0] - side), rng.integers(0, grass.shape[1] - side)
    crop = grass[top:top + side, left:left + side].astype(float)
    return crop / 255.0 * BACKGROUND_MAX


def _truth_images(n_images: int, canvas: int, rng: np.random.Generator) -> tuple[dict[str, np.ndarray],
                                                                                  list[dict]]:
    from skimage.data import grass
    from sklearn.datasets import load_digits

    digits = load_digits()
    photo = grass()
    order = rng.permutation(len(digits.target))
    used = 0
    images: dict[str, np.ndarray] = {}
    records: list[dict] = []
    for i in range(n_images):
        sample_id = f"img-{i:04d}"
        image = _background(photo, rng, canvas)
        occupied: list[tuple[int, int, int]] = []
        for _ in range(int(rng.integers(DIGITS_PER_IMAGE[0], DIGITS_PER_IMAGE[1] + 1))):
            side = int(rng.integers(DIGIT_SIDES[0], DIGIT_SIDES[1] + 1))
            spot = free_spot(occupied, side, canvas, rng, GAP)
            if spot is None:
                continue
            if used == len(order):
                order, used = rng.permutation(len(digits.target)), 0
            index = int(order[used])
            used += 1
            x, y = spot
            occupied.append((x, y, side))
            alpha = digit_alpha(digits.images[index], side)
            region = image[y:y + side, x:x + side]
            image[y:y + side, x:x + side] = region * (1 - alpha) + 255.0 * alpha
            mask = np.zeros((canvas, canvas), bool)
            mask[y:y + side, x:x + side] = alpha >= INK_ALPHA
            records.append({"sample_id": sample_id, "label": str(digits.target[index]), "mask": mask,
                            "digit_index": index})
        images[sample_id] = np.clip(image.round(), 0, 255).astype(np.uint8)
    return images, records


def _object_record(object_id: str, sample_id: str, label: str, mask: np.ndarray, annotator: str, source: str,
                   canvas: int) -> dict:
    rle = mask_to_rle(mask)
    x, y, w, h = rle_to_box(rle, canvas, canvas)
    return {"object_id": object_id, "sample_id": sample_id, "label": label, "x": x, "y": y, "w": w, "h": h,
            "image_width": canvas, "image_height": canvas, "mask": rle, "iscrowd": False, "annotator": annotator,
            "score": np.nan, "source": source}


def _box_iou(a: np.ndarray, b: np.ndarray) -> float:
    return float(box_iou_matrix(a[None, :], b[None, :])[0, 0])


def _mask_box(mask: np.ndarray) -> np.ndarray:
    ys, xs = np.nonzero(mask)
    return np.array([xs.min(), ys.min(), xs.max() - xs.min() + 1, ys.max() - ys.min() + 1], float)


def _shift(mask: np.ndarray, dx: int, dy: int) -> np.ndarray | None:
    """The mask moved by (dx, dy), or None when that pushes ink out of the image."""
    ys, xs = np.nonzero(mask)
    h, w = mask.shape
    if xs.min() + dx < 0 or xs.max() + dx >= w or ys.min() + dy < 0 or ys.max() + dy >= h:
        return None
    out = np.zeros_like(mask)
    out[ys + dy, xs + dx] = True
    return out


def _shifted(mask: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, str] | None:
    """Move the mask so its box IoU with the original is ~U(0.25, 0.45), in a random direction."""
    box = _mask_box(mask)
    target = rng.uniform(0.25, 0.45)
    for _ in range(20):
        angle = rng.uniform(0, 2 * math.pi)
        ux, uy = math.cos(angle), math.sin(angle)
        best = None
        for step in np.linspace(0.05, 1.5, 60):
            dx, dy = round(ux * step * box[2]), round(uy * step * box[3])
            moved = box + np.array([dx, dy, 0, 0])
            if _box_iou(box, moved) <= target:
                best = (dx, dy)
                break
        if best is None:
            continue
        out = _shift(mask, *best)
        if out is not None:
            return out, f"shifted by ({best[0]}, {best[1]}) px, box IoU {_box_iou(box, _mask_box(out)):.2f}"
    return None


def _loosened(mask: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, str]:
    """Dilate the mask by ``p`` px so that its box IoU with the original is ~U(0.3, 0.5) (before clipping)."""
    from scipy.ndimage import binary_dilation

    box = _mask_box(mask)
    target = rng.uniform(0.3, 0.5)
    w, h = box[2], box[3]
    # (w h) / ((w + 2p)(h + 2p)) = target  ->  4p^2 + 2p(w + h) + wh (1 - 1/target) = 0
    p = (-2 * (w + h) + math.sqrt(4 * (w + h) ** 2 - 16 * w * h * (1 - 1 / target))) / 8
    pad = max(1, round(p))
    out = binary_dilation(mask, structure=np.ones((3, 3), bool), iterations=pad)
    return out, f"loose by {pad} px, box IoU {_box_iou(box, _mask_box(out)):.2f}"


def _spurious_mask(sample_objects: list[np.ndarray], canvas: int, rng: np.random.Generator) -> np.ndarray | None:
    for _ in range(200):
        w, h = int(rng.integers(12, 31)), int(rng.integers(20, 41))
        x, y = int(rng.integers(0, canvas - w + 1)), int(rng.integers(0, canvas - h + 1))
        box = np.array([x, y, w, h], float)
        if all(_box_iou(box, _mask_box(m)) == 0 for m in sample_objects):
            out = np.zeros((canvas, canvas), bool)
            out[y:y + h, x:x + w] = True
            return out
    return None


def _inject(truth: list[dict], label_set: str, rate: float, canvas: int, rng: np.random.Generator,
            ) -> tuple[list[dict], list[dict]]:
    """One label set derived from the truth with ``round(rate * n)`` errors of each kind."""
    n = len(truth)
    k = round(rate * n)
    if 4 * k > n:
        raise ValueError(f"error rate {rate} is too high: 4 x {k} errors need more than {n} objects")
    chosen = rng.permutation(n)
    kinds = {int(i): kind for j, kind in enumerate(("wrong_class", "location", "missing", "duplicate"))
             for i in chosen[j * k:(j + 1) * k]}
    annotator = "" if label_set == GIVEN else label_set
    source_file = f"{label_set}.json" if label_set == GIVEN else f"annotators/{label_set}.json"
    per_image: dict[str, list[dict]] = {}
    errors: list[dict] = []
    for i, obj in enumerate(truth):
        kind = kinds.get(i)
        entry = {"sample_id": obj["sample_id"], "label": obj["label"], "mask": obj["mask"], "true": obj["object_id"],
                 "kind": None, "detail": "", "related": None}
        if kind == "missing":
            errors.append({"label_set": label_set, "object_id": None, "true_object_id": obj["object_id"],
                           "related_object_id": None, "kind": "missing", "detail": "left out",
                           "sample_id": obj["sample_id"], **dict(zip("xywh", _mask_box(obj["mask"]), strict=True))})
            continue
        if kind == "wrong_class":
            wrong = str(rng.choice([c for c in CLASSES if c != obj["label"]]))
            entry.update(label=wrong, kind=kind, detail=f"{obj['label']} -> {wrong}")
        elif kind == "location":
            moved = _shifted(obj["mask"], rng) if rng.random() < 0.5 else None
            mask, detail = moved if moved is not None else _loosened(obj["mask"], rng)
            entry.update(mask=mask, kind=kind, detail=detail)
        per_image.setdefault(obj["sample_id"], []).append(entry)
        if kind == "duplicate":
            for _ in range(20):
                dx, dy = int(rng.integers(-2, 3)), int(rng.integers(-2, 3))
                copy = _shift(obj["mask"], dx, dy)
                if copy is not None:
                    break
            else:  # pragma: no cover - a digit never fills the canvas
                copy = obj["mask"]
            per_image[obj["sample_id"]].append({**entry, "mask": copy, "kind": "duplicate",
                                                "detail": f"copy moved by ({dx}, {dy}) px", "related": entry})
    truth_by_image: dict[str, list[np.ndarray]] = {}
    for obj in truth:
        truth_by_image.setdefault(obj["sample_id"], []).append(obj["mask"])
    images = sorted(truth_by_image)
    for _ in range(k):
        for _attempt in range(50):
            sample_id = images[int(rng.integers(len(images)))]
            taken = truth_by_image[sample_id] + [e["mask"] for e in per_image.get(sample_id, [])]
            mask = _spurious_mask(taken, canvas, rng)
            if mask is not None:
                per_image.setdefault(sample_id, []).append(
                    {"sample_id": sample_id, "label": str(rng.choice(CLASSES)), "mask": mask, "true": None,
                     "kind": "spurious", "detail": "box on background", "related": None})
                break
    records: list[dict] = []
    coco_id = 0
    for sample_id in sorted(per_image):
        entries = per_image[sample_id]
        for position, j in enumerate(rng.permutation(len(entries))):
            entries[j]["object_id"] = f"{label_set}:{sample_id}:{position:02d}"
        for entry in entries:
            coco_id += 1
            records.append(_object_record(entry["object_id"], sample_id, entry["label"], entry["mask"], annotator,
                                          f"{source_file} annotation id {coco_id}", canvas))
            if entry["kind"] is not None:
                errors.append({"label_set": label_set, "object_id": entry["object_id"],
                               "true_object_id": entry["true"],
                               "related_object_id": entry["related"]["object_id"] if entry["related"] else None,
                               "kind": entry["kind"], "detail": entry["detail"], "sample_id": sample_id,
                               **dict(zip("xywh", _mask_box(entry["mask"]), strict=True))})
    return records, errors


def _write_coco(path: Path, table: pd.DataFrame, samples: pd.DataFrame) -> None:
    image_ids = {s: i + 1 for i, s in enumerate(samples.index)}
    coco = {
        "images": [{"id": image_ids[s], "file_name": f"images/{s}.png", "width": int(r["width"]),
                    "height": int(r["height"])} for s, r in samples.iterrows()],
        "categories": [{"id": int(c) + 1, "name": c} for c in CLASSES],
        "annotations": [],
    }
    for n, (object_id, r) in enumerate(table.iterrows(), start=1):
        coco["annotations"].append({
            "id": n, "image_id": image_ids[r["sample_id"]], "category_id": int(r["label"]) + 1,
            "bbox": [float(r["x"]), float(r["y"]), float(r["w"]), float(r["h"])], "area": float(r["w"] * r["h"]),
            "iscrowd": 0, "segmentation": {"size": [int(r["image_height"]), int(r["image_width"])],
                                           "counts": r["mask"]},
            "object_id": object_id,
        })
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(coco))


def build_detection_demo(root: Path, n_images: int = 300, error_rate: float = 0.1,
                         annotator_rates: dict[str, float] | None = None, seed: int = 0,
                         canvas: int = CANVAS) -> DetectionDemo:
    """Write the demo (PNGs, COCO truth/given/annotator files, ``errors.csv``, ``samples.csv``) under ``root``.

    ``error_rate`` is the rate *per error kind* of the shipped (``given``) labels; ``annotator_rates`` the same for
    each annotator (default :data:`ANNOTATOR_ERROR_RATES`).
    """
    from PIL import Image

    if not 0 <= error_rate <= 0.25:
        raise ValueError(f"error_rate is per kind and must be in [0, 0.25], got {error_rate}")
    rates = {GIVEN: float(error_rate), **(ANNOTATOR_ERROR_RATES if annotator_rates is None else annotator_rates)}
    rng = np.random.default_rng(seed)
    images, truth_records = _truth_images(n_images, canvas, rng)
    root = Path(root)
    (root / "images").mkdir(parents=True, exist_ok=True)
    for sample_id, pixels in images.items():
        Image.fromarray(pixels, mode="L").save(root / "images" / f"{sample_id}.png")
    samples = pd.DataFrame({"filepath": [str((root / "images" / f"{s}.png").resolve()) for s in images],
                            "width": canvas, "height": canvas}, index=pd.Index(list(images), name="sample_id"))
    counters: dict[str, int] = {}
    truth_objects = []
    for record in truth_records:
        k = counters.get(record["sample_id"], 0)
        counters[record["sample_id"]] = k + 1
        record["object_id"] = f"truth:{record['sample_id']}:{k:02d}"
        truth_objects.append(record)
    truth = build_object_table([_object_record(r["object_id"], r["sample_id"], r["label"], r["mask"], "truth",
                                               f"truth.json annotation id {n}", canvas)
                                for n, r in enumerate(truth_objects, start=1)])
    tables, errors = {}, []
    for name, rate in rates.items():
        records, found = _inject(truth_objects, name, rate, canvas, rng)
        tables[name] = build_object_table(records)
        errors.extend(found)
    errors_table = pd.DataFrame(errors, columns=["label_set", "object_id", "true_object_id", "related_object_id",
                                                 "kind", "detail", "sample_id", "x", "y", "w", "h"])
    annotations = pd.concat([tables[a] for a in rates if a != GIVEN])
    _write_coco(root / "truth.json", truth, samples)
    _write_coco(root / "given.json", tables[GIVEN], samples)
    for name in rates:
        if name != GIVEN:
            _write_coco(root / "annotators" / f"{name}.json", tables[name], samples)
    errors_table.to_csv(root / "errors.csv", index=False)
    samples.to_csv(root / "samples.csv")
    return DetectionDemo(root=root, samples=samples, truth=truth, given=tables[GIVEN], annotations=annotations,
                         errors=errors_table, rates=rates)


# ------------------------------------------------------------------------------------------------ predictions


def simulate_predictions(truth: pd.DataFrame, jitter: float = 0.05, miss_rate: float = 0.05,
                         confusion_rate: float = 0.03, false_positive_rate: float = 0.05,
                         seed: int = 0) -> pd.DataFrame:
    """Detector predictions drawn from the truth, with stated error rates (an idealised detector).

    Each true object is missed with probability ``miss_rate``; otherwise its box corners move by
    ``N(0, jitter x side)`` and its class is the true one, or with probability ``confusion_rate`` another digit
    (uniformly). Confidence: ``Beta(40, 1)`` (mean 0.976) for every detection, so confusions are as confident as
    correct detections. ``round(false_positive_rate x n)`` extra boxes of random classes and sizes (12-30 x 20-40
    px) land on random images (they may overlap objects) with confidence ``U(0.3, 0.99)``.
    """
    rng = np.random.default_rng(seed)
    rows = []
    for object_id, r in truth.iterrows():
        if rng.random() < miss_rate:
            continue
        corners = np.array([r["x"], r["y"], r["x"] + r["w"], r["y"] + r["h"]])
        corners += rng.normal(0, jitter, 4) * np.array([r["w"], r["h"], r["w"], r["h"]])
        label = r["label"]
        if rng.random() < confusion_rate:
            label = str(rng.choice([c for c in CLASSES if c != label]))
        rows.append({"object_id": f"pred:{object_id}", "sample_id": r["sample_id"], "label": label,
                     "x": corners[0], "y": corners[1], "w": corners[2] - corners[0], "h": corners[3] - corners[1],
                     "image_width": r["image_width"], "image_height": r["image_height"],
                     "score": float(rng.beta(40, 1)), "annotator": "predictions", "source": "simulated"})
    images = truth.drop_duplicates("sample_id")
    for n in range(round(false_positive_rate * len(truth))):
        r = images.iloc[int(rng.integers(len(images)))]
        w, h = int(rng.integers(12, 31)), int(rng.integers(20, 41))
        x, y = rng.uniform(0, r["image_width"] - w), rng.uniform(0, r["image_height"] - h)
        rows.append({"object_id": f"pred:fp:{n:04d}", "sample_id": r["sample_id"], "label": str(rng.choice(CLASSES)),
                     "x": x, "y": y, "w": w, "h": h, "image_width": r["image_width"],
                     "image_height": r["image_height"], "score": float(rng.uniform(0.3, 0.99)),
                     "annotator": "predictions", "source": "simulated false positive"})
    return build_object_table(rows)


def load_grey(path: str | Path) -> np.ndarray:
    """An image file as a 2-D uint8 array."""
    from PIL import Image

    with Image.open(path) as image:
        return np.asarray(image.convert("L"))


def crop_features(image: np.ndarray, boxes_xywh: np.ndarray, side: int = CROP_SIDE) -> np.ndarray:
    """Each box's crop, padded to a square around its centre (so a "1" stays thin), resized to ``side`` x ``side``
    grey pixels in 0..1 (bilinear): ``(n, side * side)``."""
    from PIL import Image

    out = np.zeros((len(boxes_xywh), side * side), np.float32)
    height, width = image.shape
    padded = np.pad(image, 64, mode="constant")
    for i, (x, y, w, h) in enumerate(np.asarray(boxes_xywh, float)):
        half = max(w, h, 1.0) / 2
        cx, cy = x + w / 2, y + h / 2
        x1, y1 = round(cx - half) + 64, round(cy - half) + 64
        size = max(1, round(2 * half))
        x1, y1 = min(max(x1, 0), width + 128 - size), min(max(y1, 0), height + 128 - size)
        crop = Image.fromarray(padded[y1:y1 + size, x1:x1 + size])
        out[i] = np.asarray(crop.resize((side, side), Image.Resampling.BILINEAR), np.float32).ravel() / 255.0
    return out


def object_crop_features(objects: pd.DataFrame, samples: pd.DataFrame, side: int = CROP_SIDE) -> np.ndarray:
    """:func:`crop_features` for every object of an object table, reading each image once."""
    out = np.zeros((len(objects), side * side), np.float32)
    positions = pd.Series(np.arange(len(objects)), index=objects.index)
    for sample_id, group in objects.groupby("sample_id", sort=False):
        image = load_grey(samples.loc[sample_id, "filepath"])
        out[positions.loc[group.index].to_numpy()] = crop_features(image, group[["x", "y", "w", "h"]].to_numpy(float),
                                                                   side)
    return out


def propose_boxes(image: np.ndarray, threshold: int = 128, min_pixels: int = 15) -> np.ndarray:
    """Label-free object proposals: connected components of the bright pixels (merged by a 2-px dilation), each
    as the tight box of its bright pixels. ``(n, 4)`` ``x, y, w, h``."""
    from scipy.ndimage import binary_dilation, find_objects
    from scipy.ndimage import label as connected

    bright = image >= threshold
    regions, _ = connected(binary_dilation(bright, iterations=2))
    boxes = []
    for k, window in enumerate(find_objects(regions), start=1):
        if window is None:
            continue
        own = bright[window] & (regions[window] == k)
        if own.sum() < min_pixels:
            continue
        ys, xs = np.nonzero(own)
        boxes.append([window[1].start + xs.min(), window[0].start + ys.min(), xs.max() - xs.min() + 1,
                      ys.max() - ys.min() + 1])
    return np.asarray(boxes, float).reshape(-1, 4)


def background_boxes(objects: pd.DataFrame, samples: pd.DataFrame, per_image: int = 2,
                     seed: int = 0) -> pd.DataFrame:
    """Random digit-sized windows overlapping none of ``objects``' boxes: what "no object" looks like."""
    rng = np.random.default_rng(seed)
    rows = []
    by_image = dict(tuple(objects.groupby("sample_id")))
    for sample_id, r in samples.iterrows():
        taken = by_image.get(sample_id, objects.iloc[:0])[["x", "y", "w", "h"]].to_numpy(float)
        found = 0
        for _ in range(50 * per_image):
            w, h = int(rng.integers(12, 41)), int(rng.integers(20, 41))
            box = np.array([[rng.uniform(0, r["width"] - w), rng.uniform(0, r["height"] - h), w, h]])
            if not len(taken) or box_iou_matrix(box, taken).max() == 0:
                rows.append({"sample_id": sample_id, "x": box[0, 0], "y": box[0, 1], "w": w, "h": h})
                found += 1
                if found == per_image:
                    break
    return pd.DataFrame(rows, columns=["sample_id", "x", "y", "w", "h"])


def _fit_predict(train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray, n_classes: int,
                 knn_neighbors: int = 10) -> np.ndarray:
    """The image pipeline's model (audit.checks.predictions): logistic regression (C=0.1) on features scaled to
    unit mean square, averaged with a distance-weighted kNN vote."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.neighbors import KNeighborsClassifier
    from threadpoolctl import threadpool_limits

    from audit.checks.predictions import LOGREG_C, LOGREG_MAX_ITER

    def scale(x: np.ndarray) -> np.ndarray:
        norms = np.linalg.norm(x, axis=1, keepdims=True)
        return x / np.where(norms > 0, norms, 1.0) * np.float32(math.sqrt(x.shape[1]))

    present = np.unique(train_y)
    out = np.zeros((len(test_x), n_classes))
    with threadpool_limits(1, user_api="blas"):
        logreg = LogisticRegression(C=LOGREG_C, max_iter=LOGREG_MAX_ITER).fit(scale(train_x), train_y)
        knn = KNeighborsClassifier(n_neighbors=min(knn_neighbors, len(train_y)), weights="distance",
                                   algorithm="brute").fit(scale(train_x), train_y)
        out[:, present] = (logreg.predict_proba(scale(test_x)) + knn.predict_proba(scale(test_x))) / 2
    return out


def classifier_predictions(samples: pd.DataFrame, labels: pd.DataFrame, folds: int = 5, seed: int = 0,
                           min_score: float = 0.02) -> pd.DataFrame:
    """Detector predictions from pixels and an out-of-fold crop classifier (no truth used).

    1. **Boxes**: :func:`propose_boxes` on every image (connected components of pixels >= 128): the detector's
       localisation, from the pixels alone.
    2. **Training crops**: every box of ``labels`` (the noisy labels being audited, errors included) with its
       class, plus two random background windows per image (class ``background``) overlapping no label box.
    3. **Out of fold by image**: images are split into ``folds`` groups; a model trained on the other groups'
       crops (:func:`crop_features`, 8x8 grey; the image pipeline's logistic regression + kNN average) gives
       each proposal of the held-out group its 11 class probabilities. No model saw the labels of the image it
       predicts.
    4. **Output**: one prediction row per proposal and digit class whose probability is >= ``min_score``
       (``score`` = that probability; the background probability is what the digits' scores do not sum to),
       as detectors such as MMDetection return per-class boxes.
    """
    rng = np.random.default_rng(seed)
    names = [*CLASSES, BACKGROUND_LABEL]
    codes = {c: i for i, c in enumerate(names)}
    background = background_boxes(labels, samples, seed=seed)
    train = pd.concat([labels[["sample_id", "x", "y", "w", "h", "label"]].reset_index(drop=True),
                       background.assign(label=BACKGROUND_LABEL)], ignore_index=True)
    train_x = np.zeros((len(train), CROP_SIDE * CROP_SIDE), np.float32)
    proposals = []
    for sample_id, r in samples.iterrows():
        image = load_grey(r["filepath"])
        rows = train.index[train["sample_id"] == sample_id]
        if len(rows):
            train_x[rows] = crop_features(image, train.loc[rows, ["x", "y", "w", "h"]].to_numpy(float))
        boxes = propose_boxes(image)
        for j, box in enumerate(boxes):
            proposals.append({"sample_id": sample_id, "proposal": j, "box": box,
                              "features": crop_features(image, box[None, :])[0]})
    train_y = train["label"].map(codes).to_numpy(int)
    image_ids = np.array(list(samples.index))
    group_of = dict(zip(image_ids[rng.permutation(len(image_ids))], np.arange(len(image_ids)) % folds,
                        strict=True))
    train_group = train["sample_id"].map(group_of).to_numpy()
    proposal_group = np.array([group_of[p["sample_id"]] for p in proposals])
    proposal_x = np.array([p["features"] for p in proposals], np.float32).reshape(-1, CROP_SIDE * CROP_SIDE)
    probs = np.zeros((len(proposals), len(names)))
    for fold in range(folds):
        test = proposal_group == fold
        if test.any():
            fit = train_group != fold
            probs[test] = _fit_predict(train_x[fit], train_y[fit], proposal_x[test], len(names))
    rows = []
    for p, prob in zip(proposals, probs, strict=True):
        x, y, w, h = p["box"]
        for k, name in enumerate(CLASSES):
            if prob[k] >= min_score:
                rows.append({"object_id": f"pred:{p['sample_id']}:{p['proposal']:02d}:{name}",
                             "sample_id": p["sample_id"], "label": name, "x": x, "y": y, "w": w, "h": h,
                             "image_width": int(samples.loc[p["sample_id"], "width"]),
                             "image_height": int(samples.loc[p["sample_id"], "height"]), "score": float(prob[k]),
                             "annotator": "predictions",
                             "source": f"proposal {p['proposal']} of {p['sample_id']}, out-of-fold crop classifier"})
    return build_object_table(rows)


# ------------------------------------------------------------------------------------------------ evaluation


def average_precision(scores: np.ndarray, hits: np.ndarray, n_positive: int) -> float:
    """Area under the step precision-recall curve of a ranking (ties share a threshold, as in scikit-learn),
    with recall over ``n_positive`` errors, so errors that were never scored count as never found."""
    scores, hits = np.asarray(scores, float), np.asarray(hits, bool)
    if n_positive <= 0:
        return float("nan")
    keep = np.isfinite(scores)
    scores, hits = scores[keep], hits[keep]
    order = np.argsort(-scores, kind="stable")
    scores, hits = scores[order], hits[order]
    last = np.r_[np.flatnonzero(np.diff(scores)), len(scores) - 1] if len(scores) else np.zeros(0, int)
    tp = np.cumsum(hits)[last]
    fp = (last + 1) - tp
    precision = tp / np.maximum(tp + fp, 1)
    recall_steps = np.diff(np.r_[0, tp]) / n_positive
    return float(np.sum(recall_steps * precision))


def evaluate_findings(findings: pd.DataFrame, errors: pd.DataFrame, label_set: str = GIVEN,
                      iou_threshold: float = 0.5) -> pd.DataFrame:
    """Precision, recall, F1 and average precision per error kind of one label set's findings.

    ``findings``: one row per scored candidate with ``kind`` (the error kind it is evidence of), ``is_issue``
    (the flag), optionally ``score`` (higher = more suspicious; AP needs it) and either ``object_id`` (a label
    object: every kind but ``missing``) or ``sample_id, x, y, w, h`` (a place where an object is missing).

    Units are the injected errors: ``n_errors`` of them per kind. A label object belongs to an error when it is
    the erroneous object (for a duplicate, either box of the pair: nothing tells the copy from the original).
    A place belongs to a missing object when it matches it at ``IoU >= iou_threshold`` and no better-scored
    place already did (greedy by score, as detection benchmarks match detections to ground truth).
    ``precision`` = flagged candidates that belong to an error / flagged candidates; ``recall`` = errors with at
    least one flagged candidate / errors. ``average_precision`` ranks the candidates by score; a candidate of an
    error already reached higher in the ranking is skipped (the other box of a duplicate pair), and errors never
    reached count as recall never gained.
    """
    errors = errors[errors["label_set"] == label_set]
    rows = {}
    for kind in ERROR_KINDS:
        own = findings[findings["kind"] == kind] if len(findings) else findings
        truth = errors[errors["kind"] == kind].reset_index(drop=True)
        n_errors = len(truth)
        if kind == "missing":
            error_of = _missing_hits(own, truth, iou_threshold)
        else:
            owner: dict[str, int] = {}
            for column in ("object_id", "related_object_id"):
                owner.update({str(o): i for i, o in truth[column].items() if isinstance(o, str)})
            error_of = np.array([owner.get(str(o), -1) for o in own["object_id"]], int) if len(own) else np.zeros(
                0, int)
        flags = own["is_issue"].fillna(False).to_numpy(bool) if len(own) else np.zeros(0, bool)
        correct = int(((error_of >= 0) & flags).sum())
        found = len(set(error_of[(error_of >= 0) & flags]))
        precision = correct / flags.sum() if flags.sum() else float("nan")
        recall = found / n_errors if n_errors else float("nan")
        f1 = 2 * precision * recall / (precision + recall) if precision + recall > 0 else 0.0
        ap = float("nan")
        if len(own) and "score" in own and own["score"].notna().any():
            scores = own["score"].to_numpy(float)
            order = np.argsort(-np.nan_to_num(scores, nan=-np.inf), kind="stable")
            seen: set[int] = set()
            keep = np.ones(len(own), bool)
            for i in order:
                if error_of[i] >= 0:
                    keep[i] = error_of[i] not in seen
                    seen.add(int(error_of[i]))
            ap = average_precision(scores[keep], error_of[keep] >= 0, n_errors)
        rows[kind] = {"n_errors": n_errors, "n_flagged": int(flags.sum()), "n_found": found, "precision": precision,
                      "recall": recall, "f1": f1, "average_precision": ap, "n_scored": len(own)}
    return pd.DataFrame.from_dict(rows, orient="index")


def _missing_hits(places: pd.DataFrame, missing: pd.DataFrame, threshold: float) -> np.ndarray:
    """For each place, the row of ``missing`` it matches (greedy by score, each missing object once), or -1."""
    error_of = np.full(len(places), -1, int)
    if not len(places) or not len(missing):
        return error_of
    scores = places["score"].to_numpy(float) if "score" in places else np.zeros(len(places))
    order = np.argsort(-np.nan_to_num(scores, nan=-np.inf), kind="stable")
    taken: set[int] = set()
    truth_boxes = missing[["x", "y", "w", "h"]].to_numpy(float)
    truth_images = missing["sample_id"].to_numpy()
    place_boxes = places[["x", "y", "w", "h"]].to_numpy(float)
    place_images = places["sample_id"].to_numpy()
    for i in order:
        same = [j for j in np.flatnonzero(truth_images == place_images[i]) if j not in taken]
        if not same:
            continue
        iou = box_iou_matrix(place_boxes[i][None, :], truth_boxes[same])[0]
        if iou.max() >= threshold:
            error_of[i] = same[int(iou.argmax())]
            taken.add(error_of[i])
    return error_of


# ------------------------------------------------------------------------------------------------ findings


def object_flags(labels: np.ndarray, probs: np.ndarray) -> np.ndarray:
    """The ``object_mistakes`` check's flag rules (:data:`audit.checks.object_mistakes.FLAG_RULES`), so the demo
    judges boxes exactly as the check does."""
    from audit.checks.mistakes import flag_labels
    from audit.checks.object_mistakes import FLAG_RULES

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return flag_labels(labels, probs, FLAG_RULES, None)[0]


def findings_without_predictions(demo: DetectionDemo, label_set: str = GIVEN, negatives: tuple[str, ...] = (
        BACKGROUND_LABEL, MISPLACED_LABEL), folds: int = 5, seed: int = 0) -> pd.DataFrame:
    """What a single label set reveals with no detector and no other annotator: a cross-validated classifier on
    crop pixels, and the geometry.

    The classifier is the object check's (:func:`audit.checks.object_mistakes.crop_pred_probs` on
    :func:`crop_features`, 8x8 grey), trained on the label boxes with their classes plus, per ``negatives``,
    examples made from the labels themselves: ``background`` (two random windows per image overlapping no label
    box, :func:`background_boxes`) and ``misplaced`` (badly drawn copies of 30% of the label boxes,
    :func:`misplaced_boxes`). Flags and the classifier's refit are the ``object_mistakes`` check's
    (:func:`object_flags`).

    - ``wrong_class``: flagged boxes whose most likely class is a digit; score = highest other digit's
      probability minus the given class's (the normalised margin, on digits only).
    - ``spurious`` (needs the ``background`` negative): score = probability of background; flag = background is
      the most likely class.
    - ``location`` (needs the ``misplaced`` negative): score = probability of misplaced; flag = most likely.
    - ``duplicate``: :func:`audit.geometry.same_class_overlap` (flag: IoU >= 0.5).
    """
    from audit.checks.object_mistakes import crop_pred_probs
    from audit.geometry import same_class_overlap

    labels = demo.label_set(label_set)
    names = [*CLASSES, *negatives]
    codes = {c: i for i, c in enumerate(names)}
    extra = []
    if BACKGROUND_LABEL in negatives:
        extra.append(background_boxes(labels, demo.samples, seed=seed).assign(label=BACKGROUND_LABEL))
    if MISPLACED_LABEL in negatives:
        extra.append(misplaced_boxes(labels, seed=seed).assign(label=MISPLACED_LABEL))
    others = pd.concat(extra, ignore_index=True) if extra else pd.DataFrame(columns=["sample_id", "x", "y", "w",
                                                                                      "h", "label"])
    x = np.vstack([object_crop_features(labels, demo.samples),
                   object_crop_features(others.set_index(pd.RangeIndex(len(others))), demo.samples)])
    y = np.r_[labels["label"].map(codes).to_numpy(int), others["label"].map(codes).to_numpy(int)]
    all_probs, _, _, _ = crop_pred_probs(x, y, len(names), folds, seed=seed)
    flagged = object_flags(y, all_probs)[: len(labels)]
    n = len(labels)
    probs, given = all_probs[:n], y[:n]
    digits = probs[:, : len(CLASSES)].copy()
    own = digits[np.arange(n), given].copy()
    digits[np.arange(n), given] = -np.inf
    suggested = probs.argmax(axis=1)
    overlap = same_class_overlap(labels).to_numpy()
    frames = [
        pd.DataFrame({"kind": "wrong_class", "object_id": labels.index, "score": digits.max(axis=1) - own,
                      "is_issue": flagged & (suggested < len(CLASSES))}),
        pd.DataFrame({"kind": "duplicate", "object_id": labels.index, "score": overlap, "is_issue": overlap >= 0.5}),
    ]
    for kind, negative in (("spurious", BACKGROUND_LABEL), ("location", MISPLACED_LABEL)):
        if negative in negatives:
            frames.append(pd.DataFrame({"kind": kind, "object_id": labels.index, "score": probs[:, codes[negative]],
                                        "is_issue": suggested == codes[negative]}))
    return pd.concat(frames, ignore_index=True)


def findings_from_agreement(demo: DetectionDemo, annotator: str, iou_threshold: float = 0.5,
                            agreement: Any = None) -> pd.DataFrame:
    """What the other annotators reveal about one of them, with no model: the ``suspect`` column and the
    ``missing`` table of :func:`audit.checks.object_agreement.object_agreement` (pass ``agreement``, its
    result on ``demo.annotations``, to reuse it)."""
    from audit.checks.object_agreement import PREFIX, object_agreement

    result = agreement or object_agreement(demo.annotations, iou_threshold=iou_threshold, class_names=CLASSES)
    own = result.objects[demo.annotations["annotator"] == annotator]
    col = {c.removeprefix(PREFIX): own[c] for c in own.columns}
    suspect = col["suspect"].fillna("")
    consensus_best = col["consensus_best_iou"].fillna(0.0)
    missed = result.missing[result.missing["annotator"] == annotator]
    frames = [
        pd.DataFrame({"kind": "wrong_class", "object_id": own.index, "score": 1 - col["class_support"],
                      "is_issue": suspect.str.contains("wrong_class")}),
        pd.DataFrame({"kind": "location", "object_id": own.index,
                      "score": np.where(col["in_consensus"], 0.0, consensus_best * (consensus_best < iou_threshold)),
                      "is_issue": suspect.str.contains("misplaced")}),
        pd.DataFrame({"kind": "spurious", "object_id": own.index,
                      "score": (1 - col["support_share"]) * (1 - np.fmax(col["best_iou"].fillna(0), consensus_best)),
                      "is_issue": suspect.str.contains("unsupported")}),
        pd.DataFrame({"kind": "duplicate", "object_id": own.index, "score": col["duplicate_iou"],
                      "is_issue": suspect.str.contains("duplicate")}),
        pd.DataFrame({"kind": "missing", "object_id": None, "sample_id": missed["sample_id"], "x": missed["x"],
                      "y": missed["y"], "w": missed["w"], "h": missed["h"],
                      "score": missed["support"] * (1 - missed["best_iou"]), "is_issue": missed["skipped"]}),
    ]
    return pd.concat(frames, ignore_index=True)


def findings_from_predictions(labels: pd.DataFrame, predictions: pd.DataFrame, sample_ids: list[str],
                              ) -> tuple[dict[str, pd.DataFrame], dict[str, Any]]:
    """Findings from a detector's predictions (:func:`audit.checks.object_detection.object_label_quality`), two
    ways: ``"objectlab"``, cleanlab's per-box subtype scores and flags alone (swap -> wrong class, badloc ->
    location, overlooked -> missing; nothing for spurious or duplicate boxes); ``"evidence"``, label-audit's
    :func:`~audit.checks.object_detection.prediction_evidence` scores and same-class overlap for duplicates.
    Evidence scores are ``class_margin``, ``location_issue_score`` (which includes ObjectLab's badloc),
    ``spurious_score``, unlabelled detections' confidence and same-class overlap. Evidence flags: wrong class,
    the ``object_mistakes`` check's rules (:func:`object_flags`) on
    :func:`~audit.checks.object_detection.label_class_probs` (boxes no prediction overlaps are not judged);
    location, ``location_score > 0.5``; spurious, ``spurious_score >= 0.9`` (no detection above 0.1 there);
    missing, unlabelled detections with confidence >= 0.5; duplicate, same-class overlap >= 0.5."""
    from audit.checks.object_detection import PREFIX, label_class_probs, object_label_quality
    from audit.geometry import same_class_overlap

    result = object_label_quality(labels, predictions, class_names=CLASSES, sample_ids=sample_ids)
    per, over, unlabelled = result.labels, result.overlooked, result.unlabelled
    overlap = same_class_overlap(labels).to_numpy()
    probs = label_class_probs(labels, predictions, CLASSES)
    judged = np.isfinite(probs).all(axis=1)
    class_flags = np.zeros(len(labels), bool)
    codes = labels["label"].map({c: i for i, c in enumerate(CLASSES)}).to_numpy(int)
    if judged.sum() > 1:
        class_flags[judged] = object_flags(codes[judged], probs[judged])

    def col(name: str) -> pd.Series:
        return per[f"{PREFIX}{name}"]

    def places(frame: pd.DataFrame, score: pd.Series, flag: pd.Series) -> pd.DataFrame:
        return pd.DataFrame({"kind": "missing", "object_id": None, "sample_id": frame["sample_id"], "x": frame["x"],
                             "y": frame["y"], "w": frame["w"], "h": frame["h"], "score": score, "is_issue": flag})

    objectlab = pd.concat([
        pd.DataFrame({"kind": "wrong_class", "object_id": per.index, "score": 1 - col("swap_score"),
                      "is_issue": col("is_swap_issue")}),
        pd.DataFrame({"kind": "location", "object_id": per.index, "score": 1 - col("badloc_score"),
                      "is_issue": col("is_badloc_issue")}),
        places(over, 1 - over[f"{PREFIX}overlooked_score"], over[f"{PREFIX}is_overlooked_issue"]),
    ], ignore_index=True)
    evidence = pd.concat([
        pd.DataFrame({"kind": "wrong_class", "object_id": per.index, "score": col("class_margin"),
                      "is_issue": class_flags}),
        pd.DataFrame({"kind": "location", "object_id": per.index, "score": col("location_issue_score"),
                      "is_issue": col("location_score") > 0.5}),
        pd.DataFrame({"kind": "spurious", "object_id": per.index, "score": col("spurious_score"),
                      "is_issue": col("spurious_score") >= 0.9}),
        pd.DataFrame({"kind": "duplicate", "object_id": per.index, "score": overlap, "is_issue": overlap >= 0.5}),
        places(unlabelled, unlabelled[f"{PREFIX}missing_score"], unlabelled[f"{PREFIX}missing_score"] >= 0.5),
    ], ignore_index=True)
    return {"objectlab": objectlab, "evidence": evidence}, result.metrics


# ------------------------------------------------------------------------------------------------ measurement


def measure(root: Path, n_images: int = 300, error_rate: float = 0.1, seed: int = 0) -> dict[str, Any]:
    """Build the demo and score every finding source against the truth (the numbers in the helper's report)."""
    from audit.checks.object_agreement import object_agreement

    timings: dict[str, float] = {}
    results: dict[str, pd.DataFrame] = {}

    def timed(name: str, function, *args, **kwargs):
        start = time.perf_counter()
        value = function(*args, **kwargs)
        timings[name] = round(time.perf_counter() - start, 2)
        return value

    demo = timed("build", build_detection_demo, root, n_images=n_images, error_rate=error_rate, seed=seed)
    ids = list(demo.samples.index)
    for negatives in ((), (BACKGROUND_LABEL,), (BACKGROUND_LABEL, MISPLACED_LABEL)):
        name = "given | crop classifier, no predictions | negatives: " + (", ".join(negatives) or "none")
        found = timed(name, findings_without_predictions, demo, GIVEN, negatives=negatives, seed=seed)
        results[name] = evaluate_findings(found, demo.errors, GIVEN)
    agreement = timed("object agreement", object_agreement, demo.annotations, class_names=CLASSES)
    for annotator in ANNOTATOR_ERROR_RATES:
        results[f"{annotator} | annotator agreement, no predictions"] = evaluate_findings(
            findings_from_agreement(demo, annotator, agreement=agreement), demo.errors, annotator)
    sources = {
        "crop-classifier predictions": lambda: classifier_predictions(demo.samples, demo.given, seed=seed),
        "simulated predictions": lambda: simulate_predictions(demo.truth, seed=seed),
    }
    out: dict[str, Any] = {"n_images": len(demo.samples), "n_true_objects": len(demo.truth), "rates": demo.rates}
    for source, make in sources.items():
        predictions = timed(f"predict: {source}", make)
        found, metrics = timed(f"object_label_quality: {source}", findings_from_predictions, demo.given,
                               predictions, ids)
        top = predictions.groupby(["sample_id", "x", "y", "w", "h"])["score"].max()
        out[f"{source}: detections, share of top confidence > 0.95"] = [len(top), float((top > 0.95).mean())]
        for method, table in found.items():
            results[f"given | {method} | {source}"] = evaluate_findings(table, demo.errors, GIVEN)
        out[f"{source}: cleanlab metrics"] = metrics
    out["agreement_per_annotator_f1"] = {a: v["f1"] for a, v in agreement.metrics["per_annotator"].items()}
    out["results"] = results
    out["timings_s"] = timings
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Measure audit findings on the detection demo.")
    parser.add_argument("--root", type=Path, default=Path("reports/detection-demo-data"))
    parser.add_argument("--images", type=int, default=300)
    parser.add_argument("--error-rate", type=float, default=0.1)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    result = measure(args.root, args.images, args.error_rate, args.seed)
    pd.set_option("display.width", 160)
    print(f"{result['n_images']} images, {result['n_true_objects']} true objects, rates per kind {result['rates']}")
    for name, table in result.pop("results").items():
        print(f"\n== {name}")
        print(table.round(3).to_string())
    for key, value in result.items():
        if key not in ("n_images", "n_true_objects", "rates"):
            print(f"{key}: {value}")


if __name__ == "__main__":
    main()


# ------------------------------------------------------------------------------------ the demo, end to end


@dataclass
class DetectionDemoOutcome:
    """How a ``label-audit run`` of the detection demo did against the injected truth."""

    run_path: Path
    embedder: str
    per_kind: pd.DataFrame  # per error kind: n_errors, n_flagged, precision, recall, f1, average_precision
    predictions: str

    def lines(self) -> list[str]:
        out = [f"detection demo run: {self.run_path}", f"embedder: {self.embedder}",
               f"predictions: {self.predictions}",
               "error kind      errors  flagged  precision  recall    F1     AP    (shipped labels, 10% per kind)"]
        for kind, row in self.per_kind.iterrows():
            out.append(f"{kind:<14} {int(row['n_errors']):>7} {int(row['n_flagged']):>8} {row['precision']:>10.2f} "
                       f"{row['recall']:>7.2f} {row['f1']:>6.2f} {row['average_precision']:>6.2f}")
        report = self.run_path / "index.html"
        if report.is_file():
            out.append(f"report: {report}")
        return out


def write_coco_results(predictions: pd.DataFrame, samples: pd.DataFrame, path: Path) -> Path:
    """A detector's boxes as a COCO results file (``[{image_id, category_id, bbox, score}]``), ids as in the
    demo's COCO files."""
    image_ids = {s: i + 1 for i, s in enumerate(samples.index)}
    results = [{"image_id": image_ids[r["sample_id"]], "category_id": int(r["label"]) + 1,
                "bbox": [float(r["x"]), float(r["y"]), float(r["w"]), float(r["h"])], "score": float(r["score"])}
               for _, r in predictions.iterrows()]
    path.write_text(json.dumps(results))
    return path


def findings_from_run(run: Any, demo: DetectionDemo) -> pd.DataFrame:
    """The run's findings on the shipped boxes as candidate rows (``kind, object_id | place, score, is_issue``),
    with the demo's object ids (annotation ``n`` of given.json is row ``n`` of ``demo.given``)."""
    objects = run.objects
    given = objects[objects["annotator"].fillna("") == ""]
    to_demo = {str(n): object_id for n, object_id in enumerate(demo.given.index, start=1)}
    ids = given.index.map(lambda i: to_demo.get(str(i), str(i)))
    kind = given.get("object_mistakes_kind")
    frames = []
    if kind is not None:
        scores = {"wrong_class": given["object_mistakes_wrong_class_score"].to_numpy(float),
                  "spurious": given["object_mistakes_background_prob"].to_numpy(float),
                  "location": given["object_mistakes_misplaced_prob"].to_numpy(float),
                  "duplicate": given["object_mistakes_duplicate_iou"].to_numpy(float)}
        flags = {"wrong_class": kind == "wrong_class", "spurious": kind == "spurious",
                 "location": kind == "badly_located", "duplicate": kind == "duplicate"}
        for name in scores:
            score = scores[name]
            if "object_detection_spurious_score" in given and name in ("spurious", "location", "wrong_class"):
                column = {"spurious": "object_detection_spurious_score",
                          "location": "object_detection_location_issue_score",
                          "wrong_class": "object_detection_class_margin"}[name]
                evidence = given[column].to_numpy(float)
                score = np.nanmean(np.vstack([np.nan_to_num(score), np.nan_to_num(evidence)]), axis=0)
            frames.append(pd.DataFrame({"kind": name, "object_id": ids, "score": score,
                                        "is_issue": np.asarray(flags[name], bool)}))
    missing_column = "object_agreement_missing_in_labels"
    if missing_column in objects:
        places = objects[objects[missing_column].notna()]  # consensus boxes, matched or not by the labels
        frames.append(pd.DataFrame({"kind": "missing", "sample_id": places["sample_id"].str.replace(
            "images/", "").str.replace(".png", ""), "x": places["x"], "y": places["y"], "w": places["w"],
            "h": places["h"], "score": 1.0 - places["object_agreement_labels_best_iou"].to_numpy(float),
            "is_issue": places[missing_column].astype(bool)}))
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(
        columns=["kind", "object_id", "score", "is_issue"])


def run_detection_demo(output_dir: Path = Path("reports"), n_images: int = 300, error_rate: float = 0.1,
                       embedder: str = "auto", predictions: str = "none", run_name: str = "detection-demo",
                       seed: int = 0, report: bool = True, cache_dir: Path | None = None,
                       progress: Any = True) -> DetectionDemoOutcome:
    """Build the detection demo, audit it with ``label-audit run`` (shipped boxes plus three annotators; with
    ``predictions`` "classifier" or "simulated", a detector's boxes too), and score the findings per error kind."""
    from audit.config import build_config
    from audit.runner import run

    if predictions not in ("none", "classifier", "simulated"):
        raise ValueError(f"predictions must be none, classifier or simulated, not {predictions!r}")
    output_dir = Path(output_dir)
    root = output_dir / f"{run_name}-data"
    demo = build_detection_demo(root, n_images=n_images, error_rate=error_rate, seed=seed)
    object_predictions: dict[str, Any] = {}
    described = "none (findings from the crops and the annotators only)"
    if predictions != "none":
        found = (classifier_predictions(demo.samples, demo.given, seed=seed) if predictions == "classifier"
                 else simulate_predictions(demo.truth, seed=seed))
        object_predictions = {"path": write_coco_results(found, demo.samples, root / "predictions.json")}
        described = ("a crop classifier trained out of fold on the shipped boxes (see classifier_predictions)"
                     if predictions == "classifier" else "simulated from the truth (see simulate_predictions)")
    annotators = {name: root / "annotators" / f"{name}.json" for name in ANNOTATOR_ERROR_RATES}
    config = build_config(overrides={
        "source": {"kind": "coco", "path": root / "given.json", "annotator_files": annotators},
        "embedder": {"kind": embedder, "cache_dir": cache_dir}, "output_dir": output_dir, "run_name": run_name,
        "seed": seed, "report": report, "projection": {"seed": seed}, "object_predictions": object_predictions,
    })
    results = run(config, progress=progress)
    per_kind = evaluate_findings(findings_from_run(results, demo), demo.errors, GIVEN)
    return DetectionDemoOutcome(run_path=results.path, embedder=results.summary["embedder"]["name"],
                                per_kind=per_kind, predictions=described)
