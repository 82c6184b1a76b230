"""ONNX mappings of roicli's operators, for both of torch's exporters.

    roicli::roi_align, mode "avg"   ->  RoiAlign (opset 16+): coordinate_transformation_mode
                                        "half_pixel" for aligned=True, "output_half_pixel" for
                                        aligned=False (whose RoIs ONNX also makes at least 1x1
                                        cell, as torchvision's exporter relies on);
                                        sampling_ratio <= 0 -> 0 (ONNX's adaptive grid)
    roicli::roi_pool                ->  MaxRoiPool (rois as they are: batch, x1, y1, x2, y2)
    roicli::roi_align, mode "max"   ->  no equivalent: ONNX's "max" maxes weighted corner terms,
                                        not interpolated samples
    roicli::precise_roi_pool        ->  no equivalent

An op without an equivalent fails the export with `ExportUnsupported`, never a wrong graph.

* legacy exporter (`torch.onnx.export(..., dynamo=False)`, opset >= 16): the symbolics are
  registered when `roicli.ops` is imported; nothing to do.
* dynamo exporter (`torch.onnx.export(..., dynamo=True)`): pass roicli's translations,
  `torch.onnx.export(model, args, dynamo=True, custom_translation_table=onnx_translation_table())`
  (needs `onnxscript`). Without them the exporter stops with "No decompositions registered
  for roicli::..." — also loud.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from roicli.errors import ExportUnsupported

MIN_OPSET = 16  # RoiAlign's coordinate_transformation_mode


def _unsupported(what: str) -> ExportUnsupported:
    return ExportUnsupported(
        f"ONNX export of {what}: expected an op with an ONNX equivalent (roi_align mode='avg', "
        f"roi_pool), got {what}, which has none"
    )


def _check_align(mode: str) -> None:
    if mode != "avg":
        raise _unsupported(f"roi_align mode={mode!r}")


# --------------------------------------------------------------------------- legacy (TorchScript) exporter


def _legacy_symbolics() -> dict[str, Callable]:
    from torch.onnx import symbolic_helper

    def rois_parts(g, rois, like):
        batch = g.op("Gather", rois, g.op("Constant", value_t=torch.tensor(0)), axis_i=1)
        batch = g.op("Cast", batch, to_i=torch.onnx.TensorProtoDataType.INT64)
        coords = g.op("Gather", rois, g.op("Constant", value_t=torch.tensor([1, 2, 3, 4])), axis_i=1)
        return g.op("CastLike", coords, like), batch

    @symbolic_helper.parse_args("v", "v", "f", "i", "i", "i", "b", "s")
    def roi_align(g, input, rois, spatial_scale, pooled_height, pooled_width, sampling_ratio, aligned, mode):
        _check_align(mode)
        coords, batch = rois_parts(g, rois, input)
        out = g.op(
            "RoiAlign", input, coords, batch,
            coordinate_transformation_mode_s="half_pixel" if aligned else "output_half_pixel",
            spatial_scale_f=spatial_scale, output_height_i=pooled_height, output_width_i=pooled_width,
            sampling_ratio_i=max(sampling_ratio, 0), mode_s="avg",
        )
        return out, None

    @symbolic_helper.parse_args("v", "v", "f", "i", "i")
    def roi_pool(g, input, rois, spatial_scale, pooled_height, pooled_width):
        out = g.op(
            "MaxRoiPool", input, g.op("CastLike", rois, input),
            pooled_shape_i=(pooled_height, pooled_width), spatial_scale_f=spatial_scale,
        )
        return out, None

    def precise_roi_pool(g, *args):
        raise _unsupported("precise_roi_pool")

    return {"roi_align": roi_align, "roi_pool": roi_pool, "precise_roi_pool": precise_roi_pool}


def register_legacy() -> None:
    """Register the symbolics of the legacy exporter (opset 16 and later)."""
    register = getattr(torch.onnx, "register_custom_op_symbolic", None)
    if register is None:  # a torch without the TorchScript-based exporter
        return
    for name, fn in _legacy_symbolics().items():
        register(f"roicli::{name}", fn, MIN_OPSET)


# --------------------------------------------------------------------------- dynamo exporter


def onnx_translation_table() -> dict[Callable, Callable]:
    """roicli's operators -> onnxscript translations, for `torch.onnx.export(..., dynamo=True,
    custom_translation_table=...)`. Merge it with your own table if you have one."""
    from onnxscript import opset18 as op

    from roicli.ops import _multiscale_op

    def rois_parts(rois, like):
        batch = op.Cast(op.Squeeze(op.Slice(rois, [0], [1], [1]), [1]), to=7)  # 7: INT64
        return op.CastLike(op.Slice(rois, [1], [5], [1]), like), batch

    def roi_align(input, rois, spatial_scale: float, pooled_height: int, pooled_width: int,
                  sampling_ratio: int, aligned: bool, mode: str):
        _check_align(mode)
        coords, batch = rois_parts(rois, input)
        out = op.RoiAlign(
            input, coords, batch,
            coordinate_transformation_mode="half_pixel" if aligned else "output_half_pixel",
            spatial_scale=spatial_scale, output_height=pooled_height, output_width=pooled_width,
            sampling_ratio=max(sampling_ratio, 0), mode="avg",
        )
        return out, op.Cast(op.Slice(op.Constant(value_ints=[0]), [0], [0]), to=6)  # mode "avg": empty int32 argmax

    def roi_pool(input, rois, spatial_scale: float, pooled_height: int, pooled_width: int):
        out = op.MaxRoiPool(
            input, op.CastLike(rois, input), pooled_shape=[pooled_height, pooled_width], spatial_scale=spatial_scale
        )
        return out, op.Cast(out, to=6)  # argmax (6: INT32): only the backward reads it, and ONNX has none

    def precise_roi_pool(*args, **kwargs):
        raise _unsupported("precise_roi_pool")

    ops = torch.ops.roicli
    return {
        ops.roi_align.default: roi_align,
        ops.roi_pool.default: roi_pool,
        ops.precise_roi_pool.default: precise_roi_pool,
        **_multiscale_op.onnx_translations(roi_align),  # every level pooled with roi_align, picked by Where
    }
