"""Resume a run that died (a crash, `kill -9`, a deploy) from its trajectory file.

```python
result = rlm.resume("run.jsonl", context=text, model="openai/gpt-4o")
result = await rlm.aresume("run.jsonl", context=text, model=...)
result = engine.resume("run.jsonl", context=text)      # an rlm.RLM's models and limits
```

The run is started again over the same context, with its models behind a replay of the
recording (`rlm.testing.ReplayModel` in `on_difference="serve"` mode):

- every recorded iteration is answered from the file, so the loop runs the recorded code
  blocks again in order and the REPL state is rebuilt; the sub-calls and child runs
  those blocks make are answered from the file too. No recorded request is sent again;
- the first request the recording does not hold (the one in flight at the kill, or the
  next iteration) goes to the live model, and the run goes on live from there;
- calls are matched by their place in the run tree (`rlm.call_path`), so a block whose
  output changes when it runs again (time, randomness, files) still gets its recorded
  reply. Each such difference is reported: logged as a warning, listed in
  `RLMResult.resumed.differences`, and told to the model in a note on the first live
  request.

A trajectory may hold several attempts of the same run (a resumed run appends to the file
it resumes): the calls of every attempt over the same query and context are used.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

from rlm.errors import ReplayError, TrajectoryError
from rlm.events import Event, RunStarted, ToolCallFinished, ToolCallStarted, clip
from rlm.fingerprint import context_fingerprint, describe_fingerprint
from rlm.providers.base import Model, ModelRequest, ModelResponse, describe_model
from rlm.result import ResumeInfo, RLMResult
from rlm.testing.replay import Divergence, RecordedCall, ReplayModel
from rlm.tools import RecordedToolResult

if TYPE_CHECKING:
    from rlm.engine import RLM

logger = logging.getLogger("rlm")

# How much of each difference the model's note shows.
NOTE_CHARS = 1_500


@dataclass(frozen=True, slots=True)
class RecordedToolCall:
    """One finished tool call of the recording, at its place in the run tree."""

    call_path: str
    name: str
    arguments: str
    outcome: RecordedToolResult


@dataclass(frozen=True, slots=True)
class ResumePoint:
    """What a trajectory says about the run to resume."""

    path: Path
    started: RunStarted
    calls: tuple[RecordedCall, ...]
    attempts: int
    finished: bool
    truncated: bool
    tool_calls: tuple[RecordedToolCall, ...] = ()

    @property
    def query(self) -> str:
        return self.started.query

    @property
    def model_string(self) -> str:
        """The recorded root model as a model string ("openai/gpt-4o")."""
        return self.model_string_of(self.started)

    @staticmethod
    def model_string_of(started: RunStarted) -> str:
        known = started.provider in ("openai", "anthropic")
        return f"{started.provider}/{started.model}" if known else started.model


def load_resume_point(path: str | os.PathLike[str]) -> ResumePoint:
    """Read the run to resume from a trajectory file (the last root run in it, with
    every earlier attempt of the same run)."""
    from rlm.telemetry.trajectory import load_trajectory

    trajectory = load_trajectory(path)
    last = trajectory.root
    for run in trajectory.runs:
        last = run
    if last.started.session_id is not None:
        # A turn's prompt holds the earlier turns and its code uses their variables: as a
        # lone run it would match no recorded request and pay for every call again.
        raise TrajectoryError(
            f"{path} holds the turns of a session ({last.started.session_id}); resume "
            "continues a single run, not a conversation. To go on without paying again "
            "for the recorded calls, run the turns again in a new session with "
            "model=rlm.testing.ReplayModel.from_trajectory(path, fallback=your_model)."
        )
    attempts = [
        run
        for run in trajectory.runs
        if run.query == last.query
        and run.started.context_fingerprint == last.started.context_fingerprint
    ]
    calls: list[RecordedCall] = []
    # A resumed attempt records the calls it replayed again, at the same places of the
    # run: only the first call made at a place is the recording of it.
    places: set[str] = set()
    for attempt in attempts:
        for run in attempt.walk():
            records = [*run.model_calls, *(c for s in run.subcalls for c in s.model_calls)]
            for record in records:
                if record.request is None or not record.finished:
                    continue
                if record.reply is None and (
                    record.error_type is None or _ended_the_run(record.request)
                ):
                    continue
                place = record.request.metadata.get("rlm.call_path")
                if place:
                    if place in places:
                        continue
                    places.add(place)
                calls.append(
                    RecordedCall(
                        request=record.request,
                        model=record.model,
                        reply=record.reply,
                        error_type=record.error_type,
                        error=record.error,
                    )
                )
    return ResumePoint(
        path=Path(path),
        started=last.started,
        calls=tuple(calls),
        attempts=len(attempts),
        finished=last.status == "finished",
        truncated=trajectory.truncated,
        tool_calls=tuple(_tool_calls(run.events for a in attempts for run in a.walk())),
    )


def _tool_calls(streams: Iterable[Iterable[Event]]) -> Iterator[RecordedToolCall]:
    """Finished tool calls (not cancelled ones) with their recorded outcome."""
    for events in streams:
        started: dict[str, ToolCallStarted] = {}
        for event in events:
            if isinstance(event, ToolCallStarted) and event.call_path:
                started[event.tool_call_id] = event
            elif isinstance(event, ToolCallFinished) and event.tool_call_id in started:
                if not event.ok and event.error == "cancelled":
                    continue
                start = started[event.tool_call_id]
                assert start.call_path is not None
                yield RecordedToolCall(
                    call_path=start.call_path,
                    name=start.name,
                    arguments=start.arguments,
                    outcome=RecordedToolResult(
                        value=event.value if event.ok else None,
                        error=None if event.ok else event.error or "the tool failed",
                    ),
                )


class _RecordedTools:
    """Answers a resumed run's tool calls from the recording, by place in the run tree;
    a call that differs (another tool or other arguments) runs live and is noted."""

    def __init__(self, calls: Iterable[RecordedToolCall], replay: ReplayModel) -> None:
        self._at: dict[str, list[RecordedToolCall]] = {}
        for call in calls:
            self._at.setdefault(call.call_path, []).append(call)
        self._replay = replay
        self._lock = threading.Lock()
        self.replayed = 0

    def take(self, call_path: str, name: str, arguments: str) -> RecordedToolResult | None:
        with self._lock:
            waiting = self._at.get(call_path)
            if not waiting:
                return None
            recorded = waiting[0]
            if recorded.name == name and recorded.arguments == clip(arguments):
                waiting.pop(0)
                self.replayed += 1
                return recorded.outcome
            self._replay.divergences.append(
                Divergence(
                    call_path,
                    "tool",
                    f"the code called {name}({clip(arguments, 200)}) where the recording has "
                    f"{recorded.name}({clip(recorded.arguments, 200)}); it ran live",
                )
            )
            waiting.pop(0)
            return None


def _ended_the_run(request: ModelRequest) -> bool:
    """Whether a call's error ended the recorded run (an error of the root run's own
    model call does): a resume asks again rather than fail the same way. A sub-call's
    error was shown to the model's code, so it is served again as recorded."""
    return request.purpose != "subcall" and request.metadata.get("rlm.depth") == "0"


