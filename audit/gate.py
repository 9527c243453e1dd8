"""The release gate: check a run against thresholds so that CI can refuse a dataset whose labels got worse.

The gate only *reads* a run folder (``summary.json``) and, optionally, the last released run; it never
recomputes a metric, and it names no check's metrics: every threshold is declared by the check (or source) that
produces its metric (:class:`audit.declarations.Threshold`: config name, metric path, direction, kind of value,
expansion over classes / annotators / split pairs), and the metrics the ``ratchet`` compares are declared the same
way (:class:`audit.declarations.Ratchet`). ``label-audit gate --list`` prints every declared threshold.

``label-audit gate RUN_DIR [--baseline PREV] [--config FILE] [--set NAME=VALUE]`` and ``label-audit run --gate``
exit 0 when every rule passes, 1 when one fails and 2 on bad input (a broken or unknown threshold, a missing run
folder). The verdict is written beside the run as ``gate.json``, ``gate.xml`` (JUnit: test suite "label-audit
gate", one test case per rule) and ``gate.md`` (a Markdown table for CI job summaries) and recorded in
``summary.json`` under ``"gate"``; a report the run already has is rendered again so that its headline shows the
verdict.

Thresholds live in the ``gate`` section of the same config file ``label-audit run`` reads (YAML, TOML, or
``[tool.label-audit.gate]`` in pyproject.toml) and can be overridden with ``--set NAME=VALUE`` (``none``
removes a threshold set in the file)::

    gate:
      max_issue_rate: 0.05
      min_label_health: 0.8
      min_samples_per_class: 50
      max_unreadable: 0
      ratchet: true

Besides the declared thresholds, three settings change how rules behave:

``ratchet``
    ``true``: no declared ratchet metric may get worse than in the baseline (the last released run). One rule each,
    for the metrics the *baseline* has; a metric the baseline has but the run lacks fails.
``ratchet_tolerance``
    How much worse than the baseline a ratcheted metric may get before it fails (default 0).
``skip_missing``
    What a rule does when its metric is unavailable (agreement rules on a run without annotators, a check that
    was skipped, shift or ratchet rules without a baseline). Default ``false``: the rule **fails** with
    "metric unavailable", because a gate that silently passes is worse than one that asks to be configured.
    ``true``: the rule is reported as skipped (JUnit ``<skipped>``) and does not fail the gate.

A max rule passes when ``value <= threshold``, a min rule when ``value >= threshold``. Rules appear in the order
the thresholds were configured, ratchet rules last. A configuration with no rule at all is an error (exit 2).
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
from audit.declarations import Ratchet, Threshold, Unavailable, ValueKind, lookup
from audit.results import RunResults, atomic_write_text, update_summary

GATE_JSON, GATE_JUNIT, GATE_MARKDOWN = "gate.json", "gate.xml", "gate.md"
REPORT_FILE = "index.html"
JUNIT_SUITE_NAME = "label-audit gate"

# Settings that change how rules behave but create none by themselves (``ratchet`` creates the ratchet rules).
MODIFIERS: dict[str, ValueKind] = {"ratchet": "bool", "ratchet_tolerance": "tolerance", "skip_missing": "bool"}


def declared_thresholds() -> dict[str, Threshold]:
    """Every threshold the sources and the registered checks declare, by config name."""
    from audit.checks import REGISTRY
    from audit.sources.table import THRESHOLDS as SOURCE_THRESHOLDS

    out: dict[str, Threshold] = {}
    for declared in [*SOURCE_THRESHOLDS, *(t for check in REGISTRY.values() for t in check.thresholds)]:
        if declared.name in out or declared.name in MODIFIERS:
            raise ValueError(f"gate threshold {declared.name!r} is declared twice")
        out[declared.name] = declared
    return out


def declared_ratchets() -> list[Ratchet]:
    """The metrics ``ratchet: true`` compares with the baseline, in check order."""
    from audit.checks import REGISTRY

    return [r for check in REGISTRY.values() for r in check.ratchets]


def thresholds_markdown() -> str:
    """The thresholds table of the README, from the declarations (a test keeps the README in step)."""
    from audit.checks import REGISTRY
    from audit.sources.table import THRESHOLDS as SOURCE_THRESHOLDS

    owner = {t.name: "sources" for t in SOURCE_THRESHOLDS}
    owner.update({t.name: name for name, check in REGISTRY.items() for t in check.thresholds})
    lines = ["| Threshold | Check | Rule | Reads (`summary.json`) |", "|---|---|---|---|"]
    for name, threshold in declared_thresholds().items():
        op = "≤" if threshold.op == "<=" else "≥"
        metric = threshold.metric.replace("{key}", "<key>")
        lines.append(f"| `{name}` | {owner[name]} | {threshold.help} ({op} value) | `{metric}` |")
    lines.append("| `ratchet` (+ `ratchet_tolerance`) | all | no ratcheted metric may get worse than in the baseline: "
                 + ", ".join(f"`{r.name}`" for r in declared_ratchets()) + " | the same keys in both runs |")
    lines.append("| `skip_missing` | all | see below | |")
    return "\n".join(lines) + "\n"


def threshold_kinds() -> dict[str, ValueKind]:
    """Config name -> kind of value, for every threshold and modifier the gate accepts."""
    return {**{name: t.kind for name, t in declared_thresholds().items()}, **MODIFIERS}


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
    kinds = threshold_kinds()
    unknown = [name for name in raw if name not in kinds]
    if unknown:
        name = unknown[0]
        close = difflib.get_close_matches(name, kinds, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else f"; known: {', '.join(kinds)}"
        raise GateConfigError(f"unknown gate threshold {name!r} in {origin.get(name, where)}{hint}")
    out: dict[str, Any] = {}
    for name, value in raw.items():  # the order the user gave is the order of the rules
        if value is not None:
            out[name] = _parse_value(name, kinds[name], value, origin.get(name, where))
    if not any(name not in ("ratchet_tolerance", "skip_missing") and value is not False for name, value in out.items()):
        raise GateConfigError(
            f"no gate thresholds configured in {where}: add a `gate:` section to the config file "
            "(e.g. `max_issue_rate: 0.05`) or pass --set NAME=VALUE"
        )
    return out


def _parse_value(name: str, kind: ValueKind, value: Any, where: str) -> Any:
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
        "number": (-math.inf, math.inf, "a number"),
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
    headline shows this verdict; so is the trends page of the folder the run is in.
    """
    run_dir = Path(run_dir)
    atomic_write_text(run_dir / GATE_JSON, verdict.to_json() + "\n")
    atomic_write_text(run_dir / GATE_JUNIT, verdict.to_junit_xml())
    atomic_write_text(run_dir / GATE_MARKDOWN, verdict.to_markdown())
    update_summary(run_dir, "gate", verdict.to_dict())
    if refresh_report and (run_dir / REPORT_FILE).is_file():
        from audit.report import render_report

        render_report(run_dir)
    if refresh_report and (run_dir.parent / REPORT_FILE).is_file():  # the trends page of the output folder
        from audit.report.trends import render_trends

        render_trends(run_dir.parent)


