"""Agreement between annotators who drew boxes (and optionally instance masks) on the same images.

Agreement on objects needs a correspondence first: which of Alice's boxes is "the same object" as which of
Bob's. Everything below is built on one matching per image and annotator pair, then one clustering.

Definitions
-----------
- **Coverage.** An annotator *covers* an image when they reviewed it. An annotator who reviewed an image and drew
  nothing says "no object here", which is not the same as never having seen it. Pass ``coverage`` (a table of
  ``sample_id, annotator``) when annotators saw different images; by default every annotator covers every image
  that appears in the table.
- **Pairwise matching.** For every image and every pair of annotators covering it, a one-to-one Hungarian matching
  on IoU (:func:`audit.geometry.match`, box IoU or mask IoU, pairs below ``iou_threshold`` never match).
  Matching ignores the class, so that a class disagreement is seen as such rather than as two unmatched boxes.
- **Per annotator against another annotator** (``per_annotator.<a>.vs_annotators.<b>``), on the images both
  cover: ``precision = matched / n_a``, ``recall = matched / n_b`` (b's objects as the reference),
  ``f1 = 2 matched / (n_a + n_b)``, ``mean_iou`` of the matched pairs, ``class_agreement`` the share of matched
  pairs with the same class. ``vs_others`` sums the counts over every other annotator (micro-average).
- **Consensus objects.** Pairwise matches are merged greedily, highest IoU first, into clusters holding at most one
  object per annotator (a merge that would put two objects of one annotator in a cluster is skipped; this is
  agglomerative clustering with cannot-link constraints, and keeps a chain A1-B1-C1-A2 from fusing A1 and A2).
  A cluster is a consensus object when a majority of the annotators covering the image drew it
  (``support * 2 > n_covering``). Its box is the mean of the members' corners (score-weighted when every member
  has a positive ``score``), its mask (when every member has one) the pixels in more than half the member masks,
  its class the members' majority class; a tie goes to the class of the member whose annotator agrees most often
  with the others on matched objects (then the smallest class name).
- **Per annotator against the consensus** (the headline ``per_annotator.<a>``): on the images the annotator
  covers, ``precision`` = share of their objects that belong to a consensus object, ``recall`` = share of the
  consensus objects they drew, ``f1``, ``mean_iou`` (IoU of their object with the fused consensus object) and
  ``class_agreement`` (share of their consensus objects whose class is the consensus class). The annotator takes
  part in the consensus, which flatters everyone alike; with three or more annotators the ranking is still
  informative.
- **Class agreement on matched objects.** ``krippendorff_alpha``: nominal alpha (``krippendorff`` package) on the
  annotators x clusters matrix of class codes (missing where an annotator has no object in the cluster; clusters
  with one member do not contribute). ``fleiss_kappa`` (statsmodels): on the clusters drawn by *every* annotator
  (``fleiss_items`` of them), the only ones where each item has the same number of ratings.
- **Disputed objects** (``object_agreement_reasons``, several may apply):
  ``missing_in_some``: fewer annotators than cover the image drew the object (its cluster's support is below
  the number covering); ``class_disagreement``: the members of its cluster do not all give the same class;
  ``location_disagreement``: some other annotator covering the image has an object overlapping it with
  ``min_overlap <= IoU < iou_threshold`` and none matched to it (a shifted or loose box on one side);
  ``duplicate``: its annotator drew another box of the same class on it (box IoU >= ``iou_threshold``).
- **Suspects** (``object_agreement_suspect``): disputes put on the annotator who is the odd one out, for their
  review queue: ``wrong_class`` (the object belongs to a consensus object whose class differs from its own; ties
  broken as for the consensus class); ``misplaced`` (not part of any consensus object, yet overlapping one with
  ``min_overlap <= IoU < iou_threshold``: a shifted or loose box); ``unsupported`` (not part of any consensus
  object, and no other annotator's object or consensus object overlaps it by ``min_overlap``: nobody else saw
  anything there); ``duplicate`` (not part of a consensus object, while the same annotator drew a box of the
  same class on the same spot, box IoU >= ``iou_threshold``).
- **Per-object columns** (prefix ``object_agreement_``): ``cluster`` (id of one member), ``support`` (annotators
  in the cluster), ``n_covering``, ``support_share``, ``same_class_share`` (share of the *other* members with
  the same class, NaN alone), ``class_support`` (share of the members' summed weight that gave this class, each
  member weighted by its annotator's class agreement with the others on matched objects: a ranking score for
  wrong classes), ``best_iou`` (best IoU with another annotator's object; NaN when nobody else covers the image),
  ``duplicate_iou``, ``consensus_id``, ``consensus_label``, ``consensus_iou`` (IoU with its consensus object),
  ``consensus_best_iou`` (best IoU with any consensus object of the image), ``class_agrees`` (nullable),
  ``in_consensus``, ``is_disputed``, ``reasons`` and ``suspect`` (``;``-joined).
- ``missing`` (per annotator): one row per consensus object that an annotator covering the image did not draw,
  with the best IoU between that annotator's objects and the consensus box (a low non-zero value means they drew
  it elsewhere, zero that they skipped it: ``skipped`` is ``best_iou < min_overlap``).

Everything here works without any model or predictions; see :mod:`audit.checks.object_detection` for the
findings that need a detector's predictions.
"""

