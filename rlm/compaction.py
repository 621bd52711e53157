"""History compaction: when a run's messages near the root model's window, summarise them.

Each iteration adds the model's reply and its code's output to the history, so a long run
(or a session turn that opens with many earlier turns) outgrows the window. Before each
root request the loop asks `Compaction.needed(messages)`: when the request would pass
`threshold` (default 85%) of the model's window (`context_windows=`, else the model's own
`context_window`; no known window, no compaction), the model is asked for a summary of
what it has learned and where its results are stored, and the history after the system
prompt becomes the query (restated with the context's description) plus that summary.
The REPL is untouched: every variable survives, so the summary only has to name them.
If the summary request is itself too long for the model (`ContextTooLongError`), the
history is dropped without one and the model is pointed at `SHOW_VARS()`.
A `HistoryCompacted` event records each compaction.

A request's size is what the provider reported for the last root request and its reply
(`Usage.input_tokens` plus the reply's output tokens) plus the messages added since at
four characters a token, or the whole history at four characters a token when that is
larger (and before any request was measured): no tokenizer per provider is needed, and
the share left free (15% by default) covers the estimate's error.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from rlm.errors import ConfigurationError
from rlm.events import HistoryCompacted, clip
from rlm.providers.base import Message, Usage

DEFAULT_COMPACTION_THRESHOLD = 0.85
CHARS_PER_TOKEN = 4

SUMMARY_REQUEST = (
    "Your history is about to outgrow the model's context window, so it will be replaced "
    "by a summary you write now. The REPL keeps every variable. Write, as plain text and "
    "without code: what you have found so far (the facts and numbers that matter), which "
    "REPL variables hold your results and what each contains, and what is left to do to "
    "answer the query. Be complete but brief: this summary is all you will see of your "
    "work so far."
)

# When even the summary request is too long for the model: the history goes unsummarised.
UNSUMMARISED = (
    "(The history was too long to summarise, so it was dropped. Your earlier code's "
    "results are still in the REPL: run SHOW_VARS() to see them.)"
)

RESUME_NOTE = (
    "Your earlier work was compacted into this summary (written by you); the REPL still "
    "holds every variable it mentions:\n\n{summary}\n\nGo on from here: continue the work "
    "with code, or give the final answer."
)


def check_threshold(threshold: object) -> None:
    """Raise `ConfigurationError` unless `threshold` is None or a share in (0, 1]."""
    if threshold is None:
        return
    if (
        not isinstance(threshold, int | float)
        or isinstance(threshold, bool)
        or not 0 < threshold <= 1
    ):
        raise ConfigurationError(
            f"compaction_threshold must be a share of the window between 0 and 1 (0.85 "
            f"means 85%), or None to turn compaction off; got {threshold!r}"
        )


def estimate_tokens(messages: Sequence[Message]) -> int:
    """About how many tokens `messages` take (four characters a token)."""
    return sum(len(m.content) for m in messages) // CHARS_PER_TOKEN


Measured = tuple[int, int]
"""(how many messages, the tokens they took as the provider counted them): the last root
request and its reply."""


def measure(message_count: int, usage: Usage) -> Measured | None:
    """What `usage` says the first `message_count` messages take (None if unreported).
    Reasoning tokens are left out: they are not sent back as text."""
    if not usage.input_tokens:
        return None
    return message_count, usage.input_tokens + usage.output_tokens - usage.reasoning_tokens


@dataclass(frozen=True, slots=True)
class Compaction:
    """When and how one run compacts its history.

    `threshold` is the share of `window_tokens` a request may fill; either None turns
    compaction off.
    """

    threshold: float | None
    window_tokens: int | None

    @property
    def limit_tokens(self) -> int | None:
        if self.threshold is None or self.window_tokens is None:
            return None
        return int(self.window_tokens * self.threshold)

    def size(self, messages: Sequence[Message], measured: Measured | None = None) -> int:
        """The estimated tokens of a request of `messages` (see the module docstring)."""
        by_chars = estimate_tokens(messages)
        if measured is None or measured[0] > len(messages):
            return by_chars
        count, tokens = measured
        return max(by_chars, tokens + estimate_tokens(messages[count:]))

    def needed(self, messages: Sequence[Message], measured: Measured | None = None) -> bool:
        """True when the next request would pass the threshold and there is history
        beyond the system prompt and one message to compact."""
        limit = self.limit_tokens
        if limit is None or len(messages) <= 2:
            return False
        return self.size(messages, measured) > limit

    def summary_request(self, messages: Sequence[Message]) -> list[Message]:
        """The history so far plus the request for a summary of it."""
        history = list(messages)
        ask = Message("user", SUMMARY_REQUEST)
        if history and history[-1].role == "user":
            # Keep roles alternating: fold the request into the last user message.
            last = history.pop()
            ask = Message("user", f"{last.content}\n\n{SUMMARY_REQUEST}")
        return [*history, ask]

    def compacted(self, messages: Sequence[Message], restart: str, summary: str) -> list[Message]:
        """The system prompt, then `restart` (the query and the context's description)
        with the summary: what the loop goes on from."""
        note = RESUME_NOTE.format(summary=summary.strip() or "(the model wrote no summary)")
        return [messages[0], Message("user", f"{restart}\n\n{note}")]

    def event(
        self,
        base: dict[str, Any],
        *,
        iteration: int,
        model: str,
        before: Sequence[Message],
        after: Sequence[Message],
        summary: str,
        measured: Measured | None = None,
    ) -> HistoryCompacted:
        """The event that records one compaction."""
        return HistoryCompacted(
            **base,
            iteration=iteration,
            model=model,
            window_tokens=self.window_tokens or 0,
            threshold=self.threshold or 0.0,
            messages_before=len(before),
            messages_after=len(after),
            tokens_before=self.size(before, measured),
            tokens_after=self.size(after),
            summary=clip(summary),
            summary_chars=len(summary),
        )
