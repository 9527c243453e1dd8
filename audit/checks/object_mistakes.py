"""Likely mistakes in boxes, without any detector: the image pipeline's classifier and cleanlab, on object crops.

An object's crop (its box with a little context, embedded by the run's embedder) is audited like an image: a
cross-validated classifier on the crop embeddings (:func:`audit.checks.predictions.cross_validated_pred_probs`)
gives out-of-sample class probabilities, and a confident-learning flag rule flags boxes whose class the model
finds unlikely, with a suggested class.

Two extra classes, made from the labels themselves (no truth, no detector), let the same classifier say more
than "wrong class": ``background`` (windows of the dataset's own box sizes that overlap no box: what "nothing
here" looks like) and ``misplaced`` (copies of 30% of the boxes moved by 30-60% of their size or enlarged 1.4-1.9
times: what a badly drawn box looks like). A box the classifier takes for background is **spurious**, one it takes
for misplaced is **badly located**; these crops are training examples only and are never audited. Measured on the
detection demo (``label-audit demo --task detection``, 10% errors of each kind), the two classes lifted the
F1 of wrong-class flags from 0.80 to 0.92 (mean of three seeds), because badly drawn boxes stopped passing for
wrong classes. A second box of the same class over the same object (box IoU >= ``duplicate_iou`` with another
box of the same image, annotator and class) is a **duplicate**; that needs no model.

The flag rule, for the flags and for the classifier's refit, is ``low_margin_calibrated_count``
(:func:`audit.checks.flag_rule.low_margin_calibrated_count`), not the image default (``noise_posterior``): the
noise posterior trusts cleanlab's estimate of which classes are confused, and here most confusion is the crop
classifier's own (digits against the made-up misplaced and background crops), so on the detection benchmark
(``python -m benchmarks.objects``, 20% errors per kind) it lowered the wrong-class F1 without predictions from
0.955 to 0.908, 0.029 of it through the refit (measured once, with this module's rule swapped for the image
default; the committed results are this rule's). The segmentation demo's region classifier, trained with
background windows, keeps the low-margin refit for the same reason.

Findings that need a detector's predictions (overlooked objects, per-box localisation against predicted boxes)
are the ``object_detection`` check's.
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

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
from audit.declarations import ReportSection, Threshold, Tile, Trend

BACKGROUND = "background"
MISPLACED = "misplaced"
ISSUE_KINDS = ("wrong_class", "spurious", "badly_located", "duplicate")
FLAG_RULES = ["low_margin_calibrated_count"]  # for crops classified against made-up classes (module docstring)
DEFAULTS: dict[str, Any] = {"folds": 5, "knn_neighbors": 10, "background_per_image": 2, "misplaced_share": 0.3,
                            "duplicate_iou": 0.5, "agreement_iou": 0.5}


def crop_pred_probs(x: np.ndarray, y: np.ndarray, n_classes: int, folds: int = 5, knn_neighbors: int = 10,
                    seed: int = 0) -> tuple[np.ndarray, int, str, list[str]]:
    """Out-of-fold probabilities for crops classified with made-up classes (background, misplaced): the image
    classifier (:func:`audit.checks.predictions.cross_validated_pred_probs`) with the low-margin refit (module
    docstring). The check, the detection demo and the segmentation demo's regions all use it."""
    from audit.checks.flag_rule import low_margin_calibrated_count
    from audit.checks.predictions import cross_validated_pred_probs

    return cross_validated_pred_probs(x, y, n_classes, folds, knn_neighbors, seed,
                                      refit_rule=low_margin_calibrated_count)


