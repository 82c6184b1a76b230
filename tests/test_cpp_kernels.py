"""The C++ CPU kernels (`roicli.ops.kernels.cpp`) against the loop references and their own invariants.

The shared case list (`tests/test_kernels.py`) runs them through the operators; these tests call the
kernel functions directly: values and argmax against `tests/reference.py`, gradients by the adjoint
identity <g, F(x)> = <F*(g), x> (every op is linear in x once a max has picked its element), bit
equality across layouts, thread counts and half types. Skipped only where there is no compiler; a
build that fails where a compiler exists fails the tests.
"""

from __future__ import annotations

import shutil

import pytest
import reference as ref
import torch
from torch.testing import assert_close

from roicli.errors import KernelUnavailable
from roicli.ops.kernels import cpp

FLT_MAX = torch.finfo(torch.float32).max


@pytest.fixture(scope="module", autouse=True)
def _built():
    from torch.utils.cpp_extension import is_ninja_available

    if shutil.which("c++") is None or not is_ninja_available():
        pytest.skip("no C++ compiler or ninja here: the C++ kernels cannot be built")
    cpp.load()  # a build error fails here, with the compiler's message


def _problem(seed: int, n: int = 2, c: int = 11, h: int = 9, w: int = 13, k: int = 9, dtype=torch.float64):
    """A map with C = 11 (a full and a partial block of 8 channels) and boxes of every kind."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, c, h, w, generator=g, dtype=dtype)
    xy = torch.rand(k, 4, generator=g, dtype=torch.float64) * torch.tensor([2 * w, 2 * h, 2 * w, 2 * h]) - 4
    boxes = torch.cat([torch.minimum(xy[:, :2], xy[:, 2:]), torch.maximum(xy[:, :2], xy[:, 2:])], 1)
    special = torch.tensor(
        [
            [-6.0, -5.0, 2 * w + 7.0, 2 * h + 3.0],  # past every border
            [8.0, 6.0, 8.0, 6.0],  # a point
            [10.0, 9.0, 4.0, 3.0],  # inverted
            [2 * w - 1.0, 2 * h - 1.0, 2 * w + 1.0, 2 * h + 1.0],  # on the far corner
        ],
        dtype=torch.float64,
    )
    boxes[: len(special)] = special
    batch = torch.randint(0, n, (k, 1), generator=g).double()
    return x, torch.cat([batch, boxes], 1).to(cpp._acc(dtype))


def _grad(out: torch.Tensor, seed: int) -> torch.Tensor:
    return torch.randn(out.shape, generator=torch.Generator().manual_seed(seed), dtype=out.dtype)


ALIGN = [(sr, aligned) for sr in (2, 1, -1) for aligned in (False, True)]


@pytest.mark.parametrize("mode", ["avg", "max"])
@pytest.mark.parametrize(("sampling_ratio", "aligned"), ALIGN)
def test_roi_align_matches_reference(sampling_ratio, aligned, mode):
    x, rois = _problem(1)
    out, argmax = cpp.roi_align_forward(x, rois, 0.5, 3, 4, sampling_ratio, aligned, mode)
    want = ref.roi_align_ref(x, rois, (3, 4), 0.5, sampling_ratio, aligned, mode)
    assert out.shape == (9, 11, 3, 4) and out.dtype == torch.float64 and out.is_contiguous()
    assert_close(out, want, rtol=1e-12, atol=1e-12)
    if mode == "avg":
        assert argmax.shape == (0,) and argmax.dtype == torch.int32
    else:
        assert argmax.shape == out.shape and argmax.dtype == torch.int32
        assert (argmax == -1).sum() == 0 or sampling_ratio <= 0  # only adaptive grids can be empty


@pytest.mark.parametrize("mode", ["avg", "max"])
@pytest.mark.parametrize(("sampling_ratio", "aligned"), ALIGN)
def test_roi_align_gradient_is_the_adjoint(sampling_ratio, aligned, mode):
    x, rois = _problem(2)
    out, argmax = cpp.roi_align_forward(x, rois, 0.5, 3, 4, sampling_ratio, aligned, mode)
    g = _grad(out, 3)
    gi = cpp.roi_align_backward(g, rois, argmax, 0.5, 3, 4, sampling_ratio, aligned, mode, *x.shape)
    assert gi.shape == x.shape and gi.dtype == x.dtype
    assert_close((g * out).sum(), (gi * x).sum(), rtol=1e-12, atol=1e-12)
    # and it is the derivative: the slope along a random direction d (exact for avg, and for max
    # away from ties, which random maps do not have)
    d = _grad(x, 4)
    eps = 1e-7
    moved, _ = cpp.roi_align_forward(x + eps * d, rois, 0.5, 3, 4, sampling_ratio, aligned, mode)
    assert_close(((moved - out) * g).sum() / eps, (gi * d).sum(), rtol=1e-5, atol=1e-6)


def test_roi_align_max_argmax_is_the_first_largest_sample():
    """A constant map makes every valid sample tie: the winner is sample 0 (iy = ix = 0)."""
    x = torch.full((1, 3, 6, 6), 2.0)
    rois = torch.tensor([[0, 1.0, 1.0, 5.0, 5.0], [0, 2.0, 2.0, 2.0, 2.0]])
    out, argmax = cpp.roi_align_forward(x, rois, 1.0, 2, 2, 2, False, "max")
    assert torch.all(out == 2.0) and torch.all(argmax == 0)
    # adaptive grid of a zero-size aligned box: no sample -> 0 and argmax -1
    out, argmax = cpp.roi_align_forward(x, rois[1:], 1.0, 2, 2, -1, True, "max")
    assert torch.all(out == 0) and torch.all(argmax == -1)
    # NaN wins over numbers (like torch.max), the first NaN
    x[0, 1, 2, 2] = float("nan")
    out, argmax = cpp.roi_align_forward(x, rois[:1], 1.0, 1, 1, 2, False, "max")
    assert torch.isnan(out[0, 1, 0, 0]) and not torch.isnan(out[0, 0, 0, 0])


def test_roi_align_samples_outside_count_as_zero_in_max():
    """From tests/test_ops.py: samples (y=2, x=5.5) -> 0 (outside) and (y=2, x=4.5) -> 14 on a 5x5 arange."""
    x = torch.arange(25.0).view(1, 1, 5, 5)
    out, argmax = cpp.roi_align_forward(x, torch.tensor([[0, 4, 1.5, 6, 2.5]]), 1.0, 1, 1, -1, False, "max")
    assert out.item() == 14.0 and argmax.item() == 0
    out, _ = cpp.roi_align_forward(-x, torch.tensor([[0, 4, 1.5, 6, 2.5]]), 1.0, 1, 1, -1, False, "max")
    assert out.item() == 0.0


def test_roi_pool_matches_reference_values_and_argmax():
    x, rois = _problem(5, dtype=torch.float32)
    x = x.round()  # many ties: the first row-major maximum must win
    x[0, 0, 1:4, :] = float("nan")
    x[1, 2] = float("-inf")
    out, argmax = cpp.roi_pool_forward(x, rois, 0.5, 3, 4)
    want, where = ref._roi_pool_with_argmax(x, rois, (3, 4), 0.5)
    assert_close(out, want.float(), rtol=0, atol=0)
    expect = torch.full(out.shape, -1, dtype=torch.long)
    for (k, c, i, j), (y, xx) in where.items():
        expect[k, c, i, j] = y * x.shape[3] + xx
    assert torch.equal(argmax, expect)
    # an empty bin gives 0, a bin of -inf only gives -FLT_MAX; neither has an argmax
    none = out[argmax == -1]
    assert torch.all((none == 0) | (none == -FLT_MAX)) and (none == -FLT_MAX).any() and (none == 0).any()


def test_roi_pool_gradient_goes_to_the_first_argmax():
    x, rois = _problem(6, dtype=torch.float64)
    x = (x * 2).round()
    out, argmax = cpp.roi_pool_forward(x, rois, 0.5, 3, 4)
    g = _grad(out, 7)
    gi = cpp.roi_pool_backward(g, rois, argmax, 0.5, 3, 4, *x.shape)
    assert_close(gi, ref.roi_pool_grad_ref(x, rois, (3, 4), 0.5, g), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("aligned", [False, True])
def test_precise_roi_pool_matches_reference_and_adjoint(aligned):
    x, rois = _problem(8)
    out = cpp.precise_roi_pool_forward(x, rois, 0.5, 3, 4, aligned)
    assert_close(out, ref.precise_roi_pool_ref(x, rois, (3, 4), 0.5, aligned), rtol=1e-10, atol=1e-10)
    g = _grad(out, 9)
    gi = cpp.precise_roi_pool_backward(g, rois, 0.5, 3, 4, aligned, *x.shape)
    assert_close((g * out).sum(), (gi * x).sum(), rtol=1e-12, atol=1e-12)


def _all_ops(x, rois, g_seed=11, kernel=cpp):
    """Every op's outputs and gradients (for mode max and roi_pool through their own argmax)."""
    results = []
    for name, fwd in (
        ("avg", lambda t: kernel.roi_align_forward(t, rois, 0.5, 3, 4, 2, True, "avg")),
        ("avg-adaptive", lambda t: kernel.roi_align_forward(t, rois, 0.5, 3, 4, -1, False, "avg")),
        ("max", lambda t: kernel.roi_align_forward(t, rois, 0.5, 3, 4, -1, True, "max")),
        ("pool", lambda t: kernel.roi_pool_forward(t, rois, 0.5, 3, 4)),
        ("precise", lambda t: (kernel.precise_roi_pool_forward(t, rois, 0.5, 3, 4, True), None)),
    ):
        out, arg = fwd(x)
        g = _grad(out.float(), g_seed).to(out.dtype)
        shape = tuple(x.shape)
        if name == "pool":
            gi = kernel.roi_pool_backward(g, rois, arg, 0.5, 3, 4, *shape)
        elif name == "precise":
            gi = kernel.precise_roi_pool_backward(g, rois, 0.5, 3, 4, True, *shape)
        else:
            sr, aligned = (2, True) if name == "avg" else (-1, name == "max")
            gi = kernel.roi_align_backward(g, rois, arg, 0.5, 3, 4, sr, aligned, name[:3], *shape)
        results.append((name, out, arg, gi))
    return results


