"""Distribution of semantic-segmentation masks: pixel shares, class presence, regions, fragments, holes, drift.

A class that shrinks from 8% to 2% of the labelled pixels between two releases, thousands of 3-pixel specks left
by a brush tool, or objects with unexplained holes are label problems no model is needed to see. Everything here
streams: one mask is decoded at a time (:func:`audit.sources.masks.iter_masks`) and only per-image numbers and
per-class running totals are kept, so memory does not grow with the number or size of the masks.

Definitions
-----------
- Pixel **share** of a class: its pixels over the *labelled* (not unlabelled/ignore) pixels, per image, per split
  or over the dataset. ``ignore_share``: unlabelled pixels over all pixels.
- **Images containing** a class: images with at least one pixel of it; ``image_share`` over the images with a mask.
- **Regions**: connected components of one class, 8-connected (diagonal neighbours join). Per class: count, mean /
  min / max size in pixels, and a histogram of sizes in powers of two (``region_size_bins``: bin ``j`` counts
  sizes in ``[2**j, 2**(j+1))``).
- **Tiny fragment**: a region smaller than ``tiny_pixels`` (default ``max(4, 0.01% of the image's pixels)``, the
  object table's ``tiny`` area rule with a floor of 4 px so that small masks do not make every speck legal).
- **Hole**: a 4-connected group of pixels of other classes or unlabelled, enclosed by one class's pixels
  (``scipy.ndimage.binary_fill_holes``). Holes are counted for foreground classes only: every object is a "hole"
  in the background. A hole is not necessarily an error (a ring, a doughnut), which is why it is a statistic.
- Per-image columns (prefix ``mask_``): ``width``, ``height``, ``ignore_share``, ``n_classes`` (classes present,
  background included), ``n_regions`` (foreground regions), ``n_tiny_fragments`` (any class), ``n_holes``
  (foreground), ``problems`` (``empty_mask`` / ``unlabelled_mask``), and ``share:<class>`` for every class.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pandas as pd

from audit.checks.base import Check, CheckContext, CheckResult, Requirement, json_safe, merge_params, register
from audit.declarations import FiftyOneField, FiftyOneSpec, ReportSection, Threshold, Tile, Trend, Unavailable
from audit.sources.masks import IGNORE, MaskSpec, iter_masks, mask_problem_codes

TINY_SHARE = 1e-4
TINY_MIN_PIXELS = 4
EIGHT_CONNECTED = np.ones((3, 3), bool)
SIZE_BINS = 32  # region sizes up to 2**32 pixels
PREFIX = "mask_"


@dataclass
class ImageMaskStats:
    """Numbers of one mask, per dense class code (arrays of length K)."""

    width: int
    height: int
    pixels: np.ndarray
    ignore: int
    regions: np.ndarray
    tiny: np.ndarray
    holes: np.ndarray
    hole_pixels: np.ndarray
    region_sizes: list[np.ndarray]  # per class, the sizes of its regions
    tiny_pixels: int


@dataclass
class MaskStatistics:
    """``per_image``: one row per sample (NaN where it has no mask); ``metrics``: JSON-safe dataset figures."""

    per_image: pd.DataFrame
    metrics: dict[str, Any]


def tiny_threshold(n_pixels: int, tiny_pixels: int | None = None) -> int:
    """Regions with fewer pixels than this are tiny fragments."""
    if tiny_pixels is not None:
        return int(tiny_pixels)
    return max(TINY_MIN_PIXELS, math.ceil(TINY_SHARE * n_pixels))


def image_mask_stats(codes: np.ndarray, spec: MaskSpec, tiny_pixels: int | None = None) -> ImageMaskStats:
    """Pixel counts, regions, tiny fragments and holes per class of one decoded mask.

    Each class is analysed inside its own bounding box (``scipy.ndimage.find_objects``), padded by one pixel so
    that pixels on the crop's edge that are not enclosed are never mistaken for holes.
    """
    from scipy.ndimage import binary_fill_holes, find_objects
    from scipy.ndimage import label as connected

    k = spec.n_classes
    height, width = codes.shape
    labelled = codes[codes != IGNORE]
    pixels = np.bincount(labelled.astype(np.int64), minlength=k)[:k]
    regions, tiny = np.zeros(k, np.int64), np.zeros(k, np.int64)
    holes, hole_pixels = np.zeros(k, np.int64), np.zeros(k, np.int64)
    sizes: list[np.ndarray] = [np.zeros(0, np.int64) for _ in range(k)]
    threshold = tiny_threshold(codes.size, tiny_pixels)
    for c, window in enumerate(find_objects(codes.astype(np.int32) + 1, max_label=k)):
        if window is None:
            continue
        inside = np.pad(codes[window] == c, 1)
        components, n = connected(inside, structure=EIGHT_CONNECTED)
        own = np.bincount(components.ravel(), minlength=n + 1)[1:]
        sizes[c] = own
        regions[c], tiny[c] = n, int((own < threshold).sum())
        if c != spec.background:
            enclosed = binary_fill_holes(inside) & ~inside
            if enclosed.any():
                _, n_holes = connected(enclosed)
                holes[c], hole_pixels[c] = n_holes, int(enclosed.sum())
    return ImageMaskStats(width=width, height=height, pixels=pixels, ignore=int(codes.size - labelled.size),
                          regions=regions, tiny=tiny, holes=holes, hole_pixels=hole_pixels, region_sizes=sizes,
                          tiny_pixels=threshold)


class _Totals:
    """Running per-class totals of a stream of masks (memory: O(classes), never O(images) or O(pixels))."""

    def __init__(self, k: int) -> None:
        self.images = 0
        self.pixels_all = 0
        self.ignore = 0
        self.pixels = np.zeros(k, np.int64)
        self.images_with = np.zeros(k, np.int64)

    def add(self, stats: ImageMaskStats) -> None:
        self.images += 1
        self.pixels_all += stats.width * stats.height
        self.ignore += stats.ignore
        self.pixels += stats.pixels
        self.images_with += stats.pixels > 0

    def classes(self, names: tuple[str, ...]) -> dict[str, dict[str, Any]]:
        labelled = self.pixels.sum()
        return {name: {"pixels": int(self.pixels[c]), "share": float(self.pixels[c] / labelled) if labelled else 0.0,
                       "images": int(self.images_with[c]),
                       "image_share": float(self.images_with[c] / self.images) if self.images else 0.0}
                for c, name in enumerate(names)}

    def summary(self, names: tuple[str, ...]) -> dict[str, Any]:
        return {"n_images": self.images, "n_pixels": int(self.pixels_all),
                "n_labelled_pixels": int(self.pixels.sum()), "n_ignore_pixels": int(self.ignore),
                "ignore_share": float(self.ignore / self.pixels_all) if self.pixels_all else None,
                "classes": self.classes(names)}


def mask_statistics(samples: pd.DataFrame, spec: MaskSpec, *, mask_column: str = "mask",
                    tiny_pixels: int | None = None,
                    progress: Callable[[int], None] | None = None) -> MaskStatistics:
    """Stream every mask of ``samples[mask_column]`` once: per-image rows and dataset metrics.

    ``samples`` is indexed by sample id with the mask paths (None: no mask) and, optionally, ``split``.
    ``metrics`` keys: ``n_images`` (with a mask), ``n_without_mask``, ``n_pixels``, ``n_labelled_pixels``,
    ``n_ignore_pixels``, ``ignore_share``, ``classes`` (per class: ``pixels``, ``share``, ``images``,
    ``image_share``, ``n_regions``, ``mean_region_pixels``, ``min_region_pixels``, ``max_region_pixels``,
    ``n_tiny_fragments``, ``n_holes``, ``hole_pixels``, ``region_size_bins``), ``per_split`` (per split: the
    same first block with ``classes`` holding ``pixels``, ``share``, ``images``, ``image_share``),
    ``n_tiny_fragments``, ``n_holes``, ``n_regions`` (foreground), ``problems`` (count per code),
    ``tiny_pixels_rule``, ``background_class``.
    """
    k, names = spec.n_classes, spec.classes
    splits = samples["split"].astype(str) if "split" in samples else pd.Series("all", index=samples.index)
    total = _Totals(k)
    per_split: dict[str, _Totals] = {}
    regions, tiny = np.zeros(k, np.int64), np.zeros(k, np.int64)
    holes, hole_pixels = np.zeros(k, np.int64), np.zeros(k, np.int64)
    region_pixels = np.zeros(k, np.int64)
    region_min = np.full(k, np.iinfo(np.int64).max)
    region_max = np.zeros(k, np.int64)
    size_bins = np.zeros((k, SIZE_BINS), np.int64)
    problems: dict[str, int] = {}
    rows: dict[str, dict[str, Any]] = {}
    foreground = np.array([c != spec.background for c in range(k)])
    for i, (sample_id, codes) in enumerate(iter_masks(samples[mask_column], spec)):
        if progress is not None:
            progress(i)
        if codes is None:
            continue
        stats = image_mask_stats(codes, spec, tiny_pixels)
        total.add(stats)
        per_split.setdefault(str(splits.loc[sample_id]), _Totals(k)).add(stats)
        regions += stats.regions
        tiny += stats.tiny
        holes += stats.holes
        hole_pixels += stats.hole_pixels
        for c, sizes in enumerate(stats.region_sizes):
            if len(sizes):
                region_pixels[c] += int(sizes.sum())
                region_min[c] = min(region_min[c], int(sizes.min()))
                region_max[c] = max(region_max[c], int(sizes.max()))
                size_bins[c] += np.bincount(np.minimum(np.log2(sizes).astype(int), SIZE_BINS - 1),
                                            minlength=SIZE_BINS)
        codes_found = mask_problem_codes(codes, spec)
        for code in codes_found:
            problems[code] = problems.get(code, 0) + 1
        labelled = int(stats.pixels.sum())
        row: dict[str, Any] = {
            f"{PREFIX}width": stats.width, f"{PREFIX}height": stats.height,
            f"{PREFIX}ignore_share": stats.ignore / (stats.width * stats.height),
            f"{PREFIX}n_classes": int((stats.pixels > 0).sum()),
            f"{PREFIX}n_regions": int(stats.regions[foreground].sum()),
            f"{PREFIX}n_tiny_fragments": int(stats.tiny.sum()),
            f"{PREFIX}n_holes": int(stats.holes[foreground].sum()),
            f"{PREFIX}problems": ";".join(codes_found),
        }
        for c, name in enumerate(names):
            row[f"{PREFIX}share:{name}"] = stats.pixels[c] / labelled if labelled else np.nan
        rows[sample_id] = row

    metrics = total.summary(names)
    for c, name in enumerate(names):
        metrics["classes"][name].update({
            "n_regions": int(regions[c]),
            "mean_region_pixels": float(region_pixels[c] / regions[c]) if regions[c] else None,
            "min_region_pixels": int(region_min[c]) if regions[c] else None,
            "max_region_pixels": int(region_max[c]) if regions[c] else None,
            "n_tiny_fragments": int(tiny[c]),
            "n_holes": int(holes[c]) if c != spec.background else None,
            "hole_pixels": int(hole_pixels[c]) if c != spec.background else None,
            "region_size_bins": _trim(size_bins[c]),
        })
    metrics.update({
        "n_without_mask": int(len(samples) - total.images),
        "per_split": {split: totals.summary(names) for split, totals in sorted(per_split.items())},
        "n_regions": int(regions[foreground].sum()),
        "n_tiny_fragments": int(tiny.sum()),
        "n_holes": int(holes[foreground].sum()),
        "problems": problems,
        "tiny_pixels_rule": (f"< {tiny_pixels} px" if tiny_pixels is not None else
                             f"< max({TINY_MIN_PIXELS}, {TINY_SHARE:.2%} of the image's pixels)"),
        "background_class": None if spec.background is None else names[spec.background],
    })
    columns = [f"{PREFIX}{c}" for c in ("width", "height", "ignore_share", "n_classes", "n_regions",
                                        "n_tiny_fragments", "n_holes", "problems")]
    columns += [f"{PREFIX}share:{name}" for name in names]
    per_image = pd.DataFrame.from_dict(rows, orient="index", columns=columns).reindex(samples.index)
    return MaskStatistics(per_image=per_image, metrics=metrics)


def _trim(bins: np.ndarray) -> list[int]:
    nonzero = np.flatnonzero(bins)
    return bins[: nonzero[-1] + 1].astype(int).tolist() if len(nonzero) else []


def class_shares(metrics: Mapping[str, Any]) -> pd.Series:
    """Pixel share per class from :func:`mask_statistics`'s metrics (or a baseline run's), for the comparison."""
    return pd.Series({name: entry["share"] for name, entry in metrics["classes"].items()}, dtype=float)


def compare_with_baseline(shares_now: Mapping[str, float] | pd.Series,
                          shares_before: Mapping[str, float] | pd.Series,
                          run_name: str | None = None) -> dict[str, Any]:
    """How the pixel share of each class moved since the baseline run.

    Pixels of one image are not independent draws, so a chi-square test on pixel counts would call every shift
    significant; the sizes of the shift are reported instead: per-class ``share_delta`` (this run minus the
    baseline), ``max_share_shift`` (largest absolute delta) and its class, ``total_variation`` (half the summed
    absolute deltas: the share of pixels that would have to change class) and ``jensen_shannon`` (Jensen-Shannon
    distance, base 2, in [0, 1]). Shares are renormalised over the classes either run has, so they sum to 1.
    """
    from scipy.spatial.distance import jensenshannon

    now, before = pd.Series(shares_now, dtype=float), pd.Series(shares_before, dtype=float)
    classes = sorted(set(now.index[now > 0]) | set(before.index[before > 0]))
    now, before = now.reindex(classes, fill_value=0.0), before.reindex(classes, fill_value=0.0)
    if now.sum() > 0:
        now = now / now.sum()
    if before.sum() > 0:
        before = before / before.sum()
    delta = now - before
    both = bool(classes) and now.sum() > 0 and before.sum() > 0
    return {
        "run_name": run_name,
        "deltas": {c: {"share": float(now[c]), "previous_share": float(before[c]), "share_delta": float(delta[c])}
                   for c in classes},
        "new_classes": sorted(c for c in classes if before[c] == 0),
        "vanished_classes": sorted(c for c in classes if now[c] == 0),
        "max_share_shift": float(delta.abs().max()) if classes else None,
        "max_share_shift_class": str(delta.abs().idxmax()) if classes else None,
        "total_variation": float(delta.abs().sum() / 2) if both else None,
        "jensen_shannon": float(jensenshannon(now.to_numpy(), before.to_numpy(), base=2)) if both else None,
    }


# ------------------------------------------------------------------------------------------------ the check

NO_MASKS = "not a segmentation dataset (no masks)"
STATS_PREFIX = "mask_stats_"
STATS_DEFAULTS: dict[str, Any] = {"tiny_pixels": None}


def pixel_share_shift(summary: dict[str, Any], baseline: dict[str, Any] | None) -> dict[str, Any] | Unavailable:
    """|pixel share now - in the baseline| per class (a class one run lacks counts with share 0); without a
    baseline, the shift the check recorded against the run's own baseline."""
    metrics = (summary.get("checks") or {}).get("mask_stats") or {}
    if baseline is None:
        recorded = metrics.get("baseline")
        deltas = recorded.get("deltas") if isinstance(recorded, dict) else None
        if not deltas:
            return Unavailable("max_class_pixel_share_shift needs a baseline run (pass --baseline PREVIOUS_RUN_DIR "
                               "or auto)", needs_baseline=True)
        return {c: abs(float(d["share_delta"])) for c, d in deltas.items()}
    before = (baseline.get("checks") or {}).get("mask_stats")
    if not isinstance(before, dict) or not isinstance(before.get("classes"), dict):
        return Unavailable(f"baseline {baseline.get('run_name')!r}: the mask_stats check did not run there")
    shift = compare_with_baseline(class_shares(metrics), class_shares(before))
    return {c: abs(d["share_delta"]) for c, d in shift["deltas"].items()}


