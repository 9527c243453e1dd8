"""The contract every audit check follows, and the one registry they join.

A check is a small class with a ``name``, the inputs it ``requires`` and a ``run(context)`` that returns a
:class:`CheckResult`. Checks never see the orchestrator and never write files: the runner validates and joins
their outputs into the run's per-sample table and summary.

Besides computing, a check *declares* what it offers downstream (see :mod:`audit.declarations`): its gate
``thresholds`` and ``ratchets``, its ``report_sections`` and headline ``tiles``, and what it writes into FiftyOne
(``fiftyone``). The gate, the report and the FiftyOne export loop over these declarations, so adding a check is one
new module under ``audit/checks/`` (a subclass of :class:`Check` decorated with :func:`register`, imported in
``audit/checks/__init__.py``) plus its report template.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Literal

import numpy as np
import pandas as pd

from audit.declarations import FiftyOneSpec, Ratchet, ReportSection, Threshold, Tile, Trend

if TYPE_CHECKING:
    from audit.results import RunResults

Requirement = Literal["embeddings", "pred_probs", "annotations", "baseline", "ledger", "object_annotators",
                      "object_predictions"]
Level = Literal["image", "object"]


class CheckError(RuntimeError):
    """A check could not run on this input; the run fails with this message (never print-and-continue)."""


class CheckInputError(ValueError):
    """The user's input cannot be audited by a check (mismatched lengths, probabilities that do not sum to 1...)."""


@dataclass
class CheckContext:
    """Everything a check may read. Rows of every array follow ``samples.index`` (the sample ids).

    Parameters
    ----------
    samples
        Canonical sample table indexed by ``sample_id`` with at least ``filepath``, ``label`` (str),
        ``split`` (str) and ``readable`` (bool). Unreadable samples have NaN embeddings.
    class_names
        Sorted class names; integer class ``i`` means ``class_names[i]``.
    embeddings
        ``(n, d)`` float32, L2-normalised, or ``None`` when the run has none.
    pred_probs
        ``(n, k)`` user-supplied predicted probabilities aligned with ``class_names``, or ``None``.
    annotations
        Long table ``sample_id, annotator, label`` when several annotators labelled the images, else ``None``.
    params
        This check's parameters from the config (``[checks.<name>]``), already merged with defaults by the check.
    baseline
        The previous run's results, for "since last week" comparisons.
    prior
        Results of the checks that ran before this one (e.g. ``agreement`` gives ``mistakes`` its consensus).
    seed
        Seed for anything random, so a run is reproducible.
    ledger
        The review ledger carried forward from earlier runs (reviewers' verdicts, :mod:`audit.review`), or None.
    extra
        Level-specific inputs. For object-level checks (``level = "object"``), ``samples`` is the table of audited
        objects (index ``object_id``, the canonical object columns plus ``filepath``, ``split``, ``readable``) and
        ``embeddings`` their crop embeddings; ``extra`` holds ``objects`` (every object: all annotators and
        detector predictions), ``images`` (the image table), ``agreement`` (the object agreement result, when
        annotators drew boxes), and ``crops`` (``{check name: (boxes, embeddings)}``, the extra crops a check asked
        for with :meth:`Check.extra_crops`). Image-level checks get ``embedder`` (what made the embeddings) and
        ``previous_run`` (the latest earlier run of this dataset, or None: what an unchanged input may reuse).
    """

    samples: pd.DataFrame
    class_names: list[str]
    embeddings: np.ndarray | None = None
    pred_probs: np.ndarray | None = None
    annotations: pd.DataFrame | None = None
    params: dict[str, Any] = field(default_factory=dict)
    baseline: RunResults | None = None
    prior: dict[str, CheckResult] = field(default_factory=dict)
    seed: int = 0
    ledger: pd.DataFrame | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def sample_ids(self) -> pd.Index:
        return self.samples.index

    def labels_as_int(self, labels: pd.Series | None = None) -> np.ndarray:
        """Labels as integer codes into ``class_names`` (-1 where missing)."""
        labels = self.samples["label"] if labels is None else labels
        lookup = {name: i for i, name in enumerate(self.class_names)}
        return labels.map(lookup).fillna(-1).astype(int).to_numpy()


@dataclass
class CheckResult:
    """What one check produces.

    ``samples`` is indexed by sample id (the full run index) and its columns are prefixed with the check's
    name (``mistakes_is_issue``...). ``metrics`` is JSON-safe and lands in ``summary.json`` under
    ``checks.<name>``. ``arrays`` carries large outputs the run folder keeps as files (the mistakes check
    returns ``{"pred_probs": (n, k) array}`` so reports and the gate never recompute them).
    """

    name: str
    samples: pd.DataFrame
    metrics: dict[str, Any]
    arrays: dict[str, np.ndarray] = field(default_factory=dict)
    others: pd.DataFrame | None = None  # object checks: prefixed columns for objects besides the audited ones


