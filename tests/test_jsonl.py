"""A JSON Lines file a crash cut off mid-line is cut back to its last whole line before
more lines are appended (trajectories and batch results share this)."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rlm._jsonl import drop_cut_off_line

LINE = st.binary(max_size=40).map(lambda b: b.replace(b"\n", b"x"))


@settings(max_examples=60, deadline=None)
@given(
    whole=st.lists(LINE, max_size=5),
    tail=LINE,
    # a cut-off line longer than one block read backwards (64 KiB) must go too
    long_tail=st.sampled_from([0, 70_000, 140_000]),
)
def test_only_the_cut_off_last_line_is_dropped(
    tmp_path_factory: pytest.TempPathFactory, whole: list[bytes], tail: bytes, long_tail: int
) -> None:
    path = tmp_path_factory.mktemp("jsonl") / "f.jsonl"
    kept = b"".join(line + b"\n" for line in whole)
    path.write_bytes(kept + tail + b"y" * long_tail)
    drop_cut_off_line(path)
    assert path.read_bytes() == kept


def test_a_missing_file_is_left_missing(tmp_path: Path) -> None:
    drop_cut_off_line(tmp_path / "absent.jsonl")
    assert not (tmp_path / "absent.jsonl").exists()
