"""End-to-end tests of the `roicli` command line.

Every test goes through the real entry points: `typer.testing.CliRunner` on `roicli.cli.app`
(stdout and stderr are captured separately by this typer version), and a few real shell pipelines
through the installed `roicli` script. Numbers are checked against `roicli.ops` called directly on
the same tensors and boxes; errors are checked for exit code, a single `Error: ...` line that names
the file/row/field, no traceback, and an output folder left exactly as it was.
"""

from __future__ import annotations

import csv
import io
import json
import os
import pty
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load as st_load
from safetensors.torch import load_file, save_file
from typer.main import get_command
from typer.testing import CliRunner

import roicli
from roicli.backbone import FilterBankBackbone
from roicli.cli import app
from roicli.io.images import read_image
from roicli.ops import fpn_levels, multiscale_roi_align, precise_roi_pool, roi_align, roi_pool

ROOT = Path(__file__).resolve().parents[1]
SAMPLES = ROOT / "samples"
FEATS = SAMPLES / "feats.safetensors"  # [1, 16, 38, 50], metadata stride 16
ROIS_JSON = SAMPLES / "rois.json"
ROIS_CSV = SAMPLES / "rois.csv"
PYRAMID = SAMPLES / "pyramid.safetensors"  # p2..p5 of a 256x320 image, 8 channels
PYRAMID_ROIS = SAMPLES / "pyramid_rois.json"
SCENE = SAMPLES / "scene.png"  # 256x320 RGB
VGG = SAMPLES / "vgg16_800.safetensors"  # [1, 8, 25, 25], stride 32
ROIS_665 = SAMPLES / "rois_665.json"

SAMPLE_ROIS = json.loads(ROIS_JSON.read_text())
SAMPLE_IDS = [r["id"] for r in SAMPLE_ROIS]
SAMPLE_BOXES = [r["box"] for r in SAMPLE_ROIS]
PYRAMID_BOXES = json.loads(PYRAMID_ROIS.read_text())
# Boxes whose xywh / cxcywh forms are exact in binary floating point (so every format gives equal tensors).
EXACT_BOXES = SAMPLE_BOXES[:4]

runner = CliRunner()
# torch.jit is deprecated in this torch; the CLI still takes TorchScript backbones, so the tests still make them.
pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit:DeprecationWarning")


# --------------------------------------------------------------------------------------------- helpers


def run(*args, input: bytes | str | None = None):
    return runner.invoke(app, [str(a) for a in args], input=input)


def ok(result) -> None:
    assert result.exit_code == 0, f"exit {result.exit_code}\nstdout: {result.stdout}\nstderr: {result.stderr}"
    assert result.exception is None or isinstance(result.exception, SystemExit)
    assert "Traceback" not in result.stderr


def flat(text: str) -> str:
    """Text with all whitespace runs collapsed (rich wraps long warnings at the console width)."""
    return " ".join(text.split())