def _same(a, b):
    for (name, out, arg, gi), (_, out2, arg2, gi2) in zip(a, b, strict=True):
        assert torch.equal(out, out2), name
        assert (arg is None and arg2 is None) or torch.equal(arg, arg2), name
        assert torch.equal(gi, gi2), name
        assert gi2.is_contiguous() and out2.is_contiguous(), name


@pytest.mark.parametrize(
    "layout",
    [
        lambda x: x.contiguous(memory_format=torch.channels_last),
        lambda x: torch.stack([x, -x], 2).flatten(1, 2)[:, ::2],  # every other channel
        lambda x: x.transpose(2, 3).contiguous().transpose(2, 3),  # column-major planes
        lambda x: x.permute(1, 0, 2, 3).contiguous().permute(1, 0, 2, 3),  # batch inside channels
    ],
    ids=["channels_last", "strided_channels", "column_major", "c_outer"],
)
@pytest.mark.parametrize("c", [11, 16])
def test_any_layout_gives_the_same_bits(layout, c):
    x, rois = _problem(12, c=c, dtype=torch.float32)
    y = layout(x)
    assert torch.equal(y, x)
    _same(_all_ops(x, rois), _all_ops(y, rois))


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize(
    ("h", "w"), [(20, 24), (136, 130)], ids=["small-map-wide-blocks", "big-map-narrow-blocks"]
)
def test_block_width_agrees_with_the_torch_kernels(h, w, dtype):
    """Blocks of 16 channels (small maps, on AVX-512 machines) and of 8 (maps whose 16-channel buffer would
    not stay in cache) give the torch kernels' numbers; C = 19 has full blocks of both widths and a partial one."""
    from roicli.ops.kernels import torch_ref

    x, rois = _problem(21, n=2, c=19, h=h, w=w, k=40, dtype=dtype)
    tol = {"rtol": 1e-12, "atol": 1e-12} if dtype == torch.float64 else {"rtol": 1e-5, "atol": 1e-5}
    for (name, out, arg, gi), (_, want, want_arg, want_gi) in zip(
        _all_ops(x, rois), _all_ops(x, rois, kernel=torch_ref), strict=True
    ):
        assert_close(out, want, **tol, msg=name)
        assert (arg is None) or torch.equal(arg, want_arg), name
        assert_close(gi, want_gi, **tol, msg=name)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("c", [19, 5])
