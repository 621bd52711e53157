"""`KeepAliveTransport`: the HTTP/1.1 transport under the SDK clients rlm builds.

The SDKs send through httpx2, whose default transport (httpcore2's connection pool on
anyio, with h11) costs about a millisecond of CPU per request, and most of it grows with
the number of open connections: the pool re-examines every connection on each request.
A fan-out of hundreds of sub-calls at a concurrency of 64 then spends its time in the
pool rather than waiting for the model. This transport does only what the adapters
need, on asyncio streams: HTTP/1.1 with a keep-alive pool per origin (last used, first
reused), TLS with one verified context per process, `Content-Length`, chunked and
read-to-close bodies, and the connect/read/write timeouts the SDKs pass per request. A
response's body is read whole before it is returned (rlm never streams a reply), and
compressed bodies are decoded by httpx2 as usual. A request is sent again by the
transport only in one case: its reused connection had been closed by the server while
idle (reset, or closed with no byte of reply, at once); then once, on a new connection.

It is used only where it is a like-for-like replacement: not when a proxy is
configured (`HTTP(S)_PROXY`, `ALL_PROXY`: httpx2 then routes through the proxy), and
never for an SDK client you pass yourself. `RLM_HTTP_TRANSPORT=httpx` turns it off.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import socket
import ssl
import time
import urllib.request
from collections.abc import AsyncIterator, Awaitable
from dataclasses import dataclass, field
from typing import TypeVar

import httpx2

from rlm.errors import ConfigurationError

#: Longest response head (status line and headers) accepted, in bytes.
MAX_HEAD_BYTES = 64 * 1024
#: Idle connections kept per origin; more are closed when they are returned.
MAX_IDLE_PER_ORIGIN = 100
#: Seconds an idle connection is kept: under the 5 s after which uvicorn (vLLM and
#: many OpenAI-compatible servers) closes one, so we rarely send on a closing socket.
IDLE_EXPIRY_S = 4.0
#: A reused connection that fails this soon after the request, with no reply, was
#: closed by the server while idle: the request is sent once more on a new connection.
STALE_WITHIN_S = 0.5
#: TCP keep-alive probes on every connection (as the Anthropic SDK's own client sets),
#: so a long silent generation survives NATs and load balancers that drop idle flows.
TCP_KEEPALIVE = {"TCP_KEEPIDLE": 60, "TCP_KEEPINTVL": 60, "TCP_KEEPCNT": 5}
#: Bytes read per body read; also the stream buffer limit.
READ_CHUNK = 1 << 16

T = TypeVar("T")
_NO_BODY_STATUS = frozenset({204, 304})
_Origin = tuple[str, str, int]


def transport_choice() -> str:
    """'rlm' or 'httpx', from `RLM_HTTP_TRANSPORT` (default 'rlm')."""
    choice = os.environ.get("RLM_HTTP_TRANSPORT", "").strip().lower() or "rlm"
    if choice not in ("rlm", "httpx"):
        raise ConfigurationError(f"RLM_HTTP_TRANSPORT must be 'rlm' or 'httpx', not {choice!r}")
    return choice


def proxies_configured() -> bool:
    """Whether the environment names a proxy (which httpx2 would honour and we do not)."""
    return any(scheme != "no" for scheme in urllib.request.getproxies_environment())


def http_client(timeout: float) -> httpx2.AsyncClient | None:
    """An httpx2 client on `KeepAliveTransport`, or None to let the SDK build its own
    (a proxy is configured, or `RLM_HTTP_TRANSPORT=httpx`)."""
    if transport_choice() == "httpx" or proxies_configured():
        return None
    # Redirects followed as the SDKs' own clients do; the SDKs pass their own timeout
    # with every request, this one is only a fallback.
    return httpx2.AsyncClient(
        transport=KeepAliveTransport(), timeout=timeout, follow_redirects=True
    )


@functools.cache
def tls_context() -> ssl.SSLContext:
    """The verified TLS context shared by every connection of this process.

    Built as httpx2 builds its default one (system trust store, `SSL_CERT_FILE` and
    `SSL_CERT_DIR` honoured), but once: loading the CA bundle takes milliseconds and
    half a megabyte, and rlm builds an SDK client for every event loop.
    """
    context = httpx2.create_ssl_context()
    context.set_alpn_protocols(["http/1.1"])
    return context


@dataclass(eq=False)
class _Connection:
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    idle_since: float = field(default_factory=time.monotonic)
    reused: bool = False

    def usable(self, now: float) -> bool:
        # Bytes that arrived while idle (a 408, a stray line) would be read as the next
        # request's reply: such a connection is dropped, as httpcore does.
        unread = getattr(self.reader, "_buffer", None)
        return (
            now - self.idle_since < IDLE_EXPIRY_S
            and not self.reader.at_eof()
            and not self.writer.is_closing()
            and not unread
        )

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.writer.close()


def _closed_while_idle(exc: BaseException, elapsed_s: float) -> bool:
    """Whether a reused connection's failure is the server having closed it while idle:
    reset, or closed without a byte of reply, at once. Anything later or partial may be
    a request the server worked on, which only rlm's retry policy may send again."""
    if elapsed_s > STALE_WITHIN_S or not isinstance(exc, httpx2.NetworkError):
        return False
    cause = exc.__cause__
    if isinstance(cause, asyncio.IncompleteReadError):
        return not cause.partial
    return isinstance(cause, ConnectionResetError | BrokenPipeError)


