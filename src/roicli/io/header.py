"""Read a safetensors header (tensor names, dtypes, shapes, metadata) without reading the tensors
and without importing torch: `roicli inspect` and batch resume need nothing more.

Layout: 8 bytes little-endian header length n, n bytes of JSON, then the tensors' bytes; each entry's
`data_offsets` [begin, end) count from the end of the header.
"""

from __future__ import annotations

import json
import os
import struct
from dataclasses import dataclass
from typing import BinaryIO

from roicli.errors import InputError

MAX_HEADER = 100_000_000
_ITEM_SIZES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1, "BOOL": 1}


@dataclass
class Header:
    entries: dict  # name -> {"dtype": "F32", "shape": [...], "data_offsets": [begin, end]}
    metadata: dict
    data_start: int  # 8 + n
    data_end: int  # the end of the last tensor's bytes: the complete file's size

    def tensors(self) -> list[dict]:
        """[{key, shape, dtype}] in name order, dtype as torch names it (float32, ...)."""
        names = {"F64": "float64", "F32": "float32", "F16": "float16", "BF16": "bfloat16", "I64": "int64",
                 "I32": "int32", "I16": "int16", "I8": "int8", "U8": "uint8", "BOOL": "bool"}
        return [
            {"key": k, "shape": list(e["shape"]), "dtype": names.get(e["dtype"], e["dtype"])}
            for k, e in sorted(self.entries.items())
        ]


def parse_header(head: bytes, source: str, size: int | None = None) -> Header:
    """`head`: the file's first bytes (at least the 8 + n header bytes); `size`: the file's total size,
    checked against the tensors' extent (a truncated file is an error). Validates every entry."""
    if len(head) < 8:
        raise InputError(f"{source}: not a safetensors file (only {len(head)} bytes)")
    (n,) = struct.unpack("<Q", head[:8])
    if n > MAX_HEADER or (size is not None and n > size - 8) or len(head) < 8 + n:
        raise InputError(f"{source}: not a safetensors file, or a truncated one (bad header length)")
    try:
        header = json.loads(head[8 : 8 + n])
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):
        raise InputError(f"{source}: not a safetensors file (header is not JSON)") from None
    if not isinstance(header, dict):
        raise InputError(f"{source}: not a safetensors file (header is not a JSON object)")
    metadata = header.pop("__metadata__", None) or {}
    if not isinstance(metadata, dict):
        raise InputError(f"{source}: not a safetensors file (__metadata__ is not an object)")
    spans = []
    for name, e in header.items():
        try:
            begin, stop = (int(x) for x in e["data_offsets"])
            count = 1
            for d in e["shape"]:
                count *= int(d)
            ok = 0 <= begin <= stop and stop - begin == count * _ITEM_SIZES[e["dtype"]]
        except (TypeError, KeyError, ValueError):
            ok = False
        if not ok:
            raise InputError(f"{source}: not a safetensors file (bad entry for tensor {name!r})")
        spans.append((begin, stop))
    end = 0
    for begin, stop in sorted(spans):  # the tensors tile the data: no gap, no overlap
        if begin != end:
            raise InputError(f"{source}: not a safetensors file (tensor data has a gap or an overlap)")
        end = stop
    if size is not None and 8 + n + end > size:
        raise InputError(
            f"{source}: truncated safetensors file: tensors need {end} bytes of data, found {size - 8 - n}"
        )
    return Header(header, metadata, 8 + n, 8 + n + end)


def read_complete_header(path: str | os.PathLike) -> Header | None:
    """The header of `path` when it is a whole safetensors file (its size is exactly the header's
    end), else None: how a resume decides, cheaply, whether an output can be trusted."""
    try:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            header = read_header(f, str(path), size)
    except (OSError, InputError):
        return None
    return header if header.data_end == size else None


def read_header(f: BinaryIO, source: str, size: int | None = None) -> Header:
    """Read just the header from an open binary file (positioned at its start)."""
    first = f.read(8)
    if len(first) == 8:
        (n,) = struct.unpack("<Q", first)
        if n <= MAX_HEADER:
            first += f.read(n)
    return parse_header(first, source, size)
