"""rlm: Recursive Language Models.

An RLM answers a query over a context of any size without putting the context in the
prompt: the context lives in a Python REPL, the model writes code to look at it and can
hand pieces to sub-models (`llm_query`) or child RLMs (`rlm_query`), and ends with
`FINAL(answer)`.

```python
import rlm
result = rlm.run("What is the total salary of Engineering?", context=text,
                 model="openai/gpt-4o-mini")
print(result.answer, result.stop_reason, result.cost_usd)
```
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from rlm import errors, events
from rlm.api import aresume, arun, resume, run, stream
from rlm.batch import BatchFailure, BatchItem, BatchReport, abatch, batch
from rlm.budget import Budget, Ledger, ModelUsage
from rlm.engine import RLM
from rlm.errors import (
    BudgetExceeded,
    ConfigurationError,
    ProviderError,
    RLMError,
    SessionError,
)
from rlm.events import Event, EventBus
from rlm.providers.base import (
    Message,
    Model,
    ModelRequest,
    ModelResponse,
    ProviderItem,
    RetryDetails,
    ToolCall,
    ToolSpec,
    Usage,
)
from rlm.providers.pricing import Price, set_price
from rlm.providers.registry import register_provider, resolve_model
from rlm.result import CodeExecution, Iteration, ResumeInfo, RLMResult, StopReason
from rlm.session import Session
from rlm.streaming import EventStream
from rlm.tools import Tool

if TYPE_CHECKING:
    from rlm.batch.ray import RayExecutor

__version__ = "0.1.0"

# A library does not decide where its log records go; the application does.
logging.getLogger("rlm").addHandler(logging.NullHandler())

__all__ = [
    "RLM",
    "BatchFailure",
    "BatchItem",
    "BatchReport",
    "Budget",
    "BudgetExceeded",
    "CodeExecution",
    "ConfigurationError",
    "Event",
    "EventBus",
    "EventStream",
    "Iteration",
    "Ledger",
    "Message",
    "Model",
    "ModelRequest",
    "ModelResponse",
    "ModelUsage",
    "Price",
    "ProviderError",
    "ProviderItem",
    "RLMError",
    "RLMResult",
    "RayExecutor",
    "ResumeInfo",
    "RetryDetails",
    "Session",
    "SessionError",
    "StopReason",
    "Tool",
    "ToolCall",
    "ToolSpec",
    "Usage",
    "__version__",
    "abatch",
    "aresume",
    "arun",
    "batch",
    "errors",
    "events",
    "register_provider",
    "resolve_model",
    "resume",
    "run",
    "set_price",
    "stream",
]


def __getattr__(name: str) -> Any:
    # Ray is imported only when its executor is asked for.
    if name == "RayExecutor":
        from rlm.batch.ray import RayExecutor

        return RayExecutor
    raise AttributeError(f"module 'rlm' has no attribute {name!r}")
