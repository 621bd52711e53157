"""The bubblewrap sandbox around a `SubprocessRepl` worker: least privilege inside.

- **Who**: its own user namespace, as uid/gid 65534 also when the host is root, with no
  capabilities and the seccomp filter of `rlm.repl.seccomp` (which also refuses further
  namespaces; bwrap's `--disable-userns` would need bwrap 0.8). Run by root, bwrap maps
  uid 65534 back to root outside, so the worker is still root to files it can see:
  hence the rest of this list.
- **What it sees**: only what the worker needs, read-only: the system's programs and
  libraries (`/usr`, `/bin`, `/lib*`), the few files of `/etc` the dynamic linker and
  the time zone need, the Python runtime (its prefixes) and the `site-packages` folders
  on `sys.path`, and `rlm` itself. No `/etc/shadow`, no home folders, no checkouts. Its
  own `/proc` (PID namespace) with `/proc/sys` and the other kernel-wide files bound
  read-only over it; `/sys` read-only; `/dev` with null-class devices only; the root
  itself read-only.
- **Where it writes**: the scratch folder, a tmpfs of `ReplLimits.scratch_bytes` seen as
  `/tmp` (its working folder and `$HOME`) and as `/dev/shm`. When the host is root, the
  host mounts it with an inode quota too (`nr_inodes`) and binds it in; otherwise bwrap
  mounts it (size only: bwrap has no inode option), with a separate 64 MiB `/dev/shm`.
- **Network and processes**: its own empty network namespace, PID, IPC, UTS and cgroup
  namespaces; it dies with the host (`--die-with-parent`).

Nothing here imports more than the standard library at import time.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterable, Sequence
from typing import Any

# Where the scratch folder appears inside the sandbox.
SANDBOX_SCRATCH = "/tmp"
SANDBOX_UID = 65534
# /dev/shm when the scratch tmpfs cannot be shared with it (host not root).
SHM_BYTES = 64 << 20

# The system's programs and libraries (a folder, or a symlink to one in merged-/usr).
SYSTEM_PATHS: tuple[str, ...] = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32")
# The only files of /etc shown: the dynamic linker's configuration, the time zone, and
# the alternatives links some programs in /usr/bin point through.
ETC_FILES: tuple[str, ...] = (
    "/etc/ld.so.cache",
    "/etc/ld.so.conf",
    "/etc/ld.so.conf.d",
    "/etc/localtime",
    "/etc/timezone",
    "/etc/alternatives",
)
# Kernel-wide parts of the sandbox's own /proc: bound read-only over it (writable ones
# reach the host's kernel: `/proc/sys/kernel/core_pattern`, `/proc/sysrq-trigger`).
PROC_READ_ONLY: tuple[str, ...] = (
    "/proc/sys",
    "/proc/sysrq-trigger",
    "/proc/irq",
    "/proc/bus",
    "/proc/fs",
    "/proc/acpi",
    "/proc/scsi",
)
# Files of /proc that show the host's kernel memory or keys to root: replaced by /dev/null.
PROC_MASKED: tuple[str, ...] = (
    "/proc/kcore",
    "/proc/keys",
    "/proc/kmsg",
    "/proc/kallsyms",
    "/proc/kpagecount",
    "/proc/kpageflags",
    "/proc/kpagecgroup",
    "/proc/timer_list",
    "/proc/sched_debug",
)


def bwrap_path() -> str | None:
    return shutil.which("bwrap")


# -- does it work here? -------------------------------------------------------------------

_lock = threading.Lock()
_ok: bool | None = None
_problem = ""


def status() -> tuple[bool | None, str]:
    """What is known: (True, "") it works, (False, why) it does not, or (None, "")
    installed but not tried yet (the first sandboxed worker will tell)."""
    global _ok, _problem
    with _lock:
        if _ok is None and bwrap_path() is None:
            _ok, _problem = False, "bubblewrap (bwrap) is not installed"
        return _ok, _problem


def record(ok: bool, problem: str = "") -> None:
    """Remember whether a sandboxed worker could start (from the first attempt)."""
    global _ok, _problem
    with _lock:
        if _ok is None:
            _ok, _problem = ok, problem


def works() -> tuple[bool, str]:
    """Whether the whole sandbox (namespaces, filesystem, seccomp filter) can be built
    here: checked once, by starting `python -c pass` in it, unless a worker has told."""
    known, problem = status()
    if known is not None:
        return known, problem
    scratch = tempfile.mkdtemp(prefix="rlm-probe-")
    try:
        from rlm.repl.seccomp import SeccompUnavailable, program_fd

        fd = program_fd()
    except SeccompUnavailable as exc:
        shutil.rmtree(scratch, ignore_errors=True)
        record(False, str(exc))
        return status()  # type: ignore[return-value]
    try:
        cmd = command(
            scratch,
            os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
            [sys.executable, "-I", "-S", "-c", "pass"],
            seccomp_fd=fd,
            scratch_bytes=16 << 20,
            scratch_mounted=False,
        )
        done = subprocess.run(
            cmd, stdin=subprocess.DEVNULL, capture_output=True, timeout=30, pass_fds=(fd,)
        )
        said = done.stderr.decode(errors="replace").strip()[:300]
        record(done.returncode == 0, said or f"exit status {done.returncode}")
    except (OSError, subprocess.TimeoutExpired) as exc:
        record(False, str(exc))
    finally:
        os.close(fd)
        shutil.rmtree(scratch, ignore_errors=True)
    return status()  # type: ignore[return-value]


# -- what the worker sees -------------------------------------------------------------------


def _is_within(path: str, parent: str) -> bool:
    return path == parent or path.startswith(parent.rstrip("/") + "/")


def _existing(entries: Iterable[str]) -> list[str]:
    found: set[str] = set()
    for entry in entries:
        if not entry or not os.path.isabs(entry):
            continue
        for path in (os.path.normpath(entry), os.path.realpath(entry)):
            if path != "/" and os.path.exists(path):
                found.add(path)
    return sorted(found)


def runtime_paths(rlm_dir: str, hide: Iterable[str] = ()) -> list[str]:
    """The Python runtime the worker needs, outermost folders only: the interpreter's
    prefixes, `rlm`, and the `site-packages`/`dist-packages` folders (or zip files) on
    `sys.path`. Other `sys.path` folders (a project root, the tests' folders) are left
    out: they may hold a checkout with its `.git` and `.env`."""
    core = [
        sys.prefix,
        sys.base_prefix,
        sys.exec_prefix,
        sys.base_exec_prefix,
        os.path.dirname(sys.executable),
        os.path.dirname(os.path.realpath(sys.executable)),
        rlm_dir,
    ]
    packages = [
        p
        for p in sys.path
        if os.path.basename(p.rstrip("/")) in ("site-packages", "dist-packages")
        or os.path.isfile(p)
    ]
    hidden = [os.path.normpath(h) for h in hide if h and os.path.isabs(h)]
    paths = [
        p
        for p in _existing([*core, *packages])
        if p not in ("/usr", "/") and not any(_is_within(p, h) for h in hidden)
    ]
    return [p for p in paths if not any(p != q and _is_within(p, q) for q in paths)]


def command(
    scratch: str,
    rlm_dir: str,
    worker_argv: Sequence[str],
    *,
    seccomp_fd: int,
    scratch_bytes: int,
    scratch_mounted: bool,
    hide: Iterable[str] = (),
) -> list[str]:
    """The bwrap command line that runs `worker_argv` in the sandbox. `scratch_mounted`:
    the host mounted the scratch tmpfs at `scratch` (see `mount_scratch`)."""
    bwrap = bwrap_path()
    if bwrap is None:
        raise FileNotFoundError("bwrap")
    args = [
        bwrap,
        "--unshare-user",
        "--uid",
        str(SANDBOX_UID),
        "--gid",
        str(SANDBOX_UID),
        "--unshare-net",
        "--unshare-pid",
        "--unshare-ipc",
        "--unshare-uts",
        "--unshare-cgroup-try",
        "--die-with-parent",
        "--new-session",
        "--cap-drop",
        "ALL",
    ]
    for path in SYSTEM_PATHS:
        if os.path.islink(path):
            args += ["--symlink", os.readlink(path), path]
        elif os.path.isdir(path):
            args += ["--ro-bind", path, path]
    for path in ETC_FILES:
        if os.path.exists(path):
            args += ["--ro-bind", path, path]
    args += ["--dev", "/dev"]
    if scratch_mounted:
        args += ["--bind", scratch, SANDBOX_SCRATCH, "--bind", scratch, "/dev/shm"]
    else:
        args += ["--size", str(scratch_bytes), "--perms", "0700", "--tmpfs", SANDBOX_SCRATCH]
        args += ["--size", str(SHM_BYTES), "--tmpfs", "/dev/shm"]
    # After the scratch folder: a runtime under /tmp (a Ray worker's environment, say)
    # is bound over it, read-only, instead of being hidden by it.
    for path in runtime_paths(rlm_dir, hide):
        args += ["--ro-bind", path, path]
    args += ["--remount-ro", "/dev", "--proc", "/proc"]
    for path in PROC_READ_ONLY:
        if os.path.exists(path):
            args += ["--ro-bind", path, path]
    for path in PROC_MASKED:
        if os.path.exists(path):
            args += ["--ro-bind", "/dev/null", path]
    if os.path.isdir("/sys"):
        args += ["--ro-bind", "/sys", "/sys"]
    args += ["--remount-ro", "/", "--chdir", SANDBOX_SCRATCH]
    args += ["--seccomp", str(seccomp_fd), "--", *worker_argv]
    return args


# -- the scratch tmpfs, mounted by a root host -----------------------------------------------

_MS_NOSUID, _MS_NODEV = 2, 4
_MNT_DETACH = 2
_libc: Any = None


def _c() -> Any:
    """The C library (ctypes is loaded only when a root host mounts a scratch folder)."""
    global _libc
    if _libc is None:
        import ctypes

        _libc = ctypes.CDLL(None, use_errno=True)
    return _libc


def mount_scratch(path: str, size_bytes: int, inodes: int) -> bool:
    """Mount a tmpfs with a size and an inode quota at `path` (only root can); False
    when it cannot be done here (bwrap then mounts one with a size only)."""
    if os.geteuid() != 0 or not sys.platform.startswith("linux"):
        return False
    options = f"size={size_bytes},nr_inodes={inodes},mode=0700".encode()
    result = _c().mount(b"tmpfs", os.fsencode(path), b"tmpfs", _MS_NOSUID | _MS_NODEV, options)
    return bool(result == 0)


def unmount_scratch(path: str) -> None:
    """Undo `mount_scratch` (lazily, so a process still inside cannot block it)."""
    # EINVAL (not a mount point) or ENOENT: nothing was mounted there.
    _c().umount2(os.fsencode(path), _MNT_DETACH)
