"""End to end: the GitHub Actions job documented in README.md, run step by step on the digits demo with the
installed ``label-audit`` console script, as CI would run it."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from junitparser import JUnitXml

from audit import gate
from audit.demo import build_demo_dataset

REPO = Path(__file__).resolve().parents[1]
RUN_NAME = "ci-flow"

pytestmark = pytest.mark.slow


def installed_script() -> Path:
    """The ``label-audit`` console script of the environment running the tests."""
    candidate = Path(sys.prefix) / "bin" / "label-audit"
    if candidate.is_file():
        return candidate
    found = shutil.which("label-audit")
    if found is None:
        pytest.fail("the label-audit console script is not installed (pip install -e '.[test]')")
    return Path(found)


def documented_workflow() -> dict[str, Any]:
    """The GitHub Actions workflow YAML block of the README."""
    text = (REPO / "README.md").read_text(encoding="utf-8")
    blocks = re.findall(r"```yaml\n(.*?)```", text, flags=re.S)
    workflows = [b for b in blocks if b.lstrip().startswith("# .github/workflows/")]
    assert len(workflows) == 1, "README.md should hold exactly one workflow YAML block"
    return yaml.safe_load(workflows[0])


def step(workflow: dict[str, Any], name_start: str) -> dict[str, Any]:
    steps = [s for s in workflow["jobs"]["audit"]["steps"] if s.get("name", "").startswith(name_start)]
    assert len(steps) == 1, name_start
    return steps[0]


def expand(text: str, env: dict[str, str]) -> str:
    """Replace the ``${{ env.X }}`` expressions GitHub evaluates before a step runs."""
    return re.sub(r"\$\{\{\s*env\.(\w+)\s*\}\}", lambda m: env[m.group(1)], text)


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> Path:
    """A dataset repository checkout: the demo images, a ``.venv`` holding label-audit (the install step's
    result), and room for ``label-audit.yaml``."""
    root = tmp_path_factory.mktemp("checkout")
    build_demo_dataset(root / "data", noise=0.1, annotators=3, seed=0, limit=300)
    (root / ".venv").symlink_to(installed_script().parent.parent, target_is_directory=True)
    return root


def write_config(workspace: Path, gate: dict[str, Any], baseline: str | None = None, projection: bool = True) -> None:
    config: dict[str, Any] = {
        "source": {"kind": "manifest", "path": "data/manifest.csv", "annotations": "data/annotations.csv"},
        # CLIP weights cannot be downloaded here; the pixels embedder runs the same pipeline offline.
        "embedder": {"kind": "pixels", "cache_dir": str(workspace / "embedding-cache")},
        "projection": {"n_neighbors": 10, "enabled": projection},
        "gate": gate,
    }
    if baseline:
        config["baseline"] = baseline
    (workspace / "label-audit.yaml").write_text(yaml.safe_dump(config), encoding="utf-8")


def run_steps(workspace: Path, workflow: dict[str, Any]) -> tuple[int, str]:
    """Run the audit step, then the (``if: always()``) summary step, like the runner does; returns the audit
    step's exit code and its output."""
    summary_file = workspace / "step-summary.md"
    summary_file.write_text("", encoding="utf-8")
    env = {
        **os.environ,
        "RUN_NAME": RUN_NAME,
        "GITHUB_STEP_SUMMARY": str(summary_file),
        "FIFTYONE_DO_NOT_TRACK": "true",
    }
    audit = subprocess.run(
        ["bash", "-e", "-c", step(workflow, "Audit")["run"]],
        cwd=workspace,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    publish = subprocess.run(
        ["bash", "-e", "-c", step(workflow, "Publish")["run"]],
        cwd=workspace,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert publish.returncode == 0, publish.stderr
    return audit.returncode, audit.stdout + audit.stderr


def uploaded_files(workspace: Path, workflow: dict[str, Any]) -> list[Path]:
    paths = expand(step(workflow, "Upload")["with"]["path"], {"RUN_NAME": RUN_NAME})
    return [workspace / line.strip() for line in paths.splitlines() if line.strip()]


def test_the_documented_workflow_installs_audits_gates_and_always_uploads():
    workflow = documented_workflow()
    job = workflow["jobs"]["audit"]
    assert "RUN_NAME" in job["env"]
    install = step(workflow, "Install")["run"]
    assert "python3 -m venv .venv" in install and "'label-audit[mongo]'" in install
    audit = step(workflow, "Audit")["run"]
    assert audit.startswith(".venv/bin/label-audit run --config label-audit.yaml") and "--gate" in audit
    publish = step(workflow, "Publish")
    assert publish["if"] == "always()" and '>> "$GITHUB_STEP_SUMMARY"' in publish["run"]
    upload = step(workflow, "Upload")
    assert upload["if"] == "always()" and upload["uses"].startswith("actions/upload-artifact@")
    names = [p.name for p in uploaded_files(Path("."), workflow)]
    assert {"index.html", "gate.xml"} <= set(names)


def test_ci_flow_passes_then_fails_on_thresholds_and_exits_2_on_a_broken_config(workspace):
    workflow = documented_workflow()
    run_dir = workspace / "reports" / RUN_NAME

    # 1. A config the demo meets: exit 0, report + JUnit + summary table, all the uploaded files present.
    write_config(
        workspace,
        {
            "max_issue_rate": 0.5,
            "min_samples_per_class": 10,
            "max_unreadable": 2,
            "min_annotator_quality": 0.0,
        },
    )
    code, output = run_steps(workspace, workflow)
    assert code == 0, output
    assert "gate PASSED" in output
    for file in uploaded_files(workspace, workflow):
        assert file.is_file(), file
    assert "Release gate: PASSED" in (run_dir / "index.html").read_text(encoding="utf-8")
    suite = next(iter(JUnitXml.fromfile(str(run_dir / "gate.xml"))))
    assert suite.name == "label-audit gate" and suite.tests >= 13 and suite.failures == 0
    step_summary = (workspace / "step-summary.md").read_text(encoding="utf-8")
    assert step_summary.startswith("## ✅ label-audit gate PASSED")
    released = json.loads((run_dir / "summary.json").read_text())
    assert released["gate"]["passed"] is True

    # Release it: the next runs compare with it (the two files the docs say are enough).
    (workspace / "audit" / "released").mkdir(parents=True)
    for name in ("summary.json", "samples.parquet"):
        shutil.copy(run_dir / name, workspace / "audit" / "released" / name)
    shutil.rmtree(run_dir)

    # 2. Same data against the released run: ratchet and share shift hold, the unreadable rule fails: exit 1.
    write_config(
        workspace,
        {"max_unreadable": 0, "ratchet": True, "max_class_share_shift": 0.0},
        baseline="audit/released",
        projection=False,  # the map does not change the gated metrics; saves the UMAP time
    )
    code, output = run_steps(workspace, workflow)
    assert code == 1, output
    assert "FAIL  max_unreadable" in output and "gate FAILED: 1 of" in output
    verdict = json.loads((run_dir / "gate.json").read_text())
    assert verdict["baseline"]["path"].endswith("audit/released")
    ratchet = [r for r in verdict["rules"] if r["name"].startswith("ratchet[")]
    # every declared ratchet whose metric an image-classification run has (mask ratchets are skipped: no baseline)
    assert {r["name"] for r in ratchet} == {f"ratchet[{r.name}]" for r in gate.declared_ratchets()
                                             if not r.metric.startswith("checks.mask")}
    assert all(r["passed"] for r in ratchet), ratchet
    assert all(r["passed"] for r in verdict["rules"] if r["name"].startswith("max_class_share_shift["))
    for file in uploaded_files(workspace, workflow):
        assert file.is_file(), file
    assert "## ❌ label-audit gate FAILED" in (workspace / "step-summary.md").read_text(encoding="utf-8")
    assert "Release gate: FAILED" in (run_dir / "index.html").read_text(encoding="utf-8")

    # 3. A broken config: exit 2 with a one-line reason, and the summary step still reports.
    shutil.rmtree(run_dir)
    (workspace / "label-audit.yaml").write_text("source: {kind: manifest, path: data/manifest.csv\n")
    code, output = run_steps(workspace, workflow)
    assert code == 2, output
    assert "label-audit: error: config file label-audit.yaml is not valid YAML" in output
    assert "did not reach the gate" in (workspace / "step-summary.md").read_text(encoding="utf-8")
