"""Report scale: size and render time of the HTML report for 1k, 10k and 100k samples.

The runs are synthetic but complete (every per-sample column and summary section the report reads), written with
:func:`audit.results.write_run`: labels over ``n_classes`` classes in train/val/test splits, a UMAP-like map of
one Gaussian blob per class, 8% suspected mislabels with low scores and a suggested label, three annotators
labelling each image (the real agreement metrics are not needed, plausible ones are written), the real
distribution check against a baseline run, and 0.2% missing files. The image files are a pool of 400 real
JPEG photos at 500x375 (:func:`benchmarks.speed.make_photos`) shared by the samples, so thumbnail decoding costs
what it costs on a photo dataset.

For each size it records the render time (:func:`audit.report.render_report`, with the baseline comparison),
the HTML file size, the number of map points and thumbnails, and, when headless Chromium is installed, the time
until the page has drawn every plot. Results go to ``benchmarks/results/report_scale.json``.

Run: ``python -m benchmarks.report_scale [--sizes 1000 10000 100000] [--no-browser]``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import tempfile
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

RESULTS = Path(__file__).parent / "results" / "report_scale.json"
DEFAULT_SIZES = (1_000, 10_000, 100_000)
ISSUE_RATE = 0.08
UNREADABLE_RATE = 0.002
ANNOTATORS = ("annotator_a", "annotator_b", "annotator_c")
PHOTO_POOL = 400


def synthetic_run(path: Path, n: int, photos: Sequence[str], n_classes: int = 10, seed: int = 0,
                  baseline: Any = None) -> Any:
    """Write a complete synthetic run folder of ``n`` samples at ``path`` (see the module docstring)."""
    from audit.checks.base import CheckContext
    from audit.checks.distribution import DistributionCheck
    from audit.results import write_run

    rng = np.random.default_rng(seed)
    classes = [f"class_{i:03d}" for i in range(n_classes)]
    weights = rng.dirichlet(np.full(n_classes, 4.0))
    codes = rng.choice(n_classes, size=n, p=weights)
    ids = [f"images/{classes[c]}/{i:07d}.jpg" for i, c in enumerate(codes)]
    samples = pd.DataFrame({
        "filepath": [photos[i % len(photos)] for i in range(n)],
        "label": np.array(classes, dtype=object)[codes],
        "split": rng.choice(np.array(["train", "val", "test"], dtype=object), size=n, p=[0.8, 0.1, 0.1]),
    }, index=pd.Index(ids, name="sample_id"))
    readable = rng.random(n) >= UNREADABLE_RATE
    samples["readable"] = readable
    samples["problems"] = np.where(readable, "", "missing_file")
    samples.loc[~readable, "filepath"] = [f"/nonexistent/{i}.jpg" for i in range(int((~readable).sum()))]
    samples["content_hash"] = [f"{h:016x}" for h in rng.integers(0, 2**62, size=n)]
    samples["embedding_row"] = np.where(readable, np.cumsum(readable) - 1, -1)
    centres = rng.normal(scale=8.0, size=(n_classes, 2))
    xy = centres[codes] + rng.normal(size=(n, 2))
    samples["umap_x"] = np.where(readable, xy[:, 0], np.nan)
    samples["umap_y"] = np.where(readable, xy[:, 1], np.nan)

    # Annotators: each labels every image, erring at 5, 10 and 20%.
    long = []
    for name, rate in zip(ANNOTATORS, (0.05, 0.10, 0.20), strict=True):
        wrong = rng.random(n) < rate
        given = np.where(wrong, (codes + rng.integers(1, n_classes, size=n)) % n_classes, codes)
        long.append(pd.DataFrame({"sample_id": ids, "annotator": name,
                                  "label": np.array(classes, dtype=object)[given]})[readable])
    annotations = pd.concat(long, ignore_index=True)
    samples["agreement_consensus_label"] = np.where(readable, samples["label"], None)
    samples["agreement_consensus_quality"] = np.where(readable, rng.uniform(0.5, 1.0, size=n), np.nan)
    samples["agreement_n_annotations"] = np.where(readable, 3, 0)
    samples["agreement_rate"] = np.where(readable, rng.choice([1 / 3, 2 / 3, 1.0], size=n, p=[.05, .25, .7]),
                                         np.nan)

    issue = readable & (rng.random(n) < ISSUE_RATE)
    suggested = np.where(issue, (codes + rng.integers(1, n_classes, size=n)) % n_classes, codes)
    quality = np.where(issue, rng.beta(1, 12, size=n), rng.beta(12, 1, size=n))
    samples["mistakes_audited_label"] = np.where(readable, samples["label"], None)
    samples["mistakes_is_issue"] = issue
    samples["mistakes_label_quality"] = np.where(readable, quality, np.nan)
    samples["mistakes_suggested_label"] = np.where(readable, np.array(classes, dtype=object)[suggested], None)
    samples["mistakes_suggested_prob"] = np.where(readable, np.maximum(quality, 1 - quality), np.nan)
    samples["mistakes_given_prob"] = np.where(readable, quality, np.nan)

    distribution = DistributionCheck().run(CheckContext(samples=samples, class_names=classes, baseline=baseline))
    samples = samples.join(distribution.samples)
    flagged = samples[issue]
    confusion: dict[str, dict[str, int]] = {}
    for (given, better), count in flagged.groupby(["label", "mistakes_suggested_label"]).size().items():
        confusion.setdefault(str(given), {})[str(better)] = int(count)
    top_pairs = sorted(((c, a, b) for a, row in confusion.items() for b, c in row.items()), reverse=True)[:10]
    per_class = samples[readable].groupby("label")["mistakes_is_issue"].agg(["size", "sum"])
    kappa = [[1.0 if i == j else float(rng.uniform(0.6, 0.9)) for j in range(3)] for i in range(3)]
    checks = {
        "distribution": distribution.metrics,
        "agreement": {
            "n_annotators": 3, "annotators": list(ANNOTATORS), "n_items": int(readable.sum()),
            "percent_agreement": 0.82, "cohen_kappa_matrix": {"annotators": list(ANNOTATORS), "matrix": kappa},
            "mean_cohen_kappa": 0.75, "fleiss_kappa": 0.74, "krippendorff_alpha": 0.74,
            "per_class": {c: {"n_items": int(per_class.at[c, "size"]), "percent_agreement": 0.8,
                              "fleiss_kappa": 0.7, "krippendorff_alpha": 0.7} for c in per_class.index},
            "per_annotator": {a: {"n_labels": int(readable.sum()), "agreement_with_consensus": 0.9 - 0.05 * i,
                                  "cohen_kappa_with_consensus": 0.88 - 0.05 * i, "quality": 0.85 - 0.05 * i}
                              for i, a in enumerate(ANNOTATORS)},
            "low_agreement_threshold": 0.5,
        },
        "mistakes": {
            "audited": "consensus", "pred_probs_source": "synthetic (benchmark)", "cv_accuracy": 0.9,
            "n_audited": int(readable.sum()), "n_issues": int(issue.sum()),
            "issue_rate": float(issue.sum() / readable.sum()), "label_health": 0.9,
            "per_class": {c: {"n": int(r["size"]), "n_issues": int(r["sum"]), "issue_rate": float(r["sum"] / r["size"])}
                          for c, r in per_class.iterrows()},
            "overlapping_class_pairs": [{"class_a": a, "class_b": b, "joint_probability": c / n, "n_confused": c}
                                        for c, a, b in top_pairs],
            "confusion": confusion,
            "annotator_mistakes": {a: {"n_labels": len(flagged), "n_mistakes": len(flagged) // 3, "rate": 0.33}
                                   for a in ANNOTATORS},
        },
    }
    summary = {
        "run_name": path.name, "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "dataset": {"kind": "manifest", "name": f"synthetic {n:,}", "path": str(path), "label_field": "label"},
        "counts": {"samples": n, "readable": int(readable.sum()), "unreadable": int((~readable).sum()),
                   "classes": n_classes, "with_problems": int((~readable).sum()),
                   "problems": {"missing_file": int((~readable).sum())}},
        "class_names": classes,
        "embedder": {"kind": "precomputed", "name": "synthetic vectors (benchmark)", "dim": 16},
        "projection": {"method": "umap", "n_neighbors": 15, "min_dist": 0.1, "seed": seed, "metric": "cosine"},
        "timings": {}, "versions": {}, "config": {},
        "baseline": {"run_name": baseline.name, "path": str(baseline.path)} if baseline is not None else None,
        "checks": checks,
    }
    embeddings = rng.normal(size=(int(readable.sum()), 16)).astype(np.float32)
    return write_run(path, samples, summary, embeddings=embeddings, annotations=annotations)


def browser_open_seconds(html: Path) -> float | None:
    """Seconds from navigation until every plot is drawn, in headless Chromium (None when it is missing)."""
    try:
        from tests.report.browser import BrowserPage, find_chromium
    except ImportError:
        return None
    if find_chromium() is None:
        return None
    with BrowserPage(timeout=300) as page:
        started = time.perf_counter()
        page.goto(html.as_uri(), until="document.body.dataset.plotsReady", settle=0)
        elapsed = time.perf_counter() - started
        if page.report.console_errors:
            raise RuntimeError(f"the report of {html} logged errors: {page.report.console_errors[:3]}")
    return elapsed


def run(sizes: Sequence[int] = DEFAULT_SIZES, n_classes: int = 10, browser: bool = True,
        output: Path | None = RESULTS, work_dir: Path | None = None, seed: int = 0,
        photo_pool: int = PHOTO_POOL, keep_html: Path | None = None) -> list[dict[str, Any]]:
    """Render reports of synthetic runs of each size; return (and write to ``output``) one row per size.
    ``keep_html``: copy the last report there (the run folders are temporary)."""
    from audit.report import ReportLimits, render_report
    from benchmarks.speed import make_photos

    rows = []
    with tempfile.TemporaryDirectory(prefix="label-audit-report-scale-", dir=work_dir) as tmp:
        root = Path(tmp)
        photos = list(make_photos(root / "photos", photo_pool, seed=seed)["filepath"])
        for n in sizes:
            started = time.perf_counter()
            baseline = synthetic_run(root / f"run-{n}-baseline", n, photos, n_classes, seed=seed + 1)
            current = synthetic_run(root / f"run-{n}", n, photos, n_classes, seed=seed + 2, baseline=baseline)
            build_seconds = time.perf_counter() - started
            started = time.perf_counter()
            html = render_report(current.path, baseline.path)
            render_seconds = time.perf_counter() - started
            page = html.read_text(encoding="utf-8")
            limits = ReportLimits()
            spec = re.search(r'id="map-thumbs">(.*?)</script>', page, re.S)
            rows.append({
                "n_samples": n,
                "n_classes": n_classes,
                "n_suspects": int(current.samples["mistakes_is_issue"].sum()),
                "render_seconds": round(render_seconds, 3),
                "html_bytes": html.stat().st_size,
                "html_mb": round(html.stat().st_size / 2**20, 2),
                "suspects_csv_bytes": (current.path / "suspects.csv").stat().st_size,
                "map_points": _map_points(page),
                "map_suspects": _map_points(page, suspects=True),
                "map_background_cap": limits.map_background_points,
                "gallery_cards": page.count('<figure class="suspect"'),
                "hover_thumbnails": len(json.loads(spec.group(1))) if spec else 0,
                "browser_open_seconds": (round(value, 2) if browser and (value := browser_open_seconds(html))
                                         is not None else None),
                "build_seconds": round(build_seconds, 2),
            })
            print(_table(rows[-1:], header=len(rows) == 1), flush=True)
            if keep_html is not None:
                shutil.copyfile(html, keep_html)
    if output is not None:
        output.parent.mkdir(parents=True, exist_ok=True)
        output.write_text(json.dumps({
            "benchmark": "report_scale",
            "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
            "machine": {"platform": platform.platform(), "python": platform.python_version(),
                        "cpus": os.cpu_count()},
            "notes": "synthetic runs (see benchmarks/report_scale.py); render includes the baseline comparison "
                     "and thumbnail decoding of 500x375 JPEG photos; browser_open_seconds is headless Chromium "
                     "with software WebGL until every plot is drawn",
            "results": rows,
        }, indent=2) + "\n", encoding="utf-8")
    return rows


def _map_points(page: str, suspects: bool = False) -> int:
    """Points drawn on the map (or, with ``suspects``, ringed as suspects)."""
    match = re.search(r'id="figure-map">(.*?)</script>', page, re.S)
    if not match:
        return 0
    spec = json.loads(match.group(1))
    if suspects:
        return sum(_length(trace.get("x")) for trace in spec["data"] if trace.get("name") == "suspected mislabel")
    return sum(len(trace.get("customdata") or []) for trace in spec["data"]
               if trace.get("name") != "suspected mislabel")


def _length(values: Any) -> int:
    """Length of a Plotly data array, plain or typed (``{"dtype": "f4", "bdata": base64}``)."""
    if isinstance(values, dict) and "bdata" in values:
        import base64

        return len(base64.b64decode(values["bdata"])) // np.dtype(values["dtype"]).itemsize
    return len(values or [])


COLUMNS = (("n_samples", "samples", "{:,}"), ("n_suspects", "suspects", "{:,}"),
           ("render_seconds", "render s", "{:.2f}"), ("html_mb", "HTML MB", "{:.2f}"),
           ("map_points", "map points", "{:,}"),
           ("hover_thumbnails", "thumbs", "{:,}"), ("gallery_cards", "gallery", "{:,}"),
           ("browser_open_seconds", "open s", "{:.2f}"))


def _table(rows: list[dict[str, Any]], header: bool = True) -> str:
    lines = []
    if header:
        lines.append(" | ".join(f"{title:>10}" for _, title, _ in COLUMNS))
    for row in rows:
        lines.append(" | ".join(f"{'—' if row[key] is None else fmt.format(row[key]):>10}" for key, _, fmt in COLUMNS))
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=list(DEFAULT_SIZES))
    parser.add_argument("--classes", type=int, default=10)
    parser.add_argument("--no-browser", action="store_true", help="skip the Chromium open-time measurement")
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    run(args.sizes, n_classes=args.classes, browser=not args.no_browser, output=args.output)
    print(f"results written to {args.output}")


if __name__ == "__main__":
    main()