def read_st(data: bytes) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Tensors and metadata of a safetensors blob."""
    n = int.from_bytes(data[:8], "little")
    meta = json.loads(data[8 : 8 + n]).get("__metadata__", {})
    return st_load(data), meta


def read_out(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    return read_st(path.read_bytes())


def rois_tensor(boxes, batch=None, dtype=torch.float32) -> torch.Tensor:
    """[K, 5] (batch, x1, y1, x2, y2), as the CLI builds it (float64, then the compute dtype)."""
    batch = batch if batch is not None else [0] * len(boxes)
    rows = [[float(b), *map(float, box)] for b, box in zip(batch, boxes)]
    return torch.tensor(rows, dtype=torch.float64).reshape(-1, 5).to(dtype)


def sample_features() -> torch.Tensor:
    return load_file(FEATS)["features"]


def assert_fails(result, code: int, *needles: str, outdir: Path | None = None, before: list[str] | None = None):
    """Exit `code`, exactly one stderr line `Error: ...` containing `needles`, nothing on stdout,
    no traceback, and `outdir` unchanged (no output, no temp file)."""
    assert result.exit_code == code, f"exit {result.exit_code}\nstdout: {result.stdout}\nstderr: {result.stderr}"
    assert isinstance(result.exception, SystemExit), repr(result.exception)
    assert "Traceback" not in result.stderr and "Traceback" not in result.stdout
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("Error: "), result.stderr
    for needle in needles:
        assert needle in lines[0], f"{needle!r} not in {lines[0]!r}"
    if outdir is not None:
        assert sorted(os.listdir(outdir)) == sorted(before or []), os.listdir(outdir)
    return lines[0]


def roicli_script() -> str:
    script = Path(sys.executable).parent / "roicli"
    if script.exists():
        return str(script)
    found = shutil.which("roicli")
    if found is None:
        pytest.skip("the roicli console script is not installed")
    return found


@pytest.fixture
def outdir(tmp_path: Path) -> Path:
    d = tmp_path / "out"
    d.mkdir()
    return d


@pytest.fixture
def two_images(tmp_path: Path) -> tuple[Path, torch.Tensor]:
    """A 2-image feature file [2, 4, 24, 32] with metadata stride 8."""
    gen = torch.Generator().manual_seed(1)
    t = torch.rand(2, 4, 24, 32, generator=gen)
    path = tmp_path / "two.safetensors"
    save_file({"features": t}, path, metadata={"stride": "8"})
    return path, t


# --------------------------------------------------------------------------------------------- pooling


def test_align_matches_op_and_records_everything(outdir: Path):
    out = outdir / "a.safetensors"
    result = run("align", FEATS, ROIS_JSON, "-o", out, "--device", "cpu")
    ok(result)
    tensors, meta = read_out(out)
    boxes = rois_tensor(SAMPLE_BOXES)
    expected = roi_align(sample_features(), boxes, 7, 1 / 16, -1, False)
    assert set(tensors) == {"pooled", "rois", "scores"}  # string ids: no `ids` tensor
    assert tensors["pooled"].shape == (5, 16, 7, 7)
    assert torch.equal(tensors["pooled"], expected)
    assert torch.equal(tensors["rois"], boxes)
    assert torch.allclose(tensors["scores"], torch.tensor([r["score"] for r in SAMPLE_ROIS]))
    assert meta["op"] == "align"
    assert meta["output_size"] == "7x7"
    assert json.loads(meta["spatial_scale"]) == 1 / 16
    assert meta["spatial_scale_source"] == "metadata"
    assert json.loads(meta["sampling_ratio"]) == -1
    assert json.loads(meta["aligned"]) is False
    assert meta["mode"] == "avg"  # a plain string, no longer JSON inside the string (issue 12)
    assert meta["device"] == "cpu"
    assert meta["dtype"] == "float32"
    assert meta["count"] == "5"
    assert json.loads(meta["ids"]) == SAMPLE_IDS
    assert json.loads(meta["labels"]) == [r["label"] for r in SAMPLE_ROIS]
    assert meta["box_format"] == "xyxy"
    assert meta["keys"] == "features"
    assert meta["features"] == str(FEATS) and meta["rois"] == str(ROIS_JSON)
    assert meta["roicli_version"] == roicli.__version__
    assert meta["torch_version"] == torch.__version__
    # the text summary goes to stderr, nothing to stdout
    assert result.stdout == ""
    assert "align: 5 RoIs" in result.stderr and "0.0625" in result.stderr


def test_default_device_is_auto(outdir: Path):
    out = outdir / "a.safetensors"
    ok(run("align", FEATS, ROIS_JSON, "-o", out, "-q"))
    _, meta = read_out(out)
    assert meta["device"] == ("cuda" if torch.cuda.is_available() else "cpu")


@pytest.mark.parametrize(
    "command, reference, params",
    [
        ("pool", lambda f, r, size, s: roi_pool(f, r, size, s), {}),
        ("precise", lambda f, r, size, s: precise_roi_pool(f, r, size, s, True), {"aligned": True}),
    ],
)
def test_pool_and_precise_match_ops(outdir: Path, command, reference, params):
    out = outdir / "o.safetensors"
    ok(run(command, FEATS, ROIS_CSV, "-o", out, "--device", "cpu", "-q"))
    tensors, meta = read_out(out)
    boxes = rois_tensor(SAMPLE_BOXES)
    assert torch.equal(tensors["pooled"], reference(sample_features(), boxes, (7, 7), 1 / 16))
    assert torch.equal(tensors["rois"], boxes)
    assert meta["op"] == command
    assert json.loads(meta["spatial_scale"]) == 0.0625
    assert json.loads(meta["ids"]) == SAMPLE_IDS  # the CSV's id column
    assert "sampling_ratio" not in meta
    for k, v in params.items():
        assert json.loads(meta[k]) == v
    if command == "pool":
        assert "aligned" not in meta


def test_precise_no_aligned(outdir: Path):
    out = outdir / "p.safetensors"
    ok(run("precise", FEATS, ROIS_JSON, "-o", out, "--no-aligned", "--device", "cpu", "-q"))
    tensors, meta = read_out(out)
    expected = precise_roi_pool(sample_features(), rois_tensor(SAMPLE_BOXES), 7, 1 / 16, False)
    assert torch.equal(tensors["pooled"], expected)
    assert json.loads(meta["aligned"]) is False


@pytest.mark.parametrize(
    "args, kwargs",
    [
        (["--sampling-ratio", "2"], {"sampling_ratio": 2}),
        (["--aligned"], {"aligned": True}),
        (["--mode", "max"], {"mode": "max"}),
        (["--mode", "max", "--sampling-ratio", "3", "--aligned"],
         {"mode": "max", "sampling_ratio": 3, "aligned": True}),
    ],
)
def test_align_options(outdir: Path, args, kwargs):
    out = outdir / "a.safetensors"
    ok(run("align", FEATS, ROIS_JSON, "-o", out, "--device", "cpu", "-q", *args))
    tensors, meta = read_out(out)
    p = {"sampling_ratio": -1, "aligned": False, "mode": "avg", **kwargs}
    expected = roi_align(sample_features(), rois_tensor(SAMPLE_BOXES), 7, 1 / 16, p["sampling_ratio"], p["aligned"],
                         mode=p["mode"])
    assert torch.equal(tensors["pooled"], expected)
    assert json.loads(meta["sampling_ratio"]) == p["sampling_ratio"]
    assert json.loads(meta["aligned"]) is p["aligned"]
    assert meta["mode"] == p["mode"]
    # the options change the numbers (the test would not notice an ignored option otherwise)
    default = roi_align(sample_features(), rois_tensor(SAMPLE_BOXES), 7, 1 / 16)
    assert not torch.equal(tensors["pooled"], default)


@pytest.mark.parametrize(
    "command, reference",
    [
        ("align", lambda f, r: roi_align(f, r, (7, 5), 1 / 16)),
        ("pool", lambda f, r: roi_pool(f, r, (7, 5), 1 / 16)),
        ("precise", lambda f, r: precise_roi_pool(f, r, (7, 5), 1 / 16)),
    ],
)
def test_output_size_ph_x_pw(outdir: Path, command, reference):
    out = outdir / "o.safetensors"
    result = run(command, FEATS, ROIS_JSON, "-o", out, "--output-size", "7x5", "--device", "cpu", "--json")
    ok(result)
    tensors, meta = read_out(out)
    assert tensors["pooled"].shape == (5, 16, 7, 5)
    assert torch.equal(tensors["pooled"], reference(sample_features(), rois_tensor(SAMPLE_BOXES)))
    assert meta["output_size"] == "7x5"
    assert json.loads(result.stdout)["output_size"] == [7, 5]


def test_dtype_float64(outdir: Path):
    out = outdir / "d.safetensors"
    result = run("align", FEATS, ROIS_JSON, "-o", out, "--dtype", "float64", "--device", "cpu", "--json")
    ok(result)
    tensors, meta = read_out(out)
    boxes = rois_tensor(SAMPLE_BOXES, dtype=torch.float64)
    assert tensors["pooled"].dtype == torch.float64
    assert tensors["rois"].dtype == torch.float64
    assert torch.equal(tensors["pooled"], roi_align(sample_features().double(), boxes, 7, 1 / 16))
    assert meta["dtype"] == "float64"
    assert json.loads(result.stdout)["dtype"] == "float64"


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_dtype_half(outdir: Path, dtype):
    out = outdir / "h.safetensors"
    ok(run("align", FEATS, ROIS_JSON, "-o", out, "--dtype", dtype, "--device", "cpu", "-q"))
    tensors, meta = read_out(out)
    assert tensors["pooled"].dtype == getattr(torch, dtype)
    assert meta["dtype"] == dtype
    full = roi_align(sample_features(), rois_tensor(SAMPLE_BOXES), 7, 1 / 16)
    assert torch.allclose(tensors["pooled"].float(), full, rtol=0.05, atol=0.05)


def _convert(box, fmt):
    x1, y1, x2, y2 = box
    if fmt == "xywh":
        return [x1, y1, x2 - x1, y2 - y1]
    return [(x1 + x2) / 2, (y1 + y2) / 2, x2 - x1, y2 - y1]


@pytest.mark.parametrize("fmt", ["xywh", "cxcywh"])
def test_box_formats_give_the_same_result(tmp_path: Path, outdir: Path, fmt):
    xyxy = tmp_path / "xyxy.json"
    xyxy.write_text(json.dumps(EXACT_BOXES))
    other = tmp_path / f"{fmt}.json"
    other.write_text(json.dumps([_convert(b, fmt) for b in EXACT_BOXES]))
    ok(run("align", FEATS, xyxy, "-o", outdir / "a.safetensors", "--device", "cpu", "-q"))
    ok(run("align", FEATS, other, "-o", outdir / "b.safetensors", "--box-format", fmt, "--device", "cpu", "-q"))
    a, _ = read_out(outdir / "a.safetensors")
    b, meta = read_out(outdir / "b.safetensors")
    assert torch.equal(a["rois"], b["rois"])
    assert torch.equal(a["pooled"], b["pooled"])
    assert meta["box_format"] == fmt
    # without --box-format the same numbers are read as xyxy, which is something else
    ok(run("align", FEATS, other, "-o", outdir / "c.safetensors", "--device", "cpu", "-q"))
    c, _ = read_out(outdir / "c.safetensors")
    assert not torch.equal(a["rois"], c["rois"])


@pytest.mark.parametrize("header, fmt", [("x,y,w,h", "xywh"), ("cx,cy,w,h", "cxcywh"), ("xmin,ymin,xmax,ymax", "xyxy")])
def test_csv_header_implies_box_format(tmp_path: Path, outdir: Path, header, fmt):
    path = tmp_path / "boxes.csv"
    rows = [_convert(b, fmt) if fmt != "xyxy" else b for b in EXACT_BOXES]
    path.write_text(header + "\n" + "".join(",".join(str(v) for v in r) + "\n" for r in rows))
    out = outdir / "o.safetensors"
    ok(run("align", FEATS, path, "-o", out, "--device", "cpu", "-q"))
    tensors, meta = read_out(out)
    assert meta["box_format"] == fmt
    assert torch.equal(tensors["rois"], rois_tensor(EXACT_BOXES))
    assert torch.equal(tensors["ids"], torch.arange(4))


def test_csv_header_other_order_and_extra_columns(tmp_path: Path, outdir: Path):
    path = tmp_path / "shuffled.csv"
    lines = ["Score,y2,note,X2,id,y1,x1,label"]
    for r in SAMPLE_ROIS:
        x1, y1, x2, y2 = r["box"]
        lines.append(f'{r["score"]},{y2},"free, text",{x2},{r["id"]},{y1},{x1},{r["label"]}')
    path.write_text("\n".join(lines) + "\n\n")  # a trailing blank line is fine
    ok(run("align", FEATS, path, "-o", outdir / "csv.safetensors", "--device", "cpu", "-q"))
    ok(run("align", FEATS, ROIS_JSON, "-o", outdir / "json.safetensors", "--device", "cpu", "-q"))
    got, meta = read_out(outdir / "csv.safetensors")
    want, want_meta = read_out(outdir / "json.safetensors")
    assert torch.equal(got["pooled"], want["pooled"])
    assert torch.equal(got["rois"], want["rois"])
    assert torch.allclose(got["scores"], want["scores"])
    assert json.loads(meta["ids"]) == SAMPLE_IDS
    assert json.loads(meta["labels"]) == json.loads(want_meta["labels"])


def test_csv_without_header_4_numbers(tmp_path: Path, outdir: Path):
    path = tmp_path / "plain.csv"
    path.write_text("".join(",".join(map(str, b)) + "\n" for b in SAMPLE_BOXES))
    out = outdir / "o.safetensors"
    ok(run("pool", FEATS, path, "-o", out, "--device", "cpu", "-q"))
    tensors, meta = read_out(out)
    boxes = rois_tensor(SAMPLE_BOXES)
    assert torch.equal(tensors["pooled"], roi_pool(sample_features(), boxes, 7, 1 / 16))
    assert torch.equal(tensors["ids"], torch.arange(5))
    assert json.loads(meta["ids"]) == [0, 1, 2, 3, 4]


def test_csv_without_header_5_numbers(tmp_path: Path, outdir: Path, two_images):
    feats, t = two_images
    boxes = [[8, 8, 100, 90], [0, 0, 255, 191], [40.5, 16.25, 200, 150]]
    batch = [1, 0, 1]
    path = tmp_path / "plain5.csv"
    path.write_text("".join(f"{b},{','.join(map(str, box))}\n" for b, box in zip(batch, boxes)))
    out = outdir / "o.safetensors"
    ok(run("align", feats, path, "-o", out, "--device", "cpu", "-q"))
    tensors, _ = read_out(out)
    r = rois_tensor(boxes, batch)
    assert torch.equal(tensors["rois"], r)
    assert torch.equal(tensors["pooled"], roi_align(t, r, 7, 1 / 8))
    # pooled from the right image: image 1's result differs from pooling image 0 at the same box
    assert not torch.equal(tensors["pooled"][0], roi_align(t, rois_tensor(boxes[:1], [0]), 7, 1 / 8)[0])


TWO_IMAGE_BOXES = [[8, 8, 100, 90], [0, 0, 255, 191], [40.5, 16.25, 200, 150]]
TWO_IMAGE_BATCH = [1, 0, 1]


def _json_forms():
    b, k = TWO_IMAGE_BOXES, TWO_IMAGE_BATCH
    return {
        "list-of-lists": (json.dumps(b), None, "rois.json"),
        "list-of-b-x1y1x2y2": (json.dumps([[i, *box] for i, box in zip(k, b)]), k, "rois.json"),
        "objects-box-batch": (json.dumps([{"box": box, "batch": i} for i, box in zip(k, b)]), k, "rois.json"),
        "objects-bbox-image_index": (
            json.dumps([{"bbox": box, "image_index": i, "id": 10 + j} for j, (i, box) in enumerate(zip(k, b))]),
            k, "rois.json",
        ),
        "rois-object": (json.dumps({"rois": [[i, *box] for i, box in zip(k, b)]}, indent=2), k, "rois.json"),
        "jsonl-objects": ("".join(json.dumps({"box": box, "batch": i}) + "\n" for i, box in zip(k, b)), k, "r.jsonl"),
        "jsonl-lists": ("".join(json.dumps([i, *box]) + "\n" for i, box in zip(k, b)), k, "r.jsonl"),
        "jsonl-objects-in-.json-file": (
            "".join(json.dumps({"box": box, "batch": i}) + "\n" for i, box in zip(k, b)), k, "rois.json",
        ),
    }


@pytest.mark.parametrize("form", list(_json_forms()))
def test_json_forms(tmp_path: Path, outdir: Path, two_images, form):
    feats, t = two_images
    text, batch, name = _json_forms()[form]
    path = tmp_path / name
    path.write_text(text)
    out = outdir / "o.safetensors"
    ok(run("align", feats, path, "-o", out, "--device", "cpu", "-q"))
    tensors, meta = read_out(out)
    r = rois_tensor(TWO_IMAGE_BOXES, batch)
    assert torch.equal(tensors["rois"], r)
    assert torch.equal(tensors["pooled"], roi_align(t, r, 7, 1 / 8))
    want_ids = [10, 11, 12] if form == "objects-bbox-image_index" else [0, 1, 2]
    assert json.loads(meta["ids"]) == want_ids
    assert torch.equal(tensors["ids"], torch.tensor(want_ids))


@pytest.mark.parametrize(
    "text, extra",
    [
        (ROIS_CSV.read_text(), []),  # CSV sniffed
        (ROIS_JSON.read_text(), []),  # JSON sniffed
        ("".join(json.dumps(r) + "\n" for r in SAMPLE_ROIS), []),  # JSON Lines sniffed
        (ROIS_CSV.read_text(), ["--rois-format", "csv"]),
        (ROIS_JSON.read_text(), ["--rois-format", "json"]),
    ],
    ids=["csv-sniffed", "json-sniffed", "jsonl-sniffed", "csv-forced", "json-forced"],
)
def test_rois_from_stdin(outdir: Path, text, extra):
    out = outdir / "o.safetensors"
    ok(run("align", FEATS, "-", "-o", out, "--device", "cpu", "-q", *extra, input=text))
    tensors, meta = read_out(out)
    assert torch.equal(tensors["pooled"], roi_align(sample_features(), rois_tensor(SAMPLE_BOXES), 7, 1 / 16))
    assert json.loads(meta["ids"]) == SAMPLE_IDS
    assert meta["rois"] == "stdin"


def test_rois_from_stdin_forced_formats(outdir: Path):
    headerless = "".join(",".join(map(str, b)) + "\n" for b in SAMPLE_BOXES)
    jsonl_lists = "".join(json.dumps(b) + "\n" for b in SAMPLE_BOXES)
    expected = roi_align(sample_features(), rois_tensor(SAMPLE_BOXES), 7, 1 / 16)
    for text, fmt in [(headerless, "csv"), (jsonl_lists, "jsonl")]:
        out = outdir / f"{fmt}.safetensors"
        ok(run("align", FEATS, "-", "-o", out, "--rois-format", fmt, "--device", "cpu", "-q", input=text))
        tensors, _ = read_out(out)
        assert torch.equal(tensors["pooled"], expected)
        assert torch.equal(tensors["ids"], torch.arange(5))


def test_jsonl_lists_on_stdin_are_sniffed(outdir: Path):
    text = "".join(json.dumps(b) + "\n" for b in SAMPLE_BOXES)
    out = outdir / "o.safetensors"
    ok(run("align", FEATS, "-", "-o", out, "--device", "cpu", "-q", input=text))
    tensors, _ = read_out(out)
    assert tensors["pooled"].shape == (5, 16, 7, 7)


def test_features_from_stdin(outdir: Path):
    out = outdir / "o.safetensors"
    ok(run("pool", "-", ROIS_JSON, "-o", out, "--device", "cpu", "-q", input=FEATS.read_bytes()))
    tensors, meta = read_out(out)
    assert torch.equal(tensors["pooled"], roi_pool(sample_features(), rois_tensor(SAMPLE_BOXES), 7, 1 / 16))
    assert meta["features"] == "stdin"
    assert json.loads(meta["spatial_scale"]) == 1 / 16


def test_spatial_scale_and_stride_options_override_metadata(outdir: Path):
    expected = roi_align(sample_features(), rois_tensor(SAMPLE_BOXES), 7, 1 / 8)
    for opt in (["--stride", "8"], ["--spatial-scale", "0.125"]):
        out = outdir / "o.safetensors"
        ok(run("align", FEATS, ROIS_JSON, "-o", out, "--device", "cpu", "-q", *opt))
        tensors, meta = read_out(out)
        assert torch.equal(tensors["pooled"], expected)
        assert json.loads(meta["spatial_scale"]) == 0.125
        assert meta["spatial_scale_source"] == "option"


def test_three_d_feature_map_and_key(tmp_path: Path, outdir: Path):
    t = torch.rand(4, 20, 30, generator=torch.Generator().manual_seed(3))
    path = tmp_path / "chw.safetensors"
    save_file({"a": t, "b": t * 2, "vec": torch.zeros(3)}, path, metadata={"stride.b": "4"})
    out = outdir / "o.safetensors"
    ok(run("align", path, PYRAMID_ROIS, "-o", out, "--key", "b", "--device", "cpu", "-q"))
    tensors, meta = read_out(out)
    assert torch.equal(tensors["pooled"], roi_align(t[None] * 2, rois_tensor(PYRAMID_BOXES), 7, 1 / 4))
    assert meta["keys"] == "b"
    assert json.loads(meta["spatial_scale"]) == 0.25


# --------------------------------------------------------------------------------------------- pyramid


PYRAMID_SCALES = [1 / 4, 1 / 8, 1 / 16, 1 / 32]


def test_pyramid_matches_multiscale_roi_align(outdir: Path):
    out = outdir / "p.safetensors"
    result = run("align", PYRAMID, PYRAMID_ROIS, "-o", out, "--device", "cpu", "--json")
    ok(result)
    tensors, meta = read_out(out)
    levels = load_file(PYRAMID)
    feats = [levels[k] for k in ("p2", "p3", "p4", "p5")]
    boxes = rois_tensor(PYRAMID_BOXES)
    assert set(tensors) == {"pooled", "rois", "ids", "levels"}
    assert torch.equal(tensors["pooled"], multiscale_roi_align(feats, boxes, 7, PYRAMID_SCALES))
    assert torch.equal(tensors["levels"], fpn_levels(boxes, PYRAMID_SCALES))
    assert len(set(tensors["levels"].tolist())) > 1  # the sample really spans several levels
    assert json.loads(meta["spatial_scale"]) == PYRAMID_SCALES
    assert meta["keys"] == "p2,p3,p4,p5"
    assert json.loads(meta["canonical_size"]) == 224 and json.loads(meta["canonical_level"]) == 4
    summary = json.loads(result.stdout)
    assert summary["spatial_scale"] == PYRAMID_SCALES
    assert sum(summary["rois_per_level"].values()) == 5
    assert summary["rois_per_level"] == {
        k: int((tensors["levels"] == i).sum()) for i, k in enumerate(["p2", "p3", "p4", "p5"])
    }


def test_pyramid_key_picks_one_level(outdir: Path):
    out = outdir / "p3.safetensors"
    ok(run("align", PYRAMID, PYRAMID_ROIS, "-o", out, "--key", "p3", "--stride", "8", "--device", "cpu", "-q"))
    tensors, meta = read_out(out)
    p3 = load_file(PYRAMID)["p3"]
    assert "levels" not in tensors
    assert torch.equal(tensors["pooled"], roi_align(p3, rois_tensor(PYRAMID_BOXES), 7, 1 / 8))
    assert meta["keys"] == "p3"


def test_pyramid_key_alone_uses_the_level_stride(outdir: Path):
    out = outdir / "p3.safetensors"
    ok(run("align", PYRAMID, PYRAMID_ROIS, "-o", out, "--key", "p3", "--device", "cpu", "-q"))
    tensors, meta = read_out(out)
    assert json.loads(meta["spatial_scale"]) == 1 / 8
    p3 = load_file(PYRAMID)["p3"]
    assert torch.equal(tensors["pooled"], roi_align(p3, rois_tensor(PYRAMID_BOXES), 7, 1 / 8))


# --------------------------------------------------------------------------------------------- images


def test_image_through_builtin_backbone(outdir: Path):
    out = outdir / "img.safetensors"
    result = run("align", SCENE, PYRAMID_ROIS, "-o", out, "--device", "cpu", "--json")
    ok(result)
    tensors, meta = read_out(out)
    with torch.no_grad():
        fmap = FilterBankBackbone()(read_image(str(SCENE)))
    assert fmap.shape == (1, 27, 32, 40)
    assert torch.equal(tensors["pooled"], roi_align(fmap, rois_tensor(PYRAMID_BOXES), 7, 1 / 8))
    assert json.loads(meta["spatial_scale"]) == 0.125
    assert meta["spatial_scale_source"] == "builtin backbone"
    assert json.loads(meta["image_size"]) == [256, 320]
    assert meta["keys"] == "builtin"
    summary = json.loads(result.stdout)
    assert summary["spatial_scale"] == 0.125 and summary["output_shape"] == [5, 27, 7, 7]


def _gradient(h: int, w: int) -> np.ndarray:
    y, x = np.mgrid[0:h, 0:w]
    return ((x * 3 + y * 5) % 256).astype(np.uint8)


def _image_pair(tmp_path: Path, kind: str) -> tuple[Path, Path]:
    """(an image of mode `kind`, the RGB image it should be read as)."""
    h, w = 64, 80
    g = _gradient(h, w)
    expected = tmp_path / f"{kind}-expected.png"
    path = tmp_path / f"{kind}.png"
    if kind == "L":
        Image.fromarray(g, "L").save(path)
        Image.fromarray(np.repeat(g[..., None], 3, axis=2), "RGB").save(expected)
    elif kind == "RGBA":  # fully transparent red over the top half, opaque blue below: composited on white
        rgba = np.zeros((h, w, 4), dtype=np.uint8)
        rgba[: h // 2] = (255, 0, 0, 0)
        rgba[h // 2 :] = (0, 0, 255, 255)
        Image.fromarray(rgba, "RGBA").save(path)
        rgb = np.zeros((h, w, 3), dtype=np.uint8)
        rgb[: h // 2] = 255
        rgb[h // 2 :] = (0, 0, 255)
        Image.fromarray(rgb, "RGB").save(expected)
    else:  # 16-bit grayscale: 65535 reads as 1.0 like 255 in 8 bits
        a16 = np.zeros((h, w), dtype=np.uint16)
        a16[:, w // 2 :] = 65535
        im = Image.fromarray(a16)
        assert im.mode == "I;16"
        im.save(path)
        a8 = (a16 // 257).astype(np.uint8)
        Image.fromarray(np.repeat(a8[..., None], 3, axis=2), "RGB").save(expected)
    return path, expected


@pytest.mark.parametrize("kind", ["L", "RGBA", "I;16"])
def test_image_modes(tmp_path: Path, outdir: Path, kind):
    path, expected = _image_pair(tmp_path, kind)
    rois = tmp_path / "rois.json"
    rois.write_text(json.dumps([[0, 0, 80, 64], [8, 4, 50, 40], [30, 20, 78, 60]]))
    ok(run("align", path, rois, "-o", outdir / "got.safetensors", "--device", "cpu", "-q"))
    ok(run("align", expected, rois, "-o", outdir / "want.safetensors", "--device", "cpu", "-q"))
    got, meta = read_out(outdir / "got.safetensors")
    want, _ = read_out(outdir / "want.safetensors")
    assert got["pooled"].shape == (3, 27, 7, 7)
    assert torch.isfinite(got["pooled"]).all()
    assert torch.allclose(got["pooled"], want["pooled"], atol=1e-6)
    assert json.loads(meta["image_size"]) == [64, 80]
    if kind in ("L", "I;16"):  # grey: the red-green and blue-yellow opponent channels are zero at every scale
        for c in (1, 2, 10, 11, 19, 20):
            assert got["pooled"][:, c].abs().max() < 1e-6


class _StrideFour(torch.nn.Module):
    """A tiny TorchScript-able backbone: 3 -> 4 channels, stride 4."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 4, kernel_size=4, stride=4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.conv(x))


