"""FiftyOne as the review tool: the queue as a saved view to work through in the App, verdicts as sample tags.

:func:`export_review` writes the run into FiftyOne if it is not there yet (:func:`audit.integrations.fiftyone.
export_run`), tags the queued samples ``review:queued``, gives them ``label_audit_review_rank`` / ``_reason`` /
``_score`` / ``_suggested`` fields and saves the view ``la-review`` (the queue in order). In the App a reviewer
tags each sample they decide ``review:correct`` (the given label is right), ``review:wrong`` or ``review:unsure``;
``review:fix:<class>`` says which class is right (it implies ``review:wrong``, and is how a label is given to an
unlabelled "label next" image). :func:`read_review_tags` turns those tags back into ledger rows
(:func:`audit.review.verdicts_from_tags`).

Tags carry no reviewer or time: the reviewer is whoever the import names, the time is the import's, and an
answer that has not changed since the last import is not stamped again (re-importing is a no-op).
Only image items are reviewed here; object items (boxes) go to Label Studio or CVAT.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from audit.checks.review import FIELD_RANK, TAG_QUEUED, VIEW_REVIEW, review_view
from audit.review import REVIEW_TAGS, ReviewError, normalise_ledger, read_ledger, verdicts_from_tags

TOOL = "fiftyone"
FIX_PREFIX = "review:fix:"
FIELD_REASON = "label_audit_review_reason"
FIELD_SCORE = "label_audit_review_score"
FIELD_SUGGESTED = "label_audit_review_suggested"


@dataclass(frozen=True)
class FiftyOneReviewExport:
    """What :func:`export_review` did: the dataset, the saved view and how many samples it tagged."""

    dataset: str
    view: str
    n_tagged: int
    n_missing: int


def _norm(path: str) -> str:
    return os.path.normpath(os.path.abspath(os.path.expanduser(str(path))))


def _sample_ids(run, dataset) -> dict[str, str]:
    """``{run sample id: FiftyOne sample id}``: by id for a run made from FiftyOne, else by file path."""
    fo_ids, fo_paths = dataset.values(["id", "filepath"])
    from_fiftyone = (run.summary.get("dataset") or {}).get("kind") == "fiftyone"
    known = {str(i) for i in fo_ids}
    by_path = {_norm(p): str(i) for i, p in zip(fo_ids, fo_paths, strict=True)}
    out = {}
    for sample_id, filepath in zip(run.samples.index.astype(str), run.samples["filepath"].astype(str), strict=True):
        match = sample_id if from_fiftyone and sample_id in known else by_path.get(_norm(filepath))
        if match is not None:
            out[sample_id] = match
    return out


def _dataset(run, run_dir: Path, dataset_name: str | None, fo, create: bool):
    from audit.integrations import fiftyone as af

    name = dataset_name or af.default_dataset_name(run)
    if name not in fo.list_datasets():
        if not create:
            raise ReviewError(f"no FiftyOne dataset named {name!r}: export the review first with "
                              f"`label-audit review export {run_dir} --to fiftyone`, or name it with --dataset")
        name = af.export_run(run_dir, dataset_name)
    elif create and not af._is_current(fo.load_dataset(name), run, run_dir):
        name = af.export_run(run_dir, dataset_name)
    return fo.load_dataset(name)


def export_review(run_dir: str | os.PathLike, queue: pd.DataFrame, dataset_name: str | None = None
                  ) -> FiftyOneReviewExport:
    """Put the review queue into FiftyOne: the queued samples tagged, ranked and in the saved view ``la-review``.

    The tag moves with the queue: samples of an earlier queue that are not in this one lose it. Object items are
    refused (review boxes in Label Studio or CVAT).
    """
    from audit.integrations.fiftyone import _fo
    from audit.results import RunResults

    run_dir = Path(run_dir)
    rows = normalise_ledger(queue, where="review queue")
    if (rows["item_kind"] != "image").any():
        raise ReviewError("FiftyOne review takes image items only; export object items (boxes) to Label Studio or "
                          "CVAT")
    run = RunResults.load(run_dir)
    fo = _fo()
    dataset = _dataset(run, run_dir, dataset_name, fo, create=True)
    matched = _sample_ids(run, dataset)
    ids = {item: matched[str(row["sample_id"])] for item, row in rows.iterrows() if str(row["sample_id"]) in matched}
    missing = len(rows) - len(ids)
    for field, ftype in ((FIELD_RANK, fo.IntField), (FIELD_REASON, fo.StringField), (FIELD_SCORE, fo.FloatField),
                         (FIELD_SUGGESTED, fo.StringField)):
        if field not in dataset.get_field_schema():
            dataset.add_sample_field(field, ftype)
    previously = [str(i) for i in dataset.match_tags(TAG_QUEUED).values("id")]
    if previously:
        dataset.select(previously).untag_samples(TAG_QUEUED)
        for field in (FIELD_RANK, FIELD_REASON, FIELD_SCORE, FIELD_SUGGESTED):
            dataset.set_values(field, dict.fromkeys(previously), key_field="id", progress=False)
    extra = queue.reset_index(drop="item_id" in queue.columns)
    ranks = dict(zip(rows.index, extra["rank"] if "rank" in extra else np.arange(1, len(rows) + 1), strict=True))
    values: dict[str, dict[str, Any]] = {FIELD_RANK: {}, FIELD_REASON: {}, FIELD_SCORE: {}, FIELD_SUGGESTED: {}}
    for item, fo_id in ids.items():
        row = rows.loc[item]
        values[FIELD_RANK][fo_id] = int(ranks[item])
        values[FIELD_REASON][fo_id] = row["reason"]
        values[FIELD_SCORE][fo_id] = None if pd.isna(row["score"]) else float(row["score"])
        values[FIELD_SUGGESTED][fo_id] = row["suggested_label"]
    if ids:
        for field, by_id in values.items():
            dataset.set_values(field, by_id, key_field="id", progress=False)
        dataset.select(list(ids.values())).tag_samples(TAG_QUEUED)
    dataset.save_view(VIEW_REVIEW, review_view(dataset), overwrite=True,
                      description=f"label-audit review queue of run {run.name}: tag review:correct, review:wrong "
                                  "or review:unsure (review:fix:<class> for the right class)")
    return FiftyOneReviewExport(dataset=dataset.name, view=VIEW_REVIEW, n_tagged=len(ids), n_missing=missing)


@dataclass(frozen=True)
class FiftyOneAnswers:
    """What :func:`read_review_tags` found: new or changed verdicts as ledger rows, and how many samples carry
    review tags but are not in the ledger (ignored)."""

    verdicts: pd.DataFrame
    n_ignored: int


def read_review_tags(run_dir: str | os.PathLike, dataset_name: str | None = None, *, reviewer: str | None = None,
                     reviewed_at: datetime | None = None, ledger: pd.DataFrame | None = None) -> FiftyOneAnswers:
    """Ledger rows from the review tags reviewers set in the App on the ledger's image items.

    Only answers that differ from what the ledger already holds are returned, so importing twice changes
    nothing. ``review:fix:<class>`` must name one of the run's classes; an item tagged with two verdicts (or a
    fix and ``review:correct``) is refused.
    """
    from audit.integrations.fiftyone import _fo
    from audit.results import RunResults

    run_dir = Path(run_dir)
    run = RunResults.load(run_dir)
    ledger = normalise_ledger(read_ledger(run_dir) if ledger is None else ledger)
    fo = _fo()
    dataset = _dataset(run, run_dir, dataset_name, fo, create=False)
    ids, tag_lists = dataset.values(["id", "tags"])
    tags_of = {str(i): list(t or []) for i, t in zip(ids, tag_lists, strict=True)}
    matched = _sample_ids(run, dataset)
    images = ledger[ledger["item_kind"] == "image"]
    classes = set(run.class_names)
    tags: dict[str, list[str]] = {}
    corrected: dict[str, str] = {}
    for item, row in images.iterrows():
        fo_id = matched.get(str(row["sample_id"]))
        if fo_id is None:
            continue
        mine = list(tags_of.get(fo_id, []))
        fixes = sorted({t[len(FIX_PREFIX):] for t in mine if t.startswith(FIX_PREFIX)})
        if len(fixes) > 1:
            raise ReviewError(f"item {item!r} has conflicting fix tags {', '.join(FIX_PREFIX + f for f in fixes)}")
        if fixes:
            if fixes[0] not in classes:
                raise ReviewError(f"item {item!r} is tagged {FIX_PREFIX}{fixes[0]}, but {fixes[0]!r} is not one of "
                                  f"the run's classes")
            corrected[item] = fixes[0]
            if "review:correct" in mine:
                raise ReviewError(f"item {item!r} is tagged both review:correct and {FIX_PREFIX}{fixes[0]}")
            mine.append("review:wrong")
        if any(t in REVIEW_TAGS for t in mine):
            tags[item] = mine
    queue_ids = {matched.get(str(s)) for s in images["sample_id"]}
    n_ignored = sum(1 for fo_id, t in tags_of.items()
                    if fo_id not in queue_ids and any(x in REVIEW_TAGS or x.startswith(FIX_PREFIX) for x in t))
    rows = verdicts_from_tags(tags, images, tool=TOOL, reviewer=reviewer,
                              reviewed_at=reviewed_at or datetime.now(UTC), corrected=corrected)
    if len(rows):
        known = images.reindex(rows.index)
        unchanged = (known["verdict"] == rows["verdict"]) & (
            known["corrected_label"].fillna("") == rows["corrected_label"].fillna(""))
        rows = rows[~unchanged.to_numpy(bool)]
    return FiftyOneAnswers(verdicts=rows, n_ignored=n_ignored)
