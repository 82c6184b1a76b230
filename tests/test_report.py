"""The quantization report (`roicli compare`, roicli.report) and its picture (`roicli show`, roicli.figure).

Expected values are worked out in the tests by hand arithmetic (C-style rounding, the integer windows
`floor(p * bin) .. ceil((p + 1) * bin)`, the canvas mapping `(image - origin) * zoom`), not by calling
the helpers under test. Known bugs are `xfail(strict=True)` tests at the end of each section.
"""

from __future__ import annotations

import csv
import io
import json
import math
import statistics
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file
from torch.testing import assert_close
from typer.testing import CliRunner

from roicli.cli import app
from roicli.figure import EXACT, GRID, QUANTIZED, SAMPLES, draw
from roicli.ops import precise_roi_pool, roi_align
from roicli.report import window_avg_pool

DATA = Path(__file__).resolve().parents[1] / "samples"
VGG = DATA / "vgg16_800.safetensors"  # [1, 8, 25, 25], stride 32, 800x800 image
ROIS_665 = DATA / "rois_665.json"  # one RoI "classic": [0, 0, 665, 665]
FEATS = DATA / "feats.safetensors"  # [1, 16, 38, 50], stride 16, 600x800 image
ROIS = DATA / "rois.json"  # car, person, sign, bike, dog
PYRAMID = DATA / "pyramid.safetensors"  # p2..p5 of a 256x320 image
PYRAMID_ROIS = DATA / "pyramid_rois.json"
SCENE = DATA / "scene.png"  # 320x256 picture
WHITE = (255, 255, 255)
F64 = torch.float64


