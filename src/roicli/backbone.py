"""A small, fixed (weight-free) backbone so an image can stand in for a feature map, and
`features_from_image`, which runs an image through it (or through a TorchScript backbone).

Nothing is learned or downloaded: every filter is written down here, so the features are
deterministic and mean something. From an RGB image in [0, 1] it computes, at three scales (the
image halved once, twice, three times), nine channels: the opponent colours (luminance, red-green,
blue-yellow), the gradient magnitude, the edge energy at 0, 45, 90 and 135 degrees, and the absolute
Laplacian (blobs). Each scale is average-pooled to stride 8, giving `Tensor[N, 27, H // 8, W // 8]`.

Feature cell (i, j) averages image pixels [8i, 8i + 8) x [8j, 8j + 8): its centre sits at image
coordinate 8i + 4, i.e. at +0.5 cells, which is the pixel model of `aligned=True`.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from roicli.errors import InputError, UsageError
from roicli.io.features import Features
from roicli.io.images import DECODE_BYTES_PER_PIXEL, image_size, read_image
from roicli.resources import check_memory

STRIDE = 8
CHANNELS = 27
CHANNEL_NAMES = [
    f"s{s}_{name}"
    for s in (2, 4, 8)
    for name in ("lum", "red_green", "blue_yellow", "grad", "edge0", "edge45", "edge90", "edge135", "blob")
]


class FilterBankBackbone(nn.Module):
    """Fixed filter bank, stride 8. forward(Tensor[N, 3, H, W] in [0, 1]) -> Tensor[N, 27, H/8, W/8]."""

    stride = STRIDE
    # Peak activation memory per input pixel (float32), measured on a 2000x2000 image: about 130 B.
    bytes_per_pixel = 160

    def __init__(self) -> None:
        super().__init__()
        opponent = torch.tensor(
            [[0.299, 0.587, 0.114], [0.5, -0.5, 0.0], [-0.25, -0.25, 0.5]]
        )  # rows: luminance, red-green, blue-yellow
        sobel_x = torch.tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]]) / 8
        laplace = torch.tensor([[0.0, 1.0, 0.0], [1.0, -4.0, 1.0], [0.0, 1.0, 0.0]])
        self.register_buffer("opponent", opponent[:, :, None, None])
        self.register_buffer("gradient", torch.stack([sobel_x, sobel_x.T])[:, None])  # [2, 1, 3, 3]
        self.register_buffer("laplace", laplace[None, None])
        angles = torch.tensor([0.0, 45.0, 90.0, 135.0]) * math.pi / 180
        self.register_buffer("directions", torch.stack([angles.cos(), angles.sin()], dim=1))

    def forward(self, image: Tensor) -> Tensor:
        x = F.conv2d(image, self.opponent)  # [N, 3, H, W]
        scales = []
        for s in range(1, 4):
            x = F.avg_pool2d(x, 2)  # [N, 3, H / 2**s, W / 2**s]
            lum = F.pad(x[:, :1], (1, 1, 1, 1), mode="replicate")
            g = F.conv2d(lum, self.gradient)  # [N, 2, h, w]: d/dx, d/dy
            magnitude = g.pow(2).sum(dim=1, keepdim=True).sqrt()
            edges = torch.einsum("nkhw,dk->ndhw", g, self.directions).abs()  # [N, 4, h, w]
            blob = F.conv2d(lum, self.laplace).abs()
            stage = torch.cat([x, magnitude, edges, blob], dim=1)  # [N, 9, h, w]
            scales.append(F.avg_pool2d(stage, 2 ** (3 - s)) if s < 3 else stage)
        return torch.cat(scales, dim=1)  # [N, 27, H // 8, W // 8]


def features_from_image(
    path: str,
    backbone: str = "builtin",
    stride: float | None = None,
    spatial_scale: float | None = None,
    device: torch.device | str = "cpu",
    max_pixels: int | None = None,
) -> Features:
    """Run an image through the built-in filter bank, or a TorchScript backbone (`torch.jit.save`).

    `max_pixels` refuses larger images (decompression bombs; default `io.images.MAX_PIXELS`).
    The built-in backbone has stride 8. A TorchScript backbone takes `Tensor[1, 3, H, W]` in [0, 1]
    and returns `Tensor[1, C, h, w]`; its stride is `--stride`, else inferred as H / h.
    """
    if backbone == "builtin" and (stride is not None or spatial_scale is not None):
        raise UsageError(
            "{stride}/{spatial_scale}: the built-in backbone's stride is fixed at 8; "
            "they apply to {backbone} FILE or to feature files",
            param=("stride", "spatial_scale", "backbone"),
        )
    w, h = image_size(path, max_pixels)
    per_pixel = DECODE_BYTES_PER_PIXEL + (FilterBankBackbone.bytes_per_pixel if backbone == "builtin" else 0)
    check_memory(
        w * h * per_pixel,
        f"{path}: reading this {w}x{h} image" + (" and running the built-in backbone" if backbone == "builtin" else ""),
        "downscale the image, or pool a feature file made elsewhere",
    )
    image = read_image(path, max_pixels).to(device)
    if backbone == "builtin":
        net, origin = FilterBankBackbone().to(device), "builtin backbone"
    else:
        if not Path(backbone).is_file():
            raise InputError(f"{backbone}: no such file ({{backbone}})", param="backbone")
        try:
            net = torch.jit.load(backbone, map_location=device)
        except Exception as e:
            raise InputError(f"{backbone}: not a TorchScript module ({{backbone}}): {e}", param="backbone") from None
        origin = "option"
    with torch.no_grad():
        try:
            out = net(image)
        except Exception as e:
            raise InputError(f"{backbone}: backbone failed on {path}: {e}") from None
    if not isinstance(out, torch.Tensor) or out.dim() != 4:
        raise InputError(f"{backbone}: expected the backbone to return Tensor[1, C, h, w], got {_describe(out)}")
    h_img = image.shape[-2]
    if spatial_scale is not None:
        scale = spatial_scale
        origin = "option"
    elif stride is not None:
        scale = 1.0 / stride
        origin = "option"
    elif backbone == "builtin":
        scale = 1.0 / FilterBankBackbone.stride
    else:
        scale = 2.0 ** round(torch.log2(torch.tensor(out.shape[-2] / h_img)).item())
        origin = "inferred from the backbone's output size"
    key = "builtin" if backbone == "builtin" else Path(backbone).name
    return Features([out.float()], [key], [scale], origin, path, image_size=(h_img, image.shape[-1]))


def _describe(x) -> str:
    return f"shape {tuple(x.shape)}" if isinstance(x, torch.Tensor) else type(x).__name__
