"""The pure-torch kernels: roicli's reference implementation, on any device.

Every op is a few vectorised torch calls around the shared geometry (`roi_align.align_taps`,
`roi_pool.pool_windows`, `precise.integral_taps`): the averaging ops are separable weighted sums
(`_gather.separable_mean_forward/backward`, `embedding_bag` over a channels-last copy), RoI Pool is
a sparse table of block maxima (`roi_pool._window_max`). The backward functions recompute the
taps from the RoIs (cheap next to the sums) instead of keeping them alive between the passes.
See `kernels/__init__.py` for the contract.
"""

from __future__ import annotations

import torch
from torch import Tensor

from roicli.ops._gather import (
    merge_taps,
    nhwc_table,
    separable_mean_backward,
    separable_mean_forward,
    separable_pool,
)
from roicli.ops._validate import compute_dtype
from roicli.ops.precise import integral_taps
from roicli.ops.roi_align import align_taps
from roicli.ops.roi_pool import _pool_backward, _pool_forward


def _no_argmax(device: torch.device) -> Tensor:
    return torch.empty(0, dtype=torch.int32, device=device)


def _align_taps(rois: Tensor, spatial_scale, ph, pw, sampling_ratio, aligned, h, w):
    ry, wy, gy = align_taps(rois[:, 2], rois[:, 4], spatial_scale, ph, sampling_ratio, aligned, h)  # [K, PH, IY, 2]
    rx, wx, gx = align_taps(rois[:, 1], rois[:, 3], spatial_scale, pw, sampling_ratio, aligned, w)  # [K, PW, IX, 2]
    return ry, wy, gy, rx, wx, gx


def _mean_taps(ry, wy, gy, rx, wx, gx):
    """Averaging taps: each axis carries 1/IY (1/IX), so a tap's weight is w_bilinear / (IY * IX)."""
    rows, row_w = merge_taps(ry.flatten(2), (wy / gy.clamp_min(1)[:, None, None, None]).flatten(2))
    cols, col_w = merge_taps(rx.flatten(2), (wx / gx.clamp_min(1)[:, None, None, None]).flatten(2))
    return rows, row_w, cols, col_w  # [K, PH, A], [K, PW, B]


