"""Output sizes and the i2v conditioning image: decode, size rules, pixel preprocessing.

Sizes are (H, W) in pixels, always multiples of 32 (the VAE's 16x downsampling times the
DiT's 2x2 patches). Two rules, both matched row by row against `tables/resolution.json`:

- t2v, `snap_hw_to_multiple_of_32`: scale (h, w) by sqrt(area / (h * w)), round to integers,
  then round each side to the nearest multiple of 32 (minimum 32).
- i2v, `image_target_size` (the official `preprocess_image_tensor`, h_w_multiple_of=32): with
  the aspect r = w / h and the target in whole 32x32 cells, n = max(1, area // 1024), the
  candidates are, in this order, (1) seven heights p = max(1, p0 + d) cells for d = -3..3, where
  p0 = max(1, round(sqrt(n / r))), each with the width max(1, round(p * r)) cells, and (2) both
  sides scaled by sqrt(area / (h * w)) and rounded on their own to multiples of 32 (minimum 32).
  The winner has the smallest |H * W - area|, then the smallest |W / H - r|; an exact tie goes
  to the earlier candidate. This is a fixed, small candidate set, not a search: a size outside
  it is never chosen even when its area is closer (e.g. 3720x895 at area 3072 gives 32x128,
  although 32x96 has the exact area). An image already at the chosen size is not resampled.

Rounding is Python's `round` (half to even) throughout; it decides exact halves such as
720 / 32 = 22.5 (1920x1080 at 960*960 gives 704x1280).
"""

from __future__ import annotations

import io
import math
import warnings
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

if TYPE_CHECKING:  # torch is imported where it is used: the API process validates images without it
    import torch

MULTIPLE = 32  # every output side is a multiple of this
AREA_TOLERANCE = 0.10  # the engine warns when a t2v request is further than this from the area
MAX_IMAGE_PIXELS = 50_000_000  # decompression-bomb guard: refuse to decode larger images
IMAGE_FORMATS = ("PNG", "JPEG", "WEBP", "GIF")
_HEIGHT_OFFSETS = range(-3, 4)  # i2v: heights tried around the aspect-derived one, in cells


class ImageLoadError(ValueError):
    """The image bytes cannot be used: empty, unreadable, corrupt, unsupported or too large."""


# -- sizes -----------------------------------------------------------------------------------


def _check_positive(**sides: int | float) -> None:
    for name, value in sides.items():
        if not value > 0:
            raise ValueError(f"{name} must be > 0, got {value!r}")


def _round_to_multiple(x: float) -> int:
    return max(MULTIPLE, round(x / MULTIPLE) * MULTIPLE)


def snap_hw_to_multiple_of_32(h: int, w: int, area: int) -> tuple[int, int]:
    """t2v: the requested (h, w) rescaled to about `area` pixels, sides multiples of 32."""
    _check_positive(h=h, w=w, area=area)
    scale = math.sqrt(area / (h * w))
    return _round_to_multiple(round(h * scale)), _round_to_multiple(round(w * scale))


def area_mismatch(h: int, w: int, area: int) -> bool:
    """True when the requested h * w is more than 10% away from the variant's area."""
    _check_positive(h=h, w=w, area=area)
    return abs(h * w - area) / area > AREA_TOLERANCE


