"""`roicli batch`: pool the RoIs of many items (feature file + RoIs) with one start-up, in parallel,
resumably, locally or on a Ray cluster.

Every item runs through `run_item`, the same function on every engine, which calls the same recipe
as `roicli align` (`roicli.pipeline.pool_job`): the per-item outputs are the files `roicli align`
writes, byte for byte, whichever engine produced them. In shard mode (`shard_rois`) the items'
tensors come back to the driver, which writes them, in manifest order, into shards of about
`shard_rois` RoIs plus an index mapping every RoI (item, id) to its shard and row.
"""

from __future__ import annotations

import json
import os
import re
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import dataclass, replace
from multiprocessing import get_context
from pathlib import Path

import torch

from roicli.errors import RoicliError, UsageError
from roicli.io.manifest import Item
from roicli.io.output import write_output
from roicli.io.safetensors_io import dumps
from roicli.pipeline import PoolSpec, pool_job

_SHARD = re.compile(r"^shard-(\d{5})\.index\.jsonl$")


@dataclass
class BatchConfig:
    spec: PoolSpec
    outdir: Path
    shard_rois: int | None = None
    overwrite: bool = False
    on_error: str = "skip"  # or "stop"
    workers: int = 1
    engine: str = "local"  # or "ray"
    address: str | None = None
    fsync: bool = False  # durable against power cuts, at ~2x the write time

    def __post_init__(self) -> None:
        if self.on_error not in ("skip", "stop"):
            raise UsageError(f"--on-error: expected skip or stop, got {self.on_error!r}")
        if self.engine not in ("local", "ray"):
            raise UsageError(f"--engine: expected local or ray, got {self.engine!r}")
        if self.shard_rois is not None and self.shard_rois <= 0:
            raise UsageError(f"--shard-rois: expected a positive number, got {self.shard_rois}")
        if self.workers < 0:
            raise UsageError(f"--workers: expected 0 (all cores) or more, got {self.workers}")


def run_item(item: Item, spec: PoolSpec, outdir: str | None, fsync: bool = False) -> dict:
    """Pool one item. With `outdir`, write `outdir/item.output` atomically and return its status;
    without, return the output tensors too (shard mode). Never raises for a bad item."""
    overrides = dict(item.overrides)
    if "spatial_scale" in overrides or "stride" in overrides:  # the item's scale wins over the command's
        overrides.setdefault("spatial_scale", None)
        overrides.setdefault("stride", None)
    try:
        result = pool_job(item.features, item.rois, replace(spec, **overrides), rois_text=item.rois_text)
        status = {"index": item.index, "ok": True, "rois": result.summary["rois"]}
        if outdir is None:
            return {**status, "tensors": result.tensors, "metadata": result.metadata}
        write_output(str(Path(outdir) / item.output), result.to_bytes(), fsync)
        return status
    except RoicliError as e:
        return {"index": item.index, "ok": False, "error": str(e)}
    except Exception as e:  # a bad item must not stop the others; the error names it
        return {"index": item.index, "ok": False, "error": f"internal error: {type(e).__name__}: {e}"}


def _init_worker(threads: int) -> None:
    torch.set_num_threads(threads)


