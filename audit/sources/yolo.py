"""YOLO (Ultralytics / YOLOv5+) txt folders as an object source.

Layout (``kind: yolo``, ``path`` = the dataset root or its YAML): a ``data.yaml`` / ``dataset.yaml`` with class
``names`` (a list, or a dict ``{index: name}``) and split entries (``train: images/train``; a folder, a ``.txt``
list of image paths, or a list of either; relative to the YAML's ``path`` key or to the YAML's folder). Without
split entries, ``images/<split>/`` folders, or a flat ``images/``, are used; a ``classes.txt`` (Darknet, and
Label Studio's YOLO export) may stand in for the YAML's names.

Each image's label file is the image path with the last ``images`` folder replaced by ``labels`` and the suffix
by ``.txt`` (Ultralytics' rule). A line is ``class cx cy w h`` (normalised box centre and size), ``class cx cy w h
score`` (predictions), or ``class x1 y1 x2 y2 x3 y3 ...`` (a segment: a normalised polygon, at least 3 points).
YOLO files do not store the image size, so every annotated image's header is read.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from audit.sources.objects import (
    ObjectRecords,
    image_samples,
    image_size,
    load_object_source,
    object_table,
    polygon_mask,
    relative_id,
    split_from_name,
)
from audit.sources.table import DEFAULT_SPLIT, IMAGE_SUFFIXES, SampleTable, SourceError, register_format

if TYPE_CHECKING:
    from audit.config import SourceConfig

_YAML_NAMES = ("data.yaml", "dataset.yaml", "data.yml", "dataset.yml")
_SPLIT_KEYS = ("train", "val", "test")


@register_format("yolo", needs=("path|annotator_files",),
                 description="YOLO txt labels (boxes and segments) with data.yaml class names")
def load_yolo_source(config: SourceConfig) -> SampleTable:
    return load_object_source(config, read_yolo)


def _find_yaml(path: Path) -> Path | None:
    if path.is_file():
        return path
    for name in _YAML_NAMES:
        if (path / name).is_file():
            return path / name
    found = sorted(path.glob("*.yaml")) + sorted(path.glob("*.yml"))
    return found[0] if len(found) == 1 else None


def _read_yaml(file: Path) -> dict[str, Any]:
    import yaml

    try:
        data = yaml.safe_load(file.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as exc:
        raise SourceError(f"YOLO dataset file {file} is not valid YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise SourceError(f"YOLO dataset file {file} must hold a mapping (names, train, val...)")
    return data


def _class_names(spec: dict[str, Any], file: Path | None, root: Path) -> list[str]:
    names = spec.get("names")
    if names is None and (root / "classes.txt").is_file():
        return [line.strip() for line in (root / "classes.txt").read_text(encoding="utf-8").splitlines()
                if line.strip()]
    if isinstance(names, dict):
        try:
            indexed = {int(k): str(v) for k, v in names.items()}
        except (TypeError, ValueError):
            raise SourceError(f"{file}: 'names' keys must be class indices 0, 1, ...") from None
        if sorted(indexed) != list(range(len(indexed))):
            raise SourceError(f"{file}: 'names' indices must run 0..{len(indexed) - 1}, got {sorted(indexed)}")
        return [indexed[i] for i in range(len(indexed))]
    if isinstance(names, list) and names:
        return [str(n) for n in names]
    where = file or root
    raise SourceError(f"YOLO dataset {where}: no class names ('names' in data.yaml, or classes.txt)")


def _base(spec: dict[str, Any], yaml_dir: Path) -> Path:
    base = spec.get("path")
    if not base:
        return yaml_dir
    base = Path(str(base))
    if base.is_absolute() and base.is_dir():
        return base
    return (yaml_dir / base) if (yaml_dir / base).is_dir() else yaml_dir


def _images_in(entry: Path, base: Path) -> list[Path]:
    if entry.is_dir():
        return sorted(p for p in entry.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if entry.is_file() and entry.suffix == ".txt":
        out = []
        for line in entry.read_text(encoding="utf-8").splitlines():
            line = line.strip()
            if line:
                p = Path(line)
                out.append(p if p.is_absolute() else (entry.parent / p if line.startswith("./") else base / p))
        return out
    raise SourceError(f"YOLO split entry {entry} is neither an image folder nor a .txt list of images")


def _splits(spec: dict[str, Any], root: Path, yaml_dir: Path) -> list[tuple[str, list[Path]]]:
    base = _base(spec, yaml_dir)
    listed = [(key, spec[key]) for key in _SPLIT_KEYS if spec.get(key)]
    out: list[tuple[str, list[Path]]] = []
    seen: set[Path] = set()
    for key, value in listed:
        images: list[Path] = []
        for item in value if isinstance(value, list) else [value]:
            entry = Path(str(item))
            entry = entry if entry.is_absolute() else base / entry
            if not entry.exists():
                raise SourceError(f"YOLO dataset {yaml_dir}: split {key!r} points to {entry}, which does not exist")
            images += _images_in(entry, base)
        fresh = [p for p in images if p.resolve() not in seen]  # the same folder named twice (val = test)
        seen |= {p.resolve() for p in fresh}
        out.append((key, fresh))
    if out:
        return out
    if not (root / "images").is_dir():
        raise SourceError(f"YOLO dataset {root} has no split entries in its YAML and no images/ folder")
    return _folder_splits(root / "images")


def _folder_splits(images_dir: Path) -> list[tuple[str, list[Path]]]:
    if not images_dir.is_dir():
        raise SourceError(f"YOLO image folder {images_dir} does not exist")
    subdirs = sorted(p for p in images_dir.iterdir() if p.is_dir())
    if subdirs:
        return [(split_from_name(p.name) if split_from_name(p.name) != DEFAULT_SPLIT else p.name,
                 _images_in(p, images_dir)) for p in subdirs]
    return [(DEFAULT_SPLIT, _images_in(images_dir, images_dir))]


def label_path(image: Path) -> Path:
    """Ultralytics' rule: ``.../images/x/a.jpg`` -> ``.../labels/x/a.txt`` (the last ``images`` folder)."""
    parts = list(image.parts)
    for i in range(len(parts) - 2, -1, -1):
        if parts[i] == "images":
            parts[i] = "labels"
            return Path(*parts).with_suffix(".txt")
    return image.with_suffix(".txt")


