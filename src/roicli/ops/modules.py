"""`nn.Module` wrappers: they hold the hyper-parameters; the work is in the functions."""

from __future__ import annotations

from collections.abc import Sequence
from typing import List, Union  # noqa: UP035  (TorchScript reads these annotations)

from torch import Tensor, nn

from roicli.ops._validate import to_pair
from roicli.ops.multiscale import multiscale_roi_align
from roicli.ops.precise import precise_roi_pool
from roicli.ops.roi_align import roi_align
from roicli.ops.roi_pool import roi_pool


class RoIAlign(nn.Module):
    """See `roi_align`."""

    def __init__(self, output_size, spatial_scale: float, sampling_ratio: int, aligned: bool = False,
                 mode: str = "avg"):
        super().__init__()
        self.output_size = to_pair(output_size)
        self.spatial_scale = spatial_scale
        self.sampling_ratio = sampling_ratio
        self.aligned = aligned
        self.mode = mode

    def forward(self, input: Tensor, rois: Union[Tensor, List[Tensor]]) -> Tensor:  # noqa: UP006, UP007
        return roi_align(input, rois, self.output_size, self.spatial_scale, self.sampling_ratio,
                         self.aligned, mode=self.mode)

    def extra_repr(self) -> str:
        return (f"output_size={self.output_size}, spatial_scale={self.spatial_scale}, "
                f"sampling_ratio={self.sampling_ratio}, aligned={self.aligned}, mode={self.mode!r}")


class RoIPool(nn.Module):
    """See `roi_pool`."""

    def __init__(self, output_size, spatial_scale: float):
        super().__init__()
        self.output_size = to_pair(output_size)
        self.spatial_scale = spatial_scale

    def forward(self, input: Tensor, rois: Union[Tensor, List[Tensor]]) -> Tensor:  # noqa: UP006, UP007
        return roi_pool(input, rois, self.output_size, self.spatial_scale)

    def extra_repr(self) -> str:
        return f"output_size={self.output_size}, spatial_scale={self.spatial_scale}"


class PreciseRoIPool(nn.Module):
    """See `precise_roi_pool`."""

    def __init__(self, output_size, spatial_scale: float, aligned: bool = True):
        super().__init__()
        self.output_size = to_pair(output_size)
        self.spatial_scale = spatial_scale
        self.aligned = aligned

    def forward(self, input: Tensor, rois: Union[Tensor, List[Tensor]]) -> Tensor:  # noqa: UP006, UP007
        return precise_roi_pool(input, rois, self.output_size, self.spatial_scale, self.aligned)

    def extra_repr(self) -> str:
        return (f"output_size={self.output_size}, spatial_scale={self.spatial_scale}, "
                f"aligned={self.aligned}")


class MultiScaleRoIAlign(nn.Module):
    """See `multiscale_roi_align`. forward(features: list[Tensor], boxes)."""

    def __init__(self, output_size, scales: Sequence[float], sampling_ratio: int = -1,
                 aligned: bool = False, canonical_size: float = 224, canonical_level: int = 4):
        super().__init__()
        self.output_size = to_pair(output_size)
        self.scales = [float(s) for s in scales]  # float, as TorchScript types the forward
        self.sampling_ratio = sampling_ratio
        self.aligned = aligned
        self.canonical_size = float(canonical_size)
        self.canonical_level = canonical_level

    def forward(self, features: List[Tensor], rois: Union[Tensor, List[Tensor]]) -> Tensor:  # noqa: UP006, UP007
        return multiscale_roi_align(features, rois, self.output_size, self.scales,
                                    self.sampling_ratio, self.aligned, self.canonical_size,
                                    self.canonical_level)

    def extra_repr(self) -> str:
        return (f"output_size={self.output_size}, scales={self.scales}, "
                f"sampling_ratio={self.sampling_ratio}, aligned={self.aligned}, "
                f"canonical_size={self.canonical_size}, canonical_level={self.canonical_level}")
