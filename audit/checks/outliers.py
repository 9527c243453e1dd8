"""Outliers: images far from everything (out of scope, another source, broken) and images far from their own
class (likely the wrong class, or an odd member of it).

Both are distances in embedding space (cosine distance ``1 - similarity`` of L2-normalised embeddings):

* **global**: the mean distance to the ``k`` nearest neighbours (:func:`audit.neighbours.knn`, no ``n x n``
  matrix). Distances are compared on a log scale, where kNN distances are roughly symmetric, by the
  Iglewicz-Hoaglin modified z-score ``0.6745 (x - median) / MAD``; an image is an outlier when that exceeds
  ``z_threshold`` (3.5, their recommended cut). The score ``1 / (1 + exp(-(z - z_threshold)))`` is 0.5 at the
  cut, ~0.03 for a typical image and tends to 1 far out, so it ranks and reads the same in every dataset.
* **class**: the mean distance to the ``class_k`` nearest neighbours *of the same label*, judged two ways. (a)
  Against its own class: the same modified z-score computed within the class (classes smaller than
  ``min_class_size`` get none: a median of three distances says nothing); beyond ``z_threshold`` the image is an
  odd member of its class (or out of scope). (b) Against the other classes: the *class ratio*, own-class kNN
  distance / kNN distance among all images (>= 1, about 1 when the nearest images share its label); above
  ``class_ratio`` (2: its own class is at least twice as far as its nearest images) the image sits among
  another class, a likely mislabel. Flagged when either holds; on sklearn's digits with 5% of the labels
  flipped, this flags the flipped ones with precision ~0.97 and recall ~0.97 (the within-class z-score alone:
  0.95 / 0.7, because a mislabel in a wide class is not far by that class's own spread). When the image is
  also closer to another class's centroid than to its own, ``outliers_nearest_class`` names that class (the
  ``mistakes`` check confirms or not with its classifier).

Duplicates make a sample look *less* outlying (its copy is at distance 0); that is deliberate: a pair of
identical odd images is still odd, and the mean over ``k`` neighbours keeps it visible.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
import pandas as pd

from audit.checks.base import Check, CheckContext, CheckResult, Requirement, json_safe, merge_params, register
from audit.declarations import FiftyOneField, FiftyOneSpec, FiftyOneTag, FiftyOneView, ReportSection, Threshold, Tile

DEFAULT_K = 10
DEFAULT_CLASS_K = 10
DEFAULT_Z = 3.5
DEFAULT_CLASS_RATIO = 2.0
MIN_CLASS_SIZE = 8
PREFIX = "outliers_"


@dataclass
class OutliersResult:
    """Per-sample table (``outliers_*`` columns, indexed like the samples) and JSON-safe metrics."""

    samples: pd.DataFrame
    metrics: dict[str, Any] = field(default_factory=dict)


def robust_z(values: np.ndarray) -> np.ndarray:
    """Modified z-score of ``values`` (NaN kept); 0 everywhere when the MAD is 0 and all values agree, and the
    mean absolute deviation in place of a zero MAD otherwise (see :func:`audit.checks.quality.modified_z`)."""
    from audit.checks.quality import modified_z

    values = np.asarray(values, dtype=np.float64)
    out = np.full(len(values), np.nan)
    finite = np.isfinite(values)
    if finite.any():
        out[finite] = modified_z(values[finite])
    return out


def outlier_score(z: np.ndarray, z_threshold: float = DEFAULT_Z) -> np.ndarray:
    """``1 / (1 + exp(-(z - z_threshold)))``: 0.5 at the threshold, NaN where ``z`` is NaN."""
    with np.errstate(over="ignore"):
        return 1.0 / (1.0 + np.exp(-(np.asarray(z, dtype=np.float64) - z_threshold)))


def mean_knn_distance(similarities: np.ndarray) -> np.ndarray:
    """Mean cosine distance over the neighbours found (NaN entries, i.e. missing neighbours, ignored)."""
    distances = 1.0 - np.asarray(similarities, dtype=np.float64)
    if not distances.size:
        return np.full(len(distances), np.nan)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # a row without neighbours: NaN, as documented
        return np.nanmean(distances, axis=1)


def _log_distance(distance: np.ndarray) -> np.ndarray:
    return np.log(np.maximum(distance, 1e-6))


def find_outliers(samples: pd.DataFrame, embeddings: np.ndarray, k: int = DEFAULT_K, class_k: int = DEFAULT_CLASS_K,
                  z_threshold: float = DEFAULT_Z, class_ratio: float = DEFAULT_CLASS_RATIO,
                  min_class_size: int = MIN_CLASS_SIZE, threads: int | None = None,
                  method: str = "auto", neighbours: tuple[np.ndarray, np.ndarray] | None = None,
                  max_listed: int = 20) -> OutliersResult:
    """Global and class outliers of every sample with an embedding.

    Parameters
    ----------
    samples
        Sample table indexed by sample id; ``label`` is used for the class outliers (missing: none).
    embeddings
        ``(n, d)`` L2-normalised, rows in ``samples`` order; NaN rows (unreadable images) get NaN scores.
    k, class_k
        Neighbours for the global and the within-class distance (keep them equal: the class ratio compares
        the two).
    z_threshold
        Modified z-score above which an image is flagged (both kinds).
    class_ratio
        Own-class over overall kNN distance above which an image is a class outlier (it sits among another
        class).
    neighbours
        Optional ``(similarities, indices)`` of a :func:`audit.neighbours.knn` already run on the finite rows
        (in order) with at least ``k`` neighbours, to avoid searching twice.

    Returns
    -------
    OutliersResult
        ``samples`` columns: ``outliers_knn_distance``, ``outliers_z``, ``outliers_score`` (0..1),
        ``outliers_is_outlier``; ``outliers_class_distance``, ``outliers_class_z``, ``outliers_class_ratio``,
        ``outliers_class_score`` (the larger of the z-score's logistic and ``ratio / (ratio + class_ratio)``,
        both 0.5 at their cut), ``outliers_is_class_outlier``; ``outliers_nearest_class`` (the class whose
        centroid is nearest, when it is not the sample's own; "" otherwise) and ``outliers_centroid_margin``
        (distance to the own centroid minus distance to the nearest other centroid: > 0 means closer to another
        class).
        ``metrics``: ``n_outliers``, ``outlier_rate``, ``n_class_outliers``, ``class_outlier_rate``,
        ``per_class`` (``{class: {"n": size, "n_class_outliers": ...}}``), ``distance_threshold`` (the mean kNN
        distance at the cut), ``top_outliers`` and ``top_class_outliers`` (sample ids, worst first), settings.
    """
    from audit.neighbours import check_embeddings, knn, plan_index

    n = len(samples)
    embeddings = np.asarray(embeddings, dtype=np.float32)
    if embeddings.shape[0] != n:
        raise ValueError(f"{embeddings.shape[0]} embedding rows for {n} samples")
    usable = np.isfinite(embeddings).all(axis=1)
    rows = np.flatnonzero(usable)
    vectors = check_embeddings(embeddings[rows]) if len(rows) else np.empty((0, embeddings.shape[1]), np.float32)
    ids = samples.index

    distance = np.full(n, np.nan)
    if len(rows) >= 2:
        if neighbours is None:
            similarities, _ = knn(vectors, min(k, len(rows) - 1), threads=threads, method=method)
        else:
            similarities = np.asarray(neighbours[0])[:, :k]
            if len(similarities) != len(rows):
                raise ValueError(f"neighbours have {len(similarities)} rows, {len(rows)} usable embeddings")
        distance[rows] = mean_knn_distance(similarities)
    z = robust_z(_log_distance(distance))
    score = outlier_score(z, z_threshold)
    is_outlier = np.nan_to_num(z, nan=-np.inf) > z_threshold

    labels = samples["label"] if "label" in samples else pd.Series(None, index=ids)
    label_values = labels.to_numpy(dtype=object)
    has_label = np.array([x is not None and x == x for x in label_values], dtype=bool)
    labelled = np.flatnonzero(usable & has_label)
    codes, class_names = pd.factorize(pd.Series([str(x) for x in label_values[labelled]], dtype=object), sort=True)
    order = np.argsort(codes, kind="stable")
    members_of = dict(zip(class_names, np.split(labelled[order], np.flatnonzero(np.diff(codes[order])) + 1),
                          strict=True)) if len(labelled) else {}
    class_distance = np.full(n, np.nan)
    class_z = np.full(n, np.nan)
    centroids: dict[str, np.ndarray] = {}
    for name, members in members_of.items():
        centroid = embeddings[members].mean(axis=0)
        norm = float(np.linalg.norm(centroid))
        if norm > 0:
            centroids[name] = centroid / norm
        if len(members) < max(min_class_size, 2):
            continue
        sims, _ = knn(embeddings[members], min(class_k, len(members) - 1), threads=threads, method=method)
        class_distance[members] = mean_knn_distance(sims)
        class_z[members] = robust_z(_log_distance(class_distance[members]))
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = class_distance / np.maximum(distance, 1e-9)
    class_score = np.fmax(outlier_score(class_z, z_threshold), ratio / (ratio + class_ratio))
    among_other = np.nan_to_num(ratio, nan=0.0) > class_ratio
    is_class_outlier = (np.nan_to_num(class_z, nan=-np.inf) > z_threshold) | among_other
    per_class = {name: {"n": len(members), "n_class_outliers": int(is_class_outlier[members].sum())}
                 for name, members in members_of.items()}

    nearest_class = np.full(n, "", dtype=object)
    margin = np.full(n, np.nan)
    if len(centroids) >= 2:
        names = list(centroids)
        matrix = np.stack([centroids[c] for c in names])
        lookup = {c: i for i, c in enumerate(names)}
        own = np.full(n, -1, dtype=np.int64)
        for name, members in members_of.items():
            own[members] = lookup.get(name, -1)
        labelled = np.flatnonzero(own >= 0)
        own = own[labelled]
        for start in range(0, len(labelled), 65536):  # O(batch x classes) memory
            batch, own_batch = labelled[start:start + 65536], own[start:start + 65536]
            dist = 1.0 - embeddings[batch] @ matrix.T
            own_dist = dist[np.arange(len(batch)), own_batch]
            dist[np.arange(len(batch)), own_batch] = np.inf
            other = dist.argmin(axis=1)
            margin[batch] = own_dist - dist[np.arange(len(batch)), other]
            closer = margin[batch] > 0
            nearest_class[batch[closer]] = np.array(names, dtype=object)[other[closer]]

    frame = pd.DataFrame({
        f"{PREFIX}knn_distance": distance,
        f"{PREFIX}z": z,
        f"{PREFIX}score": score,
        f"{PREFIX}is_outlier": is_outlier,
        f"{PREFIX}class_distance": class_distance,
        f"{PREFIX}class_z": class_z,
        f"{PREFIX}class_ratio": ratio,
        f"{PREFIX}class_score": class_score,
        f"{PREFIX}is_class_outlier": is_class_outlier,
        f"{PREFIX}nearest_class": nearest_class.astype(str),
        f"{PREFIX}centroid_margin": margin,
    }, index=ids)
    finite_log = _log_distance(distance[np.isfinite(distance)])
    threshold_distance = None
    if len(finite_log):
        median = float(np.median(finite_log))
        mad = float(np.median(np.abs(finite_log - median)))
        if mad > 0:
            threshold_distance = float(np.exp(median + z_threshold * mad / 0.6745))
    n_scored = int(np.isfinite(distance).sum())

    def top(column: str, flag: np.ndarray) -> list[str]:
        chosen = frame.loc[flag, column].sort_values(ascending=False, kind="stable")
        return [str(x) for x in chosen.index[:max_listed]]

    metrics = {
        "n_scored": n_scored,
        "n_class_among_other": int(among_other.sum()),
        "n_outliers": int(is_outlier.sum()),
        "outlier_rate": float(is_outlier.sum()) / n_scored if n_scored else None,
        "n_class_outliers": int(is_class_outlier.sum()),
        "class_outlier_rate": float(is_class_outlier.sum()) / n_scored if n_scored else None,
        "n_nearer_other_class": int((nearest_class != "").sum()),
        "per_class": per_class,
        "distance_threshold": threshold_distance,
        "k": int(k), "class_k": int(class_k), "z_threshold": float(z_threshold), "class_ratio": float(class_ratio),
        "min_class_size": int(min_class_size),
        "index": plan_index(len(rows), method).describe() if len(rows) else None,
        "top_outliers": top(f"{PREFIX}z", is_outlier),
        "top_class_outliers": top(f"{PREFIX}class_score", is_class_outlier),
    }
    return OutliersResult(frame, metrics)


# ------------------------------------------------------------------------------------------ the check


@register
class OutliersCheck(Check):
    """Images far from everything (out of scope, another source) and images far from their own class (likely the
    wrong class, or an odd member of it)."""

    name: ClassVar[str] = "outliers"
    requires: ClassVar[tuple[Requirement, ...]] = ("embeddings",)
    description: ClassVar[str] = ("images far from all others and far from their own class, from k-nearest-neighbour "
                                  "distances in embedding space")
    thresholds: ClassVar[tuple[Threshold, ...]] = (
        Threshold("max_outlier_rate", "checks.outliers.outlier_rate", "<=", "rate", "share of outlier images",
                  "at most this share of images may lie far from all others"),
        Threshold("max_class_outlier_rate", "checks.outliers.class_outlier_rate", "<=", "rate",
                  "share of images far from their class", "at most this share may lie far from their own class"),
    )
    report_sections: ClassVar[tuple[ReportSection, ...]] = (
        ReportSection("outliers", "Outliers", "_outliers.html.j2", lambda si: outliers_section(si), 66),
    )
    fiftyone: ClassVar[FiftyOneSpec] = FiftyOneSpec(
        fields=(FiftyOneField("label_audit_outlier_score", "float", "how far from all other images (0..1)",
                              lambda run: _numbers(run, f"{PREFIX}score")),
                FiftyOneField("label_audit_class_outlier_score", "float", "how far from its own class (0..1)",
                              lambda run: _numbers(run, f"{PREFIX}class_score"))),
        tags=(FiftyOneTag("outlier", lambda run: _mask(run, f"{PREFIX}is_outlier")),
              FiftyOneTag("class_outlier", lambda run: _mask(run, f"{PREFIX}is_class_outlier"))),
        views=(FiftyOneView("la-outliers", "Images far from all others, farthest first",
                            lambda dataset, F: dataset.match_tags("outlier").sort_by("label_audit_outlier_score",
                                                                                    reverse=True),
                            applies=lambda run: "outliers_score" in run.samples.columns),),
    )

    @classmethod
    def summary_line(cls, metrics: dict[str, Any]) -> str:
        if "skipped" in metrics:
            return f"skipped: {metrics['skipped']}"
        return f"{metrics['n_outliers']:,} outliers, {metrics['n_class_outliers']:,} far from their class"

    @classmethod
    def tiles(cls, state: dict[str, Any]) -> list[Tile]:
        if state["status"] != "ok":
            return []
        m = state["metrics"]
        return [Tile("Outliers", f"{m['n_outliers']:,}", f"{m['n_class_outliers']:,} far from their own class",
                     "warn" if m["n_outliers"] else "good")]

    def run(self, context: CheckContext) -> CheckResult:
        params = merge_params(self.name, context.params, {"k": DEFAULT_K, "z_threshold": DEFAULT_Z,
                                                          "class_ratio": DEFAULT_CLASS_RATIO})
        result = find_outliers(context.samples, context.embeddings, k=params["k"], class_k=params["k"],
                               z_threshold=params["z_threshold"], class_ratio=params["class_ratio"])
        return CheckResult(self.name, result.samples.reindex(context.samples.index), json_safe(result.metrics))


def _mask(run: Any, column: str) -> np.ndarray:
    if column not in run.samples.columns:
        return np.zeros(len(run.samples), dtype=bool)
    return run.samples[column].fillna(False).astype(bool).to_numpy()


def _numbers(run: Any, column: str) -> list[float | None]:
    if column not in run.samples.columns:
        return [None] * len(run.samples)
    values = pd.to_numeric(run.samples[column], errors="coerce").to_numpy(float)
    return [float(v) if np.isfinite(v) else None for v in values]


def outliers_section(si: Any) -> dict[str, Any] | None:
    """The farthest images and those farthest from their class, with thumbnails."""
    if si.state["status"] == "absent":
        return None
    metrics = si.state["metrics"]
    samples = si.run.samples

    def cards(ids: list[str], score: str) -> list[dict[str, Any]]:
        ids = [i for i in ids if i in samples.index]
        thumbs = si.thumbnails(ids)
        nearest = f"{PREFIX}nearest_class"
        return [{"id": i, "src": thumbs.get(i), "label": samples.at[i, "label"], "score": samples.at[i, score],
                 "nearest": samples.at[i, nearest] if nearest in samples else None} for i in ids]

    return {"state": si.state, "metrics": metrics,
            "outliers": cards(list(metrics.get("top_outliers") or []), f"{PREFIX}score"),
            "class_outliers": cards(list(metrics.get("top_class_outliers") or []), f"{PREFIX}class_score")}
