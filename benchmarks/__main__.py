"""``python -m benchmarks [--quick]``: detection quality against the peers, and pipeline speed against the hardware.

Writes ``benchmarks/results/bench.json`` and ``BENCH.md`` (``bench-quick.json`` / ``BENCH-quick.md`` with
``--quick``) and prints the Markdown. The full form takes about an hour and a half on 2 CPU cores (its stages
part alone, up to a million samples, about an hour); ``--quick`` (CI) uses small sizes and takes a few minutes.
``--only PART...`` reruns some parts and keeps the others from the results it replaces (marked as carried
over). Timings are only comparable on a quiet machine: the load average is recorded before and after each part.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from benchmarks.environment import load_average, machine, versions

RESULTS = Path(__file__).parent / "results"
# The quick form is what CI runs (through tests/benchmarks/test_bench_quick.py): it must stay under ~90 s on a
# slow 2-core AVX2-only machine, so it shows that every part runs and its numbers are sane; the full form measures.
# The full form's stages include a million samples (about an hour on 2 cores); at 100,000 the sampled UMAP is
# also compared with the full fit, and every size's report is opened in headless Chromium.
FULL = {"speed_images": 512, "speed_model": "ViT-B-32", "speed_rounds": 3,
        "stage_sizes": [1_000, 10_000, 100_000, 1_000_000], "umap_quality_size": 100_000, "report_browser": True,
        "detection_quick": False}
QUICK = {"speed_images": 48, "speed_model": "label-audit-bench-tiny", "speed_rounds": 1, "stage_sizes": [500],
         "umap_quality_size": None, "report_browser": False, "detection_quick": True}
TARGETS = {"e2e_to_bf16_forward": 0.8, "cosine_to_fp32": 0.999, "warm_speedup": 20.0, "stages_peak_gib": 24.0}
PARTS = ("speed", "detection", "stages", "objects")


def acceptance(results: dict[str, Any]) -> list[dict[str, Any]]:
    """The issue's acceptance criteria against the measured numbers."""
    rows = []
    speed = results.get("speed")
    if speed:
        rows.append({"criterion": "end-to-end embedding >= 0.8 x bf16-weights forward (same run)",
                     "measured": f"{speed['end_to_end']['default_cold']:.1f} vs {speed['bare_forward']['bf16']:.1f}"
                                 f" images/s = {speed['ratio_e2e_to_bf16_forward']:.3f}",
                     "passed": speed["ratio_e2e_to_bf16_forward"] >= TARGETS["e2e_to_bf16_forward"]})
        cosine = speed["cosine_to_fp32"]["default_end_to_end"]["min"]
        rows.append({"criterion": "end-to-end vectors within cosine 0.999 of fp32 (minimum over images; "
                                  "measured with random weights, not trained CLIP)",
                     "measured": f"{cosine:.5f}", "passed": cosine >= TARGETS["cosine_to_fp32"]})
        rows.append({"criterion": "warm re-run >= 20x faster than cold (embedding stage)",
                     "measured": f"{speed['warm_speedup']:.0f}x", "passed": speed["warm_speedup"] >= 20})
    stages = results.get("stages")
    if stages:
        largest = max(stages, key=lambda r: r["n_samples"])
        peak = max(s["peak_rss_gib"] for s in largest["stages"].values())
        peak = max(peak, largest["process_peak_rss_gib"])
        rows.append({"criterion": f"post-embedding stages at {largest['n_samples']:,} samples within 24 GiB",
                     "measured": f"process peak {peak:.2f} GiB", "passed": peak <= TARGETS["stages_peak_gib"]})
    detection = results.get("detection")
    if detection:
        behind = [d["dataset"] for d in detection["datasets"] if not d["verdict"]["best_or_equal"]]
        rows.append({"criterion": "detection at least equal to the best peer on every dataset",
                     "measured": "yes" if not behind else f"behind on: {'; '.join(behind)} (see the notes)",
                     "passed": not behind})
    if results.get("objects"):
        rows += results["objects"]["acceptance"]
    return rows


def _fmt_rate(value: float) -> str:
    return f"{value:,.1f}" if value < 1000 else f"{value:,.0f}"


