"""Trajectory files: every event of a run as JSON Lines, and the run tree rebuilt from one.

```python
from rlm.telemetry import TrajectoryRecorder, load_trajectory

with TrajectoryRecorder("run.jsonl") as recorder:
    rlm.run(query, context, model=..., on_event=recorder)

trajectory = load_trajectory("run.jsonl")
root = trajectory.root
for iteration in root.iterations:
    for code in iteration.code:
        print(code.code, code.stdout)
        for sub in code.subcalls:           # llm_query / rlm_query made by this block
            print(sub.prompt, sub.response, sub.child)   # child: a RunRecord or None
print(root.result.answer, trajectory.usage)
```

The format is one `rlm.events.event_to_json(event)` per line, in the order the events
happened (`rlm.events.event_from_json` reads a line back), with one saving: the whole
request a `model_call_started` event carries is stored message by message, and a message
already written earlier in the file (a root run's history repeats in every request) is
written as `{"ref": "<sha>"}` pointing at its first copy, which carries `"sha"`.
`read_events` expands them again. Each line is flushed as it is
written, so a crash or kill loses at most the line being written; `load_trajectory`
tolerates such a cut-off last line.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import IO, Literal

from rlm.errors import TrajectoryError
from rlm.events import (
    CodeExecuted,
    CodeStarted,
    Event,
    FinalAnswer,
    HistoryCompacted,
    IterationStarted,
    ModelCallFinished,
    ModelCallStarted,
    ModelRetry,
    ReplViolation,
    RunFailed,
    RunFinished,
    RunStarted,
    SubcallFinished,
    SubcallStarted,
    ToolCallFinished,
    ToolCallStarted,
    event_from_dict,
    event_to_dict,
    event_to_json,
)
from rlm.providers.base import ModelPurpose, ModelRequest, ModelResponse, Usage
from rlm.result import RLMResult

# -- writing --------------------------------------------------------------------------------


class TrajectoryRecorder:
    """An event subscriber that appends each event to a JSON Lines file.

    Args:
        path: the file to write. It is created (with missing parent directories) at once,
            so a bad path fails here rather than in the middle of a run.
        append: add to an existing file instead of replacing it. A last line the file
            ends in the middle of (the writer was killed while writing it) is removed
            first, so the lines added after it stay readable.
        fsync: also ask the OS to put each line on disk (slower; survives a power cut,
            not just a crash).

    One recorder can serve several runs (even concurrent ones; lines never interleave):
    the loader separates them by run id. Close it with `close()` or use it as a context
    manager; lines are flushed as they are written either way.
    """

    def __init__(
        self, path: str | os.PathLike[str], *, append: bool = False, fsync: bool = False
    ) -> None:
        self.path = Path(path)
        self.fsync = fsync
        self._lock = threading.Lock()
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            if append:
                _drop_cut_off_line(self.path)
            self._file: IO[str] | None = open(  # noqa: SIM115 - closed by close()
                self.path, "a" if append else "w", encoding="utf-8", newline="\n"
            )
        except OSError as exc:
            raise TrajectoryError(
                f"cannot write a trajectory to {self.path}: {exc.strerror or exc}. "
                "Pick a writable path."
            ) from exc
        self.events_written = 0
        self._written_messages: set[str] = set()

    def _encode(self, event: Event) -> str:
        if not (isinstance(event, ModelCallStarted) and event.request is not None):
            return event_to_json(event)
        data = event_to_dict(event)
        request = data["request"]
        request["messages"] = [self._message_entry(m) for m in request["messages"]]
        return json.dumps(data, ensure_ascii=False, separators=(",", ":"))

    def _message_entry(self, message: dict[str, object]) -> dict[str, object]:
        body = {k: v for k, v in message.items() if k != "cache_breakpoint"}
        sha = hashlib.blake2b(
            json.dumps(body, sort_keys=True, ensure_ascii=False).encode("utf-8"), digest_size=10
        ).hexdigest()
        if sha in self._written_messages:
            ref: dict[str, object] = {"ref": sha}
            if message.get("cache_breakpoint"):
                ref["cache_breakpoint"] = True
            return ref
        self._written_messages.add(sha)
        return {**message, "sha": sha}

    def __call__(self, event: Event) -> None:
        with self._lock:
            line = self._encode(event) + "\n"
            if self._file is None:
                raise TrajectoryError(
                    f"TrajectoryRecorder({str(self.path)!r}) is closed; make a new one "
                    "(with append=True to add to the same file)"
                )
            self._file.write(line)
            self._file.flush()
            if self.fsync:
                os.fsync(self._file.fileno())
            self.events_written += 1

    @property
    def closed(self) -> bool:
        return self._file is None

    def close(self) -> None:
        """Close the file. Safe to call twice."""
        with self._lock:
            if self._file is not None:
                self._file.close()
                self._file = None

    def __enter__(self) -> TrajectoryRecorder:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"TrajectoryRecorder({str(self.path)!r}, events_written={self.events_written})"


def _drop_cut_off_line(path: Path) -> None:
    """Cut a file that does not end in a newline back to its last whole line."""
    try:
        file = open(path, "r+b")  # noqa: SIM115 - closed below
    except FileNotFoundError:
        return
    with file:
        end = file.seek(0, os.SEEK_END)
        if end == 0:
            return
        file.seek(end - 1)
        if file.read(1) == b"\n":
            return
        # Look back block by block: a cut-off line may be long (a whole request).
        position = end
        while position > 0:
            start = max(0, position - 65_536)
            file.seek(start)
            block = file.read(position - start)
            newline = block.rfind(b"\n")
            if newline >= 0:
                file.truncate(start + newline + 1)
                return
            position = start
        file.truncate(0)


# -- the rebuilt tree ---------------------------------------------------------------------


@dataclass(slots=True)
class ModelCallRecord:
    """One model call. `finished` is False when the file ends (or the run was cancelled)
    before the call returned; `error_type`/`error` are set when it failed."""

    call_id: str
    model: str
    provider: str
    purpose: ModelPurpose
    iteration: int | None
    subcall_id: str | None
    started_at: float
    message_count: int
    prompt_chars: int
    last_message: str
    finished: bool = False
    finished_at: float | None = None
    response_model: str | None = None
    usage: Usage = field(default_factory=Usage)
    cost_usd: float | None = None
    latency_s: float | None = None
    finish_reason: str | None = None
    text: str = ""
    text_chars: int = 0
    error_type: str | None = None
    error: str | None = None
    retries: list[ModelRetry] = field(default_factory=list)
    request: ModelRequest | None = None
    reply: ModelResponse | None = None


@dataclass(slots=True)
class SubcallRecord:
    """One `llm_query`/`rlm_query` (or one item of a batched one) made by a code block.

    `model_calls` holds the model call of a plain sub-call; `child` the child run of a
    recursive one. `ok` is None while unfinished.
    """

    subcall_id: str
    run_id: str
    exec_id: str | None
    recursive: bool
    model: str
    prompt: str
    prompt_chars: int
    batch_index: int | None
    batch_size: int | None
    started_at: float
    ok: bool | None = None
    response: str = ""
    response_chars: int = 0
    error: str | None = None
    duration_s: float | None = None
    child_run_id: str | None = None
    model_calls: list[ModelCallRecord] = field(default_factory=list)
    child: RunRecord | None = None


@dataclass(slots=True)
class ToolCallRecord:
    """One call of a user tool made by a code block; `ok` is None while unfinished."""

    tool_call_id: str
    name: str
    arguments: str
    started_at: float
    ok: bool | None = None
    result: str = ""
    result_chars: int = 0
    error: str | None = None
    duration_s: float | None = None


@dataclass(slots=True)
class CodeRecord:
    """One code block run in the REPL and what it produced; `finished` is False when the
    file ends before the block did."""

    exec_id: str
    iteration: int
    index: int
    code: str
    started_at: float
    finished: bool = False
    stdout: str = ""
    stderr: str = ""
    error: str | None = None
    duration_s: float | None = None
    restarted: bool = False
    violation: str | None = None
    subcalls: list[SubcallRecord] = field(default_factory=list)
    tool_calls: list[ToolCallRecord] = field(default_factory=list)


@dataclass(slots=True)
class IterationRecord:
    """One turn: the root model call, the code blocks it ran, and a final answer if any."""

    index: int
    started_at: float
    model_call: ModelCallRecord | None = None
    code: list[CodeRecord] = field(default_factory=list)
    final_answer: str | None = None


@dataclass(slots=True)
class RunRecord:
    """One run (the root or a child) rebuilt from its events.

    `status` is "finished" (with `result`), "failed" (with `error_type`/`error`) or
    "incomplete" when the file ends first. `final_request` is the extra model call made
    for an answer when a run runs out of iterations.
    """

    run_id: str
    parent_run_id: str | None
    parent_subcall_id: str | None
    depth: int
    started: RunStarted
    iterations: list[IterationRecord] = field(default_factory=list)
    model_calls: list[ModelCallRecord] = field(default_factory=list)
    final_request: ModelCallRecord | None = None
    final_answer: str | None = None
    final_source: str | None = None
    final_iteration: int | None = None
    result: RLMResult | None = None
    error_type: str | None = None
    error: str | None = None
    ended_at: float | None = None
    children: list[RunRecord] = field(default_factory=list)
    compactions: list[HistoryCompacted] = field(default_factory=list)
    stray_subcalls: list[SubcallRecord] = field(default_factory=list)
    events: list[Event] = field(default_factory=list)

    @property
    def query(self) -> str:
        return self.started.query

    @property
    def session_id(self) -> str | None:
        """The `Session` this run is a turn of (or belongs to), else None."""
        return self.started.session_id

    @property
    def model(self) -> str:
        return self.started.model

    @property
    def status(self) -> Literal["finished", "failed", "incomplete"]:
        if self.result is not None:
            return "finished"
        if self.error_type is not None:
            return "failed"
        return "incomplete"

    @property
    def answer(self) -> str | None:
        return self.result.answer if self.result is not None else self.final_answer

    @property
    def code_executions(self) -> list[CodeRecord]:
        return [code for it in self.iterations for code in it.code]

    @property
    def subcalls(self) -> list[SubcallRecord]:
        """Every sub-call this run made, in order."""
        return [s for code in self.code_executions for s in code.subcalls] + list(
            self.stray_subcalls
        )

    @property
    def own_usage(self) -> Usage:
        """Tokens of this run's own model calls (its plain sub-calls included)."""
        total = Usage()
        for call in self._own_calls():
            total = total + call.usage
        return total

    @property
    def usage(self) -> Usage:
        """Tokens of this run and all its child runs."""
        total = self.own_usage
        for child in self.children:
            total = total + child.usage
        return total

    @property
    def cost_usd(self) -> float | None:
        """Cost of this run and its children; None when some finished call had no price."""
        total = 0.0
        for call in self._own_calls():
            if call.finished and call.error_type is None:
                if call.cost_usd is None:
                    return None
                total += call.cost_usd
        for child in self.children:
            cost = child.cost_usd
            if cost is None:
                return None
            total += cost
        return total

    def walk(self) -> Iterator[RunRecord]:
        """This run and every run below it, parents first."""
        yield self
        for child in self.children:
            yield from child.walk()

    def _own_calls(self) -> list[ModelCallRecord]:
        return [*self.model_calls, *(c for s in self.subcalls for c in s.model_calls)]


