"""Embedders: open_clip (a tag, a checkpoint file or a config .json) and an honest pixel baseline.

An :class:`Embedder` is split into a per-image ``preprocess`` (run where images are decoded) and a batched
``forward``, so decoding overlaps the model; its ``identity`` (model, weights, precision, preprocessing) keys the
content cache. Missing CLIP weights are an error that says what to do; random weights are never used.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from audit.embeddings.cache import CACHE_FORMAT

if TYPE_CHECKING:
    from audit.config import EmbedderConfig


MISSING_WEIGHTS_ADVICE = (
    "Without internet, download them elsewhere and copy the Hugging Face cache (~/.cache/huggingface), or "
    "pass --pretrained /path/to/checkpoint.pt; or use --embedder pixels, or bring --embeddings FILE.npy")


class EmbedderError(RuntimeError):
    """The embedder cannot be built (weights unavailable, unknown model) or its inputs are unusable."""


@dataclass
class Embedder:
    """A named image -> vector function, split into a per-image ``preprocess`` (run in decoding workers) and a
    batched ``forward`` (run in the main process), so decoding overlaps the model."""

    kind: str
    name: str
    identity: dict[str, Any]
    preprocess: Callable[[Any], Any]
    forward: Callable[[Any], np.ndarray]
    dim: int
    draft_size: int | None = None
    note: str | None = None
    device: str = "cpu"

    @property
    def cache_key(self) -> str:
        blob = json.dumps({"format": CACHE_FORMAT, **self.identity}, sort_keys=True, default=str)
        return hashlib.sha256(blob.encode()).hexdigest()[:20]

    def describe(self) -> dict[str, Any]:
        return {"kind": self.kind, "name": self.name, "dim": self.dim, "note": self.note, **self.identity}


# --------------------------------------------------------------------------------------------- embedders


def cpu_has_native_bf16() -> bool:
    """AMX or AVX512-BF16: bf16 weights run ~4x faster than fp32 there, at cosine >= 0.999 to fp32."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "amx_bf16" in flags or "avx512_bf16" in flags


def resolve_device(device: str) -> str:
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise EmbedderError(f"device {device!r} requested but CUDA is not available; use --device cpu")
    return device


def resolve_precision(precision: str, device: str) -> str:
    if precision != "auto":
        if precision == "fp16" and not device.startswith("cuda"):
            raise EmbedderError("fp16 is for GPUs; on CPU use bf16 or fp32")
        return precision
    if device.startswith("cuda"):
        return "fp16"
    return "bf16" if cpu_has_native_bf16() else "fp32"


def clip_weights_available(model: str, pretrained: str | None) -> bool:
    """True when the weights can be had without the network: a local file, or a copy in the Hugging Face cache."""
    if not pretrained:
        return False
    if Path(pretrained).is_file():
        return True
    import open_clip
    from huggingface_hub import try_to_load_from_cache

    cfg = open_clip.get_pretrained_cfg(_model_name(model), pretrained)
    hub = cfg.get("hf_hub", "") if cfg else ""
    if not hub:
        return False
    repo_id = "/".join(hub.rstrip("/").split("/")[:2])
    for filename in ("open_clip_model.safetensors", "open_clip_pytorch_model.bin"):
        found = try_to_load_from_cache(repo_id, filename)
        if isinstance(found, str):
            return True
    return False


def hub_offline_reason(timeout: float = 2.0) -> str | None:
    """Why the Hugging Face Hub cannot be reached (``HF_HUB_OFFLINE`` set, or no connection within ``timeout``
    seconds), or None when it can. Checked before a download so an offline machine fails at once instead of
    after a minute of retries."""
    import os
    import socket
    from urllib.parse import urlparse

    if os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on"):
        return "HF_HUB_OFFLINE is set"
    endpoint = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    host, port = endpoint.hostname or "huggingface.co", endpoint.port or (443 if endpoint.scheme != "http" else 80)
    try:
        socket.create_connection((host, port), timeout=timeout).close()
    except OSError as exc:
        return f"{host} cannot be reached ({exc.strerror or exc})"
    return None


def _model_name(model: str) -> str:
    """A model given as a config .json is registered with open_clip under the file's stem."""
    path = Path(model)
    if path.suffix == ".json":
        import open_clip

        if not path.is_file():
            raise EmbedderError(f"model config {path} does not exist")
        open_clip.add_model_config(path)
        return path.stem
    return model


