"""What the `rlm` command line prints and returns (`rlm.cli` parses the arguments).

The exit codes, one-line errors and notes on stderr, the line that sums up a result, the
demo's live view of a run, and `rlm run`'s report of its result (the answer on stdout,
or the whole result as JSON).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from typing import Any, TextIO

from rlm._serde import to_jsonable
from rlm.errors import BudgetExceeded, ConfigurationError, ProviderError
from rlm.events import (
    CodeExecuted,
    Event,
    FinalAnswer,
    IterationStarted,
    ModelCallFinished,
    SubcallStarted,
)
from rlm.result import ResumeInfo, RLMResult

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_PROVIDER = 3
EXIT_BUDGET = 4
EXIT_INTERRUPTED = 130

PROG = "rlm"


def one_line(text: object) -> str:
    return " ".join(str(text).split())


def error(message: object, stream: TextIO | None = None) -> None:
    print(f"{PROG}: error: {one_line(message)}", file=stream or sys.stderr)


def note(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _format_cost(value: float | None) -> str:
    return "cost n/a" if value is None else f"${value:.4f}"


def result_line(result: RLMResult) -> str:
    """One line about a result: stop reason, iterations, sub-calls, tokens, cost, time."""
    return (
        f"stop: {result.stop_reason}"
        + (f" ({result.limit})" if result.limit else "")
        + f" · {result.iterations} iteration{'s' if result.iterations != 1 else ''}"
        + f" · {result.sub_calls} sub-call{'s' if result.sub_calls != 1 else ''}"
        + f" · {result.total_input_tokens:,} in / {result.total_output_tokens:,} out tokens"
        + f" · {_format_cost(result.cost_usd)} · {result.duration_s:.1f} s"
        + (_resumed_part(result.resumed) if result.resumed is not None else "")
    )


def _resumed_part(info: ResumeInfo) -> str:
    differences = len(info.differences)
    return (
        f" · resumed: {info.replayed_calls} call{'s' if info.replayed_calls != 1 else ''}"
        f" replayed, {info.live_calls} live"
        + (f", {info.replayed_tool_calls} tool calls replayed" if info.replayed_tool_calls else "")
        + (f", {differences} difference{'s' if differences != 1 else ''}" if differences else "")
    )


def exit_code_for(result: RLMResult) -> int:
    if result.stop_reason in ("budget", "deadline"):
        return EXIT_BUDGET
    if result.stop_reason == "cancelled":
        return EXIT_INTERRUPTED
    if result.answer is None or result.stop_reason == "error":
        return EXIT_ERROR
    return EXIT_OK


def exit_code_for_error(exc: BaseException) -> int:
    if isinstance(exc, ConfigurationError):
        return EXIT_USAGE
    if isinstance(exc, ProviderError):
        return EXIT_PROVIDER
    if isinstance(exc, BudgetExceeded):
        return EXIT_BUDGET
    return EXIT_ERROR


def describe_error(exc: BaseException) -> str:
    if isinstance(exc, ProviderError):
        return f"provider failure ({type(exc).__name__}): {exc}"
    if isinstance(exc, ConfigurationError):
        return str(exc)
    return f"{type(exc).__name__}: {exc}"


class DemoPrinter:
    """Prints the demo's iterations, code and output to stdout as they happen."""

    def __init__(self, out: TextIO) -> None:
        from rich.console import Console

        self.console = Console(file=out, soft_wrap=True, highlight=False)
        self.subcalls = 0
        self.sub_model = ""

    def say(self, text: str, style: str | None = None) -> None:
        self.console.print(text, style=style, markup=False)

    def __call__(self, event: Event) -> None:
        if event.depth != 0:
            return
        if isinstance(event, IterationStarted):
            self.subcalls = 0
            self.console.rule(f"iteration {event.iteration}", style="cyan")
        elif isinstance(event, ModelCallFinished) and event.purpose == "root":
            prose = _prose(event.text)
            if prose:
                self.say(f"model: {prose}", "italic")
        elif isinstance(event, SubcallStarted):
            self.subcalls += 1
            self.sub_model = event.model
        elif isinstance(event, CodeExecuted):
            from rich.syntax import Syntax

            self.console.print(
                Syntax(event.code, "python", theme="ansi_dark", background_color="default")
            )
            if self.subcalls:
                self.say(f"({self.subcalls} sub-calls to {self.sub_model})", "dim")
            output = event.stdout.rstrip("\n")
            if output:
                self.say(_indent(output, "  │ "), "green")
            if event.error:
                self.say(_indent(event.error.rstrip(), "  │ "), "red")
        elif isinstance(event, FinalAnswer):
            self.say(f"FINAL answer given ({event.how}): {event.answer}", "bold")


def _prose(text: str) -> str:
    """A reply's text outside code fences, on one line."""
    return one_line(re.sub(r"```.*?(?:```|$)", " ", text, flags=re.S))


def _indent(text: str, prefix: str) -> str:
    lines = text.splitlines()
    if len(lines) > 40:
        lines = [*lines[:20], f"... {len(lines) - 40} lines ...", *lines[-20:]]
    return "\n".join(prefix + line[:300] + ("…" if len(line) > 300 else "") for line in lines)


def report(
    args: argparse.Namespace, result: RLMResult | None, code: int, failure: BaseException | None
) -> None:
    if failure is not None:
        error(describe_error(failure))
    if args.json:
        payload: dict[str, Any] = to_jsonable(result) if result is not None else {}
        payload["ok"] = bool(result is not None and result.ok and code == EXIT_OK)
        payload["exit_code"] = code
        if failure is not None:
            payload["error_type"] = type(failure).__name__
            payload["error"] = payload.get("error") or one_line(failure)
        print(json.dumps(payload, ensure_ascii=False, indent=2))
        return
    if result is None:
        return
    if failure is not None:
        if args.trajectory:
            note(f"trajectory: {args.trajectory} (view with: rlm view {args.trajectory})")
        return
    if result.answer is not None:
        print(result.answer)
    if not args.quiet or code != EXIT_OK:
        note(result_line(result))
    for difference in result.resumed.differences if result.resumed is not None else ():
        first = difference.splitlines()[0] if difference else ""
        note(f"note: re-running recorded code gave other output at {first}")
    if code == EXIT_BUDGET:
        note(f"the budget ran out ({result.limit or result.stop_reason}) before a final answer")
    elif code == EXIT_OK and result.stop_reason == "max_iterations":
        note("note: the run hit --max-iterations; the answer is the model's best guess")
    elif result.answer is None and failure is None and code == EXIT_ERROR:
        note(f"no answer{': ' + result.error if result.error else ''}")
    if args.trajectory:
        note(f"trajectory: {args.trajectory} (view with: rlm view {args.trajectory})")
