"""rlm's performance benchmark, side by side with the reference implementations.

    uv run python benchmarks/run.py                 # everything (1 GB cases included)
    uv run python benchmarks/run.py --quick         # no 1 GB cases, fewer repeats
    uv run python benchmarks/run.py --only salary fanout
    uv run python benchmarks/run.py --frameworks rlm rlms

Each framework runs in its own process: this library with the project's interpreter,
`rlms` 0.1.3 (the official implementation) and `dspy.RLM` with the interpreters of
their virtual environments under benchmarks/.venvs/ (built by setup_refs.sh on first
use). All of them talk to one scripted fake LLM served here over loopback HTTP in the
OpenAI chat-completions format (benchmarks/fakellm.py), which replies with the same
work in each framework's own format (benchmarks/scripts.py), so the numbers count the
framework and not a model. Every run's answer is checked.

Memory is the proportional set size (PSS: shared pages counted once) summed over the
driver's whole process tree (sandbox workers included), sampled by a monitor thread in
this process every few milliseconds. Raw results go to benchmarks/results/.
See docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psutil

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from bytecode import compile_for  # noqa: E402
from fakellm import FakeLLM  # noqa: E402
from scripts import (  # noqa: E402
    FRAMEWORKS,
    Script,
    fanout_script,
    iterations_script,
    large_script,
    salary_script,
)

DRIVERS = HERE / "drivers"
VENVS = HERE / ".venvs"
RESULTS = HERE / "results"
SCENARIOS = ("salary", "iterations", "fanout", "large", "import")
MB = 1_000_000
GB = 1_000_000_000
FANOUT_LATENCY_S = 0.1
#: Processes timed for the first run of a fresh process (the best and the median shown).
FRESH_TRIALS = 7
#: Seconds per model call in the fresh first run's "with a model that takes time" variant.
FRESH_LATENCY_S = 0.2
#: The long-latency fan-out (1,024 chunks at concurrency 64 only): rlm's per-call cost
#: should vanish next to a model that takes a second.
FANOUT_SLOW_LATENCY_S = 1.0
FANOUT_RECORDS = 10_000


# -- the frameworks' interpreters -----------------------------------------------------------


def python_for(framework: str) -> str:
    if framework == "rlm":
        return sys.executable
    return str(VENVS / framework / "bin" / "python")


def ensure_reference_envs(frameworks: list[str]) -> None:
    missing = [f for f in frameworks if f != "rlm" and not (VENVS / f / ".ready").exists()]
    if missing:
        print(f"building reference environments ({', '.join(missing)}): setup_refs.sh ...")
        subprocess.run(["bash", str(HERE / "setup_refs.sh")], check=True)


def reference_versions(frameworks: list[str]) -> dict[str, str]:
    versions = {}
    for fw in frameworks:
        dist = {"rlm": "rlm", "rlms": "rlms", "dspy": "dspy"}[fw]
        out = subprocess.run(
            [python_for(fw), "-c", f"import importlib.metadata as m; print(m.version({dist!r}))"],
            capture_output=True,
            text=True,
            cwd=tempfile.gettempdir(),
        )
        versions[fw] = out.stdout.strip() or "?"
    return versions


# -- watching a process tree ----------------------------------------------------------------


def _short_name(cmd: list[str]) -> str:
    """ "python drive_rlm.py", "bwrap", "python worker.py": enough to tell them apart."""
    if not cmd:
        return "?"
    script = next((Path(c).name for c in cmd[1:] if c.endswith(".py")), "")
    return f"{Path(cmd[0]).name} {script}".strip()


class TreeMonitor:
    """Watches a process and all its descendants until stopped: the peak of their summed
    PSS, what it was made of, and the CPU time each process used (for the noise account).

    PSS is expensive to read for a big process (the kernel walks its page tables), so
    reading it every few milliseconds would slow the run it measures. The monitor reads the
    cheap RSS every `interval_s` (of the processes found by the last scan of the tree,
    every `tree_s`), and the PSS as often as keeps it under `duty` of one core
    (every 10-20 ms for small processes, about every 0.2 s for a tree holding 2 GB), and
    sooner (up to a third of a core) while the RSS grows, so that a short peak is caught
    while it lasts.
    """

    def __init__(
        self, pid: int, interval_s: float = 0.005, duty: float = 0.1, tree_s: float = 0.05
    ) -> None:
        self.root = psutil.Process(pid)
        self.interval_s = interval_s
        # Finding the descendants scans all of /proc (about 1 ms of CPU, holding the GIL
        # the fake LLM's thread needs): done every `tree_s`, not at every sample.
        self.tree_s = tree_s
        self._procs: list[psutil.Process] = []
        self._next_tree = 0.0
        self.duty = duty
        self.peak_pss = 0
        self.pss_samples = 0
        self.cpu: dict[int, float] = {}
        self.peak_parts: list[tuple[int, int]] = []
        self.names: dict[int, str] = {}
        self._next_pss = 0.0
        self._last_pss = 0.0
        self._last_spent = 0.0
        self._rss_at_pss = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="pss-monitor", daemon=True)

    def __enter__(self) -> TreeMonitor:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _tree(self) -> list[psutil.Process]:
        try:
            return [self.root, *self.root.children(recursive=True)]
        except psutil.Error:
            return []

    def sample(self) -> None:
        if time.perf_counter() >= self._next_tree:
            self._procs = self._tree()
            self._next_tree = time.perf_counter() + self.tree_s
        procs = self._procs
        rss = 0
        seen = set()
        for proc in procs:
            try:
                info = proc.memory_info()
                times = proc.cpu_times()
            except psutil.Error:
                continue
            self.cpu[proc.pid] = times.user + times.system
            if proc.pid not in self.names:
                with contextlib.suppress(psutil.Error):
                    self.names[proc.pid] = _short_name(proc.cmdline())
            if tuple(info) not in seen:
                seen.add(tuple(info))
                rss += info.rss
        now = time.perf_counter()
        # Read the PSS on schedule, and at once (within reason) when memory has grown
        # since the last reading: a short-lived peak is not missed.
        grown = rss > 1.02 * self._rss_at_pss and now >= self._last_pss + max(
            0.005, 2 * self._last_spent
        )
        if now >= self._next_pss or grown:
            self._sample_pss(procs)
            spent = time.perf_counter() - now
            self._rss_at_pss = rss
            self._last_pss = now
            self._last_spent = spent
            self._next_pss = time.perf_counter() + spent * (1 / self.duty - 1)

    def _sample_pss(self, procs: list[psutil.Process]) -> None:
        total = 0
        parts = []
        seen = set()
        for proc in procs:
            try:
                info = proc.memory_full_info()
            except psutil.Error:
                continue
            # A child between vfork() and exec() shares its parent's memory map and
            # reports the very same numbers: count one memory map once.
            if tuple(info) in seen:
                continue
            seen.add(tuple(info))
            total += info.pss
            parts.append((proc.pid, info.pss))
        self.pss_samples += 1
        if total > self.peak_pss:
            self.peak_pss = total
            self.peak_parts = parts

    def _watch(self) -> None:
        while not self._stop.is_set():
            self.sample()
            self._stop.wait(self.interval_s)

    def peak_breakdown(self) -> list[dict[str, Any]]:
        """Each process's PSS at the peak (what the peak was made of)."""
        out = []
        for pid, pss in sorted(self.peak_parts, key=lambda p: -p[1]):
            name = self.names.get(pid)
            if name is None:
                name = "?"
            out.append({"pid": pid, "pss": pss, "process": name[:60]})
        return out

    @property
    def tree_cpu_s(self) -> float:
        return sum(self.cpu.values())


