"""`roicli inspect`: keys, shapes, dtypes and metadata of an output file (every format roicli writes,
read by `roicli.io.readers`: a safetensors file from its header alone, with no torch import).
--values reads the data."""

from __future__ import annotations

import json
from typing import Annotated

import typer

from roicli.cli._common import handle_errors
from roicli.cli.render import render_text
from roicli.io.readers import describe


def register(app: typer.Typer) -> None:
    app.command("inspect")(inspect)


@handle_errors
def inspect(
    file: Annotated[
        str,
        typer.Argument(
            metavar="FILE",
            help="A .safetensors, .npz, .pt or .parquet file roicli wrote, or - for stdin (any of them).",
        ),
    ],
    values: Annotated[
        bool, typer.Option("--values", help="Also read the tensors and show min, max, mean and NaN count.")
    ] = False,
    json_out: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
) -> None:
    """Show the tensors (key, shape, dtype) and the metadata of an output file."""
    source = "stdin" if file == "-" else file
    rows, metadata, tensors = describe(file, values)
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
