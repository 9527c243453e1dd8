"""Very large images: decoded reduced and band by band where the file allows it, refused with ``too_large``
(without decoding) where it does not, so one image never takes gigabytes of memory."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from audit.sources import TOO_LARGE, UNREADABLE, load_image
from audit.sources import images as images_module


def _photo_mosaic(columns: int, rows: int) -> np.ndarray:
    """A large real photo: scikit-image's astronaut (512 x 512), tiled ``columns`` x ``rows`` times."""
    from skimage import data

    return np.tile(data.astronaut(), (rows, columns, 1))


def _count_opens(monkeypatch) -> list[Path]:
    """Record every file open of the decoder (the first reads the header, each later one decodes one band)."""
    calls: list[Path] = []
    real = images_module._open

    def counting(path: Path) -> Image.Image:
        calls.append(path)
        return real(path)

    monkeypatch.setattr(images_module, "_open", counting)
    return calls


def write_png_in_strips(path: Path, width: int, height: int, strip_rows: int = 512) -> None:
    """An 8-bit grey PNG written strip by strip through one zlib stream, never holding the image in memory."""

    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)

    row = b"\x00" + bytes(np.arange(width, dtype=np.uint8))  # filter byte 0, then a ramp
    packer = zlib.compressobj(1)
    with open(path, "wb") as handle:
        handle.write(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)))
        for top in range(0, height, strip_rows):
            data = packer.compress(row * min(strip_rows, height - top))
            if data:
                handle.write(chunk(b"IDAT", data))
        handle.write(chunk(b"IDAT", packer.flush()) + chunk(b"IEND", b""))


def test_a_20000_pixel_square_png_is_too_large_and_not_decoded(tmp_path: Path) -> None:
    path = tmp_path / "huge.png"
    write_png_in_strips(path, 20_000, 20_000)
    limit_before = Image.MAX_IMAGE_PIXELS
    assert load_image(path, draft_size=224) == (None, [TOO_LARGE])
    assert load_image(path) == (None, [TOO_LARGE])
    assert TOO_LARGE in UNREADABLE
    assert limit_before == Image.MAX_IMAGE_PIXELS, "PIL's own limit is restored after opening"


def test_a_small_png_written_the_same_way_decodes_to_its_pixels(tmp_path: Path) -> None:
    """The strip writer above makes valid PNGs: a small one decodes to the ramp it wrote."""
    path = tmp_path / "small.png"
    write_png_in_strips(path, 300, 70, strip_rows=16)
    image, problems = load_image(path)
    assert problems == [] and image.size == (300, 70)
    expected = np.arange(300, dtype=np.uint8)
    np.testing.assert_array_equal(np.asarray(image)[37, :, 0], expected)


def test_a_tiled_tiff_above_the_limit_decodes_band_by_band_like_a_whole_reduce(tmp_path: Path, monkeypatch) -> None:
    import tifffile

    mosaic = _photo_mosaic(8, 6)  # 4096 x 3072 pixels
    path = tmp_path / "tiled.tif"
    tifffile.imwrite(path, mosaic, photometric="rgb", tile=(256, 256))
    monkeypatch.setattr(images_module, "MAX_DECODE_PIXELS", 2_000_000)
    opened = _count_opens(monkeypatch)
    image, problems = load_image(path, draft_size=224)
    assert problems == []
    # Reduced by 8: a power of two, >= 2.5 (to fit 2 million pixels) and <= 3072 // 224 = 13 (short side >= 224).
    factor = 8
    expected = Image.fromarray(mosaic).reduce(factor)  # the whole image reduced at once, as an independent check
    assert image.size == expected.size == (512, 384)
    assert len(opened) == 1 + 3072 // 256, "one band per row of 256-pixel tiles"
    np.testing.assert_array_equal(np.asarray(image), np.asarray(expected))
    assert image.info["original_size"] == (4096, 3072)
    # Without a draft size the caller wants every pixel, which the limit refuses.
    assert load_image(path) == (None, [TOO_LARGE])


def test_an_uncompressed_single_strip_tiff_is_read_in_bands(tmp_path: Path, monkeypatch) -> None:
    mosaic = _photo_mosaic(4, 3)[:1500, :2000]  # 2000 x 1500, one uncompressed strip as Pillow writes it
    path = tmp_path / "strip.tif"
    Image.fromarray(mosaic).save(path)
    assert len(Image.open(path).tile) == 1
    monkeypatch.setattr(images_module, "MAX_DECODE_PIXELS", 500_000)
    opened = _count_opens(monkeypatch)
    image, problems = load_image(path, draft_size=300)
    assert problems == [] and image.size == (500, 375)  # by 4: >= 2.45 to fit, <= 1500 // 300 = 5
    np.testing.assert_array_equal(np.asarray(image), np.asarray(Image.fromarray(mosaic).reduce(4)))
    assert len(opened) == 1 + int(np.ceil(1500 / images_module.BAND_ROWS))


def test_a_large_jpeg_decodes_at_a_reduced_scale(tmp_path: Path, monkeypatch) -> None:
    mosaic = _photo_mosaic(8, 6)
    path = tmp_path / "big.jpg"
    Image.fromarray(mosaic).save(path, quality=90)
    monkeypatch.setattr(images_module, "MAX_DECODE_PIXELS", 2_000_000)
    image, problems = load_image(path, draft_size=224)
    assert problems == [] and image.size == (512, 384)  # libjpeg's 1/8 scale, the smallest still >= 224
    assert image.info["original_size"] == (4096, 3072)
    assert load_image(path) == (None, [TOO_LARGE])


@pytest.mark.parametrize("mode", ["RGB", "L"])
def test_images_under_the_limit_decode_as_before(tmp_path: Path, mode: str) -> None:
    photo = Image.fromarray(_photo_mosaic(1, 1)).convert(mode)
    path = tmp_path / f"photo-{mode}.png"
    photo.save(path)
    image, problems = load_image(path, draft_size=64)
    assert problems == [] and image.size == (512, 512)
    np.testing.assert_array_equal(np.asarray(image), np.asarray(photo.convert("RGB")))
