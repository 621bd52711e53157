"""The command line against real provider adapters talking to the local fake server.

`FakeLLMServer` speaks the OpenAI and Anthropic wire formats on 127.0.0.1, so these tests
go through the real SDK clients, retries, usage and pricing, and the default (sandboxed)
REPL, exactly as a user's `rlm run` would, without a network or a key.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from rlm.cli import main
from rlm.evals import get_task
from rlm.testing.server import ErrorReply, FakeLLMServer, RecordedRequest

SALARY_CODE = """\
```repl
import re
rows = re.findall(r"Department: ([^|]+?) \\| .*?Salary: \\$([\\d,]+)", context)
total = sum(int(s.replace(",", "")) for d, s in rows if d == "Engineering")
print(len(rows), "records")
FINAL(str(total))
```"""

RECORD = re.compile(r"Department: ([^|]+?) \| .*?Salary: \$([\d,]+)")


def salary_handler(request: RecordedRequest) -> str:
    """An RLM model that codes the answer, and a direct model that reads the prompt."""
    messages = request.view.messages
    if len(messages) == 1 and "Using the text above" in messages[0].text:
        prompt = messages[0].text
        total = sum(
            int(s.replace(",", "")) for d, s in RECORD.findall(prompt) if d == "Engineering"
        )
        return f"The total salary is ${total:,}."
    return SALARY_CODE


@pytest.fixture
def server(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeLLMServer]:
    with FakeLLMServer(handler=salary_handler) as fake:
        monkeypatch.setenv("OPENAI_BASE_URL", fake.openai_base_url)
        monkeypatch.setenv("OPENAI_API_KEY", "test-key")
        monkeypatch.setenv("ANTHROPIC_BASE_URL", fake.anthropic_base_url)
        monkeypatch.setenv("ANTHROPIC_API_KEY", "test-key")
        yield fake


@pytest.fixture
def records(tmp_path: Path) -> tuple[Path, str]:
    instance = get_task("salary").generate(300, seed=4)
    path = tmp_path / "staff.txt"
    path.write_text(instance.context)
    return path, instance.gold


@pytest.mark.parametrize("model", ["openai/gpt-4o-mini", "anthropic/claude-haiku-4-5"])
def test_run_answers_through_a_real_adapter_and_the_default_repl(
    server: FakeLLMServer,
    records: tuple[Path, str],
    model: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    path, gold = records
    query = "What is the total salary of all Engineering employees?"
    code = main(["run", query, "--context", str(path), "--model", model, "--json", "-q"])
    out, _ = capsys.readouterr()
    assert code == 0
    result = json.loads(out)
    assert result["answer"] == gold
    assert result["history"][0]["executions"][0]["stdout"] == "300 records\n"
    assert result["total_input_tokens"] > 0
    assert result["cost_usd"] is not None and result["cost_usd"] > 0  # priced models
    assert len(server.requests) == 1
    assert str(path.read_text()[:1000]) not in json.dumps(server.requests[0].json)


def test_a_rejected_key_is_a_provider_failure_in_one_line(
    monkeypatch: pytest.MonkeyPatch,
    records: tuple[Path, str],
    capsys: pytest.CaptureFixture[str],
) -> None:
    path, _ = records
    with FakeLLMServer([ErrorReply(401, "Incorrect API key provided")]) as fake:
        monkeypatch.setenv("OPENAI_BASE_URL", fake.openai_base_url)
        monkeypatch.setenv("OPENAI_API_KEY", "wrong")
        code = main(["run", "q", "-c", str(path), "-m", "openai/gpt-4o-mini", "-q"])
    out, err = capsys.readouterr()
    assert code == 3 and out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("rlm: error: provider failure")
    assert "AuthenticationError" in lines[0]


def test_eval_reproduces_the_weak_rlm_versus_strong_direct_table(
    server: FakeLLMServer, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(
        [
            "eval", "salary", "--model", "openai/gpt-4o-mini", "--direct-model",
            "openai/gpt-4o", "--sizes", "100", "3000", "-q",
        ]
    )  # fmt: skip
    out, _ = capsys.readouterr()
    assert code == 0
    rows = [line for line in out.splitlines() if line.startswith("| ") and "$" in line]
    assert len(rows) == 2
    small, large = rows
    # 100 records fit gpt-4o's window: both answer, both right; the RLM is cheaper.
    assert small.endswith("| tie |")
    # 3,000 records (about 184K tokens) do not fit: the direct model is never asked.
    assert "(context too long)" in large and large.endswith("| RLM |")
    assert "RLM (gpt-4o-mini): mean score 1.00 over 2" in out
    assert "direct (gpt-4o): mean score 0.50 over 2" in out
    direct_requests = [r for r in server.requests if r.model == "gpt-4o"]
    assert len(direct_requests) == 1


def test_run_with_an_output_schema_prints_the_validated_json(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    schema = tmp_path / "schema.json"
    schema.write_text(
        json.dumps(
            {
                "type": "object",
                "properties": {"words": {"type": "integer"}},
                "required": ["words"],
            }
        )
    )
    context = tmp_path / "text.txt"
    context.write_text("one two three")
    with FakeLLMServer() as fake:
        monkeypatch.setenv("OPENAI_BASE_URL", fake.openai_base_url)
        monkeypatch.setenv("OPENAI_API_KEY", "test-key")
        fake.push(
            "```repl\nFINAL({'words': 'three'})\n```",
            "```repl\nFINAL({'words': len(context.split())})\n```",
        )
        args = ["run", "How many words?", "-c", str(context), "-m", "openai/gpt-4o-mini"]
        code = main([*args, "--output-schema", str(schema), "-q"])
        fake.assert_exhausted()
    out, _ = capsys.readouterr()
    assert code == 0
    assert json.loads(out) == {"words": 3}
    assert "'three' is not of type 'integer'" in fake.requests[1].view.last_user


def test_a_bad_output_schema_file_is_a_usage_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    schema = tmp_path / "schema.json"
    schema.write_text("[1, 2]")
    args = ["run", "q", "-c", str(schema), "-m", "openai/gpt-4o-mini"]
    code = main([*args, "--output-schema", str(schema)])
    _, err = capsys.readouterr()
    assert code != 0
    assert "must hold a JSON object" in err
