"""roicli's op library: torchvision-compatible RoI Align / RoI Pool, plus exact RoI pooling.

    from roicli.ops import roi_align
    pooled = roi_align(features, boxes, output_size=7, spatial_scale=1 / 16, sampling_ratio=2)
"""

from roicli.ops._onnx import onnx_translation_table, register_legacy
from roicli.ops.modules import MultiScaleRoIAlign, PreciseRoIPool, RoIAlign, RoIPool
from roicli.ops.multiscale import fpn_levels, multiscale_roi_align, pool_levels
from roicli.ops.precise import precise_roi_pool
from roicli.ops.roi_align import roi_align
from roicli.ops.roi_pool import roi_pool

__all__ = [
    "MultiScaleRoIAlign",
    "PreciseRoIPool",
    "RoIAlign",
    "RoIPool",
    "fpn_levels",
    "onnx_translation_table",
    "multiscale_roi_align",
    "pool_levels",
    "precise_roi_pool",
    "roi_align",
    "roi_pool",
]

register_legacy()  # the legacy ONNX exporter's symbolics (the dynamo exporter: onnx_translation_table())