class _StaleConnection(Exception):
    """A reused connection failed before the server answered: the request may be sent
    again on a new one (the server closed it while it was idle)."""


class KeepAliveTransport(httpx2.AsyncBaseTransport):
    """HTTP/1.1 over asyncio streams with a keep-alive pool per origin.

    One transport belongs to one event loop, like any httpx2 client (rlm builds one
    SDK client per loop).
    """

    def __init__(self) -> None:
        self._idle: dict[_Origin, list[_Connection]] = {}
        self._closed = False

    async def handle_async_request(self, request: httpx2.Request) -> httpx2.Response:
        if self._closed:
            raise httpx2.ConnectError("the transport is closed", request=request)
        url = request.url
        if url.scheme not in ("http", "https"):
            raise httpx2.UnsupportedProtocol(
                f"unsupported URL scheme {url.scheme!r}", request=request
            )
        origin: _Origin = (url.scheme, url.host, url.port or (443 if url.scheme == "https" else 80))
        timeouts = request.extensions.get("timeout", {})
        body = await request.aread()
        head = _request_head(request, len(body))
        connection = self._take(origin) or await _connect(origin, timeouts, request)
        try:
            return await self._exchange(connection, origin, head, body, request, timeouts)
        except _StaleConnection:
            # Once, and on a new connection: a request the server may have received is
            # never sent round the pool (rlm's retry policy decides about the rest).
            connection = await _connect(origin, timeouts, request)
            return await self._exchange(connection, origin, head, body, request, timeouts)

    def _take(self, origin: _Origin) -> _Connection | None:
        idle = self._idle.get(origin)
        now = time.monotonic()
        while idle:
            connection = idle.pop()
            if connection.usable(now):
                connection.reused = True
                return connection
            connection.close()
        return None

    def _give_back(self, origin: _Origin, connection: _Connection) -> None:
        idle = self._idle.setdefault(origin, [])
        if self._closed or len(idle) >= MAX_IDLE_PER_ORIGIN:
            connection.close()
            return
        connection.idle_since = time.monotonic()
        idle.append(connection)

    async def _exchange(
        self,
        connection: _Connection,
        origin: _Origin,
        head: bytes,
        body: bytes,
        request: httpx2.Request,
        timeouts: dict[str, float | None],
    ) -> httpx2.Response:
        reader, writer = connection.reader, connection.writer
        sent_at = time.monotonic()
        try:
            writer.write(head + body if len(body) < READ_CHUNK else head)
            if len(body) >= READ_CHUNK:
                writer.write(body)
            await _within(writer.drain(), timeouts.get("write"), _WRITE, request)
            status, reason, version, headers = await _read_head(reader, request, timeouts)
            content, reusable = await _read_body(
                reader, request, status, version, headers, timeouts
            )
        except BaseException as exc:
            connection.close()
            if connection.reused and _closed_while_idle(exc, time.monotonic() - sent_at):
                raise _StaleConnection from exc
            raise
        if reusable and not _wants_close(request.headers.get("connection")):
            self._give_back(origin, connection)
        else:
            connection.close()
        return httpx2.Response(
            status,
            headers=headers,
            stream=_Body(content),
            request=request,
            extensions={"http_version": version, "reason_phrase": reason},
        )

    async def aclose(self) -> None:
        self._closed = True
        idle, self._idle = self._idle, {}
        for connections in idle.values():
            for connection in connections:
                connection.close()


