"""The review ledger: what reviewers said about the suspects, kept in the run folder as ``review.parquet``.

The loop it closes: a run flags suspects -> :func:`build_review_queue` picks the top-k -> an integration exports
them to a labelling tool (:mod:`audit.integrations.labelstudio`, :mod:`audit.integrations.cvat`, FiftyOne tags)
and :func:`record_export` notes them in the ledger -> reviewers answer -> the integration reads the answers back as
ledger rows and :func:`merge_verdicts` folds them in -> :func:`write_corrected_labels` writes corrected labels as
*new* files, :func:`confirmed_correct` tells next week's run which items not to flag again, and
:func:`precision_at_k` / :func:`estimate_error_rate` measure the audit itself.

One ledger row per item (an image, or an object for box datasets), columns :data:`LEDGER_COLUMNS`:

``item_id``         the sample id (images) or object id (objects)
``item_kind``       ``"image"`` or ``"object"``
``sample_id``       the image the item belongs to (= ``item_id`` for images)
``given_label``     the label the dataset ships, the one under review
``suggested_label`` the label the audit believes
``score``           suspicion, ``1 - mistakes_label_quality`` (higher = more likely wrong)
``reason``          why the item is in the queue, in words
``verdict``         ``"correct"`` (given label right), ``"wrong"``, ``"unsure"``, or None (not reviewed yet)
``corrected_label`` the reviewer's label when the verdict is ``"wrong"`` (None: wrong, but no better label given)
``reviewer``        who answered
``reviewed_at``     when (UTC)
``tool``            where the answer came from: ``"labelstudio"``, ``"cvat"``, ``"fiftyone"``...
``content_hash``    the image's content hash at export time (objects: image hash + box), to tell a changed item
``exported_at``     when the item was sent for review (UTC)
``selection``       how it got into the queue: ``"top_k"`` (the worst suspects) or ``"random_audit"`` (a simple
                    random sample of the *unflagged* items, which is what makes a whole-dataset estimate possible)
"""

from __future__ import annotations

import hashlib
import io
import math
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from audit.results import RunResults, atomic_write_bytes, atomic_write_text

LEDGER_FILE = "review.parquet"
VERDICTS = ("correct", "wrong", "unsure")
ITEM_KINDS = ("image", "object")
SELECTIONS = ("top_k", "random_audit")
LEDGER_COLUMNS = [
    "item_id", "item_kind", "sample_id", "given_label", "suggested_label", "score", "reason", "verdict",
    "corrected_label", "reviewer", "reviewed_at", "tool", "content_hash", "exported_at", "selection",
]
_TIME_COLUMNS = ("reviewed_at", "exported_at")
_TEXT_COLUMNS = [c for c in LEDGER_COLUMNS if c not in ("score", *_TIME_COLUMNS)]
# Columns an export row brings that a verdict row may leave empty: kept from the ledger when a verdict arrives.
_EXPORT_COLUMNS = ("sample_id", "given_label", "suggested_label", "score", "reason", "content_hash", "exported_at",
                   "selection")
OBJECT_BOX_COLUMNS = ["x", "y", "w", "h", "xn", "yn", "wn", "hn", "image_width", "image_height"]
REVIEW_TAGS = {f"review:{verdict}": verdict for verdict in VERDICTS}


class ReviewError(ValueError):
    """Bad review input: a ledger or answer file that does not fit, named with the record at fault."""


# ------------------------------------------------------------------------------------------------ ledger I/O


def empty_ledger() -> pd.DataFrame:
    """A ledger with no rows and the right columns and types."""
    return normalise_ledger(pd.DataFrame(columns=LEDGER_COLUMNS))


def _text(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, float) and math.isnan(value):
        return None
    if value is pd.NA or value is pd.NaT:
        return None
    return str(value)


