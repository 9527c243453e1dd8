"""Image quality: dark, overexposed, blurry, low-information, greyscale-among-colour, odd size and odd aspect ratio.

Two halves, so that no image is read twice:

* :func:`audit.sources.images.image_stats` turns one decoded image into a dozen numbers. It runs in the decoding
  workers (it lives beside the decoder, so the embedding stage needs nothing from the checks),
  on the RGB image :func:`audit.sources.load_image` returns, right before the embedder's preprocessing. It
  touches a few thousand pixels, not all of them: tone and colour come from a 32 x 32 nearest-neighbour grid over
  the whole image (a fixed-size sample, so the cost does not grow with the image), sharpness from a 48 x 48
  window in the centre of the image seen at a fixed scale (short side ~256 px), where the variance of the
  Laplacian (over the gradient energy) is comparable between a 300 px thumbnail and a 4000 px photo. It costs
  0.06-0.25 ms an image whatever its size: 10-28% of decoding a 500 x 375 JPEG with libjpeg-turbo on this
  AVX-512 machine (0.6-0.9 ms), the upper figures when run right after each decode as the workers do (measured
  in ``benchmarks/hygiene.py`` on a busy shared machine); almost all of it is the fixed cost of ~30 PIL and
  numpy calls, not pixels.
* :func:`flag_quality` turns the table of those numbers into a score and a flag per issue. Tone, blur and
  information rules are absolute thresholds (cleanvision's as the starting point, then chosen on the tuning
  sets of ``benchmarks/hygiene.py``, seed 1, and evaluated on its seed-0 sets), with a guard relative to the
  dataset: a rule that would flag most of the dataset describes it (night photos, greyscale scans) and gives
  way to "unusual for this dataset". Size and aspect-ratio rules are relative to the dataset's own typical
  image. See :data:`DEFAULT_PARAMS` for each rule.

Scores are in [0, 1] and higher means worse (rank descending); flags are booleans.
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np
import pandas as pd

from audit.checks.base import Check, CheckContext, CheckResult, Requirement, json_safe, register
from audit.declarations import (
    FiftyOneField,
    FiftyOneSpec,
    FiftyOneTag,
    FiftyOneView,
    ReportSection,
    Threshold,
    Tile,
    Trend,
    Unavailable,
)
from audit.sources.images import STAT_KEYS, STATS_VERSION, image_stats  # noqa: F401  (the statistics, re-exported)

ISSUES = ("dark", "overexposed", "blurry", "low_information", "grayscale", "odd_size", "odd_aspect_ratio")


# -------------------------------------------------------------------------------------------- flagging

DEFAULT_PARAMS: dict[str, Any] = {
    # dark: even the brightest 1% of the pixels are below this luma (cleanvision uses 0.32 on its own
    # brightness formula; 0.25 here kept naturally dim photo tiles out in the tuning set)
    "dark_p99": 0.25,
    # overexposed: at least this share of the pixels is blown out (luma > 0.95) and the image is bright overall
    "overexposed_share": 0.10,
    "overexposed_brightness": 0.5,
    # blurry: the sharpness statistic (Laplacian variance over gradient energy, at a fixed scale) is below
    # this; chosen on the tuning sets (benchmarks/hygiene.py, seed 1), where it beat normalising by the
    # grey-level variance (which calls any tile with one strong edge blurry)
    "blurry_sharpness": 0.4,
    # low information: fewer bits of luma entropy than this and little contrast (a two-tone digit or logo has
    # low entropy but carries its information in its shape)
    "low_information_entropy": 2.0,
    "low_information_contrast": 0.1,
    # greyscale: less than this share of the pixels has visible colour, in a dataset of mostly colour images
    "grayscale_colour_share": 0.01,
    # odd size: the image's sqrt(width x height) is outside the dataset's quartiles by more than this many
    # interquartile ranges (log scale; the range is at least odd_size_min_iqr, so that a dataset of identical
    # sizes does not flag a few pixels' difference)
    "odd_size_iqr": 3.0,
    "odd_size_min_iqr": 0.1,
    # odd aspect ratio: width / height differs from the dataset's median aspect ratio by a factor of at least
    # this (cleanvision flags min(w/h, h/w) < 0.35 in any dataset; relative to the median, a dataset of
    # panoramas does not flag its panoramas)
    "odd_aspect_factor": 2.0,
    # a rule that would flag more than this share of the dataset describes the dataset (night photos,
    # scans, a greyscale dataset), not a few bad images: then only images unusual *for this dataset* are
    # flagged, by a modified z-score (Iglewicz-Hoaglin) beyond relative_z, or none (greyscale)
    "max_share": 0.5,
    "relative_z": 3.5,
}


def merge_quality_params(params: dict[str, Any] | None) -> dict[str, Any]:
    """``params`` over :data:`DEFAULT_PARAMS`; an unknown name is an error (a typo would silently do nothing)."""
    params = dict(params or {})
    unknown = sorted(set(params) - set(DEFAULT_PARAMS))
    if unknown:
        raise ValueError(f"unknown quality parameter(s) {unknown}; known: {sorted(DEFAULT_PARAMS)}")
    return {**DEFAULT_PARAMS, **params}


def modified_z(values: np.ndarray) -> np.ndarray:
    """Iglewicz-Hoaglin modified z-score, 0.6745 (x - median) / MAD, robust to the outliers it looks for.

    A MAD of 0 (more than half the values equal) falls back to the mean absolute deviation (x 1.253314, as in
    the IBM/SPSS convention), and to 0 everywhere when all values are equal."""
    values = np.asarray(values, dtype=np.float64)
    finite = np.isfinite(values)
    if not finite.any():
        return np.zeros_like(values)
    median = np.median(values[finite])
    mad = np.median(np.abs(values[finite] - median))
    if mad > 0:
        return 0.6745 * (values - median) / mad
    mean_ad = np.mean(np.abs(values[finite] - median))
    if mean_ad > 0:
        return (values - median) / (1.253314 * mean_ad)
    return np.zeros_like(values)


def _fallback(flags: np.ndarray, badness: np.ndarray, params: dict[str, Any]) -> tuple[np.ndarray, bool]:
    """``flags``, or the relative rule on ``badness`` (higher = worse) when ``flags`` cover too much."""
    if len(flags) and flags.mean() > params["max_share"]:
        return modified_z(badness) > params["relative_z"], True
    return flags, False


def flag_quality(stats: pd.DataFrame, params: dict[str, Any] | None = None) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Score and flag every image for each issue in :data:`ISSUES` from a table of :func:`image_stats`.

    Parameters
    ----------
    stats
        One row per sample (the index is kept), the :data:`STAT_KEYS` columns; rows of NaN (unreadable
        images) get NaN scores and no flag.
    params
        Overrides of :data:`DEFAULT_PARAMS` (each rule is described there).

    Returns
    -------
    (frame, metrics)
        ``frame``: ``quality_<issue>_score`` (0..1, higher is worse) and ``quality_is_<issue>`` (bool) for each
        issue, plus ``quality_issues`` (";"-joined names of the flagged issues) and ``quality_any``.
        ``metrics``: ``counts`` and ``rates`` per issue, ``n_any``, ``relative`` (issues whose absolute rule
        would have flagged most of the dataset and that were judged relative to it instead), the dataset's
        ``typical`` size and aspect ratio, the thresholds in force, and ``top`` (up to 10 worst sample ids per
        issue).
    """
    params = merge_quality_params(params)
    missing = sorted(set(STAT_KEYS) - set(stats.columns))
    if missing:
        raise ValueError(f"quality statistics lack column(s) {missing}")
    s = stats[list(STAT_KEYS)].astype(float)
    ok = s.notna().all(axis=1).to_numpy()
    v = {key: s[key].to_numpy() for key in STAT_KEYS}
    scores: dict[str, np.ndarray] = {}
    flags: dict[str, np.ndarray] = {}
    relative: list[str] = []

    def finish(issue: str, score: np.ndarray, flag: np.ndarray, badness: np.ndarray | None = None) -> None:
        flag = flag & ok
        if badness is not None:
            flag_ok, switched = _fallback(flag[ok], badness[ok], params)
            flag = np.zeros(len(flag), dtype=bool)
            flag[ok] = flag_ok
            if switched:
                relative.append(issue)
        scores[issue] = np.where(ok, np.clip(score, 0.0, 1.0), np.nan)
        flags[issue] = flag

    p99 = v["brightness_p99"]
    finish("dark", 1.0 - p99, p99 < params["dark_p99"], -p99)
    bright = v["bright_share"]
    finish("overexposed", bright, (bright >= params["overexposed_share"])
           & (v["brightness"] >= params["overexposed_brightness"]), bright + v["brightness"])
    sharpness = v["sharpness"]
    # score: 0.5 at the threshold, towards 1 for a flat Laplacian
    finish("blurry", 1.0 / (1.0 + sharpness / params["blurry_sharpness"]), sharpness < params["blurry_sharpness"],
           -np.log10(sharpness + 1e-6))
    entropy = v["entropy"]
    finish("low_information", 1.0 - entropy / 8.0, (entropy < params["low_information_entropy"])
           & (v["contrast"] < params["low_information_contrast"]), -entropy)
    grey = v["colour_share"] < params["grayscale_colour_share"]
    grey_share = float(grey[ok].mean()) if ok.any() else 0.0
    among_colour = grey_share <= params["max_share"]
    if not among_colour:
        relative.append("grayscale")
    finish("grayscale", 1.0 - v["colour_share"], grey & among_colour)

    log_size = np.log(np.sqrt(np.maximum(v["width"] * v["height"], 1.0)))
    typical_size, size_low, size_high = _fences(log_size[ok], params["odd_size_iqr"], params["odd_size_min_iqr"])
    finish("odd_size", 1.0 - np.exp(-np.abs(log_size - typical_size)), (log_size < size_low) | (log_size > size_high))
    log_aspect = np.log(np.maximum(v["aspect_ratio"], 1e-9))
    typical_aspect = float(np.median(log_aspect[ok])) if ok.any() else 0.0
    deviation = np.abs(log_aspect - typical_aspect)
    finish("odd_aspect_ratio", 1.0 - np.exp(-deviation), deviation >= np.log(params["odd_aspect_factor"]))

    frame = pd.DataFrame(index=stats.index)
    for issue in ISSUES:
        frame[f"quality_{issue}_score"] = scores[issue]
        frame[f"quality_is_{issue}"] = flags[issue]
    flagged = np.column_stack([flags[issue] for issue in ISSUES]) if len(stats) else np.zeros((0, len(ISSUES)), bool)
    frame["quality_issues"] = [";".join(i for i, f in zip(ISSUES, row, strict=True) if f) for row in flagged]
    frame["quality_any"] = flagged.any(axis=1)
    n = int(ok.sum())
    top = {}
    for issue in ISSUES:
        chosen = frame.index[flags[issue]]
        order = np.argsort(-scores[issue][flags[issue]], kind="stable")
        top[issue] = [str(x) for x in chosen[order][:10]]
    metrics = {
        "n_images": n,
        "counts": {issue: int(flags[issue].sum()) for issue in ISSUES},
        "rates": {issue: (float(flags[issue].sum()) / n if n else None) for issue in ISSUES},
        "n_any": int(frame["quality_any"].sum()),
        "relative": relative,
        "grayscale_share": grey_share,
        "typical": {"size_sqrt_area": float(np.exp(typical_size)) if n else None,
                    "aspect_ratio": float(np.exp(typical_aspect)) if n else None},
        "params": params,
        "top": top,
    }
    return frame, metrics


