"""What the model's code sees of the REPL's helpers: their names and the errors they raise.

Kept apart from `rlm.repl.base` (the protocols and result types) because the sandbox
worker imports it at start-up, and the worker's import chain avoids `dataclasses` and
`typing` at run time: with `inspect` behind them they added about 10 ms to every worker's
start (see `rlm.repl.namespace`). Standard library only, nothing imported at all.
"""

from __future__ import annotations

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Sequence

HELPER_NAMES: tuple[str, ...] = (
    "llm_query",
    "llm_query_batched",
    "rlm_query",
    "rlm_query_batched",
    "FINAL",
    "FINAL_VAR",
    "SHOW_VARS",
)

# Names the REPL reserves and never lists as the model's variables.
RESERVED_NAMES: frozenset[str] = frozenset({*HELPER_NAMES, "context", "__builtins__"})


class LLMQueryError(RuntimeError):
    """Raised inside the model's code when a sub-call cannot be made or fails."""


class ToolError(RuntimeError):
    """Raised inside the model's code when a tool call fails: the tool's own message."""


def missing_variable_message(name: str, available: Sequence[str]) -> str:
    """What the model is told when `FINAL_VAR` names a variable that does not exist."""
    shown = ", ".join(sorted(available)[:50]) or "(none yet)"
    return (
        f"FINAL_VAR({name!r}): there is no variable named {name!r}, so this is not an "
        f"answer. Variables that exist: {shown}. Assign the answer to a variable first, "
        f"or use FINAL(answer)."
    )
