"""Decoding an image the way every embedder, thumbnail and check sees it, with the problems found on the way.

Very large images: decoding never holds more than ``MAX_DECODE_PIXELS`` pixels (2^27, about 134 million: 0.5 GiB
as RGB) of one image. Above it, and only when the caller wants a reduced image anyway (``draft_size``, as the
embedders and thumbnails do):

* a JPEG decodes at a reduced scale (libjpeg's DCT scaling through PIL's ``draft``, up to 1/8 per side);
* an image stored in tiles or in uncompressed rows (a tiled or uncompressed TIFF, a PPM...) decodes one band of
  rows at a time, each band shrunk by a power-of-two factor with PIL's ``reduce`` before the next is read, so
  memory is the reduced image plus one band (one row of tiles, or ``BAND_ROWS`` rows);
* anything else (a PNG, whose rows form one compressed stream PIL decodes whole; a compressed TIFF) is not
  decoded: the sample gets the problem ``too_large`` and is unreadable, rather than taking gigabytes of memory.

PIL's own decompression-bomb refusal (an error above 179 million pixels, which used to read as
``corrupt_image``) is lifted while a file is opened, since the limit above is applied to what is decoded.
"""

from __future__ import annotations

import math
import threading
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
    TOO_LARGE,
    TRUNCATED_IMAGE,
)

ImageFile.LOAD_TRUNCATED_IMAGES = False
MAX_DECODE_PIXELS = 2**27  # pixels of one decoded image (or of its reduced decode); see the module docstring
BAND_ROWS = 256  # rows per band when one uncompressed strip is read in bands
_RAW_BITS = {"1": 1, "L": 8, "P": 8, "LA": 16, "I;16": 16, "I;16B": 16, "I;16L": 16, "RGB": 24, "BGR": 24,
             "RGBA": 32, "RGBX": 32, "CMYK": 32, "I": 32, "F": 32, "I;32": 32}
_OPEN_LOCK = threading.Lock()


def _open(path: Path) -> Image.Image:
    """``Image.open`` without PIL's decompression-bomb error (this module limits what it decodes instead)."""
    with _OPEN_LOCK:
        previous = Image.MAX_IMAGE_PIXELS
        Image.MAX_IMAGE_PIXELS = None
        try:
            return Image.open(path)
        finally:
            Image.MAX_IMAGE_PIXELS = previous


def _pieces(image: Image.Image) -> list | None:
    """The image's tiles, an uncompressed single strip cut into ``BAND_ROWS``-row pieces; None when the image
    cannot be decoded piece by piece (one compressed stream)."""
    tiles = list(image.tile)
    if len(tiles) > 1:
        return tiles
    if len(tiles) != 1:
        return None
    tile = tiles[0]
    args = tile.args if isinstance(tile.args, tuple) else (tile.args,)
    x0, y0, x1, y1 = tile.extents
    rawmode = args[0] if args else None
    if tile.codec_name != "raw" or rawmode not in _RAW_BITS or (len(args) > 1 and args[1] not in (0, None)) or (
            len(args) > 2 and args[2] != 1):
        return None  # compressed, or rows with padding or stored bottom-up
    stride = ((x1 - x0) * _RAW_BITS[rawmode] + 7) // 8
    return [tile._replace(extents=(x0, y, x1, min(y + BAND_ROWS, y1)), offset=tile.offset + (y - y0) * stride)
            for y in range(y0, y1, BAND_ROWS)]