# -- one driver run --------------------------------------------------------------------------


@dataclass
class DriverRun:
    framework: str
    scenario: str
    params: dict[str, Any]
    ok: bool = False
    times_s: list[float] = field(default_factory=list)
    answers: list[Any] = field(default_factory=list)
    expected: str | None = None
    error: str | None = None
    peak_pss: int = 0
    baseline_pss: int | None = None
    context_chars: int = 0
    server: dict[str, Any] = field(default_factory=dict)
    script_problems: list[str] = field(default_factory=list)
    wall_s: float = 0.0
    noise: float = 0.0
    peak_breakdown: list[dict[str, Any]] = field(default_factory=list)
    cpu_split: dict[str, float] = field(default_factory=dict)
    raw: dict[str, Any] = field(default_factory=dict)

    @property
    def first_s(self) -> float | None:
        return self.times_s[0] if self.times_s else None

    @property
    def warm_s(self) -> float | None:
        """Median of the runs after the first (the first when there is only one)."""
        if not self.times_s:
            return None
        rest = self.times_s[1:] or self.times_s
        return statistics.median(rest)

    @property
    def best_s(self) -> float | None:
        return min(self.times_s) if self.times_s else None

    def as_dict(self) -> dict[str, Any]:
        return {
            "framework": self.framework,
            "scenario": self.scenario,
            "params": self.params,
            "ok": self.ok,
            "times_s": self.times_s,
            "answers": self.answers[:3],
            "expected": self.expected,
            "error": self.error,
            "peak_pss": self.peak_pss,
            "baseline_pss": self.baseline_pss,
            "context_chars": self.context_chars,
            "server": self.server,
            "script_problems": self.script_problems[:5],
            "wall_s": self.wall_s,
            "noise_cores": round(self.noise, 3),
            "peak_breakdown": self.peak_breakdown,
            "cpu_split": self.cpu_split,
            "construct_s": self.raw.get("construct_s"),
            "cpu_s": self.raw.get("cpu_s"),
        }


