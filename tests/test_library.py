"""roicli's ops as PyTorch operators: wherever a deployed model goes, the numbers stay eager's.

Each workflow (torch.library.opcheck, TorchScript, torch.compile with and without dynamic shapes,
torch.export, both ONNX exporters run in onnxruntime, torch.jit.trace, torch.func.grad) is checked
against the eager front doors' values and gradients, on RoIs and feature maps other than the ones
it was built with.
"""

from __future__ import annotations

import io
import warnings

import pytest
import torch
from torch.testing import assert_close

import roicli.ops as ops
from roicli.errors import ExportUnsupported, ValidationError

# torch.jit.script/trace/save are deprecated in favour of torch.export; deployed models still use them.
pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.*deprecated")


def _boxes(k: int, seed: int, n: int = 2, extent: float = 10.0) -> torch.Tensor:
    """Tensor[K, 5] of boxes (batch index, x1, y1, x2, y2) with sides 0.3 .. extent / 2."""
    gen = torch.Generator().manual_seed(seed)
    xy = torch.rand(k, 2, generator=gen) * extent
    wh = torch.rand(k, 2, generator=gen) * extent / 2 + 0.3
    return torch.cat([torch.randint(0, n, (k, 1), generator=gen).float(), xy, xy + wh], 1)


def _map(shape=(2, 3, 10, 12), seed: int = 1, dtype=torch.float32) -> torch.Tensor:
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


# Front-door calls with torchvision's positional signatures: (name, fn(x, boxes)).
CALLS = {
    "roi_align": lambda x, b: ops.roi_align(x, b, (3, 2), 1.0, -1, True),
    "roi_align_max": lambda x, b: ops.roi_align(x, b, 3, 0.5, 2, False, mode="max"),
    "roi_pool": lambda x, b: ops.roi_pool(x, b, (2, 3), 1.0),
    "precise_roi_pool": lambda x, b: ops.precise_roi_pool(x, b, 3, 1.0),
}


def _value_and_grad(fn, x, b):
    x = x.detach().clone().requires_grad_(True)
    out = fn(x, b)
    out.backward(torch.linspace(-1, 1, out.numel()).view(out.shape))
    return out.detach(), x.grad


# --------------------------------------------------------------------------- opcheck


def _opcheck_samples():
    x = _map(dtype=torch.float64).requires_grad_(True)
    r = _boxes(4, 0).double()
    half = _map().half().requires_grad_(True)
    bf16 = _map().bfloat16().requires_grad_(True)
    cl = _map().contiguous(memory_format=torch.channels_last).requires_grad_(True)
    r32 = _boxes(5, 1)
    align = torch.ops.roicli.roi_align.default
    pool = torch.ops.roicli.roi_pool.default
    precise = torch.ops.roicli.precise_roi_pool.default
    return [
        ("align-adaptive", align, (x, r, 1.0, 2, 3, -1, True, "avg")),
        ("align-max", align, (x, r, 0.5, 3, 2, 2, False, "max")),
        ("align-K0", align, (x, r[:0], 1.0, 2, 2, 2, False, "avg")),
        ("align-max-K0", align, (x, r[:0], 1.0, 2, 2, 2, False, "max")),
        ("align-half", align, (half, r32, 1.0, 2, 2, 0, True, "avg")),
        ("align-channels-last-max", align, (cl, r32, 1.0, 2, 2, -1, False, "max")),
        ("pool", pool, (x, r, 1.0, 2, 3)),
        ("pool-K0", pool, (x, r[:0], 1.0, 2, 3)),
        ("pool-bfloat16", pool, (bf16, r32, 0.5, 3, 2)),
        ("pool-channels-last", pool, (cl, r32, 1.0, 2, 2)),
        ("precise", precise, (x, r, 1.0, 2, 3, True)),
        ("precise-K0", precise, (x, r[:0], 1.0, 2, 3, False)),
        ("precise-half-channels-last", precise,
         (half.detach().contiguous(memory_format=torch.channels_last).requires_grad_(True), r32, 0.5, 3, 3, True)),
        ("align-backward", torch.ops.roicli.roi_align_backward.default,
         (torch.randn(4, 3, 2, 3, dtype=torch.float64), r, torch.empty(0, dtype=torch.int32),
          1.0, 2, 3, -1, True, "avg", 2, 3, 10, 12)),
        ("pool-backward", torch.ops.roicli.roi_pool_backward.default,
         (torch.randn(4, 3, 2, 3, dtype=torch.float64), r, pool(x.detach(), r, 1.0, 2, 3)[1], 1.0, 2, 3, 2, 3, 10, 12)),
        ("precise-backward", torch.ops.roicli.precise_roi_pool_backward.default,
         (torch.randn(4, 3, 2, 3, dtype=torch.float64), r, 1.0, 2, 3, True, 2, 3, 10, 12)),
    ]


