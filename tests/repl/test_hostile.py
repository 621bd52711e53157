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
    # A long time limit: on a loaded machine the host may take seconds to read 60 MB.
    limits = replace(TEST_LIMITS, host_buffer_mb=64, wall_seconds=30)
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
    limits = replace(TEST_LIMITS, answer_chars=1000, max_pending_calls=8, wall_seconds=30)
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
    # Building a million nested lists takes over a second on a loaded machine: give the
    # block time to reach the overflow, which is what the test is about.
    (told,) = run_hostile(isolation, block, limits=replace(TEST_LIMITS, wall_seconds=20.0))
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


# -- the cases of issue 13: least privilege inside, hard caps, honest fallback ---------------


def test_kernel_settings_cannot_be_changed(isolation: str) -> None:
    if isolation != "bwrap":
        pytest.skip("the fallback path runs as the host's user: as root it could (documented)")
    swappiness = Path("/proc/sys/vm/swappiness").read_text()
    block = (
        "import os\nx = 1\n"
        "for path in ('/proc/sys/vm/swappiness', '/proc/sys/kernel/core_pattern'):\n"
        "    try:\n        value = open(path).read()\n"
        "        with open(path, 'w') as f:\n            f.write(value)\n"
        "        print('WROTE', path)\n"
        "    except OSError as e:\n        print('DENIED', path, e.strerror)\n"
        "print('uid', os.getuid(), 'caps', open('/proc/self/status').read()"
        ".split('CapEff:')[1].split()[0])"
    )
    told, after = run_hostile(isolation, block, "print(x)")
    assert "WROTE" not in told and told.count("DENIED") == 2
    assert "Read-only file system" in told
    assert "uid 65534 caps 0000000000000000" in told
    assert Path("/proc/sys/vm/swappiness").read_text() == swappiness
    assert "1" in after  # the worker lived on, variables kept


def test_system_secrets_and_checkouts_are_not_there(isolation: str) -> None:
    checkout = os.path.join(os.getcwd(), ".git", "HEAD")
    targets = ["/etc/shadow", "/etc/gshadow", checkout, os.path.join(os.getcwd(), "pyproject.toml")]
    block = (
        f"for path in {targets!r}:\n    try:\n        data = open(path, 'rb').read()\n"
        "        print('READ', path, len(data) > 0)\n"
        "    except OSError as e:\n        print('DENIED', path, type(e).__name__)"
    )
    (told,) = run_hostile(isolation, block)
    for path in targets:
        readable_here = os.access(path, os.R_OK)
        if isolation == "bwrap":
            assert f"DENIED {path} FileNotFoundError" in told  # not in the sandbox at all
        else:
            # Documented: the fallback reads what the host's user can.
            assert (f"READ {path}" in told) == readable_here, told
    assert "root:" not in told  # no secret content ever reaches the model's output here


def test_scratch_has_a_size_and_an_inode_quota(isolation: str, tmp_path: Path) -> None:
    if isolation != "bwrap":
        pytest.skip("the fallback path's scratch is a host folder without a quota (documented)")
    from rlm.repl import bwrap

    limits = replace(TEST_LIMITS, scratch_mb=32, scratch_inodes=2000)
    block = (
        "import os\nx = 1\nblock = b'x' * (1 << 20)\nwritten = 0\n"
        "try:\n    with open('/tmp/big', 'wb') as f:\n        for _ in range(1024):\n"
        "            f.write(block)\n            f.flush()\n            written += 1\n"
        "except OSError as e:\n    print('SIZE STOP', written, e.strerror)\n"
        "os.remove('/tmp/big')\nmade = 0\n"
        "try:\n    for i in range(100_000):\n        open(f'/tmp/f{i}', 'w').close()\n"
        "        made += 1\nexcept OSError as e:\n    print('INODE STOP', made, e.strerror)\n"
        "try:\n    open('/dev/shm/x', 'wb').write(b'x' * (200 << 20))\n    print('SHM WROTE')\n"
        "except OSError as e:\n    print('SHM STOP', e.strerror)\n"
        "for path in ('/x', '/usr/x', '/dev/x'):\n    try:\n        open(path, 'w')\n"
        "        print('WROTE', path)\n    except OSError as e:\n        print('DENIED', path)"
    )
    told, after = run_hostile(isolation, block, "print(x)", limits=limits)
    assert "SIZE STOP" in told and "No space left on device" in told
    assert int(told.split("SIZE STOP ")[1].split()[0]) <= 32
    if bwrap.mount_scratch.__module__ and os.geteuid() == 0:
        assert "INODE STOP" in told and int(told.split("INODE STOP ")[1].split()[0]) < 2000
    assert "SHM WROTE" not in told and "WROTE" not in told
    assert told.count("DENIED") == 3
    assert "1" in after


