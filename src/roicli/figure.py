"""Draw RoI Pool's quantization and RoI Align's sampling over a feature map or an image (pillow).

The picture of the Mask R-CNN paper, for the user's own data: the exact RoI and its exact bins
(green), the rounded RoI and the integer bin windows RoI Pool really uses (red), RoI Align's sample
points (blue), over the feature cells (grey grid) of a heat map of the features or of the image.
All geometry comes from the ops' own functions, in image pixels: feature cell i spans
[i / scale, (i + 1) / scale), and a feature pixel coordinate c is the image point (c + 0.5) / scale.
The rounded RoI is the report's (`roicli.report.pool_geometry`): cells `round(x1) .. round(x2)`
inclusive, so its end edge is drawn at `(round(x2) + 1) / scale`, where the report's end shift puts it.
"""

from __future__ import annotations

import textwrap
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

from roicli.ops.roi_align import sample_points
from roicli.ops.roi_pool import pool_windows
from roicli.report import pool_geometry

EXACT = (40, 200, 70)
QUANTIZED = (230, 40, 40)
SAMPLES = (40, 110, 255)
GRID = (150, 150, 150)
# Heat-map colours: a grey ramp, so that the red, green and blue marks stand out on any value.
_HEAT = np.array([[25, 25, 30], [235, 235, 225]], dtype=np.float64)


@dataclass
class View:
    """Maps image pixels to canvas pixels: canvas = (image - origin) * zoom."""

    x0: float
    y0: float
    zoom: float

    def __call__(self, x: float, y: float) -> tuple[float, float]:
        return (x - self.x0) * self.zoom, (y - self.y0) * self.zoom


def heatmap(values: np.ndarray) -> np.ndarray:
    """`[h, w]` floats -> `[h, w, 3]` uint8 colours, min to max."""
    lo, hi = float(np.min(values)), float(np.max(values))
    t = (values - lo) / (hi - lo) if hi > lo else np.zeros_like(values)
    pos = t * (len(_HEAT) - 1)
    i = np.clip(np.floor(pos).astype(int), 0, len(_HEAT) - 2)
    frac = (pos - i)[..., None]
    return (_HEAT[i] * (1 - frac) + _HEAT[i + 1] * frac).astype(np.uint8)