from __future__ import annotations

import warnings
from collections import Counter
from dataclasses import dataclass, field
from itertools import combinations
from typing import Any, ClassVar, Literal

import numpy as np
import pandas as pd

from audit.checks.base import Check, CheckContext, CheckResult, Requirement, register
from audit.declarations import ReportSection, Threshold, Tile, Trend
from audit.geometry import (
    box_iou_matrix,
    build_object_table,
    majority_mask,
    mask_iou_matrix,
    match,
    same_class_overlap,
    xywh_to_xyxy,
    xyxy_to_xywh,
)

PREFIX = "object_agreement_"
MISSING_OVERLAP = 0.1  # a consensus box overlapped below this IoU by every label box is missing from the labels
REASONS = ("missing_in_some", "class_disagreement", "location_disagreement", "duplicate")
SUSPECTS = ("wrong_class", "misplaced", "unsupported", "duplicate")
CONSENSUS_ANNOTATOR = "consensus"
IouType = Literal["box", "mask", "auto"]


class ObjectAgreementInputError(ValueError):
    """The object table cannot be audited for agreement (missing columns, unknown annotators in coverage...)."""


@dataclass
class ObjectAgreement:
    """What :func:`object_agreement` returns.

    ``objects``: per input object (same index), ``object_agreement_*`` columns. ``consensus``: consensus objects
    in the canonical object-table shape (annotator ``"consensus"``) plus ``support`` (how many annotators drew it)
    and ``members`` (``;``-joined object ids). ``missing``: per annotator, the consensus objects they did not draw
    (indexed ``<consensus id>|<annotator>``). ``matches``: the pairwise matchings (:func:`pairwise_matches`).
    ``metrics``: JSON-safe dict (see the module docstring).
    """

    objects: pd.DataFrame
    consensus: pd.DataFrame
    missing: pd.DataFrame
    matches: pd.DataFrame
    metrics: dict[str, Any] = field(default_factory=dict)

    @property
    def disputed(self) -> pd.DataFrame:
        """The disputed objects only, with their reasons."""
        return self.objects[self.objects[f"{PREFIX}is_disputed"]]


# ------------------------------------------------------------------------------------------------ helpers


class _Arrays:
    """The object table as plain arrays (pandas indexing per object is far too slow for thousands of boxes)."""

    def __init__(self, objects: pd.DataFrame, kind: str) -> None:
        self.ids = np.asarray(objects.index.astype(str), dtype=object)
        self.sample = objects["sample_id"].astype(str).to_numpy(dtype=object)
        self.annotator = objects["annotator"].astype(str).to_numpy(dtype=object)
        self.label = objects["label"].astype(str).to_numpy(dtype=object)
        self.boxes = objects[["x", "y", "w", "h"]].to_numpy(float)
        self.width = objects["image_width"].to_numpy(int)
        self.height = objects["image_height"].to_numpy(int)
        self.masks = objects["mask"].to_numpy(dtype=object) if "mask" in objects else np.full(len(objects), None)
        self.scores = objects["score"].to_numpy(float) if "score" in objects else np.full(len(objects), np.nan)
        self.kind = kind
        self.by_image = {k: np.asarray(v) for k, v in pd.Series(self.sample).groupby(self.sample, sort=False).indices
                         .items()}

    def iou(self, rows_a: np.ndarray, rows_b: np.ndarray) -> np.ndarray:
        if self.kind == "mask" and len(rows_a) and len(rows_b):
            return mask_iou_matrix(self.masks[rows_a], self.masks[rows_b], self.height[rows_a[0]],
                                   self.width[rows_a[0]])
        return box_iou_matrix(self.boxes[rows_a], self.boxes[rows_b])


def _validate(objects: pd.DataFrame, iou_type: IouType) -> Literal["box", "mask"]:
    needed = ["sample_id", "label", "x", "y", "w", "h", "annotator", "image_width", "image_height"]
    missing = [c for c in needed if c not in objects.columns]
    if missing:
        raise ObjectAgreementInputError(f"the object table lacks columns {missing}")
    if not objects.index.is_unique:
        raise ObjectAgreementInputError("object ids (the index) must be unique")
    if iou_type not in ("box", "mask", "auto"):
        raise ObjectAgreementInputError(f"iou_type must be 'box', 'mask' or 'auto', not {iou_type!r}")
    has_masks = "mask" in objects.columns and len(objects) > 0 and bool(objects["mask"].notna().all())
    if iou_type == "auto":
        return "mask" if has_masks else "box"
    if iou_type == "mask" and not has_masks:
        no_mask = objects.index[objects["mask"].isna()][:3].tolist() if "mask" in objects.columns else "all"
        raise ObjectAgreementInputError(f"iou_type='mask' needs a mask on every object; none on {no_mask}")
    return iou_type


