"""Worker processes for `SubprocessRepl`: starting them, one spare, killing and cleanup.

Nothing here knows an event loop: a worker is a process and the host's raw pipe ends, so
a spare started for one run can serve the next run on another loop or thread.

- Every worker is started on one long-lived "spawner" thread (bwrap's --die-with-parent
  is tied to the thread that started it), as ``python -I -S -B -c WORKER_BOOT``, inside
  bwrap (see `rlm.repl.sandbox`) or not, in a pids cgroup when one can be made.
- `Pool` keeps at most one started, idle worker per configuration.
- Killed workers are reaped, and their scratch folders and cgroups removed, on a
  "reaper" thread, so closing a REPL never waits for it.
"""

from __future__ import annotations

import asyncio
import atexit
import concurrent.futures
import contextlib
import functools
import importlib.machinery
import itertools
import logging
import marshal
import os
import queue
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from rlm.errors import ConfigurationError, SandboxUnavailableError
from rlm.repl import bwrap
from rlm.repl.sandbox import CgroupTree, Isolation, cgroup_tree, pid_alive, worker_env

logger = logging.getLogger("rlm.repl")

T = TypeVar("T")

RLM_DIR = str(Path(__file__).resolve().parent.parent)
# How the worker starts: `rlm` and `rlm.repl` as bare packages (their __init__ would import
# the whole library), then the worker's own modules from code the host compiled once and
# sends on stdin (so no worker compiles them again, even where no .pyc can be written),
# else by a normal import.
WORKER_BOOT = (
    "import marshal, sys, types\n"
    "for name, path in (('rlm', sys.argv[1]), ('rlm.repl', sys.argv[1] + '/repl')):\n"
    "    sys.modules[name] = module = types.ModuleType(name)\n"
    "    module.__path__ = [path]\n"
    "blob = sys.stdin.buffer.read()\n"
    "for name, path, code in (marshal.loads(blob) if blob else ()):\n"
    "    sys.modules[name] = module = types.ModuleType(name)\n"
    "    module.__file__ = path\n"
    "    exec(code, module.__dict__)\n"
    "del blob\n"
    "from rlm.repl.worker import main\n"
    "main(sys.argv[1:])\n"
)
# The worker's modules, in import order.
WORKER_MODULES = ("protocol", "helpers", "values", "output", "namespace", "receive", "worker")


# -- the spawner thread ---------------------------------------------------------------------------


class _Spawner:
    """One long-lived thread running jobs in order: starting workers, or reaping them.

    Workers are started only here: bwrap's --die-with-parent (PR_SET_PDEATHSIG) fires when
    the *thread* that started it ends, so they must not come from short-lived threads.
    """

    def __init__(self, name: str = "rlm-repl-spawner") -> None:
        self._name = name
        self._jobs: queue.SimpleQueue[tuple[Callable[[], Any], concurrent.futures.Future[Any]]]
        self._jobs = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def submit(self, fn: Callable[[], T]) -> concurrent.futures.Future[T]:
        future: concurrent.futures.Future[T] = concurrent.futures.Future()
        with self._lock:
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._work, name=self._name, daemon=True)
                self._thread.start()
        self._jobs.put((fn, future))
        return future

    def wait_idle(self, timeout: float) -> None:
        """Wait (up to `timeout`) for the jobs submitted so far; at once if none ran."""
        with self._lock:
            running = self._thread is not None and self._thread.is_alive()
        if running:
            self.submit(lambda: None).result(timeout=timeout)  # jobs run in order

    def _work(self) -> None:
        while True:
            fn, future = self._jobs.get()
            if not future.set_running_or_notify_cancel():
                continue
            try:
                future.set_result(fn())
            except BaseException as exc:
                future.set_exception(exc)


# -- a worker process, independent of any event loop ------------------------------------------


@dataclass(frozen=True, slots=True)
class SpawnConfig:
    """What a worker is started with; spares are kept per configuration."""

    isolation: str  # "bwrap" or "none", resolved
    env: tuple[tuple[str, str], ...] = ()
    hide: tuple[str, ...] = ()
    scratch_bytes: int = 256 << 20
    scratch_inodes: int = 16_384


_cgroup_names = itertools.count(1)


