"""``label-audit review ...``: the loop from suspects to the labelling tool and back (see :mod:`audit.review`).

::

    label-audit review export RUN --to labelstudio|cvat|fiftyone [--k 50] [--audit-sample N]
    label-audit review import RUN --from labelstudio | labelstudio-file FILE | cvat FILE | fiftyone
    label-audit review corrections RUN
    label-audit review next RUN --k 50 --to labelstudio|cvat|fiftyone
    label-audit review feedback RUN

Everything is recorded in the run folder: ``review.parquet`` (the ledger, carried forward to the next run of the
dataset), ``review/`` (what was exported: tasks files, CVAT XML and images zip, ``labelstudio.json`` naming the
server and projects, never the API key), ``corrections/`` (the corrected manifest and ``label_changes.csv``) and
``feedback/`` (one page per annotator). Exit codes as the rest of the CLI: 0 done, 2 bad input or a tool that
refused (one line on stderr).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from audit.cli_errors import fail as _fail

if TYPE_CHECKING:
    import pandas as pd

    from audit.progress import Progress
    from audit.results import RunResults

review_app = typer.Typer(
    help="Send suspects to a labelling tool (Label Studio, CVAT, FiftyOne), read the verdicts back into the run's "
    "review ledger, write corrected labels, rank what to label next and write feedback pages for annotators.",
    no_args_is_help=True,
)

TOOLS = ("labelstudio", "cvat", "fiftyone")
SOURCES = ("labelstudio", "labelstudio-file", "cvat", "fiftyone")
EXPORT_DIR = "review"
LABELSTUDIO_RECORD = "labelstudio.json"
CVAT_XML = "cvat-review.xml"
CVAT_ZIP = "cvat-images.zip"
TITLE_LENGTH = (3, 50)  # Label Studio's limits on a project title

RunArgument = Annotated[Path, typer.Argument(help="A run folder written by `label-audit run`.")]
UrlOption = Annotated[str | None, typer.Option(
    "--url", envvar="LABEL_STUDIO_URL", show_envvar=True,
    help="Label Studio server, e.g. http://localhost:8080 (default: $LABEL_STUDIO_URL; for import also the URL "
    "recorded at export). Without one, `--to labelstudio` writes the tasks file for a manual import only.")]
ApiKeyOption = Annotated[str | None, typer.Option(
    "--api-key", envvar="LABEL_STUDIO_API_KEY", show_envvar=True,
    help="Label Studio API token (Account & Settings; legacy tokens and personal access tokens both work).")]
ProjectOption = Annotated[str | None, typer.Option(
    "--project", help="Label Studio project title (export: created or updated; default 'label-audit <dataset>'; "
    "import: default the projects recorded at export).")]
ImagesOption = Annotated[str, typer.Option(
    "--images", help="How Label Studio gets the images: upload (copies them to the server, works anywhere) or "
    "local-files (the server reads them from disk; needs --document-root).")]
DocumentRootOption = Annotated[Path | None, typer.Option(
    "--document-root", envvar="LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT",
    help="The server's LOCAL_FILES_DOCUMENT_ROOT: for --images local-files and the local-files URLs of the tasks "
    "file (default for the file: /).")]
DatasetOption = Annotated[str | None, typer.Option(
    "--dataset", help="FiftyOne dataset (default: the one `label-audit fiftyone` writes the run into).")]
OutOption = Annotated[Path | None, typer.Option("--out", help="Folder for the files written (default: RUN/review).")]
QuietOption = Annotated[bool, typer.Option("--quiet", "-q", help="Print nothing but errors and the closing lines.")]


# ---------------------------------------------------------------------------------------------------- helpers


def _expected_errors() -> tuple[type[BaseException], ...]:
    """The CLI's bad-input errors, plus a labelling tool that refused or could not be reached."""
    import httpx

    from audit.cli_errors import expected_errors as expected

    errors: tuple[type[BaseException], ...] = (*expected(), httpx.HTTPError, OSError)
    try:
        from label_studio_sdk.core.api_error import ApiError
    except ImportError:  # label-studio-sdk is optional for everything but the Label Studio integration
        return errors
    return (*errors, ApiError)


