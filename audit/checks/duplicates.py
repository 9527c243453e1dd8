"""Duplicates and split leakage: exact copies (same bytes), near duplicates (same picture after resizing,
re-compression, a slight crop or a mirror flip), grouped, with label conflicts first and which copy to keep.

Why it matters for labels: a duplicate counts twice in training, and a near duplicate across train and test
inflates the test score; duplicates that carry *different* labels are label errors by construction.

How
---
* **Exact duplicates** come from the content hashes the embedding stage already computes (one hash per file's
  bytes), so they cost nothing and are certain.
* **Near duplicates** are pairs of distinct contents whose embeddings have cosine similarity at or above
  ``threshold``, found with :func:`audit.neighbours.knn` (``k`` neighbours each; exact search up to 20k images,
  HNSW above) on one row per distinct content, so that a file copied 50 times does not fill every neighbour slot.
  Optional ``mirrored`` embeddings (of the horizontally flipped images) are searched too, which makes flipped
  copies match for embedders that are not flip-invariant; for the ``pixels`` embedder they are derived exactly
  from the embeddings by :func:`mirror_pixel_embeddings`.
* **Groups** are the connected components of the graph of exact and near pairs (``scipy.sparse.csgraph``).
  A group whose members carry more than one label is a **conflict**.
* **Which copy to keep** (``keep``): the largest image (width x height, when sizes are given), then the one in
  the earliest split of ``train, val/validation/dev, test`` (then other split names in order), then the smallest
  sample id. Keeping the training copy makes the usual fix of leakage (drop the evaluation copy) the default.
* **Leakage**: a group with members in more than one split. Per split pair, the count is the number of sample
  pairs of the same group that sit in those two splits (a group with 2 train and 1 test member counts 2
  train|test pairs).

Calibration of the default threshold
------------------------------------
Measured with ``python -m benchmarks.hygiene`` (its calibration part, table in
``benchmarks/results/hygiene.md``) on scikit-image photo tiles and sklearn digit scans built with their own seed
(not the benchmark's sets), with copies made the way the benchmark makes them. With the ``pixels`` embedder
(16 x 16 grey, mean-centred) and mirrored queries, the lowest cosine of a copy to its original was 0.998
(resized x0.6-0.85), 0.993 (JPEG q25-50) and 0.999 (mirrored) on the photos, 0.991 / 1.000 / 1.000 on the
digits; the most similar *distinct* image reached 0.914 on the photos (99th percentile 0.884) but 0.987 on the
digits (two people's "1" at 8 x 8 pixels are almost the same picture). :data:`DEFAULT_THRESHOLD` = 0.99 sits
between the two; on the full 1,797 digits a few distinct pairs still pass it (precision 0.99 in the
benchmark). Slightly cropped copies (3-8% off each side) fall to cosine 0.60-0.99 (median 0.88 photos, 0.94
digits) in a 16 x 16 thumbnail, below any threshold that excludes distinct images: with the pixels embedder,
crops are mostly missed. A random-weights open_clip model maps *everything* above 0.99 (distinct images: median
0.996, maximum 1.000), so no threshold separates copies from distinct images and it cannot be calibrated; with
trained CLIP weights (not downloadable here) copies and distinct images sit at other levels than with pixels,
and the threshold has to be measured again on that embedder (``threshold`` is a parameter;
:data:`CLIP_THRESHOLD` is a starting point from the literature, not measured here).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
import pandas as pd

from audit.checks.base import Check, CheckContext, CheckResult, Requirement, json_safe, merge_params, register
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

DEFAULT_THRESHOLD = 0.99  # pixels embedder, calibrated (module docstring)
CLIP_THRESHOLD = 0.95  # unmeasured starting point for trained CLIP weights (module docstring)
DEFAULT_K = 10
SPLIT_ORDER = ("train", "training", "val", "valid", "validation", "dev", "test", "testing")
PREFIX = "duplicates_"


@dataclass
class DuplicatesResult:
    """Per-sample table (``duplicates_*`` columns, indexed like the samples), the links that were found, one
    row per group, and JSON-safe metrics."""

    samples: pd.DataFrame
    links: pd.DataFrame
    groups: pd.DataFrame
    metrics: dict[str, Any] = field(default_factory=dict)


# -------------------------------------------------------------------------------------------- helpers


def mirror_pixel_embeddings(embeddings: np.ndarray, size: int | None = None) -> np.ndarray:
    """The ``pixels`` embeddings of the horizontally flipped images, from the embeddings themselves.

    A pixel embedding is a ``size x size`` grey thumbnail, mean-centred and L2-normalised, so the thumbnail of
    the mirrored image is the thumbnail with its columns reversed (centring and norm do not change).
    """
    array = np.asarray(embeddings, dtype=np.float32)
    size = size or round(float(np.sqrt(array.shape[1])))
    if size * size != array.shape[1]:
        raise ValueError(f"pixel embeddings of dimension {array.shape[1]} are not a square thumbnail")
    return np.ascontiguousarray(array.reshape(len(array), size, size)[:, :, ::-1].reshape(len(array), -1))


def split_rank(split: str) -> tuple[int, str]:
    """Sort key of a split name: train, then validation names, then test, then anything else by name."""
    name = str(split).lower()
    return (SPLIT_ORDER.index(name), name) if name in SPLIT_ORDER else (len(SPLIT_ORDER), name)


def split_pair_key(a: str, b: str) -> str:
    """``"train|test"``: the two split names in :func:`split_rank` order, joined by ``|``."""
    first, second = sorted((str(a), str(b)), key=split_rank)
    return f"{first}|{second}"


def exact_duplicate_groups(hashes: Sequence[str | None]) -> np.ndarray:
    """Per row, the position of the first row with the same content hash (itself when it is the first);
    -1 where the hash is missing (the file could not be read)."""
    first: dict[str, int] = {}
    out = np.full(len(hashes), -1, dtype=np.int64)
    for row, key in enumerate(hashes):
        if key is None or (isinstance(key, float) and np.isnan(key)) or key == "":
            continue
        out[row] = first.setdefault(str(key), row)
    return out


def near_duplicate_pairs(embeddings: np.ndarray, threshold: float = DEFAULT_THRESHOLD, k: int = DEFAULT_K,
                         mirrored: np.ndarray | None = None, threads: int | None = None, method: str = "auto",
                         ) -> tuple[pd.DataFrame, np.ndarray, np.ndarray]:
    """Pairs of rows with cosine >= ``threshold`` among each row's ``k`` nearest neighbours.

    Returns
    -------
    (pairs, nearest, nearest_similarity)
        ``pairs``: DataFrame ``a, b, similarity, mirrored`` (row positions, ``a < b``, one row per pair, the
        higher similarity when both the plain and the mirrored search found it); ``nearest`` /
        ``nearest_similarity``: every row's most similar other row (-1 / NaN if none), mirrors included.
    """
    from audit.neighbours import knn_many

    n = len(embeddings)
    if not 0 < threshold <= 1:
        raise ValueError(f"near-duplicate threshold must be in (0, 1], got {threshold}")
    empty = pd.DataFrame({"a": np.empty(0, np.int64), "b": np.empty(0, np.int64),
                          "similarity": np.empty(0, np.float32), "mirrored": np.empty(0, bool)})
    if n < 2:
        return empty, np.full(n, -1, np.int64), np.full(n, np.nan, np.float32)
    if mirrored is not None and np.shape(mirrored) != np.shape(embeddings):
        raise ValueError(f"mirrored embeddings have shape {np.shape(mirrored)}, embeddings {np.shape(embeddings)}")
    # one index, searched with the images and (an image never matching its own mirror) with their mirrors
    answers = knn_many(embeddings, k, [None] if mirrored is None else [None, mirrored], exclude_self=True,
                       threads=threads, method=method)
    found = [(*answer, is_mirror) for answer, is_mirror in zip(answers, (False, True), strict=False)]
    nearest = np.full(n, -1, np.int64)
    nearest_sim = np.full(n, -np.inf, np.float32)
    parts = []
    for similarity, index, is_mirror in found:
        best = np.nan_to_num(similarity[:, 0], nan=-np.inf)
        better = best > nearest_sim
        nearest[better], nearest_sim[better] = index[better, 0], best[better]
        rows, cols = np.nonzero(np.nan_to_num(similarity, nan=-np.inf) >= threshold)
        other = index[rows, cols]
        parts.append(pd.DataFrame({"a": np.minimum(rows, other), "b": np.maximum(rows, other),
                                   "similarity": similarity[rows, cols], "mirrored": is_mirror}))
    nearest_sim[nearest < 0] = np.nan
    pairs = pd.concat(parts, ignore_index=True)
    if pairs.empty:
        return empty, nearest, nearest_sim
    pairs = (pairs.sort_values(["similarity", "mirrored"], ascending=[False, True])
             .drop_duplicates(["a", "b"]).sort_values(["a", "b"]).reset_index(drop=True))
    return pairs, nearest, nearest_sim


def connected_groups(n: int, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Group number of each of ``n`` nodes for edges ``a[i] - b[i]``; -1 for nodes without an edge.

    Groups are numbered 0, 1, ... in the order of their first (lowest) node, so the numbering is stable.
    """
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    out = np.full(n, -1, dtype=np.int64)
    if len(a) == 0:
        return out
    graph = coo_matrix((np.ones(len(a), dtype=np.int8), (a, b)), shape=(n, n)).tocsr()
    _, component = connected_components(graph, directed=False)
    linked = np.zeros(n, dtype=bool)
    linked[a] = linked[b] = True
    components = component[linked]
    _, first = np.unique(components, return_index=True)
    order = np.argsort(first)  # number components by their first node
    renumber = np.empty(len(order), dtype=np.int64)
    renumber[order] = np.arange(len(order))
    _, inverse = np.unique(components, return_inverse=True)
    out[np.flatnonzero(linked)] = renumber[inverse]
    return out


