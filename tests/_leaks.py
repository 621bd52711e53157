"""What a run may leave behind, measured: worker processes, file descriptors, threads, loops.

Spare workers are the pool's on purpose; `settle()` disposes of them (and waits for the
reaper) so that what is left afterwards is a leak.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import os
import threading
import time
from dataclasses import dataclass

import psutil

from rlm._sync import close_thread_loop
from rlm.repl import workers

# Threads that live for the process once started (not a leak).
LONG_LIVED_THREADS = ("rlm-repl-spawner", "rlm-repl-reaper")


def settle() -> None:
    """Dispose of spare workers and wait for every spawn and reap in flight; close the
    event loop (and its connections) that blocking runs on this thread keep."""
    close_thread_loop()
    for _ in range(2):
        workers.pool.spawner.wait_idle(30)
        workers.pool.drain()
        workers.reaper.wait_idle(30)


def children() -> set[int]:
    return {p.pid for p in psutil.Process().children(recursive=True)}


def fds() -> dict[str, str]:
    found = {}
    for name in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):  # the listing's own descriptor, closed already
            found[name] = os.readlink(f"/proc/self/fd/{name}")
    return found


def threads() -> set[str]:
    return {
        f"{t.name}#{t.ident}"
        for t in threading.enumerate()
        if not t.name.startswith(LONG_LIVED_THREADS)
    }


def open_loops() -> int:
    return sum(
        isinstance(o, asyncio.AbstractEventLoop) and not o.is_closed() for o in gc.get_objects()
    )


@dataclass
class Snapshot:
    children: set[int]
    fds: dict[str, str]
    threads: set[str]
    loops: int

    @classmethod
    def take(cls) -> Snapshot:
        settle()
        gc.collect()
        return cls(children(), fds(), threads(), open_loops())

    def leaks(self) -> list[str]:
        now = Snapshot.take()
        found = []
        if now.children - self.children:
            found.append(f"processes {sorted(now.children - self.children)}")
        extra = {k: v for k, v in now.fds.items() if self.fds.get(k) != v}
        if extra:
            found.append(f"fds {extra}")
        if now.threads - self.threads:
            found.append(f"threads {sorted(now.threads - self.threads)}")
        if now.loops > self.loops:
            found.append(f"{now.loops - self.loops} open event loop(s)")
        return found

    def assert_clean(self, wait_s: float = 15.0) -> None:
        """Fail if something is left once cleanup in flight (reaping) has had `wait_s`."""
        deadline = time.monotonic() + wait_s
        while True:
            found = self.leaks()
            if not found or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        assert not found, "left behind: " + "; ".join(found)
