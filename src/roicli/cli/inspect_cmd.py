"""`roicli inspect`: keys, shapes, dtypes and metadata of a safetensors file."""

from __future__ import annotations

import json
from typing import Annotated

import typer

from roicli.cli._common import handle_errors
from roicli.cli.render import render_text
from roicli.io.features import load_safetensors
from roicli.io.output import read_input


def register(app: typer.Typer) -> None:
    app.command("inspect")(inspect)


@handle_errors
def inspect(
    file: Annotated[str, typer.Argument(help="A .safetensors file, or - for its bytes on stdin.")],
    json_out: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
) -> None:
    """Show the tensors (key, shape, dtype) and the metadata of a safetensors file."""
    source = "stdin" if file == "-" else file
    tensors, meta = load_safetensors(read_input(file, binary=True), source)
    rows = [{"key": k, "shape": list(t.shape), "dtype": str(t.dtype).replace("torch.", "")}
            for k, t in sorted(tensors.items())]
    if json_out:
        typer.echo(json.dumps({"file": source, "tensors": rows, "metadata": meta}, indent=2))
        return
    typer.echo(render_text([{**r, "shape": "x".join(map(str, r["shape"])) or "scalar"} for r in rows],
                           "table", title=source), nl=False)
    if meta:
        typer.echo(render_text([{"metadata": k, "value": v} for k, v in sorted(meta.items())], "table"), nl=False)
