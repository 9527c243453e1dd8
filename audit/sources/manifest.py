"""CSV/Parquet manifests (``filepath,label[,split]``) and the long annotator-label files that go with them."""

from __future__ import annotations

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


def read_table(path: Path, what: str) -> pd.DataFrame:
    if not path.is_file():
        raise SourceError(f"{what} {path} does not exist")
    try:
        if path.suffix.lower() == ".parquet":
            return pd.read_parquet(path)
        if path.suffix.lower() in (".csv", ".tsv", ".txt"):
            return pd.read_csv(path, sep="\t" if path.suffix.lower() == ".tsv" else ",", dtype=str,
                               keep_default_na=False, na_values=[""])
    except Exception as exc:  # pandas/pyarrow raise many types for a broken file
        raise SourceError(f"{what} {path} could not be read: {exc}") from exc
    raise SourceError(f"{what} {path} must be .csv, .tsv or .parquet")



def load_manifest(path: Path | str) -> SampleTable:
    """CSV/Parquet with ``filepath`` and ``label`` (optional ``split``, ``sample_id``); relative paths are
    resolved against the manifest's folder. ``label`` may be left out when an annotations file is given."""
    path = Path(path)
    table = read_table(path, "manifest")
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
    table["filepath"] = [str(p if Path(p).is_absolute() else (base / p)) for p in table["filepath"].astype(str)]
    if "sample_id" not in table.columns:
        table["sample_id"] = table["filepath"].map(lambda p: _relative_id(Path(p), base))
    table["sample_id"] = table["sample_id"].astype(str)
    dupes = table["sample_id"][table["sample_id"].duplicated()].unique()
    if len(dupes):
        raise SourceError(f"manifest {path} lists the same sample more than once: {list(dupes[:5])}")
    table["split"] = table["split"].fillna(DEFAULT_SPLIT).astype(str) if "split" in table else DEFAULT_SPLIT
    table["label"] = table["label"].map(lambda v: None if v is None or pd.isna(v) or str(v) == "" else str(v))
    samples = table.set_index("sample_id")[["filepath", "label", "split"]]
    return SampleTable(samples, description={"kind": "manifest", "path": str(path.resolve())})



def _relative_id(file: Path, base: Path) -> str:
    try:
        return file.resolve().relative_to(base).as_posix()
    except ValueError:
        return file.as_posix()



def load_annotations(path: Path | str, samples: pd.DataFrame) -> pd.DataFrame:
    """Long table ``sample, annotator, label``; ``sample`` matches a sample id or a file path."""
    path = Path(path)
    table = read_table(path, "annotations file")
    missing = [c for c in ("sample", "annotator", "label") if c not in table.columns]
    if missing:
        raise SourceError(f"annotations file {path} lacks column(s) {missing} (needs sample, annotator, label)")
    table = table.dropna(subset=["sample", "annotator"]).copy()
    by_path = pd.Series(samples.index, index=samples["filepath"].map(lambda p: str(Path(p).resolve())))
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
    return out.dropna(subset=["label"]).reset_index(drop=True)



def majority_label(annotations: pd.DataFrame, sample_ids: pd.Index) -> pd.Series:
    """Most frequent annotator label per sample (ties: alphabetical), for datasets without a shipped label."""
    counts = annotations.groupby(["sample_id", "label"]).size().reset_index(name="n")
    counts = counts.sort_values(["sample_id", "n", "label"], ascending=[True, False, True])
    best = counts.drop_duplicates("sample_id").set_index("sample_id")["label"]
    return best.reindex(sample_ids)

