"""``python -m benchmarks.segmentation [--quick]``: the segmentation audit against the injected truth and against
cleanlab ``segmentation`` on the same predictions, and its time and peak memory at scale.

Quality (:func:`audit.demos.segmentation.measure`): the segmentation demo (real digit scans on real photo
backgrounds, exact stroke masks; wrong class, eroded, dilated, missing and spurious errors injected into the shipped
masks at 6% per kind; three annotators) scored per error kind for

* label-audit without a model: the shipped masks' regions as objects -> crop features -> the image pipeline's
  cross-validated classifier -> cleanlab (``region crop classifier``); the shipped masks against the annotators'
  pixel consensus (``annotator consensus``);
* cleanlab ``segmentation`` (``find_label_issues`` pixels, ``get_label_quality_scores`` ranking) and label-audit
  with predictions (the same issue pixels as regions of a useful size, images ranked by them), both given the
  same per-pixel probabilities: a real two-stage model trained out of fold on the shipped masks, and probabilities
  simulated from the truth with stated noise.

Scale: a demo of ``canvas`` x ``canvas`` images (512 x 512, 1,000 images in the full form) with three annotators
and simulated probabilities (float32 ``.npy`` per image, 11 classes), then each streamed function is timed and its
peak memory measured: in the full form each runs in a fresh process and its peak resident memory (``ru_maxrss``)
is reported beside the memory right after the imports, at 100 and at 1,000 images (flat = the same); cleanlab's
own ``find_label_issues`` on memory-mapped arrays is measured at small sizes for comparison (it keeps a Python float
per pixel). The quick form (CI) measures in-process with ``tracemalloc`` at small sizes instead.

Writes ``segmentation.json`` and ``SEGMENTATION.md`` (``-quick`` with ``--quick``) in ``--out-dir`` and prints
the Markdown.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
import tracemalloc
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

RESULTS = Path(__file__).parent / "results"
FULL = {"quality_images": 400, "probabilities": ["model", "simulated"], "scale_canvas": 512,
        "scale_sizes": [100, 1000], "cleanlab_sizes": [25, 50], "subprocess": True}
QUICK = {"quality_images": 60, "probabilities": ["simulated"], "scale_canvas": 256, "scale_sizes": [4, 16],
         "cleanlab_sizes": [4], "subprocess": False}
TARGETS = {"wrong_class_f1_no_model": 0.9, "image_auroc": 0.9, "memory_growth_share_of_masks": 0.25}
FUNCTIONS = ("load", "stats", "agreement", "cleanlab", "regions")


# ------------------------------------------------------------------------------------------------ scale


def build_scale(root: Path, n_images: int, canvas: int, seed: int = 0) -> dict[str, Any]:
    """The scale demo (shipped masks, three annotators, truth) and simulated float32 probabilities per image."""
    from audit.demos.segmentation import build_segmentation_demo, simulate_pixel_probabilities

    start = time.perf_counter()
    demo = build_segmentation_demo(root, n_images=n_images, canvas=canvas, seed=seed)
    built = time.perf_counter() - start
    start = time.perf_counter()
    simulate_pixel_probabilities(demo.samples, demo.spec, root / "pred_probs", seed=seed)
    simulated = time.perf_counter() - start
    return {"build_s": built, "simulate_probabilities_s": simulated, "n_images": n_images, "canvas": canvas}


def _inputs(root: Path, n: int):
    from audit.sources.masks import read_class_map

    manifest = pd.read_csv(root / "manifest.csv").head(n)
    samples = manifest.set_index("sample_id")
    samples["mask"] = [str((root / p).resolve()) for p in samples["mask"]]
    annotators = {name: root / "masks" / name for name in ("alice", "bob", "carol")}
    rows = [(s, a, str((folder / f"{s}.png").resolve())) for a, folder in annotators.items() for s in samples.index]
    long = pd.DataFrame(rows, columns=["sample_id", "annotator", "mask_path"])
    return manifest, samples, long, read_class_map(root / "classes.yaml")


def run_function(name: str, root: Path, n: int) -> dict[str, Any]:
    """Run one streamed function on the first ``n`` images of the scale demo (the imports happen first)."""
    # Imports are not what is measured: load what the functions import lazily before the peak is reset.
    import cleanlab.experimental.label_issues_batched
    import cleanlab.filter
    import cleanlab.segmentation.rank  # noqa: F401
    import pycocotools.mask  # noqa: F401
    import scipy.ndimage  # noqa: F401
    import yaml  # noqa: F401

    from audit.checks.mask_agreement import mask_agreement
    from audit.checks.mask_mistakes import region_objects, segmentation_label_quality
    from audit.checks.mask_stats import mask_statistics
    from audit.sources.masks import load_masks

    manifest, samples, long, spec = _inputs(root, n)
    subset = root / f"manifest-{n}.csv"
    manifest.to_csv(subset, index=False)
    functions = {
        "load": lambda: load_masks(subset, root / "classes.yaml",
                                   annotator_masks={a: root / "masks" / a for a in ("alice", "bob", "carol")}),
        "stats": lambda: mask_statistics(samples, spec),
        "agreement": lambda: mask_agreement(long, spec, sample_ids=samples.index, given=samples["mask"]),
        "cleanlab": lambda: segmentation_label_quality(samples, spec, root / "pred_probs"),
        "regions": lambda: region_objects(samples["mask"], spec),
    }
    _reset_peak()
    rss_before = _status_mib("VmRSS") or _rss_mib()
    start = time.perf_counter()
    functions[name]()
    return {"function": name, "n_images": n, "seconds": time.perf_counter() - start,
            "rss_after_imports_mib": rss_before, "peak_rss_mib": _rss_mib()}


def run_cleanlab_direct(root: Path, n: int) -> dict[str, Any]:
    """cleanlab's own ``find_label_issues`` and ``get_label_quality_scores`` on ``(N, H, W)`` / ``(N, K, H, W)``
    memory-mapped arrays of the first ``n`` images (stacked first, outside the measurement)."""
    from cleanlab.segmentation.filter import find_label_issues
    from cleanlab.segmentation.rank import get_label_quality_scores

    from audit.sources.masks import read_mask

    _, samples, _, spec = _inputs(root, n)
    first = np.load(root / "pred_probs" / f"{samples.index[0]}.npy", mmap_mode="r")
    labels = np.lib.format.open_memmap(root / f"labels-{n}.npy", mode="w+", dtype=np.int64,
                                       shape=(n, *first.shape[1:]))
    probs = np.lib.format.open_memmap(root / f"probs-{n}.npy", mode="w+", dtype=np.float32, shape=(n, *first.shape))
    for i, sample_id in enumerate(samples.index):
        labels[i] = read_mask(samples.at[sample_id, "mask"], spec)
        probs[i] = np.load(root / "pred_probs" / f"{sample_id}.npy")
    labels.flush()
    probs.flush()
    del labels, probs
    labels = np.load(root / f"labels-{n}.npy", mmap_mode="r")
    probs = np.load(root / f"probs-{n}.npy", mmap_mode="r")
    _reset_peak()
    rss_before = _status_mib("VmRSS") or _rss_mib()
    start = time.perf_counter()
    find_label_issues(labels, probs, n_jobs=1, verbose=False)
    get_label_quality_scores(labels, probs, verbose=False)
    seconds = time.perf_counter() - start
    peak = _rss_mib()
    for file in (root / f"labels-{n}.npy", root / f"probs-{n}.npy"):
        file.unlink()
    return {"function": "cleanlab direct", "n_images": n, "seconds": seconds, "rss_after_imports_mib": rss_before,
            "peak_rss_mib": peak}


def _reset_peak() -> bool:
    """Reset the kernel's peak-RSS mark (VmHWM) to the current RSS, so the peak measured next is the function's own
    and not the imports' (``/proc/self/clear_refs``, Linux >= 4.0). False where that is not possible."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def _status_mib(field: str) -> float | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(f"{field}:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def _rss_mib() -> float:
    """Peak resident memory since the last :func:`_reset_peak` (VmHWM), else since the process started."""
    peak = _status_mib("VmHWM")
    return peak if peak is not None else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def load_average() -> list[float] | None:
    try:
        return [float(x) for x in Path("/proc/loadavg").read_text().split()[:3]]
    except OSError:
        return None


