"""The shared part of every object source (COCO, YOLO, VOC, CVAT, Label Studio, FiftyOne ``Detections``).

A format module turns its file into plain records (one per box or instance, raw pixel boxes as the file gave
them, plus where each came from) and image rows; this module turns them into the canonical tables of
``notes/CONVENTIONS.md``:

- the **object table** (:func:`build_objects`): indexed by ``object_id``, boxes clipped to the image and
  normalised, masks as COCO compressed RLE strings, and per-object problem codes (``zero_size``,
  ``negative_size``, ``clipped``, ``tiny``, ``whole_image``, ``duplicate_box``) computed once, in
  :mod:`audit.geometry`, so every format flags the same things the same way. Odd objects are kept, never dropped;
- the **image-level sample table** (:func:`image_samples`): ``filepath``, ``label`` (None: images carry objects),
  ``split``;
- the **multi-annotator merge** (:func:`merge_annotators`): one annotation file per annotator, the file's name
  becomes the ``annotator`` column and the prefix of its object ids, so ids stay unique.

Bad input is a :class:`SourceError` that names the file and the record (unknown category, missing image,
duplicate ids, malformed polygon); :class:`ObjectRecords` collects records and checks ids as they come in.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from audit.geometry import OBJECT_COLUMNS, GeometryError
from audit.sources.table import DEFAULT_SPLIT, IMAGE_SUFFIXES, SampleTable, SourceError

if TYPE_CHECKING:
    from audit.config import SourceConfig

# Split names as they appear in file and folder names (``instances_val2017.json``, ``images/valid``).
_SPLIT_ALIASES = {"train": "train", "training": "train", "val": "val", "valid": "val", "validation": "val",
                  "test": "test", "testing": "test", "dev": "dev", "trainval": "trainval"}


def image_size(path: str | Path) -> tuple[int, int] | None:
    """``(width, height)`` of an image from its header (PIL opens lazily, no pixel is decoded); None if unreadable.

    The size is the stored one: EXIF orientation is not applied, like the annotation formats themselves.
    """
    from PIL import Image

    try:
        with Image.open(path) as image:
            width, height = image.size
    except Exception:  # missing, empty, not an image: the caller says which record needed it
        return None
    return int(width), int(height)


def split_from_name(name: str) -> str:
    """The split a file or folder name announces (``instances_train2017.json`` -> ``train``), else ``"all"``."""
    for token in re.split(r"[^a-z]+", Path(name).name.lower()):
        if token in _SPLIT_ALIASES:
            return _SPLIT_ALIASES[token]
    return DEFAULT_SPLIT


def relative_id(path: Path, root: Path | None) -> str:
    """A stable sample id: the path under ``root`` (posix), or the file name when it lies elsewhere."""
    if root is not None:
        try:
            return path.resolve().relative_to(root.resolve()).as_posix()
        except ValueError:
            pass
    return path.name


class ImageIndex:
    """Finds image files by name under one or more roots (for formats that name images, not paths).

    Lookup order: the name as a path under each root, then a unique file with that base name anywhere under
    the roots (annotation tools often drop or add folders). Nothing found: the first candidate path, which the
    sample table then marks ``missing_file``.
    """

    def __init__(self, roots: Sequence[Path]) -> None:
        self.roots = [Path(r) for r in roots if r is not None]
        self._by_name: dict[str, list[Path]] | None = None

    def _names(self) -> dict[str, list[Path]]:
        if self._by_name is None:
            self._by_name = {}
            for root in self.roots:
                if root.is_dir():
                    for file in root.rglob("*"):
                        if file.suffix.lower() in IMAGE_SUFFIXES and file.is_file():
                            self._by_name.setdefault(file.name, []).append(file)
        return self._by_name

    def find(self, name: str) -> Path | None:
        """The image file for ``name`` (a relative path, a base name, or an absolute path), or None."""
        candidate = Path(name)
        if candidate.is_absolute():
            if candidate.is_file():
                return candidate
            name = candidate.name
        for root in self.roots:
            path = root / name
            if path.is_file():
                return path
        hits = {p.resolve() for p in self._names().get(Path(name).name, [])}
        return next(iter(hits)) if len(hits) == 1 else None

    def locate(self, name: str) -> Path:
        """Like :meth:`find`, but a missing image gives the path it should have had (first root / name)."""
        found = self.find(name)
        if found is not None:
            return found
        candidate = Path(name)
        if candidate.is_absolute():
            return candidate
        return (self.roots[0] if self.roots else Path.cwd()) / name

    def root_for(self, path: Path) -> Path | None:
        """The root ``path`` lies under (for its sample id), or None."""
        for root in self.roots:
            try:
                path.resolve().relative_to(root.resolve())
                return root
            except ValueError:
                continue
        return None


@dataclass
class ObjectRecords:
    """Raw objects of one annotation file, collected as the reader parses it.

    ``file`` names the annotation file in every error message; :meth:`add` refuses a repeated object id there
    and then (``duplicate ids``), so the message can name both records.
    """

    file: Path
    rows: list[dict[str, Any]] = field(default_factory=list)
    _seen: dict[str, str] = field(default_factory=dict)

    def add(self, object_id: str, sample_id: str, label: str, box: Sequence[float], width: int, height: int, *,
            source: str, mask: str | None = None, iscrowd: bool = False, annotator: str = "",
            score: float = float("nan")) -> None:
        """One object: ``box`` is the raw pixel ``x, y, w, h`` as the file gave it (clipped later)."""
        object_id = str(object_id)
        if object_id in self._seen:
            raise SourceError(f"{self.file.name}: duplicate object id {object_id!r} ({self._seen[object_id]} and "
                              f"{source})")
        if not (width and height) or width <= 0 or height <= 0:
            raise SourceError(f"{self.file.name}: {source} belongs to an image of unknown or non-positive size "
                              f"({width} x {height}); cannot place its box")
        x, y, w, h = (float(v) for v in box)
        if not all(np.isfinite([x, y, w, h])):
            raise SourceError(f"{self.file.name}: {source} has a box with non-finite coordinates {list(box)}")
        self._seen[object_id] = source
        self.rows.append({"object_id": object_id, "sample_id": str(sample_id), "label": str(label), "x": x, "y": y,
                          "w": w, "h": h, "image_width": int(width), "image_height": int(height), "mask": mask,
                          "iscrowd": bool(iscrowd), "annotator": str(annotator or ""), "score": float(score),
                          "source": source})

    def table(self) -> pd.DataFrame:
        """The canonical object table of the records collected so far."""
        return build_objects(self.rows, self.file)


def read_json(path: Path, what: str) -> Any:
    """A JSON file, or a :class:`SourceError` that says which file and why."""
    import json

    if not path.is_file():
        raise SourceError(f"{what} {path} does not exist")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise SourceError(f"{what} {path} is not valid JSON: {exc}") from exc


def number(value: Any, file: Path, ref: str, what: str) -> float:
    """A finite number from a parsed field, or an error naming the file, the record and the field."""
    try:
        out = float(value)
    except (TypeError, ValueError):
        raise SourceError(f"{file.name}: {ref}: {what} {value!r} is not a number") from None
    if not np.isfinite(out):
        raise SourceError(f"{file.name}: {ref}: {what} {value!r} is not finite")
    return out


def polygon_mask(rings: Sequence[Sequence[float]], height: int, width: int, file: Path, ref: str) -> str:
    """Polygon rings (pixel ``x1, y1, x2, y2, ...`` each) rasterised into one RLE mask; a ring with fewer than
    three points, an odd number of coordinates or a non-number is a *malformed polygon* error."""
    from audit.geometry import polygons_to_rle

    flat: list[list[float]] = []
    for k, ring in enumerate(rings):
        if not isinstance(ring, list | tuple) or len(ring) < 6 or len(ring) % 2:
            size = len(ring) if isinstance(ring, list | tuple) else type(ring).__name__
            raise SourceError(f"{file.name}: {ref}: malformed polygon (ring {k} has {size} coordinates; a ring "
                              "needs an even number, at least 6)")
        flat.append([number(v, file, ref, f"polygon ring {k} coordinate") for v in ring])
    if not flat:
        raise SourceError(f"{file.name}: {ref}: malformed polygon (no rings)")
    try:
        return polygons_to_rle(flat, height, width)
    except GeometryError as exc:
        raise SourceError(f"{file.name}: {ref}: malformed polygon: {exc}") from exc


def mask_box(counts: str, height: int, width: int) -> list[float]:
    """The tight pixel box ``x, y, w, h`` of an RLE mask (``[0, 0, 0, 0]`` for an empty one)."""
    from audit.geometry import rle_to_box

    return [float(v) for v in rle_to_box(counts, height, width)]


def empty_objects() -> pd.DataFrame:
    """An object table with no rows and the canonical columns and dtypes."""
    frame = pd.DataFrame({c: pd.Series(dtype=object) for c in OBJECT_COLUMNS})
    for c in ("x", "y", "w", "h", "xn", "yn", "wn", "hn", "score"):
        frame[c] = frame[c].astype(float)
    frame["image_width"] = frame["image_width"].astype(int)
    frame["image_height"] = frame["image_height"].astype(int)
    frame["iscrowd"] = frame["iscrowd"].astype(bool)
    frame.index = pd.Index([], dtype=object, name="object_id")
    return frame


def build_objects(records: Sequence[Mapping[str, Any]] | pd.DataFrame, file: Path | str | None = None) -> pd.DataFrame:
    """Records (see :class:`ObjectRecords`) -> the canonical object table: :func:`audit.geometry.build_object_table`
    (clipping, normalising, problem codes, duplicate boxes), with errors that name the file."""
    from audit.geometry import build_object_table

    if len(records) == 0:
        return empty_objects()
    where = f"{Path(file).name}: " if file else ""
    frame = pd.DataFrame(records if isinstance(records, pd.DataFrame) else list(records)).reset_index(drop=True)
    required = ["object_id", "sample_id", "label", "x", "y", "w", "h", "image_width", "image_height"]
    missing = [c for c in required if c not in frame.columns]
    if missing:
        raise SourceError(f"{where}object records need columns {missing}")
    twice = frame["object_id"].astype(str).duplicated()
    if twice.any():
        raise SourceError(f"{where}duplicate object id {str(frame.loc[twice, 'object_id'].iloc[0])!r}")
    try:
        return build_object_table(frame)
    except GeometryError as exc:
        raise SourceError(f"{where}{exc}") from exc


def image_samples(rows: Iterable[tuple[str, str | Path, str]], *, label: Mapping[str, str] | None = None,
                  what: str = "annotation file") -> pd.DataFrame:
    """The image-level sample table of an object dataset from ``(sample_id, filepath, split)`` rows.

    ``label`` is None for every image (images carry objects), unless the format has an image-level tag
    (``label`` maps sample id -> tag). Sample ids must be unique: two records for one image is an error.
    """
    rows = list(rows)
    ids = [str(r[0]) for r in rows]
    seen: set[str] = set()
    for sample_id in ids:
        if sample_id in seen:
            raise SourceError(f"{what}: duplicate image {sample_id!r} (listed twice)")
        seen.add(sample_id)
    labels = label or {}
    index = pd.Index(ids, name="sample_id")
    return pd.DataFrame(
        {"filepath": [str(Path(r[1]).resolve()) if Path(r[1]).exists() else str(Path(r[1]).absolute())
                      for r in rows],
         "label": pd.Series([labels.get(i) for i in ids], index=index, dtype=object),
         "split": [str(r[2]) for r in rows]},
        index=index,
    )


def object_table(samples: pd.DataFrame, objects: pd.DataFrame, description: dict[str, Any]) -> SampleTable:
    """A :class:`SampleTable` for an object dataset; checks that every object's image is a sample."""
    stray = sorted(set(objects["sample_id"]) - set(samples.index))
    if stray:
        raise SourceError(f"{description.get('path', 'source')}: objects on images that are not samples: {stray[:3]}")
    description.setdefault("n_objects", len(objects))
    return SampleTable(samples, description=description, objects=objects)


