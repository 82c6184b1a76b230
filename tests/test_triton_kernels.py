"""The Triton kernels (`roicli.ops.kernels.triton_kernels`) against today's ops and the loop references.

Where they run:
- on a GPU (CUDA present, no `TRITON_INTERPRET`): directly, on CUDA tensors;
- anywhere else: `test_interpreter_run` runs this file again in a subprocess with `TRITON_INTERPRET=1`
  (the same kernels on CPU tensors, one program after another). The variable is set only in that
  subprocess, before triton is imported, so no other test in this process sees it.
- `test_kernels_compile_for_cuda` compiles every kernel, as the host code launches it, to a CUDA
  binary (no GPU needed: Triton ships `ptxas`), and checks the two properties the interpreter cannot:
  no FMA contraction (geometry bit for bit) and IEEE division (Triton's fp32 `/` is approximate).

Kernel calls take the front door's normalised arguments (`as_rois`), as the operator layer passes them.
"""

from __future__ import annotations

import contextlib
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import reference as ref
import torch
from torch.testing import assert_close

from roicli.ops import precise_roi_pool, roi_align, roi_pool
from roicli.ops._validate import as_rois

pytest.importorskip("triton", reason="triton is not installed (pip install 'roicli[triton]')")
import roicli.ops.kernels.triton_kernels as tk  # noqa: E402

INTERPRET = tk.INTERPRETED
DEVICE = "cpu" if INTERPRET else "cuda"
RUNS_HERE = INTERPRET or torch.cuda.is_available()
needs_runner = pytest.mark.skipif(
    not RUNS_HERE, reason="needs a GPU or TRITON_INTERPRET=1 (test_interpreter_run runs these in a subprocess)"
)

F64 = torch.float64
TOL = {
    torch.float32: {"atol": 1e-5, "rtol": 1e-5},
    torch.float64: {"atol": 1e-12, "rtol": 1e-12},
    torch.float16: {"atol": 2e-3, "rtol": 2e-3},
    torch.bfloat16: {"atol": 2e-2, "rtol": 2e-2},
}
FLT_MAX = torch.finfo(torch.float32).max


def _map(shape, dtype=torch.float32, seed=0, layout="contiguous"):
    """A random feature map on DEVICE: contiguous, channels-last, or a strided view of a bigger map."""
    g = torch.Generator().manual_seed(seed)
    n, c, h, w = shape
    if layout == "strided":  # every other channel and column of a bigger map
        return torch.randn((n, 2 * c, h, 2 * w + 1), generator=g)[:, ::2, :, 1::2].to(DEVICE, dtype)
    x = torch.randn(shape, generator=g).to(DEVICE, dtype)
    return x.to(memory_format=torch.channels_last) if layout == "channels_last" else x


def _boxes(rows):
    return torch.tensor(rows, dtype=F64, device=DEVICE)


INSIDE = [[0, 1.3, 2.1, 7.7, 8.2], [1, 0.0, 0.0, 11.0, 9.0], [1, 3.3, 1.0, 6.1, 4.4], [0, 2.0, 5.5, 9.5, 8.9]]
# Large, small and thin boxes: adaptive grids of 1 to 5 samples per axis.
VARIED = [[0, 0.0, 0.0, 10.9, 8.9], [1, 2.5, 1.5, 3.0, 2.0], [0, 1.0, 3.0, 9.0, 3.2], [1, -4.0, -3.0, 14.0, 12.0]]
# Partly and wholly outside the map, degenerate (a point, a line) and inverted boxes.
EDGES = [
    [0, -3.0, -2.0, 4.0, 5.0],
    [1, 8.0, 6.0, 16.0, 13.0],
    [0, 12.0, 10.0, 15.0, 14.0],
    [1, -9.0, -7.0, -2.5, -1.5],
    [0, 3.3, 3.3, 3.3, 3.3],
    [1, 2.0, 1.0, 2.0, 7.0],
    [0, 7.0, 6.0, 2.0, 1.0],
]
MAP = (2, 5, 9, 11)
# (name, map shape, boxes, output size, spatial scale)
CASES = [
    ("inside", MAP, INSIDE, (3, 4), 0.7),
    ("varied", MAP, VARIED, (2, 3), 1.0),
    ("edges", MAP, EDGES, (2, 2), 1.0),
    ("blocks", (1, 40, 8, 7), [[0, 0.5, 0.2, 6.5, 7.9], [0, -1.0, 2.0, 3.0, 9.0]], (9, 8), 1.0),  # 2 x 2 tiles
]
CASE_IDS = [c[0] for c in CASES]


