"""Time the kernel implementations of roicli's ops against torchvision and against the memory floor.

    python benchmarks/bench_kernels.py [--workload NAME ...] [--op TEXT] [--threads 1 2] [--repeat 5] [--load]
                                       [--no-torch] [--against FILE.cpp]

Rows call the kernel functions (`roicli.ops.kernels.cpp`, `.torch_ref`) directly, so the numbers are
the kernels' own, without the front door. Every timing is paired with its baseline in one process,
interleaved A B B A (so drifting load hits both alike); a row's ratio is the median over `--repeat`
pairs of (A1 + A2) / (B1 + B2):

* `cpp/tv`, `torch/tv`: against torchvision's op (forward; forward+backward through autograd with
  the gradient of `.sum()`, the kernels get the same all-ones gradient);
* `cpp/floor`: against the floor, the same-process time to allocate and fill the output (and for
  forward+backward also the gradient of the input) and read the input once (`x.sum()`);
* `cpp/against` (with `--against FILE.cpp`): against another version of `cpu/roi_kernels.cpp`, built
  beside this one in the same process (e.g. `git show REV:src/roicli/ops/kernels/cpu/roi_kernels.cpp`):
  a kernel change's A/B, with bit-equality of the two outputs checked first.

`--load` runs `python -c "while True: pass"` beside the benchmark (one busy core), like a user's
machine that is not idle. The machine running this is shared: treat differences under ~10% as noise.
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from bench_ops import detection_boxes, feature_map

try:
    from torchvision import ops as tv_ops
except ImportError:
    tv_ops = None

from roicli.ops.kernels import cpp

try:
    from roicli.ops.kernels import torch_ref
except ImportError:
    torch_ref = None

Fn = Callable[[], object]


class Against:
    """cpp.py's kernel functions served by another build of a kernel source: each call points cpp.py at
    that build (its operators renamed to `roicli_cpp_against`) for its duration."""

    def __init__(self, source: Path) -> None:
        from torch.utils import cpp_extension

        text = source.read_text().replace("TORCH_LIBRARY(roicli_cpp,", "TORCH_LIBRARY(roicli_cpp_against,")
        digest = hashlib.sha256(text.encode()).hexdigest()[:16]
        directory = cpp.build_directory().parent / f"against-{digest}"
        directory.mkdir(parents=True, exist_ok=True)
        (directory / "kernels.cpp").write_text(text)
        name = f"roicli_against_{digest}"
        if not (directory / f"{name}.so").exists():
            cpp_extension.load(name=name, sources=[str(directory / "kernels.cpp")], extra_cflags=cpp._CFLAGS,
                               extra_ldflags=cpp._LDFLAGS, build_directory=str(directory), is_python_module=False)
        torch.ops.load_library(str(directory / f"{name}.so"))
        self.ops = torch.ops.roicli_cpp_against

    def __getattr__(self, name: str) -> Callable[..., object]:
        fn = getattr(cpp, name)

        def call(*args: object) -> object:
            mine = cpp.load()
            cpp._state["ops"] = self.ops
            try:
                return fn(*args)
            finally:
                cpp._state["ops"] = mine

        return call


_against: Against | None = None  # --against


@dataclass
class Row:
    workload: str
    op: str
    impls: dict[str, Fn | None]  # cpp, torch, tv, floor


def _floor(x: torch.Tensor, out_shape: tuple[int, ...], backward: bool) -> Fn:
    def run() -> object:
        out = torch.empty(out_shape, dtype=x.dtype).fill_(1.0)
        x.sum()
        if backward:
            torch.empty_like(x).fill_(0.0)
        return out

    return run


def _rows(workload, label, x, shape, call, tv_call, backward_too=True) -> list[Row]:
    """A fwd row (and a fwd+bwd row): `call(kernel_module, backward)` runs the op on cpp and torch,
    `tv_call(input)` on torchvision; `shape` is the output's, for the floor."""
    rows = []
    for backward in (False, True) if backward_too else (False,):
        impls: dict[str, Fn | None] = {
            name: None if mod is None else functools.partial(call, mod, backward)
            for name, mod in (("cpp", cpp), ("torch", torch_ref), ("against", _against))
        }
        impls["tv"] = _tv(tv_call, x, backward)
        impls["floor"] = _floor(x, shape, backward)
        rows.append(Row(workload, f"{label} {'fwd+bwd' if backward else 'fwd'}", impls))
    return rows


