"""The one gather kernel every averaging op rests on.

A pooled value is a weighted sum of feature-map pixels. RoI Align's bilinear taps and the exact
integral of Precise RoI Pooling are both *separable*: a pixel's weight in bin (ph, pw) is a row factor
times a column factor. So each op only says, per RoI and per axis, which rows (columns) a bin touches
and with what weight; the bags of (pixel, weight) pairs then sum whole channel rows of a channels-last
copy of the map (a group of channels at a time) with `embedding_bag`, vectorised over C. The gradient
is the same kind of sum with the bags transposed: for each pixel, the bins that read it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from roicli.ops._validate import compute_dtype

# Bag entries built at once (bounds the temporary index/weight memory when K grows).
_CHUNK_ENTRIES = 1 << 22
# Elements per tile when transposing a channels-last gradient back to NCHW (2-3x faster than one copy).
_TILE = 1 << 17


def nhwc_table(input: Tensor, dtype: torch.dtype) -> Tensor:
    """`Tensor[N, C, H, W]` -> `Tensor[N*H*W, C]` in `dtype`: each pixel's channels as one row.

    Free for a channels-last input of the right dtype; otherwise one copy (differentiable).
    """
    n, c, h, w = input.shape
    hwc = input.permute(0, 2, 3, 1)  # [N, H, W, C]
    if hwc.is_contiguous() and input.dtype == dtype:
        return hwc.reshape(n * h * w, c)
    table = torch.empty((n, h, w, c), dtype=dtype, device=input.device)
    return table.copy_(hwc).view(n * h * w, c)


def merge_taps(idx: Tensor, weight: Tensor) -> tuple[Tensor, Tensor]:
    """Sum the weights of a bin's taps that land on the same row (column).

    `Tensor[K, P, T]` each -> `Tensor[K, P, D]`, D the widest span of rows a bin touches, when that
    is fewer taps (dense sampling: neighbouring samples share pixels). Unused taps get weight 0.
    """
    if idx.numel() == 0:
        return idx, weight
    live = weight != 0
    lo = torch.where(live, idx, torch.iinfo(idx.dtype).max).amin(-1)
    hi = torch.where(live, idx, -1).amax(-1)
    lo = torch.where(hi >= 0, lo, 0)
    span = (hi - lo + 1).clamp_min(1)
    d = int(span.max())
    if d >= idx.shape[-1]:
        return idx, weight
    local = torch.where(live, idx - lo[..., None], 0)
    merged = weight.new_zeros(idx.shape[:-1] + (d,)).scatter_add_(-1, local, weight * live)
    t = torch.arange(d, device=idx.device)
    return torch.where(t < span[..., None], lo[..., None] + t, lo[..., None]), merged


def separable_mean(input: Tensor, base: Tensor, rows, row_w, cols, col_w, compact: bool = False) -> Tensor:
    """`separable_pool` straight from `input` (`Tensor[N, C, H, W]`): `Tensor[K, C, PH, PW]` in its dtype.

    Half types are summed in float32. Channels go a group at a time through a small, reused
    channels-last buffer (no full-size copy of the map, and the gathers stay in cache).
    Differentiable with respect to `input` by a hand-written backward: an `embedding_bag` over the
    transposed bags per group of channels, transposed into the NCHW gradient.
    """
    rows, row_w = merge_taps(rows, row_w)
    cols, col_w = merge_taps(cols, col_w)
    return _SeparableMean.apply(input, base, rows, row_w, cols, col_w, compact)


class _SeparableMean(torch.autograd.Function):
    @staticmethod
    def forward(ctx, input: Tensor, base, rows, row_w, cols, col_w, compact: bool):
        out = separable_mean_forward(input.detach(), base, rows, row_w, cols, col_w, compact)
        if ctx.needs_input_grad[0]:
            ctx.save_for_backward(base, rows, row_w, cols, col_w)
            ctx.compact, ctx.input_shape = compact, input.shape
        return out

    @staticmethod
    def backward(ctx, grad: Tensor):
        base, rows, row_w, cols, col_w = ctx.saved_tensors
        grad_input = separable_mean_backward(grad, base, rows, row_w, cols, col_w, ctx.compact, ctx.input_shape)
        return grad_input, None, None, None, None, None, None


def separable_mean_forward(input: Tensor, base, rows, row_w, cols, col_w, compact: bool) -> Tensor:
    """The forward of `separable_mean` on merged taps, without autograd: `Tensor[K, C, PH, PW]`."""
    n, c, h, w = input.shape
    k, ph = rows.shape[:2]
    pw = cols.shape[1]
    taps = rows.shape[2] * cols.shape[2]
    out = (input.new_zeros if taps == 0 else input.new_empty)((k, c, ph, pw))
    dtype = compute_dtype(input.dtype)
    for e, idx, wts, counts in _bags(base, rows, row_w, cols, col_w, w, compact):
        if counts is None:  # bags of `taps` entries each
            idx, wts, offsets = idx.view(-1, taps), wts.view(-1, taps), None
        else:
            offsets = torch.cumsum(counts, 0) - counts
        wts = wts.to(dtype)
        # Usually one chunk; a second one copies the groups again (cheaper than keeping all bags).
        for g, table in _channel_groups(input, dtype):
            res = F.embedding_bag(idx, table, offsets, mode="sum", per_sample_weights=wts)
            out[e, g] = res.view(-1, ph, pw, res.shape[1]).permute(0, 3, 1, 2)
    return out


def separable_mean_backward(grad: Tensor, base, rows, row_w, cols, col_w, compact: bool, input_shape) -> Tensor:
    """The gradient of `separable_mean_forward` with respect to its input: `Tensor[N, C, H, W]`."""
    n, c, h, w = input_shape
    k, _, ph, pw = grad.shape
    dtype = compute_dtype(grad.dtype)
    none = torch.zeros(0, dtype=torch.long, device=grad.device)  # torch.cat needs a tensor when no bin has taps
    pixels, weights, bags = [none], [grad.new_zeros(0)], [none]
    for e, idx, wts, counts in _bags(base, rows, row_w, cols, col_w, w, compact):
        first = e.start * ph * pw
        n_bags = (min(e.stop, k) - e.start) * ph * pw
        per_bag = idx.shape[0] // n_bags if counts is None else counts
        bags.append(torch.repeat_interleave(torch.arange(first, first + n_bags, device=idx.device), per_bag))
        pixels.append(idx)
        weights.append(wts)
    # For each pixel, the bins that read it: a stable sort keeps a fixed summation order.
    pixel, order = torch.sort(torch.cat(pixels), stable=True)
    counts = torch.bincount(pixel, minlength=n * h * w)
    offsets = torch.cumsum(counts, 0) - counts
    bag, weight = torch.cat(bags)[order], torch.cat(weights)[order].to(dtype)
    g_rows = grad.permute(0, 2, 3, 1).to(dtype).reshape(k * ph * pw, c)  # one row per bin
    grad_input = grad.new_empty((n, c, h, w))
    hw = h * w
    for g in _channel_slices(c, n * h * w, dtype.itemsize):
        grad_hwc = F.embedding_bag(bag, g_rows[:, g].contiguous(), offsets, mode="sum", per_sample_weights=weight)
        tile = max(256, _TILE // grad_hwc.shape[1])  # pixels
        for i in range(n):  # tiled transpose: [H*W, Cg] -> [Cg, H*W]
            src, dst = grad_hwc[i * hw : (i + 1) * hw], grad_input[i, g].view(-1, hw)
            for p in range(0, hw, tile):
                dst[:, p : p + tile].copy_(src[p : p + tile].t())
    return grad_input


def _channel_groups(input: Tensor, dtype: torch.dtype):
    """Yields `(channel slice, Tensor[N*H*W, Cg])`: `input` channels-last in `dtype`, a group at a time.

    A channels-last input of the right dtype is one group, free; otherwise each group is copied
    into one reused buffer.
    """
    n, c, h, w = input.shape
    hwc = input.permute(0, 2, 3, 1)
    if hwc.is_contiguous() and input.dtype == dtype:
        yield slice(0, c), hwc.reshape(n * h * w, c)
        return
    slices = _channel_slices(c, n * h * w, dtype.itemsize)
    buf = torch.empty(n * h * w * (slices[0].stop - slices[0].start), dtype=dtype, device=input.device)
    for g in slices:
        table = buf[: n * h * w * (g.stop - g.start)].view(n, h, w, g.stop - g.start)
        yield g, table.copy_(hwc[..., g]).view(n * h * w, -1)


# Bytes of one group of channels' working table, for every op that goes through the map a group of
# channels at a time: the averaging ops' channels-last buffer here, roi_pool's sparse tables. Bounds
# their memory whatever C is (16 MiB: 4 Mi float32 elements, 2 Mi int64 keys).
TABLE_BYTES = 1 << 24


def _channel_slices(c: int, pixels: int, itemsize: int) -> list[slice]:
    """Groups of channels whose table of `pixels` rows of `itemsize`-byte elements fits in TABLE_BYTES."""
    step = max(1, min(c, TABLE_BYTES // (pixels * itemsize)))
    return [slice(g0, min(c, g0 + step)) for g0 in range(0, c, step)]


def _bags(base, rows, row_w, cols, col_w, width: int, compact: bool, chunk: int | None = None):
    """Yields `(roi slice, pixel indices, weights, entries per bag or None)` for chunks of RoIs.

    Bag (k, ph, pw) holds `row_w * col_w` at pixel `base + row * width + col` for every pair of
    its row and column taps; with `compact`, taps of weight 0 (padding of ragged grids) are
    dropped, otherwise every bag has the same size. `chunk` RoIs at a time (default: bounded memory).
    """
    k, ph, a = rows.shape
    pw, b = cols.shape[1:]
    if ph * pw * a * b == 0:
        return
    step = chunk or max(1, _CHUNK_ENTRIES // (ph * pw * a * b))
    for s in range(0, k, step):
        e = slice(s, s + step)
        idx = base[e, None, None, None, None] + rows[e, :, None, :, None] * width + cols[e, None, :, None, :]
        w = row_w[e, :, None, :, None] * col_w[e, None, :, None, :]  # [k, PH, PW, A, B] both
        idx, w = idx.reshape(-1, a * b), w.reshape(-1, a * b)
        if not compact:
            yield e, idx.flatten(), w.flatten(), None
            continue
        keep = w != 0
        yield e, idx[keep], w[keep], keep.sum(dim=1)


def separable_pool(
    table: Tensor,
    width: int,
    base: Tensor,
    rows: Tensor,
    row_w: Tensor,
    cols: Tensor,
    col_w: Tensor,
) -> Tensor:
    """Sum `row_w * col_w * table[base + row * width + col]` over each bin's taps, autograd through `table`.

    table `Tensor[N*H*W, C]`; base `Tensor[K]` (first pixel of the RoI's image);
    rows/row_w `Tensor[K, PH, A]` (row taps of each bin row); cols/col_w `Tensor[K, PW, B]`.
    Returns `Tensor[K, PH, PW, C]`.
    """
    k, ph, a = rows.shape
    pw, b = cols.shape[1:]
    if k * ph * pw * a * b == 0:  # no taps at all (e.g. adaptive sampling of empty RoIs)
        return table.new_zeros((k, ph, pw, table.shape[1])) + 0 * table.sum()
    # With autograd, one chunk: one gradient buffer, not one per chunk.
    chunk = k if table.requires_grad else None
    outs = [
        F.embedding_bag(idx.view(-1, a * b), table, mode="sum", per_sample_weights=w.view(-1, a * b).to(table.dtype))
        for _, idx, w, _ in _bags(base, rows, row_w, cols, col_w, width, False, chunk)
    ]
    return torch.cat(outs).view(k, ph, pw, table.shape[1])