@pytest.fixture
def torchscript_backbone(tmp_path: Path) -> Path:
    torch.manual_seed(0)
    path = tmp_path / "backbone.pt"
    torch.jit.save(torch.jit.script(_StrideFour()), str(path))
    return path


@pytest.mark.parametrize("stride_args, source", [(["--stride", "4"], "option"), ([], "inferred")])
def test_torchscript_backbone(outdir: Path, torchscript_backbone: Path, stride_args, source):
    out = outdir / "ts.safetensors"
    ok(run("align", SCENE, PYRAMID_ROIS, "-o", out, "--backbone", torchscript_backbone, "--device", "cpu", "-q",
           *stride_args))
    tensors, meta = read_out(out)
    net = torch.jit.load(str(torchscript_backbone))
    with torch.no_grad():
        fmap = net(read_image(str(SCENE)))
    assert fmap.shape == (1, 4, 64, 80)
    assert torch.equal(tensors["pooled"], roi_align(fmap, rois_tensor(PYRAMID_BOXES), 7, 1 / 4))
    assert json.loads(meta["spatial_scale"]) == 0.25
    assert meta["spatial_scale_source"].startswith(source)
    assert meta["keys"] == "backbone.pt"


def test_output_equal_to_backbone_is_refused(outdir: Path, torchscript_backbone: Path):
    before = torchscript_backbone.read_bytes()
    result = run("align", SCENE, PYRAMID_ROIS, "-o", torchscript_backbone, "--backbone", torchscript_backbone,
                 "--stride", "4", "--device", "cpu")
    assert torchscript_backbone.read_bytes() == before
    assert_fails(result, 1, "input")