def normalise_ledger(rows: pd.DataFrame, where: str = "ledger") -> pd.DataFrame:
    """Ledger columns in order, indexed by ``item_id``, text as Python ``str``/None, times as UTC (microseconds).

    Missing columns are added empty, so an integration may return only what it knows (a verdict and the item);
    an image's ``sample_id`` defaults to its ``item_id``. Bad kinds or verdicts are refused with the item named.
    """
    if "item_id" not in rows.columns and rows.index.name in ("item_id", "sample_id", "object_id"):
        table = rows.rename_axis("item_id").reset_index()
    else:
        table = rows.reset_index(drop=True)
    for column in LEDGER_COLUMNS:
        if column not in table.columns:
            table[column] = None
    table = table[LEDGER_COLUMNS].copy()
    for column in _TEXT_COLUMNS:
        table[column] = pd.Series([_text(v) for v in table[column]], index=table.index, dtype=object)
    table["score"] = pd.to_numeric(table["score"], errors="coerce").astype(float)
    for column in _TIME_COLUMNS:
        table[column] = pd.to_datetime(table[column], utc=True, errors="raise", format="mixed").dt.as_unit("us")
    if table["item_id"].isna().any():
        rows_at = np.flatnonzero(table["item_id"].isna().to_numpy())[:5].tolist()
        raise ReviewError(f"{where}: rows {rows_at} have no item_id")
    table["item_kind"] = table["item_kind"].map(lambda v: v or "image")
    bad_kind = ~table["item_kind"].isin(ITEM_KINDS)
    if bad_kind.any():
        row = table[bad_kind].iloc[0]
        raise ReviewError(f"{where}: item {row['item_id']!r} has item_kind {row['item_kind']!r}; "
                          f"expected one of {', '.join(ITEM_KINDS)}")
    bad_verdict = table["verdict"].notna() & ~table["verdict"].isin(VERDICTS)
    if bad_verdict.any():
        row = table[bad_verdict].iloc[0]
        raise ReviewError(f"{where}: item {row['item_id']!r} has verdict {row['verdict']!r}; "
                          f"expected one of {', '.join(VERDICTS)} or empty")
    images = table["item_kind"] == "image"
    table.loc[images & table["sample_id"].isna(), "sample_id"] = table.loc[images & table["sample_id"].isna(),
                                                                           "item_id"]
    return table.set_index("item_id")


def ledger_path(run: str | os.PathLike | RunResults) -> Path:
    """``review.parquet`` of a run folder (a path that already ends in ``.parquet`` is taken as the file)."""
    path = Path(run.path if isinstance(run, RunResults) else run)
    return path if path.suffix == ".parquet" else path / LEDGER_FILE


def read_ledger(run: str | os.PathLike | RunResults) -> pd.DataFrame:
    """The ledger of a run folder, or an empty one when nobody has exported or reviewed anything yet."""
    file = ledger_path(run)
    if not file.is_file():
        return empty_ledger()
    try:
        table = pd.read_parquet(file)
    except Exception as exc:  # pyarrow raises several types for a broken file
        raise ReviewError(f"review ledger {file} could not be read: {exc}") from exc
    return normalise_ledger(table, where=f"review ledger {file}")


def write_ledger(run: str | os.PathLike | RunResults, ledger: pd.DataFrame) -> Path:
    """Write the ledger atomically (readers never see half a file); returns its path."""
    file = ledger_path(run)
    table = normalise_ledger(ledger).reset_index()
    buffer = io.BytesIO()
    table.to_parquet(buffer, index=False)
    atomic_write_bytes(file, buffer.getvalue())
    return file


def _key(row: Mapping[str, Any] | pd.Series) -> tuple[str, str]:
    return str(row["item_kind"]), str(row["item_id"])


def _rows(ledger: pd.DataFrame) -> dict[tuple[str, str], dict[str, Any]]:
    return {_key(row): row for row in ledger.reset_index().to_dict("records")}


def _from_rows(rows: Iterable[dict[str, Any]]) -> pd.DataFrame:
    rows = list(rows)
    return normalise_ledger(pd.DataFrame(rows, columns=LEDGER_COLUMNS))


def _same_content(old: Mapping[str, Any], new: Mapping[str, Any]) -> bool:
    """True when the item is provably unchanged: same non-empty content hash and same given label."""
    old_hash, new_hash = _text(old.get("content_hash")), _text(new.get("content_hash"))
    return bool(old_hash) and old_hash == new_hash and _text(old.get("given_label")) == _text(new.get("given_label"))


def record_export(ledger: pd.DataFrame, queue: pd.DataFrame, tool: str,
                  exported_at: datetime | None = None) -> pd.DataFrame:
    """The ledger with the queue's items noted as sent to ``tool`` (verdict pending).

    An item that already has a verdict keeps it when its content hash and given label are unchanged (a re-export
    must not erase a review); an item that changed starts over, because the old verdict was about other content.
    """
    exported_at = exported_at or datetime.now(UTC)
    rows = _rows(normalise_ledger(ledger))
    for new in normalise_ledger(queue, where="review queue").reset_index().to_dict("records"):
        new.update(tool=tool, exported_at=exported_at, verdict=None, corrected_label=None, reviewer=None,
                   reviewed_at=None)
        old = rows.get(_key(new))
        if old is not None and _text(old.get("verdict")) and _same_content(old, new):
            old.update({c: new[c] for c in ("score", "reason", "suggested_label", "exported_at", "tool")})
            continue
        rows[_key(new)] = new
    return _from_rows(rows.values())


