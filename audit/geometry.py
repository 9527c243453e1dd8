"""Boxes, instance masks and matching: the geometry every object source and object check shares.

Boxes follow the COCO convention of the object table (``x, y, w, h`` in pixels, top-left corner, width, height;
see ``notes/CONVENTIONS.md``). Masks travel as COCO compressed RLE ``counts`` strings with ``size = (height,
width)``, so a table of thousands of masks stays small and IoU never decodes a pixel: pycocotools computes box and
mask IoU directly (``pycocotools.mask.iou``) and rasterises polygons (``frPyObjects``).

Matching two sets of objects is a maximum-weight bipartite assignment (``scipy.optimize.linear_sum_assignment``)
on the IoU matrix restricted to pairs whose IoU reaches the threshold: the matching maximises the summed IoU of
the accepted pairs, so a box is never stolen by a worse partner just because a greedy pass saw it first.

Problem codes (the ``problems`` column of the object table) are computed here so that every source module flags
the same things the same way: ``zero_size``, ``negative_size``, ``clipped``, ``tiny``, ``whole_image`` and
``duplicate_box``.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

PROBLEM_CODES = ("zero_size", "negative_size", "clipped", "tiny", "whole_image", "duplicate_box")
TINY_AREA_SHARE = 1e-4  # area below 0.01% of the image
TINY_SIDE = 2.0  # or a side shorter than 2 px
WHOLE_IMAGE_SHARE = 0.95  # area above 95% of the image
DUPLICATE_IOU = 0.95  # same annotator, same class, same image, IoU above this
OBJECT_COLUMNS = ("sample_id", "label", "x", "y", "w", "h", "xn", "yn", "wn", "hn", "image_width", "image_height",
                  "mask", "iscrowd", "annotator", "score", "problems", "source")


class GeometryError(ValueError):
    """Boxes or masks that cannot be interpreted (wrong shape, mask size not the image size...)."""


# ------------------------------------------------------------------------------------------------ boxes


def _boxes(boxes: Sequence[Sequence[float]] | np.ndarray, name: str = "boxes") -> np.ndarray:
    array = np.asarray(boxes, dtype=float)
    if array.size == 0:
        return array.reshape(0, 4)
    if array.ndim == 1 and array.shape[0] == 4:
        array = array[None, :]
    if array.ndim != 2 or array.shape[1] != 4:
        raise GeometryError(f"{name} must have shape (n, 4), got {array.shape}")
    return array


def xywh_to_xyxy(boxes: Sequence[Sequence[float]] | np.ndarray) -> np.ndarray:
    """``(n, 4)`` COCO ``x, y, w, h`` to corners ``x1, y1, x2, y2`` (the format cleanlab and most detectors use)."""
    b = _boxes(boxes)
    return np.column_stack([b[:, 0], b[:, 1], b[:, 0] + b[:, 2], b[:, 1] + b[:, 3]])


def xyxy_to_xywh(boxes: Sequence[Sequence[float]] | np.ndarray) -> np.ndarray:
    """``(n, 4)`` corners ``x1, y1, x2, y2`` to COCO ``x, y, w, h`` (widths may come out negative: flagged later)."""
    b = _boxes(boxes)
    return np.column_stack([b[:, 0], b[:, 1], b[:, 2] - b[:, 0], b[:, 3] - b[:, 1]])


def normalize_boxes(boxes_xywh: Sequence[Sequence[float]] | np.ndarray, width: float | np.ndarray,
                    height: float | np.ndarray) -> np.ndarray:
    """Pixel ``x, y, w, h`` divided by the image width / height (per box when arrays are given)."""
    b = _boxes(boxes_xywh)
    width, height = np.asarray(width, dtype=float), np.asarray(height, dtype=float)
    if np.any(width <= 0) or np.any(height <= 0):
        raise GeometryError("image width and height must be positive to normalise boxes")
    return np.column_stack([b[:, 0] / width, b[:, 1] / height, b[:, 2] / width, b[:, 3] / height])


def denormalize_boxes(boxes_normalized: Sequence[Sequence[float]] | np.ndarray, width: float | np.ndarray,
                      height: float | np.ndarray) -> np.ndarray:
    """Normalised ``x, y, w, h`` (YOLO, FiftyOne) back to pixels."""
    b = _boxes(boxes_normalized)
    width, height = np.asarray(width, dtype=float), np.asarray(height, dtype=float)
    return np.column_stack([b[:, 0] * width, b[:, 1] * height, b[:, 2] * width, b[:, 3] * height])


def clip_boxes(boxes_xywh: Sequence[Sequence[float]] | np.ndarray, width: float | np.ndarray,
               height: float | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Clip boxes to the image; returns the clipped ``x, y, w, h`` and a boolean "was clipped" flag per box.

    A box with a negative width or height is returned unchanged and not flagged as clipped: it has no extent to
    clip, and the ``negative_size`` code says what is wrong with it. A box wholly outside the image is clipped to
    zero size on the nearest edge (flagged ``clipped`` and then ``zero_size``) rather than dropped.
    """
    b = _boxes(boxes_xywh)
    width, height = np.broadcast_to(np.asarray(width, float), len(b)), np.broadcast_to(np.asarray(height, float),
                                                                                        len(b))
    x1, y1 = b[:, 0], b[:, 1]
    x2, y2 = x1 + b[:, 2], y1 + b[:, 3]
    cx1, cy1 = np.clip(x1, 0, width), np.clip(y1, 0, height)
    cx2, cy2 = np.clip(x2, 0, width), np.clip(y2, 0, height)
    clipped = np.column_stack([cx1, cy1, cx2 - cx1, cy2 - cy1])
    negative = (b[:, 2] < 0) | (b[:, 3] < 0)
    clipped[negative] = b[negative]
    was_clipped = ~negative & ~np.isclose(clipped, b, rtol=0, atol=1e-9).all(axis=1)
    return clipped, was_clipped