class Bench:
    def __init__(
        self, llm: FakeLLM, scripts: dict[str, Script], log_dir: Path, quiet_wait_s: float
    ) -> None:
        self.llm = llm
        self.scripts = scripts
        self.log_dir = log_dir
        self.quiet_wait_s = quiet_wait_s

    def drive(
        self,
        framework: str,
        scenario: str,
        script: Script,
        params: dict[str, Any],
        timeout_s: float = 900,
    ) -> DriverRun:
        token = f"bench-{uuid.uuid4().hex[:12]}"
        self.scripts[token] = script
        run = DriverRun(framework, scenario, params)
        label = f"{framework}-{scenario}-" + "-".join(f"{k}{v}" for k, v in params.items())
        out = self.log_dir / f"{label}.json"
        log = self.log_dir / f"{label}.log"
        cmd = [
            python_for(framework),
            str(DRIVERS / f"drive_{framework}.py"),
            "--scenario", scenario,
            "--base-url", self.llm.base_url,
            "--model", token,
            "--params", json.dumps(params),
            "--out", str(out),
        ]  # fmt: skip
        env = dict(os.environ)
        env.pop("VIRTUAL_ENV", None)
        env["PYTHONUNBUFFERED"] = "1"
        env.setdefault("OPENAI_API_KEY", "bench")
        if self.quiet_wait_s:
            wait_for_quiet(self.quiet_wait_s)
        started = time.perf_counter()
        with open(log, "w") as log_file, CpuAccount() as account:
            proc = subprocess.Popen(
                cmd,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                cwd=tempfile.gettempdir(),
                env=env,
            )
            with TreeMonitor(proc.pid) as monitor:
                try:
                    proc.wait(timeout=timeout_s)
                except subprocess.TimeoutExpired:
                    _kill_tree(proc.pid)
                    proc.wait()
                    run.error = f"timed out after {timeout_s:.0f} s"
            account.finish(monitor.tree_cpu_s)
        run.wall_s = time.perf_counter() - started
        run.noise = account.other_share
        run.cpu_split = {
            "framework_tree_s": round(account.tree_cpu_s, 3),
            "runner_and_fake_llm_s": round(account.runner_cpu_s, 3),
            "other_processes_s": round(account.other_cpu_s, 3),
        }
        run.peak_pss = monitor.peak_pss
        run.peak_breakdown = monitor.peak_breakdown()
        run.server = self.llm.take_stats(token)
        run.script_problems = list(script.problems)
        del self.scripts[token]
        if out.exists():
            raw = json.loads(out.read_text())
            run.raw = raw
            run.times_s = raw.get("times_s", [])
            run.answers = raw.get("answers", [])
            run.expected = raw.get("expected")
            run.baseline_pss = raw.get("baseline_pss")
            run.context_chars = raw.get("context_chars", 0)
            run.ok = bool(raw.get("ok")) and not script.problems
            run.error = run.error or raw.get("error")
        elif run.error is None:
            run.error = f"the driver exited with {proc.returncode} and no result (see {log})"
        if not run.ok and run.error is None:
            run.error = f"wrong answer {run.answers[:1]} (expected {run.expected})" + (
                f"; script: {script.problems[0]}" if script.problems else ""
            )
        status = "ok" if run.ok else f"FAILED: {run.error}"
        if run.noise > 0.15:
            status += f" (noisy: other processes used {run.noise:.2f} cores meanwhile)"
        timing = ", ".join(f"{t:.3f}" for t in run.times_s[:6])
        print(
            f"  {framework:5} {scenario:10} {json.dumps(params):48} [{timing}] s, "
            f"peak {run.peak_pss / MB:,.0f} MB, {status}",
            flush=True,
        )
        return run


def wait_for_quiet(max_wait_s: float, busy_pct: float = 25.0) -> float:
    """Wait (up to `max_wait_s`) until the machine's CPUs are mostly idle, so that other
    work on this shared machine does not land in the numbers. Returns the wait."""
    started = time.perf_counter()
    quiet = 0
    while time.perf_counter() - started < max_wait_s:
        if psutil.cpu_percent(interval=0.5) < busy_pct:
            quiet += 1
            if quiet >= 2:
                break
        else:
            quiet = 0
    return time.perf_counter() - started


class CpuAccount:
    """CPU seconds the machine spent outside the run under test (noise) during a run."""

    def __init__(self) -> None:
        self.me = psutil.Process()

    def __enter__(self) -> CpuAccount:
        self.t0 = time.perf_counter()
        self.sys0 = _busy(psutil.cpu_times())
        self.me0 = sum(self.me.cpu_times()[:2])
        return self

    def finish(self, tree_cpu_s: float) -> None:
        wall = time.perf_counter() - self.t0
        busy = _busy(psutil.cpu_times()) - self.sys0
        mine = sum(self.me.cpu_times()[:2]) - self.me0
        self.tree_cpu_s = tree_cpu_s
        self.runner_cpu_s = mine
        self.other_cpu_s = max(0.0, busy - tree_cpu_s - mine)
        self.other_share = self.other_cpu_s / wall if wall > 0 else 0.0

    def __exit__(self, *exc: object) -> None:
        pass


