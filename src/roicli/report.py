"""Quantization geometry of RoI Pool, per RoI and axis, as rows (dataclasses). Never prints.

Coordinates are in feature cells: cell i spans [i, i + 1), and an image coordinate x is the cell
coordinate `x * spatial_scale`. RoI Pool (as torchvision implements it) rounds each box edge to a
cell index, takes cells `round(x1) .. round(x2)` inclusive, and splits them into integer windows
`floor(p * bin) .. ceil((p + 1) * bin)` (see `roicli.ops.roi_pool.pool_windows`). So the rounded
RoI spans `[round(x1), round(x2) + 1)` cells: its end edge is the *end* of the last cell. For the box
[0, 0, 32, 32] at stride 16: cells 0 .. 2, 3 cells = 48 px, the end edge moves +1 cell = +16 px.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import asdict, dataclass

import torch

from roicli.ops._gather import separable_mean
from roicli.ops._validate import BoxesLike, as_rois, check_input, to_pair
from roicli.ops.roi_pool import c_round, pool_windows


@dataclass
class AxisGeometry:
    exact_start: float  # box edges in cells
    exact_end: float
    rounded_start: int  # the cells RoI Pool uses (end inclusive)
    rounded_end: int
    start_shift_cells: float  # rounded edge - exact edge: rounded_start - exact_start
    end_shift_cells: float  # (rounded_end + 1) - exact_end: the end cell is inclusive
    start_shift_px: float  # the same in image pixels
    end_shift_px: float
    exact_size: float  # cells
    quantized_size: int  # rounded_end - rounded_start + 1 = exact_size + end_shift - start_shift (cells)
    exact_bin: float  # exact_size / bins
    min_window: int  # smallest / largest integer bin window (after clipping to the map)
    max_window: int
    max_overlap: int  # cells shared by neighbouring windows
    worst_edge_px: float  # largest gap between a window edge and the exact bin edge, image px
    quantized_size_px: float  # quantized_size in image px


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
        end_shift_cells=float(hi + 1 - b),
        start_shift_px=float((lo - a) / scale),
        end_shift_px=float((hi + 1 - b) / scale),
        exact_size=float(b - a),
        quantized_size=int(hi - lo + 1),
        exact_bin=float((b - a) / (edges.numel() - 1)),
        min_window=int(widths.min()),
        max_window=int(widths.max()),
        max_overlap=int(overlap.max()) if overlap.numel() else 0,
        worst_edge_px=float(worst),
        quantized_size_px=float((hi - lo + 1) / scale),
    )


# ---- pool vs align: values against the exact integral --------------------------------------------

COLUMN_DEFINITIONS = {
    "exact": "precise_roi_pool (aligned=True): the exact mean of the bilinearly interpolated map over each exact "
    "bin, the edge cells' values reaching the image border",
    "pool_vs_align": "||RoI Pool - RoI Align|| / ||RoI Align||, both as they run: RoI Pool's max over its rounded "
    "windows against RoI Align's average with the chosen sampling_ratio and aligned (L2 over C x PH x PW)",
    "pool_vs_exact": "||RoI Pool (max over its rounded windows) - exact|| / ||exact||",
    "quant_rel_err": "||mean over RoI Pool's integer windows - exact|| / ||exact|| (L2 over C x PH x PW): "
    "quantization alone, same (average) aggregation",
    "align_rel_err": "||RoI Align (avg) - exact|| / ||exact||: sampling alone",
    "pool_vs_align_max": "||RoI Pool (max) - RoI Align (mode=max)|| / ||RoI Align (mode=max)||",
    "x_start_shift_px": "round(x1 * s) / s - x1: where RoI Pool's rounded RoI starts against the box, image px "
    "(y likewise)",
    "x_end_shift_px": "(round(x2 * s) + 1) / s - x2: the end cell is included, so the rounded RoI ends where the "
    "next cell starts, image px (y likewise)",
    "worst_edge_px": "largest distance between an integer window edge and the exact bin edge, image px (x or y)",
    "roi_iou": "IoU of the rounded RoI (cells round(x1)..round(x2), inclusive) with the exact box",
    "mean_bin_iou": "mean IoU of RoI Pool's integer windows with the exact bins",
    "blank": "a relative error is blank (null) where its reference is all zeros: it is undefined there",
}
SIZE_BUCKETS = (0, 32, 64, 128, 256, 512, float("inf"))  # sqrt(box area) in image px
VALUE_COLUMNS = ("pool_vs_align", "pool_vs_exact", "quant_rel_err", "align_rel_err", "pool_vs_align_max")


def _rel(x: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    """Per-RoI relative L2 error of `x` against `ref`, both `Tensor[K, C, PH, PW]` -> `Tensor[K]`
    (float64); NaN where it is undefined (`ref` all zeros and `x` not) or does not fit a double."""
    num = (x.double() - ref.double()).flatten(1).norm(dim=1)
    den = ref.double().flatten(1).norm(dim=1)
    rel = torch.where(den > 0, num / den.clamp_min(1e-300), torch.where(num > 0, float("nan"), 0.0))
    return torch.where(torch.isfinite(rel), rel, float("nan"))


class ValueComparison:
    """The value comparisons of `roicli compare`, for any chunk of RoIs on one map or a pyramid.

    levels `list[Tensor[N, C, H_l, W_l]]` (one map: a list of one), scales per level. The exact
    reference reads the map as its cells: each edge cell's value reaches the image border (one
    replicated pixel around the map, boxes shifted by one cell), so a constant map pools to that
    constant for any box inside the image. The padded maps are made once, here; a call then costs
    memory in proportion to its RoIs only.
    """

    def __init__(self, levels, scales, output_size: tuple[int, int], sampling_ratio: int, aligned: bool):
        self.levels, self.scales = list(levels), list(scales)
        self.output_size, self.sampling_ratio, self.aligned = output_size, sampling_ratio, aligned
        self.padded = [torch.nn.functional.pad(f, (1, 1, 1, 1), mode="replicate") for f in self.levels]

    def __call__(self, rois: torch.Tensor, level_idx: torch.Tensor) -> dict:
        """rois `Tensor[k, 5]` in image px, level_idx `Tensor[k]` -> name -> `Tensor[k]` (float64, CPU)."""
        from roicli.ops import pool_levels, precise_roi_pool, roi_align, roi_pool

        size, sr, aligned = self.output_size, self.sampling_ratio, self.aligned

        def run(op, maps=None, boxes=None):
            fn = lambda f, r, s: op(f, r, size, s)  # noqa: E731
            return pool_levels(fn, maps or self.levels, rois if boxes is None else boxes, level_idx, self.scales)

        with torch.no_grad():
            shift = torch.zeros_like(rois)
            scales = torch.tensor(self.scales, dtype=rois.dtype, device=rois.device)
            shift[:, 1:] = 1 / scales[level_idx][:, None]
            exact = run(lambda f, r, sz, s: precise_roi_pool(f, r, sz, s, aligned=True), self.padded, rois + shift)
            out = {"quant_rel_err": _rel(run(window_avg_pool), exact)}
            align_avg = run(lambda f, r, sz, s: roi_align(f, r, sz, s, sr, aligned))
            out["align_rel_err"] = _rel(align_avg, exact)
            pool_max = run(roi_pool)
            out["pool_vs_exact"] = _rel(pool_max, exact)
            out["pool_vs_align"] = _rel(pool_max, align_avg)
            del exact, align_avg
            align_max = run(lambda f, r, sz, s: roi_align(f, r, sz, s, sr, aligned, mode="max"))
            out["pool_vs_align_max"] = _rel(pool_max, align_max)
        return {k: out[k].cpu() for k in VALUE_COLUMNS}


def value_errors(levels, scales, rois, level_idx, output_size, sampling_ratio: int, aligned: bool) -> dict:
    """The value comparisons for RoIs `Tensor[K, 5]` on a map (or pyramid), all at once: name -> `Tensor[K]`."""
    return ValueComparison(levels, scales, output_size, sampling_ratio, aligned)(rois, level_idx)


def compare_chunks(
    features,
    roi_set,
    rois: torch.Tensor,
    levels: torch.Tensor,
    output_size: tuple[int, int],
    sampling_ratio: int,
    aligned: bool,
    chunk_size: int = 512,
    indices: list[int] | None = None,
):
    """RoI Pool's geometry and the value comparisons, `chunk_size` RoIs at a time (bounded memory).

    features: `roicli.io.features.Features`; roi_set: `roicli.io.rois.RoiSet`; rois `Tensor[K, 5]`
    and levels `Tensor[K]` as the pooling commands make them (`pipeline.rois_and_levels`: the op's
    dtype and device). `indices` picks some RoIs (default: all, in order). Yields, per chunk,
    `(geometry: list[RoiGeometry], errors: name -> Tensor[k], rows: list[dict])`.
    """
    compare = ValueComparison(features.levels, features.scales, output_size, sampling_ratio, aligned)
    lv = levels.cpu()
    scales, sizes = features.per_roi(lv)  # [K], [K, 2]
    order = torch.arange(len(roi_set)) if indices is None else torch.tensor(indices, dtype=torch.long)
    for s in range(0, order.numel(), chunk_size):
        idx = order[s : s + chunk_size]  # [k]
        geometry = pool_geometry(
            roi_set.boxes[idx],
            roi_set.batch[idx],
            [roi_set.ids[i] for i in idx.tolist()],
            scales[idx],
            output_size,
            sizes[idx],
            rois.dtype,
        )
        dev_idx = idx.to(rois.device)
        errors = compare(rois[dev_idx], levels[dev_idx])
        rows = compare_rows(geometry, errors, roi_set.boxes[idx], lv[idx] if features.is_pyramid else None)
        yield geometry, errors, rows


def _finite(v: float) -> float | None:
    return v if math.isfinite(v) else None


def compare_rows(geometry: list[RoiGeometry], errors: dict, boxes: torch.Tensor, levels=None) -> list[dict]:
    """One flat row per RoI: box size, geometry, value errors. A value that is undefined or does
    not fit (a relative error against an all-zero reference, an absurd coordinate) is None."""
    rows = []
    for i, g in enumerate(geometry):
        row = g.flat()
        if levels is not None:
            row["level"] = int(levels[i])
        row["box_w_px"] = float(boxes[i, 2] - boxes[i, 0])
        row["box_h_px"] = float(boxes[i, 3] - boxes[i, 1])
        row["worst_edge_px"] = max(g.x.worst_edge_px, g.y.worst_edge_px)
        row.update({k: float(v[i]) for k, v in errors.items()})
        rows.append({k: _finite(v) if isinstance(v, float) else v for k, v in row.items()})
    return rows


SUMMARY_COLUMNS = (
    "quant_rel_err",
    "align_rel_err",
    "pool_vs_align_max",
    "worst_edge_px",
    "roi_iou",
    "mean_bin_iou",
    "pool_vs_align",
    "pool_vs_exact",
)


def _defined(rows: list[dict], col: str) -> list[float]:
    return [r[col] for r in rows if r.get(col) is not None]


def summarize(rows: list[dict]) -> list[dict]:
    """Mean, median and max over the RoIs of each headline figure (over the RoIs where it is defined)."""
    out = []
    for col in SUMMARY_COLUMNS:
        v = _defined(rows, col)
        if not v:
            continue
        out.append({"figure": col, "mean": statistics.fmean(v), "median": statistics.median(v), "max": max(v)})
    return out


def headline(rows: list[dict], sampling_ratio: int, aligned: bool) -> dict:
    """The answer to "how far is RoI Pool, as it runs, from RoI Align as it runs, and from the exact
    integral, on these boxes": median and worst over the RoIs, as fractions, plus the words (`text`)."""
    out: dict = {"rois": len(rows)}
    align = f"RoI Align (avg, sampling_ratio={sampling_ratio}, aligned={aligned})"
    lines = []
    for col, against in (("pool_vs_align", align), ("pool_vs_exact", "the exact integral")):
        v = [(r[col], r["id"]) for r in rows if r.get(col) is not None]
        if not v:
            out[col] = {"median": None, "worst": None, "worst_id": None, "undefined": len(rows)}
            lines.append(f"RoI Pool (max over its rounded windows) vs {against}: no RoI to measure.")
            continue
        worst, worst_id = max(v, key=lambda t: t[0])
        med = statistics.median(x for x, _ in v)
        out[col] = {"median": med, "worst": worst, "worst_id": worst_id, "undefined": len(rows) - len(v)}
        lines.append(
            f"RoI Pool (max over its rounded windows) vs {against}: median {_pct(med)}, worst {_pct(worst)} "
            f"(RoI {worst_id!r})."
        )
    note = f"Relative L2 distance of each RoI's pooled values (C x PH x PW), over {len(rows)} RoI(s)"
    undefined = max(out[c]["undefined"] for c in ("pool_vs_align", "pool_vs_exact"))
    if undefined:
        note += f"; {undefined} RoI(s) with an all-zero reference left out"
    out["text"] = [*lines, note + "."]
    return out


