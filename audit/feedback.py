"""Weekly feedback for annotators: one page per person, in Markdown and in self-contained HTML, that a team lead
can send as it is.

``label-audit review feedback RUN`` writes ``RUN/feedback/<annotator>.md`` and ``.html`` (file names from
:func:`audit.checks.review.annotator_slug`) and an ``index.html`` / ``index.md`` listing them. Each page shows:

* the annotator's labels that a reviewer or the consensus overturned (what they gave, what is believed, on whose
  word; the HTML with thumbnails), worst news first: reviewers' verdicts, then the consensus;
* their confusion matrix against the believed labels (rows: their label, columns: believed);
* their agreement and quality across the runs of the same dataset in the run's output folder, oldest first:
  labels, overturned share (computed from each run folder with that run's ledger), agreement with the
  consensus and cleanlab's quality (from each run's agreement check).

What "believed" and "overturned" mean is defined once, in :mod:`audit.checks.review` (``annotators``); the pages
compute it from the run folder (``samples.parquet``, ``annotations.parquet``, ``review.parquet``), so they work
for any run with per-annotator labels, reviewed or not. Names, labels and paths come from outside: the HTML is
autoescaped, Markdown cells are backslash-escaped.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pandas as pd

from audit.checks.review import FEEDBACK_DIR, annotator_slug, annotator_summary, believed_labels, feedback_table
from audit.results import RunResults, atomic_write_text, dataset_key, list_runs

MAX_ROWS = 200  # overturned labels listed per page (the count says how many there are in all)
_MD_SPECIAL = "\\`*_[]<>|~"  # enough inside a sentence or a table cell


class FeedbackError(ValueError):
    """The run cannot give per-annotator feedback (no per-annotator labels); the message says why."""


@dataclass(frozen=True)
class FeedbackPage:
    """One annotator's pages."""

    annotator: str
    markdown: Path
    html: Path
    n_labels: int
    n_overturned: int


def md_escape(value: Any) -> str:
    """Text safe in a Markdown table cell: punctuation that could format or open HTML is backslash-escaped and
    line breaks become spaces."""
    text = "—" if value is None or (isinstance(value, float) and value != value) else str(value)
    text = " ".join(text.splitlines())
    return "".join("\\" + ch if ch in _MD_SPECIAL else ch for ch in text)


def _percent(value: Any) -> str:
    return "—" if value is None or (isinstance(value, float) and value != value) else f"{100 * float(value):.1f}%"


def _number(value: Any) -> str:
    return "—" if value is None or (isinstance(value, float) and value != value) else f"{float(value):.3f}"


def run_feedback(run: RunResults) -> tuple[pd.DataFrame, dict[str, dict[str, Any]]]:
    """The per-label feedback table and the per-annotator summary of one run folder."""
    from audit.review import read_ledger

    annotations = run.annotations
    if annotations is None or not len(annotations):
        raise FeedbackError(f"run {run.name!r} has no per-annotator labels (annotations.parquet): feedback pages "
                            "need to know who labelled what (label-audit run --annotations FILE)")
    table = feedback_table(annotations, believed_labels(run.samples, read_ledger(run.path)))
    return table, annotator_summary(table)


def history(run: RunResults) -> dict[str, list[dict[str, Any]]]:
    """Per annotator, one row per run of the same dataset up to this one (oldest first): labels, overturned share,
    agreement with the consensus and quality."""
    key = dataset_key(run.summary)
    created = str(run.summary.get("created_at") or "")
    out: dict[str, list[dict[str, Any]]] = {}
    for record in list_runs(run.path.parent):
        if dataset_key(record.summary) != key or not record.readable or (created and record.created_at > created):
            continue
        try:
            earlier = run if record.path.resolve() == run.path.resolve() else RunResults.load(record.path)
            _, summary = run_feedback(earlier)
        except (FeedbackError, OSError, ValueError):
            continue
        agreement = ((record.summary.get("checks") or {}).get("agreement") or {})
        per_annotator = agreement.get("per_annotator") or {} if isinstance(agreement, dict) else {}
        for name, values in summary.items():
            quality = per_annotator.get(name) or {}
            out.setdefault(name, []).append({
                "run": record.name, "created": record.created_at.replace("T", " "), "n_labels": values["n_labels"],
                "n_overturned": values["n_overturned"], "overturn_rate": values["overturn_rate"],
                "agreement": quality.get("agreement_with_consensus"), "quality": quality.get("quality"),
                "current": record.path.resolve() == run.path.resolve()})
    return out