@register
class MaskStatsCheck(Check):
    """Pixel shares, class presence, regions, fragments and holes of the shipped masks, and their shift.

    The per-image columns are :func:`mask_statistics`' with the check's prefix (``mask_stats_share:<class>``...);
    the metrics also keep the class map (``mask_spec``), which the report and the FiftyOne export read masks with.
    Parameters (``[checks.mask_stats]``): ``tiny_pixels`` (default: ``max(4, 0.01% of the image)``).
    """

    name: ClassVar[str] = "mask_stats"
    requires: ClassVar[tuple[Requirement, ...]] = ()
    description: ClassVar[str] = (
        "Segmentation masks: pixel share of each class (dataset, split, image), images containing each class, "
        "connected regions, tiny fragments, holes, unlabelled share, and the pixel-share shift since the baseline."
    )
    thresholds: ClassVar[tuple[Threshold, ...]] = (
        Threshold("max_class_pixel_share_shift", "checks.mask_stats.classes.{key}.share", "<=", "rate",
                  "pixel share shift of class {key}",
                  "no class's share of the labelled pixels may move more than this against the baseline (one rule "
                  "per class; without --baseline, the shift the run recorded against its own baseline)",
                  compute=pixel_share_shift),
    )
    trends: ClassVar[tuple[Trend, ...]] = (
        Trend("Class pixel shares", "checks.mask_stats.classes.{key}.share", percent=True),
    )
    report_sections: ClassVar[tuple[ReportSection, ...]] = (
        ReportSection("mask-distribution", "Pixel shares", "_mask_distribution.html.j2",
                      lambda si: mask_distribution_section(si), 11),
    )
    fiftyone: ClassVar[FiftyOneSpec] = FiftyOneSpec(fields=(
        FiftyOneField("label_audit_mask", "segmentation", "the shipped mask",
                      lambda run: stored_paths(run, "mask"), targets=lambda run: mask_targets(run_spec(run))),
        FiftyOneField("label_audit_mask_ignore_share", "float", "share of the image's pixels left unlabelled",
                      lambda run: float_values(run, f"{STATS_PREFIX}ignore_share")),
    ))

    @classmethod
    def summary_line(cls, metrics: dict[str, Any]) -> str:
        if "skipped" in metrics:
            return f"skipped: {metrics['skipped']}"
        shift = metrics.get("baseline") or {}
        moved = (f"; largest pixel-share shift {shift['max_share_shift']:.1%} ({shift['max_share_shift_class']})"
                 if shift.get("max_share_shift") is not None else "")
        ignore = metrics.get("ignore_share")
        return (f"{metrics['n_images']:,} masks, {metrics['n_regions']:,} regions "
                f"({metrics['n_tiny_fragments']:,} tiny fragments, {metrics['n_holes']:,} holes), "
                f"{'n/a' if ignore is None else f'{ignore:.1%}'} unlabelled{moved}")

    @classmethod
    def tiles(cls, state: dict[str, Any]) -> list[Tile]:
        from audit.presentation import format_number, format_percent

        if state["status"] != "ok":
            return []
        m = state["metrics"]
        ignore = m.get("ignore_share")
        return [Tile("Labelled pixels", format_percent(None if ignore is None else 1 - ignore),
                     f"{format_number(m.get('n_regions'))} regions, {format_number(m.get('n_tiny_fragments'))} "
                     "tiny fragments", "warn" if m.get("problems") else "")]

    def run(self, context: CheckContext) -> CheckResult:
        spec: MaskSpec | None = context.extra.get("mask_spec")
        empty = pd.DataFrame(index=context.samples.index)
        if spec is None or "mask" not in context.samples:
            return CheckResult(self.name, empty, {"skipped": NO_MASKS})
        if context.samples["mask"].isna().all():
            return CheckResult(self.name, empty, {"skipped": "no shipped masks (only annotators' masks)"})
        params = merge_params(self.name, context.params, STATS_DEFAULTS)
        stats = mask_statistics(context.samples, spec, tiny_pixels=params["tiny_pixels"])
        metrics = {**stats.metrics, "mask_spec": spec.to_dict(), "baseline": None}
        before = context.baseline.check_metrics(self.name) if context.baseline is not None else None
        if isinstance(before, dict) and isinstance(before.get("classes"), dict):
            metrics["baseline"] = compare_with_baseline(class_shares(stats.metrics), class_shares(before),
                                                        context.baseline.name)
        per_image = stats.per_image.rename(columns=lambda c: STATS_PREFIX + c.removeprefix(PREFIX))
        return CheckResult(self.name, per_image, json_safe(metrics))


