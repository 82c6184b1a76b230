"""Quantization geometry of RoI Pool, per RoI and axis, as rows (dataclasses). Never prints.

Coordinates are in feature cells: cell i spans [i, i + 1), and an image coordinate x is the cell
coordinate `x * spatial_scale`. RoI Pool (as torchvision implements it) rounds each box edge to a
cell index, takes cells `round(x1) .. round(x2)` inclusive, and splits them into integer windows
`floor(p * bin) .. ceil((p + 1) * bin)` (see `roicli.ops.roi_pool.pool_windows`).
"""

from __future__ import annotations

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
            rows.append((i, RoiGeometry(
                id=ids[i], batch=int(batch[i]), spatial_scale=scale,
                x=_axis_row(gx, j, scale), y=_axis_row(gy, j, scale),
                roi_iou=float(roi_iou[j]), mean_bin_iou=float(bin_iou[j]),
            )))
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
        exact_start=float(a), exact_end=float(b),
        rounded_start=int(lo), rounded_end=int(hi),
        start_shift_cells=float(lo - a), end_shift_cells=float(hi - b),
        start_shift_px=float((lo - a) / scale), end_shift_px=float((hi - b) / scale),
        exact_size=float(b - a), quantized_size=int(hi - lo + 1),
        exact_bin=float((b - a) / (edges.numel() - 1)),
        min_window=int(widths.min()), max_window=int(widths.max()),
        max_overlap=int(overlap.max()) if overlap.numel() else 0,
        worst_edge_px=float(worst),
    )
