"""The embedded demo end to end, and the installed `label-audit` command itself."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from audit.demo import build_demo_dataset, run_demo

pytestmark = pytest.mark.slow


def _cli() -> str:
    found = shutil.which("label-audit") or str(Path(sys.prefix) / "bin" / "label-audit")
    assert Path(found).exists(), "the label-audit console script must be installed"
    return found


def _run_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "FIFTYONE_DO_NOT_TRACK": "true", "LABEL_AUDIT_CACHE": str(cwd / "cache")}
    return subprocess.run([_cli(), *args], capture_output=True, text=True, cwd=cwd, env=env, timeout=900)


def test_demo_dataset_truth_is_consistent(tmp_path: Path) -> None:
    data = build_demo_dataset(tmp_path, noise=0.2, annotators=0, seed=3)
    manifest = pd.read_csv(data.manifest, dtype=str).set_index("sample_id")
    assert len(data.truth) == 1797 and len(manifest) == 1799
    noisy = data.truth["is_noisy"]
    assert 0.17 < noisy.mean() < 0.23
    assert (manifest.loc[data.truth.index, "label"] == data.truth["given_label"]).all()
    pairs = build_demo_dataset(tmp_path / "p", noise=0.1, noise_kind="pairs", annotators=0, seed=3).truth
    swapped = pairs[pairs["is_noisy"]]
    partner = {"1": "7", "7": "1", "3": "8", "8": "3", "4": "9", "9": "4", "5": "6", "6": "5", "0": "2", "2": "0"}
    assert (swapped["given_label"] == swapped["true_label"].map(partner)).all()


def test_demo_finds_injected_noise(tmp_path: Path) -> None:
    outcome = run_demo(output_dir=tmp_path, noise=0.1, annotators=0, embedder="pixels", report=False,
                       cache_dir=tmp_path / "cache", progress=False)
    assert outcome.n_wrong > 150
    assert outcome.recall > 0.7 and outcome.precision > 0.7, outcome.lines()
    assert "pixels" in outcome.embedder


def test_cli_help_explains_options(tmp_path: Path) -> None:
    result = _run_cli("run", "--help", cwd=tmp_path)
    assert result.returncode == 0
    for option in ("--folder", "--manifest", "--annotations", "--pretrained", "--embeddings", "--pred-probs",
                   "--config", "--gate", "--baseline"):
        assert option in result.stdout


def test_cli_bad_input_exits_2_with_one_line(tmp_path: Path) -> None:
    result = _run_cli("run", "--folder", str(tmp_path / "nowhere"), "--embedder", "pixels", cwd=tmp_path)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    # stage lines ("[label-audit] sources ...") come first; the reason is one line, the last
    assert lines[-1].startswith("label-audit: error:") and "does not exist" in lines[-1]
    assert all(line.startswith("[label-audit] ") for line in lines[:-1])
    quiet = _run_cli("run", "--quiet", "--folder", str(tmp_path / "nowhere"), "--embedder", "pixels", cwd=tmp_path)
    assert quiet.returncode == 2 and quiet.stderr.strip().splitlines() == lines[-1:]
    result = _run_cli("run", cwd=tmp_path)
    assert result.returncode == 2 and "no source given" in result.stderr
    (tmp_path / "bad.yaml").write_text("source: {kind: folder, path: x\n")
    result = _run_cli("run", "--config", "bad.yaml", cwd=tmp_path)
    assert result.returncode == 2 and "not valid YAML" in result.stderr


def test_cli_run_from_config_file(tmp_path: Path, digit_folder: Path) -> None:
    (tmp_path / "label-audit.yaml").write_text(
        f"source: {{kind: folder, path: '{digit_folder}'}}\nembedder: {{kind: pixels}}\n"
        "run_name: weekly\nreport: false\n")
    result = _run_cli("run", "--config", "label-audit.yaml", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    summary = json.loads((tmp_path / "reports" / "weekly" / "summary.json").read_text())
    assert summary["counts"]["samples"] == 24 and summary["dataset"]["kind"] == "folder"


def test_cli_demo_end_to_end(tmp_path: Path) -> None:
    result = _run_cli("demo", "--output-dir", str(tmp_path / "out"), cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "precision" in result.stdout and "recall" in result.stdout
    assert "NOTE: CLIP weights" in result.stdout, "the demo must say it is not using CLIP"
    run = tmp_path / "out" / "demo"
    assert (run / "index.html").is_file() and (run / "suspects.csv").is_file()
