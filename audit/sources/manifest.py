"""CSV/Parquet manifests (``filepath,label[,split]``) and the long annotator-label files that go with them.

A manifest of a million rows loads in seconds: only the columns the sample table needs are read (pyarrow's CSV
reader, or the Parquet columns), as Arrow-backed strings, and each file path is resolved by resolving its folder
once (a file that is itself a symbolic link is resolved in full, as before), not component by component per row.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from audit.sources.table import DEFAULT_SPLIT, SampleTable, SourceError, register_format

if TYPE_CHECKING:
    from audit.config import SourceConfig


@register_format("manifest", needs=("path",), description="CSV/Parquet with filepath,label[,split]")
def load_manifest_source(config: SourceConfig) -> SampleTable:
    return load_manifest(config.path)


MANIFEST_COLUMNS = ("filepath", "label", "split", "sample_id")


def read_table(path: Path, what: str, columns: Sequence[str] | None = None) -> pd.DataFrame:
    """A CSV/TSV (every value a string, empty = missing) or Parquet file as a DataFrame; with ``columns``, only
    those of them that the file has are read."""
    if not path.is_file():
        raise SourceError(f"{what} {path} does not exist")
    suffix = path.suffix.lower()
    try:
        if suffix == ".parquet":
            if columns is None:
                return pd.read_parquet(path)
            import pyarrow.parquet as pq

            present = set(pq.read_schema(path).names)
            return pd.read_parquet(path, columns=[c for c in columns if c in present])
        if suffix in (".csv", ".tsv", ".txt"):
            return _read_csv(path, "\t" if suffix == ".tsv" else ",", columns)
    except Exception as exc:  # pandas/pyarrow raise many types for a broken file
        raise SourceError(f"{what} {path} could not be read: {exc}") from exc
    raise SourceError(f"{what} {path} must be .csv, .tsv or .parquet")


def _read_csv(path: Path, delimiter: str, columns: Sequence[str] | None) -> pd.DataFrame:
    """pyarrow's multithreaded CSV reader: strings only, an empty field (quoted or not) is missing."""
    import pyarrow as pa
    import pyarrow.csv as pacsv

    with open(path, newline="", encoding="utf-8-sig") as handle:
        names = next(csv.reader(handle, delimiter=delimiter), None)
    if not names:
        raise SourceError("the file is empty (no header line)")
    wanted = names if columns is None else [c for c in names if c in columns]
    convert = pacsv.ConvertOptions(include_columns=wanted, column_types=dict.fromkeys(wanted, pa.string()),
                                   strings_can_be_null=True, null_values=[""])
    table = pacsv.read_csv(path, parse_options=pacsv.ParseOptions(delimiter=delimiter), convert_options=convert)
    return table.to_pandas()



def load_manifest(path: Path | str) -> SampleTable:
    """CSV/Parquet with ``filepath`` and ``label`` (optional ``split``, ``sample_id``); relative paths are
    resolved against the manifest's folder. ``label`` may be left out when an annotations file is given."""
    path = Path(path)
    table = read_table(path, "manifest", MANIFEST_COLUMNS)
    if table.empty:
        raise SourceError(f"manifest {path} has no rows")
    if "filepath" not in table.columns:
        raise SourceError(f"manifest {path} has no 'filepath' column (columns: {', '.join(map(str, table.columns))})")
    if "label" not in table.columns:
        table["label"] = None
    if table["filepath"].isna().any():
        rows = np.flatnonzero(table["filepath"].isna())[:5].tolist()
        raise SourceError(f"manifest {path}: rows {rows} have no filepath")
    base = path.parent.resolve()
    table["filepath"] = absolute_paths(table["filepath"].astype(str), base)
    if "sample_id" not in table.columns:
        table["sample_id"] = _relative_ids(table["filepath"].tolist(), base)
    table["sample_id"] = table["sample_id"].astype(str)
    dupes = table["sample_id"][table["sample_id"].duplicated()].unique()
    if len(dupes):
        raise SourceError(f"manifest {path} lists the same sample more than once: {list(dupes[:5])}")
    table["split"] = table["split"].fillna(DEFAULT_SPLIT).astype(str) if "split" in table else DEFAULT_SPLIT
    table["label"] = _labels(table["label"])
    samples = table.set_index("sample_id")[["filepath", "label", "split"]]
    return SampleTable(samples, description={"kind": "manifest", "path": str(path.resolve())})



# A relative path pathlib would rewrite when joining it to a folder: a "." component, an empty one, a trailing "/".
_NOT_PLAIN = r"(?:^|/)\.(?:/|$)|//|/$"


def absolute_paths(paths: pd.Series, base: Path) -> np.ndarray:
    """``p`` when absolute, else ``str(base / p)``, for every path: joined as strings where that is what pathlib
    would produce (plain relative paths, nearly all), with pathlib for the rest (a Path per row costs ~100 s at a
    million rows)."""
    paths = paths.astype(str)
    absolute = paths.map(os.path.isabs).to_numpy(bool) if os.sep != "/" else paths.str.startswith("/").to_numpy(bool)
    plain = (~absolute & (paths.str.len() > 0).to_numpy(bool)
             & ~paths.str.contains(_NOT_PLAIN, regex=True).to_numpy(bool) & (os.sep == "/"))
    out = paths.to_numpy(dtype=object).copy()
    if plain.any():
        out[plain] = (str(base).rstrip("/") + "/" + paths[plain]).to_numpy(dtype=object)
    for i in np.flatnonzero(~absolute & ~plain):
        out[i] = str(base / out[i])
    return out


