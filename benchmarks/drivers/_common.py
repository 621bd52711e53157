"""What every framework driver shares: arguments, the data, timing, the result file.

Standard library only (psutil if present): this module is imported by drivers running
in the reference implementations' virtual environments, which do not have our `rlm`
(the official one even owns that import name).

A driver is `python drive_X.py --scenario S --base-url URL --model TOKEN --params JSON
--out FILE`. It builds the framework's objects, notes its own memory (the baseline),
builds the context (the caller's own copy), runs the scenario `repeat` times, and
writes one JSON object to FILE.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import os
import random
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

DEPARTMENTS = (
    ("Engineering", 24, 95_000, 240_000),
    ("Sales", 16, 55_000, 160_000),
    ("Marketing", 10, 60_000, 150_000),
    ("Finance", 8, 70_000, 190_000),
    ("Human Resources", 6, 55_000, 140_000),
    ("Operations", 10, 50_000, 145_000),
    ("Legal", 4, 90_000, 230_000),
    ("Customer Support", 12, 42_000, 95_000),
    ("Research", 6, 85_000, 210_000),
    ("Product", 4, 90_000, 220_000),
)
FIRST = (
    "Aisha", "Chen", "Dmitri", "Elena", "Fatima", "Hana", "Isaac", "Jamal", "Kofi", "Lars",
    "Maria", "Mateo", "Nadia", "Omar", "Priya", "Rosa", "Tariq", "Uma", "Wei", "Zoe",
)  # fmt: skip
LAST = (
    "Abe", "Brown", "Costa", "Dubois", "Garcia", "Haddad", "Kim", "Lee", "Lopez", "Nguyen",
    "Okafor", "Patel", "Rossi", "Sato", "Silva", "Singh", "Smith", "Tanaka", "Wang", "Zhang",
)  # fmt: skip
OFFICES = ("Austin, TX", "Boston, MA", "Chicago, IL", "Denver, CO", "New York, NY", "Remote")

SALARY_QUERY = "What is the total salary of all Engineering employees? Answer with the number only."
COUNT_QUERY = "How many records does the context hold? Answer with the number only."


def salary_records(n: int, seed: int = 0) -> tuple[list[str], int]:
    """`n` employee records (about 170 characters each) and Engineering's salary total."""
    rng = random.Random(f"rlm-bench:{seed}:{n}")
    weights = [w for _, w, _, _ in DEPARTMENTS]
    lines = []
    total = 0
    for number in range(1, n + 1):
        dept, _, low, high = rng.choices(DEPARTMENTS, weights)[0]
        salary = rng.randrange(low, high, 50)
        lines.append(
            f"Employee #{number:07d} | Name: {rng.choice(FIRST)} {rng.choice(LAST)} | "
            f"Department: {dept} | Salary: ${salary:,} | Start date: "
            f"{rng.randint(2004, 2024)}-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d} | "
            f"Office: {rng.choice(OFFICES)}"
        )
        if dept == "Engineering":
            total += salary
    return lines, total


BLOCK_RECORDS = 10_000


@functools.cache
def record_block() -> str:
    """10,000 records, the unit `big_context` repeats. Built before the baseline is
    read (it is the benchmark's scaffolding, not the caller's context): building it
    leaves a megabyte of freed small strings the allocator keeps."""
    lines, _ = salary_records(BLOCK_RECORDS)
    return "\n".join(lines) + "\n"


