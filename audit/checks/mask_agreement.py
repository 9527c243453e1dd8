"""Agreement between annotators' segmentation masks: IoU and Dice per class, a pixel consensus, Krippendorff's alpha,
annotator quality and the regions where annotators disagree.

Everything is streamed over images (:func:`audit.sources.masks.iter_annotator_masks`): per image the annotators'
masks are decoded, compared, and reduced to ``K x K`` confusion counts that are summed over the dataset, so
memory holds one image's masks and the running counts, whatever the dataset's size.

Definitions
-----------
- Only pixels both sides labelled count (unlabelled / ``ignore`` pixels of either side are left out).
- **IoU** of class ``c`` between masks A and B: ``|A_c & B_c| / |A_c | B_c|``; **Dice** ``2 |A_c & B_c| /
  (|A_c| + |B_c|)``. Dataset figures are *accumulated*: intersections and unions are summed over all images
  before dividing (the usual "dataset IoU", which weighs images by their pixels), not averaged per image.
  ``mean_iou`` / ``mean_dice``: the unweighted mean over the classes either side used (union > 0).
  ``pixel_agreement``: share of the compared pixels with the same class.
- **Consensus** (per pixel): the class most of the annotators who labelled the pixel gave (plurality vote; with
  three annotators, two agreeing win). Ties (e.g. three different classes, or two annotators who differ while the
  third left the pixel unlabelled) follow ``tie_rule``: ``"ignore"`` (default) leaves the pixel without a
  consensus, so it is excluded from every comparison with the consensus and counted in ``tie_pixels``;
  ``"lowest_class"`` gives it the tied class with the lowest code. Only images with two or more annotators have a
  consensus: on an image one person labelled, that person would be compared with themselves.
- **Annotator quality**: ``mean_iou_with_consensus``, the annotator's mean IoU with the consensus (the consensus
  includes the annotator's own vote, as cleanlab's annotator agreement does).
- **Krippendorff's alpha** (nominal): units are the pixels labelled by two or more annotators, *all* of them, no
  sample. Nominal alpha depends on the data only through the coincidence matrix ``o`` (``o[c, k]`` sums, over
  units, the ordered pairs of annotators who gave ``c`` and ``k``, each divided by the unit's number of labels
  minus one), which adds up over images; it is accumulated per image and alpha is
  ``1 - (n - 1) * sum_{c != k} o[c, k] / sum_{c != k} n_c n_k`` (``n_c`` the row sums, ``n`` their total), exactly
  what the ``krippendorff`` package computes (tested), without its ``units x classes x classes`` arrays (the
  package needs about 300 MB for 100,000 pixels of 11 classes and would need 18 GB with 150 classes).
  ``per_class`` alpha binarises the values (class ``c`` versus the rest), which merges cells of the same matrix.
- **Disputed pixels**: pixels to which two annotators gave different classes (unlabelled does not count as a
  class). **Disputed regions**: their 8-connected components; every one counts in ``n_disputed_regions``, and
  those of at least ``min_region_pixels`` (default: the tiny-fragment size of :mod:`audit.checks.mask_stats`)
  are listed in ``regions`` with their box, area, the classes given there and the annotators who differ from the
  consensus on most of the region.
- With the shipped masks (``given``), the same comparisons of the shipped mask against the consensus:
  ``given_vs_consensus`` in the metrics and ``mask_agreement_given_iou`` per image, a model-free ranking of the
  images whose shipped mask departs from what the annotators agree on; ``given_regions`` lists where (8-connected
  regions of pixels whose shipped class differs from the consensus, at least ``min_region_pixels``, with the
  shipped and consensus classes and the region as a COCO RLE ``mask``).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np
import pandas as pd

from audit.checks.base import (
    Check,
    CheckContext,
    CheckInputError,
    CheckResult,
    Requirement,
    json_safe,
    merge_params,
    register,
)
from audit.checks.mask_stats import (
    EIGHT_CONNECTED,
    NO_MASKS,
    clear_folder,
    float_values,
    mask_file_name,
    mask_targets,
    not_segmentation,
    run_spec,
    stored_paths,
    tiny_threshold,
    write_mask,
)
from audit.declarations import FiftyOneField, FiftyOneSpec, FiftyOneView, Ratchet, ReportSection, Threshold, Tile, Trend
from audit.sources.masks import IGNORE, MaskError, MaskSpec, iter_annotator_masks, read_mask

TieRule = Literal["ignore", "lowest_class"]
PREFIX = "mask_agreement_"


@dataclass
class MaskAgreement:
    """``per_image`` (indexed by sample id), ``regions`` (disputed regions, indexed by ``region_id``),
    ``given_regions`` (where the shipped mask differs from the consensus; empty without ``given``) and ``metrics``
    (JSON-safe)."""

    per_image: pd.DataFrame
    regions: pd.DataFrame
    metrics: dict[str, Any]
    given_regions: pd.DataFrame | None = None


def coincidences(masks: list[np.ndarray], k: int) -> np.ndarray:
    """``(k, k)`` Krippendorff coincidence matrix of one image's annotator masks (pixels are units)."""
    stack = np.stack([m.ravel() for m in masks])
    labelled = stack != IGNORE
    m = labelled.sum(axis=0)
    weight = np.where(m >= 2, 1.0 / np.maximum(m - 1, 1), 0.0)
    out = np.zeros(k * k)
    for i in range(len(masks)):
        for j in range(len(masks)):
            if i != j:
                both = labelled[i] & labelled[j] & (m >= 2)
                out += np.bincount(stack[i][both].astype(np.int64) * k + stack[j][both], weights=weight[both],
                                   minlength=k * k)
    return out.reshape(k, k)


