"""`roicli compare` and `roicli show` under issue 9 (items 7, 9, 11, 12, 13, 15, 16) and issue 12 (item 4).

Expected values are worked out here by hand (C-style rounding, RoI Pool's integer windows, bin centres
of a linear map), not by calling the helpers under test.
"""

from __future__ import annotations

import ast
import json
import math
import os
import pty
import re
import select
import statistics
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file
from test_report import c_round, save_map, save_rois
from typer.testing import CliRunner

from roicli.cli import app
from roicli.figure import QUANTIZED, draw

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src" / "roicli"
DATA = ROOT / "samples"
FEATS = DATA / "feats.safetensors"  # [1, 16, 38, 50], stride 16, 600x800 image
ROIS = DATA / "rois.json"  # car, person, sign, bike, dog
VGG = DATA / "vgg16_800.safetensors"
ROIS_665 = DATA / "rois_665.json"
F64 = torch.float64


def invoke(*args, env: dict | None = None):
    return CliRunner().invoke(app, [str(a) for a in args], env=env)


def ok(*args, env: dict | None = None):
    result = invoke(*args, env=env)
    assert result.exit_code == 0, result.output
    return result


def one_line_error(result, code: int, *needles: str) -> str:
    assert result.exit_code == code, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.stderr
    for n in needles:
        assert n in lines[0], (n, lines[0])
    return lines[0]


def table_cells(text: str) -> dict[str, dict[str, str]]:
    """The per-RoI table of `compare`'s output: id -> column label -> cell text."""
    lines = text.split("\n\n")[1].splitlines()
    header = next(ln for ln in lines if ln.startswith("┃"))
    names = [c.strip() for c in header.strip("┃").split("┃")]
    rows = [[c.strip() for c in ln.strip("│").split("│")] for ln in lines if ln.startswith("│")]
    return {r[0]: dict(zip(names, r)) for r in rows}


def roicli_script() -> str:
    return str(Path(sys.executable).with_name("roicli"))


# ---- item 11: the end edge includes RoI Pool's end cell ------------------------------------------------


@pytest.fixture
def map16(tmp_path) -> Path:
    """A 10x10-cell map at stride 16: a 160x160 px image."""
    gen = torch.Generator().manual_seed(11)
    return save_map(tmp_path / "m16.safetensors", torch.rand(1, 3, 10, 10, generator=gen, dtype=F64), 16)


def test_end_shift_hand_case_table_json_explain_agree(tmp_path, map16):
    """Issue 9, item 11: box [0, 0, 32, 32] at stride 16 -> cells 0..2 inclusive = 48 px, the end edge
    moves +16 px; shift, quantized size, IoU, --explain and the table say the same."""
    rois = save_rois(tmp_path / "a.json", [[0, 0, 32, 32]], ["a"])
    (row,) = json.loads(ok("compare", map16, rois, "-f", "json").stdout)["rows"]
    # By hand: 32 / 16 = 2 cells; C round -> cell 2, end inclusive -> cells 0, 1, 2 -> [0, 3) = [0, 48) px.
    for ax in "xy":
        assert row[f"{ax}_rounded_start"] == 0 and row[f"{ax}_rounded_end"] == 2
        assert row[f"{ax}_quantized_size"] == 3 and row[f"{ax}_quantized_size_px"] == 48
        assert row[f"{ax}_start_shift_px"] == 0 and row[f"{ax}_start_shift_cells"] == 0
        assert row[f"{ax}_end_shift_cells"] == 1 and row[f"{ax}_end_shift_px"] == 16
    assert row["roi_iou"] == pytest.approx(32 * 32 / (48 * 48), rel=1e-12)  # 0.444: exact box inside
    text = ok("compare", map16, rois, "--explain", "a").stdout
    assert text.count("cells 0 .. 2 -> 3 cells = 0 .. 48 px (48 px wide)") == 2
    assert text.count("end moves +1 cells (+16 px)") == 2
    assert "IoU of the rounded RoI with the exact one: 0.4444" in text
    shown = table_cells(ok("compare", map16, rois).stdout)["a"]
    assert shown["x1 shift px"] == "0" and shown["x2 shift px"] == "16" and shown["y2 shift px"] == "16"
    assert shown["RoI IoU"] == "0.4444"


