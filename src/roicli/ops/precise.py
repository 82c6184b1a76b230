"""Precise RoI Pooling (Jiang et al., "Acquisition of Localization Confidence", ECCV 2018).

The feature map is read as the continuous function
    f(y, x) = sum_ij F[i, j] * tri(y - i) * tri(x - j),   tri(t) = max(0, 1 - |t|),
the bilinear interpolation of the pixels, with pixel (i, j) at the point (i, j). Outside the map f
falls linearly to 0 within one cell and is 0 beyond: pixels outside the map count as zeros (as in the
paper's implementation). Each output is the exact mean of f over its bin — no sampling points, no
rounding. Because f is separable, that mean is `sum_ij wy_i * wx_j * F[i, j]` with
`wy_i = (1 / bin_h) * integral of tri(y - i) over the bin's rows`: a closed form, computed in float64.

Note RoI Align treats the band [-1, 0] differently (it clamps samples there to pixel 0), so the two
agree only for bins inside [0, H-1] x [0, W-1].
"""

from __future__ import annotations

import torch
from torch import Tensor

from roicli.ops import (
    _library,  # noqa: F401  (registers torch.ops.roicli)
    _scripted,
)
from roicli.ops._validate import BoxesLike, as_rois, check_input, to_pair


def precise_roi_pool(
    input: Tensor,
    boxes: BoxesLike,
    output_size: int | tuple[int, int],
    spatial_scale: float = 1.0,
    aligned: bool = True,
) -> Tensor:
    """Exact average of the bilinearly interpolated map over each bin.

    Args:
        input (Tensor[N, C, H, W]): feature maps.
        boxes (Tensor[K, 5] or list[Tensor[L, 4]]): (batch index, x1, y1, x2, y2) in image pixels.
        output_size (int or (PH, PW)): bins per RoI.
        spatial_scale (float): feature cells per image pixel (1/16: x=160 is feature column 10).
        aligned (bool): shift coordinates by -0.5 so that pixel centres sit at +0.5 (default True,
            as for any new model); the RoI size is never clamped.

    Returns:
        Tensor[K, C, PH, PW]. A bin of zero width (height) gives the limit of the mean: f's value
        along that line. Inverted boxes give the mean over the same intervals, taken in reverse.

    Checks: shapes, dtypes, devices and arguments here (also while tracing or compiling); the
    boxes' values (finite, batch index an integer in `[0, N)`) in the `torch.ops.roicli` operator,
    on the data, whenever it runs (eagerly or inside a compiled, exported, traced or scripted
    graph). Both raise ValidationError.
    """
    check_input(input)
    ph, pw = to_pair(output_size)
    rois = as_rois(boxes, input, values=False)  # the operator checks the values
    return torch.ops.roicli.precise_roi_pool.default(input, rois, float(spatial_scale), ph, pw, aligned)


def _tent_integral(a: Tensor, b: Tensor, i: Tensor) -> Tensor:
    """Integral of tri(t - i) over [a, b] (a <= b). The tent is linear on [i-1, i] and [i, i+1], so
    each piece contributes its length times the tent at its midpoint: no cancellation for tiny bins."""
    total = torch.zeros_like(i)
    for lo, hi in ((i - 1, i), (i, i + 1)):
        left, right = torch.maximum(a, lo), torch.minimum(b, hi)
        length = (right - left).clamp_min(0.0)
        total = total + length * (1.0 - ((left + right) / 2 - i).abs()).clamp_min(0.0)
    return total


def integral_taps(
    start: Tensor, end: Tensor, spatial_scale: float, pooled: int, aligned: bool, size: int
) -> tuple[Tensor, Tensor]:
    """Pixels and weights of each bin's exact mean along one axis: `Tensor[K, P, T]` each."""
    offset = 0.5 if aligned else 0.0
    lo = start * spatial_scale - offset  # [K]
    bin_size = (end * spatial_scale - offset - lo) / pooled
    p = torch.arange(pooled + 1, device=start.device, dtype=start.dtype)
    edges = lo[:, None] + p * bin_size[:, None]  # [K, P+1]
    a = torch.minimum(edges[:, :-1], edges[:, 1:])  # [K, P]
    b = torch.maximum(edges[:, :-1], edges[:, 1:])
    # Pixels whose tent (i-1, i+1) meets [a, b]: floor(a) .. ceil(b), clipped to the map.
    first = torch.floor(a).clamp(0, size - 1)
    last = torch.ceil(b).clamp(0, size - 1)
    taps = int((last - first).max()) + 1 if a.numel() else 1
    i = first[..., None] + torch.arange(taps, device=start.device, dtype=start.dtype)  # [K, P, T]
    width = (b - a)[..., None]
    mean = _tent_integral(a[..., None], b[..., None], i) / width.clamp_min(1e-300)
    point = (1.0 - (a[..., None] - i).abs()).clamp_min(0.0)  # the limit for a zero-width bin
    weight = torch.where(width > 0, mean, point) * (i <= last[..., None])
    return i.long().clamp_max(size - 1), weight


_scripted._scriptable(precise_roi_pool, _scripted.precise_roi_pool)
