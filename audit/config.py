"""One config model for a run, read from a file (TOML, YAML, or ``[tool.label-audit]`` in pyproject.toml) and
overridden by command-line flags, so a weekly run is repeatable from a committed file.

Example ``label-audit.yaml``::

    source: {kind: folder, path: data/train}
    embedder: {kind: clip, model: ViT-B-32, pretrained: laion2b_s34b_b79k}
    checks:
      mistakes: {folds: 5}
    gate:
      max_issue_rate: 0.05
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator


class ConfigError(ValueError):
    """The config file or flags are invalid; the message says which key and why."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class SourceConfig(_Strict):
    """Where the labelled images come from."""

    kind: str = Field(
        description="a registered source format (see audit/sources/): folder: one sub-folder per class; "
        "manifest: CSV/Parquet with filepath,label[,split]; fiftyone: an existing FiftyOne dataset; "
        "coco, yolo, voc, cvat, labelstudio: object (box / instance mask) annotations"
    )
    path: Path | None = Field(None, description="image folder root, or the manifest file")
    annotations: Path | None = Field(
        None, description="optional long-format CSV/Parquet with columns sample,annotator,label"
    )
    dataset: str | None = Field(None, description="FiftyOne dataset name (kind=fiftyone)")
    label_field: str = Field("ground_truth", description="FiftyOne Classification field holding the label")
    annotator_fields: list[str] = Field(
        default_factory=list, description="FiftyOne Classification fields, one per annotator"
    )
    split_field: str | None = Field(None, description="FiftyOne field holding the split (default: tags)")
    images: Path | None = Field(
        None, description="image root of an object source (coco, yolo, voc, cvat, labelstudio) when the images "
        "are not where the format's own layout puts them"
    )
    annotator_files: dict[str, Path] = Field(
        default_factory=dict, description="one annotation file (masks: folder) per annotator, name -> path, in "
        "the source's own format; object sources give those objects annotator = name"
    )
    masks: Path | None = Field(
        None, description="kind=masks: folder of the shipped masks, <masks>/<image path relative to the image "
        "root, suffix .png> (not needed when the manifest has a mask column); annotators' mask folders go in "
        "annotator_files"
    )
    class_map: Path | None = Field(
        None, description="kind=masks: YAML/JSON/CSV class map, mask index -> class name, or colour -> class name "
        "for palette/RGB masks (a FiftyOne source may use the field's mask_targets instead)"
    )
    ignore_index: int | None = Field(255, description="kind=masks: mask index meaning unlabelled (null: none)")
    mask_field: str | None = Field(
        None, description="kind=masks with a FiftyOne dataset: Segmentation field of the shipped masks "
        "(annotators: annotator_fields)"
    )

    @model_validator(mode="after")
    def _needs(self) -> SourceConfig:
        import audit.sources  # noqa: F401  (registers the formats)
        from audit.sources.table import FORMATS  # lazy: sources need this module only for type hints

        form = FORMATS.get(self.kind)
        if form is None:
            raise ValueError(f"unknown source kind {self.kind!r}; known: {', '.join(sorted(FORMATS))}")
        # A need "a|b" is met by either field (an object source needs a path or annotator files).
        missing = [name for name in form.needs if not any(getattr(self, n) for n in name.split("|"))]
        if missing:
            what = " and ".join("a dataset name" if name == "dataset" else f"a {name.replace('|', ' or ')}"
                                for name in missing)
            raise ValueError(f"source kind {self.kind!r} needs {what}")
        return self


class EmbedderConfig(_Strict):
    """How images become vectors."""

    kind: Literal["clip", "pixels", "precomputed", "auto", "none"] = Field(
        "clip",
        description="clip: open_clip; pixels: downsampled grey pixels (honest offline baseline); "
        "precomputed: your own vectors (.npy or FiftyOne field); auto: clip when its weights are available "
        "offline, else pixels (said loudly in the results); none: no embeddings (bring pred_probs; no map)",
    )
    model: str = Field("ViT-B-32", description="open_clip model name")
    pretrained: str | None = Field(
        "laion2b_s34b_b79k", description="open_clip pretrained tag, or a local checkpoint file path"
    )
    device: str = Field("auto", description="auto (cuda when available), cpu or cuda[:N]")
    precision: Literal["auto", "fp32", "bf16", "fp16"] = Field(
        "auto", description="auto: fp16 on GPU, bf16 weights on CPUs with native bf16 (AMX/AVX512-BF16), else fp32"
    )
    batch_size: int = Field(64, ge=1)
    workers: int | None = Field(None, ge=0, description="image decoding workers (default: CPU count)")
    cache_dir: Path | None = Field(None, description="embedding cache (default ~/.cache/label-audit/embeddings)")
    use_cache: bool = True
    path: Path | None = Field(None, description="precomputed embeddings .npy, rows in sample order")
    field: str | None = Field(None, description="precomputed embeddings from this FiftyOne field")
    pixel_size: int = Field(16, ge=4, le=128, description="side of the pixels embedder's square grid")
    flush_seconds: float = Field(30.0, gt=0, description="save finished embeddings to the cache at least this "
                                 "often (seconds), so a killed run loses at most this much work")
    engine: Literal["local", "ray"] = Field(
        "local", description="local: embed on this machine; ray: Ray Data actors on a Ray cluster (one model per "
        "actor, a GPU each when the cluster has GPUs), same vectors and cache"
    )
    ray_address: str | None = Field(
        None, description="engine=ray: the cluster: auto (this node's cluster), host:6379, ray://host:10001 (needs "
        "ray[client]); none: RAY_ADDRESS, else a new local Ray instance"
    )


