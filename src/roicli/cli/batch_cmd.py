"""`roicli batch`: one job over many feature files and their RoIs.

torch, Ray, `roicli.jobs` and `roicli.pipeline` are imported inside the command, so that
`roicli --help` and `roicli batch --help` stay fast.
"""

from __future__ import annotations

import inspect
import json
import time
from pathlib import Path
from typing import Annotated, Literal

import typer

from roicli import registry
from roicli.cli import pooling as opt
from roicli.cli._common import handle_errors, show_progress, stderr
from roicli.errors import UsageError


def register(app: typer.Typer) -> None:
    app.command("batch")(batch)


@handle_errors
def batch(
    manifest: Annotated[
        str | None,
        typer.Argument(
            metavar="MANIFEST",
            help="CSV or JSON Lines manifest, one item per row (- for stdin). Or use --features/--rois.",
        ),
    ] = None,
    outdir: Annotated[str, typer.Option("-o", "--output", help="Output folder (created if missing).")] = "",
    features_glob: Annotated[
        str | None,
        typer.Option("--features", help="Without a manifest: a glob of feature files, e.g. 'feats/*.safetensors'."),
    ] = None,
    rois_template: Annotated[
        str | None, typer.Option("--rois", help="Without a manifest: each item's RoI file, e.g. 'rois/{stem}.json'.")
    ] = None,
    op: Annotated[
        Literal[tuple(registry.OPS)],  # type: ignore[valid-type]
        typer.Option(help=f"The op, as in roicli {', '.join(registry.OPS)}."),
    ] = "align",
    output_size: opt.OutputSize = "7",
    spatial_scale: opt.SpatialScale = None,
    stride: opt.Stride = None,
    # the op parameters (sampling_ratio, aligned, mode, ...) come from the registry: see _OP_PARAMS
    key: opt.Key = None,
    backbone: opt.Backbone = "builtin",
    box_format: opt.BoxFormat = None,
    rois_format: opt.RoisFormat = "auto",
    device: opt.Device = "auto",
    dtype: opt.Dtype = None,
    canonical_size: opt.CanonicalSize = 224,
    canonical_level: opt.CanonicalLevel = 4,
    max_image_pixels: opt.MaxImagePixels = None,
    output_format: Annotated[
        Literal[opt.FORMATS],  # type: ignore[valid-type]
        typer.Option(
            "--format",
            help="Format of the shards and of the outputs the manifest does not name (an 'output' column's "
            "extension chooses its own). parquet needs the extra: pip install 'roicli[parquet]'.",
        ),
    ] = "safetensors",
    shard_rois: Annotated[
        int | None,
        typer.Option(
            help="Write shards of about N RoIs (plus index.jsonl) instead of one file per item. The driver holds "
            "about one shard's bytes in memory (N x C x PH x PW x 4 bytes in float32) plus the items in flight; "
            "each shard is streamed to its file without a joined copy."
        ),
    ] = None,
    workers: Annotated[
        int,
        typer.Option(
            help="Worker processes for the local engine; each gets cores/N torch threads. 0 (default): auto, one "
            "process per two cores (one process on 1-2 cores)."
        ),
    ] = 0,
    resume: Annotated[
        bool,
        typer.Option(
            "--resume/--overwrite",
            help="Skip items whose output is complete and made from the same inputs and options (default; "
            "others are redone and counted), or redo all.",
        ),
    ] = True,
    on_error: Annotated[
        Literal["skip", "stop"], typer.Option(help="skip (record in errors.jsonl, go on) or stop.")
    ] = "skip",
    fsync: Annotated[
        bool, typer.Option("--fsync", help="fsync every output before its rename (durable against power cuts; slower).")
    ] = False,
    engine: Annotated[
        Literal["local", "ray"], typer.Option(help="local, or ray (needs the extra: pip install 'roicli[ray]').")
    ] = "local",
    address: Annotated[
        str | None, typer.Option(help="--engine ray: the cluster's HOST:PORT (default: a local Ray instance).")
    ] = None,
    strict: opt.Strict = False,
    chunk_size: opt.ChunkSize = 512,
    json_out: opt.Json = False,
    quiet: opt.Quiet = False,
    **op_params,
) -> None:
    """Pool the RoIs of many items in one job: parallel, resumable, bad items recorded in
    errors.jsonl, warnings in warnings.jsonl; exit code 1 when any item failed. One run at a time
    per output folder (OUTDIR/.roicli-batch.lock)."""
    out = Path(outdir)
    if outdir and out.exists() and not out.is_dir():
        raise UsageError(f"-o {outdir}: exists and is not a folder")
    from roicli import api

    options = {k: v for k, v in locals().items() if k in _API_OPTIONS}
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    t0 = time.perf_counter()
    columns = [
        TextColumn("batch"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[rate]}"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
    ]
    with Progress(*columns, disable=not show_progress(quiet or json_out), console=stderr()) as bar:
        task = bar.add_task("batch", total=None, rate="")

        def tick(state: dict) -> None:
            elapsed = time.perf_counter() - t0
            done, rate = state["ok"] + state["failed"], f"{state['rois'] / elapsed:,.0f} RoIs/s"
            bar.update(task, completed=done, total=state["items"], rate=rate)

        def notice(text: str) -> None:
            if not quiet:
                stderr().print(f"Notice: {text}", markup=False, soft_wrap=True)

        summary = api.batch(
            manifest, outdir, features=features_glob, rois=rois_template, format=output_format, progress=tick,
            notice=notice, **options, **op_params,
        )  # fmt: skip
    seconds = time.perf_counter() - t0
    summary.update(
        seconds=round(seconds, 3),
        items_per_s=round(summary["done"] / seconds, 2),
        rois_per_s=round(summary["rois"] / seconds, 1),
    )
    if json_out:
        typer.echo(json.dumps(summary))
    elif not quiet:
        redone = ""
        if summary["redone"]:
            why = ", ".join(f"{n} {reason}" for reason, n in summary["redo_reasons"].items())
            redone = f" ({summary['redone']} redone: {why})"
        warned = f", {summary['warnings']} warning(s) in {summary['warnings_file']}" if summary["warnings"] else ""
        stderr().print(
            f"batch: {summary['done']} done{redone}, {summary['skipped']} skipped (verified complete), "
            f"{summary['failed']} failed of {summary['items']} items; {summary['rois']} RoIs in {seconds:.2f} s "
            f"-> {outdir}" + (f"; errors in {summary['errors']}" if summary["failed"] else "") + warned,
            markup=False,
            soft_wrap=True,
        )
    if summary["failed"]:
        raise typer.Exit(1)