# ------------------------------------------------------------------------------------------------ annotators


def merge_annotators(primary: SampleTable | None, per_annotator: Mapping[str, SampleTable]) -> SampleTable:
    """One annotation file per annotator -> one table: their objects side by side, ``annotator`` = the name.

    Images are matched by file path first, then by sample id, so two exports that name an image differently
    still meet. The ``primary`` file (``path``) keeps its own annotator values ("" for ground truth); each
    annotator file's objects get ``annotator = name`` (``name:<inner>`` when the file has its own annotator
    column) and ids ``name/<id>``. Which images each annotator saw (even with no objects drawn) is kept in
    ``description["object_coverage"]`` (``sample_id, annotator``), because "saw it, drew nothing" is a finding.
    """
    tables = ([("", primary)] if primary is not None else []) + list(per_annotator.items())
    if not tables:
        raise SourceError("an object source needs a path or at least one annotator file")
    first_name, first = tables[0]
    if len(tables) == 1 and first_name == "":
        return first
    samples = first.samples.copy()
    by_path = {str(Path(p).resolve()): i for i, p in zip(samples.index, samples["filepath"], strict=True)}
    objects = []
    coverage = []
    description = dict(first.description)
    description["annotators"] = [name for name, _ in tables if name]
    for name, table in tables:
        if name and ("/" in name or not name.strip()):
            raise SourceError(f"annotator name {name!r} must be non-empty and must not contain '/'")
        rename: dict[str, str] = {}
        extra = []
        for sample_id, path, split, label in zip(table.samples.index, table.samples["filepath"],
                                                  table.samples["split"], table.samples["label"], strict=True):
            known = by_path.get(str(Path(path).resolve()))
            if known is None and sample_id in samples.index:
                known = sample_id
            if known is None:
                extra.append((sample_id, path, split, label))
                by_path[str(Path(path).resolve())] = sample_id
                known = sample_id
            rename[sample_id] = known
        if extra:
            index = pd.Index([e[0] for e in extra], name="sample_id")
            samples = pd.concat([samples, pd.DataFrame(
                {"filepath": [e[1] for e in extra], "label": pd.Series([e[3] for e in extra], index=index,
                                                                       dtype=object),
                 "split": [e[2] for e in extra]}, index=index)])
        part = table.objects if table.objects is not None else empty_objects()
        part = part.copy()
        part["sample_id"] = part["sample_id"].map(rename)
        own = table.description.get("object_coverage")
        if isinstance(own, pd.DataFrame):  # the format knows who saw what (Label Studio annotations)
            seen = [(rename.get(s, s), str(a)) for s, a in zip(own["sample_id"], own["annotator"], strict=True)]
        else:
            seen = [(rename[s], "") for s in table.samples.index]
        if name:
            inner = part["annotator"].astype(str)
            part["annotator"] = [f"{name}:{a}" if a else name for a in inner]
            part.index = pd.Index([f"{name}/{i}" for i in part.index], name="object_id")
            seen = [(s, f"{name}:{a}" if a else name) for s, a in seen]
        coverage += seen
        objects.append(part)
    merged = pd.concat(objects) if objects else empty_objects()
    twice = merged.index[merged.index.duplicated()]
    if len(twice):
        raise SourceError(f"duplicate object ids after merging annotator files: {list(twice[:3])}")
    description["object_coverage"] = pd.DataFrame(coverage, columns=["sample_id", "annotator"]).drop_duplicates()
    description["n_objects"] = len(merged)
    return SampleTable(samples, description=description, objects=merged)


def load_object_source(config: SourceConfig, read: Callable[[Path, Path | None], SampleTable]) -> SampleTable:
    """The loader every object format registers: ``read(path, images)`` on ``config.path`` (ground truth,
    annotator "") and on each of ``config.annotator_files`` (same format), merged by :func:`merge_annotators`."""
    images = getattr(config, "images", None)
    primary = read(Path(config.path), images) if config.path else None
    others = {name: read(Path(file), images) for name, file in (getattr(config, "annotator_files", None) or {}).items()}
    table = merge_annotators(primary, others)
    if table.objects is None or table.objects.empty:
        files = [str(config.path)] if config.path else []
        files += [str(f) for f in (getattr(config, "annotator_files", None) or {}).values()]
        raise SourceError(f"{config.kind} source {', '.join(files)}: no objects in any of its "
                          f"{len(table.samples)} images")
    return table
