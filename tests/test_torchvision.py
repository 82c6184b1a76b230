"""Cross-checks of ``roicli.ops`` against ``torchvision.ops``.

torchvision is the reference here: roicli's ``roi_align``, ``roi_pool`` and
``multiscale_roi_align`` are meant to reproduce it, including its edge-case
behaviour (boxes outside the map, zero-size and inverted boxes, the adaptive
sampling grid, roi_pool's rounding and bin edges, argmax tie-breaking).
``precise_roi_pool`` has no torchvision counterpart; it is checked against
torchvision's ``roi_align`` where the two must agree exactly (see
``test_precise_roi_pool_equals_roi_align_where_midpoint_rule_is_exact``).

The whole module is skipped when torchvision is not installed.

Letters: N images, C channels, H x W map, K RoIs, PH x PW pooled size.
"""

from __future__ import annotations

import importlib
import math
import zlib
from collections import OrderedDict

import pytest
import torch

from roicli.ops import (
    MultiScaleRoIAlign,
    PreciseRoIPool,
    RoIAlign,
    RoIPool,
    multiscale_roi_align,
    precise_roi_pool,
    roi_align,
    roi_pool,
)

torchvision = pytest.importorskip("torchvision")
tv_ops = torchvision.ops
roi_pool_module = importlib.import_module("roicli.ops.roi_pool")  # `roicli.ops.roi_pool` is the function

try:
    from hypothesis import given, settings
    from hypothesis import strategies as st
except ImportError:  # pragma: no cover - hypothesis is optional
    given = None

DTYPES = [torch.float32, torch.float64]
OUTPUT_SIZES = [1, (2, 3), 7, 14]
SCALES = [1.0, 1 / 2, 1 / 16, 1 / 32]
SAMPLING_RATIOS = [-1, 0, 1, 2, 3]

# Small, odd-sized, non-square map shared by most tests: [N, C, H, W].
N, C, H, W = 3, 2, 13, 17


# --------------------------------------------------------------------------- helpers


def _gen(*key: object) -> torch.Generator:
    """A generator seeded from the test's parameters (stable across runs and processes)."""
    return torch.Generator().manual_seed(zlib.crc32(repr(key).encode()))


def _pair(size: int | tuple[int, int]) -> tuple[int, int]:
    return (size, size) if isinstance(size, int) else tuple(size)


def _tol(dtype: torch.dtype, magnitude: float) -> dict[str, float]:
    """assert_close tolerances scaled to the magnitude of the compared values."""
    magnitude = max(float(magnitude), 1.0)
    if dtype == torch.float64:
        return {"rtol": 1e-10, "atol": 1e-10 * magnitude}
    return {"rtol": 1e-5, "atol": 1e-5 * magnitude}


def _random_map(gen: torch.Generator, dtype: torch.dtype, shape=(N, C, H, W)) -> torch.Tensor:
    return torch.randn(shape, generator=gen, dtype=torch.float64).to(dtype)


def _distinct_map(gen: torch.Generator, dtype: torch.dtype, shape=(N, C, H, W)) -> torch.Tensor:
    """Every value distinct and exactly representable: max pooling has no ties."""
    numel = math.prod(shape)
    return (torch.randperm(numel, generator=gen).to(torch.float64) - numel / 2).reshape(shape).to(dtype)


def _feature_boxes(
    gen: torch.Generator,
    height: int,
    width: int,
    per_kind: int = 3,
    snapped_inside_only: bool = False,
) -> torch.Tensor:
    """Boxes [K, 4] (x1, y1, x2, y2) in *feature-map* pixels covering the interesting cases.

    The random boxes are followed by copies snapped to integer and half-integer coordinates (exact
    bin sizes, exact adaptive grids, rounding ties for roi_pool). With ``snapped_inside_only`` only
    the snapped copies that keep every roi_align sample inside [0, H - 1] x [0, W - 1] are kept: on
    snapped boxes a sample can land on the border y = -1 or y = H up to the last bit, where
    torchvision switches between clamping and zero, so which side wins depends on the order of the
    float operations, not on the semantics (those are pinned down exactly by
    test_roi_align_samples_exactly_on_the_border).
    """

    def u(lo: float, hi: float) -> torch.Tensor:
        return lo + (hi - lo) * torch.rand(per_kind, generator=gen, dtype=torch.float64)

    def box(x1, y1, x2, y2):
        return torch.stack([x1, y1, x2, y2], dim=1)

    kinds = []
    # fully inside
    x1, y1 = u(0, width - 2), u(0, height - 2)
    kinds.append(box(x1, y1, x1 + u(0.5, 1) * (width - 1 - x1), y1 + u(0.5, 1) * (height - 1 - y1)))
    # partly outside (straddling an edge)
    x1, y1 = u(-width / 2, width - 1), u(-height / 2, height - 1)
    kinds.append(box(x1, y1, x1 + u(width / 3, width), y1 + u(height / 3, height)))
    # fully outside, far away: left/top and right/bottom
    kinds.append(box(u(-3 * width, -2 * width), u(0, height), u(-2 * width, -2), u(height, 2 * height)))
    kinds.append(
        box(
            u(width + 2, 2 * width),
            u(height + 2, 2 * height),
            u(2 * width, 3 * width),
            u(2 * height, 3 * height),
        )
    )
    # just outside / on the edge: samples land in the [-1, 0) and [H - 1, H] bands
    x1, y1 = u(-1.8, -0.2), u(height - 1.2, height + 0.3)
    kinds.append(box(x1, y1, x1 + u(0, 1.5), y1 + u(0, 1.5)))
    x1, y1 = u(width - 1.2, width + 0.3), u(-1.8, -0.2)
    kinds.append(box(x1, y1, x1 + u(0, 1.5), y1 + u(0, 1.5)))
    # bigger than the map on every side
    kinds.append(box(u(-width, -1), u(-height, -1), u(width, 2 * width), u(height, 2 * height)))
    # tiny (smaller than a pixel)
    x1, y1 = u(0, width - 1), u(0, height - 1)
    kinds.append(box(x1, y1, x1 + u(0, 0.9), y1 + u(0, 0.9)))
    # zero width, zero height, zero both
    x1, y1 = u(0, width - 1), u(0, height - 1)
    kinds.append(box(x1, y1, x1, y1 + u(1, height / 2)))
    kinds.append(box(x1, y1, x1 + u(1, width / 2), y1))
    kinds.append(box(x1, y1, x1, y1))
    # inverted in x, in y and in both (small and large inversions)
    x1, y1 = u(1, width), u(1, height)
    kinds.append(box(x1, y1, x1 - u(0.1, 0.9), y1 + u(1, 4)))
    kinds.append(box(x1, y1, x1 + u(1, 4), y1 - u(0.1, height)))
    kinds.append(box(x1, y1, x1 - u(1, width), y1 - u(1, height)))
    boxes = torch.cat(kinds)
    snapped = torch.cat([boxes.round(), boxes.round() + 0.5])
    if snapped_inside_only:
        lo = torch.minimum(snapped[:, :2], snapped[:, 2:])
        hi = torch.maximum(snapped[:, :2], snapped[:, 2:]).maximum(snapped[:, :2] + 1)  # unaligned: >= 1 px
        limit = torch.tensor([width - 1, height - 1], dtype=torch.float64)
        snapped = snapped[((lo >= 0.5) & (hi <= limit)).all(dim=1)]
    return torch.cat([boxes, snapped])


