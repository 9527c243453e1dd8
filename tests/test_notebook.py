"""notebooks/walkthrough.ipynb executes top to bottom (so it never rots), in a temporary folder, against the
real pipeline, report and FiftyOne."""

from __future__ import annotations

import shutil
import socket
from pathlib import Path

import pytest

from tests.fiftyone_helpers import unique_name

pytestmark = [pytest.mark.notebook, pytest.mark.fiftyone, pytest.mark.slow]

NOTEBOOK = Path(__file__).resolve().parents[1] / "notebooks" / "walkthrough.ipynb"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _text(cell) -> str:
    parts = []
    for output in cell.get("outputs", []):
        if output.get("output_type") == "stream":
            parts.append(output.get("text", ""))
        elif "data" in output:
            parts.append(output["data"].get("text/plain", ""))
    return "".join(parts)


def test_walkthrough_notebook_executes(tmp_path, monkeypatch):
    import fiftyone as fo
    import nbformat
    from nbclient import NotebookClient

    dataset = unique_name("la-notebook")
    work = tmp_path / "work"
    monkeypatch.setenv("FIFTYONE_DO_NOT_TRACK", "true")
    monkeypatch.setenv("LABEL_AUDIT_WORKDIR", str(work))
    monkeypatch.setenv("LABEL_AUDIT_DEMO_LIMIT", "300")
    monkeypatch.setenv("LABEL_AUDIT_DATASET", dataset)
    monkeypatch.setenv("LABEL_AUDIT_APP_PORT", str(_free_port()))
    copy = tmp_path / NOTEBOOK.name
    shutil.copy(NOTEBOOK, copy)
    notebook = nbformat.read(copy, as_version=4)
    try:
        NotebookClient(notebook, timeout=600, kernel_name="python3",
                       resources={"metadata": {"path": str(tmp_path)}}).execute()
        outputs = "\n".join(_text(cell) for cell in notebook.cells if cell.cell_type == "code")
        assert "precision" in outputs and "recall" in outputs
        assert "showing" in outputs and "suspected mislabels" in outputs
        assert (work / "reports" / "walkthrough" / "index.html").is_file()
        assert fo.load_dataset(dataset).has_saved_view("la-suspected-mislabels")
    finally:
        if dataset in fo.list_datasets():
            fo.delete_dataset(dataset)
    assert not any(p.name == "walkthrough-output" for p in NOTEBOOK.parent.iterdir()), "nothing in the repo"
