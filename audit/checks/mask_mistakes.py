"""Likely mistakes in segmentation masks, with a model's per-pixel probabilities or without any model.

With predicted probabilities (cleanlab ``segmentation``)
-------------------------------------------------------
The user's out-of-sample per-pixel class probabilities (``(K, H, W)`` per image, channels in the class map's
order, see :mod:`audit.sources.masks`) come as one memory-mapped ``(N, K, H, W)`` ``.npy`` (rows in sample order),
a folder of per-image ``<sample id without suffix>.npy`` files, an array, or a callable ``sample_id -> array``.
They are validated, never repaired: a wrong shape, a negative or non-finite value, or a pixel whose probabilities
do not sum to 1 (tolerance 1e-3) raises :class:`MaskPredictionError` naming the image.

:func:`segmentation_label_quality` gives, per image, cleanlab's label quality score
(``cleanlab.segmentation.rank.get_label_quality_scores``, ``softmin`` of the pixels' self-confidence, temperature
0.1) and cleanlab's per-pixel label issues (``cleanlab.segmentation.filter.find_label_issues``). cleanlab's own
``find_label_issues`` keeps a Python float per pixel of the whole dataset and a dataset-sized boolean array
(about 9 GB for 1,000 images of 512 x 512), so the same algorithm is run here streamed, image batch by image
batch, with cleanlab's :class:`cleanlab.experimental.label_issues_batched.LabelInspector` (the class cleanlab's
function uses), ``n_jobs=1``:

1. pass 1 over the images: ``update_confident_thresholds`` (per-class mean self-confidence);
2. pass 2: ``score_label_quality`` (self-confidence per pixel, and the estimated number of issues ``n``), the
   per-image softmin score, and each pixel's score and predicted class appended to temporary files (plain reads
   and writes, so a large score file is page cache, not resident memory: 9 bytes per labelled pixel on disk);
3. the ``n`` lowest scores of the whole dataset are found by an exact radix selection over the score file;
4. pass 3: a pixel is an issue when its score is among those ``n`` and its predicted class differs from its
   label (cleanlab's rule); issue masks are written as PNGs when ``issue_dir`` is given.

Batches follow cleanlab's rule (as many whole images as fit in ``batch_size`` probabilities, at least one), so
the result equals cleanlab's ``find_label_issues`` exactly (tested), except that ties at the cut are broken in
stream order (image order, then raster order) where cleanlab's ``argsort`` breaks them arbitrarily. Unlabelled
(``ignore``) pixels take no part (cleanlab cannot express them); cleanlab's ``downsample`` option is not used.
An image is flagged (``is_issue``) when its issue pixels form at least one 8-connected region of at least
``min_issue_pixels`` pixels (default: the tiny-fragment size of :mod:`audit.checks.mask_stats`), so single-pixel
boundary disagreements alone do not flag an image.

Without a model: regions as objects
-----------------------------------
:func:`region_objects` turns every connected region of every class of a mask (8-connected; optionally merging
pieces of one class closer than ``2 * merge_distance`` pixels; the background class is left out by default) into
a row of the canonical object table (``audit.geometry.build_object_table``): box, the region as a COCO RLE
``mask``, ``annotator`` (the mask's annotator, ``""`` for the shipped masks), ``source`` naming the mask file and
region. The object pipeline (crop embeddings -> cross-validated classifier -> cleanlab) then audits regions like
objects, so a region painted with the wrong class is found by what its pixels look like.
:func:`region_label_issues` takes those out-of-sample region probabilities and returns per-region flags
(cleanlab ``find_label_issues``, rules OR-ed as in the mistakes check) and per-image scores.
"""

from __future__ import annotations

import tempfile
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pandas as pd

from audit.checks.base import Check, CheckContext, CheckResult, Requirement, json_safe, merge_params, register
from audit.checks.mask_stats import (
    EIGHT_CONNECTED,
    NO_MASKS,
    class_colours,
    clear_folder,
    float_values,
    mask_file_name,
    not_segmentation,
    overlay_uri,
    run_spec,
    stored_path,
    stored_paths,
    tiny_threshold,
)
from audit.declarations import (
    FiftyOneField,
    FiftyOneSpec,
    FiftyOneTag,
    FiftyOneView,
    Ratchet,
    ReportSection,
    Threshold,
    Tile,
    Trend,
)
from audit.sources.masks import IGNORE, MaskError, MaskSpec, iter_annotator_masks, read_mask
from audit.sources.table import IMAGE_SUFFIXES

PREFIX = "mask_mistakes_"
REGION_PREFIX = "region_"
SUM_TOLERANCE = 1e-3
DEFAULT_BATCH = 10_000  # cleanlab.segmentation's default batch size (probabilities per batch)
DEFAULT_FILTERS = ("prune_by_noise_rate", "low_normalized_margin")
CHUNK = 1 << 18  # scores read per step from the temporary score file (2 MB of float64)


class MaskPredictionError(MaskError):
    """Per-pixel predicted probabilities that cannot be used; the message names the image and file."""


PredProbs = np.ndarray | str | Path | Callable[[str], np.ndarray]


# ------------------------------------------------------------------------------------------------ probabilities


def open_pred_probs(pred_probs: PredProbs, sample_ids: Sequence[str]) -> Callable[[int], tuple[np.ndarray, str]]:
    """A reader ``i -> (probs (K, H, W), where)`` for image ``i`` of ``sample_ids``, memory-mapped where possible.

    ``pred_probs``: an ``(N, K, H, W)`` array or ``.npy`` file (rows in ``sample_ids`` order), a folder of
    ``<sample id without image suffix>.npy`` files of shape ``(K, H, W)``, or a callable ``sample_id -> array``.
    """
    if callable(pred_probs) and not isinstance(pred_probs, np.ndarray):
        return lambda i: (np.asarray(pred_probs(sample_ids[i])), f"pred_probs of image {sample_ids[i]}")
    if isinstance(pred_probs, np.ndarray):
        array = pred_probs
        where = "the pred_probs array"
    else:
        path = Path(pred_probs)
        if path.is_dir():
            def read(i: int) -> tuple[np.ndarray, str]:
                stem = Path(sample_ids[i])
                stem = stem.with_suffix("") if stem.suffix.lower() in IMAGE_SUFFIXES else stem
                file = path / f"{stem.as_posix()}.npy"
                if not file.is_file():
                    raise MaskPredictionError(f"no predicted probabilities for image {sample_ids[i]}: {file} "
                                              "does not exist")
                return np.load(file, mmap_mode="r"), str(file)

            return read
        if not path.is_file():
            raise MaskPredictionError(f"predicted probabilities {path} do not exist")
        array = np.load(path, mmap_mode="r")
        where = str(path)
    if array.ndim != 4 or len(array) != len(sample_ids):
        raise MaskPredictionError(f"{where} has shape {array.shape}; expected (images, classes, height, width) "
                                  f"with {len(sample_ids)} images")
    return lambda i: (array[i], f"{where} row {i} (image {sample_ids[i]})")


