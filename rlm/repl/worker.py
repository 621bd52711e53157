"""The worker process behind `SubprocessRepl`: one persistent `Namespace`, driven over pipes.

Started by `SubprocessRepl` as ``python -I -S -B -c BOOT RLM_DIR FD_IN FD_OUT``, where BOOT
registers `rlm` and `rlm.repl` as bare packages and calls `main` (running this file as a
script works too). It loads only `rlm.repl.namespace` and the small modules it needs,
never the `rlm` package's `__init__`, so it starts in a few tens of milliseconds. This
module imports only the standard library at the top. The protocol is described in
`rlm.repl.protocol`.

Threads: a reader thread owns the host -> worker pipe. It hands `load`/`exec`/`lookup` to
the main thread, delivers `reply` messages to the sub-call waiting for them, and turns an
`interrupt` into SIGINT for the main thread (a `KeyboardInterrupt` in the model's code).
When the host goes away the pipe closes and the worker exits at once.
"""

from __future__ import annotations

import itertools
import json
import marshal
import os
import queue
import signal
import sys
import threading
import types

# Start-up time: no `typing`, `contextlib` or `dataclasses` at run time (see
# `rlm.repl.namespace`).
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, BinaryIO

EXIT_LOST_CONNECTION = 86  # rlm.repl.protocol.EXIT_LOST_CONNECTION


class _TooLarge(Exception):
    pass


class _LoadFailed(Exception):
    pass


class _State:
    """What the worker's threads share."""

    def __init__(self, fd_in: int, fd_out: int) -> None:
        self.reader: BinaryIO = open(fd_in, "rb", buffering=1 << 16)  # noqa: SIM115
        self.fd_out = fd_out
        self.write_lock = threading.Lock()
        self.commands: queue.SimpleQueue[dict[str, Any]] = queue.SimpleQueue()
        self.pending: dict[int, _Slot] = {}
        self.pending_lock = threading.Lock()
        self.call_ids = itertools.count(1)
        self.main_thread = threading.get_ident()
        self.exec_lock = threading.Lock()
        self.executing: int | None = None
        self.forked = False
        self.limits: dict[str, Any] = {}
        self.max_frame = 0

    def send(self, message: dict[str, Any]) -> None:
        if self.forked:
            raise _TooLarge("this is a forked copy of the REPL worker; it cannot reach the host")
        data = json.dumps(message, ensure_ascii=False, separators=(",", ":")).encode(
            "utf-8", "surrogatepass"
        )
        if len(data) > self.max_frame:
            raise _TooLarge(f"{len(data):,} bytes")
        header = len(data).to_bytes(4, "big")
        with self.write_lock:
            try:
                _write_all(self.fd_out, header)
                _write_all(self.fd_out, data)
            except OSError:
                # The pipe is gone (the code closed it, or the host died): nothing to do.
                os._exit(EXIT_LOST_CONNECTION)


class _ToolSpec:
    """A tool as the host described it (`rlm.repl.base.ToolStub`'s fields, without
    importing `dataclasses` here)."""

    __slots__ = ("description", "name", "shapes", "signature")

    def __init__(self, name: str, signature: str, description: str, shapes: tuple[str, ...]):
        self.name = name
        self.signature = signature
        self.description = description
        self.shapes = shapes


class _Slot:
    __slots__ = ("event", "message")

    def __init__(self) -> None:
        self.event = threading.Event()
        self.message: dict[str, Any] | None = None


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


# -- the reader thread ---------------------------------------------------------------------


def _reader(state: _State) -> None:
    from rlm.repl.receive import ChunkReader, read_context, read_exact

    try:
        while True:
            header = read_exact(state.reader, 4)
            if header is None:
                break
            payload = read_exact(state.reader, int.from_bytes(header, "big"))
            if payload is None:
                break
            message = marshal.loads(payload)
            op = message.get("op")
            if op == "reply":
                with state.pending_lock:
                    slot = state.pending.pop(message["id"], None)
                if slot is not None:
                    slot.message = message
                    slot.event.set()
            elif op == "interrupt":
                with state.exec_lock:
                    if state.executing is not None and state.executing == message.get("id"):
                        signal.pthread_kill(state.main_thread, signal.SIGINT)
            elif op == "load":
                # The context follows the message on this pipe; read it here, whole.
                sys.path[:] = message["sys_path"]
                spec = message.pop("context")
                stream = ChunkReader(state.reader)
                try:
                    message["value"] = read_context(spec, stream)
                except BaseException as exc:
                    message["error"] = f"{type(exc).__name__}: {exc}"
                if spec["how"] != "object":
                    stream.drain()
                del spec
                state.commands.put(message)
            else:
                state.commands.put(message)
    finally:
        # The host is gone (or sent garbage): nothing left to do.
        os._exit(0)


# -- sub-calls -----------------------------------------------------------------------------


