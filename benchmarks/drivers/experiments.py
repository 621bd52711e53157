"""Measure suggested changes to rlm without editing it: monkeypatches for the rlm driver.

    RLM_BENCH_EXPERIMENTS=tls,post,transport uv run python benchmarks/run.py \\
        --only salary iterations fanout --frameworks rlm

- `tls`: one TLS context per process instead of one per SDK client (rlm builds an SDK
  client for every event loop, so today every `RLM.run()` loads the CA bundle again).
- `post`: send the chat-completions request with the SDK's raw `client.post()`, skipping
  the SDK's per-message argument transform (rlm's request is plain JSON already).
- `transport`: a minimal HTTP/1.1 keep-alive transport over asyncio streams in place of
  httpx2's default (httpcore2 + anyio + h11). Plain `http://` only: a prototype to size
  the gain, not production code (no TLS, proxies, chunked bodies or timeouts).

Results measured with experiments on are not rlm's numbers: the runner marks them.
These patches reach into rlm's internals (`OpenAIModel._clients`) and may need updating
when those change.
"""

from __future__ import annotations

import asyncio
import os
import ssl
from typing import Any

ACTIVE = frozenset(filter(None, os.environ.get("RLM_BENCH_EXPERIMENTS", "").split(",")))
KNOWN = frozenset({"tls", "post", "transport"})


def apply() -> None:
    unknown = ACTIVE - KNOWN
    if unknown:
        raise SystemExit(f"unknown RLM_BENCH_EXPERIMENTS {sorted(unknown)}; known: {sorted(KNOWN)}")
    if "tls" in ACTIVE:
        _cache_tls_context()
    if "post" in ACTIVE:
        _raw_post()
    if "transport" in ACTIVE:
        _lean_transport()


def _cache_tls_context() -> None:
    original = ssl.create_default_context
    cache: dict[Any, ssl.SSLContext] = {}

    def cached(
        purpose: ssl.Purpose = ssl.Purpose.SERVER_AUTH,
        *,
        cafile: Any = None,
        capath: Any = None,
        cadata: Any = None,
    ) -> ssl.SSLContext:
        key = (purpose, cafile, capath, cadata)
        if key not in cache:
            cache[key] = original(purpose, cafile=cafile, capath=capath, cadata=cadata)
        return cache[key]

    ssl.create_default_context = cached  # type: ignore[assignment]


def _raw_post() -> None:
    from openai.types.chat import ChatCompletion

    from rlm.providers import openai as adapter

    def complete(self: Any, request: Any) -> Any:
        params = self.request_params(request)
        extra = params.pop("extra_body", None) or {}

        async def attempt() -> Any:
            client = await self._clients.get()
            raw = await client.post(
                "/chat/completions", body={**params, **extra}, cast_to=ChatCompletion
            )
            return self.parse_response(raw)

        return adapter.call_with_retries(attempt, spec=self._spec, policy=self.retry)

    adapter.OpenAIModel.complete = complete  # type: ignore[method-assign]


def _lean_transport() -> None:
    import httpx2
    import openai

    class LeanTransport(httpx2.AsyncBaseTransport):
        """HTTP/1.1 with a keep-alive pool per event loop and host; plain HTTP only."""

        def __init__(self) -> None:
            self._idle: dict[Any, list[Any]] = {}

        async def handle_async_request(self, request: httpx2.Request) -> httpx2.Response:
            url = request.url
            if url.scheme != "http":
                raise RuntimeError("the experimental transport speaks plain http only")
            key = (asyncio.get_running_loop(), url.host, url.port or 80)
            idle = self._idle.setdefault(key, [])
            if idle:
                reader, writer = idle.pop()
            else:
                reader, writer = await asyncio.open_connection(key[1], key[2], limit=1 << 24)
            body = await request.aread()
            head = [f"{request.method} {url.raw_path.decode('ascii')} HTTP/1.1"]
            head += [
                f"{k.decode('latin-1')}: {v.decode('latin-1')}" for k, v in request.headers.raw
            ]
            writer.write(("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + body)
            raw_head = await reader.readuntil(b"\r\n\r\n")
            status_line, *lines = raw_head[:-4].decode("latin-1").split("\r\n")
            headers = [tuple(x.strip() for x in line.split(":", 1)) for line in lines]
            length = next((int(v) for k, v in headers if k.lower() == "content-length"), 0)
            content = await reader.readexactly(length)
            idle.append((reader, writer))
            return httpx2.Response(
                int(status_line.split(" ", 2)[1]), headers=headers, content=content, request=request
            )

        async def aclose(self) -> None:
            loop = asyncio.get_running_loop()
            for key in [k for k in self._idle if k[0] is loop]:
                for _, writer in self._idle.pop(key):
                    writer.close()

    original = openai.AsyncOpenAI.__init__

    def init(self: Any, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("http_client", httpx2.AsyncClient(transport=LeanTransport()))
        original(self, *args, **kwargs)

    openai.AsyncOpenAI.__init__ = init  # type: ignore[method-assign]