def _checked(probs: np.ndarray, where: str, k: int, shape: tuple[int, int]) -> np.ndarray:
    if probs.shape != (k, *shape):
        raise MaskPredictionError(f"{where} has shape {probs.shape}; expected (classes, height, width) = "
                                  f"{(k, *shape)}")
    probs = np.asarray(probs)
    if probs.dtype == np.float16:
        probs = probs.astype(np.float32)
    if not np.isfinite(probs).all() or probs.min() < 0:
        raise MaskPredictionError(f"{where} holds negative or non-finite probabilities")
    sums = probs.sum(axis=0)
    bad = np.abs(sums - 1) > SUM_TOLERANCE
    if bad.any():
        y, x = np.argwhere(bad)[0]
        raise MaskPredictionError(f"{where}: probabilities at pixel (x={x}, y={y}) sum to {sums[y, x]:.4f}, not 1 "
                                  "(logits or scores? label-audit does not renormalise them)")
    return probs


@dataclass
class SegmentationQuality:
    """``per_image`` (indexed by sample id), ``issue_regions`` (connected regions of issue pixels, indexed by
    ``region_id``) and ``metrics`` (JSON-safe)."""

    per_image: pd.DataFrame
    issue_regions: pd.DataFrame
    metrics: dict[str, Any]


class ArrayFile:
    """A 1-D array kept in a plain binary file: appended to in pass 2, read back in slices. Plain file reads, not a
    memory map, so the pages of a large score file count as reclaimable page cache and never as the process's
    resident memory (a written memory map's dirty pages would)."""

    def __init__(self, path: Path, dtype: Any) -> None:
        self.path, self.dtype = Path(path), np.dtype(dtype)
        self.length = 0
        self._file = open(self.path, "wb")  # noqa: SIM115 - closed by close() before any read

    def append(self, values: np.ndarray) -> None:
        array = np.ascontiguousarray(values, dtype=self.dtype)
        self._file.write(array.tobytes())
        self.length += len(array)

    def close(self) -> None:
        self._file.close()

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, window: slice) -> np.ndarray:
        start, stop, _ = window.indices(self.length)
        count = max(0, stop - start)
        return np.fromfile(self.path, dtype=self.dtype, count=count, offset=start * self.dtype.itemsize)


def _stream(samples: pd.Series, spec: MaskSpec, reader: Callable[[int], tuple[np.ndarray, str]],
            ) -> Iterator[tuple[int, str, np.ndarray, np.ndarray, np.ndarray]]:
    """Per image with a mask: index, sample id, its codes, the labelled pixels' labels and ``(m, K)`` probs."""
    k = spec.n_classes
    for i, (sample_id, path) in enumerate(samples.items()):
        if path is None or (isinstance(path, float) and np.isnan(path)):
            continue
        codes = read_mask(path, spec)
        probs, where = reader(i)
        probs = _checked(probs, where, k, codes.shape)
        valid = codes != IGNORE
        flat = probs.reshape(k, -1)[:, valid.ravel()].T
        yield i, str(sample_id), codes, codes[valid].astype(np.int64), np.ascontiguousarray(flat)


def _batches(stream: Iterator, batch_size: int, k: int) -> Iterator[list]:
    """Group images as cleanlab.segmentation does: whole images while their K*H*W fits ``batch_size``."""
    group: list = []
    size = 0
    for item in stream:
        image_size = k * item[2].size
        if group and size + image_size > batch_size:
            yield group
            group, size = [], 0
        group.append(item)
        size += image_size
    if group:
        yield group


def _kth_smallest(values: ArrayFile | np.ndarray, k: int, chunk: int = CHUNK) -> float:
    """The ``k``-th smallest (0-based) of non-negative floats in an array or ArrayFile, exactly, by radix
    selection on their bit patterns (monotonic for non-negative IEEE floats), reading ``chunk`` values at a time."""
    unsigned = {4: np.uint32, 8: np.uint64}[values.dtype.itemsize]
    bits = values.dtype.itemsize * 8
    prefix, prefix_bits, rank = 0, 0, k
    while prefix_bits < bits:
        counts = np.zeros(1 << 16, np.int64)
        shift = bits - prefix_bits - 16
        for start in range(0, len(values), chunk):
            u = np.asarray(values[start:start + chunk]).view(unsigned)
            if prefix_bits:
                u = u[(u >> unsigned(bits - prefix_bits)) == unsigned(prefix)]
            counts += np.bincount(((u >> unsigned(shift)) & unsigned(0xFFFF)).astype(np.int64), minlength=1 << 16)
        cumulative = np.cumsum(counts)
        digit = int(np.searchsorted(cumulative, rank, side="right"))
        rank -= int(cumulative[digit - 1]) if digit else 0
        prefix = (prefix << 16) | digit
        prefix_bits += 16
    return float(np.array([prefix], dtype=unsigned).view(values.dtype)[0])


