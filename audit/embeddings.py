"""Image embeddings: open_clip (or an honest pixel baseline), batched, decoded in parallel, and cached by content.

The cache is content-addressed: the key of an image is the hash of its bytes, inside a folder named by the
embedder's identity (model, weights, precision, preprocessing). A weekly re-run therefore embeds only new or
changed images. The cache is written in small shard files, each renamed into place when complete, so an
interrupted run keeps everything up to its last shard and the next run resumes from there.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from audit.config import EmbedderConfig
from audit.results import _atomic_save

CACHE_FORMAT = 1
DEFAULT_CACHE_DIR = Path(os.environ.get("LABEL_AUDIT_CACHE", Path.home() / ".cache" / "label-audit")) / "embeddings"


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
    try:
        net, _, preprocess = open_clip.create_model_and_transforms(name, pretrained=str(checkpoint or pretrained),
                                                                    device=device)
    except Exception as exc:  # open_clip raises RuntimeError/HF errors/OSError for missing or broken weights
        raise EmbedderError(
            f"could not load CLIP weights {name}/{pretrained}: {str(exc).splitlines()[0][:200]}. "
            "Without internet, download them elsewhere and copy the Hugging Face cache (~/.cache/huggingface), or "
            "pass --pretrained /path/to/checkpoint.pt; or use --embedder pixels, or bring --embeddings FILE.npy"
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


# ------------------------------------------------------------------------------------------------ cache


class EmbeddingCache:
    """Content-addressed store: image hash -> (vector, problem codes), one folder per embedder identity."""

    def __init__(self, root: Path, embedder: Embedder, flush_every: int = 1024) -> None:
        self.folder = Path(root) / embedder.cache_key
        self.folder.mkdir(parents=True, exist_ok=True)
        identity_file = self.folder / "embedder.json"
        if not identity_file.exists():
            from audit.results import atomic_write_text

            atomic_write_text(identity_file, json.dumps(embedder.describe(), indent=2, default=str))
        self.dim = embedder.dim
        self.flush_every = flush_every
        self.vectors: dict[str, np.ndarray] = {}
        self.problems: dict[str, str] = {}
        self._pending: list[tuple[str, np.ndarray | None, str]] = []
        self._load()

    def _shards(self) -> list[Path]:
        return sorted(self.folder.glob("shard-*.npz"))

    def _load(self) -> None:
        shards = self._shards()
        for shard in shards:
            try:
                with np.load(shard, allow_pickle=False) as data:
                    for key, vector, problem in zip(data["hashes"], data["vectors"], data["problems"], strict=True):
                        if problem.startswith("!"):  # unreadable: no vector
                            self.problems[str(key)] = problem[1:]
                        else:
                            self.vectors[str(key)] = vector
                            self.problems[str(key)] = problem
            except (OSError, ValueError, KeyError):
                shard.unlink(missing_ok=True)  # a damaged shard only costs re-embedding its images
        if len(shards) > 64:
            self._compact(shards)

    def _compact(self, shards: list[Path]) -> None:
        self._pending = [(k, self.vectors.get(k), self._raw_problem(k)) for k in self.problems]
        self.flush()
        for shard in shards:
            shard.unlink(missing_ok=True)

    def _raw_problem(self, key: str) -> str:
        return self.problems[key] if key in self.vectors else "!" + self.problems[key]

    def __contains__(self, key: str) -> bool:
        return key in self.problems

    def get(self, key: str) -> tuple[np.ndarray | None, str]:
        return self.vectors.get(key), self.problems[key]

    def put(self, key: str, vector: np.ndarray | None, problems: str, unreadable: bool) -> None:
        if unreadable:
            self.problems[key] = problems
            self._pending.append((key, None, "!" + problems))
        else:
            self.vectors[key] = vector
            self.problems[key] = problems
            self._pending.append((key, vector, problems))
        if len(self._pending) >= self.flush_every:
            self.flush()

    def flush(self) -> None:
        """Write pending entries as one new shard, atomically."""
        if not self._pending:
            return
        keys = np.array([k for k, _, _ in self._pending])
        vectors = np.stack([v if v is not None else np.zeros(self.dim, np.float32) for _, v, _ in self._pending])
        problems = np.array([p for _, _, p in self._pending])
        target = self.folder / f"shard-{time.time_ns()}-{uuid.uuid4().hex[:8]}.npz"

        def write(tmp: str) -> None:
            with open(tmp, "wb") as handle:
                np.savez(handle, hashes=keys, vectors=vectors.astype(np.float32), problems=problems)

        _atomic_save(target, write)
        self._pending = []


# ---------------------------------------------------------------------------------------------- running


def hash_file(path: str) -> str | None:
    try:
        with open(path, "rb") as handle:
            return hashlib.file_digest(handle, "blake2b").hexdigest()[:32]
    except OSError:
        return None


class _DecodeDataset:
    """Map-style dataset for torch's DataLoader: decoding and preprocessing happen in its workers."""

    def __init__(self, paths: list[str], preprocess: Callable, draft_size: int | None) -> None:
        self.paths, self.preprocess, self.draft_size = paths, preprocess, draft_size

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int):
        from audit.sources import load_image

        image, problems = load_image(self.paths[index], draft_size=self.draft_size)
        return index, (None if image is None else self.preprocess(image)), problems


