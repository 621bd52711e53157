"""The HTTP clients under the SDK clients rlm builds: the SDKs' own aiohttp backend.

Each SDK ships an httpx2 client on aiohttp (`openai.DefaultAioHttpClient`,
`anthropic.DefaultAioHttpClient`, the `aiohttp` extra); it costs less CPU per request
than httpx2's default pool once many connections are open, which is what a fan-out of
sub-calls does. rlm builds one per event loop (`_common.PerLoop`) with three changes:

- **One TLS context per process.** Each client would otherwise load the CA bundle
  again (about 50 ms); `ssl_context()` is built once, verifying as httpx2's default
  does (system trust store, `SSL_CERT_FILE` and `SSL_CERT_DIR` honoured), and loads
  the trust store only when a TLS connection first needs it.
- **Idle connections kept 4 s**, under the 5 s after which uvicorn (vLLM, many
  OpenAI-compatible servers) closes them, so a request is rarely sent on a socket the
  server is closing.
- **Connection failures named by their cause.** The openai SDK's vendored adapter
  maps every aiohttp connection error to a connect *timeout*, so a refused connection
  would read "did not answer within the timeout" after a millisecond. A timeout whose
  cause chain holds no `TimeoutError` is raised as `httpx2.ConnectError` (could not
  connect) or `httpx2.ReadError` (the connection broke), with the aiohttp error, and
  the OS error under it, kept as its cause.

An SDK client builds each request's options anew: header dictionaries merged twice, the
URL parsed three times, pydantic copies of the defaults. That is about half of a small
call's CPU, the same for every call of a model. `PreparedRequests`, mixed into the SDK
client classes rlm builds, lets the SDK build the first POST to an endpoint and reuses
its method, URL, headers and timeout for the next ones, serialising only the body.

Proxies are the libraries' business: httpx2 reads `HTTP(S)_PROXY`, `ALL_PROXY` and
`NO_PROXY` and the adapter sends through the proxy it is given. A client you pass to a
model yourself is never changed.
"""

from __future__ import annotations

import datetime
import functools
import json
import os
import ssl
import sys
import threading
import time
from collections.abc import AsyncIterator, Hashable, Mapping
from dataclasses import dataclass
from typing import Any

# Both are imported by the SDKs' aiohttp transport when a client is first built
# (httpcore2 by httpx2.create_ssl_context); importing them with this module keeps that
# out of building a model.
import aiohttp
import httpcore2  # noqa: F401
import httpx2

#: Seconds an idle connection is kept (see the module docstring).
IDLE_EXPIRY_S = 4.0
#: The SDKs' own connection limits, with the shorter idle expiry.
LIMITS = httpx2.Limits(
    max_connections=1000, max_keepalive_connections=100, keepalive_expiry=IDLE_EXPIRY_S
)


_SDKS = ("openai", "anthropic")

#: Bodies up to this size (with a `Content-Length`, not an event stream) are read in
#: the transport: see `_CauseTransport`.
EAGER_READ_BYTES = 1 << 20


@functools.cache
def ssl_context() -> ssl.SSLContext:
    """The verified TLS context shared by every client rlm builds in this process.

    On Linux its trust store is loaded at its first TLS handshake, so a process that
    only talks to plain-HTTP servers (a local model) never pays for it. Elsewhere
    httpx2 builds it (its trust store comes from the OS there).
    """
    if sys.platform in ("win32", "darwin"):
        return httpx2.create_ssl_context()
    return _LazyTrust(ssl.PROTOCOL_TLS_CLIENT)


class _LazyTrust(ssl.SSLContext):
    """A verifying client context (hostname checked, certificate required) that loads
    the trust store as httpx2 does on Linux (`SSL_CERT_FILE`, `SSL_CERT_DIR`, else
    OpenSSL's default locations) when it first wraps a connection."""

    _lock = threading.Lock()
    _loaded = False

    def _load(self) -> None:
        with self._lock:
            if self._loaded:
                return
            cafile, capath = os.environ.get("SSL_CERT_FILE"), os.environ.get("SSL_CERT_DIR")
            if cafile:
                self.load_verify_locations(cafile=cafile)
            elif capath:
                self.load_verify_locations(capath=capath)
            else:
                self.load_default_certs(ssl.Purpose.SERVER_AUTH)
            self._loaded = True

    def wrap_bio(self, *args: Any, **kwargs: Any) -> ssl.SSLObject:
        if not self._loaded:
            self._load()
        return super().wrap_bio(*args, **kwargs)

    def wrap_socket(self, *args: Any, **kwargs: Any) -> ssl.SSLSocket:
        if not self._loaded:
            self._load()
        return super().wrap_socket(*args, **kwargs)


