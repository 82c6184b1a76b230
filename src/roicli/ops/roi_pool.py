"""RoI Pool (Girshick, Fast R-CNN, 2015), numerically equal to `torchvision.ops.roi_pool`."""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass

import torch
from torch import Tensor

from roicli.ops import (
    _library,
    _scripted,
)
from roicli.ops._gather import TABLE_BYTES
from roicli.ops._validate import BoxesLike, as_rois, check_input, compute_dtype, is_tracing, to_pair


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

    Checks: shapes, dtypes, devices and arguments here (also while tracing or compiling); the
    boxes' values (finite, batch index an integer in `[0, N)`) in the `torch.ops.roicli` operator,
    on the data, whenever it runs (eagerly or inside a compiled, exported, traced or scripted
    graph). Both raise ValidationError.
    """
    check_input(input)
    ph, pw = to_pair(output_size)
    rois = as_rois(boxes, input, values=False)  # the operator checks the values
    if not (torch.is_grad_enabled() and input.requires_grad) and not is_tracing(rois):
        with _library.argmax_unused():  # eager inference: no argmax work
            return torch.ops.roicli.roi_pool.default(input, rois, float(spatial_scale), ph, pw)[0]
    return torch.ops.roicli.roi_pool.default(input, rois, float(spatial_scale), ph, pw)[0]


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


# --------------------------------------------------------------------------- the pure-torch kernel
#
# The argmax contract (what the forward returns beside the output and all that the backward reads;
# every kernel module keeps it, see kernels/__init__.py):
#   Tensor[K, C, PH, PW], int32 like torchvision's. For each bin: the pixel of the first maximum of
#   its window in row-major order, as h * W + w inside the channel plane. NaN never wins. -1 when
#   the bin has no maximum: an empty window (output 0), or a window of only NaN and -inf (output
#   -FLT_MAX, as torchvision's running max that starts at -FLT_MAX and takes only a strictly larger
#   value). The backward adds each bin's gradient at its argmax and drops the bins with -1.

_FLT_MAX = torch.finfo(torch.float32).max


def _pool_forward(input: Tensor, rois: Tensor, ph: int, pw: int, spatial_scale: float, with_arg: bool = True):
    """The pooled `Tensor[K, C, PH, PW]` and, with `with_arg`, its argmax (see the contract above;
    None without `with_arg`)."""
    n, c, h, w = input.shape
    k = rois.shape[0]
    dev = input.device
    _, ys, ye = pool_windows(rois[:, 2], rois[:, 4], spatial_scale, ph, h)  # [K, PH] x2
    _, xs, xe = pool_windows(rois[:, 1], rois[:, 3], spatial_scale, pw, w)  # [K, PW] x2
    shape = (k, ph, pw)
    y0, y1 = (t[:, :, None].expand(shape).flatten() for t in (ys, ye))  # [K*PH*PW] each
    x0, x1 = (t[:, None, :].expand(shape).flatten() for t in (xs, xe))
    full = ((y1 > y0) & (x1 > x0)).nonzero().squeeze(1)  # bins with at least one pixel
    roi, binn = full // (ph * pw), full % (ph * pw)
    b = rois[roi, 0].long()
    # Every bin is written below unless some are empty (0, argmax -1).
    every = full.shape[0] == k * ph * pw
    out = (torch.empty if every else torch.zeros)((k, c, ph * pw), dtype=input.dtype, device=dev)
    argmax = None
    if with_arg:
        argmax = torch.empty((k, c, ph * pw), dtype=torch.int32, device=dev)
        if not every:
            argmax.fill_(-1)
    carry = (roi, binn, b * (h * w))  # pixel (n, y, x) -> y * W + x inside its channel plane
    windows = _window_max(input.detach(), b, y0[full], y1[full], x0[full], x1[full], with_arg, carry)
    for (r, p, offset), g, value, pixel in windows:
        if argmax is not None:
            found = value > -_FLT_MAX  # False for -inf (and NaN, which the tables hold as -inf)
            argmax[r, g, p] = torch.where(found, pixel - offset[:, None], -1).int()
        out[r, g, p] = value.clamp_min_(-_FLT_MAX).to(out.dtype)
    if argmax is not None:
        argmax = argmax.view(k, c, ph, pw)
    return out.view(shape[:1] + (c,) + shape[1:]), argmax


def _pool_backward(grad: Tensor, rois: Tensor, argmax: Tensor, n: int, c: int, h: int, w: int) -> Tensor:
    """Each bin's gradient to its argmax pixel (`Tensor[K, C, PH, PW]`, see the contract above)."""
    size = n * c * h * w
    plane = ((rois[:, 0].long() * c)[:, None] + torch.arange(c, device=grad.device)) * (h * w)  # [K, C]
    # Channel-major order: the scatter below stays in one channel plane at a time (cache-friendly).
    index = torch.where(argmax >= 0, argmax + plane[:, :, None, None], size).transpose(0, 1).flatten()
    grad_input = grad.new_zeros(size + 1)  # the last slot takes the gradient of bins with no argmax
    grad_input.index_add_(0, index, grad.transpose(0, 1).flatten())
    return grad_input[:size].view(n, c, h, w)


