"""Batch throughput: N salary-task runs at a simulated model latency, local executor vs Ray.

    uv run python benchmarks/batch.py                       # 1,000 runs, 100 ms, 64 parallel
    uv run python benchmarks/batch.py --runs 200 --executors local --repl subprocess

Each run is the salary task in two model turns (code that totals the Engineering
salaries, then `FINAL_VAR(total)`). Two models play the LLM (`--models`): `function`, a
`FunctionModel` that sleeps `--latency` seconds (asyncio) before replying, which times
rlm's own work per run; and `http`, `OpenAIModel` (the real SDK, real HTTP) to a
`FakeLLMServer` in a separate process that answers after `--latency` seconds, which adds
the SDK's and the HTTP client's CPU per call. The floor
is what the model latency alone allows: runs x turns x latency / parallel runs (perfect
packing, zero framework cost). Reported per executor: wall time, runs/s, wall / floor,
and the overhead per run ((wall - floor) x parallel / runs: the time each run slot spent
on something other than waiting for the model). Every answer is checked.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
from typing import Any

import rlm
from rlm.evals import get_task
from rlm.providers.base import ModelRequest
from rlm.providers.openai import OpenAIModel
from rlm.testing import FunctionModel

TURN_1 = (
    "```repl\nimport re\n"
    "total = sum(int(m.replace(',', '')) for m in re.findall("
    "r'Department: Engineering .*?Salary: \\$([\\d,]+)', context))\nprint(total)\n```"
)
TURN_2 = "FINAL_VAR(total)"
TURNS = 2

SERVER = """
import sys, time
from rlm.testing.server import FakeLLMServer

def reply(request):
    return {turn1!r} if len(request.json["messages"]) <= 2 else {turn2!r}

server = FakeLLMServer(handler=reply, latency_s={latency}).start()
print(server.openai_base_url, flush=True)
while True:
    time.sleep(3600)
"""


def start_server(latency: float) -> tuple[subprocess.Popen[str], str]:
    """The fake LLM in its own process, so serving it costs this process no CPU."""
    code = SERVER.format(turn1=TURN_1, turn2=TURN_2, latency=latency)
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    return proc, proc.stdout.readline().strip()


def make_items(runs: int, records: int) -> tuple[list[rlm.BatchItem], list[str]]:
    task = get_task("salary")
    instances = [task.generate(records, seed) for seed in range(10)]
    items = []
    golds = []
    for i in range(runs):
        instance = instances[i % len(instances)]
        items.append(rlm.BatchItem(instance.query, instance.context, id=f"run-{i}"))
        golds.append(instance.gold)
    return items, golds


def scripted_reply(request: ModelRequest) -> str:
    return TURN_1 if len(request.messages) <= 2 else TURN_2


def measure(
    executor: str,
    kind: str,
    items: list[rlm.BatchItem],
    golds: list[str],
    base_url: str,
    args: argparse.Namespace,
) -> dict[str, Any]:
    model: rlm.Model
    if kind == "http":
        model = OpenAIModel("fake-salary", base_url=base_url)
    else:
        model = FunctionModel(scripted_reply, latency_s=args.latency)
    chosen: Any = executor
    if executor == "ray":
        chosen = rlm.RayExecutor(num_cpus_per_run=args.ray_cpus_per_run)
    started = time.perf_counter()
    cpu_started = time.process_time()
    report = rlm.batch(
        items,
        model,
        executor=chosen,
        max_parallel_runs=args.parallel,
        repl=args.repl,
        progress=False,
    )
    wall = time.perf_counter() - started
    cpu = time.process_time() - cpu_started
    wrong = sum(a != g for a, g in zip(report.answers, golds, strict=True))
    runs = len(items)
    floor = math.ceil(runs / args.parallel) * TURNS * args.latency
    return {
        "executor": executor,
        "model": kind,
        "runs": runs,
        "parallel": args.parallel,
        "repl": args.repl,
        "latency_s": args.latency,
        "wall_s": round(wall, 2),
        "floor_s": round(floor, 2),
        "runs_per_s": round(runs / wall, 1),
        "wall_over_floor": round(wall / floor, 3),
        "overhead_ms_per_run": round((wall - floor) * args.parallel / runs * 1000, 1),
        # CPU of this process (the driver; Ray's workers are other processes).
        "driver_cpu_ms_per_run": round(cpu / runs * 1000, 2),
        "wrong_answers": wrong,
        "failed": len(report.failed),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=1000)
    parser.add_argument("--parallel", type=int, default=64)
    parser.add_argument("--latency", type=float, default=0.1)
    parser.add_argument("--records", type=int, default=100, help="salary records per context")
    parser.add_argument("--repl", choices=["inprocess", "subprocess"], default="inprocess")
    parser.add_argument("--executors", nargs="+", default=["local", "ray"])
    parser.add_argument("--models", nargs="+", default=["function", "http"])
    parser.add_argument("--ray-cpus-per-run", type=float, default=0.125)
    parser.add_argument("--json", help="also write the rows to this file")
    args = parser.parse_args()

    items, golds = make_items(args.runs, args.records)
    proc, base_url = start_server(args.latency)
    rows = []
    try:
        for executor in args.executors:
            if executor == "ray":
                import ray

                os.environ.setdefault("RAY_ENABLE_UV_RUN_RUNTIME_ENV", "0")
                t = time.perf_counter()
                ray.init(num_cpus=os.cpu_count() or 2, include_dashboard=False, log_to_driver=False)
                print(f"ray.init: {time.perf_counter() - t:.1f} s (not counted)", file=sys.stderr)
                # Start the worker processes once, as a long-lived cluster would have them.
                measure("ray", "function", items[:32], golds[:32], base_url, args)
            for kind in args.models:
                rows.append(measure(executor, kind, items, golds, base_url, args))
                print(json.dumps(rows[-1]), file=sys.stderr)
    finally:
        proc.kill()
    print(f"load average: {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs", file=sys.stderr)
    columns = list(rows[0])
    print("| " + " | ".join(columns) + " |")
    print("|" + "|".join("---" for _ in columns) + "|")
    for row in rows:
        print("| " + " | ".join(str(row[c]) for c in columns) + " |")
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(rows, handle, indent=2)


if __name__ == "__main__":
    main()