def _coverage(objects: pd.DataFrame, coverage: pd.DataFrame | None, annotators: list[str]) -> dict[str, list[str]]:
    images = list(dict.fromkeys(objects["sample_id"].astype(str)))
    if coverage is None:
        return {s: list(annotators) for s in images}
    if not {"sample_id", "annotator"} <= set(coverage.columns):
        raise ObjectAgreementInputError("coverage needs columns sample_id, annotator")
    table = coverage.astype({"sample_id": str, "annotator": str})
    out: dict[str, set[str]] = {s: set() for s in images}
    for sample_id, annotator in table[["sample_id", "annotator"]].itertuples(index=False):
        out.setdefault(sample_id, set()).add(annotator)
    drew = objects.groupby(objects["sample_id"].astype(str))["annotator"].unique()
    for sample_id, names in drew.items():
        strays = sorted(set(map(str, names)) - out.get(sample_id, set()))
        if strays:
            raise ObjectAgreementInputError(
                f"annotator(s) {strays} drew objects on {sample_id!r} but coverage does not list them there")
    return {s: sorted(v) for s, v in out.items()}


def _f1(matched: float, n_a: float, n_b: float) -> dict[str, float | None]:
    return {"precision": matched / n_a if n_a else None, "recall": matched / n_b if n_b else None,
            "f1": 2 * matched / (n_a + n_b) if n_a + n_b else None}


def _mean(values: Any) -> float | None:
    array = np.asarray(list(values), dtype=float)
    array = array[np.isfinite(array)]
    return float(array.mean()) if array.size else None


class _Clusters:
    """Union-find over object positions whose clusters never hold two objects of the same annotator."""

    def __init__(self, annotators: np.ndarray) -> None:
        self.parent = list(range(len(annotators)))
        self.members_of = {i: {a} for i, a in enumerate(annotators)}

    def find(self, i: int) -> int:
        while self.parent[i] != i:
            self.parent[i] = self.parent[self.parent[i]]
            i = self.parent[i]
        return i

    def union(self, a: int, b: int) -> bool:
        ra, rb = self.find(a), self.find(b)
        if ra == rb or self.members_of[ra] & self.members_of[rb]:
            return False
        self.parent[rb] = ra
        self.members_of[ra] |= self.members_of.pop(rb)
        return True


# ------------------------------------------------------------------------------------------------ matching


def pairwise_matches(objects: pd.DataFrame, iou_threshold: float = 0.5, iou_type: IouType = "box",
                     coverage: pd.DataFrame | None = None) -> pd.DataFrame:
    """Match every pair of annotators on every image both cover (one Hungarian matching per image and pair).

    Returns one row per matched pair and per unmatched object of each pair, with columns ``sample_id,
    annotator_a, annotator_b`` (``a < b``), ``object_a, object_b`` (None on the unmatched side), ``label_a,
    label_b``, ``iou`` (the matched pair's IoU, NaN when unmatched) and ``best_iou`` (the unmatched object's best
    IoU with the other annotator's objects, 0 when they drew none; equals ``iou`` for matched pairs).
    """
    kind = _validate(objects, iou_type)
    annotators = sorted(objects["annotator"].astype(str).unique())
    arrays = _Arrays(objects, kind)
    return _to_frame(_pairwise(arrays, _coverage(objects, coverage, annotators), iou_threshold), arrays)


def _pairwise(arrays: _Arrays, covered: dict[str, list[str]], threshold: float) -> list[tuple]:
    """Rows ``(sample, annotator_a, annotator_b, pos_a, pos_b, iou, best_iou)`` with -1 for no object."""
    rows: list[tuple] = []
    empty = np.zeros(0, int)
    for sample_id, names in covered.items():
        image = arrays.by_image.get(sample_id, empty)
        per = {a: image[arrays.annotator[image] == a] for a in names}
        for a, b in combinations(sorted(names), 2):
            pa, pb = per[a], per[b]
            iou = arrays.iou(pa, pb)
            result = match(iou, threshold)
            for (i, j), value in zip(result.pairs, result.iou, strict=True):
                rows.append((sample_id, a, b, int(pa[i]), int(pb[j]), float(value), float(value)))
            for i in result.unmatched_a:
                rows.append((sample_id, a, b, int(pa[i]), -1, np.nan, float(iou[i].max()) if len(pb) else 0.0))
            for j in result.unmatched_b:
                rows.append((sample_id, a, b, -1, int(pb[j]), np.nan, float(iou[:, j].max()) if len(pa) else 0.0))
    return rows


def _to_frame(rows: list[tuple], arrays: _Arrays) -> pd.DataFrame:
    columns = ["sample_id", "annotator_a", "annotator_b", "pos_a", "pos_b", "iou", "best_iou"]
    raw = pd.DataFrame(rows, columns=columns).astype({"pos_a": int, "pos_b": int})
    pos_a, pos_b = raw["pos_a"].to_numpy(), raw["pos_b"].to_numpy()

    def pick(values: np.ndarray, positions: np.ndarray) -> np.ndarray:
        out = np.full(len(positions), None, dtype=object)
        out[positions >= 0] = values[positions[positions >= 0]]
        return out

    return pd.DataFrame({
        "sample_id": raw["sample_id"].astype(object), "annotator_a": raw["annotator_a"].astype(object),
        "annotator_b": raw["annotator_b"].astype(object),
        "object_a": pick(arrays.ids, pos_a), "object_b": pick(arrays.ids, pos_b),
        "label_a": pick(arrays.label, pos_a), "label_b": pick(arrays.label, pos_b),
        "iou": raw["iou"].astype(float), "best_iou": raw["best_iou"].astype(float),
    })


# ------------------------------------------------------------------------------------------------ main