def _overturned_rows(table: pd.DataFrame, annotator: str, samples: pd.DataFrame) -> pd.DataFrame:
    mine = table[(table["annotator"] == annotator) & table["overturned"].astype(bool)].copy()
    others: dict[str, list[str]] = {}
    for sample_id, name, label in sorted(zip(table["sample_id"], table["annotator"], table["label"], strict=True)):
        if name != annotator:
            others.setdefault(sample_id, []).append(f"{name}: {label}")
    mine["others"] = [", ".join(others.get(s, [])) for s in mine["sample_id"]]
    mine["filepath"] = mine["sample_id"].map(samples["filepath"]) if "filepath" in samples else None
    mine["by_review"] = mine["source"] == "review"
    return mine.sort_values(["by_review", "sample_id"], ascending=[False, True])


def _confusion(values: dict[str, Any]) -> tuple[list[str], list[str], list[list[int]]]:
    confusion = values.get("confusion") or {}
    rows = sorted(confusion)
    columns = sorted({b for row in confusion.values() for b in row} | set(rows))
    return rows, columns, [[int(confusion[r].get(c, 0)) for c in columns] for r in rows]


def _markdown(name: str, run: RunResults, values: dict[str, Any], overturned: pd.DataFrame,
              past: list[dict[str, Any]]) -> str:
    lines = [f"# Label feedback for {md_escape(name)}", "",
             f"Dataset {md_escape((run.summary.get('dataset') or {}).get('name') or run.name)}, run "
             f"{md_escape(run.name)} ({md_escape(run.summary.get('created_at') or '')}).", "",
             f"Of your {values['n_labels']} labels in this run, {values['n_judged']} could be checked against a "
             f"reviewer's verdict or the consensus; **{values['n_overturned']}** ({_percent(values['overturn_rate'])})"
             f" were overturned: {values['n_overturned_by_review']} by a reviewer, "
             f"{values['n_overturned_by_consensus']} by the consensus.", "",
             "## Labels that were overturned", ""]
    if overturned.empty:
        lines += ["None this run.", ""]
    else:
        lines += ["| Image | Your label | Believed label | Decided by | Other annotators |", "|---|---|---|---|---|"]
        for _, row in overturned.head(MAX_ROWS).iterrows():
            believed = row["believed"] if row["believed"] is not None else f"not {row['rejected']}"
            by = f"review ({row['reviewer']})" if row["by_review"] and row["reviewer"] else (
                "review" if row["by_review"] else "consensus")
            lines.append(f"| {md_escape(row['sample_id'])} | {md_escape(row['label'])} | {md_escape(believed)} | "
                         f"{md_escape(by)} | {md_escape(row['others'] or '—')} |")
        if len(overturned) > MAX_ROWS:
            lines.append(f"\nThe first {MAX_ROWS} of {len(overturned)} are listed.")
        lines.append("")
    rows, columns, matrix = _confusion(values)
    lines += ["## Your labels against the believed labels", "",
              "Rows: your label; columns: the believed label; the diagonal is agreement.", ""]
    if rows:
        lines += ["| yours \\\\ believed | " + " | ".join(md_escape(c) for c in columns) + " |",
                  "|---|" + "---|" * len(columns)]
        for r, counts in zip(rows, matrix, strict=True):
            lines.append(f"| **{md_escape(r)}** | " + " | ".join(str(n) for n in counts) + " |")
    else:
        lines.append("No label of yours could be checked in this run.")
    lines += ["", "## Across runs", "",
              "| Run | Date | Labels | Overturned | Share | Agreement with consensus | Quality (cleanlab) |",
              "|---|---|---|---|---|---|---|"]
    for p in past:
        lines.append(f"| {md_escape(p['run'])} | {md_escape(p['created'])} | {p['n_labels']} | {p['n_overturned']} | "
                     f"{_percent(p['overturn_rate'])} | {_percent(p['agreement'])} | {_number(p['quality'])} |")
    lines += ["", "_Written by label-audit. \"Consensus\" is the audit's belief without a review: the annotators' "
              "consensus, or the model's suggestion where the audit flags the consensus as a likely mistake._", ""]
    return "\n".join(lines)


