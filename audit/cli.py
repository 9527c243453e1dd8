"""The ``label-audit`` command: a thin layer over the Python API.

Exit codes: 0 success, 1 the release gate failed, 2 bad input or an error (with a one-line reason on stderr).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Any

import typer

app = typer.Typer(
    name="label-audit",
    help="Audit the labels of an image dataset: embeddings, UMAP map, label distribution, annotator agreement, "
    "likely mislabels (cleanlab), an HTML report, FiftyOne views and a CI release gate.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

EXIT_OK, EXIT_GATE_FAILED, EXIT_BAD_INPUT = 0, 1, 2


def _fail(message: str) -> typer.Exit:
    typer.secho(f"label-audit: error: {message}", err=True, fg=typer.colors.RED)
    return typer.Exit(EXIT_BAD_INPUT)


def _expected_errors() -> tuple[type[BaseException], ...]:
    """Errors that mean bad input or a missing resource: reported in one line, exit 2."""
    from audit.checks.base import CheckError, CheckInputError
    from audit.config import ConfigError
    from audit.embeddings import EmbedderError
    from audit.results import RunNotFoundError
    from audit.sources import SourceError

    return (ConfigError, SourceError, EmbedderError, CheckInputError, CheckError, RunNotFoundError,
            FileNotFoundError, ValueError)


def _gate_and_exit(run_dir: Path, baseline: Path | None, config_file: Path | None,
                   overrides: dict[str, Any]) -> int:
    from audit import gate
    from audit.results import RunResults

    run = RunResults.load(run_dir)
    previous = RunResults.load(baseline) if baseline else None
    thresholds = gate.load_thresholds(config_file, overrides)
    verdict = gate.evaluate(run, previous, thresholds)
    gate.write_verdict(run_dir, verdict)
    for line in verdict.lines():
        typer.echo(line)
    return EXIT_OK if verdict.passed else EXIT_GATE_FAILED


@app.command()
def run(
    folder: Annotated[Path | None, typer.Option(help="Image folder: one sub-folder per class "
                                                     "(optionally inside train/val/test folders).")] = None,
    manifest: Annotated[Path | None, typer.Option(help="CSV or Parquet manifest with filepath,label[,split].")] = None,
    annotations: Annotated[Path | None, typer.Option(
        help="Long-format CSV/Parquet with sample,annotator,label: one row per annotator label.")] = None,
    fiftyone_dataset: Annotated[str | None, typer.Option(help="Name of an existing FiftyOne dataset.")] = None,
    label_field: Annotated[str | None, typer.Option(help="FiftyOne label field [default: ground_truth].")] = None,
    annotator_field: Annotated[list[str] | None, typer.Option(
        help="FiftyOne Classification field of one annotator (repeat for each).")] = None,
    config: Annotated[Path | None, typer.Option(
        "--config", "-c", help="Config file (.toml, .yaml, or pyproject.toml's [tool.label-audit]); flags override it."
    )] = None,
    embedder: Annotated[str | None, typer.Option(
        help="clip (open_clip, default), pixels (downsampled pixels, offline baseline), precomputed, "
        "or auto (clip if its weights are available, else pixels, said loudly).")] = None,
    model: Annotated[str | None, typer.Option(
        help="open_clip model name, or a model config .json file [default: ViT-B-32].")] = None,
    pretrained: Annotated[str | None, typer.Option(
        help="open_clip pretrained tag or a local checkpoint file [default: laion2b_s34b_b79k].")] = None,
    embeddings: Annotated[Path | None, typer.Option(
        help="Your own embeddings, .npy with one row per sample in source order.")] = None,
    embeddings_field: Annotated[str | None, typer.Option(help="Your own embeddings from a FiftyOne field.")] = None,
    pred_probs: Annotated[Path | None, typer.Option(
        help="Your own out-of-sample predicted probabilities, .npy (n, classes in sorted order).")] = None,
    pred_probs_field: Annotated[str | None, typer.Option(
        help="FiftyOne Classification field whose logits are your model's predictions.")] = None,
    device: Annotated[str | None, typer.Option(help="auto, cpu or cuda [default: auto].")] = None,
    precision: Annotated[str | None, typer.Option(
        help="auto, fp32, bf16 or fp16 [default: auto: fp16 on GPU, bf16 on CPUs with native bf16].")] = None,
    batch_size: Annotated[int | None, typer.Option(help="Images per forward pass [default: 64].")] = None,
    workers: Annotated[int | None, typer.Option(help="Image decoding workers [default: CPU count].")] = None,
    cache_dir: Annotated[Path | None, typer.Option(
        help="Embedding cache folder [default: ~/.cache/label-audit/embeddings].")] = None,
    no_cache: Annotated[bool, typer.Option(
        "--no-cache", help="Embed everything again; do not read or write the cache.")] = False,
    output_dir: Annotated[Path | None, typer.Option(help="Where run folders go [default: reports].")] = None,
    run_name: Annotated[str | None, typer.Option(
        help="Run folder name [default: dataset name + date/time].")] = None,
    baseline: Annotated[Path | None, typer.Option(
        help="Previous run folder, for 'since last week' comparisons.")] = None,
    seed: Annotated[int | None, typer.Option(help="Seed for UMAP and cross-validation [default: 0].")] = None,
    no_report: Annotated[bool, typer.Option("--no-report", help="Skip the HTML report.")] = False,
    gate: Annotated[bool, typer.Option(
        "--gate", help="Gate the run against the config's thresholds; exit 1 on failure.")] = False,
) -> None:
    """Audit a labelled image dataset and write reports/<run-name>/ (per-sample Parquet, summary JSON, HTML)."""
    from audit.config import build_config
    from audit.runner import run as run_audit

    source: dict[str, Any] = {}
    chosen = [s for s in (folder, manifest, fiftyone_dataset) if s is not None]
    if len(chosen) > 1:
        raise _fail("give one source: --folder, --manifest or --fiftyone-dataset")
    if folder is not None:
        source = {"kind": "folder", "path": folder}
    elif manifest is not None:
        source = {"kind": "manifest", "path": manifest}
    elif fiftyone_dataset is not None:
        source = {"kind": "fiftyone", "dataset": fiftyone_dataset, "label_field": label_field,
                  "annotator_fields": annotator_field or None}
    if annotations is not None:
        source["annotations"] = annotations
    embedder_kind = embedder
    if (embeddings or embeddings_field) and embedder is None:
        embedder_kind = "precomputed"
    overrides = {
        "source": source or None,
        "embedder": {"kind": embedder_kind, "model": model, "pretrained": pretrained, "device": device,
                     "precision": precision, "batch_size": batch_size, "workers": workers, "cache_dir": cache_dir,
                     "use_cache": False if no_cache else None, "path": embeddings, "field": embeddings_field},
        "pred_probs": {"path": pred_probs, "field": pred_probs_field},
        "output_dir": output_dir, "run_name": run_name, "baseline": baseline, "seed": seed,
        "report": False if no_report else None,
    }
    try:
        cfg = build_config(config, overrides)
        results = run_audit(cfg)
    except _expected_errors() as exc:
        raise _fail(str(exc)) from exc
    typer.echo(f"run written to {results.path}")
    if (results.path / "index.html").is_file():
        typer.echo(f"report: {results.path / 'index.html'}")
    if gate:
        try:
            code = _gate_and_exit(results.path, cfg.baseline, config, {})
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
) -> None:
    """Build the embedded digits demo (real images, injected noise, simulated annotators), audit it, and print how
    the flagged samples compare with the injected truth."""
    from audit.demo import run_demo

    try:
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
        help="FiftyOne dataset to write into [default: the run's own dataset, or one named after the source].")] = None,
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
    dataset: Annotated[str | None, typer.Option(help="FiftyOne dataset [default: as `label-audit fiftyone`].")] = None,
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
    run_dir: Annotated[Path, typer.Argument(help="A run folder written by `label-audit run`.")],
    baseline: Annotated[Path | None, typer.Option(help="Last released run folder (for shift and ratchet rules).")]
    = None,
    config: Annotated[Path | None, typer.Option("--config", "-c", help="File with the thresholds (gate section).")]
    = None,
    set_: Annotated[list[str] | None, typer.Option("--set", help="Override a threshold: NAME=VALUE (repeatable).")]
    = None,
) -> None:
    """Check a run against release thresholds: exit 0 pass, 1 fail, 2 bad input. Writes gate.json, gate.xml
    (JUnit) and gate.md beside the run."""
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


def main() -> None:
    """Console-script entry point."""
    try:
        app()
    except KeyboardInterrupt:
        typer.secho("label-audit: interrupted; finished work is kept in the cache", err=True)
        sys.exit(130)


if __name__ == "__main__":
    main()
