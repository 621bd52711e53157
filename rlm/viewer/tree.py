"""Trajectory events to a tree of plain dicts: runs, iterations, model calls, code, sub-calls.

The shape (every key always present, JSON-ready):

```
run        {id, session_id, turn, depth, query, model, sub_model, provider, context_type,
            context_chars, max_iterations, max_depth, started, ended, status, result, error, final,
            iterations: [iteration], orphans: [subcall], tokens_in, tokens_out, cost}
iteration  {index, started, ended, calls: [call], blocks: [block], final,
            compactions: [{tokens_before, tokens_after, window_tokens, summary}],
            tokens_in, tokens_out, cost}
call       {id, model, purpose, prompt_chars, message_count, last_message, text, text_chars,
            finish_reason, error, latency_s, tokens_in, tokens_out, cost, retries: [...]}
block      {id, index, code, stdout, stderr, error, duration_s, restarted, done,
            subcalls: [subcall], tools: [tool], tokens_in, tokens_out, cost}
tool       {id, name, arguments, ok, result, result_chars, error, duration_s}
subcall    {id, model, recursive, prompt, prompt_chars, batch_index, batch_size, ok,
            response, response_chars, error, duration_s, call, child: run | None,
            tokens_in, tokens_out, cost}
```

The tree is `rlm.telemetry.records.build_runs` (the one place events are folded into
runs) rendered as dicts for the page. Sub-calls hang under the code block that made them
(`SubcallStarted.exec_id`), child runs under the sub-call that started them
(`RunStarted.parent_subcall_id`). The root runs of a `Session` are its turns: `turn`
numbers them (None outside a session). `cost` is None when any model involved has no known
price.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from rlm.events import Event, IterationStarted, RunFailed, RunFinished
from rlm.telemetry.records import (
    CodeRecord,
    ModelCallRecord,
    RunRecord,
    SubcallRecord,
    build_runs,
)

Node = dict[str, Any]

_STATUS = {"finished": "finished", "failed": "failed", "incomplete": "running"}


def _call_node(call: ModelCallRecord, shown_prompt: str | None = None) -> Node:
    return {
        "id": call.call_id,
        "model": call.model,
        "purpose": call.purpose,
        "prompt_chars": call.prompt_chars,
        "message_count": call.message_count,
        # A sub-call's prompt is already shown on the sub-call.
        "last_message": "" if call.last_message == shown_prompt else call.last_message,
        "text": call.text,
        "text_chars": call.text_chars,
        "finish_reason": call.finish_reason,
        "error": f"{call.error_type}: {call.error}" if call.error_type else None,
        "latency_s": call.latency_s,
        "tokens_in": call.usage.input_tokens,
        "tokens_out": call.usage.output_tokens,
        "cost": call.cost_usd if call.finished else 0.0,
        "retries": [
            {"attempt": r.attempt, "wait_s": r.wait_s, "error": f"{r.error_type}: {r.error}"}
            for r in call.retries
        ],
        "done": call.finished,
    }


def _subcall_node(sub: SubcallRecord, mapped: set[str]) -> Node:
    node: Node = {
        "id": sub.subcall_id,
        "model": sub.model,
        "recursive": sub.recursive,
        "prompt": sub.prompt,
        "prompt_chars": sub.prompt_chars,
        "batch_index": sub.batch_index,
        "batch_size": sub.batch_size,
        "ok": sub.ok,
        "response": sub.response,
        "response_chars": sub.response_chars,
        "error": sub.error,
        "duration_s": sub.duration_s,
        "call": _call_node(sub.model_calls[-1], sub.prompt) if sub.model_calls else None,
        "child": _run_node(sub.child, mapped) if sub.child is not None else None,
        "tokens_in": 0,
        "tokens_out": 0,
        "cost": 0.0,
    }
    _totals(node, [p for p in (node["call"], node["child"]) if p is not None])
    return node


def _block_node(code: CodeRecord, mapped: set[str]) -> Node:
    node: Node = {
        "id": code.exec_id,
        "index": code.index,
        "code": code.code,
        "stdout": code.stdout,
        "stderr": code.stderr,
        "error": code.error,
        "duration_s": code.duration_s,
        "restarted": code.restarted,
        "done": code.finished,
        "subcalls": [_subcall_node(s, mapped) for s in code.subcalls],
        "tools": [
            {
                "id": t.tool_call_id,
                "name": t.name,
                "arguments": t.arguments,
                "ok": t.ok,
                "result": t.result,
                "result_chars": t.result_chars,
                "error": t.error,
                "duration_s": t.duration_s,
            }
            for t in code.tool_calls
        ],
        "tokens_in": 0,
        "tokens_out": 0,
        "cost": 0.0,
    }
    _totals(node, node["subcalls"])
    return node


def _iteration_ends(run: RunRecord) -> dict[int, float]:
    """When each iteration's last event happened (the run's end events excluded)."""
    ends: dict[int, float] = {}
    current: int | None = None
    for event in run.events:
        if isinstance(event, IterationStarted):
            current = event.iteration
        if current is not None and not isinstance(event, RunFinished | RunFailed):
            ends[current] = max(ends.get(current, event.timestamp), event.timestamp)
    return ends


def _run_node(run: RunRecord, mapped: set[str], turn: int | None = None) -> Node:
    mapped.add(run.run_id)
    start = run.started
    final = (
        {"answer": run.final_answer, "source": run.final_source, "iteration": run.final_iteration}
        if run.final_answer is not None
        else None
    )
    r = run.result
    node: Node = {
        "id": run.run_id,
        "session_id": run.session_id,
        "turn": turn,
        "depth": run.depth,
        "query": start.query,
        "model": start.model,
        "sub_model": start.sub_model,
        "provider": start.provider,
        "context_type": start.context_type,
        "context_chars": start.context_chars,
        "max_iterations": start.max_iterations,
        "max_depth": start.max_depth,
        "started": start.timestamp,
        "ended": max(e.timestamp for e in run.events),
        "status": _STATUS[run.status],
        "result": None
        if r is None
        else {
            "answer": r.answer,
            "stop_reason": r.stop_reason,
            "iterations": r.iterations,
            "input_tokens": r.total_input_tokens,
            "output_tokens": r.total_output_tokens,
            "cost_usd": r.cost_usd,
            "duration_s": r.duration_s,
            "sub_calls": r.sub_calls,
            "code_executions": r.code_executions,
            "limit": r.limit,
            "error": r.error,
        },
        "error": {"type": run.error_type, "message": run.error} if run.error_type else None,
        "final": final,
        "iterations": [],
        "orphans": [_subcall_node(s, mapped) for s in run.stray_subcalls],
        "tokens_in": 0,
        "tokens_out": 0,
        "cost": 0.0,
    }
    ends = _iteration_ends(run)
    for it in run.iterations:
        iteration: Node = {
            "index": it.index,
            "started": it.started_at,
            "ended": ends.get(it.index, it.started_at),
            "calls": [_call_node(c) for c in run.model_calls if c.iteration == it.index],
            "blocks": [_block_node(c, mapped) for c in it.code],
            "final": final if final is not None and final["iteration"] == it.index else None,
            "compactions": [
                {
                    "tokens_before": c.tokens_before,
                    "tokens_after": c.tokens_after,
                    "window_tokens": c.window_tokens,
                    "summary": c.summary,
                }
                for c in run.compactions
                if c.iteration == it.index
            ],
            "tokens_in": 0,
            "tokens_out": 0,
            "cost": 0.0,
        }
        _totals(iteration, [*iteration["calls"], *iteration["blocks"]])
        node["iterations"].append(iteration)
    _totals(node, [*node["iterations"], *node["orphans"]])
    return node


def _add_cost(total: float | None, part: float | None) -> float | None:
    return None if total is None or part is None else total + part


def _totals(node: Node, parts: Iterable[Node]) -> None:
    for part in parts:
        node["tokens_in"] += part["tokens_in"]
        node["tokens_out"] += part["tokens_out"]
        node["cost"] = _add_cost(node["cost"], part["cost"])


def build_tree(events: Iterable[Event]) -> list[Node]:
    """The root runs of a trajectory, each with its whole subtree, totals rolled up."""
    roots, by_id = build_runs(events)
    mapped: set[str] = set()
    turns: dict[str, int] = {}
    tree = []
    for run in roots:
        turn = None
        if run.session_id is not None and run.depth == 0:
            turn = turns[run.session_id] = turns.get(run.session_id, 0) + 1
        tree.append(_run_node(run, mapped, turn))
    # A child run whose sub-call is not in the file is shown at the top, not lost.
    tree += [_run_node(run, mapped) for run in by_id.values() if run.run_id not in mapped]
    return tree
