"""Manifests read fast and lean: only the needed columns, paths resolved folder by folder, with the answers
``pathlib`` gives row by row (checked against it on awkward trees: symbolic links, dots, missing files)."""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd
import pytest

from audit.sources import load_manifest
from audit.sources.manifest import absolute_paths, read_table, resolve_paths
from tests.conftest import write_digit


@pytest.fixture
def awkward_tree(tmp_path: Path, digit_images) -> Path:
    """Real digit scans in a folder tree with a linked folder, a linked file and a link leaving the tree."""
    images, _ = digit_images
    root = tmp_path / "data"
    for i, name in enumerate(["a/0.png", "a/b/1.png", "c/2.png"]):
        write_digit(root / name, images[i])
    (root / "linked_folder").symlink_to(root / "a", target_is_directory=True)
    (root / "c" / "linked.png").symlink_to(root / "a" / "0.png")
    outside = tmp_path / "elsewhere"
    write_digit(outside / "9.png", images[9])
    (root / "c" / "outside.png").symlink_to(outside / "9.png")
    return root


def test_resolve_paths_equals_pathlib_on_links_dots_and_missing_files(awkward_tree: Path) -> None:
    root = str(awkward_tree)
    files = [f"{root}/a/0.png", f"{root}/linked_folder/b/1.png", f"{root}/c/linked.png", f"{root}/c/outside.png",
             f"{root}/a/../c/2.png", f"{root}/a/./b//1.png", f"{root}/missing/x.png", f"{root}/a/gone.png",
             f"{root}/linked_folder", "relative/none.png"]
    assert resolve_paths(files) == [str(Path(f).resolve()) for f in files]


@pytest.mark.parametrize("raw", ["a/0.png", "./a/0.png", "a//b/1.png", "a/./b/1.png", "a/../c/2.png", "a/b/",
                                 "", ".", "/abs/x.png", "a b/é.png"])
def test_absolute_paths_equal_pathlibs_join(tmp_path: Path, raw: str) -> None:
    expected = raw if Path(raw).is_absolute() else str(tmp_path / raw)  # what the manifest reader did per row
    assert absolute_paths(pd.Series([raw]), tmp_path).tolist() == [expected]


def test_manifest_ids_and_paths_match_pathlibs_answers(awkward_tree: Path) -> None:
    rows = ["a/0.png", "linked_folder/b/1.png", "c/outside.png", "./c/2.png", "a/gone.png"]
    (awkward_tree / "m.csv").write_text("filepath,label\n" + "".join(f"{r},x\n" for r in rows))
    samples = load_manifest(awkward_tree / "m.csv").samples
    base = awkward_tree.resolve()

    def expected_id(raw: str) -> str:  # the per-row rule, written out with pathlib
        file = base / raw
        try:
            return file.resolve().relative_to(base).as_posix()
        except ValueError:
            return file.as_posix()

    assert list(samples.index) == [expected_id(r) for r in rows]
    assert samples.index[1] == "a/b/1.png" and samples.index[2] == f"{base}/c/outside.png"
    assert samples["filepath"].tolist() == [str(base / r) for r in rows]


def test_only_the_needed_columns_are_read_and_empty_fields_are_missing(tmp_path: Path) -> None:
    text = ("\ufefffilepath,label,split,notes,score\n"
            'x/1.png,cat,train,"a long, quoted note",0.5\n'
            'x/2.png,"",val,,1\n'
            "x/3.png,,,,\n")
    (tmp_path / "m.csv").write_text(text, encoding="utf-8")
    table = read_table(tmp_path / "m.csv", "manifest", ["filepath", "label", "split", "sample_id"])
    assert list(table.columns) == ["filepath", "label", "split"]
    assert table["label"].isna().tolist() == [False, True, True] and table.loc[0, "label"] == "cat"
    everything = read_table(tmp_path / "m.csv", "manifest")
    assert everything.loc[0, "notes"] == "a long, quoted note" and everything.loc[0, "score"] == "0.5"
    samples = load_manifest(tmp_path / "m.csv").samples
    assert samples["label"].isna().tolist() == [False, True, True] and samples["label"].iloc[0] == "cat"
    assert samples["split"].tolist() == ["train", "val", "all"]


def test_tsv_and_parquet_manifests_read_only_their_columns(tmp_path: Path) -> None:
    (tmp_path / "m.tsv").write_text("filepath\tlabel\textra\nx/1.png\t7\tz\n")
    assert load_manifest(tmp_path / "m.tsv").samples.loc["x/1.png", "label"] == "7"
    pd.DataFrame({"filepath": ["x/1.png"], "label": [3], "sample_id": ["s1"], "big": ["y" * 1000]}).to_parquet(
        tmp_path / "m.parquet")
    assert list(read_table(tmp_path / "m.parquet", "manifest", ["filepath", "label", "sample_id"]).columns) == [
        "filepath", "label", "sample_id"]
    samples = load_manifest(tmp_path / "m.parquet").samples
    assert samples.loc["s1", "label"] == "3", "numbers in a Parquet manifest become text labels"


def test_a_ragged_csv_row_is_an_error_naming_the_file(tmp_path: Path) -> None:
    from audit.sources import SourceError

    (tmp_path / "m.csv").write_text("filepath,label\nx/1.png,1,extra\n")
    with pytest.raises(SourceError, match=r"m\.csv could not be read"):
        load_manifest(tmp_path / "m.csv")


def test_relative_folder_paths_resolve_against_the_working_directory(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    os.makedirs("sub", exist_ok=True)
    assert resolve_paths(["sub/x.png", "y.png"]) == [str(Path("sub/x.png").resolve()), str(Path("y.png").resolve())]
