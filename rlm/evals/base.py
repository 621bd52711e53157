"""What every evaluation task shares: `Instance`, the `Task` base class, answer parsing.

A task generates instances offline from a size and a seed (the same pair always gives the
same instance, on every machine) and scores an answer against the instance's gold answer
exactly, with no model in the loop.
"""

from __future__ import annotations

import re
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

CHARS_PER_TOKEN = 4

AnswerKind = Literal["number", "label", "text", "pairs"]


@dataclass(frozen=True, slots=True)
class Instance:
    """One generated problem: a context, a query about it and the gold answer.

    `size` is in the task's `size_unit` ("records" or "tokens"); `gold` is the exact
    answer as text (for pair lists, one "a,b" pair a line); `details` holds what the
    generator chose (department, needle depth, question type...) for reports.
    """

    task: str
    size: int
    seed: int
    context: str
    query: str
    gold: str
    answer_kind: AnswerKind
    details: Mapping[str, Any] = field(default_factory=dict)

    @property
    def context_chars(self) -> int:
        return len(self.context)

    @property
    def context_tokens(self) -> int:
        """An estimate at four characters a token."""
        return len(self.context) // CHARS_PER_TOKEN

    def score(self, answer: str | None) -> float:
        """The score of `answer`, from 0 to 1, by this instance's task's scorer."""
        from rlm.evals.registry import get_task

        return get_task(self.task).score(self, answer)


class Task(ABC):
    """An evaluation task: a seeded generator and an exact scorer.

    Subclasses set `name`, `description`, `size_unit` and `default_sizes`, and implement
    `generate` and `score`.
    """

    name: str = ""
    description: str = ""
    size_unit: Literal["records", "tokens"] = "records"
    default_sizes: tuple[int, ...] = ()
    min_size: int = 1
    max_size: int | None = None

    @abstractmethod
    def generate(self, size: int, seed: int = 0) -> Instance:
        """A deterministic instance of `size` (in `size_unit`) for `seed`."""

    @abstractmethod
    def score(self, instance: Instance, answer: str | None) -> float:
        """How good `answer` is, from 0 (wrong or missing) to 1 (exact)."""

    def check_size(self, size: int) -> None:
        """Raise ValueError for a size this task cannot generate."""
        if not isinstance(size, int) or isinstance(size, bool) or size < self.min_size:
            raise ValueError(
                f"{self.name}: size must be an integer >= {self.min_size:,} {self.size_unit}, "
                f"not {size!r}"
            )
        if self.max_size is not None and size > self.max_size:
            raise ValueError(
                f"{self.name}: size must be at most {self.max_size:,} {self.size_unit}, "
                f"not {size:,}"
            )


# -- reading answers ---------------------------------------------------------------------

_NUMBER = re.compile(r"(?<![\w.])[-+]?\$?\s?\d[\d,]*(?:\.\d+)?(?![\w])")
_ANSWER_LABEL = re.compile(r"(?im)^\W*(?:final\s+)?answer\W*:\s*(.+)$")
_MARKUP = re.compile(r"[*_`]")


def clean_answer(answer: str) -> str:
    """The answer without markdown emphasis and surrounding space."""
    return _MARKUP.sub("", answer).strip()


def _answer_part(answer: str) -> str:
    """The text after an "Answer:" label when there is one, else the whole answer."""
    text = clean_answer(answer)
    labelled = _ANSWER_LABEL.findall(text)
    return labelled[-1].strip() if labelled else text


def parse_number(text: str) -> float | None:
    """A number written like "$1,234,567", "1234567.0" or "-3", or None."""
    cleaned = text.strip().replace("$", "").replace(",", "").replace(" ", "")
    try:
        return float(cleaned)
    except ValueError:
        return None


def extract_number(answer: str | None) -> float | None:
    """The number an answer gives.

    The text after an "Answer:" label if there is one; a bare number ("$12,345" or
    "12345." count as bare); otherwise the last number in the text. None when there is
    no number.
    """
    if answer is None:
        return None
    part = _answer_part(answer)
    bare = parse_number(part.rstrip(".").strip())
    if bare is not None:
        return bare
    found = _NUMBER.findall(part)
    if not found:
        return None
    return parse_number(found[-1])


def normalize_label(text: str) -> str:
    """Lower case, single spaces, no surrounding punctuation or quotes."""
    text = clean_answer(text).lower()
    text = re.sub(r"\s+", " ", text)
    return text.strip(" \t\n.,;:!?\"'()[]{}")


def number_text(value: float) -> str:
    """An integer-valued float as "123", others as they are."""
    return str(int(value)) if float(value).is_integer() else str(value)
