"""Time roicli.ops against torchvision.ops on detection-sized workloads.

    python benchmarks/bench_ops.py [--device cpu|cuda] [--workload NAME ...] [--repeat N] [--json]

Every selected workload is built from a seeded generator, each op is run ``--warmup`` times and then
``--repeat`` times; the table shows the median wall time in ms of roicli and (when importable)
torchvision, their ratio (roicli / torchvision, < 1 means roicli is faster) and the peak memory one
call adds on top of what was allocated before it:

* cuda: ``torch.cuda.max_memory_allocated()`` minus the memory allocated before the call;
* cpu (Linux): the process's peak resident set size (``VmHWM``, reset through
  ``/proc/self/clear_refs``) minus its resident size before the call. glibc is told to return
  large blocks to the system right away (``mallopt(M_MMAP_THRESHOLD)``, ``malloc_trim``) so every
  call's big buffers are fresh pages; that is only done after all timings, so it cannot slow them
  down. It counts pages touched, not bytes asked for (resolution about 1 MiB).

Next to them, ``out MiB`` is the size of the op's output (of the forward, also on the forward+backward
row) and ``rc - tv - out`` roicli's peak minus torchvision's and the output: the memory goal is that it
stays at or below 0 (within the ~1 MiB resolution) on every row.

Memory is measured on one extra call after the timed ones. Run from the repository root with
``PYTHONPATH=src`` (or with roicli installed). ``--json`` prints the same results as one JSON
document on stdout instead of the table.
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import json
import math
import os
import platform
import statistics
import sys
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import torch

try:
    from roicli import ops as roicli_ops
except ImportError as exc:  # the table still shows torchvision alone
    roicli_ops = None
    _ROICLI_IMPORT_ERROR = str(exc)
else:
    _ROICLI_IMPORT_ERROR = ""

try:
    import torchvision
    from torchvision import ops as tv_ops
except ImportError:
    torchvision = None
    tv_ops = None


# --------------------------------------------------------------------------- data


def detection_boxes(
    gen: torch.Generator,
    k: int,
    image_hw: tuple[int, int],
    n_images: int,
    side_range: tuple[float, float] = (32.0, 512.0),
) -> torch.Tensor:
    """Tensor[K, 5] (batch_idx, x1, y1, x2, y2) of realistic detection boxes in image pixels.

    sqrt(area) is log-uniform in ``side_range``, the aspect ratio h / w log-uniform in [0.5, 2],
    and the box is placed uniformly inside the image (shrunk to fit if needed).
    """
    img_h, img_w = image_hw

    def log_uniform(lo: float, hi: float) -> torch.Tensor:
        u = torch.rand(k, generator=gen, dtype=torch.float64)
        return torch.exp(math.log(lo) + (math.log(hi) - math.log(lo)) * u)

    side = log_uniform(*side_range)
    aspect = log_uniform(0.5, 2.0)
    w = (side / aspect.sqrt()).clamp(max=img_w - 1)
    h = (side * aspect.sqrt()).clamp(max=img_h - 1)
    x1 = torch.rand(k, generator=gen, dtype=torch.float64) * (img_w - w)
    y1 = torch.rand(k, generator=gen, dtype=torch.float64) * (img_h - h)
    batch = torch.randint(0, n_images, (k,), generator=gen).to(torch.float64)
    return torch.stack([batch, x1, y1, x1 + w, y1 + h], dim=1).to(torch.float32)


def per_image(rois: torch.Tensor, n_images: int) -> list[torch.Tensor]:
    """Tensor[K, 5] -> list of n_images Tensor[L, 4]."""
    return [rois[rois[:, 0] == i, 1:].contiguous() for i in range(n_images)]


def feature_map(gen: torch.Generator, shape: tuple[int, ...], device: torch.device) -> torch.Tensor:
    """A post-ReLU-like map: non-negative, with many exact zeros (as real backbone features)."""
    return torch.relu(torch.randn(shape, generator=gen)).to(device)


# --------------------------------------------------------------------------- cases


@dataclass
class Case:
    """One row of the table: a zero-argument callable per implementation (None: not available)."""

    workload: str
    op: str
    roicli: Callable[[], object] | None
    torchvision: Callable[[], object] | None


def forward(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor) -> Callable[[], object]:
    def run() -> object:
        with torch.no_grad():
            return fn(x)

    return run


def forward_backward(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor) -> Callable[[], object]:
    """fn(x).sum().backward() on a leaf copy of x; each call returns (and drops) its gradient.

    Dropping it inside the call keeps the memory baseline free of the previous call's gradient.
    """
    leaf = x.detach().clone().requires_grad_(True)

    def run() -> object:
        fn(leaf).sum().backward()
        grad, leaf.grad = leaf.grad, None
        return grad

    return run


def _rc(name: str) -> Callable | None:
    return getattr(roicli_ops, name) if roicli_ops is not None else None


def _both(
    workload: str,
    op: str,
    x: torch.Tensor,
    rc: Callable[[torch.Tensor], torch.Tensor] | None,
    tv: Callable[[torch.Tensor], torch.Tensor] | None,
    backward: bool,
) -> Case:
    wrap = forward_backward if backward else forward
    return Case(
        workload,
        op,
        wrap(rc, x) if rc is not None else None,
        wrap(tv, x) if tv is not None else None,
    )


def _fwd_and_bwd(
    workload: str,
    op: str,
    x: torch.Tensor,
    rc: Callable[[torch.Tensor], torch.Tensor] | None,
    tv: Callable[[torch.Tensor], torch.Tensor] | None,
) -> list[Case]:
    """The forward and the forward+backward rows of one op."""
    return [_both(workload, op + (" fwd+bwd" if bwd else " fwd"), x, rc, tv, bwd) for bwd in (False, True)]


def maskrcnn_box(device: torch.device, gen: torch.Generator) -> tuple[str, list[Case]]:
    x = feature_map(gen, (2, 256, 200, 272), device)
    rois = detection_boxes(gen, 1000, (800, 1088), 2).to(device)
    ra, rp, pr = _rc("roi_align"), _rc("roi_pool"), _rc("precise_roi_pool")
    args_align = (rois, 7, 1 / 4, 2, True)
    cases = [
        *_fwd_and_bwd("maskrcnn-box", "roi_align", x, ra and (lambda t: ra(t, *args_align)),
                      tv_ops and (lambda t: tv_ops.roi_align(t, *args_align))),
        *_fwd_and_bwd("maskrcnn-box", "roi_pool", x, rp and (lambda t: rp(t, rois, 7, 1 / 4)),
                      tv_ops and (lambda t: tv_ops.roi_pool(t, rois, 7, 1 / 4))),
        *_fwd_and_bwd("maskrcnn-box", "precise_roi_pool", x, pr and (lambda t: pr(t, rois, 7, 1 / 4, True)), None),
    ]
    desc = (
        "input [2, 256, 200, 272] f32, K=1000 (sqrt area 32-512 px in 800x1088), scale 1/4, 7x7, roi_align sr=2 aligned"
    )
    return desc, cases


def maskrcnn_mask(device: torch.device, gen: torch.Generator) -> tuple[str, list[Case]]:
    x = feature_map(gen, (2, 256, 200, 272), device)
    rois = detection_boxes(gen, 100, (800, 1088), 2).to(device)
    ra = _rc("roi_align")
    args = (rois, 14, 1 / 4, 2, True)
    tv = tv_ops and (lambda t: tv_ops.roi_align(t, *args))
    cases = _fwd_and_bwd("maskrcnn-mask", "roi_align", x, ra and (lambda t: ra(t, *args)), tv)
    return "input [2, 256, 200, 272] f32, K=100, scale 1/4, 14x14, sr=2 aligned", cases


def fastrcnn(device: torch.device, gen: torch.Generator) -> tuple[str, list[Case]]:
    x = feature_map(gen, (1, 512, 38, 50), device)
    rois = detection_boxes(gen, 2000, (600, 800), 1, side_range=(16.0, 512.0)).to(device)
    ra, rp = _rc("roi_align"), _rc("roi_pool")
    cases = [
        _both(
            "fastrcnn",
            "roi_pool fwd",
            x,
            rp and (lambda t: rp(t, rois, 7, 1 / 16)),
            tv_ops and (lambda t: tv_ops.roi_pool(t, rois, 7, 1 / 16)),
            False,
        ),
        _both(
            "fastrcnn",
            "roi_align sr=-1 fwd",
            x,
            ra and (lambda t: ra(t, rois, 7, 1 / 16, -1, False)),
            tv_ops and (lambda t: tv_ops.roi_align(t, rois, 7, 1 / 16, -1, False)),
            False,
        ),
    ]
    desc = (
        "input [1, 512, 38, 50] f32, K=2000 (sqrt area 16-512 px in 600x800), scale 1/16, 7x7, "
        "roi_align adaptive grid, aligned=False"
    )
    return desc, cases


def fpn(device: torch.device, gen: torch.Generator) -> tuple[str, list[Case]]:
    img_h, img_w, n_images = 800, 1216, 2
    scales = [1 / 4, 1 / 8, 1 / 16, 1 / 32]
    feats = [feature_map(gen, (n_images, 256, int(img_h * s), int(img_w * s)), device) for s in scales]
    boxes = per_image(detection_boxes(gen, 1000, (img_h, img_w), n_images).to(device), n_images)
    names = [str(i) for i in range(len(feats))]
    mra = _rc("multiscale_roi_align")
    pooler = tv_ops.MultiScaleRoIAlign(names, 7, 2) if tv_ops is not None else None
    image_shapes = [(img_h, img_w)] * n_images

    def make(backward: bool, impl: str) -> Callable[[], object] | None:
        if (impl == "roicli" and mra is None) or (impl == "torchvision" and pooler is None):
            return None
        levels = [f.detach().clone().requires_grad_(backward) for f in feats]

        def call() -> torch.Tensor:
            if impl == "roicli":
                return mra(levels, boxes, 7, scales, 2, False)
            return pooler(OrderedDict(zip(names, levels, strict=True)), boxes, image_shapes)

        def run() -> object:
            if not backward:
                with torch.no_grad():
                    return call()
            call().sum().backward()
            grads = [f.grad for f in levels]
            for f in levels:
                f.grad = None
            return grads

        return run

    cases = [
        Case(
            "fpn",
            "multiscale_roi_align" + (" fwd+bwd" if backward else " fwd"),
            make(backward, "roicli"),
            make(backward, "torchvision"),
        )
        for backward in (False, True)
    ]
    desc = (
        "levels P2-P5 of an 800x1216 image (strides 4-32), 256 ch, batch 2, K=1000, 7x7, sr=2, "
        "aligned=False (torchvision: MultiScaleRoIAlign)"
    )
    return desc, cases


def small(device: torch.device, gen: torch.Generator) -> tuple[str, list[Case]]:
    x = feature_map(gen, (1, 64, 64, 64), device)
    rois = detection_boxes(gen, 64, (256, 256), 1, side_range=(16.0, 256.0)).to(device)
    ra, rp = _rc("roi_align"), _rc("roi_pool")
    cases = [
        _both(
            "small",
            "roi_align fwd",
            x,
            ra and (lambda t: ra(t, rois, 7, 1 / 4, 2, True)),
            tv_ops and (lambda t: tv_ops.roi_align(t, rois, 7, 1 / 4, 2, True)),
            False,
        ),
        _both(
            "small",
            "roi_pool fwd",
            x,
            rp and (lambda t: rp(t, rois, 7, 1 / 4)),
            tv_ops and (lambda t: tv_ops.roi_pool(t, rois, 7, 1 / 4)),
            False,
        ),
    ]
    return "input [1, 64, 64, 64] f32, K=64 (in 256x256), scale 1/4, 7x7, sr=2 aligned", cases


WORKLOADS: dict[str, Callable[[torch.device, torch.Generator], tuple[str, list[Case]]]] = {
    "maskrcnn-box": maskrcnn_box,
    "maskrcnn-mask": maskrcnn_mask,
    "fastrcnn": fastrcnn,
    "fpn": fpn,
    "small": small,
}


# --------------------------------------------------------------------------- measuring


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def interleaved_ms(
    fns: list[Callable[[], object]], device: torch.device, warmup: int, repeat: int
) -> list[list[float]]:
    """Wall times of each of `fns`, called in interleaved rounds (A B, then B A, ...), so that a
    change in machine load hits every implementation alike; one list of `repeat` times per fn."""
    for fn in fns:
        for _ in range(warmup):
            fn()
    synchronize(device)
    times: list[list[float]] = [[] for _ in fns]
    for i in range(repeat):
        order = range(len(fns)) if i % 2 == 0 else reversed(range(len(fns)))
        for j in order:
            start = time.perf_counter()
            fns[j]()
            synchronize(device)
            times[j].append((time.perf_counter() - start) * 1e3)
    return times


class CpuPeakRss:
    """Peak extra resident memory of one call, from /proc/self/status (Linux only)."""

    def __init__(self) -> None:
        self.available = False
        try:
            self._reset()
            self._read("VmHWM")
        except OSError:
            return
        self._malloc_trim: Callable[[int], int] | None = None
        try:  # return big blocks to the OS on free, so each call's buffers are fresh pages
            libc = ctypes.CDLL("libc.so.6")
            m_mmap_threshold, m_trim_threshold = -3, -1
            libc.mallopt(m_mmap_threshold, 256 * 1024)
            libc.mallopt(m_trim_threshold, 256 * 1024)
            self._malloc_trim = libc.malloc_trim
        except (OSError, AttributeError):
            pass
        self.available = True

    @staticmethod
    def _reset() -> None:
        with open("/proc/self/clear_refs", "w") as f:  # "5": reset the peak RSS to the current RSS
            f.write("5")

    @staticmethod
    def _read(key: str) -> int:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) * 1024
        raise OSError(f"{key} not in /proc/self/status")

    def measure(self, fn: Callable[[], object]) -> float:
        gc.collect()
        if self._malloc_trim is not None:
            self._malloc_trim(0)  # give freed heap pages back, or the call could reuse them unseen
        self._reset()
        before = self._read("VmRSS")
        result = fn()
        peak = self._read("VmHWM")
        del result
        return max(peak - before, 0) / 2**20  # resolution: about 1 MiB


def peak_mib(fn: Callable[[], object], device: torch.device, cpu_probe: CpuPeakRss | None):
    if device.type == "cuda":
        synchronize(device)
        gc.collect()
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        result = fn()
        synchronize(device)
        peak = torch.cuda.max_memory_allocated(device)
        del result
        return (peak - before) / 2**20
    if cpu_probe is not None and cpu_probe.available:
        return cpu_probe.measure(fn)
    return None


@dataclass
class Row:
    workload: str
    op: str
    roicli_ms: float | None = None
    torchvision_ms: float | None = None
    ratio: float | None = None  # median of the per-pair ratios roicli / torchvision
    ratio_spread: tuple[float, float] | None = None  # their min and max
    roicli_peak_mib: float | None = None
    torchvision_peak_mib: float | None = None
    output_mib: float | None = None  # the forward's output (also on the forward+backward row)
    roicli_times_ms: list[float] = field(default_factory=list)
    torchvision_times_ms: list[float] = field(default_factory=list)
    error: str | None = None


# --------------------------------------------------------------------------- output


def _fmt(v: float | None, spec: str) -> str:
    return "-" if v is None else format(v, spec)


def _excess_mib(r: Row) -> float | None:
    """roicli's peak minus torchvision's and the output (the goal: <= 0 on every row)."""
    if r.roicli_peak_mib is None or r.torchvision_peak_mib is None or r.output_mib is None:
        return None
    return r.roicli_peak_mib - r.torchvision_peak_mib - r.output_mib


def _nbytes(result: object) -> int:
    if isinstance(result, torch.Tensor):
        return result.numel() * result.element_size()
    if isinstance(result, (list, tuple)):
        return sum(_nbytes(t) for t in result)
    return 0


def render_table(meta: dict, descriptions: dict[str, str], rows: list[Row]) -> None:
    headers = ["workload", "op", "roicli ms", "torchvision ms", "ratio", "roicli MiB", "tv MiB", "out MiB",
               "rc - tv - out"]
    body = [
        [
            r.workload,
            r.op,
            _fmt(r.roicli_ms, ".2f"),
            _fmt(r.torchvision_ms, ".2f"),
            _fmt(r.ratio, ".2f") + (f" ({r.ratio_spread[0]:.2f}-{r.ratio_spread[1]:.2f})" if r.ratio_spread else ""),
            _fmt(r.roicli_peak_mib, ".1f"),
            _fmt(r.torchvision_peak_mib, ".1f"),
            _fmt(r.output_mib, ".1f"),
            _fmt(_excess_mib(r), "+.1f"),
        ]
        for r in rows
    ]
    lines = [
        f"torch {meta['torch']}, torchvision {meta['torchvision'] or 'not installed'}, "
        f"roicli {'ok' if meta['roicli'] else 'not importable: ' + meta['roicli_error']}"
        + (f" (kernels: {meta['roicli_kernel']})" if meta.get("roicli_kernel") else ""),
        f"device {meta['device_name']}, threads {meta['threads']}, python {meta['python']}, "
        f"median of {meta['repeat']} runs after {meta['warmup']} warm-up, "
        f"load average {meta['load_average_start']} -> {meta['load_average_end']}",
        f"memory: {meta['memory_note']}",
    ]
    notes = [f"{name}: {desc}" for name, desc in descriptions.items()]
    errors = [f"{r.workload} / {r.op}: {r.error}" for r in rows if r.error]
    try:
        from rich.console import Console
        from rich.table import Table
    except ImportError:
        widths = [max(len(h), *(len(row[i]) for row in body)) for i, h in enumerate(headers)]
        for line in lines:
            print(line)
        print()
        for cells in [headers, ["-" * w for w in widths], *body]:
            padded = [c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths, strict=True))]
            print("  ".join(padded))
        print()
        for line in notes + errors:
            print(line)
        return
    console = Console(width=max(Console().width, 132))  # no wrapping when piped
    for line in lines:
        console.print(line, highlight=False, soft_wrap=True)
    table = Table(show_lines=False)
    for i, h in enumerate(headers):
        table.add_column(h, justify="left" if i < 2 else "right")
    for row in body:
        table.add_row(*row)
    console.print(table)
    for line in notes:
        console.print(line, highlight=False, soft_wrap=True)
    for line in errors:
        console.print(f"[red]error[/red] {line}", highlight=False)


# --------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument(
        "--workload",
        nargs="+",
        choices=list(WORKLOADS),
        default=list(WORKLOADS),
        metavar="NAME",
        help=f"workloads to run (default: all): {', '.join(WORKLOADS)}",
    )
    parser.add_argument("--repeat", type=int, default=5, help="timed runs per op (default 5)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed runs first (default 1)")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    parser.add_argument("--no-memory", action="store_true", help="skip the peak-memory call")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.add_argument(
        "--kernel",
        choices=["torch", "cpp", "triton"],
        default=None,
        help="force roicli's kernel implementation (sets ROICLI_KERNEL; default: roicli's own choice)",
    )
    args = parser.parse_args(argv)
    if args.repeat < 1 or args.warmup < 0:
        parser.error("--repeat must be >= 1 and --warmup >= 0")
    return args


def _kernel_name(device: torch.device) -> str | None:
    """The kernel module that serves roicli's ops on `device` (or why none can)."""
    if roicli_ops is None:
        return None
    try:
        from roicli.ops import kernels
    except ImportError:  # a roicli from before the kernel seam
        return "torch"
    try:
        return kernels.kernel_for(device).__name__.rsplit(".", 1)[-1]
    except Exception as exc:  # KernelUnavailable for a forced implementation
        return f"unavailable ({exc})"


