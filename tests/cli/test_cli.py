"""The `rlm` command line through its entry point, with scripted `clitest/...` models."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from rlm.cli import main
from rlm.evals import get_task
from rlm.events import RunFinished, RunStarted
from rlm.telemetry.trajectory import read_events

INPROC = ["--repl", "inprocess"]


def run_cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def assert_one_line_error(err: str, *fragments: str) -> None:
    lines = [line for line in err.splitlines() if line.strip() and not line.startswith("usage:")]
    assert len(lines) == 1, err
    assert lines[0].startswith("rlm: error: ")
    assert "Traceback" not in err
    for fragment in fragments:
        assert fragment in lines[0]


# -- demo -------------------------------------------------------------------------------


def test_demo_runs_offline_prints_each_iteration_and_writes_a_trajectory(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    trajectory = tmp_path / "demo.jsonl"
    code, out, _ = run_cli(
        capsys, "demo", "--records", "400", "--trajectory", str(trajectory), *INPROC
    )
    assert code == 0
    assert "SCRIPTED" in out
    for n in (1, 2, 3, 4):
        assert f"iteration {n}" in out
    assert "llm_query_batched" in out  # the code is shown
    assert "400 lines; the first two:" in out  # and what it printed
    assert "sub-calls to scripted-sub-model" in out
    expected = int(get_task("salary").generate(400, 0).gold)
    assert f"answer:   ${expected:,}" in out
    assert f"expected: ${expected:,}" in out
    assert "correct" in out
    assert f"rlm view {trajectory}" in out
    events = read_events(trajectory)[0]
    assert isinstance(events[0], RunStarted)
    assert isinstance(events[-1], RunFinished)
    assert events[-1].result.answer == f"${expected:,}"


def test_python_dash_m_rlm_demo_works_in_a_fresh_process(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.endswith("_API_KEY")}
    proc = subprocess.run(
        [sys.executable, "-m", "rlm", "demo", "--records", "200"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert "correct" in proc.stdout
    assert "rlm view rlm-demo.jsonl" in proc.stdout
    assert (tmp_path / "rlm-demo.jsonl").stat().st_size > 0


def test_help_and_version(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run_cli(capsys, "--help")
    assert code == 0
    for command in ("demo", "run", "eval", "view"):
        assert command in out
    code, out, _ = run_cli(capsys, "--version")
    assert code == 0 and out.startswith("rlm ")
    code, _, err = run_cli(capsys)
    assert code == 2 and "COMMAND" in err


# -- run --------------------------------------------------------------------------------


def test_run_prints_the_answer_on_stdout_and_progress_on_stderr(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    doc = tmp_path / "doc.txt"
    doc.write_text("x" * 1234)
    code, out, err = run_cli(
        capsys, "run", "How long?", "--context", str(doc), "-m", "clitest/echo", *INPROC
    )
    assert code == 0
    assert out == "1234 characters\n"
    assert "iteration 1" in err
    assert "stop: final" in err


def test_run_json_output_parses_and_has_the_full_result(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    doc = tmp_path / "doc.txt"
    doc.write_text("hello")
    code, out, _ = run_cli(
        capsys, "run", "How long?", "-c", str(doc), "-m", "clitest/echo", "--json", "-q", *INPROC
    )
    assert code == 0
    result = json.loads(out)
    assert result["answer"] == "5 characters"
    assert result["stop_reason"] == "final"
    assert result["ok"] is True and result["exit_code"] == 0
    assert result["iterations"] == 1
    assert result["history"][0]["executions"][0]["code"].startswith("if isinstance(context")
    assert "clitest-echo" in result["usage"]


def test_run_reads_stdin_and_directories(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sys, "stdin", io.StringIO("from stdin"))
    code, out, _ = run_cli(capsys, "run", "q", "-c", "-", "-m", "clitest/echo", "-q", *INPROC)
    assert (code, out) == (0, "10 characters\n")

    folder = tmp_path / "docs"
    (folder / "sub").mkdir(parents=True)
    (folder / "a.md").write_text("alpha")
    (folder / "sub" / "b.txt").write_text("beta")
    (folder / ".hidden").write_text("secret")
    (folder / "image.bin").write_bytes(b"\x89PNG\0\0\0")
    code, out, err = run_cli(capsys, "run", "q", "-c", str(folder), "-m", "clitest/echo", *INPROC)
    assert code == 0
    assert out == "files: a.md, sub/b.txt\n"
    assert "2 files" in err and "1 binary or unreadable files skipped" in err


def test_run_writes_a_trajectory(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    doc = tmp_path / "doc.txt"
    doc.write_text("abc")
    trajectory = tmp_path / "out" / "run.jsonl"
    code, _, err = run_cli(
        capsys, "run", "q", "-c", str(doc), "-m", "clitest/echo", "-t", str(trajectory), *INPROC
    )
    assert code == 0
    kinds = [e.kind for e in read_events(trajectory)[0]]
    assert kinds[0] == "run_started" and kinds[-1] == "run_finished"
    assert f"rlm view {trajectory}" in err


def test_missing_api_key_is_one_line(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    doc = tmp_path / "doc.txt"
    doc.write_text("abc")
    code, out, err = run_cli(capsys, "run", "q", "-c", str(doc), "-m", "clitest/nokey", *INPROC)
    assert code == 2 and out == ""
    assert_one_line_error(err, "CLITEST_API_KEY")

    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    code, out, err = run_cli(
        capsys, "run", "q", "-c", str(doc), "-m", "openai/gpt-4o-mini", *INPROC
    )
    assert code == 2 and out == ""
    assert_one_line_error(err, "OPENAI_API_KEY")


def test_unknown_model_is_one_line(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    doc = tmp_path / "doc.txt"
    doc.write_text("abc")
    code, _, err = run_cli(capsys, "run", "q", "-c", str(doc), "-m", "nosuch/model", *INPROC)
    assert code == 2
    assert_one_line_error(err, "nosuch/model")


def test_bad_usage_exits_2(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    code, _, err = run_cli(capsys, "run", "q", "-m", "clitest/echo")
    assert code == 2 and "--context" in err
    code, _, err = run_cli(capsys, "run", "q", "-c", str(tmp_path / "missing.txt"), "-m", "x/y")
    assert code == 2
    assert_one_line_error(err, "no such file")
    doc = tmp_path / "doc.txt"
    doc.write_text("abc")
    code, _, err = run_cli(
        capsys, "run", "q", "-c", str(doc), "-m", "clitest/echo", "--max-iterations", "0", *INPROC
    )
    assert code == 2
    assert_one_line_error(err, "max_iterations")


def test_provider_failure_exits_3_with_one_line(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    doc = tmp_path / "doc.txt"
    doc.write_text("abc")
    code, out, err = run_cli(
        capsys, "run", "q", "-c", str(doc), "-m", "clitest/down", "-q", *INPROC
    )
    assert code == 3 and out == ""
    assert_one_line_error(err, "provider failure", "HTTP 503")

    code, out, _ = run_cli(
        capsys, "run", "q", "-c", str(doc), "-m", "clitest/down", "-q", "--json", *INPROC
    )
    payload = json.loads(out)
    assert code == 3 and payload["exit_code"] == 3
    assert payload["error_type"] == "ProviderUnavailableError"
    assert payload["stop_reason"] == "error" and payload["ok"] is False


def test_budget_exhaustion_exits_4(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    doc = tmp_path / "doc.txt"
    doc.write_text("abc")
    code, out, err = run_cli(
        capsys, "run", "q", "-c", str(doc), "-m", "clitest/chatty", "--max-tokens", "2000",
        "-q", *INPROC,
    )  # fmt: skip
    assert code == 4
    assert out == ""
    assert "stop: budget (max_tokens)" in err
    assert "budget ran out" in err


@pytest.fixture
def sigint_raises_keyboard_interrupt() -> Iterator[None]:
    """Ctrl-C as an interactive shell delivers it. A test started with SIGINT ignored
    (a background job, `nohup`, some CI runners) would otherwise never see the signal:
    `asyncio.run` turns SIGINT into cancellation only while the handler is the default."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


