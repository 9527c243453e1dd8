"""The ``label-audit`` command: a thin layer over the Python API.

Exit codes: 0 success, 1 the release gate failed, 2 bad input or an error (with a one-line reason on stderr).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from audit.cli_errors import EXIT_GATE_FAILED, EXIT_OK
from audit.cli_errors import expected_errors as _expected_errors
from audit.cli_errors import fail as _fail
from audit.cli_review import review_app

app = typer.Typer(
    name="label-audit",
    help="Audit the labels of an image dataset: embeddings, UMAP map, label distribution, annotator agreement, "
    "likely mislabels (cleanlab), an HTML report, FiftyOne views and a CI release gate.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


app.add_typer(review_app, name="review")  # label-audit review export|import|next|feedback (audit/cli_review.py)


def _gate_baseline(run, baseline: str | Path | None):
    """The baseline to gate against: a folder; ``auto`` (what the run chose, or the latest earlier run of its
    dataset beside it); or, with none given, the baseline the run recorded when it chose one automatically.
    Returns the baseline (or None) and, for ``auto`` with no earlier run, why there is none."""
    from audit.results import RunResults, dataset_key, previous_run

    if baseline is not None and str(baseline) != "auto":
        return RunResults.load(baseline), None
    recorded = run.summary.get("baseline") or {}
    if baseline is None and not recorded.get("auto"):
        return None, None
    if recorded.get("auto") and recorded.get("path") and Path(recorded["path"]).is_dir():
        return RunResults.load(recorded["path"]), None
    found = previous_run(run.path.parent, dataset_key(run.summary), before=run.summary.get("created_at"),
                         exclude=run.path)
    if found is None:
        return None, "no earlier run of this dataset"
    return RunResults.load(found.path), None


def _gate_and_exit(run_dir: Path, baseline: str | Path | None, config_file: Path | None,
                   overrides: dict[str, Any]) -> int:
    from audit import gate
    from audit.results import RunResults

    run = RunResults.load(run_dir)
    previous, no_baseline = _gate_baseline(run, baseline)
    thresholds = gate.load_thresholds(config_file, overrides)
    verdict = gate.evaluate(run, previous, thresholds, no_baseline=no_baseline)
    gate.write_verdict(run_dir, verdict)
    for line in verdict.lines():
        typer.echo(line)
    return EXIT_OK if verdict.passed else EXIT_GATE_FAILED


@app.command()
def run(
    folder: Annotated[Path | None, typer.Option(help="Image folder: one sub-folder per class "
                                                     "(optionally inside train/val/test folders).")] = None,
    manifest: Annotated[Path | None, typer.Option(help="CSV or Parquet manifest with filepath,label[,split].")] = None,
    annotations: Annotated[list[str] | None, typer.Option(
        help="Long-format CSV/Parquet with sample (or sample_id, or filepath), annotator, label: one row per "
        "annotator label. For box and mask sources: NAME=FILE, one annotation file per annotator in the source's "
        "format (repeat for each).")] = None,
    fiftyone_dataset: Annotated[str | None, typer.Option(help="Name of an existing FiftyOne dataset.")] = None,
    coco: Annotated[Path | None, typer.Option(
        help="Boxes / instance masks: a COCO instances JSON (images next to it or under --images).")] = None,
    yolo: Annotated[Path | None, typer.Option(help="Boxes: a YOLO dataset folder with data.yaml.")] = None,
    voc: Annotated[Path | None, typer.Option(help="Boxes: a Pascal VOC folder (Annotations/, JPEGImages/).")] = None,
    cvat: Annotated[Path | None, typer.Option(help="Boxes / masks: a CVAT for images 1.1 annotations.xml.")] = None,
    labelstudio: Annotated[Path | None, typer.Option(help="Boxes / masks: a Label Studio JSON export.")] = None,
    images: Annotated[Path | None, typer.Option(
        help="Image folder of a box source, when the images are not where the format puts them.")] = None,
    object_predictions: Annotated[Path | None, typer.Option(
        help="Your detector's boxes on these images as a COCO results JSON (enables the object_detection "
        "check: cleanlab ObjectLab, overlooked and badly located boxes).")] = None,
    label_field: Annotated[str | None, typer.Option(help="FiftyOne label field (default: ground_truth).")] = None,
    annotator_field: Annotated[list[str] | None, typer.Option(
        help="FiftyOne Classification field of one annotator (repeat for each).")] = None,
    config: Annotated[Path | None, typer.Option(
        "--config", "-c", help="Config file (.toml, .yaml, or pyproject.toml's [tool.label-audit]); flags override it."
    )] = None,
    embedder: Annotated[str | None, typer.Option(
        help="clip (open_clip, default), pixels (downsampled pixels, offline baseline), precomputed, "
        "or auto (clip if its weights are available, else pixels, said loudly).")] = None,
    model: Annotated[str | None, typer.Option(
        help="open_clip model name, or a model config .json file (default: ViT-B-32).")] = None,
    pretrained: Annotated[str | None, typer.Option(
        help="open_clip pretrained tag or a local checkpoint file (default: laion2b_s34b_b79k).")] = None,
    embeddings: Annotated[Path | None, typer.Option(
        help="Your own embeddings, .npy with one row per sample in source order.")] = None,
    embeddings_field: Annotated[str | None, typer.Option(help="Your own embeddings from a FiftyOne field.")] = None,
    pred_probs: Annotated[Path | None, typer.Option(
        help="Your own out-of-sample predicted probabilities, .npy (n, classes in sorted order).")] = None,
    pred_probs_field: Annotated[str | None, typer.Option(
        help="FiftyOne Classification field whose logits are your model's predictions.")] = None,
    mask_probs: Annotated[Path | None, typer.Option(
        help="Segmentation masks: your model's out-of-sample per-pixel probabilities, one (N, classes, H, W) .npy "
        "or a folder of <sample id>.npy (classes, H, W), channels in the class map's order (enables cleanlab's "
        "segmentation label quality).")] = None,
    device: Annotated[str | None, typer.Option(help="auto, cpu or cuda (default: auto).")] = None,
    precision: Annotated[str | None, typer.Option(
        help="auto, fp32, bf16 or fp16 (default: auto: fp16 on GPU, bf16 on CPUs with native bf16).")] = None,
    batch_size: Annotated[int | None, typer.Option(help="Images per forward pass (default: 64).")] = None,
    workers: Annotated[int | None, typer.Option(help="Image decoding workers (default: CPU count).")] = None,
    cache_dir: Annotated[Path | None, typer.Option(
        help="Embedding cache folder (default: ~/.cache/label-audit/embeddings).")] = None,
    no_cache: Annotated[bool, typer.Option(
        "--no-cache", help="Embed everything again; do not read or write the cache.")] = False,
    engine: Annotated[str | None, typer.Option(
        help="Where images are embedded: local (this machine) or ray (a Ray cluster: map_batches over an actor pool "
        "of embedders, GPUs when the cluster has them; same vectors, same cache) (default: local).")] = None,
    ray_address: Annotated[str | None, typer.Option(
        help="The Ray cluster to use with --engine ray: auto (the cluster this machine belongs to), "
        "ray://HEAD:10001, or none for a local Ray instance.")] = None,
    output_dir: Annotated[Path | None, typer.Option(help="Where run folders go (default: reports).")] = None,
    run_name: Annotated[str | None, typer.Option(
        help="Run folder name (default: dataset name + date/time).")] = None,
    baseline: Annotated[str | None, typer.Option(
        help="Previous run folder, for 'since last week' comparisons, or 'auto': the latest earlier run of the "
        "same dataset in the output folder (said in the log; the first run then skips the rules that need one).")]
    = None,
    seed: Annotated[int | None, typer.Option(help="Seed for UMAP and cross-validation (default: 0).")] = None,
    no_report: Annotated[bool, typer.Option("--no-report", help="Skip the HTML report.")] = False,
    gate: Annotated[bool, typer.Option(
        "--gate", help="Gate the run against the config's thresholds; exit 1 on failure.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Print nothing but errors and the closing lines.")]
    = False,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Print more detail about each stage.")] = False,
) -> None:
    """Audit a labelled image dataset and write reports/<run-name>/ (per-sample Parquet, summary JSON, HTML)."""
    from audit.config import build_config
    from audit.runner import run as run_audit

    source: dict[str, Any] = {}
    boxes = {"coco": coco, "yolo": yolo, "voc": voc, "cvat": cvat, "labelstudio": labelstudio}
    chosen = [s for s in (folder, manifest, fiftyone_dataset, *boxes.values()) if s is not None]
    if len(chosen) > 1:
        raise _fail("give one source: --folder, --manifest, --fiftyone-dataset, --coco, --yolo, --voc, --cvat or "
                    "--labelstudio")
    per_annotator: dict[str, Path] = {}
    long_files = []
    for entry in annotations or []:
        if "=" in entry:  # --annotations NAME=FILE: one annotation file per annotator
            name, _, file = entry.partition("=")
            if not name or not file:
                raise _fail(f"--annotations expects FILE or NAME=FILE, got {entry!r}")
            per_annotator[name] = Path(file)
        else:
            long_files.append(Path(entry))
    if len(long_files) > 1:
        raise _fail("give one long-format annotations file (or NAME=FILE per annotator)")
    annotations = long_files[0] if long_files else None
    if folder is not None:
        source = {"kind": "folder", "path": folder}
    elif manifest is not None:
        source = {"kind": "manifest", "path": manifest}
    elif fiftyone_dataset is not None:
        source = {"kind": "fiftyone", "dataset": fiftyone_dataset, "label_field": label_field,
                  "annotator_fields": annotator_field or None}
    for kind, path in boxes.items():
        if path is not None:
            source = {"kind": kind, "path": path, "images": images}
    if per_annotator:
        source["annotator_files"] = per_annotator
    if annotations is not None:
        source["annotations"] = annotations
    embedder_kind = embedder
    if (embeddings or embeddings_field) and embedder is None:
        embedder_kind = "precomputed"
    overrides = {
        "source": source or None,
        "embedder": {"kind": embedder_kind, "model": model, "pretrained": pretrained, "device": device,
                     "precision": precision, "batch_size": batch_size, "workers": workers, "cache_dir": cache_dir,
                     "use_cache": False if no_cache else None, "path": embeddings, "field": embeddings_field,
                     "engine": engine, "ray_address": ray_address},
        "pred_probs": {"path": pred_probs, "field": pred_probs_field},
        "object_predictions": {"path": object_predictions}, "mask_probs": mask_probs,
        "output_dir": output_dir, "run_name": run_name, "baseline": baseline, "seed": seed,
        "report": False if no_report else None,
    }
    from audit.progress import Progress

    try:
        cfg = build_config(config, overrides)
        results = run_audit(cfg, progress=Progress(verbosity=0 if quiet else (2 if verbose else 1)))
    except _expected_errors() as exc:
        raise _fail(str(exc)) from exc
    typer.echo(f"run written to {results.path}")
    if (results.path / "index.html").is_file():
        typer.echo(f"report: {results.path / 'index.html'}")
    if gate:
        try:
            code = _gate_and_exit(results.path, cfg.baseline if cfg.baseline is not None else None, config, {})
        except _expected_errors() as exc:
            raise _fail(str(exc)) from exc
        raise typer.Exit(code)


@app.command()
def demo(
    output_dir: Annotated[Path, typer.Option(help="Where the demo images and run go.")] = Path("reports"),
    noise: Annotated[float, typer.Option(help="Share of images given a wrong class.", min=0.0, max=0.9)] = 0.1,
    noise_kind: Annotated[str, typer.Option(help="symmetric (any other class) or pairs (confusable digits swapped).")]
    = "symmetric",
    annotators: Annotated[int, typer.Option(help="Simulated annotators (0 or 3).", min=0, max=3)] = 3,
    embedder: Annotated[str, typer.Option(
        help="auto (CLIP if its weights are cached, else pixels), clip, or pixels.")] = "auto",
    run_name: Annotated[str, typer.Option(help="Run folder name.")] = "demo",
    seed: Annotated[int, typer.Option(help="Seed for the noise, annotators, UMAP and CV.")] = 0,
    no_report: Annotated[bool, typer.Option("--no-report", help="Skip the HTML report.")] = False,
    task: Annotated[str, typer.Option(
        help="classification (one class per image), detection (digits pasted on photos: boxes and masks, 10% "
        "errors of each kind, three annotators) or segmentation (the same as class masks: wrong class, eroded, "
        "dilated, missing and spurious regions at 6% each, three annotators).")] = "classification",
    predictions: Annotated[str, typer.Option(
        help="detection: none, classifier (a crop classifier trained out of fold) or simulated (from the truth): "
        "the detector predictions the object_detection check gets. segmentation: none, simulated or model (a "
        "two-stage segmenter trained out of fold): the per-pixel probabilities mask_mistakes gets.")] = "none",
) -> None:
    """Build an embedded demo (real images, injected errors, simulated annotators), audit it, and print how the
    findings compare with the injected truth."""
    from audit.demo import run_demo

    if task not in ("classification", "detection", "segmentation"):
        raise _fail(f"--task must be classification, detection or segmentation, not {task!r}")
    try:
        if task == "segmentation":
            from audit.demos.segmentation import run_segmentation_demo

            outcome = run_segmentation_demo(output_dir=output_dir, embedder=embedder, predictions=predictions,
                                            run_name=run_name if run_name != "demo" else "segmentation-demo",
                                            seed=seed, report=not no_report)
        elif task == "detection":
            from audit.demos.detection import run_detection_demo

            outcome = run_detection_demo(output_dir=output_dir, embedder=embedder, predictions=predictions,
                                         run_name=run_name if run_name != "demo" else "detection-demo", seed=seed,
                                         report=not no_report)
        else:
            outcome = run_demo(output_dir=output_dir, noise=noise, noise_kind=noise_kind, annotators=annotators,
                               embedder=embedder, run_name=run_name, seed=seed, report=not no_report)
    except _expected_errors() as exc:
        raise _fail(str(exc)) from exc
    for line in outcome.lines():
        typer.echo(line)


@app.command()
def report(
    run_dir: Annotated[Path, typer.Argument(help="A run folder written by `label-audit run`.")],
    baseline: Annotated[Path | None, typer.Option(help="Previous run folder, for 'since last week'.")] = None,
) -> None:
    """(Re-)render the self-contained HTML report and suspects CSV of a run, without recomputing anything."""
    from audit.report import render_report

    try:
        html = render_report(run_dir, baseline)
    except _expected_errors() as exc:
        raise _fail(str(exc)) from exc
    typer.echo(f"report: {html}")


@app.command("fiftyone")
def fiftyone_export(
    run_dir: Annotated[Path, typer.Argument(help="A run folder written by `label-audit run`.")],
    dataset: Annotated[str | None, typer.Option(
        help="FiftyOne dataset to write into (default: the run's own dataset, or one named after the source).")] = None,
) -> None:
    """Write the run's scores, suggested labels, tags, saved views and embeddings map into a FiftyOne dataset."""
    from audit.integrations.fiftyone import export_run

    try:
        name = export_run(run_dir, dataset)
    except _expected_errors() as exc:
        raise _fail(str(exc)) from exc
    typer.echo(f"FiftyOne dataset: {name}")