def test_shift_size_iou_consistent_on_many_boxes(tmp_path, map16):
    """Issue 9, item 11: for any box, quantized size = exact size + end shift - start shift (cells and
    px), and the RoI IoU is the IoU of [x1 + start shift, x2 + end shift] with the box, in 2-D."""
    gen = torch.Generator().manual_seed(5)
    xy = torch.rand(40, 4, generator=gen, dtype=F64) * 150
    boxes = torch.stack([xy[:, 0].minimum(xy[:, 2]), xy[:, 1].minimum(xy[:, 3]),
                         xy[:, 0].maximum(xy[:, 2]) + 0.5, xy[:, 1].maximum(xy[:, 3]) + 0.5], 1).tolist()  # fmt: skip
    rows = json.loads(ok("compare", map16, save_rois(tmp_path / "b.json", boxes), "-f", "json").stdout)["rows"]
    for row, (x1, y1, x2, y2) in zip(rows, boxes):
        edges = {}
        for ax, lo, hi in (("x", x1, x2), ("y", y1, y2)):
            r0, r1 = c_round(lo / 16), c_round(hi / 16)
            assert row[f"{ax}_rounded_start"] == r0 and row[f"{ax}_rounded_end"] == r1
            assert row[f"{ax}_end_shift_px"] == pytest.approx((r1 + 1) * 16 - hi, abs=1e-9)
            size = row[f"{ax}_exact_size"] + row[f"{ax}_end_shift_cells"] - row[f"{ax}_start_shift_cells"]
            assert size == pytest.approx(row[f"{ax}_quantized_size"], abs=1e-9)
            size_px = (hi - lo) + row[f"{ax}_end_shift_px"] - row[f"{ax}_start_shift_px"]
            assert size_px == pytest.approx(row[f"{ax}_quantized_size_px"], abs=1e-9)
            edges[ax] = (lo + row[f"{ax}_start_shift_px"], hi + row[f"{ax}_end_shift_px"])
        (qx0, qx1), (qy0, qy1) = edges["x"], edges["y"]
        inter = max(0, min(x2, qx1) - max(x1, qx0)) * max(0, min(y2, qy1) - max(y1, qy0))
        union = (x2 - x1) * (y2 - y1) + (qx1 - qx0) * (qy1 - qy0) - inter
        assert row["roi_iou"] == pytest.approx(inter / union, rel=1e-9)


def _red_extent(img: Image.Image, y: int) -> tuple[int, int]:
    xs = [x for x in range(img.width) if img.getpixel((x, y))[:3] == QUANTIZED]
    return min(xs), max(xs)


def test_picture_draws_the_reported_edges(tmp_path, map16):
    """Issue 9, item 11: the red rounded RoI in the picture ends where the report's end shift puts it."""
    boxes = [[0.0, 0.0, 32.0, 32.0], [37.0, 21.0, 90.0, 75.0]]
    rows = json.loads(ok("compare", map16, save_rois(tmp_path / "p.json", boxes), "-f", "json").stdout)["rows"]
    for box, row in zip(boxes, rows):
        background = np.full((10, 10, 3), 120, dtype=np.uint8)
        img, view = draw(background, 1 / 16, (10, 10), 1 / 16, torch.tensor([box]), (7, 7), 2, True,
                         max_size=640 + 10 + 14 * 4, crop=False)  # fmt: skip  (+ the legend band)
        img = img.convert("RGB")
        assert view.zoom == 4 and (view.x0, view.y0) == (0, 0)  # 160 px image -> 640 canvas px
        start = box[0] + row["x_start_shift_px"]
        end = box[2] + row["x_end_shift_px"]
        ymid = round((box[1] + box[3]) / 2 * 4)
        lo, hi = _red_extent(img, ymid)
        assert hi == round(end * 4) - 1  # the outline's outer pixel, past the exact box
        if start < box[0]:  # where the exact (green) box is not drawn over it
            assert lo == round(start * 4)


# ---- item 12: the headline ----------------------------------------------------------------------------


def linear_map(h: int, w: int, a: float, b: float, c: float) -> torch.Tensor:
    """f = a*x + b*y + c in cells, pixel (i, j) at the cell coordinate (j + 0.5, i + 0.5)."""
    x = torch.arange(w, dtype=F64) + 0.5
    y = torch.arange(h, dtype=F64) + 0.5
    return (a * x[None, :] + b * y[:, None] + c)[None, None]  # [1, 1, H, W]