def _labels(labels: pd.Series) -> np.ndarray:
    """Labels as text, None where missing or empty (a Parquet manifest may hold numbers)."""
    out = np.full(len(labels), None, dtype=object)
    present = labels.notna().to_numpy(bool)
    out[present] = labels[present].astype(str).to_numpy(dtype=object)
    out[out == ""] = None
    return out


def _relative_id(file: Path, base: Path) -> str:
    try:
        return file.resolve().relative_to(base).as_posix()
    except ValueError:
        return file.as_posix()


def resolve_paths(files: Sequence[str]) -> list[str]:
    """``str(Path(f).resolve())`` of every file, with one ``realpath`` per folder and one ``lstat`` per file.

    A path resolves to its folder's real path plus its name, unless the file itself is a symbolic link (then it
    is resolved in full), so the answers equal ``Path.resolve``'s without walking every component of every path.
    """
    folders: dict[str, str] = {}
    out = []
    for file in files:
        folder, name = os.path.split(file)
        if name in ("", ".", "..") or os.path.islink(file):
            out.append(str(Path(file).resolve()))
            continue
        real = folders.get(folder)
        if real is None:
            real = folders[folder] = os.path.realpath(folder or ".")
        out.append(os.path.join(real, name))
    return out


def _relative_ids(files: Sequence[str], base: Path) -> list[str]:
    """:func:`_relative_id` of every file, resolved with :func:`resolve_paths`."""
    root = str(base)
    prefix = root.rstrip(os.sep) + os.sep
    out = []
    for file, real in zip(files, resolve_paths(files), strict=True):
        if real.startswith(prefix):
            out.append(real[len(prefix):] if os.sep == "/" else Path(real[len(prefix):]).as_posix())
        else:
            out.append("." if real == root else Path(file).as_posix())
    return out



ANNOTATION_KEYS = ("sample", "sample_id", "filepath")


def annotation_key(table: pd.DataFrame, path: Path) -> str:
    """The column that names the sample in an annotations file: ``sample``, ``sample_id`` or ``filepath`` (the
    first present), each matching a sample id or a file path."""
    present = [c for c in ANNOTATION_KEYS if c in table.columns]
    missing = [c for c in ("annotator", "label") if c not in table.columns]
    if not present or missing:
        need = (["one of sample, sample_id, filepath"] if not present else []) + missing
        columns = ", ".join(map(str, table.columns))
        raise SourceError(f"annotations file {path} lacks column(s) {need} (columns: {columns}; needs a sample key "
                          "(sample, sample_id or filepath), annotator, label)")
    return present[0]


def load_annotations(path: Path | str, samples: pd.DataFrame) -> pd.DataFrame:
    """Long table ``<key>, annotator, label``; the key column (``sample``, ``sample_id`` or ``filepath``) matches a
    sample id or a file path. ``out.attrs["key"]`` says which column was used."""
    path = Path(path)
    table = read_table(path, "annotations file")
    key = annotation_key(table, path)
    table = table.rename(columns={key: "sample"}) if key != "sample" else table
    table = table.dropna(subset=["sample", "annotator"]).copy()
    by_path = pd.Series(samples.index, index=resolve_paths(samples["filepath"].astype(str).tolist()))
    ids = table["sample"].astype(str)
    known = ids.isin(samples.index)
    resolved = ids[~known].map(lambda s: str((path.parent / s).resolve()))
    ids.loc[~known] = resolved.map(lambda p: by_path.get(p))
    unknown = table["sample"][ids.isna()]
    if len(unknown):
        raise SourceError(
            f"annotations file {path}: {len(unknown)} row(s) name samples not in the dataset, e.g. "
            f"{list(unknown.astype(str)[:3])}"
        )
    out = pd.DataFrame({"sample_id": ids.astype(str), "annotator": table["annotator"].astype(str),
                        "label": table["label"].map(lambda v: None if pd.isna(v) or str(v) == "" else str(v))})
    dupes = out.duplicated(["sample_id", "annotator"])
    if dupes.any():
        raise SourceError(f"annotations file {path}: an annotator labels the same sample twice "
                          f"({out[dupes].iloc[0].sample_id!r} by {out[dupes].iloc[0].annotator!r})")
    out = out.dropna(subset=["label"]).reset_index(drop=True)
    out.attrs["key"] = key
    return out



def majority_label(annotations: pd.DataFrame, sample_ids: pd.Index) -> pd.Series:
    """Most frequent annotator label per sample (ties: alphabetical), for datasets without a shipped label."""
    counts = annotations.groupby(["sample_id", "label"]).size().reset_index(name="n")
    counts = counts.sort_values(["sample_id", "n", "label"], ascending=[True, False, True])
    best = counts.drop_duplicates("sample_id").set_index("sample_id")["label"]
    return best.reindex(sample_ids)