@pytest.mark.usefixtures("sigint_raises_keyboard_interrupt")
def test_ctrl_c_prints_the_partial_result_and_exits_130(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    doc = tmp_path / "doc.txt"
    doc.write_text("abc")
    code, out, err = run_cli(
        capsys, "run", "q", "-c", str(doc), "-m", "clitest/interrupt", "-q", "--json", *INPROC
    )
    assert code == 130
    assert "interrupted" in err
    partial = json.loads(out)
    assert partial["stop_reason"] == "cancelled"
    assert partial["answer"] is None
    assert partial["history"][0]["executions"][0]["stdout"] == "41\n"


# -- eval -------------------------------------------------------------------------------


def test_eval_prints_the_rlm_versus_direct_table(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run_cli(
        capsys, "eval", "salary", "--model", "clitest/salary", "--sizes", "100,1000",
        "--direct", "--direct-model", "clitest/direct", *INPROC,
    )  # fmt: skip
    assert code == 0, err
    lines = out.splitlines()
    header = lines[0]
    for column in (
        "records",
        "context chars",
        "expected",
        "RLM answer",
        "RLM cost",
        "RLM time",
        "direct answer",
        "direct cost",
        "direct time",
        "winner",
    ):
        assert column in header
    small, large = lines[2], lines[3]
    gold_small = int(get_task("salary").generate(100, 0).gold)
    assert (
        small.startswith("| 100 |")
        and f"| {gold_small:,} | {gold_small:,} | 1.00 |" in small
        and small.endswith("| tie |")
    )
    assert large.startswith("| 1,000 |") and "(context too long)" in large
    assert large.endswith("| RLM |")
    assert "winner: RLM 1, direct 0, tie 1" in out
    assert "salary 1,000 records, run 1/1: RLM" in err  # progress on stderr


def test_eval_json_output_parses(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run_cli(
        capsys, "eval", "salary", "-m", "clitest/salary", "--sizes", "50", "--runs", "2",
        "--seed", "5", "--json", "-q", *INPROC,
    )  # fmt: skip
    assert code == 0
    payload = json.loads(out)
    assert payload["task"] == "salary" and payload["size_unit"] == "records"
    assert [row["seed"] for row in payload["rows"]] == [5, 6]
    for row in payload["rows"]:
        assert row["rlm"]["score"] == 1.0
        assert row["rlm"]["answer"] == row["expected"]
        assert row["rlm"]["cost_usd"] > 0
        assert row["direct"] is None and row["winner"] is None
    assert payload["summary"]["rlm"]["mean_score"] == 1.0


def test_eval_runs_the_rlm_attempts_as_a_batch_with_an_executor(
    capsys: pytest.CaptureFixture[str],
) -> None:
    code, out, err = run_cli(
        capsys, "eval", "salary", "-m", "clitest/salary", "--sizes", "50", "--runs", "3",
        "--executor", "local", "--parallel", "3", "--json", *INPROC,
    )  # fmt: skip
    assert code == 0, err
    payload = json.loads(out)
    assert [row["seed"] for row in payload["rows"]] == [0, 1, 2]
    assert all(row["rlm"]["score"] == 1.0 for row in payload["rows"])
    assert "3 RLM runs on the 'local' executor" in err


def test_eval_rejects_unknown_tasks_and_bad_sizes(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run_cli(capsys, "eval", "nosuchtask", "-m", "clitest/salary")
    assert code == 2 and "salary" in err
    code, _, err = run_cli(capsys, "eval", "salary", "-m", "clitest/salary", "--sizes", "ten")
    assert code == 2
    assert_one_line_error(err, "bad size")
    code, _, err = run_cli(
        capsys,
        "eval",
        "salary",
        "-m",
        "clitest/salary",
        "--param",
        "department=Astronauts",
        *INPROC,
    )
    assert code == 2
    assert_one_line_error(err, "unknown department")
    code, _, err = run_cli(capsys, "eval", "niah", "-m", "clitest/salary", "--param", "deep=1")
    assert code == 2
    assert_one_line_error(err, "niah has no option deep; its options: depth, distractors")


# -- view -------------------------------------------------------------------------------


def test_view_writes_a_self_contained_page(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    trajectory = tmp_path / "demo.jsonl"
    assert main(["demo", "--records", "100", "--trajectory", str(trajectory), *INPROC]) == 0
    capsys.readouterr()
    code, out, _ = run_cli(capsys, "view", str(trajectory))
    assert code == 0
    page = tmp_path / "demo.html"
    assert str(page) in out
    html = page.read_text()
    assert html.startswith("<!DOCTYPE html>")
    assert "http://" not in html and "https://" not in html  # nothing to fetch
    assert "Content-Security-Policy" in html
    other = tmp_path / "elsewhere.html"
    assert main(["view", str(trajectory), "-o", str(other)]) == 0
    assert other.read_text() == html


def test_view_errors_are_one_line(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    code, _, err = run_cli(capsys, "view", str(tmp_path / "missing.jsonl"))
    assert code == 2
    assert_one_line_error(err, "no such trajectory file")
    junk = tmp_path / "junk.jsonl"
    junk.write_text("this is not json\n")
    code, _, err = run_cli(capsys, "view", str(junk))
    assert code == 1
    assert_one_line_error(err, "not an rlm trajectory")
