"""Batch runs: many queries through RLMs, on this machine or on a Ray cluster.

| module | job |
| --- | --- |
| `api.py` | `batch`/`abatch`: ids, the shared ledger, the results file, the bar |
| `outcome.py` | `BatchItem`, `Outcome`, `BatchReport` |
| `spec.py` | `RunSpec` (what runs one item, picklable) and `run_item` |
| `local.py` | the `Executor` protocol and `LocalExecutor` |
| `results.py` | the JSONL results file, read back on restart |
| `progress.py` | the batch bar |
| `ray.py` | `RayExecutor`: imported only when asked for (`pip install "rlm[ray]"`) |

See docs/batch.md.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from rlm.batch.api import abatch, batch
from rlm.batch.local import BatchJob, Executor, LocalExecutor
from rlm.batch.outcome import BatchFailure, BatchItem, BatchReport, Outcome

if TYPE_CHECKING:
    from rlm.batch.ray import RayExecutor

__all__ = [
    "BatchFailure",
    "BatchItem",
    "BatchJob",
    "BatchReport",
    "Executor",
    "LocalExecutor",
    "Outcome",
    "RayExecutor",
    "abatch",
    "batch",
]


def __getattr__(name: str) -> Any:
    if name == "RayExecutor":
        from rlm.batch.ray import RayExecutor

        return RayExecutor
    raise AttributeError(f"module 'rlm.batch' has no attribute {name!r}")