@pytest.mark.parametrize(("name", "op", "args"), _opcheck_samples(), ids=[s[0] for s in _opcheck_samples()])
def test_opcheck(name, op, args):
    """Schema, fake kernel, autograd registration and AOT dispatch of every registered operator."""
    result = torch.library.opcheck(op, args)
    assert set(result.values()) == {"SUCCESS"}, result


# --------------------------------------------------------------------------- TorchScript


@pytest.mark.parametrize("name", list(CALLS))
def test_script_functions(name):
    """torch.jit.script of the functions, called positionally (mode too), with Tensor[K, 5] and
    list[Tensor[L, 4]] boxes: eager's values, and gradcheck through the scripted op."""
    fn = {"roi_align": ops.roi_align, "roi_align_max": ops.roi_align, "roi_pool": ops.roi_pool,
          "precise_roi_pool": ops.precise_roi_pool}[name]
    args = {"roi_align": ((3, 2), 1.0, -1, True, "avg"), "roi_align_max": (3, 0.5, 2, False, "max"),
            "roi_pool": ((2, 3), 1.0), "precise_roi_pool": (3, 1.0, True)}[name]
    scripted = torch.jit.script(fn)
    x, b = _map(dtype=torch.float64), _boxes(5, 2).double()
    eager = CALLS[name](x, b)
    assert_close(scripted(x, b, *args), eager)
    per_image = [b[b[:, 0] == i, 1:] for i in range(2)]
    order = torch.argsort(b[:, 0], stable=True)
    assert_close(scripted(x, per_image, *args), eager[order])
    x = x[:1, :2, :6, :7].clone().requires_grad_(True)
    small = _boxes(2, 3, n=1, extent=6).double()
    assert torch.autograd.gradcheck(lambda z: scripted(z, small, *args), (x,))


def test_script_modules():
    x, b = _map(), _boxes(6, 4)
    pyramid = [_map((2, 3, 16, 16), 5), _map((2, 3, 8, 8), 6)]
    for module, inp in [
        (ops.RoIAlign((2, 3), 0.5, 2, True), x),
        (ops.RoIAlign(2, 1.0, -1, False, mode="max"), x),
        (ops.RoIPool(3, 1.0), x),
        (ops.PreciseRoIPool(2, 1.0), x),
        (ops.MultiScaleRoIAlign(2, [1 / 4, 1 / 8], 2, False, 8, 2), pyramid),
    ]:
        scripted = torch.jit.script(module)
        boxes = b * torch.tensor([1.0, 4, 4, 4, 4]) if isinstance(inp, list) else b
        assert_close(scripted(inp, boxes), module(inp, boxes))
        buffer = io.BytesIO()
        torch.jit.save(scripted, buffer)
        buffer.seek(0)
        assert_close(torch.jit.load(buffer)(inp, boxes), module(inp, boxes))


def test_scripted_op_checks_values_when_it_runs():
    scripted = torch.jit.script(ops.roi_align)
    bad = torch.tensor([[0, float("nan"), 1.0, 2.0, 3.0]])
    with pytest.raises(Exception, match=r"boxes row 0: expected finite coordinates"):
        scripted(_map(), bad, 2)


# --------------------------------------------------------------------------- torch.compile


@pytest.mark.parametrize("dynamic", [False, True], ids=["static", "dynamic"])
@pytest.mark.parametrize("name", list(CALLS))
def test_compile_fullgraph(name, dynamic):
    """One graph (fullgraph), forward and backward equal to eager's; with dynamic=True no
    recompilation when K changes."""
    torch._dynamo.reset()
    compiled = torch.compile(CALLS[name], fullgraph=True, dynamic=dynamic)
    x = _map()
    ks = (4, 7, 5) if dynamic else (4,)
    with torch._dynamo.config.patch(error_on_recompile=dynamic):
        for k in ks:
            b = _boxes(k, k)
            got, want = _value_and_grad(compiled, x, b), _value_and_grad(CALLS[name], x, b)
            assert_close(got[0], want[0])
            assert_close(got[1], want[1])
    torch._dynamo.reset()


