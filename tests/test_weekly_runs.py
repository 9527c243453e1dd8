"""The weekly user's path, run as a user runs it (the CLI in a subprocess, output captured as in CI): stage lines on
stderr, a SIGKILL mid-embedding that loses only the last flush, a warm re-run that neither loads the model nor
refits the map, three weekly runs with ``--baseline auto`` and their trends page in Chromium, files others can
read, the gate table with failures first, and an offline CLIP run that fails at once."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from tests.conftest import write_digit

REPO = Path(__file__).resolve().parents[1]
CLI = [str(Path(sys.executable).parent / "label-audit")]
ENV = {**os.environ, "FIFTYONE_DO_NOT_TRACK": "true", "HF_HUB_OFFLINE": "1"}


def _cli(*args: str, cwd: Path, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run([*CLI, *args], cwd=cwd, capture_output=True, text=True, env=ENV, timeout=timeout)


def _digits_manifest(root: Path, digit_images, n: int, seed: int = 0, labels: dict[int, str] | None = None) -> Path:
    """``n`` real digit scans as PNGs and a manifest (filepath, label, split); ``labels`` overrides some labels."""
    images, targets = digit_images
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        path = write_digit(root / "images" / f"d{i:04d}.png", images[i])
        label = (labels or {}).get(i, str(targets[i]))
        rows.append({"filepath": str(path.relative_to(root)), "label": label,
                     "split": "test" if rng.random() < 0.2 else "train"})
    manifest = root / "manifest.csv"
    pd.DataFrame(rows).to_csv(manifest, index=False)
    return manifest


@pytest.fixture(scope="module")
def small_clip(tmp_path_factory) -> tuple[Path, Path]:
    """An open_clip config big enough that embedding a few hundred images takes seconds (random weights, saved to
    a checkpoint and loaded through the users' path), so a run can be killed in the middle of it."""
    import open_clip
    import torch

    folder = tmp_path_factory.mktemp("smallclip")
    config = {"embed_dim": 64,
              "vision_cfg": {"image_size": 64, "layers": 4, "width": 192, "patch_size": 8, "head_width": 48},
              "text_cfg": {"context_length": 16, "vocab_size": 1000, "width": 32, "heads": 2, "layers": 1}}
    config_file = folder / "small-clip-test.json"
    config_file.write_text(json.dumps(config))
    open_clip.add_model_config(config_file)
    torch.manual_seed(0)
    checkpoint = folder / "small-clip-test.pt"
    torch.save(open_clip.create_model("small-clip-test", pretrained=None).state_dict(), checkpoint)
    return config_file, checkpoint


def test_stage_lines_on_captured_stderr_and_quiet_and_help(tmp_path: Path, digit_images) -> None:
    manifest = _digits_manifest(tmp_path / "data", digit_images, 120)
    result = _cli("run", "--manifest", str(manifest), "--embedder", "pixels", "--run-name", "w1", "--no-report",
                  "--cache-dir", str(tmp_path / "cache"), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.startswith("[label-audit] ")]
    ended = {line.split(":")[0][len("[label-audit] "):] for line in lines if line.rstrip().endswith(" s)")}
    assert {"sources", "embeddings", "map", "check distribution", "check mistakes", "write"} <= ended, lines
    embeddings = next(line for line in lines if line.startswith("[label-audit] embeddings: ") and " s)" in line)
    assert "0 from the cache, 120 embedded at" in embeddings and "images/s" in embeddings
    assert not any("\r" in line for line in result.stderr.splitlines())  # no progress bar in a captured log
    quiet = _cli("run", "--quiet", "--manifest", str(manifest), "--embedder", "pixels", "--run-name", "w2",
                 "--no-report", "--cache-dir", str(tmp_path / "cache"), cwd=tmp_path)
    assert quiet.returncode == 0 and quiet.stderr.strip() == ""
    help_text = _cli("run", "--help", cwd=tmp_path).stdout
    assert "Images per forward pass (default:" in help_text and "64)" in help_text
    version = _cli("--version", cwd=tmp_path)
    assert version.returncode == 0 and version.stdout.startswith("label-audit ")


def test_sigkill_mid_embedding_keeps_finished_work(tmp_path: Path, digit_images, small_clip) -> None:
    config_file, checkpoint = small_clip
    n = 600
    manifest = _digits_manifest(tmp_path / "data", digit_images, n)
    cache = tmp_path / "cache"
    (tmp_path / "label-audit.yaml").write_text(
        f"source: {{kind: manifest, path: '{manifest}'}}\n"
        f"embedder: {{kind: clip, model: '{config_file}', pretrained: '{checkpoint}', precision: fp32, "
        f"batch_size: 4, flush_seconds: 0.2, cache_dir: '{cache}'}}\n"
        "report: false\n")
    process = subprocess.Popen([*CLI, "run", "--config", "label-audit.yaml", "--run-name", "killed"], cwd=tmp_path,
                               env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 300
    while not list(cache.glob("*/shard-*.npz")) and time.monotonic() < deadline and process.poll() is None:
        time.sleep(0.05)
    assert process.poll() is None, "the run ended before any embedding was flushed: " + process.stderr.read()
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=60)
    assert process.returncode == -signal.SIGKILL
    assert not (tmp_path / "reports" / "killed" / "summary.json").exists()

    again = _cli("run", "--config", "label-audit.yaml", "--run-name", "resumed", cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    counts = json.loads((tmp_path / "reports" / "resumed" / "summary.json").read_text())["counts"]
    assert counts["n_cached"] > 0 and counts["n_embedded"] > 0, counts
    assert counts["n_cached"] + counts["n_embedded"] == n  # every image once: nothing finished was lost or redone


def test_warm_rerun_loads_no_model_and_reuses_the_map(tmp_path: Path, digit_images, small_clip) -> None:
    config_file, checkpoint = small_clip
    manifest = _digits_manifest(tmp_path / "data", digit_images, 200)
    cache = tmp_path / "cache"
    (tmp_path / "label-audit.yaml").write_text(
        f"source: {{kind: manifest, path: '{manifest}'}}\n"
        f"embedder: {{kind: clip, model: '{config_file}', pretrained: '{checkpoint}', precision: fp32, "
        f"cache_dir: '{cache}'}}\nreport: false\n")
    cold = _cli("run", "--config", "label-audit.yaml", "--run-name", "cold", cwd=tmp_path)
    assert cold.returncode == 0, cold.stderr
    warm = _cli("run", "--config", "label-audit.yaml", "--run-name", "warm", cwd=tmp_path)
    assert warm.returncode == 0, warm.stderr
    cold_summary = json.loads((tmp_path / "reports" / "cold" / "summary.json").read_text())
    warm_summary = json.loads((tmp_path / "reports" / "warm" / "summary.json").read_text())
    assert cold_summary["embedder"]["model_loaded"] is True
    assert warm_summary["embedder"]["model_loaded"] is False and warm_summary["counts"]["n_embedded"] == 0
    assert warm_summary["projection"]["method"] == "umap (reused)" and warm_summary["projection"]["n_placed"] == 0
    cold_xy = pd.read_parquet(tmp_path / "reports" / "cold" / "samples.parquet").set_index("sample_id")
    warm_xy = pd.read_parquet(tmp_path / "reports" / "warm" / "samples.parquet").set_index("sample_id")
    np.testing.assert_array_equal(cold_xy[["umap_x", "umap_y"]], warm_xy.loc[cold_xy.index, ["umap_x", "umap_y"]])
    assert "model not loaded" in warm.stderr and "every image was on the map of run cold" in warm.stderr
    # nor cross-validate the classifier again: the same inputs give the cold run's probabilities and flags
    assert any("reused from run cold" in note for note in warm_summary["checks"]["mistakes"]["notes"])
    assert not any("reused" in note for note in cold_summary["checks"]["mistakes"]["notes"])
    np.testing.assert_array_equal(np.load(tmp_path / "reports" / "cold" / "pred_probs.npy"),
                                  np.load(tmp_path / "reports" / "warm" / "pred_probs.npy"))
    assert cold_xy["mistakes_is_issue"].equals(warm_xy.loc[cold_xy.index, "mistakes_is_issue"])

    # A week later 20 new images arrive: they are embedded, placed with last week's UMAP model, the rest keep
    # their place on the map.
    _digits_manifest(tmp_path / "data", digit_images, 220)
    grown = _cli("run", "--config", "label-audit.yaml", "--run-name", "grown", cwd=tmp_path)
    assert grown.returncode == 0, grown.stderr
    grown_summary = json.loads((tmp_path / "reports" / "grown" / "summary.json").read_text())
    assert grown_summary["counts"]["n_embedded"] == 20 and grown_summary["embedder"]["model_loaded"] is True
    projection = grown_summary["projection"]
    assert (projection["n_reused"], projection["n_placed"], projection["from_run"]) == (200, 20, "warm")
    grown_xy = pd.read_parquet(tmp_path / "reports" / "grown" / "samples.parquet").set_index("sample_id")
    np.testing.assert_array_equal(cold_xy[["umap_x", "umap_y"]], grown_xy.loc[cold_xy.index, ["umap_x", "umap_y"]])
    assert np.isfinite(grown_xy[["umap_x", "umap_y"]].to_numpy()).all()
    assert not any("reused" in note for note in grown_summary["checks"]["mistakes"]["notes"])  # inputs changed


GATE_CONFIG = """\
source: {{kind: manifest, path: '{manifest}', annotations: '{annotations}'}}
embedder: {{kind: pixels}}
baseline: auto
gate:
  max_issue_rate: 0.5
  max_class_share_shift: 0.02
  min_samples_per_class: {min_per_class}
  ratchet: true
  ratchet_tolerance: 0.2
"""


def test_three_weekly_runs_with_baseline_auto_and_their_trends_page(tmp_path: Path, digit_images) -> None:
    from tests.report.browser import open_page, require_chromium

    os.umask(0o022)
    data = tmp_path / "data"
    manifest = _digits_manifest(data, digit_images, 300)
    table = pd.read_csv(manifest)
    # annotations keyed by file path, as users write them next to a manifest
    rows = [{"filepath": f, "annotator": a, "label": lab} for f, lab in zip(table["filepath"], table["label"],
                                                                              strict=True) for a in ("ann1", "ann2")]
    pd.DataFrame(rows).to_csv(data / "votes.csv", index=False)
    config = tmp_path / "label-audit.yaml"
    config.write_text(GATE_CONFIG.format(manifest=manifest, annotations=data / "votes.csv", min_per_class=1))

    first = _cli("run", "--config", str(config), "--run-name", "week1", "--gate", cwd=tmp_path)
    assert first.returncode == 0, first.stdout + first.stderr
    assert "no earlier run of this dataset" in first.stderr
    week1 = json.loads((tmp_path / "reports" / "week1" / "summary.json").read_text())
    assert week1["dataset"]["annotations_key"] == "filepath"
    skipped = {r["name"]: r["message"] for r in week1["gate"]["rules"] if r["status"] == "skipped"}
    assert set(skipped) == {"max_class_share_shift", "ratchet"}
    assert all("no earlier run of this dataset" in message for message in skipped.values())

    second = _cli("run", "--config", str(config), "--run-name", "week2", "--gate", cwd=tmp_path)
    assert second.returncode == 0, second.stdout + second.stderr
    week2 = json.loads((tmp_path / "reports" / "week2" / "summary.json").read_text())
    assert week2["baseline"]["run_name"] == "week1" and week2["baseline"]["auto"] is True
    assert "baseline: week1" in second.stderr

    # Week 3: class "0" loses most of its samples (relabelled as "8"), a large share shift; min_samples_per_class
    # is raised so that rule fails for class 0 too.
    relabelled = table.copy()
    zeros = relabelled.index[relabelled["label"] == 0][:20]
    relabelled.loc[zeros, "label"] = 8
    relabelled.to_csv(manifest, index=False)
    config.write_text(GATE_CONFIG.format(manifest=manifest, annotations=data / "votes.csv", min_per_class=25))
    third = _cli("run", "--config", str(config), "--run-name", "week3", "--gate", cwd=tmp_path)
    assert third.returncode == 1, third.stdout + third.stderr
    week3 = json.loads((tmp_path / "reports" / "week3" / "summary.json").read_text())
    assert week3["baseline"]["run_name"] == "week2"
    failed = [r["name"] for r in week3["gate"]["rules"] if r["status"] == "fail"]
    assert "max_class_share_shift[0]" in failed and "min_samples_per_class[0]" in failed

    # Files others can read (umask 022), the run folder and the trends page alike
    for path in [*(tmp_path / "reports" / "week3").iterdir(), tmp_path / "reports" / "index.html"]:
        assert path.stat().st_mode & 0o044 == 0o044, (path, oct(path.stat().st_mode))

    require_chromium()
    page = open_page((tmp_path / "reports" / "index.html").as_uri(), until="document.body.dataset.plotsReady",
                     evaluate={
                         "rows": "[...document.querySelectorAll('#runs tbody tr')].map(r => r.cells[0].innerText)",
                         "points": "[...document.querySelectorAll('.trends [data-figure]')].map(d => "
                                   "({title: d.layout && d.layout.title && d.layout.title.text, "
                                   "lengths: (d.data || []).map(t => t.y.filter(v => v !== null).length)}))",
                     })
    assert page.console_errors == [] and page.dialogs == [], page.console_errors
    assert page.values["rows"] == ["week3", "week2", "week1"]
    charts = {c["title"]: c["lengths"] for c in page.values["points"]}
    for title in ("Samples", "Suspected-mislabel rate", "Label health", "Krippendorff's alpha", "Release gate"):
        assert charts[title] and all(n == 3 for n in charts[title]), (title, charts[title])
    assert charts["Class shares"] and all(n == 3 for n in charts["Class shares"])

    report = open_page((tmp_path / "reports" / "week3" / "index.html").as_uri(),
                       until="document.body.dataset.plotsReady",
                       evaluate={"rules": "[...document.querySelectorAll('table.gate tbody tr')].map(r => "
                                          "[r.className, r.cells[1].innerText, r.cells[2].innerText])",
                                 "folded": "document.querySelector('details.gate-passes') !== null && "
                                           "!document.querySelector('details.gate-passes').open"})
    statuses = [cls for cls, _, _ in report.values["rules"]]
    assert statuses[0] == "rule-fail" and statuses.index("rule-pass") > max(
        i for i, s in enumerate(statuses) if s == "rule-fail")
    assert report.values["folded"] is True
    sentences = {name: text for _, name, text in report.values["rules"]}
    assert sentences["min_samples_per_class[0]"].startswith("Samples of class '0'")
    assert "{" not in "".join(sentences.values())  # no raw dictionaries


def test_offline_clip_run_fails_at_once_with_the_advice(tmp_path: Path, digit_images, monkeypatch) -> None:
    import audit
    from audit.embeddings import EmbedderError

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)  # offline by the network, not by the setting
    manifest = _digits_manifest(tmp_path / "data", digit_images, 10)
    config = audit.build_config(overrides={
        "source": {"kind": "manifest", "path": manifest}, "embedder": {"kind": "clip", "cache_dir": tmp_path / "c"},
        "output_dir": tmp_path / "reports", "report": False})
    started = time.perf_counter()
    with pytest.raises(EmbedderError, match=r"not in the local Hugging Face cache.*--embedder pixels"):
        audit.run(config, progress=False)
    assert time.perf_counter() - started < 5
