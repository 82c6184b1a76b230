"""Write outputs atomically (temp file in the same folder, then rename) or to stdout.

An exit code of 0 means every output is whole: file outputs appear only complete (temp file + rename,
removed on every exit path, Ctrl-C and SIGTERM included), several outputs of one command land together
or not at all, and every write to stdout is checked to the last byte.
"""

from __future__ import annotations

import os
import sys
import tempfile
from collections.abc import Iterable, Sequence
from pathlib import Path

from roicli.errors import OutputError, StdoutClosed, UsageError

Data = bytes | bytearray | memoryview | Sequence[bytes | bytearray | memoryview]


def _read_umask() -> int:
    """The process's umask: from /proc on Linux (no change of state), else set-and-restore, once."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


_UMASK = _read_umask()


def check_output(path: str, inputs: list[str], binary: bool = True, suffixes: Sequence[str] = ()) -> None:
    """Refuse, before any work, outputs that cannot or must not be written. `suffixes`: the file
    extensions this output may have (e.g. `.safetensors`), in lower case; empty allows any."""
    if path == "":
        raise UsageError("{output}: expected a file name or -, got an empty string", param="output")
    if path == "-":
        if binary and sys.stdout.isatty():
            raise UsageError("refusing to write binary data to a terminal; pipe it or use -o FILE")
        return
    p = Path(path)
    if p.is_dir():
        raise OutputError(f"{path}: is a directory; expected a file name")
    for src in inputs:
        if src and src != "-" and Path(src).resolve() == p.resolve():
            raise OutputError(f"{path}: is also an input; refusing to overwrite it")
    parent = p.parent if str(p.parent) else Path(".")
    if not parent.is_dir():
        raise OutputError(f"{path}: folder {str(parent)!r} does not exist")
    if not os.access(parent, os.W_OK) or (p.exists() and not os.access(p, os.W_OK)):
        raise OutputError(f"{path}: not writable")
    if suffixes and p.suffix.lower() not in suffixes:
        got = f"{p.suffix!r}" if p.suffix else "a name without an extension"
        raise UsageError(f"{path}: roicli writes {', '.join(suffixes)} files here; got {got}")


def _parts(data: Data) -> list[memoryview]:
    if isinstance(data, (bytes, bytearray, memoryview)):
        data = [data]
    return [memoryview(d).cast("B") for d in data]


def _new_file_mode(path: Path) -> int:
    """The mode a plain open() would give: the existing file's, else 0666 minus the umask."""
    try:
        return path.stat().st_mode & 0o7777
    except OSError:
        return 0o666 & ~_UMASK


def write_stdout(data: Data) -> None:
    """Write every byte to stdout or raise: a short write, a closed pipe or a full disk is an error."""
    parts = _parts(data)
    total, done = sum(p.nbytes for p in parts), 0
    sys.stdout.flush()
    try:
        fd = sys.stdout.fileno()
    except (AttributeError, OSError, ValueError):  # not a real file (tests): its own write, checked
        fd = None
    try:
        for part in parts:
            while part.nbytes:
                n = os.write(fd, part[: 1 << 24]) if fd is not None else sys.stdout.buffer.write(part)
                if not n:
                    raise OSError(0, "nothing was written")
                done += n
                part = part[n:]
        if fd is None:
            sys.stdout.buffer.flush()
    except BrokenPipeError:
        devnull = os.open(os.devnull, os.O_WRONLY)
        if fd is not None:
            os.dup2(devnull, fd)  # nothing more reaches the closed pipe (nor a traceback at exit)
        raise StdoutClosed(
            f"stdout: the reader closed the pipe after {done} of {total} bytes; the output is incomplete"
        ) from None
    except OSError as e:
        raise OutputError(
            f"stdout: cannot write ({e.strerror}) after {done} of {total} bytes; the output is incomplete", e.errno
        ) from None


def temp_target(name: str) -> str | None:
    """The output a temp file of `write_outputs` stands for (`.NAME.RANDOM.tmp` -> `NAME`), else None:
    how a later run recognises what a killed one left behind."""
    if not (name.startswith(".") and name.endswith(".tmp")):
        return None
    target, dot, _random = name[1:-4].rpartition(".")
    return target if dot and target else None


class _Staged:
    """One output written to a hidden temp file beside its target, waiting for its rename."""

    def __init__(self, path: str, data: Data, fsync: bool):
        self.path = Path(path)
        self.tmp = None
        parent = self.path.parent if str(self.path.parent) else Path(".")
        try:
            fd, self.tmp = tempfile.mkstemp(dir=parent, prefix=f".{self.path.name}.", suffix=".tmp")
            with os.fdopen(fd, "wb") as f:  # closes fd on every path from here
                os.fchmod(fd, _new_file_mode(self.path))
                for part in _parts(data):
                    f.write(part)
                f.flush()
                if fsync:
                    os.fsync(f.fileno())
        except BaseException:
            self.discard()
            raise

    def discard(self) -> None:
        if self.tmp is not None:
            Path(self.tmp).unlink(missing_ok=True)


def write_outputs(outputs: Iterable[tuple[str, Data]], fsync: bool = True) -> None:
    """Write several outputs so that all land or none: each goes to its temp file first, stdout (`-`,
    at most one) is written next, and only then are the files renamed into place. On any failure
    while writing (a full disk, Ctrl-C, SIGTERM) the temp files are removed and existing outputs keep
    their old contents. The renames themselves come last, one after another: only a failure of a
    rename (rare: the data is already on disk) can leave some outputs renamed and not the others.

    The rename alone makes a write atomic for readers and against a killed process; `fsync` also makes
    it durable against a power cut before the rename (batch jobs leave it off for speed)."""
    staged: list[_Staged] = []
    path = "-"
    try:
        to_stdout = None
        for path, data in outputs:
            if path == "-":
                to_stdout = data
            else:
                staged.append(_Staged(path, data, fsync))
        if to_stdout is not None:
            path = "-"
            write_stdout(to_stdout)
        for s in staged:
            path = str(s.path)
            os.replace(s.tmp, s.path)
    except BaseException as e:  # includes KeyboardInterrupt and Terminated
        for s in staged:
            s.discard()
        if isinstance(e, OSError):
            raise OutputError(f"{path}: cannot write: {e.strerror or e}", e.errno) from None
        raise


def write_output(path: str, data: Data, fsync: bool = True) -> None:
    """Write `data` (bytes, or a sequence of buffers written one after another) to `path` atomically,
    or to stdout for `-`. Nothing partial is ever left."""
    write_outputs([(path, data)], fsync)
