"""The HTTP clients under the SDK clients rlm builds: the SDKs' own aiohttp backend.

Each SDK ships an httpx2 client on aiohttp (`openai.DefaultAioHttpClient`,
`anthropic.DefaultAioHttpClient`, the `aiohttp` extra); it costs less CPU per request
than httpx2's default pool once many connections are open, which is what a fan-out of
sub-calls does. rlm builds one per event loop (`_common.PerLoop`) with three changes:

- **One TLS context per process.** Each client would otherwise load the CA bundle
  again (about 50 ms); `ssl_context()` is built once, as httpx2 builds its default
  (system trust store, `SSL_CERT_FILE` and `SSL_CERT_DIR` honoured).
- **Idle connections kept 4 s**, under the 5 s after which uvicorn (vLLM, many
  OpenAI-compatible servers) closes them, so a request is rarely sent on a socket the
  server is closing.
- **Connection failures named by their cause.** The openai SDK's vendored adapter
  maps every aiohttp connection error to a connect *timeout*, so a refused connection
  would read "did not answer within the timeout" after a millisecond. A timeout whose
  cause chain holds no `TimeoutError` is raised as `httpx2.ConnectError` (could not
  connect) or `httpx2.ReadError` (the connection broke), with the aiohttp error, and
  the OS error under it, kept as its cause.

Proxies are the libraries' business: httpx2 reads `HTTP(S)_PROXY`, `ALL_PROXY` and
`NO_PROXY` and the adapter sends through the proxy it is given. A client you pass to a
model yourself is never changed.
"""

from __future__ import annotations

import functools
import ssl
from collections.abc import AsyncIterator
from typing import Any

import httpx2

#: Seconds an idle connection is kept (see the module docstring).
IDLE_EXPIRY_S = 4.0
#: The SDKs' own connection limits, with the shorter idle expiry.
LIMITS = httpx2.Limits(
    max_connections=1000, max_keepalive_connections=100, keepalive_expiry=IDLE_EXPIRY_S
)


@functools.cache
def ssl_context() -> ssl.SSLContext:
    """The verified TLS context shared by every client rlm builds in this process."""
    return httpx2.create_ssl_context()


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
        try:
            response = await self._inner.handle_async_request(request)
        except httpx2.TimeoutException as exc:
            if timed_out(exc):
                raise
            raise _connection_error(exc, request) from exc.__cause__
        response.stream = _CauseStream(response.stream, request)
        return response

    async def aclose(self) -> None:
        await self._inner.aclose()


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
    import aiohttp  # loaded already: the SDK's transport imports it

    if isinstance(exc.__cause__, aiohttp.ClientConnectorError):
        return httpx2.ConnectError(str(exc), request=request)
    return httpx2.ReadError(str(exc), request=request)
