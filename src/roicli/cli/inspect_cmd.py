"""`roicli inspect`: keys, shapes, dtypes and metadata of a safetensors file, from its header alone
(no tensor is read, and torch is not imported, unless --values asks for statistics)."""

from __future__ import annotations

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
    file: Annotated[str, typer.Argument(metavar="FILE", help="A .safetensors file, or - for its bytes on stdin.")],
    values: Annotated[
        bool, typer.Option("--values", help="Also read the tensors and show min, max, mean and NaN count.")
    ] = False,
    json_out: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
) -> None:
    """Show the tensors (key, shape, dtype) and the metadata of a safetensors file."""
    source = "stdin" if file == "-" else file
    header, data = _read(file, source, values)
    rows = header.tensors()
    if values:
        from roicli.io.features import load_safetensors

        tensors, _ = load_safetensors(data, source)
        for r in rows:
            r.update(_stats(tensors[r["key"]]))
    if json_out:
        typer.echo(json.dumps({"file": source, "tensors": rows, "metadata": header.metadata}, indent=2))
        return
    typer.echo(render_text([{**r, "shape": "x".join(map(str, r["shape"])) or "scalar"} for r in rows],
                           "table", title=source), nl=False)
    if header.metadata:
        typer.echo(render_text([{"metadata": k, "value": v} for k, v in sorted(header.metadata.items())], "table"),
                   nl=False)


def _read(file: str, source: str, whole: bool) -> tuple[Header, bytes | None]:
    """The header; the whole file too when `whole` (or when it comes from stdin, which cannot seek)."""
    from roicli.io.output import read_input

    if file == "-" or whole:
        data = read_input(file, binary=True)
        return parse_header(data, source, len(data)), data
    try:
        with open(file, "rb") as f:
            return read_header(f, source, os.fstat(f.fileno()).st_size), None
    except FileNotFoundError:
        raise InputError(f"{file}: no such file") from None
    except IsADirectoryError:
        raise InputError(f"{file}: is a directory; expected a file") from None
    except PermissionError:
        raise InputError(f"{file}: permission denied") from None


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
