"""A conversation over support tickets: a session, a tool of the application, a typed answer.

Three turns share one sandboxed REPL, so the second and third build on what the first
found. The model's code calls `lookup_customer`, a function of this application that runs
here, on the host (the sandbox never sees the CRM); the second turn's answer must be a
`ChurnReport` and comes back as one.

Runs offline by default: a scripted model plays the LLM (no key, no network) and its code
really reads the tickets and calls the tool. Set RLM_MODEL to use a real model instead:

    uv run python examples/chat_over_documents.py
    RLM_MODEL=openai/gpt-4o-mini uv run python examples/chat_over_documents.py
"""

from __future__ import annotations

import os

from pydantic import BaseModel

import rlm
from rlm.testing import ScriptedModel

TICKETS = [
    {"id": "T-101", "customer": "C-17", "text": "Cancelled on 3 March: moving to a competitor."},
    {"id": "T-102", "customer": "C-08", "text": "Asked for an invoice copy for February."},
    {"id": "T-103", "customer": "C-23", "text": "Please cancel my subscription (12 March)."},
    {"id": "T-104", "customer": "C-17", "text": "Follow-up: confirm the cancellation."},
    {"id": "T-105", "customer": "C-31", "text": "Cancelled in April, too expensive."},
    {"id": "T-106", "customer": "C-42", "text": "March 28: cancel at the end of the term."},
]

# The application's own data: the tool reads it on the host.
CRM = {
    "C-08": {"name": "Bolt Bikes", "plan": "monthly"},
    "C-17": {"name": "Acme Corp", "plan": "annual"},
    "C-23": {"name": "Nimbus Ltd", "plan": "monthly"},
    "C-31": {"name": "Orbit GmbH", "plan": "annual"},
    "C-42": {"name": "Quill & Co", "plan": "annual"},
}

WIN_BACK_LIST = ["Nimbus Ltd", "Orbit GmbH"]


def lookup_customer(customer_id: str) -> dict[str, str]:
    """The customer's name and plan ("monthly" or "annual") from the CRM."""
    return CRM[customer_id]


class ChurnReport(BaseModel):
    churned: list[str]
    annual_plan: list[str]
    annual_share: float


QUERIES = [
    "Which customers cancelled in March?",
    "How many of them were on the annual plan? Report the churned and annual customers.",
    "Which of them are not on this win-back list yet?",
]


def scripted_model() -> ScriptedModel:
    """Plays the LLM across the three turns; later turns reuse the first turn's variables."""
    return ScriptedModel(
        [
            # turn 1: find the March cancellations, then ask the CRM who they are
            "```repl\n"
            "march = sorted({t['customer'] for t in context\n"
            "                if 'cancel' in t['text'].lower() and 'march' in t['text'].lower()})\n"
            "print(march)\n"
            "```",
            "```repl\n"
            "churned = {cid: lookup_customer(cid) for cid in march}\n"
            "print(churned)\n"
            "FINAL([c['name'] for c in churned.values()])\n"
            "```",
            # turn 2: `churned` is still in the REPL; the answer must be a ChurnReport
            "```repl\n"
            "annual = [c['name'] for c in churned.values() if c['plan'] == 'annual']\n"
            "FINAL({'churned': [c['name'] for c in churned.values()],\n"
            "       'annual_plan': annual, 'annual_share': len(annual) / len(churned)})\n"
            "```",
            # turn 3: the win-back list arrived as `context_1`
            "```repl\nFINAL(sorted({c['name'] for c in churned.values()} - set(context_1)))\n```",
        ],
        name="scripted-model",
    )


def main() -> list[rlm.RLMResult]:
    model_name = os.environ.get("RLM_MODEL")
    if not model_name:
        print("(offline: a scripted model plays the LLM; set RLM_MODEL for a real one)")
    engine = rlm.RLM(model_name or scripted_model(), tools=[lookup_customer])
    with engine.session(context=TICKETS) as chat:
        first = chat.run(QUERIES[0])
        second = chat.run(QUERIES[1], output_type=ChurnReport)
        third = chat.run(QUERIES[2], context=WIN_BACK_LIST)
    for query, result in zip(QUERIES, (first, second, third), strict=True):
        print(f"Q: {query}\nA: {result.answer}")
    report = second.output
    assert isinstance(report, ChurnReport)
    print(f"annual share of the churn: {report.annual_share:.0%}")
    print(
        f"({len(chat.results)} turns, {chat.total_usage.requests} model calls, "
        f"{sum(r.tool_calls for r in chat.results)} tool calls)"
    )
    return [first, second, third]


if __name__ == "__main__":
    main()