def invoke(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


def ok(*args):
    result = invoke(*args)
    assert result.exit_code == 0, result.output
    return result


def compare_json(*args) -> dict:
    return json.loads(ok("compare", *args, "--format", "json").stdout)


def c_round(v: float) -> int:
    """C's round: half away from zero (written out, independent of roicli.ops.roi_pool.c_round)."""
    t = math.trunc(v)
    return t + (int(math.copysign(1, v)) if abs(v - t) >= 0.5 else 0)


def hand_windows(a: float, b: float, scale: float, bins: int, size: int) -> list[tuple[int, int]]:
    """RoI Pool's integer windows along one axis, clipped to [0, size]."""
    lo, hi = c_round(a * scale), c_round(b * scale)
    bin_ = max(hi - lo + 1, 1) / bins
    clip = lambda v: min(max(v, 0), size)  # noqa: E731
    return [(clip(math.floor(p * bin_) + lo), clip(math.ceil((p + 1) * bin_) + lo)) for p in range(bins)]


def save_map(path: Path, fmap: torch.Tensor, stride: int) -> Path:
    save_file({"features": fmap.contiguous()}, path, metadata={"stride": str(stride)})
    return path


def save_rois(path: Path, boxes, ids=None) -> Path:
    ids = ids or [f"r{i}" for i in range(len(boxes))]
    path.write_text(json.dumps([{"id": i, "box": [float(v) for v in b]} for i, b in zip(ids, boxes)]))
    return path


def pixel(img: Image.Image, x: float, y: float) -> tuple[int, int, int]:
    return tuple(img.getpixel((int(x), int(y))))[:3]


# ---- the classic worked example: 800x800 image, stride 32, RoI 665x665, 7x7 -----------------------


def test_classic_geometry_by_hand():
    data = compare_json(VGG, ROIS_665)
    assert data["output_size"] == "7x7" and data["spatial_scale"] == 1 / 32 and data["rois"] == 1
    assert data["aligned"] is True and data["sampling_ratio"] == -1
    (row,) = data["rows"]
    assert row["id"] == "classic" and row["batch"] == 0
    exact_end = 665 / 32
    assert exact_end == 20.78125
    # Rounded end: C round(20.78125) = 21; cells 0..21 inclusive -> 22 cells.
    windows = [(math.floor(p * 22 / 7), math.ceil((p + 1) * 22 / 7)) for p in range(7)]
    assert windows == [(0, 4), (3, 7), (6, 10), (9, 13), (12, 16), (15, 19), (18, 22)]
    widths = [e - s for s, e in windows]
    overlaps = [windows[p][1] - windows[p + 1][0] for p in range(6)]
    exact_edges = [p * exact_end / 7 for p in range(8)]
    worst_cells = max(max(abs(s - exact_edges[p]), abs(e - exact_edges[p + 1])) for p, (s, e) in enumerate(windows))
    assert worst_cells == 22 - 20.78125  # the last window's end
    for ax in "xy":
        assert row[f"{ax}_exact_start"] == 0
        assert row[f"{ax}_exact_end"] == 20.78125
        assert row[f"{ax}_rounded_start"] == 0
        assert row[f"{ax}_rounded_end"] == 21
        assert row[f"{ax}_quantized_size"] == 22
        assert row[f"{ax}_exact_size"] == 20.78125
        assert row[f"{ax}_exact_bin"] == pytest.approx(20.78125 / 7, rel=1e-12)
        assert row[f"{ax}_min_window"] == min(widths) == 4
        assert row[f"{ax}_max_window"] == max(widths) == 4
        assert row[f"{ax}_max_overlap"] == max(overlaps) == 1
        assert row[f"{ax}_start_shift_cells"] == 0 and row[f"{ax}_start_shift_px"] == 0
        # The end cell 21 is included: the rounded RoI ends where cell 22 starts (issue 9, item 11).
        assert row[f"{ax}_end_shift_cells"] == pytest.approx(1.21875, abs=1e-12)
        assert row[f"{ax}_end_shift_px"] == pytest.approx((22 - 20.78125) * 32, abs=1e-9)
        assert row[f"{ax}_end_shift_px"] == pytest.approx(39.0, abs=1e-9)
        assert row[f"{ax}_quantized_size_px"] == 22 * 32
        assert row[f"{ax}_worst_edge_px"] == pytest.approx(worst_cells * 32, abs=1e-9) == 39
    # The exact box [0, 20.78125)^2 lies inside the quantized one [0, 22)^2: IoU = area ratio.
    inter = 20.78125 * 20.78125
    union = 22 * 22 + inter - inter
    assert row["roi_iou"] == pytest.approx(inter / union, rel=1e-12)
    assert row["roi_iou"] == pytest.approx((20.78125 / 22) ** 2, rel=1e-12)
    # Mean bin IoU of the integer windows with the exact bins, by hand.
    one_d = [
        (max(0.0, min(e, exact_edges[p + 1]) - max(s, exact_edges[p])), e - s, exact_edges[p + 1] - exact_edges[p])
        for p, (s, e) in enumerate(windows)
    ]
    ious = [
        (iy * ix) / (wy * wx + ey * ex - iy * ix) for (iy, wy, ey) in one_d for (ix, wx, ex) in one_d
    ]
    assert row["mean_bin_iou"] == pytest.approx(sum(ious) / len(ious), rel=1e-9)
    assert row["box_w_px"] == row["box_h_px"] == 665
    assert row["worst_edge_px"] == pytest.approx(39.0)
    for k in ("quant_rel_err", "align_rel_err", "pool_vs_align_max"):
        assert math.isfinite(row[k]) and row[k] > 0


def test_classic_explain_truncating_illustration():
    text = ok("compare", VGG, ROIS_665, "--explain", "first").stdout
    assert "x axis:" in text and "y axis:" in text and "'classic'" in text
    # 665 / 32 = 20.78 cells; truncating loses 0.78125 cells = 25 px; 20 / 7 = 2.857 -> 2 per bin, each
    # bin loses 0.8571 cells, 20 - 7*2 = 6 of 20 cells never pooled; (25)^2 = 625, (0.8571*7)^2 = 36;
    # with the fractions cut to two digits first: (0.78*32)^2 = 623.0016 and (0.86*7)^2 = 36.2404.
    assert 0.78125 * 32 == 25 and 20 - 7 * (20 // 7) == 6
    assert round((0.78 * 32) ** 2, 4) == 623.0016 and round((0.86 * 7) ** 2, 4) == 36.2404
    for s in ("20.78", "25 px", "2.857", "0.8571", "6 of 20 cells", "625", "36", "623.0016", "36.2404"):
        assert s in text, s
    assert "cells 0 .. 21 -> 22 cells = 0 .. 704 px" in text and "+39 px" in text
    assert "0.8923" in text  # roi_iou = (20.78125 / 22)^2
    assert text == ok("compare", VGG, ROIS_665, "--explain", "classic").stdout


def test_explain_unknown_id_lists_ids():
    result = invoke("compare", FEATS, ROIS, "--explain", "nope")
    assert result.exit_code == 2
    assert "nope" in result.output and "car" in result.output and "dog" in result.output


# ---- window_avg_pool against a hand loop -------------------------------------------------------------


@pytest.mark.parametrize(("scale", "output_size"), [(1.0, (3, 4)), (0.5, (7, 7)), (0.25, (2, 5))])
def test_window_avg_pool_equals_hand_loop(scale, output_size):
    gen = torch.Generator().manual_seed(int(scale * 100) + output_size[0])
    n, c, h, w = 2, 3, 9, 11
    fmap = torch.randn(n, c, h, w, generator=gen, dtype=F64)
    img_w, img_h = w / scale, h / scale
    k = 40
    xs = (torch.rand(k, 2, generator=gen, dtype=F64) * 1.6 - 0.3) * img_w  # partly outside the map
    ys = (torch.rand(k, 2, generator=gen, dtype=F64) * 1.6 - 0.3) * img_h
    boxes = torch.stack([xs.min(1).values, ys.min(1).values, xs.max(1).values, ys.max(1).values], 1)
    extra = torch.tensor(
        [
            [img_w + 5 / scale, 1.0, img_w + 9 / scale, 3 / scale],  # right of the map: every window empty
            [-9 / scale, -9 / scale, -4 / scale, -3 / scale],  # above-left of the map
            [-2.2 / scale, 1.0, 3.7 / scale, img_h + 3 / scale],  # straddles two borders
            [2.5 / scale, 1.5 / scale, 2.5 / scale, 1.5 / scale],  # a point
            [5.0 / scale, 4.0 / scale, 2.0 / scale, 1.0 / scale],  # inverted
        ],
        dtype=F64,
    )
    boxes = torch.cat([boxes, extra])
    batch = torch.arange(len(boxes)) % n
    rois = torch.cat([batch[:, None].to(F64), boxes], 1)
    out = window_avg_pool(fmap, rois, output_size, scale)
    ph, pw = output_size
    want = torch.zeros(len(rois), c, ph, pw, dtype=F64)
    n_empty = 0
    for r in range(len(rois)):
        b, x1, y1, x2, y2 = rois[r].tolist()
        wy = hand_windows(y1, y2, scale, ph, h)
        wx = hand_windows(x1, x2, scale, pw, w)
        for p, (hs, he) in enumerate(wy):
            for q, (ws, we) in enumerate(wx):
                if he > hs and we > ws:
                    want[r, :, p, q] = fmap[int(b), :, hs:he, ws:we].mean(dim=(1, 2))
                else:
                    n_empty += 1
    assert n_empty > 0  # the test really covers empty windows
    assert_close(out, want, rtol=1e-12, atol=1e-12)
    assert torch.all(out[k] == 0) and torch.all(out[k + 1] == 0)


# ---- compare: values ---------------------------------------------------------------------------------


def test_constant_map_errors_are_zero(tmp_path):
    fmap = torch.full((1, 4, 12, 16), 3.0, dtype=F64)
    feats = save_map(tmp_path / "const.safetensors", fmap, 4)  # image 64x48
    # Inside [0.5, W - 0.5] cells = [2, 62] x [2, 46] image px.
    boxes = [[2, 2, 62, 46], [5.3, 7.1, 33.9, 29.2], [13.7, 3.3, 30.1, 40.9], [40.2, 20.6, 41.0, 21.5]]
    rois = save_rois(tmp_path / "r.json", boxes)
    for sr in ("-1", "2"):
        rows = compare_json(feats, rois, "--sampling-ratio", sr)["rows"]
        assert len(rows) == 4
        for r in rows:
            assert r["quant_rel_err"] == pytest.approx(0, abs=1e-12)
            assert r["align_rel_err"] == pytest.approx(0, abs=1e-12)
            assert r["pool_vs_align_max"] == pytest.approx(0, abs=1e-12)


def linear_map(h: int, w: int, a: float, b: float, c: float) -> torch.Tensor:
    """f = a*x + b*y + c in cells, pixel (i, j) at the cell coordinate (j + 0.5, i + 0.5)."""
    x = torch.arange(w, dtype=F64) + 0.5
    y = torch.arange(h, dtype=F64) + 0.5
    f = a * x[None, :] + b * y[:, None] + c
    return torch.stack([f, 2 * f - 1])[None]  # [1, 2, H, W]


LIN = (0.7, -0.3, 9.0)
LIN_BOXES = [[2.0, 2.0, 62.0, 46.0], [5.3, 7.1, 33.9, 29.2], [13.7, 3.3, 30.1, 40.9], [41.0, 9.0, 58.6, 15.4]]


def test_linear_map_precise_and_align_are_exact():
    h, w, scale = 12, 16, 0.25
    fmap = linear_map(h, w, *LIN)
    boxes = torch.tensor(LIN_BOXES, dtype=F64)
    rois = torch.cat([torch.zeros(len(boxes), 1, dtype=F64), boxes], 1)
    ph, pw = 5, 7
    a, b, c = LIN
    want = torch.zeros(len(boxes), 2, ph, pw, dtype=F64)
    for r, (x1, y1, x2, y2) in enumerate(LIN_BOXES):
        for p in range(ph):
            for q in range(pw):
                cx = x1 * scale + (q + 0.5) * (x2 - x1) * scale / pw  # bin centre, cells
                cy = y1 * scale + (p + 0.5) * (y2 - y1) * scale / ph
                f = a * cx + b * cy + c
                want[r, 0, p, q], want[r, 1, p, q] = f, 2 * f - 1
    assert_close(precise_roi_pool(fmap, rois, (ph, pw), scale, aligned=True), want, rtol=0, atol=1e-10)
    for sr in (-1, 1, 2, 3):
        assert_close(roi_align(fmap, rois, (ph, pw), scale, sr, True), want, rtol=0, atol=1e-10)
    # RoI Pool's windows are not: their centres are off the exact bin centres.
    assert (window_avg_pool(fmap, rois, (ph, pw), scale) - want).abs().max() > 0.05


def test_linear_map_compare_errors(tmp_path):
    feats = save_map(tmp_path / "lin.safetensors", linear_map(12, 16, *LIN), 4)
    rois = save_rois(tmp_path / "r.json", LIN_BOXES)
    for sr in ("-1", "2", "3"):
        rows = compare_json(feats, rois, "--sampling-ratio", sr, "--output-size", "5x7")["rows"]
        assert [r["id"] for r in rows] == ["r0", "r1", "r2", "r3"]
        for r in rows:
            assert r["align_rel_err"] == pytest.approx(0, abs=1e-12)
            assert r["quant_rel_err"] > 1e-3  # edges not on cell boundaries (and the end cell is inclusive)


def test_summary_and_buckets_match_rows():
    data = compare_json(FEATS, ROIS)
    rows = data["rows"]
    assert [r["id"] for r in rows] == ["car", "person", "sign", "bike", "dog"]
    assert data["spatial_scale"] == 1 / 16 and data["rois"] == 5
    summary = {s["figure"]: s for s in data["summary"]}
    cols = ["quant_rel_err", "align_rel_err", "pool_vs_align_max", "worst_edge_px", "roi_iou", "mean_bin_iou",
            "pool_vs_align", "pool_vs_exact"]
    assert list(summary) == cols
    for col in cols:
        v = [r[col] for r in rows]
        assert summary[col]["mean"] == pytest.approx(statistics.fmean(v), rel=1e-12)
        assert summary[col]["median"] == pytest.approx(statistics.median(v), rel=1e-12)  # 5 rows: odd
        assert summary[col]["max"] == max(v)
    # sqrt(area) by hand: car 320x230 -> 271.3; person 79.5x280.5 -> 149.3; sign 55x55 -> 55;
    # bike 170x190 -> 179.7; dog 147.6x188.5 -> 166.8.
    buckets = {b["box_size"]: b for b in data["by_box_size"]}
    assert {k: b["rois"] for k, b in buckets.items()} == {"32-64px": 1, "128-256px": 3, "256-512px": 1}
    assert sum(b["rois"] for b in data["by_box_size"]) == len(rows)
    mid = [r for r in rows if r["id"] in ("person", "bike", "dog")]
    mid_mean = statistics.fmean(r["quant_rel_err"] for r in mid)
    assert buckets["128-256px"]["mean_quant_rel_err"] == pytest.approx(mid_mean, rel=1e-12)
    assert buckets["32-64px"]["mean_roi_iou"] == pytest.approx(rows[2]["roi_iou"])
    assert set(data["definitions"]) >= {"exact", *cols}
    # The sign box by hand: x 650..705 px / 16 = 40.625 .. 44.0625 cells -> round 41 .. 44.
    sign = rows[2]
    assert sign["x_exact_start"] == 40.625 and sign["x_rounded_start"] == 41 and sign["x_rounded_end"] == 44
    assert sign["x_quantized_size"] == 4 and sign["x_start_shift_px"] == pytest.approx(0.375 * 16)
    # y 40..95 px = 2.5 .. 5.9375 cells -> C round 3 .. 6 (half away from zero, not to even).
    assert sign["y_rounded_start"] == 3 and sign["y_rounded_end"] == 6
    # IoU of [41, 45) x [3, 7) with [40.625, 44.0625) x [2.5, 5.9375): the exact box pokes out on two sides.
    inter = (44.0625 - 41) * (5.9375 - 3)
    assert sign["roi_iou"] == pytest.approx(inter / (3.4375 * 3.4375 + 4 * 4 - inter), rel=1e-12)


def test_csv_jsonl_and_output_file(tmp_path):
    json_rows = compare_json(FEATS, ROIS)["rows"]
    text = ok("compare", FEATS, ROIS, "--format", "csv").stdout
    lines = text.splitlines()
    comments = [ln for ln in lines if ln.startswith("#")]
    body = [ln for ln in lines if not ln.startswith("#")]
    assert lines[: len(comments)] == comments  # the comments come first
    assert any("output_size: 7x7" in ln for ln in comments) and any("aligned: True" in ln for ln in comments)
    assert len(body) == 1 + 5
    table = list(csv.DictReader(io.StringIO("\n".join(body))))
    assert [r["id"] for r in table] == ["car", "person", "sign", "bike", "dog"]
    assert list(table[0]) == list(json_rows[0])
    for got, want in zip(table, json_rows):
        assert float(got["quant_rel_err"]) == pytest.approx(want["quant_rel_err"], rel=1e-12)
        assert int(got["x_rounded_end"]) == want["x_rounded_end"]

    jsonl = ok("compare", FEATS, ROIS, "--format", "jsonl").stdout
    objs = [json.loads(ln) for ln in jsonl.splitlines()]
    assert len(objs) == 5 and all(isinstance(o, dict) for o in objs)
    assert objs == json_rows

    out = tmp_path / "report.csv"
    result = ok("compare", FEATS, ROIS, "-o", out)
    assert result.stdout == ""
    assert "report.csv" in result.stderr
    assert out.read_text() == text
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report.csv"]  # no temp file left
    jl = tmp_path / "report.jsonl"
    ok("compare", FEATS, ROIS, "-o", jl)
    assert jl.read_text() == jsonl


def test_output_is_a_directory(tmp_path):
    result = invoke("compare", FEATS, ROIS, "-o", tmp_path)
    assert result.exit_code == 1 and "directory" in result.output
    assert list(tmp_path.iterdir()) == []


def test_table_mentions_parameters():
    text = ok("compare", FEATS, ROIS, "--sampling-ratio", "2", "--no-aligned", "--output-size", "7x5").stdout
    for s in ("output_size=7x5", "spatial_scale=0.0625", "sampling_ratio=2", "aligned=False", "rois=5"):
        assert s in text, s
    assert "Summary over RoIs" in text and "By box size" in text and "car" in text and "quant err" in text


def test_error_falls_as_boxes_grow(tmp_path):
    # Same relative positions (fixed centres), growing sizes, 4:3 boxes on the 800x600 image.
    sizes = (32, 64, 256, 384)
    boxes, ids = [], []
    for size in sizes:
        for cx in (210.3, 330.7, 450.1, 590.9):
            for cy in (160.2, 300.6, 440.4):
                w, h = size, 0.75 * size
                boxes.append([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2])
                ids.append(f"{size}_{len(ids)}")
    rois = save_rois(tmp_path / "grow.json", boxes, ids)
    data = compare_json(FEATS, rois)
    mean = {s: statistics.fmean(r["quant_rel_err"] for r in data["rows"] if r["id"].startswith(f"{s}_")) for s in sizes}
    assert mean[384] < mean[32]
    assert (mean[256] + mean[384]) / 2 < 0.8 * (mean[32] + mean[64]) / 2
    # sqrt(area) = 0.866 * size: one bucket per size, 12 RoIs each, errors falling across them.
    buckets = data["by_box_size"]
    assert [b["box_size"] for b in buckets] == ["0-32px", "32-64px", "128-256px", "256-512px"]
    assert [b["rois"] for b in buckets] == [12, 12, 12, 12]
    assert buckets[-1]["mean_quant_rel_err"] < buckets[0]["mean_quant_rel_err"]


def test_pyramid_rows_carry_level():
    data = compare_json(PYRAMID, PYRAMID_ROIS)
    assert data["spatial_scale"] == [0.25, 0.125, 0.0625, 0.03125]
    rows = data["rows"]
    boxes = json.loads(PYRAMID_ROIS.read_text())
    assert len(rows) == len(boxes) == 5
    for r, (x1, y1, x2, y2) in zip(rows, boxes):
        # FPN eq. 1 by hand: k = floor(4 + log2(sqrt(wh) / 224)), clamped to 2..5; level index k - 2.
        k = min(max(math.floor(4 + math.log2(math.sqrt((x2 - x1) * (y2 - y1)) / 224) + 1e-6), 2), 5)
        assert r["level"] == k - 2
        assert r["spatial_scale"] == 2.0**-k
        assert r["x_exact_end"] == pytest.approx(x2 * 2.0**-k)
        assert r["x_rounded_end"] == c_round(x2 * 2.0**-k)
        assert math.isfinite(r["quant_rel_err"]) and math.isfinite(r["align_rel_err"])
    assert [r["level"] for r in rows] == [0, 0, 1, 2, 0]
    assert sum(b["rois"] for b in data["by_box_size"]) == 5


# Known bugs (compare) ---------------------------------------------------------------------------------


def test_constant_map_full_box_errors_are_zero(tmp_path):
    feats = save_map(tmp_path / "const.safetensors", torch.full((1, 4, 12, 16), 3.0, dtype=F64), 4)
    rois = save_rois(tmp_path / "r.json", [[0, 0, 64, 48], [0, 10, 30, 30]])
    for r in compare_json(feats, rois)["rows"]:
        assert r["quant_rel_err"] == pytest.approx(0, abs=1e-12)
        assert r["align_rel_err"] == pytest.approx(0, abs=1e-12)


def test_json_is_strict_when_exact_is_zero(tmp_path):
    fmap = torch.zeros(1, 1, 20, 20)
    fmap[..., 10:] = 1.0  # zero left of column 10
    feats = save_map(tmp_path / "z.safetensors", fmap, 1)
    rois = save_rois(tmp_path / "z.json", [[5, 5, 9.5, 9], [2, 2, 16, 16]])
    text = ok("compare", feats, rois, "--format", "json").stdout

    def reject(name):
        raise ValueError(f"not JSON: {name}")

    json.loads(text, parse_constant=reject)


def test_summary_median_even_count(tmp_path):
    boxes = [r["box"] for r in json.loads(ROIS.read_text())][:4]
    data = compare_json(FEATS, save_rois(tmp_path / "r.json", boxes))
    for s in data["summary"]:
        v = [r[s["figure"]] for r in data["rows"]]
        assert s["median"] == pytest.approx(statistics.median(v), rel=1e-12)


# ---- the figure: roicli.figure.draw with known geometry ------------------------------------------------

GREY = (120, 120, 120)
BOX = [84.0, 60.0, 140.0, 116.0]  # image px; scale 1/8 -> cells 10.5..17.5 x 7.5..14.5


BAND = 10 + 14 * 4  # the legend band under a picture drawn without notes
CLI_BAND = 10 + 14 * 5  # ... and with the CLI's one line of parameters


def draw_known(crop: bool = False, max_size: int = 640 + BAND):
    background = np.full((20, 20, 3), GREY, dtype=np.uint8)  # one pixel per feature cell
    return draw(background, 1 / 8, (20, 20), 1 / 8, torch.tensor([BOX]), (7, 7), 2, True, max_size=max_size, crop=crop)


def assert_canvas(img: Image.Image, size: tuple[int, int]):
    """The picture is `size`, with the legend in a white band below it: 4 lines, + the wrapped parameters."""
    assert img.width >= size[0]
    assert img.height - size[1] in [10 + 14 * (4 + notes) for notes in range(4)]


def check_legend(img: Image.Image):
    y = img.height - 1
    while pixel(img, 5, y) == WHITE:  # up through the white band under the picture
        y -= 1
    top = y + 1 + 5
    assert pixel(img, 5, top + 2) == WHITE and pixel(img, 7, top + 30) == WHITE
    for k, colour in enumerate((EXACT, QUANTIZED, SAMPLES, GRID)):  # swatches [10, y+2] .. [22, y+10]
        assert pixel(img, 16, top + 14 * k + 6) == colour


def test_draw_known_geometry():
    img, view = draw_known()
    # Whole 160x160 image px map, 640 px left above the legend band -> zoom 4, origin 0.
    assert_canvas(img, (640, 640))
    assert (view.x0, view.y0, view.zoom) == (0, 0, 4)
    assert view(84, 60) == (336, 240)
    assert EXACT == (40, 200, 70) and QUANTIZED == (230, 40, 40) and SAMPLES == (40, 110, 255)
    # Exact RoI (green, 3 px inward): left edge x = 84*4 = 336, midway down y = 88*4 = 352 (centre of bin 3).
    for x in (336, 337, 338):
        assert pixel(img, x, 352) == EXACT
    assert pixel(img, 559, 352) == EXACT  # right edge x = 140*4 = 560
    # The exact bin lines: x = 84 + 8k px -> canvas 336 + 32k, all eight of them.
    for k in range(8):
        assert pixel(img, 336 + 32 * k, 352) == EXACT
        assert pixel(img, 400, 240 + 32 * k) == EXACT
    # Rounded RoI (red, 4 px inward): x cells C-round(10.5) = 11 .. round(17.5) = 18 (inclusive) -> image
    # 88 .. 152 -> canvas 352 .. 607; y cells 8 .. 15 -> image 64 .. 128 -> canvas 256 .. 511.
    assert pixel(img, 606, 400) == QUANTIZED  # right side (outside the exact box)
    assert pixel(img, 590, 509) == QUANTIZED  # bottom side
    assert pixel(img, 590, 257) == QUANTIZED  # top side
    assert pixel(img, 353, 490) == QUANTIZED  # left side, below the exact box
    assert pixel(img, 610, 400) != QUANTIZED and pixel(img, 590, 514) != QUANTIZED  # nothing past the RoI
    # RoI Align samples (blue): feature coordinate x1*s - 0.5 + (q + (i + 0.5)/2) * bin, bin = 56/8/7 = 1 cell,
    # image px = (coordinate + 0.5) / s.
    scale, grid = 1 / 8, 2
    bin_x = (BOX[2] - BOX[0]) * scale / 7
    bin_y = (BOX[3] - BOX[1]) * scale / 7
    xs = [((BOX[0] * scale - 0.5 + (q + (i + 0.5) / grid) * bin_x) + 0.5) / scale for q in range(7) for i in range(2)]
    ys = [((BOX[1] * scale - 0.5 + (p + (j + 0.5) / grid) * bin_y) + 0.5) / scale for p in range(7) for j in range(2)]
    assert xs[0] == 86 and ys[0] == 62 and xs[7] == 114
    for x in xs:
        for y in ys:
            cx, cy = (x - 0) * 4, (y - 0) * 4
            assert pixel(img, cx, cy) == SAMPLES, (x, y)
    assert pixel(img, 344, 248) == SAMPLES
    # Background and feature grid (a cell is 32 canvas px >= 6: grid drawn).
    assert pixel(img, 100, 600) == GREY
    assert pixel(img, 96, 600) == GRID and pixel(img, 100, 608) == GRID
    check_legend(img)
    colours = {tuple(c) for c in np.asarray(img).reshape(-1, 3)}
    assert {EXACT, QUANTIZED, SAMPLES, GRID, GREY, WHITE} <= colours


def test_draw_crop_and_max_size():
    img, view = draw_known(crop=True)
    # Crop: box +- 2 cells (16 px) -> image 68..156 x 44..132, 88 px -> zoom 640 / 88 (the band below).
    assert (view.x0, view.y0) == (68, 44)
    assert view.zoom == pytest.approx(640 / 88)
    assert_canvas(img, (640, 640))
    x, y = view(84, 88)
    assert pixel(img, x + 1, y) == EXACT
    full, full_view = draw_known(crop=False)
    assert full_view.zoom < view.zoom
    small, small_view = draw_known(crop=True, max_size=120)  # too small for a legend (> half): none
    assert small.size == (120, 120) and small_view.zoom == pytest.approx(120 / 88)
    legend, legend_view = draw_known(crop=True, max_size=200)
    assert max(legend.size) <= 200 and legend_view.zoom == pytest.approx((200 - BAND) / 88)
    # Zoom is capped at 64 canvas px per image px.
    background = np.full((20, 20, 3), GREY, dtype=np.uint8)
    tiny, tiny_view = draw(background, 1 / 8, (20, 20), 1 / 8, torch.tensor([[80.0, 80.0, 81.0, 81.0]]), (2, 2), 1,
                           True, max_size=4096, crop=True)
    assert tiny_view.zoom <= 64 and max(tiny.size) <= 4096


# ---- roicli show -----------------------------------------------------------------------------------

OLD_SHOW = ("--sampling-ratio", "2", "--aligned")  # the sample points these pictures were worked out for


def test_show_classic(tmp_path):
    out = tmp_path / "classic.png"
    result = ok("show", VGG, ROIS_665, "-o", out, *OLD_SHOW)
    assert result.stdout == "" and "1120x1200" in result.stderr
    img = Image.open(out).convert("RGB")
    # Crop by hand: box 0..665 +- 2 cells (64 px), clipped to the 800 px image -> 0..729; the legend band
    # takes CLI_BAND of the 1200 px -> zoom (1200 - CLI_BAND) / 729.
    zoom = (1200 - CLI_BAND) / 729
    assert_canvas(img, (1120, 1120))
    assert pixel(img, 1, 332.5 * zoom) == EXACT  # exact left edge, midway down
    assert pixel(img, 665 * zoom - 1, 332.5 * zoom) == EXACT  # exact right edge
    # Rounded RoI: cells 0..21 inclusive -> image 0..704 -> its right side ends at canvas 704*zoom - 1.
    assert pixel(img, 704 * zoom - 3, 400 * zoom) == QUANTIZED
    # First sample (sampling_ratio 2): x = 0.25 * 665/7 px = 23.75 -> canvas 39.1, y likewise -> under the
    # legend; take bin (3, 3) instead: 3.25 * 95 = 308.75 px.
    assert pixel(img, 308.75 * zoom, 308.75 * zoom) == SAMPLES
    check_legend(img)


def test_show_sign_on_feats(tmp_path):
    out = tmp_path / "sign.png"
    ok("show", FEATS, ROIS, "--roi", "sign", "-o", out, *OLD_SHOW)
    img = Image.open(out).convert("RGB")
    # Crop: 650..705 x 40..95 +- 32 px -> 618..737 x 8..127 (119 px) -> zoom 1200 / 119.
    x0, y0, zoom = 618, 8, (1200 - CLI_BAND) / 119
    assert_canvas(img, (1120, 1120))
    assert pixel(img, (650 - x0) * zoom + 1, (67.5 - y0) * zoom) == EXACT
    # Rounded RoI: x cells 41..44 -> image 656..720; right side ends at canvas (720 - 618) * zoom - 1.
    assert pixel(img, (720 - x0) * zoom - 3, (100 - y0) * zoom) == QUANTIZED
    # y cells 3..6 (C round of 2.5 is 3) -> top side at image 48.
    assert pixel(img, (715 - x0) * zoom, (48 - y0) * zoom + 2) == QUANTIZED
    # Sample (0, 0): 650 + 0.25 * 55/7 px, 40 + 0.25 * 55/7 px.
    d = 0.25 * 55 / 7
    assert pixel(img, (650 + d - x0) * zoom, (40 + d - y0) * zoom) == SAMPLES
    check_legend(img)

    full = tmp_path / "full.png"
    ok("show", FEATS, ROIS, "--roi", "sign", "--full", "-o", full)
    # The whole map, 50x38 cells = 800x608 px, at 1200 px wide -> zoom 1.5.
    assert_canvas(Image.open(full), (1200, 912))
    small = tmp_path / "small.png"
    ok("show", FEATS, ROIS, "--roi", "sign", "--max-size", "300", "-o", small)
    band = 10 + 14 * 6  # the legend and two wrapped lines of parameters
    assert Image.open(small).size == (300, 300)  # picture 206 x 206 (zoom (300 - band) / 119) + band, text wide
    assert pixel(Image.open(small).convert("RGB"), 100, 300 - band + 2) == WHITE
    small_full = tmp_path / "small_full.png"
    ok("show", FEATS, ROIS, "--full", "--max-size", "400", "-o", small_full)  # first 3 RoIs
    assert Image.open(small_full).size == (400, 304 + band)  # zoom 0.5, the same two lines of notes


def test_show_over_image(tmp_path):
    out = tmp_path / "scene_out.png"
    ok("show", SCENE, PYRAMID_ROIS, "--roi", "1", "-o", out, *OLD_SHOW)
    img = Image.open(out).convert("RGB")
    scene = Image.open(SCENE).convert("RGB")
    # Built-in backbone: stride 8. RoI 1 = [60, 20, 160, 120] +- 16 px -> 44..176 x 4..136 -> zoom 1200/132.
    x0, y0, zoom = 44, 4, (1200 - CLI_BAND) / 132
    assert_canvas(img, (1120, 1120))
    # A spot right of the RoI, mid-cell, no marks: the image's own colour (sky).
    u, v = 1100, 1100
    ix, iy = math.floor(x0 + (u + 0.5) / zoom), math.floor(y0 + (v + 0.5) / zoom)
    assert pixel(scene, ix, iy) == (200, 220, 240)
    assert pixel(img, u, v) == pixel(scene, ix, iy)
    # Inside the scene's red square (60..160 x 20..120) at a spot with no marks, image (67.14, 70): the
    # centre of bin (3, 0), 3.5 px from its samples, 3 px from the cell lines (8 px), 7 px from the bin lines.
    u, v = 210, 600
    ix, iy = math.floor(x0 + (u + 0.5) / zoom), math.floor(y0 + (v + 0.5) / zoom)
    assert pixel(img, u, v) == pixel(scene, ix, iy) == (200, 40, 40)
    assert pixel(img, (60 - x0) * zoom + 1, (70 - y0) * zoom) == EXACT


def test_show_bad_input(tmp_path):
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    png = out_dir / "x.png"
    result = invoke("show", FEATS, ROIS, "--roi", "nope", "-o", png)
    assert result.exit_code == 2
    assert "nope" in result.output
    for name in ("car", "person", "sign", "bike", "dog"):
        assert name in result.output
    result = invoke("show", FEATS, ROIS, "--max-size", "10", "-o", png)
    assert result.exit_code == 2 and "--max-size" in result.output
    result = invoke("show", FEATS, ROIS, "--max-size", "5000", "-o", png)
    assert result.exit_code == 2
    result = invoke("show", FEATS, ROIS, "-o", out_dir)
    assert result.exit_code == 1 and "directory" in result.output
    result = invoke("show", FEATS, ROIS, "--output-size", "0", "-o", png)
    assert result.exit_code == 2
    assert list(out_dir.iterdir()) == []  # no PNG (or temp file) left behind


# Known bugs (show) ------------------------------------------------------------------------------------


def test_show_channel_out_of_range(tmp_path):
    png = tmp_path / "c.png"
    result = invoke("show", FEATS, ROIS, "--channel", "99", "-o", png)
    assert result.exit_code == 2 and "--channel" in result.output
    assert not png.exists()


def test_show_legend_does_not_hide_rois(tmp_path):
    out = tmp_path / "scene3.png"
    ok("show", SCENE, PYRAMID_ROIS, "-o", out)
    img = Image.open(out).convert("RGB")
    # First 3 RoIs: x 10..250, y 10..240 +- 16 px -> 0..266 x 0..256 -> zoom (1200 - CLI_BAND) / 256.
    zoom = (1200 - CLI_BAND) / 256
    assert_canvas(img, (round(266 * zoom), 1120))
    # RoI 0 = [10, 10, 40, 42]: its exact top edge midway across, image (25, 10).
    assert pixel(img, 25 * zoom, 10 * zoom + 1) == EXACT


def test_width_and_height_of_a_non_square_box(tmp_path: Path):
    """Issue 12 item 6: w and h (and their per-axis geometry) are not swapped. A 96 x 32 px box at
    stride 8 on a 16 x 24 map: x spans cells 1 .. 13 (12 cells), y spans cells 2 .. 6 (4 cells)."""
    feats = save_map(tmp_path / "f.safetensors", torch.rand(1, 2, 16, 24, dtype=torch.float64), 8)
    rois = save_rois(tmp_path / "r.json", [[8, 16, 104, 48]])
    row = json.loads(ok("compare", feats, rois, "-f", "json", "--output-size", "4x2").stdout)["rows"][0]
    assert (row["box_w_px"], row["box_h_px"]) == (96, 32)
    assert (row["x_exact_size"], row["y_exact_size"]) == (12, 4)
    assert (row["x_exact_bin"], row["y_exact_bin"]) == (6, 1)  # 2 bins across, 4 down
