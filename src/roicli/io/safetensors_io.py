"""Write safetensors deterministically: the same tensors and metadata give the same bytes, in any
process (the reference writer orders the metadata by hash). Tensors are stored in name order, the
header's keys sorted, the header padded with spaces to 8 bytes, as the format allows."""

from __future__ import annotations

import json
import struct

import torch

_DTYPES = {
    torch.float64: "F64",
    torch.float32: "F32",
    torch.float16: "F16",
    torch.bfloat16: "BF16",
    torch.int64: "I64",
    torch.int32: "I32",
    torch.int16: "I16",
    torch.int8: "I8",
    torch.uint8: "U8",
    torch.bool: "BOOL",
}


def _raw(t: torch.Tensor) -> memoryview:
    """The tensor's bytes, without a copy when it is already a contiguous CPU tensor."""
    t = t.detach().to("cpu").contiguous()
    if t.dtype in (torch.bfloat16, torch.float16):
        t = t.view(torch.int16)
    return memoryview(t.numpy().reshape(-1)).cast("B")


def dumps(tensors: dict[str, torch.Tensor], metadata: dict | None = None) -> bytes:
    return b"".join(dump_parts(tensors, metadata))  # one copy of the data


def dump_parts(
    tensors: dict[str, torch.Tensor | list[torch.Tensor]], metadata: dict | None = None
) -> list[memoryview]:
    """The file as a list of buffers (the 8-byte length + header, then each tensor's bytes), to be
    written one after another without joining them: no second copy of a large output in memory.

    A value may be a list of tensors of one dtype and trailing shape: it is stored as their
    concatenation along dim 0 (the same bytes as `torch.cat`), streamed piece by piece."""
    header: dict = {}
    if metadata:
        # The format's metadata is strings only: numbers, booleans and lists go in as JSON.
        header["__metadata__"] = {k: v if isinstance(v, str) else json.dumps(v) for k, v in sorted(metadata.items())}
    blobs, offset = [], 0
    for name in sorted(tensors):
        pieces = tensors[name] if isinstance(tensors[name], list) else [tensors[name]]
        data = [_raw(t) for t in pieces]
        size = sum(d.nbytes for d in data)
        header[name] = {
            "dtype": _DTYPES[pieces[0].dtype],
            "shape": [sum(t.shape[0] for t in pieces), *pieces[0].shape[1:]] if pieces[0].dim() else [],
            "data_offsets": [offset, offset + size],
        }
        blobs += data
        offset += size
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    return [memoryview(struct.pack("<Q", len(text)) + text), *blobs]
