"""RoI Align over a feature pyramid (FPN, Lin et al. 2017), like torchvision's MultiScaleRoIAlign."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from roicli.errors import ValidationError
from roicli.ops import _scripted
from roicli.ops._validate import BoxesLike, as_rois, check_input, to_pair
from roicli.ops.roi_align import roi_align


def fpn_levels(
    rois: Tensor, scales: Sequence[float], canonical_size: float = 224, canonical_level: int = 4
) -> Tensor:
    """Pyramid level (an index into `scales`) of each RoI: FPN eq. 1.

    `k = floor(canonical_level + log2(sqrt(w * h) / canonical_size) + 1e-6)`, clamped to the levels
    present; level k has stride 2**k. rois `Tensor[K, 5]` in image pixels -> `Tensor[K]` (int64).
    """
    k_min = round(-math.log2(scales[0]))
    k_max = round(-math.log2(scales[-1]))
    area = (rois[:, 3] - rois[:, 1]) * (rois[:, 4] - rois[:, 2])
    k = torch.floor(canonical_level + torch.log2(torch.sqrt(area) / canonical_size) + 1e-6)
    return (torch.clamp(k, min=k_min, max=k_max).to(torch.int64) - k_min).to(torch.int64)


def multiscale_roi_align(
    features: Sequence[Tensor],
    boxes: BoxesLike,
    output_size: int | tuple[int, int],
    scales: Sequence[float],
    sampling_ratio: int = -1,
    aligned: bool = False,
    canonical_size: float = 224,
    canonical_level: int = 4,
) -> Tensor:
    """RoI Align where each RoI is pooled from the pyramid level that suits its size.

    Args:
        features (list[Tensor[N, C, H_l, W_l]]): pyramid levels, finest first (e.g. P2..P5).
        boxes (Tensor[K, 5] or list[Tensor[L, 4]]): RoIs in image pixels.
        output_size (int or (PH, PW)): bins per RoI.
        scales (list[float]): spatial scale of each level, powers of 2 (1/4, 1/8, 1/16, 1/32).
        sampling_ratio, aligned: as in `roi_align` (default aligned=False, like torchvision).
        canonical_size, canonical_level: a canonical_size-pixel box maps to canonical_level.

    Returns:
        Tensor[K, C, PH, PW] in input RoI order (use `fpn_levels` to see each RoI's level).
    Checks: as `roi_align`, except that the boxes' values are also checked here in eager mode
    (the levels depend on them); scripted or traced, each level's roi_align operator checks them.
    """
    if not isinstance(features, Sequence) or len(features) == 0:
        raise ValidationError("features: expected a non-empty list of Tensor[N, C, H, W]")
    for i, f in enumerate(features):
        check_input(f, f"features[{i}]")
    if len(scales) != len(features):
        raise ValidationError(
            f"scales: expected one per feature level ({len(features)}), got {len(scales)}"
        )
    first = features[0]
    for i, f in enumerate(features[1:], start=1):
        if f.shape[:2] != first.shape[:2] or f.device != first.device or f.dtype != first.dtype:
            raise ValidationError(
                f"features[{i}]: expected N, C, dtype and device of features[0] "
                f"({tuple(first.shape[:2])}, {first.dtype}, {first.device}), "
                f"got ({tuple(f.shape[:2])}, {f.dtype}, {f.device})"
            )
    if any(s <= 0 for s in scales):
        raise ValidationError(f"scales: expected positive values, got {list(scales)}")
    ph, pw = to_pair(output_size)
    rois = as_rois(boxes, first)
    levels = fpn_levels(rois, scales, canonical_size, canonical_level)
    return pool_levels(
        lambda feat, r, scale: roi_align(feat, r, (ph, pw), scale, sampling_ratio, aligned),
        features, rois, levels, scales,
    )


def pool_levels(
    op: Callable[[Tensor, Tensor, float], Tensor],
    features: Sequence[Tensor],
    rois: Tensor,
    levels: Tensor,
    scales: Sequence[float],
) -> Tensor:
    """`op(features[l], rois_of_level_l, scales[l])` for each level; results in input RoI order.

    rois `Tensor[K, 5]`, levels `Tensor[K]` (from `fpn_levels`). One op call per level, no loop
    over RoIs.
    """
    out = None
    for lvl, (feat, scale) in enumerate(zip(features, scales)):
        idx = torch.nonzero(levels == lvl).squeeze(1)
        if idx.numel() == 0:
            continue
        pooled = op(feat, rois[idx], scale)  # [K_l, C, PH, PW]
        if out is None:
            out = pooled.new_zeros((rois.shape[0], *pooled.shape[1:]))
        out = out.index_put((idx,), pooled)
    if out is None:  # no RoIs at all
        out = op(features[0], rois, scales[0])
    return out


_scripted._scriptable(multiscale_roi_align, _scripted.multiscale_roi_align)