def object_agreement(objects: pd.DataFrame, iou_threshold: float = 0.5, iou_type: IouType = "box",
                     coverage: pd.DataFrame | None = None, class_names: list[str] | None = None,
                     min_overlap: float = 0.1) -> ObjectAgreement:
    """Agreement between the annotators of an object table (one row per object, ``annotator`` says who).

    Parameters
    ----------
    objects
        Canonical object table of the annotators to compare (leave out predictions and the shipped labels).
    iou_threshold
        IoU at or above which two objects of different annotators can be the same object.
    iou_type
        ``"box"``, ``"mask"`` (every object needs a mask) or ``"auto"`` (masks when every object has one).
    coverage
        ``sample_id, annotator`` rows saying who reviewed which image (default: everyone reviewed every image
        in ``objects``). An image reviewed by someone who drew nothing belongs here.
    class_names
        Class order for the agreement statistics (default: sorted labels).
    min_overlap
        Lowest IoU that counts as "the same object, badly placed" rather than "another place".
    """
    kind = _validate(objects, iou_type)
    if not 0 < iou_threshold <= 1 or not 0 <= min_overlap <= iou_threshold:
        raise ObjectAgreementInputError("need 0 < iou_threshold <= 1 and 0 <= min_overlap <= iou_threshold")
    arrays = _Arrays(objects, kind)
    annotators = sorted(set(arrays.annotator))
    covered = _coverage(objects, coverage, annotators)
    names = list(class_names) if class_names is not None else sorted(set(arrays.label))
    unknown = sorted(set(arrays.label) - set(names))
    if unknown:
        raise ObjectAgreementInputError(f"labels {unknown[:5]} are not among class_names {names[:10]}")
    rows = _pairwise(arrays, covered, iou_threshold)
    matches = _to_frame(rows, arrays)
    pairs = [(r[3], r[4], r[5]) for r in rows if r[3] >= 0 and r[4] >= 0]

    # Cluster the pairwise matches, best IoU first.
    clusters = _Clusters(arrays.annotator)
    for a, b, _ in sorted(pairs, key=lambda p: -p[2]):
        clusters.union(a, b)
    root = np.array([clusters.find(i) for i in range(len(arrays.ids))], dtype=int)

    # How often each annotator's class agrees with others on matched objects: the consensus tie-breaker.
    agreeing: dict[str, list[float]] = {a: [] for a in annotators}
    for a, b, _ in pairs:
        same = float(arrays.label[a] == arrays.label[b])
        agreeing[arrays.annotator[a]].append(same)
        agreeing[arrays.annotator[b]].append(same)
    reliability = {a: _mean(v) or 0.0 for a, v in agreeing.items()}

    n_covering = np.array([len(covered.get(s, ())) for s in arrays.sample], dtype=int)
    groups = {int(k): np.asarray(v) for k, v in pd.Series(root).groupby(root, sort=False).indices.items()}
    clusters_table, records = _consensus(arrays, groups, n_covering, reliability)
    consensus = _consensus_table(records)
    per_object = _per_object(objects, arrays, root, n_covering, clusters_table, consensus, rows, iou_threshold,
                             min_overlap, reliability)
    missing = _missing(arrays, consensus, covered, min_overlap)
    metrics = _metrics(arrays, per_object, consensus, matches, missing, covered, annotators, names, kind,
                       iou_threshold, root, groups, clusters_table)
    return ObjectAgreement(objects=per_object, consensus=consensus, missing=missing, matches=matches,
                           metrics=metrics)


def _consensus(arrays: _Arrays, groups: dict[int, np.ndarray], n_covering: np.ndarray,
               reliability: dict[str, float]) -> tuple[pd.DataFrame, list[dict]]:
    """Per cluster: support, covering, label, consensus id, same_class; and the fused consensus records."""
    records: list[dict] = []
    table = []
    counters: Counter[str] = Counter()
    for cluster, members in groups.items():
        sample_id = arrays.sample[members[0]]
        support, covering = len(members), int(n_covering[members[0]])
        votes = Counter(arrays.label[members])
        top = max(votes.values())
        tied = sorted(c for c, v in votes.items() if v == top)
        label = tied[0]
        if len(tied) > 1:
            label = min((-reliability.get(arrays.annotator[m], 0.0), arrays.label[m]) for m in members
                        if arrays.label[m] in tied)[1]
        consensus_id = None
        if support * 2 > covering:
            consensus_id = f"{CONSENSUS_ANNOTATOR}:{sample_id}:{counters[sample_id]:03d}"
            counters[sample_id] += 1
            corners = xywh_to_xyxy(arrays.boxes[members])
            scores = arrays.scores[members]
            weights = scores if np.all(np.isfinite(scores) & (scores > 0)) else np.ones(support)
            fused = xyxy_to_xywh(np.average(corners, axis=0, weights=weights)[None, :])[0]
            height, width = int(arrays.height[members[0]]), int(arrays.width[members[0]])
            masks = [arrays.masks[m] for m in members]
            mask = majority_mask(masks, height, width) if all(isinstance(m, str | bytes) for m in masks) else None
            records.append({"object_id": consensus_id, "sample_id": sample_id, "label": label, "x": fused[0],
                            "y": fused[1], "w": fused[2], "h": fused[3], "image_width": width,
                            "image_height": height, "mask": mask, "iscrowd": False,
                            "annotator": CONSENSUS_ANNOTATOR, "score": np.nan,
                            "source": "consensus of " + ", ".join(arrays.ids[members]),
                            "support": support, "members": ";".join(arrays.ids[members])})
        table.append((cluster, support, covering, label, consensus_id, len(votes) == 1, len(tied) > 1))
    frame = pd.DataFrame(table, columns=["cluster", "support", "covering", "label", "consensus_id", "same_class",
                                         "tied"]).set_index("cluster")
    return frame, records


