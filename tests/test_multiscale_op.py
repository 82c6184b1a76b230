"""`torch.ops.roicli.multiscale_roi_align`: the pyramid op as one operator, wherever a model goes.

The level split (data-dependent sizes) is inside the operator's kernel, so torch.compile(fullgraph),
torch.export, TorchScript, torch.jit.trace and both ONNX exporters see one node. Each workflow is
checked against eager values and gradients on RoIs and maps other than the ones it was built with;
eager values and gradients are checked bit for bit against the per-level composition the front door
used before the operator existed (`pool_levels` over `roi_align`), and against torchvision's
`MultiScaleRoIAlign` when torchvision is importable.
"""

from __future__ import annotations

import contextlib
import io
import warnings
from collections import OrderedDict

import pytest
import reference as ref
import torch
from torch.testing import assert_close

import roicli.ops as ops
from roicli.errors import ValidationError
from roicli.ops import kernels
from roicli.ops._validate import as_rois

pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.*deprecated")

SCALES = [1 / 4, 1 / 8, 1 / 16]  # levels 2..4
IMAGE = (64, 80)  # image pixels (H, W): level maps 16x20, 8x10, 4x5
CANONICAL = (16.0, 3)  # a 16-pixel box maps to level 3 (index 1): small boxes use every level


def _pyramid(n: int = 2, c: int = 3, image=IMAGE, seed: int = 0, dtype=torch.float32) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(n, c, int(image[0] * s), int(image[1] * s), generator=gen).to(dtype) for s in SCALES]


def _boxes(k: int, seed: int, n: int = 2, image=IMAGE) -> torch.Tensor:
    """Tensor[K, 5] (batch, x1, y1, x2, y2): sides log-uniform in 4 .. 7/8 of the image (every level used)."""
    gen = torch.Generator().manual_seed(seed)
    h, w = image
    wh = torch.exp(torch.rand(k, 2, generator=gen) * torch.log(torch.tensor(min(h, w) * 0.875 / 4))) * 4
    xy = torch.rand(k, 2, generator=gen) * (torch.tensor([w, h]) - wh)
    return torch.cat([torch.randint(0, n, (k, 1), generator=gen).float(), xy, xy + wh], 1)


def _call(features, boxes, output_size=(2, 3), sampling_ratio=2, aligned=False):
    return ops.multiscale_roi_align(features, boxes, output_size, SCALES, sampling_ratio, aligned, *CANONICAL)


def _module(output_size=(2, 3), sampling_ratio=2, aligned=False):
    return ops.MultiScaleRoIAlign(output_size, SCALES, sampling_ratio, aligned, *CANONICAL)


def _per_level_eager(features, boxes, output_size=(2, 3), sampling_ratio=2, aligned=False):
    """The front door before the operator, as it was: levels, then the roi_align front door per
    level, each level's result put in input order (out of place)."""
    rois = as_rois(boxes, features[0])
    levels = ops.fpn_levels(rois, SCALES, *CANONICAL)
    out = None
    for lvl, (feat, scale) in enumerate(zip(features, SCALES, strict=True)):
        idx = torch.nonzero(levels == lvl).squeeze(1)
        if idx.numel():
            pooled = ops.roi_align(feat, rois[idx], output_size, scale, sampling_ratio, aligned)
            out = pooled.new_zeros((len(rois), *pooled.shape[1:])) if out is None else out
            out = out.index_put((idx,), pooled)
    return out


def _value_and_grads(fn, features, boxes):
    features = [f.detach().clone().requires_grad_(True) for f in features]
    out = fn(features, boxes)
    weight = torch.linspace(-1, 1, out.numel(), dtype=out.dtype).view(out.shape)
    out.backward(weight)
    # a level without RoIs: the composition leaves its grad unset, the operator gives zeros (as torchvision)
    grads = [f.grad if f.grad is not None else torch.zeros_like(f) for f in features]
    return out.detach(), grads


def _assert_same(got, want, exact: bool = False):
    tol = {"atol": 0, "rtol": 0} if exact else {}
    assert_close(got[0], want[0], **tol)
    for g, w in zip(got[1], want[1], strict=True):
        assert_close(g, w, **tol)


# --------------------------------------------------------------------------- eager numbers


