"""model/preprocess.py: t2v / i2v size rules, image decoding, i2v pixel preprocessing."""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from model.preprocess import (
    ImageLoadError,
    area_mismatch,
    image_target_size,
    load_image,
    preprocess_image,
    snap_hw_to_multiple_of_32,
)
from tools.conformance import tables as tables_case

CASE = Path(__file__).parents[1] / "fixtures" / "reference" / "tables"
RED, BLUE, WHITE = (255, 0, 0), (0, 0, 255), (255, 255, 255)


def _encode(image: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format=fmt, **kw)
    return buf.getvalue()


def _two_halves(size: tuple[int, int], left=RED, right=BLUE) -> Image.Image:
    """RGB image, left half `left`, right half `right`."""
    w, h = size
    image = Image.new("RGB", size, right)
    image.paste(left, (0, 0, w // 2, h))
    return image


def _close(pixel, expected, tol: int) -> bool:
    return all(abs(a - b) <= tol for a, b in zip(pixel, expected, strict=True))


# -- conformance -------------------------------------------------------------------------------


def test_reference_tables():
    checks = tables_case.run(CASE)
    failed = [c.line() for c in checks if not c.passed]
    assert not failed, "\n".join(failed)
    assert {c.name for c in checks} >= {
        "resolution.i2v",
        "resolution.t2v",
        "resolution.model_specs",
        "prompt_format",
        "text_clean",
        "preprocess_pixels.image_tensor",
    }


def test_missing_table_fails(tmp_path):
    checks = tables_case.run(tmp_path)
    assert checks and not any(c.passed for c in checks)
    assert "missing" in checks[0].detail


# -- sizes -------------------------------------------------------------------------------------


def test_snap_t2v():
    assert snap_hw_to_multiple_of_32(512, 992, 720 * 720) == (512, 992)
    assert snap_hw_to_multiple_of_32(704, 1280, 720 * 720) == (544, 960)
    assert snap_hw_to_multiple_of_32(10, 10, 100) == (32, 32)  # minimum side 32
    assert not area_mismatch(512, 992, 720 * 720)
    assert area_mismatch(720, 720, 960 * 960)
    with pytest.raises(ValueError, match="h must be > 0"):
        snap_hw_to_multiple_of_32(0, 512, 720 * 720)


@pytest.mark.parametrize(
    ("image_wh", "area", "expected_hw"),
    [
        ((1920, 1080), 720 * 720, (544, 960)),
        ((1920, 1080), 960 * 960, (704, 1280)),  # 720 / 32 = 22.5 rounds to even
        ((1024, 768), 720 * 720, (608, 832)),  # each side rounded on its own
        ((300, 2000), 720 * 720, (1824, 288)),  # a height-first candidate is closer in area
        ((2000, 300), 720 * 720, (288, 1856)),  # not the transpose: heights are the candidates
        ((50, 37), 3072, (32, 64)),
        # the official candidate list is small: closer areas outside it are never chosen
        ((3720, 895), 3072, (32, 128)),  # 32x96 would be exact
        ((11, 19), 4096, (64, 32)),  # area tie with 96x64, the aspect error decides
        ((8, 82), 2048, (64, 32)),
        ((1, 1), 100, (32, 32)),  # fewer than one 32x32 cell: one cell
    ],
)
def test_image_target_size(image_wh, area, expected_hw):
    assert image_target_size(*image_wh, area) == expected_hw


def test_image_target_size_is_the_official_rule():
    """Against the rule restated independently in heldout_gen.py, on random sizes and areas."""
    import random

    from heldout_gen import official_i2v_size

    rng = random.Random(0)
    for area in (3072, 4096, 2048, 12345, 518400, 921600):
        for _ in range(500):
            w, h = rng.randint(1, 4000), rng.randint(1, 4000)
            assert image_target_size(w, h, area) == official_i2v_size(w, h, area), (w, h, area)


def test_preprocess_image_keeps_an_image_already_at_size():
    image = _two_halves((64, 32))
    pixels = preprocess_image(image, 2048)  # 64x32 is the target: no resampling
    expected = torch.from_numpy(np.array(image)).permute(2, 0, 1)[None].float() / 255 * 2 - 1
    assert torch.equal(pixels, expected)


def test_preprocess_image_shape_and_range():
    pixels = preprocess_image(_two_halves((50, 37)), 3072)
    assert pixels.shape == (1, 3, 32, 64) and pixels.dtype == torch.float32
    assert pixels[0, 0, :, :8].mean() > 0.9 and pixels[0, 2, :, -8:].mean() > 0.9
    rgba = Image.new("RGBA", (40, 40), (255, 255, 255, 0))  # alpha dropped, colour kept
    assert torch.allclose(preprocess_image(rgba, 1024), torch.ones(1, 3, 32, 32))
    clear_black = Image.new("RGBA", (40, 40), (0, 0, 0, 0))
    assert torch.allclose(preprocess_image(clear_black, 1024), -torch.ones(1, 3, 32, 32))


# -- decoding ----------------------------------------------------------------------------------


def test_png_alpha_dropped_stored_colour_kept():
    # as the official release reads images (OpenCV's default colour mode): no compositing
    image = Image.new("RGBA", (8, 8), (0, 0, 255, 0))  # fully transparent blue
    image.putpixel((1, 1), (255, 0, 0, 255))
    image.putpixel((2, 2), (0, 0, 0, 128))
    out = load_image(_encode(image, "PNG"))
    assert out.mode == "RGB" and out.size == (8, 8)
    assert out.getpixel((0, 0)) == BLUE
    assert out.getpixel((1, 1)) == RED
    assert out.getpixel((2, 2)) == (0, 0, 0)


def test_gray_alpha_and_transparent_palette_keep_their_colours():
    gray = Image.new("LA", (4, 4), (77, 0))
    assert load_image(_encode(gray, "PNG")).getpixel((0, 0)) == (77, 77, 77)
    palette = Image.new("P", (4, 4), 3)
    palette.putpalette([0, 0, 0] * 3 + [9, 8, 7] + [0, 0, 0] * 252)
    data = _encode(palette, "PNG", transparency=3)
    assert load_image(data).getpixel((0, 0)) == (9, 8, 7)


def test_jpeg_exif_orientation_applied():
    # Stored 40x20, left red / right blue, with orientation 6 ("rotate 90 CW to display"):
    # upright it is 20x40 with red on top.
    exif = Image.Exif()
    exif[0x0112] = 6
    data = _encode(_two_halves((40, 20)), "JPEG", quality=95, exif=exif.tobytes())
    assert Image.open(io.BytesIO(data)).size == (40, 20)
    out = load_image(data)
    assert out.mode == "RGB" and out.size == (20, 40)
    assert _close(out.getpixel((10, 5)), RED, tol=40)
    assert _close(out.getpixel((10, 35)), BLUE, tol=40)


def test_webp():
    out = load_image(_encode(_two_halves((16, 16)), "WEBP", lossless=True))
    assert out.mode == "RGB" and out.size == (16, 16)
    assert out.getpixel((2, 8)) == RED and out.getpixel((13, 8)) == BLUE


def test_animated_gif_first_frame():
    frames = [Image.new("RGB", (12, 10), color) for color in (RED, BLUE, WHITE)]
    data = _encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=50)
    assert Image.open(io.BytesIO(data)).n_frames == 3
    out = load_image(data)
    assert out.mode == "RGB" and out.size == (12, 10)
    assert out.getpixel((6, 5)) == RED


def test_path_and_bytearray_inputs(tmp_path):
    data = _encode(_two_halves((8, 4)), "PNG")
    path = tmp_path / "in.png"
    path.write_bytes(data)
    for source in (path, str(path), bytearray(data)):
        assert load_image(source).size == (8, 4)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "empty"),
        (b"\x89PNG\r\n\x1a\n garbage", "corrupt image header"),
        (b"<html>not an image</html>", "not a PNG, JPEG, WebP or GIF"),
        (_encode(Image.new("RGB", (4, 4)), "BMP"), "not a PNG, JPEG, WebP or GIF"),
    ],
)
def test_rejects_unreadable_data(data, message):
    with pytest.raises(ImageLoadError, match=message):
        load_image(data)


