"""Quantization geometry of RoI Pool, per RoI and axis, as rows (dataclasses). Never prints.

Coordinates are in feature cells: cell i spans [i, i + 1), and an image coordinate x is the cell
coordinate `x * spatial_scale`. RoI Pool (as torchvision implements it) rounds each box edge to a
cell index, takes cells `round(x1) .. round(x2)` inclusive, and splits them into integer windows
`floor(p * bin) .. ceil((p + 1) * bin)` (see `roicli.ops.roi_pool.pool_windows`).
"""

from __future__ import annotations

import math
import statistics
from dataclasses import asdict, dataclass

import torch

from roicli.ops.roi_pool import c_round, pool_windows


@dataclass
class AxisGeometry:
    exact_start: float  # box edges in cells
    exact_end: float
    rounded_start: int  # the cells RoI Pool uses (end inclusive)
    rounded_end: int
    start_shift_cells: float  # rounded - exact
    end_shift_cells: float
    start_shift_px: float  # the same in image pixels
    end_shift_px: float
    exact_size: float  # cells
    quantized_size: int  # rounded_end - rounded_start + 1
    exact_bin: float  # exact_size / bins
    min_window: int  # smallest / largest integer bin window (after clipping to the map)
    max_window: int
    max_overlap: int  # cells shared by neighbouring windows
    worst_edge_px: float  # largest gap between a window edge and the exact bin edge, image px


@dataclass
class RoiGeometry:
    id: object
    batch: int
    spatial_scale: float
    x: AxisGeometry
    y: AxisGeometry
    roi_iou: float  # IoU of the quantized RoI with the exact one
    mean_bin_iou: float  # mean IoU of the integer windows with the exact bins

    def flat(self) -> dict:
        """One flat dict (x_*/y_* columns), for JSON Lines and CSV."""
        row = {"id": self.id, "batch": self.batch, "spatial_scale": self.spatial_scale}
        for axis in ("x", "y"):
            row.update({f"{axis}_{k}": v for k, v in asdict(getattr(self, axis)).items()})
        row.update(roi_iou=self.roi_iou, mean_bin_iou=self.mean_bin_iou)
        return row


def _axis(start, end, scale: float, bins: int, size: int, dtype: torch.dtype):
    """Per-axis geometry tensors for K RoIs; the rounding runs in the op's dtype, like the op."""
    a, b = start * scale, end * scale  # [K] exact edges, cells
    lo, ws, we = pool_windows(start.to(dtype), end.to(dtype), scale, bins, size)  # [K], [K, P] x2
    hi = c_round(end.to(dtype) * torch.tensor(scale, dtype=dtype)).long()
    p = torch.arange(bins + 1, dtype=torch.float64)
    edges = a[:, None] + p * ((b - a) / bins)[:, None]  # [K, P+1] exact bin edges
    widths = (we - ws).clamp_min(0)
    overlap = (we[:, :-1] - ws[:, 1:]).clamp_min(0) if bins > 1 else torch.zeros_like(a[:, None])
    worst = torch.maximum((ws - edges[:, :-1]).abs(), (we - edges[:, 1:]).abs()).amax(dim=1) / scale
    return a, b, lo, hi, ws, we, edges, widths, overlap, worst


def _overlap_1d(a0, a1, b0, b1):
    return (torch.minimum(a1, b1) - torch.maximum(a0, b0)).clamp_min(0)


