"""`roicli align`, `roicli pool` and `roicli precise`: feature maps + RoIs in, pooled safetensors out."""

from __future__ import annotations

import json
import time
from typing import Annotated

import torch
import typer
from rich.progress import Progress
from safetensors.torch import save as st_save

import roicli
from roicli.cli._common import handle_errors, load_inputs, parse_output_size, show_progress, stderr
from roicli.cli.render import format_for_path, render_text
from roicli.errors import InputError, UsageError
from roicli.io.output import check_output, write_output
from roicli.ops import fpn_levels, pool_levels, precise_roi_pool, roi_align, roi_pool
from roicli.ops._validate import compute_dtype
from roicli.report import pool_geometry

# Options shared by the three commands (declared once).
Features = Annotated[
    str, typer.Argument(help="Feature file (.safetensors), an image, or - for safetensors bytes on stdin.")
]
Rois = Annotated[str, typer.Argument(help="RoIs: JSON, JSON Lines or CSV file, or - for stdin.")]
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
    str | None, typer.Option(help="xyxy (default), xywh (COCO) or cxcywh. CSV headers x,y,w,h / cx,cy,w,h imply it.")
]
RoisFormat = Annotated[str, typer.Option(help="auto (sniffed), json, jsonl or csv.")]
Device = Annotated[str, typer.Option(help="auto (CUDA when available), cpu, cuda, cuda:N or mps.")]
Dtype = Annotated[
    str | None, typer.Option(help="Compute dtype: float32, float64, float16, bfloat16. Default: the features'.")
]
CanonicalSize = Annotated[
    float, typer.Option(help="Pyramids: a box of this many pixels (sqrt of area) goes to --canonical-level.")
]
CanonicalLevel = Annotated[int, typer.Option(help="Pyramids: FPN level of a canonical-size box.")]
Report = Annotated[
    str | None, typer.Option(help="Write RoI Pool's per-RoI quantization geometry to FILE.json or FILE.csv.")
]
Strict = Annotated[bool, typer.Option("--strict", help="Fail on zero-size or inverted boxes instead of warning.")]
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
    mode: Annotated[str, typer.Option(help="avg (torchvision) or max (mmcv's max of the bilinear samples).")] = "avg",
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
    json_out: Json = False,
    quiet: Quiet = False,
) -> None:
    """RoI Align: bilinear samples averaged (or maxed) per bin; no rounding. Same numbers as
    torchvision.ops.roi_align."""
    opts = dict(locals())
    if mode not in ("avg", "max"):
        raise UsageError(f"--mode: expected avg or max, got {mode!r}")
    params = {"sampling_ratio": sampling_ratio, "aligned": aligned, "mode": mode}
    _run("align", lambda f, r, size, s: roi_align(f, r, size, s, sampling_ratio, aligned, mode=mode), params, **opts)


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
    json_out: Json = False,
    quiet: Quiet = False,
) -> None:
    """RoI Pool (Fast R-CNN): box rounded to the grid, integer bins, max per bin. Same numbers as
    torchvision.ops.roi_pool."""
    _run("pool", lambda f, r, size, s: roi_pool(f, r, size, s), {}, **dict(locals()))


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
    json_out: Json = False,
    quiet: Quiet = False,
) -> None:
    """Precise RoI Pooling: the exact mean of the bilinearly interpolated map over each bin
    (no sampling, no rounding) — the ground truth the quantization report uses."""
    _run("precise", lambda f, r, size, s: precise_roi_pool(f, r, size, s, aligned), {"aligned": aligned}, **locals())