@app.command("app")
def app_launch(
    run_dir: Annotated[Path, typer.Argument(help="A run folder written by `label-audit run`.")],
    dataset: Annotated[str | None, typer.Option(help="FiftyOne dataset (default: as `label-audit fiftyone`).")] = None,
    address: Annotated[str, typer.Option(help="Address the App listens on.")] = "localhost",
    port: Annotated[int, typer.Option(help="Port the App listens on.")] = 5151,
    remote: Annotated[bool, typer.Option("--remote", help="Remote mode for a server: no browser is opened.")] = False,
) -> None:
    """Open the FiftyOne App on the suspected-mislabels view (writes the run into FiftyOne first if needed)."""
    from audit.integrations.fiftyone import launch_app

    try:
        launch_app(run_dir, dataset, address=address, port=port, remote=remote, wait=True)
    except _expected_errors() as exc:
        raise _fail(str(exc)) from exc


@app.command("gate")
def gate_command(
    run_dir: Annotated[Path | None, typer.Argument(help="A run folder written by `label-audit run`.")] = None,
    baseline: Annotated[str | None, typer.Option(
        help="Last released run folder (for shift and ratchet rules), or 'auto' (the latest earlier run of the same "
        "dataset beside the run) (default: the baseline the run chose with --baseline auto, if any).")] = None,
    list_thresholds: Annotated[bool, typer.Option(
        "--list", help="List every threshold the checks declare (name, direction, what it reads) and exit.")]
    = False,
    config: Annotated[Path | None, typer.Option("--config", "-c", help="File with the thresholds (gate section).")]
    = None,
    set_: Annotated[list[str] | None, typer.Option("--set", help="Override a threshold: NAME=VALUE (repeatable).")]
    = None,
) -> None:
    """Check a run against release thresholds: exit 0 pass, 1 fail, 2 bad input. Writes gate.json, gate.xml
    (JUnit) and gate.md beside the run."""
    if list_thresholds:
        from audit import gate

        for name, threshold in gate.declared_thresholds().items():
            typer.echo(f"{name:<32} {threshold.op} {threshold.kind:<11} {threshold.metric}\n{'':<32} {threshold.help}")
        for name in gate.MODIFIERS:
            typer.echo(f"{name:<32} (modifier; see `label-audit gate --help` and the README)")
        raise typer.Exit(EXIT_OK)
    if run_dir is None:
        raise _fail("give the run folder to gate: label-audit gate RUN_DIR")
    overrides: dict[str, Any] = {}
    for item in set_ or []:
        if "=" not in item:
            raise _fail(f"--set expects NAME=VALUE, got {item!r}")
        key, value = item.split("=", 1)
        overrides[key.strip()] = value.strip()
    try:
        code = _gate_and_exit(run_dir, baseline, config, overrides)
    except _expected_errors() as exc:
        raise _fail(str(exc)) from exc
    raise typer.Exit(code)