def box_iou_matrix(boxes_a: Sequence[Sequence[float]] | np.ndarray,
                   boxes_b: Sequence[Sequence[float]] | np.ndarray) -> np.ndarray:
    """``(len(a), len(b))`` IoU of COCO ``x, y, w, h`` boxes (pycocotools ``iou``, no crowd semantics).

    Negative widths or heights count as empty boxes (IoU 0), never as negative areas.
    """
    from pycocotools import mask as mask_utils

    a, b = _boxes(boxes_a, "boxes_a"), _boxes(boxes_b, "boxes_b")
    if not len(a) or not len(b):
        return np.zeros((len(a), len(b)))
    a, b = a.copy(), b.copy()
    a[:, 2:] = np.maximum(a[:, 2:], 0)
    b[:, 2:] = np.maximum(b[:, 2:], 0)
    return np.asarray(mask_utils.iou(a, b, [0] * len(b)), dtype=float).reshape(len(a), len(b))


# ------------------------------------------------------------------------------------------------ masks


def _rle(counts: str | bytes, height: int, width: int) -> dict:
    if not isinstance(counts, str | bytes) or not counts:
        raise GeometryError(f"an RLE mask must be a non-empty counts string, got {counts!r:.40}")
    return {"size": [int(height), int(width)], "counts": counts.encode("ascii") if isinstance(counts, str) else counts}


def mask_to_rle(mask: np.ndarray) -> str:
    """A binary ``(height, width)`` mask to the canonical compressed RLE ``counts`` string."""
    from pycocotools import mask as mask_utils

    array = np.asarray(mask)
    if array.ndim != 2:
        raise GeometryError(f"a mask must be 2-D (height, width), got shape {array.shape}")
    encoded = mask_utils.encode(np.asfortranarray(array.astype(bool).astype(np.uint8)))
    return encoded["counts"].decode("ascii")


def rle_to_mask(counts: str | bytes, height: int, width: int) -> np.ndarray:
    """The canonical RLE string back to a boolean ``(height, width)`` mask."""
    from pycocotools import mask as mask_utils

    return mask_utils.decode(_rle(counts, height, width)).astype(bool)


def rle_area(counts: str | bytes, height: int, width: int) -> int:
    """Number of mask pixels, without decoding."""
    from pycocotools import mask as mask_utils

    return int(mask_utils.area(_rle(counts, height, width)))


def rle_to_box(counts: str | bytes, height: int, width: int) -> np.ndarray:
    """Tight ``x, y, w, h`` box of a mask (pixel-edge convention: a single pixel at (3, 4) is ``[3, 4, 1, 1]``)."""
    from pycocotools import mask as mask_utils

    return np.asarray(mask_utils.toBbox(_rle(counts, height, width)), dtype=float)