def test_compiled_op_checks_values_when_it_runs():
    torch._dynamo.reset()
    compiled = torch.compile(CALLS["roi_align"], fullgraph=True)
    compiled(_map(), _boxes(3, 0))
    with pytest.raises(ValidationError, match=r"boxes row 1: expected an integer batch index in \[0, 2\), got 5"):
        compiled(_map(), torch.tensor([[0, 1.0, 1, 4, 4], [5, 1.0, 1, 4, 4], [1, 2.0, 2, 3, 3]]))
    torch._dynamo.reset()


# --------------------------------------------------------------------------- torch.export


@pytest.mark.parametrize(
    "module",
    [ops.RoIAlign((3, 2), 0.5, -1, True), ops.RoIPool(2, 0.5), ops.PreciseRoIPool(2, 0.5)],
    ids=["RoIAlign", "RoIPool", "PreciseRoIPool"],
)
def test_export_with_a_new_k_and_map(module):
    k, h, w = torch.export.Dim("K"), torch.export.Dim("H", min=2), torch.export.Dim("W", min=2)
    program = torch.export.export(module, (_map(), _boxes(4, 0)), dynamic_shapes=({2: h, 3: w}, {0: k}))
    names = [str(n.target) for n in program.graph.nodes if n.op == "call_function"]
    assert any(t.startswith("roicli.") for t in names), names
    x, b = _map((2, 3, 15, 9), 7), _boxes(11, 8)
    assert_close(program.module()(x, b), module(x, b))


# --------------------------------------------------------------------------- ONNX

onnx_modules = [
    ("RoIAlign-aligned-adaptive", ops.RoIAlign(3, 0.25, -1, True)),
    ("RoIAlign-unaligned-sr2", ops.RoIAlign((2, 3), 0.25, 2, False)),
    ("RoIAlign-unaligned-sr0", ops.RoIAlign(3, 0.5, 0, False)),
    ("RoIPool", ops.RoIPool((3, 2), 0.25)),
]


def _onnx_bytes(module, dynamo: bool) -> bytes:
    x, b = _map(), _boxes(4, 0, extent=40)
    names = {"input_names": ["x", "rois"], "output_names": ["out"], "opset_version": 17}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if dynamo:
            pytest.importorskip("onnxscript")
            dims = {0: torch.export.Dim("N"), 2: torch.export.Dim("H"), 3: torch.export.Dim("W")}
            program = torch.onnx.export(
                module, (x, b), dynamo=True, custom_translation_table=ops.onnx_translation_table(),
                dynamic_shapes=(dims, {0: torch.export.Dim("K")}), verbose=False, **names,
            )
            return program.model_proto.SerializeToString()
        f = io.BytesIO()
        torch.onnx.export(module, (x, b), f, dynamo=False, dynamic_axes={"x": [0, 2, 3], "rois": [0], "out": [0]},
                          **names)
        return f.getvalue()


