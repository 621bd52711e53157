"""`Budget` limits and the `Ledger` that a run and all its child runs share.

A budget is checked before every model call starts (root, sub-call or child run): once a
limit is reached no new call starts. Calls already in flight are allowed to finish and
their usage is counted, so the spend can exceed a token or cost limit by at most the
calls that were already running when it was crossed.

Several runs can share one budget: make a `Ledger` and pass it to each run as
`ledger=` (a batch does this with `total_budget=`). Every run's usage also counts in the
shared ledger, and every check looks at both, so once the shared budget is spent no
new model call starts in any of the runs:

```python
tenant = rlm.Ledger(rlm.Budget(max_cost_usd=5.0))
results = await asyncio.gather(*(rlm.arun(q, doc, model=m, ledger=tenant) for q in queries))
print(tenant.snapshot().cost_usd)
```
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from rlm.errors import BudgetExceeded, ConfigurationError
from rlm.providers.base import Usage
from rlm.providers.pricing import cost_usd


@dataclass(frozen=True, slots=True)
class Budget:
    """Limits shared by a whole run tree. `None` means unlimited.

    - `max_tokens`: input plus output tokens over every model call.
    - `max_cost_usd`: spend, for models whose price is known.
    - `max_subcalls`: `llm_query`/`rlm_query` calls, counted as they start.
    - `max_seconds`: wall-clock time from the start of the root run (the deadline).
    """

    max_tokens: int | None = None
    max_cost_usd: float | None = None
    max_subcalls: int | None = None
    max_seconds: float | None = None

    def __post_init__(self) -> None:
        for name in ("max_tokens", "max_cost_usd", "max_subcalls", "max_seconds"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int | float) or value < 0):
                raise ConfigurationError(
                    f"Budget({name}={value!r}): use a non-negative number, or None for no limit"
                )


@dataclass(frozen=True, slots=True)
class ModelUsage:
    """Usage and cost of one model over a run tree. `cost_usd` is None when unpriced."""

    usage: Usage
    cost_usd: float | None


@dataclass(frozen=True, slots=True)
class LedgerSnapshot:
    """The ledger's totals at one moment."""

    usage: Usage
    cost_usd: float | None
    known_cost_usd: float
    by_model: Mapping[str, ModelUsage]
    subcalls: int
    executions: int
    elapsed_s: float
    tool_calls: int = 0


CostFn = Callable[[str, Usage], float | None]


@runtime_checkable
class SharedLedger(Protocol):
    """What a run's ledger reports to, and checks, when several runs share a budget.

    `Ledger` is one (in one process); a batch on Ray uses a proxy to a ledger held by a
    Ray actor. `add` takes a call's usage and its cost (None when unpriced).
    """

    def add(self, model: str, usage: Usage, cost: float | None) -> None: ...

    def record_execution(self) -> None: ...

    def start_subcall(self) -> None: ...

    def exceeded(self) -> BudgetExceeded | None: ...

    def remaining_seconds(self) -> float | None: ...


