"""A small, fixed (weight-free) backbone so an image can stand in for a feature map.

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

import torch
import torch.nn.functional as F
from torch import Tensor, nn

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
