"""What the loop does with a reply: its code blocks run, its final marker resolved, and
the last-answer request once the run is out of iterations.

These read and update one run through the `ReplyRun` protocol (the engine's `_Run` in
`rlm/loop.py`), so this module does not import the loop.
"""

from __future__ import annotations

from typing import Literal, Protocol

from rlm import prompts
from rlm.errors import BudgetExceeded, ProviderError
from rlm.events import CodeExecuted, CodeStarted, FinalAnswer, ReplViolation, clip, new_id
from rlm.model_calls import ModelCallRun, call_model
from rlm.output import Answer, FinalValue, InvalidOutput, OutputSpec
from rlm.providers.base import (
    Message,
    Model,
    ModelInfo,
)
from rlm.repl.base import ExecutionResult, Repl
from rlm.result import CodeExecution
from rlm.strategies.parsing import FinalMarker, ParsedReply, ParsingStrategy


class ReplyConfig(Protocol):
    """The run tree's settings these read."""

    @property
    def parsing(self) -> ParsingStrategy: ...

    @property
    def max_output_chars(self) -> int: ...


class ReplyRun(ModelCallRun, Protocol):
    """The run whose reply is read."""

    iteration: int
    fatal: BaseException | None
    current_exec_id: str | None
    resolved_variable: str | None
    from_prose: bool
    output: OutputSpec
    model: Model
    model_info: ModelInfo

    @property
    def config(self) -> ReplyConfig: ...


async def run_blocks(
    run: ReplyRun, repl: Repl, parsed: ParsedReply
) -> tuple[list[CodeExecution], list[str], FinalValue | None, Literal["code", "text"], str | None]:
    executions: list[CodeExecution] = []
    outputs: list[str] = []
    last_error: str | None = None
    for index, block in enumerate(parsed.code_blocks, start=1):
        exec_id = new_id()
        await run.emit(
            CodeStarted(
                **run._base(),
                exec_id=exec_id,
                iteration=run.iteration,
                index=index,
                code=block.code,
            )
        )
        run.current_exec_id = exec_id
        try:
            result = await repl.execute(block.code)
        finally:
            run.current_exec_id = None
        run.ledger.record_execution()
        if result.violation is not None:
            await report_violation(run, exec_id, result.violation, result.error)
        await run.emit(
            CodeExecuted(
                **run._base(),
                exec_id=exec_id,
                iteration=run.iteration,
                index=index,
                code=block.code,
                stdout=clip(result.stdout),
                stderr=clip(result.stderr),
                error=result.error,
                duration_s=result.duration_s,
                restarted=result.restarted,
            )
        )
        executions.append(record(block.code, result))
        outputs.append(prompts.format_execution(index, result, run.config.max_output_chars))
        if result.error:
            last_error = result.error
        if result.final is not None:
            final = FinalValue(result.final, result.final_json)
            return executions, outputs, final, "code", last_error
        if run.fatal is not None:
            break
    return executions, outputs, None, "code", last_error


async def report_violation(
    run: ReplyRun, exec_id: str | None, limit: str, message: str | None
) -> None:
    await run.emit(
        ReplViolation(**run._base(), exec_id=exec_id, limit=limit, message=message or "")
    )


async def resolve_marker(
    run: ReplyRun, repl: Repl, marker: FinalMarker
) -> tuple[FinalValue | None, str | None, str | None]:
    """(answer, note for the model when there is none, the variable a bare
    `FINAL(name)` was read from)."""
    name = marker.bare_name
    if name is not None:
        found = await repl.lookup_variable(name)
        if found.value is not None:
            return FinalValue(found.value, found.json), None, name
    if marker.kind == "answer":
        return FinalValue(marker.value), None, None
    lookup = await repl.lookup_variable(marker.value)
    if lookup.violation is not None:
        await report_violation(run, None, lookup.violation, lookup.error)
    if lookup.value is not None:
        return FinalValue(lookup.value, lookup.json), None, None
    return None, lookup.error, None


async def ask_for_final(run: ReplyRun, repl: Repl, messages: list[Message]) -> Answer | None:
    """One last request for the answer when the run is out of iterations.

    Code in the reply runs first (a model may compute the answer there), in the same
    REPL and under the same budget; then the marker is resolved. Failing both, the
    reply's prose is the answer, flagged `from_prose`. With an output type, an
    answer that does not validate is no answer (no output rather than an invalid one).
    """
    parsing = run.config.parsing
    ask = prompts.LAST_ITERATION_TOOLS if parsing.tools() else prompts.LAST_ITERATION
    request = [*messages, Message("user", ask)]
    try:
        response = await call_model(
            run, run.model, run.model_info, request, purpose="final", tools=parsing.tools()
        )
    except (BudgetExceeded, ProviderError):
        return None
    _, _, final, _, _ = await run_blocks(run, repl, parsing.parse(response))
    if run.fatal is not None:
        raise run.fatal
    if final is None:
        marker = parsing.parse_last_answer(response)
        if marker is not None:
            final, _, run.resolved_variable = await resolve_marker(run, repl, marker)
    if final is None:
        prose = parsing.prose(response)
        final = FinalValue(prose) if prose else None
        run.from_prose = final is not None
    try:
        answer = run.output.accept(final) if final is not None else None
    except InvalidOutput:
        answer = None
    if answer is not None:
        await run.emit(
            FinalAnswer(
                **run._base(),
                answer=answer.text,
                source="forced",
                iteration=run.iteration,
                resolved_variable=run.resolved_variable,
                from_prose=run.from_prose,
            )
        )
    return answer


def record(code: str, result: ExecutionResult) -> CodeExecution:
    return CodeExecution(
        code=code,
        stdout=result.stdout,
        stderr=result.stderr,
        error=result.error,
        duration_s=result.duration_s,
        stdout_chars=result.stdout_chars,
        stderr_chars=result.stderr_chars,
        restarted=result.restarted,
    )