def _fences(values: np.ndarray, iqr_factor: float, min_iqr: float) -> tuple[float, float, float]:
    """(median, low fence, high fence): Tukey's fences with ``iqr_factor`` and an interquartile range of at
    least ``min_iqr``."""
    if not len(values):
        return 0.0, -np.inf, np.inf
    q1, median, q3 = np.percentile(values, [25, 50, 75])
    iqr = max(q3 - q1, min_iqr)
    return float(median), float(q1 - iqr_factor * iqr), float(q3 + iqr_factor * iqr)


# ------------------------------------------------------------------------------------------ the check


def _issue_share(summary: dict[str, Any], baseline: dict[str, Any] | None) -> float | Unavailable:
    metrics = summary["checks"]["quality"]
    n = metrics.get("n_images") or 0
    return Unavailable("checks.quality.n_images is 0") if not n else metrics["n_any"] / n


def _quality_mask(run: Any) -> np.ndarray:
    if "quality_any" not in run.samples:
        return np.zeros(len(run.samples), dtype=bool)
    return run.samples["quality_any"].fillna(False).astype(bool).to_numpy()


@register
class QualityCheck(Check):
    """Dark, overexposed, blurry, low-information, greyscale-among-colour, odd size and odd aspect ratio images,
    from the pixel statistics taken while decoding for embedding (no second pass over the files)."""

    name: ClassVar[str] = "quality"
    requires: ClassVar[tuple[Requirement, ...]] = ()
    description: ClassVar[str] = ("image quality from the pixels decoded for embedding: dark, overexposed, blurry, "
                                  "low information, greyscale among colour images, odd size or aspect ratio")
    thresholds: ClassVar[tuple[Threshold, ...]] = (
        Threshold("max_quality_issue_rate", "checks.quality.n_any/checks.quality.n_images", "<=", "rate",
                  "share of images with a quality issue", "at most this share of images may be dark, overexposed, "
                  "blurry, low-information, odd greyscale, odd size or odd aspect ratio", compute=_issue_share),
        Threshold("max_quality_issue_share", "checks.quality.rates.{key}", "<=", "rate",
                  "share of images with issue {key}", "the same, one rule per issue"),
    )
    trends: ClassVar[tuple[Trend, ...]] = (Trend("Images with quality issues", "checks.quality.n_any"),)
    report_sections: ClassVar[tuple[ReportSection, ...]] = (
        ReportSection("quality", "Image quality", "_quality.html.j2", lambda si: quality_section(si), 67),
    )
    fiftyone: ClassVar[FiftyOneSpec] = FiftyOneSpec(
        fields=(FiftyOneField("label_audit_quality_issues", "string_list", "image quality issues found",
                              lambda run: _issue_lists(run)),),
        tags=(FiftyOneTag("image_quality", _quality_mask),),
        views=(FiftyOneView("la-image-quality", "Images with a quality issue (dark, blurry, ...)",
                            lambda dataset, F: dataset.match_tags("image_quality"),
                            applies=lambda run: "quality_any" in run.samples.columns),),
    )

    @classmethod
    def summary_line(cls, metrics: dict[str, Any]) -> str:
        if "skipped" in metrics:
            return f"skipped: {metrics['skipped']}"
        found = ", ".join(f"{n} {k.replace('_', ' ')}" for k, n in (metrics.get("counts") or {}).items() if n)
        return f"{metrics['n_any']:,} images with a quality issue" + (f" ({found})" if found else "")

    @classmethod
    def tiles(cls, state: dict[str, Any]) -> list[Tile]:
        if state["status"] != "ok":
            return []
        m = state["metrics"]
        return [Tile("Image quality", f"{m['n_any']:,} issues", "dark, overexposed, blurry, low information, ...",
                     "warn" if m["n_any"] else "good")]

    def run(self, context: CheckContext) -> CheckResult:
        samples = context.samples
        columns = [f"image_{k}" for k in STAT_KEYS]
        if not set(columns) <= set(samples.columns) or samples[columns].isna().all().all():
            return CheckResult(self.name, pd.DataFrame(index=samples.index),
                               {"skipped": "no pixel statistics (no image could be decoded)"})
        stats = samples[columns].rename(columns=lambda c: c[len("image_"):]).astype(float)
        frame, metrics = flag_quality(stats, context.params or None)
        metrics = {**metrics, "n_images": int(stats.notna().any(axis=1).sum())}
        return CheckResult(self.name, frame.reindex(samples.index), json_safe(metrics))


def _issue_lists(run: Any) -> list[list[str]]:
    if "quality_issues" not in run.samples:
        return [[] for _ in range(len(run.samples))]
    return [[i for i in str(v).split(";") if i and i != "nan"] for v in run.samples["quality_issues"].fillna("")]


def quality_section(si: Any) -> dict[str, Any] | None:
    """Counts per issue and the worst images of each, with thumbnails."""
    if si.state["status"] == "absent":
        return None
    metrics = si.state["metrics"]
    samples = si.run.samples
    per_issue = []
    for issue in ISSUES:
        ids = [i for i in (metrics.get("top") or {}).get(issue, []) if i in samples.index][:8]
        thumbs = si.thumbnails(ids)
        score = f"quality_{issue}_score"
        per_issue.append({"issue": issue, "count": (metrics.get("counts") or {}).get(issue, 0),
                          "rate": (metrics.get("rates") or {}).get(issue),
                          "cards": [{"id": i, "src": thumbs.get(i), "label": samples.at[i, "label"],
                                     "score": samples.at[i, score] if score in samples else None} for i in ids]})
    return {"state": si.state, "metrics": metrics, "issues": per_issue}
