"""Issue 9 (data safety, up-front errors, CLI conventions) for the pooling commands and `inspect`.

Each test names the issue-9 item it covers. Behaviour about processes (signals, pipes, file modes,
closed stdin, start-up imports) runs the installed `roicli` script in a real subprocess.
"""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file
from test_cli import FEATS, PYRAMID, ROIS_CSV, ROIS_JSON, SCENE, assert_fails, ok, read_out, roicli_script, run

import roicli
from roicli.errors import InputError
from roicli.io import output as output_mod


def sh(*args, stdin=None, stdout=subprocess.PIPE, env=None, timeout=120, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(
        [roicli_script(), *map(str, args)], stdin=stdin, stdout=stdout, stderr=subprocess.PIPE,
        env={**os.environ, **(env or {})}, timeout=timeout, **kw,
    )


def one_error_line(stderr: bytes) -> str:
    lines = stderr.decode().strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), stderr.decode()
    return lines[0]


@pytest.fixture(scope="module")
def big(tmp_path_factory) -> tuple[Path, Path]:
    """A [1, 64, 40, 50] map and 400 RoIs: a 5 MB output, far more than a pipe holds."""
    d = tmp_path_factory.mktemp("big")
    feats, rois = d / "big.safetensors", d / "rois.json"
    save_file({"f": torch.rand(1, 64, 40, 50, generator=torch.Generator().manual_seed(0))}, feats,
              metadata={"stride": "8"})
    rois.write_text(json.dumps([[i % 300, i % 200, i % 300 + 40, i % 200 + 60] for i in range(400)]))
    return feats, rois


# ------------------------------------------------------------------------------ 1: stdout is checked


