"""The segmentation demo: real digit scans pasted onto real photo backgrounds, their strokes as exact class masks,
known mask errors of five kinds, three annotators of different reliability, and per-pixel model probabilities.

The images
----------
Each image is a ``canvas`` x ``canvas`` grey crop of one of scikit-image's ``grass``, ``gravel`` and ``brick``
photos (chosen at random per image), scaled to 0..70, with sklearn's real 8x8 digit scans (``load_digits``, 1,797
scans, each used once while any is left) scaled to 32-48 px (bilinear; scaled with the canvas) and
alpha-composited in white (``alpha = ink / 16``) without overlap (at least ``GAP`` px between their squares). The
**truth mask** gives the digit's class to its stroke pixels (``alpha >= INK_ALPHA``) and ``background`` to every
other pixel. Classes (mask value -> name, ``classes.yaml``): 0 ``background``, 1..10 the digits ``"0"``..``"9"``;
255 is unlabelled (unused by the truth).

The masks and their errors
--------------------------
The shipped masks (``masks/given``) and three annotators' (``masks/<name>``; ``ANNOTATOR_ERROR_RATES``: alice is
the most reliable, carol the least) are each derived from the truth independently. Each digit (an *instance*)
gets, with probability ``rate`` per kind (at most one kind per instance):

- ``wrong_class``: its pixels are painted with another digit, uniformly;
- ``eroded``: its mask loses a 1-px rim (3x3 erosion; the digit stays, thinner, maybe broken);
- ``dilated``: its mask grows by 2 px into the background (3x3 dilation, twice);
- ``missing``: its pixels are painted background;

and each image gets ``Binomial(n digits, rate)`` ``spurious`` blobs (ellipses of 4-10 px radii, a random digit
class) on background, at least 3 px from any digit. ``errors`` lists every error: label set, image, kind,
instance, detail, the changed pixel count and its **zone** as a COCO RLE (wrong class, eroded, missing: the true
digit's pixels; dilated: the dilated pixels; spurious: the blob), which is what a finding must touch to find it.

Predicted probabilities
-----------------------
:func:`model_pixel_probabilities` is a real, if small, two-stage segmenter trained out of fold (by image, 5 folds)
on the **shipped (noisy) masks**, never the truth: (1) a per-pixel foreground/background logistic regression on
local intensity features; (2) connected components of the predicted foreground, each classified by a crop
classifier (logistic regression + kNN, the image pipeline's model) trained on the shipped masks' regions.
``p(digit c) = p(foreground) * p(c | component)``, ``p(background) = 1 - p(foreground)``.
:func:`simulate_pixel_probabilities` draws probabilities from the truth with stated noise instead (for scale
tests, where a model would dominate the time). Both write one ``(K, H, W)`` float32 ``.npy`` per image.

Evaluation (:func:`evaluate`)
-----------------------------
A *finding* is a flagged pixel set (a region) with the kind of error it claims: ``wrong_class`` (labelled digit,
evidence of another digit), ``extra`` (labelled digit, evidence of background: dilated or spurious) or ``missing``
(labelled background, evidence of a digit: eroded or missing). A finding *hits* an error whose zone it overlaps by
at least one pixel. Per error kind, **recall** is the share of errors hit by any finding; per finding kind,
**precision** the share of findings that hit an error of a matching kind (wrong_class: wrong_class; extra: dilated
or spurious; missing: eroded or missing). ``wrong_class`` F1 combines the wrong_class findings' precision with the
share of wrong_class errors hit by a wrong_class finding. Image **AUROC** ranks the images by the method's image
score against "the shipped mask has at least one error".
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

from audit.demos.scenes import digit_alpha, free_spot

DIGITS = [str(d) for d in range(10)]
CLASSES = ["background", *DIGITS]  # mask value i -> CLASSES[i]
BACKGROUND = 0
IGNORE_VALUE = 255
ERROR_KINDS = ("wrong_class", "eroded", "dilated", "missing", "spurious")
INSTANCE_KINDS = ("wrong_class", "eroded", "dilated", "missing")
FINDING_KINDS = {"wrong_class": ("wrong_class",), "extra": ("dilated", "spurious"), "missing": ("eroded", "missing")}
ANNOTATOR_ERROR_RATES = {"alice": 0.02, "bob": 0.05, "carol": 0.10}
GIVEN = "given"
CANVAS = 128
DIGIT_SIDES = (32, 48)
DIGITS_PER_IMAGE = (2, 4)
GAP = 8
INK_ALPHA = 0.3
BACKGROUND_MAX = 70
BACKGROUNDS = ("grass", "gravel", "brick")
BLOB_RADII = (4, 10)
CROP_SIDE = 12
HOG_SIDE = 24
FEATURES = 2 * CROP_SIDE * CROP_SIDE + 2 * 8 * 4 * 3 * 3  # two crops; two HOGs (8 orientations x 2x2 x 3x3 blocks)
DILATE_PX = 2


@dataclass
class SegmentationDemo:
    """A built demo under ``root``.

    ``samples``: indexed by ``sample_id``: ``filepath``, ``mask`` (shipped), ``truth`` (absolute paths),
    ``split``. ``mask_annotations``: ``sample_id, annotator, mask_path``. ``errors``: one row per injected error
    (``label_set, sample_id, kind, instance, detail, changed_pixels, zone``). ``rates``: error rate per kind of each
    label set. ``manifest``: CSV with ``sample_id, filepath, mask, split`` (a ``masks`` source reads it with
    ``class_map``).
    """

    root: Path
    manifest: Path
    class_map: Path
    samples: pd.DataFrame
    mask_annotations: pd.DataFrame
    errors: pd.DataFrame
    rates: dict[str, float]

    @property
    def spec(self):
        from audit.sources.masks import read_class_map

        return read_class_map(self.class_map)

    def annotator_folders(self) -> dict[str, Path]:
        return {name: self.root / "masks" / name for name in self.rates if name != GIVEN}


# ------------------------------------------------------------------------------------------------ building


def _photos() -> dict[str, np.ndarray]:
    from skimage import data

    return {name: getattr(data, name)() for name in BACKGROUNDS}


class _DigitSource:
    """sklearn's digit scans in a seeded random order, each used once before any is reused."""

    def __init__(self, rng: np.random.Generator) -> None:
        from sklearn.datasets import load_digits

        digits = load_digits()
        self.images, self.targets, self.rng = digits.images, digits.target, rng
        self.order, self.used = rng.permutation(len(self.targets)), 0

    def next(self) -> tuple[np.ndarray, int, int]:
        if self.used == len(self.order):
            self.order, self.used = self.rng.permutation(len(self.targets)), 0
        index = int(self.order[self.used])
        self.used += 1
        return self.images[index], int(self.targets[index]), index


