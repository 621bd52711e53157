"""SubprocessRepl specifics: context transfer, restarts, limits, protocol abuse, set-up."""

from __future__ import annotations

import asyncio
import collections
import fractions
import os
import sys
import time
import warnings
from pathlib import Path

import pytest
from _support import ISOLATIONS, TEST_LIMITS, FakeHost, Recorder, code, needs_bwrap

import rlm
from rlm.errors import ConfigurationError, ReplError, SandboxUnavailableError
from rlm.repl import ExecutionResult, ReplLimits, SubprocessRepl
from rlm.repl.transfer import INLINE_CHARS
from rlm.testing import ScriptedModel

MB = 1 << 20


def limits(**changes: object) -> ReplLimits:
    base = {
        "wall_seconds": TEST_LIMITS.wall_seconds,
        "grace_seconds": TEST_LIMITS.grace_seconds,
        "memory_mb": TEST_LIMITS.memory_mb,
        "max_processes": TEST_LIMITS.max_processes,
    }
    return ReplLimits(**{**base, **changes})  # type: ignore[arg-type]


async def started(isolation: str, context: object = "c", **changes: object) -> SubprocessRepl:
    repl = SubprocessRepl(limits=limits(**changes), isolation=isolation)  # type: ignore[arg-type]
    await repl.start(context, FakeHost())
    return repl


