"""Memory the process may still use, and the up-front check that refuses work which cannot fit.

Work whose size is known from the shapes (the pooled output, the backbone's activations) is checked
before it starts, so a job that cannot fit fails in a second with a message that says what it needs
and which option helps, instead of after minutes or by the kernel's OOM killer.
"""

from __future__ import annotations

import os
from pathlib import Path

try:
    import resource
except ImportError:  # not on Windows: no address-space limit to read
    resource = None

from roicli.errors import ResourceError

# Set ROICLI_MEMORY_LIMIT (bytes, or with a K/M/G suffix) to check against a smaller budget.
_ENV = "ROICLI_MEMORY_LIMIT"


def _read_int(path: str) -> int | None:
    try:
        text = Path(path).read_text().split()[0]
    except (OSError, IndexError):
        return None
    return int(text) if text.isdigit() else None


def _meminfo_available() -> int | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def parse_size(text: str) -> int:
    """`123`, `512M`, `8G` -> bytes."""
    text = text.strip().upper().removesuffix("B")
    factor = {"K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}.get(text[-1:], 1)
    return int(float(text[:-1] if factor > 1 else text) * factor)


def available_memory() -> int | None:
    """Bytes this process can still allocate: the least of the free RAM, the cgroup's room, the
    address-space limit's room and ROICLI_MEMORY_LIMIT. None when nothing is known."""
    limits = [_meminfo_available()]
    cg_max, cg_cur = _read_int("/sys/fs/cgroup/memory.max"), _read_int("/sys/fs/cgroup/memory.current")
    if cg_max is not None and cg_cur is not None:
        limits.append(max(cg_max - cg_cur, 0))
    if resource is not None:
        soft, _ = resource.getrlimit(resource.RLIMIT_AS)
        if soft != resource.RLIM_INFINITY:
            limits.append(max(soft - _vm_size(), 0))
    if os.environ.get(_ENV):
        try:
            limits.append(parse_size(os.environ[_ENV]))
        except ValueError:
            raise ResourceError(f"{_ENV}: expected bytes like 8G or 512M, got {os.environ[_ENV]!r}") from None
    known = [x for x in limits if x is not None]
    return min(known) if known else None


def _vm_size() -> int:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmSize:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return 0


def human(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB", "PB"):
        if abs(n) < 1024 or unit == "PB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} PB"


def check_memory(need: float, what: str, hint: str) -> None:
    """Refuse `what` (e.g. "the output (K x C x PH x PW float32)") when it needs more than is available."""
    room = available_memory()
    if room is not None and need > room:
        raise ResourceError(f"{what} needs about {human(need)}, but only {human(room)} of memory is available; {hint}")
