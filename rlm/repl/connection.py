"""The host's end of one sandboxed REPL worker, attached to the event loop.

`WorkerConnection` moves frames (`rlm.repl.protocol`) to and from one worker process and
collects what the worker writes to fd 1/2. The worker is untrusted, so every frame is
bounded before it is read (size, bytes held, calls in flight, JSON nesting) and every
message is checked before it is used; past a bound, or when the worker ends, the
connection fails with `WorkerGone` and `rlm.repl.subprocess.SubprocessRepl` replaces the
worker. The sub-calls a worker asks for (`llm_query`, `rlm_query`, their batched forms,
tools) are served here on the `ReplHost`, concurrently, while the block runs.
"""

from __future__ import annotations

import asyncio
import codecs
import concurrent.futures
import contextlib
import functools
import json
import marshal
import os
import threading
from collections.abc import Callable
from typing import Any

from rlm.repl import workers
from rlm.repl.base import LLMQueryError, ReplHost, ToolError
from rlm.repl.output import OutputBuffer
from rlm.repl.protocol import BATCHED_FUNCTIONS, HEADER, MAX_FRAME, SUBCALL_FUNCTIONS, TOOL_CALL
from rlm.repl.sandbox import ReplLimits
from rlm.repl.transfer import ChunkWriter, TransferCancelled
from rlm.repl.workers import WorkerProcess

__all__ = ["STDERR_TAIL", "WorkerConnection", "WorkerGone"]

#: How much of the worker's last stderr is kept, to explain why it ended.
STDERR_TAIL = 4000


class WorkerGone(Exception):
    """The worker ended, or broke the protocol or a bound of the host (`violation`: the
    name of the bound, or "protocol"), so it is being replaced."""

    def __init__(
        self, reason: str = "", *, protocol: bool = False, violation: str | None = None
    ) -> None:
        super().__init__(reason)
        self.reason = reason
        self.protocol = protocol or violation is not None
        self.violation = violation or ("protocol" if protocol else None)


def _over(limit: str, reason: str) -> WorkerGone:
    return WorkerGone(reason, violation=limit)


def _nesting_within(value: object, limit: int) -> bool:
    """Whether `value` (decoded JSON) nests no deeper than `limit` (only containers are
    walked, so long strings cost nothing)."""
    stack: list[tuple[dict[Any, Any] | list[Any], int]] = []
    if isinstance(value, dict | list):
        stack.append((value, 1))
    while stack:
        item, depth = stack.pop()
        if depth > limit:
            return False
        children = item.values() if isinstance(item, dict) else item
        stack.extend((c, depth + 1) for c in children if isinstance(c, dict | list))
    return True


_STR_OR_NONE = (str, type(None))


def _check_message(message: object, limits: ReplLimits) -> dict[str, Any]:
    """The worker is untrusted: every message is checked before it is used."""
    if not isinstance(message, dict) or not isinstance(message.get("op"), str):
        raise WorkerGone("a message that is not an object with an 'op'", protocol=True)
    op = message["op"]

    def need(name: str, types: type | tuple[type, ...]) -> None:
        value = message.get(name)
        if not isinstance(value, types) or (isinstance(value, bool) and types is int):
            raise WorkerGone(f"a {op!r} message with a bad {name!r}", protocol=True)

    if op == "done":
        need("id", int)
        for name in ("stdout", "stderr"):
            need(name, str)
        for name in ("stdout_chars", "stderr_chars"):
            need(name, int)
        need("error", _STR_OR_NONE)
        need("final", _STR_OR_NONE)
        _answer_within(message["final"], limits)
        need("final_json", _STR_OR_NONE)
        _answer_within(message["final_json"], limits)
    elif op == "call" and message.get("fn") == TOOL_CALL:
        need("id", int)
        need("name", str)
        need("args", list)
        need("kwargs", dict)
    elif op == "call":
        need("id", int)
        need("model", _STR_OR_NONE)
        fn = message.get("fn")
        if fn not in SUBCALL_FUNCTIONS:
            raise WorkerGone(f"a call to an unknown function {fn!r}", protocol=True)
        if fn in BATCHED_FUNCTIONS:
            need("prompts", list)
            if not all(isinstance(p, str) for p in message["prompts"]):
                raise WorkerGone("a batched call with a prompt that is not text", protocol=True)
        else:
            need("prompt", str)
    elif op == "cancel":
        need("id", int)
    elif op == "lookup_result":
        need("value", _STR_OR_NONE)
        need("error", _STR_OR_NONE)
        _answer_within(message["value"], limits)
        need("json", _STR_OR_NONE)
        _answer_within(message["json"], limits)
    elif op == "load_failed":
        need("error", str)
    elif op not in ("spawned", "loaded"):
        raise WorkerGone(f"an unknown message {op!r}", protocol=True)
    return message


