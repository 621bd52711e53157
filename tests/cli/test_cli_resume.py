"""`rlm run --resume`: its options, and a run killed with SIGKILL at several points.

The kill test: one run, killed three times and resumed each time from the same trajectory
file (a resumed run appends to it): during a code block, during an `llm_query_batched`
batch, and during a root model call. Each `rlm run` is a real process talking to the
OpenAI adapter through the real SDK and the local fake server, whose request log is the
proof: no request the trajectory held as finished at a kill is sent again, the one(s) in
flight at the kill are sent again once, and the answer is an uninterrupted run's. The
first attempt and the last resume use the default sandboxed REPL, the others the
in-process one (faster; the recorded run does not fix the REPL).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from rlm.testing.replay import load_recorded_calls
from rlm.testing.server import FakeLLMServer, RecordedRequest

QUERY = "How wide are the rows, and how many words has each of the first five?"
CONTEXT = "\n".join(f"row {i}: " + " ".join(["word"] * (i % 4 + 1)) for i in range(9))
SLOW_BLOCK_S = 1.5

TURNS = (
    "```repl\nrows = context.splitlines()\nprint(len(rows))\n```",
    "Measuring takes a moment.\n```repl\nimport time\ntime.sleep({slow_s})\n"
    "width = sum(len(r) for r in rows)\nprint(width)\n```",
    "```repl\nparts = llm_query_batched([f'Count the words: {r}' for r in rows[:5]])\n"
    "print(parts)\n```",
    "```repl\nanswer = f\"{width} characters; words {'+'.join(parts)}\"\nprint(answer)\n```",
    "FINAL_VAR(answer)",
)

Key = tuple[str, tuple[tuple[str, str], ...]]


def key_of(request: RecordedRequest) -> Key:
    view = request.view
    return view.system, tuple((m.role, m.text) for m in view.messages)


def finished_keys(trajectory: Path) -> set[Key]:
    """The requests the trajectory holds as finished, keyed as the server sees them."""
    keys = set()
    for call in load_recorded_calls(trajectory):
        messages = call.request.messages
        system = "\n\n".join(m.content for m in messages if m.role == "system")
        rest = tuple((m.role, m.content) for m in messages if m.role != "system")
        keys.add((system, rest))
    return keys


class Model:
    """The fake server's handler: a deterministic RLM, and a gate that holds one request
    of a chosen kind unanswered (until the test has killed the process that sent it)."""

    def __init__(self, slow_s: float = SLOW_BLOCK_S) -> None:
        self.slow_s = slow_s
        self.hold: Callable[[RecordedRequest], bool] | None = None
        self.held = threading.Event()
        self.release = threading.Event()

    async def __call__(self, request: RecordedRequest) -> str:
        if self.hold is not None and self.hold(request):
            self.hold = None
            self.held.set()
            await asyncio.to_thread(self.release.wait)
        view = request.view
        if not view.system:  # a sub-call: one user message
            return str(len(view.last_user.split(": ", 1)[1].split()) - 2)
        turn = sum(m.role == "assistant" for m in view.messages)
        return TURNS[min(turn, len(TURNS) - 1)].replace("{slow_s}", str(self.slow_s))


def is_subcall(request: RecordedRequest, row: int) -> bool:
    return not request.view.system and f"row {row}:" in request.view.last_user


def is_root_turn(request: RecordedRequest, turn: int) -> bool:
    view = request.view
    return bool(view.system) and sum(m.role == "assistant" for m in view.messages) == turn


@pytest.fixture
def context_file(tmp_path: Path) -> Path:
    path = tmp_path / "rows.txt"
    path.write_text(CONTEXT)
    return path


@pytest.fixture
def model() -> Iterator[Model]:
    handler = Model()
    yield handler
    handler.release.set()


def rlm_run(server: FakeLLMServer, *args: str, repl: str) -> subprocess.Popen[str]:
    env = {
        **os.environ,
        "OPENAI_BASE_URL": server.openai_base_url,
        "OPENAI_API_KEY": "placeholder",
    }
    return subprocess.Popen(
        [sys.executable, "-m", "rlm.cli", "run", *args, "--repl", repl, "--json", "-q"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )


def finish(process: subprocess.Popen[str]) -> tuple[int, dict[str, object], str]:
    out, err = process.communicate(timeout=120)
    return process.returncode, json.loads(out), err


def kill(process: subprocess.Popen[str]) -> None:
    process.send_signal(signal.SIGKILL)
    process.communicate(timeout=30)
    with contextlib.suppress(ProcessLookupError):
        # Anything the run left behind in its process group (a REPL worker).
        os.killpg(process.pid, signal.SIGKILL)


def wait_for(check: Callable[[], bool], what: str, process: subprocess.Popen[str]) -> None:
    deadline = time.monotonic() + 60
    while not check():
        if process.poll() is not None:
            raise AssertionError(f"the run ended before {what}: {process.communicate()}")
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.01)


def kinds(trajectory: Path) -> list[str]:
    """The event kinds written so far (a line being written is left out)."""
    if not trajectory.exists():
        return []
    text = trajectory.read_text()
    lines = text.split("\n")[:-1]
    return [json.loads(line)["kind"] for line in lines if line]


@pytest.fixture
def quick(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeLLMServer]:
    """The same model without the slow block, for `rlm.cli.main` in this process."""
    with FakeLLMServer(handler=Model(slow_s=0)) as server:
        monkeypatch.setenv("OPENAI_BASE_URL", server.openai_base_url)
        monkeypatch.setenv("OPENAI_API_KEY", "placeholder")
        yield server


def cut_before_turn(path: Path, turn: int) -> None:
    """Leave `path` as a kill during the request for root turn `turn` (1-based) leaves it."""
    lines = path.read_text().splitlines(keepends=True)
    root_starts = [
        i
        for i, line in enumerate(lines)
        if '"kind":"model_call_started"' in line and '"purpose":"root"' in line
    ]
    path.write_text("".join(lines[: root_starts[turn - 1] + 1]) + '{"kind":"model_ca')


def test_resume_takes_the_query_models_and_limits_from_the_recording_and_appends(
    quick: FakeLLMServer, tmp_path: Path, context_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from rlm.cli import main
    from rlm.telemetry import load_trajectory

    trajectory = tmp_path / "run.jsonl"
    run = ["run", QUERY, "-c", str(context_file), "-m", "openai/gpt-4o-mini", "-q", "--json"]
    options = ["--sub-model", "openai/gpt-4o", "--max-iterations", "7", "--max-depth", "2"]
    assert main([*run, *options, "--repl", "inprocess", "-t", str(trajectory)]) == 0
    whole = json.loads(capsys.readouterr().out)
    cut_before_turn(trajectory, 3)
    before = len(quick.requests)

    code = main(["run", "--resume", str(trajectory), "-c", str(context_file), "--repl",
                 "inprocess", "--json"])  # fmt: skip
    out, err = capsys.readouterr()
    assert code == 0
    result = json.loads(out)
    assert result["answer"] == whole["answer"] and result["iterations"] == whole["iterations"]
    resumed = result["resumed"]
    assert resumed["trajectory"] == str(trajectory) and resumed["differences"] == []
    assert resumed["replayed_calls"] == 2  # two turns
    assert resumed["live_calls"] == 3 + 5  # the turn in flight at the cut, two more, a batch
    assert err.startswith(f"resuming {trajectory}: the run stopped before its end after 2 ")
    assert "its last line was cut off" in err.splitlines()[0]
    # The recorded models: the root's for the turns, the sub-model for the batch.
    models = Counter(r.model for r in quick.requests[before:])
    assert models == {"gpt-4o-mini": 3, "gpt-4o": 5}
    # The resumed run was appended to the file it resumed, with the recorded limits.
    runs = load_trajectory(trajectory).runs
    assert len(runs) == 2 and runs[1].status == "finished"
    assert (runs[1].started.max_iterations, runs[1].started.max_depth) == (7, 2)


def test_resume_into_another_file_and_the_result_line(
    quick: FakeLLMServer, tmp_path: Path, context_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from rlm.cli import main
    from rlm.telemetry import load_trajectory

    trajectory, other = tmp_path / "run.jsonl", tmp_path / "other.jsonl"
    run = ["run", QUERY, "-c", str(context_file), "-m", "openai/gpt-4o-mini", "-q"]
    assert main([*run, "--repl", "inprocess", "-t", str(trajectory)]) == 0
    answer = capsys.readouterr().out
    cut_before_turn(trajectory, 2)
    kept = trajectory.read_bytes()

    code = main(["run", QUERY, "--resume", str(trajectory), "-c", str(context_file),
                 "-t", str(other), "--repl", "inprocess"])  # fmt: skip
    out, err = capsys.readouterr()
    assert code == 0 and out == answer
    assert "· resumed: 1 call replayed, 9 live" in err
    assert trajectory.read_bytes() == kept
    # The other file holds the whole run (replayed calls included): it resumes alone.
    runs = load_trajectory(other).runs
    assert len(runs) == 1 and len(runs[0].model_calls) == len(TURNS)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["another question", "--resume", "{run}", "-c", "{context}"], "QUERY differs from"),
        (["--resume", "{run}", "-c", "{other}"], "recorded over a str of"),
        (["--resume", "missing.jsonl", "-c", "{context}"], "--resume: no trajectory file at"),
    ],
)
def test_resume_refuses_what_does_not_fit_the_recording(
    quick: FakeLLMServer,
    tmp_path: Path,
    context_file: Path,
    capsys: pytest.CaptureFixture[str],
    args: list[str],
    message: str,
) -> None:
    from rlm.cli import main

    trajectory = tmp_path / "run.jsonl"
    run = ["run", QUERY, "-c", str(context_file), "-m", "openai/gpt-4o-mini", "-q"]
    assert main([*run, "--repl", "inprocess", "-t", str(trajectory)]) == 0
    other = tmp_path / "other.txt"
    other.write_text(CONTEXT + "\n")
    capsys.readouterr()
    sent = len(quick.requests)
    paths = {"run": trajectory, "context": context_file, "other": other}
    code = main(["run", *(a.format(**paths) for a in args), "--repl", "inprocess"])
    _, err = capsys.readouterr()
    assert code == 2 and message in err
    assert len(quick.requests) == sent


def test_run_needs_a_query_and_a_model_without_resume(
    context_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from rlm.cli import main

    assert main(["run", "-c", str(context_file), "-m", "openai/gpt-4o-mini"]) == 2
    assert "QUERY is required (or --resume TRAJECTORY" in capsys.readouterr().err
    assert main(["run", "q", "-c", str(context_file)]) == 2
    assert "--model is required" in capsys.readouterr().err


@pytest.mark.slow
def test_a_run_killed_three_times_resumes_to_the_uninterrupted_answer(
    tmp_path: Path, context_file: Path, model: Model, capsys: pytest.CaptureFixture[str]
) -> None:
    from rlm.cli import main

    with FakeLLMServer(handler=Model()) as clean, pytest.MonkeyPatch.context() as env:
        env.setenv("OPENAI_BASE_URL", clean.openai_base_url)
        env.setenv("OPENAI_API_KEY", "placeholder")
        code = main(["run", QUERY, "-c", str(context_file), "-m", "openai/gpt-4o-mini",
                     "--repl", "inprocess", "--json", "-q"])  # fmt: skip
        whole = json.loads(capsys.readouterr().out)
        uninterrupted = Counter(key_of(r) for r in clean.requests)
    rows = CONTEXT.splitlines()
    words = "+".join(str(len(r.split()) - 2) for r in rows[:5])
    assert code == 0 and whole["answer"] == f"{sum(map(len, rows))} characters; words {words}"
    assert len(uninterrupted) == len(TURNS) + 5 and set(uninterrupted.values()) == {1}

    trajectory = tmp_path / "run.jsonl"
    resume = ("--resume", str(trajectory), "-c", str(context_file))
    kills: list[tuple[int, set[Key]]] = []  # (requests sent before the kill, finished keys)
    with FakeLLMServer(handler=model) as server:

        def killed(process: subprocess.Popen[str]) -> None:
            kill(process)
            model.release.set()  # the held request (if any) may be answered into the void
            kills.append((len(server.requests), finished_keys(trajectory)))

        # 1. During code: the sandboxed worker is sleeping in the second block.
        first = rlm_run(
            server, QUERY, "-c", str(context_file), "-m", "openai/gpt-4o-mini",
            "-t", str(trajectory), repl="subprocess",
        )  # fmt: skip
        wait_for(lambda: kinds(trajectory).count("code_started") == 2, "block 2", first)
        killed(first)
        assert kinds(trajectory)[-1] == "code_started"

        # 2. During a batch: four sub-calls answered, the one for row 2 in flight.
        model.release.clear()
        model.hold = lambda r: is_subcall(r, 2)
        second = rlm_run(server, *resume, repl="inprocess")

        def batch_half_done() -> bool:
            return model.held.is_set() and kinds(trajectory).count("subcall_finished") == 4

        wait_for(batch_half_done, "the batch", second)
        killed(second)

        # 3. During a root model call: the fourth turn's request is unanswered.
        model.release.clear()
        model.held.clear()
        model.hold = lambda r: is_root_turn(r, 3)
        third = rlm_run(server, *resume, repl="inprocess")
        wait_for(model.held.is_set, "the fourth turn", third)
        killed(third)
        assert kinds(trajectory)[-1] == "model_call_started"

        # 4. The last resume runs to the end, in the sandbox again.
        code, result, err = finish(rlm_run(server, *resume, repl="subprocess"))
        sent = list(server.requests)

    assert code == 0, err
    assert result["answer"] == whole["answer"]
    assert result["iterations"] == whole["iterations"]
    assert result["sub_calls"] == whole["sub_calls"]
    keys = [key_of(r) for r in sent]
    assert Counter(keys).keys() == uninterrupted.keys()  # the same requests, no others
    start, resent = 0, 0
    for (before, finished), expected in zip(kills, (0, 1, 1), strict=True):
        # Nothing held as finished at a kill was sent again by a later process ...
        assert not finished & set(keys[before:])
        # ... and what was in flight at the kill (nothing during code; the held sub-call;
        # the held turn) was sent again, once.
        in_flight = set(keys[start:before]) - finished
        assert len(in_flight) == expected
        assert all(keys[before:].count(k) == 1 for k in in_flight)
        start, resent = before, resent + len(in_flight)
    assert len(keys) == len(uninterrupted) + resent
    assert f"resuming {trajectory}" in err and "3 attempt(s)" in err
    resumed = result["resumed"]
    assert isinstance(resumed, dict) and resumed["differences"] == []
    assert resumed["live_calls"] == 2  # the turn in flight at the last kill, and the last