@dataclass(eq=False)
class WorkerProcess:
    """A started worker: its process and the host's ends of its pipes."""

    popen: subprocess.Popen[bytes]
    config: SpawnConfig
    to_worker: int
    from_worker: int
    stdout: int
    stderr: int
    scratch: str
    cgroup: Path | None
    tree: CgroupTree | None
    preread: bytes = b""
    scratch_mounted: bool = False
    killed: bool = False
    disposed: bool = False
    fds_closed: bool = False
    lock: threading.Lock = field(default_factory=threading.Lock)

    def alive(self) -> bool:
        return not self.killed and self.popen.poll() is None

    def send_kill(self) -> None:
        """SIGKILL the worker and what it started, without waiting (safe on the loop)."""
        self.killed = True
        if self.popen.returncode is None:
            with contextlib.suppress(ProcessLookupError, PermissionError, OSError):
                if self.config.isolation == "none":
                    # Its process group: the worker and the children it did not detach.
                    os.killpg(self.popen.pid, signal.SIGKILL)
                else:
                    # bwrap: the sandbox's PID namespace dies with it.
                    self.popen.kill()
        if self.tree is not None and self.cgroup is not None:
            for pid in self.tree.procs(self.cgroup):
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, signal.SIGKILL)

    def kill(self) -> None:
        """Kill the worker and everything it started, and reap it (blocking)."""
        with self.lock:
            self.send_kill()
            if self.config.isolation == "none":
                with contextlib.suppress(ProcessLookupError, PermissionError, OSError):
                    os.killpg(self.popen.pid, signal.SIGKILL)
            if self.tree is not None and self.cgroup is not None:
                self.tree.kill_all(self.cgroup)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.popen.wait(timeout=10)

    def dispose(self) -> None:
        """Kill, then free the pipes, the scratch folder and the cgroup (blocking)."""
        with self.lock:
            if self.disposed:
                return
            self.disposed = True
        self.kill()
        self.close_fds()
        if self.tree is not None and self.cgroup is not None:
            self.tree.remove(self.cgroup)
        if self.scratch_mounted:
            bwrap.unmount_scratch(self.scratch)
        shutil.rmtree(self.scratch, ignore_errors=True)
        _live.discard(self)

    def close_fds(self) -> None:
        with self.lock:
            if self.fds_closed:
                return
            self.fds_closed = True
            for fd in (self.to_worker, self.from_worker, self.stdout, self.stderr):
                with contextlib.suppress(OSError):
                    os.close(fd)


_live: set[WorkerProcess] = set()


_stale_checked = False
_code_blob: bytes | None = None


def _worker_code() -> bytes:
    """The worker's modules, compiled once per host process (marshal data, or b"").

    Through the import system's own loader, so an installed rlm's `.pyc` files are used
    (about 14 ms of compiling saved on the CI machine) and written where allowed."""
    global _code_blob
    if _code_blob is None:
        try:
            here = Path(__file__).resolve().parent
            modules = []
            for name in WORKER_MODULES:
                path = str(here / f"{name}.py")
                code = importlib.machinery.SourceFileLoader(f"rlm.repl.{name}", path).get_code(
                    f"rlm.repl.{name}"
                )
                modules.append((f"rlm.repl.{name}", path, code))
            _code_blob = marshal.dumps(tuple(modules))
        except (ImportError, OSError, SyntaxError, ValueError):
            _code_blob = b""
    return _code_blob


def _clean_stale_scratch() -> None:
    """Once per process: delete scratch folders of hosts that died without cleaning up."""
    global _stale_checked
    if _stale_checked:
        return
    _stale_checked = True
    root = tempfile.gettempdir()
    with contextlib.suppress(OSError):
        for name in os.listdir(root):
            parts = name.split("-")
            ours = len(parts) == 4 and name.startswith("rlm-repl-") and parts[2].isdigit()
            if ours and not pid_alive(int(parts[2])):
                bwrap.unmount_scratch(os.path.join(root, name))
                shutil.rmtree(os.path.join(root, name), ignore_errors=True)


