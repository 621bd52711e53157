"""A run tree rebuilt from events: `RunRecord` and the records of what a run did.

`build_runs` folds events, in the order they happened, into one `RunRecord` per run
(children under the sub-call that started them), each with its iterations, model calls,
code blocks, sub-calls and tool calls. It is the one place events become a tree:
`rlm.telemetry.trajectory.load_trajectory` uses it for a file, the viewer
(`rlm.viewer.tree`) for its page. Records are importable from `rlm.telemetry` too.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Literal

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
)
from rlm.providers.base import ModelPurpose, ModelRequest, ModelResponse, Usage
from rlm.result import RLMResult

__all__ = [
    "CodeRecord",
    "IterationRecord",
    "ModelCallRecord",
    "RunRecord",
    "SubcallRecord",
    "ToolCallRecord",
    "build_runs",
]


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
