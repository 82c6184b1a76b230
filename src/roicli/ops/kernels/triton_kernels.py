"""Triton kernels for the ops: the CUDA implementation (CPU tensors run them under `TRITON_INTERPRET=1`).

The contract is the one every kernel module follows (see `roicli.ops.kernels`): inputs are already
validated and normalised by the front door, `input` is `Tensor[N, C, H, W]` in any layout, `rois` is
`Tensor[K, 5]` (batch index, x1, y1, x2, y2) in the op's compute dtype (float64 for float64 maps,
float32 otherwise), and outputs are contiguous.

Layout of the work: one program per (RoI, block of bins, block of channels). A program holds a tile
`[BC, BB]` (channels x bins); per-RoI geometry is a handful of scalars, per-bin geometry a `[BB]`
vector shared by all channels, so every tap is one masked gather of `[BC, BB]` elements. Bins are
the fastest tile dimension (neighbouring threads take neighbouring bins of one channel): the output
`[K, C, PH, PW]` and an NCHW map are contiguous along bins/columns, not along channels, so loads and
stores of a warp touch few cache lines. Sample grids are loop bounds read from the data (adaptive
sampling needs no padding to the largest grid).

Numbers:
- Geometry follows the torch reference bit for bit: sample positions and window edges are computed in
  the rois' dtype in torchvision's order of operations, with FMA contraction off
  (`enable_fp_fusion=False`) and IEEE division (`div_rn`: Triton's fp32 `/` is approximate on CUDA).
- Sums run in float32 for float16/bfloat16 maps (float64 stays float64) and are rounded once at the end.
- roi_align's bilinear rules are torchvision's: a sample with y < -1 or y > H (or x alike) adds 0 but
  counts in the divisor; samples in [-1, 0] clamp to 0, and those at or past H-1 read row H-1.
- roi_align mode "max": the first sample (row-major in the bin) with the largest value wins; a NaN
  sample wins over numbers (the first NaN), like `torch.max`.
- roi_pool: torchvision's windows (C's `round`, inclusive end, floor/ceil bin edges clipped to the
  map); the running max starts at -FLT_MAX with a strict `>`, so NaN is skipped, ties go to the first
  element in row-major order, and a bin of only NaN/-inf gives -FLT_MAX with no argmax (-1).
- precise_roi_pool: the exact mean of the bilinear surface over each bin, 1-D weights in float64.

Backward passes scatter with atomic adds (as torchvision's CUDA kernels do): on a GPU the order in
which overlapping bins add into a pixel varies, so gradients can differ in the last bits from run to
run (the interpreter runs programs one after another and is deterministic). Half-type gradients are
accumulated in float32, a group of channels at a time (a buffer of at most `_HALF_GRAD_BYTES`), and
rounded once.
"""

from __future__ import annotations

import contextlib
import os

import torch
import triton
import triton.language as tl
from torch import Tensor

from roicli.errors import KernelUnavailable


def _interpreting() -> bool:
    """Whether `@triton.jit` builds interpreted kernels in this process (decided at import)."""
    knobs = getattr(triton, "knobs", None)
    if knobs is not None:
        return bool(knobs.runtime.interpret)
    return os.environ.get("TRITON_INTERPRET", "0").lower() in ("1", "true", "yes", "on", "y")


# Under TRITON_INTERPRET=1 the kernels below are interpreted: they run on CPU tensors (and only there).
INTERPRETED = _interpreting()
DEVICES = ("cpu",) if INTERPRETED else ("cuda",)


def check() -> None:
    """Raises KernelUnavailable when these kernels cannot run in this process (see `select.py`)."""
    if not INTERPRETED and not torch.cuda.is_available():
        raise KernelUnavailable(
            "triton kernels: no CUDA device (TRITON_INTERPRET=1 runs them on CPU tensors in Triton's interpreter)"
        )

# Elements in one program's tile [BC, BB]; bins per tile at most _MAX_BINS (powers of two).
_TILE = 2048
_MAX_BINS = 64
_FLT_MAX = tl.constexpr(3.4028234663852886e38)  # the largest float32
# Integer arguments never specialised: an argument equal to 1 would otherwise become a constant.
_SCALARS = ["C", "H", "W", "PH", "PW", "sampling_ratio", "n_bin_blocks"]


# --------------------------------------------------------------------------------------------------
# shared device helpers
# --------------------------------------------------------------------------------------------------
@triton.jit
def _div(a, b):
    """IEEE division: `div_rn` for float32 (Triton's `/` is `div.full.f32` on NVIDIA); fp64 `/` is exact."""
    if a.dtype == tl.float32:
        return tl.math.div_rn(a, b)
    else:
        return a / b


