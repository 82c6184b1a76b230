"""Slow, obviously-correct loop references for the ops in ``roicli.ops``.

Written from the definitions (RoI Align and RoI Pool with torchvision's conventions, Precise RoI
Pooling from Jiang et al., ECCV 2018, and FPN's level rule, eq. 1), not from any implementation.
Everything is plain Python arithmetic on Python floats (IEEE double) with explicit loops over RoIs,
channels, bins and samples, so a reader can check each step against the definition. The feature map
is read as ``F[c][y][x]`` (row ``y``, column ``x``); boxes are ``(batch_idx, x1, y1, x2, y2)``.

The functions return float64 tensors; tests cast them as needed.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

Box = tuple[int, float, float, float, float]

# 2-point Gauss-Legendre nodes on [-1, 1] (weights 1, 1): exact for polynomials of degree <= 3.
_GL_NODES = (-1.0 / math.sqrt(3.0), 1.0 / math.sqrt(3.0))


# ---------------------------------------------------------------------------------------------
# input normalisation
# ---------------------------------------------------------------------------------------------
def pair(output_size: int | Sequence[int]) -> tuple[int, int]:
    if isinstance(output_size, int):
        return output_size, output_size
    ph, pw = output_size
    return int(ph), int(pw)


def box_rows(boxes: torch.Tensor | Sequence[torch.Tensor]) -> list[Box]:
    """Tensor[K, 5] or list[Tensor[L, 4]] -> list of (batch_idx, x1, y1, x2, y2), Python floats."""
    rows: list[Box] = []
    if isinstance(boxes, torch.Tensor):
        for r in boxes.detach().cpu().double().tolist():
            rows.append((int(r[0]), r[1], r[2], r[3], r[4]))
    else:
        for b, per_image in enumerate(boxes):
            for r in per_image.detach().cpu().double().tolist():
                rows.append((b, r[0], r[1], r[2], r[3]))
    return rows


def feature_lists(x: torch.Tensor) -> list[list[list[list[float]]]]:
    """Tensor[N, C, H, W] -> nested Python lists F[n][c][y][x] of doubles."""
    return x.detach().cpu().double().tolist()


def c_round(v: float) -> float:
    """C's round(): halves go away from zero (Python's round() goes to even instead)."""
    return math.floor(v + 0.5) if v >= 0 else -math.floor(-v + 0.5)


# ---------------------------------------------------------------------------------------------
# RoI Align
# ---------------------------------------------------------------------------------------------
def bilinear(fmap: list[list[float]], y: float, x: float) -> float:
    """torchvision's bilinear read of one channel at (y, x), with its border rules."""
    h, w = len(fmap), len(fmap[0])
    if y < -1.0 or y > h or x < -1.0 or x > w:
        return 0.0
    y = max(y, 0.0)
    x = max(x, 0.0)
    y_low = int(y)
    if y_low >= h - 1:
        y_low = y_high = h - 1
        y = float(y_low)
    else:
        y_high = y_low + 1
    x_low = int(x)
    if x_low >= w - 1:
        x_low = x_high = w - 1
        x = float(x_low)
    else:
        x_high = x_low + 1
    ly = y - y_low
    lx = x - x_low
    hy = 1.0 - ly
    hx = 1.0 - lx
    return (
        hy * hx * fmap[y_low][x_low]
        + hy * lx * fmap[y_low][x_high]
        + ly * hx * fmap[y_high][x_low]
        + ly * lx * fmap[y_high][x_high]
    )


def _align_geometry(box: Box, ph_count: int, pw_count: int, spatial_scale: float, sampling_ratio: int, aligned: bool):
    _, bx1, by1, bx2, by2 = box
    offset = 0.5 if aligned else 0.0
    x1 = bx1 * spatial_scale - offset
    y1 = by1 * spatial_scale - offset
    x2 = bx2 * spatial_scale - offset
    y2 = by2 * spatial_scale - offset
    roi_w = x2 - x1
    roi_h = y2 - y1
    if not aligned:
        roi_w = max(roi_w, 1.0)
        roi_h = max(roi_h, 1.0)
    bin_h = roi_h / ph_count
    bin_w = roi_w / pw_count
    grid_h = sampling_ratio if sampling_ratio > 0 else math.ceil(roi_h / ph_count)
    grid_w = sampling_ratio if sampling_ratio > 0 else math.ceil(roi_w / pw_count)
    return x1, y1, bin_h, bin_w, grid_h, grid_w


