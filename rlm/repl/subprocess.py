"""`SubprocessRepl`: the model's code runs in a sandboxed worker process (the default REPL).

One long-lived worker per run holds the namespace (`rlm.repl.worker`, reusing
`rlm.repl.namespace`). The context goes to it once, at start: a small one inside the
`load` message, a large one streamed through the pipe right after it, which the worker
reads straight into the final object (a large `str` is filled in place, so the worker
holds one copy and the host makes none). Sub-calls travel back over the pipes described
in `rlm.repl.protocol` and run on the engine's event loop; a batched call is one message,
gathered concurrently by the host.

When a block runs past `ReplLimits.wall_seconds` it is interrupted (variables kept); if it
does not stop, or the worker dies (memory, a segfault, `os._exit`), the result carries a
one-line `error` and `restarted=True`, and a fresh worker with the context reloaded takes
over. The host process is never at risk. The host's end of the pipes (the bounded frame
reader, the checks on every message, serving sub-calls) is `rlm.repl.connection`.

Workers (`rlm.repl.workers`) start in a few tens of milliseconds; to take even that off a
run, one spare worker per configuration is kept started in the background (`prestart`).
How the context travels is in `rlm.repl.transfer`; isolation and limits in
`rlm.repl.sandbox`, and their gaps in docs/sandbox.md.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Any, Literal

from rlm.errors import ReplError, SandboxUnavailableError
from rlm.repl import workers
from rlm.repl.base import (
    ExecutionResult,
    ReplFactory,
    ReplHost,
    VariableLookup,
    host_tools,
)
from rlm.repl.connection import WorkerConnection, WorkerGone
from rlm.repl.output import OutputBuffer
from rlm.repl.protocol import MAX_FRAME
from rlm.repl.sandbox import Isolation, ReplLimits, describe_exit
from rlm.repl.transfer import BATCH_ITEMS, INLINE_CHARS, context_plan, function_in
from rlm.repl.workers import BwrapFailed, SpawnConfig, WorkerProcess

__all__ = ["ReplLimits", "SubprocessRepl"]

logger = logging.getLogger("rlm.repl")


class SubprocessRepl:
    """The model's code in an isolated worker process (the default REPL).

    Args:
        limits: time, memory, CPU, output, process and file limits (`ReplLimits()`).
        isolation: "auto" (the bubblewrap sandbox; a plain subprocess only when
            `RLM_SANDBOX=none` is set), "bwrap" (the sandbox, whatever the environment
            says) or "none" (a plain subprocess with the same resource limits, for a
            container you trust). Where the sandbox cannot be built, `start` raises
            `SandboxUnavailableError` naming the reason and the ways on; there is no
            silent fallback.
        env: extra environment variables for the worker. Nothing else of the host's
            environment reaches it except PATH, locale and TZ.
        hide: host folders to leave out of the sandbox even where they hold part of the
            Python runtime (a `site-packages` folder, say). The sandbox shows only the
            system's libraries and the runtime; see `rlm.repl.bwrap`.
        prestart: keep one spare worker started in the background so the next run (and
            any restart) does not wait for Python to start.

    To configure the REPL of a run, pass a factory:
    ``rlm.run(..., repl=SubprocessRepl.factory(limits=ReplLimits(memory_mb=4096)))``.
    """

    def __init__(
        self,
        *,
        limits: ReplLimits | None = None,
        isolation: Isolation = "auto",
        env: Mapping[str, str] | None = None,
        hide: Sequence[str] = (),
        prestart: bool = True,
    ) -> None:
        if isolation not in ("auto", "bwrap", "none"):
            raise ReplError(f"isolation must be 'auto', 'bwrap' or 'none', not {isolation!r}")
        if limits is not None and not isinstance(limits, ReplLimits):
            raise ReplError(f"limits must be a ReplLimits, not {type(limits).__name__}")
        self.limits = limits or ReplLimits()
        self._requested: Isolation = isolation
        self._env = tuple(sorted((str(k), str(v)) for k, v in (env or {}).items()))
        self._hide = tuple(str(p) for p in hide)
        self._prestart = prestart
        self._config: SpawnConfig | None = None
        self._conn: WorkerConnection | None = None
        self._context: object = None
        # A session's later contexts (`context_1`, ...): a new worker gets them all again.
        self._more_contexts: dict[str, object] = {}
        self._host: ReplHost | None = None
        self._loading: asyncio.Task[None] | None = None
        self._lock: asyncio.Lock | None = None
        self._exec_ids = itertools.count(1)
        self._closed = False
        self._replenish: _Replenish = "never"
        self.restarts = 0

    @classmethod
    def factory(
        cls,
        *,
        limits: ReplLimits | None = None,
        isolation: Isolation = "auto",
        env: Mapping[str, str] | None = None,
        hide: Sequence[str] = (),
        prestart: bool = True,
    ) -> ReplFactory:
        """A `repl=` value for `rlm.run`/`RLM`: a new SubprocessRepl per run, so configured."""
        if limits is not None and not isinstance(limits, ReplLimits):
            raise ReplError(f"limits must be a ReplLimits, not {type(limits).__name__}")

        def make() -> SubprocessRepl:
            return cls(limits=limits, isolation=isolation, env=env, hide=hide, prestart=prestart)

        return make

    @property
    def isolation(self) -> str | None:
        """'bwrap' or 'none' once started (what "auto" resolved to)."""
        return self._config.isolation if self._config else None

    # -- lifecycle --

    async def start(self, context: object, host: ReplHost) -> None:
        if sys.platform == "win32":  # pragma: no cover
            raise ReplError("SubprocessRepl needs a POSIX system; use repl='inprocess'")
        self._context = context
        self._host = host
        self._lock = asyncio.Lock()
        self._config = SpawnConfig(
            isolation=workers.resolve_isolation(self._requested),
            env=self._env,
            hide=self._hide,
            scratch_bytes=self.limits.scratch_bytes,
            scratch_inodes=self.limits.scratch_inodes,
        )
        await self._connect()

    async def _connect(self) -> None:
        """Take a worker and start loading the context into it (awaited by `_ready`)."""
        assert self._config is not None and self._host is not None
        try:
            try:
                process, spare = await workers.pool.acquire(self._config)
            except BwrapFailed as exc:
                # The first sandboxed worker showed the sandbox cannot be built here.
                raise SandboxUnavailableError(workers.refusal(str(exc))) from None
        except OSError as exc:
            raise ReplError(f"could not start the REPL worker: {exc}") from exc
        if self._closed:
            await asyncio.to_thread(process.dispose)
            raise ReplError("the REPL was closed while starting")
        self._conn = WorkerConnection(process, self._host, self.limits)
        self._replenish = _when_to_replenish(self._context, spare) if self._prestart else "never"
        if self._replenish == "now":
            workers.pool.replenish(self._config)
        if self.limits.max_processes is not None and process.tree and process.cgroup:
            await asyncio.to_thread(process.tree.set_max, process.cgroup, self.limits.max_processes)
        self._loading = asyncio.ensure_future(self._load_all(self._conn))

    def _limits_message(self, process: WorkerProcess) -> dict[str, Any]:
        limits = self.limits
        # Processes: a pids cgroup when we have one; else RLIMIT_NPROC, which the kernel
        # ignores for root (see docs/sandbox.md).
        nproc: int | None = None
        if limits.max_processes is not None and process.cgroup is None and os.geteuid() != 0:
            nproc = limits.max_processes
        return {
            "memory_mb": limits.memory_mb,
            # Under bwrap the scratch folder is a tmpfs, in memory: it counts.
            "code_memory_mb": (
                limits.code_memory_mb if process.config.isolation == "bwrap" else limits.memory_mb
            ),
            "answer_chars": limits.answer_chars,
            "cpu_seconds": limits.cpu_seconds,
            "file_size_mb": limits.file_size_mb,
            "output_chars": limits.output_chars,
            "nproc": nproc,
            "nproc_shared": process.config.isolation != "bwrap",
        }

    async def _load_all(self, conn: WorkerConnection) -> None:
        await self._load(conn, "context", self._context)
        for name, value in list(self._more_contexts.items()):
            await self._load(conn, name, value)

    async def add_context(self, name: str, value: object) -> None:
        """Load `value` as the variable `name` beside `context` (a session's `context_1`)."""
        if self._lock is None:
            raise ReplError("SubprocessRepl.add_context() called before start()")
        async with self._lock:
            conn = await self._ready()
            if conn.gone is not None:
                # It died since the last block: the new worker loads every context,
                # this one included.
                self._more_contexts[name] = value
                await self._restart(conn)
                return
            await self._load(conn, name, value)
            self._more_contexts[name] = value

    async def _load(self, conn: WorkerConnection, name: str, context: object) -> None:
        process = conn.process
        if isinstance(context, str) and len(context) > INLINE_CHARS:
            # Finding a large str's kind reads all of it: not on the event loop.
            spec, produce = await asyncio.to_thread(context_plan, context)
        else:
            spec, produce = context_plan(context)
        message = {
            "op": "load",
            "sys_path": [p for p in sys.path if p and os.path.isabs(p)],
            "limits": self._limits_message(process),
            "max_frame": MAX_FRAME,
            "tools": [
                {
                    "name": t.name,
                    "signature": t.signature,
                    "description": t.description,
                    "shapes": list(t.shapes),
                }
                for t in (host_tools(self._host) if self._host is not None else ())
            ],
            "context": spec,
            "name": name,
        }
        loaded = conn.expect("load")
        failure: Exception | None = None
        if produce is None:
            conn.send(message)
        else:
            try:
                await conn.send_stream(message, produce)
            except WorkerGone:
                pass  # the worker is gone; `loaded` says why
            except Exception as exc:
                failure = exc
        del message, spec, produce
        try:
            reply = await loaded
        except WorkerGone as gone:
            if failure is None:
                detail = await self._exit_line(conn, gone)
                said = conn.stderr_tail.strip()[-1000:]
                raise ReplError(
                    f"the REPL worker could not start: {detail}"
                    + (f" It wrote: {said}" if said else "")
                ) from None
            reply = {"op": "load_failed"}
        if reply["op"] != "loaded" or failure is not None:
            where = function_in(context)
            if where is not None:
                raise ReplError(
                    f"the context holds a function ({where}), and functions cannot be sent "
                    "into the sandbox. Pass it as a tool instead (tools=[fn]): it then runs "
                    "on the host and the model's code calls it by name."
                ) from failure
        if failure is not None:
            raise ReplError(
                f"the {name} ({type(context).__name__}) cannot be sent to the REPL worker: "
                f"{type(failure).__name__}: {failure}. Pass built-in types (str, bytes, list, "
                "dict, ...), classes defined in your script, or classes importable from an "
                "installed package; or use repl='inprocess'."
            ) from failure
        if reply["op"] == "loaded":
            replenish = name == "context" and self._replenish == "after_load"
            if replenish and self._config is not None:
                workers.pool.replenish(self._config)
            return
        raise ReplError(
            f"the REPL worker could not load the {name}: {reply['error']}. Pass "
            "built-in types (str, bytes, list, dict, ...), classes defined in your script, or "
            "classes importable from an installed package (the sandbox shows site-packages, "
            "not your project folder); or use repl='inprocess'."
        )

    async def _ready(self) -> WorkerConnection:
        if self._closed:
            raise ReplError("the REPL is closed")
        if self._conn is None or self._loading is None:
            raise ReplError("SubprocessRepl used before start()")
        await asyncio.shield(self._loading)
        return self._conn

    async def _exit_line(self, conn: WorkerConnection, gone: WorkerGone | None) -> str:
        """Why the worker ended, in one line (waits briefly for it to exit)."""
        process = conn.process
        if gone is not None and gone.violation not in (None, "protocol"):
            await asyncio.to_thread(process.kill)
            return (
                f"The REPL worker was killed for going past a limit of the host: it sent "
                f"{gone.reason}. Every variable you made is gone."
            )
        if gone is not None and gone.protocol:
            await asyncio.to_thread(process.kill)
            return (
                f"The REPL worker sent {gone.reason} (did the code write to its pipes?), "
                "so it was replaced."
            )
        killed_by_us = process.killed

        def wait() -> int | None:
            try:
                return process.popen.wait(timeout=1.0)
            except subprocess.TimeoutExpired:
                return None

        code = await asyncio.to_thread(wait)
        if code is None:
            await asyncio.to_thread(process.kill)
            return "The REPL worker closed its connection to the host, so it was replaced."
        conn.drain()
        if killed_by_us:
            return "The REPL worker was stopped."
        return describe_exit(
            code,
            bwrap=process.config.isolation == "bwrap",
            limits=self.limits,
            stderr_tail=conn.stderr_tail,
        )

    async def _restart(self, old: WorkerConnection) -> None:
        self.restarts += 1
        await old.shutdown()
        await self._connect()
        await self._ready()

    # -- running code --

    async def execute(self, code: str) -> ExecutionResult:
        if self._lock is None:
            raise ReplError("SubprocessRepl.execute() called before start()")
        async with self._lock:
            return await self._execute(code)

    async def _execute(self, code: str) -> ExecutionResult:
        conn = await self._ready()
        if conn.gone is not None:
            # It died between blocks (a background thread, the OOM killer...): replace it
            # first, run the block on the new one, and say what happened.
            gone = conn.gone
            line = await self._exit_line(conn, gone)
            await self._restart(conn)
            result = await self._execute(code)
            note = f"{line} (This happened before the block ran.)\n"
            return replace(
                result,
                stderr=note + result.stderr,
                stderr_chars=len(note) + result.stderr_chars,
                restarted=True,
                violation=result.violation or gone.violation,
            )
        limits = self.limits
        exec_id = next(self._exec_ids)
        started = time.perf_counter()
        done = conn.expect(f"exec:{exec_id}")
        conn.stderr_tail = ""
        conn.send({"op": "exec", "id": exec_id, "code": code})
        interrupted = False
        try:
            await asyncio.wait({done}, timeout=limits.wall_seconds)
            if not done.done():
                interrupted = True
                conn.send({"op": "interrupt", "id": exec_id})
                await asyncio.wait({done}, timeout=limits.grace_seconds)
        except asyncio.CancelledError:
            # The run was cancelled (or hit its deadline): stop the block too, so the
            # worker is free for what comes next (a last FINAL_VAR lookup, say).
            conn.send({"op": "interrupt", "id": exec_id})
            raise
        if not done.done():
            # It did not stop: kill it and start over.
            await asyncio.to_thread(conn.process.kill)
            fd_out, fd_err = conn.take_fd_output()
            done.cancel()
            line = (
                f"The code block ran past its time limit ({limits.wall_seconds:g} s) and did "
                "not stop when interrupted, so the REPL worker was killed."
            )
            return await self._after_death(conn, line, fd_out, fd_err, started)
        try:
            message = done.result()
        except WorkerGone as gone:
            line = await self._exit_line(conn, gone)
            fd_out, fd_err = conn.take_fd_output()
            return await self._after_death(
                conn, line, fd_out, fd_err, started, violation=gone.violation
            )
        fd_out, fd_err = conn.take_fd_output()
        error: str | None = message["error"]
        if interrupted:
            note = (
                f"TimeoutError: the code block ran longer than the time limit "
                f"({limits.wall_seconds:g} s) and was stopped; your variables are kept."
            )
            error = f"{note}\n{error}" if error else note
        stdout, stdout_chars = _merge(message["stdout"], message["stdout_chars"], fd_out)
        stderr, stderr_chars = _merge(message["stderr"], message["stderr_chars"], fd_err)
        return ExecutionResult(
            stdout=stdout,
            stderr=stderr,
            error=error,
            duration_s=time.perf_counter() - started,
            final=message["final"],
            final_json=message.get("final_json"),
            stdout_chars=stdout_chars,
            stderr_chars=stderr_chars,
        )

    async def _after_death(
        self,
        conn: WorkerConnection,
        line: str,
        fd_out: OutputBuffer,
        fd_err: OutputBuffer,
        started: float,
        violation: str | None = None,
    ) -> ExecutionResult:
        logger.info("REPL worker replaced: %s", line)
        await self._restart(conn)
        return ExecutionResult(
            stdout=fd_out.getvalue(),
            stderr=fd_err.getvalue(),
            error=line,
            duration_s=time.perf_counter() - started,
            stdout_chars=fd_out.total_chars,
            stderr_chars=fd_err.total_chars,
            restarted=True,
            violation=violation,
        )

    async def lookup_variable(self, name: str) -> VariableLookup:
        if self._lock is None:
            raise ReplError("SubprocessRepl.lookup_variable() called before start()")
        async with self._lock:
            conn = await self._ready()
            found = conn.expect("lookup_result")
            conn.send({"op": "lookup", "name": name})
            await asyncio.wait({found}, timeout=self.limits.wall_seconds)
            interrupted = False
            if not found.done():
                interrupted = True
                conn.send({"op": "interrupt", "id": -1})
                await asyncio.wait({found}, timeout=self.limits.grace_seconds)
            if not found.done():
                found.cancel()
                await asyncio.to_thread(conn.process.kill)
                await self._restart(conn)
                return VariableLookup(
                    value=None,
                    error=(
                        f"Reading variable {name!r} took longer than the time limit "
                        f"({self.limits.wall_seconds:g} s); the REPL worker was restarted "
                        "and every variable is gone."
                    ),
                )
            try:
                message = found.result()
            except WorkerGone as gone:
                line = await self._exit_line(conn, gone)
                await self._restart(conn)
                return VariableLookup(
                    value=None,
                    error=f"{line} Every variable is gone; `context` is reloaded.",
                    violation=gone.violation,
                )
            if interrupted and message["value"] is None:
                return VariableLookup(
                    value=None,
                    error=(
                        f"Reading variable {name!r} took longer than the time limit "
                        f"({self.limits.wall_seconds:g} s) and was stopped."
                    ),
                )
            return VariableLookup(
                value=message["value"], error=message["error"], json=message.get("json")
            )

    async def close(self) -> None:
        self._closed = True
        if self._loading is not None:
            if not self._loading.done():
                self._loading.cancel()
            with contextlib.suppress(BaseException):
                await self._loading  # also marks a failed load's error as seen
        conn, self._conn = self._conn, None
        reaped = await conn.shutdown() if conn is not None else None
        self._context = None
        self._more_contexts = {}
        if self._replenish == "at_close" and self._config is not None:
            # Once this worker (and its copy of the context) is gone, not alongside it.
            if reaped is None:
                workers.pool.replenish(self._config)
            else:
                workers.pool.replenish_after(self._config, reaped)
        self._replenish = "never"


#: When the next spare worker starts (see `_when_to_replenish`).
_Replenish = Literal["now", "after_load", "at_close", "never"]


def _when_to_replenish(context: object, spare: bool) -> _Replenish:
    """When to start the spare that serves the next run.

    At once if this run took a ready spare; after this worker has loaded the context if
    it is still starting, so the two do not compete for the CPU. For a large context
    (over `INLINE_CHARS`, or more than one batch of items), only once this run's worker
    is gone: the run already holds the context twice (the caller's copy and the
    worker's), and another interpreter alongside would push the peak past that, for a
    start-up time that the long load hides anyway.
    """
    if _large(context):
        return "at_close"
    return "now" if spare else "after_load"


def _large(context: object) -> bool:
    if isinstance(context, str | bytes | bytearray):
        return len(context) > INLINE_CHARS
    return isinstance(context, list | tuple | dict) and len(context) > BATCH_ITEMS


def _merge(text: str, chars: int, extra: OutputBuffer) -> tuple[str, int]:
    """The block's captured output, then what reached fd 1/2 directly."""
    if not extra.total_chars:
        return text, chars
    more = extra.getvalue()
    return text + more, chars + extra.total_chars