def _answer_within(answer: str | None, limits: ReplLimits) -> None:
    if answer is not None and len(answer) > limits.answer_chars:
        raise _over(
            "answer_chars",
            f"an answer of {len(answer):,} characters (answer_chars allows "
            f"{limits.answer_chars:,})",
        )


class WorkerConnection:
    """Frames in and out of one worker on the current event loop, and its fd 1/2 output.

    The frame reader bounds what the worker can make the host hold, the same way for
    every kind of frame: the frame being read plus the frames of sub-calls still being
    served may not pass `ReplLimits.host_buffer_mb` in all (checked from the header,
    before the body is read), nor calls in flight `max_pending_calls`, nor JSON nesting
    `json_depth`. Past a bound the worker is killed at once.
    """

    def __init__(self, process: WorkerProcess, host: ReplHost, limits: ReplLimits) -> None:
        self.process = process
        self.host = host
        self.limits = limits
        self._buffer_cap = limits.host_buffer_mb << 20
        self._held = 0  # bytes of frames whose sub-calls are still being served
        self.loop = asyncio.get_running_loop()
        self._inbox = bytearray()
        self._outbox = bytearray()
        self._writing = False
        self._streaming = False
        self.gone: WorkerGone | None = None
        self.waiters: dict[str, asyncio.Future[dict[str, Any]]] = {}
        self.calls: set[asyncio.Task[None]] = set()
        # The call each id names, for a `cancel` from the worker (an untrusted worker may
        # reuse an id: it can then cancel only the latest call of that id).
        self.call_ids: dict[int, asyncio.Task[None]] = {}
        half = max(1, limits.output_chars // 2)
        self._half = half
        self.fd_stdout = OutputBuffer(half, half)
        self.fd_stderr = OutputBuffer(half, half)
        self.stderr_tail = ""
        self._decoders = {
            process.stdout: codecs.getincrementaldecoder("utf-8")("replace"),
            process.stderr: codecs.getincrementaldecoder("utf-8")("replace"),
        }
        self.attached = True
        if process.preread:
            self._inbox += process.preread
            process.preread = b""
            self.loop.call_soon(self._parse_inbox)
        self.loop.add_reader(process.from_worker, self._on_readable)
        self.loop.add_reader(process.stdout, self._on_output, process.stdout)
        self.loop.add_reader(process.stderr, self._on_output, process.stderr)

    # -- output on fd 1/2 (subprocesses, C code, threads without a capture) --

    def _on_output(self, fd: int) -> None:
        self._drain_output(fd, rounds=4)

    def _drain_output(self, fd: int, rounds: int) -> None:
        for _ in range(rounds):
            try:
                data = os.read(fd, 1 << 16)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                data = b""
            if not data:
                with contextlib.suppress(ValueError, RuntimeError):
                    self.loop.remove_reader(fd)
                return
            text = self._decoders[fd].decode(data)
            if fd == self.process.stdout:
                self.fd_stdout.write(text)
            else:
                self.fd_stderr.write(text)
                self.stderr_tail = (self.stderr_tail + text)[-STDERR_TAIL:]

    def drain(self) -> None:
        """Read what fd 1 and fd 2 hold right now (writes made before the last message)."""
        if not self.process.fds_closed:
            self._drain_output(self.process.stdout, rounds=64)
            self._drain_output(self.process.stderr, rounds=64)

    def take_fd_output(self) -> tuple[OutputBuffer, OutputBuffer]:
        """What fd 1 and fd 2 carried since last time."""
        self.drain()
        out, err = self.fd_stdout, self.fd_stderr
        self.fd_stdout = OutputBuffer(self._half, self._half)
        self.fd_stderr = OutputBuffer(self._half, self._half)
        return out, err

    # -- frames from the worker --

    def _on_readable(self) -> None:
        try:
            data = os.read(self.process.from_worker, 1 << 20)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:
            self._fail(WorkerGone("the worker closed its connection"))
            return
        self._inbox += data
        self._parse_inbox()

    def _parse_inbox(self) -> None:
        try:
            while len(self._inbox) >= HEADER.size and self.gone is None:
                (size,) = HEADER.unpack_from(self._inbox)
                if size > MAX_FRAME:
                    raise _over("frame_bytes", f"a frame of {size:,} bytes")
                if self._held + size > self._buffer_cap:
                    raise _over(
                        "bytes_in_flight",
                        f"a frame of {size:,} bytes while the host held {self._held:,} "
                        f"(host_buffer_mb allows {self.limits.host_buffer_mb:,} MB in all)",
                    )
                if len(self._inbox) < HEADER.size + size:
                    break
                payload = self._inbox[HEADER.size : HEADER.size + size]
                del self._inbox[: HEADER.size + size]
                self._dispatch(self._decode(payload), size)
        except WorkerGone as gone:
            self._fail(gone)

    def _decode(self, payload: bytearray) -> dict[str, Any]:
        depth = self.limits.json_depth
        try:
            message = json.loads(payload.decode("utf-8", "surrogatepass"))
        except RecursionError:
            raise _over("json_depth", f"a frame nested deeper than {depth} levels") from None
        except ValueError:
            raise WorkerGone("a frame that is not JSON", protocol=True) from None
        if not _nesting_within(message, depth):
            raise _over("json_depth", f"a frame nested deeper than {depth} levels")
        return _check_message(message, self.limits)

    def _dispatch(self, message: dict[str, Any], size: int) -> None:
        op = message["op"]
        if op == "call":
            if len(self.calls) >= self.limits.max_pending_calls:
                raise _over(
                    "pending_calls",
                    f"more than {self.limits.max_pending_calls:,} sub-calls at once "
                    "(max_pending_calls)",
                )
            self._held += size
            task = self.loop.create_task(self._serve_call(message))
            self.calls.add(task)
            self.call_ids[message["id"]] = task
            task.add_done_callback(functools.partial(self._call_done, message["id"], size))
            return
        if op == "cancel":
            call = self.call_ids.get(message["id"])
            if call is not None:
                call.cancel()
            return
        key = {"loaded": "load", "load_failed": "load", "done": "exec"}.get(op, op)
        if op == "done":
            key = f"exec:{message['id']}"
        waiter = self.waiters.pop(key, None)
        if waiter is not None and not waiter.done():
            waiter.set_result(message)

    def _call_done(self, call_id: int, size: int, task: asyncio.Task[None]) -> None:
        self.calls.discard(task)
        if self.call_ids.get(call_id) is task:
            del self.call_ids[call_id]
        self._held -= size

    async def _serve_call(self, message: dict[str, Any]) -> None:
        fn, model = message["fn"], message.get("model")
        reply: dict[str, Any] = {"op": "reply", "id": message["id"]}
        try:
            if fn == TOOL_CALL:
                value: Any = await self.host.call_tool(
                    message["name"], message["args"], message["kwargs"]
                )
            elif fn == "llm_query":
                value = await self.host.llm_query(message["prompt"], model)
            elif fn == "rlm_query":
                value = await self.host.rlm_query(message["prompt"], model)
            elif fn == "llm_query_batched":
                value = await self.host.llm_query_batched(message["prompts"], model)
            else:
                value = await self.host.rlm_query_batched(message["prompts"], model)
            reply.update(ok=True, value=value)
        except (LLMQueryError, ToolError) as exc:
            reply.update(ok=False, error=str(exc))
        except Exception as exc:
            reply.update(ok=False, error=f"{type(exc).__name__}: {exc}")
        self.send(reply)

    def _fail(self, gone: WorkerGone) -> None:
        if self.gone is None:
            self.gone = gone
        self.detach()
        if gone.violation is not None:
            # Stop it at once: it holds nothing the run can still use.
            self._inbox.clear()
            self.process.send_kill()
            for task in self.calls:
                task.cancel()
        for waiter in self.waiters.values():
            if not waiter.done():
                waiter.set_exception(self.gone)
        self.waiters.clear()

    # -- frames to the worker --

    def send(self, message: dict[str, Any]) -> None:
        if self.gone is not None or not self.attached:
            return
        payload = marshal.dumps(message, 4)
        self._outbox += HEADER.pack(len(payload))
        self._outbox += payload
        if not self._writing and not self._streaming:
            self._flush()

    async def send_stream(
        self, message: dict[str, Any], produce: Callable[[ChunkWriter], None]
    ) -> None:
        """Send `message`, then the stream `produce` writes, from a thread; other frames
        wait until it is done."""
        if self.gone is not None:
            raise self.gone
        frame = marshal.dumps(message, 4)
        fd = self.process.to_worker
        cancelled = threading.Event()

        def run() -> None:
            out = ChunkWriter(fd, cancelled)
            try:
                out.write_raw(HEADER.pack(len(frame)))
                out.write_raw(frame)
                try:
                    produce(out)
                finally:
                    out.close()
            except TransferCancelled as exc:
                raise WorkerGone(str(exc)) from None
            except OSError as exc:
                raise WorkerGone("the worker stopped reading its pipe") from exc

        self._streaming = True
        try:
            await asyncio.to_thread(run)
        except asyncio.CancelledError:
            cancelled.set()
            raise
        finally:
            self._streaming = False
        if self._outbox:
            self._flush()

    def _flush(self) -> None:
        if self._streaming:
            return
        try:
            while self._outbox:
                written = os.write(self.process.to_worker, self._outbox)
                del self._outbox[:written]
        except (BlockingIOError, InterruptedError):
            pass
        except OSError:
            self._outbox.clear()
            self._fail(WorkerGone("the worker closed its connection"))
            return
        if self._outbox and not self._writing:
            self._writing = True
            self.loop.add_writer(self.process.to_worker, self._on_writable)
        elif not self._outbox and self._writing:
            self._writing = False
            self.loop.remove_writer(self.process.to_worker)

    def _on_writable(self) -> None:
        self._flush()

    def expect(self, key: str) -> asyncio.Future[dict[str, Any]]:
        future: asyncio.Future[dict[str, Any]] = self.loop.create_future()
        if self.gone is not None:
            future.set_exception(self.gone)
        else:
            self.waiters[key] = future
        return future

    def detach(self) -> None:
        if not self.attached:
            return
        self.attached = False
        for fd in (self.process.from_worker, self.process.stdout, self.process.stderr):
            with contextlib.suppress(ValueError, RuntimeError, OSError):
                self.loop.remove_reader(fd)
        if self._writing:
            with contextlib.suppress(ValueError, RuntimeError, OSError):
                self.loop.remove_writer(self.process.to_worker)
            self._writing = False

    async def shutdown(self) -> concurrent.futures.Future[None]:
        """Detach, cancel sub-calls in flight, and dispose of the process (on the reaper
        thread: the returned future says when it is gone)."""
        for waiter in self.waiters.values():
            waiter.cancel()
        self.waiters.clear()
        self.detach()
        self.process.send_kill()
        calls = list(self.calls)
        for task in calls:
            task.cancel()
        if calls:
            await asyncio.gather(*calls, return_exceptions=True)
        return workers.reaper.submit(self.process.dispose)
