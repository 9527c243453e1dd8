"""Assemble the self-contained HTML report and the suspects CSV from a run folder (nothing is recomputed).

The page is one file: plotly.js, the figures (JSON rendered by ``Plotly.newPlot``), the thumbnails (base64 data
URIs), the style sheet and the script are all inlined, so it opens offline, can be mailed or attached to a CI
run. Labels, annotator names and paths come from outside, so the Jinja2 environment autoescapes everything;
the only unescaped insertions are the package's own CSS/JS/plotly.js and JSON made safe for ``<script>``
by :func:`script_json`.

Large runs stay light: the map draws at most ``ReportLimits.map_suspect_points`` suspects (the worst) and at most
``ReportLimits.map_background_points`` other points, the gallery and the tables are capped, and only some points
get a hover thumbnail; the report says where it shows a subset.
"""

from __future__ import annotations

import functools
import json
import random
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from jinja2 import Environment, PackageLoader
from markupsafe import Markup

from audit.declarations import ReportSection, Tile
from audit.presentation import (
    ReportLimits,
    SectionInput,
    check_state,
    figure_json,
    format_float,
    format_number,
    format_percent,
    format_value,
    is_missing,
    make_thumbnails,
    script_json,
    thumbnail_uri,
)
from audit.report import figures
from audit.results import RunResults, atomic_write_text

__all__ = ["ReportLimits", "render_report", "script_json", "spreadsheet_safe", "suspect_table", "thumbnail_uri"]

HTML_FILE = "index.html"
SUSPECTS_FILE = "suspects.csv"
FINDINGS_FILE = "findings.csv"

