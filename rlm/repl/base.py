"""The `Repl` protocol: where the model's code runs, and what it can call back into.

The engine starts one REPL per run with the run's context and a `ReplHost`. Code in the
REPL sees `context`, `llm_query`, `llm_query_batched`, `rlm_query`, `rlm_query_batched`,
`FINAL`, `FINAL_VAR` and `SHOW_VARS` (see `HELPER_NAMES`), plus a stub per user tool
(`ToolStub`); the sub-call helpers and the tool stubs forward to the host, which runs on
the engine's event loop (a tool's function never enters the REPL). Implementations: `InProcessRepl`
(fast, trusted code only) and `SubprocessRepl` (isolated worker process, the default).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

from rlm.repl.helpers import HELPER_NAMES as HELPER_NAMES
from rlm.repl.helpers import RESERVED_NAMES as RESERVED_NAMES
from rlm.repl.helpers import LLMQueryError as LLMQueryError
from rlm.repl.helpers import ToolError as ToolError
from rlm.repl.helpers import missing_variable_message as missing_variable_message


@dataclass(frozen=True, slots=True)
class ToolStub:
    """What the REPL knows of a tool: enough to make a function that calls the host."""

    name: str
    signature: str
    description: str = ""
    #: `Name = {field: type, ...}` of the models and records the signature names.
    shapes: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class ExecutionResult:
    """What running one code block produced.

    `stdout`/`stderr` are the captured text (bounded: `*_chars` give the true lengths);
    `error` is the traceback (line numbers point into the block) or a one-line note when
    the worker died; `final` is the answer text given with `FINAL`/`FINAL_VAR` in this
    block, and `final_json` the JSON of that value when it was not a str (see
    `rlm.repl.values.answer_parts`); `restarted` says a fresh worker replaced a dead
    one, so the variables were lost; `violation` names the host's bound the worker
    broke when that was why (see `ReplLimits`: "frame_bytes", "bytes_in_flight",
    "pending_calls", "json_depth", "answer_chars", or "protocol" for a message that is
    not one).
    """

    stdout: str
    stderr: str
    error: str | None
    duration_s: float
    final: str | None = None
    final_json: str | None = None
    stdout_chars: int = 0
    stderr_chars: int = 0
    restarted: bool = False
    violation: str | None = None


@dataclass(frozen=True, slots=True)
class VariableLookup:
    """The text of a REPL variable for `FINAL_VAR` (and its JSON, as for `final_json`),
    or why there is none (`violation` as in `ExecutionResult`)."""

    value: str | None
    error: str | None = None
    violation: str | None = None
    json: str | None = None


class ReplHost(Protocol):
    """The engine side of the sub-call helpers and tools.

    Sub-call failures raise `LLMQueryError`; tool failures raise `ToolError`. The
    REPL makes a function for each of `tool_stubs` that calls `call_tool` with JSON
    arguments and gets a JSON value back. (A host without these two members offers no
    tools.)
    """

    @property
    def tool_stubs(self) -> Sequence[ToolStub]: ...

    async def call_tool(self, name: str, args: list[Any], kwargs: dict[str, Any]) -> Any: ...

    async def llm_query(self, prompt: str, model: str | None = None) -> str: ...

    async def llm_query_batched(
        self, prompts: Sequence[str], model: str | None = None
    ) -> list[str]: ...

    async def rlm_query(self, prompt: str, model: str | None = None) -> str: ...

    async def rlm_query_batched(
        self, prompts: Sequence[str], model: str | None = None
    ) -> list[str]: ...


@runtime_checkable
class Repl(Protocol):
    """A persistent Python namespace holding `context`, driven by the engine.

    `start` is called once per run; `execute` once per code block, in order; `close`
    always, even when the run fails. `execute` never raises for errors in the model's
    code: they come back in `ExecutionResult.error`.

    The engine runs `start` as a task beside the run's first model call, so it may be
    cancelled part-way (the run ended before the model wrote any code); `close` is
    called after it all the same. An exception from `start` ends the run with it.
    """

    async def start(self, context: object, host: ReplHost) -> None: ...

    async def execute(self, code: str) -> ExecutionResult: ...

    async def lookup_variable(self, name: str) -> VariableLookup: ...

    async def close(self) -> None: ...


ReplFactory = Callable[[], Repl]


def host_tools(host: ReplHost) -> tuple[ToolStub, ...]:
    """The tools `host` offers (none for a host written before tools existed)."""
    return tuple(getattr(host, "tool_stubs", ()))


@runtime_checkable
class MultiContextRepl(Repl, Protocol):
    """A REPL that can take more contexts after `start` (a `Session`'s `context_1`, ...).

    `add_context` loads `value` under `name` beside the first `context`; the REPL keeps
    every context it was given, so a worker that is replaced gets all of them again.
    """

    async def add_context(self, name: str, value: object) -> None: ...