def merge_verdicts(ledger: pd.DataFrame, verdicts: pd.DataFrame) -> pd.DataFrame:
    """Fold imported answers into the ledger; merging the same answers twice changes nothing.

    Per item the latest verdict (by ``reviewed_at``) wins; an incoming verdict replaces an older or equally old
    one, and takes the export columns it lacks (score, reason, content hash...) from the ledger row. Rows without
    a verdict (a task nobody answered yet) only add items the ledger does not know.
    """
    rows = _rows(normalise_ledger(ledger))
    incoming = normalise_ledger(verdicts, where="imported verdicts").reset_index()
    times = np.array([t.value if pd.notna(t) else np.iinfo(np.int64).min for t in incoming["reviewed_at"]],
                     dtype=np.int64)
    order = np.lexsort((np.arange(len(incoming)), times))
    for new in incoming.iloc[order].to_dict("records"):
        key = _key(new)
        old = rows.get(key)
        if not _text(new["verdict"]):
            if old is None:
                rows[key] = new
            continue
        if old is not None and _text(old.get("verdict")) and pd.notna(old.get("reviewed_at")) and (
                pd.isna(new["reviewed_at"]) or old["reviewed_at"] > new["reviewed_at"]):
            continue
        if old is not None:
            for column in _EXPORT_COLUMNS:
                if _missing(new.get(column)):
                    new[column] = old.get(column)
        rows[key] = new
    return _from_rows(rows.values())


def _missing(value: Any) -> bool:
    return value is None or (not isinstance(value, str) and bool(pd.isna(value)))


def verdict_for(given_label: str | None, answer: str | None,
                unsure: Iterable[str] = ()) -> tuple[str | None, str | None]:
    """``(verdict, corrected_label)`` from a reviewer's answer: the given label -> correct, an unsure marker ->
    unsure, another class -> wrong with that class, no answer -> not reviewed."""
    if answer is None:
        return None, None
    if answer in set(unsure):
        return "unsure", None
    if given_label is not None and answer == given_label:
        return "correct", None
    return "wrong", answer


def verdicts_from_tags(tags: Mapping[str, Iterable[str]], queue: pd.DataFrame, *, tool: str = "fiftyone",
                       reviewer: str | None = None, reviewed_at: datetime | None = None,
                       corrected: Mapping[str, str] | None = None) -> pd.DataFrame:
    """Ledger rows from review tags (``review:correct``, ``review:wrong``, ``review:unsure``) per item id.

    For tools such as the FiftyOne App where a reviewer tags samples; ``corrected`` optionally maps an item to the
    label the reviewer set. An item with two different review tags is refused: the answer is ambiguous.
    """
    queue = normalise_ledger(queue, where="review queue")
    reviewed_at = reviewed_at or datetime.now(UTC)
    corrected = corrected or {}
    rows = []
    for item_id, item_tags in tags.items():
        found = sorted({REVIEW_TAGS[t] for t in item_tags if t in REVIEW_TAGS})
        if not found:
            continue
        if len(found) > 1:
            raise ReviewError(f"item {item_id!r} has conflicting review tags {', '.join(f'review:{v}' for v in found)}")
        if item_id not in queue.index:
            raise ReviewError(f"item {item_id!r} has a review tag but is not in the review queue")
        row = queue.loc[[item_id]].reset_index().iloc[0].to_dict()
        row.update(verdict=found[0], corrected_label=corrected.get(item_id) if found[0] == "wrong" else None,
                   reviewer=reviewer, reviewed_at=reviewed_at, tool=tool)
        rows.append(row)
    return _from_rows(rows)


# ----------------------------------------------------------------------------------------------- the queue


def _load(run: str | os.PathLike | RunResults) -> RunResults:
    return run if isinstance(run, RunResults) else RunResults.load(run)


def given_labels(samples: pd.DataFrame) -> pd.Series:
    """The label under review per sample: the shipped ``label``, else the audited (consensus) label."""
    label = samples["label"].astype(object) if "label" in samples else pd.Series(None, index=samples.index)
    if "mistakes_audited_label" in samples:
        label = label.where(label.notna(), samples["mistakes_audited_label"].astype(object))
    return label.map(_text)


def object_content_hash(image_hash: str | None, x: float, y: float, w: float, h: float) -> str:
    """An object's identity for "has it changed": its image's content hash plus its box (to 0.1 px)."""
    if not image_hash:
        return ""
    text = f"{image_hash}|{x:.1f},{y:.1f},{w:.1f},{h:.1f}"
    return hashlib.sha1(text.encode("utf-8")).hexdigest()


