"""`RayExecutor`: the runs of a batch as Ray tasks, on a laptop or a cluster.

Imported only when asked for (`executor="ray"`, `rlm.RayExecutor`); needs
`pip install "rlm[ray]"`. How the work travels:

- Each item is one Ray task (`num_cpus_per_run` CPUs, retried up to `max_retries` times
  if its worker process or node dies), running the item with `run_item` in its own event
  loop, with its own REPL (a sandboxed worker on that node by default).
- What every run needs (`RunSpec`: model, tools, strategies...) is put in the object
  store once and sent with Ray's cloudpickle; a model string travels as a string and is
  resolved on the worker, once per worker process, so keys come from the worker's
  environment (or `runtime_env={"env_vars": ...}`). Each distinct context object is put
  in the object store once, however many items share it.
- The shared budget lives in a Ray actor holding a `Ledger`; each task reports usage to
  it and checks the answer it last got back (one round trip behind at most) before each
  model call; the driver asks it before starting each item.
- Results stream back as tasks finish (`ray.wait`), each handed to the batch (results
  file, bar) at once.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
import time
from collections.abc import Mapping
from typing import Any

try:
    import ray
    from ray.exceptions import RayError
except ImportError as exc:  # pragma: no cover - depends on the installation
    from rlm.errors import ConfigurationError

    raise ConfigurationError(
        'executor="ray" needs Ray: pip install "rlm[ray]" (or pip install ray)'
    ) from exc

from rlm._sync import run_blocking
from rlm.batch.local import BatchJob
from rlm.batch.outcome import BatchItem, Outcome
from rlm.batch.spec import RunSpec, run_item
from rlm.budget import Budget, Ledger, LedgerSnapshot
from rlm.errors import BudgetExceeded, ConfigurationError
from rlm.providers.base import Usage

_Exceeded = tuple[str, str] | None  # (limit, message): what crosses the wire


def _as_wire(exc: BudgetExceeded | None) -> _Exceeded:
    return (exc.limit, str(exc)) if exc is not None else None


class _BatchLedger:
    """The Ray actor behind a batch's shared budget, and the count of each item's attempts."""

    def __init__(self, budget: Budget) -> None:
        self.ledger = Ledger(budget)
        self.attempts: dict[str, int] = {}

    def add(self, model: str, usage: Usage, cost: float | None) -> _Exceeded:
        self.ledger.add(model, usage, cost)
        return _as_wire(self.ledger.exceeded())

    def start_subcall(self) -> _Exceeded:
        try:
            self.ledger.start_subcall()
        except BudgetExceeded as exc:
            return _as_wire(exc)
        return None

    def record_execution(self) -> None:
        self.ledger.record_execution()

    def exceeded(self) -> _Exceeded:
        return _as_wire(self.ledger.exceeded())

    def start(self, item_id: str) -> int:
        self.attempts[item_id] = self.attempts.get(item_id, 0) + 1
        return self.attempts[item_id]

    def attempts_of(self, item_id: str) -> int:
        return self.attempts.get(item_id, 0)

    def snapshot(self) -> LedgerSnapshot:
        return self.ledger.snapshot()


class _RemoteLedger:
    """A task's view of the batch ledger (a `SharedLedger`): reports go to the actor
    without waiting; checks read the state the actor last sent back."""

    def __init__(self, actor: Any, deadline: float | None, exceeded: _Exceeded) -> None:
        self._actor = actor
        self._deadline = deadline  # wall clock: the driver's and the workers' agree on it
        self._lock = threading.Lock()
        self._exceeded = exceeded
        self._sent: list[Any] = []

    def _send(self, ref: Any) -> None:
        self._sent.append(ref)
        ref.future().add_done_callback(self._update)

    def _update(self, future: Any) -> None:
        try:
            state = future.result()
        except Exception:  # the actor is gone: the batch is ending
            return
        if state is not None:
            with self._lock:
                self._exceeded = self._exceeded or state

    def add(self, model: str, usage: Usage, cost: float | None) -> None:
        self._send(self._actor.add.remote(model, usage, cost))

    def record_execution(self) -> None:
        self._actor.record_execution.remote()

    def start_subcall(self) -> None:
        exceeded = self.exceeded()
        if exceeded is not None:
            raise exceeded
        self._send(self._actor.start_subcall.remote())

    def exceeded(self) -> BudgetExceeded | None:
        with self._lock:
            state = self._exceeded
        if state is None and self._deadline is not None and time.time() >= self._deadline:
            state = ("max_seconds", "the batch's deadline has passed")
        return BudgetExceeded(state[0], state[1]) if state is not None else None

    def remaining_seconds(self) -> float | None:
        return None if self._deadline is None else max(0.0, self._deadline - time.time())

    def flush(self) -> None:
        """Wait until the actor has every report (so the driver sees the whole spend)."""
        if self._sent:
            ray.wait(self._sent, num_returns=len(self._sent), timeout=30)


_specs: dict[str, RunSpec] = {}
_specs_lock = threading.Lock()


def _spec(box: list[Any]) -> RunSpec:
    """The batch's RunSpec, unpickled and prepared once per worker process."""
    key = box[0].hex()
    with _specs_lock:
        if key not in _specs:
            spec: RunSpec = ray.get(box[0])
            _specs[key] = spec.prepared()
        return _specs[key]


