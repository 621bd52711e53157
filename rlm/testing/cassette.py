"""`Cassette`: a model that records its calls into a file the first time and replays them
from it afterwards, for users' test suites (the `rlm_cassette` pytest fixture builds them).

The file is a trajectory subset (`model_call_started` / `model_call_finished` events, see
`rlm.telemetry.trajectory`); replaying it is `rlm.testing.replay.ReplayModel`'s job.
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path
from typing import Literal

from rlm import errors
from rlm.errors import ReplayError
from rlm.events import ModelCallFinished, ModelCallStarted, clip, new_id
from rlm.providers.base import Model, ModelInfo, ModelRequest, ModelResponse, describe_model
from rlm.providers.catalog import context_window as known_context_window
from rlm.providers.registry import resolve_model, split_model_string
from rlm.testing.replay import ReplayModel, load_recorded_calls

RecordMode = Literal["once", "new", "all", "none"]
RECORD_MODES: tuple[RecordMode, ...] = ("once", "new", "all", "none")


class Cassette:
    """A model that records its calls into a file the first time and replays them later.

    ```python
    model = Cassette("tests/cassettes/churn.jsonl", "openai/gpt-4o")
    ```

    Modes: `"once"` (default) replays when the file exists and records when it does not;
    `"new"` replays what the file holds and sends other requests to `model`, appending
    them; `"all"` records from scratch; `"none"` only replays (a missing file or a new
    request is an error: the mode for CI). `model` may be None in `"none"` mode, and in
    `"once"` mode when the file exists. A model string (`"openai/gpt-4o"`) is resolved
    only when the cassette records, so replaying needs no API key. The file is a
    trajectory subset (model calls only) and can be read with
    `rlm.telemetry.load_trajectory` or `rlm view`.

    The cassette takes the identity (name, provider, context window) of `model`, of the
    model a string names, or of the recorded model when none is given (its window from
    rlm's table of known models, as the provider adapters take it), so the engine builds
    the same prompts as when it recorded.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        model: str | Model | None = None,
        *,
        mode: RecordMode = "once",
    ) -> None:
        if mode not in RECORD_MODES:
            raise errors.ConfigurationError(
                f"Cassette mode must be one of {', '.join(RECORD_MODES)}, not {mode!r}"
            )
        self.path = Path(path)
        self.mode: RecordMode = mode
        exists = self.path.is_file()
        self.recording = mode == "all" or (mode == "once" and not exists)
        named: ModelInfo | None = None
        if isinstance(model, str):
            # A replay needs no live model, so CI replays without the provider's API key;
            # the string still names the model whose identity shapes the prompt.
            if self.recording or mode == "new":
                model = resolve_model(model)
            else:
                provider, bare = split_model_string(model)
                named = ModelInfo(bare, provider, known_context_window(bare))
                model = None
        self.model = model
        if mode == "none" and not exists:
            raise ReplayError(
                f"no cassette at {self.path}, and mode='none' only replays. Record it first "
                "(run once with mode='once' and a real model), or check the path."
            )
        if (self.recording or mode == "new") and model is None:
            raise errors.ConfigurationError(
                f"Cassette({str(self.path)!r}) has nothing to replay yet and no model to "
                "record from: pass the real model as the second argument."
            )
        self._replay: ReplayModel | None = None
        identity = describe_model(model) if model is not None else named
        if not self.recording:
            calls = load_recorded_calls(self.path)
            fallback = model if mode == "new" else None
            if identity is None:
                # No model given: the recorded one's identity, its window from rlm's table
                # (as the provider adapters take it).
                first = calls[0] if calls else None
                name = first.model if first else "replay"
                identity = ModelInfo(
                    name, first.provider if first else "replay", known_context_window(name)
                )
            self._replay = ReplayModel(
                calls,
                name=identity.name,
                provider=identity.provider,
                context_window=identity.context_window,
                fallback=_Recording(self, fallback) if fallback is not None else None,
                source=f"cassette {self.path}",
            )
        assert identity is not None
        self.name = identity.name
        self.provider = identity.provider
        self.context_window = identity.context_window
        self._recorder: _CassetteWriter | None = None
        self._lock = threading.Lock()
        self._writer_lock = threading.Lock()
        self._live = 0

    @property
    def replayed(self) -> int:
        """Requests answered from the file."""
        return self._replay.replayed if self._replay else 0

    @property
    def live(self) -> int:
        """Requests sent to the live model (recording, or new in mode 'new')."""
        return self._live

    async def complete(self, request: ModelRequest) -> ModelResponse:
        if self._replay is not None:
            return await self._replay.complete(request)
        assert self.model is not None
        return await _Recording(self, self.model).complete(request)

    def _writer(self) -> _CassetteWriter:
        with self._writer_lock:
            if self._recorder is None:
                self._recorder = _CassetteWriter(self.path, append=not self.recording)
            return self._recorder

    def close(self) -> None:
        """Close the file being written, if any. Safe to call twice."""
        with self._writer_lock:
            if self._recorder is not None:
                self._recorder.close()
                self._recorder = None

    def __enter__(self) -> Cassette:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class _Recording:
    """Sends a request to the live model and writes the exchange into the cassette."""

    def __init__(self, cassette: Cassette, model: Model) -> None:
        self.cassette = cassette
        self.model = model
        self.name = model.name

    async def complete(self, request: ModelRequest) -> ModelResponse:
        writer = self.cassette._writer()
        started = time.perf_counter()
        with self.cassette._lock:
            self.cassette._live += 1
        try:
            reply = await self.model.complete(request)
        except Exception as exc:
            writer.write(request, self.model, None, exc, time.perf_counter() - started)
            raise
        writer.write(request, self.model, reply, None, time.perf_counter() - started)
        return reply


class _CassetteWriter:
    """Writes model calls as `model_call_started` / `model_call_finished` event pairs."""

    def __init__(self, path: Path, *, append: bool) -> None:
        from rlm.telemetry.trajectory import TrajectoryRecorder

        self._recorder = TrajectoryRecorder(path, append=append)

    def write(
        self,
        request: ModelRequest,
        model: Model,
        reply: ModelResponse | None,
        error: Exception | None,
        latency_s: float,
    ) -> None:
        info = describe_model(model)
        meta = request.metadata
        run_id = meta.get("rlm.run_id", "cassette")
        depth = int(meta.get("rlm.depth", "0"))
        call_id = new_id()
        last = request.messages[-1].content if request.messages else ""
        self._recorder(
            ModelCallStarted(
                run_id=run_id,
                depth=depth,
                call_id=call_id,
                model=info.name,
                provider=info.provider,
                purpose=request.purpose,
                message_count=len(request.messages),
                prompt_chars=sum(len(m.content) for m in request.messages),
                last_message=clip(last),
                request=request,
            )
        )
        self._recorder(
            ModelCallFinished(
                run_id=run_id,
                depth=depth,
                call_id=call_id,
                model=info.name,
                provider=info.provider,
                purpose=request.purpose,
                response_model=reply.model if reply else None,
                usage=reply.usage if reply else ModelResponse("").usage,
                latency_s=latency_s,
                finish_reason=reply.finish_reason if reply else None,
                text=clip(reply.text) if reply else "",
                text_chars=len(reply.text) if reply else 0,
                error_type=type(error).__name__ if error else None,
                error=str(error) if error else None,
                reply=reply,
            )
        )

    def close(self) -> None:
        self._recorder.close()
