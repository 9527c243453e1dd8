"""Ground truth for the object-source tests: real photos with real digit shapes pasted on, as a FiftyOne dataset,
exported by FiftyOne's own exporters (COCO, YOLOv5, VOC, CVAT for images), plus a Label Studio export.

Every expected value comes from here, derived from the masks the test pastes (boxes are the masks' tight pixel
bounds, computed with numpy), never from the readers under test. Images have power-of-two sides, so FiftyOne's
relative boxes are exact binary fractions and its exporters round-trip them without error.

Shapes: sklearn's real 8x8 digit scans, thresholded and enlarged 4x; only one-piece, hole-free digits are used,
because COCO polygons (and YOLO segments) cannot represent holes and would blur the comparison.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from tests.fiftyone_helpers import unique_name

CLASSES = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
SCALE = 4
# name, scikit-image photo, (width, height), split, objects as (digit, x, y, iscrowd)
LAYOUT = [
    ("astronaut.png", "astronaut", (128, 128), "train", [(1, 10, 12, False), (7, 70, 60, False), (2, 40, 96, False)]),
    ("coffee.jpg", "coffee", (256, 128), "train", [(3, 20, 20, False), (5, 150, 70, True)]),
    ("chelsea.png", "chelsea", (128, 64), "train", [(4, 90, 20, False)]),
    ("rocket.jpg", "rocket", (64, 128), "val", [(1, 10, 30, False), (2, 30, 90, False)]),
    ("camera.png", "camera", (128, 128), "val", [(7, 50, 50, False)]),
    ("coins.png", "coins", (128, 128), "val", []),
]


@dataclass
class TrueObject:
    image: str
    label: str
    box: tuple[int, int, int, int]  # x, y, w, h in pixels: the mask's tight bounds
    mask: np.ndarray  # (height, width) bool, the whole image
    iscrowd: bool


@dataclass
class ObjectData:
    root: Path
    images: dict[str, Path]  # file name -> photo on disk
    sizes: dict[str, tuple[int, int]]  # file name -> (width, height)
    splits: dict[str, str]
    truth: list[TrueObject]
    exports: dict[str, Path] = field(default_factory=dict)
    dataset_name: str | None = None

    def objects_of(self, image: str) -> list[TrueObject]:
        return [o for o in self.truth if o.image == image]


def digit_shapes() -> dict[int, np.ndarray]:
    """One real, one-piece, hole-free digit mask per class (the first such scan of each class)."""
    from scipy import ndimage
    from sklearn.datasets import load_digits

    digits = load_digits()
    shapes: dict[int, np.ndarray] = {}
    for pixels, target in zip(digits.images, digits.target, strict=True):
        if int(target) in shapes:
            continue
        mask = np.kron(pixels >= 8, np.ones((SCALE, SCALE), dtype=bool))
        if ndimage.label(mask)[1] == 1 and np.array_equal(ndimage.binary_fill_holes(mask), mask):
            shapes[int(target)] = mask
    return shapes


def tight_box(mask: np.ndarray) -> tuple[int, int, int, int]:
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    return int(cols[0]), int(rows[0]), int(cols[-1] - cols[0] + 1), int(rows[-1] - rows[0] + 1)


def build_photos(folder: Path) -> ObjectData:
    """Write the photos with their digits pasted (white) and return the ground truth."""
    import skimage.data

    shapes = digit_shapes()
    folder.mkdir(parents=True, exist_ok=True)
    images, sizes, splits, truth = {}, {}, {}, []
    for name, photo, (width, height), split, objects in LAYOUT:
        pixels = np.asarray(getattr(skimage.data, photo)())
        image = Image.fromarray(pixels).convert("RGB").resize((width, height), Image.Resampling.BILINEAR)
        canvas = np.asarray(image).copy()
        for digit, x, y, crowd in objects:
            shape = shapes[digit]
            mask = np.zeros((height, width), dtype=bool)
            mask[y:y + shape.shape[0], x:x + shape.shape[1]] = shape
            canvas[mask] = 255
            truth.append(TrueObject(name, CLASSES[digit], tight_box(mask), mask, crowd))
        Image.fromarray(canvas).save(folder / name, quality=95)
        images[name], sizes[name], splits[name] = folder / name, (width, height), split
    return ObjectData(folder, images, sizes, splits, truth)


def fiftyone_dataset(data: ObjectData):
    """The ground truth as a FiftyOne dataset: ``gt`` Detections with instance masks (``iscrowd`` attribute),
    ``gt_polygons`` (the same masks as Polylines, for CVAT polygons), ``scene`` (an image tag for CVAT), a second
    annotator ``ann_b`` (first object of each image moved 6 px right, last object of astronaut missing) and
    ``predictions`` (the truth with confidences)."""
    import fiftyone as fo

    dataset = fo.Dataset(unique_name("la-objects"))
    samples = []
    for name, (width, height) in data.sizes.items():
        sample = fo.Sample(filepath=str(data.images[name]), tags=[data.splits[name]])
        detections, moved, predicted = [], [], []
        for k, obj in enumerate(data.objects_of(name)):
            x, y, w, h = obj.box
            relative = [x / width, y / height, w / width, h / height]
            crop = obj.mask[y:y + h, x:x + w]
            detections.append(fo.Detection(label=obj.label, bounding_box=relative, mask=crop, iscrowd=int(obj.iscrowd)))
            if not (name == "astronaut.png" and k == 2):
                shift = 6 / width if k == 0 else 0.0
                moved.append(fo.Detection(label=obj.label, bounding_box=[relative[0] + shift, *relative[1:]]))
            predicted.append(fo.Detection(label=obj.label, bounding_box=relative, confidence=0.5 + 0.05 * k))
        sample["gt"] = fo.Detections(detections=detections)
        sample["gt_polygons"] = sample["gt"].to_polylines(tolerance=0)
        sample["ann_b"] = fo.Detections(detections=moved)
        sample["predictions"] = fo.Detections(detections=predicted)
        sample["scene"] = fo.Classification(label=f"scene_{data.splits[name]}")
        samples.append(sample)
    dataset.add_samples(samples)
    dataset.compute_metadata()
    return dataset


def export_all(dataset, data: ObjectData, root: Path) -> dict[str, Path]:
    """Every format through FiftyOne's own exporters, laid out as users get them."""
    import fiftyone as fo

    out: dict[str, Path] = {}
    for split in ("train", "val"):
        view = dataset.match_tags(split)
        view.export(dataset_type=fo.types.COCODetectionDataset, label_field="gt", data_path=str(root / "coco/images"),
                    labels_path=str(root / f"coco/annotations/instances_{split}.json"), classes=CLASSES)
        view.export(dataset_type=fo.types.COCODetectionDataset, label_field="ann_b", export_media=False,
                    labels_path=str(root / f"coco/annotations/bob_{split}.json"), classes=CLASSES)
        view.export(export_dir=str(root / "yolo"), dataset_type=fo.types.YOLOv5Dataset, label_field="gt", split=split,
                    classes=CLASSES)
        view.export(export_dir=str(root / "yolo_seg"), dataset_type=fo.types.YOLOv5Dataset, label_field="gt",
                    split=split, classes=CLASSES, use_masks=True, tolerance=0)
        view.export(dataset_type=fo.types.VOCDetectionDataset, label_field="gt",
                    data_path=str(root / "voc/JPEGImages"), labels_path=str(root / "voc/Annotations"))
        sets = root / "voc/ImageSets/Main"
        sets.mkdir(parents=True, exist_ok=True)
        (sets / f"{split}.txt").write_text("".join(f"{Path(p).stem}\n" for p in view.values("filepath")))
    dataset.export(export_dir=str(root / "voc_plain"), dataset_type=fo.types.VOCDetectionDataset, label_field="gt")
    dataset.export(export_dir=str(root / "cvat"), dataset_type=fo.types.CVATImageDataset,
                   label_field={"gt": "boxes", "gt_polygons": "polygons", "scene": "tags"})
    out.update({"coco_train": root / "coco/annotations/instances_train.json",
                "coco_val": root / "coco/annotations/instances_val.json",
                "coco_bob_train": root / "coco/annotations/bob_train.json", "yolo": root / "yolo",
                "yolo_seg": root / "yolo_seg", "voc": root / "voc", "voc_plain": root / "voc_plain",
                "cvat": root / "cvat/labels.xml"})
    return out


