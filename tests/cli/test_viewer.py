"""The viewer's data and page, without a browser: the run tree, totals, escaping, bad files."""

from __future__ import annotations

import base64
import hashlib
import json
import re
from pathlib import Path

import pytest

import rlm
from rlm.errors import TrajectoryError
from rlm.events import Event, event_from_json
from rlm.telemetry import TrajectoryRecorder
from rlm.testing import FunctionModel, ScriptedModel
from rlm.viewer import build_html, load_events, write_html
from rlm.viewer.tree import build_tree

DATA = re.compile(r'<script type="application/json" id="rlm-data">(.*?)</script>', re.S)


def recursive_run(path: Path) -> rlm.RLMResult:
    """A root run whose code makes two llm_query calls and one rlm_query child run."""
    root = ScriptedModel(
        [
            "```repl\nparts = llm_query_batched(['a?', 'b?'])\nprint(parts)\n```",
            "```repl\nchild = rlm_query('count to three')\nprint(child)\n```",
            "FINAL(done)",
        ],
        name="root",
    )

    def sub(request: rlm.ModelRequest) -> str:
        if len(request.messages) == 1:  # an llm_query
            return request.messages[0].content.upper()
        return "```repl\nFINAL('1 2 3')\n```"  # the child run started by rlm_query

    with TrajectoryRecorder(path) as recorder:
        return rlm.run(
            "q",
            "context",
            model=root,
            sub_model=FunctionModel(sub, name="sub"),
            max_depth=2,
            repl="inprocess",
            on_event=recorder,
        )


def test_tree_nests_subcalls_under_code_and_child_runs_under_subcalls(tmp_path: Path) -> None:
    result = recursive_run(tmp_path / "run.jsonl")
    assert result.answer == "done"
    events, skipped = load_events(tmp_path / "run.jsonl")
    assert skipped == 0
    (root,) = build_tree(events)
    assert root["status"] == "finished" and root["result"]["answer"] == "done"
    first, second, third = root["iterations"]
    (block,) = first["blocks"]
    assert [s["prompt"] for s in block["subcalls"]] == ["a?", "b?"]
    assert [s["response"] for s in block["subcalls"]] == ["A?", "B?"]
    assert all(s["call"]["tokens_in"] > 0 for s in block["subcalls"])
    (recursive,) = second["blocks"][0]["subcalls"]
    assert recursive["recursive"] is True
    child = recursive["child"]
    assert child is not None and child["depth"] == 1
    assert child["result"]["answer"] == "1 2 3"
    assert third["final"]["answer"] == "done"
    # Every token of the tree is counted once, and the root's total matches the result.
    assert root["tokens_in"] == result.total_input_tokens
    assert root["tokens_out"] == result.total_output_tokens


def test_a_cut_off_trajectory_still_renders(tmp_path: Path) -> None:
    path = tmp_path / "run.jsonl"
    recursive_run(path)
    lines = path.read_text().splitlines()
    cut = tmp_path / "cut.jsonl"
    cut.write_text("\n".join(lines[:12]) + "\n" + lines[12][: len(lines[12]) // 2])
    events, skipped = load_events(cut)
    assert len(events) == 12 and skipped == 1
    (root,) = build_tree(events)
    assert root["status"] == "running" and root["result"] is None
    page = write_html(cut)
    data = json.loads(DATA.search(page.read_text())[1])  # type: ignore[index]
    assert data["skipped_lines"] == 1 and data["events"] == 12


def test_files_that_are_not_trajectories_are_refused(tmp_path: Path) -> None:
    with pytest.raises(TrajectoryError, match="no such file"):
        load_events(tmp_path / "missing.jsonl")
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n\n")
    with pytest.raises(TrajectoryError, match="empty"):
        load_events(empty)
    other = tmp_path / "other.jsonl"
    other.write_text('{"kind": "something_else"}\n')
    with pytest.raises(TrajectoryError, match="not an rlm trajectory"):
        load_events(other)


def hostile_events() -> list[Event]:
    evil = "</script><script>alert(1)</script><!-- & \u2028"
    lines = [
        {"kind": "run_started", "run_id": "r", "query": evil, "model": "m", "sub_model": "m",
         "max_iterations": 3, "max_depth": 1, "context_type": "str", "context_chars": 1},
        {"kind": "final_answer", "run_id": "r", "answer": evil, "source": "text", "iteration": 1},
    ]  # fmt: skip
    return [event_from_json(json.dumps(line)) for line in lines]


def test_model_output_cannot_break_out_of_the_data_island() -> None:
    html = build_html(hostile_events(), source="<b>name</b>.jsonl")
    assert html.count("<script") == 2
    assert html.count("</script>") == 2
    assert "<b>name</b>" not in html
    data = json.loads(DATA.search(html)[1])  # type: ignore[index]
    assert data["runs"][0]["query"].startswith("</script><script>alert(1)")
    assert data["source"] == "<b>name</b>.jsonl"


def test_the_page_allows_only_its_own_script_and_style() -> None:
    html = build_html(hostile_events())
    policy = re.search(r'Content-Security-Policy" content="([^"]+)"', html)
    assert policy is not None
    assert "default-src 'none'" in policy[1]
    script = re.search(r"<script>(.*?)</script>", html, re.S)
    style = re.search(r"<style>(.*?)</style>", html, re.S)
    assert script is not None and style is not None
    for body in (script[1], style[1]):
        digest = base64.b64encode(hashlib.sha256(body.encode()).digest()).decode()
        assert f"'sha256-{digest}'" in policy[1]
    assert "http://" not in html and "https://" not in html