def _fmt_ratio(value: float) -> str:
    return f"{value:.3f}" if value < 10 else f"{value:,.0f}"


def speed_markdown(speed: dict[str, Any]) -> str:
    bf16 = speed["bare_forward"]["bf16"]
    cos = speed["cosine_to_fp32"]
    e2e = speed["end_to_end"]
    rows = [
        ("bare forward, fp32 weights", speed["bare_forward"]["fp32"], "1.00000"),
        ("bare forward, bf16 weights", bf16, f"{cos['bf16_forward']['min']:.5f}"),
        ("bare forward, int8 dynamic (Linear layers)", speed["bare_forward"]["int8_dynamic"],
         f"{cos['int8_dynamic_forward']['min']:.5f}"),
        ("**end to end, default settings, cold cache**", e2e["default_cold"],
         f"{cos['default_end_to_end']['min']:.5f}"),
        ("end to end, default settings, warm cache", e2e["default_warm"], "same vectors"),
        ("end to end, default but resize on PIL images (torchvision's PIL path)", e2e["pil_resize"],
         f"{cos['pil_resize_end_to_end']['min']:.5f}"),
        ("end to end before optimisation (per-image torchvision transform, worker processes)",
         e2e["before_optimisation"], f"{cos['before_optimisation_end_to_end']['min']:.5f}"),
    ]
    lines = [f"Model: {speed['model']}; images: {speed['images']}; batch {speed['batch_size']}, "
             f"{speed['torch_threads']} torch threads, {speed['decode_workers']} decoding threads, default "
             f"precision {speed['precision_default']}.\n",
             "| path | images/s | x bf16 forward | min cosine to fp32 (random weights) |", "| --- | --- | --- | --- |"]
    lines += [f"| {name} | {_fmt_rate(rate)} | {_fmt_ratio(rate / bf16)} | {cosine} |" for name, rate, cosine in rows]
    lines.append(f"\nWarm re-run: {speed['seconds']['warm']:.2f} s against {speed['seconds']['cold']:.2f} s cold "
                 f"= **{speed['warm_speedup']:.0f}x** faster.")
    return "\n".join(lines) + "\n"


def stages_markdown(stages: list[dict[str, Any]]) -> str:
    sizes = [r["n_samples"] for r in stages]
    names = list(stages[0]["stages"])
    lines = ["Seconds / peak resident memory of the process (GiB) during each stage; synthetic 512-d embeddings, "
             "10 classes, 10% label noise, 3 annotators.\n",
             "| stage | " + " | ".join(f"{n:,} samples" for n in sizes) + " |",
             "| --- | " + " | ".join("---" for _ in sizes) + " |"]
    for name in names:
        cells = [f"{r['stages'][name]['seconds']:.1f} s / {r['stages'][name]['peak_rss_gib']:.2f} GiB"
                 for r in stages]
        label = "report (render; memory includes its set-up)" if name == "report" else name
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    lines.append("| **total** | " + " | ".join(f"**{r['total_seconds']:.0f} s**" for r in stages) + " |")
    lines.append("| process peak | " + " | ".join(f"{r['process_peak_rss_gib']:.2f} GiB" for r in stages) + " |")
    if all("report" in r for r in stages):
        lines.append("| report HTML | " + " | ".join(f"{r['report']['html_mb']:.1f} MB" for r in stages) + " |")
        lines.append("| map points (ringed suspects) of all samples | " + " | ".join(
            f"{r['report']['map_points']:,} ({r['report'].get('map_suspects', 0):,}) of {r['n_samples']:,}"
            for r in stages) + " |")
        if any(r["report"].get("browser_open_seconds") is not None for r in stages):
            opened = [r["report"].get("browser_open_seconds") for r in stages]
            lines.append("| report open in headless Chromium (until every plot is drawn) | " + " | ".join(
                "—" if s is None else f"{s:.1f} s" for s in opened) + " |")
    lines.append("| cross-validated accuracy | " + " | ".join(f"{r['cv_accuracy']:.3f}" for r in stages) + " |")
    if all("flags_f1_vs_injected_noise" in r for r in stages):
        lines.append("| F1 of the flags against the injected noise | " + " | ".join(
            f"{r['flags_f1_vs_injected_noise']:.3f}" for r in stages) + " |")
    if all("umap_settings" in r for r in stages):
        lines.append("| UMAP fitted on | " + " | ".join(
            f"{r['umap_settings'].get('fit_points', r['n_samples']):,} points" for r in stages) + " |")
    quality = next((r["umap_quality"] for r in stages if r.get("umap_quality")), None)
    if quality:
        lines.append("\n" + umap_quality_markdown(quality))
    return "\n".join(lines) + "\n"


