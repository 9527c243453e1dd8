"""The weekly view: ``<output_dir>/index.html`` lists every run in the output folder, newest first, with links to
their reports, and plots the trends across runs (samples, issue rate, label health, agreement, annotator quality,
class shares, unreadable samples, gate verdict; each check declares its own series, ``Check.trends``).

It reads only the runs' ``summary.json`` files, leniently: a run written by an older label-audit (another schema
version) still shows what it has, and the page says which metrics it lacks. The runner rewrites the page after
every run; ``label-audit trends`` rebuilds it.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from audit.declarations import Trend, Unavailable, lookup
from audit.presentation import PALETTE, figure_json, layout, plot_text
from audit.results import SCHEMA_VERSION, RunRecord, atomic_write_text, dataset_key, list_runs

TRENDS_FILE = "index.html"
CORE_TRENDS = (
    Trend("Samples", "counts.samples"),
    Trend("Unreadable samples", "counts.unreadable"),
)
MAX_KEYS = 20  # lines per per-key chart (classes, annotators): the largest ones


def declared_trends() -> list[Trend]:
    from audit.checks import REGISTRY

    return [*CORE_TRENDS, *(t for check in REGISTRY.values() for t in check.trends)]


def _value(summary: dict[str, Any], path: str) -> float | None:
    value = lookup(summary, path)
    if isinstance(value, Unavailable | bool) or not isinstance(value, int | float):
        return None
    return float(value)


def _series(runs: list[RunRecord], trend: Trend) -> dict[str, list[float | None]]:
    """One list of values (per run, None where missing) per line: the metric itself, or one per key."""
    if "{key}" not in trend.metric:
        return {trend.title: [_value(r.summary, trend.metric) for r in runs]}
    table_path, _, leaf = trend.metric.partition(".{key}")
    keys: dict[str, float] = {}
    for record in runs:
        table = lookup(record.summary, table_path)
        if isinstance(table, dict):
            for key, row in table.items():
                value = _value(row, leaf.lstrip(".")) if isinstance(row, dict) else None
                keys[str(key)] = max(keys.get(str(key), 0.0), value or 0.0)
    chosen = sorted(keys, key=lambda k: -keys[k])[:MAX_KEYS]
    return {key: [_value(r.summary, trend.metric.format(key=key)) for r in runs] for key in sorted(chosen)}


def _figure(runs: list[RunRecord], trend: Trend) -> Any:
    import plotly.graph_objects as go

    series = _series(runs, trend)
    if not any(v is not None for values in series.values() for v in values):
        return None
    x = [r.created_at for r in runs]
    names = [r.name for r in runs]
    figure = go.Figure()
    for i, (label, values) in enumerate(series.items()):
        figure.add_scatter(x=x, y=values, mode="lines+markers", name=plot_text(label), customdata=names,
                           line={"color": PALETTE[i % len(PALETTE)]}, connectgaps=False,
                           hovertemplate="run %{customdata}<br>%{y" + (":.1%" if trend.percent else ":.4g")
                           + "}<extra>" + plot_text(label) + "</extra>")
    figure.update_layout(**layout(
        height=280, title={"text": plot_text(trend.title), "x": 0, "font": {"size": 14}},
        margin={"l": 60, "r": 20, "t": 40, "b": 40}, showlegend=len(series) > 1,
        yaxis={"tickformat": ".0%"} if trend.percent else {}, xaxis={"title": None},
    ))
    return figure


def _gate_figure(runs: list[RunRecord]) -> Any:
    import plotly.graph_objects as go

    verdicts = [(r.summary.get("gate") or {}).get("passed") for r in runs]
    if all(v is None for v in verdicts):
        return None
    figure = go.Figure(go.Scatter(
        x=[r.created_at for r in runs], y=[None if v is None else int(bool(v)) for v in verdicts],
        mode="markers", customdata=[r.name for r in runs], name="gate",
        marker={"size": 12, "color": ["#1e7b45" if v else "#b42318" for v in verdicts]},
        hovertemplate="run %{customdata}: %{y}<extra></extra>"))
    figure.update_layout(**layout(height=200, title={"text": "Release gate", "x": 0, "font": {"size": 14}},
                                  margin={"l": 60, "r": 20, "t": 40, "b": 40},
                                  yaxis={"tickvals": [0, 1], "ticktext": ["failed", "passed"], "range": [-0.5, 1.5]}))
    return figure


def _missing(runs: list[RunRecord], trends: list[Trend]) -> list[str]:
    """Lines naming the runs that lack a metric the page plots (older schema versions, skipped checks)."""
    notes = []
    for record in runs:
        lacking = [t.title for t in trends if "{key}" not in t.metric and _value(record.summary, t.metric) is None]
        if not record.readable:
            notes.append(f"run {record.name} was written with results schema {record.schema_version} (this "
                         f"label-audit reads {SCHEMA_VERSION}); it is listed with what its summary has"
                         + (f", without: {', '.join(lacking)}" if lacking else ""))
        elif lacking:
            notes.append(f"run {record.name} has no {', '.join(lacking)}")
    return notes


def render_trends(output_dir: str | Path) -> Path:
    """Write ``<output_dir>/index.html`` from the runs found there; return its path."""
    from audit.report.html import asset, environment, plotly_js

    output_dir = Path(output_dir)
    runs = list_runs(output_dir)
    trends = declared_trends()
    datasets: dict[str, list[RunRecord]] = {}
    for record in runs:
        datasets.setdefault(dataset_key(record.summary), []).append(record)
    sections = []
    for key, group in datasets.items():
        name = (group[-1].summary.get("dataset") or {}).get("name") or key
        figures = [(f"{len(sections)}-{i}", figure_json(fig)) for i, fig in
                   enumerate([_figure(group, t) for t in trends] + [_gate_figure(group)]) if fig is not None]
        sections.append({"name": name, "key": key, "n_runs": len(group), "figures": figures,
                         "notes": _missing(group, trends)})
    rows = []
    for record in reversed(runs):
        summary = record.summary
        mistakes = (summary.get("checks") or {}).get("mistakes") or {}
        gate = summary.get("gate") or {}
        report = record.path / "index.html"
        rows.append({"name": record.name, "created": record.created_at.replace("T", " "),
                     "dataset": (summary.get("dataset") or {}).get("name") or dataset_key(summary),
                     "samples": (summary.get("counts") or {}).get("samples"),
                     "issue_rate": mistakes.get("issue_rate") if isinstance(mistakes, dict) else None,
                     "gate": None if "passed" not in gate else bool(gate["passed"]),
                     "link": f"{record.path.name}/index.html" if report.is_file() else None,
                     "schema": record.schema_version})
    page = environment().get_template("trends.html.j2").render(
        title=f"label-audit runs in {output_dir.resolve().name}", rows=rows, sections=sections,
        generated_at=datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"), plotly_js=plotly_js(),
        css=asset("report.css"), js=asset("report.js"))
    target = output_dir / TRENDS_FILE
    atomic_write_text(target, page)
    return target