# ------------------------------------------------------------------------------------------------ main


def find_duplicates(samples: pd.DataFrame, embeddings: np.ndarray | None, hashes: Sequence[str | None] | None = None,
                    sizes: pd.DataFrame | None = None, threshold: float = DEFAULT_THRESHOLD, k: int = DEFAULT_K,
                    mirrored: np.ndarray | None = None, threads: int | None = None, method: str = "auto",
                    max_listed_groups: int = 20) -> DuplicatesResult:
    """Exact and near duplicates, their groups, conflicts, the copy to keep, and leakage across splits.

    Parameters
    ----------
    samples
        Sample table indexed by sample id, with ``label`` and ``split`` (``split`` may be missing: one split).
    embeddings
        ``(n, d)`` L2-normalised, rows in ``samples`` order; NaN rows (unreadable images) are left out. None:
        exact duplicates only.
    hashes
        Content hash per sample (``EmbeddingOutcome.hashes``); None where the file could not be read. None:
        near duplicates only (identical files are then found as near duplicates with similarity 1).
    sizes
        Optional ``width`` and ``height`` per sample (the quality statistics), for the keep rule.
    threshold, k
        Cosine threshold for a near duplicate (see the module docstring) and neighbours searched per image.
    mirrored
        Embeddings of the mirrored images, same shape as ``embeddings`` (see :func:`mirror_pixel_embeddings`).

    Returns
    -------
    DuplicatesResult
        ``samples`` columns: ``duplicates_group`` (int, -1 = none), ``duplicates_group_size``,
        ``duplicates_is_duplicate``, ``duplicates_is_exact`` (another file has the same bytes),
        ``duplicates_is_conflict`` (its group has several labels), ``duplicates_keep`` (False = a redundant
        copy), ``duplicates_nearest_id`` and ``duplicates_nearest_similarity`` (most similar other image,
        duplicate or not; "" / NaN when none), ``duplicates_leakage`` (its group spans splits) and
        ``duplicates_leakage_with`` (the group's other splits, ";"-joined). ``links``: one row per exact copy
        (to the first file with the same bytes) and per near-duplicate pair (``sample_a, sample_b, kind,
        similarity, mirrored, cross_split``). ``groups``: one row per group. ``metrics``: see
        :func:`duplicate_metrics`.
    """
    n = len(samples)
    ids = samples.index.astype(str).to_numpy()
    labels = samples["label"] if "label" in samples else pd.Series(None, index=samples.index)
    splits = (samples["split"] if "split" in samples else pd.Series("all", index=samples.index)).astype(str)
    if hashes is not None and len(hashes) != n:
        raise ValueError(f"{len(hashes)} content hashes for {n} samples")
    first = exact_duplicate_groups(hashes) if hashes is not None else np.full(n, -1, np.int64)

    # one row per distinct content: the first file of each hash (rows without a hash stand for themselves)
    usable = np.zeros(n, dtype=bool)
    if embeddings is not None:
        embeddings = np.asarray(embeddings, dtype=np.float32)
        if embeddings.shape[0] != n:
            raise ValueError(f"{embeddings.shape[0]} embedding rows for {n} samples")
        usable = np.isfinite(embeddings).all(axis=1)
    representative = np.where(first >= 0, first, np.arange(n))
    reps = np.flatnonzero(usable & (representative == np.arange(n)))
    # a hash group whose first file has no embedding: its first member with one stands for it
    for row in np.flatnonzero(usable & ~usable[representative]):
        if not usable[representative[row]]:
            same = np.flatnonzero((representative == representative[row]) & usable)
            representative[same] = same[0]
    reps = np.flatnonzero(usable & (representative == np.arange(n)))

    edges_a: list[np.ndarray] = []
    edges_b: list[np.ndarray] = []
    link_frames = []
    nearest_id = np.full(n, -1, np.int64)
    nearest_sim = np.full(n, np.nan, np.float32)
    plan_description: dict[str, Any] | None = None
    if len(reps) >= 2:
        from audit.neighbours import plan_index

        plan_description = plan_index(len(reps), method).describe()
        pairs, rep_nearest, rep_nearest_sim = near_duplicate_pairs(
            embeddings[reps], threshold, k, None if mirrored is None else np.asarray(mirrored, np.float32)[reps],
            threads, method)
        has = rep_nearest >= 0
        nearest_id[reps[has]] = reps[rep_nearest[has]]
        nearest_sim[reps[has]] = rep_nearest_sim[has]
        a, b = reps[pairs["a"].to_numpy()], reps[pairs["b"].to_numpy()]
        edges_a.append(a)
        edges_b.append(b)
        link_frames.append(pd.DataFrame({"a": a, "b": b, "kind": "near",
                                         "similarity": pairs["similarity"].to_numpy(np.float64),
                                         "mirrored": pairs["mirrored"].to_numpy(bool)}))
    copies = np.flatnonzero((first >= 0) & (first != np.arange(n)))
    if len(copies):
        source = first[copies]
        edges_a.append(source)
        edges_b.append(copies)
        link_frames.append(pd.DataFrame({"a": source, "b": copies, "kind": "exact", "similarity": 1.0,
                                         "mirrored": False}))
        # an exact copy's nearest image is its twin; the first file's too
        nearest_id[copies], nearest_sim[copies] = source, 1.0
        nearest_id[source], nearest_sim[source] = copies, 1.0
    a_all = np.concatenate(edges_a) if edges_a else np.empty(0, np.int64)
    b_all = np.concatenate(edges_b) if edges_b else np.empty(0, np.int64)
    group = connected_groups(n, a_all, b_all)
    is_exact = np.zeros(n, dtype=bool)
    if len(copies):
        is_exact[copies] = True
        is_exact[first[copies]] = True

    frame = pd.DataFrame(index=samples.index)
    frame[f"{PREFIX}group"] = group
    group_size = np.ones(n, dtype=np.int64)
    in_group = group >= 0
    if in_group.any():
        group_size[in_group] = np.bincount(group[in_group])[group[in_group]]
    frame[f"{PREFIX}group_size"] = group_size
    frame[f"{PREFIX}is_duplicate"] = group >= 0
    frame[f"{PREFIX}is_exact"] = is_exact
    area = _areas(samples.index, sizes)
    keep, conflict, leak_with, group_rows = _per_group(group, ids, labels, splits, area)
    frame[f"{PREFIX}is_conflict"] = conflict
    frame[f"{PREFIX}keep"] = keep
    frame[f"{PREFIX}nearest_id"] = np.where(nearest_id >= 0, ids[np.maximum(nearest_id, 0)], "")
    frame[f"{PREFIX}nearest_similarity"] = nearest_sim.astype(np.float64)
    frame[f"{PREFIX}leakage"] = np.array([bool(x) for x in leak_with], dtype=bool)
    frame[f"{PREFIX}leakage_with"] = leak_with

    links = pd.concat(link_frames, ignore_index=True) if link_frames else pd.DataFrame(
        {"a": np.empty(0, np.int64), "b": np.empty(0, np.int64), "kind": [], "similarity": [], "mirrored": []})
    split_values = splits.to_numpy()
    links = pd.DataFrame({
        "sample_a": ids[links["a"].to_numpy(np.int64)], "sample_b": ids[links["b"].to_numpy(np.int64)],
        "kind": links["kind"].astype(str).to_numpy(), "similarity": links["similarity"].to_numpy(np.float64),
        "mirrored": links["mirrored"].to_numpy(bool),
        "cross_split": split_values[links["a"].to_numpy(np.int64)] != split_values[links["b"].to_numpy(np.int64)],
    })
    groups = pd.DataFrame(group_rows)
    metrics = duplicate_metrics(frame, groups, links, threshold=threshold, k=k, mirrored=mirrored is not None,
                                index=plan_description, max_listed_groups=max_listed_groups,
                                n_searched=len(reps), n_samples=n)
    return DuplicatesResult(frame, links, groups, metrics)