def _align_samples(y1, x1, bin_h, bin_w, grid_h, grid_w, ph, pw):
    """The sample points (y, x) of bin (ph, pw)."""
    points = []
    for iy in range(grid_h):
        y = y1 + ph * bin_h + (iy + 0.5) * bin_h / grid_h
        for ix in range(grid_w):
            x = x1 + pw * bin_w + (ix + 0.5) * bin_w / grid_w
            points.append((y, x))
    return points


def roi_align_ref(
    input: torch.Tensor,
    boxes: torch.Tensor | Sequence[torch.Tensor],
    output_size: int | Sequence[int],
    spatial_scale: float = 1.0,
    sampling_ratio: int = -1,
    aligned: bool = False,
    mode: str = "avg",
) -> torch.Tensor:
    """RoI Align; returns float64 Tensor[K, C, PH, PW]."""
    feats = feature_lists(input)
    n_ch = input.shape[1]
    ph_count, pw_count = pair(output_size)
    rows = box_rows(boxes)
    out = torch.zeros(len(rows), n_ch, ph_count, pw_count, dtype=torch.float64)
    for k, box in enumerate(rows):
        x1, y1, bin_h, bin_w, grid_h, grid_w = _align_geometry(
            box, ph_count, pw_count, spatial_scale, sampling_ratio, aligned
        )
        count = max(grid_h * grid_w, 1)
        for c in range(n_ch):
            fmap = feats[box[0]][c]
            for ph in range(ph_count):
                for pw in range(pw_count):
                    points = _align_samples(y1, x1, bin_h, bin_w, grid_h, grid_w, ph, pw)
                    values = [bilinear(fmap, y, x) for y, x in points]
                    if mode == "avg":
                        out[k, c, ph, pw] = sum(values) / count
                    elif mode == "max":
                        out[k, c, ph, pw] = max(values) if values else 0.0
                    else:
                        raise ValueError(mode)
    return out


def bilinear_taps(h: int, w: int, y: float, x: float) -> list[tuple[int, int, float]]:
    """The (row, column, weight) terms of `bilinear` at (y, x): its gradient with respect to the map."""
    if y < -1.0 or y > h or x < -1.0 or x > w:
        return []
    y, x = max(y, 0.0), max(x, 0.0)
    y_low, x_low = int(y), int(x)
    if y_low >= h - 1:
        y_low = y_high = h - 1
        y = float(y_low)
    else:
        y_high = y_low + 1
    if x_low >= w - 1:
        x_low = x_high = w - 1
        x = float(x_low)
    else:
        x_high = x_low + 1
    ly, lx = y - y_low, x - x_low
    hy, hx = 1.0 - ly, 1.0 - lx
    return [(y_low, x_low, hy * hx), (y_low, x_high, hy * lx), (y_high, x_low, ly * hx), (y_high, x_high, ly * lx)]


