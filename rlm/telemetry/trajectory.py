"""Trajectory files: every event of a run as JSON Lines, and the run tree rebuilt from one.

```python
from rlm.telemetry import TrajectoryRecorder, load_trajectory

with TrajectoryRecorder("run.jsonl") as recorder:
    rlm.run(query, context, model=..., on_event=recorder)

trajectory = load_trajectory("run.jsonl")
root = trajectory.root
for iteration in root.iterations:
    for code in iteration.code:
        print(code.code, code.stdout)
        for sub in code.subcalls:           # llm_query / rlm_query made by this block
            print(sub.prompt, sub.response, sub.child)   # child: a RunRecord or None
print(root.result.answer, trajectory.usage)
```

The format is one `rlm.events.event_to_json(event)` per line, in the order the events
happened (`rlm.events.event_from_json` reads a line back), with one saving: the whole
request a `model_call_started` event carries is stored message by message, and a message
already written earlier in the file (a root run's history repeats in every request) is
written as `{"ref": "<sha>"}` pointing at its first copy, which carries `"sha"`.
`read_events` expands them again. Each line is flushed as it is
written, so a crash or kill loses at most the line being written; `load_trajectory`
tolerates such a cut-off last line (and `TrajectoryRecorder(append=True)` removes it,
with `rlm._jsonl.drop_cut_off_line`, before adding lines).

The run tree itself (`RunRecord` and the other records, `build_runs`) is in
`rlm.telemetry.records`; its names are importable from here too.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import IO

from rlm._jsonl import drop_cut_off_line
from rlm.errors import TrajectoryError
from rlm.events import (
    Event,
    ModelCallStarted,
    event_from_dict,
    event_to_dict,
    event_to_json,
)
from rlm.providers.base import Usage
from rlm.result import RLMResult
from rlm.telemetry.records import (
    CodeRecord,
    IterationRecord,
    ModelCallRecord,
    RunRecord,
    SubcallRecord,
    ToolCallRecord,
    build_runs,
)

__all__ = [
    "CodeRecord",
    "IterationRecord",
    "LineDecoder",
    "ModelCallRecord",
    "RunRecord",
    "SubcallRecord",
    "ToolCallRecord",
    "Trajectory",
    "TrajectoryRecorder",
    "build_runs",
    "load_trajectory",
    "read_events",
]

# -- writing --------------------------------------------------------------------------------


class TrajectoryRecorder:
    """An event subscriber that appends each event to a JSON Lines file.

    Args:
        path: the file to write. It is created (with missing parent directories) at once,
            so a bad path fails here rather than in the middle of a run.
        append: add to an existing file instead of replacing it. A last line the file
            ends in the middle of (the writer was killed while writing it) is removed
            first, so the lines added after it stay readable.
        fsync: also ask the OS to put each line on disk (slower; survives a power cut,
            not just a crash).

    One recorder can serve several runs (even concurrent ones; lines never interleave):
    the loader separates them by run id. Close it with `close()` or use it as a context
    manager; lines are flushed as they are written either way.
    """

    def __init__(
        self, path: str | os.PathLike[str], *, append: bool = False, fsync: bool = False
    ) -> None:
        self.path = Path(path)
        self.fsync = fsync
        self._lock = threading.Lock()
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            if append:
                drop_cut_off_line(self.path)
            self._file: IO[str] | None = open(  # noqa: SIM115 - closed by close()
                self.path, "a" if append else "w", encoding="utf-8", newline="\n"
            )
        except OSError as exc:
            raise TrajectoryError(
                f"cannot write a trajectory to {self.path}: {exc.strerror or exc}. "
                "Pick a writable path."
            ) from exc
        self.events_written = 0
        self._written_messages: set[str] = set()

    def _encode(self, event: Event) -> str:
        if not (isinstance(event, ModelCallStarted) and event.request is not None):
            return event_to_json(event)
        data = event_to_dict(event)
        request = data["request"]
        request["messages"] = [self._message_entry(m) for m in request["messages"]]
        return json.dumps(data, ensure_ascii=False, separators=(",", ":"))

    def _message_entry(self, message: dict[str, object]) -> dict[str, object]:
        body = {k: v for k, v in message.items() if k != "cache_breakpoint"}
        sha = hashlib.blake2b(
            json.dumps(body, sort_keys=True, ensure_ascii=False).encode("utf-8"), digest_size=10
        ).hexdigest()
        if sha in self._written_messages:
            ref: dict[str, object] = {"ref": sha}
            if message.get("cache_breakpoint"):
                ref["cache_breakpoint"] = True
            return ref
        self._written_messages.add(sha)
        return {**message, "sha": sha}

    def __call__(self, event: Event) -> None:
        with self._lock:
            line = self._encode(event) + "\n"
            if self._file is None:
                raise TrajectoryError(
                    f"TrajectoryRecorder({str(self.path)!r}) is closed; make a new one "
                    "(with append=True to add to the same file)"
                )
            self._file.write(line)
            self._file.flush()
            if self.fsync:
                os.fsync(self._file.fileno())
            self.events_written += 1

    @property
    def closed(self) -> bool:
        return self._file is None

    def close(self) -> None:
        """Close the file. Safe to call twice."""
        with self._lock:
            if self._file is not None:
                self._file.close()
                self._file = None

    def __enter__(self) -> TrajectoryRecorder:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"TrajectoryRecorder({str(self.path)!r}, events_written={self.events_written})"


# -- reading ---------------------------------------------------------------------------------


@dataclass(slots=True)
class Trajectory:
    """A trajectory file, read back: its events and the run trees they describe.

    `runs` are the root runs in the order they started (one, unless a recorder was shared
    by several calls or a `Session` wrote its turns); `root` is the first, and
    `sessions` groups the turns of each session. `truncated` is True when the last line was
    cut off (the writer was killed mid-line) and left out.
    """

    path: Path
    events: list[Event]
    runs: list[RunRecord]
    by_id: dict[str, RunRecord]
    truncated: bool = False

    @property
    def root(self) -> RunRecord:
        if not self.runs:
            raise TrajectoryError(
                f"{self.path} holds no run start (no run_started event); was the recorder "
                "attached from the beginning of the run?"
            )
        return self.runs[0]

    @property
    def result(self) -> RLMResult | None:
        """The first root run's result, or None if it did not finish."""
        return self.root.result

    @property
    def usage(self) -> Usage:
        total = Usage()
        for run in self.runs:
            total = total + run.usage
        return total

    @property
    def sessions(self) -> dict[str, list[RunRecord]]:
        """The root runs of each `Session` (its turns, in order), by session id."""
        grouped: dict[str, list[RunRecord]] = {}
        for run in self.runs:
            if run.session_id is not None:
                grouped.setdefault(run.session_id, []).append(run)
        return grouped

    def run(self, run_id: str) -> RunRecord:
        """The run (root or child) with this id."""
        try:
            return self.by_id[run_id]
        except KeyError:
            raise TrajectoryError(f"{self.path} has no run {run_id!r}") from None

    def all_runs(self) -> Iterator[RunRecord]:
        """Every run, each root followed by its descendants."""
        for run in self.runs:
            yield from run.walk()


