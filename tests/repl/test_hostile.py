"""Model-written programs that try to hurt the host, on the bwrap path and the fallback path.

Each drives a real `rlm.run`: the hostile block runs, the next model step records what the
model was told, and the run goes on to an answer. The host surviving is this process
carrying on. Where the fallback path cannot protect something, the test asserts what
does happen, as docs/sandbox.md documents, and never touches the host for real (no
writes to /etc, no traffic to public addresses).
"""

from __future__ import annotations

import asyncio
import os
import socket
import sys
import time
from dataclasses import replace
from pathlib import Path

import pytest
from _support import ISOLATIONS, TEST_LIMITS, Recorder, code, processes_bounded, repl_factory

import rlm
from rlm import Event, Model, ModelRequest
from rlm.events import ReplViolation
from rlm.repl import ReplLimits
from rlm.testing import FunctionModel, ScriptedModel

pytestmark = pytest.mark.parametrize("isolation", ISOLATIONS)

RESTART_NOTE = "every variable you made is gone"


def run_hostile(
    isolation: str,
    block: str,
    *after: str,
    limits: ReplLimits = TEST_LIMITS,
    context: object = "c",
    events: list[Event] | None = None,
    sub_model: Model | None = None,
) -> list[str]:
    """Run `block`, then each of `after`, then answer; return what the model saw each time."""
    steps = [Recorder(code(src)) for src in after]
    last = Recorder("FINAL(still alive)")
    model = ScriptedModel([code(block), *steps, last])
    result = rlm.run(
        "q",
        context,
        model=model,
        sub_model=sub_model,
        repl=repl_factory(isolation, limits),
        on_event=events.append if events is not None else None,
    )
    assert result.answer == "still alive", result
    assert result.stop_reason == "final"
    return [s.message for s in [*steps, last]]


def violations(events: list[Event]) -> list[str]:
    return [e.limit for e in events if isinstance(e, ReplViolation)]


KILLED = "killed for going past a limit of the host"


def forge(frames: str) -> str:
    """Model code that writes `frames` (an expression giving a list of bytes payloads)
    straight onto the worker's protocol pipe, as hostile code that found it would."""
    return (
        "import os, sys, json\nx = 1\nfd = int(sys.argv[3])\n"
        f"for payload in {frames}:\n"
        "    os.write(fd, len(payload).to_bytes(4, 'big') + payload)\n"
        "import time\ntime.sleep(1)\nprint('NOT KILLED')"
    )


def _call(i: int, prompt_chars: int) -> str:
    return (
        f"json.dumps({{'op': 'call', 'id': 10**6 + {i}, 'fn': 'llm_query', "
        f"'prompt': 'p' * {prompt_chars}, 'model': None}}).encode()"
    )


async def _never_answers(request: ModelRequest) -> str:
    await asyncio.sleep(60)
    return "late"


def test_forged_frames_are_bounded_in_total(isolation: str) -> None:
    # Six forged 20 MB sub-calls that the host must serve at once: past host_buffer_mb
    # (64 MB here, a total over frames in flight) the worker is killed.
    limits = replace(TEST_LIMITS, host_buffer_mb=64)
    events: list[Event] = []
    sub = FunctionModel(_never_answers)
    frames = f"[{_call(1, 20 << 20)}] * 6"
    told, after = run_hostile(
        isolation, forge(frames), "print('x' in dir())", limits=limits, events=events, sub_model=sub
    )
    assert KILLED in told and "host_buffer_mb allows 64 MB" in told
    assert "Every variable you made is gone" in told and "NOT KILLED" not in told
    assert violations(events) == ["bytes_in_flight"]
    assert len(sub.calls) <= 3  # the host held at most three of the six
    assert "False" in after  # a fresh worker: the run went on, `x` is gone


@pytest.mark.parametrize(
    "frames, limit",
    [
        ("[b'{' * 10]  # announced below", "frame_bytes"),
        ("[b'[' * 200_000 + b']' * 200_000]", "json_depth"),
        ("[b'{\"op\": \"spawned\", \"x\": ' + b'[' * 40 + b']' * 40 + b'}']", "json_depth"),
        (
            '[b\'{"op":"done","id":1,"stdout":"","stderr":"","stdout_chars":0,'
            '"stderr_chars":0,"error":null,"final":"\' + b\'a\' * 5000 + b\'"}\']',
            "answer_chars",
        ),
        (f"[{_call(2, 10)}] * 20", "pending_calls"),
    ],
    ids=["huge-header", "deep-json-recursion", "deep-json", "long-answer", "many-calls"],
)
def test_each_bound_of_the_host_kills_the_worker(isolation: str, frames: str, limit: str) -> None:
    limits = replace(TEST_LIMITS, answer_chars=1000, max_pending_calls=8)
    block = forge(frames)
    if limit == "frame_bytes":
        # Only a header announcing 300 MB: the host refuses before reading any body.
        block = (
            "import os, sys\nx = 1\nos.write(int(sys.argv[3]), (300 << 20).to_bytes(4, 'big'))"
            "\nimport time\ntime.sleep(1)\nprint('NOT KILLED')"
        )
    events: list[Event] = []
    told, after = run_hostile(
        isolation,
        block,
        "print('x' in dir())",
        limits=limits,
        events=events,
        sub_model=FunctionModel(_never_answers),
    )
    assert KILLED in told and "Every variable you made is gone" in told, told
    assert "NOT KILLED" not in told
    assert violations(events) == [limit]
    assert "False" in after


