"""`roicli kernels`: build the compiled kernels ahead of time and say which implementation serves
each op on each device (the choice `roicli.ops.kernels.select` makes; ROICLI_KERNEL forces one)."""

from __future__ import annotations

import json
from typing import Annotated

import typer

from roicli.cli._common import handle_errors
from roicli.cli.render import render_text


def register(app: typer.Typer) -> None:
    app.command("kernels")(kernels)


@handle_errors
def kernels(
    json_out: Annotated[bool, typer.Option("--json", help="Print JSON instead of tables.")] = False,
) -> None:
    """Build the C++ kernels now (they are otherwise built on first use, once per torch version) and
    report which implementation (cpp, triton, torch) each op uses on each device here."""
    import torch

    from roicli.errors import KernelUnavailable
    from roicli.ops.kernels import select

    implementations = [
        {"implementation": name, "available": ok, "detail": detail} for name, (ok, detail) in select.available().items()
    ]
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    used = []
    for device in devices:
        try:
            chosen = {v: k for k, v in select.IMPLEMENTATIONS.items()}[select.kernel_for(torch.device(device)).__name__]
        except KernelUnavailable as e:
            chosen = f"none ({e})"
        used.append({"device": device, "ops": "roi_align, roi_pool, precise_roi_pool", "implementation": chosen})
    forced = select.forced()
    if json_out:
        typer.echo(json.dumps({"implementations": implementations, "devices": used, "forced": forced}, indent=2))
        return
    typer.echo(render_text(implementations, "table", title="Kernel implementations"), nl=False)
    title = "Used here" + (f" (forced by {select.ENV_VAR}={forced})" if forced else "")
    typer.echo(render_text(used, "table", title=title), nl=False)
