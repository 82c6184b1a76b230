"""`roicli align`, `roicli pool` and `roicli precise`: feature maps + RoIs in, pooled safetensors out."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Literal

import typer

from roicli.cli._common import handle_errors, parse_output_size, show_progress, stderr
from roicli.errors import UsageError
from roicli.io.output import check_output, write_outputs

if TYPE_CHECKING:  # torch is imported inside the commands, so that `--help` stays fast
    from roicli.pipeline import PoolSpec

OUTPUT_SUFFIXES = (".safetensors",)
REPORT_SUFFIXES = (".json", ".jsonl", ".ndjson", ".csv")

# Options shared by the three commands (declared once).
Features = Annotated[
    str,
    typer.Argument(
        metavar="FEATURES", help="Feature file (.safetensors), an image, or - for safetensors bytes on stdin."
    ),
]
Rois = Annotated[str, typer.Argument(metavar="ROIS", help="RoIs: JSON, JSON Lines or CSV file, or - for stdin.")]
Output = Annotated[
    str, typer.Option("-o", "--output", help="Output .safetensors file, or - for stdout (not a terminal).")
]
OutputSize = Annotated[str, typer.Option(help="Bins per RoI: 7 or PHxPW such as 7x5.")]
SpatialScale = Annotated[
    float | None, typer.Option(help="Feature cells per image pixel (1/stride). Default: the file's metadata, else 1.0.")
]
Stride = Annotated[float | None, typer.Option(help="Backbone stride in image pixels (spatial scale = 1/stride).")]
Key = Annotated[
    str | None,
    typer.Option(
        help="Tensor to pool when the file holds several; comma-separated keys (finest first) pool a pyramid."
    ),
]
Backbone = Annotated[
    str, typer.Option(help="For image inputs: 'builtin' (fixed filter bank, stride 8) or a TorchScript file.")
]
BoxFormat = Annotated[
    Literal["xyxy", "xywh", "cxcywh"] | None,
    typer.Option(help="xyxy (default), xywh (COCO) or cxcywh. CSV headers x,y,w,h / cx,cy,w,h imply it."),
]
RoisFormat = Annotated[
    Literal["auto", "json", "jsonl", "csv"], typer.Option(help="auto (sniffed from the name and contents).")
]
Device = Annotated[
    str, typer.Option(metavar="auto|cpu|cuda|cuda:N|mps", help="auto: CUDA when available, else the CPU.")
]
Dtype = Annotated[
    Literal["float32", "float64", "float16", "bfloat16"] | None,
    typer.Option(help="Compute dtype. Default: the features'."),
]
Mode = Annotated[
    Literal["avg", "max"], typer.Option(help="avg (torchvision) or max (mmcv's max of the bilinear samples).")
]
MaxImagePixels = Annotated[
    int | None,
    typer.Option(help="Image inputs larger than this are refused (a decompression bomb guard). Default: 100000000."),
]
CanonicalSize = Annotated[
    float, typer.Option(help="Pyramids: a box of this many pixels (sqrt of area) goes to --canonical-level.")
]
CanonicalLevel = Annotated[int, typer.Option(help="Pyramids: FPN level of a canonical-size box.")]
Report = Annotated[
    str | None, typer.Option(help="Write RoI Pool's per-RoI quantization geometry to FILE.json or FILE.csv.")
]
Strict = Annotated[
    bool, typer.Option("--strict", help="Fail on zero-size, inverted or off-map boxes instead of warning.")
]
ChunkSize = Annotated[int, typer.Option(help="RoIs pooled at once (bounds memory).")]
Json = Annotated[bool, typer.Option("--json", help="Print the summary as JSON on stdout instead of text on stderr.")]
Quiet = Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar, summary or warnings on stderr.")]


def register(app: typer.Typer) -> None:
    app.command("align")(align)
    app.command("pool")(pool)
    app.command("precise")(precise)


@handle_errors
def align(
    features: Features,
    rois: Rois,
    output: Output,
    output_size: OutputSize = "7",
    spatial_scale: SpatialScale = None,
    stride: Stride = None,
    sampling_ratio: Annotated[
        int, typer.Option(help="Samples per bin axis; <= 0 is adaptive, ceil(roi_size / bins).")
    ] = -1,
    aligned: Annotated[
        bool,
        typer.Option(
            "--aligned/--no-aligned",
            help="Half-pixel shift (Detectron2's aligned=True). Default --no-aligned, like torchvision's roi_align; "
            "Detectron2 uses --aligned.",
        ),
    ] = False,
    mode: Mode = "avg",
    key: Key = None,
    backbone: Backbone = "builtin",
    box_format: BoxFormat = None,
    rois_format: RoisFormat = "auto",
    device: Device = "auto",
    dtype: Dtype = None,
    canonical_size: CanonicalSize = 224,
    canonical_level: CanonicalLevel = 4,
    report: Report = None,
    strict: Strict = False,
    chunk_size: ChunkSize = 512,
    max_image_pixels: MaxImagePixels = None,
    json_out: Json = False,
    quiet: Quiet = False,
) -> None:
    """RoI Align: bilinear samples averaged (or maxed) per bin; no rounding. Same numbers as
    torchvision.ops.roi_align."""
    opts = dict(locals())
    _run(_spec("align", opts, sampling_ratio=sampling_ratio, aligned=aligned, mode=mode), **opts)


@handle_errors
def pool(
    features: Features,
    rois: Rois,
    output: Output,
    output_size: OutputSize = "7",
    spatial_scale: SpatialScale = None,
    stride: Stride = None,
    key: Key = None,
    backbone: Backbone = "builtin",
    box_format: BoxFormat = None,
    rois_format: RoisFormat = "auto",
    device: Device = "auto",
    dtype: Dtype = None,
    canonical_size: CanonicalSize = 224,
    canonical_level: CanonicalLevel = 4,
    report: Report = None,
    strict: Strict = False,
    chunk_size: ChunkSize = 512,
    max_image_pixels: MaxImagePixels = None,
    json_out: Json = False,
    quiet: Quiet = False,
) -> None:
    """RoI Pool (Fast R-CNN): box rounded to the grid, integer bins, max per bin. Same numbers as
    torchvision.ops.roi_pool."""
    opts = dict(locals())
    _run(_spec("pool", opts), **opts)


@handle_errors
def precise(
    features: Features,
    rois: Rois,
    output: Output,
    output_size: OutputSize = "7",
    spatial_scale: SpatialScale = None,
    stride: Stride = None,
    aligned: Annotated[
        bool, typer.Option("--aligned/--no-aligned", help="Half-pixel shift; default --aligned.")
    ] = True,
    key: Key = None,
    backbone: Backbone = "builtin",
    box_format: BoxFormat = None,
    rois_format: RoisFormat = "auto",
    device: Device = "auto",
    dtype: Dtype = None,
    canonical_size: CanonicalSize = 224,
    canonical_level: CanonicalLevel = 4,
    report: Report = None,
    strict: Strict = False,
    chunk_size: ChunkSize = 512,
    max_image_pixels: MaxImagePixels = None,
    json_out: Json = False,
    quiet: Quiet = False,
) -> None:
    """Precise RoI Pooling: the exact mean of the bilinearly interpolated map over each bin
    (no sampling, no rounding) — the ground truth the quantization report uses."""
    opts = dict(locals())
    _run(_spec("precise", opts, aligned=aligned), **opts)


def _run(spec: PoolSpec, *, features, rois, output, report, strict, json_out, quiet, **_) -> None:
    """The recipe every pooling command follows."""
    from rich.progress import Progress

    from roicli.cli.render import format_for_path, render_text
    from roicli.pipeline import pool_job

    if json_out and output == "-":
        raise UsageError("--json prints the summary on stdout, which -o - already uses for data")
    if report == "-" and (output == "-" or json_out):
        raise UsageError("--report -: stdout already carries " + ("the data (-o -)" if output == "-" else "--json"))
    inputs = [features, rois, spec.backbone if spec.backbone != "builtin" else ""]
    check_output(output, inputs, suffixes=OUTPUT_SUFFIXES)
    if report:
        check_output(report, [*inputs, output], binary=False, suffixes=REPORT_SUFFIXES)
        if report != "-" and output != "-" and Path(report).resolve() == Path(output).resolve():
            raise UsageError(f"--report {report}: is also the output (-o)")
    console = stderr()
    with Progress(disable=not show_progress(quiet or json_out), transient=True, console=console) as bar:
        task = bar.add_task(f"roicli {spec.op}", total=None)
        result = pool_job(
            features,
            rois,
            spec,
            strict=strict,
            progress=lambda done, total: bar.update(task, completed=done, total=total),
        )
    roi_set = result.inputs.rois
    if not quiet:
        for message in result.warnings():
            console.print(f"Warning: {message}", markup=False)
    if len(roi_set) == 0 and not quiet:
        console.print(f"Notice: {roi_set.source} holds no RoIs; writing an empty result", markup=False)
    outputs = [(output, result.to_parts())]
    if report:
        text = render_text(
            result.geometry_rows(spec),
            format_for_path(report),
            header={"op": "roi_pool geometry", "output_size": result.metadata["output_size"]},
        )
        outputs.append((report, text.encode()))
    write_outputs(outputs)  # all land, or none
    summary = {**result.summary, "output": output}
    if json_out:
        typer.echo(json.dumps(summary))
    elif not quiet:
        console.print(
            f"{spec.op}: {summary['rois']} RoIs -> {output} {tuple(summary['output_shape'])} {summary['dtype']} "
            f"on {summary['device']}, spatial_scale {summary['spatial_scale']} ({summary['spatial_scale_source']}), "
            f"{summary['seconds']:.3f} s",
            markup=False,
            soft_wrap=True,
        )


def _spec(op: str, opts: dict, **params) -> PoolSpec:
    from roicli.pipeline import PoolSpec

    return PoolSpec(
        op=op,
        output_size=parse_output_size(opts["output_size"]),
        spatial_scale=opts["spatial_scale"],
        stride=opts["stride"],
        key=opts["key"],
        backbone=opts["backbone"],
        box_format=opts["box_format"],
        rois_format=opts["rois_format"],
        device=opts["device"],
        dtype=opts["dtype"],
        canonical_size=opts["canonical_size"],
        canonical_level=opts["canonical_level"],
        chunk_size=opts["chunk_size"],
        max_image_pixels=opts["max_image_pixels"],
        **params,
    )