@pytest.mark.parametrize("dynamo", [False, True], ids=["legacy", "dynamo"])
@pytest.mark.parametrize(("name", "module"), onnx_modules, ids=[m[0] for m in onnx_modules])
def test_onnx_in_onnxruntime(name, module, dynamo):
    """The exported graph takes the feature map as an input, and onnxruntime gives eager's numbers
    for a new map (other N, H, W) and a new number of RoIs."""
    ort = pytest.importorskip("onnxruntime")
    model = _onnx_bytes(module, dynamo)
    session = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["x", "rois"]
    x, b = _map((3, 3, 17, 15), 3), _boxes(9, 5, n=3, extent=60)
    (got,) = session.run(None, {"x": x.numpy(), "rois": b.numpy()})
    assert_close(torch.from_numpy(got), module(x, b), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("dynamo", [False, True], ids=["legacy", "dynamo"])
@pytest.mark.parametrize(
    ("module", "what"),
    [
        (ops.RoIAlign(3, 0.25, -1, True, mode="max"), "roi_align mode='max'"),
        (ops.PreciseRoIPool(3, 0.25), "precise_roi_pool"),
    ],
    ids=["max", "precise"],
)
def test_onnx_export_fails_loudly_without_an_equivalent(module, what, dynamo):
    expected = f"ONNX export of {what}: expected an op with an ONNX equivalent"
    if dynamo:
        pytest.importorskip("onnxscript")
    # The dynamo exporter wraps the error in its own ConversionError; the message is roicli's.
    with pytest.raises(ExportUnsupported if not dynamo else Exception, match=expected.replace("(", r"\(")):
        _onnx_bytes(module, dynamo)


# --------------------------------------------------------------------------- trace, func


@pytest.mark.parametrize("name", list(CALLS))
def test_trace_records_the_op_not_the_grid(name):
    """Adaptive grids, tap spans and bins depend on the boxes: a trace must record the op call,
    so bigger boxes than the traced ones give exact results."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", torch.jit.TracerWarning)
        traced = torch.jit.trace(CALLS[name], (_map(), _boxes(3, 0, extent=4)))
    for seed in (1, 2):
        x, b = _map((2, 3, 21, 19), seed), _boxes(6, seed, extent=18)
        assert_close(traced(x, b), CALLS[name](x, b), atol=0, rtol=0)


@pytest.mark.parametrize("name", list(CALLS))
def test_func_grad_and_vjp(name):
    x, b = _map(dtype=torch.float64), _boxes(5, 6).double()
    fn = CALLS[name]
    weight = torch.linspace(-1, 1, fn(x, b).numel(), dtype=torch.float64).view(fn(x, b).shape)
    grad = torch.func.grad(lambda z: (fn(z, b) * weight).sum())(x)
    x1 = x.clone().requires_grad_(True)
    (fn(x1, b) * weight).sum().backward()
    assert_close(grad, x1.grad)
    _, vjp = torch.func.vjp(lambda z: fn(z, b), x)
    assert_close(vjp(weight)[0], x1.grad)


def test_eager_errors_unchanged_and_double_backward_refused():
    with pytest.raises(ValidationError, match=r"boxes row 0: expected finite coordinates, got NaN"):
        ops.roi_pool(_map(), torch.tensor([[0, float("nan"), 1.0, 2.0, 3.0]]), 2)
    x = _map(dtype=torch.float64).requires_grad_(True)
    out = ops.roi_align(x, _boxes(3, 0).double(), 2, 1.0, 2)
    v = torch.ones_like(out, requires_grad=True)
    (g,) = torch.autograd.grad(out, x, v, create_graph=True)
    with pytest.raises(Exception, match="double backward"):
        g.sum().backward()


def test_roi_pool_refuses_a_plane_its_int32_argmax_cannot_index():
    """roi_pool's argmax is int32 (torchvision's dtype): a map with H * W >= 2^31 is refused, before any read."""
    huge = torch.zeros(1, dtype=torch.float32).expand(1, 1, 1 << 16, 1 << 15)  # 2^31 pixels, one element stored
    rois = torch.tensor([[0.0, 0.0, 0.0, 4.0, 4.0]])
    with pytest.raises(ValidationError, match=r"expected H \* W < 2\^31.*got 65536 x 32768"):
        torch.ops.roicli.roi_pool.default(huge, rois, 1.0, 2, 2)


def test_a_default_kernel_that_cannot_run_falls_back_with_one_warning(monkeypatch):
    """The C++ kernels failing to build: the torch kernels serve the call, and the library says so once, as a
    KernelFallbackWarning (it never prints)."""
    from roicli.errors import KernelUnavailable
    from roicli.ops.kernels import KernelFallbackWarning, select, torch_ref

    monkeypatch.delenv(select.ENV_VAR, raising=False)
    monkeypatch.setitem(select._loaded, "cpp", KernelUnavailable("C++ kernels: build failed in /x: no"))
    monkeypatch.setattr(select, "_noticed", set())
    with pytest.warns(KernelFallbackWarning, match=r"^C\+\+ kernels: build failed in /x: no; using the torch kernels$"):
        assert select.kernel_for(torch.device("cpu")) is torch_ref
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert select.kernel_for(torch.device("cpu")) is torch_ref  # once per process