def polygons_to_rle(polygons: Sequence[Sequence[float]], height: int, width: int) -> str:
    """COCO polygons (``[[x1, y1, x2, y2, ...], ...]``, one instance) rasterised and merged into one RLE string."""
    from pycocotools import mask as mask_utils

    rings = [list(map(float, ring)) for ring in polygons]
    if not rings or any(len(ring) < 6 or len(ring) % 2 for ring in rings):
        raise GeometryError("a polygon needs at least three x, y points (an even number >= 6 of coordinates)")
    merged = mask_utils.merge(mask_utils.frPyObjects(rings, int(height), int(width)))
    return merged["counts"].decode("ascii")


def uncompressed_rle_to_rle(counts: Sequence[int], height: int, width: int) -> str:
    """COCO's uncompressed RLE (a list of run lengths, column-major, as in ``iscrowd`` annotations) compressed."""
    from pycocotools import mask as mask_utils

    runs = [int(c) for c in counts]
    if sum(runs) != int(height) * int(width):
        raise GeometryError(f"RLE runs sum to {sum(runs)}, not height x width = {int(height) * int(width)}")
    rle = mask_utils.frPyObjects({"counts": runs, "size": [int(height), int(width)]}, int(height), int(width))
    return rle["counts"].decode("ascii")


def mask_iou_matrix(masks_a: Iterable[str | bytes], masks_b: Iterable[str | bytes], height: int,
                    width: int) -> np.ndarray:
    """``(len(a), len(b))`` IoU of RLE masks of one image (pycocotools ``iou`` on the compressed runs)."""
    from pycocotools import mask as mask_utils

    a = [_rle(c, height, width) for c in masks_a]
    b = [_rle(c, height, width) for c in masks_b]
    if not a or not b:
        return np.zeros((len(a), len(b)))
    return np.asarray(mask_utils.iou(a, b, [0] * len(b)), dtype=float).reshape(len(a), len(b))


def majority_mask(masks: Sequence[str | bytes], height: int, width: int) -> str | None:
    """Pixels set in more than half of the masks (two masks: their intersection), as an RLE string."""
    if not masks:
        return None
    votes = np.sum([rle_to_mask(c, height, width) for c in masks], axis=0)
    return mask_to_rle(votes * 2 > len(masks))


# ------------------------------------------------------------------------------------------------ matching


@dataclass
class Matching:
    """Result of :func:`match`: ``pairs`` ``(k, 2)`` row/column indices, their ``iou`` ``(k,)``, and the sorted
    indices left unmatched on each side."""

    pairs: np.ndarray
    iou: np.ndarray
    unmatched_a: np.ndarray
    unmatched_b: np.ndarray


def match(iou_matrix: np.ndarray, threshold: float = 0.5) -> Matching:
    """One-to-one matching maximising the summed IoU of pairs with ``IoU >= threshold`` (and ``IoU > 0``).

    Pairs below the threshold are worth nothing to the assignment, so they never displace a valid pair; the
    assignment is then scipy's Hungarian solver (``linear_sum_assignment``) on the remaining weights.
    """
    from scipy.optimize import linear_sum_assignment

    iou = np.asarray(iou_matrix, dtype=float)
    if iou.ndim != 2:
        raise GeometryError(f"the IoU matrix must be 2-D, got shape {iou.shape}")
    n_a, n_b = iou.shape
    if not 0 <= threshold <= 1:
        raise GeometryError(f"the IoU threshold must be in [0, 1], got {threshold}")
    valid = np.isfinite(iou) & (iou >= threshold) & (iou > 0)
    weights = np.where(valid, iou, 0.0)
    pairs = np.zeros((0, 2), dtype=int)
    if n_a and n_b and valid.any():
        rows, cols = linear_sum_assignment(weights, maximize=True)
        keep = valid[rows, cols]
        pairs = np.column_stack([rows[keep], cols[keep]]).astype(int)
    order = np.argsort(pairs[:, 0], kind="stable")
    pairs = pairs[order]
    return Matching(pairs=pairs, iou=iou[pairs[:, 0], pairs[:, 1]] if len(pairs) else np.zeros(0),
                    unmatched_a=np.setdiff1d(np.arange(n_a), pairs[:, 0]),
                    unmatched_b=np.setdiff1d(np.arange(n_b), pairs[:, 1]))


# ------------------------------------------------------------------------------------------------ problem codes


