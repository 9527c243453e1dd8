"""The whole pipeline on real images: run folder contents, Python API, checks joined, failures loud."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import audit
from audit.checks.base import REGISTRY, CheckContext, CheckError, CheckResult, register
from audit.demo import build_demo_dataset
from audit.results import SCHEMA_VERSION, RunResults


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory) -> tuple[RunResults, object]:
    root = tmp_path_factory.mktemp("runner")
    data = build_demo_dataset(root / "data", noise=0.1, annotators=3, seed=1, limit=300)
    config = audit.build_config(overrides={
        "source": {"kind": "manifest", "path": data.manifest, "annotations": data.annotations},
        "embedder": {"kind": "pixels", "cache_dir": root / "cache"},
        "output_dir": root / "reports", "run_name": "r1", "report": False,
    })
    return audit.run(config, progress=False), data


def test_run_folder_has_table_summary_and_arrays(demo_run) -> None:
    run, _ = demo_run
    assert run.path.name == "r1"
    samples = pd.read_parquet(run.path / "samples.parquet").set_index("sample_id")
    assert len(samples) == 302, "300 digits + 2 broken files, none dropped"
    for column in ("filepath", "label", "split", "readable", "problems", "content_hash", "embedding_row",
                   "umap_x", "umap_y", "mistakes_is_issue", "mistakes_label_quality", "agreement_consensus_label",
                   "distribution_class_share"):
        assert column in samples.columns, column
    assert samples.loc["broken-truncated", "problems"] == "truncated_image"
    assert samples.loc["broken-missing", "problems"] == "missing_file"
    assert not samples.loc["broken-missing", "readable"] and np.isnan(samples.loc["broken-missing", "umap_x"])
    summary = json.loads((run.path / "summary.json").read_text())
    assert summary["schema_version"] == SCHEMA_VERSION
    assert summary["embedder"]["kind"] == "pixels" and "no learned model" in summary["embedder"]["name"]
    assert summary["counts"]["samples"] == 302 and summary["counts"]["unreadable"] == 2
    assert summary["counts"]["annotators"] == 3
    assert set(summary["checks"]) >= {"distribution", "agreement", "mistakes"}
    assert summary["timings"]["embeddings"] > 0 and summary["versions"]["torch"]
    embeddings = np.load(run.path / "embeddings.npy")
    row = samples.loc["digit-0005", "embedding_row"]
    assert np.isclose(np.linalg.norm(embeddings[row]), 1.0, atol=1e-5)
    assert (run.path / "annotations.parquet").is_file() and (run.path / "pred_probs.npy").is_file()


def test_load_run_reads_what_run_wrote(demo_run) -> None:
    run, _ = demo_run
    again = audit.load_run(run.path)
    pd.testing.assert_frame_equal(again.samples, run.samples)
    assert again.check_metrics("mistakes")["n_issues"] == int(run.samples["mistakes_is_issue"].sum())
    vectors = again.sample_embeddings()
    assert vectors.shape[0] == 302 and np.isnan(vectors[list(again.samples.index).index("broken-missing")]).all()


def test_failing_check_fails_the_run(tmp_path: Path, digit_folder: Path) -> None:
    @register
    class Exploding:
        name = "exploding_test_check"
        requires = ()
        description = "raises"

        def run(self, context: CheckContext) -> CheckResult:
            raise ZeroDivisionError("boom")

    try:
        config = audit.build_config(overrides={
            "source": {"kind": "folder", "path": digit_folder}, "embedder": {"kind": "pixels", "use_cache": False},
            "output_dir": tmp_path, "run_name": "x", "report": False, "projection": {"enabled": False}})
        with pytest.raises(CheckError, match=r"exploding_test_check.*ZeroDivisionError: boom"):
            audit.run(config, progress=False)
        assert not (tmp_path / "x" / "summary.json").exists(), "a failed run leaves no results that look complete"
    finally:
        REGISTRY.pop("exploding_test_check")


def test_bring_your_own_probabilities_without_embeddings(tmp_path: Path, digit_folder: Path) -> None:
    rng = np.random.default_rng(0)
    probs = rng.dirichlet(np.ones(3), size=24)
    np.save(tmp_path / "p.npy", probs)
    config = audit.build_config(overrides={
        "source": {"kind": "folder", "path": digit_folder}, "embedder": {"kind": "none"},
        "pred_probs": {"path": tmp_path / "p.npy"}, "output_dir": tmp_path, "run_name": "byo", "report": False})
    run = audit.run(config, progress=False)
    assert run.summary["embedder"]["kind"] == "none"
    assert "user-supplied" in run.check_metrics("mistakes")["pred_probs_source"]
    assert run.samples["umap_x"].isna().all()


def test_import_audit_stays_light() -> None:
    import subprocess
    import sys

    code = ("import sys, audit, audit.results, audit.config; "
            "heavy = [m for m in ('torch', 'open_clip', 'umap', 'fiftyone', 'plotly', 'cleanlab') if m in sys.modules];"
            "print(heavy)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