class Ledger:
    """Usage, cost and counters of one run's subtree, checked against the tree's `Budget`.

    The root run owns a ledger; each child run gets `ledger.child()`, whose records also
    count in every ancestor, so a run's snapshot covers its own subtree while every
    limit is checked against the root's totals. Thread-safe.

    `Ledger(budget)` on its own is a budget to share between runs (see the module
    docstring): pass it as `ledger=` to each; a run's ledger given `shared=` reports
    every record to it and stops when it is exceeded. Its clock (for `max_seconds`)
    starts when it is made. `cost_fn` prices usage (default: rlm's price table).
    """

    def __init__(
        self,
        budget: Budget | None = None,
        cost_fn: CostFn = cost_usd,
        clock: Callable[[], float] = time.monotonic,
        *,
        parent: Ledger | None = None,
        shared: SharedLedger | None = None,
    ) -> None:
        if budget is not None and not isinstance(budget, Budget):
            raise ConfigurationError(f"budget must be an rlm.Budget, not {type(budget).__name__}")
        # A Ledger is the usual case: skip the (slow) structural check of the protocol.
        if shared is not None and not isinstance(shared, Ledger | SharedLedger):
            raise ConfigurationError(
                f"ledger must be an rlm.Ledger shared by the runs, not {type(shared).__name__}"
            )
        self.budget = budget or Budget()
        self._cost_fn = cost_fn
        self._clock = clock
        self._parent = parent
        self._root: Ledger = parent._root if parent is not None else self
        self._shared = shared if parent is None else None
        self._started: float = clock() if parent is None else parent.started_at
        self._lock = threading.Lock()
        self._by_model: dict[str, Usage] = {}
        self._cost_by_model: dict[str, float | None] = {}
        self._subcalls = 0
        self._executions = 0
        self._tool_calls = 0
        self._exceeded: BudgetExceeded | None = None

    def child(self) -> Ledger:
        """A ledger for a child run: its own totals, this tree's limits."""
        return Ledger(self.budget, self._cost_fn, self._clock, parent=self)

    def _lineage(self) -> list[Ledger]:
        chain: list[Ledger] = []
        node: Ledger | None = self
        while node is not None:
            chain.append(node)
            node = node._parent
        return chain

    @property
    def started_at(self) -> float:
        return self._started

    def elapsed(self) -> float:
        return self._clock() - self._started

    def remaining_seconds(self) -> float | None:
        """Seconds left before this tree's (or a shared ledger's) deadline; None: none."""
        own = (
            None
            if self.budget.max_seconds is None
            else max(0.0, self.budget.max_seconds - self.elapsed())
        )
        shared = self._root._shared
        other = shared.remaining_seconds() if shared is not None else None
        if own is None or other is None:
            return own if other is None else other
        return min(own, other)

    def record(self, model: str, usage: Usage) -> float | None:
        """Add one call's usage; returns that call's cost (None when the price is unknown)."""
        cost = self._cost_fn(model, usage)
        self.add(model, usage, cost)
        return cost

    def add(self, model: str, usage: Usage, cost: float | None) -> None:
        """Add one call's usage at a cost already worked out (a run sharing this ledger)."""
        for node in self._lineage():
            node._add(model, usage, cost)
        shared = self._root._shared
        if shared is not None:
            shared.add(model, usage, cost)

    def _add(self, model: str, usage: Usage, cost: float | None) -> None:
        with self._lock:
            self._by_model[model] = self._by_model.get(model, Usage()) + usage
            if model not in self._cost_by_model:
                self._cost_by_model[model] = cost
            else:
                previous = self._cost_by_model[model]
                self._cost_by_model[model] = (
                    previous + cost if previous is not None and cost is not None else None
                )

    def record_execution(self) -> None:
        """Count one code execution."""
        for node in self._lineage():
            with node._lock:
                node._executions += 1
        if self._root._shared is not None:
            self._root._shared.record_execution()

    def record_tool_call(self) -> None:
        """Count one call of a user tool."""
        for node in self._lineage():
            with node._lock:
                node._tool_calls += 1

    def start_subcall(self) -> None:
        """Count a sub-call as it starts; raises `BudgetExceeded` past `max_subcalls`."""
        self.check()
        root = self._root
        if root._shared is not None:
            root._shared.start_subcall()
        with root._lock:
            limit = self.budget.max_subcalls
            if limit is not None and root._subcalls >= limit:
                root._exceeded = root._exceeded or BudgetExceeded(
                    "max_subcalls", f"the budget allows {limit} sub-calls and all were used"
                )
                raise root._exceeded
            root._subcalls += 1
        for node in self._lineage()[:-1]:
            with node._lock:
                node._subcalls += 1

    def check(self) -> None:
        """Raise `BudgetExceeded` if any limit is reached: call before a model call starts."""
        exceeded = self.exceeded()
        if exceeded is not None:
            raise exceeded

    def exceeded(self) -> BudgetExceeded | None:
        """The first limit reached in the whole tree, if any (once reached, always),
        or in the ledger this tree shares with other runs."""
        root = self._root
        with root._lock:
            if root._exceeded is not None:
                return root._exceeded
        if root._shared is not None:
            shared = root._shared.exceeded()
            if shared is not None:
                return shared
        budget = self.budget
        if budget.max_seconds is None and budget.max_tokens is None and budget.max_cost_usd is None:
            return None  # nothing to total up (called before every model call)
        snap = root.snapshot()
        found: BudgetExceeded | None = None
        if budget.max_seconds is not None and snap.elapsed_s >= budget.max_seconds:
            found = BudgetExceeded(
                "max_seconds", f"the deadline of {budget.max_seconds:g} s has passed"
            )
        elif budget.max_tokens is not None and snap.usage.total_tokens >= budget.max_tokens:
            found = BudgetExceeded(
                "max_tokens",
                f"{snap.usage.total_tokens} tokens used of a budget of {budget.max_tokens}",
            )
        elif budget.max_cost_usd is not None and snap.known_cost_usd >= budget.max_cost_usd:
            # Unpriced models count as free here; the engine refuses a cost budget for
            # models without a price, so this only matters for odd mixes.
            found = BudgetExceeded(
                "max_cost_usd",
                f"${snap.known_cost_usd:.4f} spent of a budget of ${budget.max_cost_usd:.4f}",
            )
        if found is None:
            return None
        with root._lock:
            root._exceeded = root._exceeded or found
            return root._exceeded

    def snapshot(self) -> LedgerSnapshot:
        """Totals of this ledger's subtree."""
        with self._lock:
            by_model = {
                name: ModelUsage(usage=usage, cost_usd=self._cost_by_model.get(name))
                for name, usage in self._by_model.items()
            }
            subcalls = self._subcalls
            executions = self._executions
            tool_calls = self._tool_calls
        total = Usage()
        known = 0.0
        all_priced = bool(by_model)
        for entry in by_model.values():
            total = total + entry.usage
            if entry.cost_usd is None:
                all_priced = False
            else:
                known += entry.cost_usd
        return LedgerSnapshot(
            usage=total,
            cost_usd=known if all_priced else None,
            known_cost_usd=known,
            by_model=by_model,
            subcalls=subcalls,
            executions=executions,
            elapsed_s=self.elapsed(),
            tool_calls=tool_calls,
        )