def test_tall_rois_on_a_wide_map_are_pooled_through_a_ring_of_rows(dtype, c):
    """roi_align avg keeps only the last few rows of a channel block (kRingBytes of them: 4 rows of 16
    float32 lanes at W = 2048), so tall RoIs are pooled a few bin rows at a time, interleaved with the
    others (inverted ones bottom up), their results kept until their last bin row. C = 5 splits an image's
    RoIs into chunks. The torch kernels' numbers (torchvision's bits where it is here), at 1 and 2 threads."""
    from roicli.ops.kernels import torch_ref

    g = torch.Generator().manual_seed(31)
    n, h, w, k = 2, 64, 2048, 90
    x = torch.randn(n, c, h, w, generator=g, dtype=dtype)
    x0 = torch.rand(k, generator=g, dtype=torch.float64) * (w - 200)
    y0 = torch.rand(k, generator=g, dtype=torch.float64) * h - 8
    width = torch.rand(k, generator=g, dtype=torch.float64) * 180 + 2
    height = torch.rand(k, generator=g, dtype=torch.float64) * 80 + 1
    boxes = torch.stack([x0, y0, x0 + width, y0 + height], 1)
    boxes[::7, 1], boxes[::7, 3] = boxes[::7, 3].clone(), boxes[::7, 1].clone()  # inverted, taller than high
    boxes[3::11, 0], boxes[3::11, 2] = w + 40.0, w + 90.0  # rows on the map, columns all past its edge
    batch = torch.randint(0, n, (k, 1), generator=g).double()
    rois = torch.cat([batch, boxes], 1).to(cpp._acc(dtype))
    tv = None
    try:
        from torchvision import ops as tv
    except ImportError:
        pass
    threads = torch.get_num_threads()
    try:
        for sr, aligned, scale, size in [(2, True, 1.0, (7, 5)), (-1, False, 0.5, (3, 4)), (-1, True, 1.0, (14, 14))]:
            args = (rois, scale, *size, sr, aligned, "avg")
            torch.set_num_threads(1)
            one = cpp.roi_align_forward(x, *args)[0]
            torch.set_num_threads(2)
            assert torch.equal(one, cpp.roi_align_forward(x, *args)[0]), (sr, aligned)
            channels_last = x.contiguous(memory_format=torch.channels_last)
            assert torch.equal(one, cpp.roi_align_forward(channels_last, *args)[0]), (sr, aligned)
            tol = {"rtol": 1e-12, "atol": 1e-12} if dtype == torch.float64 else {"rtol": 1e-5, "atol": 1e-5}
            assert_close(one, torch_ref.roi_align_forward(x, *args)[0], **tol)
            if tv is not None and (sr > 0 or not aligned):  # (torchvision cannot size an inverted adaptive grid)
                assert torch.equal(one, tv.roi_align(x, rois, size, scale, sr, aligned)), (sr, aligned)
    finally:
        torch.set_num_threads(threads)


