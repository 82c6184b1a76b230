"""Issue 12, items 2 and 4: the Python API every command is a thin shell over (`roicli.pool`,
`compare`, `show`, `batch`, `load_features`, `load_rois`), its errors (API names; the CLI's flags),
the README's example (run here), and one geometry for pooling, compare and show near level edges.

Expected values come from the CLI's own outputs (the API must give the same), hand-worked maps, and
an FPN level reference written here from the paper's formula in exact arithmetic.
"""

from __future__ import annotations

import io
import json
import math
import re
import subprocess
import sys
from fractions import Fraction
from pathlib import Path

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file
from typer.testing import CliRunner

import roicli
from roicli.cli import app
from roicli.errors import InputError, RoicliError, UsageError
from roicli.io.readers import describe

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src" / "roicli"
FEATS = ROOT / "samples" / "feats.safetensors"  # [1, 16, 38, 50], stride 16
ROIS = ROOT / "samples" / "rois.json"  # car, person, sign, bike, dog
PYRAMID = ROOT / "samples" / "pyramid.safetensors"
PYRAMID_ROIS = ROOT / "samples" / "pyramid_rois.json"


def cli(*args, input=None):
    return CliRunner().invoke(app, [str(a) for a in args], input=input)


def cli_ok(*args, input=None):
    result = cli(*args, input=input)
    assert result.exit_code == 0, result.output
    return result


# ---- the README's example runs and prints what the README shows -------------------------------------------


