"""What every part of the report shares, core sections and the sections checks contribute alike: the report's
size limits, value formatting, Plotly styling and escaping, JSON safe inside ``<script>``, thumbnails, and the
input a section builder receives.

It imports nothing from the checks or the report, so a check module can build its report section from it
without an import cycle (checks -> presentation <- report).
"""

from __future__ import annotations

import base64
import html
import io
import math
import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import pandas as pd
from jinja2 import Undefined
from markupsafe import Markup

if TYPE_CHECKING:
    import plotly.graph_objects as go

    from audit.results import RunResults

# Colour-blind-friendly-first qualitative palette, long enough for most label sets; cycles beyond.
PALETTE = (
    "#4477AA", "#EE6677", "#228833", "#CCBB44", "#66CCEE", "#AA3377", "#BBBBBB", "#EE8866", "#44BB99",
    "#99DDFF", "#FFAABB", "#77AADD", "#AAAA00", "#332288", "#882255", "#117733", "#DDCC77", "#CC6677",
    "#88CCEE", "#999933", "#44AA99", "#AA4499", "#DDDDDD", "#000000",
)
FONT = "system-ui, -apple-system, 'Segoe UI', Roboto, Helvetica, Arial, sans-serif"


@dataclass(frozen=True)
class ReportLimits:
    """Caps that keep a report of a very large run quick to open; the report states each one it applies."""

    map_background_points: int = 20_000  # non-suspect points on the map
    map_suspect_points: int = 20_000  # suspects on the map: the worst ones (review-queue order) beyond this
    gallery: int = 200  # worst suspects shown as cards
    suspect_thumbnails: int = 1_000  # worst suspects with a hover thumbnail on the map
    other_thumbnails: int = 300  # random other map points with a hover thumbnail
    table_rows: int = 200  # rows of each long table (new/resolved suspects, unreadable samples)
    thumbnail_px: int = 64
    matrix_classes: int = 30
    distribution_classes: int = 60
    seed: int = 0


@dataclass
class SectionInput:
    """What a report section's ``build`` receives: the run, its baseline, the limits, the review queue, the state
    of the check the section belongs to, and ``thumbnails(ids)`` (data URIs, made once per report and shared)."""

    run: RunResults
    baseline: RunResults | None
    limits: ReportLimits
    suspects: pd.DataFrame
    thumbnails: Callable[[list[str]], dict[str, str | None]]
    state: dict[str, Any] = field(default_factory=dict)


def check_state(run: RunResults, name: str) -> dict[str, Any]:
    """``{"status": "ok"|"skipped"|"absent", "metrics": dict, "reason": str}`` for a check."""
    metrics = run.check_metrics(name)
    if metrics is None:
        metrics = ((run.summary.get("objects") or {}).get("checks") or {}).get(name)  # an object-level check
    if metrics is None:
        return {"status": "absent", "metrics": {}, "reason": f"the {name} check did not run"}
    if "skipped" in metrics:
        return {"status": "skipped", "metrics": {}, "reason": str(metrics["skipped"])}
    return {"status": "ok", "metrics": metrics, "reason": ""}


def plot_text(value: Any) -> str:
    """Escape an outside string for Plotly's pseudo-HTML text so it is displayed exactly as written."""
    return html.escape("" if value is None else str(value), quote=False)


def layout(**overrides: Any) -> dict[str, Any]:
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


def is_missing(value: Any) -> bool:
    """None, NaN, NA or a Jinja undefined: shown as a dash."""
    if value is None or isinstance(value, Undefined):
        return True
    try:
        return bool(pd.isna(value))
    except (TypeError, ValueError):
        return False


def format_percent(value: Any, digits: int = 1) -> str:
    return "—" if is_missing(value) else f"{float(value) * 100:.{digits}f}%"


def format_number(value: Any) -> str:
    if is_missing(value):
        return "—"
    number = float(value)
    return f"{int(number):,}" if number.is_integer() else f"{number:,.2f}"


def format_float(value: Any, digits: int = 3) -> str:
    if is_missing(value):
        return "—"
    number = float(value)
    if number != 0 and abs(number) < 10 ** -digits:
        return f"{number:.{max(digits - 2, 1)}e}"
    return f"{number:.{digits}f}"


def format_value(value: Any) -> str:
    if is_missing(value):
        return "—"
    if isinstance(value, float):
        return format_float(value)
    if isinstance(value, list | tuple):
        return ", ".join(str(v) for v in value) or "—"
    return str(value)


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




def box_thumbnail(path: str | os.PathLike | None, box: tuple[float, float, float, float], size: int = 128,
                  context: float = 1.0) -> str | None:
    """A data URI of the region around a box (the box and ``context`` times its size on each side) with the box
    drawn on it: how a reviewer sees a suspect object in its image."""
    if path is None or (isinstance(path, float) and math.isnan(path)):
        return None
    from PIL import Image, ImageDraw

    from audit.sources import load_image

    image, _ = load_image(path)
    if image is None:
        return None
    x, y, w, h = (float(v) for v in box)
    left, top = max(0.0, x - context * w), max(0.0, y - context * h)
    right, bottom = min(image.width, x + w + context * w), min(image.height, y + h + context * h)
    region = image.crop((int(left), int(top), math.ceil(right), math.ceil(bottom))).convert("RGB")
    scale = size / max(region.width, region.height, 1)
    region = region.resize((max(1, round(region.width * scale)), max(1, round(region.height * scale))),
                           Image.Resampling.LANCZOS)
    draw = ImageDraw.Draw(region)
    draw.rectangle([(x - int(left)) * scale, (y - int(top)) * scale, (x - int(left) + w) * scale,
                    (y - int(top) + h) * scale], outline=(238, 102, 119), width=2)
    buffer = io.BytesIO()
    region.save(buffer, format="PNG")
    return f"data:image/png;base64,{base64.b64encode(buffer.getvalue()).decode('ascii')}"