def test_missing_backbone_file(tmp_path: Path, outdir: Path):
    result = run("align", SCENE, PYRAMID_ROIS, "-o", outdir / "o.safetensors", "--backbone", tmp_path / "nope.pt")
    assert_fails(result, 1, "nope.pt: no such file", outdir=outdir)


# --------------------------------------------------------------------------------------------- summary, quiet, stdout


def test_json_summary(outdir: Path):
    out = outdir / "o.safetensors"
    result = run("pool", FEATS, ROIS_JSON, "-o", out, "--json", "--device", "cpu")
    ok(result)
    summary = json.loads(result.stdout)
    assert summary["op"] == "pool"
    assert summary["rois"] == 5
    assert summary["output"] == str(out)
    assert summary["output_shape"] == [5, 16, 7, 7]
    assert summary["spatial_scale"] == 0.0625
    assert summary["spatial_scale_source"] == "metadata"
    assert summary["output_size"] == [7, 7]
    assert summary["device"] == "cpu" and summary["dtype"] == "float32"
    assert summary["degenerate_boxes"] == 0
    assert summary["seconds"] >= 0
    assert result.stderr == ""


def test_quiet(outdir: Path, tmp_path: Path):
    rois = tmp_path / "rois.json"
    rois.write_text(json.dumps([[10, 10, 10, 50], [50, 50, 100, 100]]))  # a degenerate box: no warning either
    out = outdir / "o.safetensors"
    result = run("align", FEATS, rois, "-o", out, "--quiet")
    ok(result)
    assert result.stderr == "" and result.stdout == ""
    assert read_out(out)[0]["pooled"].shape == (2, 16, 7, 7)


