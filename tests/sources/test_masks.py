"""The masks source on real image files with hand-written index, palette and RGB masks, and the bad inputs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from audit.config import SourceConfig
from audit.sources import SourceError, load_source
from audit.sources.masks import (
    EMPTY_MASK,
    IGNORE,
    UNLABELLED_MASK,
    MaskError,
    iter_annotator_masks,
    iter_masks,
    load_masks,
    read_class_map,
    read_mask,
    spec_of,
)

WIDTH, HEIGHT = 16, 12


def photo_crop(index: int) -> Image.Image:
    """A real photo crop (scikit-image's camera), WIDTH x HEIGHT."""
    from skimage.data import camera

    pixels = camera()[index * HEIGHT:(index + 1) * HEIGHT, 100:100 + WIDTH]
    return Image.fromarray(pixels, mode="L")


def index_mask(boxes: list[tuple[int, int, int, int, int]], fill: int = 0, size=(HEIGHT, WIDTH)) -> np.ndarray:
    """A mask of ``fill`` with each ``(row0, row1, col0, col1, value)`` rectangle painted ``value``."""
    mask = np.full(size, fill, np.uint8)
    for r0, r1, c0, c1, value in boxes:
        mask[r0:r1, c0:c1] = value
    return mask


@pytest.fixture()
def dataset(tmp_path: Path) -> Path:
    """images/{a,b,c}.png, masks/ index PNGs, annotators alice and bob, classes.yaml (0 background, 1 cat, 2 dog)."""
    root = tmp_path / "data"
    for i, name in enumerate("abc"):
        (root / "images").mkdir(parents=True, exist_ok=True)
        photo_crop(i).save(root / "images" / f"{name}.png")
    shipped = {
        "a": index_mask([(0, 4, 0, 4, 1), (6, 10, 8, 14, 2)]),
        "b": index_mask([]),  # all background: an empty mask
        "c": index_mask([(0, 2, 0, 2, 1)], fill=255),  # mostly unlabelled
    }
    for folder, masks in {"masks": shipped, "alice": shipped, "bob": {"a": shipped["a"], "b": shipped["b"]}}.items():
        (root / folder).mkdir(parents=True, exist_ok=True)
        for name, mask in masks.items():
            Image.fromarray(mask, mode="L").save(root / folder / f"{name}.png")
    (root / "classes.yaml").write_text("0: background\n1: cat\n2: dog\n")
    return root


def test_index_masks_load_with_annotators_and_problem_codes(dataset: Path) -> None:
    config = SourceConfig(kind="masks", path=dataset / "images", masks=dataset / "masks",
                          class_map=dataset / "classes.yaml",
                          annotator_files={"alice": dataset / "alice", "bob": dataset / "bob"})
    table = load_source(config)
    samples = table.samples
    assert list(samples.index) == ["a.png", "b.png", "c.png"]
    assert samples.loc["a.png", "mask"] == str((dataset / "masks" / "a.png").resolve())
    assert samples["readable"].all()
    assert samples.loc["a.png", "problems"] == ""
    assert samples.loc["b.png", "problems"] == EMPTY_MASK
    # Mask c has two cat pixels, the rest 255 = unlabelled: not empty.
    assert samples.loc["c.png", "problems"] == ""
    assert table.class_names == ["background", "cat", "dog"]
    long = table.mask_annotations
    assert sorted(zip(long["sample_id"], long["annotator"], strict=True)) == [
        ("a.png", "alice"), ("a.png", "bob"), ("b.png", "alice"), ("b.png", "bob"), ("c.png", "alice")]
    spec = spec_of(table)
    assert spec.classes == ("background", "cat", "dog") and spec.background == 0
    codes = read_mask(samples.loc["c.png", "mask"], spec)
    assert (codes == IGNORE).sum() == WIDTH * HEIGHT - 4 and (codes == 1).sum() == 4


def test_masks_are_decoded_one_at_a_time(dataset: Path) -> None:
    table = load_masks(dataset / "images", dataset / "classes.yaml", masks=dataset / "masks",
                       annotator_masks={"alice": dataset / "alice", "bob": dataset / "bob"}, scan=False)
    spec = spec_of(table)
    stream = iter_masks(table.samples["mask"], spec)
    sample_id, first = next(stream)  # a generator: nothing else is decoded yet
    assert sample_id == "a.png"
    assert np.bincount(first.ravel() + 1).tolist() == [0, 12 * 16 - 16 - 24, 16, 24]
    per_image = dict(iter_annotator_masks(table.mask_annotations, spec, ["a.png", "c.png", "zzz"]))
    assert sorted(per_image["a.png"]) == ["alice", "bob"] and list(per_image["c.png"]) == ["alice"]
    assert per_image["zzz"] == {}


def test_unlabelled_mask_code(tmp_path: Path) -> None:
    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    photo_crop(0).save(tmp_path / "images" / "x.png")
    Image.fromarray(np.full((HEIGHT, WIDTH), 255, np.uint8)).save(tmp_path / "masks" / "x.png")
    (tmp_path / "classes.json").write_text('{"0": "background", "1": "cat"}')
    table = load_source(SourceConfig(kind="masks", path=tmp_path / "images", masks=tmp_path / "masks",
                                     class_map=tmp_path / "classes.json"))
    assert table.samples.loc["x.png", "problems"] == f"{EMPTY_MASK};{UNLABELLED_MASK}"


def test_palette_png_with_colour_map(tmp_path: Path) -> None:
    """A palette PNG is resolved through its palette when the map is colour -> class."""
    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    photo_crop(1).save(tmp_path / "images" / "p.png")
    indices = index_mask([(0, 3, 0, 5, 1), (5, 12, 10, 16, 2)])
    palette = Image.fromarray(indices, mode="P")
    palette.putpalette([0, 0, 0, 255, 0, 0, 0, 128, 255] + [0] * (256 * 3 - 9))
    palette.save(tmp_path / "masks" / "p.png")
    (tmp_path / "colours.yaml").write_text('"#000000": background\n"255,0,0": car\n"(0, 128, 255)": sky\n')
    table = load_source(SourceConfig(kind="masks", path=tmp_path / "images", masks=tmp_path / "masks",
                                     class_map=tmp_path / "colours.yaml"))
    spec = spec_of(table)
    assert spec.kind == "colour" and spec.classes == ("background", "car", "sky")
    codes = read_mask(table.samples.loc["p.png", "mask"], spec)
    assert (codes == 1).sum() == 15 and (codes == 2).sum() == 42 and (codes == 0).sum() == 192 - 57


def test_palette_png_with_index_map_reads_palette_indices(tmp_path: Path) -> None:
    """Pascal VOC style: the palette index is the class; 255 (the VOC border colour) is unlabelled."""
    indices = index_mask([(0, 2, 0, 2, 15), (3, 4, 0, 16, 255)])
    file = tmp_path / "voc.png"
    image = Image.fromarray(indices, mode="P")
    image.putpalette([(i * 37) % 256 for i in range(768)])
    image.save(file)
    (tmp_path / "voc.yaml").write_text("0: background\n15: person\n")
    codes = read_mask(file, read_class_map(tmp_path / "voc.yaml"))
    assert (codes == 1).sum() == 4 and (codes == IGNORE).sum() == 16 and (codes == 0).sum() == 192 - 20


def test_rgb_mask_with_csv_colour_map_and_ignore_colour(tmp_path: Path) -> None:
    rgb = np.zeros((HEIGHT, WIDTH, 3), np.uint8)
    rgb[:4, :4] = (10, 200, 30)
    rgb[-1] = (224, 224, 192)
    file = tmp_path / "m.png"
    Image.fromarray(rgb, mode="RGB").save(file)
    (tmp_path / "map.csv").write_text("r,g,b,name\n0,0,0,background\n10,200,30,tree\n224,224,192,ignore\n")
    spec = read_class_map(tmp_path / "map.csv")
    assert spec.classes == ("background", "tree") and spec.ignore_colours == ((224, 224, 192),)
    codes = read_mask(file, spec)
    assert (codes == 1).sum() == 16 and (codes == IGNORE).sum() == WIDTH and (codes == 0).sum() == 192 - 32


def test_manifest_with_mask_column(dataset: Path) -> None:
    manifest = dataset / "manifest.csv"
    pd.DataFrame({"filepath": ["images/a.png", "images/b.png"], "mask": ["masks/a.png", "masks/b.png"],
                  "split": ["train", "val"]}).to_csv(manifest, index=False)
    table = load_source(SourceConfig(kind="masks", path=manifest, class_map=dataset / "classes.yaml"))
    assert list(table.samples.index) == ["images/a.png", "images/b.png"]
    assert table.samples.loc["images/b.png", "mask"] == str((dataset / "masks" / "b.png").resolve())
    assert table.samples.loc["images/b.png", "split"] == "val"
    assert table.samples.loc["images/b.png", "problems"] == EMPTY_MASK


def test_size_mismatch_names_both_files(dataset: Path) -> None:
    Image.fromarray(np.zeros((HEIGHT, WIDTH + 1), np.uint8)).save(dataset / "bob" / "a.png")
    with pytest.raises(MaskError, match=r"bob.a\.png \(annotator 'bob'\) is 17x12 but its image a\.png is 16x12"):
        load_masks(dataset / "images", dataset / "classes.yaml", masks=dataset / "masks",
                   annotator_masks={"bob": dataset / "bob"})


def test_unknown_index_names_file_value_and_pixel(dataset: Path) -> None:
    Image.fromarray(index_mask([(2, 3, 5, 7, 7)])).save(dataset / "masks" / "b.png")
    with pytest.raises(MaskError, match=r"masks.b\.png has value\(s\) the class map .*classes\.yaml does not know: "
                                        r"7 \(2 px\); first at pixel \(x=5, y=2\)"):
        load_source(SourceConfig(kind="masks", path=dataset / "images", masks=dataset / "masks",
                                 class_map=dataset / "classes.yaml"))


def test_unknown_colour_names_it(tmp_path: Path) -> None:
    rgb = np.zeros((4, 4, 3), np.uint8)
    rgb[1, 2] = (255, 0, 255)
    Image.fromarray(rgb, mode="RGB").save(tmp_path / "m.png")
    (tmp_path / "map.yaml").write_text('"#000000": background\n')
    with pytest.raises(MaskError, match=r"m\.png has colour\(s\) .* #ff00ff \(1 px\); first at pixel \(x=2, y=1\)"):
        read_mask(tmp_path / "m.png", read_class_map(tmp_path / "map.yaml"))


def test_colour_mask_with_index_map_is_refused(tmp_path: Path) -> None:
    rgb = np.zeros((4, 4, 3), np.uint8)
    rgb[0, 0] = (1, 2, 3)
    Image.fromarray(rgb, mode="RGB").save(tmp_path / "m.png")
    (tmp_path / "map.yaml").write_text("0: background\n")
    with pytest.raises(MaskError, match=r"m\.png is a colour \(RGB\) image but the class map"):
        read_mask(tmp_path / "m.png", read_class_map(tmp_path / "map.yaml"))


def test_missing_mask_names_image_and_expected_file(dataset: Path) -> None:
    (dataset / "masks" / "c.png").unlink()
    with pytest.raises(MaskError, match=r"1 image\(s\) have no mask in .*masks: e\.g\. image .*c\.png needs "
                                        r".*masks.c\.png"):
        load_source(SourceConfig(kind="masks", path=dataset / "images", masks=dataset / "masks",
                                 class_map=dataset / "classes.yaml"))


def test_manifest_mask_that_does_not_exist(dataset: Path) -> None:
    manifest = dataset / "manifest.csv"
    pd.DataFrame({"filepath": ["images/a.png"], "mask": ["masks/nope.png"]}).to_csv(manifest, index=False)
    with pytest.raises(MaskError, match=r"images.a\.png needs mask .*nope\.png, which does not exist"):
        load_masks(manifest, dataset / "classes.yaml")


def test_annotator_folder_without_any_mask(dataset: Path) -> None:
    (dataset / "empty").mkdir()
    with pytest.raises(MaskError, match=r"annotator 'carol'.s mask folder .*empty has a mask for none of the 3 images"):
        load_masks(dataset / "images", dataset / "classes.yaml", masks=dataset / "masks",
                   annotator_masks={"carol": dataset / "empty"})


def test_mask_folders_inside_the_image_root_are_not_images(tmp_path: Path) -> None:
    """root/train/x.png with root/masks/train/x.png: the mask folder is skipped, the split comes from the path."""
    (tmp_path / "train").mkdir()
    (tmp_path / "masks" / "train").mkdir(parents=True)
    photo_crop(0).save(tmp_path / "train" / "x.png")
    Image.fromarray(index_mask([(0, 2, 0, 2, 1)])).save(tmp_path / "masks" / "train" / "x.png")
    (tmp_path / "classes.yaml").write_text("0: background\n1: cat\n")
    table = load_masks(tmp_path, tmp_path / "classes.yaml", masks=tmp_path / "masks")
    assert list(table.samples.index) == ["train/x.png"]
    assert table.samples.loc["train/x.png", "split"] == "train"
    assert table.samples.loc["train/x.png", "mask"] == str((tmp_path / "masks" / "train" / "x.png").resolve())


@pytest.mark.parametrize(("text", "message"), [
    ("0: background\n255: cat\n", "gives value 255 to class 'cat', but 255 is the ignore_index"),
    ("0: cat\n1: cat\n", "class name 'cat' is given to more than one value"),
    ('0: background\n"#ff0000": cat\n', "mixes mask values and colours"),
    ('"#ff00": cat\n', "is not a colour"),
    ("just text\n", "must hold a mapping"),
])
def test_bad_class_maps(tmp_path: Path, text: str, message: str) -> None:
    (tmp_path / "map.yaml").write_text(text)
    with pytest.raises(SourceError, match=message):
        read_class_map(tmp_path / "map.yaml")


def test_class_map_list_and_ignore_entry(tmp_path: Path) -> None:
    (tmp_path / "list.yaml").write_text("classes: [background, road, car]\nignore_index: 9\n")
    spec = read_class_map(tmp_path / "list.yaml")
    assert spec.values == (0, 1, 2) and spec.ignore_values == (9,)
    (tmp_path / "map.yaml").write_text("0: background\n1: road\n4: ignore\n")
    spec = read_class_map(tmp_path / "map.yaml", ignore_index=None)
    assert spec.classes == ("background", "road") and spec.ignore_values == (4,)


def test_config_needs_a_class_map(dataset: Path) -> None:
    with pytest.raises(SourceError, match="needs a class_map"):
        load_source(SourceConfig(kind="masks", path=dataset / "images", masks=dataset / "masks"))


@pytest.mark.fiftyone
def test_fiftyone_segmentation_fields(dataset: Path, tmp_path: Path) -> None:
    """Shipped masks on disk (``mask_path``), an annotator's masks in the database (``mask``, exported to PNGs one
    at a time), classes from the dataset's ``mask_targets``."""
    import fiftyone as fo

    from tests.fiftyone_helpers import unique_name

    fo_dataset = fo.Dataset(unique_name("la-masks"))
    try:
        fo_dataset.mask_targets = {"shipped": {0: "background", 1: "cat", 2: "dog"}}
        samples = []
        for name in "ab":
            sample = fo.Sample(filepath=str(dataset / "images" / f"{name}.png"), tags=["train"])
            sample["shipped"] = fo.Segmentation(mask_path=str(dataset / "masks" / f"{name}.png"))
            if name == "a":
                sample["ann"] = fo.Segmentation(mask=np.asarray(Image.open(dataset / "alice" / "a.png")))
            samples.append(sample)
        fo_dataset.add_samples(samples)
        table = load_source(SourceConfig(kind="masks", dataset=fo_dataset.name, mask_field="shipped",
                                         annotator_fields=["ann"]))
        spec = spec_of(table)
        assert spec.classes == ("background", "cat", "dog") and spec.source.startswith("FiftyOne mask_targets")
        assert sorted(table.samples["mask"]) == sorted(str((dataset / "masks" / f"{n}.png").resolve()) for n in "ab")
        assert set(table.samples["split"]) == {"train"}
        long = table.mask_annotations
        assert len(long) == 1 and long.iloc[0]["annotator"] == "ann"
        exported = read_mask(long.iloc[0]["mask_path"], spec)
        assert (exported == read_mask(dataset / "alice" / "a.png", spec)).all()
        assert table.samples.set_index("filepath").loc[str(dataset / "images" / "b.png"), "problems"] == EMPTY_MASK
    finally:
        fo_dataset.delete()
