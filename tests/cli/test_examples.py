"""The examples run offline (scripted models) and get the right answers."""

from __future__ import annotations

import runpy
from pathlib import Path
from typing import Any

import pytest

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def load(name: str, monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    monkeypatch.delenv("RLM_MODEL", raising=False)
    monkeypatch.delenv("RLM_SUB_MODEL", raising=False)
    monkeypatch.delenv("RLM_TRAJECTORY", raising=False)
    return runpy.run_path(str(EXAMPLES / name), run_name="example")


def test_simple_qa_runs_offline(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    example = load("simple_qa.py", monkeypatch)
    result = example["main"]()
    assert result.answer == "1987, by Amara Okafor and Tomas Silva"
    out = capsys.readouterr().out
    assert "offline: a scripted model plays the LLM" in out
    assert "A: 1987, by Amara Okafor and Tomas Silva" in out


def test_long_document_runs_offline_and_records_a_trajectory(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    example = load("long_document.py", monkeypatch)
    monkeypatch.setenv("RLM_TRAJECTORY", str(tmp_path / "run.jsonl"))
    result = example["main"]()
    _, expected = example["make_log"]()
    assert result.answer == expected
    assert result.sub_calls == 15
    out = capsys.readouterr().out
    assert f"expected: {expected}" in out and "differs" not in out
    assert (tmp_path / "run.jsonl").stat().st_size > 0


def test_chat_over_documents_runs_offline(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    example = load("chat_over_documents.py", monkeypatch)
    first, second, third = example["main"]()
    crm = example["CRM"]
    march = sorted(
        {
            t["customer"]
            for t in example["TICKETS"]
            if "cancel" in t["text"].lower() and "march" in t["text"].lower()
        }
    )
    names = [crm[c]["name"] for c in march]
    annual = [crm[c]["name"] for c in march if crm[c]["plan"] == "annual"]
    assert first.output == names and first.tool_calls == len(march)
    report = second.output
    assert isinstance(report, example["ChurnReport"])
    assert report.churned == names and report.annual_plan == annual
    assert report.annual_share == pytest.approx(len(annual) / len(names))
    assert third.output == sorted(set(names) - set(example["WIN_BACK_LIST"]))
    assert all(r.stop_reason == "final" for r in (first, second, third))
    assert "A: " in capsys.readouterr().out