# ------------------------------------------------------------------------------------- files, report, FiftyOne
# Shared by the three mask checks: the run's class map, the mask files a run folder keeps (paths relative to the
# run folder), masks written in the shipped masks' own encoding, and small overlays for the report.

MASK_CHECKS = ("mask_stats", "mask_agreement", "mask_mistakes")


def run_spec(run: Any) -> MaskSpec | None:
    """The class map a segmentation run recorded (in any mask check's metrics), or None."""
    for name in MASK_CHECKS:
        data = (run.check_metrics(name) or {}).get("mask_spec")
        if isinstance(data, dict):
            return MaskSpec.from_dict(data)
    return None


def mask_targets(spec: MaskSpec | None) -> dict[Any, str] | None:
    """FiftyOne ``mask_targets`` of masks in the shipped encoding: mask value (or ``#rrggbb``) -> class."""
    if spec is None:
        return None
    if spec.colours is not None:
        return {"#{:02x}{:02x}{:02x}".format(*colour): name for colour, name in zip(spec.colours, spec.classes,
                                                                                     strict=True)}
    return {int(value): name for value, name in zip(spec.values, spec.classes, strict=True)}


def stored_path(run: Any, value: Any) -> Path | None:
    """A mask file a run refers to: absolute paths as they are, others relative to the run folder."""
    if value is None or (isinstance(value, float) and math.isnan(value)) or value == "":
        return None
    path = Path(str(value))
    return path if path.is_absolute() else Path(run.path) / path