def _message(exc: BaseException) -> str:
    """One line for an error: the SDK's ApiError carries the HTTP status and the server's body."""
    status, body = getattr(exc, "status_code", None), getattr(exc, "body", None)
    if status is not None:
        detail = body.get("detail") or body if isinstance(body, dict) else body
        return f"Label Studio answered HTTP {status}: {str(detail)[:300]}"
    if type(exc).__module__.startswith("httpx"):
        return f"could not reach the labelling tool: {type(exc).__name__}: {exc}"
    return str(exc) or type(exc).__name__


def _progress(quiet: bool) -> Progress:
    from audit.progress import Progress

    return Progress(verbosity=0 if quiet else 1)


def _choice(value: str, allowed: tuple[str, ...], option: str) -> str:
    if value not in allowed:
        raise _fail(f"{option} must be one of {', '.join(allowed)}, got {value!r}")
    return value


def _default_title(run: RunResults, suffix: str = "") -> str:
    dataset = (run.summary.get("dataset") or {}).get("name") or run.name
    title = f"label-audit {dataset}"[: TITLE_LENGTH[1] - len(suffix)] + suffix
    return title if len(title) >= TITLE_LENGTH[0] else f"{title}---"[: TITLE_LENGTH[0]]


def _record_file(run: RunResults) -> Path:
    return run.path / EXPORT_DIR / LABELSTUDIO_RECORD