@dataclass(slots=True)
class Trajectory:
    """A trajectory file, read back: its events and the run trees they describe.

    `runs` are the root runs in the order they started (one, unless a recorder was shared
    by several calls or a `Session` wrote its turns); `root` is the first, and
    `sessions` groups the turns of each session. `truncated` is True when the last line was
    cut off (the writer was killed mid-line) and left out.
    """

    path: Path
    events: list[Event]
    runs: list[RunRecord]
    by_id: dict[str, RunRecord]
    truncated: bool = False

    @property
    def root(self) -> RunRecord:
        if not self.runs:
            raise TrajectoryError(
                f"{self.path} holds no run start (no run_started event); was the recorder "
                "attached from the beginning of the run?"
            )
        return self.runs[0]

    @property
    def result(self) -> RLMResult | None:
        """The first root run's result, or None if it did not finish."""
        return self.root.result

    @property
    def usage(self) -> Usage:
        total = Usage()
        for run in self.runs:
            total = total + run.usage
        return total

    @property
    def sessions(self) -> dict[str, list[RunRecord]]:
        """The root runs of each `Session` (its turns, in order), by session id."""
        grouped: dict[str, list[RunRecord]] = {}
        for run in self.runs:
            if run.session_id is not None:
                grouped.setdefault(run.session_id, []).append(run)
        return grouped

    def run(self, run_id: str) -> RunRecord:
        """The run (root or child) with this id."""
        try:
            return self.by_id[run_id]
        except KeyError:
            raise TrajectoryError(f"{self.path} has no run {run_id!r}") from None

    def all_runs(self) -> Iterator[RunRecord]:
        """Every run, each root followed by its descendants."""
        for run in self.runs:
            yield from run.walk()