@pytest.mark.slow
def test_infinite_loop_is_interrupted_and_variables_survive(isolation: str) -> None:
    told, after = run_hostile(isolation, "x = 41\nwhile True:\n    pass", "print(x + 1)")
    assert "time limit (2 s)" in told and "variables are kept" in told
    assert "KeyboardInterrupt" in told and RESTART_NOTE not in told
    assert "42" in after


@pytest.mark.slow
def test_loop_that_swallows_the_interrupt_is_killed(isolation: str) -> None:
    block = (
        "import time\nwhile True:\n    try:\n        time.sleep(0.05)\n"
        "    except BaseException:\n        pass"
    )
    (told,) = run_hostile(isolation, block)
    assert "did not stop when interrupted" in told and "killed" in told
    assert RESTART_NOTE in told


def test_memory_hog_gets_memory_error(isolation: str) -> None:
    told, after = run_hostile(
        isolation, "x = []\nwhile True:\n    x.append(' ' * 10**6)", "del x\nprint('freed')"
    )
    assert "MemoryError" in told and "memory limit is 512 MB" in told
    assert "freed" in after


def test_fork_bomb_is_bounded(isolation: str) -> None:
    if not processes_bounded(isolation):
        pytest.skip("no pids cgroup and running as root: nothing here bounds a fork bomb")
    told, after = run_hostile(
        isolation, "import os\nwhile True:\n    os.fork()", "import os\nprint('pid', os.getpid())"
    )
    assert (
        "BlockingIOError" in told
        or "Resource temporarily unavailable" in told
        or (RESTART_NOTE in told)
    )
    assert "pid" in after


def test_os_exit_restarts_the_worker(isolation: str) -> None:
    told, after = run_hostile(
        isolation, "x = 1\nimport os\nos._exit(1)", "print(len(context), 'x' in dir())"
    )
    assert "exited with status 1" in told and RESTART_NOTE in told
    assert "1 False" in after  # the context is back, the variable is not


@pytest.mark.parametrize(
    "block, shown",
    [
        ("import sys\nsys.exit()", "SystemExit"),
        ("raise SystemExit(3)", "SystemExit: 3"),
        ("raise KeyboardInterrupt", "KeyboardInterrupt"),
    ],
    ids=["sys.exit", "SystemExit", "KeyboardInterrupt"],
)
def test_exit_and_interrupt_are_ordinary_errors(isolation: str, block: str, shown: str) -> None:
    told, after = run_hostile(isolation, "kept = 'yes'\n" + block, "print(kept)")
    assert shown in told and RESTART_NOTE not in told
    assert "yes" in after


def test_segfault_restarts_the_worker(isolation: str) -> None:
    (told,) = run_hostile(isolation, "import ctypes\nctypes.string_at(0)")
    assert "SIGSEGV" in told and RESTART_NOTE in told


@pytest.mark.slow
def test_printing_a_gigabyte_is_capped(isolation: str) -> None:
    limits = ReplLimits(
        wall_seconds=20, grace_seconds=0.5, memory_mb=2048, scratch_mb=16, output_chars=100_000
    )
    told, fd_flood = run_hostile(
        isolation, "print('x' * 10**9)", "import os\nos.write(1, b'y' * 10**8)", limits=limits
    )
    assert "1,000,000,001 characters" in told
    assert len(told) < 50_000
    # os.write's return value (displayed) plus 10**8 bytes that went straight to fd 1.
    assert "100,000,010 characters in all" in fd_flood and len(fd_flood) < 50_000


def test_api_keys_do_not_reach_the_worker(isolation: str, monkeypatch: pytest.MonkeyPatch) -> None:
    fake = "sk-test-FAKE-0123456789abcdef"
    monkeypatch.setenv("OPENAI_API_KEY", fake)
    monkeypatch.setenv("SOME_SECRET_TOKEN", fake)
    (told,) = run_hostile(
        isolation,
        "import os\nprint(os.environ.get('OPENAI_API_KEY'))\nprint(sorted(os.environ))",
    )
    assert fake not in told
    assert "None" in told and "SOME_SECRET_TOKEN" not in told


def test_loopback_socket(isolation: str) -> None:
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    server.settimeout(0.5)
    port = server.getsockname()[1]
    try:
        (told,) = run_hostile(
            isolation,
            "import socket\ntry:\n    s = socket.socket()\n    s.settimeout(1)\n"
            f"    s.connect(('127.0.0.1', {port}))\n    print('CONNECTED')\n"
            "except OSError as e:\n    print('REFUSED', e)",
        )
        if isolation == "bwrap":
            # No socket but AF_UNIX (seccomp), and an empty network namespace anyway.
            assert "REFUSED" in told and "Address family not supported" in told
            with pytest.raises(TimeoutError):
                server.accept()
        else:
            assert "CONNECTED" in told  # documented: the fallback shares the host's network
    finally:
        server.close()


