"""`roicli batch` end to end: outputs equal `roicli align`'s, resume, errors file, shards, Ray."""

from __future__ import annotations

import errno
import importlib.util
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from typer.testing import CliRunner

from roicli.cli import app
from roicli.io.readers import describe

runner = CliRunner()
N_GOOD = 24


def _cli(*args: str, input: str | None = None):
    return runner.invoke(app, list(args), input=input)


def _split(path: Path) -> tuple[dict, bytes]:
    """(metadata, tensor bytes) of a safetensors file."""
    data = path.read_bytes()
    n = int.from_bytes(data[:8], "little")
    header = json.loads(data[8 : 8 + n])
    return header.get("__metadata__", {}), header_free(header, data[8 + n :])


def header_free(header: dict, blob: bytes) -> bytes:
    return json.dumps({k: v for k, v in header.items() if k != "__metadata__"}, sort_keys=True).encode() + blob


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
    # Each good item's output is what `roicli align` writes for it (the paths made absolute by the
    # driver), tensor bytes and metadata, plus the batch record that resume verifies.
    for features, rois, _, stride in (it for i, it in enumerate(job["items"]) if i not in job["bad"]):
        stem = Path(features).stem
        extra = ["--stride", stride] if stride else []
        one = _cli("align", str(d / features), str(d / rois), "-o", f"single_{stem}.safetensors", "-q", *extra)
        assert one.exit_code == 0, one.output
        single, batched = _split(d / f"single_{stem}.safetensors"), _split(d / "out" / f"{stem}.safetensors")
        assert single[1] == batched[1]  # the tensors' bytes
        record = json.loads(batched[0].pop("roicli_batch"))
        assert single[0] == batched[0]
        assert record["inputs"][0][:2] == [str(d / features), (d / features).stat().st_size]
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
    # A real process, run from another folder (issue 9 item 20: paths resolved by the driver, the
    # same bytes, and stdout carrying only the summary line, whatever Ray logs).
    res = subprocess.run(
        [ROICLI, "batch", "../manifest.csv", "-o", "../ray", "--engine", "ray", "--json"],
        cwd=d / "feats", capture_output=True, text=True, timeout=300,
    )
    assert res.returncode == 1, res.stderr
    assert len(res.stdout.splitlines()) == 1 and json.loads(res.stdout)["done"] == N_GOOD, res.stdout
    _cli("batch", "manifest.csv", "-o", "local_sh", "--shard-rois", "12", "-q")
    _cli("batch", "manifest.csv", "-o", "ray_sh", "--shard-rois", "12", "--engine", "ray", "-q")
    for a, b in (("local", "ray"), ("local_sh", "ray_sh")):
        names = sorted(p.name for p in (d / a).iterdir() if p.suffix in (".safetensors", ".jsonl"))
        assert names == sorted(p.name for p in (d / b).iterdir() if p.suffix in (".safetensors", ".jsonl"))
        for n in names:
            assert (d / a / n).read_bytes() == (d / b / n).read_bytes(), n


# ----------------------------------------------------------------------------- issue 9: batch under faults

ROICLI = str(Path(sys.executable).parent / "roicli")


def _summary(res) -> dict:
    assert res.stdout.strip(), res.output
    return json.loads(res.stdout.strip().splitlines()[-1])


