"""Semantic-segmentation masks as a source: one class-index (or colour) mask image per image and per annotator.

Layout
------
``kind: masks`` reads

* the images: a folder (every image file under ``path``, recursively, except files under a mask folder; a first
  path component named like a split, e.g. ``train/``, is the split) or a manifest (CSV/Parquet with ``filepath``
  and, optionally, ``mask``, ``split``, ``sample_id``; relative paths are resolved against the manifest's folder);
* the shipped mask of each image: ``<masks>/<sample id without its suffix>.png`` (also ``.tif``, ``.tiff``,
  ``.bmp``, tried in that order), or the manifest's ``mask`` column;
* each annotator's masks: ``annotator_files: {name: folder}``, the same naming; an annotator without a mask for an
  image simply did not annotate it (an annotator folder with none at all is an error);
* the class map (``class_map``): mask value -> class name (single-channel index masks; palette PNGs are read as
  their raw palette indices, as Pascal VOC stores them) or colour -> class name (RGB masks, and palette PNGs
  resolved through their palette). See :func:`read_class_map` for the file formats. ``ignore_index`` (default
  255) means "unlabelled"; a class-map entry named ``ignore`` marks a further value or colour as unlabelled.

Decoded masks are ``int16`` arrays of *dense* class codes ``0..K-1`` (code ``i`` is ``spec.classes[i]``, classes in
ascending mask value, or in the colour map's order) with :data:`IGNORE` (-1) for unlabelled pixels; predicted
probabilities for masks use the same channel order.

Errors and problem codes
------------------------
A missing shipped mask, a mask whose size differs from its image, a value or colour the class map does not know,
an unreadable mask file, raise :class:`MaskError` (a :class:`SourceError`) naming the file. Loading checks
existence and sizes from the file headers only, then decodes every mask once, one at a time (``scan``), so bad
values fail at load time and odd-but-legal masks get problem codes: ``empty_mask`` (no pixel of a foreground
class: everything is background or unlabelled) and ``unlabelled_mask`` (every pixel is unlabelled). The
background class is the class-map entry named ``background`` (case and surrounding underscores ignored).

Nothing holds more than one decoded mask at a time: the table keeps paths, and :func:`iter_masks` /
:func:`iter_annotator_masks` decode on demand.
"""

from __future__ import annotations

import functools
import json
import os
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from audit.sources.table import (
    DEFAULT_SPLIT,
    IMAGE_SUFFIXES,
    SPLIT_NAMES,
    SampleTable,
    SourceError,
    register_format,
)

if TYPE_CHECKING:
    from audit.config import SourceConfig

IGNORE = -1
MASK_SUFFIXES = (".png", ".tif", ".tiff", ".bmp")
EMPTY_MASK = "empty_mask"
UNLABELLED_MASK = "unlabelled_mask"
MASK_PROBLEM_CODES = (EMPTY_MASK, UNLABELLED_MASK)
IGNORE_NAME = "ignore"
MANIFEST_SUFFIXES = {".csv", ".tsv", ".txt", ".parquet"}


class MaskError(SourceError):
    """A mask cannot be used (missing, wrong size, unknown value or colour, unreadable); the message names it."""


# ------------------------------------------------------------------------------------------------ class maps


