"""Swappable strategies: how replies are parsed and when a run stops."""

from rlm.strategies.parsing import (
    CodeBlock,
    FencedCodeParser,
    FinalMarker,
    ParsedReply,
    ParsingStrategy,
    ToolCallingParser,
)
from rlm.strategies.termination import (
    AnyOf,
    BudgetLimit,
    DeadlineLimit,
    FinalAnswerReached,
    MaxIterations,
    NoProgress,
    RunState,
    Stop,
    TerminationStrategy,
    default_termination,
)

__all__ = [
    "AnyOf",
    "BudgetLimit",
    "CodeBlock",
    "DeadlineLimit",
    "FencedCodeParser",
    "FinalAnswerReached",
    "FinalMarker",
    "MaxIterations",
    "NoProgress",
    "ParsedReply",
    "ParsingStrategy",
    "RunState",
    "Stop",
    "TerminationStrategy",
    "ToolCallingParser",
    "default_termination",
]
