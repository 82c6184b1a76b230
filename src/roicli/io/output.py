"""Write outputs atomically (temp file in the same folder, then rename) or to stdout."""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

from roicli.errors import OutputError, UsageError


def check_output(path: str, inputs: list[str], binary: bool = True) -> None:
    """Refuse, before any work, outputs that cannot or must not be written."""
    if path == "-":
        if binary and sys.stdout.isatty():
            raise UsageError("refusing to write binary safetensors to a terminal; pipe it or use -o FILE")
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


def write_output(path: str, data: bytes, fsync: bool = True) -> None:
    """Write `data` to `path` atomically, or to stdout for `-`. Nothing partial is ever left.

    The rename alone makes the write atomic for readers and against a killed process; `fsync` also
    makes it durable against a power cut before the rename (batch jobs turn it off for speed)."""
    if path == "-":
        out = sys.stdout.buffer
        out.write(data)
        out.flush()
        return
    p = Path(path)
    fd, tmp = tempfile.mkstemp(dir=p.parent if str(p.parent) else ".", prefix=f".{p.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            if fsync:
                os.fsync(f.fileno())
        os.replace(tmp, p)
    except BaseException as e:  # includes KeyboardInterrupt: remove the temp file, keep the old output
        Path(tmp).unlink(missing_ok=True)
        if isinstance(e, OSError):
            raise OutputError(f"{path}: cannot write: {e.strerror}") from None
        raise


def read_input(path: str, binary: bool = False) -> bytes | str:
    """Read a whole input file, or stdin for `-`."""
    from roicli.errors import InputError

    try:
        if path == "-":
            data = sys.stdin.buffer.read()
        else:
            p = Path(path)
            if p.is_dir():
                raise InputError(f"{path}: is a directory; expected a file")
            data = p.read_bytes()
    except FileNotFoundError:
        raise InputError(f"{path}: no such file") from None
    except PermissionError:
        raise InputError(f"{path}: permission denied") from None
    if binary:
        return data
    source = "stdin" if path == "-" else path
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise InputError(f"{source}: not UTF-8 text (byte {e.start})") from None