def segmentation_label_quality(samples: pd.DataFrame | pd.Series, spec: MaskSpec, pred_probs: PredProbs, *,
                               mask_column: str = "mask", temperature: float = 0.1,
                               batch_size: int = DEFAULT_BATCH, issue_dir: str | Path | None = None,
                               work_dir: str | Path | None = None,
                               min_issue_pixels: int | None = None) -> SegmentationQuality:
    """cleanlab ``segmentation`` label quality per image and label issues per pixel, streamed (see the module).

    Per-image columns (prefix ``mask_mistakes_``): ``label_quality`` (softmin, low = likely mistakes),
    ``n_pixels`` (labelled), ``issue_pixels``, ``issue_share``, ``n_issue_regions``, ``is_issue`` and, with
    ``issue_dir``, ``issue_mask`` (path of a 0/255 PNG of the issue pixels). ``issue_regions`` (those of at least
    ``min_issue_pixels``): ``sample_id, x, y, w, h, area, given_label, predicted_label`` (majority over the
    region's pixels) and ``mask`` (COCO RLE). Metric keys: ``n_images``,
    ``n_pixels``, ``n_issue_pixels``, ``issue_pixel_rate``, ``n_issue_images``, ``issue_image_rate``,
    ``estimated_issues`` (cleanlab's count), ``confident_thresholds``, ``per_class`` (``pixels``,
    ``issue_pixels``, ``issue_rate`` by given class), ``method``, ``temperature``, ``min_issue_pixels_rule``.
    """
    from cleanlab.experimental.label_issues_batched import LabelInspector
    from cleanlab.segmentation.rank import get_label_quality_scores

    masks = samples[mask_column] if isinstance(samples, pd.DataFrame) else samples
    ids = [str(s) for s in masks.index]
    reader = open_pred_probs(pred_probs, ids)
    k = spec.n_classes
    inspector = LabelInspector(num_class=k, store_results=False, verbose=False, n_jobs=1)
    for group in _batches(_stream(masks, spec, reader), batch_size, k):
        labels = np.concatenate([g[3] for g in group])
        if len(labels):
            inspector.update_confident_thresholds(labels, np.concatenate([g[4] for g in group]))
    if inspector.examples_processed_thresh == 0:
        raise MaskPredictionError("no labelled pixel to audit: every mask is missing or unlabelled")

    total = int(inspector.examples_processed_thresh)
    work = tempfile.TemporaryDirectory(dir=work_dir, prefix="label-audit-seg-")
    try:
        score_dtype = np.float64
        scores = ArrayFile(Path(work.name) / "scores.bin", np.float64)
        predicted = ArrayFile(Path(work.name) / "predicted.bin", np.uint8 if k <= 256 else np.int32)
        offsets: dict[str, tuple[int, int]] = {}
        softmin: dict[str, float] = {}
        cursor = 0
        for group in _batches(_stream(masks, spec, reader), batch_size, k):
            labels = np.concatenate([g[3] for g in group])
            if not len(labels):
                continue
            probs = np.concatenate([g[4] for g in group])
            batch_scores = inspector.score_label_quality(labels, probs)
            score_dtype = batch_scores.dtype
            scores.append(batch_scores)
            predicted.append(probs.argmax(axis=1))
            for _, sample_id, _, image_labels, image_probs in group:
                m = len(image_labels)
                offsets[sample_id] = (cursor, m)
                cursor += m
                if m:
                    image_score, _ = get_label_quality_scores(
                        image_labels.reshape(1, 1, m), image_probs.T.reshape(1, k, 1, m), method="softmin",
                        verbose=False, temperature=temperature)
                    softmin[sample_id] = float(image_score[0])
        n_issues = int(inspector.get_num_issues(silent=True))
        scores.close()
        predicted.close()
        cut, ties_allowed = _cut(scores, n_issues, total)
        result = _issue_pass(masks, spec, scores, predicted, offsets, softmin, cut, ties_allowed,
                             issue_dir, min_issue_pixels)
    finally:
        work.cleanup()
    per_image, regions, totals = result
    n_images = int(per_image[f"{PREFIX}n_pixels"].notna().sum())
    flagged = int(per_image[f"{PREFIX}is_issue"].fillna(False).astype(bool).sum())
    metrics = {
        "n_images": n_images, "n_pixels": total, "n_issue_pixels": int(totals["issues"].sum()),
        "issue_pixel_rate": float(totals["issues"].sum() / total),
        "n_issue_images": flagged, "issue_image_rate": flagged / n_images if n_images else None,
        "estimated_issues": n_issues,
        "confident_thresholds": {name: float(t) for name, t in zip(spec.classes,
                                                                    inspector.get_confident_thresholds(silent=True),
                                                                    strict=True)},
        "per_class": {name: {"pixels": int(totals["pixels"][c]), "issue_pixels": int(totals["issues"][c]),
                             "issue_rate": float(totals["issues"][c] / totals["pixels"][c]) if totals["pixels"][c]
                             else None} for c, name in enumerate(spec.classes)},
        "method": "cleanlab.segmentation: get_label_quality_scores (softmin) and find_label_issues, streamed with "
                  "cleanlab's LabelInspector",
        "score_dtype": str(np.dtype(score_dtype)),
        "temperature": temperature,
        "min_issue_pixels_rule": (f">= {min_issue_pixels} px" if min_issue_pixels is not None else
                                  "the tiny-fragment size of mask_stats (max(4, 0.01% of the image))"),
    }
    return SegmentationQuality(per_image=per_image, issue_regions=regions, metrics=metrics)


def _cut(scores: ArrayFile, n_issues: int, total: int) -> tuple[float, int]:
    """The score of the ``n_issues``-th lowest pixel and how many pixels with exactly that score are among them."""
    if n_issues <= 0:
        return -np.inf, 0
    n_issues = min(n_issues, total)
    cut = _kth_smallest(scores, n_issues - 1)
    below = 0
    for start in range(0, total, CHUNK):
        below += int((np.asarray(scores[start:start + CHUNK]) < cut).sum())
    return cut, n_issues - below


def _issue_pass(masks: pd.Series, spec: MaskSpec, scores: ArrayFile, predicted: ArrayFile,
                offsets: dict[str, tuple[int, int]], softmin: dict[str, float], cut: float, ties_allowed: int,
                issue_dir: str | Path | None, min_issue_pixels: int | None,
                ) -> tuple[pd.DataFrame, pd.DataFrame, dict[str, np.ndarray]]:
    from PIL import Image
    from scipy.ndimage import find_objects
    from scipy.ndimage import label as connected

    from audit.geometry import mask_to_rle

    k = spec.n_classes
    totals = {"pixels": np.zeros(k, np.int64), "issues": np.zeros(k, np.int64)}
    rows: dict[str, dict[str, Any]] = {}
    regions: list[dict[str, Any]] = []
    ties_used = 0
    for sample_id, path in masks.items():
        sample_id = str(sample_id)
        if sample_id not in offsets:
            continue
        start, m = offsets[sample_id]
        codes = read_mask(path, spec)
        valid = codes != IGNORE
        labels = codes[valid].astype(np.int64)
        own_scores = np.asarray(scores[start:start + m])
        own_predicted = np.asarray(predicted[start:start + m]).astype(np.int64)
        chosen = own_scores < cut
        tied = np.flatnonzero(own_scores == cut)
        take = tied[: max(0, ties_allowed - ties_used)]
        ties_used += len(take)
        chosen[take] = True
        issue_flat = chosen & (own_predicted != labels)
        issue = np.zeros(codes.shape, bool)
        issue[valid] = issue_flat
        full_predicted = np.full(codes.shape, -1, np.int64)
        full_predicted[valid] = own_predicted
        totals["pixels"] += np.bincount(labels, minlength=k)[:k]
        totals["issues"] += np.bincount(labels[issue_flat], minlength=k)[:k]
        threshold = tiny_threshold(codes.size, min_issue_pixels)
        components, n = connected(issue, structure=EIGHT_CONNECTED)
        n_big = 0
        if n:
            areas = np.bincount(components.ravel(), minlength=n + 1)[1:]
            for j, window in enumerate(find_objects(components)):
                if window is None or areas[j] < threshold:
                    continue
                n_big += 1
                inside = components[window] == j + 1
                regions.append({"region_id": f"{sample_id}#issue{j:03d}", "sample_id": sample_id,
                                "x": int(window[1].start), "y": int(window[0].start),
                                "w": int(window[1].stop - window[1].start), "h": int(window[0].stop - window[0].start),
                                "area": int(areas[j]),
                                "given_label": spec.classes[int(np.bincount(codes[window][inside]).argmax())],
                                "predicted_label": spec.classes[int(np.bincount(full_predicted[window][inside])
                                                                    .argmax())],
                                "mask": mask_to_rle(components == j + 1)})
        row = {f"{PREFIX}label_quality": softmin.get(sample_id, np.nan), f"{PREFIX}n_pixels": m,
               f"{PREFIX}issue_pixels": int(issue_flat.sum()),
               f"{PREFIX}issue_share": float(issue_flat.mean()) if m else np.nan,
               f"{PREFIX}n_issue_regions": n_big, f"{PREFIX}is_issue": n_big > 0}
        if issue_dir is not None:
            stem = Path(sample_id)
            stem = stem.with_suffix("") if stem.suffix.lower() in IMAGE_SUFFIXES else stem
            file = Path(issue_dir) / f"{stem.as_posix()}.png"
            file.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(issue.astype(np.uint8) * 255, mode="L").save(file)
            row[f"{PREFIX}issue_mask"] = str(file.resolve())
        rows[sample_id] = row
    columns = [f"{PREFIX}{c}" for c in ("label_quality", "n_pixels", "issue_pixels", "issue_share",
                                        "n_issue_regions", "is_issue")]
    if issue_dir is not None:
        columns.append(f"{PREFIX}issue_mask")
    per_image = pd.DataFrame.from_dict(rows, orient="index", columns=columns).reindex([str(s) for s in masks.index])
    region_table = pd.DataFrame(regions, columns=["region_id", "sample_id", "x", "y", "w", "h", "area", "given_label",
                                                  "predicted_label", "mask"]).set_index("region_id")
    return per_image, region_table, totals