def test_resume_redoes_truncated_garbage_and_other_option_outputs(job, monkeypatch):
    """Issue 9 item 2: resume skips only complete outputs made from the same inputs and options."""
    d = job["dir"]
    monkeypatch.chdir(d)
    assert _cli("batch", "manifest.csv", "-o", "out", "-q").exit_code == 1
    out = d / "out"
    whole = (out / "f00.safetensors").read_bytes()
    (out / "f00.safetensors").write_bytes(whole[: len(whole) // 2])  # truncated
    (out / "f01.safetensors").write_bytes(os.urandom(len((out / "f01.safetensors").read_bytes())))  # garbage
    os.utime(d / "feats" / "f02.safetensors", ns=(10**18, 10**18))  # an input changed since
    res = _cli("batch", "manifest.csv", "-o", "out", "--json")
    s = _summary(res)
    assert (s["done"], s["skipped"], s["redone"]) == (3, N_GOOD - 3, 3), s
    assert s["redo_reasons"] == {"incomplete or unreadable": 2, "inputs changed": 1}
    assert (out / "f00.safetensors").read_bytes() == whole
    # Other options: everything is redone, and the files say so.
    res = _cli("batch", "manifest.csv", "-o", "out", "--op", "pool", "--output-size", "14", "--json")
    s = _summary(res)
    assert (s["done"], s["skipped"], s["redone"]) == (N_GOOD, 0, N_GOOD) and s["redo_reasons"] == {
        "options changed": N_GOOD
    }
    assert load_file(out / "f03.safetensors")["pooled"].shape[-2:] == (14, 14)
    res = _cli("batch", "manifest.csv", "-o", "out", "--op", "pool", "--output-size", "14")
    assert f"0 done, {N_GOOD} skipped (verified complete)" in res.stderr


def test_same_bytes_whether_paths_are_relative_or_absolute(job, monkeypatch):
    """Issue 9 item 20: paths are resolved by the driver; an item's bytes do not depend on how its
    paths were written (nor on the folder the job ran from)."""
    d = job["dir"]
    rows = (d / "manifest.csv").read_text().splitlines()
    absolute = [rows[0]] + [
        ",".join(str(d / v) if k < 2 and v else v for k, v in enumerate(r.split(","))) for r in rows[1:]
    ]
    (d / "abs.csv").write_text("\n".join(absolute) + "\n")
    monkeypatch.chdir(d)
    _cli("batch", "manifest.csv", "-o", "rel", "-q")
    monkeypatch.chdir(d / "feats")
    _cli("batch", str(d / "abs.csv"), "-o", str(d / "abs"), "-q")
    names = sorted(p.name for p in (d / "rel").glob("*.safetensors"))
    assert len(names) == N_GOOD
    for n in names:
        assert (d / "rel" / n).read_bytes() == (d / "abs" / n).read_bytes(), n


def test_lock_refuses_a_second_run_and_takes_over_a_dead_one(job, monkeypatch):
    """Issue 9 item 17: one run at a time per OUTDIR; a stale lock from a dead process is taken over."""
    from roicli.jobs import LOCK_NAME, OutdirLock

    d = job["dir"]
    monkeypatch.chdir(d)
    (d / "out").mkdir()
    held = OutdirLock(d / "out")
    assert held.acquire() is None
    try:
        res = _cli("batch", "manifest.csv", "-o", "out", "--json")
        assert res.exit_code == 1 and not res.stdout
        assert f"another roicli batch is writing here (pid {os.getpid()} on {socket.gethostname()}" in res.stderr
        assert len(res.stderr.strip().splitlines()) == 1
        assert not list((d / "out").glob("*.safetensors"))
    finally:
        held.release()
    dead = subprocess.Popen(["true"])
    dead.wait()
    (d / "out" / LOCK_NAME).write_text(json.dumps({"pid": dead.pid, "host": socket.gethostname(), "started": "x"}))
    res = _cli("batch", "manifest.csv", "-o", "out")
    assert res.exit_code == 1 and _count_outputs(d / "out") == N_GOOD  # (1: the bad rows)
    assert f"took over the lock of a run that is gone (pid {dead.pid}" in res.stderr
    assert not (d / "out" / LOCK_NAME).exists()


def _count_outputs(folder: Path) -> int:
    return len(list(folder.glob("*.safetensors")))


def test_overwrite_in_shard_mode_lists_each_roi_once(job, monkeypatch):
    """Issue 9 item 18: --overwrite (and a re-run with another --shard-rois) leaves an index that
    lists each (item, id) once, pointing at shards that exist, and no stale shard."""
    d = job["dir"]
    monkeypatch.chdir(d)
    _cli("batch", "manifest.csv", "-o", "sh", "--shard-rois", "10", "-q")
    first = (d / "sh" / "index.jsonl").read_text()
    for size in ("7", "25"):
        _cli("batch", "manifest.csv", "-o", "sh", "--shard-rois", size, "--overwrite", "-q")
        index = [json.loads(line) for line in (d / "sh" / "index.jsonl").read_text().splitlines()]
        keys = [(r["item"], r["id"]) for r in index]
        assert len(keys) == len(set(keys)) == len(first.splitlines())
        shards = {r["shard"] for r in index}
        on_disk = {p.name for p in (d / "sh").glob("shard-*.safetensors")}
        assert shards == on_disk
        for name in shards:
            rows = [r for r in index if r["shard"] == name]
            assert load_file(d / "sh" / name)["pooled"].shape[0] == len(rows)


def test_shard_writes_honour_fsync(job, monkeypatch):
    """Issue 12 (batch part): --fsync means the same in every write path, shards included."""
    d = job["dir"]
    monkeypatch.chdir(d)
    calls = []
    real = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (calls.append(fd), real(fd)))
    _cli("batch", "manifest.csv", "-o", "a", "--shard-rois", "40", "-q")
    assert calls == []
    _cli("batch", "manifest.csv", "-o", "b", "--shard-rois", "40", "--fsync", "-q")
    assert len(calls) >= 2 * len(list((d / "b").glob("shard-*.safetensors"))) + 1


def test_dead_runs_temp_files_are_removed_on_start(job, monkeypatch):
    """Issue 9 item 19: the hidden temp files a killed run leaves are cleaned up by the next run."""
    d = job["dir"]
    monkeypatch.chdir(d)
    (d / "out").mkdir()
    (d / "out" / ".f11.safetensors.abc123_x.tmp").write_bytes(b"partial")
    res = _cli("batch", "manifest.csv", "-o", "out")
    assert "removed 1 temp file(s) left by a run that did not finish" in res.stderr
    assert not list((d / "out").glob(".*.tmp"))


def _manifest_for_signals(folder: Path, n: int = 600) -> Path:
    gen = torch.Generator().manual_seed(0)
    save_file({"x": torch.rand(1, 64, 64, 64, generator=gen)}, folder / "f.safetensors", metadata={"stride": "8"})
    xy = torch.rand(300, 2, generator=gen) * 400
    (folder / "r.json").write_text(json.dumps(torch.cat([xy, xy + 60], 1).tolist()))
    rows = "".join(f"f.safetensors,r.json,o{i:04d}.safetensors\n" for i in range(n))
    (folder / "m.csv").write_text("features,rois,output\n" + rows)
    return folder / "m.csv"


def _children(pid: int) -> list[int]:
    kids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = (Path("/proc") / entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                kids.append(int(entry))
    return kids


def _running(pid: int) -> bool:
    try:
        return (Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _start_and_signal(folder: Path, sig: int) -> tuple[int, list[int]]:
    """Start `roicli batch --workers 2`, wait until both workers write, send `sig` to the driver;
    returns its exit code and its children's pids."""
    manifest = _manifest_for_signals(folder)
    driver = subprocess.Popen(
        [ROICLI, "batch", str(manifest), "-o", str(folder / "out"), "--workers", "2", "-q"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and driver.poll() is None:
            if (folder / "out").is_dir() and _count_outputs(folder / "out") >= 4 and len(_children(driver.pid)) >= 2:
                break
            time.sleep(0.1)
        assert driver.poll() is None, "the job ended before the signal; make it longer"
        kids = _children(driver.pid)
        driver.send_signal(sig)
        code = driver.wait(30)
    finally:
        if driver.poll() is None:
            driver.kill()
    return code, kids


def _gone(pids: list[int], seconds: float = 15) -> list[int]:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and any(_running(p) for p in pids):
        time.sleep(0.1)
    return [p for p in pids if _running(p)]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_sigterm_to_the_driver_stops_its_workers(tmp_path):
    """Issue 9 item 4: SIGTERM to `batch --workers 2` exits 143 and leaves no worker running, and no
    temp file behind."""
    code, kids = _start_and_signal(tmp_path, signal.SIGTERM)
    assert code == 143
    assert len(kids) >= 2 and _gone(kids) == []
    assert not list((tmp_path / "out").glob(".*.tmp"))


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_workers_die_with_a_killed_driver(tmp_path):
    """Issue 9 item 19: kill -9 of the driver takes its worker processes with it."""
    code, kids = _start_and_signal(tmp_path, signal.SIGKILL)
    assert code == -signal.SIGKILL
    assert len(kids) >= 2 and _gone(kids) == []


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_the_reaper_ends_a_killed_drivers_descendants(tmp_path):
    """Issue 9 item 19 (a local Ray started by the job): the reaper `start_reaper` spawns ends every
    descendant of a driver killed outright, its grandchildren included, and nothing else."""
    driver_code = (
        "import subprocess, sys, time\n"
        "from roicli.jobs import start_reaper\n"
        "reaper = start_reaper()\n"
        "sleeper = [sys.executable, '-c', 'import time; time.sleep(120)']\n"
        "middle = subprocess.Popen([sys.executable, '-c', 'import subprocess, sys; "
        "p = subprocess.Popen(sys.argv[1:]); print(p.pid, flush=True); p.wait()', *sleeper], stdout=subprocess.PIPE)\n"
        "print(reaper.pid, middle.pid, middle.stdout.readline().decode().strip(), flush=True)\n"
        "time.sleep(120)\n"
    )
    bystander = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    driver = subprocess.Popen([sys.executable, "-c", driver_code], stdout=subprocess.PIPE)
    try:
        reaper, middle, grandchild = map(int, driver.stdout.readline().split())
        deadline = time.monotonic() + 20  # the reaper polls every 0.5 s: wait until it has seen both
        while time.monotonic() < deadline and not {middle, grandchild} <= set(_children(driver.pid)) | {grandchild}:
            time.sleep(0.1)
        time.sleep(1.5)
        driver.kill()
        driver.wait(10)
        assert _gone([middle, grandchild, reaper], 20) == [], (middle, grandchild, reaper)
        assert bystander.poll() is None  # not a descendant: left alone
    finally:
        for p in (driver, bystander):
            p.kill()


def _descendants(pid: int) -> list[int]:
    found, todo = [], [pid]
    while todo:
        kids = _children(todo.pop())
        found += kids
        todo += kids
    return found


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_a_ray_head_that_dies_mid_run_gives_one_line_soon(tmp_path):
    """Issue 9 (Ray): the cluster's head (GCS) killed mid-run: the driver says so in one line within
    seconds (Ray alone would end it after a minute, silently), exit 1, no temp file left, nothing of
    Ray's on stderr, and a re-run resumes."""
    pytest.importorskip("ray")
    manifest = _manifest_for_signals(tmp_path, 3000)
    out = tmp_path / "out"
    driver = subprocess.Popen([ROICLI, "batch", str(manifest), "-o", str(out), "--engine", "ray", "-q"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and driver.poll() is None and (not out.is_dir() or _count_outputs(out) < 20):
            time.sleep(0.2)
        gcs = [p for p in _descendants(driver.pid) if "gcs_server" in (Path("/proc") / str(p) / "cmdline").read_bytes()
               .decode(errors="replace")]  # fmt: skip
        assert driver.poll() is None and gcs, "the job ended before the head was killed; make it longer"
        killed = time.monotonic()
        for p in gcs:
            os.kill(p, signal.SIGKILL)
        _, stderr = driver.communicate(timeout=50)
        took = time.monotonic() - killed
    finally:
        if driver.poll() is None:
            driver.kill()
    assert driver.returncode == 1 and took < 40, (driver.returncode, took)
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: Ray cluster: its head") and "Ray's log" in lines[0], stderr
    assert not list(out.glob(".*.tmp"))
    done = _count_outputs(out)
    assert 20 <= done < 3000


def test_disk_full_is_recorded_and_ends_the_job_with_a_clear_message(job, monkeypatch):
    """Issue 9 items 9 and 21: a full disk in `batch` ends in a one-line message (not an internal
    error), with what failed in errors.jsonl and the complete outputs kept."""
    d = job["dir"]
    monkeypatch.chdir(d)
    real, writes = os.fdopen, []

    class Full:
        def __init__(self, fd, *a, **k):
            self.f = real(fd, *a, **k)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.f.close()

        def write(self, data):
            raise OSError(errno.ENOSPC, "No space left on device")

    def fdopen(fd, mode="r", *a, **k):
        writes.append(mode)
        return Full(fd, mode, *a, **k) if "w" in mode and len(writes) > 5 else real(fd, mode, *a, **k)

    monkeypatch.setattr(os, "fdopen", fdopen)
    res = _cli("batch", "manifest.csv", "-o", "out", "--json", "--workers", "1")
    assert res.exit_code == 1 and not res.stdout
    message = res.stderr.strip()
    assert message.startswith("Error: ") and "the disk is full" in message and "internal error" not in message
    assert len(message.splitlines()) == 1
    errors = [json.loads(line) for line in (d / "out" / "errors.jsonl").read_text().splitlines()]
    assert any("No space left on device" in e["error"] for e in errors)
    assert _count_outputs(d / "out") == 5
    assert not list((d / "out").glob(".*.tmp"))


def test_inverted_boxes_warn_per_item_and_strict_fails_them(tmp_path, monkeypatch):
    """Issue 9 item 21: an inverted box in a batch row gives align's warning, recorded per item;
    --strict makes it an error of that item."""
    monkeypatch.chdir(tmp_path)
    save_file({"x": torch.rand(1, 2, 8, 8)}, tmp_path / "f.safetensors")
    manifest = (
        '{"features": "f.safetensors", "boxes": [[1, 1, 5, 5]], "output": "good.safetensors"}\n'
        '{"features": "f.safetensors", "boxes": [[5, 5, 1, 1], [0, 0, 4, 4]], "output": "bad.safetensors"}\n'
    )
    (tmp_path / "m.jsonl").write_text(manifest)
    res = _cli("batch", "m.jsonl", "-o", "out", "--json")
    s = _summary(res)
    assert res.exit_code == 0 and s["warnings"] == 1 and s["done"] == 2
    warned = [json.loads(line) for line in (tmp_path / "out" / "warnings.jsonl").read_text().splitlines()]
    assert [w["item"] for w in warned] == [1] and "inverted" in warned[0]["warning"]
    one = _cli("align", "f.safetensors", "-", "-o", "one.safetensors", input="[[5, 5, 1, 1], [0, 0, 4, 4]]")
    assert warned[0]["warning"] in one.stderr.replace("\n", " ")
    res = _cli("batch", "m.jsonl", "-o", "strict", "--strict", "--json")
    s = _summary(res)
    assert res.exit_code == 1 and (s["done"], s["failed"]) == (1, 1)
    errors = [json.loads(line) for line in (tmp_path / "strict" / "errors.jsonl").read_text().splitlines()]
    assert errors[0]["item"] == 1 and "inverted" in errors[0]["error"]


def test_workers_never_oversubscribe_the_cores(job, monkeypatch):
    """Issue 9 item 22: workers x torch threads = cores, whatever --workers says; 0 is auto."""
    from roicli.jobs import plan_workers, usable_cores

    for cores in (1, 2, 3, 8, 64):
        for requested in (0, 1, 2, 3, 16):
            n, threads = plan_workers(requested, cores)
            assert n >= 1 and threads >= 1 and n * threads <= cores
            assert cores - n * threads < n  # the cores are used
    assert plan_workers(0, 2) == (1, 2)
    monkeypatch.chdir(job["dir"])
    s = _summary(_cli("batch", "manifest.csv", "-o", "out", "--workers", "0", "--json"))
    used, cores = s["workers"] * s["threads_per_worker"], usable_cores()
    assert used <= cores and cores - used < s["workers"]


def test_one_process_never_runs_two_ops_at_once(job, monkeypatch):
    """Issue 11 item 5: the one-process engine overlaps items' reading and writing, but their ops
    (each a team of torch threads) run one at a time; each op gets the process's threads."""
    import threading

    import roicli.pipeline

    pool, lock, state = roicli.pipeline._pool_in_chunks, threading.Lock(), {"now": 0, "most": 0, "threads": set()}

    def watched(*args):
        with lock:
            state["now"] += 1
            state["most"] = max(state["most"], state["now"])
        time.sleep(0.02)
        state["threads"].add(torch.get_num_threads())
        try:
            return pool(*args)
        finally:
            with lock:
                state["now"] -= 1

    monkeypatch.setattr(roicli.pipeline, "_pool_in_chunks", watched)
    monkeypatch.chdir(job["dir"])
    s = _summary(_cli("batch", "manifest.csv", "-o", "out", "--workers", "1", "--json"))
    assert s["done"] == N_GOOD and state["most"] == 1
    assert state["threads"] == {s["threads_per_worker"]}


def test_irrelevant_options_are_usage_errors_and_help_is_complete(tmp_path, monkeypatch):
    """Issue 9 items 16, 15 and 22: conflicting options are refused (exit 2, one line); the help shows
    the [ray] extra, the options `align` has, --workers 0 and the shard memory."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "m.jsonl").write_text('{"features": "f.safetensors", "boxes": [[0, 0, 4, 4]]}\n')
    for args, word in (
        (["--op", "pool", "--aligned"], "--aligned"),
        (["--op", "pool", "--sampling-ratio", "2"], "--sampling-ratio"),
        (["--op", "precise", "--mode", "max"], "--mode"),
        (["--address", "127.0.0.1:6379"], "--address"),
    ):
        res = _cli("batch", "m.jsonl", "-o", "out", *args)
        assert res.exit_code == 2, (args, res.output)
        assert len(res.stderr.strip().splitlines()) == 1 and word in res.stderr
    assert not (tmp_path / "out").exists()
    text = " ".join(_cli("batch", "--help").stdout.split())
    for needle in ("roicli[ray]", "--chunk-size", "--device", "--json", "--quiet", "--strict", "0 (default): auto",
                   "one shard's bytes in memory"):
        assert needle in text, needle


def test_unreachable_ray_address_is_one_line_and_quick(tmp_path, monkeypatch):
    """Issue 9 items 9 and 20: an unreachable Ray address gives one clear line, fast, no log spam."""
    monkeypatch.chdir(tmp_path)
    save_file({"x": torch.rand(1, 2, 8, 8)}, tmp_path / "f.safetensors")
    (tmp_path / "m.jsonl").write_text('{"features": "f.safetensors", "boxes": [[0, 0, 4, 4]]}\n')
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    t = time.perf_counter()
    res = _cli("batch", "m.jsonl", "-o", "out", "--engine", "ray", "--address", f"127.0.0.1:{port}", "--json")
    assert time.perf_counter() - t < 10
    assert res.exit_code == 1 and not res.stdout
    assert res.stderr.strip() == f"Error: --address 127.0.0.1:{port}: cannot reach a Ray cluster (Connection refused)"


def test_streamed_shards_are_the_bytes_of_the_joined_tensors():
    """Issue 9 item 22: shards are written from the items' tensors (no joined copy in memory), and
    the bytes are exactly those of the joined tensors."""
    from roicli.io.safetensors_io import dump_parts, dumps
    from roicli.jobs import shard_tensors

    gen = torch.Generator().manual_seed(1)
    for dtype in (torch.float32, torch.float16):
        items = [
            (i, {"pooled": torch.rand(k, 3, 2, 2, generator=gen).to(dtype), "rois": torch.rand(k, 5, generator=gen)})
            for i, k in ((4, 2), (7, 0), (9, 3))
        ]
        meta = {"op": "align", "z": "1", "a": "2"}
        joined = {
            "items": torch.tensor([4, 4, 9, 9, 9]),
            "pooled": torch.cat([t["pooled"] for _, t in items]),
            "rois": torch.cat([t["rois"] for _, t in items]).double(),
        }
        assert b"".join(dump_parts(shard_tensors(items), meta)) == dumps(joined, meta)


FORMATS = ["npz", "pt", pytest.param("parquet", marks=pytest.mark.skipif(
    importlib.util.find_spec("pyarrow") is None, reason="pyarrow (the parquet extra) is not installed"))]


def _first_rows(job: dict, n: int) -> Path:
    """A manifest of the job's first `n` rows (all good: the first bad row is row 7)."""
    lines = (job["dir"] / "manifest.csv").read_text().splitlines()
    path = job["dir"] / f"first{n}.csv"
    path.write_text("\n".join(lines[: n + 1]) + "\n")
    return path


def _flat(path: Path) -> dict:
    """Every tensor of an output in any format, as float64 with one row per RoI (Parquet stores the
    boxes as columns and the pooled tensor as one list per row: the same numbers)."""
    rows, _, tensors = describe(str(path), values=True)
    n = {r["key"]: r["shape"][0] if r["shape"] else 1 for r in rows}
    return {k: t.double().reshape(n[k], -1) for k, t in tensors.items() if t.numel()}


@pytest.mark.parametrize("fmt", FORMATS)
def test_each_format_is_what_align_writes_and_resumes(job, monkeypatch, fmt):
    """Issue 12 item 3: batch writes every format through align's writers, and resume reads each
    format's metadata back: complete and same record -> skipped, truncated or stale -> redone."""
    d = job["dir"]
    monkeypatch.chdir(d)
    manifest = _first_rows(job, 4)
    s = _summary(_cli("batch", str(manifest), "-o", "out", "--format", fmt, "--json"))
    assert (s["done"], s["failed"]) == (4, 0)
    for features, rois, _, stride in job["items"][:4]:
        stem = Path(features).stem
        extra = ["--stride", stride] if stride else []
        one = _cli("align", str(d / features), str(d / rois), "-o", f"single.{fmt}", "-q", *extra)
        assert one.exit_code == 0, one.output
        single, batched = describe(f"single.{fmt}", values=True), describe(f"out/{stem}.{fmt}", values=True)
        record = batched[1].pop("roicli_batch")
        assert isinstance(record, dict) and record["inputs"][0][0] == str(d / features)  # native, not JSON text
        assert single[0] == batched[0] and single[1] == batched[1]
        assert all(torch.equal(single[2][k], batched[2][k]) for k in single[2])
    s = _summary(_cli("batch", str(manifest), "-o", "out", "--format", fmt, "--json"))
    assert (s["done"], s["skipped"]) == (0, 4)
    whole, before = (d / "out" / f"f00.{fmt}").read_bytes(), _flat(d / "out" / f"f00.{fmt}")
    (d / "out" / f"f00.{fmt}").write_bytes(whole[: len(whole) - 9])  # truncated
    os.utime(d / "feats" / "f01.safetensors", ns=(10**18, 10**18))  # an input changed since
    s = _summary(_cli("batch", str(manifest), "-o", "out", "--format", fmt, "--json"))
    assert (s["done"], s["skipped"]) == (2, 2)
    assert s["redo_reasons"] == {"incomplete or unreadable": 1, "inputs changed": 1}
    assert _flat(d / "out" / f"f00.{fmt}")["pooled"].equal(before["pooled"])  # whole again


def test_an_output_column_chooses_its_format_and_bad_extensions_are_refused(tmp_path: Path):
    """Issue 12 item 3: an `output` of x.pt is a .pt file (loadable with weights_only) beside the
    job's default format; an extension roicli does not write is refused up front."""
    samples = Path(__file__).resolve().parents[1] / "samples"
    row = {"features": str(samples / "feats.safetensors"), "rois": str(samples / "rois.json")}
    manifest = tmp_path / "m.jsonl"
    manifest.write_text(json.dumps({**row, "output": "x.pt"}) + "\n" + json.dumps(row) + "\n")
    assert _cli("batch", str(manifest), "-o", str(tmp_path / "out"), "-q").exit_code == 0
    pt = torch.load(tmp_path / "out" / "x.pt", weights_only=True)
    st = load_file(tmp_path / "out" / "feats.safetensors")
    assert torch.equal(pt["pooled"], st["pooled"]) and pt["metadata"]["roicli_batch"]["options"]["op"] == "align"
    manifest.write_text(json.dumps({**row, "output": "x.txt"}) + "\n")
    res = _cli("batch", str(manifest), "-o", str(tmp_path / "out2"))
    assert res.exit_code == 1 and "'x.txt'" in res.stderr and ".npz" in res.stderr and ".parquet" in res.stderr
    assert not (tmp_path / "out2" / "x.txt").exists()


@pytest.mark.parametrize("fmt", FORMATS)
def test_shards_in_each_format_hold_the_same_rows(job, monkeypatch, fmt):
    """Issue 12 item 3: shards use the same writers; a run in another format redoes the items (reason
    "format changed") and removes the shards of the old format once the new index is written."""
    d = job["dir"]
    monkeypatch.chdir(d)
    manifest = _first_rows(job, 6)
    assert _cli("batch", str(manifest), "-o", "st", "--shard-rois", "7", "-q").exit_code == 0
    s = _summary(_cli("batch", str(manifest), "-o", "other", "--shard-rois", "7", "--format", fmt, "--json"))
    assert (s["done"], s["failed"]) == (6, 0)
    index = {name: [json.loads(x) for x in (d / name / "index.jsonl").read_text().splitlines()]
             for name in ("st", "other")}  # fmt: skip
    assert [(r["item"], r["id"], r["row"]) for r in index["st"]] == [
        (r["item"], r["id"], r["row"]) for r in index["other"]
    ]
    assert all(r["shard"].endswith("." + fmt) for r in index["other"])
    for a, b in zip(index["st"], index["other"]):
        sa, sb = _flat(d / "st" / a["shard"]), _flat(d / "other" / b["shard"])
        assert torch.equal(sa["pooled"][a["row"]], sb["pooled"][b["row"]])
        assert int(sb["items"][b["row"]]) == b["item"]
    s = _summary(_cli("batch", str(manifest), "-o", "other", "--shard-rois", "7", "--format", fmt, "--json"))
    assert s["skipped"] == 6
    s = _summary(_cli("batch", str(manifest), "-o", "other", "--shard-rois", "7", "--json"))
    assert (s["done"], s["redo_reasons"]) == (6, {"format changed": 6})
    assert not list((d / "other").glob(f"shard-*.{fmt}"))
    now = [json.loads(x) for x in (d / "other" / "index.jsonl").read_text().splitlines()]
    assert len(now) == len(index["st"]) and all(r["shard"].endswith(".safetensors") for r in now)


def test_batch_takes_max_image_pixels(tmp_path: Path):
    """Issue 12: batch has align's --max-image-pixels (the 320x256 scene is 81,920 px); the limit does
    not enter the batch record (it changes no output byte)."""
    samples = Path(__file__).resolve().parents[1] / "samples"
    manifest = tmp_path / "m.jsonl"
    manifest.write_text(json.dumps({"features": str(samples / "scene.png"), "boxes": [[8, 8, 120, 90]]}) + "\n")
    out = str(tmp_path / "out")
    res = _cli("batch", str(manifest), "-o", out, "--max-image-pixels", "1000", "-q")
    assert res.exit_code == 1
    error = json.loads((tmp_path / "out" / "errors.jsonl").read_text())["error"]
    assert "limit of 1,000" in error and "max_image_pixels" in error
    assert _cli("batch", str(manifest), "-o", out, "--max-image-pixels", "81920", "-q").exit_code == 0
    s = _summary(_cli("batch", str(manifest), "-o", out, "--json"))
    assert s["skipped"] == 1