def http_client(sdk_client: type[httpx2.AsyncClient], timeout: float) -> httpx2.AsyncClient:
    """An `sdk_client` (an SDK's `DefaultAioHttpClient`) with rlm's settings."""
    return _classified(sdk_client)(
        timeout=timeout, limits=LIMITS, verify=ssl_context(), follow_redirects=True
    )


_CLASSES: dict[type[httpx2.AsyncClient], type[httpx2.AsyncClient]] = {}


def _classified(sdk_client: type[httpx2.AsyncClient]) -> type[httpx2.AsyncClient]:
    """`sdk_client` with every transport it builds (direct and per proxy) wrapped."""
    made = _CLASSES.get(sdk_client)
    if made is not None:
        return made

    # The two hooks httpx2 builds transports through, which the SDKs' own aiohttp
    # clients override in the same way.
    class Client(sdk_client):  # type: ignore[valid-type,misc]
        def _init_transport(self, *args: Any, **kwargs: Any) -> httpx2.AsyncBaseTransport:
            return _CauseTransport(super()._init_transport(*args, **kwargs))

        def _init_proxy_transport(self, *args: Any, **kwargs: Any) -> httpx2.AsyncBaseTransport:
            return _CauseTransport(super()._init_proxy_transport(*args, **kwargs))

    Client.__name__ = Client.__qualname__ = f"Rlm{sdk_client.__name__.lstrip('_')}"
    _CLASSES[sdk_client] = Client
    return Client


class _CauseTransport(httpx2.AsyncBaseTransport):
    """Passes requests to the SDK's aiohttp transport; renames false timeouts."""

    def __init__(self, inner: httpx2.AsyncBaseTransport) -> None:
        self._inner = inner

    async def handle_async_request(self, request: httpx2.Request) -> httpx2.Response:
        started = time.perf_counter()
        try:
            response = await self._inner.handle_async_request(request)
            if _read_here(response):
                await _read(response, started)
                return response
        except httpx2.TimeoutException as exc:
            if timed_out(exc):
                raise
            raise _connection_error(exc, request) from exc.__cause__
        response.stream = _CauseStream(response.stream, request)
        return response

    async def aclose(self) -> None:
        await self._inner.aclose()


def _read_here(response: httpx2.Response) -> bool:
    """Whether the body is small, of known length and not an event stream: then it is
    read before the response is returned, as the SDK would read it at once."""
    length = b""
    for name, value in response.headers.raw:  # one pass, not one per header looked up
        name = name.lower()
        if name == b"content-length":
            length = value
        elif name == b"content-type" and b"event-stream" in value:
            return False
    return length.isdigit() and int(length) <= EAGER_READ_BYTES


async def _read(response: httpx2.Response, started: float) -> None:
    """Read the body through the transport's stream into `response`: the response is
    then read and closed (its connection released) when httpx2 gets it."""
    stream = response.stream
    assert isinstance(stream, httpx2.AsyncByteStream)
    try:
        body = b"".join([chunk async for chunk in stream])
    finally:
        await stream.aclose()
    response.stream = httpx2.ByteStream(body)
    response.read()  # decodes a Content-Encoding as reading the stream would
    response.elapsed = datetime.timedelta(seconds=time.perf_counter() - started)


class _CauseStream(httpx2.AsyncByteStream):
    def __init__(self, inner: Any, request: httpx2.Request) -> None:
        self._inner = inner
        self._request = request

    async def __aiter__(self) -> AsyncIterator[bytes]:
        try:
            async for chunk in self._inner:
                yield chunk
        except httpx2.TimeoutException as exc:
            if timed_out(exc):
                raise
            raise _connection_error(exc, self._request) from exc.__cause__

    async def aclose(self) -> None:
        await self._inner.aclose()


def timed_out(exc: BaseException) -> bool:
    """Whether a timeout exception really is one: something in its cause chain is a
    `TimeoutError` (asyncio's, aiohttp's and the kernel's all are), or it has no cause."""
    seen: set[int] = set()
    cause = exc.__cause__
    if cause is None:
        return True
    while cause is not None and id(cause) not in seen:
        if isinstance(cause, TimeoutError):
            return True
        seen.add(id(cause))
        cause = cause.__cause__ or cause.__context__
    return False