def _reason(row: Mapping[str, Any], given: str | None) -> str:
    parts = []
    quality = row.get("mistakes_label_quality")
    if quality is not None and not pd.isna(quality):
        parts.append(f"label quality {float(quality):.3f}")
    suggested = _text(row.get("mistakes_suggested_label"))
    if suggested is not None:
        text = f"the model suggests {suggested!r}"
        if row.get("mistakes_suggested_prob") is not None and not pd.isna(row.get("mistakes_suggested_prob")):
            text += f" (p={float(row['mistakes_suggested_prob']):.2f}"
            if row.get("mistakes_given_prob") is not None and not pd.isna(row.get("mistakes_given_prob")):
                text += f" vs p={float(row['mistakes_given_prob']):.2f} for {given!r}"
            text += ")"
        parts.append(text)
    audited = _text(row.get("mistakes_audited_label"))
    if audited is not None and audited != given:
        parts.append(f"the annotators' consensus is {audited!r}")
    return "; ".join(parts) or "flagged by the audit"


def _queue_rows(table: pd.DataFrame, kind: str, given: pd.Series, hashes: pd.Series, selection: str,
                reason_prefix: str = "") -> pd.DataFrame:
    records = []
    for rank, (item_id, row) in enumerate(table.iterrows(), start=1):
        row = row.to_dict()
        quality = row.get("mistakes_label_quality")
        record = {
            "item_id": str(item_id), "item_kind": kind,
            "sample_id": str(item_id) if kind == "image" else str(row["sample_id"]),
            "given_label": given.get(item_id), "suggested_label": _text(row.get("mistakes_suggested_label")),
            "score": 1.0 - float(quality) if quality is not None and not pd.isna(quality) else np.nan,
            "reason": reason_prefix + _reason(row, given.get(item_id)),
            "content_hash": hashes.get(item_id) or "", "selection": selection,
            "filepath": _text(row.get("filepath")), "rank": rank,
        }
        if kind == "object":
            record.update({c: row.get(c) for c in OBJECT_BOX_COLUMNS})
        records.append(record)
    columns = [*LEDGER_COLUMNS, "filepath", "rank", *(OBJECT_BOX_COLUMNS if kind == "object" else [])]
    frame = pd.DataFrame(records, columns=columns)
    ledger_part = normalise_ledger(frame[LEDGER_COLUMNS], where="review queue")
    extra = frame.set_index("item_id")[[c for c in columns if c not in LEDGER_COLUMNS]]
    return ledger_part.join(extra)


def _ranked_suspects(table: pd.DataFrame) -> pd.DataFrame:
    issues = table[table["mistakes_is_issue"].fillna(False).astype(bool)]
    quality = issues["mistakes_label_quality"].to_numpy(float) if "mistakes_label_quality" in issues else (
        np.zeros(len(issues)))
    order = np.lexsort((issues.index.to_numpy(str), np.nan_to_num(quality, nan=np.inf)))
    return issues.iloc[order]


def build_review_queue(run: str | os.PathLike | RunResults, k: int | None = 50, *,
                       objects: pd.DataFrame | None = None, ledger: pd.DataFrame | None = None) -> pd.DataFrame:
    """The top-``k`` suspects of a run, worst (lowest ``mistakes_label_quality``) first, as review rows.

    The result has the ledger columns (verdict empty) plus ``filepath`` and ``rank`` (and, for objects, the
    canonical box columns ``x, y, w, h, xn, yn, wn, hn, image_width, image_height``), indexed by ``item_id``.
    Items a reviewer already confirmed correct in ``ledger`` (content unchanged) are left out, so nobody reviews
    the same thing twice. ``objects`` (or the run folder's ``objects.parquet``) is an object table with the same
    ``mistakes_*`` columns; its top-``k`` suspect objects come after the images. ``k=None`` takes every suspect.
    """
    results = _load(run)
    samples = results.samples
    parts = []
    hashes = samples["content_hash"].map(_text) if "content_hash" in samples else pd.Series(dtype=object)
    if "mistakes_is_issue" in samples:
        suspects = _ranked_suspects(samples)
        if ledger is not None:
            suspects = suspects.drop(confirmed_correct(ledger, samples), errors="ignore")
        suspects = suspects if k is None else suspects.head(k)
        parts.append(_queue_rows(suspects, "image", given_labels(samples), hashes, "top_k"))
    if objects is None and (results.path / "objects.parquet").is_file():
        objects = pd.read_parquet(results.path / "objects.parquet")
        if "object_id" in objects.columns:
            objects = objects.set_index("object_id")
    if objects is not None and "mistakes_is_issue" in objects:
        suspects = _ranked_suspects(objects)
        if ledger is not None:
            suspects = suspects.drop(confirmed_correct_objects(ledger, objects, samples), errors="ignore")
        suspects = (suspects if k is None else suspects.head(k)).copy()
        if "filepath" not in suspects and "filepath" in samples:
            suspects["filepath"] = samples["filepath"].reindex(suspects["sample_id"].astype(str)).to_numpy()
        object_hashes = pd.Series({
            object_id: object_content_hash(hashes.get(str(row["sample_id"])), row["x"], row["y"], row["w"], row["h"])
            for object_id, row in suspects.iterrows()}, dtype=object)
        given = suspects["label"].map(_text)
        parts.append(_queue_rows(suspects, "object", given, object_hashes, "top_k"))
    if not parts:
        return _queue_rows(samples.iloc[:0], "image", pd.Series(dtype=object), pd.Series(dtype=object), "top_k")
    return pd.concat(parts) if len(parts) > 1 else parts[0]