_CACHE: dict[str, ObjectData] = {}


def photo_data(tmp_path_factory) -> ObjectData:
    """The photos and their ground truth only (no FiftyOne), built once per test session."""
    if "photos" not in _CACHE:
        _CACHE["photos"] = build_photos(tmp_path_factory.mktemp("object-photos"))
    return _CACHE["photos"]


def object_data(tmp_path_factory) -> ObjectData:
    """Build once per test session (each test module asks; the first pays): photos, dataset, exports."""
    if "data" not in _CACHE:
        data = photo_data(tmp_path_factory)
        dataset = fiftyone_dataset(data)
        data.dataset_name = dataset.name
        data.exports = export_all(dataset, data, tmp_path_factory.mktemp("object-exports"))
        _CACHE["data"] = data
    return _CACHE["data"]


def delete_dataset(data: ObjectData) -> None:
    import fiftyone as fo

    if data.dataset_name in fo.list_datasets():
        fo.load_dataset(data.dataset_name).delete()


# ------------------------------------------------------------------------------------------------ Label Studio


LS_CONFIG = """<View>
  <Image name="image" value="$image"/>
  <RectangleLabels name="box" toName="image">{labels}</RectangleLabels>
  <PolygonLabels name="poly" toName="image">{labels}</PolygonLabels>
  <BrushLabels name="brush" toName="image">{labels}</BrushLabels>
</View>""".format(labels="".join(f'<Label value="{c}"/>' for c in CLASSES))


def upload_name(name: str) -> str:
    """The name Label Studio gives an uploaded file: an 8-hex-digit prefix."""
    import hashlib

    return f"{hashlib.sha1(name.encode()).hexdigest()[:8]}-{name}"


