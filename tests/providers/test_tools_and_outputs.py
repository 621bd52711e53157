"""Tools and typed answers through the real SDK clients against the fake server."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest
from pydantic import BaseModel

import rlm
from rlm.testing.server import FakeLLMServer


class Invoice(BaseModel):
    customer: str
    total: float


def lookup(customer_id: int) -> dict[str, Any]:
    """A customer's record."""
    if customer_id == 0:
        raise KeyError("customer 0 is archived")
    return {"id": customer_id, "name": f"c{customer_id}"}


async def amount(name: str) -> float:
    """What a customer owes."""
    await asyncio.sleep(0)
    return 12.5 if name == "c7" else 0.0


STEPS = [
    "```repl\n"
    "try:\n"
    "    lookup(0)\n"
    "except Exception as exc:\n"
    "    print('failed:', exc)\n"
    "c = lookup(7)\n"
    "print(c['name'], amount(c['name']))\n"
    "```",
    "```repl\nFINAL({'customer': c['name']})\n```",
    "```repl\ninvoice = {'customer': c['name'], 'total': amount(c['name'])}\n```\n"
    "FINAL_VAR(invoice)",
]


@pytest.mark.parametrize("repl", ["subprocess", "inprocess"])
def test_tools_and_a_corrected_typed_answer_through_each_provider(
    make_model: Callable[..., Any], server: FakeLLMServer, repl: str
) -> None:
    server.push(*STEPS)
    result = rlm.run(
        "What does customer 7 owe?",
        "ctx",
        model=make_model(),
        repl=repl,
        tools=[lookup, amount],
        output_type=Invoice,
    )
    server.assert_exhausted()
    assert result.stop_reason == "final"
    assert result.output == Invoice(customer="c7", total=12.5)
    assert result.answer == '{"customer":"c7","total":12.5}'
    assert result.tool_calls == 4
    first, second, third = (r.view for r in server.requests)
    assert "lookup(customer_id: int) -> dict[str, Any]" in first.system
    assert '"total":{"type":"number"}' in first.last_user
    assert "failed: lookup() raised KeyError: 'customer 0 is archived'" in second.last_user
    assert "c7 12.5" in second.last_user
    assert "total: Field required" in third.last_user
