"""The `rlm_cassette` fixture, loaded through the installed pytest11 entry point."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

USER_TEST = """
import rlm
from rlm.testing import FunctionModel

CALLS = []

def reply(request):
    CALLS.append(request)
    if len(request.messages) == 2:
        return "```repl\\nprint(llm_query('x'))\\n```"
    if request.purpose == "subcall":
        return "sub-reply"
    return "FINAL(done)"

def test_with_a_cassette(rlm_cassette):
    model = rlm_cassette(FunctionModel(reply, name="paid-model"))
    result = rlm.run("q", "ctx", model=model, repl="inprocess")
    assert result.answer == "done"
    print("LIVE_CALLS", len(CALLS))
"""


def run_pytest(folder: Path, *args: str, ci: bool = False) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("CI", "RLM_RECORD_MODE")}
    if ci:
        env["CI"] = "true"
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-s", "-p", "no:cacheprovider", *args],
        cwd=folder,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_rlm_cassette_records_then_replays_and_ci_never_records(tmp_path: Path) -> None:
    (tmp_path / "test_user.py").write_text(USER_TEST)
    first = run_pytest(tmp_path)
    assert first.returncode == 0, first.stdout + first.stderr
    assert "LIVE_CALLS 3" in first.stdout
    tape = tmp_path / "cassettes" / "test_user" / "test_with_a_cassette.jsonl"
    assert tape.is_file()

    again = run_pytest(tmp_path, ci=True)  # CI: replay only
    assert again.returncode == 0, again.stdout + again.stderr
    assert "LIVE_CALLS 0" in again.stdout

    tape.unlink()
    missing = run_pytest(tmp_path, ci=True)
    assert missing.returncode != 0
    assert "mode='none' only replays" in missing.stdout

    rerecord = run_pytest(tmp_path, "--rlm-record-mode=all", ci=True)
    assert rerecord.returncode == 0 and "LIVE_CALLS 3" in rerecord.stdout
    assert tape.is_file()
