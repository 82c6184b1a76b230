"""RoI Pool (Girshick, Fast R-CNN, 2015), numerically equal to `torchvision.ops.roi_pool`."""

from __future__ import annotations

import torch
from torch import Tensor

from roicli.ops._gather import nhwc_table, separable_pool
from roicli.ops._validate import BoxesLike, as_rois, check_input, compute_dtype, to_pair

# Gathered elements per chunk of RoIs (bounds temporary memory whatever K is).
_CHUNK_ELEMENTS = 1 << 21


def roi_pool(
    input: Tensor,
    boxes: BoxesLike,
    output_size: int | tuple[int, int],
    spatial_scale: float = 1.0,
) -> Tensor:
    """RoI Pool: round the box to the feature grid, split it into integer bins, max-pool each bin.

    Args:
        input (Tensor[N, C, H, W]): feature maps.
        boxes (Tensor[K, 5] or list[Tensor[L, 4]]): (batch index, x1, y1, x2, y2) in image pixels.
        output_size (int or (PH, PW)): bins per RoI.
        spatial_scale (float): feature cells per image pixel (1/16 for a stride-16 backbone: a box
            edge at x=100 lands on cell round(6.25) = 6).

    Returns:
        Tensor[K, C, PH, PW]. The quantization, as torchvision implements it: box edges are rounded
        half away from zero (C's `round`), the end pixel is inclusive (`roi_w = max(x2 - x1 + 1, 1)`),
        bin `ph` spans rows `floor(ph * bin_h)` to `ceil((ph + 1) * bin_h)` (neighbouring bins may
        overlap) clipped to the map, and an empty bin gives 0. The gradient of each output goes to
        the first (row-major) maximal element of its bin.
    """
    check_input(input)
    ph, pw = to_pair(output_size)
    rois = as_rois(boxes, input)
    return _RoIPool.apply(input, rois, ph, pw, float(spatial_scale))


def c_round(x: Tensor) -> Tensor:
    """Round half away from zero, like C's `round` (torch.round rounds half to even)."""
    t = torch.trunc(x)
    return t + torch.where((x - t).abs() >= 0.5, torch.sign(x), torch.zeros_like(x))


def pool_windows(
    start: Tensor, end: Tensor, spatial_scale: float, pooled: int, size: int
) -> tuple[Tensor, Tensor, Tensor]:
    """RoI Pool's integer geometry along one axis, computed as torchvision's kernel does.

    start/end `Tensor[K]` in image coordinates. Returns (`Tensor[K]` rounded start cell,
    `Tensor[K, P]` bin window starts, `Tensor[K, P]` ends, exclusive), clipped to `[0, size]`.
    """
    dtype = start.dtype
    scale = torch.tensor(spatial_scale, dtype=dtype, device=start.device)
    lo = c_round(start * scale).long()
    hi = c_round(end * scale).long()
    length = (hi - lo + 1).clamp_min(1)  # [K]
    bin_size = length.to(dtype) / pooled  # [K]
    p = torch.arange(pooled, device=start.device, dtype=dtype)
    first = torch.floor(p[None, :] * bin_size[:, None]).long() + lo[:, None]
    last = torch.ceil((p[None, :] + 1) * bin_size[:, None]).long() + lo[:, None]
    return lo, first.clamp(0, size), last.clamp(0, size)


class _RoIPool(torch.autograd.Function):
    @staticmethod
    def forward(ctx, input: Tensor, rois: Tensor, ph: int, pw: int, spatial_scale: float):
        out, argmax = _pool_forward(input, rois, ph, pw, spatial_scale, ctx.needs_input_grad[0])
        if argmax is not None:
            ctx.save_for_backward(argmax)
        ctx.input_shape = input.shape
        return out

    @staticmethod
    def backward(ctx, grad: Tensor):
        (argmax,) = ctx.saved_tensors  # [K, PH, PW, C], flat NHWC indices
        n, c, h, w = ctx.input_shape
        size = n * h * w * c
        grad_hwc = grad.new_zeros(size + 1)  # the last slot takes the empty bins' (index -1) gradient
        grad_hwc.index_add_(0, argmax.flatten().remainder(size + 1), grad.permute(0, 2, 3, 1).flatten())
        grad_input = grad_hwc[:size].view(n, h, w, c).permute(0, 3, 1, 2).contiguous()
        return grad_input, None, None, None, None


