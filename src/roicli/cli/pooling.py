"""`roicli align`, `roicli pool`, `roicli precise`: feature maps + RoIs in, pooled tensors out.

One command per op in the registry (`roicli.registry.OPS`), made by `command`: the options every
pooling command shares (declared once, below) around the op's own parameters."""

from __future__ import annotations

import inspect
import json
from typing import Annotated, Literal

import typer

from roicli import registry
from roicli.cli._common import handle_errors, show_progress, stderr
from roicli.errors import UsageError
from roicli.io.output import check_output, write_outputs
from roicli.io.writers import SUFFIXES as WRITER_SUFFIXES
from roicli.io.writers import check_writable, format_of

OUTPUT_SUFFIXES = WRITER_SUFFIXES
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
    str,
    typer.Option(
        "-o",
        "--output",
        help="Output file: .safetensors, .npz, .pt or .parquet (by extension), or - for stdout (not a terminal; "
        "safetensors unless --format says otherwise).",
    ),
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
    Literal[registry.BOX_FORMATS] | None,  # type: ignore[valid-type]
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
FORMATS = tuple(suffix[1:] for suffix in WRITER_SUFFIXES)  # safetensors, npz, pt, parquet
OutputFormat = Annotated[
    Literal[FORMATS] | None,  # type: ignore[valid-type]
    typer.Option("--format", help="The output's format; default: by the output file's extension (safetensors for -)."),
]
Json = Annotated[bool, typer.Option("--json", help="Print the summary as JSON on stdout instead of text on stderr.")]
Quiet = Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar, summary or warnings on stderr.")]


def register(app: typer.Typer) -> None:
    for op in registry.OPS.values():
        app.command(op.name)(command(op))


def _param(name: str, annotation, default=inspect.Parameter.empty) -> inspect.Parameter:
    return inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=default, annotation=annotation)


def op_option(p: registry.Param, default=None, help: str | None = None):
    """The Typer annotation of an op parameter (from its registry entry): `--aligned/--no-aligned`
    for a flag, the choices for a fixed set, else its type."""
    flag = "--" + p.name.replace("_", "-")
    text = p.help if help is None else help
    if p.type is bool:
        return Annotated[bool | None if default is None else bool, typer.Option(f"{flag}/--no-{flag[2:]}", help=text)]
    kind = Literal[p.choices] if p.choices else p.type  # type: ignore[valid-type]
    return Annotated[kind | None if default is None else kind, typer.Option(help=text)]


# The options every pooling command takes, around the op's own parameters (which the registry gives).
_HEAD = (("features", Features), ("rois", Rois), ("output", Output), ("output_format", OutputFormat, None),
         ("output_size", OutputSize, "7"),
         ("spatial_scale", SpatialScale, None), ("stride", Stride, None))  # fmt: skip
_TAIL = (
    ("key", Key, None), ("backbone", Backbone, "builtin"), ("box_format", BoxFormat, None),
    ("rois_format", RoisFormat, "auto"), ("device", Device, "auto"), ("dtype", Dtype, None),
    ("canonical_size", CanonicalSize, 224), ("canonical_level", CanonicalLevel, 4), ("report", Report, None),
    ("strict", Strict, False), ("chunk_size", ChunkSize, 512), ("max_image_pixels", MaxImagePixels, None),
    ("json_out", Json, False), ("quiet", Quiet, False),
)  # fmt: skip


def command(op: registry.Op):
    """`roicli OP`: the common options and the op's own parameters (from the registry), run by `_run`."""

    def run(**opts) -> None:
        _run(op.name, opts)

    params = [_param(*spec) for spec in _HEAD]
    params += [_param(p.name, op_option(p, p.default), p.default) for p in op.params]
    params += [_param(*spec) for spec in _TAIL]
    run.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
    run.__annotations__ = {p.name: p.annotation for p in params}
    run.__name__ = run.__qualname__ = op.name
    run.__doc__ = op.doc
    return handle_errors(run)


def _run(op: str, opts: dict) -> None:
    """The recipe every pooling command follows."""
    from rich.progress import Progress

    from roicli import api
    from roicli.cli.render import format_for_path, render_text
    from roicli.pipeline import spec_from_options

    spec, rest = spec_from_options(op, opts)
    features, rois, output, report = rest["features"], rest["rois"], rest["output"], rest["report"]
    strict, json_out, quiet = rest["strict"], rest["json_out"], rest["quiet"]

    if json_out and output == "-":
        raise UsageError("--json prints the summary on stdout, which -o - already uses for data")
    if report == "-" and (output == "-" or json_out):
        raise UsageError("--report -: stdout already carries " + ("the data (-o -)" if output == "-" else "--json"))
    inputs = [features, rois, spec.backbone if spec.backbone != "builtin" else ""]
    check_output(output, inputs, suffixes=OUTPUT_SUFFIXES)
    fmt = format_of(output, rest["output_format"])
    check_writable(fmt)
    if report:
        check_output(report, [*inputs, output], binary=False, suffixes=REPORT_SUFFIXES)
    console = stderr()
    with Progress(disable=not show_progress(quiet or json_out), transient=True, console=console) as bar:
        task = bar.add_task(f"roicli {spec.op}", total=None)
        result = api.pool(
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
    outputs = [(output, result.encode(fmt))]
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