def test_item1_closed_pipe_is_an_error_not_success(big):
    """Item 1: `-o - | head -c 100` must not exit 0 nor print a success line."""
    feats, rois = big
    p1 = subprocess.Popen([roicli_script(), "align", str(feats), str(rois), "-o", "-"],
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    head = subprocess.run(["head", "-c", "100"], stdin=p1.stdout, capture_output=True)
    p1.stdout.close()
    err = p1.stderr.read()
    assert p1.wait(timeout=120) == 141
    assert len(head.stdout) == 100
    line = one_error_line(err)
    assert "closed the pipe" in line and "incomplete" in line
    assert b"RoIs ->" not in err


def test_item1_full_disk_on_stdout_is_an_error(big):
    """Items 1 and 9: `-o - > /dev/full` (disk full on stdout) gives one line and exit 1."""
    feats, rois = big
    with open("/dev/full", "wb") as full:
        proc = sh("align", feats, rois, "-o", "-", stdout=full)
    assert proc.returncode == 1
    assert "No space left on device" in one_error_line(proc.stderr)


def test_item1_short_write_on_stdout_is_detected(monkeypatch):
    """Item 1: a write that returns fewer bytes than asked is continued, and one that writes nothing
    is an error (never a silent truncation)."""
    written = []

    def short_write(fd, data):
        written.append(bytes(data[:3]))
        return min(3, len(data))

    monkeypatch.setattr(output_mod.os, "write", short_write)
    monkeypatch.setattr(output_mod.sys, "stdout", open(os.devnull, "w"))
    output_mod.write_stdout(b"abcdefgh")
    assert b"".join(written) == b"abcdefgh"
    monkeypatch.setattr(output_mod.os, "write", lambda fd, data: 0)
    with pytest.raises(roicli.errors.OutputError, match="after 0 of 8 bytes"):
        output_mod.write_stdout(b"abcdefgh")


# ------------------------------------------------------------------------------ 3: empty input


@pytest.mark.parametrize("text", ["", "   \n\t\n"])
def test_item3_empty_roi_file_is_an_error(tmp_path: Path, text: str):
    """Item 3: a zero-byte or whitespace-only RoI file is not 'no RoIs'."""
    outdir = tmp_path / "out"
    outdir.mkdir()
    rois = tmp_path / "empty.json"
    rois.write_text(text)
    assert_fails(run("align", FEATS, rois, "-o", outdir / "o.safetensors"), 1, f"{rois}: no RoIs", outdir=outdir)


def test_item3_empty_stdin_is_an_error(tmp_path: Path):
    """Item 3: empty stdin is an error."""
    assert_fails(run("align", FEATS, "-", "-o", tmp_path / "o.safetensors", input=""), 1, "stdin: no RoIs")
    assert not (tmp_path / "o.safetensors").exists()


@pytest.mark.parametrize("text, name", [("[]", "e.json"), ('{"rois": []}', "e.json"), ("x1,y1,x2,y2\n", "e.csv")])
def test_item3_explicit_empty_list_is_an_empty_result(tmp_path: Path, text: str, name: str):
    """Item 3: an explicit empty list gives the empty result with its notice."""
    rois = tmp_path / name
    rois.write_text(text)
    out = tmp_path / "o.safetensors"
    result = run("align", FEATS, rois, "-o", out)
    ok(result)
    assert "holds no RoIs" in result.stderr
    tensors, _ = read_out(out)
    assert tensors["pooled"].shape == (0, 16, 7, 7)


# ------------------------------------------------------------------------------ 4, 5, 6: files


def test_item4_sigterm_removes_temp_files_and_exits_143(tmp_path: Path, big):
    """Item 4: SIGTERM while an output is being written: temp file removed, clean message, exit 143.
    The report goes to a pipe nobody reads, so the process blocks with the output's temp file staged."""
    feats, rois = big
    out = tmp_path / "o.safetensors"
    proc = subprocess.Popen(
        [roicli_script(), "pool", str(feats), str(rois), "-o", str(out), "--report", "-", "-q"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )
    deadline = time.time() + 120
    while not [n for n in os.listdir(tmp_path) if n.endswith(".tmp")]:
        assert proc.poll() is None, proc.stderr.read().decode()
        assert time.time() < deadline
        time.sleep(0.01)
    proc.send_signal(signal.SIGTERM)
    err = proc.communicate(timeout=60)[1]
    assert proc.returncode == 143
    assert "terminated" in one_error_line(err)
    assert os.listdir(tmp_path) == []


def test_item5_outputs_land_together_or_not_at_all(tmp_path: Path, monkeypatch):
    """Item 5: when the report cannot be written (disk full), the main output is not written either,
    and an existing output keeps its old contents."""
    out, report = tmp_path / "o.safetensors", tmp_path / "geom.csv"
    out.write_bytes(b"old")
    real = output_mod._Staged.__init__

    def full_disk(self, path, data, fsync):
        if str(path).endswith(".csv"):
            raise OSError(28, "No space left on device")
        real(self, path, data, fsync)

    monkeypatch.setattr(output_mod._Staged, "__init__", full_disk)
    result = run("align", FEATS, ROIS_JSON, "-o", out, "--report", report)
    assert_fails(result, 1, "No space left on device")
    assert out.read_bytes() == b"old"
    assert sorted(os.listdir(tmp_path)) == ["o.safetensors"]


@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_item6_output_mode_follows_umask(tmp_path: Path, umask: int, mode: int):
    """Item 6: outputs get 0666 & ~umask, like a plain open(), not mkstemp's 0600."""
    out, report = tmp_path / "o.safetensors", tmp_path / "g.json"
    proc = subprocess.run(
        [roicli_script(), "align", str(FEATS), str(ROIS_JSON), "-o", str(out), "--report", str(report), "-q"],
        preexec_fn=lambda: os.umask(umask), capture_output=True, timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert stat.S_IMODE(out.stat().st_mode) == mode
    assert stat.S_IMODE(report.stat().st_mode) == mode


# ------------------------------------------------------------------------------ 8: sizes up front


def test_item8_huge_output_size_is_refused_up_front(tmp_path: Path):
    """Item 8: --output-size 100000 is refused from the shapes, in well under the time it would take."""
    t0 = time.perf_counter()
    result = run("align", FEATS, ROIS_JSON, "-o", tmp_path / "o.safetensors", "--output-size", "100000")
    line = assert_fails(result, 1, "needs about", "--output-size")
    assert "5 x 16 x 100000 x 100000" in line
    assert time.perf_counter() - t0 < 20
    assert os.listdir(tmp_path) == []


def test_item8_many_rois_under_a_memory_limit(tmp_path: Path, monkeypatch):
    """Item 8: 100k RoIs x 256 channels (a 4.7 GB output) under a 4 GB limit fail at once, saying
    which option helps. (Under 8 GB they now fit: the output is held once, written in pieces.)"""
    feats, rois = tmp_path / "f.safetensors", tmp_path / "r.json"
    save_file({"f": torch.zeros(1, 256, 4, 4)}, feats)
    rois.write_text(json.dumps([[0, 0, 2, 2]] * 100_000))
    monkeypatch.setenv("ROICLI_MEMORY_LIMIT", "4G")
    t0 = time.perf_counter()
    line = assert_fails(run("align", feats, rois, "-o", tmp_path / "o.safetensors"), 1, "needs about 4.")
    assert "100000 x 256 x 7 x 7 float32" in line and "--shard-rois" in line
    assert time.perf_counter() - t0 < 30


# ------------------------------------------------------------------------------ 9, 10: bad input


@pytest.mark.parametrize("shape, named", [((1, 0, 8, 8), "C = 0"), ((1, 4, 0, 8), "H = 0"), ((1, 4, 8, 0), "W = 0")])
def test_item9_10_empty_feature_maps_are_refused(tmp_path: Path, shape, named):
    """Items 9 and 10: a map with 0 channels, H = 0 or W = 0 is refused, naming the tensor."""
    feats = tmp_path / "f.safetensors"
    save_file({"f": torch.zeros(shape)}, feats)
    assert_fails(run("align", feats, ROIS_JSON, "-o", tmp_path / "o.safetensors"), 1, str(feats), "'f'", named)


def test_item9_decompression_bomb_is_refused_with_the_option(tmp_path: Path):
    """Item 9: a 20000x20000 PNG is refused before decoding; --max-image-pixels raises the limit."""
    png = tmp_path / "bomb.png"
    Image.new("1", (20000, 20000)).save(png)
    line = assert_fails(run("align", png, ROIS_JSON, "-o", tmp_path / "o.safetensors"), 1, str(png), "400,000,000")
    assert "--max-image-pixels" in line
    small = tmp_path / "small.png"
    Image.new("RGB", (64, 48)).save(small)
    assert_fails(run("align", small, ROIS_JSON, "-o", tmp_path / "o.safetensors", "--max-image-pixels", "1000"),
                 1, "64x48 = 3,072 pixels", "1,000")


def test_item9_backbone_memory_is_checked_before_it_runs(tmp_path: Path, monkeypatch):
    """Item 9: an image whose backbone would not fit is refused up front, with the size it needs."""
    monkeypatch.setenv("ROICLI_MEMORY_LIMIT", "10M")  # the 320x256 scene needs about 15 MB
    assert_fails(run("align", SCENE, ROIS_JSON, "-o", tmp_path / "o.safetensors"), 1,
                 str(SCENE), "320x256 image", "built-in backbone", "needs about")


def test_item9_deeply_nested_json(tmp_path: Path):
    """Item 9: JSON nested 100,000 deep is a one-line data error."""
    rois = tmp_path / "deep.json"
    rois.write_text("[" * 100_000 + "]" * 100_000)
    assert_fails(run("align", FEATS, rois, "-o", tmp_path / "o.safetensors"), 1, str(rois), "nested too deeply")


@pytest.mark.parametrize("rois, needle", [
    ("[[1e300, 0, 0, 10, 10]]", "batch index 1e+300 is out of range"),
    ("[[0, 0, 1e30, 10]]", "coordinate 1e+30 is out of range"),
])
def test_item9_10_absurd_numbers(tmp_path: Path, rois: str, needle: str):
    """Items 9 and 10: batch index 1e300 and a coordinate of 1e30 are refused, naming the RoI."""
    assert_fails(run("align", FEATS, "-", "-o", tmp_path / "o.safetensors", input=rois), 1, "stdin: roi 0", needle)


@pytest.mark.parametrize("which", ["rois", "features"])
def test_item9_closed_stdin(tmp_path: Path, which: str):
    """Item 9: stdin closed (`<&-`) for RoIs or features is a one-line error."""
    args = ["align", FEATS, "-"] if which == "rois" else ["align", "-", ROIS_JSON]
    proc = sh(*args, "-o", tmp_path / "o.safetensors", stdin=subprocess.DEVNULL, pass_fds=(),
              preexec_fn=lambda: os.close(0))
    assert proc.returncode == 1
    assert "stdin" in one_error_line(proc.stderr)


@pytest.mark.parametrize("args, needle", [
    (["--spatial-scale", "inf"], "--spatial-scale: expected a finite positive number"),
    (["--stride", "nan"], "--stride: expected a finite positive number"),
])
def test_item9_10_infinite_scale(tmp_path: Path, args, needle):
    """Items 9 and 10: --spatial-scale inf is refused (it used to pool all zeros)."""
    assert_fails(run("align", FEATS, ROIS_JSON, "-o", tmp_path / "o.safetensors", *args), 2, needle)


@pytest.mark.parametrize("value", ["0", "-5", "inf"])
def test_item9_10_canonical_size(tmp_path: Path, value: str):
    """Items 9 and 10: --canonical-size 0 / -5 / inf are refused."""
    assert_fails(run("align", PYRAMID, ROIS_JSON, "-o", tmp_path / "o.safetensors", "--canonical-size", value),
                 2, "--canonical-size: expected a finite positive number")


def test_item10_boxes_outside_the_map_warn_and_strict_fails(tmp_path: Path):
    """Item 10: boxes entirely outside the map are pooled with a warning naming them; --strict fails.
    feats.safetensors is 38x50 cells at stride 16: 800 x 608 image px."""
    rois = tmp_path / "r.json"
    rois.write_text(json.dumps([
        {"id": "in", "box": [10, 10, 100, 100]},
        {"id": "right", "box": [800, 10, 900, 100]},
        {"id": "above", "box": [10, -90, 100, 0]},
    ]))
    out = tmp_path / "o.safetensors"
    result = run("align", FEATS, rois, "-o", out)
    ok(result)
    assert "2 box(es) entirely outside the feature map (ids 'right', 'above')" in " ".join(result.stderr.split())
    tensors, _ = read_out(out)
    assert tensors["pooled"][1].abs().sum() == 0
    assert_fails(run("align", FEATS, rois, "-o", tmp_path / "s.safetensors", "--strict"), 1,
                 "2 box(es) entirely outside the map", "'right'")


# ------------------------------------------------------------------------------ 13, 14: start-up


@pytest.mark.parametrize("args", [["--help"], ["align", "--help"], ["compare", "--help"], ["show", "--help"],
                                  ["batch", "--help"], ["inspect", str(FEATS)], ["--version"]])
def test_item13_help_and_inspect_do_not_import_torch(args):
    """Items 13 and 14: `roicli --help`, `roicli COMMAND --help` and `roicli inspect` never import torch
    (nor numpy or ray)."""
    code = (
        "import sys\nfrom roicli.cli import main\nsys.argv = ['roicli', *sys.argv[1:]]\n"
        "try:\n    main()\nexcept SystemExit as e:\n    assert e.code in (0, None), e.code\n"
        "heavy = [m for m in ('torch', 'numpy', 'ray') if m in sys.modules]\n"
        "sys.stderr.write('HEAVY=' + ','.join(heavy))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.strip().endswith("HEAVY="), proc.stderr


def test_item14_inspect_reads_only_the_header(tmp_path: Path, monkeypatch):
    """Item 14: inspect reads the header, not the tensors (a file whose data bytes cannot be read
    still inspects), checks that the file is complete, and --values reads the tensors."""
    feats = tmp_path / "f.safetensors"
    save_file({"f": torch.arange(12.0).reshape(1, 1, 3, 4)}, feats, metadata={"stride": "4"})
    reads = []
    real_read = Path.read_bytes
    monkeypatch.setattr(Path, "read_bytes", lambda self: reads.append(self) or real_read(self))
    result = run("inspect", feats, "--json")
    ok(result)
    doc = json.loads(result.stdout)
    assert doc["tensors"] == [{"key": "f", "shape": [1, 1, 3, 4], "dtype": "float32"}]
    assert doc["metadata"] == {"stride": "4"}
    assert reads == []  # never the whole file
    result = run("inspect", feats, "--json", "--values")
    ok(result)
    row = json.loads(result.stdout)["tensors"][0]
    assert (row["min"], row["max"], row["mean"]) == (0.0, 11.0, 5.5)
    data = feats.read_bytes()
    feats.write_bytes(data[:-4])
    assert_fails(run("inspect", feats), 1, "truncated safetensors file")


# ------------------------------------------------------------------------------ 15, 16: conventions


def test_item15_version_and_short_help():
    """Item 15: --version and -h."""
    result = run("--version")
    ok(result)
    assert result.stdout.strip() == f"roicli {roicli.__version__}"
    result = run("align", "-h")
    ok(result)
    assert "align [OPTIONS]" in result.stdout


def test_item15_help_shows_choices_and_plain_flags():
    """Item 15: choices are shown as choices, flags without `<bool>`, `[ray]` not eaten as markup."""
    text = run("align", "--help").stdout
    for choice in ("<avg|max>", "<xyxy|xywh|cxcywh>", "<float32|float64|float16|bfloat16>", "<auto|json|jsonl|csv>"):
        assert choice in text, choice
    assert "<bool>" not in text
    assert "[ray]" in run("batch", "--help").stdout


@pytest.mark.parametrize("args, needle", [
    (["align", str(FEATS)], "Missing argument 'ROIS'"),
    (["align", str(FEATS), str(ROIS_JSON), "-o", "x.safetensors", "--mode", "median"], "'median' is not one of"),
    (["align", str(FEATS), str(ROIS_JSON), "-o", "x.safetensors", "--nope"], "No such option: --nope"),
])
def test_item15_usage_errors_are_one_line(args, needle):
    """Item 15: usage errors are one line like data errors, exit 2."""
    line = assert_fails(run(*args), 2, needle)
    assert "--help" in line


def test_item15_empty_output_name(tmp_path: Path):
    """Item 15: `-o ""` is a usage error that says so."""
    assert_fails(run("align", FEATS, ROIS_JSON, "-o", ""), 2, "-o/--output: expected a file name")


@pytest.mark.parametrize("name", ["o.npy", "o.h5", "o.txt", "out"])
def test_item16_unknown_output_extension_is_refused(tmp_path: Path, name: str):
    """Item 16: an -o extension roicli does not write is refused with the formats it writes
    (.npz, .pt and .parquet are written since issue 12)."""
    line = assert_fails(run("align", FEATS, ROIS_JSON, "-o", tmp_path / name), 2, Path(name).suffix or "extension")
    assert ".safetensors, .npz, .pt, .parquet" in line
    assert os.listdir(tmp_path) == []


def test_item16_report_extension_is_refused(tmp_path: Path):
    """Item 16: `--report geom.txt` is refused (json, jsonl or csv)."""
    assert_fails(run("align", FEATS, ROIS_JSON, "-o", tmp_path / "o.safetensors", "--report", tmp_path / "g.txt"),
                 2, ".json", ".csv", "'.txt'")
    assert os.listdir(tmp_path) == []


def test_item16_csv_header_contradicting_box_format(tmp_path: Path):
    """Item 16: a CSV header that implies xywh with --box-format cxcywh is refused, not ignored."""
    rois = tmp_path / "r.csv"
    rois.write_text("x,y,w,h\n1,2,30,40\n")
    assert_fails(run("align", FEATS, rois, "-o", tmp_path / "o.safetensors", "--box-format", "cxcywh"), 1,
                 str(rois), "xywh", "cxcywh")
    ok(run("align", FEATS, rois, "-o", tmp_path / "o.safetensors", "--box-format", "xywh"))


def test_item16_stride_with_the_builtin_backbone_is_refused(tmp_path: Path):
    """Item 16: --stride on an image with the built-in backbone (fixed stride 8) is refused."""
    assert_fails(run("align", SCENE, ROIS_JSON, "-o", tmp_path / "o.safetensors", "--stride", "16"), 2,
                 "built-in backbone", "8")


def test_item16_duplicate_ids_warn(tmp_path: Path):
    """Item 16: duplicate RoI ids give a warning naming them."""
    rois = tmp_path / "r.csv"
    rois.write_text("id,x1,y1,x2,y2\na,0,0,40,40\nb,0,0,50,50\na,8,8,60,60\n")
    result = run("align", FEATS, rois, "-o", tmp_path / "o.safetensors")
    ok(result)
    assert "1 id(s) given to more than one RoI ('a')" in " ".join(result.stderr.split())


def test_read_rois_csv_only_header_is_empty_and_blank_is_error():
    """Item 3 at the library level: read_rois' own contract."""
    from roicli.io.rois import read_rois

    assert len(read_rois("x1,y1,x2,y2\n", "h.csv")) == 0
    with pytest.raises(InputError, match="no RoIs"):
        read_rois(" \n", "b.json")
    assert ROIS_CSV.exists()


def test_write_is_atomic_when_killed_half_way(tmp_path: Path, monkeypatch):
    """Issue 12 item 6 (and 9 item 4): a write that dies half-way (here: Ctrl-C after the first
    piece) leaves the old file intact and no partial or temp file; so does a failing rename."""
    out = tmp_path / "o.safetensors"
    out.write_bytes(b"old contents")
    real_write = output_mod.os.fdopen

    class Dies:
        def __init__(self, f):
            self.f, self.n = f, 0

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.f.close()

        def write(self, data):
            self.n += 1
            if self.n > 1:
                raise KeyboardInterrupt
            return self.f.write(data)

        def __getattr__(self, name):
            return getattr(self.f, name)

    monkeypatch.setattr(output_mod.os, "fdopen", lambda fd, mode: Dies(real_write(fd, mode)))
    with pytest.raises(KeyboardInterrupt):
        output_mod.write_output(str(out), [b"first piece ", b"second piece"])
    assert out.read_bytes() == b"old contents"
    assert os.listdir(tmp_path) == ["o.safetensors"]
    monkeypatch.setattr(output_mod.os, "fdopen", real_write)

    def no_rename(src, dst):
        raise OSError(18, "Invalid cross-device link")

    monkeypatch.setattr(output_mod.os, "replace", no_rename)
    with pytest.raises(roicli.errors.OutputError, match="cannot write"):
        output_mod.write_output(str(out), b"new contents")
    assert out.read_bytes() == b"old contents"
    assert os.listdir(tmp_path) == ["o.safetensors"]


@pytest.mark.parametrize("ratio", ["100000", str(2**63 - 1)])
def test_item8_sampling_work_is_checked_up_front(tmp_path: Path, ratio: str):
    """Item 8: RoI Align work known from the boxes (a huge --sampling-ratio, or adaptive sampling on
    huge boxes) is refused before it starts, instead of running for hours (or an internal error)."""
    t0 = time.perf_counter()
    line = assert_fails(run("align", FEATS, ROIS_JSON, "-o", tmp_path / "o.safetensors", "--sampling-ratio", ratio),
                        1, "RoI Align would interpolate", "--sampling-ratio")
    assert "samples per bin" in line and time.perf_counter() - t0 < 30
    huge = tmp_path / "huge.json"
    huge.write_text(json.dumps([[0, 0, 16_000_000, 16_000_000]]))
    assert_fails(run("align", FEATS, huge, "-o", tmp_path / "o.safetensors", "--stride", "1"), 1,
                 "RoI Align would interpolate")
    ok(run("align", FEATS, huge, "-o", tmp_path / "o.safetensors", "--stride", "1", "--sampling-ratio", "2", "-q"))


def test_api_scale_of_the_wrong_type_is_a_clear_error():
    """Item 9 at the library level: spatial_scale=[0.25] is a ValidationError naming it, not a TypeError."""
    with pytest.raises(roicli.errors.UsageError, match="spatial_scale: expected a number, got \\[0.25\\]"):
        roicli.pool(str(FEATS), str(ROIS_JSON), spatial_scale=[0.25])


def test_batch_rois_template_with_a_bad_placeholder(tmp_path: Path):
    """Item 9: a malformed --rois template is a one-line usage error, not an internal error."""
    for template in ("rois/{stem.x}.json", "rois/{stem.json"):
        assert_fails(run("batch", "--features", str(FEATS), "--rois", template, "-o", tmp_path / "out"), 2,
                     "bad placeholder")


def test_a_kernel_fallback_is_one_warning_line_and_the_same_numbers(tmp_path: Path):
    """Issue 11 item 2: with no C++ compiler the torch kernels serve the call; the CLI shows the
    library's KernelFallbackWarning as one `Warning:` line (no source line), and the output is the
    one the C++ kernels give, to float32 rounding (the torch kernels sum in another order)."""
    exe = str(Path(sys.executable).parent / "roicli")
    env = {**os.environ, "ROICLI_CACHE_DIR": str(tmp_path / "cache"), "CXX": str(tmp_path / "no-such-c++")}
    env.pop("ROICLI_KERNEL", None)
    out = tmp_path / "fallback.safetensors"
    proc = subprocess.run([exe, "align", str(FEATS), str(ROIS_JSON), "-o", str(out), "--json"],
                          capture_output=True, text=True, env=env, timeout=120)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.splitlines() == [
        f"Warning: C++ kernels: expected a C++ compiler ({tmp_path / 'no-such-c++'}) on PATH, got none; "
        "using the torch kernels"
    ]
    quiet = subprocess.run([exe, "align", str(FEATS), str(ROIS_JSON), "-o", str(out), "-q"],
                           capture_output=True, text=True, env=env, timeout=120)  # fmt: skip
    assert quiet.returncode == 0 and quiet.stderr == ""  # --quiet: no warnings
    ok(run("align", FEATS, ROIS_JSON, "-o", tmp_path / "default.safetensors", "-q"))
    fallback, default = load_file(out)["pooled"], load_file(tmp_path / "default.safetensors")["pooled"]
    torch.testing.assert_close(fallback, default, rtol=1e-6, atol=1e-6)
