"""`KeepAliveTransport` on the wire: framing, keep-alive, failures, TLS, and the switch.

Wire-level tests talk to a tiny asyncio server that answers each request with scripted
raw bytes, so every framing the transport must read is exercised byte for byte.
"""

from __future__ import annotations

import asyncio
import gzip
import json
import shutil
import ssl
import subprocess
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import httpx2
import pytest

from rlm.errors import ConfigurationError, ProviderUnavailableError
from rlm.providers import transport
from rlm.providers.openai import OpenAIModel
from rlm.providers.retry import RetryPolicy
from rlm.providers.transport import KeepAliveTransport, http_client
from rlm.testing.server import FakeLLMServer

PROXY_ENV = ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "NO_PROXY", "RLM_HTTP_TRANSPORT")


@pytest.fixture(autouse=True)
def no_proxy_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    """The transport steps aside for proxies: none of the caller's may leak in."""
    for name in PROXY_ENV:
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.lower(), raising=False)


Responder = Callable[[bytes], bytes | None]  # request head+body -> raw reply (None: hang up)


class RawServer:
    """Answers each request with `respond(request)`; counts connections and requests."""

    def __init__(self, respond: Responder) -> None:
        self.respond = respond
        self.connections = 0
        self.requests: list[bytes] = []
        self.writers: list[asyncio.StreamWriter] = []

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self.writers.append(writer)
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n"):
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":", 1)[1])
                request = head + await reader.readexactly(length)
                self.requests.append(request)
                reply = self.respond(request)
                if reply is None:
                    break
                writer.write(reply)
                await writer.drain()
                if b"\r\nconnection: close\r\n" in reply.split(b"\r\n\r\n", 1)[0] + b"\r\n":
                    break
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()


@asynccontextmanager
async def raw_server(
    respond: Responder, tls: ssl.SSLContext | None = None
) -> AsyncIterator[tuple[RawServer, str]]:
    server = RawServer(respond)
    listener = await asyncio.start_server(server.handle, "127.0.0.1", 0, ssl=tls)
    port = listener.sockets[0].getsockname()[1]
    scheme = "https" if tls else "http"
    try:
        yield server, f"{scheme}://{'localhost' if tls else '127.0.0.1'}:{port}"
    finally:
        listener.close()
        for writer in server.writers:
            writer.close()


def reply(body: bytes = b"{}", *, status: str = "200 OK", headers: str = "") -> bytes:
    head = f"HTTP/1.1 {status}\r\ncontent-length: {len(body)}\r\n{headers}\r\n"
    return head.encode() + body


def client() -> httpx2.AsyncClient:
    return httpx2.AsyncClient(transport=KeepAliveTransport(), timeout=5)


# -- framing -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (reply(b'{"a": 1}'), b'{"a": 1}'),
        (
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n"
            b'4;ext=1\r\n{"a"\r\n5\r\n: 1}\n\r\n0\r\nx-trailer: t\r\n\r\n',
            b'{"a": 1}\n',
        ),
        (
            b"HTTP/1.1 100 Continue\r\n\r\n" + reply(b"after continue"),
            b"after continue",
        ),
        (reply(gzip.compress(b"squeezed"), headers="content-encoding: gzip\r\n"), b"squeezed"),
        (reply(b"", status="204 No Content"), b""),
    ],
    ids=["content-length", "chunked with extension and trailer", "100 continue", "gzip", "204"],
)
async def test_response_bodies_are_read_in_every_framing(raw: bytes, expected: bytes) -> None:
    async with raw_server(lambda request: raw) as (server, url), client() as http:
        first = await http.post(url + "/v1/x", content=b"hello")
        second = await http.post(url + "/v1/x", content=b"again")

    assert first.content == second.content == expected
    assert server.connections == 1  # both framings leave the connection reusable
    assert server.requests[0].startswith(b"POST /v1/x HTTP/1.1\r\n")
    assert b"\r\nhost: 127.0.0.1:" in server.requests[0].lower()
    assert server.requests[0].endswith(b"\r\n\r\nhello")


async def test_a_body_read_to_close_is_whole_and_the_next_request_reconnects() -> None:
    raw = b"HTTP/1.1 200 OK\r\nconnection: close\r\n\r\nuntil the end"

    def respond(request: bytes) -> bytes | None:
        return raw

    async with raw_server(respond) as (server, url), client() as http:
        server_side_close = await http.get(url + "/a")
        again = await http.get(url + "/b")

    assert server_side_close.text == again.text == "until the end"
    assert server.connections == 2


async def test_headers_and_status_reach_the_caller() -> None:
    raw = reply(
        b'{"error": "slow down"}',
        status="429 Too Many Requests",
        headers="retry-after: 3\r\nx-multi: a\r\nx-multi: b\r\n",
    )
    async with raw_server(lambda request: raw) as (_, url), client() as http:
        response = await http.get(url + "/")

    assert response.status_code == 429
    assert response.headers["retry-after"] == "3"
    assert response.headers.get_list("x-multi") == ["a", "b"]
    assert response.http_version == "HTTP/1.1"