def test_many_tall_rois_at_once_are_pooled_whole():
    """Where the results of the RoIs begun and unfinished at once would take more than kSlotBytes (2 MiB:
    here 2000 tall RoIs of 14 x 14 bins, 16 float32 lanes), roi_align avg pools an image's RoIs whole
    instead of a few bin rows at a time: the same bits as the RoIs pooled 25 at a time (few slots)."""
    g = torch.Generator().manual_seed(32)
    n, c, h, w, k = 1, 16, 64, 2048, 2000
    x = torch.randn(n, c, h, w, generator=g)
    x0 = torch.rand(k, generator=g, dtype=torch.float64) * (w - 100)
    y0 = torch.rand(k, generator=g, dtype=torch.float64) * 20 - 4
    height = torch.rand(k, generator=g, dtype=torch.float64) * 30 + 30
    rois = torch.stack([torch.zeros(k, dtype=torch.float64), x0, y0, x0 + 60, y0 + height], 1).float()
    for args in [(1.0, 14, 14, 2, True, "avg"), (1.0, 14, 14, -1, False, "avg")]:
        whole = cpp.roi_align_forward(x, rois, *args)[0]
        parts = [cpp.roi_align_forward(x, rois[i : i + 25], *args)[0] for i in range(0, k, 25)]
        assert torch.equal(whole, torch.cat(parts)), args