def test_readme_api_example_runs_and_prints_what_it_shows():
    text = (ROOT / "README.md").read_text()
    section = text.split("## The Python API", 1)[1]
    m = re.search(r"```python\n(.*?)```\n\n```\n(.*?)```", section, re.S)
    assert m, "the API section has a python block followed by its output"
    proc = subprocess.run([sys.executable, "-c", m.group(1)], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == m.group(2)


def test_import_roicli_stays_light_and_batch_is_callable_after_its_module_loads():
    code = (
        "import sys, roicli\n"
        "light = 'torch' not in sys.modules\n"
        "import roicli.jobs\n"
        "print(light, callable(roicli.batch), callable(roicli.pool), sorted(roicli.__all__))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split(" ", 3)[:3] == ["True", "True", "True"]


# ---- the API gives what the commands give -------------------------------------------------------------


@pytest.mark.parametrize(
    "op, params, flags",
    [
        ("align", {"sampling_ratio": 2, "aligned": True, "mode": "max"}, ["--sampling-ratio", "2", "--aligned",
                                                                         "--mode", "max"]),
        ("pool", {"output_size": "3x5"}, ["--output-size", "3x5"]),
        ("precise", {"aligned": False}, ["--no-aligned"]),
    ],
)  # fmt: skip
def test_pool_equals_the_command(tmp_path, op, params, flags):
    out = tmp_path / "out.safetensors"
    cli_ok(op, FEATS, ROIS, "-o", out, "-q", *flags)
    want = load_file(out)
    result = roicli.pool(str(FEATS), ROIS, op=op, **params)
    assert set(result.tensors) == set(want)
    for k, t in want.items():
        torch.testing.assert_close(result.tensors[k], t, rtol=0, atol=0)
    assert result.metadata["op"] == op
    for name, value in params.items():
        if name != "output_size":
            assert result.metadata[name] == value


@pytest.mark.parametrize("fmt", ["safetensors", "npz", "pt"])
def test_save_writes_what_the_command_writes(tmp_path, fmt):
    """`PoolResult.save` writes the bytes `roicli align -o` writes (by extension or `format`),
    atomically, and never over an input."""
    cli_ok("align", FEATS, ROIS, "-o", tmp_path / f"cli.{fmt}", "-q")
    result = roicli.pool(str(FEATS), ROIS)
    assert result.save(tmp_path / f"api.{fmt}") == fmt
    cli, api = describe(str(tmp_path / f"cli.{fmt}"), values=True), describe(str(tmp_path / f"api.{fmt}"), values=True)
    assert cli[0] == api[0] and all(torch.equal(cli[2][k], api[2][k]) for k in cli[2])
    drop = ("roicli_version",)
    assert {k: v for k, v in cli[1].items() if k not in drop} == {k: v for k, v in api[1].items() if k not in drop}
    with pytest.raises(UsageError, match="format"):
        result.save(tmp_path / "x.npz", format="pt")
    with pytest.raises(RoicliError, match="is also an input"):
        result.save(ROIS)
    assert not list(tmp_path.glob(".*.tmp")) and not (tmp_path / "x.npz").exists()


def test_tensor_and_list_inputs_equal_file_inputs(tmp_path):
    gen = torch.Generator().manual_seed(0)
    fmap = torch.rand(2, 3, 20, 24, generator=gen)
    boxes = [[0, 4.5, 3.0, 60.0, 70.25], [1, 10.0, 12.0, 90.0, 75.0]]
    path = tmp_path / "f.safetensors"
    save_file({"f": fmap}, path, metadata={"stride": "4"})
    rois = tmp_path / "r.json"
    rois.write_text(json.dumps(boxes))
    want = roicli.pool(path, rois, sampling_ratio=2).tensors["pooled"]
    for feats, r in [
        (fmap, boxes),
        (fmap, torch.tensor(boxes)),
        ({"f": fmap}, torch.tensor(boxes, dtype=torch.float64)),
        (roicli.load_features(path), roicli.load_rois(rois)),
    ]:
        got = roicli.pool(feats, r, sampling_ratio=2, **({} if feats.__class__.__name__ == "Features" else
                                                        {"stride": 4})).tensors["pooled"]  # fmt: skip
        torch.testing.assert_close(got, want, rtol=0, atol=0)
    # a list of maps is a pyramid, finest first, with one scale each: the same as p2..p3 keys
    pyramid = {"p2": torch.rand(1, 2, 32, 32, generator=gen), "p3": torch.rand(1, 2, 16, 16, generator=gen)}
    big = [[0, 0.0, 0.0, 120.0, 120.0], [0, 4.0, 4.0, 20.0, 20.0]]
    a = roicli.pool(pyramid, big, canonical_size=56, canonical_level=3)
    b = roicli.pool(list(pyramid.values()), big, spatial_scale=[0.25, 0.125], canonical_size=56, canonical_level=3)
    assert a.tensors["levels"].tolist() == [1, 0]  # sqrt(area) 120 -> p3, 16 -> p2 (hand-worked)
    torch.testing.assert_close(a.tensors["pooled"], b.tensors["pooled"], rtol=0, atol=0)


def test_load_rois_takes_the_box_formats_and_refuses_bad_shapes():
    xywh = roicli.load_rois([[1.0, 2.0, 3.0, 4.0]], box_format="xywh")
    assert xywh.boxes.tolist() == [[1.0, 2.0, 4.0, 6.0]]
    with pytest.raises(InputError) as e:
        roicli.load_rois(torch.zeros(3, 6))
    assert e.value.param == "rois" and "Tensor[K, 4] or Tensor[K, 5], got shape (3, 6)" in str(e.value)


def test_compare_equals_the_command():
    want = json.loads(cli_ok("compare", PYRAMID, PYRAMID_ROIS, "-f", "json").stdout)
    got = roicli.compare(str(PYRAMID), PYRAMID_ROIS)
    assert json.loads(json.dumps(got.rows)) == want["rows"]
    assert got.headline == want["headline"]
    assert got.summary() == want["summary"]
    one = roicli.compare(str(FEATS), ROIS, explain="sign")
    text = cli_ok("compare", FEATS, ROIS, "--explain", "sign").stdout
    assert [r["id"] for r in one.rows] == ["sign"] and "\n".join(one.explanation) + "\n" == text


def test_show_equals_the_command(tmp_path):
    png = tmp_path / "s.png"
    cli_ok("show", FEATS, ROIS, "--roi", "dog", "--roi", "car", "--max-size", "300", "-o", png, "-q")
    image = roicli.show(FEATS, ROIS, ids=["dog", "car"], max_size=300)
    assert isinstance(image, Image.Image) and image.info["roicli"]["rois"] == ["dog", "car"]
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    assert buf.getvalue() == png.read_bytes()


def test_batch_equals_the_command(tmp_path):
    manifest = tmp_path / "m.csv"
    manifest.write_text(f"features,rois,output\n{FEATS},{ROIS},a.safetensors\n{PYRAMID},{PYRAMID_ROIS},b.safetensors\n")
    cli_ok("batch", manifest, "-o", tmp_path / "cli", "--op", "precise", "--no-aligned", "-q")
    summary = roicli.batch(str(manifest), tmp_path / "api", op="precise", aligned=False)
    assert summary["failed"] == 0 and summary["done"] == summary["items"] == 2
    names = sorted(p.name for p in (tmp_path / "cli").glob("*.safetensors"))
    assert names == sorted(p.name for p in (tmp_path / "api").glob("*.safetensors"))
    for name in names:
        a, b = load_file(tmp_path / "cli" / name), load_file(tmp_path / "api" / name)
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# ---- errors: the API's names in the library, the flags in the CLI -------------------------------------


@pytest.mark.parametrize(
    "call, param, api_text, cli_args, cli_text",
    [
        (lambda: roicli.pool(FEATS, ROIS, chunk_size=0), "chunk_size",
         "chunk_size: expected a positive number, got 0",
         ["align", FEATS, ROIS, "-o", "x.safetensors", "--chunk-size", "0"],
         "--chunk-size: expected a positive number, got 0"),
        (lambda: roicli.pool(FEATS, ROIS, op="pool", aligned=True), "aligned",
         "aligned: applies to op align and precise, not op pool (it rounds boxes)",
         ["batch", "-", "-o", "out", "--op", "pool", "--aligned"],
         "--aligned/--no-aligned: applies to --op align and precise, not --op pool (it rounds boxes)"),
        (lambda: roicli.pool(FEATS, ROIS, stride=8, spatial_scale=0.1), "spatial_scale",
         "give spatial_scale or stride, not both",
         ["align", FEATS, ROIS, "-o", "x.safetensors", "--stride", "8", "--spatial-scale", "0.1"],
         "give --spatial-scale or --stride, not both"),
        (lambda: roicli.pool("-", "-"), "features",
         "features and rois cannot both be read from stdin ('-')",
         ["align", "-", "-", "-o", "x.safetensors"], "FEATURES and ROIS cannot both be read from stdin ('-')"),
        (lambda: roicli.pool(FEATS, ROIS, output_size="0x3"), "output_size",
         "output_size: expected a positive size like 7 or 7x5, got '0x3'",
         ["compare", FEATS, ROIS, "--output-size", "0x3"],
         "--output-size: expected a positive size like 7 or 7x5, got '0x3'"),
        (lambda: roicli.compare(FEATS, ROIS, explain="nope"), "explain",
         "explain: no RoI with id 'nope'; ids: car, person, sign, bike, dog",
         ["compare", FEATS, ROIS, "--explain", "nope"],
         "--explain: no RoI with id 'nope'; ids: car, person, sign, bike, dog"),
        (lambda: roicli.show(FEATS, ROIS, ids=["nope"]), "ids",
         "ids: no RoI with id 'nope'; ids: car, person, sign, bike, dog",
         ["show", FEATS, ROIS, "-o", "x.png", "--roi", "nope"],
         "--roi: no RoI with id 'nope'; ids: car, person, sign, bike, dog"),
        (lambda: roicli.batch("m.csv"), "outdir", "outdir: give the output folder", ["batch", "m.csv"],
         "-o/--output: give the output folder"),
        (lambda: roicli.batch(None, "out"), "manifest",
         "give a manifest or features (with rois), not both",
         ["batch", "-o", "out"], "give a MANIFEST or --features (with --rois), not both"),
    ],
)  # fmt: skip
def test_errors_name_the_api_parameter_and_the_cli_words_the_flag(tmp_path, monkeypatch, call, param, api_text,
                                                                   cli_args, cli_text):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(RoicliError) as e:
        call()
    assert e.value.param == param and str(e.value) == api_text
    result = cli(*cli_args, input="")
    assert result.exit_code == e.value.exit_code, result.output
    assert result.stderr.strip() == f"Error: {cli_text}"


def test_unknown_api_parameter_is_refused_by_name():
    with pytest.raises(UsageError) as e:
        roicli.pool(FEATS, ROIS, sampling_rate=2)
    assert e.value.param == "sampling_rate" and str(e.value).startswith("sampling_rate: not a parameter; expected")
    with pytest.raises(UsageError) as e:
        roicli.compare(FEATS, ROIS, mode="max")  # compare shows RoI Align's geometry; its mode is not one
    assert str(e.value) == "mode: does not apply here (RoI Align's geometry only)"


def test_no_library_error_is_worded_as_a_flag():
    """Only cli/ may name a flag in an error: a library message starts with a parameter (marked
    `{name}` for the CLI), a file or a value — never `--flag`."""
    pattern = re.compile(r"(UsageError|InputError|OutputError|EngineError|ResourceError|ValidationError)\(\s*f?[\"']-")
    offenders = [
        f"{p.relative_to(SRC)}:{text[: m.start()].count(chr(10)) + 1}"
        for p in SRC.rglob("*.py")
        if "cli" not in p.relative_to(SRC).parts
        for text in [p.read_text()]
        for m in pattern.finditer(text)
    ]
    assert offenders == []


# ---- issue 12, item 4: one geometry for pooling, compare and show near level edges ------------------------


def fpn_level_reference(x1: float, y1: float, x2: float, y2: float, k_min: int, k_max: int) -> tuple[int, float]:
    """FPN eq. 1 (Lin et al. 2017) with torchvision's +1e-6, k = floor(4 + log2(sqrt(wh) / 224) + 1e-6),
    in exact arithmetic on the float32 box the ops take; also how far the value is from the edge."""
    c = [Fraction(float(torch.tensor(v, dtype=torch.float32))) for v in (x1, y1, x2, y2)]
    area = (c[2] - c[0]) * (c[3] - c[1])
    value = 4 + math.log2(area) / 2 - math.log2(224) + 1e-6  # log2 of an exact rational, in float64
    k = min(max(math.floor(value), k_min), k_max)
    return k - k_min, abs(value - round(value))


def test_levels_near_edges_are_one_geometry_for_pool_compare_and_show(tmp_path):
    gen = torch.Generator().manual_seed(12)
    maps = {f"p{k}": torch.rand(1, 2, 1024 >> k, 1024 >> k, generator=gen) for k in (2, 3, 4, 5)}
    feats = tmp_path / "pyr.safetensors"
    save_file(maps, feats)
    boxes = []
    for edge in (112.0, 224.0, 448.0):  # the p2/p3, p3/p4, p4/p5 edges
        for step in range(-12, 13):
            side = edge * (1 + step * 2.5e-7)
            boxes.append([0.0, 0.0, side, side])
            boxes.append([3.0, 5.0, 3.0 + side * 2, 5.0 + side / 2])  # same area, not square
    ids = list(range(len(boxes)))
    rois = tmp_path / "r.json"
    rois.write_text(json.dumps([{"id": i, "box": b} for i, b in zip(ids, boxes)]))

    pooled = roicli.pool(feats, rois, output_size=2).tensors["levels"].tolist()
    compared = [r["level"] for r in roicli.compare(feats, rois, output_size=2).rows]
    assert compared == pooled
    checked = 0
    for i, b in enumerate(boxes):
        want, margin = fpn_level_reference(*b, 2, 5)
        if margin > 4e-7:  # float32 arithmetic cannot move a value this far from the edge
            assert pooled[i] == want, (b, pooled[i], want)
            checked += 1
    assert checked > len(boxes) // 2
    # boxes whose float64 level differs from the float32 one: these are the ones show once drew elsewhere
    as64 = torch.tensor([[0.0, *b] for b in boxes], dtype=torch.float64)
    from roicli.ops import fpn_levels

    f64 = fpn_levels(as64, [0.25, 0.125, 0.0625, 0.03125]).tolist()
    split = [i for i in range(len(boxes)) if f64[i] != pooled[i]]
    assert split, "the sweep reaches boxes whose level depends on the dtype"
    for i in split[:4] + [0, len(boxes) - 1]:
        image = roicli.show(feats, rois, ids=[i], max_size=64)
        assert image.info["roicli"]["level"] == f"p{2 + pooled[i]}"