def _pct(v: float) -> str:
    return f"{100 * v:.3g}%"


def by_size(rows: list[dict]) -> list[dict]:
    """How the errors fall as boxes grow: means per bucket of sqrt(box area) in image px."""
    out = []
    for lo, hi in zip(SIZE_BUCKETS[:-1], SIZE_BUCKETS[1:]):
        sel = [
            r
            for r in rows
            if r["box_w_px"] is not None
            and r["box_h_px"] is not None
            and lo <= (max(r["box_w_px"], 0) * max(r["box_h_px"], 0)) ** 0.5 < hi
        ]
        if not sel:
            continue
        label = f"{lo}-{hi}px" if hi != float("inf") else f">={lo}px"
        bucket = {"box_size": label, "rois": len(sel)}
        for col in ("quant_rel_err", "align_rel_err", "worst_edge_px", "roi_iou"):
            v = _defined(sel, col)
            bucket[f"mean_{col}"] = statistics.fmean(v) if v else None
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
            f"{a.rounded_end} -> {a.quantized_size} cells = {a.rounded_start / scale:g} .. "
            f"{(a.rounded_end + 1) / scale:g} px ({a.quantized_size_px:g} px wide); start moves "
            f"{a.start_shift_cells:+.4g} cells ({a.start_shift_px:+.4g} px), end moves {a.end_shift_cells:+.4g} "
            f"cells ({a.end_shift_px:+.4g} px): the end cell {a.rounded_end} is included.",
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
        e = {}
        for k in VALUE_COLUMNS:
            v = errors.get(k)
            v = None if v is None else float(v)
            e[k] = "undefined (all-zero reference)" if v is None or not math.isfinite(v) else f"{v:.2%}"
        lines += [
            f"RoI Pool as it runs (max) vs RoI Align as it runs (avg): {e['pool_vs_align']}; "
            f"vs the exact integral: {e['pool_vs_exact']}.",
            "Values against the exact integral: quantization alone (mean over the integer windows) "
            f"{e['quant_rel_err']}; RoI Align {e['align_rel_err']}; "
            f"RoI Pool (max) vs RoI Align (max) {e['pool_vs_align_max']}.",
        ]
    return lines


