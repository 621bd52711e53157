"""Where the model's code runs: `SubprocessRepl` (isolated, default) or `InProcessRepl`."""

from rlm.repl.base import (
    HELPER_NAMES,
    ExecutionResult,
    LLMQueryError,
    Repl,
    ReplFactory,
    ReplHost,
    VariableLookup,
)
from rlm.repl.inprocess import InProcessRepl

__all__ = [
    "HELPER_NAMES",
    "ExecutionResult",
    "InProcessRepl",
    "LLMQueryError",
    "Repl",
    "ReplFactory",
    "ReplHost",
    "VariableLookup",
]