def draw(
    background: np.ndarray,
    background_scale: float,
    feature_size: tuple[int, int],
    spatial_scale: float,
    boxes: torch.Tensor,
    output_size: tuple[int, int],
    sampling_ratio: int,
    aligned: bool,
    max_size: int = 1200,
    crop: bool = True,
    legend: list[str] | None = None,
    dtype: torch.dtype = torch.float32,
) -> tuple[Image.Image, View]:
    """Draw the RoIs `boxes` (`Tensor[R, 4]`, xyxy image px) over `background`.

    background `[h, w, 3]` uint8 covers the image at `background_scale` background pixels per image
    pixel (1 for an image; `spatial_scale` for a heat map of the features). `dtype`: the op's compute
    dtype, in which RoI Pool rounds the box edges (float32 unless the features are float64). Returns
    the picture and the image->canvas mapping (for tests and callers that add marks). A crop that
    would hold none of the map (boxes entirely outside it) shows the whole map.
    """
    fh, fw = feature_size
    img_w, img_h = fw / spatial_scale, fh / spatial_scale
    boxes = boxes.double()
    x0, y0, x1, y1 = 0.0, 0.0, img_w, img_h
    if crop and boxes.numel():
        margin = 2 / spatial_scale
        cx0 = max(0.0, float(boxes[:, [0, 2]].min()) - margin)
        cy0 = max(0.0, float(boxes[:, [1, 3]].min()) - margin)
        cx1 = min(img_w, float(boxes[:, [0, 2]].max()) + margin)
        cy1 = min(img_h, float(boxes[:, [1, 3]].max()) + margin)
        if cx1 > cx0 and cy1 > cy0:
            x0, y0, x1, y1 = cx0, cy0, cx1, cy1
    notes = _wrap(legend or [], max_size)
    band = _band_height(notes) if _band_height(notes) <= max_size // 2 else 0  # no room: no legend
    zoom = min(max_size / max(x1 - x0, 1e-9), (max_size - band) / max(y1 - y0, 1e-9), 64.0)
    view = View(x0, y0, zoom)
    size = (max(1, round((x1 - x0) * zoom)), max(1, round((y1 - y0) * zoom)))

    bg = Image.fromarray(background)
    # Resample the background so that its pixel (u, v) covers image [u, u + 1) / background_scale.
    box = (x0 * background_scale, y0 * background_scale, x1 * background_scale, y1 * background_scale)
    canvas = bg.resize(size, Image.NEAREST, box=box).convert("RGB")
    d = ImageDraw.Draw(canvas)

    cell = zoom / spatial_scale  # canvas pixels per feature cell
    if cell >= 6:
        for i in range(int(x0 * spatial_scale), int(x1 * spatial_scale) + 2):
            x = view(i / spatial_scale, 0)[0]
            d.line([(x, 0), (x, size[1])], fill=GRID, width=1)
        for j in range(int(y0 * spatial_scale), int(y1 * spatial_scale) + 2):
            y = view(0, j / spatial_scale)[1]
            d.line([(0, y), (size[0], y)], fill=GRID, width=1)

    ph, pw = output_size
    r_count = boxes.shape[0]
    geometry = pool_geometry(
        boxes,
        torch.zeros(r_count, dtype=torch.long),
        list(range(r_count)),
        torch.full((r_count,), spatial_scale, dtype=torch.float64),
        output_size,
        torch.tensor([[fh, fw]] * r_count, dtype=torch.long).reshape(-1, 2),
        dtype,
    )
    for b, g in zip(boxes, geometry):
        bx = b[None, [0, 2]]  # [1, 2]
        by = b[None, [1, 3]]
        # RoI Pool: integer windows (clipped to the map, as the op reads them), in image px.
        _, ws, we = pool_windows(bx[:, 0].to(dtype), bx[:, 1].to(dtype), spatial_scale, pw, fw)
        _, hs, he = pool_windows(by[:, 0].to(dtype), by[:, 1].to(dtype), spatial_scale, ph, fh)
        for p in range(ph):
            for q in range(pw):
                if he[0, p] > hs[0, p] and we[0, q] > ws[0, q]:
                    _rect(
                        d,
                        view,
                        [int(ws[0, q]), int(hs[0, p]), int(we[0, q]), int(he[0, p])],
                        1 / spatial_scale,
                        QUANTIZED,
                        2,
                    )
        # The rounded RoI: cells rounded_start .. rounded_end inclusive (at least the one cell an
        # inverted box's windows read), as the report gives it.
        rx1, ry1 = g.x.rounded_start, g.y.rounded_start
        rx2, ry2 = max(g.x.rounded_end, rx1) + 1, max(g.y.rounded_end, ry1) + 1
        _rect(d, view, [rx1, ry1, rx2, ry2], 1 / spatial_scale, QUANTIZED, 4)
        # Exact RoI and bins.
        xs = [float(b[0] + (b[2] - b[0]) * q / pw) for q in range(pw + 1)]
        ys = [float(b[1] + (b[3] - b[1]) * p / ph) for p in range(ph + 1)]
        for x in xs:
            d.line([view(x, ys[0]), view(x, ys[-1])], fill=EXACT, width=1)
        for y in ys:
            d.line([view(xs[0], y), view(xs[-1], y)], fill=EXACT, width=1)
        (ex0, ey0), (ex1, ey1) = view(xs[0], ys[0]), view(xs[-1], ys[-1])
        d.rectangle([min(ex0, ex1), min(ey0, ey1), max(ex0, ex1), max(ey0, ey1)], outline=EXACT, width=3)
        # RoI Align's samples: feature coordinate c is the image point (c + 0.5) / scale.
        px, gx = sample_points(bx[:, 0], bx[:, 1], spatial_scale, pw, sampling_ratio, aligned)
        py, gy = sample_points(by[:, 0], by[:, 1], spatial_scale, ph, sampling_ratio, aligned)
        sx = ((px[0, :, : int(gx[0])].flatten() + 0.5) / spatial_scale).tolist()
        sy = ((py[0, :, : int(gy[0])].flatten() + 0.5) / spatial_scale).tolist()
        r = max(2.0, min(5.0, zoom * 1.5))
        for y in sy:
            for x in sx:
                cx, cy = view(x, y)
                d.ellipse([cx - r, cy - r, cx + r, cy + r], fill=SAMPLES)
    return (_with_legend(canvas, notes, max_size) if band else canvas), view


def _rect(d: ImageDraw.ImageDraw, view: View, cells: list[int], px_per_cell: float, colour, width: int):
    """Outline feature cells [x1, x2) x [y1, y2) given as cell indices."""
    x1, y1, x2, y2 = (c * px_per_cell for c in cells)
    a, b = view(x1, y1), view(x2, y2)
    d.rectangle([a, (max(b[0] - 1, a[0]), max(b[1] - 1, a[1]))], outline=colour, width=width)


LEGEND = [
    (EXACT, "exact RoI and bins"),
    (QUANTIZED, "RoI Pool: rounded RoI, integer bins"),
    (SAMPLES, "RoI Align sample points"),
    (GRID, "feature cells"),
]
_CHAR_W, _LINE_H = 6, 14  # pillow's default bitmap font


def _wrap(lines: list[str], width: int) -> list[str]:
    chars = max(10, (width - 20) // _CHAR_W)
    return [ln for text in lines for ln in textwrap.wrap(text, chars)]


def _band_height(notes: list[str]) -> int:
    return 10 + _LINE_H * (len(LEGEND) + len(notes))


def _with_legend(canvas: Image.Image, extra: list[str], max_size: int) -> Image.Image:
    """The picture with a white legend band below it (never over the RoIs); at most `max_size` wide."""
    font = ImageFont.load_default()
    text_w = 34 + _CHAR_W * max(len(t) for t in [t for _, t in LEGEND] + extra)
    width = max(canvas.width, min(max_size, text_w))
    out = Image.new("RGB", (width, canvas.height + _band_height(extra)), (255, 255, 255))
    out.paste(canvas, (0, 0))
    d = ImageDraw.Draw(out)
    top = canvas.height + 5
    for k, (colour, text) in enumerate(LEGEND):
        y = top + 14 * k
        d.rectangle([10, y + 2, 22, y + 10], fill=colour)
        d.text((28, y), text, fill=(0, 0, 0), font=font)
    for k, text in enumerate(extra):
        d.text((10, top + 14 * (len(LEGEND) + k)), text, fill=(0, 0, 0), font=font)
    return out