@triton.jit
def _align_axis(start, end, scale, pooled, sampling_ratio, ALIGNED: tl.constexpr):
    """RoI Align along one axis for one RoI: (first edge, bin size, samples per bin), rois' dtype."""
    if ALIGNED:
        lo = start * scale - 0.5
        length = end * scale - 0.5 - lo
    else:
        lo = start * scale
        length = tl.maximum(end * scale - lo, 1.0)
    bin_size = _div(length, pooled.to(length.dtype))
    if sampling_ratio > 0:
        grid = sampling_ratio
    else:
        grid = tl.maximum(tl.ceil(bin_size), 0.0).to(tl.int32)
    return lo, bin_size, grid


@triton.jit
def _sample_taps(pos, size):
    """Bilinear taps of sample positions `pos` (any shape) along an axis of `size` pixels.

    Returns (low, high, weight of low, weight of high, valid): torchvision's rules. Out-of-range
    samples (pos < -1 or pos > size) are invalid; their indices are clamped into the map.
    """
    valid = (pos >= -1.0) & (pos <= size)
    p = tl.minimum(tl.maximum(pos, 0.0), size * 1.0)  # beyond `size` the sample is invalid anyway
    low = p.to(tl.int32)  # trunc == floor for p >= 0
    at_end = low >= size - 1
    low = tl.where(at_end, size - 1, low)
    high = tl.where(at_end, size - 1, low + 1)
    frac = tl.where(at_end, 0.0, p - low.to(p.dtype))
    return low, high, 1.0 - frac, frac, valid


@triton.jit
def _c_round(x):
    """Round half away from zero (C's `round`), in x's dtype."""
    t = tl.where(x >= 0, tl.floor(x), tl.ceil(x))
    return t + tl.where(tl.abs(x - t) >= 0.5, tl.where(x > 0, 1.0, -1.0), 0.0)


@triton.jit
def _pool_window(p, lo, bin_size, size):
    """RoI Pool's window [start, end) of bins `p` (int32 `[BB]`), clipped to [0, size]."""
    pf = p.to(bin_size.dtype)
    start = tl.floor(pf * bin_size).to(tl.int64) + lo
    end = tl.ceil((pf + 1.0) * bin_size).to(tl.int64) + lo
    start = tl.minimum(tl.maximum(start, 0), size)
    end = tl.minimum(tl.maximum(end, 0), size)
    return start.to(tl.int32), end.to(tl.int32)


@triton.jit
def _pool_axis(start, end, scale):
    """RoI Pool along one axis: (rounded first cell int64, bin length in cells before / pooled)."""
    lo = _c_round(start * scale).to(tl.int64)
    hi = _c_round(end * scale).to(tl.int64)
    return lo, tl.maximum(hi - lo + 1, 1)


@triton.jit
def _integral_edges(p, lo, bin_size):
    """Precise RoI Pool: the interval [a, b] of bins `p` (`[BB]`), float64."""
    e0 = lo + p.to(tl.float64) * bin_size
    e1 = lo + (p + 1).to(tl.float64) * bin_size
    return tl.minimum(e0, e1), tl.maximum(e0, e1)


@triton.jit
def _tent_weight(a, b, i):
    """Mean over [a, b] of tri(t - i) (float64; the point value for a zero-width bin)."""
    fi = i.to(tl.float64)
    total = tl.zeros(a.shape, tl.float64)
    for side in tl.static_range(2):
        left = tl.maximum(a, fi - 1.0 + side)
        right = tl.minimum(b, fi + side)
        length = tl.maximum(right - left, 0.0)
        total += length * tl.maximum(1.0 - tl.abs((left + right) / 2 - fi), 0.0)
    width = b - a
    mean = total / tl.maximum(width, 1e-300)
    point = tl.maximum(1.0 - tl.abs(a - fi), 0.0)
    return tl.where(width > 0, mean, point)


@triton.jit
def _integral_span(a, b, size):
    """First and last pixel (int32 `[BB]`) whose tent meets [a, b], clipped to the map."""
    first = tl.minimum(tl.maximum(tl.floor(a), 0.0), size - 1.0).to(tl.int32)
    last = tl.minimum(tl.maximum(tl.ceil(b), 0.0), size - 1.0).to(tl.int32)
    return first, last


@triton.jit
def _tile(pid_bins, pid_c, n_bin_blocks, n_bins, C, BB: tl.constexpr, BC: tl.constexpr):
    """This program's RoI, its bins `[BB]` and channels `[BC]` with their masks."""
    k = pid_bins // n_bin_blocks
    bins = (pid_bins % n_bin_blocks) * BB + tl.arange(0, BB)
    chans = pid_c * BC + tl.arange(0, BC)
    return k, bins, bins < n_bins, chans, chans < C