def alpha_from_coincidences(o: np.ndarray) -> float | None:
    """Nominal Krippendorff's alpha from a coincidence matrix; None when undefined (one value, or no pairs)."""
    n_c = o.sum(axis=1)
    n = n_c.sum()
    expected = n * n - (n_c ** 2).sum()  # sum over c != k of n_c n_k
    if n <= 1 or expected <= 0:
        return None
    observed = o.sum() - np.trace(o)
    return float(1 - (n - 1) * observed / expected)


def binary_coincidences(o: np.ndarray, c: int) -> np.ndarray:
    """The coincidence matrix of the values binarised as "class c" (1) versus the rest (0)."""
    rest = np.ones(len(o), bool)
    rest[c] = False
    return np.array([[o[np.ix_(rest, rest)].sum(), o[rest, c].sum()], [o[c, rest].sum(), o[c, c]]])


def confusion(a: np.ndarray, b: np.ndarray, k: int) -> np.ndarray:
    """``(k, k)`` pixel counts, rows ``a``'s class, columns ``b``'s, over pixels both labelled."""
    valid = (a != IGNORE) & (b != IGNORE)
    return np.bincount(a[valid].astype(np.int64) * k + b[valid], minlength=k * k).reshape(k, k)


def class_scores(matrix: np.ndarray, names: Iterable[str]) -> dict[str, Any]:
    """IoU, Dice and pixel agreement from a confusion matrix (see the module docstring)."""
    inter = np.diag(matrix).astype(float)
    size_a, size_b = matrix.sum(axis=1).astype(float), matrix.sum(axis=0).astype(float)
    union = size_a + size_b - inter
    used = union > 0
    with np.errstate(invalid="ignore", divide="ignore"):
        iou = np.where(used, inter / union, np.nan)
        dice = np.where(used, 2 * inter / (size_a + size_b), np.nan)
    total = matrix.sum()
    return {
        "n_pixels": int(total),
        "pixel_agreement": float(inter.sum() / total) if total else None,
        "mean_iou": float(np.nanmean(iou)) if used.any() else None,
        "mean_dice": float(np.nanmean(dice)) if used.any() else None,
        "per_class": {name: {"iou": _num(iou[c]), "dice": _num(dice[c]), "pixels_a": int(size_a[c]),
                             "pixels_b": int(size_b[c]), "intersection": int(inter[c])}
                      for c, name in enumerate(names)},
    }


def _num(value: float) -> float | None:
    return float(value) if np.isfinite(value) else None


def _mean_iou(matrix: np.ndarray) -> float:
    inter = np.diag(matrix).astype(float)
    union = matrix.sum(axis=0) + matrix.sum(axis=1) - inter
    used = union > 0
    return float(np.mean(inter[used] / union[used])) if used.any() else np.nan


