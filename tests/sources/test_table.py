"""``finalise``: per-sample file problems found with one ``stat`` per file, in threads, as pathlib finds them."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from audit.sources import EMPTY_FILE, MISSING_FILE, MISSING_LABEL, SampleTable, finalise
from audit.sources import table as table_module
from tests.conftest import write_digit


def _pathlib_problem(path: str) -> str:
    """The per-row rule ``finalise`` used to apply, written out with pathlib (the independent answer)."""
    p = Path(path)
    if not p.is_file():
        return MISSING_FILE
    return EMPTY_FILE if p.stat().st_size == 0 else ""


def test_file_problems_equal_pathlibs_answers_in_any_chunking(tmp_path: Path, digit_images, monkeypatch) -> None:
    images, _ = digit_images
    paths = []
    for i in range(30):
        file = tmp_path / f"d{i % 4}" / f"{i}.png"
        if i % 5 == 0:
            file.parent.mkdir(parents=True, exist_ok=True)
            file.write_bytes(b"")  # empty
        elif i % 7 == 0:
            file.parent.mkdir(parents=True, exist_ok=True)  # never written: missing
        else:
            write_digit(file, images[i])
        paths.append(str(file))
    paths += [str(tmp_path / "d1"), "", str(tmp_path / "nowhere" / "x.png")]  # a folder, an empty path
    expected = [_pathlib_problem(p) for p in paths]
    assert table_module.file_problems(paths).tolist() == expected
    monkeypatch.setattr(table_module, "FILE_CHECK_CHUNK", 4)  # many chunks, several threads
    assert table_module.file_problems(paths).tolist() == expected
    assert {MISSING_FILE, EMPTY_FILE, ""} <= set(expected)


def test_finalise_keeps_earlier_codes_and_orders_them(tmp_path: Path, digit_images) -> None:
    images, _ = digit_images
    write_digit(tmp_path / "ok.png", images[0])
    (tmp_path / "empty.png").write_bytes(b"")
    samples = pd.DataFrame({
        "filepath": [str(tmp_path / n) for n in ("ok.png", "empty.png", "gone.png", "ok.png")],
        "label": ["0", "1", None, "2"],
        "split": "all",
        "problems": ["", "odd_mask", "", None],
    }, index=["a", "b", "c", "d"])
    out = finalise(SampleTable(samples)).samples
    assert out["problems"].tolist() == ["", f"odd_mask;{EMPTY_FILE}", f"{MISSING_FILE};{MISSING_LABEL}", ""]
    assert out["readable"].tolist() == [True, False, False, True]
