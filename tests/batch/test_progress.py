"""The batch bar: done, failed, running and cost, drawn on a terminal only."""

from __future__ import annotations

import io

from rich.console import Console

from rlm.batch.outcome import Outcome
from rlm.batch.progress import BatchProgress
from rlm.result import RLMResult


def result(cost: float) -> RLMResult:
    return RLMResult(
        answer="a",
        stop_reason="final",
        iterations=1,
        total_input_tokens=1,
        total_output_tokens=1,
        code_executions=0,
        sub_calls=0,
        history=(),
        cost_usd=cost,
    )


def test_the_bar_counts_done_failed_running_and_cost() -> None:
    out = io.StringIO()
    console = Console(file=out, force_terminal=True, width=150)
    with BatchProgress(5, resumed=1, resumed_cost=0.5, console=console) as bar:
        for _ in range(3):
            bar.started()
        bar.finished(Outcome(1, "b", "finished", result(0.25)))
        bar.finished(Outcome(2, "c", "failed", None, "boom"))
        assert (bar.done, bar.failed, bar.running) == (3, 1, 1)
        assert bar.line() == "batch: 3/5 done, 1 failed, 1 running, $0.7500"
    drawn = out.getvalue()
    assert "3/5" in drawn and "1 failed" in drawn and "$0.7500" in drawn


def test_nothing_is_drawn_off_a_terminal() -> None:
    out = io.StringIO()
    with BatchProgress(2, console=Console(file=out, force_terminal=False)) as bar:
        bar.started()
        bar.finished(Outcome(0, "a", "finished", result(0.1)))
    assert out.getvalue() == ""