LARGE_CONTEXTS = {
    "ascii": "salary,42\n" * (MB // 5),
    "latin-1": "caf\xe9 " * (MB // 2),
    "ucs2": "\u0100b" * MB,
    "ucs4": "\U0001f600\ud800" * MB,  # an emoji and a lone surrogate
    "bytes": b"\x00\xff" * MB,
    "bytearray": bytearray(b"ab" * MB),
    "records": [{"name": f"n{i}", "salary": i, "tags": ("a", i % 7)} for i in range(40_000)],
    "tuple": tuple(f"line {i}" for i in range(100_000)),
    "dict": {f"k{i}": [i, float(i)] for i in range(60_000)},
    "mixed-types": [fractions.Fraction(i, 7) for i in range(50_000)],
    "ordered-dict": collections.OrderedDict((f"k{i}", i) for i in range(50_000)),
    "number": 12345678901234567890,
}


@pytest.mark.parametrize("isolation", ISOLATIONS)
@pytest.mark.parametrize("name", list(LARGE_CONTEXTS))
async def test_large_contexts_arrive_intact(isolation: str, name: str) -> None:
    context = LARGE_CONTEXTS[name]
    repl = await started(isolation, context, memory_mb=1024)
    try:
        check = (
            "import hashlib, pickle\n"
            "print(type(context).__name__, len(str(context)))\n"
            "print(hashlib.sha256(pickle.dumps(context, protocol=5)).hexdigest())"
        )
        result = await repl.execute(check)
    finally:
        await repl.close()
    import hashlib
    import pickle

    digest = hashlib.sha256(pickle.dumps(context, protocol=5)).hexdigest()
    assert result.error is None, result.error
    assert result.stdout == f"{type(context).__name__} {len(str(context))}\n{digest}\n"


async def test_large_text_without_the_layout_fast_path(monkeypatch: pytest.MonkeyPatch) -> None:
    from rlm.repl import transfer

    monkeypatch.setattr(transfer, "_layout", None)  # as on a Python whose str layout is unknown
    context = "caf\xe9 \U0001f600 " * MB
    repl = await started("none", context)
    try:
        result = await repl.execute("print(len(context), context[:6])")
    finally:
        await repl.close()
    assert result.stdout == f"{len(context)} caf\xe9 \U0001f600\n"


@pytest.mark.parametrize("isolation", ISOLATIONS)
async def test_context_is_reloaded_after_a_crash(isolation: str) -> None:
    context = "x" * (3 * MB)
    repl = await started(isolation, context)
    try:
        crash = await repl.execute("import os\nos._exit(7)")
        again = await repl.execute("print(len(context), context == 'x' * (3 << 20))")
    finally:
        await repl.close()
    assert crash.restarted and "status 7" in (crash.error or "")
    assert again.stdout == f"{3 * MB} True\n" and not again.restarted
    assert repl.restarts == 1


@pytest.mark.parametrize("isolation", ISOLATIONS)
def test_a_context_the_worker_cannot_receive_fails_the_run_clearly(isolation: str) -> None:
    import threading

    class Local:  # not importable: cloudpickle sends the class by value
        def __repr__(self) -> str:
            return "a Local"

    check = Recorder("FINAL(x)")
    model = ScriptedModel([code("print(context)"), check])
    factory = SubprocessRepl.factory(limits=TEST_LIMITS, isolation=isolation)  # type: ignore[arg-type]
    assert rlm.run("q", [Local()], model=model, repl=factory).answer == "x"
    assert "[a Local]" in check.message
    model = ScriptedModel([code("print(context)"), "FINAL(x)"])
    with pytest.raises(ReplError, match=r"cannot be sent to the REPL worker.*_thread\.lock"):
        rlm.run("q", {"lock": threading.Lock()}, model=model, repl=factory)


@pytest.mark.parametrize("isolation", ISOLATIONS)
async def test_subcalls_from_threads_in_the_worker(isolation: str) -> None:
    host = FakeHost(delay_s=0.05)
    repl = SubprocessRepl(limits=TEST_LIMITS, isolation=isolation)  # type: ignore[arg-type]
    await repl.start("c", host)
    try:
        result = await repl.execute(
            "from concurrent.futures import ThreadPoolExecutor\n"
            "with ThreadPoolExecutor(4) as pool:\n"
            "    print(list(pool.map(llm_query, ['a', 'b', 'c', 'd'])))"
        )
    finally:
        await repl.close()
    assert result.error is None
    assert result.stdout == str([f"answer to {p}" for p in "abcd"]) + "\n"
    assert host.max_in_flight == 4


@pytest.mark.parametrize("isolation", ISOLATIONS)
async def test_output_of_child_processes_is_shown(isolation: str) -> None:
    repl = await started(isolation)
    try:
        result = await repl.execute("import subprocess\nsubprocess.run(['echo', 'from a child'])")
        stderr = await repl.execute("import os\nos.write(2, b'raw stderr\\n')\nNone")
    finally:
        await repl.close()
    assert "from a child" in result.stdout
    assert "raw stderr" in stderr.stderr


@pytest.mark.parametrize("isolation", ISOLATIONS)
@pytest.mark.parametrize(
    "block, told",
    [
        ("import os, sys\nos.write(int(sys.argv[3]), b'\\xff' * 8)", "a frame of"),
        ("import os, sys\nos.write(int(sys.argv[3]), b'\\x00\\x00\\x00\\x02{x')", "not JSON"),
        (
            'import os, sys\nos.write(int(sys.argv[3]), b\'\\x00\\x00\\x00\\x0d{"op":"call"}\')',
            "bad 'id'",
        ),
        ("import os, sys\nos.close(int(sys.argv[3]))", "lost its connection"),
    ],
    ids=["huge-frame", "not-json", "bad-call", "closed-pipe"],
)
async def test_protocol_abuse_replaces_the_worker(isolation: str, block: str, told: str) -> None:
    repl = await started(isolation)
    try:
        broken = await repl.execute(block)
        after = await repl.execute("print('fine')")
    finally:
        await repl.close()
    assert broken.restarted and told in (broken.error or "")
    assert after.stdout == "fine\n"


@pytest.mark.parametrize("isolation", ISOLATIONS)
async def test_a_worker_that_dies_between_blocks_is_replaced(isolation: str) -> None:
    repl = await started(isolation)
    try:
        await repl.execute(
            "import os, threading, time\n"
            "threading.Thread(target=lambda: (time.sleep(0.1), os._exit(5))).start()"
        )
        await asyncio.sleep(0.5)
        result = await repl.execute("print('ran')")
    finally:
        await repl.close()
    assert result.stdout == "ran\n" and result.restarted
    assert "status 5" in result.stderr and "before the block ran" in result.stderr


@pytest.mark.parametrize("isolation", ISOLATIONS)
async def test_a_cancelled_block_is_stopped_and_the_variables_stay(isolation: str) -> None:
    repl = await started(isolation, wall_seconds=30)
    try:
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(repl.execute("x = 7\nwhile True:\n    pass"), 0.3)
        found = await asyncio.wait_for(repl.lookup_variable("x"), 5)
    finally:
        await repl.close()
    assert found.value == "7"
    assert repl.restarts == 0


@pytest.mark.slow
@pytest.mark.parametrize("isolation", ISOLATIONS)
async def test_cpu_time_limit(isolation: str) -> None:
    repl = await started(isolation, cpu_seconds=1, wall_seconds=30)
    try:
        result = await repl.execute("while True:\n    pass")
    finally:
        await repl.close()
    assert result.restarted and "CPU time limit (1 s per block)" in (result.error or "")


@pytest.mark.parametrize("isolation", ISOLATIONS)
async def test_file_size_limit(isolation: str) -> None:
    repl = await started(isolation, file_size_mb=1)
    try:
        result = await repl.execute("open('big.bin', 'wb').write(b'x' * (2 << 20))")
        small = await repl.execute("print(open('small.txt', 'w').write('ok'))")
    finally:
        await repl.close()
    assert result.error and "File too large" in result.error
    assert small.stdout == "2\n"


@pytest.mark.parametrize("isolation", ISOLATIONS)
async def test_a_variable_whose_text_never_ends(isolation: str) -> None:
    repl = await started(isolation, wall_seconds=1)
    try:
        await repl.execute(
            "class Slow:\n    def __str__(self):\n        while True: pass\nv = Slow()"
        )
        found = await repl.lookup_variable("v")
        ok = await repl.execute("print('still here')")
    finally:
        await repl.close()
    assert found.value is None and found.error and "time limit" in found.error
    assert ok.stdout == "still here\n"


@pytest.mark.parametrize("isolation", ISOLATIONS)
def test_close_stops_a_running_block_and_cleans_up(isolation: str) -> None:
    async def run_and_close() -> str:
        repl = await started(isolation)
        assert repl._conn is not None
        scratch = repl._conn.process.scratch
        task = asyncio.ensure_future(repl.execute("while True:\n    pass"))
        await asyncio.sleep(0.2)
        await repl.close()
        task.cancel()
        with pytest.raises((asyncio.CancelledError, ReplError)):
            await task
        return scratch

    scratch = Path(asyncio.run(run_and_close()))
    deadline = time.monotonic() + 10
    while scratch.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not scratch.exists()


@pytest.mark.parametrize("isolation", ISOLATIONS)
async def test_scratch_is_the_working_directory_and_home(isolation: str) -> None:
    repl = await started(isolation)
    try:
        result = await repl.execute(
            "import os\nopen('note.txt', 'w').write('hi')\n"
            "print(os.getcwd() == os.path.expanduser('~'), sorted(os.listdir('.')))"
        )
    finally:
        await repl.close()
    # When the runtime itself lives under /tmp (a checkout there), its folder is mounted
    # read-only inside the scratch folder; nothing else is there.
    runtime = {
        p.removeprefix("/tmp/").split("/")[0]
        for p in (sys.prefix, str(Path(rlm.__file__).parent))
        if isolation == "bwrap" and p.startswith("/tmp/")
    }
    assert result.stdout == f"True {sorted({'note.txt', *runtime})}\n"


@needs_bwrap
def test_bwrap_hides_the_host() -> None:
    project_file = os.path.join(os.getcwd(), "pyproject.toml")
    if not os.path.exists(project_file):
        pytest.skip("run from the project folder to check it is hidden")
    result = asyncio.run(
        _run_once(
            "bwrap",
            (
                "import os\n"
                "print(os.getpid())\n"
                f"print(os.path.exists({project_file!r}))\n"
                "print(os.path.exists('/run'), os.path.exists('/etc/shadow'))\n"
                "print(open('/proc/self/status').read().split('CapEff:')[1].split()[0])\n"
                "print(os.getuid(), os.getgid())"
            ),
        )
    )
    pid, project_visible, run_and_shadow, capabilities, ids = result.stdout.splitlines()
    assert int(pid) < 10  # its own PID namespace
    assert project_visible == "False"  # the host's working folder is not there
    assert run_and_shadow == "False False"  # only the runtime is: no /run, no /etc/shadow
    assert capabilities == "0000000000000000"
    assert ids == "65534 65534"  # an unprivileged user in its own namespace


async def _run_once(isolation: str, block: str) -> ExecutionResult:
    repl = await started(isolation)
    try:
        return await repl.execute(block)
    finally:
        await repl.close()


def test_limits_are_checked() -> None:
    for bad in (
        {"wall_seconds": 0},
        {"memory_mb": -1},
        {"max_processes": 2},
        {"cpu_seconds": "1"},
        {"json_depth": 2},
        {"host_buffer_mb": 0},
        {"memory_mb": 512, "scratch_mb": 512},
    ):
        with pytest.raises(ConfigurationError):
            ReplLimits(**bad)  # type: ignore[arg-type]
    with pytest.raises(ReplError):
        SubprocessRepl(isolation="docker")  # type: ignore[arg-type]


def test_default_repl_is_the_subprocess() -> None:
    check = Recorder("FINAL(ok)")
    model = ScriptedModel([code("import os\nprint('pid', os.getpid())"), check])
    assert rlm.run("q", "c", model=model).answer == "ok"
    assert f"pid {os.getpid()}\n" not in check.message and "pid " in check.message


WAYS_ON = ("apt-get install bubblewrap", "isolation='none'", "RLM_SANDBOX=none", "repl='inprocess'")


def test_the_default_repl_refuses_to_start_without_the_sandbox(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from rlm.repl import bwrap

    monkeypatch.setattr(bwrap, "_ok", False)
    monkeypatch.setattr(bwrap, "_problem", "bubblewrap (bwrap) is not installed")
    monkeypatch.delenv("RLM_SANDBOX", raising=False)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with pytest.raises(SandboxUnavailableError) as refused:
            rlm.run("q", "c", model=ScriptedModel([]))
    message = str(refused.value)
    assert "bubblewrap (bwrap) is not installed" in message
    assert all(way in message for way in WAYS_ON), message
    assert "\n" not in message and not caught  # one line, and no warning beside it
    with pytest.raises(SandboxUnavailableError):
        asyncio.run(SubprocessRepl(isolation="bwrap").start("c", FakeHost()))


def test_rlm_sandbox_none_accepts_a_plain_subprocess(monkeypatch: pytest.MonkeyPatch) -> None:
    from rlm.repl import bwrap

    monkeypatch.setattr(bwrap, "_ok", False)
    monkeypatch.setattr(bwrap, "_problem", "bubblewrap (bwrap) is not installed")
    monkeypatch.setenv("RLM_SANDBOX", "none")

    async def start() -> tuple[str | None, str]:
        repl = SubprocessRepl(limits=TEST_LIMITS)
        await repl.start("c", FakeHost())
        try:
            return repl.isolation, (await repl.execute("print('works')")).stdout
        finally:
            await repl.close()

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert asyncio.run(start()) == ("none", "works\n")
    assert not caught
    monkeypatch.setenv("RLM_SANDBOX", "off")
    with pytest.raises(ConfigurationError, match="RLM_SANDBOX"):
        asyncio.run(SubprocessRepl().start("c", FakeHost()))


def test_refuses_when_the_first_sandbox_cannot_start(monkeypatch: pytest.MonkeyPatch) -> None:
    from rlm.repl import bwrap, workers

    def refused(*args: object, **kwargs: object) -> list[str]:
        why = "bwrap: No permissions to create new namespace"
        return ["/bin/sh", "-c", f"echo '{why}' >&2; exit 1"]

    workers.pool.drain()  # spares from earlier tests would skip the first-start check
    monkeypatch.setattr(bwrap, "_ok", None)
    monkeypatch.setattr(bwrap, "_problem", "")
    monkeypatch.setattr(bwrap, "bwrap_path", lambda: "/usr/bin/bwrap")
    monkeypatch.setattr(bwrap, "command", refused)
    monkeypatch.delenv("RLM_SANDBOX", raising=False)

    with pytest.raises(SandboxUnavailableError) as refused_error:
        asyncio.run(SubprocessRepl(limits=TEST_LIMITS, prestart=False).start("c", FakeHost()))
    message = str(refused_error.value)
    assert "No permissions to create new namespace" in message
    assert all(way in message for way in WAYS_ON)


@pytest.mark.parametrize("isolation", ISOLATIONS)
def test_child_runs_get_their_own_workers(isolation: str) -> None:
    def reply(request: rlm.ModelRequest) -> str:
        opening = request.messages[1].content
        if "Query: top" not in opening:  # a child run: its context is the prompt
            if len(request.messages) == 2:
                # pid and PID namespace: unique per worker on both paths
                who = '{os.getpid()}:{os.readlink("/proc/self/ns/pid")}'
                return code(f"import os\nFINAL(f'{{context}} from pid {who}')")
            return "FINAL(unreachable)"
        if len(request.messages) == 2:
            return code("print(rlm_query_batched(['a', 'b', 'c']))")
        return "FINAL(done)"

    from rlm.testing import FunctionModel

    model = FunctionModel(reply)
    factory = SubprocessRepl.factory(limits=TEST_LIMITS, isolation=isolation)  # type: ignore[arg-type]
    result = rlm.run("top", "ctx", model=model, repl=factory, max_depth=2)
    assert result.answer == "done"
    shown = next(m.content for m in model.calls[-1].messages if "from pid" in m.content)
    pids = {line.split("from pid ")[1].split("'")[0] for line in shown.split(", ")}
    assert len(pids) == 3  # three children, three workers


@pytest.mark.parametrize(
    ("context", "during_run"),
    [("small", ["replenish"]), ("x" * (INLINE_CHARS + 1), [])],
    ids=["small context: spare at once", "large context: spare after the run"],
)
def test_a_large_context_run_starts_the_next_spare_only_when_its_worker_is_gone(
    monkeypatch: pytest.MonkeyPatch, context: str, during_run: list[str]
) -> None:
    # Another interpreter beside the caller's and the worker's copies of a large context
    # would raise the run's peak memory; a small run wants the spare ready at once.
    from rlm.repl import workers

    calls: list[str] = []
    worker_alive_then: list[bool] = []
    used: list[workers.WorkerProcess] = []

    def replenish(config: object) -> None:
        calls.append("replenish")
        if used:
            worker_alive_then.append(used[0].popen.poll() is None)

    monkeypatch.setattr(workers.pool, "replenish", replenish)

    async def run() -> list[str]:
        repl = SubprocessRepl(limits=TEST_LIMITS)
        await repl.start(context, FakeHost())
        try:
            result = await repl.execute("print(len(context))")
            assert result.stdout == f"{len(context)}\n"
            assert repl._conn is not None
            used.append(repl._conn.process)
            seen_during_run = list(calls)
        finally:
            await repl.close()
        return seen_during_run

    seen_during_run = asyncio.run(run())
    deadline = time.monotonic() + 10
    while not calls and time.monotonic() < deadline:
        time.sleep(0.01)  # the used worker is reaped on a thread

    assert seen_during_run == during_run
    assert calls == ["replenish"]
    if not during_run:
        assert worker_alive_then == [False]


def test_runs_faster_than_worker_start_up_get_a_second_spare(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from rlm.repl import workers

    class FakeWorker:
        def __init__(self, booted: bool) -> None:
            self.booted = booted

        def alive(self) -> bool:
            return True

        def dispose(self) -> None:
            pass

    started: list[FakeWorker] = []

    def spawn(config: object) -> FakeWorker:
        started.append(FakeWorker(booted=len(started) > 0))  # the first is still booting
        return started[-1]

    monkeypatch.setattr(workers, "spawn", spawn)
    monkeypatch.setattr(workers, "_booted", lambda process: process.booted)
    pool = workers.Pool()
    config = workers.SpawnConfig(isolation="none", env=(), hide=())

    def settle() -> None:
        for future in [f for fs in pool._starting.values() for f in fs]:
            future.result(timeout=5)

    async def scenario() -> list[int]:
        idle_counts = []
        pool.replenish(config)  # one spare, as a REPL's first run asks
        settle()
        idle_counts.append(len(pool._idle[config]))
        process, spare = await pool.acquire(config)  # it has not booted: a run came too soon
        assert spare and process is started[0]
        pool.replenish(config)
        settle()
        idle_counts.append(len(pool._idle[config]))  # two kept from now on
        await pool.acquire(config)  # booted: nothing changes
        pool.replenish(config)
        settle()
        idle_counts.append(len(pool._idle[config]))
        return idle_counts

    assert asyncio.run(scenario()) == [1, 2, 2]


MAIN_CLASSES_SCRIPT = """
import sys
from dataclasses import dataclass

import rlm
from rlm.repl import SubprocessRepl
from rlm.testing import ScriptedModel


@dataclass
class Employee:
    name: str
    salary: int

    def doubled(self) -> int:
        return self.salary * 2


single = Employee("a", 3)
many = [Employee(f"e{i}", i) for i in range(5000)]  # more than one batch
for context, block in (
    (single, "FINAL(context.doubled())"),
    (many, "FINAL(sum(e.salary for e in context) + context[1].doubled())"),
):
    model = ScriptedModel([f"```repl\\n{block}\\n```"])
    repl = SubprocessRepl.factory(isolation=sys.argv[1])
    print(rlm.run("q", context, model=model, repl=repl).answer)
"""


@pytest.mark.parametrize("isolation", ISOLATIONS)
def test_classes_defined_in_main_reach_the_worker(isolation: str, tmp_path: Path) -> None:
    import subprocess

    script = tmp_path / "script.py"
    script.write_text(MAIN_CLASSES_SCRIPT)
    done = subprocess.run(
        [sys.executable, str(script), isolation], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["6", str(sum(range(5000)) + 2)]


async def test_a_new_worker_has_not_imported_the_heavy_modules_before_the_first_block() -> None:
    # The worker's start-up (part of every run's first block) leaves out `dataclasses`,
    # `typing`, `inspect` and `traceback`: they were 10-15 ms of a 40 ms import.
    repl = SubprocessRepl(limits=TEST_LIMITS)
    await repl.start("ctx", FakeHost())
    try:
        result = await repl.execute(
            "import sys\n"
            "print(sorted(m for m in ('dataclasses', 'typing', 'inspect', 'traceback') "
            "if m in sys.modules))"
        )
        assert result.error is None
        assert result.stdout == "[]\n"
        failed = await repl.execute("1 / 0")  # the traceback module is loaded when needed
        assert failed.error is not None and "ZeroDivisionError" in failed.error
    finally:
        await repl.close()
