"""`FakeLLMServer`: a local HTTP server that speaks the OpenAI and Anthropic wire formats.

Use it to drive the real SDK clients (and so rlm's adapters) without a network:

```python
from rlm.testing.server import FakeLLMServer, Reply, ErrorReply

with FakeLLMServer(["```repl\\nprint(len(context))\\n```", "FINAL(42)"]) as server:
    model = rlm.providers.OpenAIModel("gpt-4o-mini", base_url=server.openai_base_url)
    result = rlm.run("How long?", "x" * 42, model=model)
    assert len(server.requests) == 2
```

It listens on 127.0.0.1 on a free port and answers `POST /v1/chat/completions`
(OpenAI Chat Completions), `POST /v1/responses` (OpenAI Responses) and `POST /v1/messages`
(Anthropic Messages, as server-sent events when the request says `stream: true`) with
correctly shaped replies: ids, finish reasons, tool calls, reasoning and usage, cache
details included (`rlm.testing.wire` renders them). Replies
come from a script (a queue of steps, consumed in request order) and then from an
optional `handler(request)`; a step is a reply text, a `Reply`, an `ErrorReply` (a status
with headers such as `retry-after`), a `RawReply` (any body, e.g. malformed JSON), a
`Disconnect`, or a callable of the `RecordedRequest` returning one of those. A callable
can answer by prompt without parsing any wire format: `request.view` gives the system
text, the messages as plain text and the last user text, the same for every endpoint
(`rlm.testing.view`); `request.json` is the raw body. Delays
(`latency_s`, `delay_s`) are asyncio sleeps: requests are served concurrently, so many
in flight take about as long as one.

Standard library only; the server runs its own event loop in a daemon thread, so it
works from synchronous and asynchronous tests alike.
"""

from __future__ import annotations

import asyncio
import contextlib
import http
import inspect
import json
import threading
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Literal, TypeAlias

from rlm.providers.base import ToolCall
from rlm.testing import wire
from rlm.testing.view import RequestView, view_of

Api = Literal["openai", "responses", "anthropic"]


@dataclass(frozen=True, slots=True)
class Reply:
    """A successful completion, rendered in whichever format was requested.

    Token counts follow rlm's normalised meaning: `input_tokens` is everything sent,
    cache reads and writes included (the server splits it the Anthropic way on the
    Anthropic endpoint). Counts left None are estimated from the text (4 chars a token).
    `raw_usage` replaces the wire `usage` object verbatim; `usage_details=False` leaves
    out the cache and reasoning details, as many local servers do.

    `reasoning` is the model's hidden reasoning: a reasoning item on the Responses
    endpoint (its `encrypted_content` wraps the text: `wire.unseal` reads it back), a
    thinking block with a signature on the Anthropic one; Chat Completions shows none.
    `break_after_chars` drops the connection of a streamed (Anthropic) reply once that
    many characters of its text have been sent, before `message_stop`.
    """

    text: str = ""
    tool_calls: Sequence[ToolCall | tuple[str, Mapping[str, Any]]] = ()
    input_tokens: int | None = None
    output_tokens: int | None = None
    cache_read_tokens: int = 0
    cache_write_tokens: int = 0
    reasoning_tokens: int = 0
    usage_details: bool = True
    raw_usage: Mapping[str, Any] | None = None
    finish_reason: str | None = None
    model: str | None = None
    headers: Mapping[str, str] = field(default_factory=dict)
    delay_s: float = 0.0
    reasoning: str | None = None
    break_after_chars: int | None = None


@dataclass(frozen=True, slots=True)
class ErrorReply:
    """An HTTP error in the provider's error format.

    `ErrorReply(429, headers={"retry-after": "1"})` is a rate limit asking for a one-second
    wait; `code` and `error_type` fill the body's error fields (e.g. "insufficient_quota").
    """

    status: int
    message: str | None = None
    error_type: str | None = None
    code: str | None = None
    headers: Mapping[str, str] = field(default_factory=dict)
    delay_s: float = 0.0


@dataclass(frozen=True, slots=True)
class RawReply:
    """Any body with any status: for malformed, empty or unexpected replies."""

    body: bytes | str = b""
    status: int = 200
    content_type: str = "application/json"
    headers: Mapping[str, str] = field(default_factory=dict)
    delay_s: float = 0.0


