"""The weekly re-run: the same dataset audited cold (empty cache, no earlier run) and again unchanged, side by side.

Usage::

    python -m benchmarks.weekly [--quick] [--images 10000] [--out benchmarks/results/weekly.json]

Both runs are ``label-audit run`` as a user runs it (a subprocess, output captured as in CI), on distinct real
photos (crops of scikit-image's sample photos, 128 x 128 JPEG, labelled by the photo they come from) with an open_clip
model loaded from a checkpoint file through the users' path: ViT-B-32 with **random weights** in the full form
(the weights cannot be downloaded here and do not change the cost), the tiny test config in ``--quick``. The warm
run should neither load the model (every vector is cached) nor fit UMAP (the previous run's map is reused); the
table shows where its time goes, from the run's own ``summary.json`` timings.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from benchmarks.environment import load_average, machine

REPO = Path(__file__).resolve().parents[1]
DEFAULT_OUT = REPO / "benchmarks" / "results" / "weekly.json"
SIDE = 128


def make_dataset(folder: Path, n: int, seed: int = 0) -> Path:
    """``n`` distinct 128 x 128 JPEG crops of the sample photos and a manifest; label = the source photo."""
    import skimage.data as data
    from PIL import Image

    photos = {"astronaut": data.astronaut(), "coffee": data.coffee(), "chelsea": data.chelsea(),
              "rocket": data.rocket(), "hubble": data.hubble_deep_field(), "ihc": data.immunohistochemistry(),
              "retina": data.retina(), "cat": data.cat()}
    names = list(photos)
    rng = np.random.default_rng(seed)
    (folder / "images").mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(n):
        name = names[i % len(names)]
        image = Image.fromarray(photos[name])
        side = int(min(image.size) * rng.uniform(0.2, 0.6))
        left = int(rng.integers(0, image.size[0] - side + 1))
        top = int(rng.integers(0, image.size[1] - side + 1))
        crop = image.crop((left, top, left + side, top + side)).resize((SIDE, SIDE))
        if rng.random() < 0.5:
            crop = crop.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        path = folder / "images" / f"{i:06d}.jpg"
        crop.save(path, quality=90)
        rows.append({"filepath": str(path.relative_to(folder)), "label": name})
    manifest = folder / "manifest.csv"
    pd.DataFrame(rows).to_csv(manifest, index=False)
    return manifest


def make_checkpoint(folder: Path, quick: bool) -> tuple[str, Path]:
    """The model the runs load through the users' path: a config (for --quick) or ViT-B-32, saved to a file."""
    import open_clip
    import torch

    from benchmarks.speed import TINY_MODEL, register_tiny_model

    torch.manual_seed(0)
    folder.mkdir(parents=True, exist_ok=True)
    if quick:
        register_tiny_model(folder)
        model_arg, name = str(folder / f"{TINY_MODEL}.json"), TINY_MODEL
    else:
        model_arg = name = "ViT-B-32"
    checkpoint = folder / f"{name}-random.pt"
    torch.save(open_clip.create_model(name, pretrained=None).state_dict(), checkpoint)
    return model_arg, checkpoint


def timed_run(cli: list[str], args: list[str], cwd: Path) -> tuple[float, subprocess.CompletedProcess]:
    started = time.perf_counter()
    result = subprocess.run([*cli, *args], cwd=cwd, capture_output=True, text=True,
                            env={**os.environ, "FIFTYONE_DO_NOT_TRACK": "true"})
    return time.perf_counter() - started, result


def run_weekly(n_images: int, quick: bool, work: Path) -> dict[str, Any]:
    manifest = make_dataset(work / "data", n_images)
    model, checkpoint = make_checkpoint(work / "model", quick)
    config = work / "label-audit.yaml"
    config.write_text(f"source: {{kind: manifest, path: '{manifest}'}}\n"
                      f"embedder: {{kind: clip, model: '{model}', pretrained: '{checkpoint}', "
                      f"cache_dir: '{work / 'cache'}'}}\noutput_dir: '{work / 'reports'}'\n", encoding="utf-8")
    cli = [str(Path(sys.executable).parent / "label-audit")]
    rows = {}
    for name in ("cold", "warm"):
        seconds, result = timed_run(cli, ["run", "--config", str(config), "--run-name", name], work)
        if result.returncode != 0:
            raise RuntimeError(f"{name} run failed: {result.stderr[-2000:]}")
        summary = json.loads((work / "reports" / name / "summary.json").read_text(encoding="utf-8"))
        rows[name] = {"wall_seconds": seconds, "stage_seconds": summary["timings"],
                      "n_embedded": summary["counts"]["n_embedded"], "n_cached": summary["counts"]["n_cached"],
                      "model_loaded": summary["embedder"].get("model_loaded"),
                      "map": summary["projection"].get("method"), "log": result.stderr.splitlines()}
    return {"n_images": n_images, "model": f"open_clip {'tiny test config' if quick else 'ViT-B-32'}, random "
            "weights from a checkpoint file (timing only)", "runs": rows,
            "speedup": rows["cold"]["wall_seconds"] / rows["warm"]["wall_seconds"]}


def to_markdown(result: dict[str, Any]) -> str:
    cold, warm = result["runs"]["cold"], result["runs"]["warm"]
    stages = list(dict.fromkeys([*cold["stage_seconds"], *warm["stage_seconds"]]))
    where = result.get("machine") or {}
    lines = [f"Command: `{result.get('command')}`; {result.get('created_at')}; {where.get('cpu')} "
             f"({where.get('cpu_count')} cores); load average at start {result.get('load_average', {}).get('start')}, "
             f"end {result.get('load_average', {}).get('end')}.\n",
             f"{result['n_images']:,} images, {result['model']}; `label-audit run` twice on the same dataset.\n",
             "| | cold (empty cache) | warm (unchanged re-run) |", "| --- | --- | --- |",
             f"| **wall time** | **{cold['wall_seconds']:.1f} s** | **{warm['wall_seconds']:.1f} s** |",
             f"| images embedded / from the cache | {cold['n_embedded']:,} / {cold['n_cached']:,} | "
             f"{warm['n_embedded']:,} / {warm['n_cached']:,} |",
             f"| model loaded | {cold['model_loaded']} | {warm['model_loaded']} |",
             f"| map | {cold['map']} | {warm['map']} |"]
    for stage in stages:
        lines.append(f"| {stage} | {cold['stage_seconds'].get(stage, 0):.1f} s | "
                     f"{warm['stage_seconds'].get(stage, 0):.1f} s |")
    lines.append(f"\nThe unchanged re-run took {warm['wall_seconds']:.1f} s, {result['speedup']:.0f}x faster "
                 "than cold.")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.weekly", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="200 images and a tiny model (CI)")
    parser.add_argument("--images", type=int, default=None, help="images (default 10,000; 200 with --quick)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args(argv)
    n = args.images or (200 if args.quick else 10_000)
    started_load = load_average()
    with tempfile.TemporaryDirectory(prefix="label-audit-weekly-") as tmp:
        result = run_weekly(n, args.quick, Path(tmp))
    result["created_at"] = datetime.now(UTC).isoformat(timespec="seconds")
    result["machine"] = machine()
    result["load_average"] = {"start": started_load, "end": load_average()}
    result["command"] = "python -m benchmarks.weekly" + (" --quick" if args.quick else "") + (
        f" --images {args.images}" if args.images else "")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    markdown = to_markdown(result)
    args.out.with_suffix(".md").write_text(markdown, encoding="utf-8")
    print(markdown)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