def _local(items: list[Item], spec: PoolSpec, outdir: str | None, workers: int, fsync: bool) -> Iterator[dict]:
    """Results in manifest order, a bounded window of items in flight. One worker: this process, with
    two threads so that one item's reading and writing overlap the other's pooling (torch and file
    I/O release the GIL). More: that many processes."""
    if workers <= 1:
        pool, size = ThreadPoolExecutor(2), 2
    else:
        threads = max(1, (os.cpu_count() or 1) // workers)
        pool = ProcessPoolExecutor(
            workers, mp_context=get_context("spawn"), initializer=_init_worker, initargs=(threads,)
        )
        size = 2 * workers
    with pool:
        window: deque = deque()
        try:
            for it in items:
                window.append(pool.submit(run_item, it, spec, outdir, fsync))
                if len(window) >= size:
                    yield window.popleft().result()
            while window:
                yield window.popleft().result()
        except BaseException:
            pool.shutdown(cancel_futures=True)
            raise


def _ray(
    items: list[Item], spec: PoolSpec, outdir: str | None, address: str | None, workers: int, fsync: bool
) -> Iterator[dict]:
    """The same `run_item` as Ray tasks; results in manifest order."""
    try:
        import ray
    except ImportError:
        raise UsageError("--engine ray needs Ray: pip install 'roicli[ray]'") from None
    if not ray.is_initialized():
        ray.init(address=address, include_dashboard=False, log_to_driver=False, configure_logging=False)
    task = ray.remote(num_cpus=1)(run_item)
    spec_ref = ray.put(spec)
    in_flight = max(2 * workers, 2 * int(ray.available_resources().get("CPU", 1)))
    window: deque = deque()
    for it in items:
        window.append(task.remote(it, spec_ref, outdir, fsync))
        if len(window) >= in_flight:
            yield ray.get(window.popleft())
    while window:
        yield ray.get(window.popleft())


class ShardWriter:
    """Buffers items' tensors and writes `shard-NNNNN.safetensors` of about `size` RoIs each, with
    `shard-NNNNN.index.jsonl` beside it (written after the shard: a shard counts once both exist)."""

    def __init__(self, outdir: Path, size: int, items: dict[int, Item]):
        self.outdir, self.size, self.items = outdir, size, items
        self.buffer: list[dict] = []
        self.rois = 0
        self.next = 1 + max((int(m.group(1)) for m in map(_SHARD.match, os.listdir(outdir)) if m), default=-1)

    def done_items(self) -> set[int]:
        done = set()
        for name in os.listdir(self.outdir):
            if _SHARD.match(name):
                for line in (self.outdir / name).read_text().splitlines():
                    if line.strip():
                        done.add(json.loads(line)["item"])
        return done

    def add(self, result: dict) -> str | None:
        """Buffer one item; None, or an error if its tensors do not fit the shard's."""
        pooled = result["tensors"]["pooled"]
        if self.buffer:
            first = self.buffer[0]["tensors"]["pooled"]
            if pooled.shape[1:] != first.shape[1:] or pooled.dtype != first.dtype:
                return (
                    f"pooled shape {tuple(pooled.shape[1:])} {pooled.dtype} differs from the shard's "
                    f"{tuple(first.shape[1:])} {first.dtype}; shards need one shape (split the manifest)"
                )
        self.buffer.append(result)
        self.rois += pooled.shape[0]
        if self.rois >= self.size:
            self.flush()
        return None

    def flush(self) -> None:
        if not self.buffer:
            return
        name = f"shard-{self.next:05d}"
        t = [r["tensors"] for r in self.buffer]
        item_of_row = torch.cat(
            [torch.full((x["pooled"].shape[0],), r["index"], dtype=torch.int64) for r, x in zip(self.buffer, t)]
        )
        tensors = {
            "pooled": torch.cat([x["pooled"] for x in t]).contiguous(),
            "rois": torch.cat([x["rois"].double() for x in t]).contiguous(),
            "items": item_of_row,
        }
        meta = {
            k: v
            for k, v in self.buffer[0]["metadata"].items()
            if k
            not in (
                "features",
                "rois",
                "ids",
                "labels",
                "count",
                "keys",
                "image_size",
                "spatial_scale",
                "spatial_scale_source",
            )
        }
        meta["items"] = json.dumps([self.items[r["index"]].output for r in self.buffer])
        write_output(str(self.outdir / f"{name}.safetensors"), dumps(tensors, meta))
        lines = []
        row = 0
        for r in self.buffer:
            ids = json.loads(r["metadata"]["ids"])
            for rid in ids:
                lines.append(
                    json.dumps(
                        {
                            "item": r["index"],
                            "output": self.items[r["index"]].output,
                            "id": rid,
                            "shard": f"{name}.safetensors",
                            "row": row,
                        }
                    )
                )
                row += 1
        write_output(str(self.outdir / f"{name}.index.jsonl"), ("\n".join(lines) + "\n").encode())
        self.buffer, self.rois, self.next = [], 0, self.next + 1

    def finish(self) -> None:
        """Flush the rest and write `index.jsonl`: every RoI of every shard, shard by shard."""
        self.flush()
        parts = sorted(n for n in os.listdir(self.outdir) if _SHARD.match(n))
        text = "".join((self.outdir / n).read_text() for n in parts)
        write_output(str(self.outdir / "index.jsonl"), text.encode())


def run_batch(items: list[Item], cfg: BatchConfig, progress: Callable[[dict], None] | None = None) -> dict:
    """Run the job; returns the summary. Bad items go to `errors.jsonl` in the output folder."""
    outdir = cfg.outdir
    outdir.mkdir(parents=True, exist_ok=True)
    by_index = {it.index: it for it in items}
    writer = ShardWriter(outdir, cfg.shard_rois, by_index) if cfg.shard_rois else None
    if cfg.overwrite:
        done: set[int] = set()
    elif writer:
        done = writer.done_items()
    else:
        done = {it.index for it in items if (outdir / it.output).exists()}
    todo = [it for it in items if it.index not in done]
    workers = cfg.workers or os.cpu_count() or 1
    target = None if writer else str(outdir)
    if cfg.engine == "ray":
        results = _ray(todo, cfg.spec, target, cfg.address, workers, cfg.fsync)
    else:
        results = _local(todo, cfg.spec, target, workers, cfg.fsync)
    ok = failed = rois = 0
    stopped = False
    with open(outdir / "errors.jsonl", "w") as errors:
        for res in results:
            error = res.get("error") if not res["ok"] else (writer.add(res) if writer else None)
            if error is None:
                ok += 1
                rois += res["rois"]
            else:
                failed += 1
                it = by_index[res["index"]]
                errors.write(
                    json.dumps(
                        {
                            "item": it.index,
                            "features": it.features,
                            "rois": it.rois,
                            "output": it.output,
                            "error": error,
                        }
                    )
                    + "\n"
                )
                errors.flush()
            if progress:
                progress({"ok": ok, "failed": failed, "rois": rois})
            if error is not None and cfg.on_error == "stop":
                stopped = True
                break
    results.close()  # stops the workers when the loop ended early
    if writer:
        writer.finish()
    return {
        "items": len(items),
        "done": ok,
        "skipped": len(done),
        "failed": failed,
        "rois": rois,
        "stopped_on_error": stopped,
        "outdir": str(outdir),
        "errors": str(outdir / "errors.jsonl"),
        "engine": cfg.engine,
        "workers": workers if cfg.engine == "local" else None,
    }