# ------------------------------------------------------------------------------------------------ regions


def mask_regions(codes: np.ndarray, spec: MaskSpec, *, merge_distance: int = 0, include_background: bool = False,
                 ) -> Iterator[tuple[int, np.ndarray]]:
    """Connected regions of each class of one mask: yields ``(class code, boolean region mask)``.

    8-connected; with ``merge_distance`` > 0, pieces of one class whose gap is at most ``2 * merge_distance``
    pixels form one region (components of the class's pixels dilated by ``merge_distance``)."""
    from scipy.ndimage import binary_dilation, find_objects
    from scipy.ndimage import label as connected

    k = spec.n_classes
    pad = max(merge_distance, 0)
    for c, window in enumerate(find_objects(codes.astype(np.int32) + 1, max_label=k)):
        if window is None or (c == spec.background and not include_background):
            continue
        rows = slice(max(window[0].start - pad, 0), min(window[0].stop + pad, codes.shape[0]))
        cols = slice(max(window[1].start - pad, 0), min(window[1].stop + pad, codes.shape[1]))
        inside = codes[rows, cols] == c
        grouping = binary_dilation(inside, EIGHT_CONNECTED, iterations=pad) if pad else inside
        components, n = connected(grouping, structure=EIGHT_CONNECTED)
        for j in range(1, n + 1):
            region = np.zeros(codes.shape, bool)
            region[rows, cols] = (components == j) & inside
            yield c, region


def region_objects(masks: pd.Series, spec: MaskSpec, *, annotator: str = "", merge_distance: int = 0,
                   include_background: bool = False) -> pd.DataFrame:
    """Every region of every mask in ``masks`` (paths indexed by sample id) as the canonical object table.

    ``object_id`` is ``<sample id>#r<k>`` (prefixed ``<annotator>:`` for an annotator's masks); ``source`` names
    the mask file, the region and its class. Masks are decoded one at a time; the table holds RLE strings only.
    """
    from audit.geometry import build_object_table, mask_to_rle, rle_to_box

    records = []
    for sample_id, path in masks.items():
        if path is None or (isinstance(path, float) and np.isnan(path)):
            continue
        codes = read_mask(path, spec)
        height, width = codes.shape
        for j, (c, region) in enumerate(mask_regions(codes, spec, merge_distance=merge_distance,
                                                     include_background=include_background)):
            rle = mask_to_rle(region)
            x, y, w, h = rle_to_box(rle, height, width)
            object_id = f"{sample_id}#r{j:03d}" if not annotator else f"{annotator}:{sample_id}#r{j:03d}"
            records.append({"object_id": object_id, "sample_id": str(sample_id), "label": spec.classes[c],
                            "x": x, "y": y, "w": w, "h": h, "image_width": width, "image_height": height,
                            "mask": rle, "iscrowd": False, "annotator": annotator, "score": np.nan,
                            "source": f"mask {path} region {j} (class {spec.classes[c]})"})
    if not records:
        return build_object_table(pd.DataFrame(columns=["object_id", "sample_id", "label", "x", "y", "w", "h",
                                                        "image_width", "image_height"]))
    return build_object_table(records)


@dataclass
class RegionIssues:
    """``regions`` (the objects' index, columns prefixed ``region_``), ``per_image`` (``mask_regions_*``) and
    ``metrics``."""

    regions: pd.DataFrame
    per_image: pd.DataFrame
    metrics: dict[str, Any]


def region_label_issues(objects: pd.DataFrame, pred_probs: np.ndarray, class_names: Sequence[str], *,
                        filter_by: Iterable[str] = DEFAULT_FILTERS, sample_ids: Iterable[str] | None = None,
                        ) -> RegionIssues:
    """Flag regions whose class their out-of-sample probabilities contradict, and score images by their regions.

    ``pred_probs`` ``(n_regions, K)``, rows in ``objects`` order, columns in ``class_names`` order (the mask
    classes), from a model that never saw the region's label (e.g. cross-validated on crop embeddings). Regions
    are flagged by cleanlab ``find_label_issues`` with the ``filter_by`` rules OR-ed (the mistakes check's
    default); ``region_label_quality`` is the self-confidence (probability of the region's class).
    Per-region columns: ``region_label_quality``, ``region_is_issue``, ``region_suggested_label``,
    ``region_area``. Per-image columns (indexed by ``sample_ids``, default the objects' images):
    ``mask_regions_n``, ``mask_regions_n_issues``, ``mask_regions_min_quality`` (NaN: no region),
    ``mask_regions_issue_area_share`` (flagged region pixels over all region pixels) and ``mask_regions_score``
    (``1 - min quality``: higher = more suspicious, 0 without regions). Metric keys: ``n_regions``,
    ``n_issues``, ``issue_rate``, ``n_images``, ``n_issue_images``, ``per_class`` (``n_regions``, ``n_issues``,
    ``issue_rate``), ``filter_by``, ``quality_method``.
    """
    from cleanlab.filter import find_label_issues

    from audit.geometry import rle_area

    names = list(class_names)
    probs = np.asarray(pred_probs, dtype=float)
    if probs.shape != (len(objects), len(names)):
        raise ValueError(f"pred_probs has shape {probs.shape}; expected (regions, classes) "
                         f"{(len(objects), len(names))}")
    codes = {c: i for i, c in enumerate(names)}
    unknown = sorted(set(objects["label"]) - set(codes))
    if unknown:
        raise ValueError(f"region labels {unknown[:5]} are not among the class names {names[:10]}")
    labels = objects["label"].map(codes).to_numpy(int)
    flagged = np.zeros(len(objects), bool)
    rules = list(filter_by)
    if len(objects) and len(np.unique(labels)) >= 2:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            for rule in rules:
                flagged |= find_label_issues(labels, probs, filter_by=rule, n_jobs=1)
    quality = probs[np.arange(len(objects)), labels] if len(objects) else np.zeros(0)
    areas = np.array([rle_area(m, h, w) for m, h, w in zip(objects["mask"], objects["image_height"],
                                                           objects["image_width"], strict=True)], dtype=np.int64)
    regions = pd.DataFrame({f"{REGION_PREFIX}label_quality": quality, f"{REGION_PREFIX}is_issue": flagged,
                            f"{REGION_PREFIX}suggested_label": [names[i] for i in probs.argmax(axis=1)]
                            if len(objects) else [],
                            f"{REGION_PREFIX}area": areas}, index=objects.index)
    ids = list(dict.fromkeys(objects["sample_id"])) if sample_ids is None else [str(s) for s in sample_ids]
    frame = pd.DataFrame({"sample_id": objects["sample_id"].to_numpy(), "quality": quality, "flag": flagged,
                          "area": areas, "flag_area": np.where(flagged, areas, 0)})
    grouped = frame.groupby("sample_id")
    per_image = pd.DataFrame({
        "mask_regions_n": grouped.size(),
        "mask_regions_n_issues": grouped["flag"].sum(),
        "mask_regions_min_quality": grouped["quality"].min(),
        "mask_regions_issue_area_share": grouped["flag_area"].sum() / grouped["area"].sum(),
    }).reindex(ids)
    per_image["mask_regions_n"] = per_image["mask_regions_n"].fillna(0).astype(int)
    per_image["mask_regions_n_issues"] = per_image["mask_regions_n_issues"].fillna(0).astype(int)
    per_image["mask_regions_score"] = (1 - per_image["mask_regions_min_quality"]).fillna(0.0)
    per_class = {}
    for c, name in enumerate(names):
        own = labels == c
        per_class[name] = {"n_regions": int(own.sum()), "n_issues": int((flagged & own).sum()),
                           "issue_rate": float(flagged[own].mean()) if own.any() else None}
    metrics = {"n_regions": len(objects), "n_issues": int(flagged.sum()),
               "issue_rate": float(flagged.mean()) if len(objects) else None, "n_images": len(ids),
               "n_issue_images": int((per_image["mask_regions_n_issues"] > 0).sum()), "per_class": per_class,
               "filter_by": rules, "quality_method": "self_confidence"}
    return RegionIssues(regions=regions, per_image=per_image, metrics=metrics)


