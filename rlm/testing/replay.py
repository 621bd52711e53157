"""Replay a recorded run as a test double: no model call is paid for twice.

```python
from rlm.testing import ReplayModel, Cassette

model = ReplayModel.from_trajectory("runs/churn.jsonl")   # root, sub-calls and child runs
result = rlm.run(query, context, model=model)             # zero model calls, same answer

model = Cassette("tests/cassettes/churn.jsonl", "openai/gpt-4o")   # rlm.testing.cassette
result = rlm.run(query, context, model=model)   # first time: real calls, recorded;
                                                # afterwards: replayed from the file
```

A recording is a trajectory file (`rlm.telemetry.TrajectoryRecorder`) or a cassette file,
which holds the same `model_call_started` / `model_call_finished` events: each carries
the whole request as sent and the whole reply.

Requests are matched by content: a request is served the reply recorded for the same
request (same purpose, same messages), in recorded order when the same request was made
more than once. That makes the match independent of the order in which concurrent
sub-calls happen to start, and it checks every request against its recording for free:
a run whose prompts changed asks for requests the recording does not hold. Such a
request raises `ReplayError` naming the closest recorded request and showing a diff of
the first message that differs, or, with `fallback=model`, goes to that live model (and
is recorded, for a `Cassette`).

A run over a different context than the recorded one is refused before any reply is
served: the engine stamps every request with the fingerprint of its run's context
(`ModelRequest.metadata`), and the recording holds the fingerprints of its root runs.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import os
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

from rlm import errors
from rlm.errors import ProviderError, ReplayError
from rlm.events import ModelCallFinished, ModelCallStarted
from rlm.fingerprint import describe_fingerprint
from rlm.providers.base import (
    Message,
    Model,
    ModelRequest,
    ModelResponse,
    describe_model,
)


@dataclass(frozen=True, slots=True)
class RecordedCall:
    """One recorded model call: the request as sent and the reply (or the error)."""

    request: ModelRequest
    model: str
    reply: ModelResponse | None = None
    error_type: str | None = None
    error: str | None = None
    provider: str = "unknown"


def message_key(message: Message) -> str:
    """What identifies a message for matching (cache markers and opaque provider data
    left out: they do not change what was asked)."""
    calls = [[c.id, c.name, dict(c.arguments)] for c in message.tool_calls]
    body = [message.role, message.content, calls, message.tool_call_id]
    return hashlib.blake2b(
        json.dumps(body, sort_keys=True, ensure_ascii=False, default=repr).encode("utf-8"),
        digest_size=12,
    ).hexdigest()


def request_key(request: ModelRequest) -> str:
    """What identifies a request for matching: its purpose and its messages."""
    digest = hashlib.blake2b(request.purpose.encode(), digest_size=16)
    for message in request.messages:
        digest.update(message_key(message).encode())
    return digest.hexdigest()


def load_recorded_calls(path: str | os.PathLike[str]) -> list[RecordedCall]:
    """Every finished model call of a trajectory or cassette file, in the order they
    started. Calls cut off by a kill (started, never finished) are left out."""
    from rlm.telemetry.trajectory import read_events

    events, _ = read_events(path)
    started: dict[str, ModelCallStarted] = {}
    order: list[str] = []
    finished: dict[str, ModelCallFinished] = {}
    for event in events:
        if isinstance(event, ModelCallStarted):
            started[event.call_id] = event
            order.append(event.call_id)
        elif isinstance(event, ModelCallFinished):
            finished[event.call_id] = event
    calls: list[RecordedCall] = []
    for call_id in order:
        start, end = started[call_id], finished.get(call_id)
        if end is None or start.request is None:
            continue
        if end.reply is None and end.error_type is None:
            continue
        calls.append(
            RecordedCall(
                request=start.request,
                model=start.model,
                provider=start.provider,
                reply=end.reply,
                error_type=end.error_type,
                error=end.error,
            )
        )
    return calls


@dataclass(frozen=True, slots=True)
class Divergence:
    """A request that differs from the recorded one at the same place of the run, served
    the recorded reply anyway (`on_difference="serve"`, as a resume does)."""

    call_path: str
    purpose: str
    difference: str


class _Store:
    """The recording and what has been served from it: shared by a `ReplayModel` and its
    `with_identity` views."""

    def __init__(
        self,
        calls: Iterable[RecordedCall],
        on_difference: Literal["raise", "serve"],
        source: str,
    ) -> None:
        if on_difference not in ("raise", "serve"):
            raise errors.ConfigurationError(
                f"on_difference must be 'raise' or 'serve', not {on_difference!r}"
            )
        self.on_difference = on_difference
        self.source = source
        self.recorded = list(calls)
        self.keys = [request_key(call.request) for call in self.recorded]
        self.by_key: dict[str, list[int]] = {}
        self.by_path: dict[str, list[int]] = {}
        for index, call in enumerate(self.recorded):
            self.by_key.setdefault(self.keys[index], []).append(index)
            path = call.request.metadata.get("rlm.call_path")
            if path:
                self.by_path.setdefault(path, []).append(index)
        self.used: set[int] = set()
        self.fingerprints = {
            fp
            for call in self.recorded
            if call.request.metadata.get("rlm.depth") == "0"
            and (fp := call.request.metadata.get("rlm.context_fingerprint"))
        }
        self.lock = threading.Lock()
        self.calls: list[ModelRequest] = []
        self.divergences: list[Divergence] = []
        self.replayed = 0
        self.live = 0


class ReplayModel:
    """A model that answers from a recording (see the module docstring).

    Args:
        calls: the recorded calls (`load_recorded_calls`, or `from_trajectory`).
        name, provider, context_window: the identity of the recorded model. They take part
            in the prompt the engine builds (the sub-call size line names the window), so
            they must be the recorded ones for recorded requests to match.
        fallback: a live model for requests the recording does not hold; without one,
            such a request raises `ReplayError`.
        on_difference: what to do when the request made at a recorded place of the run
            (`ModelRequest.metadata["rlm.call_path"]`) differs from the recorded one:
            `"raise"` a `ReplayError` with a diff (the default), or `"serve"` the recorded
            reply anyway and note the difference in `divergences` (resume does this, so a
            block whose output changed on re-running does not cost a model call).
        source: how error messages name the recording.

    `calls` lists every request received; `replayed` and `live` count how they were
    served; `unused()` lists recorded calls never asked for.
    """

    def __init__(
        self,
        calls: Iterable[RecordedCall],
        *,
        name: str = "replay",
        provider: str = "replay",
        context_window: int | None = None,
        fallback: Model | None = None,
        on_difference: Literal["raise", "serve"] = "raise",
        source: str = "the recording",
    ) -> None:
        self.name = name
        self.provider = provider
        self.context_window = context_window
        self.fallback = fallback
        self._store = _Store(calls, on_difference, source)

    @classmethod
    def from_trajectory(
        cls,
        path: str | os.PathLike[str],
        *,
        fallback: Model | None = None,
        on_difference: Literal["raise", "serve"] = "raise",
    ) -> ReplayModel:
        """A replay of every model call in a trajectory (or cassette) file.

        The model's identity (name, provider, context window) is the recorded root
        model's: pass the result as `model=` (and as `sub_model=` when the recording used
        the same model for both, which is the default).
        """
        from rlm.telemetry.trajectory import read_events

        calls = load_recorded_calls(path)
        name, provider, window = "replay", "replay", None
        for event in read_events(path)[0]:
            if event.kind == "run_started" and event.depth == 0:
                name, provider = event.model, event.provider
                window = event.model_context_window
                break
        else:
            if calls:
                name = calls[0].model
        return cls(
            calls,
            name=name,
            provider=provider,
            context_window=window,
            fallback=fallback,
            on_difference=on_difference,
            source=str(path),
        )

    def with_identity(self, model: Model, *, fallback: Model | None = None) -> ReplayModel:
        """A view of the same recording (what was served is shared) under `model`'s name,
        provider and context window: for a `sub_model` that differs from the root model.
        `fallback` is the view's own live model (none unless given)."""
        info = describe_model(model)
        view = ReplayModel((), name=info.name, provider=info.provider, fallback=fallback)
        view.context_window = info.context_window
        view._store = self._store
        return view

    @property
    def calls(self) -> list[ModelRequest]:
        """Every request received, in order."""
        return self._store.calls

    @property
    def replayed(self) -> int:
        """Requests answered from the recording."""
        return self._store.replayed

    @property
    def live(self) -> int:
        """Requests sent to the fallback model."""
        return self._store.live

    @property
    def divergences(self) -> list[Divergence]:
        """Requests served although they differed from the recording (`"serve"` mode)."""
        return self._store.divergences

    @property
    def source(self) -> str:
        return self._store.source

    def unused(self) -> list[RecordedCall]:
        """Recorded calls no request asked for (yet)."""
        store = self._store
        with store.lock:
            return [c for i, c in enumerate(store.recorded) if i not in store.used]

    async def complete(self, request: ModelRequest) -> ModelResponse:
        store = self._store
        self._check_context(request)
        key = request_key(request)
        with store.lock:
            store.calls.append(request)
            index, problem = self._take(request, key)
            if index is not None:
                store.replayed += 1
            elif problem is None and self.fallback is not None:
                store.live += 1
        if index is None:
            if problem is not None or self.fallback is None:
                raise ReplayError(problem or self._mismatch(request, key))
            return await self.fallback.complete(request)
        recorded = store.recorded[index]
        if recorded.reply is not None:
            return recorded.reply
        raise _recorded_error(recorded)

    def _take(self, request: ModelRequest, key: str) -> tuple[int | None, str | None]:
        """The recorded call that answers `request` (marked used), or a reason why none
        may. Called under the store's lock."""
        store = self._store
        path = request.metadata.get("rlm.call_path")
        # The same request anywhere in the recording first (several runs in one file
        # share their paths), then the request recorded at the same place of the run.
        same = [i for i in store.by_key.get(key, ()) if i not in store.used]
        if same:
            here = [
                i for i in same if store.recorded[i].request.metadata.get("rlm.call_path") == path
            ]
            chosen = (here or same)[0]
            store.used.add(chosen)
            return chosen, None
        if path and path in store.by_path:
            free = [i for i in store.by_path[path] if i not in store.used]
            if free:
                recorded = store.recorded[free[0]]
                difference = _describe_difference(recorded.request, request)
                if store.on_difference == "raise":
                    if self.fallback is not None:
                        return None, None  # a new request: the fallback answers it
                    return None, (
                        f"{store.source}: the {request.purpose} request at {path} differs from "
                        f"the recorded one {difference}\n{_WAYS_ON}"
                    )
                store.used.add(free[0])
                store.divergences.append(Divergence(path, request.purpose, difference))
                return free[0], None
        return None, None

    def _check_context(self, request: ModelRequest) -> None:
        meta = request.metadata
        fingerprint = meta.get("rlm.context_fingerprint")
        if meta.get("rlm.depth") != "0" or not fingerprint or not self._store.fingerprints:
            return
        if fingerprint not in self._store.fingerprints:
            recorded = " or ".join(
                describe_fingerprint(f) for f in sorted(self._store.fingerprints)
            )
            raise ReplayError(
                f"{self.source} was recorded over {recorded}, but this run's context is "
                f"{describe_fingerprint(fingerprint)}. Replay over the recorded context, "
                "or record again."
            )

    def _mismatch(self, request: ModelRequest, key: str) -> str:
        what = f"a {request.purpose} request of {len(request.messages)} message(s)"
        if key in self._store.by_key:
            held = len(self._store.by_key[key])
            return (
                f"{self.source} holds this {request.purpose} request {held} time(s) and every "
                f"recorded reply was already served; the run asked for it once more. "
                f"{_WAYS_ON}"
            )
        closest = self._closest(request)
        if closest is None:
            return (
                f"{self.source} holds no {request.purpose} request at all; asked for {what}. "
                f"{_WAYS_ON}"
            )
        return (
            f"{self.source} holds no reply for {what}. The closest recorded request differs "
            f"{_describe_difference(closest.request, request)}\n{_WAYS_ON}"
        )

    def _closest(self, request: ModelRequest) -> RecordedCall | None:
        mine = [message_key(m) for m in request.messages]
        best: tuple[int, int, float] | None = None
        found: RecordedCall | None = None
        candidates = [c for c in self._store.recorded if c.request.purpose == request.purpose]
        last = request.messages[-1].content if request.messages else ""
        for call in candidates[:2000]:
            theirs = [message_key(m) for m in call.request.messages]
            common = 0
            for a, b in zip(mine, theirs, strict=False):
                if a != b:
                    break
                common += 1
            similar = 0.0
            if len(candidates) <= 200 and call.request.messages:
                similar = difflib.SequenceMatcher(
                    None, call.request.messages[-1].content[:2000], last[:2000]
                ).quick_ratio()
            score = (common, -abs(len(theirs) - len(mine)), similar)
            if best is None or score > best:
                best, found = score, call
        return found