def test_the_host_environment_and_memory_through_proc(
    isolation: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake = "sk-test-FAKE-proc-environ-0123456789"
    monkeypatch.setenv("OPENAI_API_KEY", fake)
    host = os.getpid()
    marker = fake.encode()
    block = (
        "import os\n"
        f"for name in ('environ', 'mem'):\n    path = f'/proc/{host}/{{name}}'\n"
        "    try:\n        f = open(path, 'rb')\n"
        "        data = f.read(1 << 16) if name == 'environ' else b''\n"
        f"        print('OPENED', name, {marker!r} in data)\n"
        "    except OSError as e:\n        print('DENIED', name, type(e).__name__)"
    )
    (told,) = run_hostile(isolation, block)
    if isolation == "bwrap":
        # Its own PID namespace: the host's /proc entry does not exist in there.
        assert "DENIED environ" in told and "DENIED mem" in told
    elif os.geteuid() == 0:
        # Documented: as root, the plain subprocess can open the host's environment
        # (the key set here is not in it: /proc shows the environment the host started
        # with, where a key given on the command line would be).
        assert "OPENED environ" in told
    else:
        # The host dropped its dumpability before starting the worker.
        assert "DENIED environ PermissionError" in told and "DENIED mem" in told
    assert fake not in told


NON_ROOT_SCRIPT = r"""
import os, sys
sys.path.insert(0, sys.argv[1])
from _support import TEST_LIMITS
import rlm
from rlm.repl import SubprocessRepl
from rlm.testing import ScriptedModel

host = os.getpid()
block = (
    "import os, sys, socket\n"
    "def t(f):\n    try:\n        f()\n        return 'OPEN'\n"
    "    except OSError as e:\n        return 'DENIED'\n"
    f"print('environ', t(lambda: open('/proc/{host}/environ').read()))\n"
    f"print('mem', t(lambda: open('/proc/{host}/mem', 'rb').read(1)))\n"
    "print('shadow', t(lambda: open('/etc/shadow').read()))\n"
    "print('swappiness', t(lambda: open('/proc/sys/vm/swappiness', 'w')))\n"
    "print('inet', t(lambda: socket.socket()))\n"
    "if os.environ['HOME'] == '/tmp':\n"
    "    print('disk', t(lambda: open('/tmp/big', 'wb').write(b'x' * (200 << 20))))\n"
    "print('root', t(lambda: open('/planted', 'w')))\n"
)
forged = "import os, sys\nos.write(int(sys.argv[3]), (300 << 20).to_bytes(4, 'big'))"
seen = []
def forge(request):
    seen.append(request.messages[-1].content)
    return f"```repl\n{forged}\n```"
def last(request):
    seen.append(request.messages[-1].content)
    return "FINAL(alive)"
model = ScriptedModel([f"```repl\n{block}\n```", forge, last])
repl = SubprocessRepl.factory(limits=TEST_LIMITS, isolation=sys.argv[2])
print(rlm.run("q", "c", model=model, repl=repl).answer)
print("\n".join(seen))
"""


AS_NOBODY = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]


def _python_for_nobody() -> tuple[list[str], dict[str, str]] | str:
    """An interpreter uid 65534 can run (this one, or the system's of the same version,
    given this one's packages), with its environment; or why there is none."""
    import shutil
    import subprocess

    if os.geteuid() != 0:
        return "the suite is not running as root, so it already is the unprivileged case"
    if shutil.which("setpriv") is None:
        return "setpriv (util-linux) is not installed"
    import rlm as package

    paths = [os.path.dirname(os.path.dirname(package.__file__))]
    paths += [p for p in sys.path if os.path.basename(p) in ("site-packages", "dist-packages")]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(paths)}
    version = f"python{sys.version_info.major}.{sys.version_info.minor}"
    # The worker is a new process: the interpreter must be reachable by its path (one
    # under a folder private to root can be started by setpriv, yet not run again).
    check = "import rlm, subprocess, sys\nsubprocess.run([sys.executable, '-c', ''], check=True)"
    for python in (sys.executable, f"/usr/bin/{version}", f"/usr/local/bin/{version}"):
        if not os.path.exists(python):
            continue
        probe = subprocess.run(
            [*AS_NOBODY, python, "-c", check], capture_output=True, timeout=60, env=env, cwd="/"
        )
        if probe.returncode == 0:
            return [*AS_NOBODY, python], env
    return (
        f"uid 65534 cannot run this interpreter ({sys.executable}), nor a system {version}, "
        "with rlm importable: their folders are private to root on this machine"
    )