# -- reading ---------------------------------------------------------------------------------


def read_events(path: str | os.PathLike[str]) -> tuple[list[Event], bool]:
    """The events of a trajectory file and whether its last line was cut off.

    Raises `TrajectoryError` when the file is missing, unreadable, empty, or has a line
    (other than a cut-off last one) that is not an event.
    """
    file = Path(path)
    try:
        data = file.read_bytes()
    except FileNotFoundError:
        raise TrajectoryError(
            f"no trajectory file at {file}: check the path (TrajectoryRecorder(path) writes one)"
        ) from None
    except IsADirectoryError:
        raise TrajectoryError(f"{file} is a directory, not a trajectory file") from None
    except OSError as exc:
        raise TrajectoryError(f"cannot read {file}: {exc.strerror or exc}") from exc
    lines = data.split(b"\n")
    ends_cleanly = lines[-1] == b""
    if ends_cleanly:
        lines.pop()
    events: list[Event] = []
    truncated = False
    decode = LineDecoder()
    for number, raw in enumerate(lines, start=1):
        if not raw.strip():
            continue
        try:
            events.append(decode(raw))
        except (ValueError, TypeError, KeyError, AttributeError) as exc:
            if number == len(lines) and not ends_cleanly and events:
                truncated = True  # the writer stopped mid-line
                break
            shown = raw[:120].decode("utf-8", "replace")
            raise TrajectoryError(
                f"line {number} of {file} is not an rlm event ({exc}); the line begins "
                f"{shown!r}. Is this a file written by rlm.telemetry.TrajectoryRecorder?"
            ) from None
    if not events:
        raise TrajectoryError(
            f"{file} holds no events"
            + (" (only a cut-off line)" if lines else " (it is empty)")
            + "; the run may have been stopped before its first event was written"
        )
    return events, truncated