def _reference_kernels():
    """The torch implementation forced (whatever $ROICLI_KERNEL says), where the kernel seam exists."""
    try:
        from roicli.ops.kernels import use
    except ImportError:
        return contextlib.nullcontext()
    return use("torch")


def _grad_of(op, x, boxes, grad, *args, **kwargs):
    """The op through its front door on the torch kernels, and its autograd gradient with respect to x."""
    leaf = x.detach().clone().requires_grad_(True)
    with _reference_kernels():
        out = op(leaf, boxes, *args, **kwargs)
        (g,) = torch.autograd.grad(out, leaf, grad)
    return out.detach(), g


def _close(got, want, dtype):
    assert got.dtype == want.dtype
    assert_close(got, want, **TOL[dtype])


# --------------------------------------------------------------------------------------------------
# roi_align
# --------------------------------------------------------------------------------------------------
def _check_roi_align(x, boxes, size, scale, sr, aligned, mode):
    rois = as_rois(boxes, x)
    out, arg = tk.roi_align_forward(x, rois, scale, *size, sr, aligned, mode)
    grad = torch.randn(out.shape, generator=torch.Generator().manual_seed(1)).to(DEVICE, x.dtype)
    want, want_grad = _grad_of(roi_align, x, boxes, grad, size, scale, sr, aligned, mode=mode)
    assert out.is_contiguous() and out.shape == want.shape
    _close(out, want, x.dtype)
    if mode == "avg":
        assert arg.dtype == torch.int32 and arg.shape == (0,)
    else:
        assert arg.shape == out.shape and arg.dtype == torch.int32
    n, c, h, w = x.shape
    got_grad = tk.roi_align_backward(grad, rois, arg, scale, *size, sr, aligned, mode, n, c, h, w)
    assert got_grad.is_contiguous()
    _close(got_grad, want_grad, x.dtype)
    return out, arg


@needs_runner
@pytest.mark.parametrize("mode", ["avg", "max"])
@pytest.mark.parametrize(("name", "shape", "rows", "size", "scale"), CASES, ids=CASE_IDS)
def test_roi_align_matches_ops_and_gradients(name, shape, rows, size, scale, mode):
    x = _map(shape)
    for sr, aligned in ((2, False), (-1, True)) if name != "blocks" else ((1, True),):
        _check_roi_align(x, _boxes(rows), size, scale, sr, aligned, mode)


@needs_runner
@pytest.mark.parametrize("mode", ["avg", "max"])
@pytest.mark.parametrize("aligned", [False, True])
def test_roi_align_matches_reference(aligned, mode):
    """Float64 against the loop reference; in max mode the argmax is the first maximal sample."""
    x = _map(MAP, F64, seed=3)
    boxes = _boxes(INSIDE + EDGES[:4])
    rois = as_rois(boxes, x)
    out, arg = tk.roi_align_forward(x, rois, 0.9, 3, 2, -1, aligned, mode)
    assert_close(out.cpu(), ref.roi_align_ref(x, boxes, (3, 2), 0.9, -1, aligned, mode), atol=1e-12, rtol=1e-12)
    if mode == "max":
        feats = ref.feature_lists(x)
        for k, box in enumerate(ref.box_rows(boxes)):
            x1, y1, bh, bw, gh, gw = ref._align_geometry(box, 3, 2, 0.9, -1, aligned)
            for c in range(x.shape[1]):
                for ph in range(3):
                    for pw in range(2):
                        points = ref._align_samples(y1, x1, bh, bw, gh, gw, ph, pw)
                        values = [ref.bilinear(feats[box[0]][c], y, xx) for y, xx in points]
                        expected = values.index(max(values)) if values else -1
                        assert int(arg[k, c, ph, pw]) == expected


