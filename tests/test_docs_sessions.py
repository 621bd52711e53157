"""The Python blocks of the Sessions and History compaction sections of
docs/sessions-tools-and-outputs.md run, in order, and check their own results."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

PAGE = Path(__file__).resolve().parents[1] / "docs" / "sessions-tools-and-outputs.md"


def section(text: str, title: str) -> str:
    start = text.index(f"\n## {title}\n")
    end = text.find("\n## ", start + 1)
    return text[start : end if end != -1 else len(text)]


@pytest.mark.parametrize("title", ["Sessions", "History compaction"])
def test_the_docs_examples_run(title: str) -> None:
    text = PAGE.read_text()
    blocks = re.findall(r"^```python\n(.*?)^```", section(text, title), re.S | re.M)
    assert blocks
    # Each section's blocks share a namespace; a section may use the first one's imports.
    namespace: dict[str, object] = {"__name__": "docs_sessions"}
    exec("import rlm\nfrom rlm.testing import ScriptedModel", namespace)
    for block in blocks:
        exec(compile(block, str(PAGE), "exec"), namespace)