@dataclass(frozen=True, slots=True)
class Disconnect:
    """Close the connection without answering (after `delay_s`)."""

    delay_s: float = 0.0


@dataclass(frozen=True, slots=True)
class RecordedRequest:
    """One request the server received."""

    index: int
    method: str
    path: str
    headers: Mapping[str, str]
    body: bytes
    json: Any
    api: Api | None
    received_at: float

    @property
    def model(self) -> str | None:
        """The `model` field of the JSON body, if any."""
        return self.json.get("model") if isinstance(self.json, dict) else None

    @property
    def view(self) -> RequestView:
        """The conversation, whatever the wire format: `view.system`, `view.messages`
        (plain text), `view.last_user`, `view.transcript`, `view.tools`
        (see `rlm.testing.view`)."""
        return view_of(self.api, self.json)


Answer: TypeAlias = str | Reply | ErrorReply | RawReply | Disconnect
Step: TypeAlias = Answer | Callable[[RecordedRequest], Answer | Awaitable[Answer]]


_ANTHROPIC_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    529: "overloaded_error",
}
_OPENAI_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "invalid_request_error",
    403: "permission_denied",
    404: "invalid_request_error",
    429: "rate_limit_exceeded",
}


class FakeLLMServer:
    """A scripted OpenAI- and Anthropic-compatible HTTP server on 127.0.0.1.

    Args:
        script: steps answered in request order (see the module docstring).
        handler: answers requests once the script is used up (a callable of the
            `RecordedRequest`, sync or async). Without one, a request beyond the
            script gets HTTP 400 saying so.
        latency_s: added before every answer (an asyncio sleep, not a thread sleep).
        model: the model name reported in replies (default: the request's).

    Use as a context manager (`with` or `async with`), or call `start()`/`stop()`.
    """

    def __init__(
        self,
        script: Iterable[Step] = (),
        *,
        handler: Callable[[RecordedRequest], Answer | Awaitable[Answer]] | None = None,
        latency_s: float = 0.0,
        model: str | None = None,
    ) -> None:
        self.handler = handler
        self.latency_s = latency_s
        self.model = model
        self._steps: deque[Step] = deque(script)
        self._lock = threading.Lock()
        self._requests: list[RecordedRequest] = []
        #: Exceptions raised by steps or the handler (each answered with HTTP 400).
        self.errors: list[Exception] = []
        self._in_flight = 0
        self._max_in_flight = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._connections_opened = 0
        self._port: int | None = None

    # -- lifecycle ----------------------------------------------------------------------

    def start(self) -> FakeLLMServer:
        """Start listening (idempotent). Returns the server."""
        if self._thread is not None:
            return self
        loop = asyncio.new_event_loop()
        ready = threading.Event()

        def run() -> None:
            asyncio.set_event_loop(loop)
            loop.call_soon(ready.set)
            loop.run_forever()

        self._loop = loop
        self._thread = threading.Thread(target=run, name="fake-llm-server", daemon=True)
        self._thread.start()
        ready.wait()
        started = asyncio.run_coroutine_threadsafe(self._listen(), loop)
        self._port = started.result(timeout=10)
        return self

    async def _listen(self) -> int:
        self._server = await asyncio.start_server(
            self._connection, "127.0.0.1", 0, backlog=4096, reuse_address=True
        )
        return int(self._server.sockets[0].getsockname()[1])

    def stop(self) -> None:
        """Stop listening, abort requests in progress and end the server's thread."""
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return
        with contextlib.suppress(Exception):
            asyncio.run_coroutine_threadsafe(self._shutdown(), loop).result(timeout=10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=10)
        loop.close()
        self._loop = self._thread = None

    async def _shutdown(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()

    def __enter__(self) -> FakeLLMServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    async def __aenter__(self) -> FakeLLMServer:
        return self.start()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await asyncio.to_thread(self.stop)

    # -- what tests read ------------------------------------------------------------------

    @property
    def port(self) -> int:
        if self._port is None:
            raise RuntimeError("FakeLLMServer is not started; use it in a `with` block")
        return self._port

    @property
    def url(self) -> str:
        """The server's root, e.g. "http://127.0.0.1:54321"."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def openai_base_url(self) -> str:
        """The `base_url` for the OpenAI SDK ("…/v1")."""
        return f"{self.url}/v1"

    @property
    def anthropic_base_url(self) -> str:
        """The `base_url` for the Anthropic SDK (the root; it adds "/v1/messages")."""
        return self.url

    @property
    def requests(self) -> list[RecordedRequest]:
        """Every request received so far, in arrival order."""
        with self._lock:
            return list(self._requests)

    @property
    def max_in_flight(self) -> int:
        """The most requests that were being answered at the same moment."""
        with self._lock:
            return self._max_in_flight

    @property
    def connections_opened(self) -> int:
        """How many connections clients have opened so far."""
        with self._lock:
            return self._connections_opened

    @property
    def open_connections(self) -> int:
        """How many connections are open now (clients that have not closed theirs)."""
        return len(self._tasks)

    @property
    def remaining(self) -> list[Step]:
        """Script steps not used yet."""
        with self._lock:
            return list(self._steps)

    def push(self, *steps: Step) -> None:
        """Append steps to the script."""
        with self._lock:
            self._steps.extend(steps)

    def assert_exhausted(self) -> None:
        """Raise AssertionError if some script steps were never used."""
        left = self.remaining
        if left:
            raise AssertionError(f"FakeLLMServer has {len(left)} unused step(s): {left[:5]!r}")

    def reset(self, script: Iterable[Step] = ()) -> None:
        """Forget the recorded requests and replace the script."""
        with self._lock:
            self._requests.clear()
            self._steps = deque(script)
            self._max_in_flight = 0
            self._connections_opened = 0

    # -- HTTP -----------------------------------------------------------------------------

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._tasks.add(task)
        with self._lock:
            self._connections_opened += 1
        try:
            while await self._one_request(reader, writer):
                pass
        except (ConnectionError, asyncio.IncompleteReadError, ValueError, asyncio.CancelledError):
            pass
        finally:
            if task is not None:
                self._tasks.discard(task)
            with contextlib.suppress(Exception):
                writer.close()
                await writer.wait_closed()

    async def _one_request(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> bool:
        """Serve one request; False when the connection should close."""
        start = await reader.readline()
        if not start.strip():
            return False
        method, target, version = start.decode("latin-1").split(maxsplit=2)
        headers: dict[str, str] = {}
        while True:
            line = await reader.readline()
            if line in (b"\r\n", b"\n", b""):
                break
            name, _, value = line.decode("latin-1").partition(":")
            headers[name.strip().lower()] = value.strip()
        body = await self._read_body(reader, headers)
        keep_alive = (
            version.strip().upper() == "HTTP/1.1"
            and headers.get("connection", "").lower() != "close"
        )
        with self._lock:
            self._in_flight += 1
            self._max_in_flight = max(self._max_in_flight, self._in_flight)
        try:
            answer = await self._answer(method, target.split("?", 1)[0], headers, body)
        finally:
            with self._lock:
                self._in_flight -= 1
        if answer is None:
            return False
        status, extra_headers, payload, content_type = answer
        phrase = _phrase(status)
        framing = (
            "transfer-encoding: chunked"
            if isinstance(payload, _Stream)
            else f"content-length: {len(payload)}"
        )
        head = [
            f"HTTP/1.1 {status} {phrase}",
            f"content-type: {content_type}",
            framing,
            f"connection: {'keep-alive' if keep_alive else 'close'}",
            *(f"{k}: {v}" for k, v in extra_headers.items()),
        ]
        writer.write(("\r\n".join(head) + "\r\n\r\n").encode("latin-1"))
        if not isinstance(payload, _Stream):
            writer.write(payload)
            await writer.drain()
            return keep_alive
        for event in payload.events:
            writer.write(f"{len(event):x}\r\n".encode() + event + b"\r\n")
            await writer.drain()
        if not payload.complete:
            return False  # closed mid-body: the client sees the stream break
        writer.write(b"0\r\n\r\n")
        await writer.drain()
        return keep_alive

    @staticmethod
    async def _read_body(reader: asyncio.StreamReader, headers: Mapping[str, str]) -> bytes:
        if "content-length" in headers:
            length = int(headers["content-length"])
            return await reader.readexactly(length) if length else b""
        if headers.get("transfer-encoding", "").lower() == "chunked":
            chunks: list[bytes] = []
            while True:
                size = int((await reader.readline()).split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    await reader.readline()
                    return b"".join(chunks)
                chunks.append(await reader.readexactly(size))
                await reader.readline()
        return b""

    async def _answer(
        self, method: str, path: str, headers: Mapping[str, str], body: bytes
    ) -> tuple[int, dict[str, str], bytes | _Stream, str] | None:
        api: Api | None = None
        if path.endswith("/chat/completions"):
            api = "openai"
        elif path.endswith("/responses"):
            api = "responses"
        elif path.endswith("/messages"):
            api = "anthropic"
        try:
            parsed: Any = json.loads(body) if body else None
        except ValueError:
            parsed = None
        with self._lock:
            request = RecordedRequest(
                index=len(self._requests),
                method=method,
                path=path,
                headers=dict(headers),
                body=body,
                json=parsed,
                api=api,
                received_at=time.time(),
            )
            self._requests.append(request)
            routed = api is not None and method == "POST"
            step: Step | None = self._steps.popleft() if routed and self._steps else None
        if api is None or not routed:
            return self._error(
                api or "openai", ErrorReply(404, f"FakeLLMServer: no route {method} {path}")
            )
        if step is None and self.handler is not None:
            step = self.handler
        if step is None:
            return self._error(
                api,
                ErrorReply(
                    400,
                    f"FakeLLMServer: no reply scripted for request {request.index + 1} "
                    f"({method} {path}); push() more steps or pass a handler",
                ),
            )
        try:
            answer = step(request) if callable(step) else step
            if inspect.isawaitable(answer):
                answer = await answer
            if not isinstance(answer, str | Reply | ErrorReply | RawReply | Disconnect):
                raise TypeError(
                    f"it returned {type(answer).__name__}; return a str, Reply, ErrorReply, "
                    "RawReply or Disconnect"
                )
        except Exception as exc:
            # A broken step is a bug in the test: refuse the request (not retried) loudly.
            with self._lock:
                self.errors.append(exc)
            return self._error(
                api,
                ErrorReply(
                    400,
                    f"FakeLLMServer: the step for request {request.index + 1} failed: "
                    f"{type(exc).__name__}: {exc}",
                ),
            )
        if self.latency_s:
            await asyncio.sleep(self.latency_s)
        delay = getattr(answer, "delay_s", 0.0)
        if delay:
            await asyncio.sleep(delay)
        if isinstance(answer, str):
            answer = Reply(text=answer)
        if isinstance(answer, Disconnect):
            return None
        if isinstance(answer, RawReply):
            payload = answer.body.encode() if isinstance(answer.body, str) else answer.body
            return answer.status, dict(answer.headers), payload, answer.content_type
        if isinstance(answer, ErrorReply):
            return self._error(api, answer)
        request_id = {"request-id" if api == "anthropic" else "x-request-id": wire.new_id("req_")}
        headers = {**request_id, **answer.headers}
        if api == "anthropic" and isinstance(parsed, dict) and parsed.get("stream") is True:
            events, complete = wire.anthropic_events(answer, request, self.model)
            return 200, headers, _Stream(events, complete), "text/event-stream"
        render = {
            "openai": wire.render_openai,
            "responses": wire.render_responses,
            "anthropic": wire.render_anthropic,
        }[api]
        document = render(answer, request, self.model)
        return 200, headers, wire.dump(document), "application/json"

    @staticmethod
    def _error(api: Api, error: ErrorReply) -> tuple[int, dict[str, str], bytes, str]:
        message = error.message or f"fake error {error.status}"
        if api == "anthropic":
            kind = error.error_type or _ANTHROPIC_ERROR_TYPES.get(error.status, "api_error")
            document: dict[str, Any] = {
                "type": "error",
                "error": {"type": kind, "message": message},
            }
        else:
            kind = error.error_type or _OPENAI_ERROR_TYPES.get(error.status, "server_error")
            document = {
                "error": {"message": message, "type": kind, "param": None, "code": error.code}
            }
        return error.status, dict(error.headers), wire.dump(document), "application/json"


@dataclass(frozen=True, slots=True)
class _Stream:
    """A body sent as server-sent events, one chunk each; cut short unless `complete`."""

    events: list[bytes]
    complete: bool


def _phrase(status: int) -> str:
    if status == 529:
        return "Overloaded"
    try:
        return http.HTTPStatus(status).phrase
    except ValueError:
        return "Unknown"
