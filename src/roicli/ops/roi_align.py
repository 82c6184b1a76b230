"""RoI Align (He et al., Mask R-CNN, 2017), numerically equal to `torchvision.ops.roi_align`.

Pixel model: pixel (i, j) holds the feature value at the continuous point (y=i, x=j). With
`aligned=False` (torchvision's and Mask R-CNN's original default) a box coordinate c maps to the
feature coordinate `c * spatial_scale`, so a box edge on a pixel's corner samples half a pixel off.
`aligned=True` (Detectron2's fix) maps it to `c * spatial_scale - 0.5`: a pixel's *centre* is at +0.5
in image coordinates, and a box [0, 4] over a 4-pixel image covers exactly those 4 pixels.
"""

from __future__ import annotations

import torch
from torch import Tensor

from roicli.errors import ValidationError
from roicli.ops import (
    _library,  # noqa: F401  (registers torch.ops.roicli)
    _scripted,
)
from roicli.ops._validate import BoxesLike, as_rois, check_input, to_pair


def roi_align(
    input: Tensor,
    boxes: BoxesLike,
    output_size: int | tuple[int, int],
    spatial_scale: float = 1.0,
    sampling_ratio: int = -1,
    aligned: bool = False,
    *,
    mode: str = "avg",
) -> Tensor:
    """RoI Align: bilinear samples on a regular grid in each bin, averaged (or maxed).

    Args:
        input (Tensor[N, C, H, W]): feature maps; float32/float64/float16/bfloat16, any layout.
        boxes (Tensor[K, 5] or list[Tensor[L, 4]]): (batch index, x1, y1, x2, y2) rows, or one
            (x1, y1, x2, y2) tensor per image, in image coordinates.
        output_size (int or (PH, PW)): bins per RoI.
        spatial_scale (float): feature cells per image pixel. A stride-16 backbone gives 1/16, so
            a box from x=32 to x=96 spans feature columns 2 to 6.
        sampling_ratio (int): IY = IX = sampling_ratio samples per bin axis; <= 0 means adaptive,
            `ceil(roi_h / PH)` by `ceil(roi_w / PW)` per RoI.
        aligned (bool): shift box coordinates by -0.5 (see the module docstring); with
            `aligned=False` RoIs are also made at least 1x1 feature cell.
        mode ("avg" or "max"): average the IY*IX bilinear samples of a bin (torchvision), or take
            their max (mmcv's definition). ONNX RoiAlign's "max" is a different quantity: it maxes
            the four *weighted corner terms* of each sample, not the interpolated samples.

    Returns:
        Tensor[K, C, PH, PW] in the input's dtype and device. A sample with y < -1 or y > H (or
        the same in x) contributes 0 but still counts in the divisor; samples in (-1, 0] clamp to
        0 and in [H-1, H] to H-1 before interpolation, as torchvision does.

    Checks: shapes, dtypes, devices and arguments here (also while tracing or compiling); the
    boxes' values (finite, batch index an integer in `[0, N)`) in the `torch.ops.roicli` operator,
    on the data, whenever it runs (eagerly or inside a compiled, exported, traced or scripted
    graph). Both raise ValidationError.
    """
    check_input(input)
    ph, pw = to_pair(output_size)
    if mode not in ("avg", "max"):
        raise ValidationError(f"mode: expected 'avg' or 'max', got {mode!r}")
    if not isinstance(sampling_ratio, int) or isinstance(sampling_ratio, bool):
        raise ValidationError(f"sampling_ratio: expected an int, got {sampling_ratio!r}")
    rois = as_rois(boxes, input, values=False)  # the operator checks the values
    return torch.ops.roicli.roi_align.default(
        input, rois, float(spatial_scale), ph, pw, sampling_ratio, aligned, mode
    )[0]


def sample_points(
    start: Tensor, end: Tensor, spatial_scale: float, pooled: int, sampling_ratio: int, aligned: bool
) -> tuple[Tensor, Tensor]:
    """RoI Align's sample coordinates along one axis, in feature pixels (pixel i sits at i).

    start/end `Tensor[K]` in image coordinates. Returns positions `Tensor[K, P, G]` (G = the largest
    grid; entries past a RoI's own grid are padding) and the grid `Tensor[K]`. Computed in the
    boxes' dtype in torchvision's order of operations, so positions agree to the last bit.
    """
    dtype = start.dtype
    scale = torch.tensor(spatial_scale, dtype=dtype, device=start.device)
    offset = 0.5 if aligned else 0.0
    lo = start * scale - offset  # [K]
    length = end * scale - offset - lo
    if not aligned:
        length = length.clamp_min(1.0)
    bin_size = length / pooled  # [K]
    if sampling_ratio > 0:
        grid = torch.full_like(lo, sampling_ratio, dtype=torch.long)
    else:
        grid = torch.ceil(bin_size).long().clamp_min(0)
    g = int(grid.max()) if grid.numel() else 0
    p = torch.arange(pooled, device=lo.device, dtype=dtype)
    i = torch.arange(g, device=lo.device)
    pos = (lo[:, None, None] + p[None, :, None] * bin_size[:, None, None]) + (
        (i.to(dtype) + 0.5)[None, None, :] * bin_size[:, None, None]
    ) / grid.clamp_min(1).to(dtype)[:, None, None]  # [K, P, G]
    return pos, grid


def align_taps(
    start: Tensor,
    end: Tensor,
    spatial_scale: float,
    pooled: int,
    sampling_ratio: int,
    aligned: bool,
    size: int,
) -> tuple[Tensor, Tensor, Tensor]:
    """Bilinear taps of RoI Align's samples along one axis.

    start/end `Tensor[K]`: box edges in image coordinates (x1/x2 or y1/y2).
    Returns idx `Tensor[K, P, G, 2]` (low and high pixel of each sample), weight `Tensor[K, P, G, 2]`
    (0 for samples outside `[-1, size]` and for padding beyond a RoI's own grid) and the grid
    `Tensor[K]` (samples per bin along this axis). The arithmetic follows torchvision's kernel step
    by step in the boxes' dtype, so sample positions agree to the last bit.
    """
    pos, grid = sample_points(start, end, spatial_scale, pooled, sampling_ratio, aligned)  # [K, P, G], [K]
    dtype = pos.dtype
    i = torch.arange(pos.shape[-1], device=pos.device)
    valid = (pos >= -1.0) & (pos <= size) & (i[None, None, :] < grid[:, None, None])
    pos = pos.clamp(0.0, float(size))  # beyond `size` the sample is invalid anyway
    low = pos.long()  # trunc == floor for pos >= 0
    at_end = low >= size - 1
    low = torch.where(at_end, size - 1, low)
    high = torch.where(at_end, size - 1, low + 1)
    frac = torch.where(at_end, 0.0, pos - low.to(dtype))  # [K, P, G]
    idx = torch.stack([low, high], dim=-1)  # [K, P, G, 2]
    weight = torch.stack([1.0 - frac, frac], dim=-1) * valid[..., None]  # [K, P, G, 2]
    return idx, weight, grid


_scripted._scriptable(roi_align, _scripted.roi_align)