class LineDecoder:
    """Reads the lines of one trajectory file, in order, back into events (a line may
    refer to messages written on earlier lines, so one decoder reads one file)."""

    def __init__(self) -> None:
        self._messages: dict[str, dict[str, object]] = {}

    def __call__(self, line: str | bytes) -> Event:
        """The event on `line`; raises ValueError (or TypeError/KeyError) for a bad line."""
        payload = json.loads(line)
        if not isinstance(payload, dict):
            raise ValueError(f"a JSON {type(payload).__name__}, not an object")
        request = payload.get("request")
        if payload.get("kind") == "model_call_started" and isinstance(request, dict):
            stored = request.get("messages", ())
            request["messages"] = [_expand(m, self._messages) for m in stored]
        return event_from_dict(payload)


def _expand(entry: object, seen: dict[str, dict[str, object]]) -> object:
    """A stored message back in full: a `{"ref": sha}` becomes the message it points at."""
    if not isinstance(entry, dict):
        return entry
    if "ref" in entry:
        try:
            message = dict(seen[str(entry["ref"])])
        except KeyError:
            raise ValueError(f"message reference {entry['ref']!r} before its message") from None
        message["cache_breakpoint"] = bool(entry.get("cache_breakpoint", False))
        return message
    sha = entry.get("sha")
    if isinstance(sha, str):
        seen[sha] = entry
    return entry