def _file_sha256(path: Path) -> str:
    with open(path, "rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def load_clip(model: str, pretrained: str | None, device: str = "auto", precision: str = "auto") -> Embedder:
    """open_clip image tower with named weights, a local checkpoint file, or the Hugging Face cache.

    Missing weights are an error that says what to do; random weights are never used in their place.
    """
    import open_clip

    name = _model_name(model)
    if name not in open_clip.list_models():
        raise EmbedderError(
            f"unknown open_clip model {model!r} (e.g. ViT-B-32, ViT-B-16, ViT-L-14; or a config .json)")
    if not pretrained:
        raise EmbedderError("CLIP needs weights: pass --pretrained TAG or a checkpoint; random weights are refused")
    checkpoint = Path(pretrained) if Path(pretrained).suffix in (".pt", ".pth", ".bin", ".safetensors") else None
    if checkpoint is not None and not checkpoint.is_file():
        raise EmbedderError(f"checkpoint file {checkpoint} does not exist")
    if checkpoint is None and pretrained not in open_clip.list_pretrained_tags_by_model(name):
        tags = ", ".join(open_clip.list_pretrained_tags_by_model(name)) or "none"
        raise EmbedderError(f"open_clip has no weights {pretrained!r} for {name} (known: {tags})")
    device = resolve_device(device)
    precision = resolve_precision(precision, device)
    if checkpoint is None and not clip_weights_available(model, pretrained):
        offline = hub_offline_reason()
        if offline is not None:  # fail now rather than after the hub client's retries
            raise EmbedderError(
                f"could not load CLIP weights {name}/{pretrained}: they are not in the local Hugging Face cache and "
                f"{offline}. " + MISSING_WEIGHTS_ADVICE)
    try:
        net, _, preprocess = open_clip.create_model_and_transforms(name, pretrained=str(checkpoint or pretrained),
                                                                    device=device)
    except Exception as exc:  # open_clip raises RuntimeError/HF errors/OSError for missing or broken weights
        raise EmbedderError(
            f"could not load CLIP weights {name}/{pretrained}: {str(exc).splitlines()[0][:200]}. "
            + MISSING_WEIGHTS_ADVICE
        ) from exc
    identity = {
        "model": name,
        "pretrained": None if checkpoint else pretrained,
        "checkpoint": str(checkpoint.resolve()) if checkpoint else None,
        "checkpoint_sha256": _file_sha256(checkpoint) if checkpoint else None,
    }
    weights = checkpoint.name if checkpoint else pretrained
    return clip_embedder(net, preprocess, name=f"open_clip {name} / {weights}", identity=identity,
                         device=device, precision=precision)


def clip_embedder(net, preprocess, name: str, identity: dict[str, Any], device: str = "auto",
                  precision: str = "auto", note: str | None = None) -> Embedder:
    """Wrap an open_clip model (or its image tower) and its transform as an :class:`Embedder`.

    The transform is split at its ``ToTensor``: decoding workers run the part before it (resize, crop; see
    :class:`_PixelStage`) and hand over small uint8 arrays; the float conversion and normalisation then run
    batched in ``forward`` (torchvision's float32 arithmetic), which is several times cheaper per image than
    torchvision's per-image tensor ops and moves 4x fewer bytes between processes and to a GPU. ``identity``
    names the weights (it keys the cache); device, precision and transform are added here. The model is
    converted in place.
    """
    import torch

    device = resolve_device(device)
    precision = resolve_precision(precision, device)
    visual = getattr(net, "visual", net).eval()
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]
    visual = visual.to(device=device, dtype=dtype)
    if device == "cpu":
        visual = visual.to(memory_format=torch.channels_last)
    split = split_clip_transform(preprocess)
    if split is not None:
        pil_stage, mean, std = split
        mean_t = torch.tensor(mean, dtype=torch.float32, device=device).view(1, -1, 1, 1)
        std_t = torch.tensor(std, dtype=torch.float32, device=device).view(1, -1, 1, 1)

    @torch.inference_mode()
    def forward(batch) -> np.ndarray:
        batch = torch.as_tensor(batch)
        if batch.dtype == torch.uint8:  # (n, h, w, 3) from the pixel stage: NHWC memory is channels-last
            pixels = batch.to(device, non_blocking=True).permute(0, 3, 1, 2)
            batch = torch.empty(pixels.shape, dtype=dtype, device=device, memory_format=torch.channels_last)
            # torchvision's float32 arithmetic, a few images at a time: the temporaries stay in cache
            # (normalising a whole batch at once costs twice as much on a CPU).
            for start in range(0, len(pixels), 8):
                chunk = pixels[start:start + 8].to(torch.float32)
                batch[start:start + 8] = chunk.div_(255).sub_(mean_t).div_(std_t)
        else:
            batch = batch.to(device, dtype=dtype, non_blocking=True)
        if device == "cpu":
            batch = batch.contiguous(memory_format=torch.channels_last)
        out = visual(batch).float()
        out = torch.nn.functional.normalize(out, dim=-1)
        return out.cpu().numpy()

    image_size = getattr(visual, "image_size", None)
    size = image_size[0] if isinstance(image_size, tuple | list) else image_size
    dim = int(getattr(visual, "output_dim", 0) or forward(preprocess(_blank()).unsqueeze(0)).shape[1])
    identity = {**identity, "precision": precision, "device": device, "preprocess": repr(preprocess)}
    return Embedder(kind="clip", name=f"{name} ({precision})", identity=identity,
                    preprocess=pil_stage if split is not None else preprocess, forward=forward, dim=dim,
                    draft_size=int(size or 224) * 2, note=note, device=device)