def test_rejects_truncated_image():
    data = _encode(Image.effect_noise((64, 64), 50).convert("RGB"), "PNG")
    with pytest.raises(ImageLoadError, match="corrupt or truncated PNG"):
        load_image(data[: len(data) // 2])


def test_rejects_oversized_image_before_decoding():
    data = _encode(Image.new("RGB", (100, 100)), "PNG")
    with pytest.raises(ImageLoadError, match=r"100x100 = 10,000 pixels, over the 5,000-pixel"):
        load_image(data, max_pixels=5000)


def test_rejects_decompression_bomb_header():
    # A 4x4 PNG whose header claims 100000x100000: refused from the header, nothing decoded.
    data = bytearray(_encode(Image.new("RGB", (4, 4)), "PNG"))
    ihdr = struct.pack(">II", 100_000, 100_000) + bytes(data[24:29])
    data[16:29] = ihdr
    data[29:33] = struct.pack(">I", zlib.crc32(b"IHDR" + ihdr))
    with pytest.raises(ImageLoadError, match="too large"):
        load_image(bytes(data))


def test_rejects_missing_file(tmp_path):
    with pytest.raises(ImageLoadError, match="cannot read image file"):
        load_image(tmp_path / "nope.png")


def test_image_load_error_is_a_value_error():
    assert issubclass(ImageLoadError, ValueError)
