"""Where the model's code runs: `SubprocessRepl` (isolated, default) or `InProcessRepl`.

`InProcessRepl` is NOT a security boundary: use it only for code you trust.
"""

from typing import TYPE_CHECKING, Any

from rlm.repl.base import (
    HELPER_NAMES,
    ExecutionResult,
    LLMQueryError,
    MultiContextRepl,
    Repl,
    ReplFactory,
    ReplHost,
    VariableLookup,
)
from rlm.repl.inprocess import InProcessRepl

if TYPE_CHECKING:
    from rlm.repl.sandbox import Isolation, ReplLimits
    from rlm.repl.subprocess import SubprocessRepl

# Loaded on first use, so `import rlm` does not pay for the sandbox's imports.
_LAZY = {
    "Isolation": "rlm.repl.sandbox",
    "ReplLimits": "rlm.repl.sandbox",
    "SubprocessRepl": "rlm.repl.subprocess",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'rlm.repl' has no attribute {name!r}")


__all__ = [
    "HELPER_NAMES",
    "ExecutionResult",
    "InProcessRepl",
    "Isolation",
    "LLMQueryError",
    "MultiContextRepl",
    "Repl",
    "ReplFactory",
    "ReplHost",
    "ReplLimits",
    "SubprocessRepl",
    "VariableLookup",
]
