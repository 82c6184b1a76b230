"""roicli's ops as PyTorch operators (`torch.ops.roicli.*`): schemas, fake kernels, autograd, checks.

    roi_align(input, rois, spatial_scale, pooled_height, pooled_width, sampling_ratio, aligned, mode)
        -> (output Tensor[K, C, PH, PW], argmax)       argmax: see kernels/__init__.py
    roi_pool(input, rois, spatial_scale, pooled_height, pooled_width) -> (output, argmax)
    precise_roi_pool(input, rois, spatial_scale, pooled_height, pooled_width, aligned) -> output
    and one `*_backward` operator each (the gradient with respect to `input`).

Every operator takes normalised arguments (`rois` Tensor[K, 5] from `_validate.as_rois`). Its
layers, as torchvision's C++ operators have them:

* a fake kernel: output shapes and dtypes from input shapes alone (K may be symbolic), so that
  `torch.compile(fullgraph=True)` and `torch.export` see one node per op;
* an autograd kernel: the forward operator below autograd, and the backward operator for the
  gradient (so the backward compiles and exports too); double backward is not supported;
* the real kernel (any device): checks the RoIs' *values* (finite coordinates, batch index an
  integer in [0, N)), then calls the kernel module `kernels/select.py` chooses.

Where the checks run: shapes, dtypes, devices and arguments in the Python front door (also while
tracing); values in the real kernel here, on the data it is about to read — in eager mode, and
when a compiled, exported, traced or scripted graph runs. (Tracing and fake tensors never see
them.) An ONNX graph does not check values.

Written with the low-level `torch.library.Library` API, which works from torch 2.3 on.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator

import torch

from roicli.errors import RoicliError, ValidationError
from roicli.ops._validate import check_values
from roicli.ops.kernels.select import kernel_for

_lib = torch.library.Library("roicli", "DEF")
_lib.define(
    "roi_align(Tensor input, Tensor rois, float spatial_scale, int pooled_height, int pooled_width, "
    "int sampling_ratio, bool aligned, str mode) -> (Tensor, Tensor)"
)
_lib.define(
    "roi_align_backward(Tensor grad, Tensor rois, Tensor argmax, float spatial_scale, int pooled_height, "
    "int pooled_width, int sampling_ratio, bool aligned, str mode, SymInt batch_size, SymInt channels, "
    "SymInt height, SymInt width) -> Tensor"
)
_lib.define(
    "roi_pool(Tensor input, Tensor rois, float spatial_scale, int pooled_height, int pooled_width)"
    " -> (Tensor, Tensor)"
)
_lib.define(
    "roi_pool_backward(Tensor grad, Tensor rois, Tensor argmax, float spatial_scale, int pooled_height, "
    "int pooled_width, SymInt batch_size, SymInt channels, SymInt height, SymInt width) -> Tensor"
)
_lib.define(
    "precise_roi_pool(Tensor input, Tensor rois, float spatial_scale, int pooled_height, int pooled_width, "
    "bool aligned) -> Tensor"
)
_lib.define(
    "precise_roi_pool_backward(Tensor grad, Tensor rois, float spatial_scale, int pooled_height, "
    "int pooled_width, bool aligned, SymInt batch_size, SymInt channels, SymInt height, SymInt width) -> Tensor"
)

_register_fake = getattr(torch.library, "register_fake", None) or torch.library.impl_abstract  # torch < 2.4

# Set by the eager front door around a call whose argmax it drops (no gradient wanted): a kernel
# module with the optional `roi_pool_values` then skips the argmax work.
_no_argmax = threading.local()


@contextlib.contextmanager
def argmax_unused() -> Iterator[None]:
    """Inside: roicli::roi_pool may return a placeholder argmax (for the eager front door only)."""
    previous = getattr(_no_argmax, "active", False)
    _no_argmax.active = True
    try:
        yield
    finally:
        _no_argmax.active = previous


# --------------------------------------------------------------------------- real kernels


def _check_mode(mode: str) -> None:
    if mode not in ("avg", "max"):
        raise ValidationError(f"mode: expected 'avg' or 'max', got {mode!r}")


def _roi_align(input, rois, spatial_scale, pooled_height, pooled_width, sampling_ratio, aligned, mode):
    _check_mode(mode)
    check_values(rois, input.shape[0])
    return kernel_for(input.device).roi_align_forward(
        input, rois, spatial_scale, pooled_height, pooled_width, sampling_ratio, aligned, mode
    )


def _roi_align_backward(grad, rois, argmax, spatial_scale, pooled_height, pooled_width, sampling_ratio,
                        aligned, mode, batch_size, channels, height, width):
    return kernel_for(grad.device).roi_align_backward(
        grad, rois, argmax, spatial_scale, pooled_height, pooled_width, sampling_ratio, aligned, mode,
        batch_size, channels, height, width,
    )


def _roi_pool(input, rois, spatial_scale, pooled_height, pooled_width):
    check_values(rois, input.shape[0])
    if input.shape[2] * input.shape[3] >= 2**31:  # the argmax h * W + w is int32, as torchvision's
        raise ValidationError(
            f"input: expected H * W < 2^31 (roi_pool's argmax is int32), got {input.shape[2]} x {input.shape[3]}"
        )
    kernel = kernel_for(input.device)
    values = getattr(kernel, "roi_pool_values", None)
    if values is not None and getattr(_no_argmax, "active", False):
        out = values(input, rois, spatial_scale, pooled_height, pooled_width)
        return out, out.new_full((), -1, dtype=torch.int32).expand(out.shape)  # never read
    return kernel.roi_pool_forward(input, rois, spatial_scale, pooled_height, pooled_width)


def _roi_pool_backward(grad, rois, argmax, spatial_scale, pooled_height, pooled_width,
                       batch_size, channels, height, width):
    return kernel_for(grad.device).roi_pool_backward(
        grad, rois, argmax, spatial_scale, pooled_height, pooled_width, batch_size, channels, height, width
    )


def _precise_roi_pool(input, rois, spatial_scale, pooled_height, pooled_width, aligned):
    check_values(rois, input.shape[0])
    return kernel_for(input.device).precise_roi_pool_forward(
        input, rois, spatial_scale, pooled_height, pooled_width, aligned
    )


def _precise_roi_pool_backward(grad, rois, spatial_scale, pooled_height, pooled_width, aligned,
                               batch_size, channels, height, width):
    return kernel_for(grad.device).precise_roi_pool_backward(
        grad, rois, spatial_scale, pooled_height, pooled_width, aligned, batch_size, channels, height, width
    )


for _name, _fn in [
    ("roi_align", _roi_align), ("roi_align_backward", _roi_align_backward),
    ("roi_pool", _roi_pool), ("roi_pool_backward", _roi_pool_backward),
    ("precise_roi_pool", _precise_roi_pool), ("precise_roi_pool_backward", _precise_roi_pool_backward),
]:
    _lib.impl(_name, _fn, "CompositeExplicitAutograd")


# --------------------------------------------------------------------------- fake kernels


@_register_fake("roicli::roi_align", lib=_lib)
def _roi_align_fake(input, rois, spatial_scale, pooled_height, pooled_width, sampling_ratio, aligned, mode):
    _check_mode(mode)
    shape = (rois.shape[0], input.shape[1], pooled_height, pooled_width)
    argmax = input.new_empty(shape if mode == "max" else (0,), dtype=torch.int32)
    return input.new_empty(shape), argmax


@_register_fake("roicli::roi_pool", lib=_lib)
def _roi_pool_fake(input, rois, spatial_scale, pooled_height, pooled_width):
    shape = (rois.shape[0], input.shape[1], pooled_height, pooled_width)
    return input.new_empty(shape), input.new_empty(shape, dtype=torch.int32)


@_register_fake("roicli::precise_roi_pool", lib=_lib)
def _precise_roi_pool_fake(input, rois, spatial_scale, pooled_height, pooled_width, aligned):
    return input.new_empty((rois.shape[0], input.shape[1], pooled_height, pooled_width))


def _backward_fake(grad, *args):
    batch_size, channels, height, width = args[-4:]
    return grad.new_empty((batch_size, channels, height, width))


for _name in ("roi_align_backward", "roi_pool_backward", "precise_roi_pool_backward"):
    _register_fake(f"roicli::{_name}", _backward_fake, lib=_lib)


# --------------------------------------------------------------------------- autograd


# Autograd functions without torch.func's own dispatch (see `_apply`); private, so with a fallback.
_Function = getattr(torch.autograd.function, "_SingleLevelFunction", torch.autograd.Function)


def _below_autograd(op, *args):
    with torch._C._AutoDispatchBelowAutograd():
        return op(*args)


def _function(name: str, with_argmax: bool) -> type:
    """The autograd Function of `roicli::<name>`: its forward is the op below autograd, its backward the
    op `roicli::<name>_backward`, given the saved RoIs (and the forward's argmax, for the ops that
    return one, marked non-differentiable), the op's parameters and the input's shape."""
    forward_op = getattr(torch.ops.roicli, name).default
    backward_op = getattr(torch.ops.roicli, f"{name}_backward").default

    def forward(input, rois, *params):
        return _below_autograd(forward_op, input, rois, *params)

    def setup_context(ctx, inputs, output):
        input, rois, *params = inputs
        if with_argmax:
            ctx.mark_non_differentiable(output[1])
            ctx.save_for_backward(rois, output[1])
        else:
            ctx.save_for_backward(rois)
        ctx.params, ctx.input_shape = params, input.shape

    def backward(ctx, grad, *_grad_argmax):
        grad_input = backward_op(grad.contiguous(), *ctx.saved_tensors, *ctx.params, *ctx.input_shape)
        return (grad_input,) + (None,) * (1 + len(ctx.params))

    methods = {"forward": forward, "setup_context": setup_context, "backward": backward}
    return type(f"_{name}", (_Function,), {k: staticmethod(f) for k, f in methods.items()})


_RoIAlign = _function("roi_align", with_argmax=True)
_RoIPool = _function("roi_pool", with_argmax=True)
_PreciseRoIPool = _function("precise_roi_pool", with_argmax=False)


def _apply(function, *args):
    """`function.apply` at this dispatcher level. The autograd kernel already runs inside the
    level of any torch.func transform, so the function is applied there as a single-level one
    (what torch.func itself does for a custom function at each level): this makes torch.func.grad
    and vjp work through the ops."""
    if not torch._C._are_functorch_transforms_active():
        return function.apply(*args)
    from torch._functorch.utils import enable_single_level_autograd_function

    with enable_single_level_autograd_function():
        return function.apply(*args)


def _autograd_kernel(function, op):
    def kernel(input, rois, *args):
        if torch.is_grad_enabled() and (input.requires_grad or rois.requires_grad):
            return _apply(function, input, rois, *args)
        return _below_autograd(op, input, rois, *args)

    return kernel


class _NoDoubleBackward(_Function):
    @staticmethod
    def forward(op, *args):
        return _below_autograd(op, *args)

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.op_name = str(inputs[0])

    @staticmethod
    def backward(ctx, *grads):
        raise RoicliError(f"{ctx.op_name}: expected a first-order gradient, got a request for double backward")


def _backward_autograd_kernel(op):
    def kernel(grad, *args):
        if torch.is_grad_enabled() and grad.requires_grad:
            return _apply(_NoDoubleBackward, op, grad, *args)
        return _below_autograd(op, grad, *args)

    return kernel


_lib.impl("roi_align", _autograd_kernel(_RoIAlign, torch.ops.roicli.roi_align.default), "Autograd")
_lib.impl("roi_pool", _autograd_kernel(_RoIPool, torch.ops.roicli.roi_pool.default), "Autograd")
_lib.impl(
    "precise_roi_pool", _autograd_kernel(_PreciseRoIPool, torch.ops.roicli.precise_roi_pool.default), "Autograd"
)
for _name in ("roi_align_backward", "roi_pool_backward", "precise_roi_pool_backward"):
    _lib.impl(_name, _backward_autograd_kernel(getattr(torch.ops.roicli, _name).default), "Autograd")
