"""Decoding an image the way every embedder, thumbnail and check sees it, with the problems found on the way."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageFile, ImageOps

from audit.sources.table import (
    CONVERTED_16BIT,
    CONVERTED_ALPHA,
    CONVERTED_CMYK,
    CONVERTED_PALETTE,
    CORRUPT_IMAGE,
    EMPTY_FILE,
    EXIF_ROTATED,
    MISSING_FILE,
    TRUNCATED_IMAGE,
)

ImageFile.LOAD_TRUNCATED_IMAGES = False


def load_image(path: str | Path, draft_size: int | None = None) -> tuple[Image.Image | None, list[str]]:
    """Decode an image to RGB the way every embedder sees it, and say what had to be done to get there.

    EXIF orientation is applied, 16-bit, CMYK, palette and alpha images are converted; a missing, empty,
    corrupt or truncated file gives ``None`` and its problem code. ``draft_size`` lets JPEG decode at a reduced
    scale (much faster for large photos that will be shrunk to the model's input anyway).
    """
    path = Path(path)
    if not path.is_file():
        return None, [MISSING_FILE]
    if path.stat().st_size == 0:
        return None, [EMPTY_FILE]
    notes: list[str] = []
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(path)
            if draft_size and image.format == "JPEG":
                image.draft("RGB", (draft_size, draft_size))
            image.load()
    except OSError as exc:
        return None, [TRUNCATED_IMAGE if "truncated" in str(exc).lower() else CORRUPT_IMAGE]
    except Exception:  # PIL raises assorted errors (SyntaxError, ValueError...) on garbage
        return None, [CORRUPT_IMAGE]
    try:
        orientation = image.getexif().get(0x0112, 1)
    except Exception:
        orientation = 1
    if orientation not in (None, 1):
        image = ImageOps.exif_transpose(image)
        notes.append(EXIF_ROTATED)
    mode = image.mode
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        array = np.asarray(image, dtype=np.float64)
        top = array.max() if array.size and array.max() > 0 else 1.0
        image = Image.fromarray((array / top * 255.0).round().astype(np.uint8), mode="L")
        notes.append(CONVERTED_16BIT)
    elif mode == "CMYK":
        notes.append(CONVERTED_CMYK)
    elif mode in ("P", "PA"):
        notes.append(CONVERTED_PALETTE)
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA"):
        if mode not in ("P", "PA"):
            notes.append(CONVERTED_ALPHA)
        background = Image.new("RGB", image.size, (255, 255, 255))
        background.paste(image.convert("RGBA"), mask=image.convert("RGBA").getchannel("A"))
        image = background
    if image.mode != "RGB":
        image = image.convert("RGB")
    return image, notes