class _NotedModel:
    """The live model behind a resume: the first request it sees after the replay
    noticed differences carries a note about them for the model."""

    def __init__(self, model: Model, replay: ReplayModel) -> None:
        info = describe_model(model)
        self.name, self.provider, self.context_window = (
            info.name,
            info.provider,
            info.context_window,
        )
        self._model = model
        self._replay = replay
        self._noted = 0

    async def complete(self, request: ModelRequest) -> ModelResponse:
        differences = self._replay.divergences
        if len(differences) > self._noted and request.messages:
            note = _note_for_model([d.difference for d in differences[self._noted :]])
            self._noted = len(differences)
            last = request.messages[-1]
            request = replace(
                request,
                messages=(
                    *request.messages[:-1],
                    replace(last, content=f"{last.content}\n\n{note}"),
                ),
            )
        return await self._model.complete(request)


def _note_for_model(differences: Sequence[str]) -> str:
    shown = "\n".join(f"- {d[:NOTE_CHARS]}" for d in differences[:5])
    more = f"\n(and {len(differences) - 5} more)" if len(differences) > 5 else ""
    return (
        "[note from rlm: this run was resumed from a recording. Re-running the earlier code "
        "gave different output from the original run in these places, so the REPL's "
        f"variables may differ from what you saw:\n{shown}{more}]"
    )