class _Body(httpx2.AsyncByteStream):
    def __init__(self, content: bytes) -> None:
        self._content = content

    async def __aiter__(self) -> AsyncIterator[bytes]:
        yield self._content


async def _connect(
    origin: _Origin, timeouts: dict[str, float | None], request: httpx2.Request
) -> _Connection:
    scheme, host, port = origin
    tls = tls_context() if scheme == "https" else None
    reader, writer = await _within(
        asyncio.open_connection(
            host,
            port,
            ssl=tls,
            server_hostname=host if tls else None,
            limit=READ_CHUNK,
            # Try the next address (IPv4 after an unreachable IPv6 one) after 250 ms, as
            # httpx2's default transport does, rather than after the whole timeout.
            happy_eyeballs_delay=0.25,
            interleave=1,
        ),
        timeouts.get("connect"),
        _CONNECT,
        request,
    )
    _keep_alive(writer.get_extra_info("socket"))
    return _Connection(reader, writer)


def _keep_alive(sock: socket.socket | None) -> None:
    if sock is None:
        return
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        for name, value in TCP_KEEPALIVE.items():
            option = getattr(socket, name, None)  # not every platform has all three
            if option is not None:
                sock.setsockopt(socket.IPPROTO_TCP, option, value)


async def _within(
    step: Awaitable[T],
    seconds: float | None,
    errors: tuple[type[httpx2.TimeoutException], type[httpx2.NetworkError]],
    request: httpx2.Request,
) -> T:
    """Await `step` within `seconds`, failures raised as httpx2's errors for the phase
    (`_CONNECT`, `_WRITE` or `_READ`), as the SDKs expect from a transport."""
    timeout_error, network_error = errors
    try:
        async with asyncio.timeout(seconds):
            return await step
    except TimeoutError as exc:
        raise timeout_error(f"no progress in {seconds:g} s", request=request) from exc
    except (OSError, asyncio.IncompleteReadError) as exc:
        # OSError covers refused and reset connections, name resolution and TLS
        # (verification included); IncompleteReadError a peer that hung up mid-reply.
        raise network_error(f"{type(exc).__name__}: {exc}", request=request) from exc


_CONNECT = (httpx2.ConnectTimeout, httpx2.ConnectError)
_WRITE = (httpx2.WriteTimeout, httpx2.WriteError)
_READ = (httpx2.ReadTimeout, httpx2.ReadError)


def _request_head(request: httpx2.Request, body_length: int) -> bytes:
    """The request line and headers. The body is sent whole, so it is framed by its
    length (a streamed request's `Transfer-Encoding: chunked` is replaced)."""
    target = request.url.raw_path.decode("ascii")
    lines = [f"{request.method} {target} HTTP/1.1".encode("ascii")]
    framed = False
    for name, value in request.headers.raw:
        key = name.lower()
        if key == b"transfer-encoding":
            continue
        if key == b"content-length":
            framed = True
            value = str(body_length).encode("ascii")
        lines.append(name + b": " + value)
    if not framed and (body_length or request.method in ("POST", "PUT", "PATCH")):
        lines.append(b"Content-Length: " + str(body_length).encode("ascii"))
    return b"\r\n".join(lines) + b"\r\n\r\n"