def _consensus_table(records: list[dict]) -> pd.DataFrame:
    columns = ["object_id", "sample_id", "label", "x", "y", "w", "h", "image_width", "image_height"]
    if not records:
        empty = build_object_table(pd.DataFrame(columns=columns))
        return empty.assign(support=pd.Series(dtype=int), members=pd.Series(dtype=object))
    extra = pd.DataFrame(records).set_index("object_id")[["support", "members"]]
    table = build_object_table([{k: v for k, v in r.items() if k not in ("support", "members")} for r in records])
    return table.join(extra)


def _per_object(objects: pd.DataFrame, arrays: _Arrays, root: np.ndarray, n_covering: np.ndarray,
                clusters: pd.DataFrame, consensus: pd.DataFrame, rows: list[tuple], threshold: float,
                min_overlap: float, reliability: dict[str, float]) -> pd.DataFrame:
    n = len(arrays.ids)
    cluster = clusters.loc[root]
    support = cluster["support"].to_numpy(int)
    consensus_id = cluster["consensus_id"].to_numpy(dtype=object, copy=True)
    in_consensus = pd.notna(consensus_id).astype(bool)
    consensus_id[~in_consensus] = None
    consensus_label = np.where(in_consensus, cluster["label"].to_numpy(dtype=object), None)

    # Share of the other cluster members that gave the same class (NaN alone), and the reliability-weighted share
    # of all members (itself included) that gave it.
    same_label = pd.Series(np.ones(n)).groupby([root, arrays.label]).transform("size").to_numpy()
    with np.errstate(invalid="ignore", divide="ignore"):
        same_share = np.where(support > 1, (same_label - 1) / (support - 1), np.nan)
    weight = np.array([max(reliability.get(a, 0.0), 1e-3) for a in arrays.annotator])
    weight_same = pd.Series(weight).groupby([root, arrays.label]).transform("sum").to_numpy()
    weight_all = pd.Series(weight).groupby(root).transform("sum").to_numpy()
    class_support = weight_same / weight_all

    # Best IoU with another annotator's object; low-overlap partners not in the cluster (location disagreement).
    best = np.full(n, np.nan)
    located_badly = np.zeros(n, bool)
    cluster_annotators = {k: set(arrays.annotator[v]) for k, v in
                          pd.Series(root).groupby(root, sort=False).indices.items()}
    for _, a, b, pa, pb, _, best_iou in rows:
        for own, other_annotator, matched in ((pa, b, pb >= 0), (pb, a, pa >= 0)):
            if own < 0:
                continue
            best[own] = best_iou if np.isnan(best[own]) else max(best[own], best_iou)
            if (not matched and min_overlap <= best_iou < threshold
                    and other_annotator not in cluster_annotators[root[own]]):
                located_badly[own] = True

    # IoU with its own consensus object and the best IoU with any consensus object of the image.
    consensus_iou = np.full(n, np.nan)
    consensus_best = np.zeros(n)
    if len(consensus):
        c_arrays = _Arrays(consensus, arrays.kind)
        c_position = {cid: i for i, cid in enumerate(c_arrays.ids)}
        for sample_id, own in arrays.by_image.items():
            theirs = c_arrays.by_image.get(sample_id)
            if theirs is None:
                continue
            if arrays.kind == "mask":
                iou = mask_iou_matrix(arrays.masks[own], c_arrays.masks[theirs], arrays.height[own[0]],
                                      arrays.width[own[0]])
            else:
                iou = box_iou_matrix(arrays.boxes[own], c_arrays.boxes[theirs])
            consensus_best[own] = iou.max(axis=1)
            column = {c: j for j, c in enumerate(theirs)}
            for i, position in enumerate(own):
                if in_consensus[position]:
                    consensus_iou[position] = iou[i, column[c_position[consensus_id[position]]]]

    duplicate_iou = same_class_overlap(objects).to_numpy(float)
    class_disagreement = ~cluster["same_class"].to_numpy(bool)
    reasons = {
        "missing_in_some": support < n_covering,
        "class_disagreement": class_disagreement,
        "location_disagreement": located_badly,
        "duplicate": duplicate_iou >= threshold,
    }
    alone = ~in_consensus & (consensus_best < min_overlap) & ~(np.nan_to_num(best) >= min_overlap)
    suspects = {
        "wrong_class": in_consensus & (consensus_label != arrays.label),
        "misplaced": ~in_consensus & (consensus_best >= min_overlap) & (consensus_best < threshold),
        "unsupported": alone,
        "duplicate": ~in_consensus & (duplicate_iou >= threshold),
    }
    class_agrees = pd.array([None if c is None else c == own for c, own in zip(consensus_label, arrays.label,
                                                                             strict=True)], dtype="boolean")
    frame = pd.DataFrame({
        "cluster": arrays.ids[root],
        "support": support,
        "n_covering": n_covering,
        "support_share": support / np.where(n_covering > 0, n_covering, np.nan),
        "same_class_share": same_share,
        "class_support": class_support,
        "best_iou": best,
        "duplicate_iou": duplicate_iou,
        "consensus_id": consensus_id,
        "consensus_label": consensus_label,
        "consensus_iou": consensus_iou,
        "consensus_best_iou": consensus_best,
        "class_agrees": class_agrees,
        "in_consensus": in_consensus,
        "is_disputed": np.logical_or.reduce(list(reasons.values())),
        "reasons": _join(reasons, REASONS, n),
        "suspect": _join(suspects, SUSPECTS, n),
    }, index=objects.index)
    frame.columns = [f"{PREFIX}{c}" for c in frame.columns]
    return frame


