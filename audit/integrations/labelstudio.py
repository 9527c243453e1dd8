"""Label Studio: send the review queue to a project and read the reviewers' verdicts back as ledger rows.

One task per item. The task shows the image, the *given* label (the one under review) and why the audit
flagged it (``$prompt``); the *suggested* label comes as a prediction (a pre-annotation with the audit's score),
so a reviewer who agrees with the audit just submits. The reviewer's answer is one control named ``label``:
``Choices`` over the classes for images, ``RectangleLabels`` for objects (the suspect box, pre-drawn), each with
an extra "Unsure" choice (stored as :data:`UNSURE_ALIAS`). Reading back: answer = given label -> ``correct``;
another class -> ``wrong`` with that class as the corrected label; "Unsure" -> ``unsure``; an object whose box
the reviewer deleted -> ``wrong`` with no corrected label (not an object of any class). Skipped (cancelled)
annotations are no answer. Every task carries the item's ledger fields in its data, so answers read back from
an export file need nothing else.

How the images reach Label Studio (both work offline, pick with ``images=``):

``"upload"`` (default)
    The image files are uploaded through the API (``POST /api/projects/<id>/import?commit_to_project=false``,
    Label Studio keeps them in its media folder and serves them at ``/data/upload/...``), then the tasks are
    imported as JSON pointing at them. Works with any server, local or remote, with no server configuration;
    costs a copy of each reviewed image on the server.
``"local-files"``
    Nothing is copied: tasks point at ``/data/local-files/?d=<path>`` and a local-files storage is added to the
    project so the server may serve the folder. The server must see the same files and run with
    ``LOCAL_FILES_SERVING_ENABLED=true`` and ``LOCAL_FILES_DOCUMENT_ROOT=<a folder above the images>``.

:func:`write_tasks_json` writes the same tasks to a file for a manual import (Label Studio's *Import* button)
with local-files URLs (or URLs of your own from ``image_url``), and the labelling config next to it.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote
from xml.sax.saxutils import quoteattr

import numpy as np
import pandas as pd

from audit.results import atomic_write_text
from audit.review import LEDGER_COLUMNS, OBJECT_BOX_COLUMNS, ReviewError, normalise_ledger, verdict_for

CONTROL = "label"
IMAGE = "image"
UNSURE_ALIAS = "__unsure__"
UNSURE_VALUE = "Unsure (cannot tell)"
MODEL_VERSION = "label-audit"
TOOL = "labelstudio"
UPLOAD_BATCH = 50  # files per upload request (Label Studio accepts 100 by default: DATA_UPLOAD_MAX_NUMBER_FILES)
# Ledger fields a task carries in its data (plus image, prompt and, for objects, the box).
TASK_FIELDS = ["item_id", "item_kind", "sample_id", "given_label", "suggested_label", "score", "reason",
               "content_hash", "selection"]


class LabelStudioError(ReviewError):
    """Label Studio refused something or returned what we did not expect (the message says what)."""


# ------------------------------------------------------------------------------------------- config, tasks


def _check_classes(class_names: Sequence[str]) -> list[str]:
    names = [str(c) for c in class_names]
    if not names:
        raise LabelStudioError("a Label Studio review needs at least one class name")
    if len(set(names)) != len(names):
        raise LabelStudioError(f"class names repeat: {sorted({c for c in names if names.count(c) > 1})}")
    clash = {UNSURE_ALIAS, UNSURE_VALUE} & set(names)
    if clash:
        raise LabelStudioError(f"class name {sorted(clash)[0]!r} is reserved for the reviewer's 'unsure' answer")
    return names


def label_config(class_names: Sequence[str], item_kind: str = "image") -> str:
    """The labelling config: the image, the review prompt, and one answer control over the classes + Unsure.

    ``item_kind="image"``: single ``Choices``; ``"object"``: ``RectangleLabels`` (the suspect box comes
    pre-drawn with the suggested label as a prediction).
    """
    names = _check_classes(class_names)
    if item_kind == "image":
        options = "".join(f"\n    <Choice value={quoteattr(c)}/>" for c in names)
        options += f"\n    <Choice value={quoteattr(UNSURE_VALUE)} alias={quoteattr(UNSURE_ALIAS)}/>"
        control = (f'  <Choices name="{CONTROL}" toName="{IMAGE}" choice="single-radio" showInline="true" '
                   f'required="true">{options}\n  </Choices>')
    elif item_kind == "object":
        options = "".join(f"\n    <Label value={quoteattr(c)}/>" for c in names)
        options += f"\n    <Label value={quoteattr(UNSURE_VALUE)} alias={quoteattr(UNSURE_ALIAS)}/>"
        control = f'  <RectangleLabels name="{CONTROL}" toName="{IMAGE}">{options}\n  </RectangleLabels>'
    else:
        raise LabelStudioError(f"item_kind must be 'image' or 'object', got {item_kind!r}")
    # The prompt is an unnamed Header: Label Studio then counts one data key ($image), which its file upload
    # requires (a named <Text value="$prompt"/> would make it refuse uploads "with more than one data key").
    return (f'<View>\n  <Header value="Is the given label right? Pick the right class, or Unsure." size="5"/>\n'
            f'  <Header value="$prompt" size="6"/>\n'
            f'  <Image name="{IMAGE}" value="${IMAGE}" zoom="true" zoomControl="true"/>\n{control}\n</View>\n')


def local_files_url(filepath: str | os.PathLike, document_root: str | os.PathLike = "/") -> str:
    """The URL Label Studio serves a local file at, for a server whose LOCAL_FILES_DOCUMENT_ROOT is
    ``document_root`` (Label Studio's default root is ``/``)."""
    path = Path(filepath).resolve()
    root = Path(document_root).resolve()
    try:
        relative = path.relative_to(root)
    except ValueError as exc:
        raise LabelStudioError(f"image {path} is not under the local-files document root {root}") from exc
    return "/data/local-files/?d=" + quote(relative.as_posix(), safe="/")


def _plain(value: Any) -> Any:
    """JSON-safe scalar (numpy numbers, NaN -> None, timestamps -> ISO text)."""
    if value is None:
        return None
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not np.isfinite(value):
        return None
    if isinstance(value, pd.Timestamp):
        return value.isoformat()
    return value


def _prompt(row: Mapping[str, Any]) -> str:
    score = row.get("score")
    kind = "priority" if row.get("selection") == "label_next" else "suspicion"  # label-next items: rank to label
    score_text = f" ({kind} {float(score):.2f})" if score is not None and np.isfinite(score) else ""
    what = "this box" if row.get("item_kind") == "object" else "this image"
    given = row.get("given_label")
    head = f"Given label of {what}: {given}." if given is not None else f"{what.capitalize()} has no label yet."
    return f"{head} The audit suggests: {row.get('suggested_label')}{score_text}. Why: {row.get('reason') or '-'}"


def _queue_records(queue: pd.DataFrame) -> list[dict[str, Any]]:
    if "filepath" not in queue.columns:
        raise LabelStudioError("the review queue has no 'filepath' column; build it with audit.review."
                               "build_review_queue")
    ledger_part = normalise_ledger(queue, where="review queue").reset_index()
    extra = queue.reset_index(drop="item_id" in queue.columns)
    records = []
    for position, row in enumerate(ledger_part.to_dict("records")):
        source = extra.iloc[position]
        row["filepath"] = source["filepath"]
        for column in OBJECT_BOX_COLUMNS:
            row[column] = source.get(column)
        if not row["filepath"] or not Path(str(row["filepath"])).is_file():
            raise LabelStudioError(f"review item {row['item_id']!r}: image {row['filepath']!r} does not exist")
        records.append(row)
    kinds = {r["item_kind"] for r in records}
    if len(kinds) > 1:
        raise LabelStudioError("a Label Studio project reviews one kind of item; split the queue into images and "
                               "objects")
    return records


def _prediction(row: Mapping[str, Any]) -> dict[str, Any] | None:
    suggested = row.get("suggested_label")
    if suggested is None:
        return None
    if row["item_kind"] == "object":
        width, height = int(row["image_width"]), int(row["image_height"])
        result = {"id": "suggested", "from_name": CONTROL, "to_name": IMAGE, "type": "rectanglelabels",
                  "original_width": width, "original_height": height, "image_rotation": 0,
                  "value": {"x": 100.0 * float(row["xn"]), "y": 100.0 * float(row["yn"]),
                            "width": 100.0 * float(row["wn"]), "height": 100.0 * float(row["hn"]),
                            "rotation": 0, "rectanglelabels": [suggested]}}
    else:
        result = {"from_name": CONTROL, "to_name": IMAGE, "type": "choices", "value": {"choices": [suggested]}}
    return {"model_version": MODEL_VERSION, "score": _plain(row.get("score")), "result": [result]}


def task_data(row: Mapping[str, Any], image_url: str) -> dict[str, Any]:
    """The ``data`` of one review task: image URL, prompt, and the ledger fields (read back on import)."""
    data = {IMAGE: image_url, "prompt": _prompt(row), **{f: _plain(row.get(f)) for f in TASK_FIELDS}}
    if row.get("item_kind") == "object":
        data.update({c: _plain(row.get(c)) for c in OBJECT_BOX_COLUMNS})
    return data


def build_tasks(queue: pd.DataFrame, image_url: Callable[[str], str]) -> list[dict[str, Any]]:
    """Label Studio tasks (``data`` + the suggested label as a prediction) for a review queue."""
    tasks = []
    for row in _queue_records(queue):
        task: dict[str, Any] = {"data": task_data(row, image_url(str(row["filepath"])))}
        prediction = _prediction(row)
        if prediction is not None:
            task["predictions"] = [prediction]
        tasks.append(task)
    return tasks


@dataclass(frozen=True)
class TasksFile:
    """What :func:`write_tasks_json` wrote."""

    tasks: Path
    label_config: Path
    n_tasks: int


def write_tasks_json(queue: pd.DataFrame, path: str | os.PathLike, class_names: Sequence[str], *,
                     document_root: str | os.PathLike = "/",
                     image_url: Callable[[str], str] | None = None) -> TasksFile:
    """Write the review tasks for a manual import, and the labelling config beside them (``<name>.xml``).

    Images are referenced as local-files URLs under ``document_root`` (start Label Studio with
    ``LOCAL_FILES_SERVING_ENABLED=true LOCAL_FILES_DOCUMENT_ROOT=<root>`` and add a local-files storage for the
    images' folder to the project), unless ``image_url`` maps a file path to a URL of your own (S3, HTTP...).
    """
    records = _queue_records(queue)
    kind = records[0]["item_kind"] if records else "image"
    to_url = image_url or (lambda p: local_files_url(p, document_root))
    tasks = build_tasks(queue, to_url)
    path = Path(path)
    atomic_write_text(path, json.dumps(tasks, indent=2, allow_nan=False))
    config = path.with_suffix(".xml")
    atomic_write_text(config, label_config(class_names, kind))
    return TasksFile(tasks=path, label_config=config, n_tasks=len(tasks))


# ---------------------------------------------------------------------------------------------- the API


def connect(url: str, api_key: str):
    """A label-studio-sdk client (legacy ``Token`` keys and personal access tokens both work)."""
    from label_studio_sdk.client import LabelStudio

    return LabelStudio(base_url=url, api_key=api_key)


def _as_dict(item: Any) -> dict[str, Any]:
    if isinstance(item, dict):
        return item
    dump = getattr(item, "model_dump", None) or item.dict
    return dump()


def find_project(client, title: str) -> Any | None:
    """The project with exactly this title, None when there is none; two with the same title are an error."""
    found = [p for p in client.projects.list() if p.title == title]
    if len(found) > 1:
        raise LabelStudioError(f"Label Studio has {len(found)} projects titled {title!r} (ids "
                               f"{', '.join(str(p.id) for p in found)}); rename one or pass project_id")
    return found[0] if found else None


def _project_tasks(client, project_id: int) -> list[dict[str, Any]]:
    return [_as_dict(t) for t in client.tasks.list(project=project_id, fields="all", page_size=100)]


def _upload_images(client, project_id: int, filepaths: Sequence[str]) -> dict[str, str]:
    """Upload image files without creating tasks; ``{filepath: URL the server serves it at}``."""
    urls: dict[str, str] = {}
    http = client._client_wrapper.httpx_client  # the SDK has no file-upload method; reuse its authenticated client
    for start in range(0, len(filepaths), UPLOAD_BATCH):
        batch = list(filepaths[start:start + UPLOAD_BATCH])
        handles = [open(p, "rb") for p in batch]  # noqa: SIM115 - closed below, after the request
        try:
            files = {f"file{i}": (f"{i:06d}{Path(p).suffix.lower()}", handle)
                     for i, (p, handle) in enumerate(zip(batch, handles, strict=True))}
            response = http.request(f"api/projects/{project_id}/import", method="POST",
                                    params={"commit_to_project": "false"}, files=files)
        finally:
            for handle in handles:
                handle.close()
        if response.status_code >= 300:
            raise LabelStudioError(f"uploading {len(batch)} images to project {project_id} failed: "
                                   f"HTTP {response.status_code} {response.text[:300]}")
        ids = response.json().get("file_upload_ids")
        if not ids:
            raise LabelStudioError(f"Label Studio accepted the upload but returned no file ids ({response.text[:300]})"
                                   "; an asynchronous import (Enterprise) is not supported: use images='local-files'")
        for upload in client.files.list(id=project_id, ids=json.dumps(ids)):  # the server reads a JSON list
            name = Path(str(upload.file)).name  # "<uuid>-000003.png"
            index = int(name.rsplit("-", 1)[-1].split(".")[0])
            urls[batch[index]] = "/data/" + str(upload.file).lstrip("/")
        missing = [p for p in batch if p not in urls]
        if missing:
            raise LabelStudioError(f"Label Studio did not list the uploaded images {missing[:3]}")
    return urls


def _ensure_local_storage(client, project_id: int, filepaths: Sequence[str]) -> None:
    """A local-files storage covering the images' common folder (without it the server refuses to serve them)."""
    folder = os.path.commonpath([str(Path(p).resolve().parent) for p in filepaths])
    for storage in client.import_storage.local.list(project=project_id):
        path = getattr(storage, "path", None)
        if path and os.path.commonpath([path, folder]) == os.path.normpath(path):
            return
    client.import_storage.local.create(project=project_id, path=folder, title="label-audit images",
                                       use_blob_urls=True, recursive_scan=False)


@dataclass(frozen=True)
class ProjectExport:
    """What :func:`export_to_project` did: ``n_created`` new tasks, ``n_updated`` pending ones refreshed,
    ``n_kept`` already answered (left alone), in project ``project_id`` (``created``: the project is new)."""

    project_id: int
    title: str
    created: bool
    n_created: int
    n_updated: int
    n_kept: int


def export_to_project(queue: pd.DataFrame, class_names: Sequence[str], *, url: str, api_key: str, title: str,
                      images: str = "upload", document_root: str | os.PathLike | None = None,
                      description: str | None = None, client=None) -> ProjectExport:
    """Create or update the review project titled ``title`` and put the queue in it; safe to run again.

    Idempotent by title and item: a second export finds the same project (its labelling config is updated if
    the classes changed), refreshes pending tasks of items already there (data and the suggested-label
    prediction), leaves answered ones alone (unless the item's content changed: then a fresh task is added) and
    adds tasks only for new items. ``images``: ``"upload"`` or ``"local-files"`` (needs ``document_root``, the
    server's LOCAL_FILES_DOCUMENT_ROOT); see the module docstring.
    """
    if not 3 <= len(title) <= 50:
        raise LabelStudioError(f"Label Studio project titles have 3 to 50 characters; {title!r} has {len(title)}")
    if images not in ("upload", "local-files"):
        raise LabelStudioError(f"images must be 'upload' or 'local-files', got {images!r}")
    if images == "local-files" and document_root is None:
        raise LabelStudioError("images='local-files' needs document_root: the server's LOCAL_FILES_DOCUMENT_ROOT")
    records = _queue_records(queue)
    kind = records[0]["item_kind"] if records else "image"
    config = label_config(class_names, kind)
    client = client or connect(url, api_key)
    project = find_project(client, title)
    created = project is None
    if project is None:
        project = client.projects.create(
            title=title, label_config=config, maximum_annotations=1, show_skip_button=True,
            description=description or "label-audit review queue: is the given label right?")
    elif (project.label_config or "").strip() != config.strip():
        client.projects.update(id=project.id, label_config=config)
    existing: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for task in _project_tasks(client, project.id):
        data = task.get("data") or {}
        if data.get("item_id") is not None:
            existing.setdefault((str(data.get("item_kind") or "image"), str(data["item_id"])), []).append(task)
    new_rows, n_updated, n_kept = [], 0, 0
    for row in records:
        tasks = existing.get((row["item_kind"], row["item_id"]), [])
        pending = [t for t in tasks if not _answered(t)]
        same = [t for t in tasks if _answered(t) and (t["data"].get("content_hash") == row["content_hash"]
                                                       and t["data"].get("given_label") == row["given_label"])]
        if same:
            n_kept += 1
        elif pending:
            _refresh_task(client, pending[0], row)
            n_updated += 1
        else:
            new_rows.append(row)
    if new_rows:
        paths = sorted({str(r["filepath"]) for r in new_rows})
        if images == "upload":
            urls = _upload_images(client, project.id, paths)
        else:
            _ensure_local_storage(client, project.id, paths)
            urls = {p: local_files_url(p, document_root) for p in paths}
        tasks = []
        for row in new_rows:
            task: dict[str, Any] = {"data": task_data(row, urls[str(row["filepath"])])}
            prediction = _prediction(row)
            if prediction is not None:
                task["predictions"] = [prediction]
            tasks.append(task)
        client.projects.import_tasks(id=project.id, request=tasks)
    return ProjectExport(project_id=int(project.id), title=title, created=created, n_created=len(new_rows),
                         n_updated=n_updated, n_kept=n_kept)


def _answered(task: Mapping[str, Any]) -> bool:
    return any(not a.get("was_cancelled") for a in task.get("annotations") or [])


def _refresh_task(client, task: Mapping[str, Any], row: Mapping[str, Any]) -> None:
    """New data and prediction for a pending task; the image URL is kept (no second upload)."""
    client.tasks.update(id=str(task["id"]), data=task_data(row, task["data"][IMAGE]))
    for prediction in task.get("predictions") or []:
        prediction = _as_dict(prediction)
        if prediction.get("model_version") == MODEL_VERSION and prediction.get("id") is not None:
            client.predictions.delete(id=int(prediction["id"]))
    new = _prediction(row)
    if new is not None:
        client.predictions.create(task=int(task["id"]), result=new["result"], score=new["score"],
                                  model_version=MODEL_VERSION)


def read_project_verdicts(*, url: str, api_key: str, title: str | None = None, project_id: int | None = None,
                          client=None) -> pd.DataFrame:
    """Ledger rows for every answered task of the review project (by ``title`` or ``project_id``)."""
    client = client or connect(url, api_key)
    if project_id is None:
        if title is None:
            raise LabelStudioError("give the review project's title or id")
        project = find_project(client, title)
        if project is None:
            raise LabelStudioError(f"Label Studio at {url} has no project titled {title!r}")
        project_id = int(project.id)
    from label_studio_sdk.core.api_error import ApiError

    reviewers = {}
    try:
        for user in client.users.list():
            reviewers[int(user.id)] = user.email or user.username or f"labelstudio user {user.id}"
    except ApiError:  # a token that may not list users: reviewers stay "labelstudio user <id>"
        pass
    return verdicts_from_tasks(_project_tasks(client, project_id), reviewers)


def read_export_file(path: str | os.PathLike, reviewers: Mapping[int, str] | None = None) -> pd.DataFrame:
    """Ledger rows from a Label Studio JSON export (Export -> JSON; not JSON-MIN, which drops who answered)."""
    path = Path(path)
    try:
        tasks = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise LabelStudioError(f"Label Studio export {path} could not be read: {exc}") from exc
    if not isinstance(tasks, list) or any(not isinstance(t, dict) or "data" not in t for t in tasks):
        raise LabelStudioError(f"{path} is not a Label Studio JSON export (a list of tasks with 'data')")
    return verdicts_from_tasks(tasks, reviewers or {}, where=str(path))


def _reviewer(completed_by: Any, reviewers: Mapping[int, str]) -> str | None:
    if isinstance(completed_by, dict):
        return completed_by.get("email") or completed_by.get("username") or (
            reviewers.get(int(completed_by["id"])) if completed_by.get("id") is not None else None)
    if completed_by is None:
        return None
    return reviewers.get(int(completed_by), f"labelstudio user {completed_by}")


def _box_iou(a: Sequence[float], b: Sequence[float]) -> float:
    from pycocotools import mask as mask_utils

    return float(mask_utils.iou([list(map(float, a))], [list(map(float, b))], [0])[0][0])


def _answer(result: Iterable[Mapping[str, Any]], data: Mapping[str, Any]) -> tuple[bool, str | None]:
    """``(answered, label)`` from one annotation's result (label None with answered: a deleted box)."""
    mine = [r for r in result if r.get("from_name") == CONTROL]
    if data.get("item_kind") == "object":
        regions = [r for r in mine if r.get("type") == "rectanglelabels" and r["value"].get("rectanglelabels")]
        if not regions:
            return True, None
        target = [data.get(c) for c in ("xn", "yn", "wn", "hn")]
        if any(v is None for v in target):
            best = regions[0]
        else:
            best = max(regions, key=lambda r: _box_iou([100.0 * float(v) for v in target],
                                                       [r["value"][c] for c in ("x", "y", "width", "height")]))
        return True, str(best["value"]["rectanglelabels"][0])
    choices = [c for r in mine if r.get("type") == "choices" for c in r["value"].get("choices", [])]
    return (True, str(choices[0])) if choices else (False, None)


def verdicts_from_tasks(tasks: Iterable[Mapping[str, Any]], reviewers: Mapping[int, str] | None = None, *,
                        where: str = "Label Studio") -> pd.DataFrame:
    """Ledger rows from Label Studio tasks (API or export file), one per submitted annotation.

    Tasks that are not label-audit's (no ``item_id`` in their data) are ignored; when none is, the input is
    refused, since it cannot be a label-audit review. Skipped annotations and empty image answers count as no
    answer. :func:`audit.review.merge_verdicts` keeps the latest answer per item.
    """
    reviewers = reviewers or {}
    tasks = list(tasks)
    rows, ours = [], 0
    for task in tasks:
        data = task.get("data") or {}
        if data.get("item_id") is None:
            continue
        ours += 1
        base = {f: data.get(f) for f in TASK_FIELDS}
        base["item_kind"] = base["item_kind"] or "image"
        for annotation in task.get("annotations") or []:
            annotation = _as_dict(annotation)
            if annotation.get("was_cancelled"):
                continue
            answered, label = _answer(annotation.get("result") or [], data)
            if not answered:
                continue
            if label is None:
                verdict, corrected = "wrong", None
            else:
                verdict, corrected = verdict_for(_none(base["given_label"]), label, (UNSURE_ALIAS, UNSURE_VALUE))
            rows.append({**base, "verdict": verdict, "corrected_label": corrected, "tool": TOOL,
                         "reviewer": _reviewer(annotation.get("completed_by"), reviewers),
                         "reviewed_at": annotation.get("updated_at") or annotation.get("created_at")})
    if tasks and ours == 0:
        raise LabelStudioError(f"{where}: no task carries an item_id; these are not label-audit review tasks")
    return normalise_ledger(pd.DataFrame(rows, columns=LEDGER_COLUMNS), where=where)


def _none(value: Any) -> str | None:
    return None if value is None else str(value)