def spawn(config: SpawnConfig) -> WorkerProcess:
    """Start a worker (blocking; runs on the spawner thread)."""
    _clean_stale_scratch()
    scratch = tempfile.mkdtemp(prefix=f"rlm-repl-{os.getpid()}-")
    os.chmod(scratch, 0o700)
    to_r, to_w = os.pipe()
    from_r, from_w = os.pipe()
    out_r, out_w = os.pipe()
    err_r, err_w = os.pipe()
    code_r, code_w = os.pipe()
    with contextlib.suppress(AttributeError, OSError):
        import fcntl

        fcntl.fcntl(from_w, fcntl.F_SETPIPE_SZ, 1 << 20)
        fcntl.fcntl(to_w, fcntl.F_SETPIPE_SZ, 1 << 20)
        fcntl.fcntl(code_w, fcntl.F_SETPIPE_SZ, 1 << 20)
    argv = [
        sys.executable,
        "-I",
        "-S",
        "-B",
        "-X",
        "utf8",
        "-c",
        WORKER_BOOT,
        RLM_DIR,
        str(to_r),
        str(from_w),
    ]
    env_extra = dict(config.env)
    mounted = False
    seccomp_fd: int | None = None
    if config.isolation == "bwrap":
        from rlm.repl.seccomp import SeccompUnavailable, program_fd

        try:
            seccomp_fd = program_fd()
        except SeccompUnavailable as exc:
            shutil.rmtree(scratch, ignore_errors=True)
            for fd in (to_r, to_w, from_r, from_w, out_r, out_w, err_r, err_w, code_r, code_w):
                os.close(fd)
            bwrap.record(False, str(exc))
            raise BwrapFailed(str(exc)) from None
        mounted = bwrap.mount_scratch(scratch, config.scratch_bytes, config.scratch_inodes)
        cmd = bwrap.command(
            scratch,
            RLM_DIR,
            argv,
            seccomp_fd=seccomp_fd,
            scratch_bytes=config.scratch_bytes,
            scratch_mounted=mounted,
            hide=config.hide,
        )
        env = worker_env(bwrap.SANDBOX_SCRATCH, env_extra)
        cwd = "/"
    else:
        _drop_dumpable()
        cmd = argv
        env = worker_env(scratch, env_extra)
        cwd = scratch
    tree = cgroup_tree()
    group: Path | None = None
    if tree is not None:
        try:
            group = tree.create(f"w-{os.getpid()}-{next(_cgroup_names)}")
            cmd = [
                "/bin/sh",
                "-c",
                'echo $$ > "$0" && exec "$@"',
                str(group / "cgroup.procs"),
                *cmd,
            ]
        except OSError:
            group = None
    try:
        popen = subprocess.Popen(
            cmd,
            stdin=code_r,
            stdout=out_w,
            stderr=err_w,
            pass_fds=(to_r, from_w) if seccomp_fd is None else (to_r, from_w, seccomp_fd),
            env=env,
            cwd=cwd,
            start_new_session=True,
        )
    except BaseException:
        for fd in (to_r, to_w, from_r, from_w, out_r, out_w, err_r, err_w, code_r, code_w):
            with contextlib.suppress(OSError):
                os.close(fd)
        if tree is not None and group is not None:
            tree.remove(group)
        if mounted:
            bwrap.unmount_scratch(scratch)
        shutil.rmtree(scratch, ignore_errors=True)
        raise
    finally:
        if seccomp_fd is not None:
            os.close(seccomp_fd)
    for fd in (to_r, from_w, out_w, err_w, code_r):
        os.close(fd)
    # The worker's code on its stdin, then end of file (what the model's code reads too).
    with contextlib.suppress(OSError):
        view = memoryview(_worker_code())
        while view:
            view = view[os.write(code_w, view) :]
    os.close(code_w)
    for fd in (to_w, from_r, out_r, err_r):
        os.set_blocking(fd, False)
    process = WorkerProcess(
        popen=popen,
        config=config,
        to_worker=to_w,
        from_worker=from_r,
        stdout=out_r,
        stderr=err_r,
        scratch=scratch,
        scratch_mounted=mounted,
        cgroup=group,
        tree=tree,
    )
    _live.add(process)
    if config.isolation == "bwrap" and bwrap.status()[0] is None:
        _verify_first_sandbox(process)
    return process


class BwrapFailed(Exception):
    """The first sandboxed worker could not start: bwrap does not work here."""