def window_avg_pool(
    input: torch.Tensor,
    boxes: BoxesLike,
    output_size: int | tuple[int, int],
    spatial_scale: float = 1.0,
) -> torch.Tensor:
    """The *average* over RoI Pool's integer windows (same rounding and windows as `roi_pool`).

    Not a standard op: it isolates RoI Pool's quantization from its max aggregation, so that it can
    be compared with `precise_roi_pool` (the exact average over the exact bins). Returns
    Tensor[K, C, PH, PW]; an empty window gives 0.
    """
    check_input(input)
    ph, pw = to_pair(output_size)
    rois = as_rois(boxes, input)
    n, c, h, w = input.shape
    if rois.shape[0] == 0:
        return input.new_zeros((0, c, ph, pw))
    ry, wy = _window_taps(rois[:, 2], rois[:, 4], spatial_scale, ph, h)
    rx, wx = _window_taps(rois[:, 1], rois[:, 3], spatial_scale, pw, w)
    return separable_mean(input, rois[:, 0].long() * (h * w), ry, wy, rx, wx, compact=True)


def _window_taps(start, end, spatial_scale, pooled, size) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows (cols) of each integer window and the weight 1/window size: `Tensor[K, P, T]` each."""
    _, first, last = pool_windows(start, end, spatial_scale, pooled, size)  # [K, P] x2
    count = (last - first).clamp_min(0)
    t = torch.arange(max(int(count.max()), 1), device=start.device)
    idx = (first[..., None] + t).clamp(0, size - 1)  # [K, P, T]
    weight = (t < count[..., None]) / count.clamp_min(1)[..., None].to(torch.float64)
    return idx, weight