@pytest.mark.parametrize("kernel", ["default", "torch"])
@pytest.mark.parametrize(
    ("dtype", "boxes_as", "sampling_ratio", "aligned", "layout"),
    [
        (torch.float32, "tensor", 2, False, "contiguous"),
        (torch.float64, "list", -1, True, "contiguous"),
        (torch.float16, "tensor", 0, True, "contiguous"),
        (torch.bfloat16, "list", 2, False, "contiguous"),
        (torch.float32, "list", -1, False, "channels_last"),
    ],
    ids=["f32", "f64-list-adaptive-aligned", "f16-sr0", "bf16-list", "f32-channels-last"],
)
def test_bit_for_bit_with_the_per_level_eager_path(kernel, dtype, boxes_as, sampling_ratio, aligned, layout):
    """Values and gradients: exactly what the front door gave before it called one operator."""
    features = _pyramid(dtype=dtype)
    if layout == "channels_last":
        features = [f.contiguous(memory_format=torch.channels_last) for f in features]
    boxes = _boxes(23, 1).to(dtype if dtype == torch.float64 else torch.float32)
    assert set(ops.fpn_levels(boxes, SCALES, *CANONICAL).tolist()) == {0, 1, 2}
    if boxes_as == "list":
        boxes = [boxes[boxes[:, 0] == i, 1:] for i in range(2)]
    kw = {"sampling_ratio": sampling_ratio, "aligned": aligned}
    with kernels.use(kernel) if kernel != "default" else contextlib.nullcontext():
        got = _value_and_grads(lambda f, b: _call(f, b, **kw), features, boxes)
        want = _value_and_grads(lambda f, b: _per_level_eager(f, b, **kw), features, boxes)
    assert got[0].dtype == dtype and got[0].shape == (23, 3, 2, 3)
    _assert_same(got, want, exact=True)


def test_matches_the_loop_reference_and_empty_levels_get_zero_gradients():
    features = _pyramid(dtype=torch.float64)
    boxes = _boxes(10, 9).double()
    boxes = boxes[ops.fpn_levels(boxes, SCALES, *CANONICAL) != 1]  # level 1 gets no RoI
    got, grads = _value_and_grads(_call, features, boxes)
    assert_close(got, ref.multiscale_roi_align_ref(features, boxes, (2, 3), SCALES, 2, False, *CANONICAL))
    assert torch.equal(grads[1], torch.zeros_like(features[1]))
    assert grads[0].abs().sum() > 0 and grads[2].abs().sum() > 0


def test_no_rois_and_inverted_boxes():
    features = _pyramid()
    out = _call(features, torch.zeros(0, 5))
    assert out.shape == (0, 3, 2, 3) and out.dtype == torch.float32
    # x2 < x1: a negative area has no level (NaN), so the RoI is pooled from none: zeros, as torchvision
    inverted = torch.tensor([[0, 30.0, 4, 10, 20], [1, 2.0, 3, 40, 50]])
    out = _call(features, inverted)
    assert torch.equal(out[0], torch.zeros(3, 2, 3))
    assert torch.equal(out[1], _per_level_eager(features, inverted[1:])[0])
    assert torch.equal(_call(features, inverted[:1]), torch.zeros(1, 3, 2, 3))  # only RoIs of no level


@pytest.mark.parametrize("op_name", ["roi_align", "roi_pool"])
def test_pool_levels_puts_each_level_in_input_order(op_name):
    """`pool_levels` (eager, any op): with roi_align it is the operator, values and gradients;
    with roi_pool each row is that RoI pooled alone on its level."""
    features, rois = _pyramid(dtype=torch.float64), _boxes(15, 4).double()
    levels = ops.fpn_levels(rois, SCALES, *CANONICAL)
    if op_name == "roi_align":
        got = _value_and_grads(
            lambda f, b: ops.pool_levels(lambda m, r, s: ops.roi_align(m, r, (2, 3), s, 2), f, b, levels, SCALES),
            features, rois,
        )
        _assert_same(got, _value_and_grads(_call, features, rois), exact=True)
        return
    got = ops.pool_levels(lambda m, r, s: ops.roi_pool(m, r, 2, s), features, rois, levels, SCALES)
    for k in range(len(rois)):
        lvl = int(levels[k])
        assert_close(got[k], ops.roi_pool(features[lvl], rois[k:k + 1], 2, SCALES[lvl])[0], atol=0, rtol=0)
    none = ops.pool_levels(lambda m, r, s: ops.roi_pool(m, r, 2, s), features, rois, levels + 7, SCALES)
    assert torch.equal(none, torch.zeros(15, 3, 2, 2, dtype=torch.float64))  # no RoI of any level: zeros


