"""Tool-call benchmark: the cost of one call of a user tool from the model's code.

    uv run python benchmarks/tools_bench.py            # 2,000 calls per case
    uv run python benchmarks/tools_bench.py --calls 200

One code block calls a trivial tool in a loop; the time per call is the block's duration
divided by the calls (so it includes the stub's JSON check, the worker pipe or the
thread hop, validation, the tool, the events and the JSON result). Cases: a sync and an
async tool, each in the sandboxed REPL and in-process. Prints a table; the median of
three runs per case.
"""

from __future__ import annotations

import argparse
import statistics

import rlm
from rlm.testing import ScriptedModel


def add(a: int, b: int) -> int:
    """a + b"""
    return a + b


async def add_async(a: int, b: int) -> int:
    """a + b, from the event loop."""
    return a + b


def per_call_us(repl: str, tool: object, calls: int) -> float:
    name = getattr(tool, "__name__", "add")
    loop = f"total = 0\nfor i in range({calls}):\n    total = {name}(total, 1)\nprint(total)"
    code = f"```repl\n{loop}\n```"
    result = rlm.run(
        "q",
        "ctx",
        model=ScriptedModel([code, "FINAL(done)"]),
        repl=repl,  # type: ignore[arg-type]
        tools=[tool],  # type: ignore[list-item]
    )
    (execution,) = result.history[0].executions
    assert execution.stdout.strip() == str(calls), execution
    assert result.tool_calls == calls
    return execution.duration_s / calls * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--calls", type=int, default=2_000)
    args = parser.parse_args()
    rows = []
    for repl in ("subprocess", "inprocess"):
        for tool in (add, add_async):
            runs = [per_call_us(repl, tool, args.calls) for _ in range(3)]
            rows.append((repl, "async" if tool is add_async else "sync", statistics.median(runs)))
    print(f"{'REPL':<12} {'tool':<6} {'per call':>10}")
    for repl, kind, us in rows:
        print(f"{repl:<12} {kind:<6} {us:>8.0f} µs")


if __name__ == "__main__":
    main()