def pool_geometry(
    boxes: torch.Tensor,
    batch: torch.Tensor,
    ids: list,
    spatial_scales: torch.Tensor,
    output_size: tuple[int, int],
    map_sizes: torch.Tensor,
    dtype: torch.dtype = torch.float32,
) -> list[RoiGeometry]:
    """Geometry rows for K RoIs.

    boxes `Tensor[K, 4]` xyxy image px; batch `Tensor[K]`; spatial_scales `Tensor[K]` (per RoI, for
    pyramids); map_sizes `Tensor[K, 2]` (H, W of the map each RoI is pooled from); dtype: the op's
    compute dtype (float32 unless the features are float64).
    """
    ph, pw = output_size
    rows: list[RoiGeometry] = []
    boxes = boxes.double()
    for scale in torch.unique(spatial_scales).tolist():
        sel = (spatial_scales == scale).nonzero().flatten()
        b = boxes[sel]
        h, w = int(map_sizes[sel[0], 0]), int(map_sizes[sel[0], 1])
        gx = _axis(b[:, 0], b[:, 2], scale, pw, w, dtype)
        gy = _axis(b[:, 1], b[:, 3], scale, ph, h, dtype)
        # IoU of the quantized RoI [lo, hi + 1) with the exact [a, b), in 2-D.
        inter = _overlap_1d(gx[0], gx[1], gx[2].double(), gx[3].double() + 1) * _overlap_1d(
            gy[0], gy[1], gy[2].double(), gy[3].double() + 1
        )
        area_exact = (gx[1] - gx[0]).clamp_min(0) * (gy[1] - gy[0]).clamp_min(0)
        area_q = (gx[3] - gx[2] + 1).clamp_min(1).double() * (gy[3] - gy[2] + 1).clamp_min(1).double()
        roi_iou = inter / (area_exact + area_q - inter).clamp_min(1e-12)
        bin_iou = _bin_iou(gx, gy)
        for j, i in enumerate(sel.tolist()):
            rows.append(
                (
                    i,
                    RoiGeometry(
                        id=ids[i],
                        batch=int(batch[i]),
                        spatial_scale=scale,
                        x=_axis_row(gx, j, scale),
                        y=_axis_row(gy, j, scale),
                        roi_iou=float(roi_iou[j]),
                        mean_bin_iou=float(bin_iou[j]),
                    ),
                )
            )
    return [r for _, r in sorted(rows, key=lambda t: t[0])]


def _bin_iou(gx, gy) -> torch.Tensor:
    """Mean over bins of IoU(integer window, exact bin), `Tensor[K]`."""

    def per_axis(g):
        ws, we, edges = g[4].double(), g[5].double(), g[6]
        e0 = torch.minimum(edges[:, :-1], edges[:, 1:])
        e1 = torch.maximum(edges[:, :-1], edges[:, 1:])
        return _overlap_1d(ws, we, e0, e1), (we - ws).clamp_min(0), e1 - e0  # [K, P] each

    ix, wx, ex = per_axis(gx)
    iy, wy, ey = per_axis(gy)
    inter = iy[:, :, None] * ix[:, None, :]  # [K, PH, PW]
    union = wy[:, :, None] * wx[:, None, :] + ey[:, :, None] * ex[:, None, :] - inter
    return (inter / union.clamp_min(1e-12)).flatten(1).mean(dim=1)


def _axis_row(g, j: int, scale: float) -> AxisGeometry:
    a, b, lo, hi, ws, we, edges, widths, overlap, worst = (t[j] for t in g)
    return AxisGeometry(
        exact_start=float(a),
        exact_end=float(b),
        rounded_start=int(lo),
        rounded_end=int(hi),
        start_shift_cells=float(lo - a),
        end_shift_cells=float(hi - b),
        start_shift_px=float((lo - a) / scale),
        end_shift_px=float((hi - b) / scale),
        exact_size=float(b - a),
        quantized_size=int(hi - lo + 1),
        exact_bin=float((b - a) / (edges.numel() - 1)),
        min_window=int(widths.min()),
        max_window=int(widths.max()),
        max_overlap=int(overlap.max()) if overlap.numel() else 0,
        worst_edge_px=float(worst),
    )


# ---- pool vs align: values against the exact integral --------------------------------------------

COLUMN_DEFINITIONS = {
    "exact": "precise_roi_pool (aligned=True): the exact mean of the bilinearly interpolated map over each exact "
    "bin, the edge cells' values reaching the image border",
    "quant_rel_err": "||mean over RoI Pool's integer windows - exact|| / ||exact|| (L2 over C x PH x PW): "
    "quantization alone, same (average) aggregation",
    "align_rel_err": "||RoI Align (avg) - exact|| / ||exact||: sampling alone",
    "pool_vs_align_max": "||RoI Pool (max) - RoI Align (mode=max)|| / ||RoI Align (mode=max)||",
    "worst_edge_px": "largest distance between an integer window edge and the exact bin edge, image px (x or y)",
    "roi_iou": "IoU of the rounded RoI (cells round(x1)..round(x2), inclusive) with the exact box",
    "mean_bin_iou": "mean IoU of RoI Pool's integer windows with the exact bins",
}
SIZE_BUCKETS = (0, 32, 64, 128, 256, 512, float("inf"))  # sqrt(box area) in image px