def _html(name: str, run: RunResults, values: dict[str, Any], overturned: pd.DataFrame,
          past: list[dict[str, Any]], thumbnails: dict[str, str | None]) -> str:
    from audit.report.html import asset, environment

    rows, columns, matrix = _confusion(values)
    listed = []
    for _, row in overturned.head(MAX_ROWS).iterrows():
        listed.append({"id": row["sample_id"], "src": thumbnails.get(row["sample_id"]), "label": row["label"],
                       "believed": row["believed"] if row["believed"] is not None else f"not {row['rejected']}",
                       "by_review": bool(row["by_review"]), "reviewer": row["reviewer"], "others": row["others"],
                       "filepath": row["filepath"]})
    return environment().get_template("feedback.html.j2").render(
        name=name, run_name=run.name, created=run.summary.get("created_at"),
        dataset=(run.summary.get("dataset") or {}).get("name") or run.name, v=values, listed=listed,
        n_overturned=len(overturned), capped=len(overturned) > MAX_ROWS, max_rows=MAX_ROWS,
        rows=rows, columns=columns, matrix=list(zip(rows, matrix, strict=True)), past=past,
        css=asset("report.css"), generated_at=datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"))


def write_feedback(run_dir: str | os.PathLike, out_dir: str | os.PathLike | None = None, *,
                   thumbnail_px: int = 64) -> list[FeedbackPage]:
    """Write every annotator's pages (and an index) into ``out_dir`` (default ``RUN/feedback``)."""
    from audit.presentation import make_thumbnails
    from audit.report.html import environment

    run = RunResults.load(run_dir)
    table, summary = run_feedback(run)
    out = Path(out_dir) if out_dir is not None else run.path / FEEDBACK_DIR
    past = history(run)
    overturned = {name: _overturned_rows(table, name, run.samples) for name in summary}
    wanted = {sid: path for rows in overturned.values() for sid, path in
              zip(rows["sample_id"].head(MAX_ROWS), rows["filepath"].head(MAX_ROWS), strict=True)
              if isinstance(path, str)}
    thumbnails = make_thumbnails(wanted, thumbnail_px)
    pages = []
    for name, values in summary.items():
        slug = annotator_slug(name)
        markdown, html = out / f"{slug}.md", out / f"{slug}.html"
        atomic_write_text(markdown, _markdown(name, run, values, overturned[name], past.get(name, [])))
        atomic_write_text(html, _html(name, run, values, overturned[name], past.get(name, []), thumbnails))
        pages.append(FeedbackPage(name, markdown, html, values["n_labels"], values["n_overturned"]))
    index_rows = [{"name": p.annotator, "html": p.html.name, "markdown": p.markdown.name, "n_labels": p.n_labels,
                   "n_overturned": p.n_overturned, "rate": summary[p.annotator]["overturn_rate"]} for p in pages]
    atomic_write_text(out / "index.html", environment().get_template("feedback.html.j2").render(
        index=index_rows, run_name=run.name, created=run.summary.get("created_at"),
        dataset=(run.summary.get("dataset") or {}).get("name") or run.name, css=_css(),
        generated_at=datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")))
    atomic_write_text(out / "index.md", "\n".join(
        [f"# Label feedback, run {md_escape(run.name)}", "", "| Annotator | Labels | Overturned | Share | Pages |",
         "|---|---|---|---|---|"]
        + [f"| {md_escape(r['name'])} | {r['n_labels']} | {r['n_overturned']} | {_percent(r['rate'])} | "
           f"[HTML]({r['html']}), [Markdown]({r['markdown']}) |" for r in index_rows]) + "\n")
    return pages


def _css() -> Any:
    from audit.report.html import asset

    return asset("report.css")