def _truth_image(photos: dict[str, np.ndarray], digits: _DigitSource, canvas: int, per_image: tuple[int, int],
                 sides: tuple[int, int], rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Image (uint8), truth mask values (uint8) and instance ids (int32, 0 = none) of one canvas."""
    photo = photos[BACKGROUNDS[int(rng.integers(len(BACKGROUNDS)))]]
    top, left = rng.integers(0, photo.shape[0] - canvas + 1), rng.integers(0, photo.shape[1] - canvas + 1)
    image = photo[top:top + canvas, left:left + canvas].astype(float) / 255.0 * BACKGROUND_MAX
    truth = np.zeros((canvas, canvas), np.uint8)
    instances = np.zeros((canvas, canvas), np.int32)
    occupied: list[tuple[int, int, int]] = []
    for _ in range(int(rng.integers(per_image[0], per_image[1] + 1))):
        side = int(rng.integers(sides[0], sides[1] + 1))
        spot = free_spot(occupied, side, canvas, rng, GAP)
        if spot is None:
            continue
        pixels, target, _ = digits.next()
        x, y = spot
        occupied.append((x, y, side))
        alpha = digit_alpha(pixels, side)
        window = (slice(y, y + side), slice(x, x + side))
        image[window] = image[window] * (1 - alpha) + 255.0 * alpha
        ink = alpha >= INK_ALPHA
        truth[window][ink] = target + 1
        instances[window][ink] = len(occupied)
    return np.clip(image.round(), 0, 255).astype(np.uint8), truth, instances


def _ellipse(canvas: int, rng: np.random.Generator, forbidden: np.ndarray) -> np.ndarray | None:
    yy, xx = np.mgrid[0:canvas, 0:canvas]
    for _ in range(100):
        ry, rx = rng.integers(BLOB_RADII[0], BLOB_RADII[1] + 1, size=2)
        cy, cx = rng.integers(ry, canvas - ry), rng.integers(rx, canvas - rx)
        blob = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1.0
        if not (blob & forbidden).any():
            return blob
    return None


def _inject(truth: np.ndarray, instances: np.ndarray, rate: float, label_set: str, sample_id: str,
            rng: np.random.Generator) -> tuple[np.ndarray, list[dict[str, Any]]]:
    """One label set's mask values for one image, derived from the truth with errors at ``rate`` per kind."""
    from scipy.ndimage import binary_dilation, binary_erosion, find_objects

    from audit.geometry import mask_to_rle

    square = np.ones((3, 3), bool)
    out = truth.copy()
    errors: list[dict[str, Any]] = []

    def record(kind: str, instance: int | None, detail: str, changed: np.ndarray, zone: np.ndarray) -> None:
        errors.append({"label_set": label_set, "sample_id": sample_id, "kind": kind, "instance": instance,
                       "detail": detail, "changed_pixels": int(changed.sum()), "zone": mask_to_rle(zone)})

    taken = truth > 0
    for instance, window in enumerate(find_objects(instances), start=1):
        if window is None:
            continue
        draw = rng.random()
        kind = INSTANCE_KINDS[int(draw // rate)] if rate > 0 and draw < rate * len(INSTANCE_KINDS) else None
        if kind is None:
            continue
        own = np.zeros(truth.shape, bool)
        own[window] = instances[window] == instance
        value = int(truth[own][0])
        if kind == "wrong_class":
            wrong = int(rng.choice([v for v in range(1, 11) if v != value]))
            out[own] = wrong
            record(kind, instance, f"{CLASSES[value]} -> {CLASSES[wrong]}", own, own)
        elif kind == "eroded":
            kept = binary_erosion(own, square)
            if not kept.any():
                kept = binary_erosion(own)
            if kept.any():
                lost = own & ~kept
                out[lost] = BACKGROUND
                record(kind, instance, f"{int(lost.sum())} of {int(own.sum())} px removed", lost, own)
        elif kind == "dilated":
            grown = binary_dilation(own, square, iterations=DILATE_PX) & (truth == BACKGROUND)
            out[grown] = value
            taken |= grown
            record(kind, instance, f"{int(grown.sum())} px added around {int(own.sum())} px", grown, grown | own)
        elif kind == "missing":
            out[own] = BACKGROUND
            record(kind, instance, f"{int(own.sum())} px left background", own, own)
    n_blobs = int(rng.binomial(int(instances.max()), rate)) if rate > 0 and instances.max() else 0
    for _ in range(n_blobs):
        forbidden = binary_dilation(taken, square, iterations=3)
        blob = _ellipse(truth.shape[0], rng, forbidden)
        if blob is None:
            continue
        value = int(rng.integers(1, 11))
        out[blob] = value
        taken |= blob
        record("spurious", None, f"blob of {int(blob.sum())} px painted {CLASSES[value]}", blob, blob)
    return out, errors


def build_segmentation_demo(root: str | Path, n_images: int = 300, error_rate: float = 0.06,
                            annotator_rates: dict[str, float] | None = None, seed: int = 0, canvas: int = CANVAS,
                            digits_per_image: tuple[int, int] | None = None) -> SegmentationDemo:
    """Write the demo under ``root``: ``images/``, ``masks/given/``, ``masks/<annotator>/``, ``truth/`` (index
    PNGs), ``classes.yaml``, ``manifest.csv``, ``errors.csv``. Built one image at a time (memory stays flat).

    ``error_rate`` is the shipped masks' rate per error kind; ``annotator_rates`` the same per annotator (default
    :data:`ANNOTATOR_ERROR_RATES`). ``digits_per_image`` defaults to 2-4 per 128 x 128, scaled with the area;
    digit sides scale with ``canvas / 128`` up to 2x.
    """
    from PIL import Image

    if not 0 <= error_rate <= 0.2:
        raise ValueError(f"error_rate is per kind and must be in [0, 0.2], got {error_rate}")
    rates = {GIVEN: float(error_rate), **(ANNOTATOR_ERROR_RATES if annotator_rates is None else annotator_rates)}
    scale = canvas / CANVAS
    per_image = digits_per_image or (max(1, round(DIGITS_PER_IMAGE[0] * scale ** 2)),
                                     max(1, round(DIGITS_PER_IMAGE[1] * scale ** 2)))
    side_scale = min(max(scale, 0.5), 2.0)
    sides = (round(DIGIT_SIDES[0] * side_scale), round(DIGIT_SIDES[1] * side_scale))
    rng = np.random.default_rng(seed)
    root = Path(root)
    folders = {"images": root / "images", "truth": root / "truth",
               **{name: root / "masks" / name for name in rates}}
    for folder in folders.values():
        folder.mkdir(parents=True, exist_ok=True)
    photos, digits = _photos(), _DigitSource(rng)
    rows, annotation_rows, errors = [], [], []
    for i in range(n_images):
        sample_id = f"seg-{i:04d}"
        image, truth, instances = _truth_image(photos, digits, canvas, per_image, sides, rng)
        Image.fromarray(image, mode="L").save(folders["images"] / f"{sample_id}.png")
        Image.fromarray(truth, mode="L").save(folders["truth"] / f"{sample_id}.png")
        for name, rate in rates.items():
            values, found = _inject(truth, instances, rate, name, sample_id, rng)
            Image.fromarray(values, mode="L").save(folders[name] / f"{sample_id}.png")
            errors.extend(found)
            if name != GIVEN:
                annotation_rows.append((sample_id, name, str((folders[name] / f"{sample_id}.png").resolve())))
        rows.append({"sample_id": sample_id, "filepath": f"images/{sample_id}.png",
                     "mask": f"masks/given/{sample_id}.png", "truth": f"truth/{sample_id}.png",
                     "split": "train" if rng.random() < 0.8 else "val"})
    class_map = root / "classes.yaml"
    class_map.write_text("# mask value -> class; 255 is unlabelled (the default ignore_index)\n"
                         + "".join(f"{i}: {json.dumps(name)}\n" for i, name in enumerate(CLASSES)))
    manifest = root / "manifest.csv"
    pd.DataFrame(rows)[["sample_id", "filepath", "mask", "split"]].to_csv(manifest, index=False)
    error_table = pd.DataFrame(errors, columns=["label_set", "sample_id", "kind", "instance", "detail",
                                                "changed_pixels", "zone"])
    error_table.to_csv(root / "errors.csv", index=False)
    samples = pd.DataFrame(rows).set_index("sample_id")
    for column in ("filepath", "mask", "truth"):
        samples[column] = [str((root / p).resolve()) for p in samples[column]]
    annotations = pd.DataFrame(annotation_rows, columns=["sample_id", "annotator", "mask_path"])
    return SegmentationDemo(root=root, manifest=manifest, class_map=class_map, samples=samples,
                            mask_annotations=annotations, errors=error_table, rates=rates)


# ------------------------------------------------------------------------------------------------ features


def load_grey(path: str | Path) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as image:
        return np.asarray(image.convert("L"))


def _square_crop(array: np.ndarray, box: tuple[float, float, float, float], side: int, pad: int = 2) -> np.ndarray:
    """The box's square neighbourhood (side = longer box side + 2 * pad, centred), resized to side x side."""
    from PIL import Image

    x, y, w, h = box
    half = max(w, h) / 2 + pad
    cx, cy = x + w / 2, y + h / 2
    margin = math.ceil(half) + 1
    padded = np.pad(array.astype(np.float32), margin, mode="constant")
    x1, y1 = round(cx - half) + margin, round(cy - half) + margin
    size = max(1, round(2 * half))
    crop = padded[y1:y1 + size, x1:x1 + size]
    return np.asarray(Image.fromarray(crop, mode="F").resize((side, side), Image.Resampling.BILINEAR), np.float32)


def crop_vector(image: np.ndarray, region: np.ndarray, box: tuple[float, float, float, float]) -> np.ndarray:
    """One region's features: its square crop (``CROP_SIDE`` x ``CROP_SIDE`` grey, 0..1), the same crop of the image
    masked by the region (what is under the region itself), and the HOG descriptors (scikit-image, 8 orientations,
    6-px cells, 2x2 blocks) of both at ``HOG_SIDE`` x ``HOG_SIDE``: :data:`FEATURES` values."""
    from skimage.feature import hog

    masked = image * region
    grey, under = _square_crop(image, box, HOG_SIDE), _square_crop(masked, box, HOG_SIDE)
    return np.concatenate([_square_crop(image, box, CROP_SIDE).ravel(), _square_crop(masked, box, CROP_SIDE).ravel(),
                           hog(grey, orientations=8, pixels_per_cell=(6, 6), cells_per_block=(2, 2)),
                           hog(under, orientations=8, pixels_per_cell=(6, 6), cells_per_block=(2, 2))])


def region_crop_features(objects: pd.DataFrame, filepaths: pd.Series) -> np.ndarray:
    """:func:`crop_vector` of every region of an object table (``(n, FEATURES)``); each image is read once."""
    from audit.geometry import rle_to_mask

    out = np.zeros((len(objects), FEATURES), np.float32)
    positions = pd.Series(np.arange(len(objects)), index=objects.index)
    for sample_id, group in objects.groupby("sample_id", sort=False):
        image = load_grey(filepaths.loc[sample_id]).astype(np.float32) / 255.0
        for object_id, r in group.iterrows():
            region = rle_to_mask(r["mask"], int(r["image_height"]), int(r["image_width"]))
            out[positions[object_id]] = crop_vector(image, region, (r["x"], r["y"], r["w"], r["h"]))
    return out


def background_regions(objects: pd.DataFrame, masks: pd.Series, filepaths: pd.Series, spec, per_image: int = 2,
                       seed: int = 0) -> np.ndarray:
    """Crop features (as :func:`region_crop_features`) of *background regions*: the shapes of real regions (drawn
    at random from ``objects``) placed where each mask is background under the shape's whole box. They show the
    region classifier what a region of the usual shapes looks like when it holds no object, so a blob painted on
    background is recognised as background whatever its shape."""
    from audit.geometry import rle_to_mask
    from audit.sources.masks import read_mask

    rng = np.random.default_rng(seed)
    rows = []
    if not len(objects):
        return np.zeros((0, FEATURES), np.float32)
    for sample_id, path in masks.items():
        codes = read_mask(path, spec)
        image = load_grey(filepaths.loc[sample_id]).astype(np.float32) / 255.0
        height, width = codes.shape
        found = 0
        for _ in range(30 * per_image):
            shape = objects.iloc[int(rng.integers(len(objects)))]
            x, y, w, h = (round(v) for v in shape[["x", "y", "w", "h"]])
            if w >= width or h >= height or w < 1 or h < 1:
                continue
            cut = rle_to_mask(shape["mask"], int(shape["image_height"]), int(shape["image_width"]))[y:y + h, x:x + w]
            nx, ny = int(rng.integers(0, width - w + 1)), int(rng.integers(0, height - h + 1))
            if not (codes[ny:ny + h, nx:nx + w] == spec.background).all():
                continue
            region = np.zeros((height, width), np.float32)
            region[ny:ny + h, nx:nx + w] = cut
            rows.append(crop_vector(image, region, (nx, ny, w, h)))
            found += 1
            if found == per_image:
                break
    return np.asarray(rows, np.float32).reshape(-1, FEATURES)


class CropModel:
    """The image pipeline's model (:mod:`audit.checks.predictions`): logistic regression (C=0.1) on features scaled
    to unit mean square, averaged with a distance-weighted kNN vote; probabilities for all ``n_classes``."""

    def __init__(self, n_classes: int, knn_neighbors: int = 10) -> None:
        self.n_classes, self.knn_neighbors = n_classes, knn_neighbors

    @staticmethod
    def _scale(x: np.ndarray) -> np.ndarray:
        norms = np.linalg.norm(x, axis=1, keepdims=True)
        return x / np.where(norms > 0, norms, 1.0) * np.float32(math.sqrt(x.shape[1]))

    def fit(self, x: np.ndarray, y: np.ndarray) -> CropModel:
        from sklearn.linear_model import LogisticRegression
        from sklearn.neighbors import KNeighborsClassifier
        from threadpoolctl import threadpool_limits

        from audit.checks.predictions import LOGREG_C, LOGREG_MAX_ITER

        self.present = np.unique(y)
        with threadpool_limits(1, user_api="blas"), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            self.logreg = LogisticRegression(C=LOGREG_C, max_iter=LOGREG_MAX_ITER).fit(self._scale(x), y)
            self.knn = KNeighborsClassifier(n_neighbors=min(self.knn_neighbors, len(y)), weights="distance",
                                            algorithm="brute").fit(self._scale(x), y)
        return self

    def predict_proba(self, x: np.ndarray) -> np.ndarray:
        from threadpoolctl import threadpool_limits

        out = np.zeros((len(x), self.n_classes))
        if len(x):
            with threadpool_limits(1, user_api="blas"):
                scaled = self._scale(x)
                out[:, self.present] = (self.logreg.predict_proba(scaled) + self.knn.predict_proba(scaled)) / 2
        return out


# ------------------------------------------------------------------------------------------------ probabilities


def pixel_features(image: np.ndarray) -> np.ndarray:
    """``(H*W, 6)`` local features per pixel, 0..1: grey, 3x3 and 7x7 means, 5x5 max and min, gradient size."""
    from scipy.ndimage import maximum_filter, minimum_filter, sobel, uniform_filter

    grey = image.astype(np.float32) / 255.0
    gradient = np.hypot(sobel(grey, axis=0), sobel(grey, axis=1)) / 4.0
    planes = [grey, uniform_filter(grey, 3), uniform_filter(grey, 7), maximum_filter(grey, 5),
              minimum_filter(grey, 5), gradient]
    return np.stack([p.ravel() for p in planes], axis=1)


def _folds(ids: list[str], folds: int, seed: int) -> dict[str, int]:
    rng = np.random.default_rng(seed)
    return {s: int(f) for s, f in zip(np.array(ids)[rng.permutation(len(ids))], np.arange(len(ids)) % folds,
                                       strict=True)}


def _stem(sample_id: str) -> str:
    return Path(sample_id).with_suffix("").as_posix() if Path(sample_id).suffix else sample_id


def model_pixel_probabilities(samples: pd.DataFrame, spec, out_dir: str | Path, folds: int = 5, seed: int = 0,
                              pixels_per_image: int = 400, mask_column: str = "mask") -> Path:
    """Out-of-fold per-pixel class probabilities of a two-stage segmenter trained on ``samples[mask_column]``.

    1. **Foreground**: a logistic regression on :func:`pixel_features` of ``pixels_per_image`` pixels per
       training image (half labelled foreground, half background by the shipped mask, where it has both);
       ``p_fg`` for every pixel of the held-out images.
    2. **Which digit**: connected components of ``p_fg >= 0.5`` (merged across gaps of up to 4 px); each
       component's :func:`region_crop_features` classified by the image pipeline's model trained on the
       training images' shipped-mask regions (their classes) and background windows. Pixels within 4 px of a
       component take its class probabilities, others the training regions' class frequencies.
    3. ``p(background) = 1 - p_fg``, ``p(class c) = p_fg * p(c | component)``; background's share of the component
       classifier's output is folded into ``p(background)``.

    Folds are by image: no model sees the masks of the images it predicts. Writes ``out_dir/<id>.npy``
    ``(K, H, W)`` float32 (channels in the class map's order) and returns ``out_dir``.
    """
    from scipy.ndimage import binary_dilation, distance_transform_edt
    from scipy.ndimage import label as connected
    from sklearn.linear_model import LogisticRegression

    from audit.checks.mask_mistakes import region_objects
    from audit.sources.masks import read_mask

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    ids = [str(s) for s in samples.index]
    fold_of = _folds(ids, folds, seed)
    k, background = spec.n_classes, spec.background
    # Training material per image, computed once: sampled pixels for stage 1; region crops for stage 2.
    pixel_x, pixel_y, pixel_fold = [], [], []
    for sample_id in ids:
        codes = read_mask(samples.at[sample_id, mask_column], spec)
        features = pixel_features(load_grey(samples.at[sample_id, "filepath"]))
        labelled = np.flatnonzero(codes.ravel() != -1)
        fg = labelled[codes.ravel()[labelled] != background]
        bg = labelled[codes.ravel()[labelled] == background]
        half = pixels_per_image // 2
        chosen = np.concatenate([rng.choice(fg, min(half, len(fg)), replace=False) if len(fg) else fg,
                                 rng.choice(bg, min(half, len(bg)), replace=False) if len(bg) else bg])
        pixel_x.append(features[chosen])
        pixel_y.append(codes.ravel()[chosen] != background)
        pixel_fold.append(np.full(len(chosen), fold_of[sample_id]))
    px, py, pf = np.concatenate(pixel_x), np.concatenate(pixel_y), np.concatenate(pixel_fold)
    objects = region_objects(samples[mask_column], spec, merge_distance=2)
    region_x = region_crop_features(objects, samples["filepath"])
    region_y = objects["label"].map({c: i for i, c in enumerate(spec.classes)}).to_numpy(int)
    region_fold = objects["sample_id"].map(fold_of).to_numpy()
    windows, window_fold = [], []
    for fold in range(folds):
        own = [s for s in ids if fold_of[s] == fold]
        found = background_regions(objects, samples.loc[own, mask_column], samples.loc[own, "filepath"], spec,
                                   seed=seed + fold)
        windows.append(found)
        window_fold.append(np.full(len(found), fold))
    wx, wf = np.concatenate(windows), np.concatenate(window_fold)
    for fold in range(folds):
        train = pf != fold
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            stage1 = LogisticRegression(C=1.0, max_iter=500).fit(px[train], py[train])
        train_r = region_fold != fold
        train_x = np.vstack([region_x[train_r], wx[wf != fold]])
        train_y = np.concatenate([region_y[train_r], np.full(int((wf != fold).sum()), background)])
        stage2 = CropModel(k).fit(train_x, train_y)
        prior = np.bincount(region_y[train_r], minlength=k).astype(float)
        prior[background] = 0
        prior = prior / prior.sum() if prior.sum() else np.full(k, 1.0 / k)
        for sample_id in [s for s in ids if fold_of[s] == fold]:
            image = load_grey(samples.at[sample_id, "filepath"])
            height, width = image.shape
            p_fg = stage1.predict_proba(pixel_features(image))[:, 1].reshape(height, width)
            components, n = connected(binary_dilation(p_fg >= 0.5, iterations=2),
                                      structure=np.ones((3, 3), bool))
            class_probs = np.tile(prior[:, None, None], (1, height, width))
            if n:
                boxes = []
                for j in range(1, n + 1):
                    ys, xs = np.nonzero(components == j)
                    boxes.append({"sample_id": sample_id, "x": xs.min(), "y": ys.min(), "w": np.ptp(xs) + 1,
                                  "h": np.ptp(ys) + 1, "image_height": height, "image_width": width,
                                  "mask": _rle_of((components == j) & (p_fg >= 0.5))})
                found = pd.DataFrame(boxes, index=[f"c{j}" for j in range(n)])
                probs = stage2.predict_proba(region_crop_features(found, samples["filepath"]))
                probs[:, background] = 0
                sums = probs.sum(axis=1, keepdims=True)
                probs = np.where(sums > 0, probs / np.where(sums > 0, sums, 1), prior)
                # Every pixel within 4 px of a component takes that component's class probabilities.
                distance, (iy, ix) = distance_transform_edt(components == 0, return_indices=True)
                nearest = components[iy, ix]
                near = (nearest > 0) & (distance <= 4)
                class_probs[:, near] = probs[nearest[near] - 1].T
            out = class_probs * p_fg[None]
            out[background] = 1 - p_fg
            np.save(out_dir / f"{_stem(sample_id)}.npy", (out / out.sum(axis=0, keepdims=True)).astype(np.float32))
    return out_dir


def _rle_of(mask: np.ndarray) -> str:
    from audit.geometry import mask_to_rle

    return mask_to_rle(mask)


def simulate_pixel_probabilities(samples: pd.DataFrame, spec, out_dir: str | Path, seed: int = 0,
                                 sharpness: float = 4.0, noise: float = 1.0, blur: float = 1.0,
                                 confusion_rate: float = 0.03, truth_column: str = "truth",
                                 dtype: Any = np.float32) -> Path:
    """Per-pixel probabilities drawn from the true masks with stated noise (an idealised model).

    ``softmax(sharpness * gaussian_blur(one_hot(truth), blur px) + N(0, noise))`` per pixel, except that each
    connected true digit region is, with probability ``confusion_rate``, predicted as another digit (uniformly),
    as a model confuses whole objects. Writes ``out_dir/<id>.npy`` ``(K, H, W)`` and returns ``out_dir``.
    """
    from scipy.ndimage import gaussian_filter
    from scipy.ndimage import label as connected

    from audit.sources.masks import read_mask

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    k = spec.n_classes
    for i, (sample_id, path) in enumerate(samples[truth_column].items()):
        rng = np.random.default_rng([seed, i])
        codes = read_mask(path, spec).astype(np.int64)
        believed = codes.copy()
        foreground = (codes != spec.background) & (codes >= 0)
        components, n = connected(foreground, structure=np.ones((3, 3), bool))
        for j in np.flatnonzero(rng.random(n) < confusion_rate) + 1:
            own = components == j
            current = int(np.bincount(codes[own]).argmax())
            believed[own] = int(rng.choice([c for c in spec.foreground if c != current]))
        logits = np.empty((k, *codes.shape), np.float32)
        for c in range(k):
            logits[c] = sharpness * gaussian_filter((believed == c).astype(np.float32), blur)
        logits += rng.normal(0, noise, logits.shape).astype(np.float32)
        logits -= logits.max(axis=0, keepdims=True)
        probs = np.exp(logits)
        probs /= probs.sum(axis=0, keepdims=True)
        np.save(out_dir / f"{_stem(str(sample_id))}.npy", probs.astype(dtype))
    return out_dir


# ------------------------------------------------------------------------------------------------ findings


def findings_without_model(demo: SegmentationDemo, folds: int = 5, seed: int = 0, merge_distance: int = 2,
                           ) -> tuple[pd.DataFrame, pd.Series, dict[str, Any]]:
    """The object pipeline on the shipped masks' regions, no model given (see :mod:`audit.checks.mask_mistakes`).

    Regions (:func:`~audit.checks.mask_mistakes.region_objects`, merge distance 2) -> crop features
    (:func:`region_crop_features`) plus background windows -> :func:`audit.checks.object_mistakes.crop_pred_probs`
    -> :func:`~audit.checks.mask_mistakes.region_label_issues`. A flagged region is a
    ``wrong_class`` finding when its most likely class is another digit, ``extra`` when it is background.
    Returns the findings, the image scores (``mask_regions_score``) and the metrics.
    """
    from audit.checks.mask_mistakes import region_label_issues, region_objects
    from audit.checks.object_mistakes import crop_pred_probs

    spec = demo.spec
    objects = region_objects(demo.samples["mask"], spec, merge_distance=merge_distance)
    features = region_crop_features(objects, demo.samples["filepath"])
    windows = background_regions(objects, demo.samples["mask"], demo.samples["filepath"], spec, seed=seed)
    codes = {c: i for i, c in enumerate(spec.classes)}
    x = np.vstack([features, windows])
    y = np.concatenate([objects["label"].map(codes).to_numpy(int), np.full(len(windows), spec.background)])
    probs, _, description, _ = crop_pred_probs(x, y, spec.n_classes, folds, seed=seed)  # with background windows
    result = region_label_issues(objects, probs[: len(objects)], spec.classes, sample_ids=demo.samples.index)
    regions = result.regions
    suggested = regions["region_suggested_label"]
    kind = np.where(suggested == spec.classes[spec.background], "extra", "wrong_class")
    findings = pd.DataFrame({"sample_id": objects["sample_id"], "kind": kind, "mask": objects["mask"],
                             "score": 1 - regions["region_label_quality"], "is_issue": regions["region_is_issue"]})
    metrics = {**result.metrics, "classifier": description, "n_background_windows": len(windows)}
    return findings.reset_index(drop=True), result.per_image["mask_regions_score"], metrics


def findings_from_agreement(demo: SegmentationDemo) -> tuple[pd.DataFrame, pd.Series, dict[str, Any]]:
    """Where the shipped masks differ from the three annotators' pixel consensus (no model).

    Regions of :func:`audit.checks.mask_agreement.mask_agreement`'s ``given_regions``: ``wrong_class`` where both
    say digit, ``extra`` where the consensus says background, ``missing`` where the shipped mask does. Image
    score: ``1 - mask_agreement_given_iou``."""
    from audit.checks.mask_agreement import mask_agreement

    spec = demo.spec
    result = mask_agreement(demo.mask_annotations, spec, sample_ids=demo.samples.index, given=demo.samples["mask"])
    regions = result.given_regions
    background = spec.classes[spec.background]
    kind = np.where(regions["consensus_label"] == background, "extra",
                    np.where(regions["given_label"] == background, "missing", "wrong_class"))
    findings = pd.DataFrame({"sample_id": regions["sample_id"], "kind": kind, "mask": regions["mask"],
                             "score": regions["area"].astype(float), "is_issue": True})
    score = 1 - result.per_image["mask_agreement_given_iou"].fillna(1.0)
    return findings.reset_index(drop=True), score, result.metrics


def _issue_kinds(regions: pd.DataFrame, background: str) -> np.ndarray:
    """Finding kind of issue regions from their majority shipped and predicted classes."""
    return np.where((regions["given_label"] != background) & (regions["predicted_label"] == background), "extra",
                    np.where(regions["given_label"] == background, "missing", "wrong_class"))


def findings_from_predictions(demo: SegmentationDemo, probs_dir: str | Path,
                              ) -> dict[str, tuple[pd.DataFrame, pd.Series, dict[str, Any]]]:
    """Two readings of the same per-pixel probabilities, both from
    :func:`audit.checks.mask_mistakes.segmentation_label_quality` (cleanlab ``segmentation``, streamed).

    * ``cleanlab segmentation``: cleanlab's ``find_label_issues`` pixels as they come (every 8-connected group of
      issue pixels, even a single pixel, is a finding) and cleanlab's ``get_label_quality_scores`` (softmin) as the
      image ranking (score ``1 - quality``).
    * ``label-audit with predictions``: the same issue pixels kept only in regions of at least the tiny-fragment
      size (boundary specks dropped); image score: the number of such regions, ties broken by the share of issue
      pixels (``mask_mistakes_n_issue_regions + mask_mistakes_issue_share``).

    A finding's kind comes from the majority shipped and predicted classes of its pixels (:func:`_issue_kinds`).
    """
    from audit.checks.mask_mistakes import segmentation_label_quality

    spec = demo.spec
    background = spec.classes[spec.background]
    raw = segmentation_label_quality(demo.samples, spec, probs_dir, min_issue_pixels=1)
    ours = segmentation_label_quality(demo.samples, spec, probs_dir)
    out = {}
    for name, result, score in (
            ("cleanlab segmentation", raw, 1 - raw.per_image["mask_mistakes_label_quality"]),
            ("label-audit with predictions", ours,
             ours.per_image["mask_mistakes_n_issue_regions"] + ours.per_image["mask_mistakes_issue_share"])):
        r = result.issue_regions
        findings = pd.DataFrame({"sample_id": r["sample_id"], "kind": _issue_kinds(r, background), "mask": r["mask"],
                                 "score": r["area"].astype(float), "is_issue": True}).reset_index(drop=True)
        out[name] = (findings, score, result.metrics)
    return out


# ------------------------------------------------------------------------------------------------ evaluation


def _overlaps(findings: pd.DataFrame, errors: pd.DataFrame, size: tuple[int, int]) -> np.ndarray:
    """``(n_findings, n_errors)`` pixels shared by each finding and each error zone of the same image."""
    from pycocotools import mask as mask_utils

    out = np.zeros((len(findings), len(errors)), np.int64)
    if not len(findings) or not len(errors):
        return out
    height, width = size

    def rle(counts: str) -> dict:
        return {"size": [height, width], "counts": counts.encode("ascii")}

    error_rows = errors.reset_index(drop=True)
    for sample_id, group in findings.reset_index(drop=True).groupby("sample_id"):
        own = error_rows.index[error_rows["sample_id"] == sample_id]
        if not len(own):
            continue
        for i, counts in zip(group.index, group["mask"], strict=True):
            a = rle(counts)
            for j in own:
                out[i, j] = int(mask_utils.area(mask_utils.merge([a, rle(error_rows.at[j, "zone"])], intersect=True)))
    return out


def evaluate(demo: SegmentationDemo, findings: pd.DataFrame, image_scores: pd.Series,
             label_set: str = GIVEN) -> dict[str, Any]:
    """Recall per error kind, precision per finding kind, wrong-class F1 and image AUROC (see the module)."""
    from sklearn.metrics import roc_auc_score

    errors = demo.errors[demo.errors["label_set"] == label_set].reset_index(drop=True)
    size = (int(load_grey(demo.samples["filepath"].iloc[0]).shape[0]),) * 2
    flagged = findings[findings["is_issue"].astype(bool)].reset_index(drop=True)
    shared = _overlaps(flagged, errors, size) > 0
    out: dict[str, Any] = {"recall": {}, "precision": {}, "n_errors": {}, "n_findings": {}}
    for kind in ERROR_KINDS:
        own = (errors["kind"] == kind).to_numpy()
        out["n_errors"][kind] = int(own.sum())
        out["recall"][kind] = float(shared[:, own].any(axis=0).mean()) if own.any() else None
    for kind, matches in FINDING_KINDS.items():
        own = (flagged["kind"] == kind).to_numpy()
        matching = errors["kind"].isin(matches).to_numpy()
        out["n_findings"][kind] = int(own.sum())
        out["precision"][kind] = float(shared[own][:, matching].any(axis=1).mean()) if own.any() else None
    out["precision"]["any"] = float(shared.any(axis=1).mean()) if len(flagged) else None
    out["n_findings"]["any"] = len(flagged)
    wrong = (errors["kind"] == "wrong_class").to_numpy()
    by_wrong = (flagged["kind"] == "wrong_class").to_numpy()
    recall = float(shared[by_wrong][:, wrong].any(axis=0).mean()) if wrong.any() else float("nan")
    precision = out["precision"]["wrong_class"]
    out["wrong_class_recall"] = recall
    out["wrong_class_f1"] = (2 * precision * recall / (precision + recall)
                             if precision is not None and precision + recall > 0 else 0.0)
    has_error = demo.samples.index.isin(errors["sample_id"])
    scores = image_scores.reindex(demo.samples.index).fillna(-np.inf).to_numpy(float)
    scores = np.where(np.isfinite(scores), scores, np.nanmin(np.where(np.isfinite(scores), scores, np.nan)) - 1)
    out["image_auroc"] = float(roc_auc_score(has_error, scores)) if 0 < has_error.sum() < len(has_error) else None
    out["n_images"], out["n_images_with_errors"] = len(has_error), int(has_error.sum())
    return out


# ------------------------------------------------------------------------------------------------ measurement


MODEL = "two-stage model probabilities"
SIMULATED = "simulated probabilities"


def measure(root: str | Path, n_images: int = 300, error_rate: float = 0.06, seed: int = 0, canvas: int = CANVAS,
            probabilities: tuple[str, ...] = ("model", "simulated")) -> dict[str, Any]:
    """Build the demo and score every method against the truth (the numbers of the benchmark).

    ``probabilities`` chooses the per-pixel probabilities both cleanlab and label-audit get: ``"model"``
    (:func:`model_pixel_probabilities`, real, out of fold) and/or ``"simulated"``
    (:func:`simulate_pixel_probabilities`, defaults)."""
    timings: dict[str, float] = {}

    def timed(name: str, function, *args, **kwargs):
        start = time.perf_counter()
        value = function(*args, **kwargs)
        timings[name] = time.perf_counter() - start
        return value

    demo = timed("build", build_segmentation_demo, root, n_images=n_images, error_rate=error_rate, seed=seed,
                 canvas=canvas)
    results: dict[str, Any] = {}
    findings, scores, _ = timed("no model: region crop classifier", findings_without_model, demo, seed=seed)
    results["label-audit, no model (region crop classifier)"] = evaluate(demo, findings, scores)
    findings, scores, _ = timed("no model: annotator consensus", findings_from_agreement, demo)
    results["label-audit, no model (annotator consensus)"] = evaluate(demo, findings, scores)
    makers = {"model": (MODEL, model_pixel_probabilities), "simulated": (SIMULATED, simulate_pixel_probabilities)}
    for choice in probabilities:
        label, maker = makers[choice]
        probs_dir = timed(label, maker, demo.samples, demo.spec, Path(root) / f"pred_probs-{choice}", seed=seed)
        found_by = timed(f"with predictions ({label})", findings_from_predictions, demo, probs_dir)
        for name, (found, score, _) in found_by.items():
            results[f"{name} ({label})"] = evaluate(demo, found, score)
    return {"n_images": n_images, "canvas": canvas, "rates": demo.rates,
            "n_errors": demo.errors[demo.errors["label_set"] == GIVEN]["kind"].value_counts().to_dict(),
            "n_images_with_errors": int(demo.samples.index.isin(
                demo.errors.loc[demo.errors["label_set"] == GIVEN, "sample_id"]).sum()),
            "results": results, "timings_s": timings}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Measure the segmentation audit on the segmentation demo.")
    parser.add_argument("--root", type=Path, default=Path("reports/segmentation-demo-data"))
    parser.add_argument("--images", type=int, default=300)
    parser.add_argument("--error-rate", type=float, default=0.06)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    result = measure(args.root, args.images, args.error_rate, args.seed)
    print(json.dumps(result, indent=1, default=str))


if __name__ == "__main__":
    main()


# ------------------------------------------------------------------------------------ the demo, end to end

# Which injected error kinds each finding kind of a run claims (a run's "badly drawn" region: a mask grown or
# moved, i.e. pixels painted where the truth has none).
RUN_FINDING_KINDS = {"wrong_class": "wrong_class", "extra": "extra", "badly_drawn": "extra", "missing": "missing"}
PROBABILITIES = ("none", "simulated", "model")


@dataclass
class SegmentationDemoOutcome:
    """How a ``label-audit run`` of the segmentation demo did against the injected truth (:func:`evaluate`)."""

    run_path: Path
    embedder: str
    predictions: str
    scores: dict[str, Any]  # evaluate() of every finding of the run
    region_scores: dict[str, Any] | None  # evaluate() of the region classifier's findings alone (no model)
    n_flagged: int

    def per_kind(self) -> pd.DataFrame:
        """Per injected error kind: errors, recall, the precision of the finding kind that claims it, and F1."""
        s = self.scores
        rows = {}
        for kind in ERROR_KINDS:
            claimed_by = next(f for f, errors in FINDING_KINDS.items() if kind in errors)
            recall, precision = s["recall"][kind], s["precision"][claimed_by]
            f1 = (2 * precision * recall / (precision + recall)
                  if recall is not None and precision is not None and precision + recall > 0 else None)
            rows[kind] = {"n_errors": s["n_errors"][kind], "recall": recall, "finding_kind": claimed_by,
                          "n_findings": s["n_findings"][claimed_by], "precision": precision, "f1": f1}
        return pd.DataFrame.from_dict(rows, orient="index")

    def lines(self) -> list[str]:
        def num(value: Any) -> str:
            return "   -" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.2f}"

        s = self.scores
        out = [f"segmentation demo run: {self.run_path}", f"embedder: {self.embedder}",
               f"predictions: {self.predictions}",
               "error kind    errors  recall  claimed by    findings  precision    F1   (shipped masks, "
               "against the injected truth)"]
        for kind, row in self.per_kind().iterrows():
            out.append(f"{kind:<12} {int(row['n_errors']):>7} {num(row['recall']):>7}  {row['finding_kind']:<12} "
                       f"{int(row['n_findings']):>8} {num(row['precision']):>10} {num(row['f1']):>6}")
        out.append(f"wrong-class regions: F1 {num(s['wrong_class_f1'])} (recall {num(s['wrong_class_recall'])}, "
                   f"precision {num(s['precision']['wrong_class'])})")
        if self.region_scores is not None:
            r = self.region_scores
            out.append(f"  found by the region classifier (object pipeline) alone: F1 {num(r['wrong_class_f1'])} "
                       f"(recall {num(r['wrong_class_recall'])}, precision {num(r['precision']['wrong_class'])})")
        out.append(f"images with mask errors: {s['n_images_with_errors']} of {s['n_images']}; flagged "
                   f"{self.n_flagged}; AUROC of the image score {num(s['image_auroc'])}")
        report = self.run_path / "index.html"
        if report.is_file():
            out.append(f"report: {report}")
        return out


def findings_from_run(run: Any) -> pd.DataFrame:
    """A run's mask findings (``mask_findings.parquet``) in :func:`evaluate`'s form (``sample_id, kind, mask,
    score, is_issue``, plus ``evidence``)."""
    from audit.checks.mask_mistakes import FINDING_COLUMNS, FINDINGS_FILE

    file = Path(run.path) / FINDINGS_FILE
    table = pd.read_parquet(file) if file.is_file() else pd.DataFrame(columns=FINDING_COLUMNS)
    return pd.DataFrame({"sample_id": table["sample_id"].astype(str), "kind": table["kind"].map(RUN_FINDING_KINDS),
                         "mask": table["mask"], "score": table["score"].astype(float), "is_issue": True,
                         "evidence": table["evidence"].astype(str)}).reset_index(drop=True)


def run_segmentation_demo(output_dir: Path = Path("reports"), n_images: int = 300, error_rate: float = 0.06,
                          embedder: str = "auto", predictions: str = "none", run_name: str = "segmentation-demo",
                          seed: int = 0, report: bool = True, cache_dir: Path | None = None,
                          progress: Any = True) -> SegmentationDemoOutcome:
    """Build the segmentation demo, audit it with ``label-audit run`` (shipped masks plus three annotators; with
    ``predictions`` "simulated" or "model", per-pixel probabilities too), and score the run's findings per error
    kind and its image ranking against the injected truth.

    ``predictions``: ``none`` (regions audited as objects, and the annotators' consensus), ``simulated``
    (:func:`simulate_pixel_probabilities`) or ``model`` (:func:`model_pixel_probabilities`, trained out of fold on
    the shipped masks; about a minute per 100 images on two cores).
    """
    from audit.config import build_config
    from audit.runner import run

    if predictions not in PROBABILITIES:
        raise ValueError(f"predictions must be one of {', '.join(PROBABILITIES)}, not {predictions!r}")
    output_dir = Path(output_dir)
    root = output_dir / f"{run_name}-data"
    demo = build_segmentation_demo(root, n_images=n_images, error_rate=error_rate, seed=seed)
    mask_probs = None
    described = "none (findings from the regions' crops and the annotators' consensus)"
    if predictions != "none":
        maker = simulate_pixel_probabilities if predictions == "simulated" else model_pixel_probabilities
        mask_probs = maker(demo.samples, demo.spec, root / f"pred_probs-{predictions}", seed=seed)
        described = ("simulated from the truth (see simulate_pixel_probabilities)" if predictions == "simulated"
                     else "a two-stage segmenter trained out of fold on the shipped masks (model_pixel_probabilities)")
    config = build_config(overrides={
        "source": {"kind": "masks", "path": demo.manifest, "class_map": demo.class_map,
                   "annotator_files": demo.annotator_folders()},
        "embedder": {"kind": embedder, "cache_dir": cache_dir}, "output_dir": output_dir, "run_name": run_name,
        "seed": seed, "report": report, "projection": {"seed": seed}, "mask_probs": mask_probs,
    })
    results = run(config, progress=progress)
    found = findings_from_run(results)
    image_scores = results.samples["mask_mistakes_score"].astype(float) if "mask_mistakes_score" in results.samples \
        else pd.Series(0.0, index=results.samples.index)
    image_scores.index = image_scores.index.astype(str)
    scores = evaluate(demo, found, image_scores)
    by_regions = found[found["evidence"].str.startswith("region classifier")]
    region_scores = evaluate(demo, by_regions, image_scores) if predictions == "none" else None
    flagged = results.samples.get("mask_mistakes_is_issue")
    return SegmentationDemoOutcome(
        run_path=results.path, embedder=results.summary["embedder"]["name"], predictions=described, scores=scores,
        region_scores=region_scores, n_flagged=int(flagged.fillna(False).astype(bool).sum()) if flagged is not None
        else 0)
