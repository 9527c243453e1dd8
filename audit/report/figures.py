"""The report's Plotly figures: pure functions of a run's stored results (nothing is recomputed here).

Every string that reaches a figure (class names, annotator names, sample ids) comes from outside and is passed
through :func:`plot_text` first: Plotly renders a subset of HTML in titles, ticks, legends and hover labels, so a
label such as ``<b>cat</b>`` would otherwise change the display, and escaping makes Plotly show it verbatim.

A function returns ``None`` when the run lacks what its figure needs (a skipped check, no projection...); the
report then explains what is missing instead of drawing an empty plot.
"""

from __future__ import annotations

import html
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

if TYPE_CHECKING:
    import plotly.graph_objects as go

    from audit.results import RunResults

# Colour-blind-friendly-first qualitative palette, long enough for most label sets; cycles beyond.
PALETTE = (
    "#4477AA", "#EE6677", "#228833", "#CCBB44", "#66CCEE", "#AA3377", "#BBBBBB", "#EE8866", "#44BB99",
    "#99DDFF", "#FFAABB", "#77AADD", "#AAAA00", "#332288", "#882255", "#117733", "#DDCC77", "#CC6677",
    "#88CCEE", "#999933", "#44AA99", "#AA4499", "#DDDDDD", "#000000",
)
# Above this many classes the map is one trace coloured by class code (a legend of hundreds helps nobody).
MAX_LEGEND_CLASSES = 40
FONT = "system-ui, -apple-system, 'Segoe UI', Roboto, Helvetica, Arial, sans-serif"


def plot_text(value: Any) -> str:
    """Escape an outside string for Plotly's pseudo-HTML text so it is displayed exactly as written."""
    return html.escape("" if value is None else str(value), quote=False)


def _layout(**overrides: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "template": "plotly_white",
        "font": {"family": FONT, "size": 12, "color": "#1f2933"},
        "margin": {"l": 60, "r": 20, "t": 40, "b": 60},
        "hoverlabel": {"font": {"family": FONT}},
    }
    base.update(overrides)
    return base


def has_check(run: RunResults, name: str) -> bool:
    metrics = run.check_metrics(name)
    return isinstance(metrics, dict) and "skipped" not in metrics


# ---------------------------------------------------------------------------------------------- distribution


def class_counts_by_split(run: RunResults) -> pd.DataFrame:
    """Counts per class (rows) and split (columns): from the distribution check when it ran, else the labels."""
    metrics = run.check_metrics("distribution") if has_check(run, "distribution") else None
    per_split = (metrics or {}).get("per_split")
    if per_split:
        table = pd.DataFrame({split: {c: v["count"] for c, v in classes.items()}
                              for split, classes in per_split.items()})
    else:
        samples = run.samples
        labelled = samples[samples["label"].notna()]
        table = pd.crosstab(labelled["label"].astype(str), labelled["split"].astype(str))
    table = table.fillna(0).astype(int)
    table.index = table.index.astype(str)
    return table.sort_index()