def _align_rows(workload, x, rois, size, scale, sr, aligned, backward_too=True) -> list[Row]:
    def call(mod, backward: bool) -> object:
        out, arg = mod.roi_align_forward(x, rois, scale, size, size, sr, aligned, "avg")
        if backward:
            grad = torch.ones_like(out)
            return mod.roi_align_backward(grad, rois, arg, scale, size, size, sr, aligned, "avg", *x.shape)
        return out

    label = f"roi_align {'adaptive' if sr <= 0 else f'sr={sr}'}"
    shape = (rois.shape[0], x.shape[1], size, size)
    return _rows(workload, label, x, shape, call, lambda t: tv_ops.roi_align(t, rois, size, scale, sr, aligned),
                 backward_too)  # fmt: skip


def _pool_rows(workload, x, rois, size, scale, backward_too=True) -> list[Row]:
    def call(mod, backward: bool) -> object:
        if not backward and hasattr(mod, "roi_pool_values"):  # what eager inference calls
            return mod.roi_pool_values(x, rois, scale, size, size)
        out, arg = mod.roi_pool_forward(x, rois, scale, size, size)
        if backward:
            return mod.roi_pool_backward(torch.ones_like(out), rois, arg, scale, size, size, *x.shape)
        return out

    shape = (rois.shape[0], x.shape[1], size, size)
    return _rows(workload, "roi_pool", x, shape, call, lambda t: tv_ops.roi_pool(t, rois, size, scale), backward_too)


def _tv(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, backward: bool) -> Fn | None:
    if tv_ops is None:
        return None
    if not backward:
        def fwd() -> object:
            with torch.no_grad():
                return fn(x)

        return fwd
    leaf = x.detach().clone().requires_grad_(True)

    def fwd_bwd() -> object:
        fn(leaf).sum().backward()
        grad, leaf.grad = leaf.grad, None
        return grad

    return fwd_bwd


def maskrcnn_box(gen: torch.Generator) -> list[Row]:
    x = feature_map(gen, (2, 256, 200, 272), torch.device("cpu"))
    rois = detection_boxes(gen, 1000, (800, 1088), 2)
    return _align_rows("maskrcnn-box", x, rois, 7, 1 / 4, 2, True) + _pool_rows("maskrcnn-box", x, rois, 7, 1 / 4)


def maskrcnn_mask(gen: torch.Generator) -> list[Row]:
    x = feature_map(gen, (2, 256, 200, 272), torch.device("cpu"))
    rois = detection_boxes(gen, 100, (800, 1088), 2)
    return _align_rows("maskrcnn-mask", x, rois, 14, 1 / 4, 2, True)


def fastrcnn(gen: torch.Generator) -> list[Row]:
    x = feature_map(gen, (1, 512, 38, 50), torch.device("cpu"))
    rois = detection_boxes(gen, 2000, (600, 800), 1, side_range=(16.0, 512.0))
    return _align_rows("fastrcnn", x, rois, 7, 1 / 16, -1, False, False) + _pool_rows(
        "fastrcnn", x, rois, 7, 1 / 16, False
    )


def small(gen: torch.Generator) -> list[Row]:
    x = feature_map(gen, (1, 64, 64, 64), torch.device("cpu"))
    rois = detection_boxes(gen, 64, (256, 256), 1, side_range=(16.0, 256.0))
    return _align_rows("small", x, rois, 7, 1 / 4, 2, True, False) + _pool_rows("small", x, rois, 7, 1 / 4, False)


WORKLOADS = {"maskrcnn-box": maskrcnn_box, "maskrcnn-mask": maskrcnn_mask, "fastrcnn": fastrcnn, "small": small}


def _ms(fn: Fn) -> float:
    start = time.perf_counter()
    fn()
    return (time.perf_counter() - start) * 1e3