def _reduced_decode(path: Path, image: Image.Image, draft_size: int) -> Image.Image | None:
    """Decode ``image`` band by band, each band shrunk with ``reduce`` (module docstring); None when it cannot
    be (then the caller reports ``too_large``)."""
    pieces = _pieces(image)
    width, height = image.size
    if pieces is None or image.mode not in ("L", "LA", "RGB", "RGBA", "RGBX", "CMYK", "I", "F"):
        return None
    # A power of two, so bands of whole tiles (usually 2^k rows high) are whole blocks of the reduction: enough to
    # fit the limit, and as much as keeps the short side at least draft_size.
    needed = math.ceil(math.sqrt(width * height / MAX_DECODE_PIXELS))
    keeps_draft = max(min(width, height) // max(draft_size, 1), 1)
    factor = max(1 << (needed - 1).bit_length(), 1 << (keeps_draft.bit_length() - 1))
    rows = sorted({(p.extents[1], p.extents[3]) for p in pieces})
    out = Image.new(image.mode, (math.ceil(width / factor), math.ceil(height / factor)))
    start = 0
    while start < len(rows):
        band_top, stop = rows[start][0], start  # a band: whole rows of pieces, a multiple of factor rows high
        while stop + 1 < len(rows) and (rows[stop][1] - band_top) % factor:
            stop += 1
        band_bottom = rows[stop][1]
        band = _open(path)
        band._size = (width, band_bottom - band_top)
        band.tile = [p._replace(extents=(p.extents[0], p.extents[1] - band_top, p.extents[2],
                                         p.extents[3] - band_top))
                     for p in pieces if band_top <= p.extents[1] < band_bottom]
        band.load()
        out.paste(band.reduce(factor), (0, band_top // factor))
        band.close()
        start = stop + 1
    return out


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
            image = _open(path)
            original_size = image.size  # before a JPEG draft shrinks it
            if draft_size and image.format == "JPEG":
                image.draft("RGB", (draft_size, draft_size))
            if image.size[0] * image.size[1] <= MAX_DECODE_PIXELS:
                image.load()
            else:
                reduced = _reduced_decode(path, image, draft_size) if draft_size else None
                if reduced is None:
                    image.close()
                    return None, [TOO_LARGE]
                reduced.info.update(image.info)
                reduced.getexif().update(image.getexif())
                image.close()
                image = reduced
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
        if orientation in (5, 6, 7, 8):  # a quarter turn swaps width and height
            original_size = original_size[::-1]
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
    image.info["original_size"] = original_size  # the file's own size, for size checks on drafted JPEGs
    return image, notes



# ------------------------------------------------------------------------------------------ pixel statistics
# The cheap statistics every decoded image gets, computed where it is decoded for embedding (so no image is read
# twice) and kept in the embedding cache; the image-quality check (audit.checks.quality) flags from them.

STATS_VERSION = 2  # bump when a statistic's definition changes: cached statistics of older versions are stale
STAT_KEYS = ("width", "height", "aspect_ratio", "brightness", "brightness_p01", "brightness_p99", "dark_share",
             "bright_share", "contrast", "entropy", "sharpness", "colourfulness", "colour_share")

SAMPLE_GRID = 32  # tone and colour: a SAMPLE_GRID x SAMPLE_GRID nearest-neighbour sample of the whole image
SHARPNESS_SCALE = 256  # sharpness is measured where the image's short side is about this many pixels...
SHARPNESS_WINDOW = 48  # ...in a central window of this many pixels at that scale
DARK_LEVEL = 0.15  # a pixel darker than this (luma, 0..1) counts as dark
BRIGHT_LEVEL = 0.95  # a pixel brighter than this counts as (nearly) blown out
COLOUR_LEVEL = 6  # a pixel with |R-G| + |G-B| at least this (of 255) has visible colour

_LEVELS = np.arange(256, dtype=np.float64)
_LEVELS_SQ = _LEVELS**2


def image_stats(image: Image.Image | np.ndarray) -> dict[str, float]:
    """Cheap tone, colour, sharpness and size statistics of one decoded image.

    Parameters
    ----------
    image
        A PIL image (any mode; RGB and L are used as they are) or a ``(h, w)`` / ``(h, w, 3)`` uint8 array.

    Returns
    -------
    dict
        ``width``, ``height`` (pixels), ``aspect_ratio`` (width / height); on luma (ITU-R 601, 0..1):
        ``brightness`` (mean), ``brightness_p01`` / ``brightness_p99`` (1st / 99th percentile), ``dark_share``
        (pixels below 0.15), ``bright_share`` (pixels above 0.95), ``contrast`` (standard deviation),
        ``entropy`` (bits of the 256-level histogram, 0..8: low means little information); ``sharpness``
        (variance of the 4-neighbour Laplacian over the mean squared gradient, at a fixed scale: ~5 for noise,
        1-2 for sharp photos, under 0.4 when blurred; 0 for a flat image); ``colourfulness``
        (mean of |R-G| + |G-B|, 0..1) and ``colour_share`` (share of pixels where that reaches 6 levels);
        both are 0 for a greyscale image whatever its file mode.
    """
    from PIL import Image as PILImage

    if isinstance(image, np.ndarray):
        image = PILImage.fromarray(np.ascontiguousarray(image, dtype=np.uint8))
    if image.mode not in ("RGB", "L"):
        image = image.convert("RGB")
    width, height = image.size
    if width == 0 or height == 0:
        raise ValueError(f"image has no pixels (size {width}x{height})")
    nearest = PILImage.Resampling.NEAREST
    sample = image if width * height <= SAMPLE_GRID**2 else image.resize((SAMPLE_GRID, SAMPLE_GRID), nearest)
    grey = sample.convert("L") if sample.mode == "RGB" else sample  # ITU-R 601 luma, in PIL's C code
    luma = np.frombuffer(grey.tobytes(), np.uint8)
    if sample.mode == "RGB":
        # |R-G| + |G-B| is 0 exactly for a grey pixel, however the file stores it (L, RGB, JPEG'd RGB)
        steps = np.diff(np.frombuffer(sample.tobytes(), np.uint8).reshape(-1, 3).astype(np.int16), axis=1)
        np.abs(steps, out=steps)
        colourfulness = float(steps.sum()) / (255.0 * len(steps))
        colour_share = float(np.count_nonzero(steps[:, 0] + steps[:, 1] >= COLOUR_LEVEL)) / len(steps)
    else:
        colourfulness = colour_share = 0.0
    n = len(luma)
    hist = np.bincount(luma, minlength=256).astype(np.float64)
    cdf = np.cumsum(hist)
    mean = float(hist @ _LEVELS) / n
    variance = max(float(hist @ _LEVELS_SQ) / n - mean * mean, 0.0)
    p = hist[hist > 0] / n
    entropy = float(-(p @ np.log2(p)))
    p01, p99 = np.searchsorted(cdf, (0.01 * n, 0.99 * n))
    return {
        "width": float(width),
        "height": float(height),
        "aspect_ratio": width / height,
        "brightness": mean / 255.0,
        "brightness_p01": float(p01) / 255.0,
        "brightness_p99": float(p99) / 255.0,
        "dark_share": float(cdf[int(DARK_LEVEL * 255)]) / n,
        "bright_share": 1.0 - float(cdf[int(BRIGHT_LEVEL * 255)]) / n,
        "contrast": variance**0.5 / 255.0,
        "entropy": entropy,
        "sharpness": _sharpness(image, width, height, luma if sample is image else None),
        "colourfulness": colourfulness,
        "colour_share": colour_share,
    }


def _sharpness(image: Image.Image, width: int, height: int, luma: np.ndarray | None = None) -> float:
    """Relative Laplacian variance of a central window, sampled so the image's short side is ~SHARPNESS_SCALE px.

    A fixed scale, because the same photo is "sharp" as a thumbnail and "soft" at full resolution: measuring
    every image as if its short side were 256 px makes the numbers of a 300 px and a 4000 px image comparable.
    Nearest-neighbour sampling reads only the window's pixels; a blur of radius r pixels at full size is still a
    blur of r / stride at the sampled scale. ``luma``: the whole image's grey levels when already at hand (a
    small square image is its own window).
    """
    from PIL import Image as PILImage

    stride = max(1.0, min(width, height) / SHARPNESS_SCALE)
    side = min(SHARPNESS_WINDOW * stride, width, height)
    left, top = (width - side) / 2.0, (height - side) / 2.0
    pixels = int(min(SHARPNESS_WINDOW, side))
    if pixels < 3:
        return 0.0
    if luma is not None and stride == 1.0 and width == height == pixels:
        return _laplacian_variance(luma.astype(np.float32).reshape(pixels, pixels))
    window = image.resize((pixels, pixels), PILImage.Resampling.NEAREST, box=(left, top, left + side, top + side))
    if window.mode != "L":
        window = window.convert("L")
    return _laplacian_variance(np.frombuffer(window.tobytes(), np.uint8).astype(np.float32).reshape(pixels, pixels))


def _laplacian_variance(grey: np.ndarray) -> float:
    """Variance of the 4-neighbour Laplacian over the mean squared first difference (x and y); 0 if flat.

    Dividing by the gradient energy makes the number independent of exposure and contrast (a darkened image is
    not blurrier) and of how much of the window is edge or texture; what is left is how much of the detail
    sits at the finest scale, which is what blur removes: about 5 for pixel noise, 1-2 for sharp photos,
    below 0.4 for visibly blurred ones.
    """
    dx = grey[:, 1:] - grey[:, :-1]
    dy = grey[1:, :] - grey[:-1, :]
    # the 4-neighbour Laplacian (sign aside) as differences of the differences: two operations fewer
    laplacian = ((dx[1:-1, 1:] - dx[1:-1, :-1]) + (dy[1:, 1:-1] - dy[:-1, 1:-1])).ravel()
    dx, dy = dx.ravel(), dy.ravel()
    gradient = float(dx @ dx) / len(dx) + float(dy @ dy) / len(dy)
    if gradient <= 1e-6:
        return 0.0
    mean = float(laplacian.sum()) / len(laplacian)
    return max(float(laplacian @ laplacian) / len(laplacian) - mean * mean, 0.0) / gradient
