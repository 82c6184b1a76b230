"""Fused C++ CPU kernels (`cpu/roi_kernels.cpp`), compiled on first use and cached.

The source is built once per torch version, source and CPU with `torch.utils.cpp_extension.load`
(ninja and a C++ compiler) into `$ROICLI_CACHE_DIR` (default `$XDG_CACHE_HOME/roicli`, else
`~/.cache/roicli`), `kernels/torch-<version>-<hash>/`; later processes load the cached library
without a compiler. `load()` raises `KernelUnavailable` (with the reason) when it cannot be built,
so the caller falls back to the pure-torch kernels.

Every function follows the kernel seam's contract (notes in `roicli/ops/kernels/`): inputs are
validated by the front door, `input` is `Tensor[N, C, H, W]` in any layout, `rois` `Tensor[K, 5]`.
Half types are accumulated in float32. The kernels run in one parallel region over
`torch.get_num_threads()` threads; the backward is deterministic (each thread owns its slice of
`grad_input`, no atomics).
"""

from __future__ import annotations

import hashlib
import os
import platform
import shutil
import sys
import threading
from pathlib import Path

import torch
from torch import Tensor

from roicli.errors import KernelUnavailable

_SOURCE = Path(__file__).parent / "cpu" / "roi_kernels.cpp"
_NAME = "roicli_cpu_kernels"
# -ffp-contract=off: no fused multiply-add anywhere, so sample positions (and float32 sums) round like
# torchvision's; -march=native is safe because the cache key includes this CPU's feature flags.
_CFLAGS = ["-O3", "-ffp-contract=off", "-march=native", "-fopenmp", "-DNDEBUG"]
_LDFLAGS = ["-fopenmp"]
_MODES = {"avg": 0, "max": 1}
DEVICES = ("cpu",)

_lock = threading.Lock()
_state: dict[str, object] = {}


def _cpu_flags() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("flags", "Features")):
                return line
    except OSError:
        pass
    return platform.processor() or platform.machine()


def build_directory() -> Path:
    """Where this torch version's build of the current source lives."""
    root = os.environ.get("ROICLI_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join(Path.home(), ".cache"), "roicli"
    )
    key = hashlib.sha256()
    for part in (_SOURCE.read_bytes(), " ".join(_CFLAGS).encode(), _cpu_flags().encode(), torch.__version__.encode()):
        key.update(part)
        key.update(b"\0")
    version = torch.__version__.replace("+", "_")
    return Path(root) / "kernels" / f"torch-{version}-{key.hexdigest()[:16]}"


def load() -> object:
    """Build (first time) and load the kernels; `torch.ops.roicli_cpp`. Raises KernelUnavailable."""
    with _lock:
        if "ops" in _state:
            return _state["ops"]
        if "error" in _state:
            raise KernelUnavailable(str(_state["error"]))
        try:
            _state["ops"] = _load()
        except KernelUnavailable as e:
            _state["error"] = str(e)
            raise
        return _state["ops"]


def _load() -> object:
    if hasattr(torch.ops, "roicli_cpp") and hasattr(torch.ops.roicli_cpp, "roi_align_forward"):
        return torch.ops.roicli_cpp  # loaded by another copy of this module
    directory = build_directory()
    library = directory / f"{_NAME}.so"
    if not library.exists() or (directory / "lock").exists():  # absent, or another process is building it
        _build(directory)
    try:
        torch.ops.load_library(str(library))
    except (OSError, RuntimeError) as e:
        raise KernelUnavailable(f"C++ kernels: cannot load {library}: {e}") from e
    return torch.ops.roicli_cpp


def _build(directory: Path) -> None:
    from torch.utils import cpp_extension

    compiler = os.environ.get("CXX", "c++")
    if shutil.which(compiler) is None:
        raise KernelUnavailable(f"C++ kernels: expected a C++ compiler ({compiler}) on PATH, got none")
    if not cpp_extension.is_ninja_available():
        raise KernelUnavailable("C++ kernels: expected ninja (pip install ninja), got none")
    directory.mkdir(parents=True, exist_ok=True)
    if sys.stderr is not None and sys.stderr.isatty():  # pipes and logs stay clean; a person waiting is told
        sys.stderr.write("roicli: building the C++ kernels for this torch (once; about 20 s)...\n")
    try:
        cpp_extension.load(
            name=_NAME,
            sources=[str(_SOURCE)],
            extra_cflags=_CFLAGS,
            extra_ldflags=_LDFLAGS,
            build_directory=str(directory),
            is_python_module=False,
            verbose=False,
        )
    except Exception as e:  # a compiler error: say so, the caller falls back to the torch kernels
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise KernelUnavailable(f"C++ kernels: build failed in {directory}: {first}") from e