def distribution_figure(run: RunResults, previous_counts: pd.Series | None = None,
                        max_classes: int = 60) -> go.Figure | None:
    """Share of each class per split, with the previous run's overall share beside it.

    Shares rather than counts make runs (and splits) of different sizes comparable; the counts are in the hover.
    With more than ``max_classes`` classes, the largest ones are drawn (the report says so).
    """
    import plotly.graph_objects as go

    table = class_counts_by_split(run)
    if table.empty:
        return None
    totals = table.sum(axis=1)
    if previous_counts is not None:
        totals = totals.add(previous_counts, fill_value=0)
    classes = list(totals.sort_values(ascending=False).index[:max_classes])
    classes.sort()
    table = table.reindex(classes, fill_value=0)
    x = [plot_text(c) for c in classes]
    figure = go.Figure()
    for i, split in enumerate(table.columns):
        counts = table[split]
        shares = counts / counts.sum() if counts.sum() else counts.astype(float)
        figure.add_bar(
            x=x, y=shares.to_numpy(), customdata=counts.to_numpy(), name=plot_text(f"{split} (this run)"),
            marker_color=PALETTE[i % len(PALETTE)],
            hovertemplate="class %{x}<br>%{y:.1%} of the split<br>%{customdata} samples<extra>%{fullData.name}</extra>",
        )
    if previous_counts is not None and previous_counts.sum() > 0:
        before = previous_counts.reindex(classes, fill_value=0)
        figure.add_bar(
            x=x, y=(before / previous_counts.sum()).to_numpy(), customdata=before.to_numpy(),
            name="previous run (all splits)", marker={"color": "rgba(90,90,90,0.35)",
                                                      "line": {"color": "#555", "width": 1}},
            hovertemplate="class %{x}<br>%{y:.1%} last run<br>%{customdata} samples<extra></extra>",
        )
    figure.update_layout(**_layout(
        barmode="group", height=360, yaxis={"title": "share of samples", "tickformat": ".0%"},
        xaxis={"title": "class", "type": "category"}, legend={"orientation": "h", "y": 1.12, "x": 0},
    ))
    return figure


# ------------------------------------------------------------------------------------------------------ map


@dataclass
class MapSample:
    """The points the map draws: every suspect plus a class-stratified random sample of the others."""

    points: pd.DataFrame
    n_with_coordinates: int
    n_suspects: int
    n_background_shown: int

    @property
    def decimated(self) -> bool:
        return len(self.points) < self.n_with_coordinates


def is_suspect(samples: pd.DataFrame) -> pd.Series:
    if "mistakes_is_issue" not in samples:
        return pd.Series(False, index=samples.index)
    return samples["mistakes_is_issue"].fillna(False).astype(bool)


def map_sample(run: RunResults, max_background: int = 20_000, seed: int = 0) -> MapSample | None:
    """Choose the map's points: all suspects, and at most ``max_background`` others (stratified by class).

    A browser stays responsive with a few tens of thousands of WebGL points; beyond that the others are thinned
    evenly within each class (at least one point per class) so the map's shape and every class survive.
    """
    samples = run.samples
    if "umap_x" not in samples or "umap_y" not in samples:
        return None
    located = samples[np.isfinite(samples["umap_x"].to_numpy(float)) & np.isfinite(samples["umap_y"].to_numpy(float))]
    if located.empty:
        return None
    suspect = is_suspect(located)
    others = located[~suspect]
    if len(others) > max_background:
        rng = np.random.default_rng(seed)
        fraction = max_background / len(others)
        keep: list[np.ndarray] = []
        for _, positions in others.groupby(others["label"].astype(str), sort=True).indices.items():
            take = max(1, math.floor(fraction * len(positions)))
            keep.append(rng.choice(positions, size=min(take, len(positions)), replace=False))
        others = others.iloc[np.sort(np.concatenate(keep))]
    points = pd.concat([others, located[suspect]])
    return MapSample(points=points, n_with_coordinates=len(located), n_suspects=int(suspect.sum()),
                     n_background_shown=len(others))