def _percent(value: float, size: int) -> float:
    return value / size * 100.0


def ls_regions(obj: TrueObject, size: tuple[int, int], kind: str, region_id: str) -> dict:
    """One result of Label Studio's export format for ``obj``: rectangle, polygon or brush (Label Studio RLE via
    the SDK's own encoder, ``label_studio_sdk.converter.brush.mask2rle``)."""
    from label_studio_sdk.converter.brush import mask2rle

    width, height = size
    x, y, w, h = obj.box
    base = {"id": region_id, "from_name": {"rect": "box", "poly": "poly", "brush": "brush"}[kind],
            "to_name": "image", "original_width": width, "original_height": height, "image_rotation": 0,
            "origin": "manual"}
    if kind == "rect":
        value = {"x": _percent(x, width), "y": _percent(y, height), "width": _percent(w, width),
                 "height": _percent(h, height), "rotation": 0, "rectanglelabels": [obj.label]}
        return {**base, "type": "rectanglelabels", "value": value}
    if kind == "poly":
        corners = [(x, y), (x + w, y), (x + w, y + h), (x, y + h)]
        value = {"points": [[_percent(px, width), _percent(py, height)] for px, py in corners], "closed": True,
                 "polygonlabels": [obj.label]}
        return {**base, "type": "polygonlabels", "value": value}
    rle = mask2rle((obj.mask * 255).astype(np.uint8))
    return {**base, "type": "brushlabels", "value": {"format": "rle", "rle": [int(v) for v in rle],
                                                     "brushlabels": [obj.label]}}


def ls_export(data: ObjectData, url_of) -> list[dict]:
    """A Label Studio JSON export as the documented format has it: per task ``id``, ``data.image``,
    ``annotations`` (two annotators: user 1 draws rectangles, user 2 draws polygons, or brush masks for crowd
    objects; user 2 never saw coins.png), an empty ``predictions``."""
    tasks = []
    for t, (name, size) in enumerate(data.sizes.items(), start=1):
        annotations = []
        for user in (1, 2):
            if user == 2 and name == "coins.png":
                continue
            result = []
            for k, obj in enumerate(data.objects_of(name)):
                kind = "rect" if user == 1 else ("brush" if obj.iscrowd else "poly")
                result.append(ls_regions(obj, size, kind, f"t{t}u{user}r{k}"))
            annotations.append({"id": 100 * t + user, "completed_by": user, "result": result, "was_cancelled": False,
                                "ground_truth": False, "created_at": "2024-05-01T10:00:00.000000Z",
                                "updated_at": "2024-05-01T10:00:00.000000Z", "lead_time": 12.5, "task": t,
                                "project": 1, "prediction": {}, "result_count": len(result),
                                "parent_prediction": None, "parent_annotation": None, "last_action": None})
        tasks.append({"id": t, "data": {"image": url_of(name)}, "annotations": annotations, "predictions": [],
                      "meta": {}, "created_at": "2024-05-01T09:00:00.000000Z",
                      "updated_at": "2024-05-01T10:00:00.000000Z", "inner_id": t, "total_annotations": 2,
                      "cancelled_annotations": 0, "total_predictions": 0, "comment_count": 0,
                      "unresolved_comment_count": 0, "last_comment_updated_at": None, "project": 1,
                      "updated_by": 1, "file_upload": upload_name(name), "comment_authors": []})
    return tasks


def write_ls_export(data: ObjectData, folder: Path) -> Path:
    """The export JSON with upload URLs (``/data/upload/1/<prefix>-name``) and the uploaded images beside it in
    ``images/`` under their upload names, as "JSON" export with images lays them out."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "images").mkdir(exist_ok=True)
    for name, path in data.images.items():
        shutil.copyfile(path, folder / "images" / upload_name(name))
    export = folder / "export.json"
    export.write_text(json.dumps(ls_export(data, lambda n: f"/data/upload/1/{upload_name(n)}"), indent=1))
    return export


# ------------------------------------------------------------------------------------------------ comparisons


def image_of(path: str) -> str:
    """The ground-truth image name of a file (Label Studio's upload prefix removed)."""
    name = Path(path).name
    return name.split("-", 1)[1] if len(name) > 9 and name[8] == "-" else name


def mask_iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else 1.0


def decode(counts: str, width: int, height: int) -> np.ndarray:
    """Our RLE string decoded by pycocotools directly (not through the code under test)."""
    from pycocotools import mask as mask_utils

    return mask_utils.decode({"size": [height, width], "counts": counts.encode("ascii")}).astype(bool)


def by_image_and_label(table, objects) -> dict[tuple[str, str], object]:
    """Loaded objects keyed by (ground-truth image name, class), checking there is one of each."""
    files = table.samples["filepath"]
    out = {}
    for _, row in objects.iterrows():
        key = (image_of(files[row["sample_id"]]), row["label"])
        assert key not in out, f"two objects for {key}"
        out[key] = row
    return out
