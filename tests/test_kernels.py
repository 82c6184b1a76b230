"""Every kernel implementation against the same references and the same case list.

The kernels are called at the contract level (`roicli.ops.kernels.__init__`) and through the public
ops with the implementation forced. Adding an implementation is one entry in IMPLEMENTATIONS; one
that cannot run here (not built, no GPU) skips with the reason.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import pytest
import reference as ref
import torch
from torch.testing import assert_close

from roicli.errors import KernelUnavailable, ValidationError
from roicli.ops import kernels, precise_roi_pool, roi_align, roi_pool
from roicli.ops._validate import as_rois

IMPLEMENTATIONS = ["torch", "triton", "cpp"]  # the C++ and Triton kernels add "cpp" and "triton" here
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
F64 = torch.float64


@dataclass(frozen=True)
class Case:
    name: str
    shape: tuple[int, int, int, int]  # N, C, H, W
    boxes: tuple[tuple[float, ...], ...]  # (batch, x1, y1, x2, y2) in image pixels
    output_size: tuple[int, int]
    spatial_scale: float = 1.0
    sampling_ratio: int = 2
    aligned: bool = False
    dtype: torch.dtype = F64
    channels_last: bool = False

    def __str__(self) -> str:
        return self.name


_BOXES = ((0, 1.0, 1.5, 7.0, 6.0), (1, 0.5, 0.0, 9.0, 8.0), (0, -2.0, -1.0, 3.0, 12.0), (1, 4.2, 3.3, 4.9, 3.6))
CASES = [
    Case("basic", (2, 3, 9, 11), _BOXES, (2, 3)),
    Case("adaptive-aligned", (2, 3, 9, 11), _BOXES, (3, 2), sampling_ratio=-1, aligned=True),
    Case("adaptive-scaled", (2, 2, 10, 12), ((0, 4.0, 8.0, 40.0, 36.0), (1, 0.0, 0.0, 47.0, 39.0)), (2, 2),
         spatial_scale=0.25, sampling_ratio=0),
    Case("outside-map", (1, 2, 6, 7), ((0, -5.0, -4.0, 2.0, 1.0), (0, 5.5, 4.0, 12.0, 9.0)), (2, 2)),
    Case("empty", (2, 3, 9, 11), (), (2, 2)),
    Case("float32-channels-last", (2, 4, 9, 11), _BOXES, (2, 2), sampling_ratio=-1, dtype=torch.float32,
         channels_last=True),
    Case("bfloat16", (1, 3, 8, 8), ((0, 1.0, 1.0, 6.0, 7.0), (0, 0.0, 2.0, 7.0, 4.0)), (2, 2),
         dtype=torch.bfloat16),
    Case("float16", (1, 3, 8, 8), ((0, 1.0, 1.0, 6.0, 7.0),), (3, 3), sampling_ratio=-1, aligned=True,
         dtype=torch.float16),
]


def _tolerance(dtype: torch.dtype) -> dict:
    return {F64: {"atol": 1e-12, "rtol": 1e-12}, torch.float32: {"atol": 1e-5, "rtol": 1e-5}}.get(
        dtype, {"atol": 1e-2, "rtol": 1e-2}
    )


@pytest.fixture(params=IMPLEMENTATIONS)
def impl(request):
    """The implementation's module, forced for every op inside the test."""
    try:
        forced = kernels.use(request.param)
        module = forced.__enter__()
    except KernelUnavailable as exc:
        pytest.skip(f"{request.param}: {exc}")
    yield module
    forced.__exit__(None, None, None)


def _problem(case: Case, device: str):
    gen = torch.Generator().manual_seed(sum(map(ord, case.name)))
    x = torch.randn(case.shape, generator=gen, dtype=F64).to(case.dtype)
    if case.channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    boxes = torch.tensor(case.boxes, dtype=F64).reshape(-1, 5)
    x = x.to(device)
    return x, as_rois(boxes.to(device), x), boxes


def _module(impl, device: str):
    try:
        return kernels.kernel_for(torch.device(device))
    except KernelUnavailable as exc:
        pytest.skip(str(exc))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("case", CASES, ids=str)