def _busy(t: Any) -> float:
    return float(t.user + t.nice + t.system + getattr(t, "irq", 0) + getattr(t, "softirq", 0))


def _kill_tree(pid: int) -> None:
    try:
        root = psutil.Process(pid)
        procs = [root, *root.children(recursive=True)]
    except psutil.Error:
        return
    for p in procs:
        with contextlib.suppress(psutil.Error):
            p.kill()


def import_time(framework: str, runs: int) -> dict[str, Any]:
    module = {"rlm": "rlm", "rlms": "rlm", "dspy": "dspy"}[framework]
    env = dict(os.environ)
    env.pop("VIRTUAL_ENV", None)
    env["LITELLM_LOCAL_MODEL_COST_MAP"] = "True"
    seconds, loaded = [], []
    for _ in range(runs + 1):  # the first warms the file cache and is dropped
        out = subprocess.run(
            [python_for(framework), str(DRIVERS / "import_time.py"), module],
            capture_output=True,
            text=True,
            cwd=tempfile.gettempdir(),
            env=env,
            check=True,
        )
        data = json.loads(out.stdout.strip().splitlines()[-1])
        seconds.append(data["seconds"])
        loaded = data["loaded"]
    seconds = seconds[1:]
    result = {"median_s": statistics.median(seconds), "runs_s": seconds, "loaded": loaded}
    print(f"  {framework:5} import     median {result['median_s']:.3f} s (loads {loaded})")
    return result


# -- the scenarios ----------------------------------------------------------------------------


def scenario_runs(args: argparse.Namespace) -> list[tuple[str, str, Any, dict[str, Any], float]]:
    """(framework, scenario, script factory, params, timeout) in the order they run."""
    quick = args.quick
    plan: list[tuple[str, str, Any, dict[str, Any], float]] = []
    fws = args.frameworks
    if "salary" in args.only:
        repeat = 4 if quick else 8
        for fw in fws:
            plan.append((fw, "salary", salary_script, {"records": 1_000, "repeat": repeat}, 300))
        if "rlm" in fws:  # for reference: what the sandbox costs
            params = {"records": 1_000, "repeat": repeat, "repl": "inprocess"}
            plan.append(("rlm", "salary", salary_script, params, 300))
            # The first run of a fresh process, model and engine built inside it: one
            # run per process, so several processes.
            for trial in range(FRESH_TRIALS if not quick else 3):
                params = {"records": 1_000, "repeat": 1, "fresh": True, "trial": trial}
                plan.append(("rlm", "salary", salary_script, params, 300))
            # The same with a model that takes FRESH_LATENCY_S per call: what a user with
            # a real model waits beyond the model (the sandbox starts beside its first call).
            for trial in range(FRESH_TRIALS if not quick else 3):
                params = {
                    "records": 1_000,
                    "repeat": 1,
                    "fresh": True,
                    "trial": trial,
                    "latency_s": FRESH_LATENCY_S,
                }
                plan.append(("rlm", "salary", _salary_with_latency, params, 300))
    if "iterations" in args.only:
        repeat = 2 if quick else 4
        for fw in fws:
            plan.append((fw, "iterations", iterations_script, {"steps": 20, "repeat": repeat}, 600))
    if "fanout" in args.only:
        for chunks in args.fanout_chunks:
            for fw in fws:
                concurrencies = (16, 64) if fw == "rlm" else (None,)
                for conc in concurrencies:
                    params: dict[str, Any] = {
                        "records": FANOUT_RECORDS,
                        "chunks": chunks,
                        "repeat": 1 if quick else 3,
                    }
                    if conc is not None:
                        params["max_concurrency"] = conc
                    factory = _fanout_factory(chunks)
                    plan.append((fw, "fanout", factory, params, 600))
        if 1024 in args.fanout_chunks and "rlm" in fws:
            params = {
                "records": FANOUT_RECORDS,
                "chunks": 1024,
                "repeat": 1 if quick else 3,
                "max_concurrency": 64,
                "latency_s": FANOUT_SLOW_LATENCY_S,
            }
            plan.append(
                ("rlm", "fanout", _fanout_factory(1024, FANOUT_SLOW_LATENCY_S), params, 600)
            )
    if "large" in args.only:
        sizes = [100 * MB] if quick else [100 * MB, GB]
        for size in sizes:
            for fw in fws:
                repls = ("subprocess", "inprocess") if fw == "rlm" else (None,)
                for repl in repls:
                    params = {"bytes": size, "warmup": True}
                    if repl is not None:
                        params["repl"] = repl
                    timeout = 300 if size < GB else 1800
                    plan.append((fw, "large", large_script, params, timeout))
    return plan