# --------------------------------------------------------------------------- the sparse table
#
# Table (a, b) holds, at every pixel, the max of the 2^a x 2^b block whose top-left corner is there.
# The tables form a chain (0, 0), (0, 1), (1, 1), (1, 2), ...: link 2a is table (a, a), link 2a + 1
# table (a, a + 1), each made from the one before by one shifted elementwise max over the whole map
# (along x into an odd link, along y into an even one). A window of h x w pixels with
# 2^i <= h < 2^(i+1) and 2^j <= w < 2^(j+1) is the union of overlapping blocks of the largest table
# of the chain that fits in it, so it costs 4 lookups when |i - j| <= 1 (twice that per further
# doubling of its aspect ratio), whatever its size. Tables are `Tensor[N*H*W, Cg]` (one row per
# pixel, a group of channels at a time), and a table element is one of three kinds below.


class _Values:
    """Elements when no argmax is wanted: the values, in the compute dtype. NaN is held as -inf."""

    def __init__(self, dtype: torch.dtype):
        self.dtypes = (dtype,)

    def encode(self, chunk: Tensor, dst: tuple[Tensor, ...], scratch: _Scratch) -> None:
        _load_values(chunk, dst[0])

    def max2(self, a, b, out=None) -> tuple[Tensor, ...]:
        return (torch.maximum(a[0], b[0], out=None if out is None else out[0]),)

    def reduce(self, found: tuple[Tensor, ...], out: tuple[Tensor, ...]) -> None:
        """`out` = the max over the lookups (`found`: `Tensor[lookups, windows, Cg]` each)."""
        torch.amax(found[0], 0, out=out[0])

    def decode(self, best: tuple[Tensor, ...]) -> tuple[Tensor, Tensor | None]:
        return best[0], None


class _Pairs:
    """Elements with their argmax, any dtype: (value, pixel) as two tables, the value in the compute
    dtype and the pixel its flat N*H*W index (int64). Of two elements the larger value wins and, among
    equal values, the smaller pixel: the first in row-major order."""

    def __init__(self, dtype: torch.dtype, size: int, device: torch.device):
        self.dtypes = (dtype, torch.long)
        self.pixel = torch.arange(size, device=device)[:, None]  # [N*H*W, 1]

    def encode(self, chunk: Tensor, dst: tuple[Tensor, ...], scratch: _Scratch) -> None:
        _load_values(chunk, dst[0])
        dst[1].copy_(self.pixel.expand(-1, chunk.shape[1]))

    def max2(self, a, b, out=None) -> tuple[Tensor, ...]:
        take_b = (b[0] > a[0]) | ((b[0] == a[0]) & (b[1] < a[1]))
        if out is None:
            return tuple(torch.where(take_b, y, x) for x, y in zip(a, b, strict=True))
        return tuple(torch.where(take_b, y, x, out=o) for x, y, o in zip(a, b, out, strict=True))

    def reduce(self, found: tuple[Tensor, ...], out: tuple[Tensor, ...]) -> None:
        best = tuple(t[0] for t in found)
        for q in range(1, found[0].shape[0]):
            best = self.max2(best, tuple(t[q] for t in found))
        for o, v in zip(out, best, strict=True):
            o.copy_(v)

    def decode(self, best: tuple[Tensor, ...]) -> tuple[Tensor, Tensor | None]:
        return best[0], best[1]