# ------------------------------------------------------------------------------------------------ the check

MISTAKES_DEFAULTS: dict[str, Any] = {"temperature": 0.1, "batch_size": DEFAULT_BATCH, "min_issue_pixels": None}
ISSUES_FOLDER = "mask_issues"
DOUBT_FOLDER = "mask_doubt"
FINDINGS_FILE = "mask_findings.parquet"
FINDING_COLUMNS = ["finding_id", "sample_id", "kind", "evidence", "given_label", "suggested_label", "x", "y", "w",
                   "h", "area", "score", "mask", "object_id"]
# A finding's kind: a region painted with another class (wrong_class), pixels painted where the evidence sees
# background (extra), background where it sees a class (missing), a region whose crop looks badly drawn.
FINDING_KINDS = ("wrong_class", "extra", "missing", "badly_drawn")
REGION_VERDICTS = {"wrong_class": "wrong_class", "spurious": "extra", "badly_located": "badly_drawn"}
CLASSIFIER = "region classifier"
CONSENSUS = "annotators' consensus"
MODEL = "pixel probabilities"
NO_EVIDENCE = ("needs per-pixel probabilities (--mask-probs), region embeddings (an embedder) or the masks of two "
               "or more annotators")


@register
class MaskMistakesCheck(Check):
    """Likely errors in the shipped masks: cleanlab ``segmentation`` with per-pixel probabilities; without a model,
    the verdicts of the object stage on every region (a crop classifier; the annotators' consensus) and where the
    shipped mask departs from the annotators' consensus.

    With probabilities (``--mask-probs``, ``extra["mask_probs"]``) :func:`pixel_findings` runs here; without, the
    check only records ``mode: regions`` and the runner calls :func:`region_findings` once the object stage has
    judged the regions. Either way the run folder gets ``mask_issues/<id>.png`` (issue pixels, 255) and
    ``mask_findings.parquet`` (one row per finding: kind, evidence, classes, box, area, COCO RLE), and each image
    ``mask_mistakes_score`` and ``mask_mistakes_is_issue``. Parameters (``[checks.mask_mistakes]``):
    ``temperature``, ``batch_size`` (cleanlab's), ``min_issue_pixels`` (default: the tiny-fragment size).
    """

    name: ClassVar[str] = "mask_mistakes"
    requires: ClassVar[tuple[Requirement, ...]] = ()
    description: ClassVar[str] = (
        "Likely mask errors: with per-pixel predicted probabilities, cleanlab's segmentation label quality per image "
        "and issue pixels; without, connected regions audited as objects (wrong class, painted on background) and "
        "regions where the shipped mask departs from the annotators' consensus."
    )
    thresholds: ClassVar[tuple[Threshold, ...]] = (
        Threshold("max_mask_issue_image_share", "checks.mask_mistakes.issue_image_rate", "<=", "rate",
                  "share of images with likely mask errors",
                  "at most this share of the images with a shipped mask may have a likely mask error"),
    )
    ratchets: ClassVar[tuple[Ratchet, ...]] = (
        Ratchet("mask_issue_image_rate", "checks.mask_mistakes.issue_image_rate", higher_is_better=False),
    )
    trends: ClassVar[tuple[Trend, ...]] = (
        Trend("Images with likely mask errors", "checks.mask_mistakes.issue_image_rate", percent=True),
    )
    report_sections: ClassVar[tuple[ReportSection, ...]] = (
        ReportSection("mask-suspects", "Mask suspects", "_mask_suspects.html.j2", lambda si: mask_suspects_section(si),
                      30),
    )
    fiftyone: ClassVar[FiftyOneSpec] = FiftyOneSpec(
        fields=(
            FiftyOneField("label_audit_mask_issues", "segmentation", "pixels of likely mask errors (255)",
                          lambda run: stored_paths(run, f"{PREFIX}issue_mask"),
                          targets=lambda run: {255: "issue"} if run_spec(run) is not None else None),
            FiftyOneField("label_audit_mask_doubt", "heatmap",
                          "per-pixel doubt about the shipped class: 255 x (1 - the model's probability of it)",
                          lambda run: stored_paths(run, f"{PREFIX}doubt_map")),
            FiftyOneField("label_audit_mask_score", "float",
                          "how suspect the shipped mask is: its findings plus a tie-break below 1 (higher: worse)",
                          lambda run: float_values(run, f"{PREFIX}score")),
            FiftyOneField("label_audit_mask_issue", "bool", "the shipped mask likely holds an error",
                          lambda run: [bool(v) if v is not None else None
                                       for v in _flags(run, missing=None)]),
        ),
        tags=(FiftyOneTag("mask_issue", lambda run: np.array([bool(v) for v in _flags(run, missing=False)])),),
        views=(FiftyOneView("la-mask-issues", "Images whose shipped mask likely holds an error, most suspect first",
                            lambda dataset, F: dataset.match(F("label_audit_mask_issue") == True)  # noqa: E712
                            .sort_by("label_audit_mask_score", reverse=True),
                            applies=lambda run: f"{PREFIX}is_issue" in run.samples.columns),),
    )

    @classmethod
    def summary_line(cls, metrics: dict[str, Any]) -> str:
        if "skipped" in metrics:
            return f"skipped: {metrics['skipped']}"
        if "issue_image_rate" not in metrics:
            return "regions are judged after the object stage"
        kinds = ", ".join(f"{n} {k.replace('_', ' ')}" for k, n in (metrics.get("per_kind") or {}).items() if n)
        return (f"{metrics['n_issue_images']:,} of {metrics['n_images']:,} images with likely mask errors "
                f"({metrics['issue_image_rate']:.1%}); {metrics['n_findings']:,} findings ({kinds or 'none'}) from "
                f"{metrics['evidence']}")

    @classmethod
    def tiles(cls, state: dict[str, Any]) -> list[Tile]:
        from audit.presentation import format_number, format_percent

        if state["status"] != "ok" or "issue_image_rate" not in state["metrics"]:
            return []
        m = state["metrics"]
        return [Tile("Mask suspects", format_number(m.get("n_issue_images")),
                     f"{format_percent(m.get('issue_image_rate'))} of {format_number(m.get('n_images'))} images, "
                     f"{format_number(m.get('n_findings'))} findings", "warn" if m.get("n_issue_images") else "good")]

    def run(self, context: CheckContext) -> CheckResult:
        samples = context.samples
        empty = pd.DataFrame(index=samples.index)
        spec: MaskSpec | None = context.extra.get("mask_spec")
        if spec is None:
            return CheckResult(self.name, empty, {"skipped": NO_MASKS})
        if "mask" not in samples or samples["mask"].isna().all():
            return CheckResult(self.name, empty, {"skipped": "no shipped masks to audit (only annotators' masks)"})
        params = merge_params(self.name, context.params, MISTAKES_DEFAULTS)
        probs = context.extra.get("mask_probs")
        if probs is None:  # judged by region_findings once the object stage has audited the regions
            return CheckResult(self.name, empty, {"mode": "regions", "mask_spec": spec.to_dict()})
        return pixel_findings(samples, spec, probs, params, context.extra.get("run_dir"))


