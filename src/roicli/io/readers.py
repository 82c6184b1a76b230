"""Read back every format `io.writers` writes: what `roicli inspect` shows and what batch resume checks.

- `describe(path, values)`: the tensors (key, shape, dtype) and the metadata, without reading the
  tensors unless `values` (a safetensors file from its header alone, with no torch import; .npz from
  each array's header; .pt through torch, memory-mapped; .parquet from its footer). A file's format
  is its extension's; stdin's (`-`) is told by its first bytes.
- `complete_metadata(path)`: the metadata of a whole file, or None for a missing, truncated or foreign
  one. Each format ends with the part that indexes it (the safetensors header's extent is checked
  against the file size; zip's central directory for .npz and .pt; Parquet's footer), so a truncated
  file does not read back.

Metadata comes back with the types it was written with, except that safetensors stores strings only:
there, values written as JSON (numbers, lists, dicts) come back as their JSON text.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
from collections.abc import Callable
from typing import BinaryIO

from roicli.errors import InputError
from roicli.io.header import parse_header, read_complete_header, read_header

Description = tuple[list[dict], dict, dict]  # rows [{key, shape, dtype}], metadata, tensors (with values)
Source = str | BinaryIO  # a file's path, or a file object (stdin's bytes)


def describe(path: str, values: bool = False) -> Description:
    """The file's tensors and metadata; `path` `-` reads stdin, in any of the formats."""
    if path == "-":
        from roicli.io.inputs import read_input

        data = read_input("-", binary=True)
        return _DESCRIBE.get(_sniff(data), _safetensors)(io.BytesIO(data), values)
    return _DESCRIBE.get(os.path.splitext(path)[1].lower(), _safetensors)(path, values)


def _sniff(data: bytes) -> str:
    """The format of a whole file's bytes: Parquet and zip (.npz, or torch.save's .pt) by their magic."""
    if data[:4] == b"PAR1":
        return ".parquet"
    if data[:4] == b"PK\x03\x04":
        import zipfile

        with contextlib.suppress(zipfile.BadZipFile):
            names = zipfile.ZipFile(io.BytesIO(data)).namelist()
            return ".npz" if all(n.endswith(".npy") for n in names) else ".pt"
    return ".safetensors"


def _name(src: Source) -> str:
    return src if isinstance(src, str) else "stdin"


def complete_metadata(path: str | os.PathLike) -> dict | None:
    """The metadata of `path` when it is a complete file in the format its extension names, else None."""
    suffix = os.path.splitext(str(path))[1].lower()
    if suffix not in _DESCRIBE:
        header = read_complete_header(path)
        return None if header is None else header.metadata
    try:
        return _DESCRIBE[suffix](str(path), False)[1]
    except InputError:
        return None


def _safetensors(src: Source, values: bool) -> Description:
    name = _name(src)
    if values or not isinstance(src, str):
        if isinstance(src, str):
            from roicli.io.inputs import read_input

            data = read_input(src, binary=True)
        else:
            data = src.getvalue()
        header = parse_header(data, name, len(data))
    else:
        with _opened(src) as f:
            header = read_header(f, name, os.fstat(f.fileno()).st_size)
    tensors = {}
    if values:
        from roicli.io.features import load_safetensors

        tensors, _ = load_safetensors(data, name)
    return header.tensors(), header.metadata, tensors


@contextlib.contextmanager
def _opened(src: Source):
    """The file open for reading (a file object as it is), with one-line errors that name it."""
    if not isinstance(src, str):
        yield src
        return
    try:
        with open(src, "rb") as f:
            yield f
    except FileNotFoundError:
        raise InputError(f"{src}: no such file") from None
    except IsADirectoryError:
        raise InputError(f"{src}: is a directory; expected a file") from None
    except PermissionError:
        raise InputError(f"{src}: permission denied") from None


def _row(key: str, shape, dtype) -> dict:
    return {"key": key, "shape": [int(d) for d in shape], "dtype": str(dtype).replace("torch.", "")}


def _npz(src: Source, values: bool) -> Description:
    """Shapes from each member's .npy header (no data read unless `values`)."""
    import zipfile

    import numpy as np

    rows, metadata, tensors = [], {}, {}
    with _opened(src) as f:
        try:
            with zipfile.ZipFile(f) as z:
                for name in sorted(z.namelist()):
                    key = name.removesuffix(".npy")
                    with z.open(name) as member:
                        version = np.lib.format.read_magic(member)
                        read = np.lib.format.read_array_header_1_0 if version == (1, 0) else (
                            np.lib.format.read_array_header_2_0
                        )
                        shape, _, dtype = read(member)
                    if key == "__metadata__":
                        metadata = json.loads(str(np.load(z.open(name), allow_pickle=False)))
                        continue
                    rows.append(_row(key, shape, dtype))
                    if values:
                        import torch

                        tensors[key] = torch.from_numpy(np.load(z.open(name), allow_pickle=False))
        except (zipfile.BadZipFile, ValueError, OSError, EOFError) as e:
            raise InputError(f"{_name(src)}: not a readable .npz file: {e}") from None
    return rows, metadata, tensors


def _pt(src: Source, values: bool) -> Description:
    import torch

    with _opened(src):
        pass
    try:
        obj = torch.load(src, weights_only=True, mmap=isinstance(src, str), map_location="cpu")
    except Exception as e:  # torch raises many types for a corrupt or foreign file
        raise InputError(f"{_name(src)}: not a readable .pt file (weights_only): {e}") from None
    if not isinstance(obj, dict):
        raise InputError(f"{_name(src)}: expected a dict of tensors, got {type(obj).__name__}")
    tensors = {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    rows = [_row(k, t.shape, t.dtype) for k, t in sorted(tensors.items())]
    metadata = obj.get("metadata", {})
    return rows, metadata if isinstance(metadata, dict) else {}, tensors


def _parquet(src: Source, values: bool) -> Description:
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise InputError(f"{_name(src)}: reading .parquet needs pyarrow: pip install 'roicli[parquet]'") from None
    with _opened(src):
        pass
    try:
        pf = pq.ParquetFile(src)
        metadata = json.loads((pf.schema_arrow.metadata or {}).get(b"roicli", b"{}"))
    except Exception as e:  # pyarrow's own error types
        raise InputError(f"{_name(src)}: not a readable .parquet file: {e}") from None
    schema, n = pf.schema_arrow, pf.metadata.num_rows
    rows = []
    for f in schema:
        size = getattr(f.type, "list_size", None)
        dtype = f.type.value_type if size is not None else f.type
        rows.append({"key": f.name, "shape": [n, size] if size is not None else [n], "dtype": str(dtype)})
    tensors = {}
    if values:
        import numpy as np
        import torch

        table = pf.read()
        for r in rows:
            col = table.column(r["key"]).combine_chunks()
            if r["dtype"] in ("string", "large_string"):
                tensors[r["key"]] = torch.zeros(0)
                continue
            arr = col.flatten().to_numpy(zero_copy_only=False) if len(r["shape"]) == 2 else col.to_numpy()
            tensors[r["key"]] = torch.from_numpy(np.array(arr, dtype=np.float64))
    return rows, metadata if isinstance(metadata, dict) else {}, tensors


_DESCRIBE: dict[str, Callable[[Source, bool], Description]] = {".npz": _npz, ".pt": _pt, ".parquet": _parquet}