def consensus_mask(masks: list[np.ndarray], tie_rule: TieRule = "ignore") -> tuple[np.ndarray, np.ndarray]:
    """Pixel plurality vote of ``masks`` (dense codes, IGNORE unlabelled): the consensus and the tie pixels.

    Each annotator's label gets as many votes as annotators gave it at that pixel; the consensus is the label with
    the most votes. On a tie the pixel is IGNORE (``"ignore"``) or the lowest tied code (``"lowest_class"``).
    """
    stack = np.stack(masks)
    labelled = stack != IGNORE
    support = np.zeros(stack.shape, np.int16)
    for i in range(len(masks)):
        support[i] = ((stack == stack[i]) & labelled).sum(axis=0) * labelled[i]
    top = support.max(axis=0)
    big = np.iinfo(np.int16).max
    tied_labels = np.where((support == top) & labelled, stack, big)
    lowest = tied_labels.min(axis=0)
    highest = np.where((support == top) & labelled, stack, -1).max(axis=0)
    ties = (top > 0) & (lowest != highest)
    result = np.where(top > 0, lowest, IGNORE).astype(np.int16)
    if tie_rule == "ignore":
        result[ties] = IGNORE
    elif tie_rule != "lowest_class":
        raise ValueError(f"tie_rule must be 'ignore' or 'lowest_class', not {tie_rule!r}")
    return result, ties


