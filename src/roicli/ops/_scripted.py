"""TorchScript forms of the front doors: `torch.jit.script` compiles these in their place.

    scripted = torch.jit.script(roicli.ops.roi_align)     # or a module that calls roi_align
    scripted(x, boxes, [7, 7], 1.0 / 16, 2, False)         # torchvision's positional signature

Each public function carries `__prepare_scriptable__` (see `_scriptable`), the hook TorchScript
calls before compiling an object, so the eager front door keeps its Python-only checks and exact
error messages while the scripted one (same arguments, `mode` positional too) checks shapes with
shorter messages and calls the same `torch.ops.roicli` operators. The operators check the RoIs'
values when the scripted code runs.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import List, Union  # noqa: UP035  (TorchScript resolves typing's names)

import torch
from torch import Tensor
from torch._jit_internal import BroadcastingList2

from roicli.errors import ValidationError


def _scriptable(eager: Callable, scripted: Callable) -> None:
    eager.__prepare_scriptable__ = lambda: scripted  # type: ignore[attr-defined]


def _rois(boxes: Union[Tensor, List[Tensor]], input: Tensor) -> Tensor:  # noqa: UP006, UP007
    if input.dim() != 4 or not input.is_floating_point():
        raise ValidationError("input: expected a floating-point Tensor[N, C, H, W]")
    dtype = torch.float64 if input.dtype == torch.float64 else torch.float32
    if isinstance(boxes, torch.Tensor):
        if boxes.dim() != 2 or boxes.size(1) != 5:
            raise ValidationError("boxes: expected Tensor[K, 5] (batch index, x1, y1, x2, y2)")
        return boxes.to(dtype)
    parts: List[Tensor] = []  # noqa: UP006
    for i, b in enumerate(boxes):
        if b.dim() != 2 or b.size(1) != 4:
            raise ValidationError("boxes: expected list[Tensor[L, 4]] (x1, y1, x2, y2)")
        b = b.to(dtype)
        parts.append(torch.cat([torch.full_like(b[:, :1], float(i)), b], dim=1))
    if len(parts) == 0:
        return torch.zeros((0, 5), dtype=dtype, device=input.device)
    return torch.cat(parts)


def roi_align(
    input: Tensor,
    boxes: Union[Tensor, List[Tensor]],  # noqa: UP006, UP007
    output_size: BroadcastingList2[int],
    spatial_scale: float = 1.0,
    sampling_ratio: int = -1,
    aligned: bool = False,
    mode: str = "avg",
) -> Tensor:
    if mode != "avg" and mode != "max":
        raise ValidationError("mode: expected 'avg' or 'max'")
    rois = _rois(boxes, input)
    return torch.ops.roicli.roi_align(
        input, rois, spatial_scale, output_size[0], output_size[1], sampling_ratio, aligned, mode
    )[0]


def roi_pool(
    input: Tensor,
    boxes: Union[Tensor, List[Tensor]],  # noqa: UP006, UP007
    output_size: BroadcastingList2[int],
    spatial_scale: float = 1.0,
) -> Tensor:
    rois = _rois(boxes, input)
    return torch.ops.roicli.roi_pool(input, rois, spatial_scale, output_size[0], output_size[1])[0]


def precise_roi_pool(
    input: Tensor,
    boxes: Union[Tensor, List[Tensor]],  # noqa: UP006, UP007
    output_size: BroadcastingList2[int],
    spatial_scale: float = 1.0,
    aligned: bool = True,
) -> Tensor:
    rois = _rois(boxes, input)
    return torch.ops.roicli.precise_roi_pool(input, rois, spatial_scale, output_size[0], output_size[1], aligned)