def _loadavg() -> list[float] | None:
    """1/5/15-minute load averages: other busy processes skew CPU timings (OpenMP spins)."""
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:
        return None


def progress(message: str) -> None:
    """Progress on stderr (stdout carries the table or the JSON only)."""
    print(f"  {message}", file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        print("Error: --device cuda but torch.cuda.is_available() is False", file=sys.stderr)
        return 2
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if args.kernel is not None:
        os.environ["ROICLI_KERNEL"] = args.kernel
    if roicli_ops is None:
        print(f"warning: roicli.ops not importable ({_ROICLI_IMPORT_ERROR})", file=sys.stderr)
    if device.type == "cuda":
        memory_note = "peak torch.cuda.max_memory_allocated of one call minus allocated before it"
        device_name = torch.cuda.get_device_name(device)
    else:
        memory_note = "peak RSS growth of one call (VmHWM - VmRSS before; pages touched)"
        device_name = f"cpu ({platform.processor() or platform.machine()})"
    if args.no_memory:
        memory_note = "not measured (--no-memory)"
    meta = {
        "torch": torch.__version__,
        "torchvision": getattr(torchvision, "__version__", None),
        "roicli": roicli_ops is not None,
        "roicli_error": _ROICLI_IMPORT_ERROR,
        "roicli_kernel": _kernel_name(device),
        "device": str(device),
        "device_name": device_name,
        "threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "repeat": args.repeat,
        "warmup": args.warmup,
        "seed": args.seed,
        "memory_note": memory_note,
        "load_average_start": _loadavg(),
    }

    descriptions: dict[str, str] = {}
    measured: list[tuple[Row, Case]] = []
    for name in args.workload:
        gen = torch.Generator().manual_seed(args.seed)
        descriptions[name], cases = WORKLOADS[name](device, gen)
        for case in cases:
            row = Row(case.workload, case.op)
            try:
                impls = [(impl, getattr(case, impl)) for impl in ("torchvision", "roicli")]
                impls = [(impl, fn) for impl, fn in impls if fn is not None]
                times = interleaved_ms([fn for _, fn in impls], device, args.warmup, args.repeat)
                for (impl, _), t in zip(impls, times):
                    setattr(row, f"{impl}_times_ms", [round(x, 4) for x in t])
                    setattr(row, f"{impl}_ms", statistics.median(t))
                    progress(f"{name} / {case.op} / {impl}: {statistics.median(t):.2f} ms")
            except Exception as exc:  # keep going: one failing op should not hide the others
                row.error = f"{type(exc).__name__}: {exc}"
                progress(f"{name} / {case.op}: {row.error}")
            if row.roicli_times_ms and row.torchvision_times_ms:
                pairs = [a / b for a, b in zip(row.roicli_times_ms, row.torchvision_times_ms)]
                row.ratio = statistics.median(pairs)  # the median of the per-pair ratios
                row.ratio_spread = (min(pairs), max(pairs))
            measured.append((row, case))

    # Memory after every timing: the CPU probe changes glibc's malloc settings for the process.
    if not args.no_memory:
        cpu_probe = CpuPeakRss() if device.type == "cpu" else None
        for row, case in measured:
            for impl in ("torchvision", "roicli"):
                fn = getattr(case, impl)
                if fn is None or getattr(row, f"{impl}_ms") is None:
                    continue
                setattr(row, f"{impl}_peak_mib", peak_mib(fn, device, cpu_probe))
        # The output's size: a forward row's result; a forward+backward row has its forward row's.
        outputs = {}
        for row, case in measured:
            if case.roicli is not None and not row.op.endswith(" fwd+bwd") and row.roicli_ms is not None:
                outputs[(row.workload, row.op.removesuffix(" fwd"))] = _nbytes(case.roicli()) / 2**20
        for row, _ in measured:
            row.output_mib = outputs.get((row.workload, row.op.removesuffix(" fwd+bwd").removesuffix(" fwd")))
    meta["load_average_end"] = _loadavg()
    rows = [row for row, _ in measured]
    measured.clear()
    gc.collect()

    if args.json:
        json.dump(
            {"meta": meta, "workloads": descriptions, "results": [asdict(r) for r in rows]},
            sys.stdout,
            indent=2,
        )
        print()
    else:
        render_table(meta, descriptions, rows)
    return 1 if any(r.error for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