def map_figure(run: RunResults, sample: MapSample | None = None,
               thumbnail_index: dict[str, int] | None = None) -> go.Figure | None:
    """UMAP map: one WebGL point per image coloured by its label, suspected mislabels ringed in black.

    ``customdata`` per point is ``[sample id, label, suggested label, score, thumbnail index]`` (text escaped,
    index -1 when the report carries no thumbnail for the point); the report's script uses the index to show
    the thumbnail beside the map on hover.
    """
    import plotly.graph_objects as go

    sample = sample if sample is not None else map_sample(run)
    if sample is None:
        return None
    points = sample.points
    thumbnail_index = thumbnail_index or {}
    labels = points["label"].astype(object).where(points["label"].notna(), "(no label)").astype(str)
    suggested = (points["mistakes_suggested_label"].astype(object).where(
        points["mistakes_suggested_label"].notna(), "—").astype(str)
                 if "mistakes_suggested_label" in points else pd.Series("—", index=points.index))
    score = (points["mistakes_label_quality"].to_numpy(float) if "mistakes_label_quality" in points
             else np.full(len(points), np.nan))
    custom = np.empty((len(points), 5), dtype=object)
    custom[:, 0] = [plot_text(s) for s in points.index]
    custom[:, 1] = [plot_text(s) for s in labels]
    custom[:, 2] = [plot_text(s) for s in suggested]
    custom[:, 3] = [None if math.isnan(v) else round(float(v), 4) for v in score]
    custom[:, 4] = [thumbnail_index.get(s, -1) for s in points.index]
    hover = ("<b>%{customdata[0]}</b><br>label: %{customdata[1]}<br>suggested: %{customdata[2]}"
             "<br>score: %{customdata[3]:.3f}<extra></extra>")
    x = points["umap_x"].to_numpy(np.float32)
    y = points["umap_y"].to_numpy(np.float32)
    classes = sorted(labels.unique())
    figure = go.Figure()
    if len(classes) <= MAX_LEGEND_CLASSES:
        for i, name in enumerate(classes):
            mask = (labels == name).to_numpy()
            figure.add_trace(go.Scattergl(
                x=x[mask], y=y[mask], customdata=custom[mask], mode="markers", name=plot_text(name),
                marker={"size": 5, "color": PALETTE[i % len(PALETTE)], "opacity": 0.75},
                hovertemplate=hover,
            ))
    else:
        codes = pd.Categorical(labels, categories=classes).codes
        figure.add_trace(go.Scattergl(
            x=x, y=y, customdata=custom, mode="markers", name="samples", showlegend=False,
            marker={"size": 4, "color": codes, "colorscale": "Turbo", "opacity": 0.75}, hovertemplate=hover,
        ))
    suspects = is_suspect(points).to_numpy()
    if suspects.any():
        # The rings only mark: hovering reaches the coloured point underneath, so no hover data is repeated.
        figure.add_trace(go.Scattergl(
            x=x[suspects], y=y[suspects], mode="markers", name="suspected mislabel", hoverinfo="skip",
            marker={"size": 10, "symbol": "circle-open", "color": "#111111", "line": {"width": 1.5}},
        ))
    figure.update_layout(**_layout(
        height=620, margin={"l": 20, "r": 20, "t": 20, "b": 20}, hovermode="closest", dragmode="zoom",
        xaxis={"showticklabels": False, "title": None, "zeroline": False, "showgrid": False},
        yaxis={"showticklabels": False, "title": None, "zeroline": False, "showgrid": False},
        legend={"itemsizing": "constant", "title": {"text": "label"}},
    ))
    return figure


# ------------------------------------------------------------------------------------------ mistakes matrix


def suggestion_matrix(run: RunResults, max_classes: int = 30) -> pd.DataFrame | None:
    """Counts of suspected mislabels by audited label (rows) and suggested label (columns).

    From the mistakes check's ``confusion``; only classes that take part in an issue are kept, and with more
    than ``max_classes`` of those, the ones with the most issues.
    """
    if not has_check(run, "mistakes"):
        return None
    confusion = run.check_metrics("mistakes").get("confusion") or {}
    table = pd.DataFrame(confusion).T.fillna(0)
    if table.empty or table.to_numpy().sum() == 0:
        return None
    table.index = table.index.astype(str)
    table.columns = table.columns.astype(str)
    involvement = table.sum(axis=1).add(table.sum(axis=0), fill_value=0)
    classes = sorted(involvement.sort_values(ascending=False).index[:max_classes])
    return table.reindex(index=classes, columns=classes, fill_value=0).astype(int)