def _batch_help(name: str, takers: list) -> str:
    """`batch --help` for an op parameter: which ops take it, and its default for each."""

    def shown(p) -> str:
        return ("--" if p.default else "--no-") + p.name.replace("_", "-") if p.type is bool else str(p.default)

    ops = " and ".join(op.name for op, _ in takers) + (" only" if len(takers) == 1 else "")
    defaults = {shown(p) for _, p in takers}
    if len(defaults) == 1:
        return f"{ops}: {takers[0][1].summary} (default {defaults.pop()})."
    each = ", ".join(f"{shown(p)} for {op.name}" for op, p in takers)
    return f"{ops}: {takers[0][1].summary}. Default: {each}."


# The op parameters, from the registry (None: not given, each op's default), after --stride.
_OP_PARAMS = [
    inspect.Parameter(name, inspect.Parameter.POSITIONAL_OR_KEYWORD, default=None,
                      annotation=opt.op_option(takers[0][1], None, help=_batch_help(name, takers)))
    for name, takers in registry.shared_params().items()
]  # fmt: skip
_API_OPTIONS = (
    "op", "output_size", "spatial_scale", "stride", "key", "backbone", "box_format", "rois_format", "device",
    "dtype", "canonical_size", "canonical_level", "max_image_pixels", "shard_rois", "workers", "resume",
    "on_error", "fsync", "engine", "address", "strict", "chunk_size",
)


def _with_op_params(fn):
    """`fn`'s signature (as Typer reads it) with the registry's op parameters after --stride."""
    sig = inspect.signature(fn, eval_str=True)
    params = [p for p in sig.parameters.values() if p.kind is not inspect.Parameter.VAR_KEYWORD]
    at = [p.name for p in params].index("stride") + 1
    params[at:at] = _OP_PARAMS
    fn.__signature__ = sig.replace(parameters=params)
    fn.__annotations__ = {p.name: p.annotation for p in params}
    return fn


batch = _with_op_params(batch)