def read_events(path: str | os.PathLike[str]) -> tuple[list[Event], bool]:
    """The events of a trajectory file and whether its last line was cut off.

    Raises `TrajectoryError` when the file is missing, unreadable, empty, or has a line
    (other than a cut-off last one) that is not an event.
    """
    file = Path(path)
    try:
        data = file.read_bytes()
    except FileNotFoundError:
        raise TrajectoryError(
            f"no trajectory file at {file}: check the path (TrajectoryRecorder(path) writes one)"
        ) from None
    except IsADirectoryError:
        raise TrajectoryError(f"{file} is a directory, not a trajectory file") from None
    except OSError as exc:
        raise TrajectoryError(f"cannot read {file}: {exc.strerror or exc}") from exc
    lines = data.split(b"\n")
    ends_cleanly = lines[-1] == b""
    if ends_cleanly:
        lines.pop()
    events: list[Event] = []
    truncated = False
    decode = LineDecoder()
    for number, raw in enumerate(lines, start=1):
        if not raw.strip():
            continue
        try:
            events.append(decode(raw))
        except (ValueError, TypeError, KeyError, AttributeError) as exc:
            if number == len(lines) and not ends_cleanly and events:
                truncated = True  # the writer stopped mid-line
                break
            shown = raw[:120].decode("utf-8", "replace")
            raise TrajectoryError(
                f"line {number} of {file} is not an rlm event ({exc}); the line begins "
                f"{shown!r}. Is this a file written by rlm.telemetry.TrajectoryRecorder?"
            ) from None
    if not events:
        raise TrajectoryError(
            f"{file} holds no events"
            + (" (only a cut-off line)" if lines else " (it is empty)")
            + "; the run may have been stopped before its first event was written"
        )
    return events, truncated


class LineDecoder:
    """Reads the lines of one trajectory file, in order, back into events (a line may
    refer to messages written on earlier lines, so one decoder reads one file)."""

    def __init__(self) -> None:
        self._messages: dict[str, dict[str, object]] = {}

    def __call__(self, line: str | bytes) -> Event:
        """The event on `line`; raises ValueError (or TypeError/KeyError) for a bad line."""
        payload = json.loads(line)
        if not isinstance(payload, dict):
            raise ValueError(f"a JSON {type(payload).__name__}, not an object")
        request = payload.get("request")
        if payload.get("kind") == "model_call_started" and isinstance(request, dict):
            stored = request.get("messages", ())
            request["messages"] = [_expand(m, self._messages) for m in stored]
        return event_from_dict(payload)


def _expand(entry: object, seen: dict[str, dict[str, object]]) -> object:
    """A stored message back in full: a `{"ref": sha}` becomes the message it points at."""
    if not isinstance(entry, dict):
        return entry
    if "ref" in entry:
        try:
            message = dict(seen[str(entry["ref"])])
        except KeyError:
            raise ValueError(f"message reference {entry['ref']!r} before its message") from None
        message["cache_breakpoint"] = bool(entry.get("cache_breakpoint", False))
        return message
    sha = entry.get("sha")
    if isinstance(sha, str):
        seen[sha] = entry
    return entry


def load_trajectory(path: str | os.PathLike[str]) -> Trajectory:
    """Read a trajectory file and rebuild its runs.

    Raises `TrajectoryError` (with what to do next) when the file is missing or garbled.
    A cut-off last line is left out and `Trajectory.truncated` set; runs the file ends
    in the middle of have `status == "incomplete"`.
    """
    events, truncated = read_events(path)
    roots, by_id = build_runs(events)
    return Trajectory(path=Path(path), events=events, runs=roots, by_id=by_id, truncated=truncated)