@needs_runner
@pytest.mark.parametrize("dtype", [torch.float64, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("mode", ["avg", "max"])
def test_roi_align_dtypes(dtype, mode):
    x = _map(MAP, dtype, seed=4)
    out, _ = _check_roi_align(x, _boxes(INSIDE[:2] + EDGES[:2]), (3, 4), 0.7, -1, False, mode)
    assert out.dtype == dtype


@needs_runner
@pytest.mark.parametrize("layout", ["channels_last", "strided"])
def test_roi_align_layouts_give_the_same_numbers(layout):
    x = _map(MAP, seed=5, layout=layout)
    rois = as_rois(_boxes(INSIDE[:3]), x)
    for mode in ("avg", "max"):
        got = tk.roi_align_forward(x, rois, 1.0, 2, 3, 2, True, mode)
        want = tk.roi_align_forward(x.contiguous(), rois, 1.0, 2, 3, 2, True, mode)
        assert_close(got[0], want[0], atol=0, rtol=0)
        assert_close(got[1], want[1], atol=0, rtol=0)
    _check_roi_align(x, _boxes(INSIDE[:2]), (2, 3), 1.0, 2, False, "avg")


@needs_runner
def test_roi_align_edge_rules_on_a_hand_fixture():
    """5x5 arange map, one sample per bin: samples exactly at y = -1 and y = H still count (clamped to
    rows 0 and H-1), a sample just past them gives 0; the divisor counts every sample."""
    x = torch.arange(25.0, device=DEVICE).view(1, 1, 5, 5)
    # y1 = -3, y2 = 1, one bin: the sample is at y = -1 (row 0); at x = 2.5 (between columns 2 and 3).
    # y1 = 3, y2 = 7: the sample at y = 5 = H reads row 4. y2 = 7.2: y = 5.1 > H gives 0.
    boxes = _boxes([[0, 1.5, -3.0, 3.5, 1.0], [0, 1.5, 3.0, 3.5, 7.0], [0, 1.5, 3.0, 3.5, 7.2]])
    out, _ = tk.roi_align_forward(x, as_rois(boxes, x), 1.0, 1, 1, 1, False, "avg")
    assert out.flatten().tolist() == [2.5, 22.5, 0.0]
    # Two samples per axis in a bin around the corner: y = -1.5 (out: 0) and y = -0.5 (row 0): mean / 4.
    corner = _boxes([[0, -2.0, -2.0, 0.0, 0.0]])
    out, _ = tk.roi_align_forward(x, as_rois(corner, x), 1.0, 1, 1, 2, False, "avg")
    assert out.flatten().tolist() == [0.0]  # every in-range sample reads pixel (0, 0) = 0
    out, _ = tk.roi_align_forward(x + 4.0, as_rois(corner, x), 1.0, 1, 1, 2, False, "avg")
    assert out.flatten().tolist() == [1.0]  # one of four samples in range: 4 / 4


@needs_runner
def test_roi_align_nan_rules_match_the_torch_kernels():
    """A NaN pixel makes every sample that reads it NaN: the bin's mean is NaN and in max mode the
    first NaN sample wins (like torch.max), with the same argmax as the torch kernels."""
    torch_ref = pytest.importorskip("roicli.ops.kernels.torch_ref")
    x = _map((1, 2, 6, 7), F64, seed=13)
    x[0, 0, 2, 3] = float("nan")
    x[0, 1, 1:3, :] = float("nan")
    boxes = _boxes([[0, 0.5, 0.5, 6.0, 5.0], [0, 2.0, 1.0, 5.0, 4.0]])
    rois = as_rois(boxes, x)
    for mode in ("avg", "max"):
        got, got_arg = tk.roi_align_forward(x, rois, 1.0, 2, 2, 2, False, mode)
        want, want_arg = torch_ref.roi_align_forward(x, rois, 1.0, 2, 2, 2, False, mode)
        assert got.isnan().any()
        assert_close(got, want, atol=1e-12, rtol=1e-12, equal_nan=True)
        assert torch.equal(got_arg, want_arg)


# --------------------------------------------------------------------------------------------------
# roi_pool
# --------------------------------------------------------------------------------------------------
def _check_roi_pool(x, boxes, size, scale):
    rois = as_rois(boxes, x)
    out, arg = tk.roi_pool_forward(x, rois, scale, *size)
    grad = torch.randn(out.shape, generator=torch.Generator().manual_seed(2)).to(DEVICE, x.dtype)
    want, want_grad = _grad_of(roi_pool, x, boxes, grad, size, scale)
    _close(out, want, x.dtype)
    assert arg.shape == out.shape and arg.dtype == torch.int32
    n, c, h, w = x.shape
    _close(tk.roi_pool_backward(grad, rois, arg, scale, *size, n, c, h, w), want_grad, x.dtype)
    return out, arg


def _expected_argmax(x, boxes, size, scale):
    _, where = ref._roi_pool_with_argmax(x, boxes, size, scale)
    k = len(ref.box_rows(boxes))
    arg = torch.full((k, x.shape[1], *size), -1, dtype=torch.long)
    for (kk, c, ph, pw), (y, xx) in where.items():
        arg[kk, c, ph, pw] = y * x.shape[3] + xx
    return arg


@needs_runner
@pytest.mark.parametrize(("name", "shape", "rows", "size", "scale"), CASES, ids=CASE_IDS)
def test_roi_pool_matches_ops_reference_and_gradients(name, shape, rows, size, scale):
    x = _map(shape, seed=6)
    boxes = _boxes(rows)
    out, arg = _check_roi_pool(x, boxes, size, scale)
    assert_close(out.cpu().double(), ref.roi_pool_ref(x, boxes, size, scale), atol=0, rtol=0)
    assert torch.equal(arg.cpu(), _expected_argmax(x, boxes, size, scale))


@needs_runner
@pytest.mark.parametrize("dtype", [torch.float64, torch.float16, torch.bfloat16])
def test_roi_pool_dtypes(dtype):
    x = _map(MAP, dtype, seed=7)
    out, _ = _check_roi_pool(x, _boxes(INSIDE[:2] + EDGES[:4]), (3, 4), 0.7)
    assert out.dtype == dtype


@needs_runner
def test_roi_pool_ties_nan_inf_empty_bins_and_rounding():
    """Integer values (many ties: the first in row-major order wins), NaN skipped, a bin of only
    NaN/-inf gives -FLT_MAX with no argmax, empty bins give 0, and box edges round half away from 0."""
    g = torch.Generator().manual_seed(8)
    x = torch.randint(0, 3, (2, 3, 9, 11), generator=g).double()
    x[0, 0, 2:5, 2:6] = float("nan")
    x[0, 1, 0:3, 0:3] = float("-inf")
    x[0, 1, 1, 1] = float("nan")
    x[1, 2, 4, :] = float("inf")
    x = x.to(DEVICE)
    # x1 = 2.5 rounds to 3, -2.5 to -3 (C's round); the last two boxes miss the map: empty bins.
    boxes = _boxes([[0, 2.0, 2.0, 5.0, 4.0], [0, 0.0, 0.0, 2.0, 2.0], [1, 2.5, -2.5, 8.5, 6.5],
                    [0, -2.5, 0.4, 10.5, 8.6], [1, 12.0, 10.0, 15.0, 14.0], [0, -6.0, -5.0, -2.0, -1.0]])
    for dtype in (F64, torch.float32):
        xd = x.to(dtype)
        out, arg = tk.roi_pool_forward(xd, as_rois(boxes, xd), 1.0, 2, 3)
        want = ref.roi_pool_ref(xd, boxes, (2, 3), 1.0).to(dtype)
        assert_close(out.cpu(), want, atol=0, rtol=0, equal_nan=True)
        assert torch.equal(arg.cpu(), _expected_argmax(xd, boxes, (2, 3), 1.0))
    assert (out[0, 0] == -FLT_MAX).any() and (out[1, 1] == -FLT_MAX).all()  # NaN-only and -inf/NaN bins
    assert (arg[1, 1] == -1).all() and (out[4:] == 0).all() and (arg[4:] == -1).all()
    grad = torch.randn(out.shape, generator=g).to(DEVICE, F64)
    got = tk.roi_pool_backward(grad, as_rois(boxes, x), arg, 1.0, 2, 3, *x.shape)
    assert_close(got.cpu(), ref.roi_pool_grad_ref(x, boxes, (2, 3), 1.0, grad), atol=1e-12, rtol=1e-12)


# --------------------------------------------------------------------------------------------------
# precise_roi_pool
# --------------------------------------------------------------------------------------------------
def _check_precise(x, boxes, size, scale, aligned):
    rois = as_rois(boxes, x)
    out = tk.precise_roi_pool_forward(x, rois, scale, *size, aligned)
    grad = torch.randn(out.shape, generator=torch.Generator().manual_seed(3)).to(DEVICE, x.dtype)
    want, want_grad = _grad_of(precise_roi_pool, x, boxes, grad, size, scale, aligned)
    _close(out, want, x.dtype)
    n, c, h, w = x.shape
    _close(tk.precise_roi_pool_backward(grad, rois, scale, *size, aligned, n, c, h, w), want_grad, x.dtype)
    return out


@needs_runner
@pytest.mark.parametrize("aligned", [False, True])
@pytest.mark.parametrize(("name", "shape", "rows", "size", "scale"), CASES, ids=CASE_IDS)
def test_precise_roi_pool_matches_ops_and_gradients(name, shape, rows, size, scale, aligned):
    _check_precise(_map(shape, seed=9), _boxes(rows), size, scale, aligned)


@needs_runner
@pytest.mark.parametrize("aligned", [False, True])
def test_precise_roi_pool_matches_reference(aligned):
    x = _map(MAP, F64, seed=10)
    boxes = _boxes(INSIDE + EDGES)
    out = tk.precise_roi_pool_forward(x, as_rois(boxes, x), 0.8, 3, 2, aligned)
    assert_close(out.cpu(), ref.precise_roi_pool_ref(x, boxes, (3, 2), 0.8, aligned), atol=1e-12, rtol=1e-10)


@needs_runner
@pytest.mark.parametrize("dtype", [torch.float64, torch.float16, torch.bfloat16])
def test_precise_roi_pool_dtypes(dtype):
    x = _map(MAP, dtype, seed=11, layout="channels_last")
    out = _check_precise(x, _boxes(INSIDE[:2] + EDGES[:3]), (3, 4), 0.7, True)
    assert out.dtype == dtype


@needs_runner
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_gradients_summed_a_group_of_channels_at_a_time(dtype, monkeypatch):
    """Half-type gradients are summed in float32 in a buffer of a few channels at a time (not a float32 copy of
    the whole map): 2 channels per group (and a last group of 1) give the bits of one group of all 5."""
    x = _map(MAP, dtype, seed=13)
    rois = as_rois(_boxes(INSIDE + EDGES[:3]), x)
    n, c, h, w = x.shape

    def grads():
        out, arg = tk.roi_align_forward(x, rois, 0.7, 3, 4, -1, True, "max")
        g = torch.randn(out.shape, generator=torch.Generator().manual_seed(4)).to(DEVICE, dtype)
        pooled, pool_arg = tk.roi_pool_forward(x, rois, 0.7, 3, 4)
        return [
            tk.roi_align_backward(g, rois, arg, 0.7, 3, 4, -1, True, "max", n, c, h, w),
            tk.roi_align_backward(g, rois, arg[:0], 0.7, 3, 4, 2, False, "avg", n, c, h, w),
            tk.roi_pool_backward(g, rois, pool_arg, 0.7, 3, 4, n, c, h, w),
            tk.precise_roi_pool_backward(g, rois, 0.7, 3, 4, True, n, c, h, w),
        ]

    whole = grads()
    monkeypatch.setattr(tk, "_HALF_GRAD_BYTES", 2 * n * h * w * 4)
    for got, want in zip(grads(), whole, strict=True):
        assert got.dtype == dtype and got.is_contiguous()
        assert torch.equal(got, want)
    assert any(t.abs().sum() > 0 for t in whole)


# --------------------------------------------------------------------------------------------------
# shapes
# --------------------------------------------------------------------------------------------------
@needs_runner
def test_no_rois_and_one_pixel_maps():
    x = _map((1, 3, 1, 1), seed=12)
    none = torch.zeros((0, 5), device=DEVICE)
    out, arg = tk.roi_align_forward(x, none, 1.0, 2, 2, 2, False, "max")
    assert out.shape == (0, 3, 2, 2) and arg.shape == (0, 3, 2, 2)
    assert tk.roi_pool_backward(out, none, arg, 1.0, 2, 2, 1, 3, 1, 1).abs().sum() == 0
    # A 1x1 map and a 1x1 output (the sizes a launch would otherwise specialise as constants).
    boxes = _boxes([[0, -0.5, -0.5, 0.7, 0.9]])
    _check_roi_align(x, boxes, (1, 1), 1.0, 1, False, "avg")
    _check_roi_pool(x, boxes, (1, 1), 1.0)
    _check_precise(x, boxes, (1, 1), 1.0, False)


@needs_runner
def test_every_output_element_is_written(monkeypatch):
    """Outputs are allocated uninitialised: with allocations poisoned (NaN, argmax 7777) the results
    are unchanged, including empty bins, empty sample grids and partial tiles."""
    x = _map(MAP, seed=14)
    rois = as_rois(_boxes(EDGES), x)  # bins outside the map, a point, an inverted box (grid 0)
    calls = [
        lambda: tk.roi_align_forward(x, rois, 1.0, 3, 4, -1, True, "avg"),
        lambda: tk.roi_align_forward(x, rois, 1.0, 3, 4, -1, True, "max"),
        lambda: tk.roi_pool_forward(x, rois, 1.0, 3, 4),
        lambda: (tk.precise_roi_pool_forward(x, rois, 1.0, 3, 4, True),),
    ]
    clean = [call() for call in calls]
    empty, new_empty = torch.empty, torch.Tensor.new_empty

    def poison(t):
        return t.fill_(float("nan") if t.is_floating_point() else 7777)

    monkeypatch.setattr(torch, "empty", lambda *a, **kw: poison(empty(*a, **kw)))
    monkeypatch.setattr(torch.Tensor, "new_empty", lambda self, *a, **kw: poison(new_empty(self, *a, **kw)))
    for call, want in zip(calls, clean):
        for got, expected in zip(call(), want):
            assert torch.equal(got, expected)


# --------------------------------------------------------------------------------------------------
# compiled for CUDA (no GPU needed) and the interpreter run
# --------------------------------------------------------------------------------------------------
_TRITON_TYPES = {torch.float32: "fp32", torch.float64: "fp64", torch.float16: "fp16", torch.bfloat16: "bf16",
                 torch.long: "i64", torch.int32: "i32"}


class _Recorder:
    """Stands in for a kernel: `kernel[grid](*args, **kwargs)` records the launch instead of running it."""

    def __init__(self, kernel):
        self.kernel, self.launches = kernel, []

    def __getitem__(self, grid):
        return lambda *args, **kwargs: self.launches.append((args, kwargs))


def _compile(kernel, args, kwargs, target):
    """Compile one recorded launch as Triton would specialise it on a GPU (Triton >= 3.4 internals)."""
    try:
        from triton._C.libtriton import native_specialize_impl
        from triton.backends.compiler import BaseBackend
        from triton.compiler import ASTSource, compile
    except ImportError as exc:
        pytest.skip(f"this Triton lacks the compile internals the check uses ({exc})")

    signature, constexprs = {}, {}
    options = {"enable_fp_fusion": kwargs.pop("enable_fp_fusion", True)}
    for param, value in zip(kernel.params, list(args) + [kwargs[p.name] for p in kernel.params[len(args):]]):
        if param.is_constexpr:
            signature[param.name], constexprs[param.name] = "constexpr", value
        elif isinstance(value, torch.Tensor):
            signature[param.name] = "*" + _TRITON_TYPES[value.dtype]
        else:
            kind, _ = native_specialize_impl(BaseBackend, value, False, not param.do_not_specialize, True)
            signature[param.name] = kind
            if kind == "constexpr":
                constexprs[param.name] = value
    return compile(ASTSource(kernel, signature=signature, constexprs=constexprs), target=target, options=options)


@pytest.mark.skipif(INTERPRET, reason="compiles the real kernels (the interpreter replaces them)")
def test_kernels_compile_for_cuda(monkeypatch):
    """Every kernel, launched as the host code launches it (here from CPU tensors), compiles to a
    cubin for sm_90; the PTX has no fused multiply-add (geometry as torch computes it, FMA off) and
    no approximate division (`div.full.f32`)."""
    from triton.backends.compiler import GPUTarget

    names = ["_roi_align_fwd", "_roi_align_bwd", "_roi_pool_fwd", "_roi_pool_bwd", "_precise_fwd", "_precise_bwd"]
    recorders = {name: _Recorder(getattr(tk, name)) for name in names}
    for name, rec in recorders.items():
        monkeypatch.setattr(tk, name, rec)
    boxes = torch.tensor([[0, 1.0, 1.0, 6.0, 5.0]], dtype=F64)
    for dtype, layout, sr, aligned, mode in [(torch.float32, "contiguous", -1, True, "avg"),
                                             (torch.bfloat16, "channels_last", 2, False, "max"),
                                             (torch.float64, "strided", 1, False, "max"),
                                             (torch.float16, "contiguous", -1, False, "avg")]:
        g = torch.Generator().manual_seed(0)
        n, c, h, w = 1, 3, 7, 8
        if layout == "strided":
            x = torch.randn((n, c, h, 2 * w), generator=g).to(dtype)[..., ::2]
        else:
            x = torch.randn((n, c, h, w), generator=g).to(dtype)
            x = x.to(memory_format=torch.channels_last) if layout == "channels_last" else x
        rois = as_rois(boxes, x)
        grad = torch.ones((1, c, 2, 1), dtype=dtype)
        arg = torch.zeros((1, c, 2, 1), dtype=torch.int32)
        tk.roi_align_forward(x, rois, 0.5, 2, 1, sr, aligned, mode)
        tk.roi_align_backward(grad, rois, arg, 0.5, 2, 1, sr, aligned, mode, n, c, h, w)
        tk.roi_pool_forward(x, rois, 0.5, 2, 1)
        tk.roi_pool_backward(grad, rois, arg, 0.5, 2, 1, n, c, h, w)
        tk.precise_roi_pool_forward(x, rois, 0.5, 2, 1, aligned)
        tk.precise_roi_pool_backward(grad, rois, 0.5, 2, 1, aligned, n, c, h, w)
    target = GPUTarget("cuda", 90, 32)
    seen = set()
    for name, rec in recorders.items():
        for args, kwargs in rec.launches:
            kernel = _compile(rec.kernel, args, dict(kwargs), target)
            ptx = kernel.asm["ptx"]
            assert "cubin" in kernel.asm, name
            assert "fma." not in ptx, f"{name}: fused multiply-add in the PTX"
            assert "div.full" not in ptx and "div.approx" not in ptx, f"{name}: approximate division in the PTX"
            seen.add(name)
    assert seen == set(names)


@pytest.mark.skipif(RUNS_HERE, reason="the kernel tests run directly in this process")
def test_interpreter_run():
    """No GPU: run this file's kernel tests (and the shared kernel case list's triton cases, when that
    file exists) under `TRITON_INTERPRET=1` in a subprocess."""
    root = Path(__file__).resolve().parents[1]
    targets = [str(Path(__file__).resolve())]
    shared = root / "tests" / "test_kernels.py"
    if shared.exists():
        targets.append(f"{shared}")
    env = dict(os.environ, TRITON_INTERPRET="1", ROICLI_TRITON_SUBPROCESS="1")
    cmd = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-x", *targets]
    if shared.exists():
        cmd += ["-k", "triton"]
    result = subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True, timeout=900)
    tail = (result.stdout + result.stderr)[-6000:]
    assert result.returncode == 0, f"interpreter run failed:\n{tail}"
    passed = re.search(r"(\d+) passed", result.stdout)
    assert passed and int(passed.group(1)) >= 40, tail  # the kernel tests ran, not skipped