def umap_quality_markdown(quality: dict[str, Any]) -> str:
    """The sampled UMAP against the full fit (see benchmarks.stages.umap_quality)."""
    n, k = quality["n_samples"], quality["neighbours"]
    lines = [f"UMAP quality at {n:,} samples: fitted on a seeded sample of {quality['fit_points']:,} "
             f"({quality['fit_points'] / n:.0%}, the share a million-sample map uses) with the rest placed by "
             f"`transform` ({quality['sampled_seconds']:.0f} s), against the full fit. Overlap: mean share of a "
             f"point's {k} nearest neighbours on the full-fit map that are also its {k} nearest on the other map "
             f"({quality['queries']:,} random points); trustworthiness: scikit-learn's, {k} neighbours, cosine, on "
             f"{quality['trustworthiness_points']:,} random points; class purity: mean share of a point's {k} "
             "nearest neighbours that have its true class. Within a class these synthetic points are isotropic noise "
             "around a centre, so which of them are neighbours on a map is arbitrary: two full fits with different "
             "seeds share almost none (the third row), and the overlap says little here; trustworthiness and class "
             "purity do.\n",
             "| map | overlap with the full fit | trustworthiness | class purity |", "| --- | --- | --- | --- |"]
    for name, trust in quality["trustworthiness"].items():
        overlap = quality["overlap_with_full_fit"].get(name)
        lines.append(f"| {name} | {'1 (itself)' if overlap is None else f'{overlap:.3f}'} | {trust:.3f} | "
                     f"{quality['class_purity'][name]:.3f} |")
    for name, purity in quality["class_purity"].items():
        if name not in quality["trustworthiness"]:
            lines.append(f"| {name} | — | — | {purity:.3f} |")
    return "\n".join(lines) + "\n"


def to_markdown(results: dict[str, Any]) -> str:
    from benchmarks import detection

    out = [f"# label-audit benchmarks{' (quick form)' if results['quick'] else ''}\n",
           f"Command: `{results['command']}`; {results['created_at']}; {results['machine'].get('cpu')} "
           f"({results['machine']['cpu_count']} cores, {results['machine'].get('memory_gib')} GiB, "
           f"{', '.join(results['machine'].get('cpu_bf16', [])) or 'no native bf16'}); load average at start "
           f"{results['load_average']['start']}, end {results['load_average']['end']}; "
           f"{results['seconds']:.0f} s in all.\n"]
    for part, origin in (results.get("carried") or {}).items():
        out.append(f"The {part} part is carried over from an earlier run: `{origin.get('command')}`, "
                   f"{origin.get('created_at')}.\n")
    if results.get("acceptance"):
        out += ["## Acceptance\n", "| criterion | measured | met |", "| --- | --- | --- |"]
        out += [f"| {r['criterion']} | {r['measured']} | {'yes' if r['passed'] else '**no**'} |"
                for r in results["acceptance"]]
        out.append("")
    if results.get("speed"):
        out += ["## Embedding speed\n", speed_markdown(results["speed"])]
    if results.get("stages"):
        out += ["## Post-embedding stages by size\n", stages_markdown(results["stages"])]
    if results.get("detection"):
        out += ["## Detection quality against the peers\n",
                "Same inputs for every method: label-audit's cross-validated predicted probabilities and its "
                "embeddings (see benchmarks/detection.py). Best value per column in bold. FiftyOne flags: "
                f"{results['detection']['fiftyone_flag_rule']}; kNN: {results['detection']['knn_neighbours']} "
                "neighbours, cosine, flagged when most disagree.\n",
                "F1 of the flags / AUROC / average precision of the score:\n",
                detection.summary_markdown(results["detection"]),
                "Per dataset, with precision, recall and the number flagged:\n",
                detection.to_markdown(results["detection"])]
    if results.get("objects"):
        from benchmarks import objects

        out += ["## Object detection against the peers (issue 11)\n", objects.to_markdown(results["objects"])]
    return "\n".join(out)


