"""Read an image with pillow into `Tensor[1, 3, H, W]` in [0, 1] (EXIF orientation applied)."""

from __future__ import annotations

from contextlib import contextmanager

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from roicli.errors import InputError

# Larger images are refused before they are decoded (a "decompression bomb" is a small file that
# decodes to gigabytes); `max_image_pixels` (--max-image-pixels) raises the limit.
MAX_PIXELS = 100_000_000
# Peak bytes per pixel while decoding: pillow's RGB copy, numpy's float32 copy and the tensor.
DECODE_BYTES_PER_PIXEL = 3 + 12 + 12


def image_size(path: str, max_pixels: int | None = None) -> tuple[int, int]:
    """(width, height) from the header, without decoding; refuses images over `max_pixels`."""
    with _open(path, max_pixels) as im:
        return im.size


def read_image(path: str, max_pixels: int | None = None) -> torch.Tensor:
    with _open(path, max_pixels) as im:
        try:
            im.load()
            return _to_rgb_tensor(ImageOps.exif_transpose(im))
        except (OSError, SyntaxError, ValueError) as e:
            raise InputError(f"{path}: cannot read image: {e}") from None


@contextmanager
def _open(path: str, max_pixels: int | None):
    limit = MAX_PIXELS if max_pixels is None else max_pixels
    saved, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, None  # roicli's own limit replaces pillow's
    try:
        try:
            im = Image.open(path)
        except FileNotFoundError:
            raise InputError(f"{path}: no such file") from None
        except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
            raise InputError(f"{path}: cannot read image: {e}") from None
        with im:
            w, h = im.size
            if w * h > limit:
                raise InputError(
                    f"{path}: image is {w}x{h} = {w * h:,} pixels, over the limit of {limit:,} "
                    "(a guard against decompression bombs); {max_image_pixels} N raises it",
                    param="max_image_pixels",
                )
            yield im
    finally:
        Image.MAX_IMAGE_PIXELS = saved


def _to_rgb_tensor(im: Image.Image) -> torch.Tensor:
    if im.mode in ("I;16", "I;16B", "I;16L", "I;16N"):
        arr = np.asarray(im, dtype=np.float32) / 65535.0
        rgb = np.repeat(arr[..., None], 3, axis=2)
    elif im.mode in ("I", "F"):
        arr = np.asarray(im, dtype=np.float32)
        top = 65535.0 if im.mode == "I" and arr.max() > 255 else (255.0 if im.mode == "I" else 1.0)
        rgb = np.repeat(np.clip(arr / top, 0.0, 1.0)[..., None], 3, axis=2)
    else:
        if im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info):
            im = im.convert("RGBA")
            background = Image.new("RGBA", im.size, (255, 255, 255, 255))
            im = Image.alpha_composite(background, im)
        rgb = np.asarray(im.convert("RGB"), dtype=np.float32) / 255.0
    return torch.from_numpy(np.ascontiguousarray(rgb)).permute(2, 0, 1)[None]