def test_thread_count_does_not_change_a_bit():
    # big enough (> 2^20 elements moved) for the kernels to use more than one thread
    x, rois = _problem(13, n=3, c=61, h=70, w=90, k=120, dtype=torch.float32)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = _all_ops(x, rois)
        torch.set_num_threads(max(2, threads))
        _same(one, _all_ops(x, rois))
    finally:
        torch.set_num_threads(threads)


def test_big_outputs_give_the_same_bits_as_small_ones():
    """float32 outputs of 8 MiB and more are written with non-temporal stores (a partial block of C = 67
    too): the same bits as the same RoIs pooled 40 at a time (small outputs, ordinary stores)."""
    x, rois = _problem(22, n=2, c=67, h=20, w=24, k=720, dtype=torch.float32)
    runs = {  # each: the op's outputs as a tuple
        "align avg": lambda r: cpp.roi_align_forward(x, r, 0.5, 7, 7, 2, True, "avg")[:1],
        "align adaptive": lambda r: cpp.roi_align_forward(x, r, 0.5, 7, 7, -1, False, "avg")[:1],
        "align max": lambda r: cpp.roi_align_forward(x, r, 0.5, 7, 7, 2, True, "max"),
        "pool": lambda r: cpp.roi_pool_forward(x, r, 0.5, 7, 7),
        "pool values": lambda r: (cpp.roi_pool_values(x, r, 0.5, 7, 7),),
        "precise": lambda r: (cpp.precise_roi_pool_forward(x, r, 0.5, 7, 7, True),),
    }
    assert 720 * 67 * 7 * 7 * 4 >= 2**23
    for name, run in runs.items():
        whole = run(rois)
        parts = [run(rois[i : i + 40]) for i in range(0, 720, 40)]
        for j, got in enumerate(whole):
            assert got.is_contiguous() and got.shape == (720, 67, 7, 7), name
            assert torch.equal(got, torch.cat([p[j] for p in parts])), (name, j)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_types_accumulate_in_float32(dtype):
    """A half map gives exactly the float32 result on the same values, rounded once at the end."""
    x, rois = _problem(14, dtype=torch.float32)
    x = x.to(dtype)
    half = _all_ops(x, rois)
    full = _all_ops(x.float(), rois)
    for (name, out, arg, gi), (_, out32, arg32, gi32) in zip(half, full, strict=True):
        assert out.dtype == dtype and gi.dtype == dtype, name
        assert torch.equal(out, out32.to(dtype)), name
        assert (arg is None) or torch.equal(arg, arg32), name
        # the gradients differ only by the rounding of g to the half type before the sums
        assert_close(gi.float(), gi32, rtol=1e-2, atol=1e-2)


def test_empty_inputs():
    x = torch.randn(2, 3, 5, 5)
    none = torch.zeros(0, 5)
    out, arg = cpp.roi_align_forward(x, none, 1.0, 2, 2, 2, False, "max")
    assert out.shape == (0, 3, 2, 2) and arg.shape == (0, 3, 2, 2)
    gi = cpp.roi_align_backward(out, none, arg, 1.0, 2, 2, 2, False, "max", 2, 3, 5, 5)
    assert torch.equal(gi, torch.zeros(2, 3, 5, 5))
    out, arg = cpp.roi_pool_forward(x, none, 1.0, 2, 2)
    assert torch.equal(cpp.roi_pool_backward(out, none, arg, 1.0, 2, 2, 2, 3, 5, 5), torch.zeros(2, 3, 5, 5))
    assert cpp.precise_roi_pool_forward(x[:, :0], torch.tensor([[1, 0, 0, 2, 2.0]]), 1.0, 2, 2, True).shape == (
        1, 0, 2, 2,
    )


def test_images_without_rois_get_zero_gradient():
    x = torch.randn(3, 9, 5, 6)
    rois = torch.tensor([[1, 0.0, 0.0, 3.0, 3.0]])
    out, arg = cpp.roi_align_forward(x, rois, 1.0, 2, 2, 2, False, "avg")
    gi = cpp.roi_align_backward(torch.ones_like(out), rois, arg, 1.0, 2, 2, 2, False, "avg", 3, 9, 5, 6)
    assert torch.all(gi[0] == 0) and torch.all(gi[2] == 0)
    assert_close(gi[1].sum(), torch.tensor(float(9 * 4)))


