"""Embeddings through the code users run: a tiny open_clip model saved to a file, the cache, and the errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from audit.config import EmbedderConfig
from audit.embeddings import (
    EmbedderError,
    build_embedder,
    embed_samples,
    load_clip,
    load_precomputed,
)
from audit.sources import TRUNCATED_IMAGE
from tests.conftest import write_digit


def _samples(folder: Path) -> pd.DataFrame:
    files = sorted(folder.rglob("*.png"))
    return pd.DataFrame({"filepath": [str(f) for f in files], "label": [f.parent.name for f in files]},
                        index=pd.Index([f.name for f in files], name="sample_id"))


def test_tiny_clip_checkpoint_loads_through_user_path(tiny_clip, digit_folder: Path, tmp_path: Path) -> None:
    config_file, checkpoint = tiny_clip
    embedder = build_embedder(EmbedderConfig(kind="clip", model=str(config_file), pretrained=str(checkpoint),
                                             device="cpu", precision="fp32"))
    assert embedder.kind == "clip" and embedder.dim == 32
    assert "tinyclip-test" in embedder.name and "tinyclip-test.pt" in embedder.name
    assert embedder.identity["checkpoint_sha256"]
    outcome = embed_samples(_samples(digit_folder), embedder, cache_dir=tmp_path / "cache", workers=0,
                            batch_size=5, progress=False)
    assert outcome.vectors.shape == (24, 32)
    assert np.allclose(np.linalg.norm(outcome.vectors, axis=1), 1.0, atol=1e-5)
    assert outcome.vectors.dtype == np.float32
    # The weights matter: a different checkpoint gives different vectors (so they really were loaded).
    import torch

    state = torch.load(checkpoint)
    state = {k: v + 0.05 * torch.randn_like(v) if v.is_floating_point() else v for k, v in state.items()}
    other = checkpoint.with_name("other.pt")
    torch.save(state, other)
    changed = load_clip(str(config_file), str(other), "cpu", "fp32")
    again = embed_samples(_samples(digit_folder), changed, use_cache=False, workers=0, progress=False)
    assert not np.allclose(again.vectors, outcome.vectors, atol=1e-3)


def test_bf16_matches_fp32(tiny_clip, digit_folder: Path) -> None:
    config_file, checkpoint = tiny_clip
    vectors = {}
    for precision in ("fp32", "bf16"):
        embedder = load_clip(str(config_file), str(checkpoint), "cpu", precision)
        vectors[precision] = embed_samples(_samples(digit_folder), embedder, use_cache=False, workers=0,
                                           progress=False).vectors
    cosine = (vectors["fp32"] * vectors["bf16"]).sum(axis=1)
    assert cosine.min() > 0.99


def test_cache_embeds_only_new_or_changed(tiny_clip, digit_folder: Path, tmp_path: Path, digit_images) -> None:
    config_file, checkpoint = tiny_clip
    embedder = load_clip(str(config_file), str(checkpoint), "cpu", "fp32")
    cache = tmp_path / "cache"
    first = embed_samples(_samples(digit_folder), embedder, cache_dir=cache, workers=0, progress=False)
    assert (first.n_embedded, first.n_cached) == (24, 0)
    second = embed_samples(_samples(digit_folder), embedder, cache_dir=cache, workers=0, progress=False)
    assert (second.n_embedded, second.n_cached) == (0, 24)
    np.testing.assert_array_equal(first.vectors, second.vectors)
    changed = sorted(digit_folder.rglob("*.png"))[3]
    write_digit(changed, digit_images[0][100])  # same path, new content
    write_digit(digit_folder / "2" / "new.png", digit_images[0][101])
    third = embed_samples(_samples(digit_folder), embedder, cache_dir=cache, workers=0, progress=False)
    assert (third.n_embedded, third.n_cached) == (2, 23)
    assert not np.allclose(third.vectors[3], first.vectors[3])


def test_interrupted_run_keeps_finished_batches(digit_folder: Path, tmp_path: Path) -> None:
    embedder = build_embedder(EmbedderConfig(kind="pixels"))
    calls = {"n": 0}
    forward = embedder.forward

    def failing(batch):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return forward(batch)

    embedder.forward = failing
    with pytest.raises(KeyboardInterrupt):
        embed_samples(_samples(digit_folder), embedder, cache_dir=tmp_path / "c", batch_size=4, workers=0,
                      progress=False)
    embedder.forward = forward
    resumed = embed_samples(_samples(digit_folder), embedder, cache_dir=tmp_path / "c", batch_size=4, workers=0,
                            progress=False)
    assert resumed.n_cached == 8 and resumed.n_embedded == 16
    assert not list((tmp_path / "c").rglob("*.tmp")), "no half-written files are left behind"


def test_parallel_workers_give_same_vectors_and_record_problems(digit_folder: Path, tmp_path: Path) -> None:
    broken = digit_folder / "1" / "broken.png"
    good = next(digit_folder.rglob("*.png")).read_bytes()
    broken.write_bytes(good[: len(good) // 2])
    samples = _samples(digit_folder)
    embedder = build_embedder(EmbedderConfig(kind="pixels"))
    serial = embed_samples(samples, embedder, use_cache=False, workers=0, progress=False)
    parallel = embed_samples(samples, embedder, use_cache=False, workers=2, batch_size=4, progress=False)
    np.testing.assert_array_equal(serial.vectors, parallel.vectors)
    assert parallel.problems == {"broken.png": [TRUNCATED_IMAGE]}
    assert parallel.rows[list(samples.index).index("broken.png")] == -1


def test_missing_weights_are_a_clear_error(tiny_clip, tmp_path: Path, monkeypatch) -> None:
    config_file, _ = tiny_clip
    with pytest.raises(EmbedderError, match="does not exist"):
        load_clip(str(config_file), str(tmp_path / "absent.pt"), "cpu", "fp32")
    with pytest.raises(EmbedderError, match="random weights are refused"):
        load_clip("ViT-B-32", None, "cpu", "fp32")
    with pytest.raises(EmbedderError, match="has no weights 'nonsense'"):
        load_clip("ViT-B-32", "nonsense", "cpu", "fp32")
    with pytest.raises(EmbedderError, match="unknown open_clip model"):
        load_clip("ViT-Nope", "openai", "cpu", "fp32")
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(EmbedderError, match=r"could not load CLIP weights ViT-B-32/laion2b_s34b_b79k.*--embedder pix"):
        load_clip("ViT-B-32", "laion2b_s34b_b79k", "cpu", "fp32")


def test_auto_falls_back_to_pixels_and_says_so(monkeypatch) -> None:
    import audit.embeddings.embedders as embeddings

    monkeypatch.setattr(embeddings, "clip_weights_available", lambda model, pretrained: False)
    embedder = build_embedder(EmbedderConfig(kind="auto"))
    assert embedder.kind == "pixels"
    assert "not CLIP" in embedder.note and "laion2b_s34b_b79k" in embedder.note


def test_auto_uses_clip_when_checkpoint_is_local(tiny_clip) -> None:
    config_file, checkpoint = tiny_clip
    embedder = build_embedder(EmbedderConfig(kind="auto", model=str(config_file), pretrained=str(checkpoint)))
    assert embedder.kind == "clip" and embedder.note is None


def test_precomputed_embeddings_checked(tmp_path: Path) -> None:
    good = np.random.default_rng(0).normal(size=(5, 8))
    np.save(tmp_path / "e.npy", good)
    loaded = load_precomputed(tmp_path / "e.npy", 5)
    assert np.allclose(np.linalg.norm(loaded, axis=1), 1)
    with pytest.raises(EmbedderError, match=r"shape \(5, 8\); expected \(6, dim\)"):
        load_precomputed(tmp_path / "e.npy", 6)
    good[2, 3] = np.nan
    np.save(tmp_path / "nan.npy", good)
    with pytest.raises(EmbedderError, match="NaN/inf in 1 row"):
        load_precomputed(tmp_path / "nan.npy", 5)


def test_batched_normalisation_matches_torchvision_transform(tiny_clip, digit_folder: Path) -> None:
    """The transform split at ToTensor (PIL part in the decoders, normalisation batched in forward) gives the
    vectors torchvision's per-image transform gives, whichever decoding strategy runs it."""
    import open_clip
    import torch
    from PIL import Image

    from audit.embeddings import clip_embedder, split_clip_transform

    config_file, checkpoint = tiny_clip
    net, _, preprocess = open_clip.create_model_and_transforms(config_file.stem, pretrained=str(checkpoint))
    split = split_clip_transform(preprocess)
    assert split is not None and split[1] == pytest.approx(open_clip.OPENAI_DATASET_MEAN)
    visual = net.visual.eval()
    samples = _samples(digit_folder)
    with torch.inference_mode():
        batch = torch.stack([preprocess(Image.open(p).convert("RGB")) for p in samples["filepath"]])
        expected = torch.nn.functional.normalize(visual(batch), dim=-1).numpy()
    embedder = clip_embedder(net, preprocess, name="tiny", identity={"model": "tiny"}, device="cpu",
                             precision="fp32")
    assert embedder.identity["preprocess"] == repr(preprocess), "the cache key names the user-visible transform"
    for decoding in ("threads", "processes"):
        got = embed_samples(samples, embedder, use_cache=False, workers=2, batch_size=7, progress=False,
                            decoding=decoding).vectors
        np.testing.assert_allclose(got, expected, atol=1e-5)
    with pytest.raises(ValueError, match="decoding must be"):
        embed_samples(samples, embedder, use_cache=False, progress=False, decoding="fibers")