def _run(
    command: str,
    op,
    params: dict,
    *,
    features,
    rois,
    output,
    output_size,
    spatial_scale,
    stride,
    key,
    backbone,
    box_format,
    rois_format,
    device,
    dtype,
    canonical_size,
    canonical_level,
    report,
    strict,
    chunk_size,
    json_out,
    quiet,
    **_,
) -> None:
    """The recipe every pooling command follows."""
    size = parse_output_size(output_size)
    if chunk_size <= 0:
        raise UsageError(f"--chunk-size: expected a positive number, got {chunk_size}")
    if json_out and output == "-":
        raise UsageError("--json prints the summary on stdout, which -o - already uses for data")
    check_output(output, [features, rois])
    if report:
        check_output(report, [features, rois, output], binary=False)
    t0 = time.perf_counter()
    inputs = load_inputs(
        features,
        rois,
        key=key,
        spatial_scale=spatial_scale,
        stride=stride,
        backbone=backbone,
        box_format=box_format,
        rois_format=rois_format,
        device=device,
        dtype=dtype,
    )
    feats, roi_set = inputs.features, inputs.rois
    console = stderr()
    bad = roi_set.degenerate()
    if bad:
        names = ", ".join(repr(roi_set.ids[i]) for i in bad[:5]) + (" ..." if len(bad) > 5 else "")
        msg = f"{len(bad)} zero-size or inverted box(es) (ids {names})"
        if strict:
            raise InputError(f"{roi_set.source}: {msg}")
        if not quiet:
            console.print(f"Warning: {msg}; pooled as given (they sample a degenerate region)", markup=False)
    if len(roi_set) == 0 and not quiet:
        console.print(f"Notice: {roi_set.source} holds no RoIs; writing an empty result", markup=False)

    dt = compute_dtype(feats.levels[0].dtype)
    boxes = roi_set.as_tensor(dt).to(inputs.device)  # [K, 5]
    if feats.is_pyramid:
        levels = fpn_levels(boxes, feats.scales, canonical_size, canonical_level)
    else:
        levels = torch.zeros(len(roi_set), dtype=torch.long, device=inputs.device)
    pooled = _pool_in_chunks(op, feats, boxes, levels, size, chunk_size, show_progress(quiet or json_out))
    seconds = time.perf_counter() - t0

    scales = torch.tensor(feats.scales, dtype=torch.float64)[levels.cpu()]  # [K] per RoI
    tensors = {"pooled": pooled.contiguous(), "rois": boxes.cpu().contiguous()}
    if all(isinstance(i, int) for i in roi_set.ids):
        tensors["ids"] = torch.tensor(roi_set.ids, dtype=torch.int64)
    if feats.is_pyramid:
        tensors["levels"] = levels.cpu()
    if roi_set.scores is not None:
        tensors["scores"] = torch.tensor([float("nan") if s is None else s for s in roi_set.scores])
    meta = {
        "op": command,
        "output_size": f"{size[0]}x{size[1]}",
        "spatial_scale": json.dumps(feats.scales if feats.is_pyramid else feats.scales[0]),
        "spatial_scale_source": feats.scale_source,
        **{k: json.dumps(v) for k, v in params.items()},
        "features": feats.source,
        "keys": ",".join(feats.keys),
        "rois": roi_set.source,
        "box_format": roi_set.box_format,
        "device": str(inputs.device),
        "dtype": str(pooled.dtype).replace("torch.", ""),
        "count": str(len(roi_set)),
        "ids": json.dumps(roi_set.ids),
        "roicli_version": roicli.__version__,
        "torch_version": torch.__version__,
    }
    if roi_set.labels is not None:
        meta["labels"] = json.dumps(roi_set.labels)
    if feats.is_pyramid:
        meta.update(canonical_size=json.dumps(canonical_size), canonical_level=json.dumps(canonical_level))
    if feats.image_size is not None:
        meta["image_size"] = json.dumps(list(feats.image_size))
    write_output(output, st_save(tensors, metadata=meta))

    if report:
        sizes = torch.tensor([list(feats.levels[int(lv)].shape[-2:]) for lv in levels.cpu()]).reshape(-1, 2)
        rows = [g.flat() for g in pool_geometry(roi_set.boxes, roi_set.batch, roi_set.ids, scales, size, sizes, dt)]
        fmt = format_for_path(report)
        write_output(
            report,
            render_text(rows, fmt, header={"op": "roi_pool geometry", "output_size": meta["output_size"]}).encode(),
        )

    summary = {
        "op": command,
        "rois": len(roi_set),
        "output": output,
        "output_shape": list(pooled.shape),
        "spatial_scale": feats.scales if feats.is_pyramid else feats.scales[0],
        "spatial_scale_source": feats.scale_source,
        "output_size": list(size),
        **params,
        "device": str(inputs.device),
        "dtype": meta["dtype"],
        "seconds": round(seconds, 4),
        "degenerate_boxes": len(bad),
    }
    if feats.is_pyramid:
        summary["rois_per_level"] = dict(
            zip(feats.keys, torch.bincount(levels.cpu(), minlength=len(feats.keys)).tolist())
        )
    if json_out:
        typer.echo(json.dumps(summary))
    elif not quiet:
        scale = summary["spatial_scale"]
        console.print(
            f"{command}: {len(roi_set)} RoIs -> {output} {tuple(pooled.shape)} {meta['dtype']} on {inputs.device}, "
            f"spatial_scale {scale} ({feats.scale_source}), {seconds:.3f} s",
            markup=False,
            soft_wrap=True,
        )


def _pool_in_chunks(op, feats, boxes, levels, size, chunk_size: int, progress: bool) -> torch.Tensor:
    """Pool `chunk_size` RoIs at a time (bounded memory), results on the CPU in input order."""
    k = boxes.shape[0]
    c = feats.levels[0].shape[1]
    out_dtype = feats.levels[0].dtype
    if k == 0:
        return torch.zeros((0, c, *size), dtype=out_dtype)
    chunks = []
    with torch.no_grad(), Progress(disable=not progress, transient=True, console=stderr()) as bar:
        task = bar.add_task("pooling", total=k)
        for s in range(0, k, chunk_size):
            r, lv = boxes[s : s + chunk_size], levels[s : s + chunk_size]
            if feats.is_pyramid:
                res = pool_levels(lambda f, rr, sc: op(f, rr, size, sc), feats.levels, r, lv, feats.scales)
            else:
                res = op(feats.levels[0], r, size, feats.scales[0])
            chunks.append(res.cpu())
            bar.update(task, advance=r.shape[0])
    return torch.cat(chunks)
