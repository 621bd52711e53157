"""The batch results file: one JSON line per item as it finishes, read back on restart.

Each line is `{"id", "index", "status", "attempts", "error", "result"}` where `result` is
the item's `RLMResult` in the plain-JSON form of `rlm._serde` (the form trajectories
use), so reading a line back rebuilds the exact `RLMResult`. Lines are flushed as they
are written; a crash can cut off only the last one, which `ResultsFile` drops (and cuts
from the file, with `rlm._jsonl.drop_cut_off_line`) when it is opened again.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType
from typing import IO, Any

from rlm._jsonl import drop_cut_off_line
from rlm._serde import from_jsonable, to_jsonable
from rlm.batch.outcome import Outcome
from rlm.errors import ConfigurationError
from rlm.result import RLMResult


class ResultsFile:
    """An append-only JSONL file of `Outcome`s; `done` holds what earlier calls finished."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        self.done: dict[str, Outcome] = {}
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            if self.path.exists():
                self._read_back()
            self._file: IO[str] | None = open(  # noqa: SIM115 - closed by close()
                self.path, "a", encoding="utf-8", newline="\n"
            )
        except OSError as exc:
            raise ConfigurationError(
                f"cannot use {self.path} as the results file: {exc.strerror or exc}. "
                "Pass a writable path as results=."
            ) from exc

    def _read_back(self) -> None:
        # A line cut off by a crash: drop it so the next line starts clean.
        drop_cut_off_line(self.path)
        complete = self.path.read_bytes()
        for number, line in enumerate(complete.decode("utf-8").splitlines(), start=1):
            if not line.strip():
                continue
            try:
                outcome = outcome_from_json(json.loads(line))
            except (ValueError, TypeError, KeyError) as exc:
                raise ConfigurationError(
                    f"{self.path}, line {number}, is not a batch result ({exc}); pass "
                    "another results= file or remove the line"
                ) from exc
            if outcome.status == "finished":
                self.done[outcome.id] = outcome
            else:
                # A later line for the same id (a re-run) replaces an earlier one.
                self.done.pop(outcome.id, None)

    def write(self, outcome: Outcome) -> None:
        """Append one outcome and flush it (a few hundred bytes: cheap enough inline)."""
        line = json.dumps(outcome_to_json(outcome), ensure_ascii=False) + "\n"
        with self._lock:
            if self._file is None:
                raise ConfigurationError(f"the results file {self.path} is closed")
            self._file.write(line)
            self._file.flush()

    def close(self) -> None:
        with self._lock:
            if self._file is not None:
                self._file.close()
                self._file = None

    def __enter__(self) -> ResultsFile:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def outcome_to_json(outcome: Outcome) -> dict[str, Any]:
    return {
        "id": outcome.id,
        "index": outcome.index,
        "status": outcome.status,
        "attempts": outcome.attempts,
        "error": outcome.error,
        "result": to_jsonable(outcome.result) if outcome.result is not None else None,
    }


def outcome_from_json(data: Mapping[str, Any]) -> Outcome:
    status = data["status"]
    if status not in ("finished", "failed", "stopped", "not_run"):
        raise ValueError(f"unknown status {status!r}")
    raw = data.get("result")
    result = from_jsonable(RLMResult, raw) if raw is not None else None
    return Outcome(
        index=int(data["index"]),
        id=str(data["id"]),
        status=status,
        result=result,
        error=data.get("error"),
        attempts=int(data.get("attempts", 1)),
    )