def check() -> None:
    """Raises KernelUnavailable when the kernels cannot be built or loaded here (see `select.py`)."""
    load()


def available() -> tuple[bool, str]:
    """(True, where the library is) or (False, why not); builds on first call."""
    try:
        load()
    except KernelUnavailable as e:
        return False, str(e)
    return True, f"built in {build_directory()}"


def _acc(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def _rois(rois: Tensor, dtype: torch.dtype) -> Tensor:
    return rois.to(_acc(dtype)).contiguous()


def roi_align_forward(
    input: Tensor,
    rois: Tensor,
    spatial_scale: float,
    pooled_height: int,
    pooled_width: int,
    sampling_ratio: int,
    aligned: bool,
    mode: str,
) -> tuple[Tensor, Tensor]:
    """`Tensor[K, C, PH, PW]` and, for mode "max", the winning sample of each bin (`iy * IX + ix`, -1 if none)."""
    return load().roi_align_forward(
        input, _rois(rois, input.dtype), float(spatial_scale), pooled_height, pooled_width, sampling_ratio,
        bool(aligned), _MODES[mode],
    )


def roi_align_backward(
    grad: Tensor,
    rois: Tensor,
    argmax: Tensor,
    spatial_scale: float,
    pooled_height: int,
    pooled_width: int,
    sampling_ratio: int,
    aligned: bool,
    mode: str,
    batch_size: int,
    channels: int,
    height: int,
    width: int,
) -> Tensor:
    """`Tensor[N, C, H, W]` in grad's dtype."""
    return load().roi_align_backward(
        grad, _rois(rois, grad.dtype), argmax.contiguous(), float(spatial_scale), pooled_height, pooled_width,
        sampling_ratio, bool(aligned), _MODES[mode], batch_size, channels, height, width,
    )


def roi_pool_forward(
    input: Tensor, rois: Tensor, spatial_scale: float, pooled_height: int, pooled_width: int
) -> tuple[Tensor, Tensor]:
    """`Tensor[K, C, PH, PW]` and the argmax `h * W + w` of each bin (-1: empty, or only NaN/-inf)."""
    return load().roi_pool_forward(input, _rois(rois, input.dtype), float(spatial_scale), pooled_height, pooled_width)


def roi_pool_values(
    input: Tensor, rois: Tensor, spatial_scale: float, pooled_height: int, pooled_width: int
) -> Tensor:
    """`roi_pool_forward`'s output alone (eager inference: no argmax is tracked or written)."""
    return load().roi_pool_values(input, _rois(rois, input.dtype), float(spatial_scale), pooled_height, pooled_width)


def roi_pool_backward(
    grad: Tensor,
    rois: Tensor,
    argmax: Tensor,
    spatial_scale: float,
    pooled_height: int,
    pooled_width: int,
    batch_size: int,
    channels: int,
    height: int,
    width: int,
) -> Tensor:
    return load().roi_pool_backward(
        grad, _rois(rois, grad.dtype), argmax.contiguous(), float(spatial_scale), pooled_height, pooled_width,
        batch_size, channels, height, width,
    )


def precise_roi_pool_forward(
    input: Tensor, rois: Tensor, spatial_scale: float, pooled_height: int, pooled_width: int, aligned: bool
) -> Tensor:
    return load().precise_roi_pool_forward(
        input, _rois(rois, input.dtype), float(spatial_scale), pooled_height, pooled_width, bool(aligned)
    )


def precise_roi_pool_backward(
    grad: Tensor,
    rois: Tensor,
    spatial_scale: float,
    pooled_height: int,
    pooled_width: int,
    aligned: bool,
    batch_size: int,
    channels: int,
    height: int,
    width: int,
) -> Tensor:
    return load().precise_roi_pool_backward(
        grad, _rois(rois, grad.dtype), float(spatial_scale), pooled_height, pooled_width, bool(aligned),
        batch_size, channels, height, width,
    )