@register
class ObjectMistakesCheck(Check):
    """Wrong-class, spurious, badly located and duplicate boxes from crop embeddings and geometry."""

    name: ClassVar[str] = "object_mistakes"
    level: ClassVar[str] = "object"
    requires: ClassVar[tuple[Requirement, ...]] = ("embeddings",)
    description: ClassVar[str] = (
        "likely box mistakes without a detector: a cross-validated classifier on the object crops' embeddings "
        "(with background and misplaced examples made from the labels) and cleanlab; duplicate boxes by geometry")
    thresholds: ClassVar[tuple[Threshold, ...]] = (
        Threshold("max_object_issue_rate", "objects.checks.object_mistakes.issue_rate", "<=", "rate",
                  "suspected box-mistake rate", "share of audited boxes flagged (any kind)"),
        Threshold("max_class_object_issue_rate", "objects.checks.object_mistakes.per_class.{key}.issue_rate", "<=",
                  "rate", "suspected box-mistake rate of class {key}", "the same, one rule per object class"),
    )
    trends: ClassVar[tuple[Trend, ...]] = (
        Trend("Suspected box-mistake rate", "objects.checks.object_mistakes.issue_rate", percent=True),
    )
    report_sections: ClassVar[tuple[ReportSection, ...]] = (
        ReportSection("object-suspects", "Box suspects", "_object_suspects.html.j2",
                      lambda si: object_suspects_section(si), 35),
    )

    @classmethod
    def extra_crops(cls, items: pd.DataFrame, images: pd.DataFrame, seed: int) -> pd.DataFrame:
        background = background_boxes(items, images, per_image=DEFAULTS["background_per_image"], seed=seed)
        misplaced = misplaced_boxes(items, share=DEFAULTS["misplaced_share"], seed=seed)
        return pd.concat([background.assign(label=BACKGROUND), misplaced.assign(label=MISPLACED)], ignore_index=True)

    @classmethod
    def summary_line(cls, metrics: dict[str, Any]) -> str:
        if "skipped" in metrics:
            return f"skipped: {metrics['skipped']}"
        kinds = ", ".join(f"{metrics['per_kind'][k]} {k.replace('_', ' ')}" for k in ISSUE_KINDS)
        return f"{metrics['n_issues']:,} suspect boxes of {metrics['n_audited']:,} ({kinds})"

    @classmethod
    def tiles(cls, state: dict[str, Any]) -> list[Tile]:
        from audit.presentation import format_number, format_percent

        if state["status"] != "ok":
            return []
        m = state["metrics"]
        return [Tile("Suspect boxes", format_number(m.get("n_issues")),
                     f"{format_percent(m.get('issue_rate'))} of {format_number(m.get('n_audited'))} boxes",
                     "warn" if m.get("n_issues") else "good")]

    def run(self, context: CheckContext) -> CheckResult:
        from audit.checks.mistakes import flag_labels
        from audit.geometry import same_class_overlap

        params = merge_params(self.name, context.params, DEFAULTS)
        items = context.samples
        if context.embeddings is None or len(context.embeddings) != len(items):
            raise CheckInputError("object_mistakes needs one crop embedding per audited object")
        negatives, negative_vectors = context.extra.get("crops", {}).get(self.name, (None, None))
        classes = sorted(set(items["label"].dropna().astype(str)))
        names = [*classes, BACKGROUND, MISPLACED]
        code = {c: i for i, c in enumerate(names)}
        usable = np.isfinite(context.embeddings).all(axis=1) & items["label"].notna().to_numpy()
        labels = items["label"].map(code).to_numpy()
        x = [np.asarray(context.embeddings[usable], dtype=np.float32)]
        y = [labels[usable].astype(int)]
        if negatives is not None and len(negatives):
            good = np.isfinite(negative_vectors).all(axis=1)
            x.append(np.asarray(negative_vectors[good], dtype=np.float32))
            y.append(negatives["label"].map(code).to_numpy(int)[good])
        x_all, y_all = np.vstack(x), np.concatenate(y)
        counts = np.bincount(y_all, minlength=len(names))
        keep = counts[y_all] >= 2  # a class with one example cannot be cross-validated
        if len(np.unique(y_all[keep])) < 2:
            return CheckResult(self.name, pd.DataFrame(index=items.index),
                               {"skipped": "fewer than two object classes with two or more boxes"})
        probs_all = np.zeros((len(y_all), len(names)))
        probs_all[keep], _, source, notes = crop_pred_probs(
            x_all[keep], y_all[keep], len(names), params["folds"], params["knn_neighbors"], context.seed)
        flags_all = np.zeros(len(y_all), dtype=bool)
        quality_all = np.full(len(y_all), np.nan)
        flags_all[keep], quality_all[keep] = flag_labels(y_all[keep], probs_all[keep], FLAG_RULES, None)
        n_items = int(usable.sum())
        audited = np.flatnonzero(usable)
        probs = np.full((len(items), len(names)), np.nan)
        probs[audited] = probs_all[:n_items]
        flagged = np.zeros(len(items), dtype=bool)
        flagged[audited] = flags_all[:n_items] & keep[:n_items]
        quality = np.full(len(items), np.nan)
        quality[audited] = quality_all[:n_items]
        suggested_code = np.where(np.isfinite(probs).all(axis=1), np.nan_to_num(probs).argmax(axis=1), -1)
        suggested = np.array([names[c] if c >= 0 else None for c in suggested_code], dtype=object)
        overlap = same_class_overlap(items).to_numpy(float)
        duplicate = overlap >= params["duplicate_iou"]
        kind = np.full(len(items), None, dtype=object)
        kind[flagged & (suggested == BACKGROUND)] = "spurious"
        kind[flagged & (suggested == MISPLACED)] = "badly_located"
        real_class = np.isin(suggested, classes) & (suggested != items["label"].to_numpy(dtype=object))
        kind[flagged & real_class] = "wrong_class"
        kind[duplicate & (kind == None)] = "duplicate"  # noqa: E711 (an object array)
        evidence = _annotator_evidence(context, items, params["agreement_iou"])
        if evidence is not None:
            # A box the annotators' consensus overlaps only partly is badly drawn, whatever its crop looks like.
            # (Their consensus as evidence of wrong classes and spurious boxes lowered precision on the detection
            # demo: there the crop classifier alone does better, so it is kept in the columns, not the flags.)
            kind[evidence["badly_located"] & (kind == None)] = "badly_located"  # noqa: E711
        is_issue = kind != None  # noqa: E711
        per_object = pd.DataFrame({
            "object_mistakes_is_issue": is_issue,
            "object_mistakes_kind": kind,
            "object_mistakes_label_quality": quality,
            "object_mistakes_suggested_label": np.where(real_class | np.isin(suggested, [BACKGROUND, MISPLACED]),
                                                        suggested, items["label"].to_numpy(dtype=object)),
            "object_mistakes_suggested_prob": np.where(suggested_code >= 0, np.nan_to_num(probs).max(axis=1),
                                                       np.nan),
            "object_mistakes_wrong_class_score": _wrong_class_score(probs, items["label"], code, len(classes)),
            "object_mistakes_background_prob": probs[:, code[BACKGROUND]],
            "object_mistakes_misplaced_prob": probs[:, code[MISPLACED]],
            "object_mistakes_duplicate_iou": overlap,
        }, index=items.index)
        audited_labels = items["label"].astype(str).to_numpy()
        per_class = {}
        for c in classes:
            mine = audited_labels == c
            per_class[c] = {"n": int(mine.sum()), "n_issues": int((is_issue & mine).sum()),
                            "issue_rate": float((is_issue & mine).mean() / mine.mean()) if mine.any() else None}
        cv_accuracy = float(np.mean(probs_all[:n_items].argmax(axis=1) == y_all[:n_items])) if n_items else None
        metrics = {
            "n_audited": n_items, "n_issues": int(is_issue.sum()),
            "issue_rate": float(is_issue.sum() / max(n_items, 1)),
            "per_kind": {k: int((kind == k).sum()) for k in ISSUE_KINDS}, "per_class": per_class,
            "n_background_examples": int((y_all == code[BACKGROUND]).sum()),
            "n_misplaced_examples": int((y_all == code[MISPLACED]).sum()),
            "pred_probs_source": f"{source} of object crops (with background and misplaced examples)",
            "cv_accuracy": cv_accuracy, "filter_by": FLAG_RULES, "notes": notes,
        }
        return CheckResult(self.name, per_object, json_safe(metrics))