def disputed_pixels(masks: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Pixels two annotators gave different classes, and pixels labelled by two or more annotators."""
    stack = np.stack(masks)
    labelled = stack != IGNORE
    high = np.where(labelled, stack, np.iinfo(np.int16).min).max(axis=0)
    low = np.where(labelled, stack, np.iinfo(np.int16).max).min(axis=0)
    pairable = labelled.sum(axis=0) >= 2
    return pairable & (high != low), pairable


def mask_agreement(mask_annotations: pd.DataFrame, spec: MaskSpec, *, sample_ids: Iterable[str] | None = None,
                   given: pd.Series | None = None, tie_rule: TieRule = "ignore",
                   min_region_pixels: int | None = None) -> MaskAgreement:
    """Agreement of the annotators' masks (long table ``sample_id, annotator, mask_path``), streamed over images.

    ``given`` (shipped mask paths indexed by sample id, e.g. ``samples["mask"]``) adds the shipped mask's
    agreement with the consensus. Returns per-image columns (prefix ``mask_agreement_``): ``n_annotators``,
    ``pixel_agreement``, ``mean_pairwise_iou``, ``disputed_pixels``, ``disputed_share`` (of the pixels two or more
    annotators labelled), ``n_disputed_regions``, ``largest_disputed_region``, ``tie_pixels`` and, with
    ``given``, ``given_iou`` and ``given_pixel_agreement``. Metric keys: ``annotators``, ``n_images`` (with two
    or more annotators), ``pairwise`` (list: ``annotators``, ``n_images``, ``n_pixels``, ``pixel_agreement``,
    ``mean_iou``, ``mean_dice``, ``per_class``), ``iou_matrix``, ``mean_pairwise_iou``, ``mean_pairwise_dice``,
    ``per_class`` (``mean_pairwise_iou``, ``mean_pairwise_dice``, ``mean_iou_with_consensus``,
    ``krippendorff_alpha``), ``per_annotator`` (``n_images``, ``n_pixels``, ``mean_iou_with_consensus``,
    ``mean_dice_with_consensus``, ``pixel_agreement_with_consensus``, ``quality``, ``per_class_iou``),
    ``consensus``, ``krippendorff_alpha`` with ``krippendorff_alpha_pixels`` (the pixels two or more annotators
    labelled, all used), ``disputed`` and, with ``given``, ``given_vs_consensus``.
    """
    k, names = spec.n_classes, spec.classes
    table = mask_annotations.astype({"sample_id": str, "annotator": str})
    annotators = sorted(table["annotator"].unique())
    if sample_ids is None:
        sample_ids = list(dict.fromkeys(table["sample_id"]))
    sample_ids = [str(s) for s in sample_ids]
    pair_conf = {(a, b): np.zeros((k, k), np.int64) for i, a in enumerate(annotators) for b in annotators[i + 1:]}
    pair_images = dict.fromkeys(pair_conf, 0)
    cons_conf = {a: np.zeros((k, k), np.int64) for a in annotators}
    cons_images = dict.fromkeys(annotators, 0)
    given_conf = np.zeros((k, k), np.int64)
    coincidence = np.zeros((k, k))
    rows: dict[str, dict[str, Any]] = {}
    regions: list[dict[str, Any]] = []
    given_regions: list[dict[str, Any]] = []
    ties_total = disputed_total = pairable_total = n_regions_total = images = 0
    for sample_id, masks in iter_annotator_masks(table, spec, sample_ids):
        present = sorted(masks)
        row: dict[str, Any] = {f"{PREFIX}n_annotators": len(present)}
        rows[sample_id] = row
        if len(present) < 2:
            continue
        shapes = {masks[a].shape for a in present}
        if len(shapes) > 1:
            raise MaskError(f"annotators' masks of image {sample_id} differ in size: "
                            + ", ".join(f"{a} {masks[a].shape[1]}x{masks[a].shape[0]}" for a in present))
        images += 1
        stack = [masks[a] for a in present]
        pairwise_iou = []
        for i, a in enumerate(present):
            for b in present[i + 1:]:
                matrix = confusion(masks[a], masks[b], k)
                pair_conf[(a, b)] += matrix
                pair_images[(a, b)] += 1
                pairwise_iou.append(_mean_iou(matrix))
        consensus, ties = consensus_mask(stack, tie_rule)
        for a in present:
            cons_conf[a] += confusion(masks[a], consensus, k)
            cons_images[a] += 1
        disputed, pairable = disputed_pixels(stack)
        coincidence += coincidences(stack, k)
        n_pairable, n_disputed = int(pairable.sum()), int(disputed.sum())
        found = _disputed_regions(sample_id, disputed, masks, present, consensus, names,
                                  tiny_threshold(disputed.size, min_region_pixels))
        regions.extend(found["listed"])
        ties_total += int(ties.sum())
        disputed_total += n_disputed
        pairable_total += n_pairable
        n_regions_total += found["count"]
        agreeing = n_pairable - n_disputed
        row.update({
            f"{PREFIX}pixel_agreement": agreeing / n_pairable if n_pairable else np.nan,
            f"{PREFIX}mean_pairwise_iou": float(np.nanmean(pairwise_iou)) if np.isfinite(pairwise_iou).any()
            else np.nan,
            f"{PREFIX}disputed_pixels": n_disputed,
            f"{PREFIX}disputed_share": n_disputed / n_pairable if n_pairable else np.nan,
            f"{PREFIX}n_disputed_regions": found["count"],
            f"{PREFIX}largest_disputed_region": found["largest"],
            f"{PREFIX}tie_pixels": int(ties.sum()),
        })
        if given is not None:
            path = given.get(sample_id)
            if path is not None and not (isinstance(path, float) and np.isnan(path)):
                shipped = read_mask(path, spec)
                if shipped.shape != consensus.shape:
                    raise MaskError(f"mask {path} is {shipped.shape[1]}x{shipped.shape[0]} but the annotators' "
                                    f"masks of image {sample_id} are {consensus.shape[1]}x{consensus.shape[0]}")
                matrix = confusion(shipped, consensus, k)
                given_conf += matrix
                total = matrix.sum()
                row[f"{PREFIX}given_iou"] = _mean_iou(matrix)
                row[f"{PREFIX}given_pixel_agreement"] = float(np.trace(matrix) / total) if total else np.nan
                given_regions.extend(_given_regions(sample_id, shipped, consensus, names,
                                                    tiny_threshold(shipped.size, min_region_pixels)))

    metrics = _metrics(annotators, names, pair_conf, pair_images, cons_conf, cons_images, coincidence, images,
                       ties_total, disputed_total, pairable_total, n_regions_total, len(regions), tie_rule,
                       min_region_pixels)
    columns = [f"{PREFIX}{c}" for c in ("n_annotators", "pixel_agreement", "mean_pairwise_iou", "disputed_pixels",
                                        "disputed_share", "n_disputed_regions", "largest_disputed_region",
                                        "tie_pixels")]
    if given is not None:
        columns += [f"{PREFIX}given_iou", f"{PREFIX}given_pixel_agreement"]
        metrics["given_vs_consensus"] = class_scores(given_conf, names)
    per_image = pd.DataFrame.from_dict(rows, orient="index", columns=columns).reindex(sample_ids)
    per_image[f"{PREFIX}n_annotators"] = per_image[f"{PREFIX}n_annotators"].fillna(0).astype(int)
    region_table = pd.DataFrame(regions, columns=["region_id", "sample_id", "x", "y", "w", "h", "area", "labels",
                                                  "consensus_label", "annotators_differing"]).set_index("region_id")
    given_table = pd.DataFrame(given_regions, columns=["region_id", "sample_id", "x", "y", "w", "h", "area",
                                                       "given_label", "consensus_label", "mask"]).set_index("region_id")
    return MaskAgreement(per_image=per_image, regions=region_table, metrics=metrics, given_regions=given_table)


def _given_regions(sample_id: str, shipped: np.ndarray, consensus: np.ndarray, names: tuple[str, ...],
                   min_pixels: int) -> list[dict[str, Any]]:
    """8-connected regions where the shipped mask's class differs from the consensus (both labelled)."""
    from scipy.ndimage import find_objects
    from scipy.ndimage import label as connected

    from audit.geometry import mask_to_rle

    differ = (shipped != IGNORE) & (consensus != IGNORE) & (shipped != consensus)
    components, n = connected(differ, structure=EIGHT_CONNECTED)
    if not n:
        return []
    areas = np.bincount(components.ravel(), minlength=n + 1)[1:]
    out = []
    for j, window in enumerate(find_objects(components)):
        if window is None or areas[j] < min_pixels:
            continue
        inside = components[window] == j + 1
        out.append({"region_id": f"{sample_id}#given{j:03d}", "sample_id": sample_id,
                    "x": int(window[1].start), "y": int(window[0].start),
                    "w": int(window[1].stop - window[1].start), "h": int(window[0].stop - window[0].start),
                    "area": int(areas[j]),
                    "given_label": names[int(np.bincount(shipped[window][inside]).argmax())],
                    "consensus_label": names[int(np.bincount(consensus[window][inside]).argmax())],
                    "mask": mask_to_rle(components == j + 1)})
    return out


def _disputed_regions(sample_id: str, disputed: np.ndarray, masks: dict[str, np.ndarray], present: list[str],
                      consensus: np.ndarray, names: tuple[str, ...], min_pixels: int) -> dict[str, Any]:
    from scipy.ndimage import find_objects
    from scipy.ndimage import label as connected

    components, n = connected(disputed, structure=EIGHT_CONNECTED)
    if not n:
        return {"count": 0, "largest": 0, "listed": []}
    areas = np.bincount(components.ravel(), minlength=n + 1)[1:]
    listed = []
    for j, window in enumerate(find_objects(components)):
        if window is None or areas[j] < min_pixels:
            continue
        inside = components[window] == j + 1
        seen = set()
        for a in present:
            codes = masks[a][window][inside]
            seen |= set(np.unique(codes[codes != IGNORE]).tolist())
        agreed = consensus[window][inside]
        agreed = agreed[agreed != IGNORE]
        consensus_label = names[int(np.bincount(agreed).argmax())] if len(agreed) else None
        differing = []
        for a in present:
            own = masks[a][window][inside]
            comparable = (own != IGNORE) & (consensus[window][inside] != IGNORE)
            if comparable.any() and (own[comparable] != consensus[window][inside][comparable]).mean() > 0.5:
                differing.append(a)
        listed.append({"region_id": f"{sample_id}#disputed{j:03d}", "sample_id": sample_id,
                       "x": int(window[1].start), "y": int(window[0].start),
                       "w": int(window[1].stop - window[1].start), "h": int(window[0].stop - window[0].start),
                       "area": int(areas[j]), "labels": ";".join(names[c] for c in sorted(seen)),
                       "consensus_label": consensus_label, "annotators_differing": ";".join(differing)})
    return {"count": int(n), "largest": int(areas.max()), "listed": listed}


def _metrics(annotators: list[str], names: tuple[str, ...], pair_conf: dict, pair_images: dict, cons_conf: dict,
             cons_images: dict, coincidence: np.ndarray, images: int, ties: int, disputed: int, pairable: int,
             n_regions: int, n_listed: int, tie_rule: str, min_region_pixels: int | None) -> dict[str, Any]:
    pairwise = []
    matrix: list[list[float | None]] = [[None] * len(annotators) for _ in annotators]
    position = {a: i for i, a in enumerate(annotators)}
    for (a, b), conf in pair_conf.items():
        scores = class_scores(conf, names)
        pairwise.append({"annotators": [a, b], "n_images": pair_images[(a, b)], **scores})
        matrix[position[a]][position[b]] = matrix[position[b]][position[a]] = scores["mean_iou"]
    for a in annotators:
        matrix[position[a]][position[a]] = 1.0 if cons_images[a] else None
    per_annotator = {}
    for a in annotators:
        scores = class_scores(cons_conf[a], names)
        per_annotator[a] = {
            "n_images": cons_images[a], "n_pixels": scores["n_pixels"],
            "mean_iou_with_consensus": scores["mean_iou"], "mean_dice_with_consensus": scores["mean_dice"],
            "pixel_agreement_with_consensus": scores["pixel_agreement"], "quality": scores["mean_iou"],
            "per_class_iou": {c: v["iou"] for c, v in scores["per_class"].items()},
        }
    per_class = {}
    for c, name in enumerate(names):
        pair_iou = [p["per_class"][name]["iou"] for p in pairwise if p["per_class"][name]["iou"] is not None]
        pair_dice = [p["per_class"][name]["dice"] for p in pairwise if p["per_class"][name]["dice"] is not None]
        cons_iou = [v["per_class_iou"][name] for v in per_annotator.values() if v["per_class_iou"][name] is not None]
        per_class[name] = {
            "mean_pairwise_iou": float(np.mean(pair_iou)) if pair_iou else None,
            "mean_pairwise_dice": float(np.mean(pair_dice)) if pair_dice else None,
            "mean_iou_with_consensus": float(np.mean(cons_iou)) if cons_iou else None,
            "krippendorff_alpha": alpha_from_coincidences(binary_coincidences(coincidence, c)),
        }
    pair_means = [p["mean_iou"] for p in pairwise if p["mean_iou"] is not None]
    pair_dice_means = [p["mean_dice"] for p in pairwise if p["mean_dice"] is not None]
    return {
        "annotators": annotators,
        "n_images": images,
        "pairwise": pairwise,
        "iou_matrix": {"annotators": annotators, "matrix": matrix},
        "mean_pairwise_iou": float(np.mean(pair_means)) if pair_means else None,
        "mean_pairwise_dice": float(np.mean(pair_dice_means)) if pair_dice_means else None,
        "per_class": per_class,
        "per_annotator": per_annotator,
        "consensus": {"method": "pixel plurality vote of the annotators who labelled the pixel "
                                "(images with two or more annotators)",
                      "tie_rule": tie_rule, "tie_pixels": ties,
                      "tie_share": ties / pairable if pairable else None, "includes_own_vote": True},
        "krippendorff_alpha": alpha_from_coincidences(coincidence),
        "krippendorff_alpha_pixels": pairable,
        "disputed": {"pixels": disputed, "share": disputed / pairable if pairable else None,
                     "n_regions": n_regions, "n_regions_listed": n_listed,
                     "min_region_pixels_rule": (f">= {min_region_pixels} px" if min_region_pixels is not None else
                                                "the tiny-fragment size of mask_stats (max(4, 0.01% of the image))")},
    }


# ------------------------------------------------------------------------------------------------ the check

AGREEMENT_DEFAULTS: dict[str, Any] = {"tie_rule": "ignore", "min_region_pixels": None}
CONSENSUS_FOLDER = "mask_consensus"
LISTED_REGIONS = 50  # largest disputed regions kept in the summary for the report
NEEDS_ANNOTATORS = "needs the masks of two or more annotators"


@register
class MaskAgreementCheck(Check):
    """IoU / Dice between the annotators' masks, their pixel consensus, Krippendorff's alpha, annotator quality
    and the regions they dispute; the shipped masks against the consensus.

    Per-image columns: :func:`mask_agreement`'s, ``mask_agreement_n_given_regions`` (regions where the shipped mask
    departs from the consensus) and ``mask_agreement_consensus_mask`` (the consensus, written in the shipped masks'
    encoding to ``<run>/mask_consensus/<id>.png``, for the report and FiftyOne). Parameters
    (``[checks.mask_agreement]``): ``tie_rule`` (``ignore`` or ``lowest_class``), ``min_region_pixels``.
    """

    name: ClassVar[str] = "mask_agreement"
    requires: ClassVar[tuple[Requirement, ...]] = ()
    description: ClassVar[str] = (
        "Segmentation masks of several annotators: IoU and Dice per class between every pair and against the pixel "
        "consensus, pixel-level Krippendorff's alpha, per-annotator quality, disputed regions per image, and the "
        "shipped masks against the consensus."
    )
    thresholds: ClassVar[tuple[Threshold, ...]] = (
        Threshold("min_class_mask_iou", "checks.mask_agreement.per_class.{key}.mean_pairwise_iou", ">=", "rate",
                  "mean IoU between annotators of class {key}",
                  "every class's mean IoU between each pair of annotators' masks must be at least this (one rule "
                  "per class)"),
    )
    ratchets: ClassVar[tuple[Ratchet, ...]] = (
        Ratchet("mean_pairwise_mask_iou", "checks.mask_agreement.mean_pairwise_iou", higher_is_better=True),
    )
    trends: ClassVar[tuple[Trend, ...]] = (
        Trend("Mean mask IoU between annotators", "checks.mask_agreement.mean_pairwise_iou"),
        Trend("Mask IoU with the consensus, per annotator",
              "checks.mask_agreement.per_annotator.{key}.mean_iou_with_consensus"),
    )
    report_sections: ClassVar[tuple[ReportSection, ...]] = (
        ReportSection("mask-agreement", "Mask agreement", "_mask_agreement.html.j2",
                      lambda si: mask_agreement_section(si), 51),
    )
    fiftyone: ClassVar[FiftyOneSpec] = FiftyOneSpec(
        fields=(
            FiftyOneField("label_audit_mask_consensus", "segmentation",
                          "the annotators' pixel consensus (plurality vote; ties unlabelled)",
                          lambda run: stored_paths(run, f"{PREFIX}consensus_mask"),
                          targets=lambda run: mask_targets(run_spec(run))),
            FiftyOneField("label_audit_mask_agreement", "float", "mean IoU between the annotators' masks of the image",
                          lambda run: float_values(run, f"{PREFIX}mean_pairwise_iou")),
            FiftyOneField("label_audit_mask_disputed_regions", "float",
                          "regions of the image two annotators gave different classes",
                          lambda run: float_values(run, f"{PREFIX}n_disputed_regions")),
        ),
        views=(FiftyOneView("la-mask-disputed", "Images whose annotators' masks disagree, lowest mean IoU first",
                            lambda dataset, F: dataset.match(F("label_audit_mask_disputed_regions") > 0)
                            .sort_by("label_audit_mask_agreement"),
                            applies=lambda run: f"{PREFIX}n_disputed_regions" in run.samples.columns),),
    )

    @classmethod
    def summary_line(cls, metrics: dict[str, Any]) -> str:
        if "skipped" in metrics:
            return f"skipped: {metrics['skipped']}"
        iou, alpha = metrics.get("mean_pairwise_iou"), metrics.get("krippendorff_alpha")
        return (f"{len(metrics['annotators'])} annotators on {metrics['n_images']:,} images, mean pairwise IoU "
                f"{'n/a' if iou is None else f'{iou:.3f}'}, Krippendorff's alpha "
                f"{'n/a' if alpha is None else f'{alpha:.3f}'}, {metrics['disputed']['n_regions']:,} disputed regions")

    @classmethod
    def tiles(cls, state: dict[str, Any]) -> list[Tile]:
        from audit.presentation import format_float, format_number

        if state["status"] != "ok":
            return []
        m = state["metrics"]
        return [Tile("Mask agreement", f"IoU {format_float(m.get('mean_pairwise_iou'))}",
                     f"α {format_float(m.get('krippendorff_alpha'))} · {format_number(len(m.get('annotators') or []))} "
                     f"annotators, {format_number((m.get('disputed') or {}).get('n_regions'))} disputed regions")]

    def run(self, context: CheckContext) -> CheckResult:
        samples = context.samples
        empty = pd.DataFrame(index=samples.index)
        spec: MaskSpec | None = context.extra.get("mask_spec")
        if spec is None:
            return CheckResult(self.name, empty, {"skipped": NO_MASKS})
        table = context.extra.get("mask_annotations")
        if table is None or not len(table) or table["annotator"].nunique() < 2:
            return CheckResult(self.name, empty, {"skipped": NEEDS_ANNOTATORS})
        params = merge_params(self.name, context.params, AGREEMENT_DEFAULTS)
        if params["tie_rule"] not in ("ignore", "lowest_class"):
            raise CheckInputError(f"checks.mask_agreement.tie_rule must be ignore or lowest_class, not "
                                  f"{params['tie_rule']!r}")
        given = samples["mask"] if "mask" in samples and samples["mask"].notna().any() else None
        result = mask_agreement(table, spec, sample_ids=samples.index, given=given, tie_rule=params["tie_rule"],
                                min_region_pixels=params["min_region_pixels"])
        per_image = result.per_image.copy()
        if given is not None and result.given_regions is not None:
            counts = result.given_regions.groupby("sample_id").size()
            compared = per_image[f"{PREFIX}n_annotators"] >= 2
            per_image[f"{PREFIX}n_given_regions"] = np.where(compared, counts.reindex(per_image.index).fillna(0),
                                                             np.nan)
        folder = clear_folder(context.extra.get("run_dir"), CONSENSUS_FOLDER)
        if folder is not None:
            per_image[f"{PREFIX}consensus_mask"] = write_consensus_masks(table, spec, per_image.index, folder,
                                                                         params["tie_rule"])
        largest = result.regions.sort_values(["area", "sample_id"], ascending=[False, True]).head(LISTED_REGIONS)
        metrics = {**result.metrics, "mask_spec": spec.to_dict(),
                   "disputed_regions_largest": largest.reset_index().to_dict("records")}
        per_image.index = samples.index
        return CheckResult(self.name, per_image, json_safe(metrics))


def write_consensus_masks(mask_annotations: pd.DataFrame, spec: MaskSpec, sample_ids: Iterable[str], folder: Path,
                          tie_rule: TieRule = "ignore") -> list[str | None]:
    """Write each image's consensus (of two or more annotators) in the shipped masks' encoding, one image at a time;
    returns the paths relative to the run folder (None where fewer than two annotators labelled the image)."""
    out: list[str | None] = []
    for sample_id, masks in iter_annotator_masks(mask_annotations, spec, sample_ids):
        if len(masks) < 2 or len({m.shape for m in masks.values()}) > 1:
            out.append(None)
            continue
        consensus, _ = consensus_mask([masks[a] for a in sorted(masks)], tie_rule)
        name = mask_file_name(sample_id)
        write_mask(consensus, spec, folder / name)
        out.append(f"{folder.name}/{name}")
    return out


def iou_matrix_figure(metrics: dict[str, Any]) -> Any:
    """Mean IoU between each pair of annotators' masks."""
    import plotly.graph_objects as go

    from audit.presentation import layout, plot_text

    block = metrics.get("iou_matrix") or {}
    names, matrix = block.get("annotators") or [], block.get("matrix")
    if len(names) < 2 or not matrix:
        return None
    z = np.array([[np.nan if v is None else float(v) for v in row] for row in matrix])
    labels = [plot_text(n) for n in names]
    figure = go.Figure(go.Heatmap(z=z, x=labels, y=labels, zmin=0, zmax=1, colorscale="RdYlGn",
                                  texttemplate="%{z:.3f}", hoverongaps=False, colorbar={"title": {"text": "IoU"}},
                                  hovertemplate="%{y} × %{x}: mean IoU %{z:.3f}<extra></extra>"))
    side = min(520, 180 + 48 * len(labels))
    figure.update_layout(**layout(height=side, width=side + 140, xaxis={"type": "category"},
                                  yaxis={"type": "category", "autorange": "reversed"}))
    return figure


def mask_agreement_section(si: Any) -> dict[str, Any] | None:
    """Pairwise, per-class and per-annotator tables, the IoU matrix, the shipped masks against the consensus, and
    the images with the most disputed regions."""
    from audit.presentation import figure_json

    if not_segmentation(si.state):
        return None
    if si.state["status"] != "ok":
        return {"state": si.state}
    m = si.state["metrics"]
    given = m.get("given_vs_consensus") or {}
    per_class = []
    for name, values in (m.get("per_class") or {}).items():
        per_class.append({"name": name, **values,
                          "given_iou": ((given.get("per_class") or {}).get(name) or {}).get("iou")})
    pairwise = [{"a": p["annotators"][0], "b": p["annotators"][1], **p} for p in m.get("pairwise") or []]
    per_annotator = [{"name": a, **v} for a, v in (m.get("per_annotator") or {}).items()]
    samples = si.run.samples
    images = []
    column = f"{PREFIX}n_disputed_regions"
    if column in samples:
        ranked = samples[pd.to_numeric(samples[column], errors="coerce").fillna(0) > 0]
        ranked = ranked.sort_values([column, f"{PREFIX}disputed_share"], ascending=False).head(20)
        thumbs = si.thumbnails(list(ranked.index))
        for sample_id, row in ranked.iterrows():
            images.append({"id": sample_id, "src": thumbs.get(sample_id), "regions": row[column],
                           "largest": row.get(f"{PREFIX}largest_disputed_region"),
                           "share": row.get(f"{PREFIX}disputed_share"),
                           "iou": row.get(f"{PREFIX}mean_pairwise_iou"), "given_iou": row.get(f"{PREFIX}given_iou"),
                           "n_annotators": row.get(f"{PREFIX}n_annotators")})
    n_images_disputed = int((pd.to_numeric(samples[column], errors="coerce").fillna(0) > 0).sum()) \
        if column in samples else None
    return {"state": si.state, "metrics": m, "figure": figure_json(iou_matrix_figure(m)), "pairwise": pairwise,
            "per_class": per_class, "per_annotator": per_annotator, "given": given or None, "images": images,
            "n_images_disputed": n_images_disputed, "regions": (m.get("disputed_regions_largest") or [])[:20]}
