"""Sources on real files, including the bad inputs users meet."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from audit.config import SourceConfig
from audit.sources import (
    CONVERTED_16BIT,
    CONVERTED_CMYK,
    CONVERTED_PALETTE,
    CORRUPT_IMAGE,
    EXIF_ROTATED,
    MISSING_FILE,
    TRUNCATED_IMAGE,
    SourceError,
    load_image,
    load_source,
)
from tests.conftest import write_digit


def test_folder_source_reads_classes_and_ids(digit_folder: Path) -> None:
    table = load_source(SourceConfig(kind="folder", path=digit_folder))
    assert len(table.samples) == 24
    assert table.class_names == ["0", "1", "2"]
    assert table.samples.loc["1/1_3.png", "label"] == "1"
    assert set(table.samples["split"]) == {"all"}
    assert table.samples["readable"].all()


def test_folder_source_with_split_folders(tmp_path: Path, digit_images) -> None:
    images, targets = digit_images
    for split in ("train", "test"):
        for label in (3, 4):
            index = int(np.flatnonzero(targets == label)[0 if split == "train" else 1])
            write_digit(tmp_path / split / str(label) / "a.png", images[index])
    table = load_source(SourceConfig(kind="folder", path=tmp_path))
    assert sorted(table.samples["split"].unique()) == ["test", "train"]
    assert table.samples.loc["test/4/a.png", "label"] == "4"


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda root: root / "nope", "does not exist"),
        (lambda root: root, "no class sub-folders"),
        (lambda root: (root / "cat").mkdir() or root, "holds no images"),
    ],
)
def test_folder_source_errors(tmp_path: Path, make, message: str) -> None:
    with pytest.raises(SourceError, match=message):
        load_source(SourceConfig(kind="folder", path=make(tmp_path)))


def test_manifest_with_annotations_and_missing_file(tmp_path: Path, digit_images) -> None:
    images, targets = digit_images
    rows = []
    for i in range(6):
        write_digit(tmp_path / "img" / f"{i}.png", images[i])
        rows.append({"filepath": f"img/{i}.png", "label": str(targets[i]), "split": "train"})
    rows.append({"filepath": "img/gone.png", "label": "1", "split": "val"})
    pd.DataFrame(rows).to_csv(tmp_path / "m.csv", index=False)
    pd.DataFrame({"sample": ["img/0.png", "img/0.png", "img/1.png"], "annotator": ["a", "b", "a"],
                  "label": ["0", "8", "1"]}).to_csv(tmp_path / "ann.csv", index=False)
    table = load_source(SourceConfig(kind="manifest", path=tmp_path / "m.csv", annotations=tmp_path / "ann.csv"))
    assert len(table.samples) == 7, "the missing file is kept, not dropped"
    assert table.samples.loc["img/gone.png", "problems"] == MISSING_FILE
    assert not table.samples.loc["img/gone.png", "readable"]
    assert table.annotations["sample_id"].tolist() == ["img/0.png", "img/0.png", "img/1.png"]


def test_manifest_parquet_and_label_from_annotators(tmp_path: Path, digit_images) -> None:
    images, _ = digit_images
    write_digit(tmp_path / "x.png", images[0])
    pd.DataFrame({"filepath": ["x.png"], "sample_id": ["s1"]}).to_parquet(tmp_path / "m.parquet")
    pd.DataFrame({"sample": ["s1"] * 3, "annotator": ["a", "b", "c"], "label": ["7", "1", "7"]}).to_csv(
        tmp_path / "ann.csv", index=False)
    table = load_source(SourceConfig(kind="manifest", path=tmp_path / "m.parquet", annotations=tmp_path / "ann.csv"))
    assert table.samples.loc["s1", "label"] == "7"
    assert table.description["label_from"] == "annotator majority vote"


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("path,label\na.png,1\n", "no 'filepath' column"),
        ("filepath,label\n", "has no rows"),
        ("filepath,label\na.png,1\na.png,2\n", "same sample more than once"),
    ],
)
def test_manifest_errors(tmp_path: Path, content: str, message: str) -> None:
    (tmp_path / "m.csv").write_text(content)
    with pytest.raises(SourceError, match=message):
        load_source(SourceConfig(kind="manifest", path=tmp_path / "m.csv"))


def test_annotations_errors(tmp_path: Path, digit_images) -> None:
    write_digit(tmp_path / "a.png", digit_images[0][0])
    (tmp_path / "m.csv").write_text("filepath,label\na.png,0\n")
    (tmp_path / "ann.csv").write_text("sample,who,label\na.png,x,0\n")
    with pytest.raises(SourceError, match="lacks column"):
        load_source(SourceConfig(kind="manifest", path=tmp_path / "m.csv", annotations=tmp_path / "ann.csv"))
    (tmp_path / "ann.csv").write_text("sample,annotator,label\nb.png,x,0\n")
    with pytest.raises(SourceError, match="not in the dataset"):
        load_source(SourceConfig(kind="manifest", path=tmp_path / "m.csv", annotations=tmp_path / "ann.csv"))


def _save(image: Image.Image, path: Path, **kwargs) -> Path:
    image.save(path, **kwargs)
    return path


def test_load_image_handles_awkward_files(tmp_path: Path, digit_images) -> None:
    """Each awkward-but-real format decodes to RGB and says what was converted; broken files say why not."""
    base = Image.fromarray((digit_images[0][5] * 15).astype(np.uint8)).resize((40, 24))
    sixteen = Image.fromarray(np.asarray(base, dtype=np.uint16) * 257)
    assert sixteen.mode == "I;16"
    cases = {
        "16bit.png": (_save(sixteen, tmp_path / "16bit.png"), [CONVERTED_16BIT]),
        "cmyk.jpg": (_save(base.convert("CMYK"), tmp_path / "cmyk.jpg"), [CONVERTED_CMYK]),
        "palette.png": (_save(base.convert("P"), tmp_path / "palette.png"), [CONVERTED_PALETTE]),
    }
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise on display
    cases["rotated.jpg"] = (_save(base.convert("RGB"), tmp_path / "rotated.jpg", exif=exif), [EXIF_ROTATED])
    for name, (path, expected) in cases.items():
        image, notes = load_image(path)
        assert image is not None and image.mode == "RGB", name
        assert notes == expected, name
    rotated, _ = load_image(tmp_path / "rotated.jpg")
    assert rotated.size == (24, 40), "EXIF orientation must be applied"
    good = (tmp_path / "16bit.png").read_bytes()
    (tmp_path / "truncated.png").write_bytes(good[: len(good) // 2])
    (tmp_path / "garbage.png").write_bytes(b"not an image at all" * 10)
    assert load_image(tmp_path / "truncated.png") == (None, [TRUNCATED_IMAGE])
    assert load_image(tmp_path / "garbage.png") == (None, [CORRUPT_IMAGE])
    assert load_image(tmp_path / "absent.png") == (None, [MISSING_FILE])


def test_unicode_paths(tmp_path: Path, digit_images) -> None:
    root = tmp_path / "données"
    write_digit(root / "chat 🐱" / "été.png", digit_images[0][0])
    write_digit(root / "犬" / "画像.png", digit_images[0][1])
    table = load_source(SourceConfig(kind="folder", path=root))
    assert set(table.samples["label"]) == {"chat 🐱", "犬"}
    image, notes = load_image(table.samples.loc["犬/画像.png", "filepath"])
    assert image is not None and notes == []