def test_pixel_stage_matches_the_pil_transform_on_photos() -> None:
    """The tensor resize of the pixel stage stays within a few grey levels of torchvision's PIL path, on real
    photos of every orientation, downscaled and upscaled; odd transforms keep running as given."""
    import open_clip
    import skimage.data
    from PIL import Image
    from torchvision import transforms as T

    from audit.embeddings import split_clip_transform

    transform = open_clip.image_transform(224, is_train=False)
    stage, mean, std = split_clip_transform(transform)
    assert stage.fast is not None and mean == pytest.approx(open_clip.OPENAI_DATASET_MEAN)
    reference = T.Compose(transform.transforms[:-2])
    photo = Image.fromarray(skimage.data.chelsea())
    for size in [(500, 375), (375, 500), (224, 224), (1000, 300), (300, 1000), (640, 1400), (40, 30)]:
        image = photo.resize(size)
        got, expected = stage(image).astype(int), np.asarray(reference(image)).astype(int)
        assert got.shape == expected.shape == (224, 224, 3)
        assert np.abs(got - expected).max() <= 3 and np.abs(got - expected).mean() < 0.2, size
    padded = split_clip_transform(T.Compose([T.Resize(300), T.CenterCrop(400), T.ToTensor(), T.Normalize(mean, std)]))
    assert padded is not None and padded[0](photo).shape == (400, 400, 3)  # a crop that pads: torchvision's path
    assert split_clip_transform(T.Compose([T.ToTensor()])) is None
