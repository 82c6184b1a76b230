"""The one gather kernel every averaging op rests on.

A pooled value is a weighted sum of feature-map pixels. RoI Align's bilinear taps and the exact
integral of Precise RoI Pooling are both *separable*: a pixel's weight in bin (ph, pw) is a row factor
times a column factor. So each op only says, per RoI and per axis, which rows (columns) a bin touches
and with what weight; `separable_pool` forms the bags of (pixel, weight) pairs and sums whole channel
rows of a channels-last copy of the map with `embedding_bag`, vectorised over C.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

# Bag entries built at once (bounds the temporary index/weight memory when K grows).
_CHUNK_ENTRIES = 1 << 22


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


def separable_pool(
    table: Tensor,
    width: int,
    base: Tensor,
    rows: Tensor,
    row_w: Tensor,
    cols: Tensor,
    col_w: Tensor,
    compact: bool = False,
) -> Tensor:
    """Sum `row_w * col_w * table[base + row * width + col]` over each bin's taps.

    table `Tensor[N*H*W, C]`; base `Tensor[K]` (first pixel of the RoI's image);
    rows/row_w `Tensor[K, PH, A]` (row taps of each bin row); cols/col_w `Tensor[K, PW, B]`.
    Returns `Tensor[K, PH, PW, C]`. With `compact`, taps of weight 0 (padding of ragged grids) are
    dropped before the gather; otherwise every bin is a fixed-size bag (cheaper when few are 0).
    """
    k, ph, a = rows.shape
    pw, b = cols.shape[1:]
    if ph * pw * a * b == 0:  # no taps at all (e.g. adaptive sampling of empty RoIs)
        return table.new_zeros((k, ph, pw, table.shape[1])) + 0 * table.sum()
    per_roi = ph * pw * a * b
    step = max(1, _CHUNK_ENTRIES // per_roi)
    if table.requires_grad:  # one autograd node: one gradient buffer, not one per chunk
        step = k
    outs = []
    for s in range(0, k, step):
        e = slice(s, s + step)
        idx = (
            base[e, None, None, None, None]
            + rows[e, :, None, :, None] * width
            + cols[e, None, :, None, :]
        )  # [k, PH, PW, A, B]
        w = row_w[e, :, None, :, None] * col_w[e, None, :, None, :]  # [k, PH, PW, A, B]
        idx, w = idx.reshape(-1, a * b), w.reshape(-1, a * b).to(table.dtype)
        if compact:
            keep = w != 0
            counts = keep.sum(dim=1)  # [k*PH*PW]
            offsets = torch.cumsum(counts, 0) - counts
            idx, w = idx[keep], w[keep]
        else:
            offsets = None
        outs.append(F.embedding_bag(idx, table, offsets, mode="sum", per_sample_weights=w))
    out = torch.cat(outs) if len(outs) > 1 else outs[0]
    return out.view(k, ph, pw, table.shape[1])
