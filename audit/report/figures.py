"""The report's own Plotly figures (the embedding map); checks draw theirs in their own modules.

Every string that reaches a figure (class names, sample ids) comes from outside and is passed through
:func:`audit.presentation.plot_text` first: Plotly renders a subset of HTML in titles, ticks, legends and hover
labels, so a label such as ``<b>cat</b>`` would otherwise change the display.

A function returns ``None`` when the run lacks what its figure needs (no projection...); the report then explains
what is missing instead of drawing an empty plot.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from audit.presentation import PALETTE, layout, plot_text

if TYPE_CHECKING:
    import plotly.graph_objects as go

    from audit.results import RunResults

# Above this many classes the map is one trace coloured by class code (a legend of hundreds helps nobody).
MAX_LEGEND_CLASSES = 40


# ------------------------------------------------------------------------------------------------------ map


@dataclass
class MapSample:
    """The points the map draws: every suspect plus a class-stratified random sample of the others."""

    points: pd.DataFrame
    n_with_coordinates: int
    n_suspects: int
    n_background_shown: int
    n_suspects_shown: int | None = None  # None: every suspect

    def __post_init__(self) -> None:
        if self.n_suspects_shown is None:
            self.n_suspects_shown = self.n_suspects

    @property
    def decimated(self) -> bool:
        return len(self.points) < self.n_with_coordinates


def is_suspect(samples: pd.DataFrame) -> pd.Series:
    if "mistakes_is_issue" not in samples:
        return pd.Series(False, index=samples.index)
    return samples["mistakes_is_issue"].fillna(False).astype(bool)


def map_sample(run: RunResults, max_background: int = 20_000, seed: int = 0,
               max_suspects: int | None = None) -> MapSample | None:
    """Choose the map's points: the suspects (at most ``max_suspects``: the worst, by label quality then id, the
    review queue's order), and at most ``max_background`` others (stratified by class).

    A browser stays responsive with a few tens of thousands of WebGL points; beyond that the others are thinned
    evenly within each class (at least one point per class) so the map's shape and every class survive. At a
    million samples a 5% suspect rate is 50,000 suspects, so they are capped too.
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
    suspects = located[suspect]
    if max_suspects is not None and len(suspects) > max_suspects:
        quality = (suspects["mistakes_label_quality"].to_numpy(float) if "mistakes_label_quality" in suspects
                   else np.zeros(len(suspects)))
        worst = np.lexsort((suspects.index.to_numpy(str), np.nan_to_num(quality, nan=np.inf)))[:max_suspects]
        suspects = suspects.iloc[np.sort(worst)]
    points = pd.concat([others, suspects])
    return MapSample(points=points, n_with_coordinates=len(located), n_suspects=int(suspect.sum()),
                     n_background_shown=len(others), n_suspects_shown=len(suspects))


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
    figure.update_layout(**layout(
        height=620, margin={"l": 20, "r": 20, "t": 20, "b": 20}, hovermode="closest", dragmode="zoom",
        xaxis={"showticklabels": False, "title": None, "zeroline": False, "showgrid": False},
        yaxis={"showticklabels": False, "title": None, "zeroline": False, "showgrid": False},
        legend={"itemsizing": "constant", "title": {"text": "label"}},
    ))
    return figure