def _salary_with_latency(framework: str) -> Script:
    script = salary_script(framework)
    script.latency_s = FRESH_LATENCY_S
    return script


def _fanout_factory(chunks: int, latency_s: float = FANOUT_LATENCY_S) -> Any:
    def make(fw: str) -> Script:
        return fanout_script(fw, chunks, latency_s)

    return make


# -- the table -------------------------------------------------------------------------------


def _fmt_s(v: float | None) -> str:
    return "-" if v is None else (f"{v * 1000:.0f} ms" if v < 1 else f"{v:.2f} s")


def _fmt_mb(v: float | None) -> str:
    return "-" if v is None else (f"{v / MB:,.0f} MB" if v < 10 * GB else f"{v / GB:.1f} GB")


def _ratio(a: float | None, b: float | None) -> float | None:
    if a is None or b is None or b == 0:
        return None
    return a / b


def _fmt_ratio(r: float | None) -> str:
    return "-" if r is None else f"{r:.2f}x"


@dataclass
class Row:
    metric: str
    values: dict[str, str]
    ratio: float | None = None
    target: str = ""
    verdict: str = ""


def _pick(runs: list[DriverRun], fw: str, scenario: str, **match: Any) -> DriverRun | None:
    for r in runs:
        if (
            r.framework == fw
            and r.scenario == scenario
            and all(r.params.get(k) == v for k, v in match.items())
        ):
            return r
    return None


def _val(run: DriverRun | None, fn: Any, fmt: Any) -> str:
    if run is None:
        return "-"
    if not run.ok:
        return "FAIL"
    return fmt(fn(run))


def _check(ok: bool | None) -> str:
    return "" if ok is None else ("met" if ok else "MISSED")