def _areas(index: pd.Index, sizes: pd.DataFrame | None) -> np.ndarray:
    if sizes is None or not {"width", "height"} <= set(sizes.columns):
        return np.zeros(len(index))
    sizes = sizes.reindex(index)
    return (sizes["width"].astype(float) * sizes["height"].astype(float)).fillna(0.0).to_numpy()


def _per_group(group: np.ndarray, ids: np.ndarray, labels: pd.Series, splits: pd.Series, area: np.ndarray,
               ) -> tuple[np.ndarray, np.ndarray, list[str], list[dict[str, Any]]]:
    """Keep flag, conflict flag and other splits per sample, and one summary row per group."""
    n = len(group)
    keep = np.ones(n, dtype=bool)
    conflict = np.zeros(n, dtype=bool)
    leak_with = [""] * n
    rows: list[dict[str, Any]] = []
    members = np.flatnonzero(group >= 0)
    if not len(members):
        return keep, conflict, leak_with, rows
    label_values = labels.to_numpy(dtype=object)
    split_values = splits.to_numpy(dtype=object)
    order = members[np.argsort(group[members], kind="stable")]
    bounds = np.flatnonzero(np.diff(group[order])) + 1
    for rows_of_group in np.split(order, bounds):
        # keep: largest area, then earliest split, then smallest id
        best = min(rows_of_group, key=lambda r: (-area[r], split_rank(split_values[r]), ids[r]))
        keep[rows_of_group] = False
        keep[best] = True
        group_labels = sorted({str(x) for x in label_values[rows_of_group] if x is not None and x == x})
        is_conflict = len(group_labels) > 1
        conflict[rows_of_group] = is_conflict
        group_splits = sorted({str(s) for s in split_values[rows_of_group]}, key=split_rank)
        if len(group_splits) > 1:
            for r in rows_of_group:
                leak_with[r] = ";".join(s for s in group_splits if s != str(split_values[r]))
        counts = Counter(str(s) for s in split_values[rows_of_group])
        cross = {}
        for i, s in enumerate(group_splits):
            for t in group_splits[i + 1:]:
                cross[split_pair_key(s, t)] = int(counts[s] * counts[t])
        rows.append({
            "group": int(group[best]), "size": len(rows_of_group), "conflict": is_conflict,
            "labels": dict(Counter(str(x) for x in label_values[rows_of_group]).most_common()),
            "splits": dict(sorted(counts.items(), key=lambda kv: split_rank(kv[0]))),
            "members": [str(ids[r]) for r in sorted(rows_of_group, key=lambda r: ids[r])],
            "keep": str(ids[best]), "cross_split_pairs": cross,
        })
    return keep, conflict, leak_with, rows


