"""The release gate: check a run against thresholds so that CI can refuse a dataset whose labels got worse.

The gate only *reads* a run folder (``summary.json``) and, optionally, the last released run; it never
recomputes a metric. ``label-audit gate RUN_DIR [--baseline PREV] [--config FILE] [--set NAME=VALUE]`` and
``label-audit run --gate`` exit 0 when every rule passes, 1 when one fails and 2 on bad input (a broken or
unknown threshold, a missing run folder). The verdict is written beside the run as ``gate.json``, ``gate.xml``
(JUnit: test suite "label-audit gate", one test case per rule) and ``gate.md`` (a Markdown table for CI job
summaries) and recorded in ``summary.json`` under ``"gate"``; a report the run already has is rendered again
so that its headline shows the verdict.

Thresholds live in the ``gate`` section of the same config file ``label-audit run`` reads (YAML, TOML, or
``[tool.label-audit.gate]`` in pyproject.toml) and can be overridden with ``--set NAME=VALUE`` (``none``
removes a threshold set in the file)::

    gate:
      max_issue_rate: 0.05
      min_label_health: 0.8
      min_samples_per_class: 50
      max_unreadable: 0
      ratchet: true

Threshold names (each reads the summary key given; rates are shares in [0, 1], alpha/kappa in [-1, 1]):

``max_issue_rate``
    Suspected-mislabel rate of the whole dataset may not exceed this (``checks.mistakes.issue_rate``).
``max_class_issue_rate``
    Same, for every class; one rule per class (``checks.mistakes.per_class.<class>.issue_rate``).
``min_label_health``
    cleanlab's overall label health score must reach this (``checks.mistakes.label_health``).
``min_krippendorff_alpha`` / ``min_fleiss_kappa``
    Inter-annotator agreement over all items (``checks.agreement.krippendorff_alpha`` / ``.fleiss_kappa``).
``min_class_krippendorff_alpha`` / ``min_class_fleiss_kappa``
    The same per class; one rule per class (``checks.agreement.per_class.<class>.krippendorff_alpha`` /
    ``.fleiss_kappa``).
``min_annotator_quality``
    Every annotator's cleanlab quality score must reach this; one rule per annotator
    (``checks.agreement.per_annotator.<annotator>.quality``).
``max_class_share_shift``
    No class's share of the dataset may move more than this (absolute difference of shares) against the
    baseline; one rule per class in either run, a vanished or new class counting with share 0 on the side
    that lacks it (``checks.distribution.classes.<class>.share`` of both runs). Without ``--baseline`` the
    shifts the distribution check recorded against the run's own baseline are used
    (``checks.distribution.baseline.deltas.<class>.share_delta``).
``min_samples_per_class``
    Every class must have at least this many samples; one rule per class
    (``checks.distribution.classes.<class>.count``; a class in ``class_names`` without a count has 0).
``max_unreadable``
    At most this many samples may be unreadable: missing, empty, corrupt or truncated files
    (``counts.unreadable``).
``max_unreadable_rate``
    At most this share of samples may be unreadable (``counts.unreadable / counts.samples``).
``ratchet``
    ``true``: nothing may get worse than in the baseline (the last released run): ``issue_rate`` may not rise;
    ``label_health``, ``krippendorff_alpha``, ``fleiss_kappa`` and the lowest annotator quality
    (``min_annotator_quality``) may not fall. One rule each, for the metrics the *baseline* has (a baseline
    without annotators has no agreement to ratchet against); a metric the baseline has but the run lacks
    fails.
``ratchet_tolerance``
    How much worse than the baseline a ratcheted metric may get before it fails (default 0).
``skip_missing``
    What a rule does when its metric is unavailable (agreement rules on a run without annotators, a check that
    was skipped, shift or ratchet rules without a baseline). Default ``false``: the rule **fails** with
    "metric unavailable", because a gate that silently passes is worse than one that asks to be configured.
    ``true``: the rule is reported as skipped (JUnit ``<skipped>``) and does not fail the gate.

A max rule passes when ``value <= threshold``, a min rule when ``value >= threshold``. A configuration with no
rule at all is an error (exit 2), for the same reason.
"""