def test_output_to_stdout(outdir: Path):
    result = run("align", FEATS, ROIS_JSON, "-o", "-", "--device", "cpu")
    ok(result)
    tensors = st_load(result.stdout_bytes)
    _, meta = read_st(result.stdout_bytes)
    assert torch.equal(tensors["pooled"], roi_align(sample_features(), rois_tensor(SAMPLE_BOXES), 7, 1 / 16))
    assert meta["op"] == "align"
    assert "align: 5 RoIs -> -" in result.stderr  # the summary stays off stdout
    assert os.listdir(outdir) == []


def test_json_with_stdout_output_is_a_usage_error(outdir: Path):
    assert_fails(run("align", FEATS, ROIS_JSON, "-o", "-", "--json"), 2, "--json")


@pytest.mark.parametrize("args", [["-o", "-", "--report", "-"], ["-o", "OUT", "--json", "--report", "-"]])
def test_two_things_on_stdout_are_refused(outdir: Path, args):
    args = [str(outdir / "o.safetensors") if a == "OUT" else a for a in args]
    result = run("pool", FEATS, ROIS_JSON, *args)
    assert_fails(result, 2, "stdout", outdir=outdir)


# --------------------------------------------------------------------------------------------- report


def test_report_json_worked_example(outdir: Path):
    out, report = outdir / "o.safetensors", outdir / "r.json"
    ok(run("pool", VGG, ROIS_665, "-o", out, "--output-size", "7", "--report", report, "--device", "cpu", "-q"))
    doc = json.loads(report.read_text())
    assert doc["op"] == "roi_pool geometry" and doc["output_size"] == "7x7"
    (row,) = doc["rows"]
    assert row["id"] == "classic" and row["batch"] == 0 and row["spatial_scale"] == 1 / 32
    for axis in "xy":
        assert row[f"{axis}_exact_start"] == 0
        assert row[f"{axis}_exact_end"] == 665 / 32
        assert row[f"{axis}_rounded_start"] == 0
        assert row[f"{axis}_rounded_end"] == 21
        assert row[f"{axis}_quantized_size"] == 22
        assert row[f"{axis}_exact_size"] == pytest.approx(665 / 32)
        assert row[f"{axis}_exact_bin"] == pytest.approx(665 / 32 / 7)
        assert row[f"{axis}_end_shift_px"] == pytest.approx(22 * 32 - 665)  # end cell 21 included (issue 9, item 11)
    # the pooled output itself is RoI Pool's
    tensors, _ = read_out(out)
    assert torch.equal(tensors["pooled"], roi_pool(load_file(VGG)["features"], rois_tensor([[0, 0, 665, 665]]), 7,
                                                   1 / 32))