def _rel(x: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    """Per-RoI relative L2 error of `x` against `ref`, both `Tensor[K, C, PH, PW]` -> `Tensor[K]`."""
    num = (x.double() - ref.double()).flatten(1).norm(dim=1)
    den = ref.double().flatten(1).norm(dim=1)
    return torch.where(den > 0, num / den.clamp_min(1e-300), torch.where(num > 0, float("inf"), 0.0))


def value_errors(levels, scales, rois, level_idx, output_size, sampling_ratio: int, aligned: bool) -> dict:
    """The three value comparisons for RoIs `Tensor[K, 5]` on a map (or pyramid): name -> `Tensor[K]`."""
    from roicli.ops import pool_levels, precise_roi_pool, roi_align, roi_pool
    from roicli.ops.roi_pool import window_avg_pool

    def run(op):
        return pool_levels(lambda f, r, s: op(f, r, output_size, s), levels, rois, level_idx, scales)

    # The exact reference reads the map as its cells: each edge cell's value reaches the image border
    # (one replicated pixel around the map, boxes shifted by one cell), so a constant map pools to
    # that constant for any box inside the image.
    padded = [torch.nn.functional.pad(f, (1, 1, 1, 1), mode="replicate") for f in levels]
    shift = torch.zeros_like(rois)
    shift[:, 1:] = 1 / torch.tensor(scales, dtype=rois.dtype, device=rois.device)[level_idx][:, None]
    exact = pool_levels(
        lambda f, r, s: precise_roi_pool(f, r, output_size, s, aligned=True), padded, rois + shift, level_idx, scales
    )
    windows = run(window_avg_pool)
    align_avg = run(lambda f, r, size, s: roi_align(f, r, size, s, sampling_ratio, aligned))
    pool_max = run(roi_pool)
    align_max = run(lambda f, r, size, s: roi_align(f, r, size, s, sampling_ratio, aligned, mode="max"))
    return {
        "quant_rel_err": _rel(windows, exact),
        "align_rel_err": _rel(align_avg, exact),
        "pool_vs_align_max": _rel(pool_max, align_max),
    }


def compare_rows(geometry: list[RoiGeometry], errors: dict, boxes: torch.Tensor, levels=None) -> list[dict]:
    """One flat row per RoI: box size, geometry, value errors."""
    rows = []
    for i, g in enumerate(geometry):
        row = g.flat()
        if levels is not None:
            row["level"] = int(levels[i])
        row["box_w_px"] = float(boxes[i, 2] - boxes[i, 0])
        row["box_h_px"] = float(boxes[i, 3] - boxes[i, 1])
        row["worst_edge_px"] = max(g.x.worst_edge_px, g.y.worst_edge_px)
        row.update({k: float(v[i]) for k, v in errors.items()})
        rows.append(row)
    return rows


SUMMARY_COLUMNS = ("quant_rel_err", "align_rel_err", "pool_vs_align_max", "worst_edge_px", "roi_iou", "mean_bin_iou")


def summarize(rows: list[dict]) -> list[dict]:
    """Mean, median and max over the RoIs of each headline figure."""
    out = []
    for col in SUMMARY_COLUMNS:
        v = torch.tensor([r[col] for r in rows], dtype=torch.float64)
        if v.numel() == 0:
            continue
        out.append(
            {"figure": col, "mean": float(v.mean()), "median": statistics.median(v.tolist()), "max": float(v.max())}
        )
    return out


def by_size(rows: list[dict]) -> list[dict]:
    """How the errors fall as boxes grow: means per bucket of sqrt(box area) in image px."""
    out = []
    for lo, hi in zip(SIZE_BUCKETS[:-1], SIZE_BUCKETS[1:]):
        sel = [r for r in rows if lo <= (max(r["box_w_px"], 0) * max(r["box_h_px"], 0)) ** 0.5 < hi]
        if not sel:
            continue
        label = f"{lo}-{hi}px" if hi != float("inf") else f">={lo}px"
        bucket = {"box_size": label, "rois": len(sel)}
        for col in ("quant_rel_err", "align_rel_err", "worst_edge_px", "roi_iou"):
            bucket[f"mean_{col}"] = sum(r[col] for r in sel) / len(sel)
        out.append(bucket)
    return out


def explain(g: RoiGeometry, output_size: tuple[int, int], errors: dict | None = None) -> list[str]:
    """One RoI through RoI Pool's two quantization steps, in words and numbers, per axis.

    Next to what the op does it shows the usual textbook illustration's model, which *truncates*
    the box edges and the bin size (665 / 32 = 20.78 -> 20 cells; 20 / 7 = 2.86 -> 2 cells per bin).
    """
    scale = g.spatial_scale
    lines = [
        f"RoI {g.id!r}: spatial scale {scale:g} (stride {1 / scale:g} px), {output_size[0]}x{output_size[1]} bins."
    ]
    for name, a, bins in (("x", g.x, output_size[1]), ("y", g.y, output_size[0])):
        lo, hi = a.exact_start, a.exact_end
        t_lo, t_hi = math.floor(lo), math.floor(hi)
        t_size = t_hi - t_lo
        t_bin = t_size // bins if bins else 0
        bin_loss = t_size / bins - t_bin
        lost_cells = t_size - bins * t_bin
        edge_loss = (lo - t_lo) + (hi - t_hi)
        lines += [
            "",
            f"{name} axis: box {lo / scale:g} .. {hi / scale:g} px = cells {lo:.4g} .. {hi:.4g} "
            f"({a.exact_size:.4g} cells = {a.exact_size / scale:g} px / {1 / scale:g}).",
            f"  Step 1, box edges. Illustration (truncate): cells {t_lo} .. {t_hi}, {t_size} cells; the edges lose "
            f"{edge_loss:.4g} cells = {edge_loss / scale:.4g} px.",
            f"  Step 1, box edges. RoI Pool as implemented (round, end inclusive): cells {a.rounded_start} .. "
            f"{a.rounded_end} -> {a.quantized_size} cells; start moves {a.start_shift_cells:+.4g} cells "
            f"({a.start_shift_px:+.4g} px), end moves {a.end_shift_cells:+.4g} cells ({a.end_shift_px:+.4g} px).",
            f"  Step 2, bins. Illustration (truncate): {t_size} / {bins} = {t_size / bins:.4g} cells per bin -> "
            f"{t_bin}; each bin loses {bin_loss:.4g} cells, {lost_cells} of {t_size} cells are never pooled "
            f"({lost_cells / scale:g} px).",
            f"  Step 2, bins. As implemented: {a.quantized_size} / {bins} = {a.quantized_size / bins:.4g} cells "
            f"per bin, windows floor(p*bin) .. ceil((p+1)*bin): {a.min_window} to {a.max_window} cells wide, "
            f"neighbours share up to {a.max_overlap} cell(s); the exact bins are {a.exact_bin:.4g} cells; the "
            f"worst window edge is {a.worst_edge_px:.4g} px off.",
            f"  Squared: box edge ({edge_loss:.4g} x {1 / scale:g})^2 = {(edge_loss / scale) ** 2:.6g} px^2; "
            f"bins ({bin_loss:.4g} x {bins})^2 = {(bin_loss * bins) ** 2:.6g} cells^2 (exact arithmetic; "
            f"with the fractions cut to two digits first: {(round(edge_loss, 2) / scale) ** 2:.8g}"
            f" and {(round(bin_loss, 2) * bins) ** 2:.8g}).",
        ]
    lines += ["", f"IoU of the rounded RoI with the exact one: {g.roi_iou:.4f}; mean bin IoU: {g.mean_bin_iou:.4f}."]
    if errors:
        lines.append(
            "Values against the exact integral: quantization alone (mean over the integer windows) "
            f"{errors['quant_rel_err']:.2%}; RoI Align {errors['align_rel_err']:.2%}; "
            f"RoI Pool (max) vs RoI Align (max) {errors['pool_vs_align_max']:.2%}."
        )
    return lines