def _verify_first_sandbox(process: WorkerProcess) -> None:
    """Wait for the first sandboxed worker's first message: that is the check that bwrap
    works here (no separate probe). Keeps what was read for the connection."""
    deadline = time.monotonic() + 30
    while True:
        left = deadline - time.monotonic()
        ready, _, _ = select.select([process.from_worker], [], [], max(0.0, left))
        if not ready:
            problem = "the sandbox did not start within 30 s"
            break
        try:
            data = os.read(process.from_worker, 1 << 16)
        except (BlockingIOError, InterruptedError):
            continue
        if data:
            process.preread = data
            bwrap.record(True)
            return
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.popen.wait(timeout=5)
        try:
            said = os.read(process.stderr, 1 << 16).decode(errors="replace").strip()
        except OSError:
            said = ""
        problem = said[-300:] or f"exit status {process.popen.returncode}"
        break
    process.dispose()
    bwrap.record(False, problem)
    raise BwrapFailed(problem)


# -- the pool of spare workers ------------------------------------------------------------------


#: Spares kept for a configuration once its runs have come faster than workers start.
MAX_SPARES = 2


class Pool:
    """Idle, already-started workers, per configuration.

    One spare is kept for each configuration; once a run finds its spare still booting
    (runs coming back to back, faster than an interpreter starts), two are kept for
    that configuration from then on, so the next run finds one ready.
    """

    def __init__(self) -> None:
        self.spawner = _Spawner()
        self._idle: dict[SpawnConfig, list[WorkerProcess]] = {}
        self._starting: dict[SpawnConfig, list[concurrent.futures.Future[None]]] = {}
        self._wanted: dict[SpawnConfig, int] = {}
        self._closed = False
        self._lock = threading.Lock()

    async def acquire(self, config: SpawnConfig) -> tuple[WorkerProcess, bool]:
        """A worker for `config`, and whether it was a spare (already started)."""
        while True:
            with self._lock:
                idle = self._idle.get(config)
                process = idle.pop(0) if idle else None  # the oldest is furthest along
                starting = list(self._starting.get(config, ()))
            if process is not None:
                if not process.alive():
                    reaper.submit(process.dispose)
                    continue
                if not _booted(process):
                    self._want_more(config)
                return process, True
            if not starting:
                break
            # A spare is being started: it is further along than a new one would be.
            self._want_more(config)
            await asyncio.wait([asyncio.wrap_future(f) for f in starting[:1]])
        job = self.spawner.submit(lambda: spawn(config))
        try:
            process = await asyncio.wrap_future(job)
        except asyncio.CancelledError:
            # The spawn job may be running already and cannot be stopped: the worker it
            # starts is nobody's, so it is disposed of as soon as it exists.
            job.add_done_callback(_dispose_unclaimed)
            raise
        return process, False

    def _want_more(self, config: SpawnConfig) -> None:
        with self._lock:
            if config in self._wanted:  # only configurations that keep spares at all
                self._wanted[config] = MAX_SPARES

    def replenish(self, config: SpawnConfig) -> None:
        """Start spare workers for `config` in the background, up to the number wanted."""
        with self._lock:
            if self._closed:
                return
            wanted = self._wanted.setdefault(config, 1)
            starting = self._starting.setdefault(config, [])
            missing = wanted - len(self._idle.get(config, ())) - len(starting)
            for _ in range(missing):
                cell: list[concurrent.futures.Future[None]] = []
                # The job takes the lock to file its worker, so it cannot run before
                # `cell` holds its future (appended while we still hold the lock).
                cell.append(self.spawner.submit(functools.partial(self._start_spare, config, cell)))
                starting.append(cell[0])

    def replenish_after(self, config: SpawnConfig, done: concurrent.futures.Future[Any]) -> None:
        """`replenish(config)` once `done` has finished (e.g. a used worker was reaped)."""
        done.add_done_callback(lambda _: self.replenish(config))

    def _start_spare(
        self, config: SpawnConfig, cell: list[concurrent.futures.Future[None]]
    ) -> None:
        try:
            spare: WorkerProcess | None = spawn(config)
        except Exception:
            logger.debug("could not start a spare REPL worker", exc_info=True)
            spare = None
        with self._lock:
            starting = self._starting.get(config, [])
            if cell and cell[0] in starting:
                starting.remove(cell[0])
            if spare is not None:
                self._idle.setdefault(config, []).append(spare)

    def drain(self, *, close: bool = False) -> None:
        """Dispose of the idle spares; with `close`, start no more (interpreter exit)."""
        with self._lock:
            self._closed = self._closed or close
            idle = [process for processes in self._idle.values() for process in processes]
            self._idle.clear()
        for process in idle:
            process.dispose()