PROBLEM_DESCRIPTIONS = {
    "missing_file": "the file does not exist",
    "empty_file": "the file is empty (0 bytes)",
    "corrupt_image": "the file could not be decoded as an image",
    "truncated_image": "the image file is cut short",
    "too_large": "the image has more pixels than label-audit decodes (see audit.sources.images.MAX_DECODE_PIXELS)",
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
    atomic_write_text(run.path / FINDINGS_FILE,
                      spreadsheet_safe(findings_table(run)).to_csv(index=False, float_format="%.6g"))
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


def findings_table(run: RunResults) -> pd.DataFrame:
    """Every sample-level finding of every check besides the suspected mislabels (duplicates, leakage, outliers,
    image quality...): one row per sample and flag, read from the checks' boolean ``<check>_is_<finding>``
    columns, with the matching ``<check>_<finding>_score`` or ``<check>_score`` when there is one. The sibling of
    suspects.csv for the hygiene review."""
    from audit.checks import REGISTRY

    samples = run.samples
    rows = []
    for name in REGISTRY:
        if name == "mistakes":
            continue  # suspects.csv
        prefix = f"{name}_is_"
        for column in [c for c in samples.columns if c.startswith(prefix)]:
            finding = column[len(prefix):]
            flagged = samples[samples[column].fillna(False).astype(bool)]
            score_column = next((c for c in (f"{name}_{finding}_score", f"{name}_score") if c in samples), None)
            for sample_id, row in flagged.iterrows():
                rows.append({"sample_id": sample_id, "check": name, "finding": finding,
                             "score": row[score_column] if score_column else None,
                             "label": row.get("label"), "split": row.get("split"), "filepath": row.get("filepath")})
    return pd.DataFrame(rows, columns=["sample_id", "check", "finding", "score", "label", "split", "filepath"])


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


# -------------------------------------------------------------------------------------------------- context


class _Thumbnails:
    """Thumbnails made once per report and shared by every section that shows images (decoded in parallel)."""

    def __init__(self, samples: pd.DataFrame, size: int) -> None:
        self.samples, self.size = samples, size
        self.made: dict[str, str | None] = {}

    def __call__(self, ids: list[str]) -> dict[str, str | None]:
        wanted = [s for s in dict.fromkeys(ids) if s not in self.made and s in self.samples.index]
        if wanted:
            self.made.update(make_thumbnails(dict(zip(wanted, self.samples.loc[wanted, "filepath"], strict=True)),
                                             self.size))
        return {s: self.made.get(s) for s in ids}


def core_sections() -> list[ReportSection]:
    """The report's own sections; checks add theirs (``Check.report_sections``)."""
    return [
        ReportSection("map", "Map", "_map.html.j2", lambda si: None, 20),  # built with the thumbnails, below
        ReportSection("object-map", "Map of boxes", "_object_map.html.j2", lambda si: _object_map(si), 36),
        ReportSection("problems", "Sample problems", "_problems.html.j2", lambda si: _problems(si.run, si.limits), 80),
        ReportSection("since", "Since last run", "_since.html.j2", lambda si: _since(si), 90),
        ReportSection("details", "Run details", "_details.html.j2", lambda si: _details(si.run), 100),
    ]


def declared_sections() -> list[tuple[str, ReportSection]]:
    """(check name or "", section) for every section, in page order."""
    from audit.checks import REGISTRY

    sections = [("", s) for s in core_sections()]
    sections += [(name, s) for name, check in REGISTRY.items() for s in check.report_sections]
    return sorted(sections, key=lambda item: item[1].order)


def build_context(run: RunResults, baseline: RunResults | None, suspects: pd.DataFrame,
                  limits: ReportLimits) -> dict[str, Any]:
    """Everything the page shows: the headline, then every declared section rendered from its own template (the
    templates only format and escape)."""
    from audit.checks import REGISTRY

    samples = run.samples
    rng = random.Random(limits.seed)
    sample = figures.map_sample(run, limits.map_background_points, limits.seed, limits.map_suspect_points)
    thumbnails = _Thumbnails(samples, limits.thumbnail_px)

    # Thumbnails: the worst suspects (gallery and map hover) and a random sample of the other map points.
    worst = list(suspects.index[: max(limits.gallery, limits.suspect_thumbnails if sample is not None else 0)])
    others: list[str] = []
    if sample is not None:
        background = list(sample.points.index[~sample.points.index.isin(suspects.index)])
        others = rng.sample(background, min(limits.other_thumbnails, len(background)))
    wanted = list(dict.fromkeys(worst + others))
    thumbs = thumbnails(wanted)
    hover_ids = [s for s in wanted if thumbs.get(s)]
    if sample is not None:
        on_map = set(sample.points.index)
        hover_ids = [s for s in hover_ids if s in on_map]
    thumbnail_index = {s: i for i, s in enumerate(hover_ids)}
    hover_thumbs = _hover_entries(samples.loc[hover_ids], thumbs)

    common = {"limits": asdict(limits), "suspects_file": SUSPECTS_FILE}
    env = environment()
    rendered = []
    detection = run.objects is not None
    for check_name, section in declared_sections():
        state = check_state(run, check_name) if check_name else {"status": "ok", "metrics": {}, "reason": ""}
        image_level = check_name and getattr(REGISTRY[check_name], "level", "image") == "image"
        if detection and image_level and state["status"] != "ok":
            continue  # images that carry boxes, not one label each: the image-label sections have nothing to say
        if section.id == "map":
            data = _map(run, sample, thumbnail_index, hover_thumbs, limits)
        else:
            data = section.build(SectionInput(run, baseline, limits, suspects, thumbnails, state))
        if data is None:
            continue
        html = env.get_template(section.template).render(**common, **{section.id.replace("-", "_"): data})
        rendered.append({"id": section.id, "title": section.title, "html": Markup(html)})

    tiles: list[Tile] = []
    facts: list[tuple[str, str]] = []
    for name, check in REGISTRY.items():
        state = check_state(run, name)
        if detection and getattr(check, "level", "image") == "image" and state["status"] != "ok":
            continue  # a box or mask dataset: the image-label checks that did not run have no tile
        tiles += check.tiles(state)
        facts += check.facts(state)
    return {
        "title": f"label-audit report: {_dataset_name(run)}",
        "generated_at": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "plotly_js": plotly_js(),
        "css": asset("report.css"),
        "js": asset("report.js"),
        "headline": _headline(run, baseline),
        "tiles": tiles,
        "facts": facts,
        "gate": _gate(run),
        "sections": rendered,
        **common,
    }


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


def _headline(run: RunResults, baseline: RunResults | None) -> dict[str, Any]:
    summary = run.summary
    counts = summary.get("counts") or {}
    samples = run.samples
    n_samples = counts.get("samples", len(samples))
    unreadable = counts.get("unreadable")
    if unreadable is None and "readable" in samples:
        unreadable = int((~samples["readable"].astype(bool)).sum())
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
        "baseline_name": baseline.name if baseline is not None else None,
        "version": (summary.get("versions") or {}).get("label-audit"),
        "versions": {name: (summary.get("versions") or {}).get(name)
                     for name in ("label-audit", "cleanlab", "open-clip-torch", "torch", "fiftyone")},
    }