@dataclass(frozen=True, slots=True)
class PreparedResume:
    """An engine whose models answer from the recording first, and the run to start."""

    engine: RLM
    point: ResumePoint
    replay: ReplayModel
    tools: _RecordedTools

    def finish(self, result: RLMResult) -> RLMResult:
        """The run's result, marked as resumed (differences logged)."""
        return _mark(result, self.point, self.replay, self.tools)

    def mark_error(self, exc: BaseException) -> None:
        """Mark the partial result an error carries, if any."""
        partial = getattr(exc, "result", None)
        if isinstance(partial, RLMResult):
            exc.result = _mark(partial, self.point, self.replay, self.tools)  # type: ignore[attr-defined]


def prepare_resume(
    engine: RLM, trajectory: str | os.PathLike[str], context: object
) -> PreparedResume:
    """Read `trajectory`, check `context` against it, and put a replay of the recording in
    front of `engine`'s models (what `RLM.resume` does before it runs)."""
    point = load_resume_point(trajectory)
    recorded = point.started.context_fingerprint
    if recorded:
        given = context_fingerprint(context)
        if given != recorded:
            raise ReplayError(
                f"{point.path} was recorded over {describe_fingerprint(recorded)}, but the "
                f"context given is {describe_fingerprint(given)}. Resume with the same "
                "context (the same file, unchanged)."
            )
    missing = sorted({call.name for call in point.tool_calls} - engine.tool_names)
    if missing:
        # Without them the replayed code's tool calls would fail, and the run would go
        # live from there with different feedback: refuse instead.
        raise ReplayError(
            f"{point.path} was recorded with the tool(s) {', '.join(missing)}, which this "
            "engine does not have. Resume with the same tools= (and sub_tools=) as the "
            "recorded run."
        )
    root_model, sub_model = engine.model, engine.sub_model
    info = describe_model(root_model)
    replay = ReplayModel(
        point.calls,
        name=info.name,
        provider=info.provider,
        context_window=info.context_window,
        on_difference="serve",
        source=str(point.path),
    )
    replay.fallback = _NotedModel(root_model, replay)
    sub = replay
    if sub_model is not root_model:
        sub = replay.with_identity(sub_model, fallback=_NotedModel(sub_model, replay))
    tools = _RecordedTools(point.tool_calls, replay)
    return PreparedResume(engine._for_resume(replay, sub, tools), point, replay, tools)


def _mark(
    result: RLMResult, point: ResumePoint, replay: ReplayModel, tools: _RecordedTools
) -> RLMResult:
    differences = tuple(f"{d.call_path}: {d.difference}" for d in replay.divergences)
    for difference in differences:
        logger.warning("rlm resume: re-running recorded code gave other output at %s", difference)
    return replace(
        result,
        resumed=ResumeInfo(
            trajectory=str(point.path),
            replayed_calls=replay.replayed,
            replayed_tool_calls=tools.replayed,
            live_calls=replay.live,
            differences=differences,
        ),
    )


def describe_point(point: ResumePoint) -> str:
    """One line about what a resume will start from (for the command line)."""
    calls = len(point.calls)
    state = "finished" if point.finished else "stopped before its end"
    tail = "; its last line was cut off" if point.truncated else ""
    return (
        f"resuming {point.path}: the run {state} after {calls} recorded model call(s) over "
        f"{point.attempts} attempt(s){tail}"
    )