def build_rows(runs: list[DriverRun], imports: dict[str, Any]) -> list[Row]:
    rows: list[Row] = []
    ok = [r for r in runs if r.ok]

    def get(fw: str, scenario: str, **m: Any) -> DriverRun | None:
        return _pick(ok, fw, scenario, **m)

    def shown(fw: str, scenario: str, **m: Any) -> DriverRun | None:
        return _pick(runs, fw, scenario, **m)

    # 1. salary
    if any(r.scenario == "salary" for r in runs):
        ours, ref = get("rlm", "salary", repl=None, fresh=None), get("rlms", "salary")
        for label, fn in (("warm median", "warm_s"), ("first run", "first_s")):
            ratio = _ratio(getattr(ours, fn, None), getattr(ref, fn, None))
            is_target = fn == "warm_s"
            rows.append(
                Row(
                    f"1 salary 1k records: run time, {label}",
                    {
                        fw: _val(
                            shown(fw, "salary", repl=None, fresh=None),
                            lambda r, fn=fn: getattr(r, fn),
                            _fmt_s,
                        )
                        for fw in FRAMEWORKS
                    },
                    ratio,
                    "<= 0.10x" if is_target else "",
                    _check(None if ratio is None or not is_target else ratio <= 0.10),
                )
            )
        ratio = _ratio(getattr(ours, "peak_pss", None), getattr(ref, "peak_pss", None))
        rows.append(
            Row(
                "1 salary 1k records: peak PSS, process tree",
                {
                    fw: _val(
                        shown(fw, "salary", repl=None, fresh=None), lambda r: r.peak_pss, _fmt_mb
                    )
                    for fw in FRAMEWORKS
                },
                ratio,
            )
        )
        inproc = shown("rlm", "salary", repl="inprocess")
        if inproc is not None:
            rows.append(
                Row(
                    "1 salary, warm median, rlm repl=inprocess (for reference)",
                    {"rlm": _val(inproc, lambda r: r.warm_s, _fmt_s)},
                    _ratio(
                        getattr(get("rlm", "salary", repl="inprocess"), "warm_s", None),
                        getattr(ref, "warm_s", None),
                    ),
                )
            )

    fresh = [
        r
        for r in ok
        if r.scenario == "salary"
        and r.params.get("fresh")
        and not r.params.get("latency_s")
        and r.times_s
    ]
    if fresh:
        firsts = sorted(r.times_s[0] for r in fresh)
        best, median = firsts[0], statistics.median(firsts)
        rows.append(
            Row(
                f"1 salary: first run of a fresh process, model and engine built in it "
                f"(best, median of {len(firsts)})",
                {"rlm": f"{_fmt_s(best)}, {_fmt_s(median)}"},
                None,
                "< 50 ms",
                _check(median < 0.05),
            )
        )
    slow = [r for r in ok if r.scenario == "salary" and r.params.get("latency_s") and r.times_s]
    if slow:
        floor = 2 * FRESH_LATENCY_S  # two model calls
        firsts = sorted(r.times_s[0] for r in slow)
        best, median = firsts[0], statistics.median(firsts)
        rows.append(
            Row(
                f"1 salary: the same, {FRESH_LATENCY_S * 1000:.0f} ms per model call: time "
                f"beyond the two calls ({floor * 1000:.0f} ms) (best, median of {len(firsts)})",
                {"rlm": f"{_fmt_s(best - floor)}, {_fmt_s(median - floor)}"},
                None,
                "",
                "",
            )
        )

    # 2. iterations
    if any(r.scenario == "iterations" for r in runs):
        ours, ref = get("rlm", "iterations"), get("rlms", "iterations")
        ratio = _ratio(getattr(ours, "warm_s", None), getattr(ref, "warm_s", None))
        rows.append(
            Row(
                "2 twenty iterations: run time (median)",
                {
                    fw: _val(shown(fw, "iterations"), lambda r: r.warm_s, _fmt_s)
                    for fw in FRAMEWORKS
                },
                ratio,
            )
        )

        def sent(r: DriverRun) -> float:
            return r.server["chars_sent"] / max(1, len(r.times_s))

        ratio = _ratio(sent(ours) if ours else None, sent(ref) if ref else None)
        rows.append(
            Row(
                "2 twenty iterations: characters sent per run",
                {
                    fw: _val(shown(fw, "iterations"), sent, lambda v: f"{v:,.0f}")
                    for fw in FRAMEWORKS
                },
                ratio,
                "<= 1.00x",
                _check(None if ratio is None else ratio <= 1.0),
            )
        )
        growth = {fw: _growth(get(fw, "iterations")) for fw in FRAMEWORKS}
        rows.append(
            Row(
                "2 growth per iteration, iterations 2-6 -> 17-21",
                {
                    fw: ("-" if g is None else f"{g[0]:,.0f} -> {g[1]:,.0f}")
                    for fw, g in growth.items()
                },
                None,
                "constant",
                _check(
                    None
                    if growth.get("rlm") is None
                    else abs(growth["rlm"][1] - growth["rlm"][0]) <= 0.02 * growth["rlm"][0]
                ),
            )
        )

    # 3. fan-out
    for chunks in (32, 256, 1024):
        ref = get("rlms", "fanout", chunks=chunks)
        if not any(r.scenario == "fanout" and r.params.get("chunks") == chunks for r in runs):
            continue
        for conc in (16, 64):
            ours = get("rlm", "fanout", chunks=chunks, max_concurrency=conc, latency_s=None)
            floor = (1 + math.ceil(chunks / conc)) * FANOUT_LATENCY_S
            values = {
                "rlm": _val(
                    shown("rlm", "fanout", chunks=chunks, max_concurrency=conc, latency_s=None),
                    lambda r, floor=floor: (r.best_s, floor),
                    lambda v: f"{_fmt_s(v[0])} ({v[0] / v[1]:.2f}x floor)",
                )
            }
            for fw, fixed in (("rlms", 16), ("dspy", 8)):
                fw_floor = (1 + math.ceil(chunks / fixed)) * FANOUT_LATENCY_S
                values[fw] = _val(
                    shown(fw, "fanout", chunks=chunks),
                    lambda r, f=fw_floor: (r.best_s, f),
                    lambda v: f"{_fmt_s(v[0])} ({v[0] / v[1]:.2f}x floor)",
                )
            ratio = _ratio(getattr(ours, "best_s", None), getattr(ref, "best_s", None))
            target, verdict = "", ""
            if chunks == 1024 and conc == 64 and ours is not None:
                vs_floor = ours.best_s / floor if ours.best_s else None
                target = "<= 1.15x floor, <= 0.30x"
                verdict = _check(
                    None
                    if vs_floor is None or ratio is None
                    else (vs_floor <= 1.15 and ratio <= 0.30)
                )
            rows.append(
                Row(
                    f"3 fan-out {chunks:,} chunks, rlm at concurrency {conc} "
                    f"(floor {_fmt_s(floor)})",
                    values,
                    ratio,
                    target,
                    verdict,
                )
            )

    slow = shown("rlm", "fanout", chunks=1024, latency_s=FANOUT_SLOW_LATENCY_S)
    if slow is not None:
        floor = (1 + math.ceil(1024 / 64)) * FANOUT_SLOW_LATENCY_S
        best = slow.best_s if slow.ok else None
        rows.append(
            Row(
                f"3 fan-out 1,024 chunks, rlm at concurrency 64, {FANOUT_SLOW_LATENCY_S:g} s "
                f"a call (floor {_fmt_s(floor)})",
                {"rlm": "-" if best is None else f"{_fmt_s(best)} ({best / floor:.3f}x floor)"},
                None,
                "<= 1.02x floor",
                _check(None if best is None else best / floor <= 1.02),
            )
        )

    # 4. large context
    for size in (100 * MB, GB):
        if not any(r.scenario == "large" and r.params.get("bytes") == size for r in runs):
            continue
        name = "100 MB" if size < GB else "1 GB"
        ref = get("rlms", "large", bytes=size)
        for repl in ("subprocess", "inprocess"):
            ours = get("rlm", "large", bytes=size, repl=repl)
            cell = shown("rlm", "large", bytes=size, repl=repl)
            values = {"rlm": _val(cell, lambda r: r.best_s, _fmt_s)}
            for fw in ("rlms", "dspy"):
                values[fw] = _val(shown(fw, "large", bytes=size), lambda r: r.best_s, _fmt_s)
            ratio = _ratio(getattr(ours, "best_s", None), getattr(ref, "best_s", None))
            rows.append(
                Row(
                    f"4 large {name}: run time, rlm repl={repl}",
                    values,
                    ratio,
                    "<= 0.50x",
                    _check(None if ratio is None else ratio <= 0.5),
                )
            )
            limit = 2.0 if repl == "subprocess" else 1.2
            values = {"rlm": _val(cell, _mem_x, lambda v: f"{_fmt_mb(v[0])} ({v[1]:.3f}x ctx)")}
            for fw in ("rlms", "dspy"):
                values[fw] = _val(
                    shown(fw, "large", bytes=size),
                    _mem_x,
                    lambda v: f"{_fmt_mb(v[0])} ({v[1]:.3f}x ctx)",
                )
            ours_x = _mem_x(ours)[1] if ours else None
            ref_x = _mem_x(ref)[1] if ref else None
            rows.append(
                Row(
                    f"4 large {name}: peak PSS over baseline, rlm repl={repl}",
                    values,
                    _ratio(ours_x, ref_x),
                    f"<= {limit:.1f}x ctx",
                    # Judged at the target's precision (tenths): the sandbox's floor is
                    # exactly 2.0x (two copies), and the tree's PSS moves by a fraction
                    # of a megabyte from reading to reading. The exact ratio is shown.
                    _check(None if ours_x is None else round(ours_x, 1) <= limit),
                )
            )
            values = {"rlm": _val(cell, lambda r: r.peak_pss, _fmt_mb)}
            for fw in ("rlms", "dspy"):
                values[fw] = _val(shown(fw, "large", bytes=size), lambda r: r.peak_pss, _fmt_mb)
            rows.append(
                Row(
                    f"4 large {name}: peak PSS, whole tree, rlm repl={repl}",
                    values,
                    _ratio(getattr(ours, "peak_pss", None), getattr(ref, "peak_pss", None)),
                )
            )

    # 5. import
    if imports:
        ours = imports.get("rlm", {}).get("median_s")
        ref = imports.get("rlms", {}).get("median_s")
        rows.append(
            Row(
                "5 import time",
                {
                    fw: _fmt_s(imports[fw]["median_s"]) if fw in imports else "-"
                    for fw in FRAMEWORKS
                },
                _ratio(ours, ref),
                "< 300 ms",
                _check(None if ours is None else ours < 0.3),
            )
        )
    return rows


