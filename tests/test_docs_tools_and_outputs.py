"""The Python blocks of the Tools and Typed answers sections of
docs/sessions-tools-and-outputs.md run, in order, and their checks hold."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

PAGE = Path(__file__).resolve().parents[1] / "docs" / "sessions-tools-and-outputs.md"
SECTIONS = ("Tools the model's code can call", "Typed answers")


def section(text: str, title: str) -> str:
    match = re.search(rf"^## {re.escape(title)}\n(.*?)(?=^## |\Z)", text, re.DOTALL | re.MULTILINE)
    assert match, f"docs page has no section {title!r}"
    return match.group(1)


@pytest.mark.parametrize("repl", ["subprocess", "inprocess"])
def test_the_tools_and_typed_answers_examples_run(
    repl: str, capsys: pytest.CaptureFixture[str]
) -> None:
    import rlm

    text = PAGE.read_text(encoding="utf-8")
    blocks = [
        block
        for title in SECTIONS
        for block in re.findall(
            r"^```python\n(.*?)^```", section(text, title), re.DOTALL | re.MULTILINE
        )
    ]
    assert len(blocks) >= 5
    real_run = rlm.run

    def run_with(*args: object, **kwargs: object) -> rlm.RLMResult:
        kwargs.setdefault("repl", repl)
        return real_run(*args, **kwargs)  # type: ignore[arg-type]

    namespace: dict[str, object] = {"__name__": "docs_tools_and_outputs"}
    try:
        rlm.run = run_with  # type: ignore[assignment]
        for block in blocks:
            # As a reader runs them: without this file's `from __future__` flags.
            exec(compile(block, str(PAGE), "exec", dont_inherit=True), namespace)
    finally:
        rlm.run = real_run  # type: ignore[assignment]
    out = capsys.readouterr().out
    assert "Acme has 1 open ticket 3" in out
    assert "Churn(month='March', customers=['Acme', 'Initech'], count=2)" in out
    assert '{"north":3,"south":5}' in out
