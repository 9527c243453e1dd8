"""What the detection and segmentation demos share to compose their scenes: real digit scans pasted onto real
photos at free places, so every box and mask is known exactly."""

from __future__ import annotations

import numpy as np


def digit_alpha(pixels: np.ndarray, side: int) -> np.ndarray:
    """An 8x8 digit scan (values 0-16) as a ``side x side`` opacity map in [0, 1]."""
    from PIL import Image

    grey = Image.fromarray((pixels / 16.0 * 255.0).astype(np.uint8), mode="L")
    return np.asarray(grey.resize((side, side), Image.Resampling.BILINEAR), dtype=float) / 255.0


def free_spot(occupied: list[tuple[int, int, int]], side: int, canvas: int, rng: np.random.Generator, gap: int,
              tries: int = 200) -> tuple[int, int] | None:
    """Top-left corner of a ``side`` square on a ``canvas`` square at least ``gap`` pixels from every occupied
    square ``(x, y, side)``; None when ``tries`` random places all collide."""
    for _ in range(tries):
        x, y = int(rng.integers(0, canvas - side + 1)), int(rng.integers(0, canvas - side + 1))
        if all(x + side + gap <= ox or ox + other + gap <= x or y + side + gap <= oy or oy + other + gap <= y
               for ox, oy, other in occupied):
            return x, y
    return None