def paired(a: Fn, b: Fn, repeat: int) -> tuple[float, float, float]:
    """(median ms of a, median ms of b, median over pairs of (a1 + a2) / (b1 + b2)), order A B B A."""
    ta, tb, ratios = [], [], []
    for _ in range(repeat):
        a1, b1, b2, a2 = _ms(a), _ms(b), _ms(b), _ms(a)
        ta += [a1, a2]
        tb += [b1, b2]
        ratios.append((a1 + a2) / (b1 + b2))
    return statistics.median(ta), statistics.median(tb), statistics.median(ratios)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workload", nargs="*", choices=sorted(WORKLOADS), default=list(WORKLOADS))
    parser.add_argument("--threads", nargs="*", type=int, default=[1, 2])
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--load", action="store_true", help="keep one core busy with another process")
    parser.add_argument("--no-torch", action="store_true", help="skip the pure-torch kernels (slow)")
    parser.add_argument("--op", default="", help="only the rows whose op contains this text, e.g. 'roi_pool'")
    parser.add_argument("--against", type=Path, help="another roi_kernels.cpp to time the current one against")
    args = parser.parse_args(argv)

    cpp.load()  # build outside the timings
    global _against
    _against = Against(args.against) if args.against else None
    busy = subprocess.Popen([sys.executable, "-c", "while True: pass"]) if args.load else None
    try:
        print(f"torch {torch.__version__}, tv {'yes' if tv_ops else 'no'}, load: {'one busy core' if busy else 'none'}")
        print(f"{'workload':14} {'op':28} {'thr':>3} {'cpp ms':>8} {'torch ms':>9} {'tv ms':>8} {'floor ms':>8} "
              f"{'cpp/tv':>7} {'torch/tv':>8} {'cpp/floor':>9}" + (f" {'cpp/against':>11}" if _against else ""))
        for name in args.workload:
            rows = WORKLOADS[name](torch.Generator().manual_seed(0))
            for threads in args.threads:
                torch.set_num_threads(threads)
                for row in (r for r in rows if args.op in r.op):
                    _report(row, threads, args.repeat, not args.no_torch)
    finally:
        if busy is not None:
            busy.kill()
            busy.wait()
    return 0


def _report(row: Row, threads: int, repeat: int, with_torch: bool) -> None:
    impls = row.impls
    for fn in impls.values():  # warm up (first-touch, caches, lazy init)
        if fn is not None:
            fn()
    cells = {"cpp": "-", "torch": "-", "tv": "-", "floor": "-", "cpp/tv": "-", "torch/tv": "-", "cpp/floor": "-"}
    if impls["tv"] is not None:
        a, b, r = paired(impls["cpp"], impls["tv"], repeat)
        cells.update({"cpp": f"{a:.2f}", "tv": f"{b:.2f}", "cpp/tv": f"{r:.3f}"})
        if with_torch and impls["torch"] is not None:
            a, _, r = paired(impls["torch"], impls["tv"], repeat)
            cells.update({"torch": f"{a:.2f}", "torch/tv": f"{r:.3f}"})
    elif with_torch and impls["torch"] is not None:
        a, b, r = paired(impls["cpp"], impls["torch"], repeat)
        cells.update({"cpp": f"{a:.2f}", "torch": f"{b:.2f}"})
    a, b, r = paired(impls["cpp"], impls["floor"], repeat)
    cells.update({"floor": f"{b:.2f}", "cpp/floor": f"{r:.2f}"})
    if cells["cpp"] == "-":
        cells["cpp"] = f"{a:.2f}"
    against = ""
    if impls["against"] is not None:
        if not torch.equal(impls["cpp"](), impls["against"]()):
            raise SystemExit(f"{row.workload} {row.op}: the two kernel versions give different results")
        against = f" {paired(impls['cpp'], impls['against'], repeat)[2]:>11.3f}"
    print(f"{row.workload:14} {row.op:28} {threads:>3} {cells['cpp']:>8} {cells['torch']:>9} {cells['tv']:>8} "
          f"{cells['floor']:>8} {cells['cpp/tv']:>7} {cells['torch/tv']:>8} {cells['cpp/floor']:>9}{against}",
          flush=True)


if __name__ == "__main__":
    sys.exit(main())
