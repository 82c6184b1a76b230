"""roicli's Triton kernels against torchvision's CUDA kernels on one GPU: correctness first, then speed.

    PYTHONPATH=src python benchmarks/bench_triton_cuda.py [--repeat 21] [--workload maskrcnn-box ...]

Needs a CUDA GPU, a CUDA build of torch with torchvision, and triton (`pip install 'roicli[triton]'`),
without TRITON_INTERPRET. Each workload is checked first (Triton vs torchvision, and vs roicli's torch
kernels on the same GPU, which share the Triton kernels' geometry), then timed in interleaved pairs
(triton, torchvision, triton, ...; CUDA synchronised around each call, the first calls compile and
are not timed). The table gives median ms and the median of the per-pair ratios triton / torchvision
(< 1: Triton is faster). Two Triton rows per op: `kernel` calls the kernel functions with
pre-normalised RoIs; `op` is the public front door forced onto Triton (validation included).
Backward passes use atomic adds, as torchvision's do, so gradients are compared with a tolerance.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import torch

WORKLOADS = {
    # name: (map shape, RoIs, image size, output, spatial scale, sampling ratio, aligned, box sides)
    "maskrcnn-box": ((2, 256, 200, 272), 1000, (800, 1088), 7, 1 / 4, 2, True, (32.0, 512.0)),
    "maskrcnn-mask": ((2, 256, 200, 272), 100, (800, 1088), 14, 1 / 4, 2, True, (32.0, 512.0)),
    "fastrcnn-adaptive": ((1, 512, 38, 50), 2000, (600, 800), 7, 1 / 16, -1, False, (16.0, 512.0)),
    "small": ((1, 64, 64, 64), 64, (256, 256), 7, 1 / 4, 2, True, (16.0, 200.0)),
}


def boxes(gen, k, image_hw, n_images, sides, device):
    """Tensor[K, 5] detection-like boxes: sqrt(area) and aspect log-uniform, inside the image."""
    h_img, w_img = image_hw
    u = torch.rand(3, k, generator=gen, dtype=torch.float64)
    side = torch.exp(torch.log(torch.tensor(sides[0])) + u[0] * torch.log(torch.tensor(sides[1] / sides[0])))
    aspect = torch.exp((u[1] - 0.5) * 2 * torch.log(torch.tensor(2.0)))
    w, h = (side / aspect.sqrt()).clamp(max=w_img - 1), (side * aspect.sqrt()).clamp(max=h_img - 1)
    x1 = u[2] * (w_img - w)
    y1 = torch.rand(k, generator=gen, dtype=torch.float64) * (h_img - h)
    batch = torch.randint(0, n_images, (k,), generator=gen).double()
    return torch.stack([batch, x1, y1, x1 + w, y1 + h], 1).float().to(device)


def timed(fn) -> float:
    torch.cuda.synchronize()
    t = time.perf_counter()
    fn()
    torch.cuda.synchronize()
    return (time.perf_counter() - t) * 1e3


def pairs(a, b, repeat: int) -> tuple[float, float, float]:
    """Median ms of a and b and the median ratio a/b over interleaved pairs (after 2 warm-up pairs)."""
    for _ in range(2):
        a(), b()
    ta, tb = [], []
    for _ in range(repeat):
        ta.append(timed(a))
        tb.append(timed(b))
    return statistics.median(ta), statistics.median(tb), statistics.median(x / y for x, y in zip(ta, tb))


def fwd_bwd(op, x):
    leaf = x.detach().clone().requires_grad_(True)

    def run():
        op(leaf).sum().backward()
        leaf.grad = None

    return run


def run_workload(name: str, repeat: int, dtype: torch.dtype, tol: float, tv, tk, device: str = "cuda") -> int:
    """Check, then time, one workload; returns the number of failed checks."""
    from roicli import ops
    from roicli.ops import kernels
    from roicli.ops._validate import as_rois

    shape, k, image_hw, out, scale, sr, aligned, sides = WORKLOADS[name]
    dev = torch.device(device)
    gen = torch.Generator().manual_seed(0)
    x = torch.relu(torch.randn(shape, generator=gen)).to(dev, dtype)
    b = boxes(gen, k, image_hw, shape[0], sides, dev)
    rois = as_rois(b, x)
    n, c, h, w = shape
    ones = torch.ones((k, c, out, out), device=dev, dtype=dtype)

    def align_op(t, mode="avg"):
        return ops.roi_align(t, b, out, scale, sr, aligned, mode=mode)

    def pool_op(t):
        return ops.roi_pool(t, b, out, scale)

    def tv_align(t):
        return tv.roi_align(t, b, out, scale, sr, aligned)

    def tv_pool(t):
        return tv.roi_pool(t, b, out, scale)

    # correctness: triton vs roicli's torch kernels on this GPU and vs torchvision (None: no such op)
    failed = 0
    checks = {
        "roi_align": (align_op, tv_align),
        "roi_align max": (lambda t: align_op(t, "max"), None),
        "roi_pool": (pool_op, tv_pool),
        "precise_roi_pool": (lambda t: ops.precise_roi_pool(t, b, out, scale, aligned), None),
    }
    for op_name, (ours, theirs) in checks.items():
        leaves = [x.detach().clone().requires_grad_(True) for _ in range(3)]
        with kernels.use("triton"):
            got = ours(leaves[0])
            got.backward(ones)
        with kernels.use("torch"):
            ref = ours(leaves[1])
            ref.backward(ones)
        compare = [("vs torch kernels", got, ref), ("grad vs torch kernels", leaves[0].grad, leaves[1].grad)]
        if theirs is not None:
            want = theirs(leaves[2])
            want.backward(ones)
            compare += [("vs torchvision", got, want), ("grad vs torchvision", leaves[0].grad, leaves[2].grad)]
        for label, a, want_t in compare:
            err = (a.double() - want_t.double()).abs().max().item()
            size = want_t.double().abs().max().item()
            ok = err <= tol * max(1.0, size)
            failed += not ok
            verdict = "ok" if ok else "MISMATCH"
            print(f"{verdict:8} {name} {op_name} {label}: max abs error {err:.3g} (max |ref| {size:.3g})")

    # speed: `kernel` = the kernel functions on normalised RoIs; `op` = the front door forced onto triton
    def kernel_align_fb():
        _, arg = tk.roi_align_forward(x, rois, scale, out, out, sr, aligned, "avg")
        return tk.roi_align_backward(ones, rois, arg, scale, out, out, sr, aligned, "avg", n, c, h, w)

    def kernel_pool_fb():
        _, arg = tk.roi_pool_forward(x, rois, scale, out, out)
        return tk.roi_pool_backward(ones, rois, arg, scale, out, out, n, c, h, w)

    rows = [
        ("roi_align fwd", "kernel", lambda: tk.roi_align_forward(x, rois, scale, out, out, sr, aligned, "avg"),
         lambda: tv_align(x)),
        ("roi_align fwd+bwd", "kernel", kernel_align_fb, fwd_bwd(tv_align, x)),
        ("roi_pool fwd", "kernel", lambda: tk.roi_pool_forward(x, rois, scale, out, out), lambda: tv_pool(x)),
        ("roi_pool fwd+bwd", "kernel", kernel_pool_fb, fwd_bwd(tv_pool, x)),
        ("roi_align fwd", "op", lambda: align_op(x), lambda: tv_align(x)),
        ("roi_align fwd+bwd", "op", fwd_bwd(align_op, x), fwd_bwd(tv_align, x)),
        ("roi_pool fwd+bwd", "op", fwd_bwd(pool_op, x), fwd_bwd(tv_pool, x)),
    ]
    with kernels.use("triton"):
        for op_name, path, ours, theirs in rows:
            ta, tb, ratio = pairs(ours, theirs, repeat)
            print(f"{name:18} {op_name:22} {path:6} {ta:10.3f} {tb:9.3f} {ratio:7.2f}")
    return failed


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workload", nargs="+", choices=list(WORKLOADS), default=list(WORKLOADS))
    parser.add_argument("--repeat", type=int, default=21)
    parser.add_argument("--dtype", choices=["float32", "float16", "bfloat16"], default="float32")
    args = parser.parse_args(argv)
    if os.environ.get("TRITON_INTERPRET") == "1":
        sys.exit("bench_triton_cuda: unset TRITON_INTERPRET (the interpreter runs on the CPU, not the GPU)")
    if not torch.cuda.is_available():
        sys.exit("bench_triton_cuda: needs a CUDA GPU and a CUDA build of torch; none found, nothing was run")
    try:
        import torchvision.ops as tv
    except ImportError:
        sys.exit("bench_triton_cuda: needs torchvision (a CUDA build matching torch) for the comparison")
    try:
        import roicli.ops.kernels.triton_kernels as tk
    except ImportError as exc:
        sys.exit(f"bench_triton_cuda: needs triton ({exc}); pip install 'roicli[triton]'")
    dtype = getattr(torch, args.dtype)
    tol = {"float32": 1e-4, "float16": 2e-2, "bfloat16": 1e-1}[args.dtype]
    print(f"{torch.cuda.get_device_name()}  torch {torch.__version__}  {args.dtype}  repeat {args.repeat}")
    print(f"{'workload':18} {'op':22} {'path':6} {'triton ms':>10} {'tv ms':>9} {'ratio':>7}")
    failed = sum(run_workload(name, args.repeat, dtype, tol, tv, tk) for name in args.workload)
    if failed:
        print(f"{failed} correctness check(s) failed")
        return 1
    print("correctness: all checks passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
