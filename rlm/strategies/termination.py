"""Termination strategies: after each iteration, decide whether the run stops, and why.

The engine builds a `RunState` after every iteration (and when a budget limit stops a
model call) and asks its `TerminationStrategy`. The default, `default_termination()`, is
`AnyOf(FinalAnswerReached(), BudgetLimit(), DeadlineLimit(), NoProgress(),
MaxIterations())`. Subclass `TerminationStrategy` to add a rule, and combine with
`AnyOf(default_termination(), MyRule())`.

Whatever strategy is configured, the engine still ends a run on a final answer, on an
exhausted budget and at `max_iterations`: a strategy can stop a run earlier, never keep
it going past those.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

from rlm.budget import Budget
from rlm.providers.base import Usage
from rlm.result import StopReason


@dataclass(frozen=True, slots=True)
class RunState:
    """What a termination strategy sees after an iteration.

    `errors` holds, per finished iteration, the last code error of that iteration (None
    when its code ran cleanly or it ran no code), oldest first.
    """

    iteration: int
    max_iterations: int
    depth: int
    final_answer: str | None
    usage: Usage
    cost_usd: float | None
    subcalls: int
    elapsed_s: float
    budget: Budget
    exceeded_limit: str | None
    exceeded_message: str | None
    errors: tuple[str | None, ...]


@dataclass(frozen=True, slots=True)
class Stop:
    """A decision to stop. `ask_for_final` makes the engine request one last answer."""

    reason: StopReason
    detail: str = ""
    limit: str | None = None
    ask_for_final: bool = False


class TerminationStrategy(ABC):
    """Decides whether a run stops. Implement `check`; return None to go on."""

    @abstractmethod
    def check(self, state: RunState) -> Stop | None:
        """Return a `Stop` to end the run now, or None to continue."""


class FinalAnswerReached(TerminationStrategy):
    """Stop once the model gave a final answer."""

    def check(self, state: RunState) -> Stop | None:
        if state.final_answer is not None:
            return Stop("final", "the model gave its final answer")
        return None


class MaxIterations(TerminationStrategy):
    """Stop after `max_iterations` (the run's setting unless `limit` is given) and ask
    the model once for its best answer."""

    def __init__(self, limit: int | None = None) -> None:
        self.limit = limit

    def check(self, state: RunState) -> Stop | None:
        limit = self.limit if self.limit is not None else state.max_iterations
        if state.iteration >= limit:
            return Stop("max_iterations", f"reached {limit} iterations", ask_for_final=True)
        return None


class BudgetLimit(TerminationStrategy):
    """Stop when a token, cost or sub-call limit of the `Budget` is reached."""

    def check(self, state: RunState) -> Stop | None:
        if state.exceeded_limit is not None and state.exceeded_limit != "max_seconds":
            return Stop("budget", state.exceeded_message or "", limit=state.exceeded_limit)
        return None


class DeadlineLimit(TerminationStrategy):
    """Stop when the `Budget.max_seconds` deadline has passed."""

    def check(self, state: RunState) -> Stop | None:
        if state.exceeded_limit == "max_seconds" or (
            state.budget.max_seconds is not None and state.elapsed_s >= state.budget.max_seconds
        ):
            return Stop(
                "deadline", state.exceeded_message or "the deadline passed", limit="max_seconds"
            )
        return None


class NoProgress(TerminationStrategy):
    """Stop when the same code error came back `repeats` iterations in a row."""

    def __init__(self, repeats: int = 4) -> None:
        if repeats < 2:
            raise ValueError("NoProgress(repeats=...) needs at least 2")
        self.repeats = repeats

    def check(self, state: RunState) -> Stop | None:
        recent = state.errors[-self.repeats :]
        if len(recent) < self.repeats or recent[0] is None:
            return None
        last_line = _last_line(recent[0])
        if all(e is not None and _last_line(e) == last_line for e in recent):
            return Stop(
                "error",
                f"the same error {self.repeats} times in a row: {last_line}",
            )
        return None


def _last_line(error: str) -> str:
    lines = [line for line in error.strip().splitlines() if line.strip()]
    return lines[-1].strip() if lines else ""


class AnyOf(TerminationStrategy):
    """Stop as soon as any of the strategies says so (the first one listed wins)."""

    def __init__(self, *strategies: TerminationStrategy) -> None:
        self.strategies = strategies

    def check(self, state: RunState) -> Stop | None:
        for strategy in self.strategies:
            stop = strategy.check(state)
            if stop is not None:
                return stop
        return None


def default_termination() -> TerminationStrategy:
    """The strategy used when none is given."""
    return AnyOf(
        FinalAnswerReached(), BudgetLimit(), DeadlineLimit(), NoProgress(), MaxIterations()
    )
