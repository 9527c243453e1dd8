"""Image folders: ``root/<class>/<image>`` or ``root/<split>/<class>/<image>``."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd

from audit.sources.table import DEFAULT_SPLIT, IMAGE_SUFFIXES, SPLIT_NAMES, SampleTable, SourceError, register_format

if TYPE_CHECKING:
    from audit.config import SourceConfig


@register_format("folder", needs=("path",), description="one sub-folder per class (optionally inside split folders)")
def load_folder_source(config: SourceConfig) -> SampleTable:
    return load_folder(config.path)


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

