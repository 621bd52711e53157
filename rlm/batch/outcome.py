"""The values of a batch: `BatchItem` in, an `Outcome` per item, a `BatchReport` out."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal, TypeAlias

from rlm.budget import ModelUsage
from rlm.providers.base import Usage
from rlm.result import RLMResult

Status: TypeAlias = Literal["finished", "failed", "stopped", "not_run"]


@dataclass(frozen=True, slots=True)
class BatchItem:
    """One query of a batch. `id` names it in the results file (default: its position)."""

    query: str
    context: object
    id: str | None = None


@dataclass(frozen=True, slots=True)
class Outcome:
    """What became of one item.

    `status`: "finished" (the run returned a result, whatever its stop reason),
    "failed" (the run raised: `error` says why, `result` is the partial result when the
    error carried one), "stopped" (the batch's `total_budget` ran out during the run),
    "not_run" (the batch ended before the item started). Only "finished" items are
    skipped when the batch is started again with the same results file. `attempts` is
    more than 1 when an executor ran the item again (a Ray worker was lost).
    """

    index: int
    id: str
    status: Status
    result: RLMResult | None = None
    error: str | None = None
    attempts: int = 1


@dataclass(frozen=True, slots=True)
class BatchFailure:
    """A failed item: its position, id, error and partial result (None if there was none)."""

    index: int
    id: str
    error: str
    result: RLMResult | None = None


@dataclass(frozen=True, slots=True)
class BatchReport:
    """The outcome of a batch.

    - `results[i]`: the `RLMResult` of item i (input order): the partial one for an item
      that failed, None for an item that never started (or failed without a result).
    - `failed`: the items whose run raised, with their errors.
    - `not_run`: ids of the items never started (the total budget was spent first).
    - `stopped`: ids of the items the total budget stopped while they ran.
    - `retried`: ids of items an executor had to start again, with their attempt count.
    - `resumed`: how many results were read back from the results file, not run.
    - `usage` (by model) and `cost_usd` total every result, read-back ones included;
      `cost_usd` is None when a model used has no known price.
    """

    results: tuple[RLMResult | None, ...]
    ids: tuple[str, ...]
    failed: tuple[BatchFailure, ...] = ()
    not_run: tuple[str, ...] = ()
    stopped: tuple[str, ...] = ()
    retried: Mapping[str, int] = field(default_factory=dict)
    resumed: int = 0
    usage: Mapping[str, ModelUsage] = field(default_factory=dict)
    cost_usd: float | None = None
    duration_s: float = 0.0

    @property
    def answers(self) -> list[str | None]:
        """Each item's answer (None where there is none), in input order."""
        return [r.answer if r is not None else None for r in self.results]

    @property
    def total_usage(self) -> Usage:
        total = Usage()
        for entry in self.usage.values():
            total = total + entry.usage
        return total


def summarize(
    ids: tuple[str, ...], outcomes: Mapping[int, Outcome], *, resumed: int, duration_s: float
) -> BatchReport:
    """The report of a batch from the outcome of each position (missing: not run)."""
    results: list[RLMResult | None] = []
    failed: list[BatchFailure] = []
    not_run: list[str] = []
    stopped: list[str] = []
    retried: dict[str, int] = {}
    by_model: dict[str, tuple[Usage, float | None]] = {}
    for index, item_id in enumerate(ids):
        outcome = outcomes.get(index)
        if outcome is None or outcome.status == "not_run":
            results.append(None)
            not_run.append(item_id)
            continue
        results.append(outcome.result)
        if outcome.status == "failed":
            failed.append(
                BatchFailure(index, item_id, outcome.error or "unknown error", outcome.result)
            )
        elif outcome.status == "stopped":
            stopped.append(item_id)
        if outcome.attempts > 1:
            retried[item_id] = outcome.attempts
        if outcome.result is not None:
            for name, entry in outcome.result.usage.items():
                so_far, cost = by_model.get(name, (Usage(), 0.0))
                priced = cost is not None and entry.cost_usd is not None
                by_model[name] = (
                    so_far + entry.usage,
                    cost + entry.cost_usd if priced else None,  # type: ignore[operator]
                )
    usage = {name: ModelUsage(usage=u, cost_usd=c) for name, (u, c) in by_model.items()}
    costs = [entry.cost_usd for entry in usage.values()]
    return BatchReport(
        results=tuple(results),
        ids=ids,
        failed=tuple(failed),
        not_run=tuple(not_run),
        stopped=tuple(stopped),
        retried=retried,
        resumed=resumed,
        usage=usage,
        cost_usd=None if any(c is None for c in costs) else sum(c or 0.0 for c in costs),
        duration_s=duration_s,
    )
