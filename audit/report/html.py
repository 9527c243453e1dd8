"""Assemble the self-contained HTML report and the suspects CSV from a run folder (nothing is recomputed).

The page is one file: plotly.js, the figures (JSON rendered by ``Plotly.newPlot``), the thumbnails (base64 data
URIs), the style sheet and the script are all inlined, so it opens offline, can be mailed or attached to a CI
run. Labels, annotator names and paths come from outside, so the Jinja2 environment autoescapes everything;
the only unescaped insertions are the package's own CSS/JS/plotly.js and JSON made safe for ``<script>``
by :func:`script_json`.

Large runs stay light: the map draws every suspect and at most ``ReportLimits.map_background_points`` other
points, the gallery and the tables are capped, and only some points get a hover thumbnail; the report says
where it shows a subset.
"""

from __future__ import annotations

import base64
import functools
import io
import json
import math
import os
import random
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
from jinja2 import Environment, PackageLoader, Undefined
from markupsafe import Markup

from audit.report import figures
from audit.results import RunResults, atomic_write_text

if TYPE_CHECKING:
    import plotly.graph_objects as go

HTML_FILE = "index.html"
SUSPECTS_FILE = "suspects.csv"

PROBLEM_DESCRIPTIONS = {
    "missing_file": "the file does not exist",
    "empty_file": "the file is empty (0 bytes)",
    "corrupt_image": "the file could not be decoded as an image",
    "truncated_image": "the image file is cut short",
    "missing_label": "the sample has no label",
    "converted_16bit": "16-bit image scaled to 8 bits",
    "converted_cmyk": "CMYK image converted to RGB",
    "converted_palette": "palette image converted to RGB",
    "converted_alpha": "transparency flattened onto white",
    "exif_rotated": "rotated according to its EXIF orientation",
}

# Columns of suspects.csv (the review queue), in order, each taken from samples.parquet when present.
SUSPECT_COLUMNS = {
    "filepath": "filepath",
    "split": "split",
    "label": "label",
    "mistakes_audited_label": "audited_label",
    "mistakes_suggested_label": "suggested_label",
    "mistakes_label_quality": "label_quality",
    "mistakes_suggested_prob": "suggested_prob",
    "mistakes_given_prob": "given_prob",
    "agreement_consensus_label": "consensus_label",
    "agreement_consensus_quality": "consensus_quality",
    "agreement_rate": "agreement_rate",
    "agreement_n_annotations": "n_annotations",
    "problems": "problems",
}


@dataclass(frozen=True)
class ReportLimits:
    """Caps that keep a report of a very large run quick to open; the report states each one it applies."""

    map_background_points: int = 20_000  # non-suspect points on the map (all suspects are always drawn)
    gallery: int = 200  # worst suspects shown as cards
    suspect_thumbnails: int = 1_000  # worst suspects with a hover thumbnail on the map
    other_thumbnails: int = 300  # random other map points with a hover thumbnail
    table_rows: int = 200  # rows of each long table (new/resolved suspects, unreadable samples)
    thumbnail_px: int = 64
    matrix_classes: int = 30
    distribution_classes: int = 60
    seed: int = 0


# ------------------------------------------------------------------------------------------------ entry point


def render_report(run_dir: Path, baseline_dir: Path | None = None, *, limits: ReportLimits | None = None) -> Path:
    """Write ``run_dir/index.html`` and ``run_dir/suspects.csv`` from the stored results; return the HTML path.

    ``baseline_dir`` is the previous run for "since last week"; without it, the baseline recorded in the run's
    summary is used when its folder still exists.

    Raises
    ------
    audit.results.RunNotFoundError
        ``run_dir`` or ``baseline_dir`` is not a run folder.
    """
    limits = limits or ReportLimits()
    run = RunResults.load(run_dir)
    baseline, baseline_note = _load_baseline(run, baseline_dir)
    suspects = suspect_table(run)
    atomic_write_text(run.path / SUSPECTS_FILE,
                      spreadsheet_safe(suspects).to_csv(index_label="sample_id", float_format="%.6g"))
    context = build_context(run, baseline, suspects, limits)
    context["baseline_note"] = baseline_note
    page = environment().get_template("report.html.j2").render(**context)
    target = run.path / HTML_FILE
    atomic_write_text(target, page)
    return target


