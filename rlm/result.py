"""`RLMResult` and the records of what a run did."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from rlm.budget import ModelUsage
from rlm.providers.base import Usage

StopReason = Literal["final", "max_iterations", "budget", "deadline", "cancelled", "error"]


@dataclass(frozen=True, slots=True)
class CodeExecution:
    """One code block the model wrote and what running it produced.

    `stdout`/`stderr` are what the process printed (already cut to the configured size;
    `stdout_chars`/`stderr_chars` give the true lengths); `error` is the traceback, or a
    one-line note when the worker died. `restarted` is set when the REPL had to start a
    fresh worker afterwards (variables were lost).
    """

    code: str
    stdout: str
    stderr: str
    error: str | None
    duration_s: float
    stdout_chars: int = 0
    stderr_chars: int = 0
    restarted: bool = False


@dataclass(frozen=True, slots=True)
class ResumeInfo:
    """How a resumed run was put together (`RLMResult.resumed`).

    `replayed_calls` model calls were answered from `trajectory` (their usage and cost are
    in the result's totals: the result covers the whole run), `live_calls` were made
    now. `replayed_tool_calls` tool calls were answered from the file too (the tools
    were not called). `differences` lists the places where code run again printed
    something other than in the recording, or called a tool differently (see
    `rlm.replay`).
    """

    trajectory: str
    replayed_calls: int
    live_calls: int
    differences: tuple[str, ...] = ()
    replayed_tool_calls: int = 0


@dataclass(frozen=True, slots=True)
class Iteration:
    """One turn of the loop: the model's reply and the code it ran."""

    index: int
    response: str
    executions: tuple[CodeExecution, ...]
    final_answer: str | None
    usage: Usage
    duration_s: float


@dataclass(frozen=True, slots=True)
class RLMResult:
    """The outcome of a run.

    `answer` is the final answer's text, or None when the run stopped without one (a
    budget, deadline, cancellation or error stop before the model answered); `output` is
    the answer as a value: with `output_type`, a validated instance of it; without, the
    value given to `FINAL`/`FINAL_VAR` (a dict stays a dict, and `answer` is its JSON)
    or the text. `tool_calls` counts calls of user tools. `stop_reason` says
    why it stopped and `limit` names the budget limit when one was hit. Token totals,
    `usage` (by model) and `cost_usd` cover the whole run tree: every sub-call and child
    run. `cost_usd` is None when any model used has no known price.

    `resolved_variable` is set when the model answered `FINAL(name)` with the bare name
    of an existing REPL variable: the answer is that variable's value. `from_prose` is
    set when the reply to the last-answer request (after `max_iterations`) had no answer
    that could be resolved, so `answer` is that reply's text outside code: a best effort.
    `resumed` is set on the result of `rlm.resume` (see `ResumeInfo`).
    """

    answer: str | None
    stop_reason: StopReason
    iterations: int
    total_input_tokens: int
    total_output_tokens: int
    code_executions: int
    sub_calls: int
    history: tuple[Iteration, ...]
    usage: Mapping[str, ModelUsage] = field(default_factory=dict)
    cost_usd: float | None = None
    duration_s: float = 0.0
    run_id: str = ""
    limit: str | None = None
    error: str | None = None
    resolved_variable: str | None = None
    from_prose: bool = False
    output: Any = None
    tool_calls: int = 0
    resumed: ResumeInfo | None = None

    @property
    def ok(self) -> bool:
        """True when the run ended with an answer (from FINAL or the last-turn request)."""
        return self.answer is not None and self.stop_reason in ("final", "max_iterations")

    @property
    def total_usage(self) -> Usage:
        total = Usage()
        for entry in self.usage.values():
            total = total + entry.usage
        return total
