"""`roicli show`: a PNG of RoI Pool's rounded bins against the exact bins and RoI Align's samples.

Start-up stays light: torch, numpy and the library (pipeline, figure, ops) are imported inside the
command.
"""

from __future__ import annotations

import io
import json
from typing import Annotated

import typer

from roicli.cli import pooling as opt
from roicli.cli._common import handle_errors, parse_output_size, stderr
from roicli.errors import InputError, UsageError
from roicli.io.output import check_output, write_output


def register(app: typer.Typer) -> None:
    app.command("show")(show)


@handle_errors
def show(
    features: opt.Features,
    rois: opt.Rois,
    output: Annotated[
        str, typer.Option("-o", "--output", help="The PNG to write (FILE.png, or - for stdout, not a terminal).")
    ],
    roi: Annotated[
        list[str] | None, typer.Option("--roi", help="RoI id to draw (repeatable). Default: the first 3.")
    ] = None,
    output_size: opt.OutputSize = "7",
    spatial_scale: opt.SpatialScale = None,
    stride: opt.Stride = None,
    sampling_ratio: Annotated[
        int, typer.Option(help="RoI Align's samples per bin axis; <= 0 is adaptive, ceil(roi_size / bins).")
    ] = -1,
    aligned: Annotated[
        bool,
        typer.Option(
            "--aligned/--no-aligned",
            help="RoI Align's half-pixel shift. Default --no-aligned, like `roicli align` and torchvision.",
        ),
    ] = False,
    channel: Annotated[
        int | None, typer.Option(help="Feature channel for the heat map. Default: channel mean.")
    ] = None,
    features_view: Annotated[
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
    size = parse_output_size(output_size)
    if not 64 <= max_size <= 4096:
        raise UsageError(f"--max-size: expected 64..4096, got {max_size}")
    if json_out and output == "-":
        raise UsageError("--json prints the summary on stdout, which -o - already uses for the PNG")
    check_output(output, [features, rois, backbone if backbone != "builtin" else ""], suffixes=(".png",))

    import numpy as np

    from roicli.figure import draw, heatmap
    from roicli.io.features import is_image_path
    from roicli.io.images import read_image
    from roicli.pipeline import PoolSpec, load_inputs, outside_rows, rois_and_levels

    spec = PoolSpec(
        output_size=size,
        spatial_scale=spatial_scale,
        stride=stride,
        sampling_ratio=sampling_ratio,
        aligned=aligned,
        key=key,
        backbone=backbone,
        box_format=box_format,
        rois_format=rois_format,
        device=device,
        dtype=dtype,
        canonical_size=canonical_size,
        canonical_level=canonical_level,
        max_image_pixels=max_image_pixels,
    )
    inputs = load_inputs(features, rois, spec)
    feats, roi_set = inputs.features, inputs.rois
    if len(roi_set) == 0:
        raise InputError(f"{roi_set.source}: holds no RoIs; nothing to draw")
    chosen = _choose(roi_set.ids, roi)
    console = stderr()
    # The level of each RoI exactly as the pooling commands assign it (same boxes, same dtype).
    rois_t, levels = rois_and_levels(inputs, spec)  # [K, 5], [K]
    levels = levels.cpu()
    level = int(levels[chosen[0]])
    if feats.is_pyramid:
        skipped = [repr(roi_set.ids[i]) for i in chosen if int(levels[i]) != level]
        chosen = [i for i in chosen if int(levels[i]) == level]
        if skipped and not quiet:
            console.print(
                f"Warning: RoI(s) {', '.join(skipped)} sit on other pyramid levels than {feats.keys[level]} "
                "(one level per picture); not drawn",
                markup=False,
            )
    fmap = feats.levels[level]
    scale = feats.scales[level]
    h, w = fmap.shape[-2:]
    off_map = set(outside_rows(inputs, levels))  # the pooling commands' test: no overlap with its map
    outside = [i for i in chosen if i in off_map]
    if outside:
        names = ", ".join(f"{roi_set.ids[i]!r} {[round(v, 4) for v in roi_set.boxes[i].tolist()]}" for i in outside)
        where = f"the {w / scale:g}x{h / scale:g} px feature map"
        where += f" {feats.keys[level]}" if feats.is_pyramid else ""
        if len(outside) == len(chosen):
            raise InputError(f"{roi_set.source}: RoI {names} lies entirely outside {where}; nothing to draw")
        if not quiet:
            console.print(f"Warning: RoI {names} lies entirely outside {where}; not drawn", markup=False)
        chosen = [i for i in chosen if i not in outside]
    batch = int(roi_set.batch[chosen[0]])
    if is_image_path(features) and not features_view:
        background = (read_image(features, max_image_pixels)[0].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
        background_scale = 1.0
    else:
        if channel is not None and not 0 <= channel < fmap.shape[1]:
            raise UsageError(f"--channel: expected 0..{fmap.shape[1] - 1}, got {channel}")
        values = fmap[batch, channel] if channel is not None else fmap[batch].float().mean(dim=0)
        background = heatmap(values.float().cpu().numpy())
        background_scale = scale
    ids = ", ".join(str(roi_set.ids[i]) for i in chosen)
    picture, _ = draw(
        background,
        background_scale,
        (h, w),
        scale,
        roi_set.boxes[chosen],
        size,
        sampling_ratio,
        aligned,
        max_size=max_size,
        crop=not full,
        legend=[f"{size[0]}x{size[1]} bins, spatial scale {scale:g}, sampling_ratio {sampling_ratio}, "
                f"aligned={aligned}; RoIs {ids}"],
        dtype=rois_t.dtype,
    )  # fmt: skip
    buf = io.BytesIO()
    picture.save(buf, format="PNG")
    write_output(output, buf.getvalue())
    if json_out:
        summary = {
            "rois": [roi_set.ids[i] for i in chosen],
            "output": output,
            "size": [picture.width, picture.height],
            "level": feats.keys[level] if feats.is_pyramid else None,
            "spatial_scale": scale,
            "output_size": list(size),
            "sampling_ratio": sampling_ratio,
            "aligned": aligned,
        }
        typer.echo(json.dumps(summary))
    elif not quiet:
        on = f"level {feats.keys[level]}, " if feats.is_pyramid else ""
        console.print(
            f"show: {len(chosen)} RoI(s) -> {output} ({picture.width}x{picture.height}); {on}spatial scale {scale:g}",
            markup=False,
        )


def _choose(ids: list, wanted: list[str] | None) -> list[int]:
    if not wanted:
        return list(range(min(3, len(ids))))
    out = []
    for w in wanted:
        match = [i for i, v in enumerate(ids) if str(v) == w]
        if not match:
            raise UsageError(f"--roi: no RoI with id {w!r}; ids: {', '.join(map(str, ids[:10]))}")
        out.append(match[0])
    return out