def image_target_size(image_w: int, image_h: int, area: int) -> tuple[int, int]:
    """i2v: the (H, W) an image of image_w x image_h is resized to for a target `area`.

    The official rule (module docstring): a fixed list of candidates, ranked by area error,
    then aspect error, then list order.
    """
    _check_positive(image_w=image_w, image_h=image_h, area=area)
    aspect = image_w / image_h  # W / H
    cells = max(1, area // (MULTIPLE * MULTIPLE))  # the target area in 32x32 cells
    p0 = max(1, round(math.sqrt(cells / aspect)))
    candidates = []
    for offset in _HEIGHT_OFFSETS:  # (1) heights around p0, widths from the aspect
        p = max(1, p0 + offset)
        candidates.append((p * MULTIPLE, max(1, round(p * aspect)) * MULTIPLE))
    scale = math.sqrt(area / (image_h * image_w))  # (2) both sides scaled, rounded on their own
    candidates.append((_round_to_multiple(image_h * scale), _round_to_multiple(image_w * scale)))

    def score(hw: tuple[int, int]) -> tuple[int, float]:
        h, w = hw
        return abs(h * w - area), abs(w / h - aspect)

    return min(candidates, key=score)  # min keeps the first of equal scores


# -- image decoding ----------------------------------------------------------------------------


def _open(data: bytes | str | Path) -> Image.Image:
    if isinstance(data, (str, Path)):
        path = Path(data)
        try:
            data = path.read_bytes()
        except OSError as e:
            raise ImageLoadError(
                f"cannot read image file {str(path)!r}: {e.strerror or e}"
            ) from None
    elif isinstance(data, (bytearray, memoryview)):
        data = bytes(data)
    elif not isinstance(data, bytes):
        raise TypeError(f"image data must be bytes or a path, got {type(data).__name__}")
    if not data:
        raise ImageLoadError("image data is empty (0 bytes)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            return Image.open(io.BytesIO(data), formats=IMAGE_FORMATS)
    except UnidentifiedImageError:
        raise ImageLoadError(
            f"not a PNG, JPEG, WebP or GIF image ({len(data)} bytes starting {data[:8]!r})"
        ) from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise ImageLoadError(f"image too large to decode: {e}") from None
    except (OSError, SyntaxError, ValueError, EOFError) as e:
        raise ImageLoadError(f"corrupt image header: {e}") from None


def to_rgb(image: Image.Image) -> Image.Image:
    """RGB copy of `image`, as the official release reads it (OpenCV's default colour mode):
    an alpha channel is dropped and the stored colour kept, even under fully transparent
    pixels (no compositing); a palette gives its colours; 16-bit gray is scaled to 8 bits."""
    if image.mode == "RGB":
        return image
    if image.mode in ("I;16", "I;16L", "I;16B", "I"):  # 16-bit gray PNG
        gray = np.asarray(image, dtype=np.float64) / 257.0
        return Image.fromarray(np.clip(np.round(gray), 0, 255).astype(np.uint8)).convert("RGB")
    if image.mode in ("RGBa", "La"):  # premultiplied: the stored colour is the unpremultiplied one
        image = image.convert(image.mode.upper())
    if image.mode in ("RGBA", "LA", "PA"):
        return image.convert(image.mode[:-1]).convert("RGB")  # drop alpha, keep the colour
    return image.convert("RGB")


def _reducible(image: Image.Image) -> Image.Image:
    """`image` in a mode `Image.reduce` takes (1-bit as 8-bit gray; palette and 16-bit gray as
    `to_rgb` makes them), keeping its EXIF."""
    if image.mode in ("L", "LA", "RGB", "RGBA"):
        return image
    converted = image.convert("L") if image.mode == "1" else to_rgb(image)
    converted.info = {**image.info, **converted.info}
    return converted


def load_image(
    data: bytes | str | Path,
    *,
    max_pixels: int = MAX_IMAGE_PIXELS,
    pixel_budget: int | None = None,
) -> Image.Image:
    """Decode a PNG, JPEG, WebP or GIF (its first frame) into an upright RGB image.

    `data` is the encoded file (bytes) or a path to it. EXIF orientation is applied and an
    alpha channel is dropped, keeping the stored colour (`to_rgb`, as the official release
    reads images). Raises `ImageLoadError` naming the problem for empty, unreadable, corrupt,
    unsupported or oversized (> `max_pixels`, read from the header before any pixel is decoded)
    images.

    With `pixel_budget`, an image with more pixels comes back reduced by an integer factor to
    at most that many: a JPEG is decoded at 1/2, 1/4 or 1/8 scale directly (DCT scaling), other
    formats are box-reduced right after decoding. Images within the budget are untouched, so
    the model's own resize (`preprocess_image`) sees exactly the official pixels for them.
    """
    image = _open(data)
    width, height = image.size
    if width < 1 or height < 1:
        raise ImageLoadError(f"image has no pixels ({width}x{height})")
    if width * height > max_pixels:
        raise ImageLoadError(
            f"image is {width}x{height} = {width * height:,} pixels, over the "
            f"{max_pixels:,}-pixel limit"
        )
    fmt = image.format or "image"
    try:
        image.seek(0)  # animated GIF / WebP: the first frame
        if pixel_budget is not None and width * height > pixel_budget and fmt == "JPEG":
            factor = math.sqrt(width * height / pixel_budget)
            image.draft("RGB", (math.ceil(width / factor), math.ceil(height / factor)))
        image.load()
        if pixel_budget is not None and image.width * image.height > pixel_budget:
            factor = math.ceil(math.sqrt(image.width * image.height / pixel_budget))
            image = _reducible(image).reduce(factor)
        upright = ImageOps.exif_transpose(image)
    except (OSError, SyntaxError, ValueError, EOFError) as e:
        raise ImageLoadError(f"corrupt or truncated {fmt} data: {e}") from None
    return to_rgb(upright)


def fit_image_bytes(data: bytes, *, max_pixels: int, pixel_budget: int) -> bytes:
    """Check and bound an encoded image once, where it arrives: `data` itself when it decodes
    within `pixel_budget` pixels, else the reduced upright RGB image as a PNG (so whoever decodes
    it next, e.g. a worker, never holds more than the budget). `ImageLoadError` as `load_image`."""
    source = _open(data)
    size = source.size
    source.close()
    image = load_image(data, max_pixels=max_pixels, pixel_budget=pixel_budget)
    if image.size == size or image.size == size[::-1]:  # not reduced (maybe EXIF-rotated)
        return data
    out = io.BytesIO()
    image.save(out, format="PNG", compress_level=1)
    return out.getvalue()


# -- pixels ------------------------------------------------------------------------------------


def preprocess_image(image: Image.Image, area: int) -> torch.Tensor:
    """The i2v first frame as the VAE expects it: [1, 3, H, W] float32 in about [-1, 1].

    x / 255 * 2 - 1, then torch bicubic resize (align_corners=False, no antialias) to
    `image_target_size`. Bicubic overshoots slightly beyond [-1, 1]; like Ovi, no clamp.
    """
    import torch
    import torch.nn.functional as F

    rgb = to_rgb(image)
    height, width = image_target_size(rgb.width, rgb.height, area)
    pixels = torch.from_numpy(np.array(rgb, dtype=np.uint8))  # [h, w, 3]
    x = pixels.permute(2, 0, 1)[None].to(torch.float32) / 255.0 * 2 - 1  # [1, 3, h, w]
    if (height, width) == (rgb.height, rgb.width):
        return x  # the official code resizes only when the size changes
    return F.interpolate(
        x, size=(height, width), mode="bicubic", align_corners=False, antialias=False
    )
