"""Small pieces both SDK adapters use: keys and base URLs, tool-call arguments."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import threading
import weakref
from collections.abc import AsyncGenerator, Callable, Mapping
from typing import Any, Generic, TypeVar
from urllib.parse import urlparse

from rlm.errors import ConfigurationError, MissingAPIKeyError

C = TypeVar("C")

#: Sent as the key to servers that need none (the SDKs refuse to start without one).
PLACEHOLDER_KEY = "rlm-no-key"

#: Seconds per attempt for clients rlm builds (the SDKs' own default): a non-streaming
#: reply arrives only when generation ends, and reasoning models can think for minutes.
DEFAULT_TIMEOUT_S = 600.0


def env(name: str) -> str | None:
    """An environment variable, with an empty value read as unset."""
    value = os.environ.get(name, "").strip()
    return value or None


def is_official(url: str | None, domain: str) -> bool:
    """Whether `url` is the provider's own API (None means the SDK's default, which is)."""
    if url is None:
        return True
    host = (urlparse(url).hostname or "").lower()
    return host == domain or host.endswith("." + domain)


def resolve_key(
    *,
    label: str,
    model: str,
    api_key: str | None,
    base_url: str | None,
    key_env: str,
    base_url_env: str,
    domain: str,
    required: bool = True,
) -> str | None:
    """The key to use: given, from `key_env`, or a placeholder for a non-official server.

    Raises `MissingAPIKeyError` for the official API without a key when `required`;
    returns None in that case otherwise (the caller looks for other credentials).
    """
    key = api_key or env(key_env)
    if key:
        return key
    if not is_official(base_url, domain):
        return PLACEHOLDER_KEY
    if not required:
        return None
    raise missing_key_error(label, model, key_env, base_url_env)


def missing_key_error(
    label: str, model: str, key_env: str, base_url_env: str
) -> MissingAPIKeyError:
    return MissingAPIKeyError(
        f"{label} model {model!r} needs an API key: set the {key_env} environment variable "
        f"(export {key_env}=...) or pass api_key=.... For a local or self-hosted server "
        f"that needs no key, pass base_url=... (or set {base_url_env})."
    )


def parse_arguments(raw: str | Mapping[str, Any] | None) -> dict[str, Any]:
    """A tool call's arguments as a dict.

    Arguments that are not a JSON object are kept, unparsed, under "_invalid_json" so
    the call still reaches the parsing strategy (which can tell the model).
    """
    if raw is None or raw == "":
        return {}
    if isinstance(raw, Mapping):
        return dict(raw)
    try:
        value = json.loads(raw)
    except (TypeError, ValueError):
        return {"_invalid_json": raw}
    return dict(value) if isinstance(value, dict) else {"_invalid_json": raw}


def preview(value: object, limit: int = 200) -> str:
    """A short printable form of an unexpected reply, for error messages."""
    text = value if isinstance(value, str) else repr(value)
    text = text.strip()
    if not text:
        return "an empty body"
    return repr(text[:limit] + ("..." if len(text) > limit else ""))


class PerLoop(Generic[C]):
    """One SDK client per event loop, closed when its loop shuts down or the model goes.

    A connection pool belongs to the event loop that opened its connections, and each
    thread's blocking runs share a loop of their own (`rlm._sync`), so a model shared by
    threads, or used both blocking and from an application's loop, needs a client for
    each loop. The first loop gets `first`; later ones get `make()`.

    A client rlm built is closed on its own loop: when the loop shuts down (a suspended
    async generator holds it, and `asyncio.run`, like `rlm._sync`, closes those; the
    model then forgets the loop), or soon after the model is dropped (a finalizer
    schedules the close on the loop, which runs it at once if the loop is running, else
    when it next runs or closes). The finalizer holds the client until then: collected
    together with the model, aiohttp would report it unclosed.
    """

    def __init__(self, first: C, make: Callable[[], C], *, owned: bool = True) -> None:
        self._first: C | None = first
        self._make = make
        self._owned = owned
        self._lock = threading.Lock()
        # Per loop, its client and (for clients rlm built) the finalizer that closes it
        # there if the model goes first.
        self._clients: weakref.WeakKeyDictionary[
            asyncio.AbstractEventLoop, tuple[C, weakref.finalize[Any, Any] | None]
        ] = weakref.WeakKeyDictionary()

    async def get(self) -> C:
        """The client for the running event loop."""
        loop = asyncio.get_running_loop()
        with self._lock:
            entry = self._clients.get(loop)
            if entry is not None:
                return entry[0]
            if self._first is not None:
                client, self._first = self._first, None
            else:
                client = self._make()
            closer = None
            finalizer = None
            if self._owned:
                closer = _close_at_shutdown(client, weakref.ref(self), weakref.ref(loop))
                finalizer = weakref.finalize(self, _close_later, weakref.ref(loop), closer)
            self._clients[loop] = (client, finalizer)
        if closer is not None:
            await closer.asend(None)
        return client

    def _forget(self, loop: asyncio.AbstractEventLoop) -> None:
        """The loop has closed this model's client: let the loop go."""
        with self._lock:
            _, finalizer = self._clients.pop(loop, (None, None))
        if finalizer is not None:
            finalizer.detach()


async def _close_at_shutdown(
    client: Any,
    owner: weakref.ref[PerLoop[Any]],
    loop: weakref.ref[asyncio.AbstractEventLoop],
) -> AsyncGenerator[None, None]:
    try:
        yield
    finally:
        with contextlib.suppress(Exception):
            await client.close()
        # The client (and with it the loop) would otherwise stay with a living model.
        model_clients, closed_on = owner(), loop()
        if model_clients is not None and closed_on is not None:
            model_clients._forget(closed_on)


def _close_later(
    loop_ref: weakref.ref[asyncio.AbstractEventLoop], closer: AsyncGenerator[None, None]
) -> None:
    """The model is gone: close its client on the client's loop (from any thread)."""
    loop = loop_ref()
    if loop is None:
        return
    with contextlib.suppress(RuntimeError):  # the loop is closed: so is the client
        loop.call_soon_threadsafe(_start_close, loop, closer)


def _start_close(loop: asyncio.AbstractEventLoop, closer: AsyncGenerator[None, None]) -> None:
    # An `aclose()` task, which `rlm._sync` lets finish rather than cancel.
    loop.create_task(closer.aclose())


def adopt_client(
    client: object, expected: type[C], label: str, timeout: float | None
) -> tuple[C, PerLoop[C]]:
    """Use a caller's SDK client with our retries only (`max_retries=0`).

    The client is used as is: like any httpx client it belongs to one event loop, so it
    is not closed by us and not rebuilt for other loops.
    """
    if not isinstance(client, expected):
        raise ConfigurationError(f"client must be an {label} (async), not {type(client).__name__}")
    options: dict[str, Any] = {"max_retries": 0}
    if timeout is not None:
        options["timeout"] = timeout
    adopted: C = client.with_options(**options)  # type: ignore[attr-defined]
    return adopted, PerLoop(adopted, lambda: adopted, owned=False)