def duplicate_metrics(frame: pd.DataFrame, groups: pd.DataFrame, links: pd.DataFrame, *, threshold: float, k: int,
                      mirrored: bool, index: dict[str, Any] | None, max_listed_groups: int, n_searched: int,
                      n_samples: int) -> dict[str, Any]:
    """JSON-safe run-level figures.

    ``n_groups``, ``n_conflicts`` (groups with several labels), ``n_duplicate_samples`` (samples in a group),
    ``n_redundant`` (samples to drop if one copy per group is kept), ``n_exact`` (files whose bytes repeat an
    earlier file), ``n_near`` (near-duplicate pairs of distinct contents), ``leakage`` (``{"train|test":
    pairs}``), ``n_leakage_pairs`` (their sum: the gate's ``max_split_leakage`` reads it), ``n_leaked_samples``,
    ``top_groups`` (conflicts first, then larger groups), and the search settings.
    """
    leakage: dict[str, int] = {}
    if not groups.empty:
        for cross in groups["cross_split_pairs"]:
            for key, value in cross.items():
                leakage[key] = leakage.get(key, 0) + int(value)
    leakage = dict(sorted(leakage.items(), key=lambda kv: tuple(split_rank(s) for s in kv[0].split("|"))))
    listed: list[dict[str, Any]] = []
    if not groups.empty:
        ordered = groups.sort_values(["conflict", "size", "group"], ascending=[False, False, True])
        for row in ordered.head(max_listed_groups).itertuples(index=False):
            listed.append({"group": int(row.group), "size": int(row.size), "conflict": bool(row.conflict),
                           "labels": {str(k): int(v) for k, v in row.labels.items()},
                           "splits": {str(k): int(v) for k, v in row.splits.items()},
                           "members": list(row.members[:10]), "keep": row.keep})
    return {
        "n_samples": int(n_samples),
        "n_searched": int(n_searched),
        "n_groups": len(groups),
        "n_conflicts": int(groups["conflict"].sum()) if not groups.empty else 0,
        "n_duplicate_samples": int(frame[f"{PREFIX}is_duplicate"].sum()),
        "n_redundant": int((frame[f"{PREFIX}is_duplicate"] & ~frame[f"{PREFIX}keep"]).sum()),
        "n_exact": int((links["kind"] == "exact").sum()),
        "n_near": int((links["kind"] == "near").sum()),
        "leakage": leakage,
        "n_leakage_pairs": int(sum(leakage.values())),
        "n_leaked_samples": int(frame[f"{PREFIX}leakage"].sum()),
        "threshold": float(threshold),
        "k": int(k),
        "mirrored_queries": bool(mirrored),
        "index": index,
        "top_groups": listed,
    }