def _mem_x(run: DriverRun | None) -> tuple[float, float]:
    """(peak PSS above the driver's baseline, that over the context size)."""
    if run is None:
        return (0.0, 0.0)
    over = run.peak_pss - (run.baseline_pss or 0)
    return (over, over / max(1, run.context_chars))


def _growth(run: DriverRun | None) -> tuple[float, float] | None:
    """Mean growth of the request size over the first and the last five iterations."""
    if run is None:
        return None
    per_run = len(run.server.get("root_chars", [])) // max(1, len(run.times_s))
    chars = run.server.get("root_chars", [])[:per_run]
    if len(chars) < 12:
        return None
    diffs = [b - a for a, b in itertools.pairwise(chars)]
    return (statistics.mean(diffs[:5]), statistics.mean(diffs[-5:]))


def render_table(rows: list[Row]) -> str:
    headers = ["scenario / metric", "rlm", "rlms 0.1.3", "dspy.RLM", "rlm/rlms", "target", ""]
    body = [
        [
            r.metric,
            r.values.get("rlm", "-"),
            r.values.get("rlms", "-"),
            r.values.get("dspy", "-"),
            _fmt_ratio(r.ratio),
            r.target,
            r.verdict,
        ]
        for r in rows
    ]
    widths = [max(len(str(x[i])) for x in [headers, *body]) for i in range(len(headers))]
    sep = "-+-".join("-" * w for w in widths)

    def line(cells: list[str]) -> str:
        return " | ".join(
            str(c).ljust(w) if i == 0 else str(c).rjust(w)
            for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        )

    return "\n".join([line(headers), sep, *(line(b) for b in body)])


