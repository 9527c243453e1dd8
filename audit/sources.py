"""Sources: a folder tree, a CSV/Parquet manifest or a FiftyOne dataset -> one canonical sample table.

The canonical table is indexed by ``sample_id`` (stable across runs, so weekly runs can be compared) and has
the columns ``filepath`` (absolute), ``label`` (str), ``split`` (str), ``readable`` (bool) and ``problems``
(``;``-separated codes). Per-annotator labels, when present, travel beside it as a long table
``sample_id, annotator, label``. Whole-source errors (no such folder, missing column, empty dataset) raise
:class:`SourceError`; per-sample trouble (missing file, corrupt image...) is recorded in ``problems`` and the
sample is kept, so nothing is dropped silently.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image, ImageFile, ImageOps

from audit.config import SourceConfig

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp"}
SPLIT_NAMES = {"train", "val", "valid", "validation", "test", "dev"}
DEFAULT_SPLIT = "all"

# Problem codes. Those in UNREADABLE mean the sample has no embedding; the others are notes on a conversion.
MISSING_FILE = "missing_file"
EMPTY_FILE = "empty_file"
CORRUPT_IMAGE = "corrupt_image"
TRUNCATED_IMAGE = "truncated_image"
MISSING_LABEL = "missing_label"
CONVERTED_16BIT = "converted_16bit"
CONVERTED_CMYK = "converted_cmyk"
CONVERTED_PALETTE = "converted_palette"
CONVERTED_ALPHA = "converted_alpha"
EXIF_ROTATED = "exif_rotated"
UNREADABLE = {MISSING_FILE, EMPTY_FILE, CORRUPT_IMAGE, TRUNCATED_IMAGE}

ImageFile.LOAD_TRUNCATED_IMAGES = False


class SourceError(ValueError):
    """The dataset as a whole cannot be read; the message says what is wrong and where."""


@dataclass
class SampleTable:
    """The canonical samples plus, optionally, per-annotator labels."""

    samples: pd.DataFrame
    annotations: pd.DataFrame | None = None
    description: dict[str, object] = field(default_factory=dict)

    @property
    def class_names(self) -> list[str]:
        labels = set(self.samples["label"].dropna())
        if self.annotations is not None:
            labels |= set(self.annotations["label"].dropna())
        return sorted(labels)


def load_source(config: SourceConfig) -> SampleTable:
    """Read the configured source into a :class:`SampleTable` (files are checked to exist, not decoded yet)."""
    if config.kind == "folder":
        table = load_folder(config.path)
    elif config.kind == "manifest":
        table = load_manifest(config.path)
    else:
        from audit.fiftyone import load_fiftyone_source

        table = load_fiftyone_source(
            config.dataset, config.label_field, config.annotator_fields, split_field=config.split_field
        )
    if config.annotations is not None:
        if config.kind == "fiftyone":
            raise SourceError("an annotations file goes with a folder or manifest source; use annotator_fields")
        table.annotations = load_annotations(config.annotations, table.samples)
        if table.samples["label"].isna().all():
            table.samples["label"] = majority_label(table.annotations, table.samples.index)
            table.description["label_from"] = "annotator majority vote"
    return finalise(table)


def load_folder(root: Path | str) -> SampleTable:
    """``root/<class>/<image>`` or ``root/<split>/<class>/<image>``; the sample id is the path under root."""
    root = Path(root)
    if not root.is_dir():
        raise SourceError(f"image folder {root} does not exist or is not a folder")
    top = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not top:
        raise SourceError(f"image folder {root} has no class sub-folders (expected root/<class>/<image files>)")
    has_splits = all(p.name.lower() in SPLIT_NAMES for p in top)
    rows = []
    for split_dir in top if has_splits else [root]:
        split = split_dir.name if has_splits else DEFAULT_SPLIT
        for class_dir in sorted(p for p in split_dir.iterdir() if p.is_dir() and not p.name.startswith(".")):
            for file in sorted(class_dir.rglob("*")):
                if file.is_file() and file.suffix.lower() in IMAGE_SUFFIXES:
                    rows.append((file.relative_to(root).as_posix(), str(file.resolve()), class_dir.name, split))
    if not rows:
        raise SourceError(f"image folder {root} holds no images ({', '.join(sorted(IMAGE_SUFFIXES))})")
    samples = pd.DataFrame(rows, columns=["sample_id", "filepath", "label", "split"]).set_index("sample_id")
    return SampleTable(samples, description={"kind": "folder", "path": str(root.resolve())})


def _read_table(path: Path, what: str) -> pd.DataFrame:
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
    table = _read_table(path, "manifest")
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
    table = _read_table(path, "annotations file")
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


def finalise(table: SampleTable) -> SampleTable:
    """Check the table as a whole and record per-sample problems that need no decoding."""
    samples = table.samples
    if samples.empty:
        raise SourceError("the dataset has no samples")
    samples = samples.copy()
    samples.index = samples.index.astype(str)
    samples["label"] = samples["label"].astype(object)
    problems = [[] for _ in range(len(samples))]
    for i, (file, label) in enumerate(zip(samples["filepath"], samples["label"], strict=True)):
        p = Path(file)
        if not p.is_file():
            problems[i].append(MISSING_FILE)
        elif p.stat().st_size == 0:
            problems[i].append(EMPTY_FILE)
        if label is None or pd.isna(label):
            problems[i].append(MISSING_LABEL)
    samples["readable"] = [not (set(p) & UNREADABLE) for p in problems]
    samples["problems"] = [";".join(p) for p in problems]
    if samples["label"].isna().all():
        raise SourceError("no sample has a label")
    table.samples = samples
    return table


def add_problems(samples: pd.DataFrame, found: dict[str, list[str]]) -> None:
    """Merge problems found later (while decoding) into the table, in place."""
    for sample_id, codes in found.items():
        if not codes:
            continue
        old = [c for c in str(samples.at[sample_id, "problems"]).split(";") if c]
        merged = old + [c for c in codes if c not in old]
        samples.at[sample_id, "problems"] = ";".join(merged)
        if set(codes) & UNREADABLE:
            samples.at[sample_id, "readable"] = False


def load_image(path: str | Path, draft_size: int | None = None) -> tuple[Image.Image | None, list[str]]:
    """Decode an image to RGB the way every embedder sees it, and say what had to be done to get there.

    EXIF orientation is applied, 16-bit, CMYK, palette and alpha images are converted; a missing, empty,
    corrupt or truncated file gives ``None`` and its problem code. ``draft_size`` lets JPEG decode at a reduced
    scale (much faster for large photos that will be shrunk to the model's input anyway).
    """
    path = Path(path)
    if not path.is_file():
        return None, [MISSING_FILE]
    if path.stat().st_size == 0:
        return None, [EMPTY_FILE]
    notes: list[str] = []
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(path)
            if draft_size and image.format == "JPEG":
                image.draft("RGB", (draft_size, draft_size))
            image.load()
    except OSError as exc:
        return None, [TRUNCATED_IMAGE if "truncated" in str(exc).lower() else CORRUPT_IMAGE]
    except Exception:  # PIL raises assorted errors (SyntaxError, ValueError...) on garbage
        return None, [CORRUPT_IMAGE]
    try:
        orientation = image.getexif().get(0x0112, 1)
    except Exception:
        orientation = 1
    if orientation not in (None, 1):
        image = ImageOps.exif_transpose(image)
        notes.append(EXIF_ROTATED)
    mode = image.mode
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        array = np.asarray(image, dtype=np.float64)
        top = array.max() if array.size and array.max() > 0 else 1.0
        image = Image.fromarray((array / top * 255.0).round().astype(np.uint8), mode="L")
        notes.append(CONVERTED_16BIT)
    elif mode == "CMYK":
        notes.append(CONVERTED_CMYK)
    elif mode in ("P", "PA"):
        notes.append(CONVERTED_PALETTE)
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA"):
        if mode not in ("P", "PA"):
            notes.append(CONVERTED_ALPHA)
        background = Image.new("RGB", image.size, (255, 255, 255))
        background.paste(image.convert("RGBA"), mask=image.convert("RGBA").getchannel("A"))
        image = background
    if image.mode != "RGB":
        image = image.convert("RGB")
    return image, notes