def _join(flags: dict[str, np.ndarray], order: tuple[str, ...], n: int) -> np.ndarray:
    out = np.full(n, "", dtype=object)
    for name in order:
        hit = np.asarray(flags[name], bool)
        out[hit] = [f"{t};{name}" if t else name for t in out[hit]]
    return out


def _missing(arrays: _Arrays, consensus: pd.DataFrame, covered: dict[str, list[str]],
             min_overlap: float) -> pd.DataFrame:
    rows = []
    annotator_of = dict(zip(arrays.ids, arrays.annotator, strict=True))
    empty = np.zeros(0, int)
    for consensus_id, row in zip(consensus.index, consensus.itertuples(index=False), strict=True):
        present = {annotator_of[m] for m in str(row.members).split(";")}
        image = arrays.by_image.get(row.sample_id, empty)
        box = np.array([[row.x, row.y, row.w, row.h]], float)
        for annotator in covered.get(row.sample_id, []):
            if annotator in present:
                continue
            own = image[arrays.annotator[image] == annotator]
            if arrays.kind == "mask" and isinstance(row.mask, str) and len(own):
                iou = mask_iou_matrix(arrays.masks[own], [row.mask], arrays.height[own[0]], arrays.width[own[0]])
            else:
                iou = box_iou_matrix(arrays.boxes[own], box)
            best = float(iou.max()) if iou.size else 0.0
            rows.append((f"{consensus_id}|{annotator}", annotator, consensus_id, row.sample_id, row.label, row.x,
                         row.y, row.w, row.h, int(row.support), best, best < min_overlap))
    columns = ["missing_id", "annotator", "consensus_id", "sample_id", "label", "x", "y", "w", "h", "support",
               "best_iou", "skipped"]
    return pd.DataFrame(rows, columns=columns).set_index("missing_id")


def _alpha(reliability: np.ndarray, domain: list[int]) -> float | None:
    from audit.checks.agreement import krippendorff_alpha

    return krippendorff_alpha(reliability, domain) if reliability.size else None


def _fleiss(ratings: np.ndarray, n_classes: int) -> float | None:
    from statsmodels.stats.inter_rater import aggregate_raters, fleiss_kappa

    if not len(ratings):
        return None
    table, _ = aggregate_raters(ratings, n_cat=n_classes)
    with warnings.catch_warnings(), np.errstate(invalid="ignore", divide="ignore"):
        warnings.simplefilter("ignore")
        value = fleiss_kappa(table, method="fleiss")
    return float(value) if np.isfinite(value) else None


