"""Issue 12 item 3: output writers chosen by the extension (.safetensors, .npz, .pt, .parquet), each
read back with that format's own standard reader, and `roicli inspect` on every format."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from test_cli import (
    FEATS,
    PYRAMID,
    PYRAMID_ROIS,
    ROIS_JSON,
    SAMPLE_BOXES,
    SAMPLE_ROIS,
    assert_fails,
    ok,
    rois_tensor,
    run,
    sample_features,
)

from roicli.ops import roi_align


def expected() -> torch.Tensor:
    return roi_align(sample_features(), rois_tensor(SAMPLE_BOXES), 7, 1 / 16, -1, False)


def test_safetensors_metadata_is_strings_without_double_encoding(tmp_path: Path):
    out = tmp_path / "o.safetensors"
    ok(run("align", FEATS, ROIS_JSON, "-o", out, "-q"))
    t = load_file(out)
    assert torch.equal(t["pooled"], expected())
    from test_cli import read_out

    _, meta = read_out(out)
    assert meta["mode"] == "avg" and meta["aligned"] == "false" and json.loads(meta["ids"])[0] == "car"


def test_npz_reads_back_with_numpy_without_pickle(tmp_path: Path):
    out = tmp_path / "o.npz"
    ok(run("align", FEATS, ROIS_JSON, "-o", out, "-q"))
    with np.load(out, allow_pickle=False) as z:
        assert np.array_equal(z["pooled"], expected().numpy())
        assert np.array_equal(z["rois"], rois_tensor(SAMPLE_BOXES).numpy())
        meta = json.loads(str(z["__metadata__"]))
    assert meta["op"] == "align" and meta["aligned"] is False and meta["sampling_ratio"] == -1
    assert meta["ids"] == [r["id"] for r in SAMPLE_ROIS] and meta["output_size"] == "7x7"


def test_pt_loads_with_weights_only_and_native_metadata(tmp_path: Path):
    out = tmp_path / "o.pt"
    ok(run("align", FEATS, ROIS_JSON, "-o", out, "-q"))
    obj = torch.load(out, weights_only=True)
    assert torch.equal(obj["pooled"], expected())
    meta = obj["metadata"]
    assert meta["aligned"] is False and meta["spatial_scale"] == 1 / 16 and meta["count"] == 5
    assert meta["labels"] == [r["label"] for r in SAMPLE_ROIS]


def test_parquet_one_row_per_roi(tmp_path: Path):
    pq = pytest.importorskip("pyarrow.parquet")
    out = tmp_path / "o.parquet"
    ok(run("align", PYRAMID, PYRAMID_ROIS, "-o", out, "-q"))
    table = pq.read_table(out)
    boxes = json.loads(PYRAMID_ROIS.read_text())
    assert table.num_rows == len(boxes)
    meta = json.loads(table.schema.metadata[b"roicli"])
    shape = meta["pooled_shape"]
    assert shape == [len(boxes), 8, 7, 7] and meta["op"] == "align"
    pooled = np.asarray(table.column("pooled").combine_chunks().flatten()).reshape(shape)
    from roicli.io.features import features_from_safetensors
    from roicli.ops import fpn_levels, pool_levels

    feats = features_from_safetensors(PYRAMID.read_bytes(), "p")
    rois = rois_tensor([b[-4:] for b in boxes])
    levels = fpn_levels(rois, feats.scales)
    want = pool_levels(lambda f, r, s: roi_align(f, r, 7, s), feats.levels, rois, levels, feats.scales)
    assert np.array_equal(pooled, want.numpy())
    assert table.column("x2").to_pylist() == [float(b[-2]) for b in boxes]
    assert table.column("level").to_pylist() == levels.tolist()


def test_parquet_without_pyarrow_names_the_extra(tmp_path: Path, monkeypatch):
    monkeypatch.setitem(sys.modules, "pyarrow", None)
    monkeypatch.setitem(sys.modules, "pyarrow.parquet", None)
    assert_fails(run("align", FEATS, ROIS_JSON, "-o", tmp_path / "o.parquet"), 2, "roicli[parquet]")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("suffix", [".npz", ".parquet"])
def test_bfloat16_where_the_format_has_none_is_refused(tmp_path: Path, suffix: str):
    pytest.importorskip("pyarrow")
    assert_fails(run("align", FEATS, ROIS_JSON, "-o", tmp_path / f"o{suffix}", "--dtype", "bfloat16"), 2,
                 "bfloat16", ".safetensors or .pt")
    ok(run("align", FEATS, ROIS_JSON, "-o", tmp_path / "o.pt", "--dtype", "bfloat16", "-q"))


@pytest.mark.parametrize("suffix", [".safetensors", ".npz", ".pt", ".parquet"])
def test_inspect_reads_every_format(tmp_path: Path, suffix: str):
    if suffix == ".parquet":
        pytest.importorskip("pyarrow")
    out = tmp_path / f"o{suffix}"
    ok(run("align", FEATS, ROIS_JSON, "-o", out, "-q"))
    result = run("inspect", out, "--json", "--values")
    ok(result)
    doc = json.loads(result.stdout)
    pooled = next(r for r in doc["tensors"] if r["key"] == "pooled")
    assert pooled["shape"] == ([5, 16 * 49] if suffix == ".parquet" else [5, 16, 7, 7])
    assert pooled["max"] == pytest.approx(float(expected().max()))
    meta = doc["metadata"]
    assert meta["op"] == "align" and str(meta["count"]) == "5"


@pytest.mark.parametrize("fmt", ["safetensors", "npz", "pt", "parquet"])
def test_format_option_writes_stdout_in_any_format_and_inspect_reads_it(tmp_path: Path, fmt: str):
    """Issue 12 item 3 ("by the output file's extension, or --format"): `-o - --format F` writes F on
    stdout, and `inspect -` tells the format from the bytes; the same as the file `-o o.F` (and as
    `-o o.F --format F`)."""
    if fmt == "parquet":
        pytest.importorskip("pyarrow")
    piped = run("align", FEATS, ROIS_JSON, "-o", "-", "--format", fmt, "-q")
    ok(piped)
    ok(run("align", FEATS, ROIS_JSON, "-o", tmp_path / f"o.{fmt}", "--format", fmt, "-q"))
    from_stdin = run("inspect", "-", "--json", "--values", input=piped.stdout_bytes)
    from_file = run("inspect", tmp_path / f"o.{fmt}", "--json", "--values")
    ok(from_stdin)
    ok(from_file)
    a, b = json.loads(from_stdin.stdout), json.loads(from_file.stdout)
    assert a["file"] == "stdin" and a["tensors"] == b["tensors"] and a["metadata"] == b["metadata"]
    assert next(r for r in a["tensors"] if r["key"] == "pooled")["max"] == pytest.approx(float(expected().max()))


def test_format_option_must_agree_with_the_extension(tmp_path: Path):
    out = tmp_path / "o.npz"
    assert_fails(run("align", FEATS, ROIS_JSON, "-o", out, "--format", "pt"), 2, "--format pt", "o.npz", "*.pt")
    assert not out.exists()
