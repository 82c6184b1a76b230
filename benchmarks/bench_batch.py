"""Throughput of `roicli batch` against a shell loop over `roicli align` and the op-bound limit.

    python benchmarks/bench_batch.py [--items 500] [--rois 100] [--channels 256] [--loop-items 20]
                                     [--workers 1 2] [--dir /tmp/roicli-bench-batch] [--json]

Generates ITEMS feature files `[1, C, 50, 68]` (stride 16, an 800x1088 image) with ROIS boxes each,
then times, each from a cold start of the command:
- a plain shell loop `for f in ...; do roicli align f rois -o out; done` over the first LOOP_ITEMS
  items (its per-item rate is what a loop over all items would reach);
- `roicli batch manifest.csv --workers N` for each N (0: auto, the default: one process per two cores);
- the op-bound time: `roi_align` alone on every item's tensors, already in memory, in one process.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from roicli.ops import roi_align

ROICLI = str(Path(sys.executable).parent / "roicli")


def make_items(folder: Path, items: int, rois: int, channels: int) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    manifest = folder / "manifest.csv"
    if manifest.exists() and len(manifest.read_text().splitlines()) == items + 1:
        return manifest
    gen = torch.Generator().manual_seed(0)
    rows = [["features", "rois"]]
    for i in range(items):
        f, r = folder / f"f{i:04d}.safetensors", folder / f"f{i:04d}.json"
        save_file({"features": torch.rand(1, channels, 50, 68, generator=gen)}, f, metadata={"stride": "16"})
        size = torch.exp(torch.empty(rois).uniform_(3.5, 6.2, generator=gen))
        x1 = torch.rand(rois, generator=gen) * (1088 - size)
        y1 = torch.rand(rois, generator=gen) * (800 - size)
        r.write_text(json.dumps(torch.stack([x1, y1, x1 + size, y1 + size], 1).tolist()))
        rows.append([f.name, r.name])
    with open(manifest, "w", newline="") as fh:
        csv.writer(fh).writerows(rows)
    return manifest


def timed(cmd: list[str] | str, shell: bool = False) -> float:
    t = time.perf_counter()
    subprocess.run(cmd, shell=shell, check=False, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - t


def op_bound(folder: Path, items: int) -> float:
    """roi_align alone on every item, inputs already in memory (what the job cannot beat)."""
    data = []
    for i in range(items):
        x = load_file(folder / f"f{i:04d}.safetensors")["features"]
        boxes = torch.tensor(json.loads((folder / f"f{i:04d}.json").read_text()))
        data.append((x, torch.cat([torch.zeros(len(boxes), 1), boxes], 1)))
    with torch.no_grad():
        roi_align(*data[0], 7, 1 / 16)  # warm-up
        t = time.perf_counter()
        for x, b in data:
            roi_align(x, b, 7, 1 / 16)
        return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--items", type=int, default=500)
    ap.add_argument("--rois", type=int, default=100)
    ap.add_argument("--channels", type=int, default=256)
    ap.add_argument("--loop-items", type=int, default=20)
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--dir", default="/tmp/roicli-bench-batch")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    folder = Path(args.dir)
    manifest = make_items(folder, args.items, args.rois, args.channels)
    rows = []

    n = min(args.loop_items, args.items)
    out = folder / "loop_out"
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir()
    loop = " ; ".join(
        f"{ROICLI} align {folder}/f{i:04d}.safetensors {folder}/f{i:04d}.json -o {out}/f{i:04d}.safetensors -q"
        for i in range(n)
    )
    seconds = timed(loop, shell=True) * args.items / n
    rows.append(("shell loop over roicli align", seconds, f"measured on {n} items, scaled"))
    for w in args.workers:
        out = folder / f"batch_w{w}"
        shutil.rmtree(out, ignore_errors=True)
        seconds = timed([ROICLI, "batch", str(manifest), "-o", str(out), "--workers", str(w), "-q"])
        rows.append((f"roicli batch --workers {w}", seconds, ""))
    bound = op_bound(folder, args.items)
    rows.append(("op-bound (roi_align only, in memory)", bound, ""))

    results = [
        {"run": name, "seconds": round(s, 2), "items_per_s": round(args.items / s, 2),
         "rois_per_s": round(args.items * args.rois / s), "x_op_bound": round(s / bound, 2),
         "x_faster_than_loop": round(rows[0][1] / s, 1), "note": note}
        for name, s, note in rows
    ]
    if args.json:
        print(json.dumps({"items": args.items, "rois": args.rois, "channels": args.channels,
                          "threads": torch.get_num_threads(), "cpus": os.cpu_count(), "results": results}))
        return
    print(f"{args.items} items [1, {args.channels}, 50, 68], {args.rois} RoIs each, 7x7 roi_align; "
          f"{os.cpu_count()} CPUs, torch {torch.__version__}")
    print(f"{'run':40} {'s':>8} {'items/s':>8} {'RoIs/s':>9} {'x op-bound':>10} {'x loop':>7}  note")
    for r in results:
        print(f"{r['run']:40} {r['seconds']:8.2f} {r['items_per_s']:8.2f} {r['rois_per_s']:9d} "
              f"{r['x_op_bound']:10.2f} {r['x_faster_than_loop']:7.1f}  {r['note']}")


if __name__ == "__main__":
    main()
