"""Ends what a batch driver started should the driver die without cleaning up (`kill -9`).

Run as `python -m roicli.reaper DRIVER_PID` (by `roicli.jobs.start_reaper`, Linux only): while its
parent, the driver, lives it notes the driver's descendants (a local Ray's head, raylet, agents and
workers); once the driver is gone it sends each of them SIGTERM, then SIGKILL. A process is known by
its pid and its start time, so a pid the system has since reused is never signalled. Imports nothing
but the standard library.
"""

from __future__ import annotations

import os
import signal
import sys
import time


def proc_start(pid: int) -> str | None:
    """The start time of process `pid` (field 22 of /proc/PID/stat, clock ticks after boot), or None."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def _children() -> dict[int, list[int]]:
    """parent pid -> its children's pids, from /proc."""
    kids: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    parent = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            kids.setdefault(parent, []).append(int(entry))
    return kids


def main(driver: int) -> None:
    me, seen = os.getpid(), {}  # pid -> start time
    while os.getppid() == driver:
        kids, todo = _children(), [driver]
        while todo:  # the whole tree, every time: a known child may have started new ones
            for pid in kids.get(todo.pop(), []):
                if pid != me:
                    seen[pid] = proc_start(pid)  # a reused pid: the process there now
                    todo.append(pid)
        time.sleep(0.5)
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid, start in seen.items():
            if start is not None and proc_start(pid) == start:
                try:
                    os.kill(pid, sig)
                except OSError:
                    pass
        time.sleep(1)


if __name__ == "__main__":
    main(int(sys.argv[1]))