def join_codes(*codes: Iterable[str] | str | None) -> str:
    """``;``-joined problem codes, each once, in the order of :data:`PROBLEM_CODES` (unknown codes last)."""
    found: list[str] = []
    for group in codes:
        if not group:
            continue
        for code in group.split(";") if isinstance(group, str) else group:
            code = code.strip()
            if code and code not in found:
                found.append(code)
    rank = {c: i for i, c in enumerate(PROBLEM_CODES)}
    return ";".join(sorted(found, key=lambda c: (rank.get(c, len(rank)), c)))


def box_problem_codes(boxes_xywh: Sequence[Sequence[float]] | np.ndarray, width: float | np.ndarray,
                      height: float | np.ndarray, was_clipped: np.ndarray | None = None) -> list[str]:
    """Per-box codes that need only the box and its image: ``zero_size``, ``negative_size``, ``clipped``,
    ``tiny`` and ``whole_image``. Pass the boxes *after* :func:`clip_boxes` and its flag."""
    b = _boxes(boxes_xywh)
    width, height = np.broadcast_to(np.asarray(width, float), len(b)), np.broadcast_to(np.asarray(height, float),
                                                                                        len(b))
    w, h = b[:, 2], b[:, 3]
    negative = (w < 0) | (h < 0)
    zero = ~negative & ((w == 0) | (h == 0))
    area = np.where(negative, 0.0, w * h)
    image_area = width * height
    positive = ~negative & ~zero
    tiny = positive & ((area < TINY_AREA_SHARE * image_area) | (w < TINY_SIDE) | (h < TINY_SIDE))
    whole = positive & (area > WHOLE_IMAGE_SHARE * image_area)
    clipped = np.zeros(len(b), bool) if was_clipped is None else np.asarray(was_clipped, bool)
    out = []
    for i in range(len(b)):
        out.append(join_codes([name for name, flag in (("zero_size", zero[i]), ("negative_size", negative[i]),
                                                       ("clipped", clipped[i]), ("tiny", tiny[i]),
                                                       ("whole_image", whole[i])) if flag]))
    return out


def same_class_overlap(objects: pd.DataFrame) -> pd.Series:
    """Per object, the highest box IoU with another object of the same image, annotator and class (0 alone).

    A second box of the same class on the same object is the signature of a duplicate; this needs no model.
    Vectorised over the pairs inside each group (a loop over groups took 31 s for 50k objects, nearly all of it
    pandas overhead per group); objects with a missing image, annotator or class are compared with nothing.
    """
    overlap = np.zeros(len(objects))
    if len(objects) < 2:
        return pd.Series(overlap, index=objects.index)
    annotator = objects["annotator"] if "annotator" in objects else pd.Series("", index=objects.index)
    codes = objects.groupby([objects["sample_id"], annotator, objects["label"]], sort=False).ngroup().to_numpy()
    order = np.argsort(codes, kind="stable")
    order = order[codes[order] >= 0]  # -1: a key is missing
    sorted_codes = codes[order]
    starts = np.flatnonzero(np.r_[True, sorted_codes[1:] != sorted_codes[:-1]]) if len(order) else np.zeros(0, int)
    sizes = np.diff(np.r_[starts, len(order)])
    size_of, start_of = np.repeat(sizes, sizes), np.repeat(starts, sizes)
    rows = np.flatnonzero(size_of >= 2)  # positions (in ``order``) of objects that share their group
    boxes = objects[["x", "y", "w", "h"]].to_numpy(float)[order]
    best = np.zeros(len(order))
    counts = size_of[rows]
    ends = np.cumsum(counts)
    chunk, lo = 4_000_000, 0  # pairs per step: bounded memory even for one image with thousands of boxes
    while lo < len(rows):
        hi = max(lo + 1, int(np.searchsorted(ends, (ends[lo - 1] if lo else 0) + chunk, side="right")))
        own, n_pairs = counts[lo:hi], int(counts[lo:hi].sum())
        first = np.repeat(rows[lo:hi], own)
        second = np.repeat(start_of[rows[lo:hi]], own) + np.arange(n_pairs) - np.repeat(np.cumsum(own) - own, own)
        other = first != second
        np.maximum.at(best, first[other], paired_box_iou(boxes[first[other]], boxes[second[other]]))
        lo = hi
    overlap[order] = best
    return pd.Series(overlap, index=objects.index)


