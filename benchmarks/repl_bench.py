"""REPL benchmark: round-trip latency, worker start-up and memory by context size.

    uv run python benchmarks/repl_bench.py            # everything (1 GB case included)
    uv run python benchmarks/repl_bench.py --quick    # skip the 1 GB context

Prints tables:

1. Execution round trip for a trivial cell (`x = 1`), p50/p99, per REPL.
2. A whole scenario-1-like run (1,000 salary records, one code block, then the answer)
   with a scripted model: the first run in a fresh process (the cold start: the sandbox
   worker starts inside it; median and range over `--cold-trials` processes) and warm runs.
3. Per context size (1 MB, 100 MB, 1 GB str; 100 MB list of records): time from
   `start()` to the context being usable in the worker, an in-memory pickle round trip
   of the same context for scale (the start-up is dominated by copying the context), and
   peak PSS of the host, of the worker(s), and of the whole process tree, as a multiple
   of the context's size in the caller's memory. Each size runs in a fresh process so
   peaks do not mix.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

MB = 1 << 20


# -- helpers ----------------------------------------------------------------------------------


class NullHost:
    async def llm_query(self, prompt: str, model: str | None = None) -> str:
        return ""

    async def rlm_query(self, prompt: str, model: str | None = None) -> str:
        return ""

    async def llm_query_batched(
        self, prompts: Sequence[str], model: str | None = None
    ) -> list[str]:
        return ["" for _ in prompts]

    async def rlm_query_batched(
        self, prompts: Sequence[str], model: str | None = None
    ) -> list[str]:
        return ["" for _ in prompts]


def pss(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Pss:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def descendants(pid: int) -> list[int]:
    import psutil

    try:
        return [c.pid for c in psutil.Process(pid).children(recursive=True)]
    except psutil.Error:
        return []


class PeakSampler:
    """Samples PSS of this process and its descendants (every 50 ms: reading PSS of a
    gigabyte-sized process is not free, and the peaks it looks for last much longer)."""

    def __init__(self, interval: float = 0.05) -> None:
        self.interval = interval
        self.host = 0
        self.children = 0
        self.total = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        me = os.getpid()
        while not self._stop.is_set():
            host = pss(me)
            kids = sum(pss(p) for p in descendants(me))
            self.host = max(self.host, host)
            self.children = max(self.children, kids)
            self.total = max(self.total, host + kids)
            time.sleep(self.interval)

    def __enter__(self) -> PeakSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def tree_pss() -> int:
    me = os.getpid()
    return pss(me) + sum(pss(p) for p in descendants(me))


# -- 1. round trip ------------------------------------------------------------------------------


async def round_trip(kind: str, n: int) -> tuple[float, float]:
    from rlm.repl import InProcessRepl, SubprocessRepl

    repl: Any = InProcessRepl() if kind == "inprocess" else SubprocessRepl(isolation=kind)  # type: ignore[arg-type]
    await repl.start("context", NullHost())
    try:
        for _ in range(50):
            await repl.execute("x = 1")
        times = []
        for _ in range(n):
            t = time.perf_counter()
            await repl.execute("x = 1")
            times.append(time.perf_counter() - t)
    finally:
        await repl.close()
    times.sort()
    return times[len(times) // 2] * 1000, times[int(len(times) * 0.99)] * 1000


# -- 2. scenario-1-like runs ------------------------------------------------------------------


def salary_run(repl: str) -> float:
    import rlm
    from rlm.testing import ScriptedModel

    records = "\n".join(
        f"employee{i},{'Engineering' if i % 3 else 'Sales'},{50_000 + i}" for i in range(1000)
    )
    block = (
        "```repl\ntotal = 0\nfor line in context.splitlines():\n"
        "    name, dept, salary = line.split(',')\n"
        "    if dept == 'Engineering':\n        total += int(salary)\nprint(total)\n```"
    )
    model = ScriptedModel([block, "FINAL(done)"])
    t = time.perf_counter()
    result = rlm.run("Total Engineering salary?", records, model=model, repl=repl)  # type: ignore[arg-type]
    elapsed = time.perf_counter() - t
    assert result.answer == "done", result
    return elapsed * 1000


def one_salary_run(repl: str) -> dict[str, Any]:
    """In a fresh process: the first run (cold worker) and 20 warm ones."""
    first = salary_run(repl)
    warm = []
    for _ in range(20):
        time.sleep(0.1)  # let the spare worker finish starting, as between real runs
        warm.append(salary_run(repl))
    back_to_back = [salary_run(repl) for _ in range(20)]
    return {
        "first": first,
        "warm": statistics.median(warm),
        "back_to_back": statistics.median(back_to_back),
    }


# -- 3. context sizes -------------------------------------------------------------------------


def make_context(kind: str, size: int) -> object:
    if kind == "str":
        unit = "".join(f"employee{i:06d},Engineering,{50_000 + i}\n" for i in range(MB // 32))
        unit = unit[:MB]
        return unit * (size // MB)
    # A list of records: one str per line, as a caller would hold them.
    line = "employee000000,Engineering,50000,some more text to make a record\n"
    return [f"{i:08d}{line}" for i in range(size // (len(line) + 8))]


def one_size(kind: str, size: int) -> dict[str, Any]:
    from rlm.repl import SubprocessRepl

    async def main() -> dict[str, Any]:
        # A spare worker is running, as in a process that has done a run before.
        warmup = SubprocessRepl()
        await warmup.start("", NullHost())
        await warmup.execute("1")
        await warmup.close()
        await asyncio.sleep(0.3)
        base = tree_pss()
        host_base = pss(os.getpid())
        context = make_context(kind, size)
        caller_bytes = pss(os.getpid()) - host_base
        repl = SubprocessRepl()
        with PeakSampler() as peak:
            t = time.perf_counter()
            await repl.start(context, NullHost())
            result = await repl.execute("n = len(context)")
            ready = time.perf_counter() - t
            assert result.error is None, result.error
            await asyncio.sleep(0.05)
        await repl.close()
        # For scale: what one in-memory pickle round trip of the context costs (the naive
        # way to hand it to another process, before any pipe or file is involved).
        import pickle

        t = time.perf_counter()
        copy = pickle.loads(pickle.dumps(context, protocol=5))
        naive = time.perf_counter() - t
        del copy
        return {
            "kind": kind,
            "size": size,
            "caller_bytes": caller_bytes,
            "ready_s": ready,
            "naive_s": naive,
            "base": base,
            "peak_host": peak.host,
            "peak_children": peak.children,
            "peak_total": peak.total,
        }

    return asyncio.run(main())


# -- driver ---------------------------------------------------------------------------------


def in_fresh_process(*args: str) -> dict[str, Any]:
    out = subprocess.run(
        [sys.executable, __file__, *args], capture_output=True, text=True, check=False
    )
    if out.returncode != 0:
        raise RuntimeError(f"benchmark step {args} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


def table(title: str, header: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(header)]
    print(f"\n{title}")
    print("  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)))
    print("  ".join("-" * w for w in widths))
    for row in rows:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="skip the 1 GB context")
    parser.add_argument(
        "--cold-trials",
        type=int,
        default=9,
        metavar="N",
        help="fresh processes for the first-run (cold start) figure (default 9)",
    )
    parser.add_argument("--step", nargs="*", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.step:
        name, *rest = args.step
        if name == "size":
            print(json.dumps(one_size(rest[0], int(rest[1]))))
        elif name == "salary":
            print(json.dumps(one_salary_run(rest[0])))
        return

    from bytecode import compile_for

    from rlm.repl import bwrap

    # As installed: no module compiled from source in a timed step (see bytecode.py).
    compile_for(sys.executable, Path(__file__).resolve().parent.parent / "rlm")
    ok, problem = bwrap.works()
    kinds = ["inprocess", *(["bwrap"] if ok else []), "none"]
    print(f"python {sys.version.split()[0]}, {os.cpu_count()} CPUs, bwrap: {ok or problem}")

    rows = []
    for kind in kinds:
        p50, p99 = asyncio.run(round_trip(kind, 2000))
        rows.append([kind, f"{p50:.3f}", f"{p99:.3f}"])
    table("Round trip of a trivial cell (ms)", ["repl", "p50", "p99"], rows)

    rows = []
    for repl in ("inprocess", "subprocess"):
        runs = []
        for _ in range(args.cold_trials):
            # The previous process's sandboxes are torn down by the kernel after it exits
            # (network namespaces take a while): a cold start is timed on an idle machine.
            time.sleep(0.5)
            runs.append(in_fresh_process("--step", "salary", repl))
        firsts = sorted(r["first"] for r in runs)
        rows.append(
            [
                repl,
                f"{statistics.median(firsts):.1f} ({firsts[0]:.0f}-{firsts[-1]:.0f})",
                f"{statistics.median(r['warm'] for r in runs):.1f}",
                f"{statistics.median(r['back_to_back'] for r in runs):.1f}",
            ]
        )
    table(
        "Scenario-1-like run: 1,000 salary records, one block, answer (ms; scripted model); "
        f"first run = cold start: median (range) of {args.cold_trials} fresh processes",
        ["repl", "first run", "warm (median)", "back-to-back (median)"],
        rows,
    )

    sizes = [("str", MB), ("str", 100 * MB), ("records", 100 * MB)]
    if not args.quick:
        sizes.append(("str", 1024 * MB))
    rows = []
    for kind, size in sizes:
        r = in_fresh_process("--step", "size", kind, str(size))
        caller = max(r["caller_bytes"], 1)
        base = r["base"]
        rows.append(
            [
                f"{kind} {size // MB} MB",
                f"{caller / MB:.0f}",
                f"{r['ready_s'] * 1000:.0f}",
                f"{r['naive_s'] * 1000:.0f}",
                f"{r['peak_host'] / MB:.0f}",
                f"{r['peak_children'] / MB:.0f}",
                f"{r['peak_total'] / MB:.0f}",
                f"{r['peak_total'] / caller:.2f}x",
                f"{(r['peak_total'] - base) / caller:.2f}x",
            ]
        )
    table(
        "Worker start-up and peak memory by context size (sandboxed REPL, default limits)",
        [
            "context",
            "in caller MB",
            "start->ready ms",
            "pickle round trip ms",
            "peak host MB",
            "peak workers MB",
            "peak tree MB",
            "tree/context",
            "(tree-baseline)/context",
        ],
        rows,
    )
    print(
        "\nPSS counts shared pages once. 'baseline' is the tree before the context existed "
        "(interpreter, rlm, one spare worker)."
    )


if __name__ == "__main__":
    main()
