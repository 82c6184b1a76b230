"""`roicli batch` end to end: outputs equal `roicli align`'s, resume, errors file, shards, Ray."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from typer.testing import CliRunner

from roicli.cli import app

runner = CliRunner()
N_GOOD = 24


def _cli(*args: str, input: str | None = None):
    return runner.invoke(app, list(args), input=input)


@pytest.fixture()
def job(tmp_path: Path) -> dict:
    """A few dozen items: feature files of varying size, RoI files in several formats, bad rows."""
    gen = torch.Generator().manual_seed(0)
    (tmp_path / "feats").mkdir()
    (tmp_path / "rois").mkdir()
    rows = ["features,rois,output,stride"]
    for i in range(N_GOOD):
        h, w = 10 + i % 5, 12 + i % 7
        save_file({"x": torch.rand(1, 4, h, w, generator=gen)}, tmp_path / "feats" / f"f{i:02d}.safetensors",
                  metadata={"stride": "8"})
        boxes = (torch.rand(3 + i % 4, 2, generator=gen) * torch.tensor([w * 8.0, h * 8.0])).tolist()
        rois = [[x, y, x + 20 + 3 * k, y + 15 + 2 * k] for k, (x, y) in enumerate(boxes)]
        if i % 3 == 0:
            (tmp_path / "rois" / f"f{i:02d}.json").write_text(json.dumps(rois))
        elif i % 3 == 1:
            (tmp_path / "rois" / f"f{i:02d}.csv").write_text(
                "x1,y1,x2,y2\n" + "".join(",".join(map(str, r)) + "\n" for r in rois)
            )
        else:
            (tmp_path / "rois" / f"f{i:02d}.json").write_text(json.dumps({"rois": [{"box": r, "id": 100 + k}
                                                                                   for k, r in enumerate(rois)]}))
        ext = "csv" if i % 3 == 1 else "json"
        stride = "16" if i == 5 else ""  # a per-row override
        rows.append(f"feats/f{i:02d}.safetensors,rois/f{i:02d}.{ext},,{stride}")
    # Bad rows: missing features, corrupt tensor file, bad boxes (NaN), batch index out of range.
    (tmp_path / "feats" / "corrupt.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json")
    (tmp_path / "rois" / "nan.json").write_text('[[1, 2, "nan", 4]]')
    (tmp_path / "rois" / "batch.json").write_text("[[3, 1, 2, 30, 40]]")
    bad = [
        "feats/missing.safetensors,rois/f00.json,missing.safetensors,",
        "feats/corrupt.safetensors,rois/f00.json,,",
        "feats/f00.safetensors,rois/nan.json,nan.safetensors,",
        "feats/f01.safetensors,rois/batch.json,batch.safetensors,",
    ]
    bad_at = [7, 13, 19, 26]
    for pos, row in zip(bad_at, bad):
        rows.insert(pos + 1, row)  # +1 for the header
    (tmp_path / "manifest.csv").write_text("\n".join(rows) + "\n")
    items = [r.split(",") for r in rows[1:]]
    return {"dir": tmp_path, "items": items, "bad": bad_at}


def test_outputs_equal_roicli_align_and_errors_list_the_bad_rows(job, monkeypatch):
    d = job["dir"]
    monkeypatch.chdir(d)
    res = _cli("batch", "manifest.csv", "-o", "out", "--json")
    assert res.exit_code == 1, res.output  # some items failed
    summary = json.loads(res.stdout)
    assert (summary["done"], summary["failed"], summary["items"]) == (N_GOOD, 4, N_GOOD + 4)
    errors = [json.loads(line) for line in (d / "out" / "errors.jsonl").read_text().splitlines()]
    assert [e["item"] for e in errors] == job["bad"]
    assert "no such file" in errors[0]["error"]
    assert "not a safetensors file" in errors[1]["error"]
    assert "'nan'" in errors[2]["error"] and "finite" in errors[2]["error"]
    assert "batch index 3" in errors[3]["error"]
    # Each good item's output is byte for byte what `roicli align` writes for it.
    for features, rois, _, stride in (it for i, it in enumerate(job["items"]) if i not in job["bad"]):
        stem = Path(features).stem
        extra = ["--stride", stride] if stride else []
        one = _cli("align", features, rois, "-o", f"single_{stem}.safetensors", "-q", *extra)
        assert one.exit_code == 0, one.output
        assert (d / f"single_{stem}.safetensors").read_bytes() == (d / "out" / f"{stem}.safetensors").read_bytes()
    meta = json.loads(_cli("inspect", "out/f05.safetensors", "--json").stdout)["metadata"]
    assert meta["spatial_scale"] == "0.0625"  # the row's stride 16 won over the file's 8


def test_resume_after_a_killed_job_redoes_nothing_complete(job, monkeypatch):
    d = job["dir"]
    monkeypatch.chdir(d)
    lines = (d / "manifest.csv").read_text().splitlines()
    (d / "first_half.csv").write_text("\n".join(lines[:12]) + "\n")  # header + 11 rows (one bad)
    assert _cli("batch", "first_half.csv", "-o", "out", "-q").exit_code == 1
    done_before = {p.name: p.stat().st_mtime_ns for p in (d / "out").glob("*.safetensors")}
    assert len(done_before) == 10
    # What a kill mid-write leaves: a temp file, never a partial output under the real name.
    (d / "out" / ".f11.safetensors.abc123.tmp").write_bytes(b"partial")
    os.utime(d / "out" / "f00.safetensors", ns=(1, 1))  # mark: must not be rewritten
    res = _cli("batch", "manifest.csv", "-o", "out", "--json")
    summary = json.loads(res.stdout)
    assert summary["skipped"] == 10 and summary["done"] == N_GOOD - 10 and summary["failed"] == 4
    assert (d / "out" / "f00.safetensors").stat().st_mtime_ns == 1
    after = {p.name for p in (d / "out").glob("*.safetensors")}
    assert len(after) == N_GOOD
    # --overwrite redoes everything.
    res = _cli("batch", "manifest.csv", "-o", "out", "--overwrite", "--json")
    assert json.loads(res.stdout)["done"] == N_GOOD
    assert (d / "out" / "f00.safetensors").stat().st_mtime_ns != 1


def test_on_error_stop(job, monkeypatch):
    monkeypatch.chdir(job["dir"])
    res = _cli("batch", "manifest.csv", "-o", "out", "--on-error", "stop", "--json")
    assert res.exit_code == 1
    summary = json.loads(res.stdout)
    assert summary["stopped_on_error"] and summary["done"] == job["bad"][0] and summary["failed"] == 1


def test_shards_and_index_give_back_every_roi(job, monkeypatch):
    d = job["dir"]
    monkeypatch.chdir(d)
    res = _cli("batch", "manifest.csv", "-o", "shards", "--shard-rois", "10", "--json")
    assert res.exit_code == 1
    assert _cli("batch", "manifest.csv", "-o", "single", "-q").exit_code == 1
    index = [json.loads(line) for line in (d / "shards" / "index.jsonl").read_text().splitlines()]
    shards = {name: load_file(d / "shards" / name) for name in {r["shard"] for r in index}}
    assert all(10 <= s["pooled"].shape[0] < 10 + 6 for s in list(shards.values())[:-1])
    seen = 0
    for stem_file in sorted((d / "single").glob("f*.safetensors")):
        single = load_file(stem_file)
        ids = json.loads(json.loads(_cli("inspect", str(stem_file), "--json").stdout)["metadata"]["ids"])
        rows = [r for r in index if r["output"] == stem_file.name]
        assert [r["id"] for r in rows] == ids
        for k, r in enumerate(rows):
            assert torch.equal(shards[r["shard"]]["pooled"][r["row"]], single["pooled"][k])
            assert int(shards[r["shard"]]["items"][r["row"]]) == r["item"]
            seen += 1
    assert seen == len(index) == sum(s["pooled"].shape[0] for s in shards.values())
    # Resume in shard mode: nothing left to do.
    res = _cli("batch", "manifest.csv", "-o", "shards", "--shard-rois", "10", "--json")
    assert json.loads(res.stdout)["skipped"] == N_GOOD


def test_glob_form_and_stdin_manifest(job, monkeypatch):
    d = job["dir"]
    monkeypatch.chdir(d)
    for p in (d / "rois").glob("f*.csv"):
        p.unlink()
    res = _cli("batch", "--features", "feats/f*.safetensors", "--rois", "rois/{stem}.json", "-o", "g", "--json")
    summary = json.loads(res.stdout)
    assert summary["done"] == N_GOOD - N_GOOD // 3 and summary["failed"] == N_GOOD // 3
    manifest = '{"features": "feats/f00.safetensors", "boxes": [[0, 0, 40, 30]], "output": "inline.safetensors"}\n'
    res = _cli("batch", "-", "-o", "s", "--op", "pool", "--json", input=manifest)
    assert res.exit_code == 0, res.output
    out = load_file(d / "s" / "inline.safetensors")
    assert out["pooled"].shape == (1, 4, 7, 7)


def test_parallel_workers_give_the_same_files(job, monkeypatch):
    d = job["dir"]
    monkeypatch.chdir(d)
    _cli("batch", "manifest.csv", "-o", "w1", "-q")
    _cli("batch", "manifest.csv", "-o", "w2", "--workers", "2", "-q")
    names = sorted(p.name for p in (d / "w1").glob("*.safetensors"))
    assert len(names) == N_GOOD
    for n in names:
        assert (d / "w1" / n).read_bytes() == (d / "w2" / n).read_bytes()


def test_bad_invocations(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    res = _cli("batch", "-o", "x")
    assert res.exit_code == 2 and "MANIFEST or --features" in res.output
    (tmp_path / "m.csv").write_text("feature,roi\na,b\n")
    res = _cli("batch", "m.csv", "-o", "x")
    assert res.exit_code == 1 and "'features' column" in res.output
    (tmp_path / "m.jsonl").write_text('{"features": "a.safetensors"}\n')
    res = _cli("batch", "m.jsonl", "-o", "x")
    assert res.exit_code == 1 and "line 1" in res.output and "rois" in res.output


def test_ray_engine_writes_identical_files(job, monkeypatch):
    pytest.importorskip("ray")
    d = job["dir"]
    monkeypatch.chdir(d)
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    _cli("batch", "manifest.csv", "-o", "local", "-q")
    res = _cli("batch", "manifest.csv", "-o", "ray", "--engine", "ray", "--json")
    assert res.exit_code == 1, res.output
    assert json.loads(res.stdout.strip().splitlines()[-1])["done"] == N_GOOD
    _cli("batch", "manifest.csv", "-o", "local_sh", "--shard-rois", "12", "-q")
    _cli("batch", "manifest.csv", "-o", "ray_sh", "--shard-rois", "12", "--engine", "ray", "-q")
    for a, b in (("local", "ray"), ("local_sh", "ray_sh")):
        names = sorted(p.name for p in (d / a).iterdir() if p.suffix in (".safetensors", ".jsonl"))
        assert names == sorted(p.name for p in (d / b).iterdir() if p.suffix in (".safetensors", ".jsonl"))
        for n in names:
            assert (d / a / n).read_bytes() == (d / b / n).read_bytes(), n