def _flags(run: Any, missing: Any) -> list[Any]:
    column = f"{PREFIX}is_issue"
    if column not in run.samples:
        return [missing] * len(run.samples)
    return [missing if v is None or (isinstance(v, float) and np.isnan(v)) else bool(v)
            for v in run.samples[column].tolist()]


def finding_kind(given: str, other: str | None, background: str | None) -> str:
    """What a region whose shipped class is ``given`` and whose evidence says ``other`` claims."""
    if background is not None and other == background:
        return "extra"
    if background is not None and given == background:
        return "missing"
    return "wrong_class"


def _finding(sample_id: str, number: int, region: np.ndarray, kind: str, evidence: str, given: str,
             suggested: str | None, score: float, object_id: str | None = None) -> dict[str, Any]:
    from scipy.ndimage import find_objects

    from audit.geometry import mask_to_rle

    window = find_objects(region.astype(np.int32))[0]
    return {"finding_id": f"{sample_id}#f{number:03d}", "sample_id": sample_id, "kind": kind, "evidence": evidence,
            "given_label": given, "suggested_label": suggested, "x": int(window[1].start), "y": int(window[0].start),
            "w": int(window[1].stop - window[1].start), "h": int(window[0].stop - window[0].start),
            "area": int(region.sum()), "score": float(score), "mask": mask_to_rle(region), "object_id": object_id}


def _write_findings(run_dir: Path | None, rows: list[dict[str, Any]]) -> pd.DataFrame:
    table = pd.DataFrame(rows, columns=FINDING_COLUMNS)
    if run_dir is not None:
        table.to_parquet(Path(run_dir) / FINDINGS_FILE, index=False)
    return table


def _finding_metrics(table: pd.DataFrame, per_image: pd.DataFrame, evidence: str) -> dict[str, Any]:
    n_images = int(per_image[f"{PREFIX}score"].notna().sum())
    flagged = int(per_image[f"{PREFIX}is_issue"].fillna(False).astype(bool).sum())
    return {"n_images": n_images, "n_issue_images": flagged,
            "issue_image_rate": flagged / n_images if n_images else None, "n_findings": len(table),
            "per_kind": {k: int((table["kind"] == k).sum()) for k in FINDING_KINDS},
            "per_evidence": {str(k): int(v) for k, v in table["evidence"].value_counts().items()},
            "evidence": evidence}


def pixel_findings(samples: pd.DataFrame, spec: MaskSpec, pred_probs: PredProbs, params: dict[str, Any],
                   run_dir: Path | None = None) -> CheckResult:
    """With per-pixel probabilities: cleanlab ``segmentation`` (streamed, :func:`segmentation_label_quality`), its
    issue pixels as ``mask_issues/<id>.png`` and the per-pixel doubt ``1 - p(shipped class)`` as
    ``mask_doubt/<id>.png`` in the run folder, and the issue regions as findings. Image score: the number of issue
    regions plus the share of issue pixels (the ranking the segmentation benchmark measures)."""
    issues = clear_folder(run_dir, ISSUES_FOLDER)
    quality = segmentation_label_quality(samples, spec, pred_probs, temperature=params["temperature"],
                                         batch_size=params["batch_size"], issue_dir=issues,
                                         min_issue_pixels=params["min_issue_pixels"])
    per_image = quality.per_image.copy()
    per_image.index = samples.index
    per_image[f"{PREFIX}score"] = per_image[f"{PREFIX}n_issue_regions"] + per_image[f"{PREFIX}issue_share"]
    per_image[f"{PREFIX}n_findings"] = per_image[f"{PREFIX}n_issue_regions"]
    if issues is not None:  # paths relative to the run folder, so the folder can move
        root = Path(run_dir).resolve()
        per_image[f"{PREFIX}issue_mask"] = [None if not isinstance(p, str) else Path(p).relative_to(root).as_posix()
                                            for p in per_image[f"{PREFIX}issue_mask"]]
        per_image[f"{PREFIX}doubt_map"] = write_doubt_maps(samples["mask"], spec, pred_probs,
                                                           clear_folder(run_dir, DOUBT_FOLDER))
    from audit.geometry import rle_to_box

    background = spec.classes[spec.background] if spec.background is not None else None
    rows = []
    regions = quality.issue_regions
    for n, (_, r) in enumerate(regions.iterrows()):
        height, width = read_mask_size(samples.at[r["sample_id"], "mask"])
        box = rle_to_box(r["mask"], height, width)
        rows.append({"finding_id": f"{r['sample_id']}#f{n:03d}", "sample_id": r["sample_id"],
                     "kind": finding_kind(r["given_label"], r["predicted_label"], background), "evidence": MODEL,
                     "given_label": r["given_label"], "suggested_label": r["predicted_label"],
                     "x": int(box[0]), "y": int(box[1]), "w": int(box[2]), "h": int(box[3]), "area": int(r["area"]),
                     "score": float(r["area"]), "mask": r["mask"], "object_id": None})
    table = _write_findings(run_dir, rows)
    metrics = {**quality.metrics, **_finding_metrics(table, per_image, "cleanlab segmentation on the per-pixel "
                                                                     "probabilities"),
               "mode": "predictions", "mask_spec": spec.to_dict(),
               "pred_probs_source": str(pred_probs) if isinstance(pred_probs, str | Path) else "an array",
               "score": "issue regions + share of issue pixels"}
    return CheckResult("mask_mistakes", per_image, json_safe(metrics))


def read_mask_size(path: str | Path) -> tuple[int, int]:
    """``(height, width)`` of a mask file, from its header."""
    from audit.sources.masks import mask_size

    width, height = mask_size(path)
    return height, width


