"""Read a whole input, a file or stdin (`-`), with one-line errors that name it."""

from __future__ import annotations

import sys
from pathlib import Path

from roicli.errors import InputError


def read_input(path: str, binary: bool = False) -> bytes | str:
    """Read a whole input file, or stdin for `-`."""
    try:
        if path == "-":
            if sys.stdin is None or sys.stdin.closed:
                raise InputError("stdin: is closed; pipe the input in or give a file")
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
    except OSError as e:  # e.g. stdin closed (`<&-`): EBADF
        raise InputError(f"{'stdin' if path == '-' else path}: cannot read: {e.strerror or e}") from None
    if binary:
        return data
    source = "stdin" if path == "-" else path
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise InputError(f"{source}: not UTF-8 text (byte {e.start})") from None