def test_values_are_checked_with_the_row_of_the_whole_set():
    features = _pyramid()
    bad = torch.cat([_boxes(3, 0), torch.tensor([[0, 1.0, float("nan"), 5, 5]]), _boxes(2, 1)])
    with pytest.raises(ValidationError, match=r"boxes row 3: expected finite coordinates, got NaN"):
        _call(features, bad)
    bad = torch.cat([_boxes(4, 0), torch.tensor([[2.0, 1, 1, 5, 5]])])
    with pytest.raises(ValidationError, match=r"boxes row 4: expected an integer batch index in \[0, 2\), got 2"):
        _call(features, bad)
    with pytest.raises(ValidationError, match=r"sampling_ratio: expected an int, got 2.0"):
        ops.multiscale_roi_align(features, _boxes(2, 0), 2, SCALES, 2.0)


def test_double_backward_is_refused():
    features = [f.requires_grad_(True) for f in _pyramid(dtype=torch.float64)]
    out = _call(features, _boxes(6, 3).double())
    grads = torch.autograd.grad(out, features, torch.ones_like(out, requires_grad=True), create_graph=True)
    with pytest.raises(Exception, match="double backward"):
        sum(g.sum() for g in grads).backward()


def test_gradcheck_and_func_grad():
    features = tuple(f.requires_grad_(True) for f in _pyramid(1, 2, (32, 48), 4, torch.float64))
    boxes = torch.tensor(
        [[0, 0.7, 1.3, 2.9, 3.1], [0, 0.4, 0.6, 30.3, 27.7], [0, 3.3, 2.7, 14.6, 13.9]], dtype=torch.float64
    )
    assert ops.fpn_levels(boxes, SCALES, 8.0, 3).tolist() == [0, 2, 1]

    def fn(*fs):
        return ops.multiscale_roi_align(list(fs), boxes, 2, SCALES, 2, True, 8.0, 3)

    assert torch.autograd.gradcheck(fn, features)
    weight = torch.linspace(-1, 1, 3 * 2 * 2 * 2, dtype=torch.float64).view(3, 2, 2, 2)
    grads = torch.func.grad(lambda fs: (fn(*fs) * weight).sum())(tuple(f.detach() for f in features))
    want = torch.autograd.grad((fn(*features) * weight).sum(), features)
    for g, w in zip(grads, want, strict=True):
        assert_close(g, w)


# --------------------------------------------------------------------------- operator checks


def _opcheck_samples():
    f64 = [f.requires_grad_(True) for f in _pyramid(dtype=torch.float64)]
    half = [f.requires_grad_(True) for f in _pyramid(dtype=torch.float16)]
    cl = [f.contiguous(memory_format=torch.channels_last).requires_grad_(True) for f in _pyramid()]
    r, r32 = _boxes(7, 5).double(), _boxes(6, 6)
    one_level = r[ops.fpn_levels(r, SCALES, *CANONICAL) == 2]
    op = torch.ops.roicli.multiscale_roi_align.default
    bwd = torch.ops.roicli.multiscale_roi_align_backward.default
    params = (SCALES, 2, 3, 2, False, *CANONICAL)
    return [
        ("f64", op, (f64, r, *params)),
        ("adaptive-aligned", op, (f64, r, SCALES, 3, 2, -1, True, *CANONICAL)),
        ("K0", op, (f64, r[:0], *params)),
        ("one-level", op, (f64, one_level, *params)),
        ("half", op, (half, r32, SCALES, 2, 2, 0, True, *CANONICAL)),
        ("channels-last", op, (cl, r32, *params)),
        ("backward", bwd, (torch.randn(7, 3, 2, 3, dtype=torch.float64), r, *params, 2, 3, [16, 8, 4], [20, 10, 5])),
        ("backward-K0", bwd, (torch.randn(0, 3, 2, 3, dtype=torch.float64), r[:0], *params, 2, 3, [16, 8, 4],
                              [20, 10, 5])),
    ]


@pytest.mark.parametrize(("name", "op", "args"), _opcheck_samples(), ids=[s[0] for s in _opcheck_samples()])
def test_opcheck(name, op, args):
    """Schema, fake kernel, autograd registration and AOT dispatch of both operators."""
    result = torch.library.opcheck(op, args)
    assert set(result.values()) == {"SUCCESS"}, result


# --------------------------------------------------------------------------- torch.compile, torch.export


