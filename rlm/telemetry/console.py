"""A live terminal view of runs (`verbose=True`)."""

from __future__ import annotations

import sys

from rlm.events import CodeExecuted, Event, FinalAnswer, IterationStarted, RunFinished


class ConsoleView:
    """Prints iterations, code, output and the result to stderr."""

    def __call__(self, event: Event) -> None:
        indent = "  " * event.depth
        if isinstance(event, IterationStarted):
            print(f"{indent}-- iteration {event.iteration}", file=sys.stderr)
        elif isinstance(event, CodeExecuted):
            print(f"{indent}>>> {event.code}", file=sys.stderr)
            if event.stdout:
                print(f"{indent}{event.stdout[:2000]}", file=sys.stderr)
            if event.error:
                print(f"{indent}{event.error[-2000:]}", file=sys.stderr)
        elif isinstance(event, FinalAnswer):
            print(f"{indent}FINAL: {event.answer[:2000]}", file=sys.stderr)
        elif isinstance(event, RunFinished):
            r = event.result
            print(
                f"{indent}stopped: {r.stop_reason} after {r.iterations} iterations", file=sys.stderr
            )