def stored_paths(run: Any, column: str) -> list[str | None]:
    """Absolute paths of a column of mask files, in run sample order (None where there is none)."""
    if column not in run.samples:
        return [None] * len(run.samples)
    return [None if p is None else str(p) for p in (stored_path(run, v) for v in run.samples[column].tolist())]


def float_values(run: Any, column: str) -> list[float | None]:
    if column not in run.samples:
        return [None] * len(run.samples)
    values = pd.to_numeric(run.samples[column], errors="coerce").to_numpy(float)
    return [float(v) if np.isfinite(v) else None for v in values]


def write_mask(codes: np.ndarray, spec: MaskSpec, path: Path) -> Path:
    """Write dense class codes as a mask file in the shipped masks' encoding (index values or colours), so the same
    class map reads it; unlabelled pixels get the map's first unlabelled value or colour."""
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    labelled = codes != IGNORE
    safe = np.where(labelled, codes, 0).astype(np.int64)
    if spec.colours is not None:
        palette = np.array(spec.colours, np.uint8)
        rgb = palette[safe]
        rgb[~labelled] = spec.ignore_colours[0] if spec.ignore_colours else (0, 0, 0)
        Image.fromarray(rgb, mode="RGB").save(path)
        return path
    values = np.array(spec.values, np.int64)
    ignore = spec.ignore_values[0] if spec.ignore_values else int(values.max()) + 1
    out = np.where(labelled, values[safe], ignore)
    dtype = np.uint8 if out.max(initial=0) < 256 else np.uint16
    Image.fromarray(out.astype(dtype)).save(path)
    return path


