"""RoI Align over a feature pyramid (FPN, Lin et al. 2017), like torchvision's MultiScaleRoIAlign.

The front door validates and normalizes, then calls the operator `torch.ops.roicli.multiscale_roi_align`
(see `_multiscale_op`), which splits the RoIs by level inside its kernel: compiled, exported, traced
and scripted graphs hold one node for it.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from roicli.errors import ValidationError
from roicli.ops import _multiscale_op, _scripted
from roicli.ops._multiscale_op import fpn_levels, pool_levels
from roicli.ops._validate import BoxesLike, as_rois, check_input, to_pair

__all__ = ["fpn_levels", "multiscale_roi_align", "pool_levels"]


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
    Checks: shapes, dtypes, devices and arguments here (also while tracing or compiling); the
    boxes' values (finite, batch index an integer in `[0, N)`), before the levels are assigned, in
    the `torch.ops.roicli.multiscale_roi_align` operator whenever it runs (eagerly or inside a
    compiled, exported, traced or scripted graph). Both raise ValidationError.
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
        # (A trace reads shapes as tensors: comparing them would warn, and would be a constant anyway.)
        same_nc = torch.jit.is_tracing() or f.shape[:2] == first.shape[:2]
        if not same_nc or f.device != first.device or f.dtype != first.dtype:
            raise ValidationError(
                f"features[{i}]: expected N, C, dtype and device of features[0] "
                f"({tuple(first.shape[:2])}, {first.dtype}, {first.device}), "
                f"got ({tuple(f.shape[:2])}, {f.dtype}, {f.device})"
            )
    if any(s <= 0 for s in scales):
        raise ValidationError(f"scales: expected positive values, got {list(scales)}")
    ph, pw = to_pair(output_size)
    if not isinstance(sampling_ratio, int) or isinstance(sampling_ratio, bool):
        raise ValidationError(f"sampling_ratio: expected an int, got {sampling_ratio!r}")
    rois = as_rois(boxes, first, values=False)  # the operator checks the values
    return torch.ops.roicli.multiscale_roi_align.default(
        list(features), rois, [float(s) for s in scales], ph, pw, sampling_ratio, bool(aligned),
        float(canonical_size), int(canonical_level),
    )


_scripted._scriptable(multiscale_roi_align, _multiscale_op.scripted_multiscale_roi_align)