def carry_over(results: dict[str, Any], previous_file: Path, parts: list[str]) -> None:
    """Keep the parts this run did not measure (``--only``) from the results file it replaces, each marked with
    the run it comes from, so a partial rerun updates its tables without dropping the others."""
    if not parts or not previous_file.is_file():
        return
    try:
        previous = json.loads(previous_file.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return
    for part in parts:
        if previous.get(part):
            results[part] = previous[part]
            origin = (previous.get("carried") or {}).get(part) or {"command": previous.get("command"),
                                                                   "created_at": previous.get("created_at")}
            results.setdefault("carried", {})[part] = origin


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes for CI (a few minutes)")
    parser.add_argument("--out-dir", type=Path, default=RESULTS, help="where bench.json and BENCH.md go")
    parser.add_argument("--only", choices=PARTS, nargs="+", default=list(PARTS), help="run only these parts")
    parser.add_argument("--no-fiftyone", action="store_true", help="leave FiftyOne Brain out (no MongoDB)")
    args = parser.parse_args(argv)
    os.environ.setdefault("FIFTYONE_DO_NOT_TRACK", "true")
    sizes = QUICK if args.quick else FULL
    started = time.perf_counter()
    results: dict[str, Any] = {
        "quick": args.quick,
        "command": "python -m benchmarks" + "".join(f" {shlex.quote(a)}" for a in (argv or sys.argv[1:])),
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": machine(), "versions": versions(), "sizes": sizes,
        "load_average": {"start": load_average()},
    }

    def log(message: str) -> None:
        print(f"[{time.perf_counter() - started:6.0f} s, load {load_average()}] {message}", file=sys.stderr,
              flush=True)

    import tempfile

    if "speed" in args.only:
        from benchmarks.speed import run_speed

        log("speed: bare forward and end-to-end embedding")
        results["load_average"]["before_speed"] = load_average()
        with tempfile.TemporaryDirectory(prefix="label-audit-speed-") as tmp:
            results["speed"] = run_speed(Path(tmp), sizes["speed_images"], rounds=sizes["speed_rounds"],
                                         model=sizes["speed_model"])
    if "stages" in args.only:
        from benchmarks.stages import run_stages

        results["load_average"]["before_stages"] = load_average()
        results["stages"] = run_stages(sizes["stage_sizes"], log=log, umap_quality_size=sizes["umap_quality_size"],
                                       browser=sizes["report_browser"])
    if "detection" in args.only:
        from benchmarks.detection import run_detection

        log("detection: label-audit against cleanlab, Datalab, FiftyOne and kNN")
        results["load_average"]["before_detection"] = load_average()
        results["detection"] = run_detection(quick=sizes["detection_quick"], with_fiftyone=not args.no_fiftyone)
    if "objects" in args.only:
        from benchmarks.objects import run_objects

        log("objects: box errors against cleanlab ObjectLab and FiftyOne, crop speed, object stage by size")
        results["load_average"]["before_objects"] = load_average()
        results["objects"] = run_objects(quick=args.quick, with_fiftyone=not args.no_fiftyone, out_dir=args.out_dir,
                                         log=log)
    results["load_average"]["end"] = load_average()
    results["seconds"] = time.perf_counter() - started
    suffix = "-quick" if args.quick else ""
    json_file, markdown_file = args.out_dir / f"bench{suffix}.json", args.out_dir / f"BENCH{suffix}.md"
    carry_over(results, json_file, [p for p in PARTS if p not in args.only])
    results["acceptance"] = acceptance(results)
    markdown = to_markdown(results)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    json_file.write_text(json.dumps(results, indent=2, allow_nan=False) + "\n", encoding="utf-8")
    markdown_file.write_text(markdown, encoding="utf-8")
    print(markdown)
    log(f"wrote {json_file} and {markdown_file}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