class _Builder:
    """Folds events, in file order, into run trees."""

    def __init__(self) -> None:
        self.runs: dict[str, RunRecord] = {}
        self.roots: list[RunRecord] = []
        self.calls: dict[str, ModelCallRecord] = {}
        self.codes: dict[str, CodeRecord] = {}
        self.subcalls: dict[str, SubcallRecord] = {}
        self.tool_calls: dict[str, ToolCallRecord] = {}

    def iteration(self, run: RunRecord, index: int, timestamp: float) -> IterationRecord:
        for it in reversed(run.iterations):
            if it.index == index:
                return it
        it = IterationRecord(index=index, started_at=timestamp)
        run.iterations.append(it)
        return it

    def add(self, event: Event) -> None:
        if isinstance(event, RunStarted):
            self.start_run(event)
            return
        run = self.runs.get(event.run_id)
        if run is None:
            # Events of a run whose start is not in the file (a cut trajectory): keep
            # them under a stub run rather than dropping them.
            self.start_run(
                RunStarted(
                    run_id=event.run_id,
                    parent_run_id=event.parent_run_id,
                    depth=event.depth,
                    timestamp=event.timestamp,
                    query="(start of this run not recorded)",
                    model="?",
                    sub_model="?",
                    max_iterations=0,
                    max_depth=0,
                    context_type="?",
                    context_chars=0,
                )
            )
            run = self.runs[event.run_id]
        run.events.append(event)
        if isinstance(event, IterationStarted):
            self.iteration(run, event.iteration, event.timestamp)
        elif isinstance(event, ModelCallStarted):
            self.call_started(run, event)
        elif isinstance(event, ModelCallFinished):
            self.call_finished(event)
        elif isinstance(event, ModelRetry):
            if event.call_id is not None and event.call_id in self.calls:
                self.calls[event.call_id].retries.append(event)
        elif isinstance(event, CodeStarted):
            code = CodeRecord(
                exec_id=event.exec_id,
                iteration=event.iteration,
                index=event.index,
                code=event.code,
                started_at=event.timestamp,
            )
            self.codes[event.exec_id] = code
            self.iteration(run, event.iteration, event.timestamp).code.append(code)
        elif isinstance(event, CodeExecuted):
            self.code_executed(run, event)
        elif isinstance(event, ReplViolation):
            if event.exec_id is not None and event.exec_id in self.codes:
                self.codes[event.exec_id].violation = event.limit
        elif isinstance(event, SubcallStarted):
            self.subcall_started(run, event)
        elif isinstance(event, SubcallFinished):
            sub = self.subcalls.get(event.subcall_id)
            if sub is not None:
                sub.ok = event.ok
                sub.response = event.response
                sub.response_chars = event.response_chars
                sub.error = event.error
                sub.duration_s = event.duration_s
                sub.child_run_id = event.child_run_id
        elif isinstance(event, ToolCallStarted):
            started = ToolCallRecord(
                tool_call_id=event.tool_call_id,
                name=event.name,
                arguments=event.arguments,
                started_at=event.timestamp,
            )
            self.tool_calls[event.tool_call_id] = started
            caller = self.codes.get(event.exec_id) if event.exec_id else None
            if caller is not None:
                caller.tool_calls.append(started)
        elif isinstance(event, ToolCallFinished):
            ended = self.tool_calls.get(event.tool_call_id)
            if ended is not None:
                ended.ok = event.ok
                ended.result = event.result
                ended.result_chars = event.result_chars
                ended.error = event.error
                ended.duration_s = event.duration_s
        elif isinstance(event, FinalAnswer):
            run.final_answer = event.answer
            run.final_source = event.source
            run.final_iteration = event.iteration
            if event.source != "forced":
                self.iteration(run, event.iteration, event.timestamp).final_answer = event.answer
        elif isinstance(event, HistoryCompacted):
            run.compactions.append(event)
        elif isinstance(event, RunFinished):
            run.result = event.result
            run.ended_at = event.timestamp
        elif isinstance(event, RunFailed):
            run.error_type = event.error_type
            run.error = event.error
            run.ended_at = event.timestamp

    def start_run(self, event: RunStarted) -> None:
        run = RunRecord(
            run_id=event.run_id,
            parent_run_id=event.parent_run_id,
            parent_subcall_id=event.parent_subcall_id,
            depth=event.depth,
            started=event,
            events=[event],
        )
        self.runs[event.run_id] = run
        parent = self.runs.get(event.parent_run_id) if event.parent_run_id else None
        if parent is None:
            self.roots.append(run)
            return
        parent.children.append(run)
        sub = self.subcalls.get(event.parent_subcall_id) if event.parent_subcall_id else None
        if sub is not None:
            sub.child = run

    def call_started(self, run: RunRecord, event: ModelCallStarted) -> None:
        call = ModelCallRecord(
            call_id=event.call_id,
            model=event.model,
            provider=event.provider,
            purpose=event.purpose,
            iteration=event.iteration,
            subcall_id=event.subcall_id,
            started_at=event.timestamp,
            message_count=event.message_count,
            prompt_chars=event.prompt_chars,
            last_message=event.last_message,
            request=event.request,
        )
        self.calls[event.call_id] = call
        sub = self.subcalls.get(event.subcall_id) if event.subcall_id else None
        if sub is not None:
            sub.model_calls.append(call)
            return
        run.model_calls.append(call)
        if event.purpose == "final":
            run.final_request = call
        elif event.purpose == "root" and event.iteration is not None:
            it = self.iteration(run, event.iteration, event.timestamp)
            if it.model_call is None:
                it.model_call = call

    def call_finished(self, event: ModelCallFinished) -> None:
        call = self.calls.get(event.call_id)
        if call is None:
            return
        call.finished = True
        call.finished_at = event.timestamp
        call.response_model = event.response_model
        call.usage = event.usage
        call.cost_usd = event.cost_usd
        call.latency_s = event.latency_s
        call.finish_reason = event.finish_reason
        call.text = event.text
        call.text_chars = event.text_chars
        call.error_type = event.error_type
        call.error = event.error
        call.reply = event.reply

    def code_executed(self, run: RunRecord, event: CodeExecuted) -> None:
        code = self.codes.get(event.exec_id)
        if code is None:
            code = CodeRecord(
                exec_id=event.exec_id,
                iteration=event.iteration,
                index=event.index,
                code=event.code,
                started_at=event.timestamp - event.duration_s,
            )
            self.codes[event.exec_id] = code
            self.iteration(run, event.iteration, event.timestamp).code.append(code)
        code.finished = True
        code.stdout = event.stdout
        code.stderr = event.stderr
        code.error = event.error
        code.duration_s = event.duration_s
        code.restarted = event.restarted

    def subcall_started(self, run: RunRecord, event: SubcallStarted) -> None:
        sub = SubcallRecord(
            subcall_id=event.subcall_id,
            run_id=event.run_id,
            exec_id=event.exec_id,
            recursive=event.recursive,
            model=event.model,
            prompt=event.prompt,
            prompt_chars=event.prompt_chars,
            batch_index=event.batch_index,
            batch_size=event.batch_size,
            started_at=event.timestamp,
        )
        self.subcalls[event.subcall_id] = sub
        code = self.codes.get(event.exec_id) if event.exec_id else None
        if code is not None:
            code.subcalls.append(sub)
        else:
            run.stray_subcalls.append(sub)


def build_runs(events: Iterable[Event]) -> tuple[list[RunRecord], dict[str, RunRecord]]:
    """Fold events, in order, into run trees: (root runs, every run by id)."""
    builder = _Builder()
    for event in events:
        builder.add(event)
    return builder.roots, builder.runs


def load_trajectory(path: str | os.PathLike[str]) -> Trajectory:
    """Read a trajectory file and rebuild its runs.

    Raises `TrajectoryError` (with what to do next) when the file is missing or garbled.
    A cut-off last line is left out and `Trajectory.truncated` set; runs the file ends
    in the middle of have `status == "incomplete"`.
    """
    events, truncated = read_events(path)
    roots, by_id = build_runs(events)
    return Trajectory(path=Path(path), events=events, runs=roots, by_id=by_id, truncated=truncated)