def test_headline_median_and_worst_by_hand(tmp_path):
    """Issue 9, item 12: the headline says how far RoI Pool (max over rounded windows) is from RoI Align
    (avg) and from the exact integral, median and worst, in percent; json carries it as a field."""
    h, w, scale = 12, 16, 0.25
    a, b, c = 0.7, -0.3, 9.0
    fmap = linear_map(h, w, a, b, c)
    feats = save_map(tmp_path / "lin.safetensors", fmap, 4)
    boxes = [[2.0, 2.0, 62.0, 46.0], [5.3, 7.1, 33.9, 29.2], [13.7, 3.3, 30.1, 40.9], [41.0, 9.0, 58.6, 15.4]]
    ids = ["w0", "w1", "w2", "w3"]
    rois = save_rois(tmp_path / "r.json", boxes, ids)
    ph, pw = 5, 7
    dist = []
    for x1, y1, x2, y2 in boxes:
        # Exact integral of a linear map over a bin = its value at the bin centre; RoI Align (aligned) too.
        exact = torch.tensor([[a * (x1 * scale + (q + 0.5) * (x2 - x1) * scale / pw)
                               + b * (y1 * scale + (p + 0.5) * (y2 - y1) * scale / ph) + c
                               for q in range(pw)] for p in range(ph)], dtype=F64)  # fmt: skip
        lo_x, hi_x, lo_y, hi_y = c_round(x1 * scale), c_round(x2 * scale), c_round(y1 * scale), c_round(y2 * scale)
        bx, by = (hi_x - lo_x + 1) / pw, (hi_y - lo_y + 1) / ph
        pool = torch.zeros(ph, pw, dtype=F64)
        for p in range(ph):
            for q in range(pw):
                ys = range(max(math.floor(p * by) + lo_y, 0), min(math.ceil((p + 1) * by) + lo_y, h))
                xs = range(max(math.floor(q * bx) + lo_x, 0), min(math.ceil((q + 1) * bx) + lo_x, w))
                pool[p, q] = max(float(fmap[0, 0, i, j]) for i in ys for j in xs)
        dist.append(float((pool - exact).norm() / exact.norm()))
    doc = json.loads(ok("compare", feats, rois, "--output-size", "5x7", "-f", "json").stdout)
    head = doc["headline"]
    worst = max(range(4), key=lambda i: dist[i])
    for key in ("pool_vs_align", "pool_vs_exact"):
        assert head[key]["median"] == pytest.approx(statistics.median(dist), rel=1e-6)
        assert head[key]["worst"] == pytest.approx(dist[worst], rel=1e-6)
        assert head[key]["worst_id"] == ids[worst]
    assert [r["pool_vs_exact"] for r in doc["rows"]] == pytest.approx(dist, rel=1e-6)
    # The table opens with the headline, in percent, before the columns.
    table = ok("compare", feats, rois, "--output-size", "5x7").stdout
    first = table.split("\n\n")[0]
    pct = f"median {100 * statistics.median(dist):.3g}%, worst {100 * dist[worst]:.3g}% (RoI '{ids[worst]}')"
    assert first.startswith("RoI Pool (max over its rounded windows) vs RoI Align (avg, sampling_ratio=-1, aligned")
    assert " ".join(first.split()).count(pct) == 2  # against RoI Align and against the exact integral
    assert table.index("median") < table.index("x2 shift px")
    csv_text = ok("compare", feats, rois, "--output-size", "5x7", "-f", "csv").stdout
    assert any(ln.startswith("# headline: RoI Pool") for ln in csv_text.splitlines())


# ---- item 7: chunks of RoIs, a progress bar on a terminal -----------------------------------------------