def _rois(
    gen: torch.Generator,
    dtype: torch.dtype,
    spatial_scale: float,
    n_images: int = N,
    height: int = H,
    width: int = W,
    snapped_inside_only: bool = True,
) -> torch.Tensor:
    """Tensor[K, 5] (batch_idx, x1, y1, x2, y2) in image pixels, for an H x W map at this scale."""
    boxes = _feature_boxes(gen, height, width, snapped_inside_only=snapped_inside_only)
    boxes = boxes / spatial_scale  # dyadic scales: exact
    batch_idx = torch.randint(0, n_images, (boxes.shape[0], 1), generator=gen).to(torch.float64)
    return torch.cat([batch_idx, boxes], dim=1).to(dtype)


def _drop_inverted(rois: torch.Tensor) -> torch.Tensor:
    """Rows with x2 >= x1 and y2 >= y1.

    torchvision's roi_align with aligned=True and an adaptive grid (sampling_ratio <= 0) gets a
    negative sample count for an inverted axis; when the product of the two counts is negative it
    raises ("cannot create std::vector larger than max_size()"), so there is no reference output.
    The cases it does define are in test_roi_align_aligned_adaptive_inverted_boxes.
    """
    keep = (rois[:, 3] >= rois[:, 1]) & (rois[:, 4] >= rois[:, 2])
    return rois[keep]


def _as_list(rois: torch.Tensor, n_images: int) -> list[torch.Tensor]:
    """Tensor[K, 5] -> list of n_images Tensor[L, 4] (image order, stable within an image)."""
    return [rois[rois[:, 0] == i, 1:] for i in range(n_images)]


def _list_order(rois: torch.Tensor, n_images: int) -> torch.Tensor:
    """Row permutation that turns Tensor[K, 5] order into the order of _as_list's concatenation."""
    return torch.cat([torch.nonzero(rois[:, 0] == i).flatten() for i in range(n_images)])


def _grad(fn, x: torch.Tensor, grad_output: torch.Tensor | None = None, gen=None):
    """(output, d(sum(output * grad_output))/dx) for a fresh leaf copy of x."""
    x = x.detach().clone().requires_grad_(True)
    out = fn(x)
    if grad_output is None:
        grad_output = torch.randn(out.shape, generator=gen, dtype=torch.float64).to(out.dtype)
    out.backward(grad_output)
    return out.detach(), x.grad