_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def spreadsheet_safe(table: pd.DataFrame) -> pd.DataFrame:
    """Prefix text cells that a spreadsheet would run as a formula (CSV injection) with a quote; labels, ids and
    paths come from outside. Numbers are left as they are."""

    def defuse(value: object) -> object:
        return "'" + value if isinstance(value, str) and value.startswith(_FORMULA_START) else value

    out = table.copy()
    for column in out.columns:
        if out[column].dtype == object or pd.api.types.is_string_dtype(out[column]):
            out[column] = out[column].map(defuse)
    out.index = out.index.map(defuse)
    return out


def _load_baseline(run: RunResults, baseline_dir: Path | None) -> tuple[RunResults | None, str | None]:
    if baseline_dir is not None:
        return RunResults.load(baseline_dir), None
    recorded = run.summary.get("baseline") or {}
    path = recorded.get("path") if isinstance(recorded, dict) else None
    if not path:
        return None, None
    if (Path(path) / "summary.json").is_file():
        return RunResults.load(path), None
    return None, f"the baseline recorded for this run ({path}) is no longer there"


# ---------------------------------------------------------------------------------------------- environment


@functools.cache
def environment() -> Environment:
    """Jinja2 environment over the packaged templates; autoescaping on for everything it renders."""
    env = Environment(
        loader=PackageLoader("audit.report", "templates"),
        autoescape=True,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters.update(pct=format_percent, num=format_number, fmt=format_float, dash=format_value)
    return env


def asset(name: str) -> Markup:
    """A file shipped with the templates (CSS, JS): trusted, inlined as is."""
    env = environment()
    source, _, _ = env.loader.get_source(env, name)
    return Markup(source)


def plotly_js() -> Markup:
    """The plotly.js bundle, inlined once (checked to contain no closing script tag)."""
    from plotly.offline import get_plotlyjs

    source = get_plotlyjs()
    if "</script" in source.lower():
        source = source.replace("</script", "<\\/script").replace("</SCRIPT", "<\\/SCRIPT")
    return Markup(source)


def script_json(text: str) -> Markup:
    """JSON text made safe inside ``<script>``: no ``<``, ``>``, ``&`` or line separators can end or break it.

    The replacements are JSON escapes, so ``JSON.parse`` gives back exactly the original strings.
    """
    for raw, escaped in (("&", "\\u0026"), ("<", "\\u003c"), (">", "\\u003e"),
                         ("\u2028", "\\u2028"), ("\u2029", "\\u2029")):
        text = text.replace(raw, escaped)
    return Markup(text)


def figure_json(figure: go.Figure | None) -> Markup | None:
    if figure is None:
        return None
    return script_json(figure.to_json())


def _missing(value: Any) -> bool:
    if value is None or isinstance(value, Undefined):
        return True
    try:
        return bool(pd.isna(value))
    except (TypeError, ValueError):
        return False


def format_percent(value: Any, digits: int = 1) -> str:
    return "—" if _missing(value) else f"{float(value) * 100:.{digits}f}%"


def format_number(value: Any) -> str:
    if _missing(value):
        return "—"
    number = float(value)
    return f"{int(number):,}" if number.is_integer() else f"{number:,.2f}"


def format_float(value: Any, digits: int = 3) -> str:
    if _missing(value):
        return "—"
    number = float(value)
    if number != 0 and abs(number) < 10 ** -digits:
        return f"{number:.{max(digits - 2, 1)}e}"
    return f"{number:.{digits}f}"


def format_value(value: Any) -> str:
    if _missing(value):
        return "—"
    if isinstance(value, float):
        return format_float(value)
    if isinstance(value, list | tuple):
        return ", ".join(str(v) for v in value) or "—"
    return str(value)


# ------------------------------------------------------------------------------------------------ suspects


def suspect_table(run: RunResults) -> pd.DataFrame:
    """The review queue: every suspected mislabel, worst (lowest label quality) first."""
    samples = run.samples
    present = [c for c in SUSPECT_COLUMNS if c in samples]
    if "mistakes_is_issue" not in samples:
        return pd.DataFrame(columns=["rank", *[SUSPECT_COLUMNS[c] for c in present]]).rename_axis("sample_id")
    issues = samples[figures.is_suspect(samples)]
    if "mistakes_label_quality" in issues:
        order = np.lexsort((issues.index.to_numpy(str), issues["mistakes_label_quality"].to_numpy(float)))
        issues = issues.iloc[order]
    table = issues[present].rename(columns=SUSPECT_COLUMNS)
    table.insert(0, "rank", np.arange(1, len(table) + 1))
    table.index.name = "sample_id"
    return table


# ----------------------------------------------------------------------------------------------- thumbnails


def thumbnail_uri(path: str | os.PathLike | None, size: int = 64) -> str | None:
    """A small PNG or JPEG data URI of an image (whichever is smaller), or None when it cannot be read.

    Decoding goes through :func:`audit.sources.load_image`, so 16-bit, CMYK, palette, alpha and EXIF-rotated
    files look the way the embedder saw them.
    """
    if path is None or (isinstance(path, float) and math.isnan(path)):
        return None
    from PIL import Image

    from audit.sources import load_image

    image, _ = load_image(path, draft_size=size)
    if image is None:
        return None
    image.thumbnail((size, size), Image.Resampling.LANCZOS)
    encoded: list[tuple[int, str, bytes]] = []
    for kind, options in (("png", {}), ("jpeg", {"quality": 78})):
        buffer = io.BytesIO()
        image.save(buffer, format=kind.upper(), **options)
        encoded.append((buffer.tell(), kind, buffer.getvalue()))
    _, kind, data = min(encoded)
    return f"data:image/{kind};base64,{base64.b64encode(data).decode('ascii')}"


def make_thumbnails(paths: dict[str, Any], size: int) -> dict[str, str | None]:
    """Thumbnails for ``{sample_id: filepath}``, decoded in parallel (image decoding releases the GIL)."""
    if not paths:
        return {}
    ids = list(paths)
    workers = max(1, min(8, os.cpu_count() or 1))
    with ThreadPoolExecutor(max_workers=workers) as pool:
        uris = list(pool.map(lambda sid: thumbnail_uri(paths[sid], size), ids))
    return dict(zip(ids, uris, strict=True))


# -------------------------------------------------------------------------------------------------- context


def check_state(run: RunResults, name: str) -> dict[str, Any]:
    """``{"status": "ok"|"skipped"|"absent", "metrics": dict, "reason": str}`` for a check."""
    metrics = run.check_metrics(name)
    if metrics is None:
        return {"status": "absent", "metrics": {}, "reason": f"the {name} check did not run"}
    if "skipped" in metrics:
        return {"status": "skipped", "metrics": {}, "reason": str(metrics["skipped"])}
    return {"status": "ok", "metrics": metrics, "reason": ""}


def build_context(run: RunResults, baseline: RunResults | None, suspects: pd.DataFrame,
                  limits: ReportLimits) -> dict[str, Any]:
    """Everything the templates show, as plain values (the templates only format and escape)."""
    samples = run.samples
    rng = random.Random(limits.seed)
    sample = figures.map_sample(run, limits.map_background_points, limits.seed)

    # Thumbnails: the worst suspects (gallery and map hover) and a random sample of the other map points.
    worst = list(suspects.index[: max(limits.gallery, limits.suspect_thumbnails if sample is not None else 0)])
    others: list[str] = []
    if sample is not None:
        background = list(sample.points.index[~sample.points.index.isin(suspects.index)])
        others = rng.sample(background, min(limits.other_thumbnails, len(background)))
    wanted = list(dict.fromkeys(worst + others))
    thumbs = make_thumbnails(dict(zip(wanted, samples.loc[wanted, "filepath"], strict=True)), limits.thumbnail_px)
    hover_ids = [s for s in wanted if thumbs.get(s)]
    if sample is not None:
        on_map = set(sample.points.index)
        hover_ids = [s for s in hover_ids if s in on_map]
    thumbnail_index = {s: i for i, s in enumerate(hover_ids)}
    hover_thumbs = _hover_entries(samples.loc[hover_ids], thumbs)

    mistakes = check_state(run, "mistakes")
    agreement = check_state(run, "agreement")
    context: dict[str, Any] = {
        "title": f"label-audit report: {_dataset_name(run)}",
        "generated_at": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "plotly_js": plotly_js(),
        "css": asset("report.css"),
        "js": asset("report.js"),
        "limits": asdict(limits),
        "headline": _headline(run, mistakes, agreement, baseline),
        "gate": _gate(run),
        "distribution": _distribution(run, baseline, limits),
        "map": _map(run, sample, thumbnail_index, hover_thumbs, limits),
        "gallery": _gallery(run, suspects, thumbs, mistakes, limits),
        "suggestions": _suggestions(run, mistakes, limits),
        "agreement": _agreement(run, agreement, mistakes),
        "pairs": _pairs(mistakes),
        "problems": _problems(run, limits),
        "since": _since(run, baseline, suspects, thumbs, limits),
        "details": _details(run),
        "suspects_file": SUSPECTS_FILE,
    }
    return context


def _hover_entries(rows: pd.DataFrame, thumbs: dict[str, str | None]) -> list[dict[str, Any]]:
    """What the map's hover preview shows for each point that has a thumbnail (raw text: set as textContent)."""
    def column(name: str) -> list[Any]:
        return list(rows[name]) if name in rows else [None] * len(rows)

    suspect = figures.is_suspect(rows)
    return [
        {"src": thumbs[sample_id], "id": sample_id, "label": format_value(label),
         "suggested": format_value(suggested), "score": format_float(score), "suspect": bool(flag)}
        for sample_id, label, suggested, score, flag in zip(
            rows.index, column("label"), column("mistakes_suggested_label"), column("mistakes_label_quality"),
            suspect, strict=True)
    ]


def _dataset_name(run: RunResults) -> str:
    dataset = run.summary.get("dataset") or {}
    return str(dataset.get("name") or dataset.get("path") or run.name)


def _date(text: Any) -> str:
    if not text:
        return "—"
    try:
        moment = datetime.fromisoformat(str(text))
    except ValueError:
        return str(text)
    if moment.tzinfo is not None:
        moment = moment.astimezone(UTC)
        return moment.strftime("%Y-%m-%d %H:%M UTC")
    return moment.strftime("%Y-%m-%d %H:%M")


def _headline(run: RunResults, mistakes: dict, agreement: dict, baseline: RunResults | None) -> dict[str, Any]:
    summary = run.summary
    counts = summary.get("counts") or {}
    samples = run.samples
    n_samples = counts.get("samples", len(samples))
    unreadable = counts.get("unreadable")
    if unreadable is None and "readable" in samples:
        unreadable = int((~samples["readable"].astype(bool)).sum())
    m = mistakes["metrics"]
    a = agreement["metrics"]
    embedder = summary.get("embedder") or {}
    weights = embedder.get("pretrained") or embedder.get("checkpoint")
    return {
        "dataset": summary.get("dataset") or {},
        "dataset_name": _dataset_name(run),
        "run_name": run.name,
        "created": _date(summary.get("created_at")),
        "embedder": embedder,
        "embedder_name": embedder.get("name") or embedder.get("model") or embedder.get("kind") or "—",
        "weights": weights,
        "projection": summary.get("projection") or {},
        "n_samples": n_samples,
        "n_unreadable": unreadable,
        "n_classes": counts.get("classes", len(run.class_names)),
        "mistakes": mistakes,
        "n_issues": m.get("n_issues"),
        "issue_rate": m.get("issue_rate"),
        "label_health": m.get("label_health"),
        "cv_accuracy": m.get("cv_accuracy"),
        "agreement": agreement,
        "krippendorff_alpha": a.get("krippendorff_alpha"),
        "fleiss_kappa": a.get("fleiss_kappa"),
        "percent_agreement": a.get("percent_agreement"),
        "n_annotators": a.get("n_annotators"),
        "baseline_name": baseline.name if baseline is not None else None,
        "version": (summary.get("versions") or {}).get("label_audit"),
    }


def _gate(run: RunResults) -> dict[str, Any] | None:
    gate = run.summary.get("gate")
    if not isinstance(gate, dict) or "passed" not in gate:
        return None
    rules = []
    for rule in gate.get("rules") or []:
        known = {"name", "value", "threshold", "passed"}
        extra = {k: v for k, v in rule.items() if k not in known and not isinstance(v, dict | list)}
        rules.append({"name": rule.get("name"), "value": rule.get("value"), "threshold": rule.get("threshold"),
                      "passed": rule.get("passed"), "note": "; ".join(f"{k}: {format_value(v)}"
                                                                      for k, v in extra.items())})
    return {"passed": bool(gate.get("passed")), "rules": rules}


def _label_counts(run: RunResults) -> pd.Series:
    metrics = run.check_metrics("distribution") or {}
    classes = metrics.get("classes") if "skipped" not in metrics else None
    if classes:
        return pd.Series({str(c): int(v["count"]) for c, v in classes.items()}, dtype=int)
    return run.samples["label"].dropna().astype(str).value_counts()


def _shift(run: RunResults, baseline: RunResults | None) -> dict[str, Any] | None:
    """The label-shift comparison: the distribution check's own when it compared with this baseline, else the
    same function applied to the two runs' stored labels."""
    stored = (run.check_metrics("distribution") or {}).get("baseline")
    if baseline is None:
        return stored if isinstance(stored, dict) else None
    if isinstance(stored, dict) and stored.get("run_name") == baseline.name:
        return stored
    from audit.checks.distribution import compare_with_baseline

    return compare_with_baseline(_label_counts(run).sort_index(), _label_counts(baseline).sort_index(),
                                 baseline.name)


def _distribution(run: RunResults, baseline: RunResults | None, limits: ReportLimits) -> dict[str, Any]:
    state = check_state(run, "distribution")
    metrics = state["metrics"]
    shift = _shift(run, baseline)
    previous = None
    if baseline is not None:
        previous = _label_counts(baseline)
    elif shift and shift.get("deltas"):
        previous = pd.Series({c: d["previous_count"] for c, d in shift["deltas"].items()}, dtype=int)
    by_split = figures.class_counts_by_split(run)
    totals = by_split.sum(axis=1)
    share = totals / totals.sum() if totals.sum() else totals.astype(float)
    rows = []
    for name in by_split.index:
        delta = (shift or {}).get("deltas", {}).get(name) or {}
        rows.append({"name": name, "count": int(totals[name]), "share": float(share[name]),
                     "splits": [int(by_split.at[name, s]) for s in by_split.columns],
                     "previous_share": delta.get("previous_share"), "share_delta": delta.get("share_delta"),
                     "rare": name in (metrics.get("rare_classes") or [])})
    return {
        "state": state,
        "metrics": metrics,
        "splits": list(by_split.columns),
        "rows": rows,
        "figure": figure_json(figures.distribution_figure(run, previous, limits.distribution_classes)),
        "capped": len(by_split.index) > limits.distribution_classes,
        "shift": shift,
        "shift_rows": _shift_rows(shift),
    }


def _shift_rows(shift: dict[str, Any] | None) -> list[dict[str, Any]]:
    if not shift or not shift.get("deltas"):
        return []
    rows = [{"name": c, **d} for c, d in shift["deltas"].items()]
    rows.sort(key=lambda r: (-abs(r.get("share_delta") or 0.0), r["name"]))
    return rows


def _map(run: RunResults, sample: figures.MapSample | None, thumbnail_index: dict[str, int],
         hover_thumbs: list[dict[str, Any]], limits: ReportLimits) -> dict[str, Any]:
    if sample is None:
        projection = run.summary.get("projection") or {}
        reason = projection.get("skipped") or projection.get("note") or (
            "the run has no 2-D projection (no embeddings, or every image was unreadable)")
        return {"figure": None, "reason": reason}
    figure = figures.map_figure(run, sample, thumbnail_index)
    return {
        "figure": figure_json(figure),
        "thumbs": script_json(json.dumps(hover_thumbs)),
        "n_points": len(sample.points),
        "n_total": sample.n_with_coordinates,
        "n_suspects": sample.n_suspects,
        "n_background": sample.n_background_shown,
        "decimated": sample.decimated,
        "n_thumbs": len(hover_thumbs),
        "n_suspect_thumbs": sum(1 for t in hover_thumbs if t["suspect"]),
        "n_missing_coordinates": len(run.samples) - sample.n_with_coordinates,
        "projection": run.summary.get("projection") or {},
    }


def _gallery(run: RunResults, suspects: pd.DataFrame, thumbs: dict[str, str | None], mistakes: dict,
             limits: ReportLimits) -> dict[str, Any]:
    cards = []
    for sample_id, row in suspects.head(limits.gallery).iterrows():
        audited = row.get("audited_label")
        cards.append({
            "id": sample_id,
            "src": thumbs.get(sample_id),
            "label": format_value(row.get("label")),
            "audited": format_value(audited) if not _missing(audited) and audited != row.get("label") else None,
            "suggested": format_value(row.get("suggested_label")),
            "suggested_prob": row.get("suggested_prob"),
            "score": row.get("label_quality"),
            "split": format_value(row.get("split")),
            "filepath": format_value(row.get("filepath")),
            "rank": int(row["rank"]),
        })
    return {"state": mistakes, "cards": cards, "n_total": len(suspects), "capped": len(suspects) > limits.gallery,
            "metrics": mistakes["metrics"]}


def _suggestions(run: RunResults, mistakes: dict, limits: ReportLimits) -> dict[str, Any]:
    matrix = figures.suggestion_matrix(run, limits.matrix_classes) if mistakes["status"] == "ok" else None
    confusion = mistakes["metrics"].get("confusion") or {}
    involved = set(confusion) | {s for row in confusion.values() for s in row}
    return {
        "state": mistakes,
        "figure": figure_json(figures.suggestion_figure(run, limits.matrix_classes)),
        "class_figure": figure_json(figures.class_issue_figure(run)),
        "capped": matrix is not None and len(involved) > limits.matrix_classes,
        "n_classes": len(involved),
    }


def _agreement(run: RunResults, agreement: dict, mistakes: dict) -> dict[str, Any]:
    metrics = agreement["metrics"]
    per_class = [{"name": c, **v} for c, v in sorted((metrics.get("per_class") or {}).items())]
    annotator_mistakes = mistakes["metrics"].get("annotator_mistakes") or {}
    per_annotator = []
    for name, values in sorted((metrics.get("per_annotator") or {}).items()):
        flagged = annotator_mistakes.get(name) or {}
        per_annotator.append({"name": name, **values, "n_mistakes": flagged.get("n_mistakes"),
                              "mistake_rate": flagged.get("rate")})
    low = metrics.get("n_low_agreement")
    threshold = metrics.get("low_agreement_threshold")
    if low is None and threshold is not None and "agreement_rate" in run.samples:
        low = int((run.samples["agreement_rate"] < float(threshold)).sum())
    return {
        "state": agreement,
        "metrics": metrics,
        "kappa_figure": figure_json(figures.kappa_figure(run)),
        "quality_figure": figure_json(figures.annotator_quality_figure(run)),
        "per_class": per_class,
        "per_annotator": per_annotator,
        "n_low_agreement": low,
    }


def _pairs(mistakes: dict) -> dict[str, Any]:
    return {"state": mistakes, "rows": list(mistakes["metrics"].get("overlapping_class_pairs") or [])}


def _problems(run: RunResults, limits: ReportLimits) -> dict[str, Any]:
    samples = run.samples
    counts = (run.summary.get("counts") or {}).get("problems")
    if counts is None and "problems" in samples:
        codes = samples["problems"].fillna("").astype(str).str.split(";").explode()
        counts = codes[codes != ""].value_counts().to_dict()
    rows = [{"code": code, "count": n, "meaning": PROBLEM_DESCRIPTIONS.get(code, "")}
            for code, n in sorted((counts or {}).items(), key=lambda item: (-item[1], item[0]))]
    unreadable = samples[~samples["readable"].astype(bool)] if "readable" in samples else samples.iloc[:0]
    listed = [{"id": sid, "filepath": format_value(row.get("filepath")), "label": format_value(row.get("label")),
               "problems": format_value(row.get("problems"))}
              for sid, row in unreadable.head(limits.table_rows).iterrows()]
    return {"rows": rows, "unreadable": listed, "n_unreadable": len(unreadable),
            "capped": len(unreadable) > limits.table_rows,
            "n_with_problems": (run.summary.get("counts") or {}).get("with_problems")}


def _since(run: RunResults, baseline: RunResults | None, suspects: pd.DataFrame, thumbs: dict[str, str | None],
           limits: ReportLimits) -> dict[str, Any]:
    if baseline is None:
        return {"available": False}
    shift = _shift(run, baseline)
    result: dict[str, Any] = {
        "available": True, "name": baseline.name, "created": _date(baseline.summary.get("created_at")),
        "shift": shift, "shift_rows": _shift_rows(shift)[: limits.table_rows],
        "n_samples_now": len(run.samples), "n_samples_before": len(baseline.samples),
        "n_added": int((~run.samples.index.isin(baseline.samples.index)).sum()),
        "n_removed": int((~baseline.samples.index.isin(run.samples.index)).sum()),
    }
    if "mistakes_is_issue" not in run.samples or "mistakes_is_issue" not in baseline.samples:
        result["suspects_reason"] = "one of the two runs has no mistakes check, so suspects cannot be compared"
        return result
    now = run.samples
    before = baseline.samples
    flagged_now = set(now.index[figures.is_suspect(now)])
    flagged_before = set(before.index[figures.is_suspect(before)])
    new = [s for s in suspects.index if s not in flagged_before]
    resolved = sorted(flagged_before - flagged_now,
                      key=lambda s: (float(before.at[s, "mistakes_label_quality"])
                                     if "mistakes_label_quality" in before else 0.0, s))
    result.update(
        n_new=len(new), n_resolved=len(resolved), n_persisting=len(flagged_now & flagged_before),
        new=[_new_row(now, before, s, thumbs) for s in new[: limits.table_rows]],
        resolved=[_resolved_row(now, before, s) for s in resolved[: limits.table_rows]],
        new_capped=len(new) > limits.table_rows, resolved_capped=len(resolved) > limits.table_rows,
    )
    return result


def _new_row(now: pd.DataFrame, before: pd.DataFrame, sample_id: str, thumbs: dict) -> dict[str, Any]:
    row = now.loc[sample_id]
    if sample_id not in before.index:
        status = "new sample"
    elif before.at[sample_id, "label"] != row["label"]:
        status = f"relabelled (was {format_value(before.at[sample_id, 'label'])})"
    else:
        status = "newly flagged"
    audited = row.get("mistakes_audited_label")
    return {"id": sample_id, "src": thumbs.get(sample_id), "label": format_value(row.get("label")),
            "audited": format_value(audited) if not _missing(audited) and audited != row.get("label") else None,
            "suggested": format_value(row.get("mistakes_suggested_label")),
            "score": row.get("mistakes_label_quality"), "status": status}


def _resolved_row(now: pd.DataFrame, before: pd.DataFrame, sample_id: str) -> dict[str, Any]:
    old = before.loc[sample_id]
    if sample_id not in now.index:
        return {"id": sample_id, "label_before": format_value(old.get("label")), "label_now": "—",
                "score_before": old.get("mistakes_label_quality"), "score_now": None,
                "status": "removed from the dataset"}
    current = now.loc[sample_id]
    relabelled = current.get("label") != old.get("label")
    return {"id": sample_id, "label_before": format_value(old.get("label")),
            "label_now": format_value(current.get("label")),
            "score_before": old.get("mistakes_label_quality"), "score_now": current.get("mistakes_label_quality"),
            "status": "relabelled" if relabelled else "no longer flagged"}


def _details(run: RunResults) -> dict[str, Any]:
    summary = run.summary

    def flat(section: Any) -> list[tuple[str, str]]:
        if not isinstance(section, dict):
            return []
        return [(str(k), json.dumps(v, default=str) if isinstance(v, dict | list) else format_value(v))
                for k, v in section.items()]

    return {
        "timings": flat(summary.get("timings")),
        "versions": flat(summary.get("versions")),
        "config": json.dumps(summary.get("config") or {}, indent=2, default=str),
        "checks": [(name, "skipped: " + str(m["skipped"]) if isinstance(m, dict) and "skipped" in m else "ran")
                   for name, m in (summary.get("checks") or {}).items()],
    }