def _connection_error(
    exc: httpx2.TimeoutException, request: httpx2.Request
) -> httpx2.TransportError:
    if isinstance(exc.__cause__, aiohttp.ClientConnectorError):
        return httpx2.ConnectError(str(exc), request=request)
    return httpx2.ReadError(str(exc), request=request)


class PreparedRequests:
    """A mixin for an SDK client class (`openai.AsyncOpenAI`, `anthropic.AsyncAnthropic`:
    both share the Stainless base client and its `_build_request` hook, which the SDKs'
    own Azure and Bedrock clients override too).

    A POST whose options hold only a JSON body is built from a template: the request the
    SDK built for the first such call to the same endpoint (same URL, timeout, retry
    count and security), without its `Content-Length` and idempotency key. Anything else
    (query parameters, extra headers, files, raw content) goes the SDK's way. Only for
    clients whose headers do not change between requests: rlm uses it for the clients it
    builds with a fixed key.
    """

    _idempotency_header: str | None
    _version: str

    @property
    def user_agent(self) -> str:
        # The SDKs name the client's class here: say "AsyncOpenAI/Python 3.x" as their
        # own client does, not the name of rlm's subclass.
        sdk = next(c for c in type(self).__mro__ if c.__module__.split(".")[0] in _SDKS)
        return f"{sdk.__name__}/Python {self._version}"

    def _idempotency_key(self) -> str:
        # The SDK makes a key (a uuid4) for every POST but sends it only under an
        # idempotency header, which neither SDK's client has.
        if self._idempotency_header:
            key: str = super()._idempotency_key()  # type: ignore[misc]
            return key
        return ""

    def _build_request(self, options: Any, *, retries_taken: int = 0) -> httpx2.Request:
        key = _template_key(options, retries_taken)
        build = super()._build_request  # type: ignore[misc]
        if key is None:
            request: httpx2.Request = build(options, retries_taken=retries_taken)
            return request
        templates: dict[Hashable, _Template] = self.__dict__.setdefault("_rlm_templates", {})
        template = templates.get(key)
        if template is None:
            request = build(options, retries_taken=retries_taken)
            headers = request.headers.copy()
            headers.pop("content-length", None)
            if self._idempotency_header:
                headers.pop(self._idempotency_header, None)
            templates[key] = _Template(
                request.method, request.url, headers, headers.encoding, request.extensions
            )
            return request
        try:
            body = _dumps(options.json_data)
        except (TypeError, ValueError):  # not plain JSON: the SDK knows more types
            request = build(options, retries_taken=retries_taken)
            return request
        # Built as httpx2 copies a request (`stream=`), with the headers `content=` would
        # have added: what `content=` adds besides (parsing the content type, merging
        # default headers, rebuilding the header list) cost more than the rest of this.
        request = httpx2.Request(
            template.method,
            template.url,
            headers=template.headers,  # copied by the request
            stream=httpx2.ByteStream(body),
            extensions=dict(template.extensions),
        )
        request.headers.encoding = template.encoding
        request.headers["Content-Length"] = str(len(body))
        request.read()
        if self._idempotency_header and options.idempotency_key:
            request.headers[self._idempotency_header] = options.idempotency_key
        return request


@dataclass(frozen=True, slots=True)
class _Template:
    method: str
    url: httpx2.URL
    headers: httpx2.Headers
    encoding: str  # worked out once: a copy made without it decodes every header again
    extensions: Mapping[str, Any]


def _template_key(options: Any, retries_taken: int) -> Hashable | None:
    """What a request built from `options` depends on, or None if it is not a plain
    JSON POST (then the SDK builds it)."""
    if (
        getattr(options, "method", "").lower() != "post"
        or not isinstance(getattr(options, "json_data", None), dict)
        or getattr(options, "params", None)
        or getattr(options, "files", None) is not None
        or getattr(options, "content", None) is not None
        or getattr(options, "extra_json", None) is not None
        or getattr(options, "follow_redirects", None) is not None
        or _nonempty_mapping(getattr(options, "headers", None))
    ):
        return None
    return (
        options.url,
        retries_taken,
        repr(getattr(options, "timeout", None)),
        repr(getattr(options, "security", None)),
    )


def _nonempty_mapping(value: object) -> bool:
    return isinstance(value, Mapping) and bool(value)  # NotGiven is neither


# As the SDKs serialise JSON bodies (and httpx2 does); one encoder, not one per request.
_ENCODER = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), allow_nan=False)


def _dumps(body: object) -> bytes:
    return _ENCODER.encode(body).encode()