# ------------------------------------------------------------------------------------------ the check


@register
class DuplicatesCheck(Check):
    """Exact and near-duplicate images, grouped (conflicting labels first, the copy to keep), and leakage: the
    same image in two splits."""

    name: ClassVar[str] = "duplicates"
    requires: ClassVar[tuple[Requirement, ...]] = ()
    description: ClassVar[str] = (
        "exact duplicates (content hash) and near duplicates (embedding cosine, approximate neighbour search), "
        "grouped, with label conflicts, the copy to keep, and near-copies across train / val / test")
    thresholds: ClassVar[tuple[Threshold, ...]] = (
        Threshold("max_split_leakage", "checks.duplicates.n_leakage_pairs", "<=", "count",
                  "duplicate pairs across splits", "at most this many (near-)duplicate pairs may cross splits "
                  "(train / val / test leakage)"),
        Threshold("max_duplicate_conflicts", "checks.duplicates.n_conflicts", "<=", "count",
                  "duplicate groups with different labels", "at most this many groups of copies may carry "
                  "different labels"),
        Threshold("max_redundant_copies", "checks.duplicates.n_redundant", "<=", "count", "redundant copies",
                  "at most this many images may be extra copies of another"),
    )
    ratchets: ClassVar[tuple[Ratchet, ...]] = (
        Ratchet("n_leakage_pairs", "checks.duplicates.n_leakage_pairs", higher_is_better=False),
    )
    trends: ClassVar[tuple[Trend, ...]] = (
        Trend("Duplicate pairs across splits", "checks.duplicates.n_leakage_pairs"),
        Trend("Redundant copies", "checks.duplicates.n_redundant"),
    )
    report_sections: ClassVar[tuple[ReportSection, ...]] = (
        ReportSection("duplicates", "Duplicates", "_duplicates.html.j2", lambda si: duplicates_section(si), 65),
    )
    fiftyone: ClassVar[FiftyOneSpec] = FiftyOneSpec(
        fields=(
            FiftyOneField("label_audit_duplicate_group", "float", "duplicate group (-1: none)",
                          lambda run: _numbers(run, f"{PREFIX}group")),
            FiftyOneField("label_audit_duplicate_keep", "bool", "the copy of its group to keep",
                          lambda run: _flags(run, f"{PREFIX}keep")),
            FiftyOneField("label_audit_leakage", "bool", "a (near-)copy of it is in another split",
                          lambda run: _flags(run, f"{PREFIX}leakage")),
        ),
        tags=(FiftyOneTag("duplicate", lambda run: _mask(run, f"{PREFIX}is_duplicate")),
              FiftyOneTag("duplicate_conflict", lambda run: _mask(run, f"{PREFIX}is_conflict")),
              FiftyOneTag("split_leakage", lambda run: _mask(run, f"{PREFIX}leakage"))),
        views=(FiftyOneView("la-duplicates", "Duplicate groups, one group after another",
                            lambda dataset, F: dataset.match_tags("duplicate").sort_by("label_audit_duplicate_group"),
                            applies=lambda run: f"{PREFIX}group" in run.samples.columns),
               FiftyOneView("la-split-leakage", "Images with a (near-)copy in another split",
                            lambda dataset, F: dataset.match_tags("split_leakage")
                            .sort_by("label_audit_duplicate_group"),
                            applies=lambda run: f"{PREFIX}leakage" in run.samples.columns)),
    )

    @classmethod
    def summary_line(cls, metrics: dict[str, Any]) -> str:
        if "skipped" in metrics:
            return f"skipped: {metrics['skipped']}"
        return (f"{metrics['n_groups']:,} duplicate groups ({metrics['n_conflicts']:,} with conflicting labels), "
                f"{metrics['n_redundant']:,} redundant copies, {metrics['n_leakage_pairs']:,} pairs across splits")

    @classmethod
    def tiles(cls, state: dict[str, Any]) -> list[Tile]:
        if state["status"] != "ok":
            return []
        m = state["metrics"]
        return [Tile("Duplicates", f"{m['n_groups']:,} groups", f"{m['n_conflicts']:,} with conflicting labels · "
                     f"{m['n_leakage_pairs']:,} pairs across splits",
                     "bad" if m["n_leakage_pairs"] or m["n_conflicts"] else ("warn" if m["n_groups"] else "good"))]

    def run(self, context: CheckContext) -> CheckResult:
        params = merge_params(self.name, context.params, {"threshold": None, "k": DEFAULT_K})
        samples = context.samples
        hashes = [h or None for h in samples["content_hash"].astype(str)] if "content_hash" in samples else None
        sizes = None
        if {"image_width", "image_height"} <= set(samples.columns):
            sizes = samples[["image_width", "image_height"]].rename(columns=lambda c: c[len("image_"):])
        kind = str((context.extra.get("embedder") or {}).get("kind", ""))
        threshold = params["threshold"] or (DEFAULT_THRESHOLD if kind in ("pixels", "") else CLIP_THRESHOLD)
        embeddings = context.embeddings
        mirrored = mirror_pixel_embeddings(embeddings) if embeddings is not None and kind == "pixels" else None
        result = find_duplicates(samples, embeddings, hashes=hashes, sizes=sizes, threshold=threshold,
                                 k=params["k"], mirrored=mirrored)
        metrics = dict(result.metrics)
        metrics["threshold_source"] = ("calibrated for the pixels embedder" if threshold == DEFAULT_THRESHOLD
                                       else "set in the config" if params["threshold"] else
                                       "uncalibrated starting point for CLIP (see audit/checks/duplicates.py)")
        metrics["leakage_pairs"] = json_safe(result.links[result.links["cross_split"]].head(200)
                                             .to_dict(orient="records")) if len(result.links) else []
        return CheckResult(self.name, result.samples.reindex(samples.index), json_safe(metrics))