def _metrics(arrays: _Arrays, per_object: pd.DataFrame, consensus: pd.DataFrame, matches: pd.DataFrame,
             missing: pd.DataFrame, covered: dict[str, list[str]], annotators: list[str], names: list[str],
             kind: str, threshold: float, root: np.ndarray, groups: dict[int, np.ndarray],
             clusters: pd.DataFrame) -> dict[str, Any]:
    from audit.checks.base import json_safe

    matched = matches.dropna(subset=["object_a", "object_b"])
    codes = {c: i for i, c in enumerate(names)}
    null_reasons: dict[str, str] = {}

    # Class agreement: annotators (raters) x clusters (units) of class codes.
    order = list(groups)
    column = {c: j for j, c in enumerate(order)}
    rater = {a: i for i, a in enumerate(annotators)}
    reliability = np.full((len(annotators), len(order)), np.nan)
    reliability[[rater[a] for a in arrays.annotator], [column[r] for r in root]] = [codes[c] for c in arrays.label]
    multi = np.isfinite(reliability).sum(axis=0) >= 2
    alpha = _alpha(reliability[:, multi], list(range(len(names)))) if multi.any() else None
    if alpha is None:
        null_reasons["krippendorff_alpha"] = "no object was matched between two annotators (or a single class)"
    complete = np.isfinite(reliability).all(axis=0) & (len(annotators) >= 2)
    fleiss = _fleiss(reliability[:, complete].T.astype(int), len(names)) if complete.any() else None
    if fleiss is None:
        null_reasons["fleiss_kappa"] = "no object was drawn by every annotator (or kappa is undefined)"

    in_consensus = per_object[f"{PREFIX}in_consensus"].to_numpy(bool)
    consensus_iou = per_object[f"{PREFIX}consensus_iou"].to_numpy(float)
    class_agrees = per_object[f"{PREFIX}class_agrees"]
    per_annotator: dict[str, Any] = {}
    for a in annotators:
        own = arrays.annotator == a
        images = {s for s, names_ in covered.items() if a in names_}
        n_ref = int(consensus["sample_id"].isin(images).sum())
        tp = int((own & in_consensus).sum())
        entry: dict[str, Any] = {"n_objects": int(own.sum()), "n_images": len(images), **_f1(tp, int(own.sum()),
                                                                                             n_ref)}
        entry["mean_iou"] = _mean(consensus_iou[own & in_consensus])
        agrees = class_agrees[own & in_consensus]
        entry["class_agreement"] = _mean(agrees.astype(float)) if len(agrees) else None
        entry["n_missing"] = int((missing["annotator"] == a).sum())
        vs: dict[str, Any] = {}
        total = np.zeros(3, int)
        for b in annotators:
            if b == a:
                continue
            first, second = sorted((a, b))
            pair = matches[(matches["annotator_a"] == first) & (matches["annotator_b"] == second)]
            mine, theirs = ("object_a", "object_b") if a == first else ("object_b", "object_a")
            m = pair.dropna(subset=["object_a", "object_b"])
            n_self, n_other = int(pair[mine].notna().sum()), int(pair[theirs].notna().sum())
            vs[b] = {"n_matched": len(m), **_f1(len(m), n_self, n_other), "mean_iou": _mean(m["iou"]),
                     "class_agreement": _mean(m["label_a"] == m["label_b"]) if len(m) else None}
            total += (len(m), n_self, n_other)
        entry["vs_annotators"] = vs
        mine_pairs = matched[(matched["annotator_a"] == a) | (matched["annotator_b"] == a)]
        entry["vs_others"] = {**_f1(*total), "mean_iou": _mean(mine_pairs["iou"])}
        per_annotator[a] = entry

    disputed = per_object[f"{PREFIX}is_disputed"].to_numpy(bool)
    reasons = per_object[f"{PREFIX}reasons"]
    position = {o: i for i, o in enumerate(arrays.ids)}
    pair_class = clusters.loc[[root[position[o]] for o in matched["object_a"]], "label"].to_numpy()
    per_class = {}
    for j, name in enumerate(names):
        binary = np.where(np.isnan(reliability), np.nan, reliability == j)
        per_class[name] = {
            "n_objects": int((arrays.label == name).sum()),
            "n_consensus": int((consensus["label"] == name).sum()),
            "n_disputed": int((disputed & (arrays.label == name)).sum()),
            "mean_iou": _mean(matched["iou"].to_numpy()[pair_class == name]) if len(matched) else None,
            "krippendorff_alpha": _alpha(binary[:, multi], [0, 1]) if multi.any() else None,
        }
    return json_safe({
        "iou_type": kind,
        "iou_threshold": threshold,
        "annotators": annotators,
        "n_annotators": len(annotators),
        "n_images": len(covered),
        "n_objects": len(arrays.ids),
        "n_matched_pairs": len(matched),
        "mean_iou": _mean(matched["iou"]),
        "krippendorff_alpha": alpha,
        "fleiss_kappa": fleiss,
        "fleiss_items": int(complete.sum()),
        "n_consensus": len(consensus),
        "n_disputed": int(disputed.sum()),
        "disputed_reasons": {r: int(reasons.str.contains(r, regex=False).sum()) for r in REASONS},
        "suspects": {s: int(per_object[f"{PREFIX}suspect"].str.contains(s, regex=False).sum()) for s in SUSPECTS},
        "n_missing": len(missing),
        "per_annotator": per_annotator,
        "per_class": per_class,
        "null_reasons": null_reasons,
    })


# ------------------------------------------------------------------------------------------ the check


