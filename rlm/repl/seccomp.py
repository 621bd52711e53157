"""The seccomp filter the sandboxed worker runs under, built with libseccomp (`pyseccomp`).

bwrap loads it (`--seccomp FD`) just before it starts the worker, so it holds for the
worker and everything it starts. Everything a REPL needs is allowed; these fail with
`EPERM`:

- tracing and reading other processes: `ptrace`, `process_vm_readv`/`writev`;
- mounts and namespaces: `mount`, `umount2`, the new mount API, `pivot_root`, `chroot`,
  `unshare`, `setns`, and `clone` with any namespace flag (`clone3`, whose flags the
  filter cannot read, answers `ENOSYS` so the C library falls back to `clone`);
- kernel attack surface a REPL never uses: `keyctl`/`add_key`/`request_key`, `bpf`,
  `perf_event_open`, `userfaultfd`, `io_uring_*` (its requests would bypass this filter),
  kernel modules, `kexec_*`, `reboot`, `swapon`/`swapoff`, `open_by_handle_at`,
  `acct`, `quotactl`, `syslog`;
- sockets of any family but `AF_UNIX` (`EAFNOSUPPORT`): no new network sockets even
  if the network namespace were shared.

Calls made through another architecture's system-call table (32-bit `int 0x80` on
x86-64, say) kill the process: libseccomp's default for a foreign architecture.

The compiled program (a few hundred bytes) is cached in the user's cache folder
(`$XDG_CACHE_HOME/rlm`, else `~/.cache/rlm`), keyed by the rules and the machine: loading
`pyseccomp` finds its libraries with `ctypes.util.find_library`, which runs `ldconfig`,
and costs 10 to 40 ms on a 2-core machine, a third of a cold worker start. A cached file
is used only when it belongs to this user and nobody else can write it.
"""

from __future__ import annotations

import errno
import os
import socket
import tempfile
import threading
from pathlib import Path

DENIED: tuple[str, ...] = (
    "ptrace",
    "process_vm_readv",
    "process_vm_writev",
    "mount",
    "umount2",
    "mount_setattr",
    "move_mount",
    "open_tree",
    "fsopen",
    "fsconfig",
    "fsmount",
    "fspick",
    "pivot_root",
    "chroot",
    "unshare",
    "setns",
    "keyctl",
    "add_key",
    "request_key",
    "bpf",
    "perf_event_open",
    "userfaultfd",
    "io_uring_setup",
    "io_uring_enter",
    "io_uring_register",
    "init_module",
    "finit_module",
    "delete_module",
    "kexec_load",
    "kexec_file_load",
    "reboot",
    "swapon",
    "swapoff",
    "open_by_handle_at",
    "acct",
    "quotactl",
    "syslog",
)

# clone() flags that make a new namespace (CLONE_NEWTIME, NEWNS, NEWCGROUP, NEWUTS,
# NEWIPC, NEWUSER, NEWPID, NEWNET).
NAMESPACE_FLAGS: tuple[int, ...] = (
    0x00000080,
    0x00020000,
    0x02000000,
    0x04000000,
    0x08000000,
    0x10000000,
    0x20000000,
    0x40000000,
)


class SeccompUnavailable(Exception):
    """The filter cannot be built here (no libseccomp, or not Linux)."""


_lock = threading.Lock()
_program: bytes | None = None


def _build() -> bytes:
    try:
        import pyseccomp as sc
    except (ImportError, OSError) as exc:  # the binding, or libseccomp.so.2 itself
        raise SeccompUnavailable(f"libseccomp cannot be loaded ({exc})") from None
    try:
        rules = sc.SyscallFilter(sc.ALLOW)
        deny = sc.ERRNO(errno.EPERM)
        for name in DENIED:
            try:
                rules.add_rule(deny, name)
            except (ValueError, OSError):
                continue  # not a system call on this architecture
        for flag in NAMESPACE_FLAGS:
            rules.add_rule(deny, "clone", sc.Arg(0, sc.MASKED_EQ, flag, flag))
        rules.add_rule(sc.ERRNO(errno.ENOSYS), "clone3")
        rules.add_rule(sc.ERRNO(errno.EAFNOSUPPORT), "socket", sc.Arg(0, sc.NE, socket.AF_UNIX))
        with tempfile.TemporaryFile() as out:
            rules.export_bpf(out)
            out.seek(0)
            return out.read()
    except (ValueError, OSError, AttributeError) as exc:
        raise SeccompUnavailable(f"libseccomp could not build the filter ({exc})") from None


def _cache_file() -> Path | None:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    if not os.path.isabs(base):
        return None
    import zlib  # built in; hashlib would load OpenSSL for a cache key

    rules = repr((DENIED, NAMESPACE_FLAGS, os.uname().machine, socket.AF_UNIX, 1))
    return Path(base) / "rlm" / f"seccomp-{zlib.crc32(rules.encode()):08x}.bpf"


def _read_cached(path: Path) -> bytes | None:
    try:
        with open(path, "rb") as f:
            info = os.fstat(f.fileno())
            if info.st_uid != os.geteuid() or info.st_mode & 0o022 or info.st_size > 1 << 16:
                return None
            data = f.read()
    except OSError:
        return None
    # Classic BPF: 8-byte instructions.
    return data if data and len(data) % 8 == 0 else None


def _write_cached(path: Path, data: bytes) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd, temporary = tempfile.mkstemp(dir=path.parent, prefix=".seccomp-")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            os.replace(temporary, path)
        except BaseException:
            os.unlink(temporary)
            raise
    except OSError:
        pass  # a read-only home: built again next time


def program() -> bytes:
    """The compiled filter (classic BPF, as bwrap's `--seccomp` reads it); built once,
    then read from the cache."""
    global _program
    with _lock:
        if _program is None:
            cache = _cache_file()
            cached = _read_cached(cache) if cache is not None else None
            if cached is None:
                cached = _build()
                if cache is not None:
                    _write_cached(cache, cached)
            _program = cached
        return _program


def program_fd() -> int:
    """A new readable descriptor holding the filter, for `bwrap --seccomp FD` (the
    caller passes it to bwrap and closes it)."""
    data = program()
    read, write = os.pipe()
    try:
        view = memoryview(data)
        while view:  # a few hundred bytes: far below the pipe's buffer
            view = view[os.write(write, view) :]
    finally:
        os.close(write)
    return read
