"""Peak memory of `roicli compare` as the number of RoIs grows (issue 9, item 7).

One subprocess per K, so each peak RSS (`ru_maxrss`) is that run's own: the CLI runs in a fresh
Python that reports its own maximum resident set size and wall time. The map is the issue's
`[1, 256, 100, 136]` float32 (stride 8: an 1088x800 image); the boxes are random, 16..400 px a side,
with a fixed seed.

    python benchmarks/bench_compare.py                 # K = 500, 2000, 20000; the table to stdout
    python benchmarks/bench_compare.py --k 500 2000 --format csv --chunk-size 256
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import torch
from safetensors.torch import save_file

# Runs in the child: the CLI on the given arguments, then its own peak RSS and wall time as JSON.
CHILD = """
import json, resource, sys, time
from roicli.cli import app
t0 = time.perf_counter()
try:
    app(sys.argv[1:], prog_name="roicli")
except SystemExit as e:
    code = e.code or 0
else:
    code = 0
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB
print(json.dumps({"code": code, "peak_rss": peak, "seconds": time.perf_counter() - t0}), file=sys.__stderr__)
"""


def make_inputs(folder: Path, ks: list[int], seed: int = 0) -> tuple[Path, dict[int, Path]]:
    gen = torch.Generator().manual_seed(seed)
    feats = folder / "map.safetensors"
    save_file({"features": torch.randn(1, 256, 100, 136, generator=gen)}, feats, metadata={"stride": "8"})
    img_w, img_h = 136 * 8, 100 * 8
    rois = {}
    for k in ks:
        wh = 16 + torch.rand(k, 2, generator=gen, dtype=torch.float64) * 384  # [K, 2] box sizes, px
        x1 = torch.rand(k, generator=gen, dtype=torch.float64) * (img_w - wh[:, 0])
        y1 = torch.rand(k, generator=gen, dtype=torch.float64) * (img_h - wh[:, 1])
        boxes = torch.stack([x1, y1, x1 + wh[:, 0], y1 + wh[:, 1]], 1)  # [K, 4]
        path = folder / f"rois_{k}.json"
        path.write_text(json.dumps([[round(v, 2) for v in b] for b in boxes.tolist()]))
        rois[k] = path
    return feats, rois


def run(feats: Path, rois: Path, fmt: str, chunk_size: int) -> dict:
    args = ["compare", str(feats), str(rois), "-f", fmt, "--chunk-size", str(chunk_size), "--quiet", "--device", "cpu"]
    proc = subprocess.run(
        [sys.executable, "-c", CHILD, *args], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )
    lines = proc.stderr.strip().splitlines()
    try:
        result = json.loads(lines[-1])
    except (IndexError, json.JSONDecodeError):
        result = {"code": proc.returncode, "peak_rss": None, "seconds": None}
    if result["code"] != 0:
        result["error"] = "\n".join(lines[:-1])[-500:]
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--k", type=int, nargs="+", default=[500, 2000, 20000], help="RoI counts")
    parser.add_argument("--format", default="table", help="compare's -f (the output goes to /dev/null)")
    parser.add_argument("--chunk-size", type=int, default=512)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        feats, rois = make_inputs(Path(tmp), args.k)
        print(f"roicli compare, map [1, 256, 100, 136] float32, -f {args.format}, --chunk-size {args.chunk_size}")
        print(f"{'K':>7} {'peak RSS':>10} {'seconds':>9}")
        for k in args.k:
            r = run(feats, rois[k], args.format, args.chunk_size)
            rss = f"{r['peak_rss'] / 2**20:.0f} MiB" if r["peak_rss"] else "-"
            secs = f"{r['seconds']:.1f}" if r["seconds"] is not None else "-"
            print(f"{k:>7} {rss:>10} {secs:>9}" + (f"  exit {r['code']}: {r.get('error', '')}" if r["code"] else ""))
            sys.stdout.flush()


if __name__ == "__main__":
    main()
