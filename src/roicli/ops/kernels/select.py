"""Which kernel module serves an operator call: the one place where implementations are chosen.

Implementations (modules of this package, loaded on first use):

    torch   torch_ref.py       today's pure-torch code; any device, always available
    cpp     cpp.py             compiled CPU kernels (built on first use)
    triton  triton_kernels.py  Triton GPU kernels (CUDA; CPU tensors under TRITON_INTERPRET=1)

Choice, per call:

* forced: the `use("cpp")` context manager, else the `ROICLI_KERNEL` environment variable
  (`torch|cpp|triton`), serves every op. A forced implementation that cannot run here (not built,
  not importable, wrong device) raises `KernelUnavailable` with the reason; tests skip on it.
* default: CPU tensors -> cpp if it loads, else torch (a `KernelFallbackWarning`, once per
  implementation and process, when cpp.py exists but fails: the library never prints; the CLI shows
  warnings on stderr); CUDA tensors -> torch for now (triton is opt-in until it has run on a GPU; see
  DEFAULTS); anything else -> torch.

A kernel module plugs in by defining the six functions of the contract (see `kernels/__init__.py`)
and, optionally:

* `DEVICES`: a tuple of device types it serves (e.g. `("cpu",)`); absent means any device;
* `check()`: raises `KernelUnavailable(reason)` (or ImportError) when it cannot run in this
  process, e.g. its extension fails to build. Called once, lazily; the result is cached.

Importing the module must be cheap and must not raise except ImportError.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import warnings
from collections.abc import Iterator
from types import ModuleType

import torch

from roicli.errors import KernelUnavailable, ValidationError

# name -> module path. Adding an implementation is one entry here.
IMPLEMENTATIONS: dict[str, str] = {
    "torch": "roicli.ops.kernels.torch_ref",
    "cpp": "roicli.ops.kernels.cpp",
    "triton": "roicli.ops.kernels.triton_kernels",
}
# Default preference per device type, best first; "torch" always ends the list. The Triton kernels are
# opt-in on CUDA (ROICLI_KERNEL=triton) until they have been checked and timed on a real GPU: they are
# tested only in Triton's interpreter so far, and the default path must not silently change numbers.
DEFAULTS: dict[str, tuple[str, ...]] = {"cpu": ("cpp", "torch"), "cuda": ("torch",)}
ENV_VAR = "ROICLI_KERNEL"


class KernelFallbackWarning(RuntimeWarning):
    """A default implementation could not run here (e.g. the C++ kernels did not build), so a slower
    one (the torch kernels) serves the call: same numbers, less speed. The message says why."""


_loaded: dict[str, ModuleType | KernelUnavailable] = {}
_forced: str | None = None
_noticed: set[str] = set()


def _load(name: str) -> ModuleType:
    """The module of implementation `name`, or KernelUnavailable with the reason (cached)."""
    got = _loaded.get(name)
    if got is None:
        try:
            module = importlib.import_module(IMPLEMENTATIONS[name])
            check = getattr(module, "check", None)
            if check is not None:
                check()
            got = module
        except KernelUnavailable as exc:
            got = exc
        except ImportError as exc:
            got = KernelUnavailable(f"{name} kernels: cannot import {IMPLEMENTATIONS[name]} ({exc})")
            got.missing = getattr(exc, "name", None) == IMPLEMENTATIONS[name]  # type: ignore[attr-defined]
        _loaded[name] = got
    if isinstance(got, KernelUnavailable):
        raise got
    return got


def _serves(module: ModuleType, device: torch.device) -> bool:
    devices = getattr(module, "DEVICES", None)
    return devices is None or device.type in devices


def forced() -> str | None:
    """The forced implementation's name (`use()` first, then $ROICLI_KERNEL), or None."""
    if _forced is not None:
        return _forced
    name = os.environ.get(ENV_VAR, "").strip().lower()
    if not name:
        return None
    if name not in IMPLEMENTATIONS:
        raise ValidationError(f"{ENV_VAR}: expected one of {', '.join(IMPLEMENTATIONS)}, got {name!r}")
    return name


def kernel_for(device: torch.device) -> ModuleType:
    """The kernel module that serves tensors on `device` (see the module docstring)."""
    name = forced()
    if name is not None:
        module = _load(name)
        if not _serves(module, device):
            raise KernelUnavailable(
                f"{name} kernels: expected tensors on {'/'.join(module.DEVICES)}, got {device.type}"
            )
        return module
    for name in DEFAULTS.get(device.type, ("torch",)):
        try:
            module = _load(name)
        except KernelUnavailable as exc:
            if not getattr(exc, "missing", False) and name not in _noticed:
                _noticed.add(name)
                warnings.warn(f"{exc}; using the torch kernels", KernelFallbackWarning, stacklevel=2)
            continue
        if _serves(module, device):
            return module
    return _load("torch")


@contextlib.contextmanager
def use(name: str) -> Iterator[ModuleType]:
    """Force implementation `name` for every op inside the block (process-wide, not thread-local).

    Raises KernelUnavailable at once when it cannot be loaded; yields its module.
    """
    global _forced
    if name not in IMPLEMENTATIONS:
        raise ValidationError(f"kernel: expected one of {', '.join(IMPLEMENTATIONS)}, got {name!r}")
    module = _load(name)
    previous, _forced = _forced, name
    try:
        yield module
    finally:
        _forced = previous


def available() -> dict[str, tuple[bool, str]]:
    """{name: (loads here, reason or the devices it serves)} for every implementation."""
    result = {}
    for name in IMPLEMENTATIONS:
        try:
            module = _load(name)
        except KernelUnavailable as exc:
            result[name] = (False, str(exc))
            continue
        devices = getattr(module, "DEVICES", None)
        result[name] = (True, "devices: " + ("any" if devices is None else ", ".join(devices)))
    return result