def mask_file_name(sample_id: str) -> str:
    """``<sample id without an image suffix>.png``, the naming of every mask file a run writes."""
    from audit.sources.table import IMAGE_SUFFIXES

    stem = Path(str(sample_id))
    stem = stem.with_suffix("") if stem.suffix.lower() in IMAGE_SUFFIXES else stem
    return f"{stem.as_posix()}.png"


def clear_folder(run_dir: Path | None, name: str) -> Path | None:
    """``run_dir/name``, emptied of what an earlier run of the same name wrote there (None without a run folder)."""
    import shutil

    if run_dir is None:
        return None
    folder = Path(run_dir) / name
    if folder.is_dir():
        shutil.rmtree(folder)
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def overlay_uri(image_path: Any, layer: np.ndarray | None, kind: str, spec: MaskSpec | None = None,
                size: int = 112) -> str | None:
    """A small data URI of an image with a mask drawn over it: ``kind`` ``"classes"`` (dense codes, one colour
    per class, background and unlabelled left clear) or ``"heat"`` (0..255, red where high)."""
    import base64
    import io

    from PIL import Image

    from audit.sources import load_image

    if image_path is None:
        return None
    image, _ = load_image(image_path)
    if image is None:
        return None
    base = np.asarray(image.convert("L").convert("RGB"), dtype=np.float32)
    if layer is not None and layer.shape == base.shape[:2]:
        if kind == "classes":
            colours = np.array([[int(c[j:j + 2], 16) for j in (1, 3, 5)]
                                for c in class_palette(spec.n_classes if spec else 1)], np.float32)
            shown = (layer != IGNORE) & (layer != (spec.background if spec and spec.background is not None else -2))
            alpha = np.where(shown, 0.55, 0.0)[..., None]
            tint = colours[np.where(shown, layer, 0).astype(np.int64)]
        else:
            alpha = ((layer.astype(np.float32) / 255.0) ** 2 * 0.85)[..., None]  # faint doubt stays faint
            tint = np.broadcast_to(np.array([230, 30, 50], np.float32), base.shape)
        base = base * (1 - alpha) + tint * alpha
    picture = Image.fromarray(np.clip(base, 0, 255).astype(np.uint8), mode="RGB")
    picture.thumbnail((size, size), Image.Resampling.NEAREST)
    encoded = []
    for form, options in (("PNG", {"optimize": True}), ("JPEG", {"quality": 80})):
        buffer = io.BytesIO()
        picture.save(buffer, format=form, **options)
        encoded.append((buffer.tell(), form.lower(), buffer.getvalue()))
    _, form, data = min(encoded)
    return f"data:image/{form};base64,{base64.b64encode(data).decode('ascii')}"


