"""Trajectory files: one event per line, flushed as written, and the run tree read back."""

from __future__ import annotations

import json

import pytest

import rlm
from rlm.errors import TrajectoryError
from rlm.events import RunStarted, event_from_json
from rlm.telemetry import TrajectoryRecorder, load_trajectory
from rlm.telemetry.trajectory import read_events
from rlm.testing import ScriptedModel


def record_tree(path, tree):
    root, sub = tree
    events: list[rlm.Event] = []
    with TrajectoryRecorder(path) as recorder:
        result = rlm.run(
            "Summarise the parts",
            "some context text",
            model=root,
            sub_model=sub,
            max_depth=2,
            repl="inprocess",
            on_event=[recorder, events.append],
        )
    return result, events


def test_each_line_is_one_event_in_order(tmp_path, tree):
    path = tmp_path / "run.jsonl"
    _, events = record_tree(path, tree)
    lines = path.read_text(encoding="utf-8").splitlines()
    assert len(lines) == len(events)
    assert read_events(path) == (events, False)
    # A line stands alone unless it refers to a message written on an earlier line.
    for line, event in zip(lines, events, strict=True):
        if '"ref":' not in line:
            assert event_from_json(line) == event


def test_the_run_tree_is_rebuilt(tmp_path, tree):
    path = tmp_path / "run.jsonl"
    result, events = record_tree(path, tree)
    trajectory = load_trajectory(path)
    assert not trajectory.truncated
    assert trajectory.events == events
    root = trajectory.root
    assert root.status == "finished"
    assert root.result == result
    assert trajectory.result == result
    assert root.answer == "all done"

    assert [it.index for it in root.iterations] == [1, 2]
    first, second = root.iterations
    assert first.model_call is not None and first.model_call.model == "root-model"
    (code,) = first.code
    assert code.stdout.startswith("17\n")  # len(context)
    assert code.error is None and code.finished
    assert second.final_answer == "all done" and second.code == []

    batch = [s for s in code.subcalls if not s.recursive]
    assert [s.batch_index for s in batch] == [0, 1, 2]
    assert [s.response for s in batch] == ["sub[part a]", "sub[part b]", "sub[part c]"]
    assert all(len(s.model_calls) == 1 for s in batch)
    (recursive,) = [s for s in code.subcalls if s.recursive]
    child = recursive.child
    assert child is not None
    assert child.parent_run_id == root.run_id and child.depth == 1
    assert root.children == [child]
    assert trajectory.run(child.run_id) is child
    assert child.answer == recursive.response
    (child_code,) = child.code_executions
    (inner,) = child_code.subcalls
    assert inner.prompt.startswith("inner child")

    # Usage rebuilt from the model calls matches what the run reported.
    assert root.usage.input_tokens == result.total_input_tokens
    assert root.usage.output_tokens == result.total_output_tokens
    assert root.usage.requests == 2 + 3 + 2  # root turns, the batch, the child's two calls
    assert [r.run_id for r in trajectory.all_runs()] == [root.run_id, child.run_id]


def test_a_cut_off_last_line_is_tolerated(tmp_path, tree):
    path = tmp_path / "run.jsonl"
    record_tree(path, tree)
    data = path.read_bytes()
    cut = data[: len(data) - 40]  # the writer died in the middle of the last line
    path.write_bytes(cut)
    trajectory = load_trajectory(path)
    assert trajectory.truncated
    assert trajectory.root.status == "incomplete"  # its RunFinished line was the cut one
    assert len(trajectory.root.iterations) == 2


def test_lines_are_on_disk_before_the_recorder_is_closed(tmp_path):
    path = tmp_path / "live.jsonl"
    recorder = TrajectoryRecorder(path)
    event = RunStarted(
        run_id="r1",
        query="q",
        model="m",
        sub_model="m",
        max_iterations=3,
        max_depth=1,
        context_type="str",
        context_chars=1,
    )
    recorder(event)
    # Read by another handle while the recorder is still open (as after a kill).
    assert event_from_json(path.read_text(encoding="utf-8")) == event
    assert load_trajectory(path).root.status == "incomplete"
    recorder.close()
    recorder.close()  # twice is fine
    with pytest.raises(TrajectoryError, match="closed"):
        recorder(event)


def test_a_failed_run_is_recorded(tmp_path):
    path = tmp_path / "failed.jsonl"
    model = ScriptedModel([rlm.errors.ProviderUnavailableError("down")])
    with TrajectoryRecorder(path) as recorder, pytest.raises(rlm.errors.ProviderUnavailableError):
        rlm.run("q", "c", model=model, repl="inprocess", on_event=recorder)
    root = load_trajectory(path).root
    assert root.status == "failed"
    assert root.error_type == "ProviderUnavailableError"
    (call,) = root.model_calls
    assert call.error_type == "ProviderUnavailableError"


def test_one_recorder_keeps_several_runs_apart(tmp_path):
    path = tmp_path / "many.jsonl"
    with TrajectoryRecorder(path) as recorder:
        engine = rlm.RLM(
            ScriptedModel(["FINAL(a)", "FINAL(b)"]), repl="inprocess", on_event=recorder
        )
        first = engine.run("q1", "c")
        second = engine.run("q2", "c")
    trajectory = load_trajectory(path)
    assert [r.run_id for r in trajectory.runs] == [first.run_id, second.run_id]
    assert [r.answer for r in trajectory.runs] == ["a", "b"]


def test_append_mode_adds_to_a_file(tmp_path):
    path = tmp_path / "a.jsonl"
    for answer in ("x", "y"):
        with TrajectoryRecorder(path, append=True) as recorder:
            rlm.run(
                "q",
                "c",
                model=ScriptedModel([f"FINAL({answer})"]),
                repl="inprocess",
                on_event=recorder,
            )
    assert [r.answer for r in load_trajectory(path).runs] == ["x", "y"]


def test_missing_empty_and_garbled_files_raise_clear_errors(tmp_path, tree):
    with pytest.raises(TrajectoryError, match="no trajectory file"):
        load_trajectory(tmp_path / "nope.jsonl")

    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    with pytest.raises(TrajectoryError, match="holds no events"):
        load_trajectory(empty)

    good = tmp_path / "good.jsonl"
    record_tree(good, tree)
    lines = good.read_text(encoding="utf-8").splitlines(keepends=True)
    garbled = tmp_path / "garbled.jsonl"
    garbled.write_text("".join([lines[0], "{not json\n", *lines[1:]]), encoding="utf-8")
    with pytest.raises(TrajectoryError, match="line 2 of"):
        load_trajectory(garbled)

    foreign = tmp_path / "foreign.jsonl"
    foreign.write_text(json.dumps({"kind": "something_else"}) + "\n")
    with pytest.raises(TrajectoryError, match="not an rlm event"):
        load_trajectory(foreign)

    with pytest.raises(TrajectoryError, match="directory"):
        load_trajectory(tmp_path)


def test_an_unwritable_path_fails_at_once(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(TrajectoryError, match="cannot write a trajectory"):
        TrajectoryRecorder(blocker / "run.jsonl")