@pytest.mark.parametrize("dynamic", [False, True], ids=["static", "dynamic"])
@pytest.mark.parametrize("what", ["function", "module"])
def test_compile_fullgraph(what, dynamic):
    """One graph (fullgraph: a graph break raises), forward and backward equal to eager's; with
    dynamic=True no recompilation as K changes."""
    fn = _call if what == "function" else _module((3, 2), -1, True)
    torch._dynamo.reset()
    compiled = torch.compile(fn, fullgraph=True, dynamic=dynamic)
    features = _pyramid()
    with torch._dynamo.config.patch(error_on_recompile=dynamic):
        for k in (6, 11, 8) if dynamic else (6,):  # not K=5 first: duck sizing would tie K to the 5 columns
            boxes = _boxes(k, k)
            _assert_same(_value_and_grads(compiled, features, boxes), _value_and_grads(fn, features, boxes))
    torch._dynamo.reset()


def test_compiled_op_checks_values_when_it_runs():
    torch._dynamo.reset()
    compiled = torch.compile(_call, fullgraph=True)
    compiled(_pyramid(), _boxes(3, 0))
    with pytest.raises(ValidationError, match=r"boxes row 2: expected finite coordinates"):
        compiled(_pyramid(), torch.cat([_boxes(2, 0), torch.tensor([[0, 1.0, float("inf"), 5, 5]])]))
    torch._dynamo.reset()


def test_export_with_a_new_k_and_maps():
    module = _module((3, 2), -1, True)
    dim = torch.export.Dim
    maps = [{0: dim("N"), 2: dim(f"H{i}", min=2), 3: dim(f"W{i}", min=2)} for i in range(len(SCALES))]
    program = torch.export.export(module, (_pyramid(), _boxes(6, 0)), dynamic_shapes=(maps, {0: dim("K")}))
    targets = [str(n.target) for n in program.graph.nodes if n.op == "call_function"]
    assert "roicli.multiscale_roi_align.default" in targets, targets
    assert not any("nonzero" in t for t in targets), targets
    features, boxes = _pyramid(3, 3, (96, 72), 7), _boxes(13, 8, n=3, image=(96, 72))
    assert_close(program.module()(features, boxes), module(features, boxes), atol=0, rtol=0)


# --------------------------------------------------------------------------- TorchScript, trace


def test_script_function_and_module():
    scripted_fn = torch.jit.script(ops.multiscale_roi_align)
    module = _module((2, 3), -1, True)
    scripted = torch.jit.script(module)
    assert "roicli::multiscale_roi_align" in str(scripted_fn.graph)
    features, boxes = _pyramid(dtype=torch.float64), _boxes(10, 9).double()
    per_image = [boxes[boxes[:, 0] == i, 1:] for i in range(2)]
    order = torch.argsort(boxes[:, 0], stable=True)
    eager = module(features, boxes)
    assert_close(scripted(features, boxes), eager, atol=0, rtol=0)
    assert_close(scripted(features, per_image), eager[order], atol=0, rtol=0)
    assert_close(scripted_fn(features, boxes, [2, 3], SCALES, -1, True, *CANONICAL), eager, atol=0, rtol=0)
    buffer = io.BytesIO()
    torch.jit.save(scripted, buffer)
    buffer.seek(0)
    assert_close(torch.jit.load(buffer)(features, boxes), eager, atol=0, rtol=0)
    small = tuple(f[:1, :2].clone().requires_grad_(True) for f in features)
    b = boxes[boxes[:, 0] == 0][:4]
    assert torch.autograd.gradcheck(lambda *fs: scripted(list(fs), b), small)