# ------------------------------------------------------------------------------------------- evaluation


def evaluate(run: RunResults, baseline: RunResults | None, thresholds: dict[str, Any],
             no_baseline: str | None = None) -> GateVerdict:
    """Check ``run`` against ``thresholds`` (as from :func:`load_thresholds`; validated again here).

    Parameters
    ----------
    run
        The run to gate.
    baseline
        The last released run, for shift and ratchet rules; None when there is none.
    thresholds
        Threshold name -> value, see the module docstring.
    no_baseline
        Why there is no baseline when the user asked for one automatically (``--baseline auto`` on the first
        run of a dataset): the rules that need one are then skipped with this reason instead of failing.
    """
    thresholds = normalize_thresholds(dict(thresholds))
    declared = declared_thresholds()
    rules = _Rules(skip_missing=bool(thresholds.get("skip_missing", False)), no_baseline=no_baseline)
    before = baseline.summary if baseline is not None else None
    for name, value in thresholds.items():
        if name in MODIFIERS:
            continue
        threshold = declared[name]
        rules.add_threshold(threshold, _values(threshold, run.summary, before), value)
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

    def __init__(self, skip_missing: bool, no_baseline: str | None = None) -> None:
        self.skip_missing = skip_missing
        self.no_baseline = no_baseline
        self.rules: list[GateRule] = []

    def add(self, name: str, metric: str, value: Any, threshold: float | int | None, op: Literal["<=", ">="],
            label: str) -> None:
        if isinstance(value, Unavailable):
            message = f"metric unavailable: {value.reason}"
            if value.needs_baseline and self.no_baseline:
                self.rules.append(GateRule(name, metric, None, threshold, op, True,
                                           f"skipped: {self.no_baseline} (baseline: auto)", True))
                return
            if self.skip_missing:
                self.rules.append(GateRule(name, metric, None, threshold, op, True, f"skipped, {message}", True))
            else:
                self.rules.append(GateRule(name, metric, None, threshold, op, False,
                                           f"{message} (set skip_missing: true to skip such rules)"))
            return
        passed = value <= threshold if op == "<=" else value >= threshold
        if passed:
            message = f"{label} {_fmt(value)} {op} {_fmt(threshold)}"
        else:
            bound = "above the maximum" if op == "<=" else "below the minimum"
            message = f"{label} {_fmt(value)} is {bound} {_fmt(threshold)}"
        self.rules.append(GateRule(name, metric, value, threshold, op, bool(passed), message))

    def add_threshold(self, threshold: Threshold, values: Any, limit: float | int) -> None:
        """One rule, or one per key (``name[key]``) for a per-key threshold; a single rule when the table is
        missing or empty."""
        if not threshold.per_key:
            self.add(threshold.name, threshold.metric, values, limit, threshold.op, threshold.label)
            return
        table = threshold.metric.split(".{key}")[0]
        if not isinstance(values, Unavailable) and not values:
            values = Unavailable(f"{table} is empty in this run")
        if isinstance(values, Unavailable):
            self.add(threshold.name, table, values, limit, threshold.op, threshold.label.format(key="?"))
            return
        for key, value in values.items():
            self.add(f"{threshold.name}[{key}]", threshold.metric.format(key=key), value, limit, threshold.op,
                     threshold.label.format(key=repr(key)))