class _PixelStage:
    """The part of a CLIP transform before ``ToTensor`` (resize, crop, RGB), ending in a uint8 HWC array.

    The usual open_clip transform (shortest-side ``Resize``, ``CenterCrop``, RGB) runs on a uint8 tensor:
    torchvision's tensor path of the same Resize (antialiased, its vectorised uint8 kernel), then the crop as a
    view. It matches the PIL path to within one grey level on a few pixels per thousand and costs about half
    as much, and decoding is most of what the embedding stage adds to the model. Anything else (or a crop that
    would pad) runs the transforms as given, on the PIL image. Picklable, for worker processes.
    """

    def __init__(self, transforms: list, tensor_resize: bool = True) -> None:
        self.transforms = transforms
        self.fast = _tensor_resize_crop(transforms) if tensor_resize else None

    def __call__(self, image) -> np.ndarray:
        if self.fast is not None and image.mode == "RGB":
            import torch

            size, crop_h, crop_w, mode = self.fast
            width, height = image.size
            short, long = (width, height) if width <= height else (height, width)
            new_short, new_long = size, int(size * long / short)  # torchvision's output size
            new_w, new_h = (new_short, new_long) if width <= height else (new_long, new_short)
            if new_w >= crop_w and new_h >= crop_h:
                pixels = torch.from_numpy(np.array(image)).permute(2, 0, 1).unsqueeze(0)  # channels-last view
                if (new_h, new_w) != (height, width):
                    pixels = torch.nn.functional.interpolate(pixels, size=(new_h, new_w), mode=mode,
                                                             antialias=True, align_corners=False)
                top, left = round((new_h - crop_h) / 2.0), round((new_w - crop_w) / 2.0)
                return pixels[0, :, top:top + crop_h, left:left + crop_w].permute(1, 2, 0).numpy()
        for transform in self.transforms:
            image = transform(image)
        return np.asarray(image, dtype=np.uint8)

    def __repr__(self) -> str:
        return f"_PixelStage({self.transforms!r})"


def _tensor_resize_crop(transforms: list) -> tuple[int, int, int, str] | None:
    """``(short side, crop height, crop width, mode)`` when ``transforms`` is exactly a shortest-side Resize
    (bicubic or bilinear), a CenterCrop and an optional conversion to RGB; ``None`` otherwise."""
    from open_clip.transform import MaybeConvertMode
    from torchvision import transforms as T

    if len(transforms) < 2 or not isinstance(transforms[0], T.Resize) or not isinstance(transforms[1], T.CenterCrop):
        return None
    if any(not (isinstance(t, MaybeConvertMode) and t.mode == "RGB") for t in transforms[2:]):
        return None
    resize, crop = transforms[:2]
    size = resize.size if isinstance(resize.size, int) else (resize.size[0] if len(resize.size) == 1 else None)
    modes = {T.InterpolationMode.BICUBIC: "bicubic", T.InterpolationMode.BILINEAR: "bilinear"}
    if size is None or resize.max_size is not None or resize.antialias is False or resize.interpolation not in modes:
        return None
    return size, int(crop.size[0]), int(crop.size[1]), modes[resize.interpolation]


def split_clip_transform(preprocess, tensor_resize: bool = True,
                         ) -> tuple[_PixelStage, tuple[float, ...], tuple[float, ...]] | None:
    """``(pixel stage, mean, std)`` when ``preprocess`` is PIL transforms, then ToTensor, then Normalize (as every
    open_clip transform is); ``None`` for anything else, which then runs unchanged per image.
    ``tensor_resize=False`` keeps the resize on PIL images (torchvision's exact PIL arithmetic, slower)."""
    from torchvision import transforms as T

    steps = list(getattr(preprocess, "transforms", []))
    if len(steps) < 2 or not isinstance(steps[-1], T.Normalize) or not isinstance(steps[-2], T.ToTensor):
        return None
    if any(isinstance(step, T.ToTensor | T.Normalize | T.Lambda) for step in steps[:-2]):
        return None
    normalize = steps[-1]
    mean, std = tuple(map(float, normalize.mean)), tuple(map(float, normalize.std))
    return _PixelStage(steps[:-2], tensor_resize), mean, std