def write_doubt_maps(masks: pd.Series, spec: MaskSpec, pred_probs: PredProbs, folder: Path) -> list[str | None]:
    """``255 x (1 - p(shipped class))`` per pixel (0 where unlabelled), one 8-bit PNG per image, streamed; returns
    the paths relative to the run folder (what FiftyOne shows as a heat map and the report draws)."""
    from PIL import Image

    reader = open_pred_probs(pred_probs, [str(s) for s in masks.index])
    out: list[str | None] = []
    for i, (sample_id, path) in enumerate(masks.items()):
        if path is None or (isinstance(path, float) and np.isnan(path)):
            out.append(None)
            continue
        codes = read_mask(path, spec)
        probs, _ = reader(i)
        probs = np.asarray(probs, dtype=np.float32)
        valid = codes != IGNORE
        own = np.take_along_axis(probs, np.where(valid, codes, 0).astype(np.int64)[None], axis=0)[0]
        doubt = np.where(valid, np.clip(1.0 - own, 0.0, 1.0), 0.0)
        name = mask_file_name(str(sample_id))
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.round(doubt * 255).astype(np.uint8), mode="L").save(folder / name)
        out.append(f"{folder.name}/{name}")
    return out


def region_findings(context: CheckContext) -> tuple[CheckResult, pd.DataFrame | None]:
    """Without per-pixel probabilities, after the object stage: judge each image by its regions and by the
    annotators' consensus. Returns the check's result (per-image columns, metrics) and per-region columns for the
    object table (None without regions).

    ``context.extra``: ``mask_spec``, ``mask_annotations``, ``objects`` (the object stage's table: the shipped
    masks' regions, annotator ``""``, with the ``object_mistakes`` columns), ``run_dir``.

    * A **region** the crop classifier flags (``object_mistakes``: wrong class, spurious -> ``extra``, badly located
      -> ``badly_drawn``) is a finding unless the annotators' consensus *confirms* its class (the consensus gives
      the region's class to most of the region's pixels it labels): two independent witnesses, the classifier
      and the people, must not contradict each other. On four builds of the segmentation demo (200 images) no
      region so vetoed was a wrong-class error; the few with a drawing error (grown, eroded) are found by the
      comparison with the consensus below.
    * Where two or more annotators labelled the image, every 8-connected region of at least ``min_issue_pixels``
      (default: the tiny-fragment size) where the shipped class differs from the consensus is a finding
      (``extra`` where the consensus says background, ``missing`` where the shipped mask does, else
      ``wrong_class``), unless it lies mostly inside a region finding already made (that finding then names both
      witnesses).
    * Image score: number of findings plus a tie-break below 1, the largest of ``1 - lowest region label quality``
      and the share of compared pixels whose shipped class differs from the consensus. ``is_issue``: a finding.
    """
    from audit.checks.mask_agreement import _given_regions, consensus_mask
    from audit.geometry import rle_to_mask

    samples = context.samples
    spec: MaskSpec = context.extra["mask_spec"]
    params = merge_params("mask_mistakes", context.params, MISTAKES_DEFAULTS)
    run_dir = context.extra.get("run_dir")
    objects = context.extra.get("objects")
    annotations = context.extra.get("mask_annotations")
    names = spec.classes
    code = {c: i for i, c in enumerate(names)}
    background = names[spec.background] if spec.background is not None else None
    classifier = objects is not None and "object_mistakes_is_issue" in objects
    shipped = objects[objects["annotator"].fillna("").astype(str) == ""] if objects is not None else None
    if annotations is not None and (not len(annotations) or annotations["annotator"].nunique() < 2):
        annotations = None
    if not classifier and annotations is None:
        return CheckResult("mask_mistakes", pd.DataFrame(index=samples.index), {"skipped": NO_EVIDENCE}), None
    ids = [str(s) for s in samples.index]
    by_image = ({str(k): g for k, g in shipped.groupby(shipped["sample_id"].astype(str))}
                if shipped is not None and len(shipped) else {})
    stream = (iter_annotator_masks(annotations, spec, ids) if annotations is not None
              else ((s, {}) for s in ids))
    issues = clear_folder(run_dir, ISSUES_FOLDER)
    if run_dir is not None:  # per-pixel doubt exists only with probabilities: drop an earlier run's
        import shutil

        shutil.rmtree(Path(run_dir) / DOUBT_FOLDER, ignore_errors=True)
    rows: dict[str, dict[str, Any]] = {}
    region_rows: dict[str, dict[str, Any]] = {}
    findings: list[dict[str, Any]] = []
    vetoed = flagged_by_classifier = 0
    for sample_id, masks in stream:
        path = samples.at[sample_id, "mask"]
        if path is None or (isinstance(path, float) and np.isnan(path)):
            continue
        codes = read_mask(path, spec)
        height, width = codes.shape
        consensus = None
        if len(masks) >= 2 and len({m.shape for m in masks.values()} | {codes.shape}) == 1:
            consensus, _ = consensus_mask([masks[a] for a in sorted(masks)])
        issue = np.zeros(codes.shape, bool)
        found: list[dict[str, Any]] = []
        qualities = []
        region_masks: list[np.ndarray] = []
        for object_id, r in (by_image.get(sample_id, pd.DataFrame()).iterrows()):
            region = rle_to_mask(r["mask"], height, width)
            quality = r.get("object_mistakes_label_quality")
            if quality is not None and np.isfinite(quality):
                qualities.append(float(quality))
            share = None
            if consensus is not None:
                seen = consensus[region]
                seen = seen[seen != IGNORE]
                share = float((seen == code.get(str(r["label"]), -2)).mean()) if len(seen) else None
            verdict = REGION_VERDICTS.get(r.get("object_mistakes_kind")) if classifier else None
            flagged_by_classifier += verdict is not None
            confirmed = share is not None and share > 0.5
            if verdict is not None and confirmed:
                vetoed += 1
                verdict = None
            region_rows[str(object_id)] = {f"{PREFIX}region_finding": verdict,
                                           f"{PREFIX}region_consensus_share": share}
            if verdict is not None:
                suggested = r.get("object_mistakes_suggested_label")
                found.append(_finding(sample_id, len(found), region, verdict, CLASSIFIER, str(r["label"]),
                                      None if suggested is None else str(suggested),
                                      1 - quality if quality is not None and np.isfinite(quality) else 1.0,
                                      str(object_id)))
                region_masks.append(region)
                issue |= region
        disagreement = np.nan
        if consensus is not None:
            both = (codes != IGNORE) & (consensus != IGNORE)
            disagreement = float(((codes != consensus) & both).sum() / both.sum()) if both.any() else np.nan
            threshold = tiny_threshold(codes.size, params["min_issue_pixels"])
            for g in _given_regions(sample_id, codes, consensus, names, threshold):
                place = rle_to_mask(g["mask"], height, width)
                inside = next((k for k, m in enumerate(region_masks) if (place & m).sum() > 0.5 * place.sum()), None)
                if inside is not None:
                    found[inside]["evidence"] = f"{CLASSIFIER} + {CONSENSUS}"
                    continue
                support = _support(place, masks, consensus)
                found.append(_finding(sample_id, len(found), place, finding_kind(g["given_label"],
                                                                                  g["consensus_label"], background),
                                      CONSENSUS, g["given_label"], g["consensus_label"], support))
                issue |= place
        findings.extend(found)
        doubt = max(1 - min(qualities) if qualities else 0.0, 0.0 if np.isnan(disagreement) else disagreement)
        row = {f"{PREFIX}n_findings": len(found),
               f"{PREFIX}n_region_findings": sum(f["evidence"].startswith(CLASSIFIER) for f in found),
               f"{PREFIX}n_consensus_findings": sum(f["evidence"] == CONSENSUS for f in found),
               f"{PREFIX}min_region_quality": min(qualities) if qualities else np.nan,
               f"{PREFIX}consensus_disagreement": disagreement,
               f"{PREFIX}score": len(found) + min(doubt, 0.999), f"{PREFIX}is_issue": bool(found)}
        if issues is not None:
            row[f"{PREFIX}issue_mask"] = None
            if issue.any():
                from PIL import Image

                name = mask_file_name(sample_id)
                (issues / name).parent.mkdir(parents=True, exist_ok=True)
                Image.fromarray(issue.astype(np.uint8) * 255, mode="L").save(issues / name)
                row[f"{PREFIX}issue_mask"] = f"{issues.name}/{name}"
        rows[sample_id] = row
    columns = [f"{PREFIX}{c}" for c in ("n_findings", "n_region_findings", "n_consensus_findings",
                                        "min_region_quality", "consensus_disagreement", "score", "is_issue")]
    if issues is not None:
        columns.append(f"{PREFIX}issue_mask")
    per_image = pd.DataFrame.from_dict(rows, orient="index", columns=columns).reindex(ids)
    per_image.index = samples.index
    table = _write_findings(run_dir, findings)
    witnesses = [w for w, present in ((CLASSIFIER, classifier), (CONSENSUS, annotations is not None)) if present]
    metrics = {**_finding_metrics(table, per_image, " and ".join(witnesses)), "mode": "regions",
               "mask_spec": spec.to_dict(), "n_regions": len(region_rows),
               "n_regions_flagged_by_classifier": flagged_by_classifier, "n_vetoed_by_annotators": vetoed,
               "per_class": _per_class(shipped, region_rows, names) if shipped is not None else {},
               "classifier": (None if classifier else "the object_mistakes check did not judge the regions "
                              "(no embeddings, or it was skipped)"),
               "score": "findings + max(1 - lowest region label quality, share of pixels differing from the "
                        "annotators' consensus), the tie-break capped below 1"}
    regions = pd.DataFrame.from_dict(region_rows, orient="index",
                                     columns=[f"{PREFIX}region_finding", f"{PREFIX}region_consensus_share"])
    return CheckResult("mask_mistakes", per_image, json_safe(metrics)), (regions if len(regions) else None)