def _make_subcalls(state: _State, error_type: type[Exception]) -> Any:
    from rlm.repl.helpers import ToolError
    from rlm.repl.namespace import SubcallFunctions
    from rlm.repl.protocol import TOOL_CALL

    def call(fn: str, payload: dict[str, Any]) -> Any:
        error = ToolError if fn == TOOL_CALL else error_type
        shown = payload["name"] if fn == TOOL_CALL else fn
        if state.forked:
            raise error(f"{shown}() is not available in a process forked from the REPL")
        call_id = next(state.call_ids)
        slot = _Slot()
        with state.pending_lock:
            state.pending[call_id] = slot
        sent = False
        try:
            try:
                state.send({"op": "call", "id": call_id, "fn": fn, **payload})
                sent = True
            except _TooLarge as exc:
                raise error(
                    f"{shown}(): the request is too large to send ({exc}); send less"
                ) from None
            slot.event.wait()
        finally:
            with state.pending_lock:
                abandoned = state.pending.pop(call_id, None) is not None
            if abandoned and sent:
                # The code moved on without the reply (interrupted at its time limit):
                # the host stops the call rather than paying for an answer nobody reads.
                try:  # noqa: SIM105 (no contextlib: start-up time)
                    state.send({"op": "cancel", "id": call_id})
                except Exception:
                    pass
        reply = slot.message
        assert reply is not None
        if reply.get("ok"):
            return reply["value"]
        raise error(str(reply.get("error")))

    return SubcallFunctions(
        llm_query=lambda p, m: call("llm_query", {"prompt": p, "model": m}),
        llm_query_batched=lambda ps, m: call("llm_query_batched", {"prompts": ps, "model": m}),
        rlm_query=lambda p, m: call("rlm_query", {"prompt": p, "model": m}),
        rlm_query_batched=lambda ps, m: call("rlm_query_batched", {"prompts": ps, "model": m}),
        call_tool=lambda n, a, k: call(TOOL_CALL, {"name": n, "args": a, "kwargs": k}),
    )


# -- limits --------------------------------------------------------------------------------


def _vm_size() -> int:
    try:
        with open("/proc/self/statm", "rb") as f:
            pages = int(f.read().split()[0])
        return pages * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


def _set_limit(name: str, soft: int) -> None:
    import resource

    which = getattr(resource, name)
    _, hard = resource.getrlimit(which)
    if hard != resource.RLIM_INFINITY:
        soft = min(soft, hard)
    try:  # noqa: SIM105 (no contextlib: start-up time)
        resource.setrlimit(which, (soft, hard))
    except (ValueError, OSError):
        pass


def _apply_limits(limits: dict[str, Any]) -> None:
    """Limits that hold for the worker's whole life (CPU time is set per block)."""
    _set_limit("RLIMIT_CORE", 0)
    if limits.get("file_size_mb") is not None:
        _set_limit("RLIMIT_FSIZE", int(limits["file_size_mb"]) << 20)
    if limits.get("nproc") is not None:
        # RLIMIT_NPROC counts every task of the user in the user namespace: in bwrap's
        # own namespace that is just this sandbox; on the plain-subprocess path it is all
        # of the user's processes, so the allowance goes on top of what they run now.
        base = _user_tasks() if limits.get("nproc_shared") else 0
        _set_limit("RLIMIT_NPROC", base + int(limits["nproc"]))
    if limits.get("code_memory_mb") is not None:
        # On top of what the worker holds once the context is loaded (the scratch tmpfs,
        # which lives in memory too, is already taken off by the host).
        _set_limit("RLIMIT_AS", _vm_size() + (int(limits["code_memory_mb"]) << 20))


def _user_tasks() -> int:
    """Processes and threads that belong to this user now."""
    uid = os.getuid()
    count = 0
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            if os.stat(f"/proc/{entry}").st_uid == uid:
                count += len(os.listdir(f"/proc/{entry}/task"))
        except OSError:
            continue
    return count


def _set_cpu_budget(seconds: float | None) -> None:
    if seconds is None:
        return
    import math
    import resource

    usage = resource.getrusage(resource.RUSAGE_SELF)
    used = usage.ru_utime + usage.ru_stime
    _set_limit("RLIMIT_CPU", math.ceil(used + seconds))


# -- the main loop -------------------------------------------------------------------------


