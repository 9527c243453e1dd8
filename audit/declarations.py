"""What a check (or a source) offers beyond its computation: gate thresholds, ratcheted metrics, report sections
and tiles, FiftyOne fields, tags and saved views.

These are plain data, declared next to the code that produces the metrics, so the gate, the report and the
FiftyOne export loop over declarations and never name a check's metrics themselves: adding a check is one module
(plus its report template). Nothing here imports a heavy library; callables receive what they need.

Metric paths are dotted keys into ``summary.json`` (``checks.mistakes.issue_rate``); ``{key}`` marks a mapping
whose every key gets its own rule (``checks.mistakes.per_class.{key}.issue_rate`` -> ``max_class_issue_rate[cat]``),
and ``*`` in a ratchet path means "over every key", reduced with ``min`` or ``max``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

Op = Literal["<=", ">="]
ValueKind = Literal["rate", "coefficient", "count", "tolerance", "bool", "number"]


@dataclass(frozen=True)
class Unavailable:
    """A metric a rule needs but the run lacks, and why (the gate fails or skips the rule with this reason).
    ``needs_baseline``: it is missing only because there is no baseline run to compare with."""

    reason: str
    needs_baseline: bool = False


@dataclass(frozen=True)
class Threshold:
    """A release-gate threshold: its config name, the metric it reads, the direction and the kind of value.

    Parameters
    ----------
    name
        Key in the config's ``gate`` section, e.g. ``max_issue_rate``.
    metric
        Dotted path into the summary; ``{key}`` expands to one rule per key of the mapping it stands in.
    op
        ``<=`` for a maximum, ``>=`` for a minimum.
    kind
        What the threshold value is (validated): a share in [0, 1], an agreement coefficient in [-1, 1], a count...
    label
        Words for the value in messages; ``{key}`` is replaced by the quoted key.
    help
        One line for the documentation tables and ``--help``.
    keys_from
        ``"class_names"``: also make a rule for every class of the run that the mapping lacks.
    absent_value
        The value of such an absent key (a class with no samples has count 0); None means unavailable.
    compute
        ``compute(summary, baseline_summary) -> value | {key: value} | Unavailable`` for values that are not
        stored as one key (a ratio, a difference against the baseline).
    """

    name: str
    metric: str
    op: Op
    kind: ValueKind
    label: str
    help: str
    keys_from: Literal["class_names"] | None = None
    absent_value: float | int | None = None
    compute: Callable[[dict[str, Any], dict[str, Any] | None], Any] | None = None

    @property
    def per_key(self) -> bool:
        return "{key}" in self.metric or (self.compute is not None and "{key}" in self.label)


@dataclass(frozen=True)
class Ratchet:
    """A metric that may not get worse than in the baseline run when the gate's ``ratchet`` is on."""

    name: str
    metric: str
    higher_is_better: bool
    reduce: Literal["min", "max"] | None = None


@dataclass(frozen=True)
class Tile:
    """A headline figure in the report (label, value already formatted, a line under it, a tone)."""

    label: str
    value: str
    sub: str = ""
    tone: Literal["", "good", "warn", "bad"] = ""


@dataclass(frozen=True)
class ReportSection:
    """A section of the HTML report contributed by a check.

    ``build(section_input)`` returns the template's context (a dict, available to the template as ``s``) or None to
    leave the section out; ``template`` is a file in ``audit/report/templates/``. Sections are ordered by ``order``
    (core sections: summary 0, map 20, sample problems 80, since last run 90, details 100).
    """

    id: str
    title: str
    template: str
    build: Callable[[Any], dict[str, Any] | None]
    order: int = 50


@dataclass(frozen=True)
class Trend:
    """A metric plotted across runs on the trends page (``reports/index.html``): ``{key}`` in the path draws one
    line per key (a class, an annotator); ``percent`` formats the axis as a share."""

    title: str
    metric: str
    percent: bool = False


FiftyOneKind = Literal["float", "bool", "string", "string_list", "classification", "segmentation", "heatmap"]


@dataclass(frozen=True)
class FiftyOneField:
    """A sample field the FiftyOne export writes: ``values(run)`` gives one value per run sample, in order
    (``(label, confidence)`` pairs or None for a classification; an absolute mask / map file path or None for a
    segmentation or heatmap, whose values are 0..255). ``targets(run)``: a segmentation's mask value -> class
    (FiftyOne ``mask_targets``), or None."""

    name: str
    kind: FiftyOneKind
    description: str
    values: Callable[[Any], list[Any]]
    targets: Callable[[Any], dict[Any, str] | None] | None = None


@dataclass(frozen=True)
class FiftyOneTag:
    """A sample tag set on exactly the samples ``mask(run)`` marks (and removed from the others)."""

    name: str
    mask: Callable[[Any], Any]


@dataclass(frozen=True)
class FiftyOneView:
    """A saved view: ``build(dataset, F)`` returns the view (``F`` is FiftyOne's ViewField, so declaring modules
    never import fiftyone); ``applies(run)`` says whether the run has what the view shows."""

    name: str
    description: str
    build: Callable[[Any, Any], Any]
    applies: Callable[[Any], bool] = field(default=lambda run: True)


@dataclass(frozen=True)
class FiftyOneSpec:
    """Everything one check writes into FiftyOne; ``dynamic_views(run)`` adds views that depend on the run."""

    fields: tuple[FiftyOneField, ...] = ()
    tags: tuple[FiftyOneTag, ...] = ()
    views: tuple[FiftyOneView, ...] = ()
    dynamic_views: Callable[[Any], list[FiftyOneView]] | None = None


def lookup(summary: dict[str, Any], path: str) -> Any:
    """The value at a dotted path of the summary, or :class:`Unavailable` naming the first missing part."""
    node: Any = summary
    walked: list[str] = []
    for part in path.split("."):
        walked.append(part)
        if not isinstance(node, dict) or part not in node:
            return Unavailable(f"{'.'.join(walked)} is not available in this run")
        node = node[part]
    return node


def as_number(value: Any, path: str) -> float | int | Unavailable:
    """``value`` when it is a finite number, else :class:`Unavailable` naming ``path``."""
    import math

    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return Unavailable(f"{path} is not available in this run")
    return value