def _annotator_evidence(context: CheckContext, items: pd.DataFrame, threshold: float) -> dict[str, np.ndarray] | None:
    """When annotators drew boxes too, what their consensus says of each audited box: no consensus box there
    (spurious), one that overlaps only partly (badly located), one of another class (wrong class). None when the
    object_agreement check did not compare the audited boxes with a consensus."""
    prior = context.prior.get("object_agreement")
    frame = prior.samples if prior is not None else None
    if frame is None or "object_agreement_consensus_iou" not in frame:
        return None
    iou = pd.to_numeric(frame["object_agreement_consensus_iou"], errors="coerce").reindex(items.index).to_numpy()
    label = frame["object_agreement_consensus_label"].reindex(items.index).astype(object).to_numpy()
    known = np.isfinite(iou)
    from audit.checks.object_agreement import MISSING_OVERLAP

    return {"spurious": known & (iou < MISSING_OVERLAP),
            "badly_located": known & (iou >= MISSING_OVERLAP) & (iou < threshold),
            "wrong_class": known & (iou >= threshold) & (label != items["label"].astype(str).to_numpy())}


def _wrong_class_score(probs: np.ndarray, labels: pd.Series, code: dict[str, int], n_classes: int) -> np.ndarray:
    """How much more likely the best *other object class* is than the given one (-1..1; higher = more likely the
    class is wrong). Background and misplaced are left out: they say the box is wrong, not its class."""
    given = labels.map(code).to_numpy()
    out = np.full(len(probs), np.nan)
    ok = np.isfinite(probs).all(axis=1) & pd.notna(given)
    if ok.any():
        rows = np.flatnonzero(ok)
        classes = probs[rows, :n_classes].copy()
        own = classes[np.arange(len(rows)), given[rows].astype(int)].copy()
        classes[np.arange(len(rows)), given[rows].astype(int)] = -np.inf
        out[rows] = classes.max(axis=1) - own
    return out


# ------------------------------------------------------------------------------------------- negative examples


