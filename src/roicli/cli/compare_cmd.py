"""`roicli compare`: RoI Pool's quantization against RoI Align and the exact integral, per RoI.

Start-up stays light: torch and the library (pipeline, report, ops) are imported inside the command.
"""

from __future__ import annotations

import os
import shutil
import sys
import textwrap
from pathlib import Path
from typing import Annotated, Literal

import typer

from roicli import registry
from roicli.cli import pooling as opt
from roicli.cli._common import handle_errors, show_progress, stderr
from roicli.cli.render import FORMATS, render_text, to_json
from roicli.errors import UsageError
from roicli.io.output import check_output, write_output

# The columns the terminal table shows, in display order (json/jsonl/csv carry every column).
TABLE_COLUMNS = {
    "id": "id",
    "level": "level",
    "box_w_px": "w px",
    "box_h_px": "h px",
    "x_start_shift_px": "x1 shift px",
    "x_end_shift_px": "x2 shift px",
    "y_start_shift_px": "y1 shift px",
    "y_end_shift_px": "y2 shift px",
    "worst_edge_px": "worst bin edge px",
    "roi_iou": "RoI IoU",
    "mean_bin_iou": "bin IoU",
    "quant_rel_err": "quant err",
    "align_rel_err": "align err",
    "pool_vs_align_max": "pool vs align(max)",
    "pool_vs_align": "pool vs align",
    "pool_vs_exact": "pool vs exact",
}
# Which columns stay when the terminal is too narrow for all of them: the first ones.
PRIORITY = (
    "id",
    "level",
    "pool_vs_align",
    "pool_vs_exact",
    "quant_rel_err",
    "roi_iou",
    "x_end_shift_px",
    "y_end_shift_px",
    "x_start_shift_px",
    "y_start_shift_px",
    "align_rel_err",
    "pool_vs_align_max",
    "worst_edge_px",
    "box_w_px",
    "box_h_px",
    "mean_bin_iou",
)
# What `-o FILE` writes, by extension (None: any text format; the table without --format).
SUFFIXES = {".txt": None, ".json": "json", ".jsonl": "jsonl", ".ndjson": "jsonl", ".csv": "csv"}


def register(app: typer.Typer) -> None:
    app.command("compare")(compare)


SamplingRatio = opt.op_option(
    registry.OPS["align"].param("sampling_ratio"), -1, help="RoI Align's samples per bin axis; <= 0 is adaptive."
)
Aligned = opt.op_option(
    registry.OPS["align"].param("aligned"),
    True,
    help="RoI Align's half-pixel shift. Default --aligned here: the exact reference uses the same "
    "pixel model (cell i spans [i, i+1)); --no-aligned shows the legacy half-pixel offset.",
)


@handle_errors
def compare(
    features: opt.Features,
    rois: opt.Rois,
    output_size: opt.OutputSize = "7",
    spatial_scale: opt.SpatialScale = None,
    stride: opt.Stride = None,
    sampling_ratio: SamplingRatio = -1,
    aligned: Aligned = True,
    key: opt.Key = None,
    backbone: opt.Backbone = "builtin",
    box_format: opt.BoxFormat = None,
    rois_format: opt.RoisFormat = "auto",
    device: opt.Device = "auto",
    dtype: opt.Dtype = None,
    canonical_size: opt.CanonicalSize = 224,
    canonical_level: opt.CanonicalLevel = 4,
    fmt: Annotated[
        Literal["table", "json", "jsonl", "csv"] | None,
        typer.Option(
            "--format",
            "-f",
            help="table, json, jsonl or csv. Default: table, or from the -o file's extension. The table fits "
            "the terminal (or $COLUMNS), leaving out the less important columns and naming them.",
        ),
    ] = None,
    output: Annotated[
        str | None,
        typer.Option(
            "-o", "--output", help="Write the report to FILE (.txt, .json, .jsonl, .csv) instead of stdout."
        ),
    ] = None,
    explain: Annotated[
        str | None,
        typer.Option(
            "--explain", help="Walk one RoI (its id, or 'first') through both quantization steps in words (text only)."
        ),
    ] = None,
    chunk_size: opt.ChunkSize = 512,
    strict: opt.Strict = False,
    max_image_pixels: opt.MaxImagePixels = None,
    quiet: opt.Quiet = False,
) -> None:
    """The quantization-error report: how far RoI Pool (max over rounded windows) lands from RoI Align
    and from the exact integral on your boxes, then per RoI where RoI Pool's rounded box and integer
    bins land against the exact box and what that does to the pooled values."""
    options = dict(locals())
    fmt = options.pop("fmt")
    output = options.pop("output")
    quiet = options.pop("quiet")
    from roicli.pipeline import parse_output_size

    parse_output_size(output_size)  # the first error, as ever, before the format and the output
    fmt = _format(fmt, output, explain)
    if output is not None:
        inputs = [features, rois, backbone if backbone != "builtin" else ""]
        check_output(output, inputs, binary=False, suffixes=tuple(SUFFIXES))

    from rich.progress import Progress

    from roicli import api
    from roicli.report import COLUMN_DEFINITIONS

    console = stderr()
    with Progress(disable=not show_progress(quiet) or fmt == "explain", transient=True, console=console) as bar:
        task = bar.add_task("roicli compare", total=None)
        report = api.compare(
            options.pop("features"),
            options.pop("rois"),
            progress=lambda done, total: bar.update(task, completed=done, total=total),
            **options,
        )
    if not quiet:
        for warning in report.warnings:
            console.print(f"Warning: {warning}", markup=False)
    header, rows, head = report.header, report.rows, report.headline
    if fmt == "explain":
        text = "\n".join(report.explanation) + "\n"
        what = f"explanation of RoI {rows[0]['id']!r}"
    else:
        if not rows and not quiet:
            console.print(f"Notice: {report.source} holds no RoIs; the report is empty", markup=False)
        if fmt == "table":
            text = _table(rows, header, head["text"], report.summary(), report.by_size(), COLUMN_DEFINITIONS, output)
        elif fmt == "json":
            doc = {
                **header,
                "headline": head,
                "rows": rows,
                "definitions": COLUMN_DEFINITIONS,
                "summary": report.summary(),
                "by_box_size": report.by_size(),
            }
            text = to_json(doc) + "\n"
        else:
            text = render_text(rows, fmt, header={**header, "headline": " ".join(head["text"])})
        what = fmt
    write_output("-" if output is None else output, text.encode())  # stdout too: every byte or an error
    if output is not None and not quiet:
        console.print(f"compare: {header['rois']} RoIs -> {output} ({what})", markup=False)