async def test_a_large_request_body_arrives_whole() -> None:
    body = json.dumps({"text": "x" * 3_000_000}).encode()
    async with raw_server(lambda request: reply(b"ok")) as (server, url), client() as http:
        response = await http.post(url + "/", content=body)

    assert response.text == "ok"
    assert server.requests[0].endswith(body)


@pytest.mark.parametrize(
    "raw",
    [
        b"SSH-2.0-OpenSSH\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nno colon here\r\n\r\n",
        b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n-5\r\nhello\r\n0\r\n\r\n",
    ],
    ids=["not http", "bad header", "negative chunk size"],
)
async def test_garbage_replies_are_protocol_errors(raw: bytes) -> None:
    async with raw_server(lambda request: raw) as (_, url), client() as http:
        with pytest.raises(httpx2.RemoteProtocolError):
            await http.get(url + "/")


# -- keep-alive and failures -----------------------------------------------------------


async def test_concurrent_requests_open_connections_that_are_then_reused() -> None:
    async with raw_server(lambda request: reply(b"ok")) as (server, url), client() as http:
        await asyncio.gather(*(http.get(url + "/") for _ in range(8)))
        opened = server.connections
        await asyncio.gather(*(http.get(url + "/") for _ in range(8)))

    assert 1 <= opened <= 8
    assert server.connections == opened  # the second round reused them all


async def test_a_connection_the_server_dropped_while_idle_is_replaced_silently() -> None:
    answered = 0

    def respond(request: bytes) -> bytes | None:
        nonlocal answered
        answered += 1
        # Every second request finds the server hanging up without an answer, as a
        # server does when it times out an idle keep-alive connection.
        return reply(b"ok") if answered % 2 else None

    async with raw_server(respond) as (server, url), client() as http:
        first = await http.get(url + "/")
        second = await http.get(url + "/")

    assert first.text == second.text == "ok"
    assert server.connections == 2


async def test_a_request_the_server_drops_is_sent_again_at_most_once() -> None:
    # Twenty idle connections, then a request the server takes and drops every time:
    # it must not be replayed round the pool (each copy may be a billed generation).
    drop = False

    def respond(request: bytes) -> bytes | None:
        return None if drop else reply(b"ok")

    async with raw_server(respond) as (server, url), client() as http:
        await asyncio.gather(*(http.get(url + "/") for _ in range(20)))
        before = len(server.requests)
        drop = True
        with pytest.raises(httpx2.ReadError):
            await http.post(url + "/v1/chat/completions", content=b"{}")

    assert len(server.requests) - before == 2  # the reused connection, then one new one


async def test_bytes_left_on_an_idle_connection_are_not_read_as_the_next_reply() -> None:
    answered = 0

    def respond(request: bytes) -> bytes | None:
        nonlocal answered
        answered += 1
        if answered == 1:
            # The reply, then (as a server timing out an idle connection does) a 408.
            return reply(b"first") + reply(b"", status="408 Request Timeout")
        return reply(b"second")

    async with raw_server(respond) as (server, url), client() as http:
        first = await http.get(url + "/")
        await asyncio.sleep(0.05)  # the 408 arrives while the connection is idle
        second = await http.get(url + "/")

    assert (first.status_code, first.text) == (200, "first")
    assert (second.status_code, second.text) == (200, "second")
    assert server.connections == 2


async def test_bare_lf_heads_and_blank_lines_before_the_status_line_are_read() -> None:
    raw = b"\r\nHTTP/1.1 200 OK\ncontent-length: 2\nx-a: b\n\nok"
    async with raw_server(lambda request: raw) as (_, url), client() as http:
        response = await http.get(url + "/")

    assert (response.status_code, response.text, response.headers["x-a"]) == (200, "ok", "b")


async def test_a_streamed_request_body_goes_out_framed_by_its_length() -> None:
    async def parts() -> AsyncIterator[bytes]:
        yield b"hello "
        yield b"world"

    async with raw_server(lambda request: reply(b"ok")) as (server, url), client() as http:
        await http.post(url + "/", content=parts())

    head, _, body = server.requests[0].partition(b"\r\n\r\n")
    assert body == b"hello world"
    assert b"content-length: 11" in head.lower()
    assert b"transfer-encoding" not in head.lower()


async def test_connections_use_tcp_keep_alive() -> None:
    import socket

    seen: list[int] = []
    original = transport._keep_alive

    def recording(sock: socket.socket | None) -> None:
        original(sock)
        assert sock is not None
        seen.append(sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE))

    async with raw_server(lambda request: reply(b"ok")) as (_, url), client() as http:
        transport._keep_alive = recording
        try:
            await http.get(url + "/")
        finally:
            transport._keep_alive = original

    assert seen == [1]


async def test_a_fresh_connection_that_fails_is_an_error_not_a_loop() -> None:
    async with raw_server(lambda request: None) as (server, url), client() as http:
        with pytest.raises(httpx2.ReadError):
            await http.get(url + "/")
    assert server.connections == 1