@register
class ObjectAgreementCheck(Check):
    """Agreement between the annotators who drew boxes: matched objects, per-annotator precision / recall / F1,
    IoU, class agreement, consensus boxes and the disputed ones."""

    name: ClassVar[str] = "object_agreement"
    level: ClassVar[str] = "object"
    requires: ClassVar[tuple[Requirement, ...]] = ("object_annotators",)
    description: ClassVar[str] = (
        "box agreement between annotators: Hungarian matching on IoU, per-annotator precision/recall/F1, mean IoU, "
        "class agreement (Krippendorff's alpha, Fleiss' kappa), consensus boxes and disputed ones")
    thresholds: ClassVar[tuple[Threshold, ...]] = (
        Threshold("min_box_f1", "objects.checks.object_agreement.per_annotator.{key}.f1", ">=", "rate",
                  "box F1 of annotator {key} against the consensus", "every annotator's box F1 against the consensus "
                  "(one rule per annotator)"),
        Threshold("min_box_mean_iou", "objects.checks.object_agreement.mean_iou", ">=", "rate",
                  "mean IoU of matched boxes", "mean IoU of the boxes two annotators matched"),
        Threshold("min_box_krippendorff_alpha", "objects.checks.object_agreement.krippendorff_alpha", ">=",
                  "coefficient", "Krippendorff's alpha of the classes of matched boxes",
                  "class agreement on matched boxes"),
        Threshold("max_disputed_boxes", "objects.checks.object_agreement.n_disputed", "<=", "count",
                  "disputed boxes", "boxes the annotators dispute (drawn by some only, other class, other place)"),
    )
    trends: ClassVar[tuple[Trend, ...]] = (
        Trend("Box F1 per annotator", "objects.checks.object_agreement.per_annotator.{key}.f1"),
        Trend("Mean IoU of matched boxes", "objects.checks.object_agreement.mean_iou"),
    )
    report_sections: ClassVar[tuple[ReportSection, ...]] = (
        ReportSection("object-agreement", "Box agreement", "_object_agreement.html.j2",
                      lambda si: object_agreement_section(si), 55),
    )

    @classmethod
    def summary_line(cls, metrics: dict[str, Any]) -> str:
        if "skipped" in metrics:
            return f"skipped: {metrics['skipped']}"
        iou = metrics.get("mean_iou")
        return (f"{len(metrics.get('per_annotator') or {})} annotators, {metrics.get('n_consensus', 0):,} consensus "
                f"boxes, {metrics.get('n_disputed', 0):,} disputed, mean IoU {'n/a' if iou is None else f'{iou:.3f}'}")

    @classmethod
    def tiles(cls, state: dict[str, Any]) -> list[Tile]:
        from audit.presentation import format_float, format_number

        if state["status"] != "ok":
            return []
        m = state["metrics"]
        return [Tile("Box agreement", f"IoU {format_float(m.get('mean_iou'))}",
                     f"α {format_float(m.get('krippendorff_alpha'))} · {format_number(m.get('n_disputed'))} disputed")]

    def run(self, context: CheckContext) -> CheckResult:
        from audit.checks.base import json_safe, merge_params

        params = merge_params(self.name, context.params, {"iou_threshold": 0.5, "iou_type": "box"})
        agreement = context.extra.get("agreement")
        objects = context.extra["objects"]
        if agreement is None or params != {"iou_threshold": 0.5, "iou_type": "box"}:
            annotators = objects[(objects["annotator"].astype(str) != "")
                                 & (objects["annotator"].astype(str) != "predictions")]
            agreement = object_agreement(annotators, iou_threshold=params["iou_threshold"],
                                         iou_type=params["iou_type"])
        items = context.samples
        per_item = pd.DataFrame(index=items.index)
        in_table = items.index.isin(agreement.objects.index)
        if in_table.any():  # the audited boxes are annotators' own: their agreement columns
            per_item = agreement.objects.reindex(items.index)
        consensus = agreement.consensus
        if not in_table.all():  # shipped or consensus boxes: how each matches the consensus
            best_iou, best_label = _match_to(items, consensus)
            per_item[f"{PREFIX}consensus_iou"] = best_iou
            per_item[f"{PREFIX}consensus_label"] = best_label
            per_item[f"{PREFIX}agrees"] = (best_iou >= params["iou_threshold"]) & (
                best_label == items["label"].astype(str).to_numpy())
            if "support" in items.columns:
                per_item[f"{PREFIX}support"] = items["support"].to_numpy()
        others = agreement.objects.loc[~agreement.objects.index.isin(items.index)]
        metrics = dict(agreement.metrics)
        if not in_table.all() and len(consensus):
            # Consensus boxes the audited (shipped) labels lack, nothing drawn there at all (a label box that overlaps
            # partly is a badly drawn box, not a missing one): objects the labels probably missed.
            back_iou, _ = _match_to(consensus, items)
            missing = pd.DataFrame({f"{PREFIX}missing_in_labels": back_iou < MISSING_OVERLAP,
                                    f"{PREFIX}labels_best_iou": back_iou,
                                    f"{PREFIX}support": consensus["support"].to_numpy()
                                    if "support" in consensus else np.nan}, index=consensus.index)
            others = pd.concat([others, missing.loc[~missing.index.isin(items.index)]])
            metrics["n_missing_in_labels"] = int(missing[f"{PREFIX}missing_in_labels"].sum())
        return CheckResult(self.name, per_item, json_safe(metrics), others=others)


def _match_to(items: pd.DataFrame, consensus: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """For each item, the best box IoU with a consensus box of the same image and that box's class.

    Boxes are taken out of pandas once: slicing the frames per image cost 60% of the agreement check's time at
    10k images (benchmarks/objects.py)."""
    best_iou = np.zeros(len(items))
    best_label = np.full(len(items), None, dtype=object)
    if not len(items) or not len(consensus):
        return best_iou, best_label
    item_boxes = items[["x", "y", "w", "h"]].to_numpy(float)
    boxes = consensus[["x", "y", "w", "h"]].to_numpy(float)
    labels = consensus["label"].astype(str).to_numpy(dtype=object)
    positions = items.groupby("sample_id").indices
    for sample_id, group in consensus.groupby("sample_id").indices.items():
        rows = positions.get(sample_id)
        if rows is None:
            continue
        iou = box_iou_matrix(item_boxes[rows], boxes[group])
        best = iou.argmax(axis=1)
        best_iou[rows] = iou[np.arange(len(rows)), best]
        best_label[rows] = labels[group][best]
    return best_iou, best_label


def object_agreement_section(si: Any) -> dict[str, Any] | None:
    """Per-annotator box precision / recall / F1 and IoU, class agreement, and the disputed boxes by reason."""
    if si.state["status"] == "absent":
        return None
    metrics = si.state["metrics"]
    rows = [{"name": name, **values} for name, values in sorted((metrics.get("per_annotator") or {}).items())]
    return {"state": si.state, "metrics": metrics, "annotators": rows,
            "reasons": sorted((metrics.get("disputed_reasons") or {}).items(), key=lambda kv: -kv[1])}