def test_trace_records_the_op_not_the_split():
    """How many RoIs each level gets depends on the boxes: a trace must record the operator."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", torch.jit.TracerWarning)
        traced = torch.jit.trace(_call, (_pyramid(), _boxes(3, 0)))
    for seed in (1, 2):
        features, boxes = _pyramid(2, 3, (96, 112), seed), _boxes(17, seed, image=(96, 112))
        assert_close(traced(features, boxes), _call(features, boxes), atol=0, rtol=0)


# --------------------------------------------------------------------------- ONNX


def _onnx_bytes(module, dynamo: bool) -> bytes:
    features, boxes = _pyramid(), _boxes(5, 0)
    names = [f"p{i}" for i in range(len(SCALES))]
    io_names = {"input_names": [*names, "rois"], "output_names": ["out"], "opset_version": 17}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if dynamo:
            pytest.importorskip("onnxscript")
            dim = torch.export.Dim
            maps = [{0: dim("N"), 2: dim(f"H{i}"), 3: dim(f"W{i}")} for i in range(len(SCALES))]
            program = torch.onnx.export(
                module, (features, boxes), dynamo=True, custom_translation_table=ops.onnx_translation_table(),
                dynamic_shapes=(maps, {0: dim("K")}), verbose=False, **io_names,
            )
            return program.model_proto.SerializeToString()
        f = io.BytesIO()
        axes = {name: [0, 2, 3] for name in names} | {"rois": [0], "out": [0]}
        torch.onnx.export(module, (features, boxes), f, dynamo=False, dynamic_axes=axes, **io_names)
        return f.getvalue()


@pytest.mark.parametrize("dynamo", [False, True], ids=["legacy", "dynamo"])
@pytest.mark.parametrize(("sampling_ratio", "aligned"), [(2, False), (-1, True)], ids=["sr2", "adaptive-aligned"])
def test_onnx_in_onnxruntime(sampling_ratio, aligned, dynamo):
    """Every level pooled for every RoI (RoiAlign), each RoI's level picked with Where: eager's
    numbers in onnxruntime for new maps and a new number of RoIs."""
    ort = pytest.importorskip("onnxruntime")
    module = _module((2, 3), sampling_ratio, aligned)
    session = ort.InferenceSession(_onnx_bytes(module, dynamo), providers=["CPUExecutionProvider"])
    features, boxes = _pyramid(3, 3, (96, 112), 3), _boxes(19, 5, n=3, image=(96, 112))
    assert set(ops.fpn_levels(boxes, SCALES, *CANONICAL).tolist()) == {0, 1, 2}
    feeds = {f"p{i}": f.numpy() for i, f in enumerate(features)} | {"rois": boxes.numpy()}
    (got,) = session.run(None, feeds)
    assert_close(torch.from_numpy(got), module(features, boxes), atol=1e-5, rtol=1e-5)


# --------------------------------------------------------------------------- torchvision


def _torchvision_pooler(features, boxes, output_size, sampling_ratio):
    tv_ops = pytest.importorskip("torchvision.ops")
    names = [f"p{i}" for i in range(len(features))]
    pooler = tv_ops.MultiScaleRoIAlign(names, output_size, sampling_ratio, canonical_scale=CANONICAL[0],
                                       canonical_level=CANONICAL[1])
    per_image = [boxes[boxes[:, 0] == i, 1:] for i in range(features[0].shape[0])]
    return pooler(OrderedDict(zip(names, features, strict=True)), per_image, [IMAGE] * features[0].shape[0])


def test_compiled_module_matches_torchvision():
    """torch.compile(fullgraph=True, dynamic=True) of MultiScaleRoIAlign: torchvision's eager values
    and gradients (aligned=False, torchvision's only mode), with RoIs sorted by image as torchvision
    returns them."""
    pytest.importorskip("torchvision")
    module = _module((3, 3), 2, False)
    torch._dynamo.reset()
    compiled = torch.compile(module, fullgraph=True, dynamic=True)
    features = _pyramid(dtype=torch.float64)
    with torch._dynamo.config.patch(error_on_recompile=True):
        for k in (7, 12):
            boxes = _boxes(k, 20 + k).double()
            boxes = boxes[torch.argsort(boxes[:, 0], stable=True)]
            got = _value_and_grads(compiled, features, boxes)
            want = _value_and_grads(lambda f, b: _torchvision_pooler(f, b, (3, 3), 2), features, boxes)
            _assert_same(got, want)
    torch._dynamo.reset()


def test_boxes_of_no_level_like_torchvision():
    """x2 < x1 (negative area, no level): torchvision's pooler gives zeros there too."""
    pytest.importorskip("torchvision")
    features = _pyramid(dtype=torch.float64)
    boxes = torch.tensor([[0, 30.0, 4, 10, 20], [0, 2.0, 3, 40, 50], [1, 5.0, 5, 9, 2]], dtype=torch.float64)
    _assert_same(
        _value_and_grads(lambda f, b: _call(f, b, (3, 3)), features, boxes),
        _value_and_grads(lambda f, b: _torchvision_pooler(f, b, (3, 3), 2), features, boxes),
    )
    only = boxes[[0, 2]]
    assert_close(_call(features, only, (3, 3)), _torchvision_pooler(features, only, (3, 3), 2), atol=0, rtol=0)
