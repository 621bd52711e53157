"""What the fan-out costs with no SDK and no rlm: the floor this machine really has.

Scenario 3's targets are ratios to a floor of pure latency, (1 root round trip + 16
waves) x the fake LLM's latency. On a machine where the fake LLM shares the CPUs with the
client, a request also waits for the server's own work and for idle CPUs to wake up.
This script runs the same 1,024 sub-calls at 64 in flight against the same fake LLM
(`fakellm.py`, on a thread of this process as in `run.py`) two ways, each in a process
of its own:

- `aiohttp`: one root request, then the 1,024 chunk prompts sent with aiohttp alone (a
  session, a semaphore, `json.dumps`), answers checked as the scripted run checks them;
- `rlm`: `RLM.run` with `OpenAIModel`, the sandboxed REPL and `max_concurrency=64`, as
  `run.py` drives it (the runs after the first reuse the thread's connections).

    uv run python benchmarks/http_floor.py                 # 0.1 s and 1 s, 3 runs each
    uv run python benchmarks/http_floor.py --latency 1.0 --repeat 2

It prints each way's times, their ratio to the floor, and the median latency of a
sub-call as the client saw it.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE / "drivers"))

from _common import COUNT_QUERY, salary_records  # noqa: E402
from fakellm import FakeLLM  # noqa: E402
from scripts import fanout_script  # noqa: E402

CHUNKS = 1024
CONCURRENCY = 64
RECORDS = 10_000


def chunk_prompts() -> list[str]:
    """The prompts `scripts.fanout_code` makes in the REPL, made here."""
    lines = "\n".join(salary_records(RECORDS)[0]).split("\n")
    n = CHUNKS
    parts = ["\n".join(lines[i * len(lines) // n : (i + 1) * len(lines) // n]) for i in range(n)]
    return [f"chunk {i}\n{p}" for i, p in enumerate(parts)]


def drive_aiohttp(base_url: str, repeat: int) -> dict[str, Any]:
    import asyncio

    import aiohttp

    prompts = chunk_prompts()
    url = base_url.rstrip("/") + "/chat/completions"
    headers = {"content-type": "application/json", "authorization": "Bearer bench"}

    async def post(session: aiohttp.ClientSession, messages: list[dict[str, str]]) -> str:
        body = json.dumps({"model": "bench-http", "messages": messages})
        async with session.post(url, data=body, headers=headers) as reply:
            data = json.loads(await reply.read())
        return str(data["choices"][0]["message"]["content"])

    async def one_run(session: aiohttp.ClientSession, latencies: list[float]) -> int:
        await post(
            session,
            [{"role": "system", "content": "root"}, {"role": "user", "content": COUNT_QUERY}],
        )
        gate = asyncio.Semaphore(CONCURRENCY)

        async def sub(i: int, prompt: str) -> bool:
            async with gate:
                started = time.perf_counter()
                text = await post(session, [{"role": "user", "content": prompt}])
                latencies.append(time.perf_counter() - started)
            return text.strip() == f"ok {i}"

        return sum(await asyncio.gather(*(sub(i, p) for i, p in enumerate(prompts))))

    async def main() -> dict[str, Any]:
        times, latencies, answers = [], [], []
        async with aiohttp.ClientSession() as session:
            for _ in range(repeat):
                started = time.perf_counter()
                answers.append(await one_run(session, latencies))
                times.append(time.perf_counter() - started)
        return {"times_s": times, "latencies_s": latencies, "answers": answers}

    return asyncio.run(main())


def drive_rlm(base_url: str, repeat: int) -> dict[str, Any]:
    import rlm
    from rlm.events import Event, ModelCallFinished
    from rlm.providers.openai import OpenAIModel

    model = OpenAIModel("bench-rlm", base_url=base_url, api_key="bench")
    engine = rlm.RLM(model, max_iterations=30, max_concurrency=CONCURRENCY)
    context = "\n".join(salary_records(RECORDS)[0])
    latencies: list[float] = []

    def on_event(event: Event) -> None:
        if isinstance(event, ModelCallFinished) and event.purpose == "subcall":
            latencies.append(event.latency_s)

    times, answers = [], []
    for _ in range(repeat):
        started = time.perf_counter()
        result = engine.run(COUNT_QUERY, context, on_event=on_event)
        times.append(time.perf_counter() - started)
        answers.append(int(result.answer) if result.answer is not None else None)
    return {"times_s": times, "latencies_s": latencies, "answers": answers}


def child(way: str, base_url: str, repeat: int, out: str) -> None:
    drive = drive_aiohttp if way == "aiohttp" else drive_rlm
    with open(out, "w") as f:
        json.dump(drive(base_url, repeat), f)
    os._exit(0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--latency", type=float, nargs="+", default=[0.1, 1.0])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--ways", nargs="+", default=["aiohttp", "rlm"])
    parser.add_argument("--child", nargs=3, metavar=("WAY", "URL", "OUT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        way, url, out = args.child
        child(way, url, args.repeat, out)
        return
    from bytecode import compile_for

    compile_for(sys.executable, HERE.parent / "rlm")
    rows = []
    for latency in args.latency:
        script = fanout_script("rlm", CHUNKS, latency)
        with FakeLLM(script.reply, latency_s=latency) as llm:
            for way in args.ways:
                out = f"/tmp/rlm-http-floor-{os.getpid()}-{way}.json"
                command = [sys.executable, __file__, "--repeat", str(args.repeat)]
                subprocess.run([*command, "--child", way, llm.base_url, out], check=True)
                with open(out) as f:
                    result = json.load(f)
                os.unlink(out)
                if any(a != CHUNKS for a in result["answers"]) or script.problems:
                    sys.exit(f"{way}: wrong answers {result['answers']} {script.problems[:3]}")
                floor = (1 + -(-CHUNKS // CONCURRENCY)) * latency
                times = result["times_s"]
                rows.append(
                    (
                        latency,
                        way,
                        ", ".join(f"{t:.2f}" for t in times),
                        f"{min(times) / floor:.3f}x / {statistics.median(times) / floor:.3f}x",
                        f"{1000 * (statistics.median(result['latencies_s']) - latency):.1f} ms",
                    )
                )
    print()
    head = ("latency", "client", "run times (s)", "best / median vs floor", "sub-call over latency")
    widths = [max(len(str(r[i])) for r in [head, *rows]) for i in range(len(head))]
    for row in [head, *rows]:
        print(" | ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=True)))


if __name__ == "__main__":
    main()