def roi_align_forward(
    input: Tensor, rois: Tensor, spatial_scale: float, pooled_height: int, pooled_width: int,
    sampling_ratio: int, aligned: bool, mode: str,
) -> tuple[Tensor, Tensor]:
    n, c, h, w = input.shape
    k, ph, pw = rois.shape[0], pooled_height, pooled_width
    if k == 0:
        argmax = input.new_zeros((0, c, ph, pw), dtype=torch.int32) if mode == "max" else _no_argmax(input.device)
        return input.new_zeros((0, c, ph, pw)), argmax
    ry, wy, gy, rx, wx, gx = _align_taps(rois, spatial_scale, ph, pw, sampling_ratio, aligned, h, w)
    base = rois[:, 0].long() * (h * w)  # [K]
    if mode == "avg":
        out = separable_mean_forward(input, base, *_mean_taps(ry, wy, gy, rx, wx, gx), compact=sampling_ratio <= 0)
        return out, _no_argmax(input.device)
    # mode "max": interpolate every sample (a bag of its 4 taps), then the max over the bin's samples.
    table = nhwc_table(input, compute_dtype(input.dtype))  # [N*H*W, C]
    iy, ix = ry.shape[2], rx.shape[2]
    if iy * ix == 0:  # every RoI has an empty grid (adaptive sampling of empty RoIs)
        return input.new_zeros((k, c, ph, pw)), input.new_full((k, c, ph, pw), -1, dtype=torch.int32)
    samples = separable_pool(
        table, w, base,
        ry.reshape(k, ph * iy, 2), wy.reshape(k, ph * iy, 2),
        rx.reshape(k, pw * ix, 2), wx.reshape(k, pw * ix, 2),
    )  # [K, PH*IY, PW*IX, C]: one "bin" per sample
    samples = samples.view(k, ph, iy, pw, ix, c).permute(0, 1, 3, 5, 2, 4)  # [K, PH, PW, C, IY, IX]
    real = (torch.arange(iy, device=gy.device)[None, :] < gy[:, None])[:, :, None] & (
        torch.arange(ix, device=gx.device)[None, :] < gx[:, None]
    )[:, None, :]  # [K, IY, IX]
    samples = samples.masked_fill(~real[:, None, None, None], float("-inf")).flatten(4)
    value, index = samples.max(dim=-1)  # [K, PH, PW, C]
    empty = ((gy == 0) | (gx == 0))[:, None, None, None]  # [K, 1, 1, 1]
    out = value.masked_fill(empty, 0.0).permute(0, 3, 1, 2).to(input.dtype).contiguous()
    if sampling_ratio <= 0:  # index into the padded IY x IX grid -> iy * IX + ix with the RoI's own IX
        index = (index // ix) * gx[:, None, None, None] + index % ix
    argmax = index.masked_fill_(empty, -1).permute(0, 3, 1, 2).to(torch.int32).contiguous()  # [K, C, PH, PW]
    return out, argmax


def roi_align_backward(
    grad: Tensor, rois: Tensor, argmax: Tensor, spatial_scale: float, pooled_height: int,
    pooled_width: int, sampling_ratio: int, aligned: bool, mode: str,
    batch_size: int, channels: int, height: int, width: int,
) -> Tensor:
    n, c, h, w = batch_size, channels, height, width
    k, ph, pw = rois.shape[0], pooled_height, pooled_width
    if k == 0:
        return grad.new_zeros((n, c, h, w))
    ry, wy, gy, rx, wx, gx = _align_taps(rois, spatial_scale, ph, pw, sampling_ratio, aligned, h, w)
    base = rois[:, 0].long() * (h * w)
    if mode == "avg":
        return separable_mean_backward(
            grad, base, *_mean_taps(ry, wy, gy, rx, wx, gx), sampling_ratio <= 0, (n, c, h, w)
        )
    # mode "max": the bin's gradient goes to its winning sample, and from there to the sample's 4
    # bilinear taps: the averaging backward with one "bin" per sample (2 row x 2 column taps).
    iy, ix = ry.shape[2], rx.shape[2]  # padded grid
    if iy * ix == 0:
        return grad.new_zeros((n, c, h, w))
    argmax = argmax.long()  # an index for scatter_
    won = argmax >= 0  # [K, C, PH, PW]
    if sampling_ratio > 0:  # every RoI has the padded grid: the index is already iy * IX + ix
        padded = argmax.clamp_min(0)
    else:
        gxk = gx.clamp_min(1)[:, None, None, None]
        padded = torch.where(won, (argmax // gxk) * ix + argmax % gxk, 0)
    per_sample = grad.new_zeros((k, c, ph, pw, iy * ix))
    per_sample.scatter_(-1, padded[..., None], torch.where(won, grad, 0)[..., None])
    # One copy to [K, PH, IY, PW, IX, C]: the channels-last rows the averaging backward reads.
    per_sample = per_sample.view(k, c, ph, pw, iy, ix).permute(0, 2, 4, 3, 5, 1).contiguous()
    per_sample = per_sample.view(k, ph * iy, pw * ix, c).permute(0, 3, 1, 2)  # [K, C, PH*IY, PW*IX]
    return separable_mean_backward(
        per_sample, base,
        ry.reshape(k, ph * iy, 2), wy.reshape(k, ph * iy, 2),
        rx.reshape(k, pw * ix, 2), wx.reshape(k, pw * ix, 2),
        False, (n, c, h, w),
    )


def roi_pool_forward(
    input: Tensor, rois: Tensor, spatial_scale: float, pooled_height: int, pooled_width: int
) -> tuple[Tensor, Tensor]:
    out, argmax = _pool_forward(input, rois, pooled_height, pooled_width, spatial_scale, True)
    return out, argmax


def roi_pool_values(
    input: Tensor, rois: Tensor, spatial_scale: float, pooled_height: int, pooled_width: int
) -> Tensor:
    """Optional extension of the contract: the output alone, for eager inference (no argmax work)."""
    return _pool_forward(input, rois, pooled_height, pooled_width, spatial_scale, False)[0]


def roi_pool_backward(
    grad: Tensor, rois: Tensor, argmax: Tensor, spatial_scale: float, pooled_height: int,
    pooled_width: int, batch_size: int, channels: int, height: int, width: int,
) -> Tensor:
    return _pool_backward(grad, rois, argmax, batch_size, channels, height, width)


def _precise_taps(rois: Tensor, spatial_scale, ph, pw, aligned, h, w):
    rois64 = rois.double()
    ry, wy = integral_taps(rois64[:, 2], rois64[:, 4], spatial_scale, ph, aligned, h)  # [K, PH, T]
    rx, wx = integral_taps(rois64[:, 1], rois64[:, 3], spatial_scale, pw, aligned, w)  # [K, PW, T]
    rows, row_w = merge_taps(ry, wy)
    cols, col_w = merge_taps(rx, wx)
    return rois[:, 0].long() * (h * w), rows, row_w, cols, col_w


def precise_roi_pool_forward(
    input: Tensor, rois: Tensor, spatial_scale: float, pooled_height: int, pooled_width: int, aligned: bool
) -> Tensor:
    n, c, h, w = input.shape
    if rois.shape[0] == 0:
        return input.new_zeros((0, c, pooled_height, pooled_width))
    taps = _precise_taps(rois, spatial_scale, pooled_height, pooled_width, aligned, h, w)
    return separable_mean_forward(input, *taps, compact=True)


def precise_roi_pool_backward(
    grad: Tensor, rois: Tensor, spatial_scale: float, pooled_height: int, pooled_width: int, aligned: bool,
    batch_size: int, channels: int, height: int, width: int,
) -> Tensor:
    if rois.shape[0] == 0:
        return grad.new_zeros((batch_size, channels, height, width))
    taps = _precise_taps(rois, spatial_scale, pooled_height, pooled_width, aligned, height, width)
    return separable_mean_backward(grad, *taps, True, (batch_size, channels, height, width))