@pytest.mark.parametrize("mode", ["avg", "max"])
def test_roi_align_kernel(impl, device, case, mode):
    kernel = _module(impl, device)
    x, rois, boxes = _problem(case, device)
    args = (case.spatial_scale, *case.output_size, case.sampling_ratio, case.aligned, mode)
    out, argmax = kernel.roi_align_forward(x, rois, *args)
    want = ref.roi_align_ref(x.double(), boxes, case.output_size, *args[:1], *args[3:])
    assert out.dtype == x.dtype and out.is_contiguous() and out.shape == want.shape
    assert_close(out.cpu().double(), want, **_tolerance(case.dtype))
    grad = torch.randn(out.shape, generator=torch.Generator().manual_seed(3), dtype=F64).to(x.dtype).to(device)
    grad_input = kernel.roi_align_backward(grad, rois, argmax, *args, *x.shape)
    assert grad_input.dtype == grad.dtype and grad_input.shape == x.shape
    if mode == "max":
        assert argmax.dtype == torch.int32 and argmax.shape == out.shape
        if case.dtype == F64:  # lower precisions may break near-ties differently from the float64 reference
            want_arg, want_grad = ref.roi_align_max_argmax_ref(x, boxes, case.output_size, *args[:1], *args[3:5], grad)
            assert torch.equal(argmax.cpu(), want_arg)
            assert_close(grad_input.cpu().double(), want_grad, **_tolerance(case.dtype))
        return
    assert argmax.numel() == 0 and argmax.dtype == torch.int32
    _assert_adjoint(kernel.roi_align_forward, grad_input, grad, x, rois, args, case.dtype)


def _assert_adjoint(forward, grad_input, grad, x, rois, args, dtype):
    """A linear op's backward is its transpose: <backward(g), v> == <forward(v), g> for any v."""
    v = torch.randn(x.shape, generator=torch.Generator().manual_seed(5), dtype=F64).to(x.dtype).to(x.device)
    fv = forward(v, rois, *args)
    fv = fv[0] if isinstance(fv, tuple) else fv
    lhs = (grad_input.double() * v.double()).sum()
    rhs = (fv.double() * grad.double()).sum()
    assert_close(lhs, rhs, atol=_tolerance(dtype)["atol"] * 100, rtol=_tolerance(dtype)["rtol"] * 10)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("case", CASES, ids=str)
def test_roi_pool_kernel(impl, device, case):
    kernel = _module(impl, device)
    x, rois, boxes = _problem(case, device)
    args = (case.spatial_scale, *case.output_size)
    out, argmax = kernel.roi_pool_forward(x, rois, *args)
    assert out.dtype == x.dtype and out.is_contiguous() and argmax.dtype == torch.int32
    assert_close(out.cpu().double(), ref.roi_pool_ref(x, boxes, case.output_size, case.spatial_scale))
    assert torch.equal(argmax.cpu(), ref.roi_pool_argmax_ref(x, boxes, case.output_size, case.spatial_scale))
    grad = torch.randn(out.shape, generator=torch.Generator().manual_seed(3), dtype=F64).to(x.dtype).to(device)
    grad_input = kernel.roi_pool_backward(grad, rois, argmax, *args, *x.shape)
    want = ref.roi_pool_grad_ref(x, boxes, case.output_size, case.spatial_scale, grad)
    assert grad_input.dtype == grad.dtype
    assert_close(grad_input.cpu().double(), want, **_tolerance(case.dtype))


def test_roi_pool_kernel_special_values(impl):
    """NaN never wins, a bin of NaN/-inf gives -FLT_MAX without an argmax, an empty bin 0 and -1."""
    kernel = _module(impl, "cpu")
    x = torch.tensor([[[[math.nan, -math.inf, 1.0], [-math.inf, math.nan, 2.0], [0.5, 3.0, 3.0]]]], dtype=F64)
    rois = torch.tensor([[0, 0, 0, 1, 1], [0, 0, 0, 2, 2], [0, 5, 5, 9, 9]], dtype=F64)
    out, argmax = kernel.roi_pool_forward(x, rois, 1.0, 1, 1)
    assert out.flatten().tolist() == [-ref.FLT_MAX, 3.0, 0.0]
    assert argmax.flatten().tolist() == [-1, 7, -1]  # 3.0 first at (2, 1): row-major first max


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("case", CASES, ids=str)
def test_precise_roi_pool_kernel(impl, device, case):
    kernel = _module(impl, device)
    x, rois, boxes = _problem(case, device)
    args = (case.spatial_scale, *case.output_size, case.aligned)
    out = kernel.precise_roi_pool_forward(x, rois, *args)
    want = ref.precise_roi_pool_ref(x.double(), boxes, case.output_size, case.spatial_scale, case.aligned)
    assert out.dtype == x.dtype and out.is_contiguous()
    tol = _tolerance(case.dtype)
    assert_close(out.cpu().double(), want, atol=max(tol["atol"], 1e-9), rtol=tol["rtol"])
    grad = torch.randn(out.shape, generator=torch.Generator().manual_seed(3), dtype=F64).to(x.dtype).to(device)
    grad_input = kernel.precise_roi_pool_backward(grad, rois, *args, *x.shape)
    assert grad_input.dtype == grad.dtype and grad_input.shape == x.shape
    _assert_adjoint(kernel.precise_roi_pool_forward, grad_input, grad, x, rois, args, case.dtype)


