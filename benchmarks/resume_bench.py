"""Resume benchmark: what rebuilding a dead run costs, next to running it again.

    uv run python benchmarks/resume_bench.py               # 20 iterations, 100 ms a call
    uv run python benchmarks/resume_bench.py --repeat 5 --latency 0.5

The run is scenario 2 of benchmarks/run.py (20 turns, each making a variable and
printing a line, then a turn that adds them up and answers) through the OpenAI adapter
against the scripted fake LLM on loopback (benchmarks/fakellm.py), every request
answered after `--latency` seconds. It is recorded with a `TrajectoryRecorder`, then:

- "run again": the same run from the start, every call paid (and waited for) again;
- "resume, killed in the last call": the trajectory cut as a `kill -9` during the 21st
  model call leaves it, resumed with `RLM.resume`: the trajectory is read, the 20
  recorded calls are answered from it, the 20 recorded blocks run again in a new REPL,
  and the call that was in flight is sent again (one live call). The rebuild is the
  time from the call to `resume` until that live request reaches the model;
- "resume a finished run": the whole trajectory, every call answered from the file.

Each figure is the median of `--repeat` runs, for the sandboxed REPL (the default) and
the in-process one. Every answer is checked against the recorded run's.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from fakellm import FakeLLM  # noqa: E402
from scripts import iterations_script  # noqa: E402

import rlm  # noqa: E402
from rlm.providers.openai import OpenAIModel  # noqa: E402
from rlm.telemetry import TrajectoryRecorder  # noqa: E402

STEPS = 20
QUERY = "Add up the steps."


def cut_in_last_call(path: Path, target: Path) -> None:
    """`path` as a kill during its last root model call leaves it."""
    lines = path.read_text().splitlines(keepends=True)
    starts = [i for i, line in enumerate(lines) if '"kind":"model_call_started"' in line]
    target.write_text("".join(lines[: starts[-1] + 1]) + '{"kind":"model_ca')


def bench(repl: str, latency_s: float, repeat: int, workdir: Path) -> dict[str, list[float]]:
    script = iterations_script("rlm", STEPS)
    context = "\n".join(f"record {i:05d}: value {i * 7}" for i in range(10_000))
    times: dict[str, list[float]] = {"again": [], "resume": [], "rebuild": [], "finished": []}
    with FakeLLM(script.reply, latency_s=latency_s) as llm:
        model = OpenAIModel("gpt-4o-mini", base_url=llm.base_url, api_key="bench")
        engine = rlm.RLM(model, max_iterations=30, repl=repl)
        engine.run(QUERY, context)  # warm-up: imports, the first client, a spare worker
        whole = workdir / f"whole-{repl}.jsonl"
        cut = workdir / f"cut-{repl}.jsonl"
        for _ in range(repeat):
            started = time.perf_counter()
            with TrajectoryRecorder(whole) as recorder:
                expected = engine.run(QUERY, context, on_event=recorder).answer
            times["again"].append(time.perf_counter() - started)

            cut_in_last_call(whole, cut)
            sent = len(llm.server.requests)
            wall, started = time.time(), time.perf_counter()
            result = engine.resume(cut, context=context)
            times["resume"].append(time.perf_counter() - started)
            live = llm.server.requests[sent:]
            assert result.answer == expected and len(live) == 1, (result.answer, len(live))
            times["rebuild"].append(live[0].received_at - wall)

            sent = len(llm.server.requests)
            started = time.perf_counter()
            result = engine.resume(whole, context=context)
            times["finished"].append(time.perf_counter() - started)
            assert result.answer == expected and len(llm.server.requests) == sent
        if script.problems or llm.errors:
            raise SystemExit(f"the scripted model saw problems: {script.problems + llm.errors}")
    return times


def _fmt(seconds: float) -> str:
    return f"{seconds * 1000:.0f} ms" if seconds < 1 else f"{seconds:.2f} s"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--latency", type=float, default=0.1, help="seconds a model call")
    parser.add_argument("--repeat", type=int, default=3, help="runs per figure (median)")
    args = parser.parse_args(argv)
    calls = STEPS + 1
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    print(
        f"resume benchmark: a {STEPS}-iteration run ({calls} model calls), "
        f"{args.latency * 1000:.0f} ms a call, median of {args.repeat} (load average {load})"
    )
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for repl in ("subprocess", "inprocess"):
            times = bench(repl, args.latency, args.repeat, Path(tmp))
            t = {name: statistics.median(values) for name, values in times.items()}
            rebuild = f"  of which the rebuild ({STEPS} calls replayed, {STEPS} blocks run)"
            rows += [
                (repl, "run again from the start", t["again"], calls),
                (repl, "resume, killed in the last call", t["resume"], 1),
                (repl, rebuild, t["rebuild"], 0),
                (repl, "resume a finished run (all replayed)", t["finished"], 0),
            ]
    print()
    print("| repl | what | time | model calls made |")
    print("| --- | --- | ---: | ---: |")
    for repl, what, seconds, made in rows:
        print(f"| {repl} | {what} | {_fmt(seconds)} | {made} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