def background_boxes(objects: pd.DataFrame, images: pd.DataFrame, per_image: int = 2, seed: int = 0) -> pd.DataFrame:
    """Windows overlapping none of ``objects``' boxes, sized like the dataset's own boxes (sampled from them):
    what "no object here" looks like in these images. ``images`` needs ``image_width``/``image_height`` (the
    pixel statistics' width and height) or the objects' own image sizes are used."""
    from audit.geometry import box_iou_matrix

    rng = np.random.default_rng(seed)
    if objects.empty:
        return pd.DataFrame(columns=["sample_id", "x", "y", "w", "h"])
    sizes = objects[["w", "h"]].to_numpy(float)
    dims = objects.groupby("sample_id")[["image_width", "image_height"]].first()
    by_image = {k: g[["x", "y", "w", "h"]].to_numpy(float) for k, g in objects.groupby("sample_id")}
    rows = []
    for sample_id in images.index:
        if sample_id not in dims.index:
            continue
        width, height = float(dims.at[sample_id, "image_width"]), float(dims.at[sample_id, "image_height"])
        taken = by_image.get(sample_id, np.empty((0, 4)))
        found = 0
        for _ in range(50 * per_image):
            w, h = sizes[rng.integers(len(sizes))]
            if w >= width or h >= height or w < 2 or h < 2:
                continue
            box = np.array([[rng.uniform(0, width - w), rng.uniform(0, height - h), w, h]])
            if not len(taken) or box_iou_matrix(box, taken).max() == 0:
                rows.append({"sample_id": sample_id, "x": box[0, 0], "y": box[0, 1], "w": w, "h": h})
                found += 1
                if found == per_image:
                    break
    return pd.DataFrame(rows, columns=["sample_id", "x", "y", "w", "h"])


def misplaced_boxes(objects: pd.DataFrame, share: float = 0.3, seed: int = 0) -> pd.DataFrame:
    """Badly drawn copies of a share of the boxes: half moved by 30-60% of their size in a random direction,
    half enlarged 1.4-1.9 times about their centre. What a misplaced box looks like, made from the labels alone."""
    rng = np.random.default_rng(seed)
    if objects.empty:
        return pd.DataFrame(columns=["sample_id", "x", "y", "w", "h"])
    chosen = objects.iloc[np.sort(rng.choice(len(objects), size=round(share * len(objects)), replace=False))]
    boxes = chosen[["x", "y", "w", "h"]].to_numpy(float).copy()
    for box in boxes:
        if rng.random() < 0.5:
            angle, step = rng.uniform(0, 2 * math.pi), rng.uniform(0.3, 0.6)
            box[0] += math.cos(angle) * step * box[2]
            box[1] += math.sin(angle) * step * box[3]
        else:
            grow = rng.uniform(1.4, 1.9)
            box[0] -= (grow - 1) / 2 * box[2]
            box[1] -= (grow - 1) / 2 * box[3]
            box[2:] *= grow
    return pd.DataFrame({"sample_id": chosen["sample_id"].to_numpy(), "x": boxes[:, 0], "y": boxes[:, 1],
                         "w": boxes[:, 2], "h": boxes[:, 3]})


# ------------------------------------------------------------------------------------------------- report


def object_suspects_section(si: Any) -> dict[str, Any] | None:
    """The worst suspect boxes, each drawn on its image, worst (lowest quality) first."""
    from audit.presentation import box_thumbnail, format_value

    objects = si.run.objects
    if objects is None or "object_mistakes_is_issue" not in objects:
        return None if si.state["status"] == "absent" else {"state": si.state, "cards": [], "n_total": 0}
    suspects = objects[objects["object_mistakes_is_issue"].fillna(False).astype(bool)]
    suspects = suspects.sort_values("object_mistakes_label_quality", na_position="last")
    shown = suspects.head(si.limits.gallery)
    paths = si.run.samples["filepath"].reindex(shown["sample_id"]).to_numpy()
    cards = []
    for (object_id, row), path in zip(shown.iterrows(), paths, strict=True):
        cards.append({"id": object_id, "sample_id": row["sample_id"],
                      "src": box_thumbnail(path, (row["x"], row["y"], row["w"], row["h"]), si.limits.thumbnail_px * 2),
                      "label": format_value(row.get("label")), "kind": format_value(row.get("object_mistakes_kind")),
                      "suggested": format_value(row.get("object_mistakes_suggested_label")),
                      "score": row.get("object_mistakes_label_quality"),
                      "annotator": format_value(row.get("annotator")) if row.get("annotator") else None})
    return {"state": si.state, "metrics": si.state["metrics"], "cards": cards, "n_total": len(suspects),
            "capped": len(suspects) > si.limits.gallery}