def draw_audit_sample(run: str | os.PathLike | RunResults, n: int, *, seed: int = 0,
                      ledger: pd.DataFrame | None = None) -> pd.DataFrame:
    """A simple random sample of ``n`` *unflagged* labelled images, as review rows (``selection="random_audit"``).

    Reviewing it is what lets :func:`estimate_error_rate` say something about the part of the dataset the audit
    did not flag; without it the estimate covers the flagged part only. Items already in ``ledger`` are not drawn
    again (the sample stays a simple random sample of the items not yet reviewed).
    """
    results = _load(run)
    samples = results.samples
    given = given_labels(samples)
    flagged = samples["mistakes_is_issue"].fillna(False).astype(bool) if "mistakes_is_issue" in samples else (
        pd.Series(False, index=samples.index))
    pool = samples.index[~flagged.to_numpy() & given.notna().to_numpy()]
    if ledger is not None and len(ledger):
        known = normalise_ledger(ledger)
        pool = pool.difference(known.index[known["item_kind"] == "image"])
    rng = np.random.default_rng(seed)
    chosen = rng.choice(len(pool), size=min(n, len(pool)), replace=False) if len(pool) else np.array([], int)
    picked = samples.loc[pool[np.sort(chosen)]]
    hashes = samples["content_hash"].map(_text) if "content_hash" in samples else pd.Series(dtype=object)
    return _queue_rows(picked, "image", given, hashes, "random_audit", reason_prefix="random audit sample; ")


# ------------------------------------------------------------------------------------ what the ledger tells


def _current(ledger: pd.DataFrame, kind: str, given: pd.Series, hashes: pd.Series) -> pd.DataFrame:
    """Ledger rows of ``kind`` whose item still exists with the same non-empty hash and the same given label."""
    rows = normalise_ledger(ledger)
    rows = rows[(rows["item_kind"] == kind) & rows.index.isin(given.index)]
    if rows.empty:
        return rows
    now_hash = hashes.reindex(rows.index).map(_text)
    now_label = given.reindex(rows.index).map(_text)
    same_label = (rows["given_label"] == now_label) | (rows["given_label"].isna() & now_label.isna())  # unlabelled
    same = (rows["content_hash"].notna() & (rows["content_hash"] != "") & (rows["content_hash"] == now_hash)
            & same_label)
    return rows[same.fillna(False).astype(bool)]


def current_image_rows(ledger: pd.DataFrame, samples: pd.DataFrame) -> pd.DataFrame:
    """The ledger's image rows whose sample still exists unchanged (same non-empty content hash and given label):
    the verdicts that still hold for this run (and the exports still pending for the same content)."""
    hashes = samples["content_hash"] if "content_hash" in samples else pd.Series("", index=samples.index)
    return _current(ledger, "image", given_labels(samples), hashes)


def confirmed_correct(ledger: pd.DataFrame, samples: pd.DataFrame) -> pd.Index:
    """Sample ids a reviewer confirmed correct whose image (content hash) and label have not changed since.

    The runner leaves these out of the suspects. An empty content hash counts as "unknown, maybe changed": not
    flagging an item again is only safe when we can prove it is the same item.
    """
    hashes = samples["content_hash"] if "content_hash" in samples else pd.Series("", index=samples.index)
    rows = _current(ledger, "image", given_labels(samples), hashes)
    return pd.Index(rows.index[rows["verdict"] == "correct"], name="sample_id")


def confirmed_correct_objects(ledger: pd.DataFrame, objects: pd.DataFrame, samples: pd.DataFrame) -> pd.Index:
    """Object ids a reviewer confirmed correct whose image, box and label have not changed since."""
    image_hash = samples["content_hash"] if "content_hash" in samples else pd.Series("", index=samples.index)
    hashes = pd.Series({object_id: object_content_hash(_text(image_hash.get(str(row["sample_id"]))), row["x"], row["y"],
                                                       row["w"], row["h"])
                        for object_id, row in objects.iterrows()}, dtype=object)
    rows = _current(ledger, "object", objects["label"].map(_text), hashes)
    return pd.Index(rows.index[rows["verdict"] == "correct"], name="object_id")