def _pool_forward(
    input: Tensor, rois: Tensor, ph: int, pw: int, spatial_scale: float, with_arg: bool = True
):
    """Max over each integer bin, separably: over the columns of every row, then over rows.

    Returns the pooled `Tensor[K, C, PH, PW]` and the argmax `Tensor[K, PH, PW, C]` as flat indices
    into the input in NHWC order (-1 for empty bins; None unless `with_arg`).
    """
    n, c, h, w = input.shape
    k = rois.shape[0]
    out = input.new_zeros((k, c, ph, pw))
    argmax = None
    if with_arg:
        argmax = torch.full((k, ph, pw, c), -1, dtype=torch.long, device=input.device)
    if k == 0:
        return out, argmax
    y0, ys, ye = pool_windows(rois[:, 2], rois[:, 4], spatial_scale, ph, h)  # [K], [K, PH] x2
    _, xs, xe = pool_windows(rois[:, 1], rois[:, 3], spatial_scale, pw, w)  # [K, PW] x2
    batch = rois[:, 0].long()
    # Rows any bin touches: ys[:, 0] .. ye[:, -1] (windows are monotone).
    top = ys[:, 0]
    n_rows = (ye[:, -1] - top).clamp_min(0)  # [K]
    widths = (xe - xs).clamp_min(0)  # [K, PW]
    heights = (ye - ys).clamp_min(0)  # [K, PH]
    table = nhwc_table(input.detach(), compute_dtype(input.dtype))
    sentinel = table.shape[0]  # index of an extra row of -inf for padding
    table = torch.cat([table, table.new_full((1, c), float("-inf"))])
    # Chunks of RoIs of similar size keep padding small and memory bounded.
    cost = n_rows * widths.max(dim=1).values * pw * c  # [K]
    order = torch.argsort(cost)
    cost_sorted = cost[order].tolist()
    s = 0
    while s < k:
        e, total = s, 0
        while e < k and (e == s or total + cost_sorted[e] <= _CHUNK_ELEMENTS):
            total += cost_sorted[e]
            e += 1
        sel = order[s:e]
        o, a = _pool_chunk(
            table, sentinel, batch[sel], top[sel], n_rows[sel], ys[sel], heights[sel],
            xs[sel], widths[sel], h, w, c, argmax is not None,
        )
        out[sel] = o.to(input.dtype)
        if argmax is not None:
            argmax[sel] = a
        s = e
    return out, argmax


