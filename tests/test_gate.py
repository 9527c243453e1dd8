"""The release gate: thresholds from config files and flags, every rule on contract-shaped and real runs, the
JUnit/Markdown/JSON outputs, and the CLI's exit codes."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from junitparser import Failure, JUnitXml, Skipped
from typer.testing import CliRunner

from audit import gate
from audit.cli import app
from audit.config import ConfigError
from audit.results import RunResults, write_run

CLASSES = ["cat", "dog", "fox"]


# --------------------------------------------------------------------------- contract-shaped run folders


def contract_summary(
    counts: dict[str, int] | None = None,
    issue_rate: float = 0.04,
    class_issue_rates: dict[str, float] | None = None,
    label_health: float = 0.9,
    alpha: float | None = 0.8,
    kappa: float | None = 0.78,
    class_alpha: dict[str, float | None] | None = None,
    annotator_quality: dict[str, float] | None = None,
    annotators: bool = True,
    unreadable: int = 0,
    baseline_deltas: dict[str, float] | None = None,
) -> dict[str, Any]:
    """A summary with the keys the contract promises (what audit.runner writes), values chosen by the test."""
    counts = counts or {"cat": 50, "dog": 30, "fox": 20}
    total = sum(counts.values())
    class_issue_rates = class_issue_rates or dict.fromkeys(counts, issue_rate)
    distribution: dict[str, Any] = {
        "classes": {c: {"count": n, "share": n / total} for c, n in counts.items()},
        "min_class_count": min(counts.values()),
        "baseline": None,
    }
    if baseline_deltas is not None:
        distribution["baseline"] = {
            "run_name": "previous",
            "deltas": {c: {"share_delta": d} for c, d in baseline_deltas.items()},
        }
    agreement: dict[str, Any] = {"skipped": "no annotator labels"}
    if annotators:
        class_alpha = class_alpha or dict.fromkeys(counts, alpha)
        annotator_quality = annotator_quality or {"ann_a": 0.9, "ann_b": 0.8, "ann_c": 0.7}
        agreement = {
            "n_annotators": len(annotator_quality),
            "annotators": list(annotator_quality),
            "krippendorff_alpha": alpha,
            "fleiss_kappa": kappa,
            "per_class": {
                c: {"n_items": n, "krippendorff_alpha": class_alpha[c], "fleiss_kappa": class_alpha[c]}
                for c, n in counts.items()
            },
            "per_annotator": {a: {"n_labels": 10, "quality": q} for a, q in annotator_quality.items()},
        }
    return {
        "run_name": "synthetic",
        "counts": {"samples": total, "readable": total - unreadable, "unreadable": unreadable, "classes": 3},
        "class_names": sorted(counts),
        "checks": {
            "distribution": distribution,
            "agreement": agreement,
            "mistakes": {
                "issue_rate": issue_rate,
                "label_health": label_health,
                "per_class": {
                    c: {
                        "n": n,
                        "n_issues": round(n * class_issue_rates[c]),
                        "issue_rate": class_issue_rates[c],
                    }
                    for c, n in counts.items()
                },
            },
        },
    }


def write_contract_run(path: Path, **kwargs: Any) -> RunResults:
    summary = contract_summary(**kwargs)
    summary["run_name"] = path.name
    labels = [c for c, row in summary["checks"]["distribution"]["classes"].items() for _ in range(row["count"])]
    samples = pd.DataFrame(
        {"filepath": [f"/data/{i}.png" for i in range(len(labels))], "label": labels, "readable": True},
        index=pd.Index([f"s{i}" for i in range(len(labels))], name="sample_id"),
    )
    return write_run(path, samples, summary)


def rule(verdict: gate.GateVerdict, name: str) -> gate.GateRule:
    matches = [r for r in verdict.rules if r.name == name]
    assert len(matches) == 1, [r.name for r in verdict.rules]
    return matches[0]


# ------------------------------------------------------------------------------------------- thresholds


def test_thresholds_come_from_the_run_config_file_and_string_overrides_win(tmp_path):
    config = tmp_path / "label-audit.yaml"
    config.write_text(
        "source: {kind: folder, path: data}\n"
        "gate:\n  max_issue_rate: 0.05\n  min_samples_per_class: 20\n"
        "  ratchet: false\n  min_label_health: 0.7\n"
    )
    thresholds = gate.load_thresholds(
        config,
        {"max_issue_rate": "0.1", "ratchet": "yes", "min_fleiss_kappa": "-0.2", "min_label_health": "none"},
    )
    assert thresholds == {
        "max_issue_rate": 0.1,
        "min_fleiss_kappa": -0.2,
        "min_samples_per_class": 20,
        "ratchet": True,
    }
    assert isinstance(thresholds["min_samples_per_class"], int)


def test_thresholds_from_pyproject_tool_table_and_plain_toml(tmp_path):
    pyproject = tmp_path / "pyproject.toml"
    pyproject.write_text('[project]\nname = "x"\n\n[tool.label-audit.gate]\nmax_unreadable = 3\nskip_missing = true\n')
    assert gate.load_thresholds(pyproject, {}) == {"max_unreadable": 3, "skip_missing": True}
    toml = tmp_path / "audit.toml"
    toml.write_text("[gate]\nmax_unreadable_rate = 0.01\n")
    assert gate.load_thresholds(toml, None) == {"max_unreadable_rate": 0.01}
    assert gate.load_thresholds(None, {"max_class_share_shift": "0.05"}) == {"max_class_share_shift": 0.05}


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        (
            {"max_isue_rate": "0.1"},
            r"unknown gate threshold 'max_isue_rate' in the overrides \(--set\) \(did you mean 'max_issue_rate'\?\)",
        ),
        ({"max_issue_rate": "abc"}, "'max_issue_rate' .* must be a number, got 'abc'"),
        ({"max_issue_rate": "1.5"}, "'max_issue_rate' .* must be a share between 0 and 1"),
        ({"min_krippendorff_alpha": "-2"}, "between -1 and 1"),
        ({"min_samples_per_class": "2.5"}, "whole number"),
        ({"max_unreadable": "nan"}, "finite"),
        ({"ratchet": "maybe"}, "'ratchet' .* must be true or false"),
        ({"max_issue_rate": True}, "must be a number"),
        ({"skip_missing": "true"}, "no gate thresholds configured"),
        ({"ratchet": "false"}, "no gate thresholds configured"),
        ({}, "no gate thresholds configured"),
    ],
)
def test_bad_thresholds_raise_a_clear_gate_config_error(overrides, expected):
    with pytest.raises(gate.GateConfigError, match=expected):
        gate.load_thresholds(None, overrides)


def test_gate_config_errors_are_config_errors_so_the_cli_exits_2():
    assert issubclass(gate.GateConfigError, ConfigError)
    assert issubclass(gate.GateConfigError, ValueError)


def test_broken_config_file_and_bad_gate_section(tmp_path):
    broken = tmp_path / "broken.yaml"
    broken.write_text("gate:\n  max_issue_rate: [0.1\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        gate.load_thresholds(broken, {})
    listed = tmp_path / "listed.yaml"
    listed.write_text("gate:\n  - max_issue_rate\n")
    with pytest.raises(gate.GateConfigError, match="must be a mapping"):
        gate.load_thresholds(listed, {})
    unknown = tmp_path / "unknown.yaml"
    unknown.write_text("gate:\n  max_noise: 0.1\n")
    with pytest.raises(
        gate.GateConfigError, match=rf"unknown gate threshold 'max_noise' in the gate section of {unknown}"
    ):
        gate.load_thresholds(unknown, {})


# ------------------------------------------------------------------------- rules on contract-shaped runs


def test_every_rule_on_a_contract_run_reads_the_documented_keys(tmp_path):
    run = write_contract_run(
        tmp_path / "run",
        counts={"cat": 50, "dog": 30, "fox": 5},
        issue_rate=0.08,
        class_issue_rates={"cat": 0.02, "dog": 0.1, "fox": 0.2},
        label_health=0.75,
        alpha=0.6,
        kappa=0.55,
        class_alpha={"cat": 0.9, "dog": 0.5, "fox": 0.3},
        annotator_quality={"ann_a": 0.9, "ann_b": 0.4},
        unreadable=2,
    )
    thresholds = {
        "max_issue_rate": 0.1,
        "max_class_issue_rate": 0.15,
        "min_label_health": 0.8,
        "min_krippendorff_alpha": 0.5,
        "min_fleiss_kappa": 0.6,
        "min_class_krippendorff_alpha": 0.4,
        "min_class_fleiss_kappa": 0.4,
        "min_annotator_quality": 0.5,
        "min_samples_per_class": 10,
        "max_unreadable": 1,
        "max_unreadable_rate": 0.05,
    }
    verdict = gate.evaluate(run, None, thresholds)
    outcome = {r.name: r.passed for r in verdict.rules}
    assert outcome == {
        "max_issue_rate": True,
        "max_class_issue_rate[cat]": True,
        "max_class_issue_rate[dog]": True,
        "max_class_issue_rate[fox]": False,
        "min_label_health": False,
        "min_krippendorff_alpha": True,
        "min_fleiss_kappa": False,
        "min_class_krippendorff_alpha[cat]": True,
        "min_class_krippendorff_alpha[dog]": True,
        "min_class_krippendorff_alpha[fox]": False,
        "min_class_fleiss_kappa[cat]": True,
        "min_class_fleiss_kappa[dog]": True,
        "min_class_fleiss_kappa[fox]": False,
        "min_annotator_quality[ann_a]": True,
        "min_annotator_quality[ann_b]": False,
        "min_samples_per_class[cat]": True,
        "min_samples_per_class[dog]": True,
        "min_samples_per_class[fox]": False,
        "max_unreadable": False,
        "max_unreadable_rate": True,
    }
    assert not verdict.passed
    assert rule(verdict, "max_unreadable_rate").value == pytest.approx(2 / 85)
    failed = rule(verdict, "max_class_issue_rate[fox]")
    assert failed.metric == "checks.mistakes.per_class.fox.issue_rate"
    assert (failed.value, failed.threshold, failed.op) == (0.2, 0.15, "<=")
    assert "is above the maximum 0.15" in failed.message
    assert "below the minimum 0.8" in rule(verdict, "min_label_health").message


def test_boundary_values_pass(tmp_path):
    run = write_contract_run(tmp_path / "run", issue_rate=0.05, label_health=0.9)
    verdict = gate.evaluate(run, None, {"max_issue_rate": 0.05, "min_label_health": 0.9})
    assert verdict.passed


def test_unavailable_metric_fails_unless_skip_missing(tmp_path):
    run = write_contract_run(tmp_path / "run", annotators=False)
    thresholds = {
        "max_issue_rate": 0.5,
        "min_krippendorff_alpha": 0.5,
        "min_class_fleiss_kappa": 0.5,
        "min_annotator_quality": 0.5,
    }
    verdict = gate.evaluate(run, None, thresholds)
    assert [r.name for r in verdict.rules] == [
        "max_issue_rate",
        "min_krippendorff_alpha",
        "min_class_fleiss_kappa",
        "min_annotator_quality",
    ]
    assert not verdict.passed
    missing = rule(verdict, "min_krippendorff_alpha")
    assert missing.value is None and not missing.passed and not missing.skipped
    assert "metric unavailable: the agreement check was skipped (no annotator labels)" in missing.message
    assert "skip_missing" in missing.message

    skipping = gate.evaluate(run, None, {**thresholds, "skip_missing": True})
    assert skipping.passed
    assert [r.name for r in skipping.skipped_rules] == [
        "min_krippendorff_alpha",
        "min_class_fleiss_kappa",
        "min_annotator_quality",
    ]
    assert skipping.headline() == "gate PASSED: 1 of 4 rules passed, 3 skipped"


def test_a_null_per_class_value_is_unavailable_not_zero(tmp_path):
    run = write_contract_run(tmp_path / "run", class_alpha={"cat": 0.9, "dog": None, "fox": 0.7})
    verdict = gate.evaluate(run, None, {"min_class_krippendorff_alpha": 0.5})
    dog = rule(verdict, "min_class_krippendorff_alpha[dog]")
    assert not dog.passed and dog.value is None
    assert "checks.agreement.per_class.dog.krippendorff_alpha is not available" in dog.message


def test_a_null_metric_carries_the_reason_the_check_recorded(tmp_path):
    summary = contract_summary(annotator_quality={"ann_a": 0.9, "ann_b": 0.8})
    agreement = summary["checks"]["agreement"]
    for row in agreement["per_annotator"].values():
        row["quality"] = None
    agreement["null_reasons"] = {"quality": "cleanlab's consensus quality needs two annotators"}
    samples = pd.DataFrame({"label": ["cat"]}, index=pd.Index(["s0"], name="sample_id"))
    run = write_run(tmp_path / "run", samples, summary)
    verdict = gate.evaluate(run, None, {"min_annotator_quality": 0.5})
    assert [r.passed for r in verdict.rules] == [False, False]
    assert "(cleanlab's consensus quality needs two annotators)" in verdict.rules[0].message


def test_a_per_class_rule_over_no_classes_fails_rather_than_passing_with_no_rules(tmp_path):
    summary = contract_summary()
    summary["checks"]["distribution"]["classes"] = {}
    summary["class_names"] = []
    samples = pd.DataFrame({"label": ["cat"]}, index=pd.Index(["s0"], name="sample_id"))
    verdict = gate.evaluate(write_run(tmp_path / "run", samples, summary), None, {"min_samples_per_class": 1})
    assert [(r.name, r.passed) for r in verdict.rules] == [("min_samples_per_class", False)]
    assert "checks.distribution.classes is empty in this run" in verdict.rules[0].message


def test_class_share_shift_against_a_baseline_covers_new_and_vanished_classes(tmp_path):
    before = write_contract_run(tmp_path / "before", counts={"cat": 50, "dog": 30, "fox": 20})
    after = write_contract_run(tmp_path / "after", counts={"cat": 50, "dog": 30, "owl": 20})
    verdict = gate.evaluate(after, before, {"max_class_share_shift": 0.1})
    shifts = {r.name: r.value for r in verdict.rules}
    assert shifts == pytest.approx(
        {
            "max_class_share_shift[cat]": 0.0,
            "max_class_share_shift[dog]": 0.0,
            "max_class_share_shift[owl]": 0.2,
            "max_class_share_shift[fox]": 0.2,
        }
    )
    assert [r.name for r in verdict.failed_rules] == [
        "max_class_share_shift[owl]",
        "max_class_share_shift[fox]",
    ]
    assert verdict.baseline_name == "before"


def test_class_share_shift_without_baseline_uses_the_recorded_deltas_or_fails(tmp_path):
    recorded = write_contract_run(tmp_path / "recorded", baseline_deltas={"cat": -0.02, "dog": 0.15, "fox": -0.13})
    verdict = gate.evaluate(recorded, None, {"max_class_share_shift": 0.1})
    assert {r.name: r.passed for r in verdict.rules} == {
        "max_class_share_shift[cat]": True,
        "max_class_share_shift[dog]": False,
        "max_class_share_shift[fox]": False,
    }
    assert rule(verdict, "max_class_share_shift[fox]").value == pytest.approx(0.13)
    bare = write_contract_run(tmp_path / "bare")
    lonely = gate.evaluate(bare, None, {"max_class_share_shift": 0.1})
    assert [r.name for r in lonely.rules] == ["max_class_share_shift"]
    assert "needs a baseline run" in lonely.rules[0].message and not lonely.passed


def test_ratchet_rules_compare_with_the_baseline_and_honour_the_tolerance(tmp_path):
    before = write_contract_run(
        tmp_path / "before",
        issue_rate=0.05,
        label_health=0.9,
        alpha=0.8,
        kappa=0.8,
        annotator_quality={"a": 0.9, "b": 0.7},
    )
    after = write_contract_run(
        tmp_path / "after",
        issue_rate=0.06,
        label_health=0.9,
        alpha=0.79,
        kappa=0.85,
        annotator_quality={"a": 0.95, "b": 0.69},
    )
    strict = gate.evaluate(after, before, {"ratchet": True})
    assert {r.name: r.passed for r in strict.rules} == {
        "ratchet[issue_rate]": False,
        "ratchet[label_health]": True,
        "ratchet[krippendorff_alpha]": False,
        "ratchet[fleiss_kappa]": True,
        "ratchet[min_annotator_quality]": False,
    }
    issue = rule(strict, "ratchet[issue_rate]")
    assert (issue.value, issue.threshold, issue.op) == (0.06, 0.05, "<=")
    assert "baseline 'before'" in issue.message
    tolerant = gate.evaluate(after, before, {"ratchet": True, "ratchet_tolerance": 0.02})
    assert tolerant.passed, tolerant.lines()
    assert gate.evaluate(before, before, {"ratchet": True}).passed


def test_ratchet_skips_metrics_the_baseline_lacks_but_fails_metrics_the_run_lost(tmp_path):
    plain = write_contract_run(tmp_path / "plain", annotators=False)
    rich = write_contract_run(tmp_path / "rich")
    grew = gate.evaluate(rich, plain, {"ratchet": True})
    assert [r.name for r in grew.rules] == ["ratchet[issue_rate]", "ratchet[label_health]"]
    lost = gate.evaluate(plain, rich, {"ratchet": True})
    alpha = rule(lost, "ratchet[krippendorff_alpha]")
    assert not alpha.passed and "but baseline 'rich' has krippendorff_alpha = 0.8" in alpha.message
    no_baseline = gate.evaluate(rich, None, {"ratchet": True})
    assert [r.name for r in no_baseline.rules] == ["ratchet"] and not no_baseline.passed


def test_evaluate_validates_thresholds_too(tmp_path):
    run = write_contract_run(tmp_path / "run")
    with pytest.raises(gate.GateConfigError, match="unknown gate threshold"):
        gate.evaluate(run, None, {"max_issue_rat": 0.1})
    with pytest.raises(gate.GateConfigError, match="no gate thresholds"):
        gate.evaluate(run, None, {})


# ----------------------------------------------------------------------------------------------- outputs


def test_write_verdict_writes_json_junit_markdown_and_the_summary(tmp_path):
    run = write_contract_run(tmp_path / "run", issue_rate=0.2, annotators=False)
    verdict = gate.evaluate(
        run,
        None,
        {"max_issue_rate": 0.1, "min_label_health": 0.5, "min_fleiss_kappa": 0.5, "skip_missing": True},
    )
    gate.write_verdict(run.path, verdict)

    stored = json.loads((run.path / "gate.json").read_text())
    summary = RunResults.load(run.path).summary["gate"]
    assert stored["passed"] is False and summary["passed"] is False
    assert summary["thresholds"] == {
        "max_issue_rate": 0.1,
        "min_label_health": 0.5,
        "min_fleiss_kappa": 0.5,
        "skip_missing": True,
    }
    assert [(r["name"], r["status"]) for r in summary["rules"]] == [
        ("max_issue_rate", "fail"),
        ("min_label_health", "pass"),
        ("min_fleiss_kappa", "skipped"),
    ]
    assert set(summary["rules"][0]) >= {"name", "value", "threshold", "passed", "message"}

    xml = JUnitXml.fromfile(str(run.path / "gate.xml"))
    suites = list(xml)
    assert [s.name for s in suites] == ["label-audit gate"]
    suite = suites[0]
    assert (suite.tests, suite.failures, suite.skipped, suite.errors) == (3, 1, 1, 0)
    cases = {case.name: case for case in suite}
    assert set(cases) == {"max_issue_rate", "min_label_health", "min_fleiss_kappa"}
    assert isinstance(cases["max_issue_rate"].result[0], Failure)
    assert "above the maximum 0.1" in cases["max_issue_rate"].result[0].message
    assert cases["min_label_health"].is_passed
    assert isinstance(cases["min_fleiss_kappa"].result[0], Skipped)

    markdown = (run.path / "gate.md").read_text()
    assert markdown.startswith("## ❌ label-audit gate FAILED: 1 of 3 rules failed, 1 skipped")
    assert "| ❌ | `max_issue_rate` | 0.2 | ≤ 0.1 |" in markdown
    assert "| ✅ | `min_label_health` |" in markdown and "| ⏭️ | `min_fleiss_kappa` |" in markdown


def test_console_lines_one_per_rule_then_the_headline(tmp_path):
    run = write_contract_run(tmp_path / "run", issue_rate=0.02)
    verdict = gate.evaluate(run, None, {"max_issue_rate": 0.05, "min_samples_per_class": 25})
    lines = verdict.lines()
    assert len(lines) == len(verdict.rules) + 1 == 5
    assert lines[0].split()[:4] == ["PASS", "max_issue_rate", "value=0.02", "threshold"]
    assert lines[3].startswith("FAIL  min_samples_per_class[fox]  value=20  threshold >= 25")
    assert lines[-1] == "gate FAILED: 1 of 4 rules failed"


def test_importing_the_gate_stays_light():
    """`label-audit gate` must start fast in CI: no torch, open_clip, umap, fiftyone or plotly."""
    code = (
        "import sys, audit.gate; "
        "print(sorted(m for m in ('torch', 'open_clip', 'umap', 'fiftyone', 'plotly') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


# ------------------------------------------------------------------------------------- CLI exit codes


def invoke(*args: str | Path):
    return CliRunner().invoke(app, [str(a) for a in args])


def test_cli_gate_exit_codes(tmp_path):
    run = write_contract_run(tmp_path / "run", issue_rate=0.08)
    config = tmp_path / "gate.yaml"
    config.write_text("gate:\n  max_issue_rate: 0.1\n")

    passed = invoke("gate", run.path, "--config", config)
    assert passed.exit_code == 0, passed.output
    assert "PASS  max_issue_rate  value=0.08  threshold <= 0.1" in passed.output
    assert (run.path / "gate.xml").is_file()

    failed = invoke("gate", run.path, "--config", config, "--set", "max_issue_rate=0.05")
    assert failed.exit_code == 1, failed.output
    assert "gate FAILED: 1 of 1 rule failed" in failed.output
    assert RunResults.load(run.path).summary["gate"]["passed"] is False

    for args, message in [
        (("--set", "max_issue_rate=lots"), "must be a number"),
        (("--set", "max_mislabels=0.1"), "unknown gate threshold"),
        ((), "no gate thresholds configured"),
    ]:
        bad = invoke("gate", run.path, *args)
        assert bad.exit_code == 2, bad.output
        assert message in bad.output

    broken = tmp_path / "broken.yaml"
    broken.write_text("gate: {max_issue_rate: 0.1\n")
    result = invoke("gate", run.path, "--config", broken)
    assert result.exit_code == 2 and "is not valid YAML" in result.output
    missing = invoke("gate", tmp_path / "nowhere", "--config", config)
    assert missing.exit_code == 2 and "is not a label-audit run folder" in missing.output


def test_cli_gate_baseline_shift_fails(tmp_path):
    before = write_contract_run(tmp_path / "before", counts={"cat": 50, "dog": 30, "fox": 20})
    after = write_contract_run(tmp_path / "after", counts={"cat": 70, "dog": 25, "fox": 5})
    result = invoke("gate", after.path, "--baseline", before.path, "--set", "max_class_share_shift=0.1")
    assert result.exit_code == 1, result.output
    assert "FAIL  max_class_share_shift[cat]" in result.output
    assert "FAIL  max_class_share_shift[fox]" in result.output
    assert "PASS  max_class_share_shift[dog]" in result.output
    assert math.isclose(RunResults.load(after.path).summary["gate"]["rules"][0]["value"], 0.2)


# ----------------------------------------------------------------------------- real runs on the demo data

DEMO_LIMIT = 400  # images per demo run: enough for stable metrics, a few seconds each with the pixels embedder


def demo_run(root: Path, name: str, noise: float, annotators: int, edit=None) -> RunResults:
    """Build the digits demo with ``noise`` injected, optionally ``edit(dataset)`` its files, and audit it."""
    from audit.config import build_config
    from audit.demo import build_demo_dataset
    from audit.runner import run as run_audit

    data = build_demo_dataset(root / f"{name}-data", noise=noise, annotators=annotators, seed=0, limit=DEMO_LIMIT)
    if edit is not None:
        edit(data)
    config = build_config(
        overrides={
            "source": {"kind": "manifest", "path": data.manifest, "annotations": data.annotations},
            "embedder": {"kind": "pixels", "cache_dir": root / "cache"},
            "projection": {"enabled": False},
            "output_dir": root / "reports",
            "run_name": name,
            "report": False,
        }
    )
    return run_audit(config, progress=False)


def noisier_annotators(data) -> None:
    """Two of the three annotators replace half their labels with random digits (more annotator noise)."""
    rng = np.random.default_rng(1)
    table = pd.read_csv(data.annotations, dtype=str)
    sloppy = table["annotator"].isin(["bob", "carol"]).to_numpy() & (rng.random(len(table)) < 0.5)
    table.loc[sloppy, "label"] = rng.integers(0, 10, sloppy.sum()).astype(str)
    table.to_csv(data.annotations, index=False)


def fewer_zeros(data) -> None:
    """Keep only 5 images of class '0': a class shift against the other runs."""
    manifest = pd.read_csv(data.manifest, dtype=str)
    zeros = manifest.index[manifest["label"] == "0"]
    manifest.drop(zeros[5:]).to_csv(data.manifest, index=False)


@pytest.fixture(scope="module")
def demo_runs(tmp_path_factory) -> dict[str, RunResults]:
    """Three real audits, each once: little noise, much noise (labels and annotators), and a class shift
    without annotators."""
    root = tmp_path_factory.mktemp("gate-demo")
    return {
        "clean": demo_run(root, "clean", noise=0.02, annotators=3),
        "noisy": demo_run(root, "noisy", noise=0.3, annotators=3, edit=noisier_annotators),
        "shifted": demo_run(root, "shifted", noise=0.02, annotators=0, edit=fewer_zeros),
    }


def between(better: float, worse: float) -> float:
    return (better + worse) / 2


@pytest.mark.slow
def test_real_mislabel_rules_pass_on_little_noise_and_fail_on_much(demo_runs):
    clean, noisy = demo_runs["clean"], demo_runs["noisy"]
    rate = {n: demo_runs[n].check_metrics("mistakes")["issue_rate"] for n in ("clean", "noisy")}
    health = {n: demo_runs[n].check_metrics("mistakes")["label_health"] for n in ("clean", "noisy")}
    assert rate["clean"] < rate["noisy"] and health["clean"] > health["noisy"]
    # A small class of the clean run can hold a few real errors (2% noise), so the per-class threshold sits between
    # the two runs' worst classes, not between their overall rates.
    worst = {n: max(v["issue_rate"] or 0.0 for v in demo_runs[n].check_metrics("mistakes")["per_class"].values())
             for n in ("clean", "noisy")}
    assert worst["clean"] < worst["noisy"]
    thresholds = {
        "max_issue_rate": round(between(rate["clean"], rate["noisy"]), 4),
        "min_label_health": round(between(health["clean"], health["noisy"]), 4),
        "max_class_issue_rate": round(between(worst["clean"], worst["noisy"]), 4),
    }
    passing, failing = gate.evaluate(clean, None, thresholds), gate.evaluate(noisy, None, thresholds)
    assert passing.passed, passing.lines()
    assert {r.name for r in failing.failed_rules} >= {"max_issue_rate", "min_label_health"}
    assert rule(failing, "max_issue_rate").value == rate["noisy"]
    per_class = noisy.check_metrics("mistakes")["per_class"]
    class_rules = [r for r in failing.rules if r.name.startswith("max_class_issue_rate[")]
    assert len(class_rules) == len(noisy.class_names) == 10
    for r in class_rules:
        assert r.value == per_class[r.name[len("max_class_issue_rate[") : -1]]["issue_rate"]
        assert r.passed == (r.value <= thresholds["max_class_issue_rate"])
    assert sum(not r.passed for r in class_rules) >= 1


@pytest.mark.slow
def test_real_agreement_rules_pass_on_careful_annotators_and_fail_on_sloppy(demo_runs):
    clean, noisy = demo_runs["clean"], demo_runs["noisy"]
    good, bad = clean.check_metrics("agreement"), noisy.check_metrics("agreement")
    thresholds: dict[str, Any] = {}
    for key in ("krippendorff_alpha", "fleiss_kappa"):
        assert good[key] > bad[key]
        thresholds[f"min_{key}"] = round(between(good[key], bad[key]), 4)
        # Per class: the weakest class of the careful run sets the bar.
        thresholds[f"min_class_{key}"] = round(min(row[key] for row in good["per_class"].values()), 4) - 1e-4
    passing, failing = gate.evaluate(clean, None, thresholds), gate.evaluate(noisy, None, thresholds)
    assert passing.passed, passing.lines()
    failed = {r.name for r in failing.failed_rules}
    assert {"min_krippendorff_alpha", "min_fleiss_kappa"} <= failed
    assert any(name.startswith("min_class_krippendorff_alpha[") for name in failed)
    assert any(name.startswith("min_class_fleiss_kappa[") for name in failed)
    assert rule(failing, "min_class_fleiss_kappa[7]").value == bad["per_class"]["7"]["fleiss_kappa"]


@pytest.mark.slow
def test_real_annotator_quality_rule_fails_the_least_reliable_annotator(demo_runs):
    quality = {a: row["quality"] for a, row in demo_runs["clean"].check_metrics("agreement")["per_annotator"].items()}
    assert quality["alice"] > quality["bob"] > quality["carol"]  # error rates 5%, 15%, 30%
    verdict = gate.evaluate(
        demo_runs["clean"], None, {"min_annotator_quality": between(quality["bob"], quality["carol"])}
    )
    assert {r.name: r.passed for r in verdict.rules} == {
        "min_annotator_quality[alice]": True,
        "min_annotator_quality[bob]": True,
        "min_annotator_quality[carol]": False,
    }


@pytest.mark.slow
def test_real_agreement_rules_without_annotators_fail_unless_skipped(demo_runs):
    thresholds = {"min_krippendorff_alpha": 0.1, "min_class_fleiss_kappa": 0.1, "min_annotator_quality": 0.1}
    verdict = gate.evaluate(demo_runs["shifted"], None, thresholds)
    assert not verdict.passed and len(verdict.rules) == 3
    assert all(r.value is None and "metric unavailable" in r.message for r in verdict.rules)
    assert gate.evaluate(demo_runs["shifted"], None, {**thresholds, "skip_missing": True}).passed


@pytest.mark.slow
def test_real_distribution_and_unreadable_rules(demo_runs):
    clean, shifted = demo_runs["clean"], demo_runs["shifted"]
    counts = shifted.check_metrics("distribution")["classes"]
    assert counts["0"]["count"] <= 5 < min(row["count"] for c, row in counts.items() if c != "0")
    thresholds = {"min_samples_per_class": 10, "max_unreadable": 2, "max_unreadable_rate": 0.01}
    assert gate.evaluate(clean, None, thresholds).passed
    verdict = gate.evaluate(shifted, None, thresholds)
    assert [r.name for r in verdict.failed_rules] == ["min_samples_per_class[0]"]
    # The demo ships a truncated and a missing image: 2 unreadable samples.
    strict = gate.evaluate(clean, None, {"max_unreadable": 1, "max_unreadable_rate": 0.001})
    assert [(r.name, r.value, r.passed) for r in strict.rules] == [
        ("max_unreadable", 2, False),
        ("max_unreadable_rate", pytest.approx(2 / clean.summary["counts"]["samples"]), False),
    ]


@pytest.mark.slow
def test_real_baseline_comparison_fails_on_a_class_shift(demo_runs):
    clean, shifted = demo_runs["clean"], demo_runs["shifted"]
    assert gate.evaluate(clean, clean, {"max_class_share_shift": 0.0}).passed
    verdict = gate.evaluate(shifted, clean, {"max_class_share_shift": 0.05})
    assert [r.name for r in verdict.failed_rules] == ["max_class_share_shift[0]"]
    before = clean.check_metrics("distribution")["classes"]["0"]["share"]
    after = shifted.check_metrics("distribution")["classes"]["0"]["share"]
    assert rule(verdict, "max_class_share_shift[0]").value == pytest.approx(before - after)


@pytest.mark.slow
def test_real_ratchet(demo_runs):
    clean, noisy, shifted = demo_runs["clean"], demo_runs["noisy"], demo_runs["shifted"]
    worse = gate.evaluate(noisy, clean, {"ratchet": True})
    # every declared ratchet but the mask ones, whose metrics an image run does not have
    assert {r.name for r in worse.rules} == {f"ratchet[{r.name}]" for r in gate.declared_ratchets()
                                              if not r.metric.startswith("checks.mask")}
    assert {r.name for r in worse.failed_rules} >= {
        "ratchet[issue_rate]",
        "ratchet[label_health]",
        "ratchet[krippendorff_alpha]",
        "ratchet[fleiss_kappa]",
    }
    assert gate.evaluate(clean, noisy, {"ratchet": True}).passed
    assert gate.evaluate(clean, clean, {"ratchet": True}).passed
    lost = gate.evaluate(shifted, clean, {"ratchet": True, "ratchet_tolerance": 1.0})
    assert {r.name for r in lost.failed_rules} == {
        "ratchet[krippendorff_alpha]",
        "ratchet[fleiss_kappa]",
        "ratchet[min_annotator_quality]",
    }


@pytest.mark.slow
def test_real_runs_through_the_cli(demo_runs, tmp_path):
    clean, noisy, shifted = demo_runs["clean"], demo_runs["noisy"], demo_runs["shifted"]
    config = tmp_path / "pyproject.toml"
    config.write_text("[tool.label-audit.gate]\nmax_issue_rate = 0.15\nmax_unreadable = 2\nratchet = true\n")
    ok = invoke("gate", clean.path, "--config", config, "--baseline", noisy.path)
    assert ok.exit_code == 0, ok.output
    worse = invoke("gate", noisy.path, "--config", config, "--baseline", clean.path)
    assert worse.exit_code == 1, worse.output
    assert "FAIL  ratchet[issue_rate]" in worse.output
    shift = invoke("gate", shifted.path, "--baseline", clean.path, "--set", "max_class_share_shift=0.05")
    assert shift.exit_code == 1 and "FAIL  max_class_share_shift[0]" in shift.output
    suite = next(iter(JUnitXml.fromfile(str(shifted.path / "gate.xml"))))
    failures = {case.name for case in suite if case.result and isinstance(case.result[0], Failure)}
    assert failures == {"max_class_share_shift[0]"} and suite.tests == 10
    assert RunResults.load(shifted.path).summary["gate"]["baseline"]["name"] == "clean"
