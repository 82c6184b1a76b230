"""`roicli show`: a PNG of RoI Pool's rounded bins against the exact bins and RoI Align's samples.

Start-up stays light: torch, numpy and the library (pipeline, figure, ops) are imported inside the
command.
"""

from __future__ import annotations

import io
import json
from typing import Annotated

import typer

from roicli import registry
from roicli.cli import pooling as opt
from roicli.cli._common import handle_errors, stderr
from roicli.errors import UsageError
from roicli.io.output import check_output, write_output


def register(app: typer.Typer) -> None:
    app.command("show")(show)


SamplingRatio = opt.op_option(
    registry.OPS["align"].param("sampling_ratio"),
    -1,
    help="RoI Align's samples per bin axis; <= 0 is adaptive, ceil(roi_size / bins).",
)
Aligned = opt.op_option(
    registry.OPS["align"].param("aligned"),
    False,
    help="RoI Align's half-pixel shift. Default --no-aligned, like `roicli align` and torchvision.",
)


@handle_errors
def show(
    features: opt.Features,
    rois: opt.Rois,
    output: Annotated[
        str, typer.Option("-o", "--output", help="The PNG to write (FILE.png, or - for stdout, not a terminal).")
    ],
    ids: Annotated[
        list[str] | None, typer.Option("--roi", help="RoI id to draw (repeatable). Default: the first 3.")
    ] = None,
    output_size: opt.OutputSize = "7",
    spatial_scale: opt.SpatialScale = None,
    stride: opt.Stride = None,
    sampling_ratio: SamplingRatio = -1,
    aligned: Aligned = False,
    channel: Annotated[
        int | None, typer.Option(help="Feature channel for the heat map. Default: channel mean.")
    ] = None,
    heatmap: Annotated[
        bool, typer.Option("--heatmap", help="For image inputs: draw the backbone's features, not the image.")
    ] = False,
    full: Annotated[bool, typer.Option("--full", help="Show the whole map instead of zooming to the RoIs.")] = False,
    max_size: Annotated[int, typer.Option(help="Longest side of the picture, in pixels (64..4096).")] = 1200,
    key: opt.Key = None,
    backbone: opt.Backbone = "builtin",
    box_format: opt.BoxFormat = None,
    rois_format: opt.RoisFormat = "auto",
    device: opt.Device = "auto",
    dtype: opt.Dtype = None,
    canonical_size: opt.CanonicalSize = 224,
    canonical_level: opt.CanonicalLevel = 4,
    max_image_pixels: opt.MaxImagePixels = None,
    json_out: opt.Json = False,
    quiet: opt.Quiet = False,
) -> None:
    """Draw the exact RoI and bins (green), RoI Pool's rounded RoI and integer bins (red) and RoI
    Align's sample points (blue) over the feature map's heat map or the image. Same defaults as
    `roicli align`; pyramid levels are assigned exactly as the pooling commands assign them."""
    options = dict(locals())
    output, json_out, quiet = options.pop("output"), options.pop("json_out"), options.pop("quiet")
    from roicli.pipeline import parse_output_size

    parse_output_size(output_size)  # the first error, as ever
    if json_out and output == "-":
        raise UsageError("--json prints the summary on stdout, which -o - already uses for the PNG")
    check_output(output, [features, rois, backbone if backbone != "builtin" else ""], suffixes=(".png",))

    from roicli import api

    picture = api.show(options.pop("features"), options.pop("rois"), **options)
    drawn = picture.info.pop("roicli")
    console = stderr()
    if not quiet:
        for warning in drawn.pop("warnings"):
            console.print(f"Warning: {warning}", markup=False)
    buf = io.BytesIO()
    picture.save(buf, format="PNG")
    write_output(output, buf.getvalue())
    if json_out:
        summary = {
            "rois": drawn["rois"],
            "output": output,
            "size": [picture.width, picture.height],
            "level": drawn["level"],
            "spatial_scale": drawn["spatial_scale"],
            "output_size": drawn["output_size"],
            "sampling_ratio": drawn["sampling_ratio"],
            "aligned": drawn["aligned"],
        }
        typer.echo(json.dumps(summary))
    elif not quiet:
        on = f"level {drawn['level']}, " if drawn["level"] is not None else ""
        console.print(
            f"show: {len(drawn['rois'])} RoI(s) -> {output} ({picture.width}x{picture.height}); {on}"
            f"spatial scale {drawn['spatial_scale']:g}",
            markup=False,
        )