# --------------------------------------------------------------------------- roi_align


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("spatial_scale", SCALES)
@pytest.mark.parametrize("output_size", OUTPUT_SIZES, ids=str)
@pytest.mark.parametrize("sampling_ratio", SAMPLING_RATIOS)
@pytest.mark.parametrize("aligned", [False, True])
def test_roi_align_forward(aligned, sampling_ratio, output_size, spatial_scale, dtype):
    gen = _gen("roi_align", aligned, sampling_ratio, output_size, spatial_scale, dtype)
    x = _random_map(gen, dtype)
    rois = _rois(gen, dtype, spatial_scale)
    if aligned and sampling_ratio <= 0:
        rois = _drop_inverted(rois)
    expected = tv_ops.roi_align(x, rois, output_size, spatial_scale, sampling_ratio, aligned)
    actual = roi_align(x, rois, output_size, spatial_scale, sampling_ratio, aligned)
    assert actual.dtype == dtype
    torch.testing.assert_close(actual, expected, **_tol(dtype, x.abs().max()))


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("spatial_scale", [1.0, 1 / 16])
@pytest.mark.parametrize("output_size", [(2, 3), 7])
@pytest.mark.parametrize("sampling_ratio", SAMPLING_RATIOS)
@pytest.mark.parametrize("aligned", [False, True])
def test_roi_align_backward(aligned, sampling_ratio, output_size, spatial_scale, dtype):
    gen = _gen("roi_align_bwd", aligned, sampling_ratio, output_size, spatial_scale, dtype)
    x = _random_map(gen, dtype)
    rois = _rois(gen, dtype, spatial_scale)
    if aligned and sampling_ratio <= 0:
        rois = _drop_inverted(rois)
    args = (rois, output_size, spatial_scale, sampling_ratio, aligned)
    grad_output = torch.randn((rois.shape[0], C, *_pair(output_size)), generator=gen, dtype=torch.float64).to(dtype)
    out_tv, grad_tv = _grad(lambda t: tv_ops.roi_align(t, *args), x, grad_output)
    out, grad = _grad(lambda t: roi_align(t, *args), x, grad_output)
    torch.testing.assert_close(out, out_tv, **_tol(dtype, x.abs().max()))
    assert grad.dtype == dtype and grad.shape == x.shape
    torch.testing.assert_close(grad, grad_tv, **_tol(dtype, grad_tv.abs().max()))


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("aligned", [False, True])
def test_roi_align_list_of_boxes(aligned, dtype):
    gen = _gen("roi_align_list", aligned, dtype)
    x = _random_map(gen, dtype)
    rois = _drop_inverted(_rois(gen, dtype, 0.5))
    rois = rois[rois[:, 0] != 1]  # image 1 has no boxes: an empty [0, 4] entry in the list
    boxes = _as_list(rois, N)
    assert boxes[1].shape == (0, 4)
    expected = tv_ops.roi_align(x, boxes, (3, 4), 0.5, 2, aligned)
    actual = roi_align(x, boxes, (3, 4), 0.5, 2, aligned)
    tol = _tol(dtype, x.abs().max())
    torch.testing.assert_close(actual, expected, **tol)
    # the list format is the [K, 5] format with rows grouped by image
    from_rois = roi_align(x, rois, (3, 4), 0.5, 2, aligned)
    torch.testing.assert_close(actual, from_rois[_list_order(rois, N)], **tol)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_roi_align_non_contiguous_inputs(dtype):
    gen = _gen("roi_align_nc", dtype)
    x = _random_map(gen, dtype, (N, C, W, H)).transpose(2, 3)  # [N, C, H, W], not contiguous
    base = _drop_inverted(_rois(gen, dtype, 1.0))
    rois6 = torch.cat([base, torch.ones(base.shape[0], 1, dtype=dtype)], dim=1)
    rois = rois6[:, :5]  # a non-contiguous view
    assert not x.is_contiguous() and not rois.is_contiguous()
    expected = tv_ops.roi_align(x.contiguous(), rois.contiguous(), 5, 1.0, -1, True)
    torch.testing.assert_close(roi_align(x, rois, 5, 1.0, -1, True), expected, **_tol(dtype, x.abs().max()))
    x_cl = x.contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(
        roi_align(x_cl, rois, 5, 1.0, 2, False),
        tv_ops.roi_align(x, rois, 5, 1.0, 2, False),
        **_tol(dtype, x.abs().max()),
    )


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("aligned", [False, True])
def test_roi_align_samples_exactly_on_the_border(aligned, dtype):
    """Samples exactly at y = -1, 0, H - 1, H (and beyond): clamp on [-1, H], zero outside.

    Every box is 2 px wide with one bin and sampling_ratio 2, so the samples sit at x1 + 0.5 and
    x1 + 1.5 (minus 0.5 when aligned): dyadic numbers, exact in any order of float operations.
    """
    height, width = 6, 7
    x = _random_map(_gen("border", aligned, dtype), dtype, (1, C, height, width))
    shift = 0.5 if aligned else 0.0
    starts = torch.arange(-4.0, 9.5, 0.5) + shift  # first sample at start + 0.5 - shift
    ys, xs = torch.meshgrid(starts - 1.0, torch.tensor([1.0, 3.0 + shift]), indexing="ij")
    ys2, xs2 = torch.meshgrid(torch.tensor([2.0 + shift]), starts - 1.0, indexing="ij")
    y1 = torch.cat([ys.flatten(), ys2.flatten()])
    x1 = torch.cat([xs.flatten(), xs2.flatten()])
    rois = torch.stack([torch.zeros_like(x1), x1, y1, x1 + 2, y1 + 2], dim=1).to(dtype)
    expected = tv_ops.roi_align(x, rois, 1, 1.0, 2, aligned)
    torch.testing.assert_close(roi_align(x, rois, 1, 1.0, 2, aligned), expected, **_tol(dtype, 5.0))
    assert (expected == 0).any() and (expected != 0).any()


@pytest.mark.parametrize("sampling_ratio", [-1, 0])
def test_roi_align_aligned_adaptive_inverted_boxes(sampling_ratio):
    """aligned=True, adaptive grid, inverted boxes where torchvision is defined: no samples -> 0."""
    x = _random_map(_gen("inverted"), torch.float64, (1, C, 10, 10))
    rois = torch.tensor(
        [
            [0, 5, 5, 4.5, 8],  # x inverted by less than a bin: ceil() gives 0 samples in x
            [0, 5, 5, 8, 4.5],  # same in y
            [0, 5, 5, 3, 3],  # both inverted: (-1) * (-1) samples, the loops still run zero times
            [0, 5, 5, 4.5, 4.5],
            [0, 9, 9, 1, 2],
        ],
        dtype=torch.float64,
    )
    expected = tv_ops.roi_align(x, rois, 2, 1.0, sampling_ratio, True)
    actual = roi_align(x, rois, 2, 1.0, sampling_ratio, True)
    torch.testing.assert_close(actual, expected, rtol=0, atol=0)
    assert not expected.any()