def test_compare_in_chunks_same_rows(tmp_path, monkeypatch):
    """Issue 9, item 7: compare pools --chunk-size RoIs at a time (memory bounded by the chunk, not K),
    and the rows do not depend on the chunk size."""
    from roicli import report

    sizes = []
    real = report.ValueComparison.__call__

    def spy(self, rois, level_idx):
        sizes.append(rois.shape[0])
        return real(self, rois, level_idx)

    base = json.loads(ok("compare", FEATS, ROIS, "-f", "json").stdout)
    monkeypatch.setattr(report.ValueComparison, "__call__", spy)
    for chunk in (1, 2, 3):
        sizes.clear()
        doc = json.loads(ok("compare", FEATS, ROIS, "-f", "json", "--chunk-size", chunk).stdout)
        assert sizes == [chunk] * (5 // chunk) + ([5 % chunk] if 5 % chunk else [])
        assert doc == base
    one_line_error(invoke("compare", FEATS, ROIS, "--chunk-size", "0"), 2, "--chunk-size")


def _run_on_pty(args: list[str]) -> tuple[int, str]:
    """Run roicli with stderr on a terminal; returns (exit code, what the terminal saw)."""
    leader, follower = pty.openpty()
    proc = subprocess.Popen([roicli_script(), *args], stdout=subprocess.DEVNULL, stderr=follower,
                            env={**os.environ, "TERM": "xterm"})  # fmt: skip
    os.close(follower)
    seen = b""
    while True:
        ready, _, _ = select.select([leader], [], [], 0.2)
        if ready:
            try:
                chunk = os.read(leader, 65536)
            except OSError:
                break
            if not chunk:
                break
            seen += chunk
        elif proc.poll() is not None:
            break
    proc.wait(timeout=120)
    os.close(leader)
    return proc.returncode, seen.decode(errors="replace")


def test_progress_bar_on_a_terminal_only():
    """Issue 9, item 7: a progress bar on stderr when it is a terminal, none with --quiet."""
    code, seen = _run_on_pty(["compare", str(FEATS), str(ROIS), "--chunk-size", "1"])
    assert code == 0 and "roicli compare" in seen
    code, seen = _run_on_pty(["compare", str(FEATS), str(ROIS), "--chunk-size", "1", "--quiet"])
    assert code == 0 and seen == ""


# ---- item 9: no internal errors; compare never prints inf ---------------------------------------------------


def test_show_box_entirely_outside_the_map(tmp_path, map16):
    """Issue 9, item 9: `show` with a box entirely outside the map: one line naming it (nothing else to
    draw), or a warning naming it while the others are drawn."""
    out = tmp_path / "o.png"
    alone = save_rois(tmp_path / "out.json", [[1000, 1000, 1100, 1100]], ["far"])
    one_line_error(invoke("show", map16, alone, "-o", out), 1, "'far'", "entirely outside", "160x160")
    assert not out.exists()
    mixed = save_rois(tmp_path / "mixed.json", [[1000, 1000, 1100, 1100], [16, 16, 80, 64]], ["far", "in"])
    result = ok("show", map16, mixed, "-o", out)
    assert "Warning: RoI 'far'" in result.stderr and "not drawn" in result.stderr
    assert "show: 1 RoI(s)" in result.stderr and Image.open(out).format == "PNG"
    assert "Warning" not in ok("show", map16, mixed, "-o", out, "--quiet").stderr


def test_compare_never_prints_inf(tmp_path):
    """Issue 9, items 9/10: a relative error against an all-zero reference is undefined: blank in the
    table (null in json), never inf; an infinite spatial scale is one line."""
    fmap = torch.zeros(1, 1, 20, 20)
    fmap[..., 10:] = 1.0  # zero left of column 10
    feats = save_map(tmp_path / "z.safetensors", fmap, 1)
    # [5, 9.5]: the exact integral reads only zeros; RoI Pool's rounded end (cell 10) reads a one.
    rois = save_rois(tmp_path / "z.json", [[5, 5, 9.5, 9], [2, 2, 16, 16]], ["zero", "mixed"])
    table = ok("compare", feats, rois).stdout
    assert not re.search(r"\binf\b", table, re.IGNORECASE)
    doc = json.loads(ok("compare", feats, rois, "-f", "json").stdout)
    zero = doc["rows"][0]
    assert zero["quant_rel_err"] is None and zero["pool_vs_exact"] is None
    assert doc["headline"]["pool_vs_exact"]["undefined"] == 1
    assert doc["headline"]["pool_vs_exact"]["worst_id"] == "mixed"
    one_line_error(invoke("compare", feats, rois, "--spatial-scale", "inf"), 2, "--spatial-scale")
    result = invoke("compare", feats, save_rois(tmp_path / "h.json", [[0, 0, 1e30, 1e30]]))
    assert result.exit_code != 0 and "inf" not in result.stdout


def test_compare_warns_about_boxes_outside_the_map(tmp_path, map16):
    """Issue 9, item 10: compare, like the pooling commands, names the boxes entirely outside the map
    (their values are undefined or zero), and --quiet silences it."""
    rois = save_rois(tmp_path / "o.json", [[1000, 1000, 1100, 1100], [16, 16, 80, 64]], ["far", "in"])
    result = ok("compare", map16, rois, "-f", "json")
    assert "Warning: 1 box(es) entirely outside the feature map (ids 'far')" in result.stderr
    assert [r["id"] for r in json.loads(result.stdout)["rows"]] == ["far", "in"]
    assert ok("compare", map16, rois, "-f", "json", "-q").stderr == ""
    one_line_error(invoke("compare", map16, rois, "--strict"), 1, "'far'", "outside")


def test_image_pixel_limit_on_compare_and_show(tmp_path):
    """Issue 9, items 9/15: compare and show take align's --max-image-pixels (the 320x256 scene is 81920 px)."""
    scene, rois = DATA / "scene.png", DATA / "pyramid_rois.json"
    one_line_error(invoke("compare", scene, rois, "--max-image-pixels", "1000"), 1, "limit of 1,000")
    png = tmp_path / "s.png"
    one_line_error(invoke("show", scene, rois, "-o", png, "--max-image-pixels", "1000"), 1, "limit of 1,000")
    assert list(tmp_path.iterdir()) == []
    ok("show", scene, rois, "-o", png, "--max-image-pixels", "81920", "-q")


# ---- item 15: the same options and defaults as align; the table fits the terminal -------------------------


def test_show_uses_align_defaults(tmp_path):
    """Issue 9, item 15: show's defaults are align's (sampling_ratio -1, --no-aligned)."""
    default, explicit, old = tmp_path / "d.png", tmp_path / "e.png", tmp_path / "o.png"
    ok("show", FEATS, ROIS, "--roi", "sign", "-o", default)
    ok("show", FEATS, ROIS, "--roi", "sign", "-o", explicit, "--sampling-ratio", "-1", "--no-aligned")
    ok("show", FEATS, ROIS, "--roi", "sign", "-o", old, "--sampling-ratio", "2", "--aligned")
    assert default.read_bytes() == explicit.read_bytes() != old.read_bytes()


def test_show_and_compare_take_device_dtype_quiet(tmp_path):
    """Issue 9, item 15: --device/--dtype/--quiet/--json on show, --quiet/--chunk-size on compare."""
    png = tmp_path / "s.png"
    result = ok("show", FEATS, ROIS, "--roi", "sign", "-o", png, "--device", "cpu", "--dtype", "float64", "-q")
    assert result.stderr == "" and png.exists()
    result = ok("show", FEATS, ROIS, "--roi", "sign", "-o", png, "--json")
    assert result.stderr == "" and json.loads(result.stdout) == {
        "rois": ["sign"], "output": str(png), "size": list(Image.open(png).size), "level": None,
        "spatial_scale": 0.0625, "output_size": [7, 7], "sampling_ratio": -1, "aligned": False,
    }  # fmt: skip
    one_line_error(invoke("show", FEATS, ROIS, "-o", "-", "--json"), 2, "--json")
    out = tmp_path / "c.csv"
    result = ok("compare", FEATS, ROIS, "-o", out, "--device", "cpu", "--quiet", "--chunk-size", "2")
    assert result.stderr == "" and out.read_text().count("\n") > 5


def test_compare_table_fits_the_terminal(tmp_path):
    """Issue 9, item 15: the table fits $COLUMNS, leaving out the less important columns and naming
    them; piped without $COLUMNS, every column is there."""
    wide = ok("compare", FEATS, ROIS, env={"COLUMNS": ""}).stdout
    for label in ("w px", "x1 shift px", "bin IoU", "pool vs align(max)", "pool vs align", "pool vs exact"):
        assert label in wide
    assert "Not shown" not in wide
    for width in (80, 100, 60):
        text = ok("compare", FEATS, ROIS, env={"COLUMNS": str(width)}).stdout
        assert max(len(ln) for ln in text.splitlines()) <= width, width
        block = text.split("\n\n")[1]  # the table and the line under it
        shown = table_cells(text)["car"]
        footer = " ".join(block[block.index("Not shown"):].split())
        assert footer.startswith(f"Not shown at {width} columns:")
        assert "pool vs align" in shown and "pool vs exact" in shown
        assert "bin IoU" not in shown and "bin IoU" in footer
        for label in ("w px", "x1 shift px", "bin IoU", "pool vs align(max)", "quant err"):
            assert (label in shown) != (label + "," in footer or label + " (" in footer), (width, label)


def test_explain_to_a_file_says_what_it_wrote(tmp_path):
    """Issue 9, item 15: `compare --explain ID -o e.txt` says it wrote the explanation, not "(table)"."""
    out = tmp_path / "e.txt"
    result = ok("compare", VGG, ROIS_665, "--explain", "classic", "-o", out)
    assert "(table)" not in result.stderr and "explanation of RoI 'classic'" in result.stderr
    assert out.read_text().startswith("RoI 'classic'")


# ---- item 16: refused, not ignored ----------------------------------------------------------------------


@pytest.mark.parametrize("args", [("-f", "json"), ("-f", "csv"), ("-f", "jsonl"), ("-o", "{tmp}/e.json")])
def test_explain_with_a_data_format_is_refused(tmp_path, args):
    """Issue 9, item 16: --explain writes text; with -f json/csv/jsonl (or a .json file) it is a usage error."""
    args = [a.replace("{tmp}", str(tmp_path)) for a in args]
    one_line_error(invoke("compare", FEATS, ROIS, "--explain", "car", *args), 2, "--explain")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("name", ["x.npy", "x.pt", "x.safetensors", "x.png"])
def test_compare_refuses_extensions_it_does_not_write(tmp_path, name):
    """Issue 9, item 16: compare -o with an extension it does not write, with the list of formats."""
    one_line_error(invoke("compare", FEATS, ROIS, "-o", tmp_path / name), 2, ".json", ".csv", ".txt")
    one_line_error(invoke("compare", FEATS, ROIS, "-f", "csv", "-o", tmp_path / "x.json"), 2, "--format csv")
    assert list(tmp_path.iterdir()) == []


def test_show_writes_only_png(tmp_path):
    """Issue 9, item 16: show -o x.safetensors is refused (show writes PNG)."""
    one_line_error(invoke("show", FEATS, ROIS, "-o", tmp_path / "x.safetensors"), 2, ".png")
    assert list(tmp_path.iterdir()) == []


# ---- item 13: no torch at import time ---------------------------------------------------------------------

HEAVY = ("torch", "numpy", "roicli.pipeline", "roicli.report", "roicli.figure", "roicli.ops")


@pytest.mark.parametrize("name", ["compare_cmd", "show_cmd"])
def test_command_modules_import_nothing_heavy(name):
    """Issue 9, item 13: compare_cmd and show_cmd import torch, numpy and the library inside the command."""
    tree = ast.parse((SRC / "cli" / f"{name}.py").read_text())
    top = []
    for node in tree.body:  # module level only; imports inside functions are fine
        if isinstance(node, ast.Import):
            top += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            top += [node.module or ""] + [f"{node.module}.{a.name}" for a in node.names]
    heavy = [m for m in top if any(m == h or m.startswith(h + ".") for h in HEAVY)]
    assert heavy == []


# ---- issue 12, item 4: show assigns pyramid levels exactly as the pooling commands do ---------------------


def test_show_level_matches_pooling_near_a_level_edge(tmp_path):
    """Issue 12, item 4: a box whose FPN level differs between float64 and float32 arithmetic goes to
    the level `align` pools it from (the op's dtype), in `show` too."""
    from roicli.ops import fpn_levels

    gen = torch.Generator().manual_seed(3)
    levels = {f"p{k}": torch.rand(1, 2, 512 >> k, 512 >> k, generator=gen) for k in (2, 3, 4, 5)}
    feats = tmp_path / "pyr.safetensors"
    save_file(levels, feats)
    box = [0.0, 0.0, 223.99984, 223.99984]  # sqrt(area) a hair under 224: the p3/p4 edge
    scales = [0.25, 0.125, 0.0625, 0.03125]
    as64 = torch.tensor([[0.0, *box]], dtype=F64)
    assert int(fpn_levels(as64, scales)[0]) != int(fpn_levels(as64.float(), scales)[0])  # really on the edge
    rois = save_rois(tmp_path / "e.json", [box], ["edge"])
    pooled = tmp_path / "a.safetensors"
    ok("align", feats, rois, "-o", pooled, "-q")
    want = f"p{2 + int(load_file(pooled)['levels'][0])}"
    result = ok("show", feats, rois, "-o", tmp_path / "s.png")
    assert f"level {want}, spatial scale {scales[int(want[1]) - 2]:g}" in result.stderr