def wilson_interval(errors: float, n: float, confidence: float = 0.95,
                    population: int | None = None) -> tuple[float, float]:
    """Wilson score interval for a proportion from a simple random sample (statsmodels' ``wilson``).

    With ``population`` (finite, sampled without replacement) the sample counts as ``n / fpc`` draws with
    ``fpc = (N - n) / (N - 1)``, so the interval narrows to the exact value when the whole population was seen.
    """
    from statsmodels.stats.proportion import proportion_confint

    if n <= 0:
        return 0.0, 1.0
    rate = errors / n
    if population is not None:
        if n >= population:
            return rate, rate
        fpc = (population - n) / (population - 1)
        n = n / fpc
        errors = rate * n
    low, high = proportion_confint(errors, n, alpha=1 - confidence, method="wilson")
    return float(max(0.0, low)), float(min(1.0, high))


@dataclass(frozen=True)
class Stratum:
    """One stratum of the dataset: ``size`` items, ``reviewed`` of them (decisive verdicts), ``wrong`` wrong."""

    name: str
    size: int
    reviewed: int
    wrong: int


def stratified_error_rate(strata: list[Stratum], confidence: float = 0.95) -> dict[str, Any]:
    """Error rate of the union of strata, each reviewed by simple random sampling without replacement.

    Estimate: ``sum(W_h * p_h)`` with ``W_h = N_h / N``. Interval: a Wilson interval per stratum (finite
    population corrected, see :func:`wilson_interval`) combined with MOVER, the method of variance estimates
    recovery for a sum of independent proportions (Zou & Donner 2008, *Stat Med* 27:1693; Newcombe's hybrid
    score interval for two strata): ``L = est - sqrt(sum(W_h^2 (p_h - l_h)^2))``, ``U = est + sqrt(sum(W_h^2
    (u_h - p_h)^2))``. Unlike a normal approximation it stays inside [0, 1] and is not zero-width when a stratum
    shows no errors. A stratum with items but no reviews makes the estimate impossible (returns None values).
    """
    total = sum(s.size for s in strata)
    parts: dict[str, dict[str, Any]] = {}
    estimate = low_sq = high_sq = 0.0
    known = True
    for stratum in strata:
        if stratum.size == 0:
            parts[stratum.name] = {"size": 0, "reviewed": 0, "wrong": 0, "rate": None, "lower": None, "upper": None}
            continue
        if stratum.reviewed == 0:
            known = False
            parts[stratum.name] = {"size": stratum.size, "reviewed": 0, "wrong": 0, "rate": None, "lower": None,
                                   "upper": None}
            continue
        rate = stratum.wrong / stratum.reviewed
        low, high = wilson_interval(stratum.wrong, stratum.reviewed, confidence, population=stratum.size)
        weight = stratum.size / total
        estimate += weight * rate
        low_sq += (weight * (rate - low)) ** 2
        high_sq += (weight * (high - rate)) ** 2
        parts[stratum.name] = {"size": stratum.size, "reviewed": stratum.reviewed, "wrong": stratum.wrong,
                               "rate": rate, "lower": low, "upper": high}
    if not known or total == 0:
        return {"estimate": None, "lower": None, "upper": None, "confidence": confidence, "strata": parts}
    return {"estimate": estimate, "lower": max(0.0, estimate - math.sqrt(low_sq)),
            "upper": min(1.0, estimate + math.sqrt(high_sq)), "confidence": confidence, "strata": parts}


def precision_at_k(ledger: pd.DataFrame, k: int | None = None, confidence: float = 0.95) -> dict[str, Any]:
    """Precision of the audit's flags as reviewed: of the top-``k`` queued suspects (by score) that got a decisive
    verdict, the share reviewers found wrong, with its Wilson interval.

    Unsure and unreviewed items are counted but left out of the ratio. ``k=None``: every queued suspect.
    """
    rows = normalise_ledger(ledger)
    rows = rows[rows["selection"].fillna("top_k") == "top_k"]  # no selection recorded: an exported suspect
    order = np.lexsort((rows.index.to_numpy(str), -rows["score"].fillna(-np.inf).to_numpy(float)))
    top = rows.iloc[order] if k is None else rows.iloc[order[:k]]
    wrong = int((top["verdict"] == "wrong").sum())
    correct = int((top["verdict"] == "correct").sum())
    decisive = wrong + correct
    low, high = wilson_interval(wrong, decisive, confidence) if decisive else (None, None)
    return {"k": len(top) if k is None else k, "n_items": len(top), "n_reviewed": decisive, "n_wrong": wrong,
            "n_correct": correct, "n_unsure": int((top["verdict"] == "unsure").sum()),
            "n_pending": int(top["verdict"].isna().sum()),
            "precision": wrong / decisive if decisive else None, "lower": low, "upper": high,
            "confidence": confidence}