async def _read_head(
    reader: asyncio.StreamReader,
    request: httpx2.Request,
    timeouts: dict[str, float | None],
) -> tuple[int, bytes, bytes, list[tuple[bytes, bytes]]]:
    """(status, reason, version, headers) of the first final (non-1xx) response."""
    read = timeouts.get("read")
    while True:
        try:
            status_line, *lines = await _within(_head_lines(reader), read, _READ, request)
        except ValueError as exc:  # a line longer than the stream's limit, or the head
            raise httpx2.RemoteProtocolError(
                "the server sent a response head that is too long", request=request
            ) from exc
        parts = status_line.split(b" ", 2)
        if len(parts) < 2 or not parts[0].startswith(b"HTTP/1.") or not parts[1].isdigit():
            raise httpx2.RemoteProtocolError(
                f"not an HTTP/1.x response: {status_line[:80]!r}", request=request
            )
        status = int(parts[1])
        if 100 <= status < 200 and status != 101:
            continue  # informational (100 Continue, 103 Early Hints): the answer follows
        headers: list[tuple[bytes, bytes]] = []
        for line in lines:
            name, colon, value = line.partition(b":")
            if not colon or not name or name != name.strip():
                raise httpx2.RemoteProtocolError(
                    f"malformed response header {line[:80]!r}", request=request
                )
            headers.append((name, value.strip()))
        return status, parts[2] if len(parts) > 2 else b"", parts[0], headers


async def _head_lines(reader: asyncio.StreamReader) -> list[bytes]:
    """The lines of a response head, CRLF or bare LF, without the blank line ending it
    (blank lines before the status line are skipped, as RFC 9112 allows)."""
    lines: list[bytes] = []
    size = 0
    while True:
        line = await reader.readline()
        if not line:
            raise asyncio.IncompleteReadError(b"\n".join(lines), None)
        size += len(line)
        if size > MAX_HEAD_BYTES:
            raise ValueError("response head too long")
        line = line.rstrip(b"\r\n")
        if line:
            lines.append(line)
        elif lines:
            return lines


async def _read_body(
    reader: asyncio.StreamReader,
    request: httpx2.Request,
    status: int,
    version: bytes,
    headers: list[tuple[bytes, bytes]],
    timeouts: dict[str, float | None],
) -> tuple[bytes, bool]:
    """The body, and whether the connection can carry another request after it."""
    read = timeouts.get("read")
    reusable = version == b"HTTP/1.1" and not _wants_close(_header(headers, b"connection"))
    if status < 200:  # 101 Switching Protocols: the connection is no longer HTTP
        return b"", False
    if request.method == "HEAD" or status in _NO_BODY_STATUS:
        return b"", reusable
    encoding = _header(headers, b"transfer-encoding")
    if encoding is not None and encoding.lower().endswith("chunked"):
        return await _read_chunked(reader, request, read), reusable
    length = _header(headers, b"content-length")
    if length is not None:
        if not length.strip().isdigit():
            raise httpx2.RemoteProtocolError(f"bad Content-Length {length!r}", request=request)
        content: bytes = await _within(reader.readexactly(int(length)), read, _READ, request)
        return content, reusable
    # Neither: the body runs until the server closes the connection.
    parts = []
    while chunk := await _within(reader.read(READ_CHUNK), read, _READ, request):
        parts.append(chunk)
    return b"".join(parts), False


async def _read_chunked(
    reader: asyncio.StreamReader, request: httpx2.Request, read: float | None
) -> bytes:
    parts: list[bytes] = []
    while True:
        line = await _read_line(reader, request, read)
        size_text = line.split(b";", 1)[0].strip()
        try:
            size = int(size_text, 16) if size_text.isalnum() else -1
        except ValueError:
            size = -1
        if size < 0:
            raise httpx2.RemoteProtocolError(f"bad chunk size {line[:40]!r}", request=request)
        if size == 0:
            # Trailers (ignored) up to the empty line that ends the body.
            while (await _read_line(reader, request, read)).strip():
                pass
            return b"".join(parts)
        chunk = await _within(reader.readexactly(size + 2), read, _READ, request)
        parts.append(chunk[:-2])


async def _read_line(
    reader: asyncio.StreamReader, request: httpx2.Request, read: float | None
) -> bytes:
    try:
        return await _within(reader.readline(), read, _READ, request)
    except ValueError as exc:  # longer than the stream's limit
        raise httpx2.RemoteProtocolError("a chunk line is too long", request=request) from exc


def _header(headers: list[tuple[bytes, bytes]], name: bytes) -> str | None:
    for key, value in headers:
        if key.lower() == name:
            return value.decode("latin-1")
    return None


def _wants_close(value: str | None) -> bool:
    return value is not None and "close" in value.lower()