def _collate(items):
    import torch

    indices = [i for i, x, _ in items if x is not None]
    tensors = [x for _, x, _ in items if x is not None]
    if tensors and isinstance(tensors[0], np.ndarray):
        batch = np.stack(tensors)
    else:
        batch = torch.stack(tensors) if tensors else None
    return indices, batch, [(i, p, x is None) for i, x, p in items]


def _worker_init(_: int) -> None:
    import torch

    torch.set_num_threads(1)


def _batches(paths: list[str], embedder: Embedder, batch_size: int, workers: int, decoding: str = "auto") -> Iterator:
    """Decoded, preprocessed batches, by the strategy that suits where the model runs.

    On a GPU the model waits for the CPU, so worker processes decode ahead while it runs. On a CPU the model
    already uses every core: decoding beside it only makes both fight for the cores (a forward pass is as slow
    as its slowest thread), so a thread pool decodes one batch on all cores, then the model runs, in turns.
    Pillow releases the GIL while it decodes and resizes, so the threads scale like processes here, without
    their start-up and pickling costs.
    """
    if decoding not in ("auto", "threads", "processes"):
        raise ValueError(f"decoding must be 'auto', 'threads' or 'processes', not {decoding!r}")
    dataset = _DecodeDataset(paths, embedder.preprocess, embedder.draft_size)
    if decoding == "auto":
        decoding = "processes" if embedder.device.startswith("cuda") else "threads"
    if workers and decoding == "processes":
        from torch.utils.data import DataLoader

        yield from DataLoader(dataset, batch_size=batch_size, num_workers=workers, collate_fn=_collate,
                              worker_init_fn=_worker_init, prefetch_factor=4, persistent_workers=False)
        return
    pool = ThreadPoolExecutor(max_workers=workers) if workers else None
    try:
        for start in range(0, len(paths), batch_size):
            indices = range(start, min(start + batch_size, len(paths)))
            items = list(pool.map(dataset.__getitem__, indices)) if pool else [dataset[i] for i in indices]
            yield _collate(items)
    finally:
        if pool is not None:
            pool.shutdown()


@dataclass
class EmbeddingOutcome:
    """Vectors for the readable samples, and what was found on the way."""

    vectors: np.ndarray  # (n_readable, dim) float32, rows listed in ``rows``
    rows: np.ndarray  # per sample: row into ``vectors`` or -1
    hashes: list[str | None]
    problems: dict[str, list[str]]  # sample id -> problem codes found while decoding
    n_cached: int
    n_embedded: int
    timings: dict[str, float] = field(default_factory=dict)