def suggestion_figure(run: RunResults, max_classes: int = 30) -> go.Figure | None:
    """Heatmap of given (audited) versus suggested label among the suspected mislabels."""
    import plotly.graph_objects as go

    table = suggestion_matrix(run, max_classes)
    if table is None:
        return None
    labels = [plot_text(c) for c in table.index]
    z = table.to_numpy().astype(float)
    z[z == 0] = np.nan  # empty cells stay white
    figure = go.Figure(go.Heatmap(
        z=z, x=labels, y=labels, colorscale="Blues", texttemplate="%{z:.0f}", hoverongaps=False,
        colorbar={"title": {"text": "samples"}},
        hovertemplate="given %{y} → suggested %{x}: %{z:.0f}<extra></extra>",
    ))
    side = min(640, 160 + 34 * len(labels))
    figure.update_layout(**_layout(
        height=side, xaxis={"title": "suggested label", "type": "category", "side": "bottom"},
        yaxis={"title": "given label", "type": "category", "autorange": "reversed"},
    ))
    return figure


def class_issue_figure(run: RunResults, max_classes: int = 60) -> go.Figure | None:
    """Share of each class's samples flagged as likely mislabelled."""
    import plotly.graph_objects as go

    if not has_check(run, "mistakes"):
        return None
    per_class = run.check_metrics("mistakes").get("per_class") or {}
    if not per_class:
        return None
    table = pd.DataFrame(per_class).T
    table = table.sort_values("issue_rate", ascending=False).head(max_classes)
    figure = go.Figure(go.Bar(
        x=[plot_text(c) for c in table.index], y=table["issue_rate"].astype(float),
        customdata=np.stack([table["n_issues"].astype(int), table["n"].astype(int)], axis=1),
        marker_color="#EE6677",
        hovertemplate="class %{x}: %{y:.1%}<br>%{customdata[0]} of %{customdata[1]} samples<extra></extra>",
    ))
    figure.update_layout(**_layout(height=300, yaxis={"title": "suspected mislabels", "tickformat": ".0%"},
                                   xaxis={"title": "class (most affected first)", "type": "category"}))
    return figure


# ------------------------------------------------------------------------------------------------ agreement


def kappa_figure(run: RunResults) -> go.Figure | None:
    """Pairwise Cohen's kappa between annotators (blank where a pair shares too few images)."""
    import plotly.graph_objects as go

    if not has_check(run, "agreement"):
        return None
    kappa = run.check_metrics("agreement").get("cohen_kappa_matrix") or {}
    names = kappa.get("annotators") or []
    matrix = kappa.get("matrix")
    if len(names) < 2 or not matrix:
        return None
    z = np.array([[np.nan if v is None else float(v) for v in row] for row in matrix])
    labels = [plot_text(n) for n in names]
    figure = go.Figure(go.Heatmap(
        z=z, x=labels, y=labels, zmin=0, zmax=1, colorscale="RdYlGn", texttemplate="%{z:.2f}",
        hoverongaps=False, colorbar={"title": {"text": "κ"}},
        hovertemplate="%{y} × %{x}: κ = %{z:.3f}<extra></extra>",
    ))
    side = min(560, 180 + 48 * len(labels))
    figure.update_layout(**_layout(
        height=side, width=side + 140, xaxis={"type": "category"},
        yaxis={"type": "category", "autorange": "reversed"},
    ))
    return figure


def annotator_quality_figure(run: RunResults) -> go.Figure | None:
    """Each annotator's agreement with the consensus and cleanlab quality score, side by side."""
    import plotly.graph_objects as go

    if not has_check(run, "agreement"):
        return None
    per_annotator = run.check_metrics("agreement").get("per_annotator") or {}
    if not per_annotator:
        return None
    table = pd.DataFrame(per_annotator).T
    names = [plot_text(n) for n in table.index]
    figure = go.Figure()
    for column, title, colour in (("agreement_with_consensus", "agreement with consensus", "#4477AA"),
                                  ("quality", "annotator quality (cleanlab)", "#228833")):
        if column in table:
            figure.add_bar(x=names, y=pd.to_numeric(table[column], errors="coerce"), name=title,
                           marker_color=colour, hovertemplate="%{x}: %{y:.3f}<extra>" + title + "</extra>")
    figure.update_layout(**_layout(height=300, barmode="group", yaxis={"range": [0, 1]},
                                   xaxis={"type": "category", "title": "annotator"},
                                   legend={"orientation": "h", "y": 1.15, "x": 0}))
    return figure