def paired_box_iou(boxes_a: np.ndarray, boxes_b: np.ndarray) -> np.ndarray:
    """IoU of ``boxes_a[i]`` with ``boxes_b[i]`` for every ``i`` (COCO ``x, y, w, h``; pycocotools' formula, negative
    sizes count as empty boxes): the diagonal of :func:`box_iou_matrix` without the rest of the matrix."""
    a, b = np.asarray(boxes_a, float).reshape(-1, 4), np.asarray(boxes_b, float).reshape(-1, 4)
    if a.shape != b.shape:
        raise GeometryError(f"paired boxes need the same shape, got {a.shape} and {b.shape}")
    wa, ha = np.maximum(a[:, 2], 0), np.maximum(a[:, 3], 0)
    wb, hb = np.maximum(b[:, 2], 0), np.maximum(b[:, 3], 0)
    iw = np.minimum(a[:, 0] + wa, b[:, 0] + wb) - np.maximum(a[:, 0], b[:, 0])
    ih = np.minimum(a[:, 1] + ha, b[:, 1] + hb) - np.maximum(a[:, 1], b[:, 1])
    inter = np.where((iw > 0) & (ih > 0), iw * ih, 0.0)
    union = wa * ha + wb * hb - inter
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(inter > 0, inter / np.where(union > 0, union, 1.0), 0.0)


def duplicate_box_flags(objects: pd.DataFrame, iou_threshold: float = DUPLICATE_IOU) -> pd.Series:
    """True for every object with another object of the same image, annotator and class at IoU above the
    threshold (both of a pair are flagged: which one is the copy is unknowable from the boxes)."""
    return same_class_overlap(objects) > iou_threshold


def build_object_table(records: pd.DataFrame | Sequence[dict]) -> pd.DataFrame:
    """The canonical object table (see ``notes/CONVENTIONS.md``) from raw boxes, for any source module.

    ``records`` needs ``object_id, sample_id, label, x, y, w, h, image_width, image_height`` (raw pixel boxes, as
    the file gave them); ``mask``, ``iscrowd``, ``annotator``, ``score``, ``problems`` and ``source`` are optional.
    Boxes are clipped to the image (``clipped``), normalised, and given the problem codes of
    :func:`box_problem_codes` plus ``duplicate_box``; existing codes in ``problems`` are kept. Nothing is dropped.
    """
    frame = pd.DataFrame(records).copy()
    required = ["object_id", "sample_id", "label", "x", "y", "w", "h", "image_width", "image_height"]
    missing = [c for c in required if c not in frame.columns]
    if missing:
        raise GeometryError(f"object records need columns {missing}")
    twice = frame["object_id"].astype(str).duplicated()
    if twice.any():
        raise GeometryError(f"object ids must be unique; {frame.loc[twice, 'object_id'].iloc[0]!r} repeats")
    defaults = {"mask": None, "iscrowd": False, "annotator": "", "score": np.nan, "problems": "", "source": ""}
    for column, value in defaults.items():
        if column not in frame.columns:
            frame[column] = value
    width = frame["image_width"].to_numpy(float)
    height = frame["image_height"].to_numpy(float)
    clipped, was_clipped = clip_boxes(frame[["x", "y", "w", "h"]].to_numpy(float), width, height)
    frame[["x", "y", "w", "h"]] = clipped
    frame[["xn", "yn", "wn", "hn"]] = normalize_boxes(clipped, width, height)
    codes = box_problem_codes(clipped, width, height, was_clipped)
    frame["object_id"] = frame["object_id"].astype(str)
    frame = frame.set_index("object_id")
    frame["sample_id"] = frame["sample_id"].astype(str)
    frame["label"] = frame["label"].astype(str)
    frame["annotator"] = frame["annotator"].fillna("").astype(str)
    frame["image_width"] = frame["image_width"].astype(int)
    frame["image_height"] = frame["image_height"].astype(int)
    frame["iscrowd"] = frame["iscrowd"].fillna(False).astype(bool)
    frame["score"] = frame["score"].astype(float)
    frame["mask"] = frame["mask"].astype(object).where(frame["mask"].notna(), None)
    duplicates = duplicate_box_flags(frame)
    frame["problems"] = [join_codes(old if isinstance(old, str) else "", new, "duplicate_box" if dup else "")
                         for old, new, dup in zip(frame["problems"], codes, duplicates, strict=True)]
    frame["source"] = frame["source"].fillna("").astype(str)
    return frame[list(OBJECT_COLUMNS)]
