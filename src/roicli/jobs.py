"""`roicli batch`: pool the RoIs of many items (feature file + RoIs) with one start-up, in parallel,
resumably, locally or on a Ray cluster.

Every item runs through `run_item`, the same function on every engine, which calls the same recipe
as `roicli align` (`roicli.pipeline.pool_job`): the per-item outputs hold the tensors and metadata
`roicli align` writes for the same (absolute) paths, plus one key, `roicli_batch`, that records the
options and the inputs (path, size, mtime) the output was made from. In shard mode (`shard_rois`)
the items' tensors come back to the driver, which writes them, in manifest order, into shards of
about `shard_rois` RoIs plus an index mapping every RoI (item, id) to its shard and row.

The rules a run follows (the README states them for users):
- one run at a time per OUTDIR: `OUTDIR/.roicli-batch.lock` (an OS lock, released when its process
  dies, plus who holds it); a lock left by a dead run is taken over with a notice;
- temp files left in OUTDIR by dead runs are removed on start;
- resume trusts an output only when its header is complete (file size = header end) and its
  `roicli_batch` record matches this run's options and inputs; anything else is redone, with the
  count and reasons in the summary;
- worker processes die with the driver (Linux: PR_SET_PDEATHSIG; elsewhere a watchdog thread), and
  SIGTERM / Ctrl-C stop them before the driver exits.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import hashlib
import json
import logging
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime, timezone
from multiprocessing import get_context
from pathlib import Path

import torch

import roicli
from roicli.errors import EngineError, OutputError, RoicliError, Terminated, UsageError
from roicli.io.features import is_image_path
from roicli.io.manifest import Item
from roicli.io.output import temp_target, write_output
from roicli.io.readers import complete_metadata
from roicli.io.writers import SUFFIXES, encode, format_of
from roicli.pipeline import PoolSpec, pool_job
from roicli.reaper import proc_start

_SHARD = re.compile(r"^shard-(\d{5})(" + "|".join(map(re.escape, (*SUFFIXES, ".index.jsonl"))) + ")$")
LOCK_NAME = ".roicli-batch.lock"
STAMP_KEY = "roicli_batch"  # the output metadata key that resume verifies
_DISK_FULL = (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC), errno.EFBIG)


@dataclass
class BatchConfig:
    spec: PoolSpec
    outdir: Path
    shard_rois: int | None = None
    overwrite: bool = False
    on_error: str = "skip"  # or "stop"
    workers: int = 0  # 0: auto (see plan_workers)
    engine: str = "local"  # or "ray"
    address: str | None = None
    fsync: bool = False  # durable against power cuts, at ~2x the write time
    strict: bool = False  # zero-size or inverted boxes fail the item instead of a warning
    shard_format: str = ".safetensors"  # a suffix of io.writers.SUFFIXES (see io.writers.suffix_of)

    def __post_init__(self) -> None:
        if self.on_error not in ("skip", "stop"):
            raise UsageError(f"{{on_error}}: expected skip or stop, got {self.on_error!r}", param="on_error")
        if self.engine not in ("local", "ray"):
            raise UsageError(f"{{engine}}: expected local or ray, got {self.engine!r}", param="engine")
        if self.shard_rois is not None and self.shard_rois <= 0:
            raise UsageError(f"{{shard_rois}}: expected a positive number, got {self.shard_rois}", param="shard_rois")
        if self.workers < 0:
            raise UsageError(f"{{workers}}: expected 0 (auto) or more, got {self.workers}", param="workers")
        if self.address is not None and self.engine != "ray":
            raise UsageError("{address}: applies to {engine} ray only", param=("address", "engine"))


def usable_cores() -> int:
    """The cores this process may run on (its CPU affinity, e.g. a container's share), else all."""
    try:
        return len(os.sched_getaffinity(0)) or 1
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def plan_workers(requested: int, cores: int | None = None) -> tuple[int, int]:
    """(processes, torch threads per process) so that processes x threads = cores (never more).

    0 (auto) runs one process per two cores (each item's op then uses two threads, and the pool of
    processes overlaps one item's reading and writing with another's pooling); one process on a
    machine of one or two cores, where extra processes only add start-up time and contention."""
    cores = cores or usable_cores()
    n = max(1, cores // 2) if requested == 0 else min(requested, cores)
    return n, max(1, cores // n)


# ----------------------------------------------------------------------------- what resume verifies


def item_spec(item: Item, spec: PoolSpec) -> PoolSpec:
    """The command's spec with the item's overrides (its scale wins over the command's)."""
    overrides = dict(item.overrides)
    if "spatial_scale" in overrides or "stride" in overrides:
        overrides.setdefault("spatial_scale", None)
        overrides.setdefault("stride", None)
    return replace(spec, **overrides)


def _file_stamp(path: str) -> list:
    try:
        st = os.stat(path)
    except OSError:
        return [path, None, None]
    return [path, st.st_size, st.st_mtime_ns]


def stamp(item: Item, spec: PoolSpec) -> dict:
    """What an output is made from: the options that change its bytes (not `chunk_size` nor
    `max_image_pixels`), roicli's version, and each input file's path, size and mtime (inline boxes:
    their SHA-256)."""
    s = item_spec(item, spec)
    options = {
        k: list(v) if isinstance(v, tuple) else v
        for k, v in asdict(s).items()
        if k not in ("chunk_size", "max_image_pixels")
    }
    options["roicli_version"] = roicli.__version__
    inputs = [_file_stamp(item.features)]
    if item.rois_text is None:
        inputs.append(_file_stamp(item.rois))
    else:
        inputs.append(["boxes", "sha256:" + hashlib.sha256(item.rois_text.encode()).hexdigest()])
    if s.backbone != "builtin" and is_image_path(item.features):
        inputs.append(_file_stamp(s.backbone))
    st = {"options": options, "inputs": inputs}
    return json.loads(json.dumps(st, sort_keys=True, default=str))  # as it reads back from a file


def verify(path: Path, expected: dict) -> str | None:
    """None when `path` is a complete output made from `expected` (a `stamp`), else why not."""
    metadata = complete_metadata(path)
    if metadata is None:
        return "incomplete or unreadable"
    found = _record(metadata)
    return "no batch record" if found is None else _compare(found, expected)


def _record(metadata: dict) -> dict | None:
    """The `roicli_batch` record of an output's metadata: native, or JSON text in safetensors."""
    found = metadata.get(STAMP_KEY)
    if isinstance(found, str):
        try:
            found = json.loads(found)
        except ValueError:
            return None
    return found if isinstance(found, dict) else None


def _compare(found: dict, expected: dict) -> str | None:
    if not isinstance(found, dict) or found.get("options") != expected["options"]:
        return "options changed"
    if found.get("inputs") != expected["inputs"]:
        return "inputs changed"
    return None


# ----------------------------------------------------------------------------- one item


def _is_disk_full(e: BaseException) -> bool:
    return getattr(e, "errno", None) in _DISK_FULL  # an OSError, or roicli's OutputError carrying one


# One op at a time per process: the one-process engine runs two items at once so that one's reading
# and writing overlap the other's pooling, and two ops would run two teams of torch threads.
_COMPUTE = threading.Lock()


def run_item(item: Item, spec: PoolSpec, outdir: str | None, fsync: bool = False, strict: bool = False) -> dict:
    """Pool one item. With `outdir`, write `outdir/item.output` atomically and return its status;
    without, return the output tensors too (shard mode). Never raises for a bad item; a full disk
    comes back with `disk_full` set, so that the driver stops the job."""
    st = stamp(item, spec)  # before the inputs are read: a later change makes the record stale
    try:
        result = pool_job(item.features, item.rois, item_spec(item, spec), rois_text=item.rois_text, strict=strict,
                          compute=_COMPUTE)  # fmt: skip
        status = {"index": item.index, "ok": True, "rois": result.summary["rois"], "warnings": result.warnings()}
        if outdir is None:
            return {**status, "tensors": result.tensors, "metadata": result.metadata, "stamp": st}
        result.metadata[STAMP_KEY] = st
        write_output(str(Path(outdir) / item.output), result.encode(format_of(item.output)), fsync)
        return status
    except RoicliError as e:
        return {"index": item.index, "ok": False, "error": str(e), "disk_full": _is_disk_full(e)}
    except Exception as e:  # a bad item must not stop the others; the error names it
        error = f"internal error: {type(e).__name__}: {e}"
        return {"index": item.index, "ok": False, "error": error, "disk_full": _is_disk_full(e)}


# ----------------------------------------------------------------------------- local worker processes

_in_task = False


def _worker_sigterm(signum, frame) -> None:
    if _in_task:
        raise Terminated()  # unwinds the write: its temp file is removed
    os._exit(143)


def _watch_parent(parent: int) -> None:
    while os.getppid() == parent:
        time.sleep(0.5)
    os._exit(1)


def die_with_parent(parent: int) -> None:
    """Make this process exit when `parent` dies: PR_SET_PDEATHSIG on Linux, a watchdog elsewhere."""
    if sys.platform.startswith("linux"):
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            if libc.prctl(1, int(signal.SIGKILL), 0, 0, 0) == 0:  # 1 = PR_SET_PDEATHSIG
                if os.getppid() != parent:  # the parent died before the prctl
                    os._exit(1)
                return
        except (OSError, AttributeError):
            pass
    threading.Thread(target=_watch_parent, args=(parent,), daemon=True, name="roicli-watch-parent").start()


def _init_worker(threads: int, parent: int) -> None:
    die_with_parent(parent)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the driver decides; it stops us with SIGTERM
    signal.signal(signal.SIGTERM, _worker_sigterm)
    torch.set_num_threads(threads)


def _worker_item(item: Item, spec: PoolSpec, outdir: str | None, fsync: bool, strict: bool) -> dict:
    global _in_task
    _in_task = True
    try:
        return run_item(item, spec, outdir, fsync, strict)
    except Terminated:
        os._exit(143)
    finally:
        _in_task = False


def _stop_processes(pool: ProcessPoolExecutor) -> None:
    """SIGTERM every worker (each removes its temp file), SIGKILL what is left after 3 s."""
    procs = list((getattr(pool, "_processes", None) or {}).values())
    for p in procs:
        with contextlib.suppress(Exception):
            p.terminate()
    deadline = time.monotonic() + 3
    for p in procs:
        with contextlib.suppress(Exception):
            p.join(max(0.0, deadline - time.monotonic()))
    for p in procs:
        with contextlib.suppress(Exception):
            if p.is_alive():
                p.kill()
                p.join(1)
    pool.shutdown(wait=False, cancel_futures=True)


def _local(
    items: list[Item], spec: PoolSpec, outdir: str | None, workers: int, threads: int, fsync: bool, strict: bool
) -> Iterator[dict]:
    """Results in manifest order, a bounded window of items in flight. One worker: this process, with
    two threads so that one item's reading and writing overlap the other's pooling (torch and file
    I/O release the GIL). More: that many processes, which die with this one."""
    if workers <= 1:
        torch.set_num_threads(threads)
        pool, size, fn = ThreadPoolExecutor(2), 2, run_item
    else:
        pool = ProcessPoolExecutor(
            workers, mp_context=get_context("spawn"), initializer=_init_worker, initargs=(threads, os.getpid())
        )
        size, fn = 2 * workers, _worker_item
    window: deque = deque()
    try:
        for it in items:
            window.append(pool.submit(fn, it, spec, outdir, fsync, strict))
            if len(window) >= size:
                yield window.popleft().result()
        while window:
            yield window.popleft().result()
    except GeneratorExit:  # the caller stopped early (--on-error stop): let running items finish
        pool.shutdown(wait=True, cancel_futures=True)
        raise
    except BaseException:  # Ctrl-C, SIGTERM, a broken pool: no worker outlives the driver
        if isinstance(pool, ProcessPoolExecutor):
            _stop_processes(pool)
        else:
            pool.shutdown(wait=True, cancel_futures=True)
        raise
    pool.shutdown(wait=True)


# ----------------------------------------------------------------------------- Ray


def _ray_item(*args) -> dict:
    """`run_item` as a Ray task of one CPU: one torch thread, whatever the worker's environment says."""
    torch.set_num_threads(1)
    return run_item(*args)


@contextlib.contextmanager
def ray_output_to_log() -> Iterator[str]:
    """Send what Ray writes (its Python loggers, its C++ core, the processes it starts) to a log file
    while roicli's own stderr (progress, messages) stays on the terminal, so that stdout carries only
    roicli's data and a failing cluster gives one line, not pages of retries. Yields the log's path."""
    fd, log = tempfile.mkstemp(prefix="roicli-ray-", suffix=".log")
    saved: dict[int, int] = {}
    old_stderr = sys.stderr
    ray_logger = logging.getLogger("ray")
    handler = logging.StreamHandler(open(fd, "w", buffering=1, closefd=False))
    old_propagate, old_handlers, old_last_resort = ray_logger.propagate, ray_logger.handlers[:], logging.lastResort
    try:
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):
                stream.flush()
        for n in (1, 2):
            with contextlib.suppress(OSError):
                saved[n] = os.dup(n)
        with contextlib.suppress(AttributeError, OSError, ValueError):
            if 2 in saved and sys.stderr.fileno() == 2:  # a real stderr: keep ours on the terminal
                sys.stderr = open(os.dup(saved[2]), "w", buffering=1, encoding=old_stderr.encoding or "utf-8")
        for n in saved:
            os.dup2(fd, n)
        ray_logger.handlers = [handler]  # Ray's own handler writes to whatever sys.stderr is now
        ray_logger.propagate = False
        logging.lastResort = handler  # records of loggers with no handler (Ray's Cython core logs some)
        yield log
    finally:
        logging.lastResort = old_last_resort
        ray_logger.handlers = old_handlers
        ray_logger.propagate = old_propagate
        for n, dup in saved.items():
            os.dup2(dup, n)
            os.close(dup)
        if sys.stderr is not old_stderr:
            with contextlib.suppress(OSError):
                sys.stderr.close()
            sys.stderr = old_stderr
        handler.stream.close()
        os.close(fd)


def start_reaper() -> subprocess.Popen | None:
    """Linux: a small process that notes this process's descendants (Ray's head, raylet, agents,
    workers) and, should this process die without cleaning up (kill -9), ends them."""
    if not sys.platform.startswith("linux") or not os.path.isdir("/proc/self"):
        return None
    try:
        return subprocess.Popen(
            [sys.executable, "-m", "roicli.reaper", str(os.getpid())],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
        )
    except OSError:
        return None


def check_address(address: str, timeout: float = 3.0) -> None:
    """Refuse, in one line and within `timeout` seconds, a Ray address nothing listens on."""
    if address in ("auto", "local"):
        return
    hostport = address.split("://", 1)[-1].rstrip("/")
    host, sep, port = hostport.rpartition(":")
    if not sep or not port.isdigit():
        raise UsageError(f"{{address}}: expected HOST:PORT (or ray://HOST:PORT), got {address!r}", param="address")
    why = _unreachable(host.strip("[]") or "127.0.0.1", int(port), timeout)
    if why:
        raise EngineError(f"{{address}} {address}: cannot reach a Ray cluster ({why})", param="address")


def _unreachable(host: str, port: int, timeout: float) -> str | None:
    """None when something accepts a TCP connection at host:port within `timeout` seconds, else why not."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return None
    except OSError as e:
        return "timed out" if isinstance(e, TimeoutError) else (e.strerror or str(e))


class _Head:
    """Watches a Ray cluster's head (its GCS, `HOST:PORT`) from the driver: with the head gone, Ray
    would end this process after a minute without a word. `result` is `ray.get` that checks, about
    once a second, that the head still answers, and raises one line when it does not."""

    def __init__(self, ray, gcs: str, log: str):
        self.ray, self.gcs, self.log, self.checked = ray, gcs, log, time.monotonic()

    def result(self, ref) -> dict:
        while True:
            try:
                value = self.ray.get(ref, timeout=1.0)
            except self.ray.exceptions.GetTimeoutError:
                value = None
            if time.monotonic() - self.checked >= 1.0:
                self.check()
            if value is not None:
                return value

    def check(self) -> None:
        host, _, port = self.gcs.rpartition(":")
        why = _unreachable(host.strip("[]"), int(port), 3.0) if port.isdigit() else None
        self.checked = time.monotonic()
        if why:
            raise EngineError(
                f"Ray cluster: its head (GCS at {self.gcs}) stopped answering ({why}); complete outputs are "
                f"kept, run again to resume (Ray's log: {self.log})"
            )


def _ray_error(e: BaseException, address: str | None, log: str) -> EngineError:
    """One line from Ray's exception chain: its innermost message's first sentence."""
    chain = [e]
    while chain[-1].__cause__ is not None and len(chain) < 10:
        chain.append(chain[-1].__cause__)
    lines = [line.strip() for line in str(chain[-1]).splitlines() if line.strip()]
    text = lines[-1] if lines else type(chain[-1]).__name__
    text = text.split(". ")[0][:300]
    where = f" at {address}" if address else ""
    return EngineError(f"Ray cluster{where}: {text} (Ray's log: {log})")


def _ray(
    items: list[Item], spec: PoolSpec, outdir: str | None, address: str | None, workers: int, fsync: bool, strict: bool
) -> Iterator[dict]:
    """The same `run_item` as Ray tasks; results in manifest order. Paths are resolved by the driver."""
    if address:
        check_address(address)
    try:
        import ray
    except ImportError:
        raise UsageError("{engine} ray needs Ray: pip install 'roicli[ray]'", param="engine") from None
    started = ok = False
    reaper = None
    with ray_output_to_log() as log:
        try:
            if not ray.is_initialized():
                reaper = start_reaper()  # a local Ray started here does not outlive a killed driver
                ray.init(address=address, include_dashboard=False, log_to_driver=False, configure_logging=False)
                started = True
            task = ray.remote(num_cpus=1, max_retries=1)(_ray_item)
            spec_ref = ray.put(spec)
            head = _Head(ray, ray.get_runtime_context().gcs_address, log)
            in_flight = max(2 * workers, 2 * int(ray.available_resources().get("CPU", 1)))
            window: deque = deque()
            for it in items:
                window.append(task.remote(it, spec_ref, outdir, fsync, strict))
                if len(window) >= in_flight:
                    yield head.result(window.popleft())
            while window:
                yield head.result(window.popleft())
            ok = True
        except GeneratorExit:  # stopped early (--on-error stop): not Ray's fault
            ok = True
            raise
        except RoicliError:
            raise
        except Exception as e:  # a refused driver, a dead head, a lost node: one line, not a traceback
            raise _ray_error(e, address, log) from None
        finally:
            if started:
                with contextlib.suppress(Exception):
                    ray.shutdown()
            if reaper is not None:
                reaper.kill()
                reaper.wait()
            if ok:
                with contextlib.suppress(OSError):
                    os.unlink(log)


# ----------------------------------------------------------------------------- the lock and stale files


class OutdirLock:
    """One run at a time per OUTDIR. The OS lock (flock) goes with its process, so a killed run never
    blocks the next one; the file says who holds it (pid, host, start time)."""

    def __init__(self, outdir: Path):
        self.path = outdir / LOCK_NAME
        self.fd: int | None = None

    def acquire(self) -> str | None:
        """Take the lock; returns a notice when a dead run's lock was taken over. Raises OutputError
        naming the holder when a live run holds it."""
        try:
            import fcntl
        except ImportError:  # no flock (Windows): an exclusive create, dead holders recognised by pid
            return self._acquire_excl()
        for _ in range(10):
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                holder = _read_holder(fd)
                os.close(fd)
                raise OutputError(
                    f"{self.path.parent}: another roicli batch is writing here ({_describe(holder)}); "
                    "wait for it to finish, or use another -o"
                ) from None
            try:
                same = os.stat(self.path).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
            if not same:  # the holder removed the file as we opened it: try again
                os.close(fd)
                continue
            previous = _read_holder(fd)
            try:
                self._write(fd)
            except OSError:
                os.close(fd)
                raise
            self.fd = fd
            if previous:
                return f"took over the lock of a run that is gone ({_describe(previous)})"
            return None
        raise OutputError(f"{self.path}: cannot take the lock (it keeps changing)")

    def _write(self, fd: int) -> None:
        info = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "started": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "proc_start": proc_start(os.getpid()),
        }
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(info) + "\n").encode(), 0)

    def _acquire_excl(self) -> str | None:
        notice = None
        for _ in range(2):
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)
            except FileExistsError:
                with open(self.path, "rb") as f:
                    holder = _parse_holder(f.read())
                if holder and holder.get("host") == socket.gethostname() and not _alive(holder):
                    self.path.unlink(missing_ok=True)
                    notice = f"took over the lock of a run that is gone ({_describe(holder)})"
                    continue
                raise OutputError(
                    f"{self.path.parent}: another roicli batch is writing here ({_describe(holder)}); "
                    f"wait for it to finish, or remove {self.path} if that run is gone"
                ) from None
            self._write(fd)
            self.fd = fd
            return notice
        raise OutputError(f"{self.path}: cannot take the lock")

    def release(self) -> None:
        if self.fd is None:
            return
        with contextlib.suppress(OSError):
            self.path.unlink()
        os.close(self.fd)
        self.fd = None


def _read_holder(fd: int) -> dict | None:
    try:
        return _parse_holder(os.pread(fd, 4096, 0))
    except OSError:
        return None


def _parse_holder(data: bytes) -> dict | None:
    try:
        info = json.loads(data)
    except ValueError:
        return None
    return info if isinstance(info, dict) else None


def _alive(holder: dict) -> bool:
    if os.name == "nt":  # os.kill(pid, 0) would send CTRL_C_EVENT there: never call it
        return True
    pid = holder.get("pid")
    if not isinstance(pid, int):
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    start = holder.get("proc_start")
    return start is None or proc_start(pid) in (None, start)  # a reused pid is not the holder


def _describe(holder: dict | None) -> str:
    if not holder:
        return "holder unknown"
    return f"pid {holder.get('pid')} on {holder.get('host')}, started {holder.get('started')}"


def remove_stale_temp_files(outdir: Path, outputs: set[str]) -> int:
    """Remove the temp files dead runs left in OUTDIR for the files a batch writes (`outputs`, shards,
    indexes, records); we hold the lock, so no live batch writes them. Other files' temp files (a
    concurrent `roicli align -o OUTDIR/x`) are left alone."""
    n = 0
    for name in os.listdir(outdir):
        target = temp_target(name)
        ours = target and (target in outputs or _SHARD.match(target) or target == "index.jsonl")
        if ours and (outdir / name).is_file():
            with contextlib.suppress(OSError):
                (outdir / name).unlink()
                n += 1
    return n


# ----------------------------------------------------------------------------- shards


def shard_tensors(items: list[tuple[int, dict]]) -> dict[str, torch.Tensor | list[torch.Tensor]]:
    """A shard's tensors from its items' outputs, `pooled` as the list of the items' own tensors
    (streamed by a safetensors writer: no joined copy of the shard in memory). `items` (Tensor[R]
    int64, each row's item), `pooled` (Tensor[R, C, PH, PW]), `rois` (Tensor[R, 5] float64); R = the
    items' RoIs together."""
    return {
        "items": torch.cat([torch.full((t["pooled"].shape[0],), i, dtype=torch.int64) for i, t in items]),
        "pooled": [t["pooled"] for _, t in items],
        "rois": torch.cat([t["rois"].double() for _, t in items]).contiguous(),
    }


class ShardWriter:
    """Buffers items' tensors and writes `shard-NNNNN.<format>` of about `size` RoIs each, with
    `shard-NNNNN.index.jsonl` beside it (written after the shard: a shard counts once both exist).

    Memory: the buffered items' tensors, about one shard's bytes; a safetensors shard is written from
    them without a joined copy (the other formats join them first). `index.jsonl` lists every
    (item, id) once: from the newest valid shard holding the item; shards no longer listed are
    removed after the index is written."""

    def __init__(self, outdir: Path, size: int, items: dict[int, Item], fsync: bool = False,
                 fmt: str = ".safetensors"):  # fmt: skip
        self.outdir, self.size, self.items, self.fsync, self.fmt = outdir, size, items, fsync, fmt
        self.buffer: list[dict] = []
        self.rois = 0
        numbers = [int(m.group(1)) for m in map(_SHARD.match, os.listdir(outdir)) if m]
        self.next = 1 + max(numbers, default=-1)
        self.valid: dict[int, str] = {}  # item -> the newest verified shard holding it

    def scan(self, stamps: dict[int, dict], overwrite: bool) -> tuple[set[int], Counter]:
        """The items of this job whose rows in an existing shard are verified (a complete shard in
        this job's format whose record for the item matches its stamp), and why the others found
        there are redone. Items of other jobs (indexes beyond this manifest) keep their newest
        complete shard."""
        reasons: Counter = Counter()
        why_not: dict[int, str] = {}
        for name in sorted(n for n in os.listdir(self.outdir) if n.endswith(".index.jsonl") and _SHARD.match(n)):
            try:
                rows = [json.loads(line) for line in (self.outdir / name).read_text().splitlines() if line.strip()]
                in_shard = {int(r["item"]) for r in rows}
                shard = str(rows[0]["shard"]) if rows else ""
            except (OSError, ValueError, KeyError, TypeError):
                continue  # not ours to read; removed at the end of a complete run
            if _SHARD.match(shard) is None or shard.endswith(".index.jsonl"):
                continue
            metadata = complete_metadata(self.outdir / shard)
            records = None if metadata is None else (_record(metadata) or {}).get("items", {})
            for i in in_shard:
                if i not in stamps:
                    if metadata is not None:
                        self.valid[i] = shard
                    continue
                if overwrite:
                    continue
                if records is None:
                    why = "incomplete or unreadable"
                elif not shard.endswith(self.fmt):
                    why = "format changed"
                else:
                    why = "no batch record" if str(i) not in records else _compare(records[str(i)], stamps[i])
                if why is None:
                    self.valid[i] = shard
                else:
                    why_not[i] = why
        for i, why in why_not.items():
            if i not in self.valid:
                reasons[why] += 1
        return {i for i in self.valid if i in stamps}, reasons

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
        shard = name + self.fmt
        drop = ("features", "rois", "ids", "labels", "count", "keys", "image_size", "spatial_scale",
                "spatial_scale_source")
        meta = {k: v for k, v in self.buffer[0]["metadata"].items() if k not in drop}
        meta["items"] = [self.items[r["index"]].output for r in self.buffer]
        meta[STAMP_KEY] = {"items": {str(r["index"]): r["stamp"] for r in self.buffer}}
        ids = [rid for r in self.buffer for rid in r["metadata"]["ids"]]
        tensors = shard_tensors([(r["index"], r["tensors"]) for r in self.buffer])
        parts = encode(tensors, meta, self.fmt, {"ids": ids})
        del tensors
        write_output(str(self.outdir / shard), parts, self.fsync)
        del parts
        lines = []
        row = 0
        for r in self.buffer:
            output = self.items[r["index"]].output
            for rid in r["metadata"]["ids"]:
                lines.append(json.dumps({"item": r["index"], "output": output, "id": rid, "shard": shard, "row": row}))
                row += 1
        write_output(str(self.outdir / f"{name}.index.jsonl"), ("\n".join(lines) + "\n").encode(), self.fsync)
        for r in self.buffer:
            self.valid[r["index"]] = shard
        self.buffer, self.rois, self.next = [], 0, self.next + 1

    def finish(self) -> None:
        """Flush the rest, write `index.jsonl` (each item's rows from its newest valid shard, in shard
        order), then remove the shards it no longer lists."""
        self.flush()
        keep = set(self.valid.values())
        lines = []
        for shard in sorted(keep):
            index = _SHARD.match(shard).expand(r"shard-\1.index.jsonl")
            for line in (self.outdir / index).read_text().splitlines():
                if line.strip() and self.valid.get(json.loads(line)["item"]) == shard:
                    lines.append(line + "\n")
        write_output(str(self.outdir / "index.jsonl"), "".join(lines).encode(), self.fsync)
        kept = {_SHARD.match(shard).group(1) for shard in keep}
        for name in os.listdir(self.outdir):
            m = _SHARD.match(name)
            if m and m.group(1) not in kept:
                with contextlib.suppress(OSError):
                    (self.outdir / name).unlink()


# ----------------------------------------------------------------------------- the job


def _absolute(item: Item) -> Item:
    rois = item.rois if item.rois_text is not None else os.path.abspath(item.rois)
    return replace(item, features=os.path.abspath(item.features), rois=rois)


def _absolute_spec(spec: PoolSpec) -> PoolSpec:
    if spec.backbone != "builtin":
        return replace(spec, backbone=os.path.abspath(spec.backbone))
    return spec


@dataclass
class _Records:
    """errors.jsonl and warnings.jsonl: what can be recorded is; a full disk is counted, not fatal."""

    outdir: Path
    lost: int = 0
    files: dict = field(default_factory=dict)

    def open(self) -> None:
        for name in ("errors.jsonl", "warnings.jsonl"):
            try:
                self.files[name] = open(self.outdir / name, "w")
            except OSError:
                self.files[name] = None

    def write(self, name: str, record: dict) -> None:
        f = self.files.get(name)
        try:
            if f is None:
                raise OSError(errno.ENOSPC, "not open")
            f.write(json.dumps(record) + "\n")
            f.flush()
        except OSError:
            self.lost += 1

    def close(self) -> None:
        for f in self.files.values():
            if f is not None:
                with contextlib.suppress(OSError):
                    f.close()


def run_batch(
    items: list[Item],
    cfg: BatchConfig,
    progress: Callable[[dict], None] | None = None,
    notice: Callable[[str], None] | None = None,
) -> dict:
    """Run the job; returns the summary. Bad items go to `errors.jsonl`, per-item warnings to
    `warnings.jsonl` in the output folder. A full disk stops the job with an OutputError."""
    outdir = Path(os.path.abspath(cfg.outdir))
    try:
        outdir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise OutputError(f"{cfg.outdir}: cannot create the output folder: {e.strerror}") from None
    lock = OutdirLock(outdir)
    try:
        took_over = lock.acquire()
    except OSError as e:  # a read-only or full file system
        raise OutputError(f"{outdir}: cannot take the lock {LOCK_NAME}: {e.strerror or e}") from None
    try:
        if took_over and notice:
            notice(f"{outdir}: {took_over}")
        removed = remove_stale_temp_files(outdir, {it.output for it in items})
        if removed and notice:
            notice(f"{outdir}: removed {removed} temp file(s) left by a run that did not finish")
        return _run_locked([_absolute(it) for it in items], cfg, outdir, progress)
    finally:
        lock.release()


def _run_locked(items: list[Item], cfg: BatchConfig, outdir: Path, progress) -> dict:
    spec = _absolute_spec(cfg.spec)
    by_index = {it.index: it for it in items}
    stamps = {it.index: stamp(it, spec) for it in items}
    writer = ShardWriter(outdir, cfg.shard_rois, by_index, cfg.fsync, cfg.shard_format) if cfg.shard_rois else None
    reasons: Counter = Counter()
    if writer:
        done, reasons = writer.scan(stamps, cfg.overwrite)
    else:
        done = set()
        if not cfg.overwrite:
            for it in items:
                path = outdir / it.output
                if not os.path.lexists(path):
                    continue
                why = verify(path, stamps[it.index])
                if why is None:
                    done.add(it.index)
                else:
                    reasons[why] += 1
    todo = [it for it in items if it.index not in done]
    workers, threads = plan_workers(cfg.workers)
    target = None if writer else str(outdir)
    if cfg.engine == "ray":
        results = _ray(todo, spec, target, cfg.address, workers, cfg.fsync, cfg.strict)
    else:
        results = _local(todo, spec, target, workers, threads, cfg.fsync, cfg.strict)
    ok = failed = rois = n_warnings = 0
    stopped = False
    disk_full: str | None = None
    records = _Records(outdir)
    records.open()

    def record_error(index: int, error: str) -> None:
        it = by_index[index]
        records.write(
            "errors.jsonl",
            {"item": it.index, "features": it.features, "rois": it.rois, "output": it.output, "error": error},
        )

    try:
        for res in results:
            error = res.get("error") if not res["ok"] else None
            if error is None and writer:
                try:
                    error = writer.add(res)
                except OutputError as e:  # a shard write failed: every buffered item failed with it
                    if not _is_disk_full(e):
                        raise
                    disk_full = str(e)
                    for r in writer.buffer:
                        if r is not res:  # counted as done when it was buffered
                            ok, rois = ok - 1, rois - r["rois"]
                        failed += 1
                        record_error(r["index"], str(e))
                    writer.buffer, writer.rois = [], 0
                    break
            if error is None:
                ok += 1
                rois += res["rois"]
                for w in res.get("warnings", []):
                    n_warnings += 1
                    it = by_index[res["index"]]
                    records.write(
                        "warnings.jsonl",
                        {"item": it.index, "features": it.features, "rois": it.rois, "output": it.output, "warning": w},
                    )
            else:
                failed += 1
                record_error(res["index"], error)
                if res.get("disk_full"):
                    disk_full = error
            if progress:
                progress({"ok": ok, "failed": failed, "rois": rois, "items": len(items)})
            if disk_full or (error is not None and cfg.on_error == "stop"):
                stopped = True
                break
        results.close()  # stops the workers when the loop ended early
        if writer and not disk_full:
            try:
                writer.finish()
            except OutputError as e:
                if not _is_disk_full(e):
                    raise
                disk_full = str(e)
    except (KeyboardInterrupt, Terminated) as e:  # stop the workers now, not after their current items
        with contextlib.suppress(BaseException):
            results.throw(e)
        raise
    finally:
        results.close()  # on every exit path: no worker (nor Ray) outlives the loop
        records.close()
    if disk_full:
        lost = f"; {records.lost} record(s) could not be written" if records.lost else ""
        raise OutputError(
            f"{outdir}: the disk is full ({disk_full}); stopped after {ok} item(s) done, {failed} failed, "
            f"recorded in {outdir / 'errors.jsonl'}{lost}. Free some space and run again: complete outputs are kept"
        )
    return {
        "items": len(items),
        "done": ok,
        "skipped": len(done),
        "redone": sum(reasons.values()),
        "redo_reasons": dict(sorted(reasons.items())),
        "failed": failed,
        "warnings": n_warnings,
        "rois": rois,
        "stopped_on_error": stopped,
        "outdir": str(outdir),
        "errors": str(outdir / "errors.jsonl"),
        "warnings_file": str(outdir / "warnings.jsonl"),
        "engine": cfg.engine,
        "workers": workers if cfg.engine == "local" else None,
        "threads_per_worker": threads if cfg.engine == "local" else None,
    }
