"""Read back every format `io.writers` writes: what `roicli inspect` shows and what batch resume checks.

- `describe(path, values)`: the tensors (key, shape, dtype) and the metadata, without reading the
  tensors unless `values` (a safetensors file from its header alone, with no torch import; .npz from
  each array's header; .pt through torch, memory-mapped; .parquet from its footer).
- `complete_metadata(path)`: the metadata of a whole file, or None for a missing, truncated or foreign
  one. Each format ends with the part that indexes it (the safetensors header's extent is checked
  against the file size; zip's central directory for .npz and .pt; Parquet's footer), so a truncated
  file does not read back.

Metadata comes back with the types it was written with, except that safetensors stores strings only:
there, values written as JSON (numbers, lists, dicts) come back as their JSON text.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Callable

from roicli.errors import InputError
from roicli.io.header import parse_header, read_complete_header, read_header

Description = tuple[list[dict], dict, dict]  # rows [{key, shape, dtype}], metadata, tensors (with values)


def describe(path: str, values: bool = False) -> Description:
    """The file's tensors and metadata; `path` `-` is a safetensors file on stdin."""
    suffix = "" if path == "-" else os.path.splitext(path)[1].lower()
    return _DESCRIBE.get(suffix, _safetensors)(path, values)


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


def _safetensors(path: str, values: bool) -> Description:
    from roicli.io.inputs import read_input

    source = "stdin" if path == "-" else path
    if path == "-" or values:  # stdin cannot seek: read it whole
        data = read_input(path, binary=True)
        header = parse_header(data, source, len(data))
    else:
        with _opened(path) as f:
            header = read_header(f, source, os.fstat(f.fileno()).st_size)
    tensors = {}
    if values:
        from roicli.io.features import load_safetensors

        tensors, _ = load_safetensors(data, source)
    return header.tensors(), header.metadata, tensors


@contextlib.contextmanager
def _opened(path: str):
    try:
        with open(path, "rb") as f:
            yield f
    except FileNotFoundError:
        raise InputError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise InputError(f"{path}: is a directory; expected a file") from None
    except PermissionError:
        raise InputError(f"{path}: permission denied") from None


def _row(key: str, shape, dtype) -> dict:
    return {"key": key, "shape": [int(d) for d in shape], "dtype": str(dtype).replace("torch.", "")}


def _npz(path: str, values: bool) -> Description:
    """Shapes from each member's .npy header (no data read unless `values`)."""
    import zipfile

    import numpy as np

    rows, metadata, tensors = [], {}, {}
    with _opened(path) as f:
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
            raise InputError(f"{path}: not a readable .npz file: {e}") from None
    return rows, metadata, tensors


def _pt(path: str, values: bool) -> Description:
    import torch

    with _opened(path):
        pass
    try:
        obj = torch.load(path, weights_only=True, mmap=True, map_location="cpu")
    except Exception as e:  # torch raises many types for a corrupt or foreign file
        raise InputError(f"{path}: not a readable .pt file (weights_only): {e}") from None
    if not isinstance(obj, dict):
        raise InputError(f"{path}: expected a dict of tensors, got {type(obj).__name__}")
    tensors = {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    rows = [_row(k, t.shape, t.dtype) for k, t in sorted(tensors.items())]
    metadata = obj.get("metadata", {})
    return rows, metadata if isinstance(metadata, dict) else {}, tensors


def _parquet(path: str, values: bool) -> Description:
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise InputError(f"{path}: reading .parquet needs pyarrow: pip install 'roicli[parquet]'") from None
    with _opened(path):
        pass
    try:
        pf = pq.ParquetFile(path)
        metadata = json.loads((pf.schema_arrow.metadata or {}).get(b"roicli", b"{}"))
    except Exception as e:  # pyarrow's own error types
        raise InputError(f"{path}: not a readable .parquet file: {e}") from None
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


_DESCRIBE: dict[str, Callable[[str, bool], Description]] = {".npz": _npz, ".pt": _pt, ".parquet": _parquet}