@app.command()
def trends(
    output_dir: Annotated[Path, typer.Argument(help="The folder the runs were written to.")] = Path("reports"),
) -> None:
    """(Re-)build OUTPUT_DIR/index.html: every run in the folder, newest first, and the trends across runs
    (samples, suspected-mislabel rate, label health, agreement, annotator quality, class shares, unreadable
    samples, gate verdicts). `label-audit run` rewrites it after every run."""
    from audit.report.trends import render_trends

    if not output_dir.is_dir():
        raise _fail(f"{output_dir} is not a folder")
    typer.echo(f"trends: {render_trends(output_dir)}")


def _version(value: bool) -> None:
    if value:
        from audit import __version__

        typer.echo(f"label-audit {__version__}")
        raise typer.Exit(EXIT_OK)


@app.callback()
def _main(
    version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True,
                                          help="Print label-audit's version and exit.")] = False,
) -> None:
    """Audit the labels of an image dataset: embeddings, UMAP map, label distribution, annotator agreement,
    likely mislabels (cleanlab), an HTML report, FiftyOne views and a CI release gate."""


def main() -> None:
    """Console-script entry point."""
    try:
        app()
    except KeyboardInterrupt:
        typer.secho("label-audit: interrupted; finished work is kept in the cache", err=True)
        sys.exit(130)


if __name__ == "__main__":
    main()