class ProjectionConfig(_Strict):
    n_neighbors: int = Field(15, ge=2)
    min_dist: float = Field(0.1, ge=0.0)
    seed: int = 0
    enabled: bool = True
    reuse: bool = Field(True, description="reuse the previous run's map: its coordinates when the images did not "
                        "change, its UMAP model's transform for new images (so last week's map stays comparable)")


class PredProbsConfig(_Strict):
    """Bring your own out-of-sample predicted probabilities instead of the cross-validated classifier."""

    path: Path | None = Field(None, description=".npy (n, k), rows in sample order, columns in sorted class order")
    field: str | None = Field(None, description="FiftyOne Classification field whose logits/probs to use")


class ObjectPredictionsConfig(_Strict):
    """A detector's boxes with scores, for the object checks that need predictions (detection datasets)."""

    path: Path | None = Field(None, description="COCO results JSON: [{image_id, category_id, bbox, score}, ...]")
    field: str | None = Field(None, description="FiftyOne Detections field holding the detector's boxes")


class AuditConfig(_Strict):
    """A whole run."""

    source: SourceConfig
    embedder: EmbedderConfig = Field(default_factory=EmbedderConfig)
    projection: ProjectionConfig = Field(default_factory=ProjectionConfig)
    pred_probs: PredProbsConfig = Field(default_factory=PredProbsConfig)
    object_predictions: ObjectPredictionsConfig = Field(default_factory=ObjectPredictionsConfig)
    mask_probs: Path | None = Field(
        None, description="segmentation: out-of-sample per-pixel class probabilities, one (N, K, H, W) .npy (rows in "
        "sample order, channels in the class map's order, memory-mapped) or a folder of <sample id>.npy (K, H, W)"
    )
    checks: dict[str, dict[str, Any]] = Field(
        default_factory=dict, description="per-check parameters, e.g. {mistakes: {folds: 5}}"
    )
    disabled_checks: list[str] = Field(default_factory=list)
    gate: dict[str, Any] = Field(default_factory=dict, description="release thresholds (see `label-audit gate`)")
    output_dir: Path = Path("reports")
    run_name: str | None = None
    baseline: Path | Literal["auto"] | None = Field(
        None, description="previous run folder to compare with, or auto: the latest earlier run of the same "
        "dataset in output_dir (the first run of a dataset then skips the rules that need a baseline)")
    report: bool = True
    seed: int = 0


def read_config_file(path: str | Path) -> dict[str, Any]:
    """Read a TOML/YAML file into a plain dict; pyproject.toml contributes its ``[tool.label-audit]`` table."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    text = path.read_text(encoding="utf-8")
    try:
        if path.suffix in (".yaml", ".yml"):
            data = yaml.safe_load(text) or {}
        elif path.suffix == ".toml":
            data = tomllib.loads(text)
            if path.name == "pyproject.toml":
                data = data.get("tool", {}).get("label-audit", {})
        else:
            raise ConfigError(f"config file {path} must be .toml, .yaml or .yml")
    except (yaml.YAMLError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"config file {path} is not valid {path.suffix[1:].upper()}: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping at the top level")
    return data


def deep_merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """Merge ``override`` into ``base`` recursively; None values in ``override`` leave ``base`` alone."""
    out = dict(base)
    for key, value in override.items():
        if value is None:
            continue
        if isinstance(value, dict):
            out[key] = deep_merge(out[key] if isinstance(out.get(key), dict) else {}, value)
        else:
            out[key] = value
    return out


def build_config(file: str | Path | None = None, overrides: dict[str, Any] | None = None) -> AuditConfig:
    """The run's config: file first, then overrides (e.g. CLI flags); errors name the offending key."""
    data = read_config_file(file) if file else {}
    data = deep_merge(data, overrides or {})
    if "source" not in data:
        raise ConfigError("no source given: pass --folder, --manifest or --fiftyone-dataset, or a config file")
    try:
        return AuditConfig.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "config"
        raise ConfigError(f"invalid config at {where}: {first['msg']}") from exc