def _support(place: np.ndarray, masks: dict[str, np.ndarray], consensus: np.ndarray) -> float:
    """Share of the annotators' labels inside ``place`` that agree with the consensus (how sure the people are)."""
    agree = total = 0
    for own in masks.values():
        values = own[place]
        labelled = values != IGNORE
        agree += int((values[labelled] == consensus[place][labelled]).sum())
        total += int(labelled.sum())
    return agree / total if total else 0.0


def _per_class(shipped: pd.DataFrame, region_rows: dict[str, dict[str, Any]], names: Sequence[str],
               ) -> dict[str, dict[str, Any]]:
    verdicts = pd.Series({k: v[f"{PREFIX}region_finding"] for k, v in region_rows.items()}, dtype=object)
    labels = shipped["label"].astype(str).reindex(verdicts.index)
    out = {}
    for name in names:
        own = verdicts[labels == name]
        if len(own):
            n = int(own.notna().sum())
            out[name] = {"n_regions": len(own), "n_findings": n, "issue_rate": n / len(own)}
    return out


# ------------------------------------------------------------------------------------------------ report

MASK_GALLERY = 24  # worst images drawn with their overlays (three small images each)


def mask_suspects_section(si: Any) -> dict[str, Any] | None:
    """The worst images, each drawn three times (the shipped mask, the annotators' consensus, the issues: the
    model's per-pixel doubt when there is one), with their findings; counts per kind and witness."""
    if not_segmentation(si.state):
        return None
    if si.state["status"] != "ok":
        return {"state": si.state}
    run, m = si.run, si.state["metrics"]
    samples = run.samples
    spec = run_spec(run)
    cards = []
    n_flagged = 0
    if f"{PREFIX}is_issue" in samples and spec is not None:
        flagged = samples[samples[f"{PREFIX}is_issue"].fillna(False).astype(bool)]
        n_flagged = len(flagged)
        order = np.lexsort((flagged.index.to_numpy(str), -flagged[f"{PREFIX}score"].to_numpy(float)))
        worst = flagged.iloc[order[: min(MASK_GALLERY, si.limits.gallery)]]
        findings = _read_findings(run)
        for sample_id, row in worst.iterrows():
            cards.append(_card(run, spec, str(sample_id), row, findings.get(str(sample_id))))
    pixels = m.get("mode") == "predictions"
    per_class = [{"name": c, "n": v.get("pixels" if pixels else "n_regions"),
                  "flagged": v.get("issue_pixels" if pixels else "n_findings"), "rate": v.get("issue_rate")}
                 for c, v in (m.get("per_class") or {}).items()]
    return {"state": si.state, "metrics": m, "cards": cards, "n_flagged": n_flagged,
            "capped": n_flagged > len(cards), "legend": class_colours(spec) if spec is not None else [],
            "per_class": per_class, "unit": "pixels" if pixels else "regions"}


def _read_findings(run: Any) -> dict[str, pd.DataFrame]:
    file = Path(run.path) / FINDINGS_FILE
    if not file.is_file():
        return {}
    table = pd.read_parquet(file, columns=[c for c in FINDING_COLUMNS if c != "mask"])
    return {str(k): g for k, g in table.groupby("sample_id")}


def _card(run: Any, spec: MaskSpec, sample_id: str, row: pd.Series, findings: pd.DataFrame | None) -> dict[str, Any]:
    from PIL import Image

    image = row.get("filepath")

    def read_layer(column: str) -> np.ndarray | None:
        path = stored_path(run, row.get(column))
        if path is None or not path.is_file():
            return None
        if column in (f"{PREFIX}issue_mask", f"{PREFIX}doubt_map"):
            with Image.open(path) as picture:
                return np.asarray(picture.convert("L"))
        return read_mask(path, spec)

    doubt = read_layer(f"{PREFIX}doubt_map")
    views = [{"title": "shipped mask", "src": overlay_uri(image, read_layer("mask"), "classes", spec)}]
    consensus = read_layer("mask_agreement_consensus_mask")
    if consensus is not None:
        views.append({"title": "annotators' consensus", "src": overlay_uri(image, consensus, "classes", spec)})
    views.append({"title": "model's doubt" if doubt is not None else "issues",
                  "src": overlay_uri(image, doubt if doubt is not None else read_layer(f"{PREFIX}issue_mask"), "heat")})
    listed = []
    if findings is not None:
        for _, f in findings.sort_values("area", ascending=False).head(4).iterrows():
            listed.append({"kind": str(f["kind"]).replace("_", " "), "given": f["given_label"],
                           "suggested": f["suggested_label"], "evidence": f["evidence"], "area": int(f["area"])})
    return {"id": sample_id, "views": views, "score": row.get(f"{PREFIX}score"), "findings": listed,
            "n_findings": row.get(f"{PREFIX}n_findings"), "quality": row.get(f"{PREFIX}label_quality")}