def test_public_address_is_unreachable(isolation: str) -> None:
    if isolation != "bwrap":
        pytest.skip("the fallback path shares the host's network (documented); not tried")
    (told,) = run_hostile(
        isolation,
        "import socket\ntry:\n    s = socket.socket()\n    s.settimeout(1)\n"
        "    s.connect(('192.0.2.1', 80))\n    print('CONNECTED')\n"
        "except OSError as e:\n    print('FAILED', e)",
    )
    assert "FAILED" in told and "CONNECTED" not in told
    assert "Address family not supported" in told


def test_writing_to_etc(isolation: str) -> None:
    if isolation != "bwrap":
        pytest.skip("the fallback path can write wherever the host user can (documented)")
    target = f"/etc/rlm-hostile-{os.getpid()}"
    (told,) = run_hostile(
        isolation,
        f"try:\n    open({target!r}, 'w').write('x')\n    print('WROTE')\n"
        "except OSError as e:\n    print('DENIED', e)",
    )
    assert "DENIED" in told and "Read-only file system" in told
    assert not os.path.exists(target)


def test_writing_to_home(isolation: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    target = home / "planted.txt"
    (told,) = run_hostile(
        isolation,
        "import os\nprint('HOME', os.path.expanduser('~'))\n"
        f"try:\n    open({str(target)!r}, 'w').write('x')\n    print('WROTE')\n"
        "except OSError as e:\n    print('DENIED', e)",
    )
    assert str(home) not in told.split("HOME", 1)[1].splitlines()[0]  # $HOME is the scratch
    if isolation == "bwrap":
        assert "DENIED" in told and not target.exists()
    else:
        assert "WROTE" in told and target.exists()  # documented gap of the fallback


def test_deleting_files_outside_scratch(isolation: str, tmp_path: Path) -> None:
    canary = tmp_path / "canary.txt"
    canary.write_text("still here")
    (told,) = run_hostile(
        isolation,
        f"import os\ntry:\n    os.remove({str(canary)!r})\n    print('DELETED')\n"
        "except OSError as e:\n    print('DENIED', e)",
    )
    if isolation == "bwrap":
        assert "DENIED" in told and canary.read_text() == "still here"
    else:
        assert "DELETED" in told and not canary.exists()  # documented gap of the fallback


def _processes_with(marker: str) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                if marker.encode() in f.read():
                    found.append(int(entry))
        except OSError:
            continue
    return found


@pytest.mark.parametrize("detached", [False, True], ids=["child", "new-session"])
def test_background_process_dies_with_the_run(isolation: str, detached: bool) -> None:
    from rlm.repl.sandbox import cgroup_tree

    if isolation == "none" and detached and cgroup_tree() is None:
        pytest.skip("without a cgroup the fallback cannot find processes that left its session")
    marker = f"{1000 + os.getpid() % 1000}.{int(detached)}{time.time_ns() % 10**6}"
    (told,) = run_hostile(
        isolation,
        f"import subprocess\np = subprocess.Popen(['sleep', '{marker}'], "
        f"start_new_session={detached})\nprint('started', p.pid)",
    )
    assert "started" in told
    deadline = time.monotonic() + 10
    while _processes_with(marker) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _processes_with(marker) == []


def test_deep_recursion(isolation: str) -> None:
    (told,) = run_hostile(isolation, "def f(n):\n    return f(n + 1)\nf(0)")
    assert "RecursionError" in told and RESTART_NOTE not in told


def test_c_stack_overflow_restarts_the_worker(isolation: str) -> None:
    # With the recursion limit lifted, repr() of a deeply nested list overflows the C stack.
    block = (
        "import sys\nsys.setrecursionlimit(10**7)\n"
        "x = []\nfor _ in range(10**6):\n    x = [x]\nrepr(x)"
    )
    (told,) = run_hostile(isolation, block)
    assert "SIGSEGV" in told and RESTART_NOTE in told


def test_ten_thousand_line_traceback(isolation: str) -> None:
    block = (
        "import sys\nsys.setrecursionlimit(6000)\n"
        "def f(n):\n    return g(n + 1)\ndef g(n):\n    return f(n + 1)\nf(0)"
    )
    (told,) = run_hostile(isolation, block)
    assert "characters omitted" in told  # cut for the model, head and tail kept
    assert "RecursionError" in told and 'File "<cell 1>"' in told
    assert len(told) < 20_000


def test_the_host_is_untouched(isolation: str) -> None:
    # After everything above, this process is fine and the sandbox still works.
    (told,) = run_hostile(isolation, "print(sum(range(10)))")
    assert "45" in told
    assert sys.getrecursionlimit() < 10**6