def test_report_csv(outdir: Path):
    out, report = outdir / "o.safetensors", outdir / "r.csv"
    ok(run("pool", VGG, ROIS_665, "-o", out, "--output-size", "7", "--report", report, "-q"))
    text = report.read_text()
    comments = [ln for ln in text.splitlines() if ln.startswith("#")]
    assert "# op: roi_pool geometry" in comments and "# output_size: 7x7" in comments
    rows = list(csv.DictReader(io.StringIO("\n".join(ln for ln in text.splitlines() if not ln.startswith("#")))))
    assert len(rows) == 1
    assert rows[0]["id"] == "classic"
    assert float(rows[0]["x_exact_end"]) == 665 / 32
    assert int(rows[0]["x_rounded_end"]) == 21
    assert int(rows[0]["x_quantized_size"]) == 22


def test_report_rows_follow_input_order(outdir: Path):
    report = outdir / "r.json"
    ok(run("align", FEATS, ROIS_CSV, "-o", outdir / "o.safetensors", "--report", report, "-q"))
    rows = json.loads(report.read_text())["rows"]
    assert [r["id"] for r in rows] == SAMPLE_IDS
    car = rows[0]
    assert car["x_exact_start"] == 100 / 16 and car["x_rounded_start"] == 6
    assert car["y_exact_end"] == 380 / 16 and car["y_rounded_end"] == 24


# --------------------------------------------------------------------------------------------- inspect


def test_inspect_table(outdir: Path):
    out = outdir / "o.safetensors"
    ok(run("align", PYRAMID, PYRAMID_ROIS, "-o", out, "-q"))
    result = run("inspect", out)
    ok(result)
    for needle in ("pooled", "5x8x7x7", "rois", "5x5", "ids", "levels", "float32", "int64", "op", "align",
                   "spatial_scale"):
        assert needle in result.stdout
    result = run("inspect", PYRAMID)
    ok(result)
    for key, shape in [("p2", "1x8x64x80"), ("p3", "1x8x32x40"), ("p4", "1x8x16x20"), ("p5", "1x8x8x10")]:
        line = next(ln for ln in result.stdout.splitlines() if f" {key} " in ln)
        assert shape in line


def test_inspect_json_and_stdin():
    result = run("inspect", FEATS, "--json")
    ok(result)
    doc = json.loads(result.stdout)
    assert doc["file"] == str(FEATS)
    assert doc["tensors"] == [{"key": "features", "shape": [1, 16, 38, 50], "dtype": "float32"}]
    assert doc["metadata"] == {"stride": "16", "image_size": "600x800"}
    result = run("inspect", "-", "--json", input=FEATS.read_bytes())
    ok(result)
    assert json.loads(result.stdout) == {**doc, "file": "stdin"}
    result = run("inspect", "-", input=FEATS.read_bytes())
    ok(result)
    assert "features" in result.stdout and "1x16x38x50" in result.stdout and "stdin" in result.stdout


