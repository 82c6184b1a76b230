"""`roicli inspect`: keys, shapes, dtypes and metadata of an output file (every format roicli writes).

A safetensors file is read from its header alone (no tensor is read, and torch is not imported);
.npz from each array's header; .pt and .parquet through torch and pyarrow. --values reads the data.
"""

from __future__ import annotations

import contextlib
import json
import os
from typing import Annotated

import typer

from roicli.cli._common import handle_errors
from roicli.cli.render import render_text
from roicli.errors import InputError
from roicli.io.header import Header, parse_header, read_header


def register(app: typer.Typer) -> None:
    app.command("inspect")(inspect)


@handle_errors
def inspect(
    file: Annotated[
        str,
        typer.Argument(
            metavar="FILE",
            help="A .safetensors, .npz, .pt or .parquet file roicli wrote, or - for safetensors on stdin.",
        ),
    ],
    values: Annotated[
        bool, typer.Option("--values", help="Also read the tensors and show min, max, mean and NaN count.")
    ] = False,
    json_out: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
) -> None:
    """Show the tensors (key, shape, dtype) and the metadata of an output file."""
    source = "stdin" if file == "-" else file
    suffix = "" if file == "-" else os.path.splitext(file)[1].lower()
    if suffix in _OTHER_FORMATS:
        rows, metadata, tensors = _OTHER_FORMATS[suffix](file, values)
    else:
        header, data = _read(file, source, values)
        rows, metadata, tensors = header.tensors(), header.metadata, None
        if values:
            from roicli.io.features import load_safetensors

            tensors, _ = load_safetensors(data, source)
    if values:
        for r in rows:
            r.update(_stats(tensors[r["key"]]))
    if json_out:
        typer.echo(json.dumps({"file": source, "tensors": rows, "metadata": metadata}, indent=2))
        return
    typer.echo(render_text([{**r, "shape": "x".join(map(str, r["shape"])) or "scalar"} for r in rows],
                           "table", title=source), nl=False)
    if metadata:
        shown = [
            {"metadata": k, "value": v if isinstance(v, str) else json.dumps(v)} for k, v in sorted(metadata.items())
        ]
        typer.echo(render_text(shown, "table"), nl=False)


def _read(file: str, source: str, whole: bool) -> tuple[Header, bytes | None]:
    """The header; the whole file too when `whole` (or when it comes from stdin, which cannot seek)."""
    from roicli.io.inputs import read_input

    if file == "-" or whole:
        data = read_input(file, binary=True)
        return parse_header(data, source, len(data)), data
    with _opened(file) as f:
        return read_header(f, source, os.fstat(f.fileno()).st_size), None


@contextlib.contextmanager
def _opened(file: str):
    try:
        with open(file, "rb") as f:
            yield f
    except FileNotFoundError:
        raise InputError(f"{file}: no such file") from None
    except IsADirectoryError:
        raise InputError(f"{file}: is a directory; expected a file") from None
    except PermissionError:
        raise InputError(f"{file}: permission denied") from None


def _row(key: str, shape, dtype) -> dict:
    return {"key": key, "shape": [int(d) for d in shape], "dtype": str(dtype).replace("torch.", "")}


def _npz(file: str, values: bool):
    """Shapes from each member's .npy header (no data read unless --values)."""
    import zipfile

    import numpy as np

    rows, metadata, tensors = [], {}, {}
    with _opened(file) as f:
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
        except (zipfile.BadZipFile, ValueError, OSError) as e:
            raise InputError(f"{file}: not a readable .npz file: {e}") from None
    return rows, metadata, tensors


def _pt(file: str, values: bool):
    import torch

    with _opened(file):
        pass
    try:
        obj = torch.load(file, weights_only=True, mmap=True, map_location="cpu")
    except Exception as e:  # torch raises many types for a corrupt or foreign file
        raise InputError(f"{file}: not a readable .pt file (weights_only): {e}") from None
    if not isinstance(obj, dict):
        raise InputError(f"{file}: expected a dict of tensors, got {type(obj).__name__}")
    tensors = {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    rows = [_row(k, t.shape, t.dtype) for k, t in sorted(tensors.items())]
    return rows, obj.get("metadata", {}), tensors


def _parquet(file: str, values: bool):
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise InputError(f"{file}: reading .parquet needs pyarrow: pip install 'roicli[parquet]'") from None
    with _opened(file):
        pass
    try:
        pf = pq.ParquetFile(file)
    except Exception as e:  # pyarrow's own error types
        raise InputError(f"{file}: not a readable .parquet file: {e}") from None
    schema, n = pf.schema_arrow, pf.metadata.num_rows
    metadata = json.loads((schema.metadata or {}).get(b"roicli", b"{}"))
    rows = []
    for field in schema:
        size = getattr(field.type, "list_size", None)
        dtype = field.type.value_type if size is not None else field.type
        rows.append({"key": field.name, "shape": [n, size] if size is not None else [n], "dtype": str(dtype)})
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
            tensors[r["key"]] = torch.from_numpy(np.asarray(arr, dtype=np.float64))
    return rows, metadata, tensors


_OTHER_FORMATS = {".npz": _npz, ".pt": _pt, ".parquet": _parquet}


def _stats(t) -> dict:
    import torch

    if t.numel() == 0 or t.dtype == torch.bool:
        return {"min": None, "max": None, "mean": None, "nan": 0}
    x = t.double()
    finite = x[torch.isfinite(x)]
    if finite.numel() == 0:
        return {"min": None, "max": None, "mean": None, "nan": int(torch.isnan(x).sum())}
    return {"min": float(finite.min()), "max": float(finite.max()), "mean": float(finite.mean()),
            "nan": int(torch.isnan(x).sum())}