# --------------------------------------------------------------------------------------------------
# roi_align
# --------------------------------------------------------------------------------------------------
@triton.jit(do_not_specialize=_SCALARS)
def _roi_align_fwd(
    x_ptr, rois_ptr, scale_ptr, out_ptr, arg_ptr,
    C, H, W, sN, sC, sH, sW,
    PH, PW, sampling_ratio, n_bin_blocks,
    ALIGNED: tl.constexpr, MAX_MODE: tl.constexpr, BB: tl.constexpr, BC: tl.constexpr,
):
    k, bins, bmask, chans, cmask = _tile(tl.program_id(0), tl.program_id(1), n_bin_blocks, PH * PW, C, BB, BC)
    scale = tl.load(scale_ptr)
    roi = rois_ptr + k.to(tl.int64) * 5
    batch = tl.load(roi).to(tl.int64)
    lo_y, bin_h, gh = _align_axis(tl.load(roi + 2), tl.load(roi + 4), scale, PH, sampling_ratio, ALIGNED)
    lo_x, bin_w, gw = _align_axis(tl.load(roi + 1), tl.load(roi + 3), scale, PW, sampling_ratio, ALIGNED)
    acc_t = scale.dtype  # rois come in the compute dtype: float32, or float64 for float64 maps
    ph = (bins // PW).to(acc_t)  # [BB]
    pw = (bins % PW).to(acc_t)
    plane = (batch * sN + chans.to(tl.int64) * sC)[:, None]  # [BC, 1]
    m2 = cmask[:, None] & bmask[None, :]  # [BC, BB]
    acc = tl.zeros((BC, BB), acc_t)
    best = tl.full((BC, BB), float("-inf"), acc_t)
    arg = tl.full((BC, BB), -1, tl.int32)
    gh_t = gh.to(acc_t)
    gw_t = gw.to(acc_t)
    for iy in range(gh):
        y = (lo_y + ph * bin_h) + _div((iy + 0.5) * bin_h, gh_t)  # [BB], torchvision's order
        y0, y1, hy, ly, vy = _sample_taps(y, H)
        row0 = plane + (y0.to(tl.int64) * sH)[None, :]  # [BC, BB]
        row1 = plane + (y1.to(tl.int64) * sH)[None, :]
        for ix in range(gw):
            x = (lo_x + pw * bin_w) + _div((ix + 0.5) * bin_w, gw_t)  # [BB]
            x0, x1, hx, lx, vx = _sample_taps(x, W)
            valid = vy & vx  # [BB]
            m = m2 & valid[None, :]
            c0 = (x0.to(tl.int64) * sW)[None, :]
            c1 = (x1.to(tl.int64) * sW)[None, :]
            v00 = tl.load(x_ptr + row0 + c0, mask=m, other=0.0).to(acc_t)  # [BC, BB]
            v01 = tl.load(x_ptr + row0 + c1, mask=m, other=0.0).to(acc_t)
            v10 = tl.load(x_ptr + row1 + c0, mask=m, other=0.0).to(acc_t)
            v11 = tl.load(x_ptr + row1 + c1, mask=m, other=0.0).to(acc_t)
            w00 = tl.where(valid, hy * hx, 0.0)[None, :]
            w01 = tl.where(valid, hy * lx, 0.0)[None, :]
            w10 = tl.where(valid, ly * hx, 0.0)[None, :]
            w11 = tl.where(valid, ly * lx, 0.0)[None, :]
            val = w00 * v00 + w01 * v01 + w10 * v10 + w11 * v11  # [BC, BB]
            if MAX_MODE:
                take = (arg < 0) | (val > best) | ((val != val) & (best == best))
                best = tl.where(take, val, best)
                arg = tl.where(take, (iy * gw + ix).to(tl.int32), arg)
            else:
                acc += val
    o = (k.to(tl.int64) * C + chans.to(tl.int64))[:, None] * (PH * PW) + bins[None, :]  # [BC, BB]
    if MAX_MODE:
        tl.store(out_ptr + o, tl.where(arg < 0, 0.0, best).to(out_ptr.dtype.element_ty), mask=m2)
        tl.store(arg_ptr + o, arg, mask=m2)
    else:
        count = tl.maximum(gh * gw, 1).to(acc_t)
        tl.store(out_ptr + o, _div(acc, count).to(out_ptr.dtype.element_ty), mask=m2)


@triton.jit(do_not_specialize=_SCALARS)
def _roi_align_bwd(
    g_ptr, rois_ptr, scale_ptr, arg_ptr, dx_ptr,
    C, H, W, gK, gC, gH, gW,
    PH, PW, sampling_ratio, n_bin_blocks,
    ALIGNED: tl.constexpr, MAX_MODE: tl.constexpr, BB: tl.constexpr, BC: tl.constexpr,
):
    k, bins, bmask, chans, cmask = _tile(tl.program_id(0), tl.program_id(1), n_bin_blocks, PH * PW, C, BB, BC)
    scale = tl.load(scale_ptr)
    roi = rois_ptr + k.to(tl.int64) * 5
    batch = tl.load(roi).to(tl.int64)
    lo_y, bin_h, gh = _align_axis(tl.load(roi + 2), tl.load(roi + 4), scale, PH, sampling_ratio, ALIGNED)
    lo_x, bin_w, gw = _align_axis(tl.load(roi + 1), tl.load(roi + 3), scale, PW, sampling_ratio, ALIGNED)
    acc_t = scale.dtype
    ph = bins // PW  # [BB]
    pw = bins % PW
    m2 = cmask[:, None] & bmask[None, :]  # [BC, BB]
    gi = (k.to(tl.int64) * gK + chans.to(tl.int64)[:, None] * gC + (ph.to(tl.int64) * gH)[None, :]
          + (pw.to(tl.int64) * gW)[None, :])
    grad = tl.load(g_ptr + gi, mask=m2, other=0.0).to(acc_t)  # [BC, BB]
    plane = ((batch * C + chans.to(tl.int64)) * H * W)[:, None]  # [BC, 1]: grad_input is contiguous
    gh_t = tl.maximum(gh, 1).to(acc_t)  # no grid: no sample, and no division by 0 in masked lanes
    gw_t = tl.maximum(gw, 1).to(acc_t)
    if MAX_MODE:
        o = (k.to(tl.int64) * C + chans.to(tl.int64))[:, None] * (PH * PW) + bins[None, :]
        arg = tl.load(arg_ptr + o, mask=m2, other=-1)
        has = m2 & (arg >= 0)
        a = tl.maximum(arg, 0)
        iy = (a // tl.maximum(gw, 1)).to(acc_t)  # [BC, BB]
        ix = (a % tl.maximum(gw, 1)).to(acc_t)
        y = (lo_y + ph.to(acc_t)[None, :] * bin_h) + _div((iy + 0.5) * bin_h, gh_t)  # [BC, BB]
        x = (lo_x + pw.to(acc_t)[None, :] * bin_w) + _div((ix + 0.5) * bin_w, gw_t)
        y0, y1, hy, ly, vy = _sample_taps(y, H)
        x0, x1, hx, lx, vx = _sample_taps(x, W)
        m = has & vy & vx
        r0 = plane + y0.to(tl.int64) * W
        r1 = plane + y1.to(tl.int64) * W
        tl.atomic_add(dx_ptr + r0 + x0, (hy * hx * grad).to(dx_ptr.dtype.element_ty), mask=m, sem="relaxed")
        tl.atomic_add(dx_ptr + r0 + x1, (hy * lx * grad).to(dx_ptr.dtype.element_ty), mask=m, sem="relaxed")
        tl.atomic_add(dx_ptr + r1 + x0, (ly * hx * grad).to(dx_ptr.dtype.element_ty), mask=m, sem="relaxed")
        tl.atomic_add(dx_ptr + r1 + x1, (ly * lx * grad).to(dx_ptr.dtype.element_ty), mask=m, sem="relaxed")
    else:
        g = _div(grad, tl.maximum(gh * gw, 1).to(acc_t))  # [BC, BB]
        phf = ph.to(acc_t)
        pwf = pw.to(acc_t)
        for iy in range(gh):
            y = (lo_y + phf * bin_h) + _div((iy + 0.5) * bin_h, gh_t)  # [BB]
            y0, y1, hy, ly, vy = _sample_taps(y, H)
            r0 = plane + (y0.to(tl.int64) * W)[None, :]  # [BC, BB]
            r1 = plane + (y1.to(tl.int64) * W)[None, :]
            for ix in range(gw):
                x = (lo_x + pwf * bin_w) + _div((ix + 0.5) * bin_w, gw_t)
                x0, x1, hx, lx, vx = _sample_taps(x, W)
                m = m2 & (vy & vx)[None, :]
                c0 = x0[None, :]
                c1 = x1[None, :]
                tl.atomic_add(dx_ptr + r0 + c0, ((hy * hx)[None, :] * g).to(dx_ptr.dtype.element_ty), mask=m,
                              sem="relaxed")
                tl.atomic_add(dx_ptr + r0 + c1, ((hy * lx)[None, :] * g).to(dx_ptr.dtype.element_ty), mask=m,
                              sem="relaxed")
                tl.atomic_add(dx_ptr + r1 + c0, ((ly * hx)[None, :] * g).to(dx_ptr.dtype.element_ty), mask=m,
                              sem="relaxed")
                tl.atomic_add(dx_ptr + r1 + c1, ((ly * lx)[None, :] * g).to(dx_ptr.dtype.element_ty), mask=m,
                              sem="relaxed")


# --------------------------------------------------------------------------------------------------
# roi_pool
# --------------------------------------------------------------------------------------------------
@triton.jit(do_not_specialize=_SCALARS)
def _roi_pool_fwd(
    x_ptr, rois_ptr, scale_ptr, out_ptr, arg_ptr,
    C, H, W, sN, sC, sH, sW,
    PH, PW, n_bin_blocks,
    BB: tl.constexpr, BC: tl.constexpr,
):
    k, bins, bmask, chans, cmask = _tile(tl.program_id(0), tl.program_id(1), n_bin_blocks, PH * PW, C, BB, BC)
    scale = tl.load(scale_ptr)
    roi = rois_ptr + k.to(tl.int64) * 5
    batch = tl.load(roi).to(tl.int64)
    lo_y, len_y = _pool_axis(tl.load(roi + 2), tl.load(roi + 4), scale)
    lo_x, len_x = _pool_axis(tl.load(roi + 1), tl.load(roi + 3), scale)
    bin_h = _div(len_y.to(scale.dtype), PH.to(scale.dtype))
    bin_w = _div(len_x.to(scale.dtype), PW.to(scale.dtype))
    y_start, y_end = _pool_window(bins // PW, lo_y, bin_h, H)  # [BB]
    x_start, x_end = _pool_window(bins % PW, lo_x, bin_w, W)
    y_len = tl.where(bmask, y_end - y_start, 0)
    x_len = tl.where(bmask, x_end - x_start, 0)
    plane = (batch * sN + chans.to(tl.int64) * sC)[:, None]  # [BC, 1]
    m2 = cmask[:, None] & bmask[None, :]  # [BC, BB]
    acc_t = tl.float64 if x_ptr.dtype.element_ty == tl.float64 else tl.float32
    best = tl.full((BC, BB), -_FLT_MAX, acc_t)
    arg = tl.full((BC, BB), -1, tl.int32)
    for dy in range(tl.max(y_len, 0)):  # row-major scan with a strict '>': the first maximum wins
        y = y_start + dy  # [BB]
        row = plane + (y.to(tl.int64) * sH)[None, :]  # [BC, BB]
        for dx in range(tl.max(x_len, 0)):
            x = x_start + dx
            m = m2 & ((dy < y_len) & (dx < x_len))[None, :]
            v = tl.load(x_ptr + row + (x.to(tl.int64) * sW)[None, :], mask=m, other=float("nan")).to(acc_t)
            take = v > best  # False for NaN (and for the masked-off lanes)
            best = tl.where(take, v, best)
            arg = tl.where(take, (y * W + x).to(tl.int32)[None, :], arg)  # H * W < 2^31: checked
    empty = ((y_len <= 0) | (x_len <= 0))[None, :]
    o = (k.to(tl.int64) * C + chans.to(tl.int64))[:, None] * (PH * PW) + bins[None, :]  # [BC, BB]
    tl.store(out_ptr + o, tl.where(empty | ~m2, 0.0, best).to(out_ptr.dtype.element_ty), mask=m2)
    tl.store(arg_ptr + o, arg, mask=m2)


@triton.jit(do_not_specialize=_SCALARS)
def _roi_pool_bwd(
    g_ptr, rois_ptr, arg_ptr, dx_ptr,
    C, H, W, gK, gC, gH, gW,
    PH, PW, n_bin_blocks,
    BB: tl.constexpr, BC: tl.constexpr,
):
    k, bins, bmask, chans, cmask = _tile(tl.program_id(0), tl.program_id(1), n_bin_blocks, PH * PW, C, BB, BC)
    batch = tl.load(rois_ptr + k.to(tl.int64) * 5).to(tl.int64)
    m2 = cmask[:, None] & bmask[None, :]  # [BC, BB]
    o = (k.to(tl.int64) * C + chans.to(tl.int64))[:, None] * (PH * PW) + bins[None, :]
    arg = tl.load(arg_ptr + o, mask=m2, other=-1)  # [BC, BB]
    gi = (k.to(tl.int64) * gK + chans.to(tl.int64)[:, None] * gC + ((bins // PW).to(tl.int64) * gH)[None, :]
          + ((bins % PW).to(tl.int64) * gW)[None, :])
    m = m2 & (arg >= 0)
    grad = tl.load(g_ptr + gi, mask=m, other=0.0)
    plane = ((batch * C + chans.to(tl.int64)) * H * W)[:, None]
    tl.atomic_add(dx_ptr + plane + arg, grad.to(dx_ptr.dtype.element_ty), mask=m, sem="relaxed")


# --------------------------------------------------------------------------------------------------
# precise_roi_pool
# --------------------------------------------------------------------------------------------------
@triton.jit
def _precise_geometry(rois_ptr, scale_ptr, k, bins, PH, PW, H, W, bmask, ALIGNED: tl.constexpr):
    scale = tl.load(scale_ptr)  # float64
    roi = rois_ptr + k.to(tl.int64) * 5
    batch = tl.load(roi).to(tl.int64)
    off = 0.5 if ALIGNED else 0.0
    lo_y = tl.load(roi + 2).to(tl.float64) * scale - off
    lo_x = tl.load(roi + 1).to(tl.float64) * scale - off
    bin_h = (tl.load(roi + 4).to(tl.float64) * scale - off - lo_y) / PH.to(tl.float64)
    bin_w = (tl.load(roi + 3).to(tl.float64) * scale - off - lo_x) / PW.to(tl.float64)
    ay, by = _integral_edges(bins // PW, lo_y, bin_h)  # [BB]
    ax, bx = _integral_edges(bins % PW, lo_x, bin_w)
    fy, ly = _integral_span(ay, by, H)
    fx, lx = _integral_span(ax, bx, W)
    ny = tl.where(bmask, ly - fy + 1, 0)
    nx = tl.where(bmask, lx - fx + 1, 0)
    return batch, ay, by, fy, ny, ax, bx, fx, nx


@triton.jit(do_not_specialize=_SCALARS)
def _precise_fwd(
    x_ptr, rois_ptr, scale_ptr, out_ptr,
    C, H, W, sN, sC, sH, sW,
    PH, PW, n_bin_blocks,
    ALIGNED: tl.constexpr, BB: tl.constexpr, BC: tl.constexpr,
):
    k, bins, bmask, chans, cmask = _tile(tl.program_id(0), tl.program_id(1), n_bin_blocks, PH * PW, C, BB, BC)
    batch, ay, by, fy, ny, ax, bx, fx, nx = _precise_geometry(rois_ptr, scale_ptr, k, bins, PH, PW, H, W, bmask,
                                                              ALIGNED)
    acc_t = tl.float64 if x_ptr.dtype.element_ty == tl.float64 else tl.float32
    plane = (batch * sN + chans.to(tl.int64) * sC)[:, None]  # [BC, 1]
    m2 = cmask[:, None] & bmask[None, :]  # [BC, BB]
    acc = tl.zeros((BC, BB), acc_t)
    for ty in range(tl.max(ny, 0)):
        iy = fy + ty  # [BB]
        wy = tl.where(ty < ny, _tent_weight(ay, by, iy), 0.0)  # float64 [BB]
        row = plane + (iy.to(tl.int64) * sH)[None, :]  # [BC, BB]
        for tx in range(tl.max(nx, 0)):
            ix = fx + tx
            wx = tl.where(tx < nx, _tent_weight(ax, bx, ix), 0.0)
            m = m2 & ((ty < ny) & (tx < nx))[None, :]
            v = tl.load(x_ptr + row + (ix.to(tl.int64) * sW)[None, :], mask=m, other=0.0).to(acc_t)
            acc += (wy * wx).to(acc_t)[None, :] * v
    o = (k.to(tl.int64) * C + chans.to(tl.int64))[:, None] * (PH * PW) + bins[None, :]
    tl.store(out_ptr + o, acc.to(out_ptr.dtype.element_ty), mask=m2)


@triton.jit(do_not_specialize=_SCALARS)
def _precise_bwd(
    g_ptr, rois_ptr, scale_ptr, dx_ptr,
    C, H, W, gK, gC, gH, gW,
    PH, PW, n_bin_blocks,
    ALIGNED: tl.constexpr, BB: tl.constexpr, BC: tl.constexpr,
):
    k, bins, bmask, chans, cmask = _tile(tl.program_id(0), tl.program_id(1), n_bin_blocks, PH * PW, C, BB, BC)
    batch, ay, by, fy, ny, ax, bx, fx, nx = _precise_geometry(rois_ptr, scale_ptr, k, bins, PH, PW, H, W, bmask,
                                                              ALIGNED)
    acc_t = dx_ptr.dtype.element_ty
    m2 = cmask[:, None] & bmask[None, :]  # [BC, BB]
    gi = (k.to(tl.int64) * gK + chans.to(tl.int64)[:, None] * gC + ((bins // PW).to(tl.int64) * gH)[None, :]
          + ((bins % PW).to(tl.int64) * gW)[None, :])
    grad = tl.load(g_ptr + gi, mask=m2, other=0.0).to(acc_t)  # [BC, BB]
    plane = ((batch * C + chans.to(tl.int64)) * H * W)[:, None]
    for ty in range(tl.max(ny, 0)):
        iy = fy + ty
        wy = tl.where(ty < ny, _tent_weight(ay, by, iy), 0.0)
        row = plane + (iy.to(tl.int64) * W)[None, :]
        for tx in range(tl.max(nx, 0)):
            ix = fx + tx
            wx = tl.where(tx < nx, _tent_weight(ax, bx, ix), 0.0)
            m = m2 & ((ty < ny) & (tx < nx))[None, :]
            tl.atomic_add(dx_ptr + row + ix[None, :], (wy * wx).to(acc_t)[None, :] * grad, mask=m, sem="relaxed")


# --------------------------------------------------------------------------------------------------
# host side: the kernel-module contract
# --------------------------------------------------------------------------------------------------
def _blocks(n_bins: int, channels: int) -> tuple[int, int]:
    """Tile shape (BB bins, BC channels), powers of two, about `_TILE` elements."""
    bb = min(triton.next_power_of_2(max(n_bins, 1)), _MAX_BINS)
    bc = min(triton.next_power_of_2(max(channels, 1)), max(1, _TILE // bb))
    return bb, bc


def _launch_grid(k: int, n_bins: int, channels: int) -> tuple[tuple[int, int], int, int, int]:
    bb, bc = _blocks(n_bins, channels)
    n_bin_blocks = triton.cdiv(n_bins, bb)
    return (k * n_bin_blocks, triton.cdiv(channels, bc)), n_bin_blocks, bb, bc


def _device(t: Tensor):
    """Launch on the tensor's GPU (Triton launches on the current device)."""
    return torch.cuda.device(t.device) if t.device.type == "cuda" else contextlib.nullcontext()


def _scale(spatial_scale: float, dtype: torch.dtype, device: torch.device) -> Tensor:
    """spatial_scale as a one-element tensor in the geometry's dtype (Triton passes Python floats as fp32)."""
    return torch.full((1,), spatial_scale, dtype=dtype, device=device)


# Half-type gradients are summed in float32 a group of channels at a time, in one buffer of at most this
# many bytes, each group rounded into grad_input when done: a float32 copy of the whole map would double
# the backward's memory.
_HALF_GRAD_BYTES = 1 << 24


def _backward(launch, grad: Tensor, argmax: Tensor, n: int, c: int, h: int, w: int) -> Tensor:
    """grad_input `Tensor[N, C, H, W]` in grad's dtype; `launch(grad, argmax, buf)` adds the gradient of the
    channels of `grad` (a slice `[K, Cg, PH, PW]`, any strides; `argmax` the same channels, contiguous, or
    empty) into the zeroed, contiguous `buf` `[N, Cg, H, W]` (float32 or float64)."""
    if grad.dtype in (torch.float32, torch.float64):  # the atomics add into grad_input itself
        buf = torch.zeros((n, c, h, w), dtype=grad.dtype, device=grad.device)
        if grad.shape[0] * c > 0 and buf.numel() > 0:
            launch(grad, argmax.contiguous(), buf)
        return buf
    grad_input = torch.empty((n, c, h, w), dtype=grad.dtype, device=grad.device)
    if grad.shape[0] * c == 0 or grad_input.numel() == 0:
        return grad_input.zero_()
    step = max(1, min(c, _HALF_GRAD_BYTES // (n * h * w * 4)))  # channels per group
    flat = torch.empty(n * step * h * w, dtype=torch.float32, device=grad.device)
    for c0 in range(0, c, step):
        g = slice(c0, min(c, c0 + step))
        buf = flat[: n * (g.stop - c0) * h * w].view(n, g.stop - c0, h, w).zero_()  # [N, Cg, H, W]
        launch(grad[:, g], argmax[:, g].contiguous() if argmax.numel() else argmax, buf)
        grad_input[:, g].copy_(buf)
    return grad_input


def roi_align_forward(
    input: Tensor,
    rois: Tensor,
    spatial_scale: float,
    pooled_height: int,
    pooled_width: int,
    sampling_ratio: int,
    aligned: bool,
    mode: str,
) -> tuple[Tensor, Tensor]:
    """Output `Tensor[K, C, PH, PW]` and, for mode "max", argmax (iy * IX + ix in the bin; -1: no sample)."""
    n, c, h, w = input.shape
    k = rois.shape[0]
    is_max = mode == "max"
    out = input.new_empty((k, c, pooled_height, pooled_width))  # the kernel writes every element
    argmax = torch.empty(out.shape if is_max else (0,), dtype=torch.int32, device=input.device)
    if out.numel() == 0 or input.numel() == 0:  # no launch: no samples anywhere
        return out.zero_(), argmax.fill_(-1)
    grid, n_bin_blocks, bb, bc = _launch_grid(k, pooled_height * pooled_width, c)
    with _device(input):
        _roi_align_fwd[grid](
            input, rois.contiguous(), _scale(spatial_scale, rois.dtype, rois.device), out, argmax,
            c, h, w, *input.stride(),
            pooled_height, pooled_width, int(sampling_ratio), n_bin_blocks,
            ALIGNED=bool(aligned), MAX_MODE=is_max, BB=bb, BC=bc, enable_fp_fusion=False,
        )
    return out, argmax


def roi_align_backward(
    grad: Tensor,
    rois: Tensor,
    argmax: Tensor,
    spatial_scale: float,
    pooled_height: int,
    pooled_width: int,
    sampling_ratio: int,
    aligned: bool,
    mode: str,
    batch_size: int,
    channels: int,
    height: int,
    width: int,
) -> Tensor:
    """grad_input `Tensor[N, C, H, W]` in grad's dtype (atomic adds on the GPU: not bit-deterministic)."""
    k = rois.shape[0]
    is_max = mode == "max"
    rois, scale = rois.contiguous(), _scale(spatial_scale, rois.dtype, rois.device)

    def launch(grad: Tensor, arg: Tensor, buf: Tensor) -> None:
        grid, n_bin_blocks, bb, bc = _launch_grid(k, pooled_height * pooled_width, buf.shape[1])
        with _device(grad):
            _roi_align_bwd[grid](
                grad, rois, scale, arg, buf,
                buf.shape[1], height, width, *grad.stride(),
                pooled_height, pooled_width, int(sampling_ratio), n_bin_blocks,
                ALIGNED=bool(aligned), MAX_MODE=is_max, BB=bb, BC=bc, enable_fp_fusion=False,
            )

    return _backward(launch, grad, argmax if is_max else argmax[:0], batch_size, channels, height, width)


def roi_pool_forward(
    input: Tensor, rois: Tensor, spatial_scale: float, pooled_height: int, pooled_width: int
) -> tuple[Tensor, Tensor]:
    """Output `Tensor[K, C, PH, PW]` and argmax `Tensor[K, C, PH, PW]` (h * W + w; -1 when none)."""
    n, c, h, w = input.shape
    k = rois.shape[0]
    out = input.new_empty((k, c, pooled_height, pooled_width))  # the kernel writes every element
    argmax = torch.empty(out.shape, dtype=torch.int32, device=input.device)
    if out.numel() == 0 or input.numel() == 0:  # no launch: every bin is empty
        return out.zero_(), argmax.fill_(-1)
    grid, n_bin_blocks, bb, bc = _launch_grid(k, pooled_height * pooled_width, c)
    with _device(input):
        _roi_pool_fwd[grid](
            input, rois.contiguous(), _scale(spatial_scale, rois.dtype, rois.device), out, argmax,
            c, h, w, *input.stride(),
            pooled_height, pooled_width, n_bin_blocks,
            BB=bb, BC=bc, enable_fp_fusion=False,
        )
    return out, argmax


def roi_pool_backward(
    grad: Tensor,
    rois: Tensor,
    argmax: Tensor,
    spatial_scale: float,
    pooled_height: int,
    pooled_width: int,
    batch_size: int,
    channels: int,
    height: int,
    width: int,
) -> Tensor:
    """grad_input `Tensor[N, C, H, W]`: each bin's gradient added at its argmax (atomic adds on the GPU)."""
    k = rois.shape[0]
    rois = rois.contiguous()

    def launch(grad: Tensor, arg: Tensor, buf: Tensor) -> None:
        grid, n_bin_blocks, bb, bc = _launch_grid(k, pooled_height * pooled_width, buf.shape[1])
        with _device(grad):
            _roi_pool_bwd[grid](
                grad, rois, arg, buf,
                buf.shape[1], height, width, *grad.stride(),
                pooled_height, pooled_width, n_bin_blocks,
                BB=bb, BC=bc,
            )

    return _backward(launch, grad, argmax, batch_size, channels, height, width)


def precise_roi_pool_forward(
    input: Tensor, rois: Tensor, spatial_scale: float, pooled_height: int, pooled_width: int, aligned: bool
) -> Tensor:
    """Exact mean of the bilinear surface over each bin: `Tensor[K, C, PH, PW]`."""
    n, c, h, w = input.shape
    k = rois.shape[0]
    out = input.new_empty((k, c, pooled_height, pooled_width))  # the kernel writes every element
    if out.numel() == 0 or input.numel() == 0:  # no launch: the map is all zeros
        return out.zero_()
    grid, n_bin_blocks, bb, bc = _launch_grid(k, pooled_height * pooled_width, c)
    with _device(input):
        _precise_fwd[grid](
            input, rois.contiguous(), _scale(spatial_scale, torch.float64, rois.device), out,
            c, h, w, *input.stride(),
            pooled_height, pooled_width, n_bin_blocks,
            ALIGNED=bool(aligned), BB=bb, BC=bc, enable_fp_fusion=False,
        )
    return out


def precise_roi_pool_backward(
    grad: Tensor,
    rois: Tensor,
    spatial_scale: float,
    pooled_height: int,
    pooled_width: int,
    aligned: bool,
    batch_size: int,
    channels: int,
    height: int,
    width: int,
) -> Tensor:
    """grad_input `Tensor[N, C, H, W]` (atomic adds on the GPU)."""
    k = rois.shape[0]
    rois, scale = rois.contiguous(), _scale(spatial_scale, torch.float64, rois.device)

    def launch(grad: Tensor, _arg: Tensor, buf: Tensor) -> None:
        grid, n_bin_blocks, bb, bc = _launch_grid(k, pooled_height * pooled_width, buf.shape[1])
        with _device(grad):
            _precise_bwd[grid](
                grad, rois, scale, buf,
                buf.shape[1], height, width, *grad.stride(),
                pooled_height, pooled_width, n_bin_blocks,
                ALIGNED=bool(aligned), BB=bb, BC=bc, enable_fp_fusion=False,
            )

    no_argmax = torch.empty((0,), dtype=torch.int32, device=grad.device)
    return _backward(launch, grad, no_argmax, batch_size, channels, height, width)