class _Keys:
    """Elements with their argmax, float32 only: (value, pixel) packed into one int64 key whose order
    is the pairs' order, so a table is one tensor and the max of two is one `maximum`.

    High 32 bits: the value's bits made order-preserving as a signed int (a negative float's magnitude
    bits flipped, after -0.0 -> +0.0 so that both zeros are one); low 32 bits: 2^32 - 1 - pixel (a
    smaller pixel, a larger key). Needs fewer than 2^31 pixels, and a little-endian machine (decode
    reads the key's two int32 words in place).
    """

    dtypes = (torch.long,)

    @staticmethod
    def fits(dtype: torch.dtype, size: int) -> bool:
        return dtype == torch.float32 and size < 2**31 and sys.byteorder == "little"

    def __init__(self, size: int, device: torch.device):
        self.low = 0xFFFFFFFF - torch.arange(size, device=device)[:, None]  # [N*H*W, 1]

    def encode(self, chunk: Tensor, dst: tuple[Tensor, ...], scratch: _Scratch) -> None:
        n, cg, h, w = chunk.shape
        value = scratch("value", (n * h * w, cg), torch.float32)
        bits = _load_values(chunk, value).add_(0.0).view(torch.int32)  # -0.0 + 0.0 = +0.0
        sign = torch.bitwise_right_shift(bits, 31, out=scratch("sign", bits.shape, torch.int32))
        bits.bitwise_xor_(sign.bitwise_and_(0x7FFFFFFF))
        torch.add(self.low, bits, alpha=2**32, out=dst[0])

    max2 = _Values.max2
    reduce = _Values.reduce

    def decode(self, best: tuple[Tensor, ...]) -> tuple[Tensor, Tensor | None]:
        words = best[0].view(torch.int32).unflatten(-1, (-1, 2))  # little-endian: (low, high) words
        high, low = words[..., 1], words[..., 0]
        value = (high ^ ((high >> 31) & 0x7FFFFFFF)).view(torch.float32)
        return value, torch.bitwise_not(low)  # low = 2**32 - 1 - pixel


_Elements = _Values | _Pairs | _Keys


def _load_values(chunk: Tensor, dst: Tensor) -> Tensor:
    """`chunk` (`Tensor[N, Cg, H, W]`) into `dst` (`Tensor[N*H*W, Cg]`), NaN as -inf; returns `dst`."""
    n, cg, h, w = chunk.shape
    inf = float("inf")
    dst.unflatten(0, (n, h, w)).copy_(chunk.permute(0, 2, 3, 1)).nan_to_num_(-inf, inf, -inf)
    return dst


@dataclass
class _Lookups:
    """Windows that read the same table of the chain with the same number of blocks."""

    link: int  # the table's place in the chain
    rows: slice  # the windows, in the order of `_plan`
    corners: Tensor  # [lookups * windows]: each block's top-left pixel (flat N*H*W), lookup-major
    lookups: int  # blocks per window