def _format(fmt: str | None, output: str | None, explain_id: str | None) -> str:
    """The format to write ('explain' for --explain's text); refuses what does not fit together."""
    if fmt is not None and fmt not in FORMATS:
        raise UsageError(f"--format: expected one of {', '.join(FORMATS)}, got {fmt!r}")
    implied = None
    if output and output != "-":
        implied = SUFFIXES.get(Path(output).suffix.lower())
        if fmt is not None and implied is not None and fmt != implied:
            raise UsageError(f"-o {output}: --format {fmt} conflicts with the file's extension (a {implied} file)")
    if explain_id is not None:
        chosen = fmt or implied
        if chosen not in (None, "table"):
            how = f"--format {fmt}" if fmt else f"-o {output}"
            raise UsageError(f"--explain: writes text; expected the table format or a .txt file, got {how}")
        return "explain"
    return fmt or implied or "table"


def _width(output: str | None) -> int | None:
    """The terminal's width (or $COLUMNS) when the table goes to a terminal; None: no limit."""
    if output not in (None, "-"):
        return None
    if os.environ.get("COLUMNS", "").strip().isdigit() or sys.stdout.isatty():
        return max(shutil.get_terminal_size().columns, 20)
    return None


def _fit(rows: list[dict], width: int | None) -> tuple[list[str], list[str], int]:
    """The table's columns that fit in `width` (the most important kept), those left out, and the
    width the kept ones need (a rich table: one space each side of a cell, a rule between cells)."""
    from roicli.cli.render import _cell

    present = [c for c in TABLE_COLUMNS if c != "level" or (rows and "level" in rows[0])]
    need = {c: max([len(TABLE_COLUMNS[c]), *(len(_cell(r.get(c))) for r in rows)]) + 3 for c in present}
    keep = list(present)
    if width is not None:
        for c in reversed(PRIORITY):  # drop the least important first; always keep the id and one more
            if 1 + sum(need[k] for k in keep) <= width or len(keep) <= 2:
                break
            if c in keep and c != "id":
                keep.remove(c)
    return keep, [c for c in present if c not in keep], 1 + sum(need[k] for k in keep)


def _table(rows, header, head, summary, buckets, definitions, output) -> str:
    width = _width(output)
    keep, dropped, needed = _fit(rows, width)
    wrap = width or 120
    parts = ["\n".join(textwrap.fill(line, wrap, subsequent_indent="  ") for line in head) + "\n"]
    params = ", ".join(f"{k}={v}" for k, v in header.items())
    title = textwrap.fill(f"RoI Pool vs RoI Align ({params})", wrap, subsequent_indent="  ") + "\n"
    if not rows:
        return "\n".join([*parts, title + "No RoIs: nothing to compare.\n"])
    shown = [{TABLE_COLUMNS[c]: r.get(c) for c in keep} for r in rows]
    table = title + render_text(shown, "table", width=width or max(needed, 200))
    if dropped:
        note = (
            f"Not shown at {width} columns: {', '.join(TABLE_COLUMNS[c] for c in dropped)} "
            "(-f csv, -f json or a wider terminal shows every column)."
        )
        table += textwrap.fill(note, wrap) + "\n"
    parts.append(table)
    parts.append(render_text(summary, "table", title="Summary over RoIs", width=width or 200))
    parts.append(render_text(buckets, "table", title="By box size (sqrt of area)", width=width or 200))
    parts.append(
        "Columns:\n"
        + "".join(textwrap.fill(f"{k}: {v}", wrap, initial_indent="  ", subsequent_indent="    ") + "\n"
                  for k, v in definitions.items())
    )  # fmt: skip
    return "\n".join(parts)