def estimate_error_rate(ledger: pd.DataFrame, samples: pd.DataFrame, confidence: float = 0.95) -> dict[str, Any]:
    """Estimated share of wrong labels in the whole dataset, with a confidence interval.

    Two strata by the current run's flag: *flagged* (``mistakes_is_issue``) and *unflagged* labelled images.
    The flagged stratum is estimated from every reviewed flagged item; the unflagged one only from the random
    audit sample (``selection="random_audit"``, :func:`draw_audit_sample`), because anything else reviewed there
    was not drawn at random. Only verdicts about unchanged items count (same content hash and label); unsure
    verdicts are left out (treated as missing at random). Combined by :func:`stratified_error_rate`.

    Caveat: reviewed suspects are usually the *top*-k, the most suspicious flags, not a random sample of the
    flags; when not every flag was reviewed the flagged stratum's rate, and so the estimate, leans high (the safe
    side for a ``max_estimated_error_rate`` gate). Without an audit sample of the unflagged part the result is
    ``complete=False``: ``estimate``/``lower``/``upper`` then cover the flagged part only (unflagged assumed
    clean), a lower bound on the true rate.
    """
    given = given_labels(samples)
    labelled = given.notna()
    flagged = (samples["mistakes_is_issue"].fillna(False).astype(bool) if "mistakes_is_issue" in samples
               else pd.Series(False, index=samples.index)) & labelled
    unflagged = labelled & ~flagged
    hashes = samples["content_hash"] if "content_hash" in samples else pd.Series("", index=samples.index)
    rows = _current(ledger, "image", given, hashes)
    decisive = rows[rows["verdict"].isin(["correct", "wrong"])]
    in_flagged = decisive[flagged.reindex(decisive.index).to_numpy(bool)]
    in_audit = decisive[unflagged.reindex(decisive.index).to_numpy(bool) & (decisive["selection"] == "random_audit")]
    strata = [Stratum("flagged", int(flagged.sum()), len(in_flagged), int((in_flagged["verdict"] == "wrong").sum())),
              Stratum("unflagged", int(unflagged.sum()), len(in_audit), int((in_audit["verdict"] == "wrong").sum()))]
    complete = strata[1].size == 0 or strata[1].reviewed > 0
    if not complete:
        strata[1] = Stratum("unflagged", strata[1].size, strata[1].size, 0)  # assumed clean: a lower bound
    result = stratified_error_rate(strata, confidence)
    if not complete:
        result["strata"]["unflagged"] = {"size": strata[1].size, "reviewed": 0, "wrong": 0, "rate": None,
                                         "lower": None, "upper": None}
    unsure = rows["verdict"] == "unsure"
    result.update(n_items=int(labelled.sum()), complete=complete, n_unsure=int(unsure.sum()),
                  method="stratified: flagged / unflagged (random audit sample); Wilson per stratum with finite "
                         "population correction, combined by MOVER (Zou & Donner 2008)")
    return result


# ------------------------------------------------------------------------------------------ corrected labels


@dataclass(frozen=True)
class CorrectionFiles:
    """What :func:`write_corrected_labels` wrote: the corrected manifest and the list of changes."""

    manifest: Path
    changes: Path
    n_applied: int
    n_skipped: int


CHANGES_COLUMNS = ["sample_id", "filepath", "old_label", "new_label", "reviewer", "reviewed_at", "status"]


def _read_manifest(path: Path) -> pd.DataFrame:
    try:
        if path.suffix.lower() == ".parquet":
            return pd.read_parquet(path)
        if path.suffix.lower() in (".csv", ".tsv", ".txt"):
            return pd.read_csv(path, sep="\t" if path.suffix.lower() == ".tsv" else ",", dtype=str,
                               keep_default_na=False)
    except Exception as exc:  # pandas/pyarrow raise many types for a broken file
        raise ReviewError(f"manifest {path} could not be read: {exc}") from exc
    raise ReviewError(f"manifest {path} must be .csv, .tsv or .parquet")


def _write_table(table: pd.DataFrame, path: Path) -> None:
    buffer = io.BytesIO()
    if path.suffix.lower() == ".parquet":
        table.to_parquet(buffer, index=False)
    else:
        table.to_csv(buffer, index=False, sep="\t" if path.suffix.lower() == ".tsv" else ",")
    atomic_write_bytes(path, buffer.getvalue())


