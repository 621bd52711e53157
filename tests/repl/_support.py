"""Shared pieces for the REPL tests: which sandboxes exist here, small limits, a fake host."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import pytest

from rlm import ModelRequest
from rlm.repl import InProcessRepl, Repl, ReplLimits, SubprocessRepl, bwrap
from rlm.repl.sandbox import cgroup_tree

# Small limits keep the hostile suite fast.
TEST_LIMITS = ReplLimits(wall_seconds=2.0, grace_seconds=0.5, memory_mb=512, max_processes=64)

BWRAP_OK, BWRAP_PROBLEM = bwrap.works()
needs_bwrap = pytest.mark.skipif(
    not BWRAP_OK, reason=f"bubblewrap cannot run here ({BWRAP_PROBLEM}); install 'bubblewrap'"
)

# The two sandbox paths every hostile test runs on.
ISOLATIONS = [
    pytest.param("bwrap", marks=needs_bwrap, id="bwrap"),
    pytest.param("none", id="fallback"),
]

# Every REPL the basic behaviour tests run on.
REPL_KINDS = [
    pytest.param("inprocess", id="inprocess"),
    pytest.param("bwrap", marks=needs_bwrap, id="subprocess-bwrap"),
    pytest.param("none", id="subprocess-fallback"),
]


def processes_bounded(isolation: str) -> bool:
    """Whether a fork bomb is bounded on this path here (see docs/sandbox.md)."""
    import os

    return cgroup_tree() is not None or os.geteuid() != 0


def make_repl(kind: str, limits: ReplLimits = TEST_LIMITS) -> Repl:
    if kind == "inprocess":
        return InProcessRepl(capture_chars=limits.output_chars)
    return SubprocessRepl(limits=limits, isolation=kind)  # type: ignore[arg-type]


def repl_factory(kind: str, limits: ReplLimits = TEST_LIMITS) -> Callable[[], Repl]:
    return lambda: make_repl(kind, limits)


def code(src: str) -> str:
    return f"```repl\n{src}\n```"


@dataclass
class Recorder:
    """A ScriptedModel step that keeps the message it was sent and replies with `reply`."""

    reply: str
    seen: list[str] = field(default_factory=list)

    def __call__(self, request: ModelRequest) -> str:
        self.seen.append(request.messages[-1].content)
        return self.reply

    @property
    def message(self) -> str:
        assert self.seen, "this step was never reached"
        return self.seen[-1]


@dataclass
class FakeHost:
    """A ReplHost that answers sub-calls itself and counts how many overlap."""

    delay_s: float = 0.0
    in_flight: int = 0
    max_in_flight: int = 0
    prompts: list[str] = field(default_factory=list)

    async def _one(self, prompt: str) -> str:
        self.prompts.append(prompt)
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            if self.delay_s:
                await asyncio.sleep(self.delay_s)
            return f"answer to {prompt}"
        finally:
            self.in_flight -= 1

    async def llm_query(self, prompt: str, model: str | None = None) -> str:
        return await self._one(prompt)

    async def rlm_query(self, prompt: str, model: str | None = None) -> str:
        return await self._one(prompt)

    async def llm_query_batched(
        self, prompts: Sequence[str], model: str | None = None
    ) -> list[str]:
        return list(await asyncio.gather(*(self._one(p) for p in prompts)))

    async def rlm_query_batched(
        self, prompts: Sequence[str], model: str | None = None
    ) -> list[str]:
        return list(await asyncio.gather(*(self._one(p) for p in prompts)))