_WAYS_ON = (
    "If the change is intended, record again (delete the file, or Cassette(mode='all')); "
    "to answer new requests live, pass fallback=model (Cassette(mode='new'))."
)


def _describe_difference(recorded: ModelRequest, asked: ModelRequest) -> str:
    for index, (old, new) in enumerate(zip(recorded.messages, asked.messages, strict=False)):
        if message_key(old) == message_key(new):
            continue
        where = f"at message {index + 1} ({new.role})"
        if old.role != new.role:
            return f"{where}: recorded role {old.role!r}, this run {new.role!r}."
        diff = list(
            difflib.unified_diff(
                old.content.splitlines(),
                new.content.splitlines(),
                "recorded",
                "this run",
                lineterm="",
                n=1,
            )
        )
        if len(diff) > 40:
            diff = [*diff[:40], f"... ({len(diff) - 40} more diff lines)"]
        shown = "\n".join(diff) if diff else "(only tool calls or ids differ)"
        return f"{where}:\n{shown}"
    if len(recorded.messages) != len(asked.messages):
        return (
            f"in length: recorded {len(recorded.messages)} message(s), this run "
            f"{len(asked.messages)}."
        )
    return "only in details that do not take part in matching."


def _recorded_error(call: RecordedCall) -> Exception:
    """The error a recorded call ended with, raised again so the run takes the same path."""
    cls = getattr(errors, call.error_type or "", None)
    message = call.error or "(no message recorded)"
    if isinstance(cls, type) and issubclass(cls, ProviderError):
        return cls(message, model=call.model)
    return ProviderError(f"{call.error_type}: {message}", model=call.model)