def _serve(state: _State) -> None:
    from rlm.repl.helpers import LLMQueryError
    from rlm.repl.namespace import Namespace
    from rlm.repl.output import OutputBuffer, cut_middle

    namespace: Namespace | None = None
    limits = state.limits

    # SIGINT (the host's interrupt at the time limit) raises KeyboardInterrupt only while
    # a block runs; the handler is the C one, so no frame of ours shows in tracebacks.
    # SIGXCPU keeps its default action: past the CPU limit the worker ends and is replaced.
    signal.signal(signal.SIGINT, signal.SIG_IGN)

    def after_fork_in_child() -> None:
        state.forked = True

    os.register_at_fork(after_in_child=after_fork_in_child)

    def capped(text: str | None) -> str | None:
        if text is None:
            return None
        return cut_middle(text, int(limits.get("output_chars", 2_000_000)))

    def answer(value: str | None) -> tuple[str | None, str | None]:
        most = int(limits.get("answer_chars", 64 << 20))
        if value is not None and len(value) > most:
            return None, (
                f"the answer is {len(value):,} characters, more than the REPL can hand back "
                f"({most:,}); give a shorter answer"
            )
        return value, None

    state.max_frame = 1 << 20
    state.send({"op": "spawned"})
    while True:
        try:
            message = state.commands.get()
        except KeyboardInterrupt:
            continue
        op = message["op"]
        if op == "load":
            try:
                if "error" in message:
                    raise _LoadFailed(message["error"])
                limits.update(message["limits"])
                state.max_frame = int(message["max_frame"])
                name = message.get("name", "context")
                if name != "context" and namespace is not None:
                    # A session's later context: beside the first, variables kept.
                    namespace.add_context(name, message.pop("value"))
                else:
                    tools = [
                        _ToolSpec(t["name"], t["signature"], t["description"], tuple(t["shapes"]))
                        for t in message.get("tools", ())
                    ]
                    namespace = Namespace(
                        message.pop("value"), _make_subcalls(state, LLMQueryError), tools
                    )
                del message
                _apply_limits(limits)
            except _LoadFailed as exc:
                state.send({"op": "load_failed", "error": str(exc)})
                continue
            except BaseException as exc:
                state.send({"op": "load_failed", "error": f"{type(exc).__name__}: {exc}"})
                continue
            state.send({"op": "loaded"})
        elif op == "exec" and namespace is not None:
            half = max(1, int(limits.get("output_chars", 2_000_000)) // 2)
            stdout, stderr = OutputBuffer(half, half), OutputBuffer(half, half)
            error: str | None
            final: str | None = None
            final_json: str | None = None
            try:
                with state.exec_lock:
                    state.executing = message["id"]
                _set_cpu_budget(limits.get("cpu_seconds"))
                signal.signal(signal.SIGINT, signal.default_int_handler)
                outcome = namespace.run(message["code"], stdout, stderr)
                error, final, final_json = outcome.error, outcome.final, outcome.final_json
            except BaseException as exc:  # a signal that landed outside the block's frames
                error = f"{type(exc).__name__}: {exc}"
            finally:
                _quiet_sigint(state)
            if state.forked:
                os._exit(0)
            if error and error.rstrip().endswith("MemoryError") and limits.get("memory_mb"):
                error += (
                    f"\n(The REPL's memory limit is {limits['memory_mb']:,} MB on top of the "
                    "context; free memory with `del` or work on smaller pieces.)"
                )
            final, final_error = answer(final)
            if final_error:
                error = f"{error}\n{final_error}" if error else final_error
                final_json = None
            reply = {
                "op": "done",
                "id": message["id"],
                "stdout": stdout.getvalue(),
                "stderr": stderr.getvalue(),
                "stdout_chars": stdout.total_chars,
                "stderr_chars": stderr.total_chars,
                "error": capped(error),
                "final": final,
                "final_json": final_json,
            }
            try:
                state.send(reply)
            except _TooLarge as exc:
                state.send(
                    {
                        **reply,
                        "stdout": "",
                        "stderr": "",
                        "final": None,
                        "final_json": None,
                        "error": str(exc),
                    }
                )
        elif op == "lookup" and namespace is not None:
            try:
                with state.exec_lock:
                    state.executing = -1
                signal.signal(signal.SIGINT, signal.default_int_handler)
                found = namespace.lookup(message["name"])
                value, error = answer(found.value)
                data = found.json if value is not None else None
                error = error or found.error
            except BaseException as exc:
                value, error, data = None, f"{type(exc).__name__}: {exc}", None
            finally:
                _quiet_sigint(state)
            state.send(
                {"op": "lookup_result", "value": value, "error": capped(error), "json": data}
            )
        elif op == "exec":
            note = "the REPL has no context loaded"
            state.send(
                {
                    "op": "done",
                    "id": message["id"],
                    "stdout": "",
                    "stderr": "",
                    "stdout_chars": 0,
                    "stderr_chars": 0,
                    "error": note,
                    "final": None,
                }
            )
        elif op == "lookup":
            state.send({"op": "lookup_result", "value": None, "error": "no context loaded"})
        elif op == "exit":
            os._exit(0)


def _quiet_sigint(state: _State) -> None:
    """Stop turning SIGINT into KeyboardInterrupt (a late one is then dropped)."""
    while True:
        try:
            signal.signal(signal.SIGINT, signal.SIG_IGN)
            with state.exec_lock:
                state.executing = None
            return
        except KeyboardInterrupt:
            continue


def _install_packages(rlm_dir: str) -> None:
    """Make `rlm.repl.*` importable without running the `rlm` package's `__init__`."""
    for name, path in (("rlm", rlm_dir), ("rlm.repl", os.path.join(rlm_dir, "repl"))):
        if name in sys.modules:
            continue
        module = types.ModuleType(name)
        module.__path__ = [path]
        sys.modules[name] = module


def main(argv: list[str]) -> None:
    rlm_dir, fd_in, fd_out = argv[0], int(argv[1]), int(argv[2])
    _install_packages(rlm_dir)
    state = _State(fd_in, fd_out)
    threading.Thread(target=_reader, args=(state,), name="rlm-worker-reader", daemon=True).start()
    _serve(state)


if __name__ == "__main__":
    main(sys.argv[1:])