def render_markdown(rows: list[Row]) -> str:
    out = [
        "| scenario / metric | rlm | rlms 0.1.3 | dspy.RLM | rlm/rlms | target | |",
        "| --- | ---: | ---: | ---: | ---: | --- | --- |",
    ]
    for r in rows:
        cells = [
            r.metric,
            r.values.get("rlm", "-"),
            r.values.get("rlms", "-"),
            r.values.get("dspy", "-"),
            _fmt_ratio(r.ratio),
            r.target,
            r.verdict,
        ]
        out.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    return "\n".join(out)


def render_saved(path: Path, markdown: bool) -> int:
    """Rebuild the table from a results file written by an earlier run."""
    record = json.loads(path.read_text())
    runs = []
    for d in record["runs"]:
        run = DriverRun(d["framework"], d["scenario"], d["params"])
        for name in ("ok", "times_s", "answers", "expected", "error", "peak_pss"):
            setattr(run, name, d.get(name))
        run.baseline_pss = d.get("baseline_pss")
        run.context_chars = d.get("context_chars") or 0
        run.server = d.get("server") or {}
        runs.append(run)
    rows = build_rows(runs, record.get("imports") or {})
    print(f"{record['stamp']}: {record['machine']}")
    print(render_markdown(rows) if markdown else render_table(rows))
    return 0


def machine() -> dict[str, Any]:
    return {
        "cpus": os.cpu_count(),
        "memory_gb": round(psutil.virtual_memory().total / 2**30, 1),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "processor": platform.processor() or platform.machine(),
    }


# -- main -------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="skip the 1 GB cases, fewer repeats")
    parser.add_argument("--only", nargs="+", choices=SCENARIOS, default=list(SCENARIOS))
    parser.add_argument("--frameworks", nargs="+", choices=FRAMEWORKS, default=list(FRAMEWORKS))
    parser.add_argument("--markdown", action="store_true", help="also print the table as Markdown")
    parser.add_argument(
        "--quiet-wait",
        type=float,
        default=60.0,
        metavar="S",
        help="before each run, wait up to S seconds for the CPUs to be idle (0: don't)",
    )
    parser.add_argument(
        "--fanout-chunks",
        nargs="+",
        type=int,
        choices=(32, 256, 1024),
        default=[32, 256, 1024],
        help="the fan-out sizes to run (1,024 adds the 1 s latency case)",
    )
    parser.add_argument(
        "--render", metavar="JSON", help="print the table of a saved results file and exit"
    )
    args = parser.parse_args(argv)
    if args.render:
        return render_saved(Path(args.render), args.markdown)

    ensure_reference_envs(args.frameworks)
    for fw in args.frameworks:  # as installed: no module compiled from source in a run
        compile_for(python_for(fw), *([HERE.parent / "rlm"] if fw == "rlm" else []))
    versions = reference_versions(args.frameworks)
    stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
    RESULTS.mkdir(exist_ok=True)
    log_dir = RESULTS / f"logs-{stamp}"
    log_dir.mkdir()
    print(f"rlm benchmark {stamp}: {machine()}")
    print(f"versions: {versions}")

    scripts: dict[str, Script] = {}

    def reply(request: dict[str, Any]) -> str:
        script = scripts.get(str(request.get("model")))
        if script is None:
            return "unknown run"
        return script.reply(request)

    def latency(request: dict[str, Any]) -> float:
        script = scripts.get(str(request.get("model")))
        return script.latency_s if script is not None else 0.0

    runs: list[DriverRun] = []
    imports: dict[str, Any] = {}
    with FakeLLM(reply, latency_s=latency) as llm:
        bench = Bench(llm, scripts, log_dir, args.quiet_wait)
        for fw, scenario, factory, params, timeout in scenario_runs(args):
            runs.append(bench.drive(fw, scenario, factory(fw), params, timeout))
        if "import" in args.only:
            for fw in args.frameworks:
                imports[fw] = import_time(fw, runs=5 if args.quick else 9)
        server_errors = list(llm.errors)

    rows = build_rows(runs, imports)
    table = render_table(rows)
    print()
    print(table)
    failed = [r for r in runs if not r.ok]
    if failed:
        print(f"\n{len(failed)} run(s) failed; see {log_dir}")
    if server_errors:
        print(f"fake LLM errors: {server_errors[:5]}")
    if args.markdown:
        print()
        print(render_markdown(rows))
    record = {
        "stamp": stamp,
        "machine": machine(),
        "versions": versions,
        "args": vars(args),
        "runs": [r.as_dict() for r in runs],
        "imports": imports,
        "table": table,
        "markdown": render_markdown(rows),
        "server_errors": server_errors,
    }
    path = RESULTS / f"bench-{stamp}.json"
    path.write_text(json.dumps(record, indent=1))
    (RESULTS / "latest.json").write_text(json.dumps(record, indent=1))
    print(f"\nraw results: {path}")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
