"""Shared fixtures: real digit images on disk, and a tiny open_clip model saved to a checkpoint file."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

from tests.labelstudio_server import LabelStudioServer, start_server

os.environ.setdefault("FIFTYONE_DO_NOT_TRACK", "true")

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("LABEL_AUDIT_SHARED", REPO.parent / "shared"))


@pytest.fixture(scope="session")
def digit_images() -> tuple[np.ndarray, np.ndarray]:
    """sklearn's 1,797 real 8x8 digit scans (0..16) and their labels."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    return digits.images, digits.target


def write_digit(path: Path, pixels: np.ndarray, side: int = 32) -> Path:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.fromarray((pixels * (255.0 / 16.0)).astype(np.uint8), mode="L")
    image.resize((side, side), Image.Resampling.NEAREST).save(path)
    return path


@pytest.fixture()
def digit_folder(tmp_path: Path, digit_images) -> Path:
    """root/<class>/<image>.png with 8 real digits of each of classes 0, 1, 2."""
    images, targets = digit_images
    root = tmp_path / "digits"
    for label in (0, 1, 2):
        for k, index in enumerate(np.flatnonzero(targets == label)[:8]):
            write_digit(root / str(label) / f"{label}_{k}.png", images[index])
    return root


@pytest.fixture(scope="session")
def tiny_clip(tmp_path_factory) -> tuple[Path, Path]:
    """A tiny open_clip model: config .json + checkpoint saved from it, loaded through the users' code path."""
    import open_clip
    import torch

    folder = tmp_path_factory.mktemp("tinyclip")
    config = {"embed_dim": 32,
              "vision_cfg": {"image_size": 32, "layers": 2, "width": 64, "patch_size": 8, "head_width": 32},
              "text_cfg": {"context_length": 16, "vocab_size": 1000, "width": 32, "heads": 2, "layers": 1}}
    config_file = folder / "tinyclip-test.json"
    config_file.write_text(json.dumps(config))
    open_clip.add_model_config(config_file)
    torch.manual_seed(0)
    model = open_clip.create_model("tinyclip-test", pretrained=None)
    checkpoint = folder / "tinyclip-test.pt"
    torch.save(model.state_dict(), checkpoint)
    return config_file, checkpoint


def _in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in ("1", "true", "yes")


@pytest.fixture(scope="session")
def labelstudio(tmp_path_factory) -> LabelStudioServer:
    """One running Label Studio for the whole test session (integrations and sources alike; own venv
    ``.ls-venv``, installed on first use), stopped after the session.

    Its local-files document root is the session's temporary folder, so images that tests write under
    ``tmp_path_factory`` can be served without copying. In CI a server that does not start fails the tests;
    elsewhere (no registry to install from, say) the tests that need it are skipped with the reason.
    """
    root = tmp_path_factory.getbasetemp()
    try:
        server = start_server(tmp_path_factory.mktemp("label-studio-data"), root)
    except Exception as exc:  # install or start failed: say why
        message = f"Label Studio could not be installed or started: {exc}"
        if _in_ci():
            pytest.fail(message)
        pytest.skip(message)
    print(f"\nLabel Studio started in {server.start_seconds:.1f} s at {server.url}")
    yield server
    server.stop()