@pytest.mark.parametrize("op", ["roi_align", "roi_align_max", "roi_pool", "precise_roi_pool"])
def test_public_ops_match_the_torch_kernels(impl, op):
    """Through the operators (autograd included), the forced implementation gives the torch
    implementation's values and gradients."""
    fn = {
        "roi_align": lambda x, b: roi_align(x, b, (3, 2), 0.5, -1, True),
        "roi_align_max": lambda x, b: roi_align(x, b, (3, 2), 0.5, 2, False, mode="max"),
        "roi_pool": lambda x, b: roi_pool(x, b, (3, 2), 0.5),
        "precise_roi_pool": lambda x, b: precise_roi_pool(x, b, (3, 2), 0.5),
    }[op]
    gen = torch.Generator().manual_seed(11)
    x0 = torch.randn(2, 5, 12, 13, generator=gen)
    boxes = torch.tensor([[0, 2.0, 3.0, 20.0, 17.5], [1, 0.0, 0.0, 25.0, 23.0], [1, 9.0, 4.0, 9.5, 30.0]])

    def run():
        x = x0.clone().requires_grad_(True)
        out = fn(x, boxes)
        out.backward(torch.linspace(-1, 1, out.numel()).view(out.shape))
        return out.detach(), x.grad

    got = run()
    with kernels.use("torch"):
        want = run()
    assert_close(got[0], want[0], atol=1e-6, rtol=1e-6)
    assert_close(got[1], want[1], atol=1e-6, rtol=1e-6)


def test_selection(monkeypatch):
    """$ROICLI_KERNEL and `use()` force an implementation; an unknown name is a ValidationError."""
    assert kernels.available()["torch"][0]
    monkeypatch.setenv("ROICLI_KERNEL", "torch")
    assert kernels.kernel_for(torch.device("cpu")).__name__ == "roicli.ops.kernels.torch_ref"
    monkeypatch.setenv("ROICLI_KERNEL", "fortran")
    with pytest.raises(ValidationError, match="ROICLI_KERNEL: expected one of torch, cpp, triton, got 'fortran'"):
        kernels.kernel_for(torch.device("cpu"))
    monkeypatch.delenv("ROICLI_KERNEL")
    with pytest.raises(ValidationError, match="kernel: expected one of"):
        kernels.use("fortran").__enter__()
    with kernels.use("torch") as module:
        assert kernels.forced() == "torch" and kernels.kernel_for(torch.device("meta")) is module
    assert kernels.forced() is None


def test_kernels_command_reports_the_choice(monkeypatch):
    """Issue 11 item 2: `roicli kernels` builds ahead of time and says which implementation serves the
    ops on each device; a forced implementation shows as such."""
    import json

    from typer.testing import CliRunner

    from roicli.cli import app

    monkeypatch.delenv("ROICLI_KERNEL", raising=False)
    result = CliRunner().invoke(app, ["kernels", "--json"])
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    rows = {r["implementation"]: r for r in doc["implementations"]}
    assert set(rows) == set(kernels.IMPLEMENTATIONS) and rows["torch"]["available"] is True
    cpu = next(r for r in doc["devices"] if r["device"] == "cpu")
    want = "cpp" if rows["cpp"]["available"] else "torch"
    assert cpu["implementation"] == want and doc["forced"] is None
    monkeypatch.setenv("ROICLI_KERNEL", "torch")
    doc = json.loads(CliRunner().invoke(app, ["kernels", "--json"]).stdout)
    assert doc["forced"] == "torch" and doc["devices"][0]["implementation"] == "torch"