def _read_record(run: RunResults) -> dict[str, Any]:
    file = _record_file(run)
    if not file.is_file():
        return {}
    try:
        return json.loads(file.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise _fail(f"{file} could not be read: {exc}") from exc


def _write_record(run: RunResults, url: str, projects: list[dict[str, Any]]) -> None:
    """Which server and projects a run's queues went to, so `review import --from labelstudio` finds them."""
    from audit.results import atomic_write_text

    record = _read_record(run)
    known = {p["id"]: p for p in record.get("projects", []) if record.get("url") == url}
    known.update({p["id"]: p for p in projects})
    atomic_write_text(_record_file(run), json.dumps({"url": url, "projects": list(known.values())}, indent=2) + "\n")


def _split_by_kind(queue: pd.DataFrame) -> list[tuple[str, pd.DataFrame]]:
    return [(kind, queue[queue["item_kind"] == kind]) for kind in ("image", "object")
            if (queue["item_kind"] == kind).any()]


def _export_queue(run: RunResults, queue: pd.DataFrame, to: str, *, what: str, url: str | None, api_key: str | None,
                  project: str | None, images: str, document_root: Path | None, dataset: str | None,
                  out: Path | None, progress: Progress, title_suffix: str = "") -> list[str]:
    """Send a queue to a tool, note it in the ledger; returns the closing lines to print."""
    from audit.review import read_ledger, record_export, write_ledger

    out_dir = out or run.path / EXPORT_DIR
    class_names = run.class_names
    lines: list[str] = []
    tag = "" if what == "review" else "next-"  # a label-next batch never overwrites the review's files
    if to == "labelstudio":
        from audit.integrations import labelstudio as ls

        _choice(images, ("upload", "local-files"), "--images")
        if url and not api_key:
            raise _fail("exporting to Label Studio at a URL needs an API token: --api-key or LABEL_STUDIO_API_KEY")
        projects = []
        for kind, part in _split_by_kind(queue):
            name = f"labelstudio-{tag}tasks.json" if kind == "image" else f"labelstudio-{tag}object-tasks.json"
            written = ls.write_tasks_json(part, out_dir / name, class_names, document_root=document_root or "/")
            lines.append(f"tasks file for a manual import: {written.tasks} ({written.n_tasks} tasks; labelling "
                         f"config {written.label_config})")
            if not url:
                continue
            title = project or _default_title(run, title_suffix)
            if kind == "object":
                title = title[: TITLE_LENGTH[1] - len(" (boxes)")] + " (boxes)"
            with progress.stage("label studio", f"{len(part):,} {kind} items to project {title!r} at {url}") as stage:
                done = ls.export_to_project(part, class_names, url=url, api_key=api_key, title=title, images=images,
                                            document_root=document_root)
                stage.result = f"{done.n_created} tasks created, {done.n_updated} refreshed, {done.n_kept} kept"
            projects.append({"id": done.project_id, "title": done.title, "item_kind": kind, "queue": what})
            lines.append(f"Label Studio project {done.title!r} (id {done.project_id}) at {url}: "
                         f"{'created' if done.created else 'updated'}, {done.n_created} tasks created, "
                         f"{done.n_updated} refreshed, {done.n_kept} already answered")
        if url:
            _write_record(run, url, projects)
        else:
            lines.append("no Label Studio URL (--url or LABEL_STUDIO_URL): only the tasks file was written; import "
                         "it in Label Studio, then `label-audit review import RUN --from labelstudio-file EXPORT.json`")
    elif to == "cvat":
        from audit.integrations import cvat

        unlabelled = queue["given_label"].isna()
        if unlabelled.any():
            raise _fail(f"CVAT tags need a given label, and {int(unlabelled.sum())} queued images have none "
                        f"(e.g. {queue.index[unlabelled][0]!r}); export them with --to labelstudio or fiftyone")
        with progress.stage("cvat", f"{len(queue):,} items as CVAT for images 1.1") as stage:
            xml = cvat.write_cvat_xml(queue, out_dir / f"{tag}{CVAT_XML}", class_names,
                                      task_name=f"label-audit {what} {run.name}")
            archive = cvat.write_images_zip(queue, out_dir / f"{tag}{CVAT_ZIP}")
            stage.result = f"{xml.name}, {archive.name}"
        lines += [f"CVAT annotations (CVAT for images 1.1): {xml}",
                  f"CVAT task images: {archive} (create the task from it, upload the XML, review, export as "
                  "'CVAT for images 1.1', then `label-audit review import RUN --from cvat FILE`)"]
    else:
        from audit.integrations import fiftyone_review

        with progress.stage("fiftyone", f"{len(queue):,} items tagged for review") as stage:
            done = fiftyone_review.export_review(run.path, queue, dataset)
            stage.result = f"dataset {done.dataset}, view {done.view}"
        lines.append(f"FiftyOne dataset {done.dataset!r}: {done.n_tagged} samples tagged "
                     f"{fiftyone_review.TAG_QUEUED!r}, saved view {done.view!r}; in the App tag each one "
                     "review:correct, review:wrong or review:unsure (review:fix:<class> gives the right class), then "
                     "`label-audit review import RUN --from fiftyone`"
                     + (f" ({done.n_missing} items are not in the dataset)" if done.n_missing else ""))
    ledger = record_export(read_ledger(run.path), queue, to)
    ledger_file = write_ledger(run.path, ledger)
    pending = int(ledger["verdict"].isna().sum())
    lines.append(f"review ledger: {ledger_file} ({len(ledger):,} items, {pending:,} waiting for an answer)")
    return lines


# ---------------------------------------------------------------------------------------------------- export


OBJECT_COLUMNS = ("is_issue", "label_quality", "suggested_label", "suggested_prob")


def object_suspects(run: RunResults) -> pd.DataFrame | None:
    """The run's objects with the ``object_mistakes`` check's columns as the review queue reads them
    (``mistakes_*``), or None when the run has no audited objects.

    A suggestion that is not a class (``background``: a spurious box; ``misplaced``: a badly drawn one) becomes
    no suggestion, and the kind of mistake leads the reason; in Label Studio a reviewer deletes a spurious box,
    which reads back as "wrong, no class".
    """
    objects = getattr(run, "objects", None)
    if objects is None or "mistakes_is_issue" in objects or "object_mistakes_is_issue" not in objects:
        return None
    table = objects.rename(columns={f"object_mistakes_{c}": f"mistakes_{c}" for c in OBJECT_COLUMNS})
    suggested = table["mistakes_suggested_label"]
    table["mistakes_suggested_label"] = suggested.where(suggested.isin(run.class_names), None)
    return table


def _object_reasons(queue: pd.DataFrame, objects: pd.DataFrame | None) -> pd.DataFrame:
    if objects is None or "object_mistakes_kind" not in objects or not (queue["item_kind"] == "object").any():
        return queue
    queue = queue.copy()
    for item in queue.index[queue["item_kind"] == "object"]:
        kind = objects["object_mistakes_kind"].get(item)
        if isinstance(kind, str) and kind:
            queue.loc[item, "reason"] = f"{kind.replace('_', ' ')} box; {queue.loc[item, 'reason']}"
    return queue


def _not_yet_decided(queue: pd.DataFrame, ledger: pd.DataFrame, samples: pd.DataFrame, k: int) -> pd.DataFrame:
    """The first ``k`` suspects of each kind that no reviewer has decided yet: images with a current "correct" or
    "wrong" verdict are left out (an "unsure" one may go to another reviewer), so nobody answers twice."""
    import pandas as pd

    from audit.review import current_image_rows

    current = current_image_rows(ledger, samples)
    decided = set(current.index[current["verdict"].isin(["correct", "wrong"])])
    keep = ~((queue["item_kind"] == "image") & queue.index.isin(list(decided)))
    parts = [part.head(k) for _, part in _split_by_kind(queue[keep])]
    return pd.concat(parts) if len(parts) > 1 else (parts[0] if parts else queue.iloc[:0])


@review_app.command("export")
def export_command(
    run_dir: RunArgument,
    to: Annotated[str, typer.Option("--to", help="The labelling tool: labelstudio, cvat or fiftyone.")],
    k: Annotated[int, typer.Option("--k", min=1, help="How many suspects: the k worst (lowest label quality), "
                                                      "leaving out those a reviewer already confirmed correct.")] = 50,
    audit_sample: Annotated[int, typer.Option(
        "--audit-sample", min=0, help="Also send N random unflagged images (a simple random sample): reviewing them "
        "is what makes the whole-dataset error-rate estimate complete.")] = 0,
    seed: Annotated[int, typer.Option(help="Seed of the random audit sample.")] = 0,
    url: UrlOption = None,
    api_key: ApiKeyOption = None,
    project: ProjectOption = None,
    images: ImagesOption = "upload",
    document_root: DocumentRootOption = None,
    dataset: DatasetOption = None,
    out: OutOption = None,
    quiet: QuietOption = False,
) -> None:
    """Send the worst suspects to Label Studio, CVAT or FiftyOne for review.

    Each item (an image, or a box on detection runs) carries the given label to check, the suggested label as a
    pre-annotation, the score and the reason.

    Label Studio: creates or updates the project through the API (safe to repeat: answered tasks are kept) and
    writes the tasks JSON for a manual import. CVAT: a CVAT for images 1.1 XML file and a zip of the images.
    FiftyOne: tags the samples, saves the view 'la-review'; reviewers tag review:correct / review:wrong /
    review:unsure. The items are noted in the run's review ledger (review.parquet)."""
    from audit.results import RunResults
    from audit.review import build_review_queue, draw_audit_sample, read_ledger

    _choice(to, TOOLS, "--to")
    progress = _progress(quiet)
    try:
        run = RunResults.load(run_dir)
        ledger = read_ledger(run.path)
        with progress.stage("queue", f"the {k} worst suspects of run {run.name}") as stage:
            objects = object_suspects(run)
            queue = build_review_queue(run, None, ledger=ledger, objects=objects)
            queue = _object_reasons(_not_yet_decided(queue, ledger, run.samples, k), objects)
            n_suspects = len(queue)
            if audit_sample:
                import pandas as pd

                sample = draw_audit_sample(run, audit_sample, seed=seed, ledger=ledger)
                queue = pd.concat([queue, sample]) if len(queue) else sample
            if len(queue):
                queue["rank"] = range(1, len(queue) + 1)
            stage.result = (f"{n_suspects} suspects" + (f" + {len(queue) - n_suspects} random audit images"
                                                        if audit_sample else ""))
        if queue.empty:
            typer.echo(f"nothing to review: run {run.name} has no suspect that is not already confirmed correct"
                       + ("" if audit_sample else " (--audit-sample N sends a random sample of the rest)"))
            return
        lines = _export_queue(run, queue, to, what="review", url=url, api_key=api_key, project=project,
                              images=images, document_root=document_root, dataset=dataset, out=out, progress=progress)
    except _expected_errors() as exc:
        raise _fail(_message(exc)) from exc
    typer.echo(f"exported {n_suspects} suspects" + (f" and {len(queue) - n_suspects} random audit images"
                                                     if audit_sample else "") + f" of run {run.name} to {to}")
    for line in lines:
        typer.echo(line)


# ---------------------------------------------------------------------------------------------------- import


def _answers(run: RunResults, source: str, file: Path | None, *, url: str | None, api_key: str | None,
             project: str | None, dataset: str | None, reviewer: str | None, ledger: pd.DataFrame,
             progress: Progress) -> tuple[pd.DataFrame, list[str]]:
    """The verdict rows from the chosen tool and lines to print."""
    notes: list[str] = []
    if source in ("labelstudio-file", "cvat") and file is None:
        raise _fail(f"--from {source} needs the file to read: label-audit review import RUN --from {source} FILE")
    if source not in ("labelstudio-file", "cvat") and file is not None:
        raise _fail(f"--from {source} reads no file; got {file}")
    with progress.stage("answers", f"from {source}" + (f" {file}" if file else "")) as stage:
        if source == "labelstudio":
            from audit.integrations import labelstudio as ls

            record = _read_record(run)
            url = url or record.get("url")
            if not url or not api_key:
                raise _fail("reading answers from Label Studio needs --url (or LABEL_STUDIO_URL, or an export "
                            "recorded in the run) and --api-key (or LABEL_STUDIO_API_KEY)")
            import pandas as pd

            if project:
                parts = [ls.read_project_verdicts(url=url, api_key=api_key, title=project)]
            else:
                projects = record.get("projects") or []
                if not projects or record.get("url") != url:
                    raise _fail(f"no Label Studio project of run {run.name} is recorded for {url}: name it with "
                                "--project TITLE")
                parts = [ls.read_project_verdicts(url=url, api_key=api_key, project_id=int(p["id"]))
                         for p in projects]
            answers = pd.concat(parts) if len(parts) > 1 else parts[0]
        elif source == "labelstudio-file":
            from audit.integrations import labelstudio as ls

            answers = ls.read_export_file(file)
        elif source == "cvat":
            from audit.integrations import cvat

            answers = cvat.read_cvat_xml(file, reviewer=reviewer)
        else:
            from audit.integrations import fiftyone_review

            found = fiftyone_review.read_review_tags(run.path, dataset, reviewer=reviewer, ledger=ledger)
            answers = found.verdicts
            if found.n_ignored:
                notes.append(f"ignored the review tags of {found.n_ignored} sample(s) that are not in the review "
                             "ledger")
        stage.result = f"{int(answers['verdict'].notna().sum())} answered items"
    return answers, notes


def _check_belongs(run: RunResults, answers: pd.DataFrame, ledger: pd.DataFrame, source: str) -> None:
    """Refuse answers none of which is about this run (another project, another run's file)."""
    answered = answers[answers["verdict"].notna()]
    if answered.empty:
        return
    known = set(ledger.index) | set(run.samples.index.astype(str))
    if not any(str(i) in known for i in answered.index):
        raise _fail(f"none of the {len(answered)} answers from {source} is about an item of run {run.name} "
                    f"(e.g. {answered.index[0]!r}): wrong project, file or run folder?")


def refresh_review(run_dir: Path) -> dict[str, Any] | None:
    """Recompute the review check of a run folder from its ledger (``review_*`` columns and
    ``summary["checks"]["review"]``) and re-render its report, so the verdicts just imported show at once.

    Nothing else is recomputed: the check reads the run's stored columns. Returns the check's metrics, or None
    when the ledger is empty or the config disables the check.
    """
    from audit.checks.base import CheckContext, validate_result
    from audit.checks.review import ReviewCheck
    from audit.results import RunResults, write_run
    from audit.review import read_ledger

    run = RunResults.load(run_dir)
    ledger = read_ledger(run.path)
    config = run.summary.get("config") or {}
    if not len(ledger) or ReviewCheck.name in (config.get("disabled_checks") or []):
        return None
    samples = run.samples.drop(columns=[c for c in run.samples.columns if c.startswith(f"{ReviewCheck.name}_")])
    context = CheckContext(samples=samples, class_names=run.class_names, annotations=run.annotations,
                           params=dict((config.get("checks") or {}).get(ReviewCheck.name) or {}), ledger=ledger)
    result = ReviewCheck().run(context)
    validate_result(result, samples.index)
    summary = dict(run.summary)
    summary["checks"] = {**(summary.get("checks") or {}), ReviewCheck.name: result.metrics}
    write_run(run.path, samples.join(result.samples), summary)
    if (run.path / "index.html").is_file():
        from audit.report import render_report

        render_report(run.path)
    if (run.path.parent / "index.html").is_file():
        from audit.report.trends import render_trends

        render_trends(run.path.parent)
    return result.metrics


def _cells(table: pd.DataFrame) -> pd.DataFrame:
    """Cells as comparable text (None, NaN and NaT alike: empty)."""
    import pandas as pd

    return table.astype(object).map(lambda v: "" if v is None or v is pd.NaT or (isinstance(v, float) and v != v)
                                    else str(v))


OBJECT_KEEP = ("sample_id", "label", "x", "y", "w", "h", "image_width", "image_height", "annotator", "source")


def write_object_corrections(run: RunResults, ledger: pd.DataFrame, out_dir: Path | None = None) -> Path | None:
    """The run's boxes with the reviewers' corrections, as a new file ``objects.corrected.csv`` (and
    ``object_changes.csv``): a box reviewed "wrong" with a class gets that class, one reviewed "wrong" without
    a class (not an object of any class) is left out; a box whose label changed since the review is skipped.
    None when no box was found wrong."""
    import pandas as pd

    from audit.results import atomic_write_text
    from audit.review import normalise_ledger

    objects = getattr(run, "objects", None)
    rows = normalise_ledger(ledger)
    wrong = rows[(rows["item_kind"] == "object") & (rows["verdict"] == "wrong")]
    if objects is None or wrong.empty:
        return None
    table = objects[[c for c in OBJECT_KEEP if c in objects.columns]].copy()
    table["label"] = table["label"].astype(object)
    changes, removed = [], []
    for item, row in wrong.iterrows():
        if item not in table.index:
            status = "skipped: not among the run's objects"
        elif table.at[item, "label"] != row["given_label"]:
            status = f"skipped: the label is now {table.at[item, 'label']!r}, not the reviewed {row['given_label']!r}"
        elif row["corrected_label"] is not None:
            table.at[item, "label"] = row["corrected_label"]
            status = "relabelled"
        else:
            removed.append(item)
            status = "removed: not an object of any class"
        changes.append({"object_id": item, "sample_id": row["sample_id"], "old_label": row["given_label"],
                        "new_label": row["corrected_label"], "reviewer": row["reviewer"], "status": status})
    out = out_dir or run.path / "corrections"
    target = out / "objects.corrected.csv"
    atomic_write_text(target, table.drop(index=removed).rename_axis("object_id").to_csv())
    atomic_write_text(out / "object_changes.csv", pd.DataFrame(changes).to_csv(index=False))
    return target


def _corrections_lines(files, objects: Path | None = None) -> list[str]:
    lines = [f"corrected labels: {files.manifest} ({files.n_applied} applied, {files.n_skipped} skipped; your "
             f"source is untouched)", f"label changes: {files.changes}"]
    if objects is not None:
        lines.append(f"corrected boxes: {objects} (changes: {objects.parent / 'object_changes.csv'})")
    return lines


def _metrics_line(metrics: dict[str, Any] | None) -> str | None:
    if not metrics:
        return None
    from audit.checks.review import ReviewCheck

    return f"review: {ReviewCheck.summary_line(metrics)}"


@review_app.command("import")
def import_command(
    run_dir: RunArgument,
    source: Annotated[str, typer.Option(
        "--from", help="Where the answers are: labelstudio (the API), labelstudio-file (a JSON export, give FILE), "
        "cvat (the 'CVAT for images 1.1' export, give FILE) or fiftyone (the review tags set in the App).")],
    file: Annotated[Path | None, typer.Argument(help="The export file, for --from labelstudio-file and cvat.")]
    = None,
    url: UrlOption = None,
    api_key: ApiKeyOption = None,
    project: ProjectOption = None,
    dataset: DatasetOption = None,
    reviewer: Annotated[str | None, typer.Option(
        help="Who answered, for tools that do not record it (CVAT: default the task owner in the file; FiftyOne).")]
    = None,
    out: Annotated[Path | None, typer.Option(
        "--out", help="Folder for the corrected labels (default: RUN/corrections).")] = None,
    quiet: QuietOption = False,
) -> None:
    """Read the reviewers' answers back into the run's review ledger and write the corrected labels.

    The answers go into review.parquet; the corrected labels are new files (the source is never touched); the
    run's review figures and report are refreshed.

    An answer equal to the given label means 'correct', another class 'wrong' with that class as the correction,
    'unsure' stays unsure. Importing the same answers twice changes nothing; the latest answer per item wins.
    Next week's run of the same dataset carries the ledger forward and does not flag again an image a reviewer
    confirmed correct, unless the image or its label changed."""
    from audit.results import RunResults
    from audit.review import merge_verdicts, read_ledger, write_corrected_labels, write_ledger

    _choice(source, SOURCES, "--from")
    progress = _progress(quiet)
    try:
        run = RunResults.load(run_dir)
        before = read_ledger(run.path)
        answers, notes = _answers(run, source, file, url=url, api_key=api_key, project=project, dataset=dataset,
                                  reviewer=reviewer, ledger=before, progress=progress)
        _check_belongs(run, answers, before, source)
        ledger = merge_verdicts(before, answers)
        ledger_file = write_ledger(run.path, ledger)
    except _expected_errors() as exc:
        raise _fail(_message(exc)) from exc
    columns = ["verdict", "corrected_label", "reviewer", "reviewed_at"]
    changed = _cells(ledger[columns]).ne(_cells(before.reindex(ledger.index)[columns])).any(axis=1)
    answered = answers[answers["verdict"].notna()]
    counts = answered["verdict"].value_counts()
    typer.echo(f"imported {len(answered)} answers from {source}: {counts.get('correct', 0)} correct, "
               f"{counts.get('wrong', 0)} wrong ({int(answered['corrected_label'].notna().sum())} with a corrected "
               f"label), {counts.get('unsure', 0)} unsure; {int(changed.sum())} ledger items changed")
    for note in notes:
        typer.echo(note)
    typer.echo(f"review ledger: {ledger_file}")
    try:
        with progress.stage("corrections", "corrected labels as new files"):
            files = write_corrected_labels(ledger, run, out)
            boxes = write_object_corrections(run, ledger, out)
        with progress.stage("review figures", "precision at k and the error-rate estimate") as stage:
            metrics = refresh_review(run.path)
            stage.result = "recomputed; report refreshed" if metrics else "nothing to compute"
    except _expected_errors() as exc:
        raise _fail(f"the answers are in {ledger_file}, but the corrected labels or review figures could not be "
                    f"written: {_message(exc)}") from exc
    for line in _corrections_lines(files, boxes):
        typer.echo(line)
    line = _metrics_line(metrics)
    if line:
        typer.echo(line)
    if (run.path / "index.html").is_file():
        typer.echo(f"report: {run.path / 'index.html'}")


# ----------------------------------------------------------------------------------------------- corrections


@review_app.command("corrections")
def corrections_command(
    run_dir: RunArgument,
    out: Annotated[Path | None, typer.Option(
        "--out", help="Folder for the corrected labels (default: RUN/corrections).")] = None,
    source: Annotated[Path | None, typer.Option(
        "--source", help="The manifest to correct (default: the run's own manifest; runs from a folder or FiftyOne "
        "get a fresh filepath,label,split manifest).")] = None,
) -> None:
    """Write the corrected labels from the review ledger as new files.

    A copy of the manifest with the reviewers' corrections applied, and label_changes.csv listing each change (or
    why it was skipped). `review import` does this too; the source manifest is never overwritten."""
    from audit.results import RunResults
    from audit.review import read_ledger, write_corrected_labels

    try:
        run = RunResults.load(run_dir)
        ledger = read_ledger(run.path)
        files = write_corrected_labels(ledger, run, out, source=source)
        boxes = write_object_corrections(run, ledger, out)
    except _expected_errors() as exc:
        raise _fail(_message(exc)) from exc
    for line in _corrections_lines(files, boxes):
        typer.echo(line)


# ------------------------------------------------------------------------------------------------ label next


@review_app.command("next")
def next_command(
    run_dir: RunArgument,
    to: Annotated[str, typer.Option("--to", help="The labelling tool: labelstudio, cvat or fiftyone.")],
    k: Annotated[int, typer.Option("--k", min=1, help="How many images to label next.")] = 50,
    method: Annotated[str, typer.Option(
        help="Without annotators: least_confidence (1 - max p) or margin (1 - gap between the two likeliest "
        "classes). With annotators the ranking is cleanlab's ActiveLab score.")] = "least_confidence",
    unlabelled_only: Annotated[bool, typer.Option(
        "--unlabelled-only", help="Rank only images with no label at all (default: images with one label too, "
        "to label again).")] = False,
    url: UrlOption = None,
    api_key: ApiKeyOption = None,
    project: ProjectOption = None,
    images: ImagesOption = "upload",
    document_root: DocumentRootOption = None,
    dataset: DatasetOption = None,
    out: OutOption = None,
    quiet: QuietOption = False,
) -> None:
    """Rank what to label (or label again) next and send that batch to a labelling tool.

    Candidates: unlabelled images and images with a single annotation. With per-annotator labels they are ranked
    by cleanlab's ActiveLab active-learning scores, otherwise by the classifier's uncertainty. The answers come
    back with `review import`; a label given to an unlabelled image lands in the corrected manifest."""
    from audit.label_next import label_next_queue
    from audit.results import RunResults
    from audit.review import read_ledger

    _choice(to, TOOLS, "--to")
    progress = _progress(quiet)
    try:
        run = RunResults.load(run_dir)
        with progress.stage("label next", f"ranking images of run {run.name}") as stage:
            ranked = label_next_queue(run, k, method=method, include_labelled=not unlabelled_only,
                                      ledger=read_ledger(run.path))
            stage.result = f"{len(ranked.queue)} of {ranked.n_candidates} candidates by {ranked.method}"
        for note in ranked.notes:
            progress.line(f"label next: {note}")
        if ranked.queue.empty:
            typer.echo(f"nothing to label next: run {run.name} has no candidate that is not already queued")
            return
        lines = _export_queue(run, ranked.queue, to, what="label next", url=url, api_key=api_key, project=project,
                              images=images, document_root=document_root, dataset=dataset, out=out,
                              progress=progress, title_suffix=" next")
    except _expected_errors() as exc:
        raise _fail(_message(exc)) from exc
    typer.echo(f"exported the {len(ranked.queue)} images to label next ({ranked.method}) of run {run.name} to {to}")
    for line in lines:
        typer.echo(line)


# -------------------------------------------------------------------------------------------------- feedback


@review_app.command("feedback")
def feedback_command(
    run_dir: RunArgument,
    out: Annotated[Path | None, typer.Option(
        "--out", help="Folder for the pages (default: RUN/feedback; the report links to the pages there).")] = None,
) -> None:
    """Write one feedback page per annotator (Markdown and self-contained HTML), ready to send.

    Each page lists their labels that a reviewer or the consensus overturned (with thumbnails in the HTML), their
    confusion matrix against the believed labels, and their agreement and quality across the runs of this
    dataset."""
    from audit.feedback import write_feedback
    from audit.results import RunResults

    try:
        run = RunResults.load(run_dir)
        pages = write_feedback(run.path, out)
        if out is None and (run.path / "index.html").is_file():
            from audit.report import render_report

            render_report(run.path)  # the report's Review section links to the pages
    except _expected_errors() as exc:
        raise _fail(_message(exc)) from exc
    for page in pages:
        typer.echo(f"{page.annotator}: {page.n_overturned} of {page.n_labels} labels overturned -> {page.html}, "
                   f"{page.markdown}")
    if pages:
        typer.echo(f"index: {pages[0].html.parent / 'index.html'}")
