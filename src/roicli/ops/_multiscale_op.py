"""`torch.ops.roicli.multiscale_roi_align`: RoI Align over a feature pyramid as one operator.

    multiscale_roi_align(features Tensor[], rois, scales float[], pooled_height, pooled_width,
                         sampling_ratio, aligned, canonical_size, canonical_level)
        -> Tensor[K, C, PH, PW]
    multiscale_roi_align_backward(grad, rois, scales, pooled_height, pooled_width, sampling_ratio,
                                  aligned, canonical_size, canonical_level,
                                  batch_size, channels, heights SymInt[], widths SymInt[])
        -> Tensor[] (one gradient per level, Tensor[N, C, H_l, W_l])

Splitting the RoIs by level has data-dependent sizes (how many RoIs each level gets), so it lives
inside the real kernel, never in a traced graph: `torch.compile(fullgraph=True)` and
`torch.export` see one node, whose fake kernel gives `[K, C, PH, PW]` from shapes alone (K may be
symbolic). The real kernel (any device) checks the RoIs' values, assigns levels (`fpn_levels`),
and calls the `roicli::roi_align` operator once per level on that level's RoIs, so the kernel
module `kernels/select.py` chooses (C++, Triton, torch) serves each level. The backward operator
does the same with `roicli::roi_align_backward`. Double backward is not supported.

ONNX (both exporters, opset 16+): every level is pooled for every RoI with `RoiAlign` (through
roi_align's own mapping) and each RoI's level is picked with `Where`; the level rule is computed in
the graph (ONNX has no log2: `Log(x) / ln 2`, which can differ from `torch.log2` by an ulp, within
the rule's own 1e-6 nudge). This costs L times the pooling of the eager op, the price of static
shapes.

Written with the low-level `torch.library.Library` API, which works from torch 2.3 on.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import List, Union  # noqa: UP035  (TorchScript resolves typing's names)

import torch
from torch import Tensor
from torch._jit_internal import BroadcastingList2

from roicli.errors import RoicliError, ValidationError
from roicli.ops import _scripted
from roicli.ops._library import _apply, _below_autograd, _Function, _register_fake
from roicli.ops._validate import check_values

_lib = torch.library.Library("roicli", "FRAGMENT")
_lib.define(
    "multiscale_roi_align(Tensor[] features, Tensor rois, float[] scales, int pooled_height, "
    "int pooled_width, int sampling_ratio, bool aligned, float canonical_size, int canonical_level) -> Tensor"
)
_lib.define(
    "multiscale_roi_align_backward(Tensor grad, Tensor rois, float[] scales, int pooled_height, "
    "int pooled_width, int sampling_ratio, bool aligned, float canonical_size, int canonical_level, "
    "SymInt batch_size, SymInt channels, SymInt[] heights, SymInt[] widths) -> Tensor[]"
)


def fpn_levels(
    rois: Tensor, scales: Sequence[float], canonical_size: float = 224, canonical_level: int = 4
) -> Tensor:
    """Pyramid level (an index into `scales`) of each RoI: FPN eq. 1.

    `k = floor(canonical_level + log2(sqrt(w * h) / canonical_size) + 1e-6)`, clamped to the levels
    present; level k has stride 2**k. rois `Tensor[K, 5]` in image pixels -> `Tensor[K]` (int64).
    Computed in the rois' dtype, as torchvision's LevelMapper does. A RoI whose area is negative
    (x2 < x1 or y2 < y1) gets no valid level (NaN before the cast): it is pooled from no level and
    its output stays 0, as in torchvision.
    """
    k_min = round(-math.log2(scales[0]))
    k_max = round(-math.log2(scales[-1]))
    area = (rois[:, 3] - rois[:, 1]) * (rois[:, 4] - rois[:, 2])  # [K]
    k = torch.floor(canonical_level + torch.log2(torch.sqrt(area) / canonical_size) + 1e-6)  # [K]
    return (torch.clamp(k, min=k_min, max=k_max).to(torch.int64) - k_min).to(torch.int64)


def _level_rois(levels: Tensor, n_levels: int) -> list[Tensor]:
    """Indices `Tensor[K_l]` (ascending) of the RoIs of each level."""
    return [torch.nonzero(levels == lvl).squeeze(1) for lvl in range(n_levels)]


def pool_levels(
    op: Callable[[Tensor, Tensor, float], Tensor],
    features: Sequence[Tensor],
    rois: Tensor,
    levels: Tensor,
    scales: Sequence[float],
) -> Tensor:
    """`op(features[l], rois_of_level_l, scales[l])` for each level; results in input RoI order.

    rois `Tensor[K, 5]`, levels `Tensor[K]` (from `fpn_levels`). One op call per level, no loop
    over RoIs. A RoI of no level (a level outside `[0, L)`) gets zeros. For eager use with any op
    (the operator `multiscale_roi_align`'s kernel is this with `roi_align`); the split has
    data-dependent sizes, so it does not compile into one graph.
    """
    out = None
    for lvl, idx in enumerate(_level_rois(levels, len(features))):
        if idx.numel() == 0:
            continue
        pooled = op(features[lvl], rois[idx], scales[lvl])  # [K_l, C, PH, PW]
        if out is None:
            out = pooled.new_zeros((rois.shape[0], *pooled.shape[1:]))  # [K, C, PH, PW]
        out.index_put_((idx,), pooled)  # in place: no copy of the whole output per level
    if out is None:  # no RoI of any level: the output's shape from an empty call
        empty = op(features[0], rois[:0], scales[0])  # [0, C, PH, PW]
        out = empty if rois.shape[0] == 0 else empty.new_zeros((rois.shape[0], *empty.shape[1:]))
    return out


# --------------------------------------------------------------------------- real kernels


def _multiscale_roi_align(features, rois, scales, pooled_height, pooled_width, sampling_ratio, aligned,
                          canonical_size, canonical_level):
    check_values(rois, features[0].shape[0])  # before the levels read them: row numbers of the whole set
    levels = fpn_levels(rois, scales, canonical_size, canonical_level)  # [K]
    align = torch.ops.roicli.roi_align.default

    def pool(feat: Tensor, r: Tensor, scale: float) -> Tensor:
        return align(feat, r, scale, pooled_height, pooled_width, sampling_ratio, aligned, "avg")[0]

    return pool_levels(pool, features, rois, levels, scales)


def _multiscale_roi_align_backward(grad, rois, scales, pooled_height, pooled_width, sampling_ratio, aligned,
                                   canonical_size, canonical_level, batch_size, channels, heights, widths):
    levels = fpn_levels(rois, scales, canonical_size, canonical_level)  # [K]
    no_argmax = grad.new_empty((0,), dtype=torch.int32)  # mode "avg"
    backward = torch.ops.roicli.roi_align_backward.default
    grads = []
    for lvl, idx in enumerate(_level_rois(levels, len(scales))):
        if idx.numel() == 0:
            grads.append(grad.new_zeros((batch_size, channels, heights[lvl], widths[lvl])))
            continue
        grads.append(backward(grad[idx].contiguous(), rois[idx], no_argmax, scales[lvl], pooled_height,
                              pooled_width, sampling_ratio, aligned, "avg", batch_size, channels,
                              heights[lvl], widths[lvl]))  # [N, C, H_l, W_l]
    return grads


_lib.impl("multiscale_roi_align", _multiscale_roi_align, "CompositeExplicitAutograd")
_lib.impl("multiscale_roi_align_backward", _multiscale_roi_align_backward, "CompositeExplicitAutograd")


# --------------------------------------------------------------------------- fake kernels


@_register_fake("roicli::multiscale_roi_align", lib=_lib)
def _multiscale_roi_align_fake(features, rois, scales, pooled_height, pooled_width, sampling_ratio, aligned,
                               canonical_size, canonical_level):
    first = features[0]
    return first.new_empty((rois.shape[0], first.shape[1], pooled_height, pooled_width))


@_register_fake("roicli::multiscale_roi_align_backward", lib=_lib)
def _multiscale_roi_align_backward_fake(grad, rois, scales, pooled_height, pooled_width, sampling_ratio,
                                        aligned, canonical_size, canonical_level, batch_size, channels,
                                        heights, widths):
    return [grad.new_empty((batch_size, channels, h, w)) for h, w in zip(heights, widths)]


# --------------------------------------------------------------------------- autograd

_N_PARAMS = 7  # scales, pooled_height, pooled_width, sampling_ratio, aligned, canonical_size, canonical_level


class _MultiScaleRoIAlign(_Function):
    """Inputs (rois, *params, *features): the levels come last, one tensor each, so that autograd
    sees every level as an input of its own (it does not look inside a list)."""

    @staticmethod
    def forward(rois, *args):
        params, features = args[:_N_PARAMS], args[_N_PARAMS:]
        return _below_autograd(torch.ops.roicli.multiscale_roi_align.default, list(features), rois, *params)

    @staticmethod
    def setup_context(ctx, inputs, output):
        rois, params, features = inputs[0], inputs[1:1 + _N_PARAMS], inputs[1 + _N_PARAMS:]
        ctx.save_for_backward(rois)
        ctx.params = params
        ctx.shape = (features[0].shape[0], features[0].shape[1],
                     [f.shape[2] for f in features], [f.shape[3] for f in features])

    @staticmethod
    def backward(ctx, grad):
        (rois,) = ctx.saved_tensors
        grads = torch.ops.roicli.multiscale_roi_align_backward.default(
            grad.contiguous(), rois, *ctx.params, *ctx.shape
        )
        return (None,) * (1 + _N_PARAMS) + tuple(grads)


def _autograd_kernel(features, rois, *params):
    if torch.is_grad_enabled() and (rois.requires_grad or any(f.requires_grad for f in features)):
        return _apply(_MultiScaleRoIAlign, rois, *params, *features)
    return _below_autograd(torch.ops.roicli.multiscale_roi_align.default, features, rois, *params)


class _NoDoubleBackward(_Function):
    """The backward operator under autograd: a tuple of gradients (one per level) that refuse a
    further backward."""

    @staticmethod
    def forward(grad, *args):
        return tuple(_below_autograd(torch.ops.roicli.multiscale_roi_align_backward.default, grad, *args))

    @staticmethod
    def setup_context(ctx, inputs, output):
        pass

    @staticmethod
    def backward(ctx, *grads):
        raise RoicliError(
            "roicli::multiscale_roi_align_backward: expected a first-order gradient, got a request for double backward"
        )


def _backward_autograd_kernel(grad, *args):
    if torch.is_grad_enabled() and grad.requires_grad:
        return list(_apply(_NoDoubleBackward, grad, *args))
    return _below_autograd(torch.ops.roicli.multiscale_roi_align_backward.default, grad, *args)


_lib.impl("multiscale_roi_align", _autograd_kernel, "Autograd")
_lib.impl("multiscale_roi_align_backward", _backward_autograd_kernel, "Autograd")


# --------------------------------------------------------------------------- TorchScript


def scripted_multiscale_roi_align(
    features: List[Tensor],  # noqa: UP006
    boxes: Union[Tensor, List[Tensor]],  # noqa: UP006, UP007
    output_size: BroadcastingList2[int],
    scales: List[float],  # noqa: UP006
    sampling_ratio: int = -1,
    aligned: bool = False,
    canonical_size: float = 224.0,
    canonical_level: int = 4,
) -> Tensor:
    """What `torch.jit.script(multiscale_roi_align)` compiles: the same operator call."""
    if len(features) == 0 or len(scales) != len(features):
        raise ValidationError("features, scales: expected a non-empty list of maps and one scale per map")
    rois = _scripted._rois(boxes, features[0])
    return torch.ops.roicli.multiscale_roi_align(
        features, rois, scales, output_size[0], output_size[1], sampling_ratio, aligned,
        canonical_size, canonical_level,
    )


# --------------------------------------------------------------------------- ONNX


def _legacy_symbolic() -> Callable:
    from torch.onnx import symbolic_helper

    from roicli.ops._onnx import _legacy_symbolics

    align = _legacy_symbolics()["roi_align"]

    @symbolic_helper.parse_args("v", "v", "fs", "i", "i", "i", "b", "f", "i")
    def multiscale_roi_align(g, features, rois, scales, pooled_height, pooled_width, sampling_ratio, aligned,
                             canonical_size, canonical_level):
        maps = symbolic_helper._unpack_list(features)

        def const(v):
            return g.op("Constant", value_t=torch.tensor(v, dtype=torch.float32))

        def column(i):
            return g.op("Gather", rois, g.op("Constant", value_t=torch.tensor(i)), axis_i=1)  # [K]

        def scalar(v):
            return g.op("CastLike", const(v), rois)

        area = g.op("Mul", g.op("Sub", column(3), column(1)), g.op("Sub", column(4), column(2)))
        log2 = g.op("Div", g.op("Log", g.op("Div", g.op("Sqrt", area), scalar(canonical_size))), scalar(math.log(2)))
        k = g.op("Floor", g.op("Add", g.op("Add", scalar(float(canonical_level)), log2), scalar(1e-6)))
        k_min, k_max = round(-math.log2(scales[0])), round(-math.log2(scales[-1]))
        k = g.op("Clip", k, scalar(float(k_min)), scalar(float(k_max)))  # [K]; NaN stays NaN: no level
        out = None
        for lvl, (feat, scale) in enumerate(zip(maps, scales)):
            pooled, _ = align(g, feat, rois, scale, pooled_height, pooled_width, sampling_ratio, aligned, "avg")
            mask = g.op("Equal", k, scalar(float(k_min + lvl)))
            mask = g.op("Unsqueeze", mask, g.op("Constant", value_t=torch.tensor([1, 2, 3])))  # [K, 1, 1, 1]
            other = out if out is not None else g.op("CastLike", const(0.0), pooled)
            out = g.op("Where", mask, pooled, other)
        return out

    return multiscale_roi_align


def register_legacy() -> None:
    """The legacy (TorchScript-based) ONNX exporter's symbolic (opset 16 and later)."""
    register = getattr(torch.onnx, "register_custom_op_symbolic", None)
    if register is None:
        return
    register("roicli::multiscale_roi_align", _legacy_symbolic(), 16)


def onnx_translations(align: Callable) -> dict[Callable, Callable]:
    """The dynamo exporter's translation of the operator, given roi_align's translation `align`
    (from `roicli.ops.onnx_translation_table()`)."""
    from onnxscript import opset18 as op

    def multiscale_roi_align(features, rois, scales: Sequence[float], pooled_height: int, pooled_width: int,
                             sampling_ratio: int, aligned: bool, canonical_size: float, canonical_level: int):

        def column(i):
            return op.Squeeze(op.Slice(rois, [i], [i + 1], [1]), [1])  # [K]

        def scalar(v):
            return op.CastLike(op.Constant(value_float=v), rois)

        area = op.Mul(op.Sub(column(3), column(1)), op.Sub(column(4), column(2)))
        log2 = op.Div(op.Log(op.Div(op.Sqrt(area), scalar(canonical_size))), scalar(math.log(2)))
        k = op.Floor(op.Add(op.Add(scalar(float(canonical_level)), log2), scalar(1e-6)))
        k_min, k_max = round(-math.log2(scales[0])), round(-math.log2(scales[-1]))
        k = op.Clip(k, scalar(float(k_min)), scalar(float(k_max)))  # [K]; NaN stays NaN: no level
        out = None
        for lvl, (feat, scale) in enumerate(zip(features, scales)):
            pooled, _ = align(feat, rois, scale, pooled_height, pooled_width, sampling_ratio, aligned, "avg")
            mask = op.Unsqueeze(op.Equal(k, scalar(float(k_min + lvl))), [1, 2, 3])  # [K, 1, 1, 1]
            other = out if out is not None else op.CastLike(op.Constant(value_float=0.0), pooled)
            out = op.Where(mask, pooled, other)
        return out

    return {torch.ops.roicli.multiscale_roi_align.default: multiscale_roi_align}


register_legacy()