def class_palette(n: int) -> list[str]:
    """One colour per class code: the report's palette without its greys, which vanish over grey images."""
    from audit.presentation import PALETTE

    colours = [c for c in PALETTE if len({c[1:3], c[3:5], c[5:7]}) > 1]
    return [colours[i % len(colours)] for i in range(max(n, 1))]


def class_colours(spec: MaskSpec) -> list[dict[str, str]]:
    """The overlay colour of each class (the report's legend); background and unlabelled are drawn clear."""
    palette = class_palette(spec.n_classes)
    return [{"name": name, "colour": palette[i]} for i, name in enumerate(spec.classes) if i != spec.background]


def not_segmentation(state: dict[str, Any]) -> bool:
    """The check did not apply: the run has no masks (its report sections stay out of the page)."""
    return state["status"] == "absent" or (state["status"] == "skipped" and state["reason"] == NO_MASKS)


def pixel_share_figure(metrics: dict[str, Any], previous: Mapping[str, float] | None) -> Any:
    """Pixel share of each class per split, with the baseline's overall share beside it."""
    import plotly.graph_objects as go

    from audit.presentation import PALETTE, layout, plot_text

    classes = list(metrics.get("classes") or {})
    per_split = metrics.get("per_split") or {}
    if not classes:
        return None
    x = [plot_text(c) for c in classes]
    figure = go.Figure()
    for i, (split, block) in enumerate(sorted(per_split.items())):
        rows = block.get("classes") or {}
        figure.add_bar(x=x, y=[(rows.get(c) or {}).get("share", 0.0) for c in classes],
                       customdata=[(rows.get(c) or {}).get("images", 0) for c in classes],
                       name=plot_text(f"{split} (this run)"), marker_color=PALETTE[i % len(PALETTE)],
                       hovertemplate="class %{x}<br>%{y:.2%} of the labelled pixels<br>in %{customdata} images"
                                     "<extra>%{fullData.name}</extra>")
    if previous:
        figure.add_bar(x=x, y=[previous.get(c, 0.0) for c in classes], name="baseline (all splits)",
                       marker={"color": "rgba(90,90,90,0.35)", "line": {"color": "#555", "width": 1}},
                       hovertemplate="class %{x}<br>%{y:.2%} in the baseline<extra></extra>")
    figure.update_layout(**layout(
        barmode="group", height=340, yaxis={"title": "share of labelled pixels", "tickformat": ".0%"},
        xaxis={"title": "class", "type": "category"}, legend={"orientation": "h", "y": 1.12, "x": 0},
    ))
    return figure