def _run_task(
    box: list[Any],
    index: int,
    item_id: str,
    query: str,
    context: object,
    actor: Any,
    deadline: float | None,
) -> Outcome:
    attempt: int = ray.get(actor.start.remote(item_id))
    ledger = _RemoteLedger(actor, deadline, ray.get(actor.exceeded.remote()))
    try:
        spec = _spec(box)
    except Exception as exc:  # a model that cannot be built here: this item fails
        return Outcome(index, item_id, "failed", None, f"{type(exc).__name__}: {exc}", attempt)
    item = BatchItem(query=query, context=context, id=item_id)
    try:
        # The worker's thread keeps its loop between items, so the prepared spec's
        # models reuse their connections (`rlm._sync`).
        return run_blocking(lambda: run_item(spec, index, item_id, item, ledger, attempts=attempt))
    finally:
        ledger.flush()


class RayExecutor:
    """Runs a batch's items as Ray tasks.

    Args:
        address: the cluster to join ("ray://head:10001", "auto"...). Default: the Ray
            instance this process already joined, else `RAY_ADDRESS`, else a new local one.
        num_cpus_per_run: CPUs Ray reserves for each run (a fraction packs more runs
            per node: runs mostly wait on the model).
        runtime_env: Ray's runtime environment for the tasks (`env_vars` for API keys,
            `pip`, `working_dir`...).
        max_retries: how many times an item whose worker process or node died is
            started again elsewhere (the report's `retried` names such items).
    """

    def __init__(
        self,
        address: str | None = None,
        *,
        num_cpus_per_run: float = 1.0,
        runtime_env: Mapping[str, Any] | None = None,
        max_retries: int = 3,
    ) -> None:
        if not isinstance(num_cpus_per_run, int | float) or num_cpus_per_run <= 0:
            raise ConfigurationError(
                f"num_cpus_per_run must be a positive number, not {num_cpus_per_run!r}"
            )
        if not isinstance(max_retries, int) or max_retries < 0:
            raise ConfigurationError(f"max_retries must be an integer >= 0, not {max_retries!r}")
        self.address = address
        self.num_cpus_per_run = num_cpus_per_run
        self.runtime_env = dict(runtime_env) if runtime_env is not None else None
        self.max_retries = max_retries

    def __repr__(self) -> str:
        return (
            f"RayExecutor(address={self.address!r}, num_cpus_per_run={self.num_cpus_per_run}, "
            f"max_retries={self.max_retries})"
        )

    def connect(self) -> None:
        """Join the cluster (see `address`) unless this process already did."""
        if ray.is_initialized():
            return
        address = self.address or os.environ.get("RAY_ADDRESS") or None
        ray.init(address=address, logging_level=logging.WARNING, log_to_driver=False)

    async def execute(self, job: BatchJob) -> None:
        self.connect()
        budget = job.ledger.budget if job.ledger is not None else Budget()
        remaining = job.ledger.remaining_seconds() if job.ledger is not None else None
        deadline = time.time() + remaining if remaining is not None else None
        # Any: Ray's typing of actor handles does not cover method handles.
        actor: Any = ray.remote(num_cpus=0)(_BatchLedger).remote(budget)
        try:
            box = [ray.put(job.spec)]
        except Exception as exc:
            raise ConfigurationError(
                f"the batch's run arguments cannot be sent to Ray workers ({exc}); pass "
                "picklable ones (a model string, rlm's models, module-level functions)"
            ) from exc
        options: dict[str, Any] = {
            "num_cpus": self.num_cpus_per_run,
            "max_retries": self.max_retries,
            "retry_exceptions": False,
        }
        if self.runtime_env is not None:
            options["runtime_env"] = self.runtime_env
        task = ray.remote(_run_task).options(**options)
        contexts: dict[int, Any] = {}
        queue = iter(job.jobs)
        pending: dict[Any, tuple[int, str]] = {}
        try:
            while True:
                while len(pending) < job.max_parallel_runs:
                    entry = next(queue, None)
                    if entry is None:
                        break
                    index, item_id, item = entry
                    if await actor.exceeded.remote() is not None:
                        job.on_done(Outcome(index, item_id, "not_run"))
                        continue
                    key = id(item.context)
                    if key not in contexts:
                        contexts[key] = ray.put(item.context)  # once per distinct context
                    ref = task.remote(
                        box, index, item_id, item.query, contexts[key], actor, deadline
                    )
                    pending[ref] = (index, item_id)
                    job.on_start(index)
                if not pending:
                    break
                ready, _ = await asyncio.to_thread(
                    ray.wait, list(pending), num_returns=1, timeout=1.0
                )
                if ready:
                    rest = [r for r in pending if r not in ready]
                    more, _ = ray.wait(rest, num_returns=len(rest), timeout=0) if rest else ([], [])
                    for ref in [*ready, *more]:
                        job.on_done(await self._outcome(ref, pending.pop(ref), actor))
            if job.ledger is not None:
                snapshot: LedgerSnapshot = await actor.snapshot.remote()
                for name, entry_usage in snapshot.by_model.items():
                    job.ledger.add(name, entry_usage.usage, entry_usage.cost_usd)
        except BaseException:
            for ref in pending:
                ray.cancel(ref, force=False)
            raise
        finally:
            ray.kill(actor)

    @staticmethod
    async def _outcome(ref: Any, where: tuple[int, str], actor: Any) -> Outcome:
        index, item_id = where
        try:
            outcome: Outcome = await ref
        except RayError as exc:
            # Retries used up (a worker or node kept dying) or the task itself broke.
            attempts: int = await actor.attempts_of.remote(item_id)
            return Outcome(
                index, item_id, "failed", None, f"{type(exc).__name__}: {exc}", attempts or 1
            )
        return outcome