def _dispose_unclaimed(job: concurrent.futures.Future[WorkerProcess]) -> None:
    if not job.cancelled() and job.exception() is None:
        reaper.submit(job.result().dispose)


def _booted(process: WorkerProcess) -> bool:
    """Whether the worker has sent its first message (it is up and waiting), checked
    without reading it."""
    if process.preread:
        return True
    poller = select.poll()  # not select(): descriptors past 1024 are fine
    try:
        poller.register(process.from_worker, select.POLLIN)
        return bool(poller.poll(0))
    except (OSError, ValueError):
        return False


pool = Pool()
# Reaps killed workers and deletes their scratch folders off the event loop, so closing a
# REPL does not wait for it.
reaper = _Spawner("rlm-repl-reaper")


#: Seconds the exit handler waits for workers already being reaped (their scratch
#: folders are removed then, not left for the next rlm process to clean up).
REAP_AT_EXIT_S = 5.0


def _shutdown() -> None:
    pool.drain(close=True)
    with contextlib.suppress(Exception):
        # A spare still being started is filed after the first drain: wait, drain again.
        pool.spawner.wait_idle(REAP_AT_EXIT_S)
    pool.drain(close=True)
    with contextlib.suppress(Exception):
        reaper.wait_idle(REAP_AT_EXIT_S)
    for process in list(_live):
        with contextlib.suppress(Exception):
            process.dispose()


def _forget_after_fork() -> None:
    # A forked copy of the host must not use (or kill) the parent's workers.
    global pool, reaper
    pool = Pool()
    reaper = _Spawner("rlm-repl-reaper")
    _live.clear()


atexit.register(_shutdown)
os.register_at_fork(after_in_child=_forget_after_fork)


# -- isolation --------------------------------------------------------------------------------

#: The environment variable that accepts a plain subprocess where isolation is "auto".
SANDBOX_ENV = "RLM_SANDBOX"


def refusal(problem: str) -> str:
    """Why the default REPL will not start, and the three ways on, in one line."""
    return (
        f"the sandbox for model-written code cannot be built here: {problem}. Ways on: "
        "install bubblewrap (Debian/Ubuntu: apt-get install bubblewrap) and allow user "
        "namespaces; or, inside a container you trust, accept a plain subprocess with "
        f"SubprocessRepl(isolation='none') or {SANDBOX_ENV}=none; or run trusted code in "
        "this process with repl='inprocess' (see docs/sandbox.md)."
    )


def resolve_isolation(requested: Isolation) -> str:
    """'bwrap' or 'none'. "auto" means bwrap unless `RLM_SANDBOX=none`; where the sandbox
    cannot be built there is no silent fallback: `SandboxUnavailableError` says why and
    what to do. bwrap is assumed to work until a first worker shows it does not."""
    if requested == "auto":
        chosen = os.environ.get(SANDBOX_ENV, "").strip().lower()
        if chosen not in ("", "auto", "bwrap", "none"):
            raise ConfigurationError(
                f"{SANDBOX_ENV}={chosen!r}: use 'none' to accept a plain subprocess for the "
                "REPL, or leave it unset for the bubblewrap sandbox"
            )
        if chosen == "none":
            requested = "none"
    if requested == "none":
        return "none"
    ok, problem = bwrap.status()
    if ok is False:
        raise SandboxUnavailableError(refusal(problem))
    return "bwrap"


_dumpable_dropped = False


def _drop_dumpable() -> None:
    """Make this (host) process non-dumpable before it starts an unsandboxed worker, so
    processes of the same user that are not root can no longer read its
    `/proc/<pid>/environ` or `/proc/<pid>/mem` (nor attach a debugger). Side effect: no
    core dumps of this process. Root, or code with CAP_SYS_PTRACE, still can."""
    global _dumpable_dropped
    if _dumpable_dropped or not sys.platform.startswith("linux"):
        return
    _dumpable_dropped = True
    try:
        import ctypes

        pr_set_dumpable = 4
        if ctypes.CDLL(None, use_errno=True).prctl(pr_set_dumpable, 0, 0, 0, 0) != 0:
            logger.info("could not make the host non-dumpable (errno %d)", ctypes.get_errno())
    except OSError:
        logger.info("could not make the host non-dumpable", exc_info=True)