def _in_subprocess(kind: str, root: Path, n: int) -> dict[str, Any]:
    out = subprocess.run([sys.executable, "-m", "benchmarks.segmentation", "--measure", kind, "--root", str(root),
                          "--n", str(n)], cwd=Path(__file__).resolve().parents[1], check=True, capture_output=True,
                         text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    return json.loads(out.stdout.strip().splitlines()[-1])


def _traced(kind: str, root: Path, n: int) -> dict[str, Any]:
    tracemalloc.start()
    try:
        row = run_cleanlab_direct(root, n) if kind == "cleanlab direct" else run_function(kind, root, n)
        row["peak_traced_mib"] = tracemalloc.get_traced_memory()[1] / 2**20
    finally:
        tracemalloc.stop()
    row.pop("rss_after_imports_mib"), row.pop("peak_rss_mib")
    return row


def scale_part(root: Path, settings: dict[str, Any], seed: int = 0) -> dict[str, Any]:
    sizes = settings["scale_sizes"]
    info = build_scale(root, max(sizes), settings["scale_canvas"], seed)
    measure = _in_subprocess if settings["subprocess"] else _traced
    if not settings["subprocess"]:
        run_function("stats", root, 1)  # imports outside the traced runs
    rows = [measure(name, root, n) for n in sizes for name in FUNCTIONS]
    rows += [measure("cleanlab direct", root, n) for n in settings["cleanlab_sizes"]]
    method = ("peak resident memory of a fresh process during the call (VmHWM reset after the imports)"
              if settings["subprocess"] else "tracemalloc peak in-process")
    return {**info, "memory_method": method, "rows": rows}


# ------------------------------------------------------------------------------------------------ quality


def quality_part(root: Path, settings: dict[str, Any], seed: int = 0) -> dict[str, Any]:
    from audit.demos.segmentation import measure

    return measure(root, n_images=settings["quality_images"], seed=seed,
                   probabilities=tuple(settings["probabilities"]))


# ------------------------------------------------------------------------------------------------ report


def acceptance(results: dict[str, Any]) -> list[dict[str, Any]]:
    rows = []
    quality = results["quality"]["results"]
    no_model = quality["label-audit, no model (region crop classifier)"]
    rows.append({"criterion": "wrong-class regions found without a model: F1 >= 0.9",
                 "measured": f"{no_model['wrong_class_f1']:.3f}",
                 "passed": no_model["wrong_class_f1"] >= TARGETS["wrong_class_f1_no_model"]})
    for name, result in quality.items():
        if name.startswith("label-audit"):
            rows.append({"criterion": f"images with mask errors ranked, AUROC >= 0.9: {name}",
                         "measured": f"{result['image_auroc']:.3f}",
                         "passed": result["image_auroc"] >= TARGETS["image_auroc"]})
    scale = results["scale"]
    small, large = min(scale_sizes(scale)), max(scale_sizes(scale))
    # What holding the extra decoded masks (int16) alone would add; the function's own peak must grow far less.
    masks_mib = (large - small) * scale["canvas"] ** 2 * 2 / 2**20
    limit = TARGETS["memory_growth_share_of_masks"] * masks_mib
    for name in FUNCTIONS:
        at = {r["n_images"]: _own_peak(r) for r in scale["rows"] if r["function"] == name}
        rows.append({"criterion": f"memory flat with many masks ({name}): the call's own peak grows by less than "
                                  f"{limit:.1f} MiB from {small} to {large} images (a quarter of what holding the "
                                  f"extra masks would take)",
                     "measured": f"{at[small]:.1f} -> {at[large]:.1f} MiB",
                     "passed": at[large] - at[small] < limit})
    return rows


def _own_peak(row: dict[str, Any]) -> float:
    """The call's own peak: resident peak minus the memory after the imports, or the traced peak."""
    if "peak_rss_mib" in row:
        return row["peak_rss_mib"] - row["rss_after_imports_mib"]
    return row["peak_traced_mib"]


def scale_sizes(scale: dict[str, Any]) -> list[int]:
    return sorted({r["n_images"] for r in scale["rows"] if r["function"] in FUNCTIONS})


def markdown(results: dict[str, Any]) -> str:
    quality = results["quality"]
    lines = [f"# Segmentation benchmark{' (quick)' if results['quick'] else ''}", "",
             f"Command: `{results['command']}`  ", f"Machine: {results['machine']}  ",
             f"Load average (1, 5, 15 min) before: {results.get('load_average_before')}, after: "
             f"{results.get('load_average_after')} (timings are only comparable on a quiet machine)", "",
             "## Acceptance", "", "| criterion | measured | passed |", "|---|---|---|"]
    lines += [f"| {r['criterion']} | {r['measured']} | {'yes' if r['passed'] else '**no**'} |"
              for r in results["acceptance"]]
    lines += ["", f"## Quality on the demo ({quality['n_images']} images of {quality['canvas']} x {quality['canvas']}, "
              f"{quality['n_images_with_errors']} with errors in the shipped masks; errors: {quality['n_errors']})", "",
              "Recall per error kind; precision per finding kind (wrong_class; extra = dilated or spurious; missing = "
              "eroded or missing); wrong-class F1; AUROC of the image ranking.", "",
              "| method | wrong_class R | eroded R | dilated R | missing R | spurious R | P wrong_class | P extra | "
              "P missing | P any | wrong-class F1 | image AUROC | findings |", "|---" * 13 + "|"]

    def f(value: float | None) -> str:
        return "–" if value is None or value != value else f"{value:.3f}"

    for name, r in quality["results"].items():
        recall, precision = r["recall"], r["precision"]
        lines.append(f"| {name} | {f(r['wrong_class_recall'])} | " + " | ".join(
            f(recall[k]) for k in ("eroded", "dilated", "missing", "spurious")) + " | " + " | ".join(
            f(precision[k]) for k in ("wrong_class", "extra", "missing", "any")) +
            f" | {f(r['wrong_class_f1'])} | {f(r['image_auroc'])} | {r['n_findings']['any']} |")
    lines += ["", "Timings (s): " + ", ".join(f"{k} {v:.1f}" for k, v in quality["timings_s"].items()), ""]
    scale = results["scale"]
    key = "peak_rss_mib" if "peak_rss_mib" in scale["rows"][0] else "peak_traced_mib"
    lines += [f"## Time and memory at scale ({scale['canvas']} x {scale['canvas']} masks, 11 classes, three "
              f"annotators, float32 probabilities; memory: {scale['memory_method']})", "",
              f"Building the data: {scale['build_s']:.0f} s; simulating the probabilities: "
              f"{scale['simulate_probabilities_s']:.0f} s.", "",
              "| function | images | seconds | images/s | peak MiB |" + (" MiB after imports |" if key == "peak_rss_mib"
                                                                         else ""),
              "|---|---|---|---|---|" + ("---|" if key == "peak_rss_mib" else "")]
    for r in scale["rows"]:
        extra = f" {r['rss_after_imports_mib']:.0f} |" if key == "peak_rss_mib" else ""
        lines.append(f"| {r['function']} | {r['n_images']} | {r['seconds']:.1f} | {r['n_images'] / r['seconds']:.1f} "
                     f"| {r[key]:.0f} |{extra}")
    return "\n".join(lines) + "\n"


def machine() -> str:
    import platform

    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), "?") if Path("/proc/cpuinfo").is_file() else "?"
    return f"{platform.platform()}, {os.cpu_count()} CPUs ({cpu}), Python {platform.python_version()}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="the CI form: small sizes, in-process memory")
    parser.add_argument("--out-dir", type=Path, default=RESULTS)
    parser.add_argument("--work-dir", type=Path, default=None, help="where the demo data is written (default: a "
                        "temporary folder under --out-dir's parent, removed at the end)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--measure", help=argparse.SUPPRESS)
    parser.add_argument("--root", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--n", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.measure:  # one measurement in a fresh process (full form)
        kind, root, n = args.measure, args.root, args.n
        row = run_cleanlab_direct(root, n) if kind == "cleanlab direct" else run_function(kind, root, n)
        print(json.dumps(row))
        return 0
    import shutil
    import tempfile

    settings = QUICK if args.quick else FULL
    args.out_dir.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="seg-bench-", dir=args.work_dir))
    try:
        start = time.perf_counter()
        results: dict[str, Any] = {"quick": args.quick, "settings": settings, "machine": machine(),
                                   "command": "python -m benchmarks.segmentation" + (" --quick" if args.quick else "")}
        results["load_average_before"] = load_average()
        results["quality"] = quality_part(work / "quality", settings, args.seed)
        results["scale"] = scale_part(work / "scale", settings, args.seed)
        results["load_average_after"] = load_average()
        results["acceptance"] = acceptance(results)
        results["total_s"] = time.perf_counter() - start
    finally:
        shutil.rmtree(work, ignore_errors=True)
    suffix = "-quick" if args.quick else ""
    (args.out_dir / f"segmentation{suffix}.json").write_text(json.dumps(results, indent=1, default=float))
    text = markdown(results)
    (args.out_dir / f"SEGMENTATION{suffix}.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