def _manifest_sample_ids(manifest: pd.DataFrame, source: Path, samples: pd.DataFrame) -> pd.Series:
    """The run's sample id of each manifest row: its ``sample_id`` column, else its file path resolved the way
    the manifest loader resolves it (relative to the manifest's folder) and matched to the run's file paths."""
    if "sample_id" in manifest.columns:
        return manifest["sample_id"].astype(str)
    if "filepath" not in manifest.columns:
        raise ReviewError(f"manifest {source} has neither a 'sample_id' nor a 'filepath' column")
    base = source.parent.resolve()
    by_path = {os.path.normpath(str(p)): sid for sid, p in samples["filepath"].items() if isinstance(p, str)}
    ids = [by_path.get(os.path.normpath(str(p if Path(p).is_absolute() else base / p))) for p in
           manifest["filepath"].astype(str)]
    return pd.Series(ids, index=manifest.index, dtype=object)


def write_corrected_labels(ledger: pd.DataFrame, run: str | os.PathLike | RunResults,
                           out_dir: str | os.PathLike | None = None, *,
                           source: str | os.PathLike | None = None) -> CorrectionFiles:
    """Write a corrected copy of the user's manifest and ``label_changes.csv``; never touch the source.

    Images reviewed ``wrong`` with a corrected label get it in the copy's ``label`` column; every other cell is
    copied as read (CSV cells as text). A row whose label no longer equals the reviewed ``given_label`` (someone
    fixed it already) is skipped and listed as a conflict. ``source`` defaults to the run's manifest
    (``summary["dataset"]["path"]``); a run from a folder or FiftyOne gets a fresh ``filepath,label,split``
    manifest built from the run's samples. Output goes to ``out_dir`` (default ``<run>/corrections``) as
    ``<source stem>.corrected<suffix>``.
    """
    results = _load(run)
    samples = results.samples
    dataset = results.summary.get("dataset", {}) or {}
    if source is None and dataset.get("kind") == "manifest" and dataset.get("path"):
        source = dataset["path"]
    out = Path(out_dir) if out_dir is not None else results.path / "corrections"
    if source is not None:
        source = Path(source)
        if not source.is_file():
            raise ReviewError(f"manifest {source} does not exist")
        manifest = _read_manifest(source)
        target = out / f"{source.stem}.corrected{source.suffix}"
        if target.resolve() == source.resolve():
            raise ReviewError(f"refusing to overwrite the source manifest {source}; choose another output folder")
        row_ids = _manifest_sample_ids(manifest, source, samples)
    else:
        manifest = pd.DataFrame({"filepath": samples["filepath"].astype(str),
                                 "label": samples["label"].map(lambda v: _text(v) or ""),
                                 "split": samples.get("split", "all")}).reset_index(drop=True)
        target = out / "labels.corrected.csv"
        row_ids = pd.Series(samples.index.astype(str), index=manifest.index)
    if "label" not in manifest.columns:
        manifest["label"] = ""
    row_of = {sid: i for i, sid in row_ids.items() if sid is not None}
    rows = normalise_ledger(ledger)
    wrong = rows[(rows["item_kind"] == "image") & (rows["verdict"] == "wrong") & rows["corrected_label"].notna()]
    changes = []
    corrected = manifest.copy()
    corrected["label"] = corrected["label"].astype(object)
    for item_id, row in wrong.iterrows():
        position = row_of.get(str(item_id))
        filepath = _text(samples["filepath"].get(item_id)) if "filepath" in samples else None
        change = {"sample_id": item_id, "filepath": filepath, "old_label": row["given_label"],
                  "new_label": row["corrected_label"], "reviewer": row["reviewer"], "reviewed_at": row["reviewed_at"]}
        if position is None:
            change["status"] = "skipped: not in the manifest"
        else:
            current = _text(manifest.at[position, "label"])
            current = current if current else None
            if current != row["given_label"]:
                change["status"] = f"skipped: the manifest's label is now {current!r}, not the reviewed " \
                                   f"{row['given_label']!r}"
            else:
                corrected.at[position, "label"] = row["corrected_label"]
                change["status"] = "applied"
        changes.append(change)
    _write_table(corrected, target)
    changes_table = pd.DataFrame(changes, columns=CHANGES_COLUMNS)
    changes_file = out / "label_changes.csv"
    atomic_write_text(changes_file, changes_table.to_csv(index=False))
    applied = int((changes_table["status"] == "applied").sum())
    return CorrectionFiles(manifest=target, changes=changes_file, n_applied=applied,
                           n_skipped=len(changes_table) - applied)