class Check:
    """Base class of a registered audit check: the contract, with empty declarations by default.

    Subclasses set ``name``, ``requires`` and ``description``, implement :meth:`run`, and declare what they offer:
    ``thresholds`` / ``ratchets`` (gate), ``report_sections`` and :meth:`tiles` (report), ``trends`` (the weekly
    trends page), ``fiftyone`` (export).
    """

    name: ClassVar[str]
    requires: ClassVar[tuple[Requirement, ...]] = ()
    description: ClassVar[str] = ""
    level: ClassVar[Level] = "image"
    thresholds: ClassVar[tuple[Threshold, ...]] = ()
    ratchets: ClassVar[tuple[Ratchet, ...]] = ()
    report_sections: ClassVar[tuple[ReportSection, ...]] = ()
    trends: ClassVar[tuple[Trend, ...]] = ()
    fiftyone: ClassVar[FiftyOneSpec] = FiftyOneSpec()

    def run(self, context: CheckContext) -> CheckResult:
        raise NotImplementedError

    @classmethod
    def tiles(cls, state: dict[str, Any]) -> list[Tile]:
        """Headline figures for the report from this check's state (``status``, ``metrics``, ``reason``)."""
        return []

    @classmethod
    def extra_crops(cls, items: pd.DataFrame, images: pd.DataFrame, seed: int) -> pd.DataFrame | None:
        """Object-level checks: boxes (``sample_id, x, y, w, h`` and any label columns) besides the audited
        objects whose crops the check needs embedded (e.g. background windows to learn what "no object" looks
        like); the runner embeds them with the same embedder and cache and passes them in ``extra["crops"]``."""
        return None

    @classmethod
    def summary_line(cls, metrics: dict[str, Any]) -> str:
        """What the run's log says when the check ends (e.g. "84 suspected mislabels (4.7%)")."""
        return f"skipped: {metrics['skipped']}" if "skipped" in metrics else "done"

    @classmethod
    def facts(cls, state: dict[str, Any]) -> list[tuple[str, str]]:
        """Lines for the report's summary facts list, as ``(term, text)``."""
        return []


REGISTRY: dict[str, type[Check]] = {}


def register(check_class: type[Check]) -> type[Check]:
    """Class decorator: make a check available to the runner under its ``name`` (run in registration order)."""
    if check_class.name in REGISTRY:
        raise ValueError(f"a check named {check_class.name!r} is already registered")
    REGISTRY[check_class.name] = check_class
    return check_class


def merge_params(check: str, given: dict[str, Any], defaults: dict[str, Any]) -> dict[str, Any]:
    """A check's parameters over its defaults; an unknown name (a typo in the config) is an error, not ignored."""
    unknown = sorted(set(given) - set(defaults))
    if unknown:
        raise CheckInputError(f"unknown {check} parameter(s) {unknown}; known: {sorted(defaults)}")
    return {**defaults, **given}


def json_safe(value: Any) -> Any:
    """Convert numpy/pandas scalars and containers to plain JSON values; NaN and infinities become None."""
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set):
        return [json_safe(v) for v in value]
    if isinstance(value, np.ndarray):
        return [json_safe(v) for v in value.tolist()]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, pd.Timestamp):
        return value.isoformat()
    return value


def run_check(check_class: type[Check], context: CheckContext, reporter: Any) -> CheckResult:
    """Run one check as a stage of ``reporter`` (its line ends with the check's summary), for every level (images,
    objects): a bad input stays the check's own error, any other exception fails the run with the check's name,
    and the result must keep the contract (:func:`validate_result`)."""
    name = check_class.name
    with reporter.stage(f"check {name}") as stage:
        try:
            result = check_class().run(context)
        except (CheckError, ValueError):
            raise
        except Exception as exc:  # a broken check fails the run, loudly, with its name
            raise CheckError(f"check {name!r} failed: {type(exc).__name__}: {exc}") from exc
        stage.result = check_class.summary_line(result.metrics)
    validate_result(result, context.samples.index)
    return result


def validate_result(result: CheckResult, sample_ids: pd.Index) -> None:
    """Fail loudly when a check breaks the contract (wrong index, unprefixed columns, metrics not JSON-safe)."""
    if not result.samples.index.equals(sample_ids):
        raise CheckError(f"check {result.name!r} returned a per-sample table whose index is not the run's sample ids")
    bad = [c for c in result.samples.columns if not str(c).startswith(f"{result.name}_")]
    if bad:
        raise CheckError(f"check {result.name!r} returned columns without the '{result.name}_' prefix: {bad}")
    try:
        json.dumps(result.metrics, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise CheckError(f"check {result.name!r} returned metrics that are not JSON-safe: {exc}") from exc
