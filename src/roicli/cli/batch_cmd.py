"""`roicli batch`: one job over many feature files and their RoIs.

torch, Ray, `roicli.batch` and `roicli.pipeline` are imported inside the command, so that
`roicli --help` and `roicli batch --help` stay fast.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Annotated, Literal

import typer

from roicli.cli import pooling as opt
from roicli.cli._common import handle_errors, parse_output_size, show_progress, stderr
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
        Literal["align", "pool", "precise"], typer.Option(help="The op, as in roicli align, pool, precise.")
    ] = "align",
    output_size: opt.OutputSize = "7",
    spatial_scale: opt.SpatialScale = None,
    stride: opt.Stride = None,
    sampling_ratio: Annotated[
        int | None, typer.Option(help="align only: samples per bin axis; <= 0 is adaptive (default -1).")
    ] = None,
    aligned: Annotated[
        bool | None,
        typer.Option(
            "--aligned/--no-aligned",
            help="align and precise: half-pixel shift. Default: --no-aligned for align, --aligned for precise.",
        ),
    ] = None,
    mode: Annotated[Literal["avg", "max"] | None, typer.Option(help="align only: avg (default) or max.")] = None,
    key: opt.Key = None,
    backbone: opt.Backbone = "builtin",
    box_format: opt.BoxFormat = None,
    rois_format: opt.RoisFormat = "auto",
    device: opt.Device = "auto",
    dtype: opt.Dtype = None,
    canonical_size: opt.CanonicalSize = 224,
    canonical_level: opt.CanonicalLevel = 4,
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
) -> None:
    """Pool the RoIs of many items in one job: parallel, resumable, bad items recorded in
    errors.jsonl, warnings in warnings.jsonl; exit code 1 when any item failed. One run at a time
    per output folder (OUTDIR/.roicli-batch.lock)."""
    if not outdir:
        raise UsageError("-o/--output: give the output folder")
    _refuse_irrelevant(op, sampling_ratio, aligned, mode, engine, address)
    if (manifest is None) == (features_glob is None):
        raise UsageError("give a MANIFEST or --features (with --rois), not both")
    if features_glob is not None and rois_template is None:
        raise UsageError("--features needs --rois, e.g. --rois 'rois/{stem}.json'")
    out = Path(outdir)
    if out.exists() and not out.is_dir():
        raise UsageError(f"-o {outdir}: exists and is not a folder")
    from roicli.batch import BatchConfig, run_batch  # torch: only when the command runs
    from roicli.io.manifest import items_from_glob, read_manifest
    from roicli.io.output import read_input
    from roicli.pipeline import PoolSpec

    if manifest is not None:
        base = Path.cwd() if manifest == "-" else Path(manifest).parent
        items = read_manifest(read_input(manifest), "stdin" if manifest == "-" else manifest, base)
    else:
        items = items_from_glob(features_glob, rois_template)
    if aligned is None:
        aligned = op == "precise"
    spec = PoolSpec(
        op=op,
        output_size=parse_output_size(output_size),
        spatial_scale=spatial_scale,
        stride=stride,
        sampling_ratio=-1 if sampling_ratio is None else sampling_ratio,
        aligned=aligned,
        mode=mode or "avg",
        key=key,
        backbone=backbone,
        box_format=box_format,
        rois_format=rois_format,
        device=device,
        dtype=dtype,
        canonical_size=canonical_size,
        canonical_level=canonical_level,
        chunk_size=chunk_size,
    )
    cfg = BatchConfig(
        spec, out, shard_rois, overwrite=not resume, on_error=on_error, workers=workers, engine=engine,
        address=address, fsync=fsync, strict=strict,
    )
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
        task = bar.add_task("batch", total=len(items), rate="")

        def tick(state: dict) -> None:
            elapsed = time.perf_counter() - t0
            bar.update(task, completed=state["ok"] + state["failed"], rate=f"{state['rois'] / elapsed:,.0f} RoIs/s")

        def notice(text: str) -> None:
            if not quiet:
                stderr().print(f"Notice: {text}", markup=False, soft_wrap=True)

        summary = run_batch(items, cfg, tick, notice)
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


def _refuse_irrelevant(
    op: str, sampling_ratio: int | None, aligned: bool | None, mode: str | None, engine: str, address: str | None
) -> None:
    """Options that do not apply to the chosen op or engine are refused, not ignored."""
    if op in ("pool", "precise"):
        if sampling_ratio is not None:
            raise UsageError(f"--sampling-ratio: applies to --op align, not --op {op}")
        if mode is not None:
            raise UsageError(f"--mode: applies to --op align, not --op {op}")
    if op == "pool" and aligned is not None:
        raise UsageError("--aligned/--no-aligned: applies to --op align and precise, not --op pool (it rounds boxes)")
    if address is not None and engine != "ray":
        raise UsageError("--address: applies to --engine ray only")