def default_workers() -> int:
    """The cores this process may use (a container's CPU quota, not the host's count), at most 8."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    return max(1, min(cores, 8))


def embed_samples(
    samples: pd.DataFrame,
    embedder: Embedder,
    cache_dir: Path | None = None,
    use_cache: bool = True,
    batch_size: int = 64,
    workers: int | None = None,
    progress: bool = True,
    decoding: str = "auto",
) -> EmbeddingOutcome:
    """Embed every sample whose file can be decoded; cached images are not decoded again.

    ``decoding``: ``threads`` (decode a batch on all cores, then run the model: best when the model runs on the
    CPU), ``processes`` (workers decode ahead while the model runs: best on a GPU), or ``auto`` (by device).
    """
    from tqdm.auto import tqdm

    from audit.sources import UNREADABLE

    started = time.perf_counter()
    paths = samples["filepath"].astype(str).tolist()
    with ThreadPoolExecutor(max_workers=4) as pool:
        hashes = list(tqdm(pool.map(hash_file, paths, chunksize=64), total=len(paths), desc="hashing images",
                           disable=not progress or None, leave=False))
    timings = {"hash": time.perf_counter() - started}
    cache = EmbeddingCache(cache_dir or DEFAULT_CACHE_DIR, embedder) if use_cache else None
    results: dict[str, tuple[np.ndarray | None, str]] = {}
    todo_keys: list[str] = []
    todo_paths: list[str] = []
    for path, key in zip(paths, hashes, strict=True):
        if key is None or key in results:
            continue
        if cache is not None and key in cache:
            results[key] = cache.get(key)
        else:  # a duplicate of this content is caught by ``key in results`` above (a list lookup was O(n^2))
            results[key] = (None, "")  # placeholder, filled below
            todo_keys.append(key)
            todo_paths.append(path)
    n_cached = len(results) - len(todo_keys)
    step = time.perf_counter()
    workers = default_workers() if workers is None else workers
    try:
        with tqdm(total=len(todo_paths), desc=f"embedding ({embedder.name})", unit="img",
                  disable=not progress or None) as bar:
            for indices, batch, infos in _batches(todo_paths, embedder, batch_size, workers, decoding):
                vectors = embedder.forward(batch) if batch is not None else np.empty((0, embedder.dim), np.float32)
                by_index = dict(zip(indices, vectors, strict=True))
                for index, problems, unreadable in infos:
                    key = todo_keys[index]
                    vector = by_index.get(index)
                    results[key] = (vector, ";".join(problems))
                    if cache is not None:
                        cache.put(key, vector, ";".join(problems), unreadable)
                bar.update(len(infos))
    finally:
        if cache is not None:
            cache.flush()
    timings["embed"] = time.perf_counter() - step
    rows = np.full(len(paths), -1, dtype=np.int64)
    found: dict[str, list[str]] = {}
    vectors_out: list[np.ndarray] = []
    for i, (sample_id, key) in enumerate(zip(samples.index, hashes, strict=True)):
        if key is None:
            continue  # missing file: already recorded by the source
        vector, problem_text = results[key]
        codes = [c for c in problem_text.split(";") if c]
        if codes:
            found[str(sample_id)] = codes
        if vector is not None and not (set(codes) & UNREADABLE):
            rows[i] = len(vectors_out)
            vectors_out.append(np.asarray(vector, dtype=np.float32))
    matrix = np.stack(vectors_out) if vectors_out else np.empty((0, embedder.dim), np.float32)
    timings["total"] = time.perf_counter() - started
    return EmbeddingOutcome(vectors=matrix, rows=rows, hashes=hashes, problems=found, n_cached=n_cached,
                            n_embedded=len(todo_keys), timings=timings)


def load_precomputed(path: Path, n_samples: int) -> np.ndarray:
    """User embeddings from a .npy file, one row per sample in source order, L2-normalised here."""
    path = Path(path)
    if not path.is_file():
        raise EmbedderError(f"embeddings file {path} does not exist")
    try:
        array = np.load(path, allow_pickle=False)
    except (ValueError, OSError) as exc:
        raise EmbedderError(f"embeddings file {path} is not a readable .npy array: {exc}") from exc
    return normalise_precomputed(array, n_samples, str(path))


def normalise_precomputed(array: np.ndarray, n_samples: int, where: str) -> np.ndarray:
    if array.ndim != 2 or array.shape[0] != n_samples:
        raise EmbedderError(f"embeddings from {where} have shape {array.shape}; expected ({n_samples}, dim), "
                            "one row per sample in source order")
    array = array.astype(np.float32)
    bad = np.flatnonzero(~np.isfinite(array).all(axis=1))
    if len(bad):
        raise EmbedderError(f"embeddings from {where} have NaN/inf in {len(bad)} row(s), first rows {bad[:5].tolist()}"
                            "; remove those samples or fix their vectors")
    norms = np.linalg.norm(array, axis=1, keepdims=True)
    if (norms == 0).any():
        raise EmbedderError(f"embeddings from {where} have all-zero rows, e.g. {np.flatnonzero(norms[:, 0] == 0)[:5]}")
    return array / norms
