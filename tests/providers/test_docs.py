"""The Python blocks of docs/providers.md run, in order, with fake keys."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from rlm.providers import pricing, registry

DOCS = Path(__file__).resolve().parents[2] / "docs"


def test_docs_providers_page_runs(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-ant-test")
    # The page adds prices and a provider prefix: keep them out of other tests.
    monkeypatch.setattr(pricing, "_prices", dict(pricing._prices))
    monkeypatch.setattr(registry, "_factories", dict(registry._factories))
    text = (DOCS / "providers.md").read_text()
    blocks = re.findall(r"^```python\n(.*?)^```", text, re.DOTALL | re.MULTILINE)
    assert len(blocks) >= 8
    namespace: dict[str, object] = {"__name__": "docs_providers"}
    for block in blocks:
        exec(compile(block, "docs/providers.md", "exec"), namespace)