def _check_path(summary: dict[str, Any], path: str) -> tuple[str, Any] | None:
    """``(check name, its metrics)`` for a ``checks.<name>...`` or ``objects.checks.<name>...`` path, else None."""
    parts = path.split(".")
    if parts[0] == "objects" and len(parts) > 2 and parts[1] == "checks":
        return parts[2], ((summary.get("objects") or {}).get("checks") or {}).get(parts[2])
    if len(parts) > 1 and parts[0] == "checks":
        return parts[1], (summary.get("checks") or {}).get(parts[1])
    return None


def _check_state(summary: dict[str, Any], path: str) -> Unavailable | None:
    """Why the check a ``checks.<name>...`` path belongs to has no metrics (did not run, was skipped), if so."""
    found = _check_path(summary, path)
    if found is None:
        return None
    parts = ["checks", found[0]]
    metrics = found[1]
    if metrics is None:
        return Unavailable(f"the {parts[1]} check did not run")
    if isinstance(metrics, dict) and "skipped" in metrics:
        return Unavailable(f"the {parts[1]} check was skipped ({metrics['skipped']})")
    return None


def _null_reason(summary: dict[str, Any], path: str) -> str | None:
    """The reason a check recorded for a null metric (``null_reasons``: by metric name, or for the whole check)."""
    found = _check_path(summary, path)
    if found is None:
        return None
    reasons = (found[1] or {}).get("null_reasons")
    if not isinstance(reasons, dict):
        return None
    reason = reasons.get(path.split(".")[-1]) or reasons.get(found[0])
    return str(reason) if reason else None


def _number(summary: dict[str, Any], value: Any, path: str) -> float | int | Unavailable:
    if isinstance(value, Unavailable):
        return value
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        why = _null_reason(summary, path)
        return Unavailable(f"{path} is not available in this run" + (f" ({why})" if why else ""))
    return value