from __future__ import annotations

import difflib
import json
import math
import socket
import xml.etree.ElementTree as ET
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from audit.config import ConfigError, read_config_file
from audit.results import RunResults, atomic_write_text, update_summary

GATE_JSON, GATE_JUNIT, GATE_MARKDOWN = "gate.json", "gate.xml", "gate.md"
REPORT_FILE = "index.html"
JUNIT_SUITE_NAME = "label-audit gate"

Kind = Literal["rate", "coefficient", "count", "tolerance", "bool"]

# name -> kind of value it takes. Order here is the order rules appear in the verdict.
THRESHOLD_KINDS: dict[str, Kind] = {
    "max_issue_rate": "rate",
    "max_class_issue_rate": "rate",
    "min_label_health": "rate",
    "min_krippendorff_alpha": "coefficient",
    "min_fleiss_kappa": "coefficient",
    "min_class_krippendorff_alpha": "coefficient",
    "min_class_fleiss_kappa": "coefficient",
    "min_annotator_quality": "rate",
    "max_class_share_shift": "rate",
    "min_samples_per_class": "count",
    "max_unreadable": "count",
    "max_unreadable_rate": "rate",
    "ratchet": "bool",
    "ratchet_tolerance": "tolerance",
    "skip_missing": "bool",
}
# Settings that change how rules behave but create none by themselves.
MODIFIERS = {"ratchet_tolerance", "skip_missing"}

_TRUE = {"true", "yes", "on", "1"}
_FALSE = {"false", "no", "off", "0"}
_UNSET = {"none", "null", ""}


class GateConfigError(ConfigError):
    """A threshold is unknown, malformed or out of range, or none is configured (the CLI exits 2)."""


# --------------------------------------------------------------------------------------------- thresholds