def _pool_chunk(table, sentinel, batch, top, n_rows, ys, heights, xs, widths, h, w, c, with_arg):
    k, ph = ys.shape
    pw = xs.shape[1]
    dev = table.device
    r_max = max(int(n_rows.max()), 1)
    bw = max(int(widths.max()), 1)
    bh = max(int(heights.max()), 1)
    # 1) max over each bin's columns, for every row the RoI touches.
    j = torch.arange(r_max, device=dev)
    rows = top[:, None] + j[None, :]  # [k, R]
    row_ok = j[None, :] < n_rows[:, None]  # [k, R]
    t = torch.arange(bw, device=dev)
    cols = xs[:, :, None] + t  # [k, PW, BW]
    col_ok = t < widths[:, :, None]  # [k, PW, BW]
    idx = (batch[:, None, None, None] * h + rows[:, :, None, None]) * w + cols[:, None]  # [k, R, PW, BW]
    idx = torch.where(row_ok[:, :, None, None] & col_ok[:, None], idx, sentinel)
    row_max = _running_max(
        lambda i: table.index_select(0, idx[..., i].reshape(-1)).view(k, r_max, pw, c), bw
    )  # [k, R, PW, C]
    # 2) max over each bin's rows of those row maxima (and the first row reaching it).
    u = torch.arange(bh, device=dev)
    rel = (ys - top[:, None])[:, :, None] + u  # [k, PH, BH]
    rel = torch.where(u < heights[:, :, None], rel, r_max)  # r_max: a padding row of -inf
    padded = torch.cat([row_max, row_max.new_full((k, 1, pw, c), float("-inf"))], dim=1)
    kk = torch.arange(k, device=dev)[:, None]
    best = _running_max(lambda i: padded[kk, rel[:, :, i]], bh)  # [k, PH, PW, C]
    empty = (heights == 0)[:, :, None] | (widths == 0)[:, None, :]  # [k, PH, PW]
    if not with_arg:
        return best.masked_fill(empty[..., None], 0.0).permute(0, 3, 1, 2), None
    # The first row reaching the maximum: one gather of the bins' row maxima, the smallest row index.
    rows_max = padded[kk[:, :, None], rel]  # [k, PH, BH, PW, C]
    u_hit = torch.where(rows_max == best[:, :, None], u[:, None, None].to(best.dtype), float("inf"))
    row_arg = u_hit.amin(dim=2).clamp_max(bh - 1).long()  # [k, PH, PW, C]
    best = best.masked_fill(empty[..., None], 0.0)
    # 3) The argmax: in the first maximal row, the first column whose value is the maximum (one
    # gather of that row's window), as a flat index into the NHWC map (c innermost: a cache-friendly
    # scatter in the backward).
    row = top[:, None, None, None] + torch.gather(rel, 2, row_arg.flatten(2)).view(k, ph, pw, c)  # [k, PH, PW, C]
    chan = torch.arange(c, device=dev)
    first = ((batch[:, None, None, None] * h + row.clamp_max(h - 1)) * w + xs[:, None, :, None]) * c + chan
    t = torch.arange(bw, device=dev)
    window = first[..., None, :] + (t * c)[:, None]  # [k, PH, PW, BW, C]
    inside = (t < widths[:, None, :, None])[..., None]  # [k, 1, PW, BW, 1]
    vals = table.view(-1)[window.clamp_max(table.numel() - 1)]
    hit = (vals == best[..., None, :]) & inside
    col = torch.where(hit, t[:, None].to(vals.dtype), float("inf")).amin(dim=3)  # the first hit; inf: none (NaN)
    flat = first + col.clamp_max(bw - 1).long() * c
    flat = flat.masked_fill(empty[..., None] | col.isinf(), -1)
    return best.permute(0, 3, 1, 2), flat


def _running_max(take, n: int) -> Tensor:
    """Max of `take(0) .. take(n-1)` elementwise (one gathered slice in memory at a time)."""
    best = take(0)
    for i in range(1, n):
        best = torch.maximum(best, take(i))
    return best


def window_avg_pool(
    input: Tensor,
    boxes: BoxesLike,
    output_size: int | tuple[int, int],
    spatial_scale: float = 1.0,
) -> Tensor:
    """The *average* over RoI Pool's integer windows (same rounding and windows as `roi_pool`).

    Not a standard op: it isolates RoI Pool's quantization from its max aggregation, so that it can
    be compared with `precise_roi_pool` (the exact average over the exact bins). Returns
    Tensor[K, C, PH, PW]; an empty window gives 0.
    """
    check_input(input)
    ph, pw = to_pair(output_size)
    rois = as_rois(boxes, input)
    n, c, h, w = input.shape
    if rois.shape[0] == 0:
        return input.new_zeros((0, c, ph, pw))
    ry, wy = _window_taps(rois[:, 2], rois[:, 4], spatial_scale, ph, h)
    rx, wx = _window_taps(rois[:, 1], rois[:, 3], spatial_scale, pw, w)
    table = nhwc_table(input, compute_dtype(input.dtype))
    out = separable_pool(table, w, rois[:, 0].long() * (h * w), ry, wy, rx, wx, compact=True)
    return out.permute(0, 3, 1, 2).to(input.dtype).contiguous()  # [K, C, PH, PW]


def _window_taps(start, end, spatial_scale, pooled, size) -> tuple[Tensor, Tensor]:
    """Rows (cols) of each integer window and the weight 1/window size: `Tensor[K, P, T]` each."""
    _, first, last = pool_windows(start, end, spatial_scale, pooled, size)  # [K, P] x2
    count = (last - first).clamp_min(0)
    t = torch.arange(max(int(count.max()), 1), device=start.device)
    idx = (first[..., None] + t).clamp(0, size - 1)  # [K, P, T]
    weight = (t < count[..., None]) / count.clamp_min(1)[..., None].to(torch.float64)
    return idx, weight
