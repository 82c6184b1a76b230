"""`roicli batch`: one job over many feature files and their RoIs."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Annotated

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from roicli.batch import BatchConfig, run_batch
from roicli.cli import pooling as opt
from roicli.cli._common import handle_errors, parse_output_size, show_progress, stderr
from roicli.errors import UsageError
from roicli.io.manifest import items_from_glob, read_manifest
from roicli.io.output import read_input
from roicli.pipeline import PoolSpec


def register(app: typer.Typer) -> None:
    app.command("batch")(batch)


@handle_errors
def batch(
    manifest: Annotated[
        str | None,
        typer.Argument(help="CSV or JSON Lines manifest, one item per row (- for stdin). Or use --features/--rois."),
    ] = None,
    outdir: Annotated[str, typer.Option("-o", "--output", help="Output folder (created if missing).")] = "",
    features_glob: Annotated[
        str | None,
        typer.Option("--features", help="Without a manifest: a glob of feature files, e.g. 'feats/*.safetensors'."),
    ] = None,
    rois_template: Annotated[
        str | None, typer.Option("--rois", help="Without a manifest: each item's RoI file, e.g. 'rois/{stem}.json'.")
    ] = None,
    op: Annotated[str, typer.Option(help="align, pool or precise.")] = "align",
    output_size: opt.OutputSize = "7",
    spatial_scale: opt.SpatialScale = None,
    stride: opt.Stride = None,
    sampling_ratio: Annotated[int, typer.Option(help="align: samples per bin axis; <= 0 is adaptive.")] = -1,
    aligned: Annotated[
        bool | None,
        typer.Option(
            "--aligned/--no-aligned", help="Half-pixel shift. Default: --no-aligned for align, --aligned for precise."
        ),
    ] = None,
    mode: Annotated[str, typer.Option(help="align: avg or max.")] = "avg",
    key: opt.Key = None,
    backbone: opt.Backbone = "builtin",
    box_format: opt.BoxFormat = None,
    rois_format: opt.RoisFormat = "auto",
    device: opt.Device = "auto",
    dtype: opt.Dtype = None,
    canonical_size: opt.CanonicalSize = 224,
    canonical_level: opt.CanonicalLevel = 4,
    shard_rois: Annotated[
        int | None, typer.Option(help="Write shards of about N RoIs (plus index.jsonl) instead of one file per item.")
    ] = None,
    workers: Annotated[int, typer.Option(help="Worker processes for the local engine (0: one per core).")] = 1,
    resume: Annotated[
        bool,
        typer.Option("--resume/--overwrite", help="Skip items whose complete output exists (default), or redo all."),
    ] = True,
    on_error: Annotated[str, typer.Option(help="skip (record in errors.jsonl, go on) or stop.")] = "skip",
    fsync: Annotated[
        bool, typer.Option("--fsync", help="fsync every output before its rename (durable against power cuts; slower).")
    ] = False,
    engine: Annotated[str, typer.Option(help="local, or ray (pip install 'roicli[ray]').")] = "local",
    address: Annotated[str | None, typer.Option(help="Ray cluster address (default: a local Ray instance).")] = None,
    json_out: opt.Json = False,
    quiet: opt.Quiet = False,
) -> None:
    """Pool the RoIs of many items in one job: parallel, resumable, bad items recorded in
    errors.jsonl; exit code 1 when any item failed."""
    if not outdir:
        raise UsageError("-o/--output: give the output folder")
    if (manifest is None) == (features_glob is None):
        raise UsageError("give a MANIFEST or --features (with --rois), not both")
    if features_glob is not None and rois_template is None:
        raise UsageError("--features needs --rois, e.g. --rois 'rois/{stem}.json'")
    out = Path(outdir)
    if out.exists() and not out.is_dir():
        raise UsageError(f"-o {outdir}: exists and is not a folder")
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
        sampling_ratio=sampling_ratio,
        aligned=aligned,
        mode=mode,
        key=key,
        backbone=backbone,
        box_format=box_format,
        rois_format=rois_format,
        device=device,
        dtype=dtype,
        canonical_size=canonical_size,
        canonical_level=canonical_level,
    )
    cfg = BatchConfig(
        spec, out, shard_rois, overwrite=not resume, on_error=on_error, workers=workers, engine=engine,
        address=address, fsync=fsync,
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

        summary = run_batch(items, cfg, tick)
    seconds = time.perf_counter() - t0
    summary.update(
        seconds=round(seconds, 3),
        items_per_s=round(summary["done"] / seconds, 2),
        rois_per_s=round(summary["rois"] / seconds, 1),
    )
    if json_out:
        typer.echo(json.dumps(summary))
    elif not quiet:
        stderr().print(
            f"batch: {summary['done']} done, {summary['skipped']} skipped (complete), {summary['failed']} failed "
            f"of {summary['items']} items; {summary['rois']} RoIs in {seconds:.2f} s -> {outdir}"
            + (f"; errors in {summary['errors']}" if summary["failed"] else ""),
            markup=False,
            soft_wrap=True,
        )
    if summary["failed"]:
        raise typer.Exit(1)