def _gate(run: RunResults) -> dict[str, Any] | None:
    """The verdict for the headline: failed rules first, then skipped, then the passes (folded in the page); each
    rule as one sentence (its message already reads as one), with its value and threshold."""
    gate = run.summary.get("gate")
    if not isinstance(gate, dict) or "passed" not in gate:
        return None
    rules = []
    for rule in gate.get("rules") or []:
        status = rule.get("status") or (
            "skipped" if rule.get("skipped") else ("pass" if rule.get("passed") else "fail"))
        op = {"<=": "≤", ">=": "≥"}.get(str(rule.get("op")), str(rule.get("op") or ""))
        threshold = rule.get("threshold")
        rules.append({"name": rule.get("name"), "status": status, "value": rule.get("value"),
                      "bound": "—" if threshold is None else f"{op} {format_value(threshold)}",
                      "sentence": _sentence(str(rule.get("message") or ""))})
    order = {"fail": 0, "skipped": 1, "pass": 2}
    rules.sort(key=lambda r: order.get(r["status"], 3))
    return {"passed": bool(gate.get("passed")), "headline": gate.get("headline"), "rules": rules,
            "failed": [r for r in rules if r["status"] == "fail"],
            "skipped": [r for r in rules if r["status"] == "skipped"],
            "passed_rules": [r for r in rules if r["status"] == "pass"],
            "baseline": (gate.get("baseline") or {}).get("name")}


def _sentence(message: str) -> str:
    """A rule's message as a sentence: capitalised, ending with a full stop."""
    message = message.strip()
    if not message:
        return ""
    message = message[0].upper() + message[1:]
    return message if message.endswith((".", ")")) else message + "."


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
        "n_suspects_shown": sample.n_suspects_shown,
        "n_background": sample.n_background_shown,
        "decimated": sample.decimated,
        "n_thumbs": len(hover_thumbs),
        "n_suspect_thumbs": sum(1 for t in hover_thumbs if t["suspect"]),
        "n_missing_coordinates": len(run.samples) - sample.n_with_coordinates,
        "projection": run.summary.get("projection") or {},
    }


class _TableView:
    """A table seen as a run's samples, so the map's figure functions draw objects as they draw images."""

    def __init__(self, samples: pd.DataFrame, summary: dict[str, Any]) -> None:
        self.samples, self.summary = samples, summary


def _object_map(si: SectionInput) -> dict[str, Any] | None:
    """The map of the audited boxes (their crops' UMAP) coloured by class, suspects ringed; hover shows the box
    in its image."""
    from audit.presentation import box_thumbnail

    objects = si.run.objects
    if objects is None:
        return None
    audited = objects[objects["audited"].fillna(False).astype(bool)] if "audited" in objects else objects
    renames = {"object_mistakes_is_issue": "mistakes_is_issue",
               "object_mistakes_suggested_label": "mistakes_suggested_label",
               "object_mistakes_label_quality": "mistakes_label_quality"}
    view = _TableView(audited.rename(columns=renames), si.run.summary.get("objects") or {})
    limits = si.limits
    sample = figures.map_sample(view, limits.map_background_points, limits.seed, limits.map_suspect_points)
    if sample is None:
        return {"figure": None, "reason": "the boxes have no map (no crop embeddings)"}
    points = sample.points
    worst = points[figures.is_suspect(points)].sort_values("mistakes_label_quality").index[:limits.suspect_thumbnails]
    rest = [i for i in points.index if i not in set(worst)]
    chosen = list(worst) + random.Random(limits.seed).sample(rest, min(limits.other_thumbnails, len(rest)))
    paths = si.run.samples["filepath"].reindex(points.loc[chosen, "sample_id"]).to_numpy()
    thumbs = {i: box_thumbnail(p, tuple(points.loc[i, ["x", "y", "w", "h"]]), limits.thumbnail_px)
              for i, p in zip(chosen, paths, strict=True)}
    hover_ids = [i for i in chosen if thumbs.get(i)]
    entries = _hover_entries(points.loc[hover_ids], thumbs)
    data = _map(view, sample, {s: i for i, s in enumerate(hover_ids)}, entries, limits)
    data["n_missing_coordinates"] = len(audited) - sample.n_with_coordinates
    return data


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


def _since(si: SectionInput) -> dict[str, Any]:
    from audit.checks.distribution import shift_against, shift_rows

    run, baseline, suspects, limits = si.run, si.baseline, si.suspects, si.limits
    if baseline is None:
        return {"available": False}
    shift = shift_against(run, baseline)
    result: dict[str, Any] = {
        "available": True, "name": baseline.name, "created": _date(baseline.summary.get("created_at")),
        "shift": shift, "shift_rows": shift_rows(shift)[: limits.table_rows],
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
    thumbs = si.thumbnails(new[: limits.table_rows])
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
            "audited": format_value(audited) if not is_missing(audited) and audited != row.get("label") else None,
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