async def test_a_silent_server_times_out_as_a_read_timeout() -> None:
    impatient = httpx2.AsyncClient(transport=KeepAliveTransport(), timeout=0.2)
    async with raw_server(lambda request: b"") as (_, url), impatient as http:
        with pytest.raises(httpx2.ReadTimeout):
            await http.get(url + "/")


async def test_a_refused_connection_is_a_connect_error() -> None:
    listener = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    port = listener.sockets[0].getsockname()[1]
    listener.close()
    await listener.wait_closed()
    async with client() as http:
        with pytest.raises(httpx2.ConnectError):
            await http.get(f"http://127.0.0.1:{port}/")


async def test_a_cancelled_request_does_not_leave_its_connection_in_the_pool() -> None:
    gate = asyncio.Event()

    def respond(request: bytes) -> bytes | None:
        return reply(b"late") if gate.is_set() else b""  # first request: never answered

    async with raw_server(respond) as (server, url), client() as http:
        pending = asyncio.ensure_future(http.get(url + "/"))
        await asyncio.sleep(0.05)
        pending.cancel()
        with pytest.raises(asyncio.CancelledError):
            await pending
        gate.set()
        response = await http.get(url + "/")

    assert response.text == "late"
    assert server.connections == 2  # the half-used connection was not handed out again


# -- TLS ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    openssl = shutil.which("openssl")
    assert openssl, "the TLS tests need the openssl command (Debian: apt install openssl)"
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


@pytest.fixture
def fresh_tls_context() -> AsyncIterator[None]:
    transport.tls_context.cache_clear()
    yield
    transport.tls_context.cache_clear()


@pytest.mark.usefixtures("fresh_tls_context")
async def test_https_verifies_the_server_against_the_trust_store(
    certificate: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    cert, key = certificate
    server_tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_tls.load_cert_chain(cert, key)

    async with raw_server(lambda request: reply(b"secure"), tls=server_tls) as (_, url):
        async with client() as http:
            # Not trusted by the system store: the handshake is refused.
            with pytest.raises(httpx2.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
                await http.get(url + "/")
        transport.tls_context.cache_clear()
        monkeypatch.setenv("SSL_CERT_FILE", str(cert))  # honoured, as httpx2 does
        async with client() as http:
            first = await http.get(url + "/")
            second = await http.get(url + "/")

    assert first.text == second.text == "secure"
    assert transport.tls_context() is transport.tls_context()  # built once per process


# -- the switch, and the SDK on top -----------------------------------------------------


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({}, KeepAliveTransport),
        ({"RLM_HTTP_TRANSPORT": "httpx"}, None),
        ({"HTTPS_PROXY": "http://proxy.internal:3128"}, None),
        ({"all_proxy": "socks5://proxy.internal:1080"}, None),
        ({"NO_PROXY": "localhost"}, KeepAliveTransport),
    ],
)
def test_the_transport_steps_aside_for_proxies_and_when_switched_off(
    monkeypatch: pytest.MonkeyPatch, env: dict[str, str], expected: type | None
) -> None:
    for name, value in env.items():
        monkeypatch.setenv(name, value)

    built = http_client(30.0)

    if expected is None:
        assert built is None
    else:
        assert built is not None
        assert isinstance(built._transport, expected)


def test_an_unknown_transport_setting_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RLM_HTTP_TRANSPORT", "curl")
    with pytest.raises(ConfigurationError, match="RLM_HTTP_TRANSPORT must be 'rlm' or 'httpx'"):
        OpenAIModel("m", base_url="http://127.0.0.1:9/v1")


async def test_the_sdk_reuses_one_connection_across_calls(
    server: FakeLLMServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    import rlm

    opened: list[object] = []
    original = transport._connect

    async def counting(*args: object) -> object:
        connection = await original(*args)  # type: ignore[arg-type]
        opened.append(connection)
        return connection

    monkeypatch.setattr(transport, "_connect", counting)
    server.push("one", "two", "three")
    model = OpenAIModel("m", base_url=server.openai_base_url)
    request = rlm.ModelRequest(messages=(rlm.Message("user", "hi"),))

    replies = [(await model.complete(request)).text for _ in range(3)]

    assert replies == ["one", "two", "three"]
    assert len(opened) == 1


async def test_a_timeout_through_the_sdk_is_reported_as_such(server: FakeLLMServer) -> None:
    import rlm
    from rlm.testing.server import Reply

    server.push(Reply(text="late", delay_s=2.0))
    model = OpenAIModel(
        "m",
        base_url=server.openai_base_url,
        timeout=0.2,
        retry=RetryPolicy(max_attempts=1),
    )
    request = rlm.ModelRequest(messages=(rlm.Message("user", "hi"),))

    with pytest.raises(
        ProviderUnavailableError, match=r"did not answer within the timeout of 0\.2 s"
    ):
        await model.complete(request)