def read_yolo(path: Path, images: Path | None = None) -> SampleTable:
    """A YOLO dataset root (or its YAML) -> samples (every image of every split) and objects."""
    path = Path(path)
    if not path.exists():
        raise SourceError(f"YOLO dataset {path} does not exist")
    yaml_file = _find_yaml(path)
    root = path.parent if path.is_file() else path
    spec = _read_yaml(yaml_file) if yaml_file else {}
    names = _class_names(spec, yaml_file, root)
    if images is not None:  # an explicit image folder (flat, or one sub-folder per split) beats the YAML's
        splits = _folder_splits(Path(images))
    else:
        splits = _splits(spec, root, yaml_file.parent if yaml_file else root)
    records = ObjectRecords(yaml_file or root)
    rows = []
    used_labels: set[Path] = set()
    for split, files in splits:
        for image in files:
            sample_id = relative_id(image, root)
            rows.append((sample_id, image, split))
            labels = label_path(image)
            if labels.is_file():
                used_labels.add(labels.resolve())
                _read_label_file(labels, image, sample_id, names, records)
    _refuse_orphans(splits, used_labels, root)
    samples = image_samples(rows, what=f"YOLO dataset {root}")
    description = {"kind": "yolo", "path": str(root.resolve()), "class_names": names}
    return object_table(samples, records.table(), description)


def _refuse_orphans(splits: list[tuple[str, list[Path]]], used: set[Path], root: Path) -> None:
    """A label file whose image is not there is a *missing image*: its boxes cannot be placed or shown."""
    folders = {label_path(f).parent for _, files in splits for f in files}
    if (root / "labels").is_dir():
        folders |= {p for p in (root / "labels").rglob("*") if p.is_dir()} | {root / "labels"}
    for folder in sorted(folders):
        if folder.is_dir():
            for labels in sorted(folder.glob("*.txt")):
                if labels.resolve() not in used and labels.stat().st_size > 0:
                    raise SourceError(f"{labels}: label file without an image (missing image {labels.stem}.*)")


def _read_label_file(labels: Path, image: Path, sample_id: str, names: list[str], records: ObjectRecords) -> None:
    lines = [(n, line.split()) for n, line in enumerate(labels.read_text(encoding="utf-8").splitlines(), start=1)]
    lines = [(n, values) for n, values in lines if values]
    if not lines:
        return
    size = image_size(image)
    if size is None:
        raise SourceError(f"{labels}: the image {image} cannot be read, so the size its normalised boxes are "
                          "relative to is unknown")
    width, height = size
    for n, values in lines:
        ref = f"{labels.name} line {n}"
        try:
            target, numbers = int(values[0]), [float(v) for v in values[1:]]
        except ValueError:
            raise SourceError(f"{labels}: line {n}: not a class index followed by numbers: "
                              f"{' '.join(values)[:80]!r}") from None
        if not 0 <= target < len(names):
            raise SourceError(f"{labels}: line {n}: unknown category id {target} (data.yaml names "
                              f"{len(names)} classes, 0..{len(names) - 1})")
        score = float("nan")
        mask = None
        if len(numbers) in (4, 5):
            cx, cy, w, h = numbers[:4]
            box = [(cx - w / 2) * width, (cy - h / 2) * height, w * width, h * height]
            if len(numbers) == 5:
                score = numbers[4]
        elif len(numbers) >= 6 and len(numbers) % 2 == 0:
            ring = [v * (width if i % 2 == 0 else height) for i, v in enumerate(numbers)]
            mask = polygon_mask([ring], height, width, labels, f"line {n}")
            xs, ys = ring[0::2], ring[1::2]
            box = [min(xs), min(ys), max(xs) - min(xs), max(ys) - min(ys)]  # Ultralytics' segments2boxes
        else:
            raise SourceError(f"{labels}: line {n}: malformed polygon or box ({len(numbers)} numbers after the "
                              "class; a box has 4 (5 with a score), a segment an even number >= 6)")
        records.add(f"{sample_id}#{n}", sample_id, names[target], box, width, height, source=ref, mask=mask,
                    score=score)
