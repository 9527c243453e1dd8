"""How the boxes are distributed: objects per class and split, objects per image, box size, shape and position,
odd boxes (problem codes), and the shift of the class shares against the baseline run.

Box geometry is described on the normalised boxes (a share of the image), so datasets of mixed image sizes
compare: area (``wn * hn``), aspect ratio (``w / h`` in pixels) and the centre's position on a 10 x 10 grid (the
heat map of where objects sit; a class that only ever appears in one corner is a sampling or labelling bias).
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np
import pandas as pd

from audit.checks.base import Check, CheckContext, CheckResult, Requirement, json_safe, register
from audit.checks.distribution import compare_with_baseline
from audit.declarations import ReportSection, Threshold, Trend, Unavailable, as_number

GRID = 10


def object_share_shift(summary: dict[str, Any], baseline: dict[str, Any] | None) -> dict[str, Any] | Unavailable:
    """|class share of the boxes now - in the baseline| per class (a class missing on one side counts 0)."""
    if baseline is None:
        return Unavailable("max_object_class_share_shift needs a baseline run (pass --baseline PREVIOUS or auto)",
                           needs_baseline=True)
    now = ((summary.get("objects") or {}).get("checks") or {}).get("object_distribution", {}).get("classes") or {}
    before = ((baseline.get("objects") or {}).get("checks") or {}).get("object_distribution")
    if not isinstance(before, dict) or "classes" not in before:
        return Unavailable(f"baseline {baseline.get('run_name')!r} has no object distribution")
    out = {}
    for name in list(now) + [c for c in before["classes"] if c not in now]:
        a = as_number((now.get(name) or {"share": 0.0}).get("share"), f"share of {name}")
        b = as_number((before["classes"].get(name) or {"share": 0.0}).get("share"), f"baseline share of {name}")
        out[name] = a if isinstance(a, Unavailable) else (b if isinstance(b, Unavailable) else abs(a - b))
    return out


@register
class ObjectDistributionCheck(Check):
    """Counts, shares and geometry of the audited boxes, per class and split, and their shift since the baseline."""

    name: ClassVar[str] = "object_distribution"
    level: ClassVar[str] = "object"
    requires: ClassVar[tuple[Requirement, ...]] = ()
    description: ClassVar[str] = ("objects per class, split and image; box area, aspect ratio and position; odd "
                                  "boxes; class-share shift against the baseline")
    thresholds: ClassVar[tuple[Threshold, ...]] = (
        Threshold("min_objects_per_class", "objects.checks.object_distribution.classes.{key}.count", ">=", "count",
                  "boxes of class {key}", "every object class must have at least this many boxes"),
        Threshold("max_problem_objects", "objects.checks.object_distribution.n_with_problems", "<=", "count",
                  "boxes with problems", "at most this many odd boxes (zero size, clipped, tiny, whole image, "
                  "exact duplicate)"),
        Threshold("max_object_class_share_shift", "objects.checks.object_distribution.classes.{key}.share", "<=",
                  "rate", "box share shift of class {key}", "no class's share of the boxes may move more than this "
                  "against the baseline", compute=object_share_shift),
    )
    trends: ClassVar[tuple[Trend, ...]] = (
        Trend("Boxes", "objects.checks.object_distribution.n_objects"),
        Trend("Box class shares", "objects.checks.object_distribution.classes.{key}.share", percent=True),
    )
    report_sections: ClassVar[tuple[ReportSection, ...]] = (
        ReportSection("object-distribution", "Boxes", "_object_distribution.html.j2",
                      lambda si: object_distribution_section(si), 12),
    )

    @classmethod
    def summary_line(cls, metrics: dict[str, Any]) -> str:
        return (f"{metrics['n_objects']:,} boxes in {metrics['n_classes']} classes on {metrics['n_images']:,} images, "
                f"{metrics['n_with_problems']:,} with problems")

    def run(self, context: CheckContext) -> CheckResult:
        items = context.samples
        labels = items["label"].astype(str)
        counts = labels.value_counts().sort_index()
        total = int(counts.sum())
        area = (items["wn"] * items["hn"]).to_numpy(float)
        aspect = (items["w"] / items["h"].where(items["h"] > 0)).to_numpy(float)
        cx = np.clip(((items["xn"] + items["wn"] / 2) * GRID).to_numpy(float), 0, GRID - 1e-9)
        cy = np.clip(((items["yn"] + items["hn"] / 2) * GRID).to_numpy(float), 0, GRID - 1e-9)
        cell = np.where(np.isfinite(cx) & np.isfinite(cy), cy.astype(int) * GRID + cx.astype(int), -1)
        heat = np.bincount(cell[cell >= 0], minlength=GRID * GRID).reshape(GRID, GRID)
        per_image = items.groupby("sample_id").size()
        images = context.extra.get("images")
        n_images = len(images) if images is not None else int(per_image.size)
        problems = items["problems"].fillna("").astype(str)
        codes = problems.str.split(";").explode()
        splits = items["split"].astype(str) if "split" in items else pd.Series("all", index=items.index)

        def describe(values: np.ndarray) -> dict[str, float | None]:
            values = values[np.isfinite(values)]
            if not values.size:
                return {"median": None, "p05": None, "p95": None}
            return {"median": float(np.median(values)), "p05": float(np.quantile(values, 0.05)),
                    "p95": float(np.quantile(values, 0.95))}

        metrics: dict[str, Any] = {
            "n_objects": total, "n_classes": len(counts), "n_images": n_images,
            "n_images_without_objects": int(n_images - per_image.size),
            "objects_per_image": describe(per_image.to_numpy(float)),
            "classes": {c: {"count": int(n), "share": float(n / total) if total else 0.0,
                            "area": describe(area[(labels == c).to_numpy()]),
                            "aspect_ratio": describe(aspect[(labels == c).to_numpy()])}
                        for c, n in counts.items()},
            "per_split": {str(s): {c: int(n) for c, n in g.value_counts().sort_index().items()}
                          for s, g in labels.groupby(splits)},
            "area": describe(area), "aspect_ratio": describe(aspect),
            "position_heatmap": heat.tolist(),
            "n_with_problems": int((problems != "").sum()),
            "problems": {str(k): int(v) for k, v in codes[codes != ""].value_counts().items()},
            "baseline": None,
        }
        if context.baseline is not None:
            before = (context.baseline.object_metrics("object_distribution") or {}).get("classes") or {}
            if before:
                metrics["baseline"] = compare_with_baseline(
                    counts, pd.Series({c: v["count"] for c, v in before.items()}, dtype=int), context.baseline.name)
        per_object = pd.DataFrame({"object_distribution_area": area, "object_distribution_aspect_ratio": aspect},
                                  index=items.index)
        return CheckResult(self.name, per_object, json_safe(metrics))


def object_distribution_section(si: Any) -> dict[str, Any] | None:
    """Box counts per class and split, geometry, the position heat map, odd boxes, shift since the baseline."""
    from audit.presentation import figure_json, layout

    if si.state["status"] == "absent":
        return None
    m = si.state["metrics"]
    figure = None
    if m.get("position_heatmap"):
        import plotly.graph_objects as go

        figure = go.Figure(go.Heatmap(z=m["position_heatmap"], colorscale="Blues", showscale=True,
                                      hovertemplate="column %{x}, row %{y}: %{z} box centres<extra></extra>"))
        figure.update_layout(**layout(height=320, width=380, title={"text": "Where box centres sit", "x": 0},
                                      yaxis={"autorange": "reversed", "showticklabels": False},
                                      xaxis={"showticklabels": False}))
    splits = sorted(m.get("per_split") or {})
    rows = [{"name": c, "count": v["count"], "share": v["share"],
             "area": (v.get("area") or {}).get("median"), "aspect": (v.get("aspect_ratio") or {}).get("median"),
             "splits": [(m["per_split"].get(s) or {}).get(c, 0) for s in splits]}
            for c, v in sorted((m.get("classes") or {}).items())]
    return {"state": si.state, "metrics": m, "rows": rows, "splits": splits, "heatmap": figure_json(figure),
            "shift": m.get("baseline")}