def mask_distribution_section(si: Any) -> dict[str, Any] | None:
    """Pixel shares per class and split (plot and table), regions, fragments, holes and the shift since the
    baseline."""
    from audit.presentation import figure_json

    if not_segmentation(si.state):
        return None
    if si.state["status"] != "ok":
        return {"state": si.state}
    m = si.state["metrics"]
    shift = m.get("baseline")
    if si.baseline is not None and (not shift or shift.get("run_name") != si.baseline.name):
        before = si.baseline.check_metrics("mask_stats")
        if isinstance(before, dict) and isinstance(before.get("classes"), dict):
            shift = compare_with_baseline(class_shares(m), class_shares(before), si.baseline.name)
    deltas = (shift or {}).get("deltas") or {}
    previous = {c: d["previous_share"] for c, d in deltas.items()} if deltas else None
    splits = sorted(m.get("per_split") or {})
    rows = []
    for name, entry in (m.get("classes") or {}).items():
        delta = deltas.get(name) or {}
        rows.append({"name": name, **entry,
                     "splits": [((m["per_split"][s].get("classes") or {}).get(name) or {}).get("share")
                                for s in splits],
                     "previous_share": delta.get("previous_share"), "share_delta": delta.get("share_delta")})
    return {"state": si.state, "metrics": m, "rows": rows, "splits": splits, "shift": shift,
            "figure": figure_json(pixel_share_figure(m, previous))}
