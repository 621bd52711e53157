"""What runs one item, wherever it runs: `RunSpec` (picklable) and `run_item`.

Both executors call `run_item`: the local one in the driver's event loop, the Ray one
inside a task on a worker, after unpickling the `RunSpec` there.
"""

from __future__ import annotations

import asyncio
import hashlib
import inspect
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rlm.batch.outcome import BatchItem, Outcome
from rlm.budget import SharedLedger
from rlm.errors import ConfigurationError, RLMError
from rlm.events import Subscriber, as_subscribers
from rlm.providers.base import Model
from rlm.providers.registry import resolve_model
from rlm.result import RLMResult

if TYPE_CHECKING:
    from rlm.engine import RLM
    from rlm.telemetry.trajectory import TrajectoryRecorder

# Arguments of `rlm.arun` a batch sets itself.
_RESERVED = ("query", "context", "model", "sub_model", "ledger")


def check_run_arguments(kwargs: Mapping[str, Any], engine: RLM | None = None) -> None:
    """Refuse names the runs would not take (`rlm.arun`'s, or `engine.arun`'s), up front."""
    from rlm.api import arun

    target = engine.arun if engine is not None else arun
    accepted = set(inspect.signature(target).parameters) - set(_RESERVED)
    unknown = sorted(set(kwargs) - accepted)
    if unknown:
        owner = "RLM.batch" if engine is not None else "batch"
        runner = "RLM.arun" if engine is not None else "rlm.run"
        raise ConfigurationError(
            f"{owner} got unexpected argument(s) {', '.join(unknown)}: it takes what "
            f"{runner} takes ({', '.join(sorted(accepted))}) plus max_parallel_runs, "
            "total_budget (or ledger), results, executor, trajectories and progress"
        )


@dataclass(frozen=True, slots=True)
class RunSpec:
    """How each item is run: `rlm.arun` with `model`, `sub_model` and `kwargs`, or, when
    `engine` is set (`RLM.batch`), that engine's `arun` with `kwargs` (budget, on_event).

    Model strings stay strings until `prepared()` resolves them where the runs happen (a
    Ray worker resolves them from its own environment).
    """

    model: str | Model | None = None
    sub_model: str | Model | None = None
    kwargs: Mapping[str, Any] = field(default_factory=dict)
    engine: RLM | None = None
    trajectories: str | None = None

    def prepared(self) -> RunSpec:
        """This spec with model strings resolved once (not once per item)."""
        if self.engine is not None:
            return self
        model = resolve_model(self.model) if self.model is not None else None
        sub = resolve_model(self.sub_model) if self.sub_model is not None else None
        return replace(self, model=model, sub_model=sub)

    async def run(
        self, item: BatchItem, *, on_event: list[Subscriber], ledger: SharedLedger | None
    ) -> RLMResult:
        kwargs = dict(self.kwargs)
        subscribers = [*as_subscribers(kwargs.pop("on_event", None)), *on_event]
        if self.engine is not None:
            return await self.engine.arun(
                item.query, item.context, on_event=subscribers, ledger=ledger, **kwargs
            )
        from rlm.api import arun

        if self.model is None:
            raise ConfigurationError("batch needs a model")
        return await arun(
            item.query,
            item.context,
            self.model,
            self.sub_model,
            on_event=subscribers,
            ledger=ledger,
            **kwargs,
        )


def trajectory_path(folder: str, item_id: str) -> Path:
    """The item's trajectory file: its id, made safe for a file name."""
    safe = re.sub(r"[^A-Za-z0-9._-]", "_", item_id)[:100]
    if safe != item_id:
        safe += "-" + hashlib.sha1(item_id.encode()).hexdigest()[:8]
    return Path(folder) / f"{safe}.jsonl"


async def run_item(
    spec: RunSpec,
    index: int,
    item_id: str,
    item: BatchItem,
    ledger: SharedLedger | None,
    *,
    attempts: int = 1,
) -> Outcome:
    """Run one item; an error becomes a "failed" outcome, cancellation propagates."""
    recorder: TrajectoryRecorder | None = None
    subscribers: list[Subscriber] = []
    try:
        if spec.trajectories is not None:
            from rlm.telemetry.trajectory import TrajectoryRecorder

            recorder = TrajectoryRecorder(trajectory_path(spec.trajectories, item_id))
            subscribers.append(recorder)
        result = await spec.run(item, on_event=subscribers, ledger=ledger)
    except asyncio.CancelledError:
        raise
    except Exception as exc:
        partial = exc.result if isinstance(exc, RLMError) else None
        return Outcome(index, item_id, "failed", partial, f"{type(exc).__name__}: {exc}", attempts)
    finally:
        if recorder is not None:
            recorder.close()
    stopped = (
        result.stop_reason in ("budget", "deadline")
        and ledger is not None
        and ledger.exceeded() is not None
    )
    return Outcome(index, item_id, "stopped" if stopped else "finished", result, None, attempts)
