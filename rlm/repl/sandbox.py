"""How `SubprocessRepl` confines its worker: limits, cgroups, a clean environment.

- `ReplLimits`: the per-run limits (time per block, memory, CPU, output, processes,
  files, scratch) and the bounds on what a worker can make the host hold.
- Isolation (`Isolation`): the bubblewrap sandbox is built in `rlm.repl.bwrap`; without
  it the worker is a plain subprocess with the same resource limits, only when asked
  for (see docs/sandbox.md for what each path protects).
- Processes: a pids cgroup when one can be created (root, or a delegated cgroup);
  otherwise RLIMIT_NPROC, which the kernel does not enforce for root.
- Environment: an allowlist (PATH, locale, TZ, a HOME in scratch), so no API keys.

Nothing here imports more than the standard library at import time.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from rlm.errors import ConfigurationError
from rlm.repl.protocol import EXIT_LOST_CONNECTION

Isolation = Literal["auto", "bwrap", "none"]

# Host environment variables the worker may see (values copied when set).
ENV_ALLOWLIST: tuple[str, ...] = ("PATH", "LANG", "LC_ALL", "LC_CTYPE", "TZ")


@dataclass(frozen=True, slots=True)
class ReplLimits:
    """Limits for the code a model runs in a `SubprocessRepl`.

    Args:
        wall_seconds: time per code block. At the limit the block is interrupted (a
            `KeyboardInterrupt` in the model's code; variables are kept); if it has not
            stopped `grace_seconds` later, the worker is killed and replaced.
        grace_seconds: how long an interrupted block gets to stop.
        memory_mb: address space the model's code may allocate, on top of what the
            worker holds once the context is loaded (RLIMIT_AS; `MemoryError` past it).
            None: no limit.
        cpu_seconds: CPU time per block (RLIMIT_CPU; the block is stopped past it).
            None: only the wall-time limit applies.
        max_processes: processes and threads in the sandbox at once (a pids cgroup, or
            RLIMIT_NPROC; see docs/sandbox.md). None: no limit.
        output_chars: stdout (and stderr) characters kept per block, head and tail; the
            true length is always reported.
        file_size_mb: the largest file the code may write (RLIMIT_FSIZE). None: no limit.
        scratch_mb: size of the scratch folder (a tmpfs under bwrap). It lives in memory,
            so it is counted in `memory_mb`: the code may allocate `memory_mb - scratch_mb`.
            None: 256 MB, or a quarter of `memory_mb` if that is less.
        scratch_inodes: files and folders the scratch folder may hold (bwrap, host root).

    What a worker can make the host hold is bounded too; past any of these the worker is
    killed and replaced (its variables are lost), the model is told in one line and a
    `ReplViolation` event is emitted:

    Args:
        host_buffer_mb: bytes of the worker's frames the host holds at once: the frame
            being read plus every sub-call being served (a total, not per frame).
        max_pending_calls: sub-calls one worker may have in flight at once.
        json_depth: how deeply a frame's JSON may nest (the protocol needs 3).
        answer_chars: the longest `FINAL` answer or `FINAL_VAR` text the host accepts.
    """

    wall_seconds: float = 60.0
    grace_seconds: float = 2.0
    memory_mb: int | None = 2048
    cpu_seconds: float | None = None
    max_processes: int | None = 64
    output_chars: int = 2_000_000
    file_size_mb: int | None = 1024
    scratch_mb: int | None = None
    scratch_inodes: int = 16_384
    host_buffer_mb: int = 512
    max_pending_calls: int = 4096
    json_depth: int = 32
    answer_chars: int = 64 * 1024 * 1024

    def __post_init__(self) -> None:
        def positive(name: str, value: float | None, optional: bool = False) -> None:
            if value is None and optional:
                return
            if (
                not isinstance(value, int | float)
                or isinstance(value, bool)
                or not value > 0
                or value != value
            ):
                raise ConfigurationError(
                    f"ReplLimits.{name} must be a positive number, not {value!r}"
                )

        positive("wall_seconds", self.wall_seconds)
        positive("grace_seconds", self.grace_seconds)
        positive("memory_mb", self.memory_mb, optional=True)
        positive("cpu_seconds", self.cpu_seconds, optional=True)
        positive("file_size_mb", self.file_size_mb, optional=True)
        positive("output_chars", self.output_chars)
        positive("scratch_mb", self.scratch_mb, optional=True)
        for name in (
            "scratch_inodes",
            "host_buffer_mb",
            "max_pending_calls",
            "json_depth",
            "answer_chars",
        ):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ConfigurationError(
                    f"ReplLimits.{name} must be a positive integer, not {value!r}"
                )
        if self.json_depth < 4:
            raise ConfigurationError(
                "ReplLimits.json_depth must be at least 4 (the protocol itself nests 3 deep)"
            )
        if (
            self.memory_mb is not None
            and self.scratch_mb is not None
            and self.scratch_mb >= self.memory_mb
        ):
            raise ConfigurationError(
                f"ReplLimits.scratch_mb ({self.scratch_mb}) is counted in memory_mb "
                f"({self.memory_mb}) and must be smaller than it"
            )
        if self.max_processes is not None and (
            not isinstance(self.max_processes, int) or self.max_processes < 4
        ):
            raise ConfigurationError(
                "ReplLimits.max_processes must be an integer >= 4 (the worker itself uses "
                f"a few), or None, not {self.max_processes!r}"
            )

    @property
    def scratch_bytes(self) -> int:
        """The scratch folder's size quota."""
        if self.scratch_mb is not None:
            return self.scratch_mb << 20
        if self.memory_mb is None:
            return 256 << 20
        return min(256 << 20, self.memory_mb << 18)

    @property
    def code_memory_mb(self) -> int | None:
        """Address space the code may allocate: `memory_mb` less the scratch folder."""
        if self.memory_mb is None:
            return None
        return max(1, self.memory_mb - (self.scratch_bytes >> 20))


# -- environment -----------------------------------------------------------------------------


def worker_env(home: str, extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The worker's whole environment: an allowlist, never the host's secrets."""
    env = {name: os.environ[name] for name in ENV_ALLOWLIST if name in os.environ}
    env.setdefault("PATH", "/usr/local/bin:/usr/bin:/bin")
    env.setdefault("LANG", "C.UTF-8")
    env["HOME"] = home
    env["TMPDIR"] = home
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    if extra:
        env.update(extra)
    return env


# -- cgroups (pids) ----------------------------------------------------------------------------


class CgroupTree:
    """A folder of per-worker pids cgroups (v1 `pids` hierarchy or cgroup v2)."""

    def __init__(self, base: Path, version: int) -> None:
        self.base = base
        self.version = version

    def create(self, name: str) -> Path:
        path = self.base / name
        path.mkdir()
        return path

    def set_max(self, group: Path, limit: int | None) -> None:
        (group / "pids.max").write_text("max" if limit is None else str(limit))

    def procs(self, group: Path) -> list[int]:
        try:
            return [int(x) for x in (group / "cgroup.procs").read_text().split()]
        except (OSError, ValueError):
            return []

    def kill_all(self, group: Path) -> None:
        """SIGKILL every process in the group, including ones that forked meanwhile."""
        kill_file = group / "cgroup.kill"
        if self.version == 2 and kill_file.exists():
            with contextlib.suppress(OSError):
                kill_file.write_text("1")
        for _ in range(200):
            pids = self.procs(group)
            if not pids:
                return
            for pid in pids:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, signal.SIGKILL)
            time.sleep(0.005)

    def remove(self, group: Path) -> None:
        self.kill_all(group)
        for _ in range(100):
            try:
                group.rmdir()
                return
            except FileNotFoundError:
                return
            except OSError:
                time.sleep(0.01)

    def clean_stale(self) -> None:
        """Remove groups left behind by processes that died without closing them."""
        try:
            entries = list(self.base.iterdir())
        except OSError:
            return
        for entry in entries:
            parts = entry.name.split("-")
            if len(parts) < 3 or parts[0] != "w" or not parts[1].isdigit():
                continue
            if not pid_alive(int(parts[1])):
                self.remove(entry)


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


_cgroup_lock = threading.Lock()
_cgroup_tree: CgroupTree | None = None
_cgroup_checked = False


def cgroup_tree() -> CgroupTree | None:
    """A writable place for per-worker pids cgroups, or None (checked once)."""
    global _cgroup_tree, _cgroup_checked
    with _cgroup_lock:
        if not _cgroup_checked:
            _cgroup_checked = True
            _cgroup_tree = _find_cgroup_tree()
            if _cgroup_tree is not None:
                _cgroup_tree.clean_stale()
        return _cgroup_tree


def _find_cgroup_tree() -> CgroupTree | None:
    if os.environ.get("RLM_REPL_NO_CGROUPS"):
        return None
    root = Path("/sys/fs/cgroup")
    candidates: list[tuple[Path, int]] = []
    if (root / "cgroup.controllers").exists():
        candidates.append((root / "rlm-repl", 2))
    if (root / "pids" / "cgroup.procs").exists():
        candidates.append((root / "pids" / "rlm-repl", 1))
    for base, version in candidates:
        try:
            if version == 2:
                controllers = (root / "cgroup.controllers").read_text().split()
                if "pids" not in controllers:
                    continue
                if "pids" not in (root / "cgroup.subtree_control").read_text().split():
                    (root / "cgroup.subtree_control").write_text("+pids")
            base.mkdir(exist_ok=True)
            if version == 2:
                enabled = (base / "cgroup.subtree_control").read_text().split()
                if "pids" not in enabled:
                    (base / "cgroup.subtree_control").write_text("+pids")
            probe = base / f"probe-{os.getpid()}"
            probe.mkdir(exist_ok=True)
            try:
                (probe / "pids.max").write_text("8")
            finally:
                probe.rmdir()
            return CgroupTree(base, version)
        except OSError:
            continue
    return None


# -- how a worker died, in one line ----------------------------------------------------------

_SIGNAL_NOTES = {
    signal.SIGSEGV: "segmentation fault",
    signal.SIGBUS: "bus error",
    signal.SIGABRT: "abort",
    signal.SIGILL: "illegal instruction",
    signal.SIGFPE: "arithmetic error",
}


def describe_exit(
    returncode: int | None,
    *,
    bwrap: bool,
    limits: ReplLimits,
    stderr_tail: str = "",
) -> str:
    """One line saying how the worker ended, from its exit status."""
    sig: int | None = None
    if returncode is not None and returncode < 0:
        sig = -returncode
    elif bwrap and returncode is not None and 128 < returncode < 128 + 65:
        # bwrap reports a child killed by a signal as 128 + the signal number.
        sig = returncode - 128
    tail = stderr_tail.lower()
    memory_hint = any(s in tail for s in ("memoryerror", "cannot allocate memory", "out of memory"))
    if memory_hint:
        limit = f" (limit {limits.memory_mb:,} MB beyond the context)" if limits.memory_mb else ""
        return f"The REPL worker ran out of memory{limit} and stopped."
    if sig is not None:
        try:
            name = signal.Signals(sig).name
        except ValueError:
            name = f"signal {sig}"
        if sig == signal.SIGXCPU:
            return (
                f"The REPL worker was stopped by {name}: it used more than its CPU time limit "
                f"({limits.cpu_seconds:g} s per block)."
                if limits.cpu_seconds
                else f"The REPL worker was stopped by {name} (CPU time limit)."
            )
        if sig == signal.SIGXFSZ:
            return (
                f"The REPL worker was stopped by {name}: it wrote a file larger than the limit "
                f"({limits.file_size_mb:,} MB)."
            )
        if sig == signal.SIGKILL:
            limit = f" (limit {limits.memory_mb:,} MB)" if limits.memory_mb else ""
            return (
                f"The REPL worker was killed by SIGKILL from outside, most likely for using "
                f"too much memory{limit}."
            )
        note = _SIGNAL_NOTES.get(signal.Signals(sig)) if sig in _SIGNAL_NOTES else None
        return f"The REPL worker crashed with signal {name}{f' ({note})' if note else ''}."
    if returncode is None:
        return "The REPL worker stopped answering and was killed."
    if returncode == EXIT_LOST_CONNECTION:
        return (
            "The REPL worker lost its connection to the host (did the code close its file "
            "descriptors?), so it was replaced."
        )
    return (
        f"The REPL worker exited with status {returncode} (os._exit(), or a crash in native code)."
    )