@pytest.mark.parametrize("op", ["roi_align", "roi_pool", "precise_roi_pool"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_empty_rois(op, dtype):
    x = torch.randn(N, C, H, W, dtype=dtype)
    rois = torch.zeros(0, 5, dtype=dtype)
    fn = {"roi_align": roi_align, "roi_pool": roi_pool, "precise_roi_pool": precise_roi_pool}[op]
    out = fn(x, rois, (2, 3))
    assert out.shape == (0, C, 2, 3) and out.dtype == dtype
    if op != "precise_roi_pool":
        assert tv_ops.roi_align(x, rois, (2, 3)).shape == out.shape
    out = fn(x, [torch.zeros(0, 4, dtype=dtype)] * N, (2, 3))
    assert out.shape == (0, C, 2, 3)


def test_roi_align_module_matches_torchvision():
    gen = _gen("RoIAlign")
    x = _random_map(gen, torch.float64)
    rois = _drop_inverted(_rois(gen, torch.float64, 1 / 16))
    for kwargs in [
        {"output_size": 7, "spatial_scale": 1 / 16, "sampling_ratio": 2, "aligned": True},
        {"output_size": (2, 3), "spatial_scale": 1 / 16, "sampling_ratio": -1, "aligned": False},
    ]:
        expected = tv_ops.RoIAlign(**kwargs)(x, rois)
        torch.testing.assert_close(RoIAlign(**kwargs)(x, rois), expected, **_tol(torch.float64, x.abs().max()))
        torch.testing.assert_close(
            RoIAlign(**kwargs)(x, _as_list(rois, N)),
            expected[_list_order(rois, N)],
            **_tol(torch.float64, x.abs().max()),
        )


# --------------------------------------------------------------------------- roi_pool


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("spatial_scale", SCALES)
@pytest.mark.parametrize("output_size", OUTPUT_SIZES, ids=str)
def test_roi_pool_forward_backward(output_size, spatial_scale, dtype):
    """Distinct map values, integer output gradients: forward and backward must be bit-exact."""
    gen = _gen("roi_pool", output_size, spatial_scale, dtype)
    x = _distinct_map(gen, dtype)
    rois = _rois(gen, dtype, spatial_scale, snapped_inside_only=False)
    ph, pw = _pair(output_size)
    grad_output = torch.randint(-4, 5, (rois.shape[0], C, ph, pw), generator=gen).to(dtype)
    out_tv, grad_tv = _grad(lambda t: tv_ops.roi_pool(t, rois, output_size, spatial_scale), x, grad_output)
    out, grad = _grad(lambda t: roi_pool(t, rois, output_size, spatial_scale), x, grad_output)
    assert out.dtype == dtype and grad.dtype == dtype
    torch.testing.assert_close(out, out_tv, rtol=0, atol=0)
    torch.testing.assert_close(grad, grad_tv, rtol=0, atol=0)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("kind", ["relu", "all_zero", "constant_negative", "few_levels"])
def test_roi_pool_ties(kind, dtype):
    """Many equal values (a map after ReLU, ...): the first maximum in row-major order wins."""
    gen = _gen("roi_pool_ties", kind, dtype)
    base = torch.randn((N, C, H, W), generator=gen, dtype=torch.float64)
    x = {
        "relu": torch.relu(base).mul(2).round().div(2),
        "all_zero": torch.zeros_like(base),
        "constant_negative": torch.full_like(base, -3.0),
        "few_levels": base.round().clamp(-1, 1),
    }[kind].to(dtype)
    rois = _rois(gen, dtype, 1.0, snapped_inside_only=False)
    grad_output = torch.randint(1, 5, (rois.shape[0], C, 3, 4), generator=gen).to(dtype)
    out_tv, grad_tv = _grad(lambda t: tv_ops.roi_pool(t, rois, (3, 4), 1.0), x, grad_output)
    out, grad = _grad(lambda t: roi_pool(t, rois, (3, 4), 1.0), x, grad_output)
    torch.testing.assert_close(out, out_tv, rtol=0, atol=0)
    torch.testing.assert_close(grad, grad_tv, rtol=0, atol=0)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_roi_pool_special_values(dtype):
    """NaN, +-inf and signed zeros: torchvision's running max starts at -FLT_MAX and skips NaN."""
    gen = _gen("roi_pool_special", dtype)
    x = torch.relu(torch.randn((N, C, H, W), generator=gen, dtype=torch.float64)).to(dtype)
    flat = x.view(-1)
    picks = torch.randperm(flat.numel(), generator=gen)
    flat[picks[:40]] = math.nan
    flat[picks[40:80]] = -math.inf
    flat[picks[80:100]] = math.inf
    flat[picks[100:160]] = -0.0
    x[0, 0, :4, :4] = math.nan  # whole bins of NaN, of -inf, of NaN and -inf
    x[0, 1, :4, :4] = -math.inf
    x[1, 1, :4, :4] = -math.inf
    x[1, 1, :2, :2] = math.nan
    rois = torch.cat(
        [
            _rois(gen, dtype, 1.0, snapped_inside_only=False),
            torch.tensor([[0, 0, 0, 3, 3], [1, 0, 0, 3, 3]], dtype=dtype),
        ]
    )
    grad_output = torch.randint(1, 5, (rois.shape[0], C, 2, 3), generator=gen).to(dtype)
    out_tv, grad_tv = _grad(lambda t: tv_ops.roi_pool(t, rois, (2, 3), 1.0), x, grad_output)
    out, grad = _grad(lambda t: roi_pool(t, rois, (2, 3), 1.0), x, grad_output)
    torch.testing.assert_close(out, out_tv, rtol=0, atol=0, equal_nan=True)
    torch.testing.assert_close(grad, grad_tv, rtol=0, atol=0)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("output_size", [(1, 1), (1, 7), (7, 1), (2, 14), (14, 3)], ids=str)
def test_roi_pool_elongated_windows_and_channel_groups(output_size, dtype, monkeypatch):
    """Bins from 1 pixel to the whole map, aspect ratios up to ~40, channels pooled a few at a time."""
    monkeypatch.setattr(roi_pool_module, "TABLE_BYTES", 2 * (2 * 9 * 41) * 8)  # 2 channels of int64 keys per group
    gen = _gen("roi_pool_elongated", output_size, dtype)
    x = torch.relu(torch.randn((2, 5, 9, 41), generator=gen, dtype=torch.float64)).mul(4).round().to(dtype)
    rois = torch.tensor(
        [
            [0, 0, 0, 40, 8],
            [1, 0, 3, 40, 3],
            [0, 5, 0, 5, 8],
            [1, 2.4, 1.6, 39.5, 2.5],
            [0, 7, 1, 30, 7],
            [1, 0, 0, 0, 0],
        ],
        dtype=dtype,
    )
    ph, pw = output_size
    grad_output = torch.randint(1, 5, (rois.shape[0], 5, ph, pw), generator=gen).to(dtype)
    out_tv, grad_tv = _grad(lambda t: tv_ops.roi_pool(t, rois, output_size, 1.0), x, grad_output)
    out, grad = _grad(lambda t: roi_pool(t, rois, output_size, 1.0), x, grad_output)
    torch.testing.assert_close(out, out_tv, rtol=0, atol=0)
    torch.testing.assert_close(grad, grad_tv, rtol=0, atol=0)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_roi_pool_rounds_half_away_from_zero(dtype):
    """Box corners at x.5 after scaling: torchvision rounds them away from zero (C++ std::round)."""
    x = _distinct_map(_gen("roi_pool_half", dtype), dtype, (1, 1, 12, 12))
    corners = torch.tensor([-2.5, -1.5, -0.5, 0.5, 1.5, 2.5, 3.5, 4.5, 6.5, 9.5, 10.5, 11.5, 12.5])
    xy = torch.cartesian_prod(corners, corners)
    xy = xy[xy[:, 0] < xy[:, 1]]  # (lo, hi) pairs
    boxes = torch.cat([xy[:, :1], xy[:, :1].flip(0), xy[:, 1:], xy[:, 1:].flip(0)], dim=1)
    for spatial_scale in (1.0, 0.5):
        rois = torch.cat([torch.zeros(len(boxes), 1), boxes / spatial_scale], dim=1).to(dtype)
        expected = tv_ops.roi_pool(x, rois, (2, 3), spatial_scale)
        torch.testing.assert_close(roi_pool(x, rois, (2, 3), spatial_scale), expected, rtol=0, atol=0)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("pooled", [3, 5, 6, 7, 11, 14])
def test_roi_pool_bin_edges_follow_torchvision_arithmetic(pooled, dtype):
    """Bin edges are floor(ph * (roi / PH)) and ceil((ph + 1) * (roi / PH)) in the input dtype.

    For some RoI sizes that rounding differs from exact rational arithmetic (and float32 from
    float64), e.g. roi 29 px, PH 7; torchvision-compatible means reproducing it.
    """
    size = 150
    x = _distinct_map(_gen("roi_pool_edges", dtype), dtype, (1, 1, size, size))
    r = torch.arange(1, size, dtype=torch.float64)
    zeros = torch.zeros_like(r)
    rois = torch.stack([zeros, zeros, zeros, r - 1, r - 1], dim=1).to(dtype)
    expected = tv_ops.roi_pool(x, rois, pooled, 1.0)
    torch.testing.assert_close(roi_pool(x, rois, pooled, 1.0), expected, rtol=0, atol=0)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_roi_pool_list_of_boxes_and_module(dtype):
    gen = _gen("roi_pool_list", dtype)
    x = _distinct_map(gen, dtype)
    rois = _rois(gen, dtype, 1 / 2, snapped_inside_only=False)
    boxes = _as_list(rois, N)
    expected = tv_ops.roi_pool(x, boxes, 7, 1 / 2)
    torch.testing.assert_close(roi_pool(x, boxes, 7, 1 / 2), expected, rtol=0, atol=0)
    torch.testing.assert_close(RoIPool(7, 1 / 2)(x, rois), tv_ops.RoIPool(7, 1 / 2)(x, rois), rtol=0, atol=0)
    torch.testing.assert_close(
        RoIPool((2, 3), 1 / 2)(x, boxes), tv_ops.RoIPool((2, 3), 1 / 2)(x, boxes), rtol=0, atol=0
    )


def test_roi_pool_non_contiguous_input():
    gen = _gen("roi_pool_nc")
    x = _distinct_map(gen, torch.float32, (N, C, W, H)).transpose(2, 3)
    rois = _rois(gen, torch.float32, 1.0, snapped_inside_only=False)
    expected = tv_ops.roi_pool(x.contiguous(), rois, (4, 3), 1.0)
    torch.testing.assert_close(roi_pool(x, rois, (4, 3), 1.0), expected, rtol=0, atol=0)


# --------------------------------------------------------------------------- precise_roi_pool


def _midpoint_exact_rois(gen: torch.Generator, spatial_scale: float, ph: int, pw: int, k: int):
    """RoIs whose bins, in aligned feature coordinates, are k x k blocks of whole cells in the map.

    On such a bin the bilinear interpolant is bilinear on every cell, so roi_align's midpoint rule
    with sampling_ratio = k is exactly its integral, which is what precise_roi_pool computes.
    """
    rows = []
    for _ in range(12):
        x0 = int(torch.randint(0, W - 1 - pw * k + 1, (1,), generator=gen))
        y0 = int(torch.randint(0, H - 1 - ph * k + 1, (1,), generator=gen))
        feat = torch.tensor([x0, y0, x0 + pw * k, y0 + ph * k], dtype=torch.float64) + 0.5  # aligned: -0.5
        rows.append(torch.cat([torch.randint(0, N, (1,), generator=gen).double(), feat / spatial_scale]))
    return torch.stack(rows)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("spatial_scale", [1.0, 1 / 4])
@pytest.mark.parametrize(("output_size", "k"), [((1, 1), 3), ((2, 3), 2), ((3, 2), 1), ((4, 4), 3)])
def test_precise_roi_pool_equals_roi_align_where_midpoint_rule_is_exact(output_size, k, spatial_scale, dtype):
    gen = _gen("prroi", output_size, k, spatial_scale, dtype)
    x = _random_map(gen, dtype)
    rois = _midpoint_exact_rois(gen, spatial_scale, *output_size, k).to(dtype)
    grad_output = torch.randn((rois.shape[0], C, *output_size), generator=gen, dtype=torch.float64).to(dtype)
    out_tv, grad_tv = _grad(lambda t: tv_ops.roi_align(t, rois, output_size, spatial_scale, k, True), x, grad_output)
    out, grad = _grad(lambda t: precise_roi_pool(t, rois, output_size, spatial_scale, True), x, grad_output)
    torch.testing.assert_close(out, out_tv, **_tol(dtype, x.abs().max()))
    torch.testing.assert_close(grad, grad_tv, **_tol(dtype, grad_tv.abs().max()))
    module = PreciseRoIPool(output_size, spatial_scale, aligned=True)
    torch.testing.assert_close(module(x, _as_list(rois, N)), out_tv[_list_order(rois, N)], **_tol(dtype, x.abs().max()))


def test_precise_roi_pool_is_the_limit_of_roi_align():
    """Boxes inside the map: roi_align with a dense sampling grid converges to the integral.

    The midpoint rule's error on a piecewise-bilinear function shrinks like 1/sr^2, so the error of
    the sr=256 estimate is about a third of its distance to the sr=128 one; that distance is the
    (generous) tolerance.
    """
    gen = _gen("prroi_limit")
    x = _random_map(gen, torch.float64)
    n = 16

    def u(hi: torch.Tensor | float) -> torch.Tensor:
        return torch.rand(n, generator=gen, dtype=torch.float64) * hi

    x1, y1 = u(W - 2), u(H - 2)
    x2, y2 = x1 + u(W - 1 - x1), y1 + u(H - 1 - y1)
    batch = torch.randint(0, N, (n,), generator=gen).double()
    # +0.5: with aligned=True the box is [x1, x2] x [y1, y2] in pixel-centre coordinates
    rois = torch.stack([batch, x1 + 0.5, y1 + 0.5, x2 + 0.5, y2 + 0.5], dim=1)
    actual = precise_roi_pool(x, rois, (3, 2), 1.0, True)
    dense = tv_ops.roi_align(x, rois, (3, 2), 1.0, 256, True)
    coarse = tv_ops.roi_align(x, rois, (3, 2), 1.0, 128, True)
    spread = float((dense - coarse).abs().max())
    assert spread < 1e-3
    torch.testing.assert_close(actual, dense, rtol=0, atol=spread)


# --------------------------------------------------------------------------- multiscale


IMAGE_SHAPES = [
    (256, 320),
    (240, 300),
]  # the largest is 256 x 320: levels 64x80, 32x40, 16x20, 8x10
FPN_SCALES = [1 / 4, 1 / 8, 1 / 16, 1 / 32]


def _fpn_features(gen, dtype):
    img_h, img_w = 256, 320
    return [_random_map(gen, dtype, (2, C, int(img_h * s), int(img_w * s))) for s in FPN_SCALES]


def _fpn_boxes(gen, dtype) -> list[torch.Tensor]:
    """Per-image [L, 4] boxes: sqrt(area) 8 to 400 px, squares exactly on level edges, zero-size."""
    out = []
    for img_h, img_w in IMAGE_SHAPES:
        n = 40
        side = torch.exp(
            math.log(8) + (math.log(400) - math.log(8)) * torch.rand(n, generator=gen, dtype=torch.float64)
        )
        aspect = torch.exp((torch.rand(n, generator=gen, dtype=torch.float64) - 0.5) * 2 * math.log(2))
        bw, bh = side / aspect.sqrt(), side * aspect.sqrt()
        x1 = torch.rand(n, generator=gen, dtype=torch.float64) * (img_w - bw).clamp(min=0)
        y1 = torch.rand(n, generator=gen, dtype=torch.float64) * (img_h - bh).clamp(min=0)
        boxes = [torch.stack([x1, y1, x1 + bw, y1 + bh], dim=1)]
        # squares of side 56 * 2^k sit exactly on the level boundaries of the FPN level mapper
        for s in (28.0, 56.0, 112.0, 224.0, 448.0, 896.0):
            boxes.append(torch.tensor([[3.0, 5.0, 3.0 + s, 5.0 + s]], dtype=torch.float64))
        boxes.append(torch.tensor([[10.0, 20.0, 10.0, 60.0], [7.0, 7.0, 7.0, 7.0]], dtype=torch.float64))
        out.append(torch.cat(boxes).to(dtype))
    return out


def _tv_multiscale(features, boxes, output_size, sampling_ratio, canonical_size=224, canonical_level=4):
    names = [f"p{i}" for i in range(2, 2 + len(features))]
    pooler = tv_ops.MultiScaleRoIAlign(
        names,
        output_size,
        sampling_ratio,
        canonical_scale=canonical_size,
        canonical_level=canonical_level,
    )
    return pooler(OrderedDict(zip(names, features, strict=True)), boxes, IMAGE_SHAPES)


def _assign_levels(boxes: torch.Tensor, canonical_size: float, canonical_level: int, k_min: int, k_max: int):
    """FPN eq. 1, k = floor(k0 + log2(sqrt(wh) / 224)), with torchvision's 1e-6 nudge, clamped."""
    area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    lvl = torch.floor(canonical_level + torch.log2(area.sqrt() / canonical_size) + 1e-6)
    return lvl.clamp(k_min, k_max).long() - k_min


@pytest.mark.parametrize("box_format", ["list", "tensor"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("sampling_ratio", [-1, 2])
@pytest.mark.parametrize("output_size", [7, (2, 3)], ids=str)
@pytest.mark.parametrize(("canonical_size", "canonical_level"), [(224, 4), (160, 5)])
def test_multiscale_roi_align_matches_torchvision(
    canonical_size, canonical_level, output_size, sampling_ratio, dtype, box_format
):
    gen = _gen("msra", canonical_size, output_size, sampling_ratio, dtype, box_format)
    features = _fpn_features(gen, dtype)
    boxes = _fpn_boxes(gen, dtype)
    expected = _tv_multiscale(features, boxes, output_size, sampling_ratio, canonical_size, canonical_level)
    if box_format == "list":
        arg = boxes
    else:
        arg = torch.cat([torch.cat([torch.full((len(b), 1), i, dtype=dtype), b], 1) for i, b in enumerate(boxes)])
    actual = multiscale_roi_align(
        features,
        arg,
        output_size,
        FPN_SCALES,
        sampling_ratio,
        False,
        canonical_size=canonical_size,
        canonical_level=canonical_level,
    )
    assert actual.dtype == dtype
    torch.testing.assert_close(actual, expected, **_tol(dtype, max(f.abs().max() for f in features)))


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_multiscale_roi_align_backward(dtype):
    gen = _gen("msra_bwd", dtype)
    features = [f.requires_grad_(True) for f in _fpn_features(gen, dtype)]
    boxes = _fpn_boxes(gen, dtype)
    expected = _tv_multiscale(features, boxes, 7, 2)
    grad_output = torch.randn(expected.shape, generator=gen, dtype=torch.float64).to(dtype)
    grads_tv = torch.autograd.grad(expected, features, grad_output)
    actual = multiscale_roi_align(features, boxes, 7, FPN_SCALES, 2, False)
    grads = torch.autograd.grad(actual, features, grad_output)
    for g, g_tv in zip(grads, grads_tv, strict=True):
        torch.testing.assert_close(g, g_tv, **_tol(dtype, g_tv.abs().max()))


def test_multiscale_roi_align_aligned_matches_torchvision_per_level():
    """tv MultiScaleRoIAlign has no ``aligned``: use its level rule and tv roi_align per level."""
    gen = _gen("msra_aligned")
    features = _fpn_features(gen, torch.float64)
    boxes = _fpn_boxes(gen, torch.float64)
    rois = torch.cat([torch.cat([torch.full((len(b), 1), float(i)), b], 1) for i, b in enumerate(boxes)])
    levels = _assign_levels(rois[:, 1:], 224, 4, 2, 5)
    expected = torch.zeros(len(rois), C, 7, 7, dtype=torch.float64)
    for lvl, (feat, scale) in enumerate(zip(features, FPN_SCALES, strict=True)):
        idx = torch.nonzero(levels == lvl).flatten()
        expected[idx] = tv_ops.roi_align(feat, rois[idx], 7, scale, 2, True)
    actual = multiscale_roi_align(features, rois, 7, FPN_SCALES, 2, True)
    torch.testing.assert_close(actual, expected, **_tol(torch.float64, 5.0))
    # the reference really is torchvision's rule, and every level is used
    torch.testing.assert_close(
        _tv_multiscale(features, boxes, 7, 2),
        multiscale_roi_align(features, rois, 7, FPN_SCALES, 2, False),
        **_tol(torch.float64, 5.0),
    )
    assert set(levels.tolist()) == {0, 1, 2, 3}


def test_multiscale_level_rule_matches_torchvision_near_level_edges():
    """Squares a hair under/over 56 * 2^k px: torchvision adds its 1e-6 to log2(s / 224)."""
    gen = _gen("msra_edges")
    features = _fpn_features(gen, torch.float64)
    rel = torch.tensor([-1e-4, -1e-5, -3e-6, -2e-6, -1e-6, -5e-7, -1e-7, 0.0, 1e-7, 1e-6])
    sides = (torch.tensor([112.0, 224.0, 448.0])[:, None] * (1 + rel.double())).flatten()
    boxes = torch.stack([sides * 0 + 3, sides * 0 + 5, 3 + sides, 5 + sides], dim=1)
    boxes = [boxes, boxes.flip(0)]
    expected = _tv_multiscale(features, boxes, 2, 2)
    actual = multiscale_roi_align(features, boxes, 2, FPN_SCALES, 2, False)
    torch.testing.assert_close(actual, expected, **_tol(torch.float64, 5.0))


def test_multiscale_roi_align_module_and_empty():
    gen = _gen("msra_module")
    features = _fpn_features(gen, torch.float32)
    boxes = _fpn_boxes(gen, torch.float32)
    module = MultiScaleRoIAlign(output_size=7, scales=FPN_SCALES, sampling_ratio=2)
    torch.testing.assert_close(
        module(features, boxes), _tv_multiscale(features, boxes, 7, 2), **_tol(torch.float32, 5.0)
    )
    empty = [torch.zeros(0, 4), torch.zeros(0, 4)]
    out = multiscale_roi_align(features, empty, (2, 3), FPN_SCALES, 2, False)
    assert out.shape == (0, C, 2, 3) == _tv_multiscale(features, empty, (2, 3), 2).shape


# --------------------------------------------------------------------------- property-based


if given is not None:
    _coord = st.floats(-8.0, 28.0, allow_nan=False, allow_infinity=False, width=32)

    @settings(max_examples=150, deadline=None, derandomize=True, database=None)
    @given(
        box=st.tuples(_coord, _coord, _coord, _coord),
        output_size=st.tuples(st.integers(1, 5), st.integers(1, 5)),
        sampling_ratio=st.integers(-1, 4),
        aligned=st.booleans(),
        spatial_scale=st.sampled_from([1.0, 0.5, 0.25]),
    )
    def test_hypothesis_single_box(box, output_size, sampling_ratio, aligned, spatial_scale):
        inverted = box[2] < box[0] or box[3] < box[1]
        check_align = not (aligned and sampling_ratio <= 0 and inverted)  # see _drop_inverted
        x = _random_map(_gen("hyp"), torch.float64, (1, C, 11, 14))
        rois = torch.tensor([[0.0, *box]], dtype=torch.float64) / torch.tensor([1.0] + [spatial_scale] * 4)
        if check_align:
            torch.testing.assert_close(
                roi_align(x, rois, output_size, spatial_scale, sampling_ratio, aligned),
                tv_ops.roi_align(x, rois, output_size, spatial_scale, sampling_ratio, aligned),
                **_tol(torch.float64, x.abs().max()),
            )
        xd = _distinct_map(_gen("hyp"), torch.float64, (1, C, 11, 14))
        out_tv, grad_tv = _grad(
            lambda t: tv_ops.roi_pool(t, rois, output_size, spatial_scale),
            xd,
            torch.ones(1, C, *output_size, dtype=torch.float64),
        )
        out, grad = _grad(
            lambda t: roi_pool(t, rois, output_size, spatial_scale),
            xd,
            torch.ones(1, C, *output_size, dtype=torch.float64),
        )
        torch.testing.assert_close(out, out_tv, rtol=0, atol=0)
        torch.testing.assert_close(grad, grad_tv, rtol=0, atol=0)


# --------------------------------------------------------------------------- TorchScript, deployment

_JIT_DEPRECATED = pytest.mark.filterwarnings("ignore:`torch.jit.*deprecated")


@_JIT_DEPRECATED
@pytest.mark.parametrize("aligned", [False, True])
@pytest.mark.parametrize("op", ["roi_align", "roi_pool"])
def test_scripted_gradcheck_like_torchvision(op, aligned):
    """torchvision's RoI tests script the op, call it positionally and gradcheck the scripted call:
    roicli's scripted ops pass the same, with torchvision's values and gradients."""
    x = torch.arange(2 * 10 * 10, dtype=torch.float64).view(1, 2, 10, 10).sin()
    rois = torch.tensor([[0, 0, 0, 9, 9], [0, 0, 5, 4, 9], [0, 5, 5, 9, 9]], dtype=torch.float64)
    if op == "roi_align":
        scripted, tv = torch.jit.script(roi_align), torch.jit.script(tv_ops.roi_align)
        args = ((5, 5), 1.0, 1, aligned)
    else:
        scripted, tv = torch.jit.script(roi_pool), torch.jit.script(tv_ops.roi_pool)
        args = ((5, 5), 0.5 if aligned else 1.0)
    assert torch.autograd.gradcheck(lambda z: scripted(z, rois, *args), (x.clone().requires_grad_(True),))
    out, grad = _grad(lambda t: scripted(t, rois, *args), x, gen=_gen("script", op, aligned))
    out_tv, grad_tv = _grad(lambda t: tv(t, rois, *args), x, gen=_gen("script", op, aligned))
    torch.testing.assert_close(out, out_tv, **_tol(torch.float64, 400))
    torch.testing.assert_close(grad, grad_tv, **_tol(torch.float64, 10))


@_JIT_DEPRECATED
def test_scripted_boxes_list_and_modules_like_torchvision():
    """A scripted function taking `List[Tensor]` boxes, and scripted modules, match torchvision's."""
    from typing import List  # noqa: UP035  (TorchScript)

    def pooled(x: torch.Tensor, boxes: List[torch.Tensor]) -> torch.Tensor:  # noqa: UP006
        return roi_align(x, boxes, 5, 0.5, 2, True) + roi_pool(x, boxes, 5, 0.5)

    def pooled_tv(x: torch.Tensor, boxes: List[torch.Tensor]) -> torch.Tensor:  # noqa: UP006
        return tv_ops.roi_align(x, boxes, 5, 0.5, 2, True) + tv_ops.roi_pool(x, boxes, 5, 0.5)

    gen = _gen("script-list")
    x = _random_map(gen, torch.float32, (2, 3, 12, 14))
    boxes = [torch.tensor([[0.0, 0, 18, 18], [4, 2, 20, 26]]), torch.tensor([[10.0, 6, 27, 22]])]
    torch.testing.assert_close(torch.jit.script(pooled)(x, boxes), torch.jit.script(pooled_tv)(x, boxes))
    rois = torch.cat([torch.cat([torch.full((len(b), 1), float(i)), b], 1) for i, b in enumerate(boxes)])
    for ours, theirs in [
        (RoIAlign(3, 0.5, 2, True), tv_ops.RoIAlign(3, 0.5, 2, True)),
        (RoIPool((2, 3), 0.5), tv_ops.RoIPool((2, 3), 0.5)),
    ]:
        torch.testing.assert_close(torch.jit.script(ours)(x, rois), theirs(x, rois))


def test_mask_rcnn_with_roicli_patched_in(monkeypatch):
    """torchvision's Mask R-CNN (random weights, no download) gives the same detections and masks
    with roicli's roi_align in its poolers as with its own."""
    from torchvision.models.detection import maskrcnn_resnet50_fpn

    torch.manual_seed(0)
    model = maskrcnn_resnet50_fpn(
        weights=None, weights_backbone=None, num_classes=3, min_size=128, max_size=160,
        box_score_thresh=0.0, box_detections_per_img=20,
    ).eval()
    gen = _gen("maskrcnn")
    images = [torch.rand(3, 120, 150, generator=gen), torch.rand(3, 128, 128, generator=gen)]
    with torch.no_grad():
        want = model(images)
        monkeypatch.setattr(torchvision.ops.poolers, "roi_align", roi_align)
        got = model(images)
    assert sum(len(d["boxes"]) for d in want) > 0
    for g, w in zip(got, want, strict=True):
        for key in ("boxes", "labels", "scores", "masks"):
            torch.testing.assert_close(g[key], w[key], rtol=1e-4, atol=1e-4)
