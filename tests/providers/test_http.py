"""The HTTP clients under the SDK clients rlm builds (rlm.providers.http): the SDKs'
aiohttp backend, one TLS context per process, proxies as httpx2 reads them, and
connection failures named by their cause."""

from __future__ import annotations

import asyncio
import gzip
import json
import shutil
import ssl
import subprocess
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path

import httpx2
import openai
import pytest

import rlm
from rlm.errors import ProviderUnavailableError
from rlm.providers import http
from rlm.providers.anthropic import AnthropicModel
from rlm.providers.openai import OpenAIModel
from rlm.providers.retry import RetryPolicy
from rlm.testing.server import FakeLLMServer, RawReply, Reply

PROXY_ENV = ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "NO_PROXY")
REQUEST = rlm.ModelRequest(messages=(rlm.Message("user", "hi"),))


@pytest.fixture(autouse=True)
def no_proxies(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in PROXY_ENV:
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.lower(), raising=False)


@pytest.fixture
def fresh_tls_context() -> Iterator[None]:
    http.ssl_context.cache_clear()
    yield
    http.ssl_context.cache_clear()


def model_for(provider: str, base_url: str, **options: object) -> OpenAIModel | AnthropicModel:
    cls = OpenAIModel if provider == "openai" else AnthropicModel
    return cls("m", base_url=base_url, retry=RetryPolicy.never(), **options)  # type: ignore[arg-type]


def url_for(provider: str, server: FakeLLMServer) -> str:
    return server.openai_base_url if provider == "openai" else server.anthropic_base_url


@asynccontextmanager
async def relay(
    target_port: int, *, tls: ssl.SSLContext | None = None
) -> AsyncIterator[tuple[int, list[str]]]:
    """A one-request-per-connection HTTP relay to 127.0.0.1:`target_port`: a forward
    proxy (absolute-form targets are accepted) or, with `tls`, a TLS front. Yields its
    port and the request lines it saw."""
    seen: list[str] = []

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        seen.append(lines[0])
        method, target, version = lines[0].split(" ", 2)
        if "://" in target:
            target = "/" + target.split("://", 1)[1].split("/", 1)[1]
        headers = [line for line in lines[1:] if line and not line.lower().startswith("connection")]
        length = next(
            (int(h.split(":", 1)[1]) for h in headers if h.lower().startswith("content-length")),
            0,
        )
        body = await reader.readexactly(length)
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", target_port)
        forwarded = "\r\n".join([f"{method} {target} {version}", *headers, "connection: close"])
        up_writer.write(forwarded.encode("latin-1") + b"\r\n\r\n" + body)
        writer.write(await up_reader.read())
        await writer.drain()
        up_writer.close()
        writer.close()

    listener = await asyncio.start_server(serve, "127.0.0.1", 0, ssl=tls)
    try:
        yield listener.sockets[0].getsockname()[1], seen
    finally:
        listener.close()


@pytest.mark.parametrize("provider", ["openai", "anthropic"])
async def test_a_refused_connection_is_reported_as_refused_not_as_a_timeout(
    provider: str,
) -> None:
    listener = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    port = listener.sockets[0].getsockname()[1]
    listener.close()
    await listener.wait_closed()
    model = model_for(provider, f"http://127.0.0.1:{port}/v1")

    with pytest.raises(ProviderUnavailableError) as raised:
        await model.complete(REQUEST)

    message = str(raised.value)
    assert "could not reach" in message and "timeout" not in message
    causes: list[BaseException] = []
    cause: BaseException | None = raised.value
    while cause is not None:
        causes.append(cause)
        cause = cause.__cause__
    # Kept for the retry policy, which treats a refusal on a local address as final.
    assert any(isinstance(c, ConnectionRefusedError) for c in causes)


@pytest.mark.parametrize("provider", ["openai", "anthropic"])
async def test_a_silent_server_is_still_a_timeout(provider: str, server: FakeLLMServer) -> None:
    server.push(Reply("late", delay_s=5))
    model = model_for(provider, url_for(provider, server), timeout=0.2)

    with pytest.raises(ProviderUnavailableError, match=r"did not answer within the timeout"):
        await model.complete(REQUEST)


