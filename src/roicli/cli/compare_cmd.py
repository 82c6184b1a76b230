"""`roicli compare`: RoI Pool's quantization against RoI Align and the exact integral, per RoI."""

from __future__ import annotations

from typing import Annotated

import torch
import typer

from roicli.cli import pooling as opt
from roicli.cli._common import handle_errors, parse_output_size, stderr
from roicli.cli.render import FORMATS, format_for_path, render_text, to_json
from roicli.errors import UsageError
from roicli.io.output import check_output, write_output
from roicli.pipeline import PoolSpec, load_inputs, roi_geometry, rois_and_levels
from roicli.report import (
    COLUMN_DEFINITIONS,
    by_size,
    compare_rows,
    explain,
    summarize,
    value_errors,
)

# The columns the terminal table shows; json/jsonl/csv carry every column.
TABLE_COLUMNS = {
    "id": "id",
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
}


def register(app: typer.Typer) -> None:
    app.command("compare")(compare)


@handle_errors
def compare(
    features: opt.Features,
    rois: opt.Rois,
    output_size: opt.OutputSize = "7",
    spatial_scale: opt.SpatialScale = None,
    stride: opt.Stride = None,
    sampling_ratio: Annotated[int, typer.Option(help="RoI Align's samples per bin axis; <= 0 is adaptive.")] = -1,
    aligned: Annotated[
        bool,
        typer.Option(
            "--aligned/--no-aligned",
            help="RoI Align's half-pixel shift. Default --aligned here: the exact reference uses the same "
            "pixel model (cell i spans [i, i+1)); --no-aligned shows the legacy half-pixel offset.",
        ),
    ] = True,
    key: opt.Key = None,
    backbone: opt.Backbone = "builtin",
    box_format: opt.BoxFormat = None,
    rois_format: opt.RoisFormat = "auto",
    device: opt.Device = "auto",
    dtype: opt.Dtype = None,
    canonical_size: opt.CanonicalSize = 224,
    canonical_level: opt.CanonicalLevel = 4,
    fmt: Annotated[
        str | None,
        typer.Option(
            "--format", "-f", help="table, json, jsonl or csv. Default: table, or from the -o file's extension."
        ),
    ] = None,
    output: Annotated[
        str | None, typer.Option("-o", "--output", help="Write the report to FILE instead of stdout.")
    ] = None,
    explain_id: Annotated[
        str | None,
        typer.Option("--explain", help="Walk one RoI (its id, or 'first') through both quantization steps in words."),
    ] = None,
) -> None:
    """The quantization-error report: where RoI Pool's rounded box and integer bins land against the
    exact box, and what that does to the pooled values compared with RoI Align and the exact integral."""
    size = parse_output_size(output_size)
    fmt = fmt or (format_for_path(output, "table") if output else "table")
    if fmt not in FORMATS:
        raise UsageError(f"--format: expected one of {', '.join(FORMATS)}, got {fmt!r}")
    if output:
        check_output(output, [features, rois, backbone], binary=False)
    spec = PoolSpec(
        output_size=size,
        spatial_scale=spatial_scale,
        stride=stride,
        key=key,
        backbone=backbone,
        box_format=box_format,
        rois_format=rois_format,
        device=device,
        dtype=dtype,
        canonical_size=canonical_size,
        canonical_level=canonical_level,
    )
    inputs = load_inputs(features, rois, spec)
    feats, roi_set = inputs.features, inputs.rois
    boxes, levels = rois_and_levels(inputs, spec)  # [K, 5], [K]
    lv = levels.cpu()
    geometry = roi_geometry(inputs, levels, size)
    with torch.no_grad():
        errors = value_errors(feats.levels, feats.scales, boxes, levels, size, sampling_ratio, aligned)
    errors = {k: v.cpu() for k, v in errors.items()}
    rows = compare_rows(geometry, errors, roi_set.boxes, lv if feats.is_pyramid else None)

    header = {
        "features": feats.source,
        "output_size": f"{size[0]}x{size[1]}",
        "spatial_scale": feats.scales if feats.is_pyramid else feats.scales[0],
        "sampling_ratio": sampling_ratio,
        "aligned": aligned,
        "rois": len(rows),
    }
    if explain_id is not None:
        i = _find(roi_set.ids, explain_id)
        text = "\n".join(explain(geometry[i], size, {k: float(v[i]) for k, v in errors.items()})) + "\n"
    elif fmt == "table":
        text = _table(rows, header)
    elif fmt == "json":
        doc = {
            **header,
            "rows": rows,
            "definitions": COLUMN_DEFINITIONS,
            "summary": summarize(rows),
            "by_box_size": by_size(rows),
        }
        text = to_json(doc) + "\n"
    else:
        text = render_text(rows, fmt, header=header)
    if output:
        write_output(output, text.encode())
        stderr().print(f"compare: {len(rows)} RoIs -> {output} ({fmt})", markup=False)
    else:
        typer.echo(text, nl=False)


def _find(ids: list, wanted: str) -> int:
    if not ids:
        raise UsageError("--explain: there are no RoIs to explain")
    if wanted == "first":
        return 0
    for i, v in enumerate(ids):
        if str(v) == wanted:
            return i
    raise UsageError(f"--explain: no RoI with id {wanted!r}; ids: {', '.join(map(str, ids[:10]))}")


def _table(rows: list[dict], header: dict) -> str:
    shown = [{label: r.get(col) for col, label in TABLE_COLUMNS.items()} for r in rows]
    params = ", ".join(f"{k}={v}" for k, v in header.items())
    parts = [render_text(shown, "table", title=f"RoI Pool vs RoI Align ({params})")]
    parts.append(render_text(summarize(rows), "table", title="Summary over RoIs"))
    parts.append(render_text(by_size(rows), "table", title="By box size (sqrt of area)"))
    parts.append("Columns:\n" + "".join(f"  {k}: {v}\n" for k, v in COLUMN_DEFINITIONS.items()))
    return "\n".join(parts)