def _plan(b: Tensor, y0: Tensor, y1: Tensor, x0: Tensor, x1: Tensor, h: int, w: int):
    """The table and block corners of each window `[y0, y1) x [x0, x1)` of image `b` (`Tensor[B]` each).

    Returns (`order`, the windows' permutation grouping them, and `list[_Lookups]` in chain order).
    """
    i = torch.frexp((y1 - y0).double()).exponent.long() - 1  # floor(log2(height))
    j = torch.frexp((x1 - x0).double()).exponent.long() - 1
    wide = j > i
    a = torch.where(wide, i, j)  # the largest table (a, a') of the chain with a <= i, a' <= j
    link = a + torch.where(wide, i + 1, j)  # its place in the chain
    # Blocks per window along y: 2^ly (one fewer doubling when the height is a power of two); x alike.
    ly = i - a + 1 - ((y1 - y0) == (1 << i)).long()
    lx = j - (link - a) + 1 - ((x1 - x0) == (1 << j)).long()
    group = (link * 64 + ly) * 64 + lx
    order = torch.argsort(group, stable=True)  # stable: windows keep their order within a group
    keys, counts = torch.unique_consecutive(group[order], return_counts=True)
    b, y0, y1, x0, x1, link = (t[order] for t in (b, y0, y1, x0, x1, link))
    ys = _block_starts(y0, y1, link // 2, int(ly.max()))  # [B, 2^max(ly)]
    xs = _block_starts(x0, x1, link - link // 2, int(lx.max()))
    base = b * (h * w)
    groups = []
    start = 0
    for key, count in zip(keys.tolist(), counts.tolist(), strict=True):
        ny, nx, rows = 1 << (key // 64 % 64), 1 << (key % 64), slice(start, start + count)
        corners = base[rows, None, None] + ys[rows, :ny, None] * w + xs[rows, None, :nx]  # [windows, ny, nx]
        groups.append(_Lookups(key // 4096, rows, corners.flatten(1).T.flatten(), ny * nx))
        start += count
    return order, groups


def _chain_shift(link: int, w: int) -> int:
    """The pixel offset that makes chain table `link + 1` from table `link`: 2^a along x from (a, a),
    2^a rows along y from (a, a + 1)."""
    return 1 << (link // 2) if link % 2 == 0 else (1 << (link // 2)) * w


def _window_max(input: Tensor, b, y0, y1, x0, x1, with_arg: bool, carry: tuple[Tensor, ...]):
    """Per-channel max over windows `[y0, y1) x [x0, x1)` (non-empty) of images `b` (`Tensor[B]` each).

    Yields `(carried, channels, value, pixel)` for one group of channels at a time: `carry`'s
    tensors (`Tensor[B, ...]`) permuted like the windows' results, the slice of `channels`, the
    max `Tensor[B, channels]` in the compute dtype (NaN counts as -inf) and, with `with_arg`, its
    first pixel in row-major order as a flat N*H*W index (else None). See "the sparse table" above.
    """
    n, c, h, w = input.shape
    size = n * h * w
    if y0.shape[0] == 0:
        return
    dtype = compute_dtype(input.dtype)
    elements: _Elements
    if not with_arg:
        elements = _Values(dtype)
    elif _Keys.fits(dtype, size):
        elements = _Keys(size, input.device)
    else:
        elements = _Pairs(dtype, size, input.device)
    order, groups = _plan(b, y0, y1, x0, x1, h, w)
    carried = tuple(t[order] for t in carry)
    windows = y0.shape[0]
    itemsize = sum(t.itemsize for t in elements.dtypes)
    step = max(1, min(c, TABLE_BYTES // (size * itemsize)))  # channels per group
    scratch = _Scratch(input.device)
    for g0 in range(0, c, step):
        g = slice(g0, min(c, g0 + step))
        cg = g.stop - g0
        cur, spare, res = (
            tuple(scratch(f"{name}.{e}", (rows, cg), t) for e, t in enumerate(elements.dtypes))
            for name, rows in (("t0", size), ("t1", size), ("res", windows))
        )
        elements.encode(input[:, g], cur, scratch)
        at = 0  # cur is the chain's table `at`
        for lookups in groups:
            while at < lookups.link:  # cur[p] = max(cur[p], cur[p + shift]) into spare (the last rows unused)
                shift = _chain_shift(at, w)
                elements.max2([t[:-shift] for t in cur], [t[shift:] for t in cur], [t[:-shift] for t in spare])
                cur, spare, at = spare, cur, at + 1
            idx = lookups.corners
            shape = (lookups.lookups, idx.shape[0] // lookups.lookups, cg)
            found = tuple(
                torch.index_select(t, 0, idx, out=scratch(f"q{e}", (idx.shape[0], cg), t.dtype)).view(shape)
                for e, t in enumerate(cur)
            )
            elements.reduce(found, tuple(r[lookups.rows] for r in res))
        yield (carried, g, *elements.decode(res))


def _block_starts(lo: Tensor, hi: Tensor, a: Tensor, n: int) -> Tensor:
    """`Tensor[B, 2^n]`: starts of blocks of size 2^a (`Tensor[B]`) that cover each `[lo, hi)`.

    As many as are needed come first; the rest repeat the last one (`hi - 2^a`).
    """
    t = torch.arange(1 << n, device=lo.device)
    return torch.minimum(lo[:, None] + (t << a[:, None]), (hi - (1 << a))[:, None])


class _Scratch:
    """Named buffers reused across channel groups (a fresh CPU allocation costs a page fault per page)."""

    def __init__(self, device: torch.device):
        self.device = device
        self.buffers: dict[str, Tensor] = {}

    def __call__(self, name: str, shape: tuple[int, ...], dtype: torch.dtype) -> Tensor:
        numel = math.prod(shape)
        buf = self.buffers.get(name)
        if buf is None or buf.numel() < numel or buf.dtype != dtype:
            buf = self.buffers[name] = torch.empty(numel, dtype=dtype, device=self.device)
        return buf[:numel].view(shape)


_scripted._scriptable(roi_pool, _scripted.roi_pool)
