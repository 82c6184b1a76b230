"""Read an image with pillow into `Tensor[1, 3, H, W]` in [0, 1] (EXIF orientation applied)."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from roicli.errors import InputError


def read_image(path: str) -> torch.Tensor:
    try:
        with Image.open(path) as im:
            im.load()
            im = ImageOps.exif_transpose(im)
    except FileNotFoundError:
        raise InputError(f"{path}: no such file") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise InputError(f"{path}: cannot read image: {e}") from None
    return _to_rgb_tensor(im)


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