@pytest.mark.parametrize("make", ["text", "truncated", "missing"])
def test_inspect_bad_files(tmp_path: Path, make):
    path = tmp_path / "x.safetensors"
    if make == "text":
        path.write_text("this is not a safetensors file, just some words\n")
        needle = "not a safetensors file"
    elif make == "truncated":
        data = FEATS.read_bytes()
        path.write_bytes(data[: len(data) // 2])
        needle = "truncated"
    else:
        needle = "no such file"
    assert_fails(run("inspect", path), 1, str(path), needle)


# --------------------------------------------------------------------------------------------- bad inputs


def _run_in(outdir: Path, *args, input=None, command="align"):
    return run(command, *args, "-o", outdir / "out.safetensors", input=input)


def test_missing_features_file(tmp_path: Path, outdir: Path):
    missing = tmp_path / "nope.safetensors"
    assert_fails(_run_in(outdir, missing, ROIS_JSON), 1, f"{missing}: no such file", outdir=outdir)


def test_missing_rois_file(tmp_path: Path, outdir: Path):
    missing = tmp_path / "nope.json"
    assert_fails(_run_in(outdir, FEATS, missing), 1, f"{missing}: no such file", outdir=outdir)


def test_text_file_named_safetensors(tmp_path: Path, outdir: Path):
    path = tmp_path / "x.safetensors"
    path.write_text("hello, I am a text file and not a tensor file at all\n" * 3)
    assert_fails(_run_in(outdir, path, ROIS_JSON), 1, str(path), "not a safetensors file", outdir=outdir)


def test_truncated_safetensors(tmp_path: Path, outdir: Path):
    data = FEATS.read_bytes()
    path = tmp_path / "half.safetensors"
    path.write_bytes(data[: len(data) // 2])
    assert_fails(_run_in(outdir, path, ROIS_JSON), 1, str(path), "truncated", outdir=outdir)


def test_only_a_1d_tensor(tmp_path: Path, outdir: Path):
    path = tmp_path / "vec.safetensors"
    save_file({"v": torch.arange(10.0)}, path)
    assert_fails(_run_in(outdir, path, ROIS_JSON), 1, str(path), "no 3-D or 4-D tensor", "v (10,)", outdir=outdir)


@pytest.fixture
def two_maps(tmp_path: Path) -> Path:
    path = tmp_path / "two_maps.safetensors"
    save_file({"backbone": torch.rand(1, 4, 10, 10), "head": torch.rand(1, 4, 5, 5)}, path)
    return path


def test_several_maps_need_key(two_maps: Path, outdir: Path):
    line = assert_fails(_run_in(outdir, two_maps, ROIS_JSON), 2, str(two_maps), "--key", outdir=outdir)
    assert "backbone" in line and "head" in line
    ok(run("align", two_maps, ROIS_JSON, "-o", outdir / "ok.safetensors", "--key", "head", "-q"))


def test_unknown_key_lists_available(two_maps: Path, outdir: Path):
    line = assert_fails(_run_in(outdir, two_maps, ROIS_JSON, "--key", "neck"), 1, "'neck'", "available: ",
                        outdir=outdir)
    assert "backbone" in line.split("available: ")[1] and "head" in line.split("available: ")[1]


def test_json_syntax_error(tmp_path: Path, outdir: Path):
    path = tmp_path / "bad.json"
    path.write_text('[\n  [1, 2, 3, 4],\n  [1, 2, 3, 4,]\n]\n')
    assert_fails(_run_in(outdir, FEATS, path), 1, str(path), "invalid JSON", "line 3, column", outdir=outdir)


def test_json_roi_with_wrong_length(tmp_path: Path, outdir: Path):
    path = tmp_path / "bad.json"
    path.write_text("[[1, 2, 3, 4], [1, 2, 3]]")
    assert_fails(_run_in(outdir, FEATS, path), 1, str(path), "roi 1", "4 or 5 numbers", outdir=outdir)


def test_csv_wrong_number_of_fields(tmp_path: Path, outdir: Path):
    path = tmp_path / "bad.csv"
    path.write_text("x1,y1,x2,y2\n1,2,30,40\n1,2,30\n")
    assert_fails(_run_in(outdir, FEATS, path), 1, str(path), "row 2 (line 3)", "expected 4 fields, got 3",
                 outdir=outdir)


def test_csv_non_number(tmp_path: Path, outdir: Path):
    path = tmp_path / "bad.csv"
    path.write_text("id,x1,y1,x2,y2\na,1,2,30,40\nb,1,2,thirty,40\n")
    assert_fails(_run_in(outdir, FEATS, path), 1, str(path), "row 2", "'x2'", "'thirty'", outdir=outdir)


@pytest.mark.parametrize(
    "name, text, needles",
    [
        ("nan.json", '[[1, 2, 30, 40], [1, NaN, 30, 40]]', ["roi 1", "finite"]),
        ("inf.json", '[{"box": [1, 2, Infinity, 40]}]', ["roi 0", "box[2]", "finite"]),
        ("inf.csv", "x1,y1,x2,y2\n1,2,30,40\n1,2,inf,40\n", ["row 2", "'x2'", "finite"]),
        ("nan.csv", "1,2,30,40\nnan,2,30,40\n", ["row 2", "finite"]),
    ],
)
def test_non_finite_coordinates(tmp_path: Path, outdir: Path, name, text, needles):
    path = tmp_path / name
    path.write_text(text)
    assert_fails(_run_in(outdir, FEATS, path), 1, str(path), *needles, outdir=outdir)


def test_batch_index_out_of_range(tmp_path: Path, outdir: Path):
    path = tmp_path / "b.json"
    path.write_text(json.dumps([[0, 1, 2, 30, 40], [3, 1, 2, 30, 40]]))
    assert_fails(_run_in(outdir, FEATS, path), 1, str(path), "roi 1", "batch index 3", "holds 1 image",
                 outdir=outdir)


def test_negative_or_fractional_batch(tmp_path: Path, outdir: Path):
    path = tmp_path / "b.json"
    path.write_text(json.dumps([{"box": [1, 2, 30, 40], "batch": 0.5}]))
    assert_fails(_run_in(outdir, FEATS, path), 1, str(path), "roi 0", "non-negative integer", outdir=outdir)


@pytest.fixture
def degenerate_rois(tmp_path: Path) -> Path:
    path = tmp_path / "deg.json"
    path.write_text(json.dumps([
        {"id": "ok", "box": [10, 10, 200, 200]},
        {"id": "flat", "box": [10, 10, 10, 50]},
        {"id": "upside", "box": [50, 50, 20, 20]},
    ]))
    return path


@pytest.mark.parametrize("command", ["align", "pool", "precise"])
def test_degenerate_boxes_warn(outdir: Path, degenerate_rois: Path, command):
    out = outdir / "o.safetensors"
    result = run(command, FEATS, degenerate_rois, "-o", out, "--json")
    ok(result)
    assert "Error" not in result.stderr
    assert "Warning: 2 zero-size or inverted box(es) (ids 'flat', 'upside')" in flat(result.stderr)
    assert json.loads(result.stdout)["degenerate_boxes"] == 2
    tensors, _ = read_out(out)
    assert tensors["pooled"].shape == (3, 16, 7, 7)
    assert torch.isfinite(tensors["pooled"]).all()


def test_warning_is_one_line(outdir: Path, degenerate_rois: Path):
    result = run("align", FEATS, degenerate_rois, "-o", outdir / "o.safetensors")
    ok(result)
    warnings = [ln for ln in result.stderr.splitlines() if ln.startswith("Warning:")]
    assert len(warnings) == 1 and warnings[0].rstrip().endswith("--strict makes this an error)")


def test_degenerate_boxes_strict(outdir: Path, degenerate_rois: Path):
    result = run("align", FEATS, degenerate_rois, "-o", outdir / "o.safetensors", "--strict")
    assert_fails(result, 1, str(degenerate_rois), "2 zero-size or inverted", "'flat'", "'upside'", outdir=outdir)


@pytest.mark.parametrize("command", ["align", "pool", "precise"])
def test_empty_roi_list(tmp_path: Path, outdir: Path, command):
    path = tmp_path / "empty.json"
    path.write_text("[]\n")
    out, report = outdir / "o.safetensors", outdir / "r.json"
    result = run(command, FEATS, path, "-o", out, "--report", report)
    ok(result)
    assert "Notice:" in result.stderr and "no RoIs" in flat(result.stderr)
    tensors, meta = read_out(out)
    assert tensors["pooled"].shape == (0, 16, 7, 7)
    assert tensors["rois"].shape == (0, 5)
    assert tensors["ids"].shape == (0,)
    assert meta["count"] == "0" and json.loads(meta["ids"]) == []
    assert json.loads(report.read_text())["rows"] == []


def test_empty_roi_list_on_pyramid_from_stdin(outdir: Path):
    out = outdir / "o.safetensors"
    result = run("align", PYRAMID, "-", "-o", out, "--json", input="[]")
    ok(result)
    tensors, _ = read_out(out)
    assert tensors["pooled"].shape == (0, 8, 7, 7)
    assert tensors["levels"].shape == (0,)
    assert json.loads(result.stdout)["rois_per_level"] == {"p2": 0, "p3": 0, "p4": 0, "p5": 0}


def test_unreadable_image(tmp_path: Path, outdir: Path):
    path = tmp_path / "bad.png"
    path.write_bytes(bytes(range(256)) * 4)
    assert_fails(_run_in(outdir, path, ROIS_JSON), 1, str(path), "cannot read image", outdir=outdir)


def test_missing_image(tmp_path: Path, outdir: Path):
    path = tmp_path / "nope.png"
    assert_fails(_run_in(outdir, path, ROIS_JSON), 1, f"{path}: no such file", outdir=outdir)


def test_key_with_image_is_a_usage_error(outdir: Path):
    assert_fails(_run_in(outdir, SCENE, ROIS_JSON, "--key", "p3"), 2, "--key", outdir=outdir)


@pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is available here")
def test_cuda_unavailable(outdir: Path):
    assert_fails(_run_in(outdir, FEATS, ROIS_JSON, "--device", "cuda"), 2, "--device cuda", "not available",
                 outdir=outdir)


def test_output_is_a_directory(outdir: Path):
    target = outdir / "sub"
    target.mkdir()
    result = run("align", FEATS, ROIS_JSON, "-o", target)
    assert_fails(result, 1, str(target), "is a directory", outdir=outdir, before=["sub"])
    assert os.listdir(target) == []


@pytest.mark.parametrize("which", ["features", "rois"])
def test_output_equal_to_an_input(outdir: Path, which):
    feats, rois = outdir / "feats.safetensors", outdir / "rois.json"
    shutil.copy(FEATS, feats)
    shutil.copy(ROIS_JSON, rois)
    target = feats if which == "features" else rois
    before = target.read_bytes()
    # spelled differently, so the check must compare resolved paths
    spelled = outdir / ".." / outdir.name / target.name
    result = run("align", feats, rois, "-o", spelled)
    assert_fails(result, 1, "is also an input", outdir=outdir, before=["feats.safetensors", "rois.json"])
    assert target.read_bytes() == before


def test_report_equal_to_an_input(outdir: Path):
    rois = outdir / "rois.json"
    shutil.copy(ROIS_JSON, rois)
    result = run("pool", FEATS, rois, "-o", outdir / "o.safetensors", "--report", rois)
    assert_fails(result, 1, "is also an input", outdir=outdir, before=["rois.json"])
    assert rois.read_bytes() == ROIS_JSON.read_bytes()


def test_output_in_missing_folder(outdir: Path):
    result = run("align", FEATS, ROIS_JSON, "-o", outdir / "missing" / "o.safetensors")
    assert_fails(result, 1, "does not exist", outdir=outdir)


def test_existing_output_kept_on_error(tmp_path: Path, outdir: Path):
    out = outdir / "o.safetensors"
    out.write_bytes(b"previous result")
    bad = tmp_path / "bad.csv"
    bad.write_text("1,2,3\n")
    assert_fails(run("align", FEATS, bad, "-o", out), 1, str(bad), "row 1", outdir=outdir, before=["o.safetensors"])
    assert out.read_bytes() == b"previous result"


def test_stdin_for_both_inputs(outdir: Path):
    assert_fails(run("align", "-", "-", "-o", "-", input=b""), 2, "FEATURES and ROIS", "stdin")
    assert_fails(_run_in(outdir, "-", "-", input=b""), 2, "FEATURES and ROIS", outdir=outdir)


@pytest.mark.parametrize("size", ["0", "abc", "7x0", "-3"])
def test_bad_output_size(outdir: Path, size):
    result = _run_in(outdir, FEATS, ROIS_JSON, "--output-size", size)
    assert_fails(result, 2, "--output-size", repr(size), outdir=outdir)


@pytest.mark.parametrize(
    "args, needle",
    [
        (["--mode", "min"], "--mode"),
        (["--dtype", "int8"], "--dtype"),
        (["--box-format", "xyz"], "--box-format"),
        (["--rois-format", "xml"], "--rois-format"),
        (["--device", "tpu"], "--device"),
        (["--chunk-size", "0"], "--chunk-size"),
        (["--stride", "0"], "--stride"),
        (["--stride", "8", "--spatial-scale", "0.125"], "not both"),
    ],
)
def test_bad_options_are_usage_errors(outdir: Path, args, needle):
    assert_fails(_run_in(outdir, FEATS, ROIS_JSON, *args), 2, needle, outdir=outdir)


def test_huge_integer_id(tmp_path: Path, outdir: Path):
    path = tmp_path / "big.json"
    path.write_text('[{"id": 123456789012345678901234567890, "box": [0, 0, 100, 100]}]')
    out = outdir / "o.safetensors"
    ok(run("align", FEATS, path, "-o", out, "-q"))
    assert json.loads(read_out(out)[1]["ids"]) == [123456789012345678901234567890]


# --------------------------------------------------------------------------------------------- help, README


COMMANDS = sorted(get_command(app).commands)


def test_registered_commands():
    assert {"align", "pool", "precise", "inspect"} <= set(COMMANDS)


def test_top_level_help():
    result = run("--help")
    ok(result)
    for name in COMMANDS:
        assert name in result.stdout


@pytest.mark.parametrize("command", COMMANDS)
def test_command_help(command):
    result = run(command, "--help")
    ok(result)
    assert "Usage" in result.stdout and command in result.stdout
    assert len(result.stdout.strip().splitlines()) > 3


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_in_readme(command):
    readme = ROOT / "README.md"
    if not readme.exists():
        pytest.skip("README not written yet")
    assert f"roicli {command}" in readme.read_text()


# --------------------------------------------------------------------------------------------- real shell


def test_shell_pipeline():
    exe = shlex.quote(roicli_script())
    cmd = f"set -o pipefail; cat samples/rois.csv | {exe} align samples/feats.safetensors - -o - | {exe} inspect -"
    proc = subprocess.run(["bash", "-c", cmd], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "pooled" in proc.stdout and "5x16x7x7" in proc.stdout and "stdin" in proc.stdout
    assert "align: 5 RoIs -> -" in proc.stderr  # the summary went to stderr, not into the pipe
    assert "Traceback" not in proc.stderr


def test_shell_pipeline_bytes_match_file_output(tmp_path: Path):
    exe = roicli_script()
    out = tmp_path / "o.safetensors"
    proc = subprocess.run(
        [exe, "pool", str(FEATS), "-", "-o", "-", "--device", "cpu", "--quiet"],
        input=ROIS_CSV.read_bytes(), capture_output=True, timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == b""
    ok(run("pool", FEATS, ROIS_CSV, "-o", out, "--device", "cpu", "-q"))
    assert torch.equal(st_load(proc.stdout)["pooled"], read_out(out)[0]["pooled"])


def test_shell_error_exit_code_and_no_traceback(tmp_path: Path):
    proc = subprocess.run(
        [roicli_script(), "align", str(tmp_path / "nope.safetensors"), str(ROIS_JSON),
         "-o", str(tmp_path / "o.safetensors")],
        capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 1
    assert proc.stdout == ""
    assert proc.stderr.strip().splitlines() == [f"Error: {tmp_path / 'nope.safetensors'}: no such file"]
    assert os.listdir(tmp_path) == []


def test_refuses_binary_to_a_terminal(tmp_path: Path):
    leader, follower = pty.openpty()
    try:
        proc = subprocess.run(
            [roicli_script(), "align", str(FEATS), str(ROIS_JSON), "-o", "-"],
            stdout=follower, stderr=subprocess.PIPE, text=True, timeout=120,
        )
    finally:
        os.close(follower)
        os.close(leader)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[0].startswith("Error: refusing to write binary")