def test_issue_cases_as_an_unprivileged_user(isolation: str) -> None:
    import subprocess

    found = _python_for_nobody()
    if isinstance(found, str):
        pytest.skip(found)
    python, env = found
    fake = "sk-test-FAKE-nobody-0123456789"
    done = subprocess.run(
        [*python, "-c", NON_ROOT_SCRIPT, str(Path(__file__).parent), isolation],
        capture_output=True,
        text=True,
        timeout=120,
        cwd="/",
        env={**env, "OPENAI_API_KEY": fake},  # in the host's /proc/<pid>/environ
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("alive")
    # Its own PID namespace, or (plain subprocess) the host made itself non-dumpable.
    assert "environ DENIED" in done.stdout and "mem DENIED" in done.stdout
    assert "shadow DENIED" in done.stdout and "swappiness DENIED" in done.stdout
    assert "root DENIED" in done.stdout and not os.path.exists("/planted")
    if isolation == "bwrap":
        assert "inet DENIED" in done.stdout and "disk DENIED" in done.stdout
    assert KILLED in done.stdout and fake not in done.stdout


def test_system_calls_a_repl_never_needs_fail(isolation: str) -> None:
    if isolation != "bwrap":
        pytest.skip("the seccomp filter is part of the bwrap sandbox")
    block = (
        "import ctypes, os\nlibc = ctypes.CDLL(None, use_errno=True)\n"
        "def errno_of(result):\n    return ctypes.get_errno() if result != 0 else 0\n"
        "print('unshare', errno_of(libc.unshare(0x10000000)))\n"  # CLONE_NEWUSER
        "print('ptrace', errno_of(libc.ptrace(0, 0, 0, 0)))\n"  # PTRACE_TRACEME
        "print('mount', errno_of(libc.mount(b'none', b'/tmp', b'tmpfs', 0, None)))\n"
        "print('keyctl', errno_of(libc.syscall(250, 0, 0, 0, 0)))\n"  # x86-64 keyctl
        "import threading, subprocess\nt = threading.Thread(target=len, args=('x',))\n"
        "t.start()\nt.join()\nprint('threads fine')\n"  # clone() without namespace flags
        "print(subprocess.run(['true']).returncode == 0 and 'processes fine')"
    )
    (told,) = run_hostile(isolation, block)
    assert "unshare 1" in told and "ptrace 1" in told and "mount 1" in told  # EPERM
    if os.uname().machine == "x86_64":
        assert "keyctl 1" in told
    assert "threads fine" in told and "processes fine" in told


def test_the_seccomp_program_is_cached_for_this_user_only(
    isolation: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    if isolation != "bwrap":
        pytest.skip("the seccomp filter is part of the bwrap sandbox")
    from rlm.repl import seccomp

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.setattr(seccomp, "_program", None)
    built = seccomp.program()
    cached = seccomp._cache_file()
    assert cached is not None and cached.read_bytes() == built
    assert cached.stat().st_mode & 0o777 == 0o600
    cached.write_bytes(b"\0" * 8)  # tampered: but only this user could write it
    cached.chmod(0o666)  # ... and now anybody could: not used
    monkeypatch.setattr(seccomp, "_program", None)
    assert seccomp.program() == built


def test_signalling_the_hosts_processes(isolation: str) -> None:
    import subprocess

    # A stand-in for the host: a process of the same user that the code tries to kill.
    victim = subprocess.Popen(["sleep", "60"])
    try:
        (told,) = run_hostile(
            isolation,
            f"import os, signal\ntry:\n    os.kill({victim.pid}, signal.SIGKILL)\n"
            "    print('KILLED')\nexcept OSError as e:\n    print('DENIED', type(e).__name__)",
        )
        if isolation == "bwrap":
            # Its own PID namespace: the host's processes do not exist in there.
            assert "DENIED ProcessLookupError" in told and victim.poll() is None
        else:
            # Documented: a plain subprocess can signal the host user's processes.
            assert "KILLED" in told and victim.wait(timeout=10) == -9
    finally:
        victim.kill()
        victim.wait()