def roi_align_max_argmax_ref(
    input: torch.Tensor,
    boxes: torch.Tensor | Sequence[torch.Tensor],
    output_size: int | Sequence[int],
    spatial_scale: float = 1.0,
    sampling_ratio: int = -1,
    aligned: bool = False,
    grad_output: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """RoI Align, mode "max": the winning sample of each bin and the gradient with respect to input.

    The winner is the first sample (in `_align_samples` order, iy * grid_w + ix) whose value is
    strictly greater than every earlier one; -1 for a bin without samples. Returns
    (Tensor[K, C, PH, PW] int64 here, int32 from the ops: compare values; float64 gradient of
    sum(out * grad_output), zeros without it).
    """
    feats = feature_lists(input)
    n_ch, h, w = input.shape[1:]
    ph_count, pw_count = pair(output_size)
    rows = box_rows(boxes)
    argmax = torch.full((len(rows), n_ch, ph_count, pw_count), -1, dtype=torch.long)
    grad = torch.zeros(input.shape, dtype=torch.float64)
    g_out = None if grad_output is None else grad_output.detach().cpu().double()
    for k, box in enumerate(rows):
        x1, y1, bin_h, bin_w, grid_h, grid_w = _align_geometry(
            box, ph_count, pw_count, spatial_scale, sampling_ratio, aligned
        )
        for c in range(n_ch):
            fmap = feats[box[0]][c]
            for ph in range(ph_count):
                for pw in range(pw_count):
                    points = _align_samples(y1, x1, bin_h, bin_w, grid_h, grid_w, ph, pw)
                    if not points:
                        continue
                    values = [bilinear(fmap, y, x) for y, x in points]
                    best = 0
                    for i, v in enumerate(values):
                        if v > values[best]:
                            best = i
                    argmax[k, c, ph, pw] = best
                    if g_out is not None:
                        for yy, xx, wt in bilinear_taps(h, w, *points[best]):
                            grad[box[0], c, yy, xx] += wt * g_out[k, c, ph, pw]
    return argmax, grad


def roi_pool_argmax_ref(
    input: torch.Tensor,
    boxes: torch.Tensor | Sequence[torch.Tensor],
    output_size: int | Sequence[int],
    spatial_scale: float = 1.0,
) -> torch.Tensor:
    """RoI Pool's argmax as torchvision returns it: Tensor[K, C, PH, PW] of y * W + x, -1 if none (int64
    here; torchvision and roicli return int32: compare values)."""
    w = input.shape[3]
    out, where = _roi_pool_with_argmax(input, boxes, output_size, spatial_scale)
    argmax = torch.full(out.shape, -1, dtype=torch.long)
    for key, (y, x) in where.items():
        argmax[key] = y * w + x
    return argmax


def roi_align_ambiguous_bins(
    input: torch.Tensor,
    boxes: torch.Tensor | Sequence[torch.Tensor],
    output_size: int | Sequence[int],
    spatial_scale: float = 1.0,
    sampling_ratio: int = -1,
    aligned: bool = False,
    tol: float = 1e-9,
) -> torch.Tensor:
    """Bool Tensor[K, PH, PW]: bins with a sample within ``tol`` of a border cut-off.

    RoI Align's value jumps where a sample crosses y = -1, y = H, x = -1 or x = W. There the answer
    depends on the last bit of the sample position, i.e. on the order of floating-point operations,
    so property tests skip such bins (hand fixtures cover the exact cases).
    """
    h, w = input.shape[-2:]
    ph_count, pw_count = pair(output_size)
    rows = box_rows(boxes)
    mask = torch.zeros(len(rows), ph_count, pw_count, dtype=torch.bool)
    for k, box in enumerate(rows):
        x1, y1, bin_h, bin_w, grid_h, grid_w = _align_geometry(
            box, ph_count, pw_count, spatial_scale, sampling_ratio, aligned
        )
        for ph in range(ph_count):
            for pw in range(pw_count):
                for y, x in _align_samples(y1, x1, bin_h, bin_w, grid_h, grid_w, ph, pw):
                    if min(abs(y + 1), abs(y - h), abs(x + 1), abs(x - w)) < tol * (1 + abs(y) + abs(x)):
                        mask[k, ph, pw] = True
    return mask


# ---------------------------------------------------------------------------------------------
# RoI Pool
# ---------------------------------------------------------------------------------------------
def _pool_windows(box: Box, ph_count: int, pw_count: int, spatial_scale: float, h: int, w: int):
    """Yields (ph, pw, hstart, hend, wstart, wend) for every bin of one RoI."""
    _, bx1, by1, bx2, by2 = box
    x1 = int(c_round(bx1 * spatial_scale))
    y1 = int(c_round(by1 * spatial_scale))
    x2 = int(c_round(bx2 * spatial_scale))
    y2 = int(c_round(by2 * spatial_scale))
    roi_w = max(x2 - x1 + 1, 1)
    roi_h = max(y2 - y1 + 1, 1)
    bin_h = roi_h / ph_count
    bin_w = roi_w / pw_count
    for ph in range(ph_count):
        hstart = min(max(math.floor(ph * bin_h) + y1, 0), h)
        hend = min(max(math.ceil((ph + 1) * bin_h) + y1, 0), h)
        for pw in range(pw_count):
            wstart = min(max(math.floor(pw * bin_w) + x1, 0), w)
            wend = min(max(math.ceil((pw + 1) * bin_w) + x1, 0), w)
            yield ph, pw, hstart, hend, wstart, wend


FLT_MAX = 3.4028234663852886e38  # the largest float32


def roi_pool_ref(
    input: torch.Tensor,
    boxes: torch.Tensor | Sequence[torch.Tensor],
    output_size: int | Sequence[int],
    spatial_scale: float = 1.0,
) -> torch.Tensor:
    """RoI (max) Pool; returns float64 Tensor[K, C, PH, PW]."""
    out, _ = _roi_pool_with_argmax(input, boxes, output_size, spatial_scale)
    return out


def _roi_pool_with_argmax(input, boxes, output_size, spatial_scale):
    feats = feature_lists(input)
    n_ch, h, w = input.shape[1:]
    ph_count, pw_count = pair(output_size)
    rows = box_rows(boxes)
    out = torch.zeros(len(rows), n_ch, ph_count, pw_count, dtype=torch.float64)
    argmax: dict[tuple[int, int, int, int], tuple[int, int]] = {}
    for k, box in enumerate(rows):
        for ph, pw, hstart, hend, wstart, wend in _pool_windows(box, ph_count, pw_count, spatial_scale, h, w):
            if hend <= hstart or wend <= wstart:
                continue  # empty bin: output 0, no gradient
            for c in range(n_ch):
                fmap = feats[box[0]][c]
                best = -FLT_MAX  # Fast R-CNN's Caffe kernel starts here; NaN never compares greater
                where = None
                for y in range(hstart, hend):  # row-major scan, strict '>' keeps the first max
                    for x in range(wstart, wend):
                        if fmap[y][x] > best:
                            best = fmap[y][x]
                            where = (y, x)
                out[k, c, ph, pw] = best
                if where is not None:
                    argmax[(k, c, ph, pw)] = where
    return out, argmax


def roi_pool_grad_ref(
    input: torch.Tensor,
    boxes: torch.Tensor | Sequence[torch.Tensor],
    output_size: int | Sequence[int],
    spatial_scale: float,
    grad_output: torch.Tensor,
) -> torch.Tensor:
    """d(sum(out * grad_output))/d(input): each bin's gradient goes to its first argmax element."""
    _, argmax = _roi_pool_with_argmax(input, boxes, output_size, spatial_scale)
    rows = box_rows(boxes)
    g_out = grad_output.detach().cpu().double()
    grad = torch.zeros(input.shape, dtype=torch.float64)
    for (k, c, ph, pw), (y, x) in argmax.items():
        grad[rows[k][0], c, y, x] += g_out[k, c, ph, pw]
    return grad


# ---------------------------------------------------------------------------------------------
# Precise RoI Pooling
# ---------------------------------------------------------------------------------------------
def tri(t: float) -> float:
    return max(0.0, 1.0 - abs(t))


def continuous_f(fmap: list[list[float]], y: float, x: float) -> float:
    """f(y, x) = sum_{i,j} F[i, j] * tri(y - i) * tri(x - j); only 2x2 neighbours are nonzero."""
    h, w = len(fmap), len(fmap[0])
    total = 0.0
    for i in (math.floor(y), math.floor(y) + 1):
        for j in (math.floor(x), math.floor(x) + 1):
            if 0 <= i < h and 0 <= j < w:
                total += fmap[i][j] * tri(y - i) * tri(x - j)
    return total


def averaging_rule(a: float, b: float) -> list[tuple[float, float]]:
    """Nodes and weights (summing to 1) that average a piecewise-linear-between-integers function
    over the interval between a and b exactly; a zero-length interval is the point a.

    The interval is cut at the integer knots; on each piece the function is linear in this
    variable, so the 2-point Gauss-Legendre rule is exact there.
    """
    lo, hi = min(a, b), max(a, b)
    if hi == lo:
        return [(lo, 1.0)]
    cuts = [lo] + [float(k) for k in range(math.floor(lo) + 1, math.ceil(hi))] + [hi]
    rule = []
    for p, q in zip(cuts[:-1], cuts[1:], strict=True):
        if q <= p:
            continue
        mid, half = (p + q) / 2, (q - p) / 2
        for node in _GL_NODES:
            rule.append((mid + half * node, half / (hi - lo)))
    return rule


def precise_roi_pool_ref(
    input: torch.Tensor,
    boxes: torch.Tensor | Sequence[torch.Tensor],
    output_size: int | Sequence[int],
    spatial_scale: float = 1.0,
    aligned: bool = True,
) -> torch.Tensor:
    """Precise RoI Pooling: mean of the continuous f over each bin; float64 Tensor[K, C, PH, PW].

    The product of the two 1-D rules is exact for f, which is bilinear on every cell piece.
    """
    feats = feature_lists(input)
    n_ch = input.shape[1]
    ph_count, pw_count = pair(output_size)
    rows = box_rows(boxes)
    offset = 0.5 if aligned else 0.0
    out = torch.zeros(len(rows), n_ch, ph_count, pw_count, dtype=torch.float64)
    for k, (b, bx1, by1, bx2, by2) in enumerate(rows):
        x1 = bx1 * spatial_scale - offset
        y1 = by1 * spatial_scale - offset
        x2 = bx2 * spatial_scale - offset
        y2 = by2 * spatial_scale - offset
        bin_h = (y2 - y1) / ph_count
        bin_w = (x2 - x1) / pw_count
        for ph in range(ph_count):
            y_rule = averaging_rule(y1 + ph * bin_h, y1 + (ph + 1) * bin_h)
            for pw in range(pw_count):
                x_rule = averaging_rule(x1 + pw * bin_w, x1 + (pw + 1) * bin_w)
                for c in range(n_ch):
                    fmap = feats[b][c]
                    out[k, c, ph, pw] = sum(wy * wx * continuous_f(fmap, y, x) for y, wy in y_rule for x, wx in x_rule)
    return out


# ---------------------------------------------------------------------------------------------
# Multi-scale RoI Align (FPN level assignment)
# ---------------------------------------------------------------------------------------------
def fpn_level_argument(box: Box, canonical_size: float, canonical_level: float) -> float:
    """The number FPN floors: k0 + log2(sqrt(area) / canonical_size) + 1e-6 (torchvision's LevelMapper
    adds its epsilon after the log)."""
    _, x1, y1, x2, y2 = box
    area = (x2 - x1) * (y2 - y1)
    if area == 0:  # log2(0) = -inf: the finest level after clamping
        return -1e9
    return canonical_level + math.log2(math.sqrt(area) / canonical_size) + 1e-6


def fpn_levels_ref(
    boxes: torch.Tensor | Sequence[torch.Tensor],
    scales: Sequence[float],
    canonical_size: float = 224,
    canonical_level: float = 4,
) -> list[int]:
    """Index into ``features`` (level - k_min) for every RoI."""
    k_min = round(-math.log2(scales[0]))
    k_max = round(-math.log2(scales[-1]))
    levels = []
    for box in box_rows(boxes):
        level = math.floor(fpn_level_argument(box, canonical_size, canonical_level))
        level = min(max(level, k_min), k_max)
        levels.append(level - k_min)
    return levels


def multiscale_roi_align_ref(
    features: Sequence[torch.Tensor],
    boxes: torch.Tensor | Sequence[torch.Tensor],
    output_size: int | Sequence[int],
    scales: Sequence[float],
    sampling_ratio: int = -1,
    aligned: bool = False,
    canonical_size: float = 224,
    canonical_level: float = 4,
) -> torch.Tensor:
    """Each RoI pooled with roi_align_ref on its FPN level; float64 Tensor[K, C, PH, PW]."""
    rows = box_rows(boxes)
    levels = fpn_levels_ref(boxes, scales, canonical_size, canonical_level)
    ph_count, pw_count = pair(output_size)
    out = torch.zeros(len(rows), features[0].shape[1], ph_count, pw_count, dtype=torch.float64)
    for k, (row, level) in enumerate(zip(rows, levels, strict=True)):
        one = torch.tensor([row], dtype=torch.float64)
        out[k] = roi_align_ref(features[level], one, (ph_count, pw_count), scales[level], sampling_ratio, aligned)[0]
    return out