@dataclass(frozen=True)
class MaskSpec:
    """How mask pixels become classes.

    ``classes[i]`` is the name of dense code ``i``. Index masks: ``values[i]`` is its value in the mask file.
    Colour masks: ``colours[i]`` is its ``(r, g, b)``. ``ignore_values`` / ``ignore_colours`` are unlabelled;
    ``background`` is the dense code of the background class (None when the map names none).
    """

    classes: tuple[str, ...]
    values: tuple[int, ...] | None = None
    colours: tuple[tuple[int, int, int], ...] | None = None
    ignore_values: tuple[int, ...] = ()
    ignore_colours: tuple[tuple[int, int, int], ...] = ()
    background: int | None = None
    source: str = ""

    @property
    def kind(self) -> str:
        return "colour" if self.colours is not None else "index"

    @property
    def n_classes(self) -> int:
        return len(self.classes)

    @property
    def foreground(self) -> list[int]:
        """Dense codes of every class but the background."""
        return [i for i in range(self.n_classes) if i != self.background]

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe form (kept in ``SampleTable.description["mask_spec"]``)."""
        return {"classes": list(self.classes), "values": None if self.values is None else list(self.values),
                "colours": None if self.colours is None else [list(c) for c in self.colours],
                "ignore_values": list(self.ignore_values), "ignore_colours": [list(c) for c in self.ignore_colours],
                "background": self.background, "source": self.source}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> MaskSpec:
        return cls(classes=tuple(data["classes"]),
                   values=None if data.get("values") is None else tuple(int(v) for v in data["values"]),
                   colours=None if data.get("colours") is None else tuple(tuple(map(int, c)) for c in data["colours"]),
                   ignore_values=tuple(int(v) for v in data.get("ignore_values", ())),
                   ignore_colours=tuple(tuple(map(int, c)) for c in data.get("ignore_colours", ())),
                   background=data.get("background"), source=str(data.get("source", "")))

    @classmethod
    def from_entries(cls, entries: list[tuple[int | tuple[int, int, int], str]], ignore_index: int | None,
                     source: str) -> MaskSpec:
        """Build from ``(value or colour, name)`` pairs in file order; checks for clashes, naming ``source``."""
        if not entries:
            raise SourceError(f"class map {source} names no class")
        colour_keys = [isinstance(k, tuple) for k, _ in entries]
        if any(colour_keys) and not all(colour_keys):
            raise SourceError(f"class map {source} mixes mask values and colours; use one or the other")
        keys = [k for k, _ in entries]
        repeated = sorted({str(k) for k in keys if keys.count(k) > 1})
        if repeated:
            raise SourceError(f"class map {source} lists {repeated[0]} more than once")
        ignored = [k for k, name in entries if name.strip().lower() == IGNORE_NAME]
        named = [(k, name.strip()) for k, name in entries if name.strip().lower() != IGNORE_NAME]
        names = [name for _, name in named]
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:
            raise SourceError(f"class map {source}: class name {twice[0]!r} is given to more than one "
                              f"{'colour' if all(colour_keys) else 'value'}")
        if not named:
            raise SourceError(f"class map {source} names no class (only 'ignore' entries)")
        if all(colour_keys):
            order = named  # colour maps: file order
            background = _background_code([n for _, n in order])
            return cls(classes=tuple(n for _, n in order), colours=tuple(k for k, _ in order),  # type: ignore[misc]
                       ignore_colours=tuple(ignored), background=background, source=source)  # type: ignore[arg-type]
        order = sorted(named, key=lambda kv: kv[0])  # index maps: ascending mask value
        values = [int(k) for k, _ in order]  # type: ignore[arg-type]
        if any(v < 0 or v > 65535 for v in values):
            raise SourceError(f"class map {source}: mask values must be in 0..65535")
        if ignore_index is not None and ignore_index in values:
            name = order[values.index(ignore_index)][1]
            raise SourceError(f"class map {source} gives value {ignore_index} to class {name!r}, but "
                              f"{ignore_index} is the ignore_index; set ignore_index to another value or null")
        ignore_values = sorted({int(k) for k in ignored} | ({ignore_index} if ignore_index is not None else set()))
        return cls(classes=tuple(n for _, n in order), values=tuple(values), ignore_values=tuple(ignore_values),
                   background=_background_code([n for _, n in order]), source=source)


def _background_code(names: list[str]) -> int | None:
    for i, name in enumerate(names):
        if name.strip().strip("_").lower() == "background":
            return i
    return None


_HEX = re.compile(r"^#?([0-9a-fA-F]{6})$")


def parse_colour(value: Any, where: str) -> tuple[int, int, int]:
    """``"#rrggbb"``, ``"r,g,b"``, ``"(r, g, b)"`` or ``[r, g, b]`` as an ``(r, g, b)`` tuple."""
    if isinstance(value, list | tuple):
        parts = list(value)
    else:
        text = str(value).strip()
        match = _HEX.match(text)
        if match:
            code = match.group(1)
            return int(code[0:2], 16), int(code[2:4], 16), int(code[4:6], 16)
        parts = [p for p in re.split(r"[\s,;()\[\]]+", text) if p]
    try:
        rgb = tuple(int(p) for p in parts)
    except (TypeError, ValueError):
        rgb = ()
    if len(rgb) != 3 or any(c < 0 or c > 255 for c in rgb):
        raise SourceError(f"{where}: {value!r} is not a colour (use '#rrggbb', 'r,g,b' or [r, g, b])")
    return rgb  # type: ignore[return-value]


def _key(raw: Any, where: str) -> int | tuple[int, int, int]:
    if isinstance(raw, bool):
        raise SourceError(f"{where}: {raw!r} is not a mask value or colour")
    if isinstance(raw, int):
        return raw
    if isinstance(raw, list | tuple):
        return parse_colour(raw, where)
    text = str(raw).strip()
    if re.fullmatch(r"\d+", text):
        return int(text)
    return parse_colour(text, where)


def read_class_map(path: str | Path, ignore_index: int | None = 255) -> MaskSpec:
    """Read a class map file.

    * YAML / JSON: a mapping ``value -> name`` (``{0: background, 1: cat}``) or ``colour -> name``
      (``{"#000000": background, "255,0,0": cat}``), or a list of names (value = position). A mapping may also
      sit under a ``classes`` key, beside an optional ``ignore_index`` (which then overrides the argument).
    * CSV: a ``name`` column and either ``index`` (or ``value``), ``color`` / ``colour`` (``#rrggbb`` or
      ``"r,g,b"``), or ``r, g, b`` columns.

    An entry named ``ignore`` marks its value or colour as unlabelled.
    """
    path = Path(path)
    if not path.is_file():
        raise SourceError(f"class map {path} does not exist")
    suffix = path.suffix.lower()
    try:
        if suffix in (".yaml", ".yml", ".json"):
            text = path.read_text(encoding="utf-8")
            if suffix == ".json":
                data = json.loads(text)
            else:
                import yaml

                data = yaml.safe_load(text)
            return _spec_from_data(data, ignore_index, str(path))
        if suffix in (".csv", ".tsv"):
            table = pd.read_csv(path, sep="\t" if suffix == ".tsv" else ",", dtype=str, keep_default_na=False)
            return _spec_from_csv(table, ignore_index, str(path))
    except SourceError:
        raise
    except Exception as exc:  # YAML/JSON/CSV parsers raise many types for a broken file
        raise SourceError(f"class map {path} could not be read: {exc}") from exc
    raise SourceError(f"class map {path} must be .yaml, .yml, .json, .csv or .tsv")


def _spec_from_data(data: Any, ignore_index: int | None, source: str) -> MaskSpec:
    if isinstance(data, dict) and "classes" in data:
        if "ignore_index" in data:
            ignore_index = None if data["ignore_index"] is None else int(data["ignore_index"])
        data = data["classes"]
    if isinstance(data, list):
        entries: list[tuple[int | tuple[int, int, int], str]] = [(i, str(n)) for i, n in enumerate(data)]
    elif isinstance(data, dict):
        entries = [(_key(k, f"class map {source}"), str(v)) for k, v in data.items()]
    else:
        raise SourceError(f"class map {source} must hold a mapping (value or colour -> name) or a list of names")
    return MaskSpec.from_entries(entries, ignore_index, source)


def _spec_from_csv(table: pd.DataFrame, ignore_index: int | None, source: str) -> MaskSpec:
    columns = {c.strip().lower(): c for c in table.columns}
    if "name" not in columns:
        raise SourceError(f"class map {source} needs a 'name' column (columns: {', '.join(table.columns)})")
    names = table[columns["name"]].astype(str)
    value_column = columns.get("index") or columns.get("value")
    colour_column = columns.get("color") or columns.get("colour")
    entries: list[tuple[int | tuple[int, int, int], str]]
    if value_column:
        entries = [(_key(v, f"class map {source} row {i + 2}"), n) for i, (v, n) in
                   enumerate(zip(table[value_column], names, strict=True))]
    elif colour_column:
        entries = [(parse_colour(v, f"class map {source} row {i + 2}"), n) for i, (v, n) in
                   enumerate(zip(table[colour_column], names, strict=True))]
    elif all(c in columns for c in ("r", "g", "b")):
        entries = [(parse_colour([r, g, b], f"class map {source} row {i + 2}"), n) for i, (r, g, b, n) in
                   enumerate(zip(table[columns["r"]], table[columns["g"]], table[columns["b"]], names, strict=True))]
    else:
        raise SourceError(f"class map {source} needs an 'index', 'color' or 'r,g,b' column beside 'name'")
    return MaskSpec.from_entries(entries, ignore_index, source)


def spec_from_mask_targets(targets: dict[Any, str], ignore_index: int | None, source: str) -> MaskSpec:
    """A FiftyOne ``mask_targets`` dict (``{1: "cat"}`` or ``{"#ff0000": "cat"}``) as a :class:`MaskSpec`."""
    entries = [(_key(k, source), str(v)) for k, v in targets.items()]
    return MaskSpec.from_entries(entries, ignore_index, source)


# ------------------------------------------------------------------------------------------------ decoding


@functools.lru_cache(maxsize=16)
def _lut(spec: MaskSpec, size: int) -> np.ndarray:
    """Mask value -> dense code (IGNORE for unlabelled, -2 for unknown); cached per class map (read-only)."""
    lut = np.full(size, -2, np.int16)
    for code, value in enumerate(spec.values or ()):
        if value < size:
            lut[value] = code
    for value in spec.ignore_values:
        if 0 <= value < size:
            lut[value] = IGNORE
    lut.flags.writeable = False
    return lut


def _unknown_error(path: Path, raw: np.ndarray, unknown: np.ndarray, spec: MaskSpec, what: str) -> MaskError:
    values, counts = np.unique(raw[unknown], axis=0, return_counts=True)
    ys, xs = np.nonzero(unknown.reshape(unknown.shape[:2]))
    if what == "colour":
        shown = ", ".join(f"#{int(v[0]):02x}{int(v[1]):02x}{int(v[2]):02x} ({c} px)"
                          for v, c in zip(values[:5], counts[:5], strict=True))
    else:
        shown = ", ".join(f"{int(v)} ({c} px)" for v, c in zip(values[:5], counts[:5], strict=True))
    more = f" and {len(values) - 5} more" if len(values) > 5 else ""
    return MaskError(f"mask {path} has {what}(s) the class map {spec.source} does not know: {shown}{more}; "
                     f"first at pixel (x={int(xs[0])}, y={int(ys[0])})")


def read_mask(path: str | Path, spec: MaskSpec, expected_size: tuple[int, int] | None = None) -> np.ndarray:
    """Decode one mask file into dense class codes (``int16``, :data:`IGNORE` for unlabelled).

    ``expected_size`` is the image's ``(width, height)``; a mask of another size is an error, as are a value or
    colour the class map does not know and an unreadable file. Index maps read the raw stored values (palette
    PNGs: the palette index); colour maps read RGB (palette PNGs through their palette, alpha dropped).
    """
    from PIL import Image

    path = Path(path)
    if not path.is_file():
        raise MaskError(f"mask {path} does not exist")
    try:
        with Image.open(path) as image:
            image.load()
            mode = image.mode
            if expected_size is not None and tuple(image.size) != tuple(expected_size):
                raise MaskError(f"mask {path} is {image.size[0]}x{image.size[1]} but its image is "
                                f"{expected_size[0]}x{expected_size[1]} (width x height)")
            if spec.kind == "colour":
                raw = np.asarray(image.convert("RGB"))
            elif mode in ("L", "P", "1", "I;16", "I;16L", "I;16B", "I;16N", "I"):
                raw = np.asarray(image)
            elif mode in ("RGB", "RGBA", "LA"):
                rgb = np.asarray(image.convert("RGB"))
                if not ((rgb[..., 0] == rgb[..., 1]).all() and (rgb[..., 1] == rgb[..., 2]).all()):
                    raise MaskError(f"mask {path} is a colour ({mode}) image but the class map {spec.source} maps "
                                    "mask values; give a colour -> class map, or save index masks single-channel")
                raw = rgb[..., 0]
            else:
                raise MaskError(f"mask {path} has image mode {mode}, which is not a class-index or colour mask")
    except MaskError:
        raise
    except Exception as exc:  # PIL raises assorted errors for a broken file
        raise MaskError(f"mask {path} could not be read: {exc}") from exc
    if spec.kind == "colour":
        return _decode_colours(path, raw, spec)
    raw = raw.astype(np.int64) if raw.dtype == bool else raw
    if raw.dtype.kind not in "ui" or (raw.size and (raw.min() < 0 or raw.max() > 65535)):
        raise MaskError(f"mask {path} holds values outside 0..65535")
    size = 256 if raw.dtype == np.uint8 else 65536
    codes = _lut(spec, size)[raw.astype(np.int64) if size == 65536 else raw]
    unknown = codes == -2
    if unknown.any():
        raise _unknown_error(path, raw, unknown, spec, "value")
    return codes


def _decode_colours(path: Path, rgb: np.ndarray, spec: MaskSpec) -> np.ndarray:
    packed = (rgb[..., 0].astype(np.int32) << 16) | (rgb[..., 1].astype(np.int32) << 8) | rgb[..., 2]
    known = [(c[0] << 16) | (c[1] << 8) | c[2] for c in spec.colours or ()]
    ignored = [(c[0] << 16) | (c[1] << 8) | c[2] for c in spec.ignore_colours]
    keys = np.array(known + ignored, np.int32)
    targets = np.array(list(range(len(known))) + [IGNORE] * len(ignored), np.int16)
    order = np.argsort(keys)
    keys, targets = keys[order], targets[order]
    position = np.clip(np.searchsorted(keys, packed), 0, len(keys) - 1)
    unknown = keys[position] != packed
    if unknown.any():
        raise _unknown_error(path, rgb, unknown, spec, "colour")
    return targets[position]


def mask_problem_codes(codes: np.ndarray, spec: MaskSpec) -> list[str]:
    """``empty_mask`` when no pixel has a foreground class; also ``unlabelled_mask`` when every pixel is unlabelled."""
    labelled = codes != IGNORE
    if not labelled.any():
        return [EMPTY_MASK, UNLABELLED_MASK]
    if spec.background is not None and not (labelled & (codes != spec.background)).any():
        return [EMPTY_MASK]
    return []


def image_size(path: str | Path) -> tuple[int, int] | None:
    """``(width, height)`` of an image as displayed (EXIF rotation applied), from its header; None if unreadable."""
    from PIL import Image

    try:
        with Image.open(path) as image:
            width, height = image.size
            try:
                orientation = image.getexif().get(0x0112, 1)
            except Exception:
                orientation = 1
    except Exception:
        return None
    return (height, width) if orientation in (5, 6, 7, 8) else (width, height)


def mask_size(path: str | Path) -> tuple[int, int]:
    """``(width, height)`` of a mask file from its header."""
    from PIL import Image

    try:
        with Image.open(path) as image:
            return tuple(image.size)  # type: ignore[return-value]
    except Exception as exc:
        raise MaskError(f"mask {path} could not be read: {exc}") from exc


# ------------------------------------------------------------------------------------------------ streaming


def spec_of(table: SampleTable) -> MaskSpec:
    """The :class:`MaskSpec` a masks source stored in its description."""
    data = table.description.get("mask_spec")
    if not isinstance(data, dict):
        raise SourceError("this sample table has no mask class map (not a masks source)")
    return MaskSpec.from_dict(data)


def iter_masks(paths: Iterable[tuple[str, str | None]] | pd.Series, spec: MaskSpec,
               ) -> Iterator[tuple[str, np.ndarray | None]]:
    """Decode masks one at a time: yields ``(sample_id, codes)`` (``None`` where the path is None/NaN).

    ``paths`` is ``(sample_id, mask_path)`` pairs, or a Series of paths indexed by sample id (e.g.
    ``samples["mask"]``). Only the mask being yielded is in memory.
    """
    items = paths.items() if isinstance(paths, pd.Series) else paths
    for sample_id, path in items:
        if path is None or (isinstance(path, float) and np.isnan(path)):
            yield str(sample_id), None
        else:
            yield str(sample_id), read_mask(path, spec)


def iter_annotator_masks(mask_annotations: pd.DataFrame, spec: MaskSpec, sample_ids: Iterable[str] | None = None,
                         ) -> Iterator[tuple[str, dict[str, np.ndarray]]]:
    """Per image, every annotator's decoded mask: yields ``(sample_id, {annotator: codes})``, one image at a time,
    in ``sample_ids`` order (default: the table's order of first appearance); images nobody annotated yield ``{}``."""
    groups: dict[str, list[tuple[str, str]]] = {}  # plain tuples: a DataFrame per image would cost KBs each
    for s, a, p in zip(mask_annotations["sample_id"], mask_annotations["annotator"], mask_annotations["mask_path"],
                       strict=True):
        groups.setdefault(str(s), []).append((str(a), p))
    order = list(groups) if sample_ids is None else [str(s) for s in sample_ids]
    for sample_id in order:
        yield sample_id, {a: read_mask(p, spec) for a, p in groups.get(sample_id, [])}


# ------------------------------------------------------------------------------------------------ loading


@register_format("masks", needs=("path|dataset",),
                 description="semantic segmentation: images + class-index or colour mask PNGs (folder, manifest or "
                             "FiftyOne Segmentation fields) and a class map")
def load_masks_source(config: SourceConfig) -> SampleTable:
    if config.dataset:
        field = config.mask_field
        if not field and not config.annotator_fields:
            raise SourceError("a FiftyOne masks source needs mask_field (the shipped Segmentation field) "
                              "and/or annotator_fields")
        return load_fiftyone_masks(config.dataset, field, config.annotator_fields, class_map=config.class_map,
                                   ignore_index=config.ignore_index, split_field=config.split_field)
    if config.class_map is None:
        raise SourceError("source kind 'masks' needs a class_map file (mask value or colour -> class name)")
    return load_masks(config.path, masks=config.masks, class_map=config.class_map,
                      ignore_index=config.ignore_index, annotator_masks=config.annotator_files)


def load_masks(path: str | Path, class_map: str | Path | MaskSpec, masks: str | Path | None = None,
               ignore_index: int | None = 255, annotator_masks: dict[str, str | Path] | None = None,
               scan: bool = True) -> SampleTable:
    """Images plus their shipped and per-annotator masks as a :class:`SampleTable`.

    ``samples`` gets a ``mask`` column (absolute path of the shipped mask; None when only annotators' masks are
    given); ``mask_annotations`` is the long table ``sample_id, annotator, mask_path, problems``;
    ``description["mask_spec"]`` the class map (:meth:`MaskSpec.to_dict`). With ``scan`` every mask is decoded
    once, one at a time, to fail early on unknown values and record ``empty_mask`` / ``unlabelled_mask``.
    """
    path = Path(path)
    spec = class_map if isinstance(class_map, MaskSpec) else read_class_map(class_map, ignore_index)
    annotator_masks = {str(k): Path(v) for k, v in (annotator_masks or {}).items()}
    mask_root = Path(masks) if masks is not None else None
    for name, folder in [("masks", mask_root), *annotator_masks.items()]:
        if folder is not None and not folder.is_dir():
            what = "mask folder" if name == "masks" else f"mask folder of annotator {name!r}"
            raise SourceError(f"{what} {folder} does not exist")
    if path.is_file() and path.suffix.lower() in MANIFEST_SUFFIXES:
        samples, manifest_masks = _manifest_images(path)
    elif path.is_dir():
        skip = [p.resolve() for p in [mask_root, *annotator_masks.values()] if p is not None]
        samples, manifest_masks = _folder_images(path, skip), None
    else:
        raise SourceError(f"image folder or manifest {path} does not exist")

    if mask_root is not None:
        found = [_find_mask(mask_root, sample_id) for sample_id in samples.index]
        missing = [(s, e) for s, (f, e) in zip(samples.index, found, strict=True) if f is None]
        if missing:
            raise MaskError(f"{len(missing)} image(s) have no mask in {mask_root}: e.g. image "
                            f"{samples.at[missing[0][0], 'filepath']} needs {missing[0][1]}")
        samples["mask"] = [str(f) for f, _ in found]
    elif manifest_masks is not None:
        absent = [(s, m) for s, m in manifest_masks.items() if m is None or not Path(m).is_file()]
        if absent:
            sample_id, mask = absent[0]
            what = "has no mask in the manifest's mask column" if mask is None else f"needs mask {mask}, which " \
                                                                                   "does not exist"
            raise MaskError(f"{len(absent)} image(s) lack their mask: e.g. image {samples.at[sample_id, 'filepath']} "
                            f"{what}")
        samples["mask"] = manifest_masks.reindex(samples.index).astype(object)
    elif not annotator_masks:
        raise SourceError(f"no masks: give a mask folder (masks), a manifest with a 'mask' column, or annotators' "
                          f"mask folders (annotator_files) for {path}")
    else:
        samples["mask"] = None

    rows = []
    for annotator, folder in annotator_masks.items():
        own = [(s, _find_mask(folder, s)[0]) for s in samples.index]
        own = [(s, str(f)) for s, f in own if f is not None]
        if not own:
            raise MaskError(f"annotator {annotator!r}'s mask folder {folder} has a mask for none of the "
                            f"{len(samples)} images (expected e.g. {_find_mask(folder, samples.index[0])[1]})")
        rows.extend((s, annotator, f) for s, f in own)
    mask_annotations = (pd.DataFrame(rows, columns=["sample_id", "annotator", "mask_path"]) if annotator_masks
                        else None)

    _check_and_scan(samples, mask_annotations, spec, scan)
    description: dict[str, Any] = {"kind": "masks", "path": str(path.resolve()), "mask_spec": spec.to_dict(),
                                   "annotators": sorted(annotator_masks), "scanned": scan,
                                   "masks": None if mask_root is None else str(mask_root.resolve())}
    return SampleTable(samples, description=description, mask_annotations=mask_annotations)



def _check_and_scan(samples: pd.DataFrame, mask_annotations: pd.DataFrame | None, spec: MaskSpec, scan: bool) -> None:
    """What every mask source does last: every mask (shipped and annotators') has its image's size, and with
    ``scan`` each gets its problem codes (``problems`` columns, in place; empty without a scan)."""
    sizes = {s: image_size(f) for s, f in samples["filepath"].items()}
    _check_sizes(samples["mask"], sizes, "")
    if mask_annotations is not None:
        for annotator, group in mask_annotations.groupby("annotator", sort=False):
            _check_sizes(group.set_index("sample_id")["mask_path"], sizes, f" (annotator {annotator!r})")
    samples["problems"] = ""
    if scan:
        samples["problems"] = [";".join(mask_problem_codes(m, spec)) if m is not None else ""
                               for _, m in iter_masks(samples["mask"], spec)]
    if mask_annotations is not None:
        mask_annotations["problems"] = ([";".join(mask_problem_codes(read_mask(p, spec), spec))
                                         for p in mask_annotations["mask_path"]] if scan else "")

def _check_sizes(masks: pd.Series, sizes: dict[str, tuple[int, int] | None], who: str) -> None:
    for sample_id, mask in masks.items():
        expected = sizes.get(str(sample_id))
        if mask is None or expected is None:  # no mask, or an unreadable image (reported by the sample table)
            continue
        actual = mask_size(mask)
        if actual != expected:
            raise MaskError(f"mask {mask}{who} is {actual[0]}x{actual[1]} but its image {sample_id} is "
                            f"{expected[0]}x{expected[1]} (width x height)")


def _find_mask(folder: Path, sample_id: str) -> tuple[Path | None, Path]:
    """The mask of ``sample_id`` in ``folder`` and the path expected (for messages)."""
    stem = Path(sample_id)
    stem = stem.with_suffix("") if stem.suffix.lower() in IMAGE_SUFFIXES else stem
    for suffix in MASK_SUFFIXES:
        candidate = folder / f"{stem.as_posix()}{suffix}"
        if candidate.is_file():
            return candidate.resolve(), candidate
    return None, folder / f"{stem.as_posix()}.png"


def _folder_images(root: Path, skip: list[Path]) -> pd.DataFrame:
    rows = []
    for dirpath, dirnames, filenames in os.walk(root):
        here = Path(dirpath).resolve()
        dirnames[:] = sorted(d for d in dirnames if (here / d).resolve() not in skip and not d.startswith("."))
        for name in sorted(filenames):
            if Path(name).suffix.lower() in IMAGE_SUFFIXES and not name.startswith("."):
                file = here / name
                rel = file.relative_to(root.resolve()).as_posix()
                first = rel.split("/", 1)[0]
                split = first if "/" in rel and first.lower() in SPLIT_NAMES else DEFAULT_SPLIT
                rows.append((rel, str(file), None, split))
    if not rows:
        raise SourceError(f"image folder {root} holds no images ({', '.join(sorted(IMAGE_SUFFIXES))})")
    return pd.DataFrame(rows, columns=["sample_id", "filepath", "label", "split"]).set_index("sample_id")


def _manifest_images(path: Path) -> tuple[pd.DataFrame, pd.Series | None]:
    from audit.sources.manifest import load_manifest, read_table

    samples = load_manifest(path).samples.copy()
    raw = read_table(path, "manifest")
    if "mask" not in raw.columns:
        return samples, None
    ids = raw["sample_id"].astype(str) if "sample_id" in raw.columns else pd.Series(samples.index, index=raw.index)
    base = path.parent.resolve()
    masks = [None if m is None or pd.isna(m) or str(m) == "" else str(Path(m) if Path(m).is_absolute() else base / m)
             for m in raw["mask"]]
    return samples, pd.Series(masks, index=pd.Index(ids.to_numpy(), name="sample_id"), dtype=object)


# ------------------------------------------------------------------------------------------------ FiftyOne


def load_fiftyone_masks(name: str, mask_field: str | None, annotator_fields: list[str] | None = None,
                        class_map: str | Path | None = None, ignore_index: int | None = 255,
                        split_field: str | None = None, export_dir: str | Path | None = None,
                        scan: bool = True) -> SampleTable:
    """FiftyOne ``Segmentation`` fields as a masks source.

    A label's ``mask_path`` is used where it is set; a mask stored in the database (``mask``) is written, one at a
    time, to ``export_dir/<field>/<sample id>.png`` (default: a folder under the system temp dir named after the
    dataset) so that everything downstream streams from files. The class map is ``class_map`` when given, else
    the dataset's ``mask_targets`` for the field (or its ``default_mask_targets``).
    """
    import tempfile

    from PIL import Image

    from audit.sources.fiftyone_dataset import _fo, _load_dataset

    fo = _fo()
    dataset = _load_dataset(name)
    if len(dataset) == 0:
        raise SourceError(f"FiftyOne dataset {name!r} is empty")
    fields = ([mask_field] if mask_field else []) + list(annotator_fields or [])
    schema = dataset.get_field_schema()
    for field in fields:
        kind = schema.get(field)
        if kind is None:
            raise SourceError(f"FiftyOne dataset {name!r} has no field {field!r} (fields: {', '.join(schema)})")
        if not (isinstance(kind, fo.EmbeddedDocumentField) and issubclass(kind.document_type, fo.Segmentation)):
            raise SourceError(f"field {field!r} of dataset {name!r} is not a Segmentation field")
    if class_map is not None:
        spec = read_class_map(class_map, ignore_index)
    else:
        targets = (dataset.mask_targets or {}).get(fields[0]) or dataset.default_mask_targets
        if not targets:
            raise SourceError(f"FiftyOne dataset {name!r} has no mask_targets for field {fields[0]!r}; "
                              "give a class_map file")
        spec = spec_from_mask_targets(targets, ignore_index, f"FiftyOne mask_targets of {name}.{fields[0]}")
    export = Path(export_dir) if export_dir else Path(tempfile.gettempdir()) / "label-audit-masks" / name
    ids, paths, tags = dataset.values(["id", "filepath", "tags"])
    if split_field:
        splits = [str(s) if s is not None else DEFAULT_SPLIT for s in dataset.values(split_field)]
    else:
        splits = [next((t for t in (tg or []) if t.lower() in SPLIT_NAMES), DEFAULT_SPLIT) for tg in tags]
    samples = pd.DataFrame({"filepath": paths, "label": None, "split": splits},
                           index=pd.Index([str(i) for i in ids], name="sample_id"))
    located: dict[str, dict[str, str]] = {field: {} for field in fields}
    for sample in dataset.select_fields(fields).iter_samples():
        for field in fields:
            label = sample[field]
            if label is None:
                continue
            if getattr(label, "mask_path", None):
                located[field][str(sample.id)] = str(Path(label.mask_path).resolve())
            elif getattr(label, "mask", None) is not None:
                file = export / field / f"{sample.id}.png"
                file.parent.mkdir(parents=True, exist_ok=True)
                array = np.asarray(label.mask)
                Image.fromarray(array.astype(np.uint16) if array.dtype.itemsize > 1 and array.ndim == 2
                                else array).save(file)
                located[field][str(sample.id)] = str(file.resolve())
    if mask_field:
        missing = [s for s in samples.index if s not in located[mask_field]]
        if missing:
            raise MaskError(f"{len(missing)} sample(s) of FiftyOne dataset {name!r} have no {mask_field!r} mask, "
                            f"e.g. sample {missing[0]} ({samples.at[missing[0], 'filepath']})")
        samples["mask"] = [located[mask_field][s] for s in samples.index]
    else:
        samples["mask"] = None
    rows = [(s, field, p) for field in annotator_fields or [] for s, p in located[field].items()]
    mask_annotations = pd.DataFrame(rows, columns=["sample_id", "annotator", "mask_path"]) if annotator_fields \
        else None
    _check_and_scan(samples, mask_annotations, spec, scan)
    description: dict[str, Any] = {"kind": "masks", "fiftyone_dataset": name, "mask_field": mask_field,
                                   "mask_spec": spec.to_dict(), "annotators": list(annotator_fields or []),
                                   "scanned": scan}
    return SampleTable(samples, description=description, mask_annotations=mask_annotations)