def _blank():
    from PIL import Image

    return Image.new("RGB", (32, 32))


class _PixelPreprocess:
    """Top-level class (picklable for decoding workers): grey, resized, as a float vector."""

    def __init__(self, size: int) -> None:
        self.size = size

    def __call__(self, image) -> np.ndarray:
        from PIL import Image

        grey = image.convert("L").resize((self.size, self.size), Image.Resampling.BILINEAR)
        return np.asarray(grey, dtype=np.float32).reshape(-1) / 255.0


def _pixel_forward(batch) -> np.ndarray:
    vectors = np.asarray(batch, dtype=np.float32)
    vectors = vectors - vectors.mean(axis=1, keepdims=True)
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors / np.where(norms > 0, norms, 1.0)


def pixel_embedder(size: int = 16, note: str | None = None) -> Embedder:
    """Downsampled grey pixels, mean-centred and L2-normalised: no learned model, good for tiny images such as
    digits, and an honest offline stand-in when CLIP weights cannot be had."""
    return Embedder(kind="pixels", name=f"pixels {size}x{size} grey (no learned model)",
                    identity={"model": f"pixels-{size}", "pretrained": None, "checkpoint": None},
                    preprocess=_PixelPreprocess(size), forward=_pixel_forward, dim=size * size, note=note)


def build_embedder(config: EmbedderConfig) -> Embedder:
    """The configured embedder; ``auto`` uses CLIP when its weights are available offline, else pixels (with a
    note that the results carry)."""
    if config.kind == "pixels":
        return pixel_embedder(config.pixel_size)
    if config.kind == "auto":
        if clip_weights_available(config.model, config.pretrained):
            return load_clip(config.model, config.pretrained, config.device, config.precision)
        note = (f"CLIP weights {config.model}/{config.pretrained} are not available on this machine (no local "
                "copy); these embeddings are downsampled pixels, not CLIP")
        return pixel_embedder(config.pixel_size, note=note)
    if config.kind == "clip":
        return load_clip(config.model, config.pretrained, config.device, config.precision)
    raise EmbedderError(f"embedder kind {config.kind!r} does not compute embeddings")


class LazyEmbedder:
    """An embedder whose model is loaded on first need.

    It knows its cache folder (``cache_key``), vector size and description from the identity an earlier run
    recorded for the same request (:func:`audit.embeddings.cache.lookup_identity`), so a run whose every image is
    cached never loads the model (for CLIP, hundreds of MB and seconds to minutes). :meth:`load` builds the real
    embedder and records its identity for the next run.
    """

    lazy = True

    def __init__(self, config: EmbedderConfig, cache_root: Path, request: str, known: dict) -> None:
        self.config, self.cache_root, self.request, self.known = config, cache_root, request, known
        self.cache_key: str = known["cache_key"]
        self.dim: int = int(known["dim"])
        self.name: str = str(known["describe"].get("name", config.kind))
        self.kind: str = str(known["describe"].get("kind", config.kind))
        self._loaded: Embedder | None = None

    def describe(self) -> dict[str, Any]:
        return self._loaded.describe() if self._loaded is not None else dict(self.known["describe"])

    def load(self) -> Embedder:
        if self._loaded is None:
            from audit.embeddings.cache import record_identity

            self._loaded = build_embedder(self.config)
            record_identity(self.cache_root, self.request, self._loaded)
        return self._loaded


def embedder_for_run(config: EmbedderConfig, cache_root: Path, use_cache: bool = True) -> Embedder | LazyEmbedder:
    """The embedder a run uses: for CLIP, lazy when an earlier run recorded what this config resolves to (and the
    cache is on); otherwise built now (pixels cost nothing to build; ``auto`` must look for weights each time)."""
    from audit.embeddings.cache import embedder_request, lookup_identity, record_identity

    request = embedder_request(config)
    if use_cache and config.kind == "clip":
        known = lookup_identity(cache_root, request)
        if known is not None:
            return LazyEmbedder(config, cache_root, request, known)
    embedder = build_embedder(config)
    if use_cache:
        record_identity(cache_root, request, embedder)
    return embedder