def test_sample_positions_follow_the_torch_geometry_to_the_last_bit():
    """Samples within a few ulps of the border cut-offs (y = -1, y = H): the kernel includes or drops
    each one exactly as `roi_align.align_taps` (the torch geometry) does."""
    from roicli.ops.roi_align import align_taps

    h = 7
    centres = []
    for border in (-1.0, float(h), -0.5, h + 0.5):
        c = torch.tensor(border, dtype=torch.float32)
        below, above = c.clone(), c.clone()
        for _ in range(4):
            centres += [below.item(), above.item()]
            below = torch.nextafter(below, torch.tensor(-100.0))
            above = torch.nextafter(above, torch.tensor(100.0))
    rois = torch.tensor(
        [[0, c - d, c - d, c + d, c + d] for c in centres for d in (0.5, 0.75, 1.3, 2.1, 3.7)], dtype=torch.float32
    )
    ones = torch.ones(1, 8, h, h)
    seen = set()
    for aligned in (False, True):
        for sr in (1, 3):
            _, wy, _ = align_taps(rois[:, 2], rois[:, 4], 1.0, 1, sr, aligned, h)  # [K, 1, G, 2]
            valid = (wy.abs().sum(-1)[:, 0] > 0).sum(1).double()  # valid samples per axis, [K]
            out, _ = cpp.roi_align_forward(ones, rois, 1.0, 1, 1, sr, aligned, "avg")
            # x and y taps agree (square boxes), so a constant map averages to valid^2 / sr^2
            assert_close(out[:, 0, 0, 0].double(), valid**2 / sr**2, rtol=0, atol=1e-6)
            seen |= set(valid.tolist())
    assert len(seen) > 2  # the boxes do straddle the cut-offs


def test_unbuildable_reports_the_reason(tmp_path, monkeypatch):
    monkeypatch.setenv("CXX", str(tmp_path / "no-such-compiler"))
    with pytest.raises(KernelUnavailable, match="expected a C\\+\\+ compiler"):
        cpp._build(tmp_path / "build")


def test_cache_key_names_the_torch_version():
    assert cpp.build_directory().name.startswith("torch-" + torch.__version__.replace("+", "_") + "-")


def test_cpu_tensors_default_to_cpp(monkeypatch):
    select = pytest.importorskip("roicli.ops.kernels.select")
    monkeypatch.delenv("ROICLI_KERNEL", raising=False)
    assert select.forced() is None
    assert select.kernel_for(torch.device("cpu")) is cpp


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_matches_torchvision_bit_for_bit(dtype):
    """Where torchvision is importable: roi_align (values and gradients; its CPU backward is serial,
    so its sums have a fixed order, which the kernel follows) and roi_pool give the same bits."""
    tv = pytest.importorskip("torchvision.ops")
    x, rois = _problem(15, n=2, c=19, h=23, w=31, k=60, dtype=dtype)
    rois[:, 1:] *= 4
    for sampling_ratio, aligned in ALIGN + [(0, False), (3, True)]:
        out, arg = cpp.roi_align_forward(x, rois, 0.25, 5, 4, sampling_ratio, aligned, "avg")
        xg = x.clone().requires_grad_()
        want = tv.roi_align(xg, rois, (5, 4), 0.25, sampling_ratio, aligned)
        assert torch.equal(out, want), (sampling_ratio, aligned)
        g = _grad(out, 16)
        want.backward(g)
        gi = cpp.roi_align_backward(g, rois, arg, 0.25, 5, 4, sampling_ratio, aligned, "avg", *x.shape)
        assert torch.equal(gi, xg.grad), (sampling_ratio, aligned)
    x = x.round()  # ties
    out, arg = cpp.roi_pool_forward(x, rois, 0.25, 5, 4)
    xg = x.clone().requires_grad_()
    want = tv.roi_pool(xg, rois, (5, 4), 0.25)
    assert torch.equal(out, want)
    g = _grad(out, 17)
    want.backward(g)
    assert torch.equal(cpp.roi_pool_backward(g, rois, arg, 0.25, 5, 4, *x.shape), xg.grad)