@pytest.fixture
def trust_loads(monkeypatch: pytest.MonkeyPatch, fresh_tls_context: None) -> list[object]:
    """Every time the process-wide TLS context loads a trust store (CA file or dir)."""
    loads: list[object] = []
    context_type = type(http.ssl_context())
    http.ssl_context.cache_clear()
    for name in ("load_verify_locations", "load_default_certs"):
        original = getattr(context_type, name)

        def counting(self: ssl.SSLContext, *args: object, _original=original, **kw: object) -> None:
            loads.append(args)
            _original(self, *args, **kw)

        monkeypatch.setattr(context_type, name, counting)
    return loads


def test_plain_http_never_loads_a_trust_store(
    trust_loads: list[object], server: FakeLLMServer
) -> None:
    server.push("one", "two")
    models = [model_for(p, url_for(p, server)) for p in ("openai", "anthropic")]

    for model in models:
        assert asyncio.run(model.complete(REQUEST)).text

    assert trust_loads == []


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    openssl = shutil.which("openssl")
    assert openssl, "the TLS test needs the openssl command (Debian: apt install openssl)"
    folder = tmp_path_factory.mktemp("tls")
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(
        [
            *(openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1"),
            *("-keyout", str(key), "-out", str(cert), "-subj", "/CN=localhost"),
            *("-addext", "subjectAltName=DNS:localhost"),
        ],
        check=True,
        capture_output=True,
    )
    return cert, key


@pytest.mark.usefixtures("fresh_tls_context")
async def test_https_verifies_the_server_against_the_trust_store(
    certificate: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch, server: FakeLLMServer
) -> None:
    cert, key = certificate
    front = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    front.load_cert_chain(cert, key)
    server.push("secure")

    async with relay(server.port, tls=front) as (port, _):
        url = f"https://localhost:{port}/v1"
        with pytest.raises(ProviderUnavailableError, match="CERTIFICATE_VERIFY_FAILED"):
            await model_for("openai", url).complete(REQUEST)
        http.ssl_context.cache_clear()
        monkeypatch.setenv("SSL_CERT_FILE", str(cert))  # honoured, as httpx2 honours it
        reply = await model_for("openai", url).complete(REQUEST)

    assert reply.text == "secure"


def test_every_client_shares_one_trust_store_load(
    certificate: tuple[Path, Path],
    monkeypatch: pytest.MonkeyPatch,
    server: FakeLLMServer,
    trust_loads: list[object],
) -> None:
    cert, key = certificate
    front = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    front.load_cert_chain(cert, key)
    monkeypatch.setenv("SSL_CERT_FILE", str(cert))
    server.push("one", "two", "three", "four")

    async def two_models(port: int) -> list[str]:
        url = f"https://localhost:{port}/v1"
        models = [model_for("openai", url), model_for("anthropic", url.removesuffix("/v1"))]
        return [(await m.complete(REQUEST)).text for m in models]

    async def main() -> list[str]:
        async with relay(server.port, tls=front) as (port, _):
            return await two_models(port)

    # Two runs (event loops), two providers: four clients, four TLS connections.
    texts = asyncio.run(main()) + asyncio.run(main())

    assert texts == ["one", "two", "three", "four"]
    assert len(trust_loads) == 1


@pytest.mark.parametrize("provider", ["openai", "anthropic"])
async def test_requests_go_through_the_configured_proxy(
    provider: str, server: FakeLLMServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    server.push("via the proxy")
    async with relay(server.port) as (port, seen):
        monkeypatch.setenv("HTTP_PROXY", f"http://127.0.0.1:{port}")
        model = model_for(provider, "http://llm.invalid/v1")
        reply = await model.complete(REQUEST)

    assert reply.text == "via the proxy"
    assert len(seen) == 1 and seen[0].split()[1].startswith("http://llm.invalid/v1/")


async def test_no_proxy_sends_directly(
    server: FakeLLMServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HTTP_PROXY", "http://127.0.0.1:9")  # nothing listens there
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    server.push("direct")

    reply = await model_for("openai", server.openai_base_url).complete(REQUEST)

    assert reply.text == "direct"


# -- requests built from a template ----------------------------------------------------


@pytest.mark.parametrize("provider", ["openai", "anthropic"])
async def test_requests_after_the_first_are_the_ones_the_sdk_would_build(
    provider: str, server: FakeLLMServer
) -> None:
    server.push("one", "two", "three")
    model = model_for(provider, url_for(provider, server), api_key="sk-test")
    replies = [
        (
            await model.complete(
                rlm.ModelRequest(messages=(rlm.Message("user", f"question {i} é"),))
            )
        ).text
        for i in range(3)
    ]

    assert replies == ["one", "two", "three"]
    first, *later = server.requests
    varying = {"content-length", "idempotency-key", "x-stainless-idempotency-key"}
    for i, sent in enumerate(server.requests):
        assert f"question {i} é" in json.dumps(sent.json, ensure_ascii=False)
        assert sent.json.keys() == first.json.keys()
        assert int(sent.headers["content-length"]) == len(sent.body)
    for sent in later:
        assert sent.path == first.path
        assert {k: v for k, v in sent.headers.items() if k not in varying} == {
            k: v for k, v in first.headers.items() if k not in varying
        }


async def test_a_request_with_its_own_options_is_built_by_the_sdk(server: FakeLLMServer) -> None:
    server.push("plain", "with a header", "plain again")
    model = model_for("openai", server.openai_base_url)
    body = model.request_body(REQUEST)
    client = await model._clients.get()

    await model.complete(REQUEST)
    await client.post(
        "/chat/completions",
        body=body,
        cast_to=httpx2.Response,
        options={"headers": {"X-Extra": "yes"}, "params": {"trace": "1"}},
    )
    await model.complete(REQUEST)

    plain, extra, again = server.requests
    assert extra.headers.get("x-extra") == "yes"
    assert "x-extra" not in again.headers and "x-extra" not in plain.headers
    assert again.headers.get("authorization") == plain.headers.get("authorization")


@pytest.mark.parametrize("provider", ["openai", "anthropic"])
async def test_a_reply_cut_off_mid_body_is_a_broken_connection(provider: str) -> None:
    # A small JSON body of known length is read in the transport, before the SDK sees
    # the response: a short one is still a failed connection (retried as one), neither
    # a malformed reply nor a timeout.
    async def half_a_reply(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(
            b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 400\r\n\r\n"
            b'{"id": "cut'
        )
        await writer.drain()
        writer.close()

    listener = await asyncio.start_server(half_a_reply, "127.0.0.1", 0)
    port = listener.sockets[0].getsockname()[1]
    try:
        model = model_for(provider, f"http://127.0.0.1:{port}/v1", timeout=5)
        with pytest.raises(ProviderUnavailableError) as raised:
            await model.complete(REQUEST)
    finally:
        listener.close()

    message = str(raised.value)
    assert "could not reach" in message and "timeout" not in message


@pytest.mark.parametrize(
    ("provider", "sdk_client"), [("openai", "AsyncOpenAI"), ("anthropic", "AsyncAnthropic")]
)
async def test_requests_name_the_sdk_client_as_its_own_client_does(
    provider: str, sdk_client: str, server: FakeLLMServer
) -> None:
    server.push("one", "two")
    model = model_for(provider, url_for(provider, server), api_key="sk-test")

    await model.complete(REQUEST)
    await model.complete(REQUEST)

    agents = {sent.headers["user-agent"] for sent in server.requests}
    assert len(agents) == 1 and agents.pop().startswith(f"{sdk_client}/Python ")


async def test_a_compressed_reply_is_decompressed(server: FakeLLMServer) -> None:
    completion = {
        "id": "c1",
        "model": "m",
        "choices": [{"message": {"role": "assistant", "content": "unzipped"}}],
    }
    server.push(
        RawReply(
            body=gzip.compress(json.dumps(completion).encode()),
            headers={"content-encoding": "gzip"},
        )
    )

    reply = await model_for("openai", server.openai_base_url).complete(REQUEST)

    assert reply.text == "unzipped"


async def test_requests_are_the_ones_the_sdks_own_client_sends(server: FakeLLMServer) -> None:
    # rlm's client builds requests from a template and skips AsyncOpenAI's per-request
    # hooks for credentials it does not use: what goes on the wire must not change.
    server.push("sdk", "rlm one", "rlm two")
    model = model_for("openai", server.openai_base_url, api_key="sk-test")
    body = model.request_body(REQUEST)
    plain = openai.AsyncOpenAI(
        api_key="sk-test",
        base_url=server.openai_base_url,
        timeout=model.client.timeout,
        max_retries=0,
        http_client=openai.DefaultAioHttpClient(),
    )
    async with plain:
        await plain.post("/chat/completions", body=body, cast_to=httpx2.Response)
    await model.complete(REQUEST)
    await model.complete(REQUEST)

    sdk, *ours = server.requests
    for sent in ours:
        assert (sent.method, sent.path, sent.json) == (sdk.method, sdk.path, sdk.json)
        assert sent.headers == sdk.headers