def big_context(target_bytes: int) -> tuple[str, int]:
    """About `target_bytes` of records (ASCII, so bytes == characters) and the number of
    lines: `record_block()` repeated, one allocation of the final size, so the caller
    holds exactly one copy."""
    block = record_block()
    repeat = max(1, target_bytes // len(block))
    return block * repeat, repeat * BLOCK_RECORDS


# -- the process -----------------------------------------------------------------------


def pss_bytes(tree: bool = True) -> int | None:
    """The proportional set size (shared pages counted once) of this process and, with
    `tree`, of all its descendants (a framework's idle workers are part of its baseline),
    if measurable."""
    try:
        import psutil

        me = psutil.Process()
        procs = [me, *me.children(recursive=True)] if tree else [me]
        total = 0
        seen = set()
        for proc in procs:
            with contextlib.suppress(psutil.Error):
                info = proc.memory_full_info()
                if tuple(info) not in seen:  # a vfork()ed child shares its parent's map
                    seen.add(tuple(info))
                    total += int(info.pss)
        return total
    except Exception:
        return None


def settled_pss(timeout_s: float = 5.0) -> int | None:
    """The tree's PSS once it has stopped changing: a framework may still be starting
    an idle worker after the warm-up run (a booting interpreter grows for tens of
    milliseconds), which belongs to the baseline, not to the measured run."""
    last = pss_bytes()
    deadline = time.monotonic() + timeout_s
    while last is not None and time.monotonic() < deadline:
        time.sleep(0.1)
        now = pss_bytes()
        if now is None or abs(now - last) < 256 * 1024:
            return now
        last = now
    return last


@dataclass
class Args:
    scenario: str
    base_url: str
    model: str
    params: dict[str, Any]
    out: str


def parse_args() -> Args:
    parser = argparse.ArgumentParser()
    parser.add_argument("--scenario", required=True)
    parser.add_argument("--base-url", required=True)
    parser.add_argument("--model", required=True)
    parser.add_argument("--params", default="{}")
    parser.add_argument("--out", required=True)
    ns = parser.parse_args()
    return Args(ns.scenario, ns.base_url, ns.model, json.loads(ns.params), ns.out)


@dataclass
class Task:
    query: str
    context: str
    expected: str


def build_task(args: Args) -> Task:
    """The query, the context and the answer the scripted run must produce."""
    p = args.params
    if args.scenario == "salary":
        lines, total = salary_records(p.get("records", 1_000))
        return Task(SALARY_QUERY, "\n".join(lines), str(total))
    if args.scenario == "iterations":
        lines, _ = salary_records(p.get("records", 1_000))
        context = "\n".join(lines)
        steps = p.get("steps", 20)
        return Task(COUNT_QUERY, context, str(steps * len(context) + steps * (steps + 1) // 2))
    if args.scenario == "fanout":
        lines, _ = salary_records(p.get("records", 10_000))
        return Task(COUNT_QUERY, "\n".join(lines), str(p["chunks"]))
    if args.scenario == "large":
        context, n_lines = big_context(p["bytes"])
        return Task(COUNT_QUERY, context, str(n_lines))
    raise SystemExit(f"unknown scenario {args.scenario!r}")


# Extra numbers a driver wants in its result (merged in at the end).
REPORT: dict[str, Any] = {}

RunFn = Callable[[str, str], str]
# Called (untimed) before each timed run; returns what the run calls.
PrepareFn = Callable[[], RunFn]


def main(setup: Callable[[Args], PrepareFn]) -> None:
    """Set the framework up, then time `repeat` runs of the scenario and write the result.

    `setup(args)` builds what lives for the whole process and returns `prepare`, which
    is called before each run, untimed, and returns the function that is timed.
    """
    args = parse_args()
    result: dict[str, Any] = {"scenario": args.scenario, "params": args.params, "pid": os.getpid()}
    try:
        started = time.perf_counter()
        prepare = setup(args)
        result["setup_s"] = time.perf_counter() - started
        if args.params.get("warmup"):
            # One small run first, so that what a framework imports or builds on first
            # use is part of the baseline and not counted against the context.
            lines, _ = salary_records(200)
            t0 = time.perf_counter()
            prepare()(COUNT_QUERY, "\n".join(lines))
            result["warmup_s"] = time.perf_counter() - t0
        if args.scenario == "large":
            record_block()
        result["baseline_pss"] = settled_pss()
        task = build_task(args)
        result["context_chars"] = len(task.context)
        result["expected"] = task.expected
        result["ready_pss"] = pss_bytes()
        times, cpu, answers = [], [], []
        for _ in range(int(args.params.get("repeat", 1))):
            run = prepare()
            c0, t0 = time.process_time(), time.perf_counter()
            answer = run(task.query, task.context)
            times.append(time.perf_counter() - t0)
            cpu.append(time.process_time() - c0)
            answers.append(None if answer is None else str(answer).strip())
        result["times_s"] = times
        # CPU time of this process only (its threads included, worker processes not).
        result["cpu_s"] = cpu
        result["answers"] = answers
        result["ok"] = all(a == task.expected for a in answers)
        result["end_pss"] = pss_bytes()
        result.update(REPORT)
    except BaseException as exc:  # report, don't hide: the runner prints it
        result["ok"] = False
        result["error"] = f"{type(exc).__name__}: {exc}"
        result["traceback"] = traceback.format_exc()[-4000:]
    with open(args.out, "w") as f:
        json.dump(result, f)
    sys.stdout.flush()
    sys.stderr.flush()
    # Skip interpreter teardown (freeing a gigabyte context object by object): the run
    # is over and measured; how fast a process exits is not what is benchmarked.
    os._exit(0)