def _values(threshold: Threshold, summary: dict[str, Any], baseline: dict[str, Any] | None) -> Any:
    """The value (or ``{key: value}``) a threshold checks, or :class:`Unavailable`."""
    if threshold.compute is not None:
        state = _check_state(summary, threshold.metric)
        if state is not None:
            return state
        return threshold.compute(summary, baseline)
    state = _check_state(summary, threshold.metric)
    if state is not None:
        return state
    if not threshold.per_key:
        return _number(summary, lookup(summary, threshold.metric), threshold.metric)
    table_path, _, leaf = threshold.metric.partition(".{key}")
    table = lookup(summary, table_path)
    if not isinstance(table, dict):
        return Unavailable(f"{table_path} is not available in this run")
    keys = [str(k) for k in table]
    if threshold.keys_from == "class_names":
        keys += [c for c in summary.get("class_names", []) if c not in table]
    out: dict[str, Any] = {}
    for key in keys:
        path = threshold.metric.format(key=key)
        if key not in table and threshold.absent_value is not None:
            out[key] = threshold.absent_value
            continue
        row = table.get(key)
        value = lookup(row, leaf.lstrip(".")) if leaf and isinstance(row, dict) else (row if not leaf else None)
        out[key] = _number(summary, None if isinstance(value, Unavailable) else value, path)
    return out


def _ratchet_value(summary: dict[str, Any], ratchet: Ratchet) -> float | int | Unavailable:
    state = _check_state(summary, ratchet.metric)
    if state is not None:
        return state
    if "*" not in ratchet.metric:
        return _number(summary, lookup(summary, ratchet.metric), ratchet.metric)
    table_path, _, leaf = ratchet.metric.partition(".*")
    table = lookup(summary, table_path)
    if not isinstance(table, dict) or not table:
        return Unavailable(f"{table_path} is not available in this run")
    values = []
    for key, row in table.items():
        path = f"{table_path}.{key}{leaf}"
        value = _number(summary, lookup(row, leaf.lstrip(".")) if isinstance(row, dict) else None, path)
        if isinstance(value, Unavailable):
            return value
        values.append(value)
    return min(values) if ratchet.reduce != "max" else max(values)


def _ratchet(rules: _Rules, run: RunResults, baseline: RunResults | None, tolerance: float) -> None:
    """One rule per declared ratchet metric the baseline has: the run may not be worse by more than ``tolerance``."""
    ratchets = declared_ratchets()
    if baseline is None:
        rules.add("ratchet", "baseline",
                  Unavailable("ratchet needs a baseline run (pass --baseline PREVIOUS_RUN_DIR or auto)",
                              needs_baseline=True), None, "<=", "ratchet")
        return
    compared = 0
    for ratchet in ratchets:
        previous = _ratchet_value(baseline.summary, ratchet)
        if isinstance(previous, Unavailable):
            continue  # nothing released to ratchet against
        compared += 1
        higher = ratchet.higher_is_better
        threshold = previous - tolerance if higher else previous + tolerance
        op: Literal["<=", ">="] = ">=" if higher else "<="
        value = _ratchet_value(run.summary, ratchet)
        if isinstance(value, Unavailable):
            value = Unavailable(f"{value.reason}, but baseline {baseline.name!r} has {ratchet.name} = {_fmt(previous)}")
        label = f"{ratchet.name} (baseline {baseline.name!r}: {_fmt(previous)}, tolerance {_fmt(tolerance)})"
        metric = ratchet.metric if "*" not in ratchet.metric else f"{ratchet.reduce or 'min'} of {ratchet.metric}"
        rules.add(f"ratchet[{ratchet.name}]", metric, value, threshold, op, label)
    if not compared:
        names = ", ".join(r.name for r in ratchets)
        rules.add("ratchet", "baseline",
                  Unavailable(f"baseline {baseline.name!r} has none of the ratcheted metrics ({names})"),
                  None, "<=", "ratchet")


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