def load_thresholds(config_file: str | Path | None, overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """The gate's thresholds: the config file's ``gate`` section, then ``overrides`` on top.

    Parameters
    ----------
    config_file
        The file ``label-audit run`` reads (YAML, TOML or pyproject.toml), or None for overrides only.
    overrides
        ``NAME -> VALUE``; values may be strings from ``--set NAME=VALUE`` (numbers and booleans are parsed,
        ``none`` removes a threshold the file set) or already-typed Python values.

    Returns
    -------
    dict
        Validated thresholds with plain ``float``/``int``/``bool`` values, in documentation order.

    Raises
    ------
    GateConfigError
        Unknown name, non-numeric or out-of-range value, or no rule configured at all.
    """
    raw: dict[str, Any] = {}
    origin: dict[str, str] = {}
    if config_file is not None:
        section = read_config_file(config_file).get("gate", {})
        if section is None:
            section = {}
        if not isinstance(section, dict):
            raise GateConfigError(
                f"the gate section of {config_file} must be a mapping of threshold names to values, "
                f"got {type(section).__name__}"
            )
        for name, value in section.items():
            raw[str(name)], origin[str(name)] = value, f"the gate section of {config_file}"
    for name, value in (overrides or {}).items():
        unset = isinstance(value, str) and value.strip().lower() in _UNSET
        raw[str(name)], origin[str(name)] = None if unset else value, "the overrides (--set)"
    where = f"the gate section of {config_file}" if config_file is not None else "the overrides (--set)"
    return normalize_thresholds(raw, where=where, origin=origin)


def normalize_thresholds(
    raw: dict[str, Any], where: str = "the gate thresholds", origin: dict[str, str] | None = None
) -> dict[str, Any]:
    """Validate names and values (parsing strings) and drop unset ones; error when no rule remains.

    ``where`` names the thresholds as a whole in messages; ``origin`` where each one came from.
    """
    origin = origin or {}
    unknown = [name for name in raw if name not in THRESHOLD_KINDS]
    if unknown:
        name = unknown[0]
        close = difflib.get_close_matches(name, THRESHOLD_KINDS, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else f"; known: {', '.join(THRESHOLD_KINDS)}"
        raise GateConfigError(f"unknown gate threshold {name!r} in {origin.get(name, where)}{hint}")
    out: dict[str, Any] = {}
    for name, kind in THRESHOLD_KINDS.items():
        if name in raw and raw[name] is not None:
            out[name] = _parse_value(name, kind, raw[name], origin.get(name, where))
    if not any(name not in MODIFIERS and value is not False for name, value in out.items()):
        raise GateConfigError(
            f"no gate thresholds configured in {where}: add a `gate:` section to the config file "
            "(e.g. `max_issue_rate: 0.05`) or pass --set NAME=VALUE"
        )
    return out


def _parse_value(name: str, kind: Kind, value: Any, where: str) -> Any:
    if kind == "bool":
        if isinstance(value, bool):
            return value
        text = str(value).strip().lower()
        if text in _TRUE:
            return True
        if text in _FALSE:
            return False
        raise GateConfigError(f"gate threshold {name!r} in {where} must be true or false, got {value!r}")
    if isinstance(value, bool):
        raise GateConfigError(f"gate threshold {name!r} in {where} must be a number, got {value!r}")
    try:
        number = float(value.strip() if isinstance(value, str) else value)
    except (TypeError, ValueError):
        raise GateConfigError(f"gate threshold {name!r} in {where} must be a number, got {value!r}") from None
    if not math.isfinite(number):
        raise GateConfigError(f"gate threshold {name!r} in {where} must be a finite number, got {value!r}")
    if kind == "count":
        if number < 0 or number != int(number):
            raise GateConfigError(f"gate threshold {name!r} in {where} must be a whole number >= 0, got {value!r}")
        return int(number)
    low, high, what = {
        "rate": (0.0, 1.0, "a share between 0 and 1"),
        "coefficient": (-1.0, 1.0, "an agreement coefficient between -1 and 1"),
        "tolerance": (0.0, math.inf, "a number >= 0"),
    }[kind]
    if not low <= number <= high:
        raise GateConfigError(f"gate threshold {name!r} in {where} must be {what}, got {value!r}")
    return number


# ---------------------------------------------------------------------------------------------- verdict


@dataclass
class GateRule:
    """One checked threshold: ``passed`` is False only for a real failure (skipped rules pass)."""

    name: str
    metric: str
    value: float | int | None
    threshold: float | int | None
    op: Literal["<=", ">="]
    passed: bool
    message: str
    skipped: bool = False

    @property
    def status(self) -> str:
        return "skipped" if self.skipped else ("pass" if self.passed else "fail")

    def bound(self, symbols: bool = False) -> str:
        """The threshold as a condition, e.g. ``<= 0.05`` (``≤ 0.05`` with ``symbols``); ``n/a`` without one."""
        if self.threshold is None:
            return "n/a"
        op = {"<=": "≤", ">=": "≥"}[self.op] if symbols else self.op
        return f"{op} {_fmt(self.threshold)}"


@dataclass
class GateVerdict:
    """The outcome of :func:`evaluate`: every rule, the thresholds used and which runs were compared."""

    rules: list[GateRule]
    thresholds: dict[str, Any]
    run_name: str
    run_path: str
    baseline_name: str | None = None
    baseline_path: str | None = None
    created_at: str = field(default_factory=lambda: datetime.now(UTC).isoformat(timespec="seconds"))

    @property
    def passed(self) -> bool:
        return all(rule.passed for rule in self.rules)

    @property
    def failed_rules(self) -> list[GateRule]:
        return [rule for rule in self.rules if not rule.passed]

    @property
    def skipped_rules(self) -> list[GateRule]:
        return [rule for rule in self.rules if rule.skipped]

    def headline(self) -> str:
        """E.g. ``gate FAILED: 2 of 14 rules failed, 1 skipped`` or ``gate PASSED: 3 of 3 rules passed``."""
        n_rules = f"{len(self.rules)} rule{'' if len(self.rules) == 1 else 's'}"
        skipped = f", {len(self.skipped_rules)} skipped" if self.skipped_rules else ""
        if self.passed:
            n_passed = len(self.rules) - len(self.skipped_rules)
            return f"gate PASSED: {n_passed} of {n_rules} passed{skipped}"
        return f"gate FAILED: {len(self.failed_rules)} of {n_rules} failed{skipped}"

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe dict; what ``summary.json["gate"]`` and ``gate.json`` hold."""
        return {
            "passed": self.passed,
            "headline": self.headline(),
            "n_rules": len(self.rules),
            "n_failed": len(self.failed_rules),
            "n_skipped": len(self.skipped_rules),
            "rules": [{**asdict(rule), "status": rule.status} for rule in self.rules],
            "thresholds": dict(self.thresholds),
            "run": {"name": self.run_name, "path": self.run_path},
            "baseline": None
            if self.baseline_name is None
            else {"name": self.baseline_name, "path": self.baseline_path},
            "created_at": self.created_at,
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, allow_nan=False)

    def lines(self) -> list[str]:
        """One console line per rule (status, name, value, threshold, message), then the headline."""
        width = max((len(rule.name) for rule in self.rules), default=0)
        out = []
        for rule in self.rules:
            tag = {"pass": "PASS", "fail": "FAIL", "skipped": "SKIP"}[rule.status]
            out.append(
                f"{tag}  {rule.name:<{width}}  value={_fmt(rule.value)}  threshold {rule.bound()}  {rule.message}"
            )
        out.append(self.headline())
        return out

    def to_markdown(self) -> str:
        """A job-summary table: ✅ pass, ❌ fail, ⏭️ skipped."""
        icon = "✅" if self.passed else "❌"
        baseline = f" against baseline `{self.baseline_name}`" if self.baseline_name else ""
        rows = [
            f"## {icon} label-audit {self.headline()}",
            "",
            f"Run `{self.run_name}`{baseline}.",
            "",
            "| | Rule | Value | Threshold | Message |",
            "|---|---|---|---|---|",
        ]
        for rule in self.rules:
            mark = {"pass": "✅", "fail": "❌", "skipped": "⏭️"}[rule.status]
            rows.append(
                f"| {mark} | `{rule.name}` | {_fmt(rule.value)} | {rule.bound(symbols=True)} "
                f"| {_md_escape(rule.message)} |"
            )
        return "\n".join(rows) + "\n"

    def to_junit_xml(self) -> str:
        """JUnit XML: one ``<testcase>`` per rule, ``<failure>`` / ``<skipped>`` where due."""
        counts = {
            "tests": str(len(self.rules)),
            "failures": str(len(self.failed_rules)),
            "errors": "0",
            "skipped": str(len(self.skipped_rules)),
        }
        suites = ET.Element("testsuites", {"name": "label-audit", **counts, "time": "0"})
        suite = ET.SubElement(
            suites,
            "testsuite",
            {
                "name": JUNIT_SUITE_NAME,
                **counts,
                "time": "0",
                "timestamp": self.created_at,
                "hostname": socket.gethostname(),
            },
        )
        properties = ET.SubElement(suite, "properties")
        ET.SubElement(properties, "property", {"name": "run", "value": self.run_name})
        ET.SubElement(properties, "property", {"name": "run_path", "value": self.run_path})
        if self.baseline_name:
            ET.SubElement(properties, "property", {"name": "baseline", "value": self.baseline_name})
        for rule in self.rules:
            case = ET.SubElement(
                suite,
                "testcase",
                {"name": rule.name, "classname": "label-audit.gate", "time": "0"},
            )
            detail = f"{rule.metric} = {_fmt(rule.value)}, threshold {rule.bound()}: {rule.message}"
            if rule.skipped:
                ET.SubElement(case, "skipped", {"message": rule.message})
            elif not rule.passed:
                failure = ET.SubElement(case, "failure", {"message": rule.message, "type": "GateThresholdFailed"})
                failure.text = detail
            ET.SubElement(case, "system-out").text = detail
        ET.indent(suites)
        return '<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(suites, encoding="unicode") + "\n"


def write_verdict(run_dir: str | Path, verdict: GateVerdict, refresh_report: bool = True) -> None:
    """Write ``gate.json``, ``gate.xml`` and ``gate.md`` into the run folder and record the verdict in
    ``summary.json["gate"]``.

    ``label-audit run --gate`` renders the HTML report before the gate runs, so when the run folder has a report
    and ``refresh_report`` is true it is rendered again (from the stored results, nothing is recomputed) and its
    headline shows this verdict.
    """
    run_dir = Path(run_dir)
    atomic_write_text(run_dir / GATE_JSON, verdict.to_json() + "\n")
    atomic_write_text(run_dir / GATE_JUNIT, verdict.to_junit_xml())
    atomic_write_text(run_dir / GATE_MARKDOWN, verdict.to_markdown())
    update_summary(run_dir, "gate", verdict.to_dict())
    if refresh_report and (run_dir / REPORT_FILE).is_file():
        from audit.report import render_report

        render_report(run_dir)


# ------------------------------------------------------------------------------------------- evaluation


class _Missing:
    """Why a metric is unavailable (a value that is not a number)."""

    def __init__(self, reason: str) -> None:
        self.reason = reason


def evaluate(run: RunResults, baseline: RunResults | None, thresholds: dict[str, Any]) -> GateVerdict:
    """Check ``run`` against ``thresholds`` (as from :func:`load_thresholds`; validated again here).

    Parameters
    ----------
    run
        The run to gate.
    baseline
        The last released run, for ``max_class_share_shift`` and ``ratchet``; None when there is none.
    thresholds
        Threshold name -> value, see the module docstring.
    """
    thresholds = normalize_thresholds(dict(thresholds))
    rules = _Rules(skip_missing=bool(thresholds.get("skip_missing", False)))
    summary = run.summary

    mistakes = _check(summary, "mistakes")
    agreement = _check(summary, "agreement")
    distribution = _check(summary, "distribution")

    if "max_issue_rate" in thresholds:
        rules.add(
            "max_issue_rate",
            "checks.mistakes.issue_rate",
            _key(mistakes, "mistakes", "issue_rate"),
            thresholds["max_issue_rate"],
            "<=",
            "suspected-mislabel rate",
        )
    if "max_class_issue_rate" in thresholds:
        rules.per_key(
            "max_class_issue_rate",
            "checks.mistakes.per_class.{}.issue_rate",
            _per(mistakes, "mistakes", "per_class", "issue_rate", run.class_names),
            thresholds["max_class_issue_rate"],
            "<=",
            "suspected-mislabel rate of class {}",
        )
    if "min_label_health" in thresholds:
        rules.add(
            "min_label_health",
            "checks.mistakes.label_health",
            _key(mistakes, "mistakes", "label_health"),
            thresholds["min_label_health"],
            ">=",
            "label health score",
        )
    for coefficient, label in (
        ("krippendorff_alpha", "Krippendorff's alpha"),
        ("fleiss_kappa", "Fleiss' kappa"),
    ):
        name = f"min_{coefficient}"
        if name in thresholds:
            rules.add(
                name,
                f"checks.agreement.{coefficient}",
                _key(agreement, "agreement", coefficient),
                thresholds[name],
                ">=",
                label,
            )
        name = f"min_class_{coefficient}"
        if name in thresholds:
            rules.per_key(
                name,
                f"checks.agreement.per_class.{{}}.{coefficient}",
                _per(agreement, "agreement", "per_class", coefficient, run.class_names),
                thresholds[name],
                ">=",
                f"{label} of class {{}}",
            )
    if "min_annotator_quality" in thresholds:
        rules.per_key(
            "min_annotator_quality",
            "checks.agreement.per_annotator.{}.quality",
            _per(agreement, "agreement", "per_annotator", "quality", []),
            thresholds["min_annotator_quality"],
            ">=",
            "quality of annotator {}",
        )
    if "max_class_share_shift" in thresholds:
        rules.per_key(
            "max_class_share_shift",
            "checks.distribution.classes.{}.share",
            _share_shifts(run, baseline, distribution),
            thresholds["max_class_share_shift"],
            "<=",
            "share shift of class {}",
        )
    if "min_samples_per_class" in thresholds:
        rules.per_key(
            "min_samples_per_class",
            "checks.distribution.classes.{}.count",
            _class_counts(run, distribution),
            thresholds["min_samples_per_class"],
            ">=",
            "samples of class {}",
        )
    if "max_unreadable" in thresholds:
        rules.add(
            "max_unreadable",
            "counts.unreadable",
            _unreadable(summary, rate=False),
            thresholds["max_unreadable"],
            "<=",
            "unreadable samples",
        )
    if "max_unreadable_rate" in thresholds:
        rules.add(
            "max_unreadable_rate",
            "counts.unreadable/counts.samples",
            _unreadable(summary, rate=True),
            thresholds["max_unreadable_rate"],
            "<=",
            "share of unreadable samples",
        )
    if thresholds.get("ratchet"):
        _ratchet(rules, run, baseline, float(thresholds.get("ratchet_tolerance", 0.0)))

    return GateVerdict(
        rules=rules.rules,
        thresholds=thresholds,
        run_name=run.name,
        run_path=str(run.path),
        baseline_name=baseline.name if baseline is not None else None,
        baseline_path=str(baseline.path) if baseline is not None else None,
    )


class _Rules:
    """Collects rules, turning unavailable metrics into failures (or skips with ``skip_missing``)."""

    def __init__(self, skip_missing: bool) -> None:
        self.skip_missing = skip_missing
        self.rules: list[GateRule] = []

    def add(
        self,
        name: str,
        metric: str,
        value: Any,
        threshold: float | int | None,
        op: Literal["<=", ">="],
        label: str,
    ) -> None:
        if isinstance(value, _Missing):
            message = f"metric unavailable: {value.reason}"
            if self.skip_missing:
                self.rules.append(GateRule(name, metric, None, threshold, op, True, f"skipped, {message}", True))
            else:
                self.rules.append(
                    GateRule(
                        name,
                        metric,
                        None,
                        threshold,
                        op,
                        False,
                        f"{message} (set skip_missing: true to skip such rules)",
                    )
                )
            return
        passed = value <= threshold if op == "<=" else value >= threshold
        if passed:
            message = f"{label} {_fmt(value)} {op} {_fmt(threshold)}"
        else:
            bound = "above the maximum" if op == "<=" else "below the minimum"
            message = f"{label} {_fmt(value)} is {bound} {_fmt(threshold)}"
        self.rules.append(GateRule(name, metric, value, threshold, op, bool(passed), message))

    def per_key(
        self,
        name: str,
        metric: str,
        values: dict[str, Any] | _Missing,
        threshold: float | int,
        op: Literal["<=", ">="],
        label: str,
    ) -> None:
        """One rule per class/annotator, named ``name[key]``; a single rule when the table is missing."""
        if not isinstance(values, _Missing) and not values:
            values = _Missing(f"{metric.split('.{}')[0]} is empty in this run")
        if isinstance(values, _Missing):
            self.add(name, metric.replace(".{}", ""), values, threshold, op, label.format("?"))
            return
        for key, value in values.items():
            self.add(f"{name}[{key}]", metric.format(key), value, threshold, op, label.format(repr(key)))


def _check(summary: dict[str, Any], name: str) -> dict[str, Any] | _Missing:
    metrics = summary.get("checks", {}).get(name)
    if metrics is None:
        return _Missing(f"the {name} check did not run")
    if "skipped" in metrics:
        return _Missing(f"the {name} check was skipped ({metrics['skipped']})")
    return metrics


def _number(value: Any, where: str, why: str | None = None) -> float | int | _Missing:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return _Missing(f"{where} is not available in this run" + (f" ({why})" if why else ""))
    return value


def _null_reason(metrics: dict[str, Any], check: str, key: str) -> str | None:
    """The reason a check recorded for a null metric (``null_reasons``: by metric, or for the whole check)."""
    reasons = metrics.get("null_reasons")
    if not isinstance(reasons, dict):
        return None
    reason = reasons.get(key) or reasons.get(check)
    return str(reason) if reason else None


def _key(metrics: dict[str, Any] | _Missing, check: str, key: str) -> float | int | _Missing:
    if isinstance(metrics, _Missing):
        return metrics
    return _number(metrics.get(key), f"checks.{check}.{key}", _null_reason(metrics, check, key))


def _per(
    metrics: dict[str, Any] | _Missing, check: str, table: str, key: str, expected: list[str]
) -> dict[str, Any] | _Missing:
    """``metrics[table][k][key]`` for each k (plus any ``expected`` key absent from the table)."""
    if isinstance(metrics, _Missing):
        return metrics
    rows = metrics.get(table)
    if not isinstance(rows, dict) or not rows:
        return _Missing(f"checks.{check}.{table} is not available in this run")
    why = _null_reason(metrics, check, key)
    keys = list(rows) + [k for k in expected if k not in rows]
    return {k: _number((rows.get(k) or {}).get(key), f"checks.{check}.{table}.{k}.{key}", why) for k in keys}


def _class_counts(run: RunResults, distribution: dict[str, Any] | _Missing) -> dict[str, Any] | _Missing:
    if isinstance(distribution, _Missing):
        return distribution
    classes = distribution.get("classes")
    if not isinstance(classes, dict):
        return _Missing("checks.distribution.classes is not available in this run")
    names = list(classes) + [c for c in run.class_names if c not in classes]
    return {
        c: _number((classes.get(c) or {"count": 0}).get("count"), f"checks.distribution.classes.{c}.count")
        for c in names
    }


def _shares(metrics: dict[str, Any] | _Missing) -> dict[str, float] | _Missing:
    if isinstance(metrics, _Missing):
        return metrics
    classes = metrics.get("classes")
    if not isinstance(classes, dict) or not classes:
        return _Missing("checks.distribution.classes is not available")
    shares = {c: (row or {}).get("share") for c, row in classes.items()}
    bad = [c for c, share in shares.items() if isinstance(_number(share, ""), _Missing)]
    if bad:
        return _Missing(f"checks.distribution.classes.{bad[0]}.share is not available")
    return shares


def _share_shifts(
    run: RunResults, baseline: RunResults | None, distribution: dict[str, Any] | _Missing
) -> dict[str, Any] | _Missing:
    """|share in run - share in baseline| per class; without a baseline, the deltas the run recorded."""
    if baseline is None:
        recorded = None if isinstance(distribution, _Missing) else distribution.get("baseline")
        deltas = (recorded or {}).get("deltas") if isinstance(recorded, dict) else None
        if not deltas:
            return _Missing("max_class_share_shift needs a baseline run (pass --baseline PREVIOUS_RUN_DIR)")
        shifts: dict[str, Any] = {}
        for name, delta in deltas.items():
            value = _number((delta or {}).get("share_delta"), f"checks.distribution.baseline.deltas.{name}.share_delta")
            shifts[name] = value if isinstance(value, _Missing) else abs(value)
        return shifts
    now = _shares(distribution)
    before = _shares(_check(baseline.summary, "distribution"))
    if isinstance(now, _Missing):
        return now
    if isinstance(before, _Missing):
        return _Missing(f"baseline {baseline.name!r}: {before.reason}")
    classes = list(now) + [c for c in before if c not in now]
    return {c: abs(float(now.get(c, 0.0)) - float(before.get(c, 0.0))) for c in classes}


def _unreadable(summary: dict[str, Any], rate: bool) -> float | int | _Missing:
    counts = summary.get("counts") or {}
    unreadable = _number(counts.get("unreadable"), "counts.unreadable")
    if not rate or isinstance(unreadable, _Missing):
        return unreadable
    total = _number(counts.get("samples"), "counts.samples")
    if isinstance(total, _Missing) or total <= 0:
        return _Missing("counts.samples is not available (or 0) in this run")
    return unreadable / total


# metric -> (summary key, True when higher is better)
RATCHETED: dict[str, tuple[str, bool]] = {
    "issue_rate": ("checks.mistakes.issue_rate", False),
    "label_health": ("checks.mistakes.label_health", True),
    "krippendorff_alpha": ("checks.agreement.krippendorff_alpha", True),
    "fleiss_kappa": ("checks.agreement.fleiss_kappa", True),
    "min_annotator_quality": ("min of checks.agreement.per_annotator.*.quality", True),
}


def _ratchet_metrics(run: RunResults) -> dict[str, float | int | _Missing]:
    mistakes, agreement = _check(run.summary, "mistakes"), _check(run.summary, "agreement")
    qualities = _per(agreement, "agreement", "per_annotator", "quality", [])
    if isinstance(qualities, _Missing):
        lowest: float | int | _Missing = qualities
    else:
        missing = [q for q in qualities.values() if isinstance(q, _Missing)]
        lowest = missing[0] if missing else min(qualities.values())
    return {
        "issue_rate": _key(mistakes, "mistakes", "issue_rate"),
        "label_health": _key(mistakes, "mistakes", "label_health"),
        "krippendorff_alpha": _key(agreement, "agreement", "krippendorff_alpha"),
        "fleiss_kappa": _key(agreement, "agreement", "fleiss_kappa"),
        "min_annotator_quality": lowest,
    }


def _ratchet(rules: _Rules, run: RunResults, baseline: RunResults | None, tolerance: float) -> None:
    """One rule per metric the baseline has: the run may not be worse than the baseline by more than
    ``tolerance``."""
    if baseline is None:
        rules.add(
            "ratchet",
            "baseline",
            _Missing("ratchet needs a baseline run (pass --baseline PREVIOUS_RUN_DIR)"),
            None,
            "<=",
            "ratchet",
        )
        return
    now, before = _ratchet_metrics(run), _ratchet_metrics(baseline)
    compared = 0
    for metric, (key, higher_is_better) in RATCHETED.items():
        previous = before[metric]
        if isinstance(previous, _Missing):
            continue  # nothing released to ratchet against
        compared += 1
        threshold = previous - tolerance if higher_is_better else previous + tolerance
        op: Literal["<=", ">="] = ">=" if higher_is_better else "<="
        value = now[metric]
        if isinstance(value, _Missing):
            value = _Missing(f"{value.reason}, but baseline {baseline.name!r} has {metric} = {_fmt(previous)}")
        label = f"{metric} (baseline {baseline.name!r}: {_fmt(previous)}, tolerance {_fmt(tolerance)})"
        rules.add(f"ratchet[{metric}]", key, value, threshold, op, label)
    if not compared:
        rules.add(
            "ratchet",
            "baseline",
            _Missing(f"baseline {baseline.name!r} has none of the ratcheted metrics ({', '.join(RATCHETED)})"),
            None,
            "<=",
            "ratchet",
        )


# ------------------------------------------------------------------------------------------------ helpers


def _fmt(value: Any) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def _md_escape(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")
