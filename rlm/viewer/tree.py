"""Trajectory events to a tree of plain dicts: runs, iterations, model calls, code, sub-calls.

The shape (every key always present, JSON-ready):

```
run        {id, depth, query, model, sub_model, provider, context_type, context_chars,
            max_iterations, max_depth, started, ended, status, result, error, final,
            iterations: [iteration], orphans: [subcall], tokens_in, tokens_out, cost}
iteration  {index, started, ended, calls: [call], blocks: [block], final,
            tokens_in, tokens_out, cost}
call       {id, model, purpose, prompt_chars, message_count, last_message, text, text_chars,
            finish_reason, error, latency_s, tokens_in, tokens_out, cost, retries: [...]}
block      {id, index, code, stdout, stderr, error, duration_s, restarted, done,
            subcalls: [subcall], tokens_in, tokens_out, cost}
subcall    {id, model, recursive, prompt, prompt_chars, batch_index, batch_size, ok,
            response, response_chars, error, duration_s, call, child: run | None,
            tokens_in, tokens_out, cost}
```

Sub-calls hang under the code block that made them (`SubcallStarted.exec_id`), child runs
under the sub-call that started them (`RunStarted.parent_subcall_id`). `cost` is None
when any model involved has no known price.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from rlm.events import (
    CodeExecuted,
    CodeStarted,
    Event,
    FinalAnswer,
    IterationStarted,
    ModelCallFinished,
    ModelCallStarted,
    ModelRetry,
    RunFailed,
    RunFinished,
    RunStarted,
    SubcallFinished,
    SubcallStarted,
)

Node = dict[str, Any]


def _run_node(event: RunStarted) -> Node:
    return {
        "id": event.run_id,
        "depth": event.depth,
        "query": event.query,
        "model": event.model,
        "sub_model": event.sub_model,
        "provider": event.provider,
        "context_type": event.context_type,
        "context_chars": event.context_chars,
        "max_iterations": event.max_iterations,
        "max_depth": event.max_depth,
        "started": event.timestamp,
        "ended": event.timestamp,
        "status": "running",
        "result": None,
        "error": None,
        "final": None,
        "iterations": [],
        "orphans": [],
        "tokens_in": 0,
        "tokens_out": 0,
        "cost": 0.0,
    }


def _iteration_node(index: int, timestamp: float) -> Node:
    return {
        "index": index,
        "started": timestamp,
        "ended": timestamp,
        "calls": [],
        "blocks": [],
        "final": None,
        "tokens_in": 0,
        "tokens_out": 0,
        "cost": 0.0,
    }


def _call_node(event: ModelCallStarted) -> Node:
    return {
        "id": event.call_id,
        "model": event.model,
        "purpose": event.purpose,
        "prompt_chars": event.prompt_chars,
        "message_count": event.message_count,
        "last_message": event.last_message,
        "text": "",
        "text_chars": 0,
        "finish_reason": None,
        "error": None,
        "latency_s": None,
        "tokens_in": 0,
        "tokens_out": 0,
        "cost": 0.0,
        "retries": [],
        "done": False,
    }


def _block_node(event: CodeStarted) -> Node:
    return {
        "id": event.exec_id,
        "index": event.index,
        "code": event.code,
        "stdout": "",
        "stderr": "",
        "error": None,
        "duration_s": None,
        "restarted": False,
        "done": False,
        "subcalls": [],
        "tokens_in": 0,
        "tokens_out": 0,
        "cost": 0.0,
    }


def _subcall_node(event: SubcallStarted) -> Node:
    return {
        "id": event.subcall_id,
        "model": event.model,
        "recursive": event.recursive,
        "prompt": event.prompt,
        "prompt_chars": event.prompt_chars,
        "batch_index": event.batch_index,
        "batch_size": event.batch_size,
        "ok": None,
        "response": "",
        "response_chars": 0,
        "error": None,
        "duration_s": None,
        "call": None,
        "child": None,
        "tokens_in": 0,
        "tokens_out": 0,
        "cost": 0.0,
    }


class _Builder:
    def __init__(self) -> None:
        self.roots: list[Node] = []
        self.runs: dict[str, Node] = {}
        self.current_iteration: dict[str, Node] = {}
        self.iterations: dict[tuple[str, int], Node] = {}
        self.blocks: dict[str, Node] = {}
        self.subcalls: dict[str, Node] = {}
        self.calls: dict[str, Node] = {}

    def run_for(self, event: Event) -> Node:
        run = self.runs.get(event.run_id)
        if run is None:
            # Events of a run whose start is missing (a cut trajectory): make a stub.
            stub = RunStarted(
                run_id=event.run_id,
                parent_run_id=event.parent_run_id,
                depth=event.depth,
                timestamp=event.timestamp,
                query="(start of this run not recorded)",
                model="?",
                sub_model="?",
                max_iterations=0,
                max_depth=0,
                context_type="?",
                context_chars=0,
            )
            run = self.start_run(stub)
        run["ended"] = max(run["ended"], event.timestamp)
        return run

    def start_run(self, event: RunStarted) -> Node:
        run = _run_node(event)
        self.runs[event.run_id] = run
        parent = self.subcalls.get(event.parent_subcall_id or "")
        if parent is not None and parent["child"] is None:
            parent["child"] = run
        else:
            self.roots.append(run)
        return run

    def iteration_for(self, run: Node, index: int | None, timestamp: float) -> Node:
        if index is None:
            current = self.current_iteration.get(run["id"])
            if current is not None:
                return current
            index = 0
        key = (run["id"], index)
        node = self.iterations.get(key)
        if node is None:
            node = _iteration_node(index, timestamp)
            self.iterations[key] = node
            run["iterations"].append(node)
            self.current_iteration[run["id"]] = node
        return node

    def add(self, event: Event) -> None:
        if isinstance(event, RunStarted):
            if event.run_id not in self.runs:
                self.start_run(event)
            return
        run = self.run_for(event)
        if isinstance(event, IterationStarted):
            self.iteration_for(run, event.iteration, event.timestamp)
        elif isinstance(event, ModelCallStarted):
            call = _call_node(event)
            self.calls[event.call_id] = call
            sub = self.subcalls.get(event.subcall_id or "")
            if sub is not None:
                if call["last_message"] == sub["prompt"]:
                    call["last_message"] = ""  # the sub-call's prompt, already shown
                sub["call"] = call
            else:
                self.iteration_for(run, event.iteration, event.timestamp)["calls"].append(call)
        elif isinstance(event, ModelCallFinished):
            finished = self.calls.get(event.call_id)
            if finished is None:
                return
            finished.update(
                text=event.text,
                text_chars=event.text_chars,
                finish_reason=event.finish_reason,
                latency_s=event.latency_s,
                tokens_in=event.usage.input_tokens,
                tokens_out=event.usage.output_tokens,
                cost=event.cost_usd,
                done=True,
                error=f"{event.error_type}: {event.error}" if event.error_type else None,
            )
        elif isinstance(event, ModelRetry):
            retried = self.calls.get(event.call_id or "")
            if retried is not None:
                retried["retries"].append(
                    {
                        "attempt": event.attempt,
                        "wait_s": event.wait_s,
                        "error": f"{event.error_type}: {event.error}",
                    }
                )
        elif isinstance(event, CodeStarted):
            block = _block_node(event)
            self.blocks[event.exec_id] = block
            self.iteration_for(run, event.iteration, event.timestamp)["blocks"].append(block)
        elif isinstance(event, CodeExecuted):
            executed = self.blocks.get(event.exec_id)
            if executed is None:
                executed = _block_node(
                    CodeStarted(
                        run_id=event.run_id,
                        exec_id=event.exec_id,
                        iteration=event.iteration,
                        index=event.index,
                        code=event.code,
                    )
                )
                self.blocks[event.exec_id] = executed
                self.iteration_for(run, event.iteration, event.timestamp)["blocks"].append(executed)
            executed.update(
                stdout=event.stdout,
                stderr=event.stderr,
                error=event.error,
                duration_s=event.duration_s,
                restarted=event.restarted,
                done=True,
            )
        elif isinstance(event, SubcallStarted):
            started = _subcall_node(event)
            self.subcalls[event.subcall_id] = started
            maker = self.blocks.get(event.exec_id or "")
            (maker["subcalls"] if maker is not None else run["orphans"]).append(started)
        elif isinstance(event, SubcallFinished):
            answered = self.subcalls.get(event.subcall_id)
            if answered is not None:
                answered.update(
                    ok=event.ok,
                    response=event.response,
                    response_chars=event.response_chars,
                    error=event.error,
                    duration_s=event.duration_s,
                )
        elif isinstance(event, FinalAnswer):
            final = {"answer": event.answer, "source": event.source, "iteration": event.iteration}
            run["final"] = final
            self.iteration_for(run, event.iteration, event.timestamp)["final"] = final
        elif isinstance(event, RunFinished):
            r = event.result
            run["status"] = "finished"
            run["result"] = {
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
            }
        elif isinstance(event, RunFailed):
            run["status"] = "failed"
            run["error"] = {"type": event.error_type, "message": event.error}
        if not isinstance(event, RunFinished | RunFailed):
            current = self.current_iteration.get(run["id"])
            if current is not None:
                current["ended"] = max(current["ended"], event.timestamp)


def _add_cost(total: float | None, part: float | None) -> float | None:
    return None if total is None or part is None else total + part


def _totals(node: Node, parts: Iterable[Node]) -> None:
    for part in parts:
        node["tokens_in"] += part["tokens_in"]
        node["tokens_out"] += part["tokens_out"]
        node["cost"] = _add_cost(node["cost"], part["cost"])


def _roll_up_run(run: Node) -> None:
    for iteration in run["iterations"]:
        for block in iteration["blocks"]:
            _roll_up_subcalls(block["subcalls"])
            _totals(block, block["subcalls"])
        _totals(iteration, [*iteration["calls"], *iteration["blocks"]])
    _roll_up_subcalls(run["orphans"])
    _totals(run, [*run["iterations"], *run["orphans"]])


def _roll_up_subcalls(subcalls: list[Node]) -> None:
    for sub in subcalls:
        if sub["call"] is not None:
            _totals(sub, [sub["call"]])
        if sub["child"] is not None:
            _roll_up_run(sub["child"])
            _totals(sub, [sub["child"]])


def build_tree(events: Iterable[Event]) -> list[Node]:
    """The root runs of a trajectory, each with its whole subtree, totals rolled up."""
    builder = _Builder()
    for event in events:
        builder.add(event)
    for root in builder.roots:
        _roll_up_run(root)
    return builder.roots