def _mask(run: Any, column: str) -> np.ndarray:
    if column not in run.samples.columns:
        return np.zeros(len(run.samples), dtype=bool)
    return run.samples[column].fillna(False).astype(bool).to_numpy()


def _flags(run: Any, column: str) -> list[bool | None]:
    return _mask(run, column).tolist() if column in run.samples.columns else [None] * len(run.samples)


def _numbers(run: Any, column: str) -> list[float | None]:
    if column not in run.samples.columns:
        return [None] * len(run.samples)
    values = pd.to_numeric(run.samples[column], errors="coerce").to_numpy(float)
    return [float(v) if np.isfinite(v) else None for v in values]


def duplicates_section(si: Any) -> dict[str, Any] | None:
    """Duplicate groups (conflicting labels first) and leakage pairs, with thumbnails."""
    if si.state["status"] == "absent":
        return None
    metrics = si.state["metrics"]
    groups = list(metrics.get("top_groups") or [])
    pairs = list(metrics.get("leakage_pairs") or [])[:si.limits.table_rows]
    samples = si.run.samples
    wanted = [m for g in groups for m in g["members"]] + [p[k] for p in pairs[:60] for k in ("sample_a", "sample_b")]
    thumbs = si.thumbnails([w for w in wanted if w in samples.index])

    def card(sample_id: str) -> dict[str, Any]:
        row = samples.loc[sample_id] if sample_id in samples.index else None
        return {"id": sample_id, "src": thumbs.get(sample_id),
                "label": None if row is None else row.get("label"), "split": None if row is None else row.get("split")}

    for group in groups:
        group["cards"] = [{**card(m), "keep": m == group["keep"]} for m in group["members"]]
    for pair in pairs[:60]:
        pair["a"], pair["b"] = card(pair["sample_a"]), card(pair["sample_b"])
    return {"state": si.state, "metrics": metrics, "groups": groups, "pairs": pairs[:60], "n_pairs": len(pairs)}
