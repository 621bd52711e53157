"""Append-only JSON Lines files written as things happen (trajectories, batch results).

Each line is flushed as it is written, so a crash or kill can cut off only the last
line. Before such a file is appended to, `drop_cut_off_line` removes that partial line,
so the lines added after it stay readable.
"""

from __future__ import annotations

import os
from pathlib import Path


def drop_cut_off_line(path: Path) -> None:
    """Cut a file that does not end in a newline back to its last whole line."""
    try:
        file = open(path, "r+b")  # noqa: SIM115 - closed below
    except FileNotFoundError:
        return
    with file:
        end = file.seek(0, os.SEEK_END)
        if end == 0:
            return
        file.seek(end - 1)
        if file.read(1) == b"\n":
            return
        # Look back block by block: a cut-off line may be long (a whole request).
        position = end
        while position > 0:
            start = max(0, position - 65_536)
            file.seek(start)
            block = file.read(position - start)
            newline = block.rfind(b"\n")
            if newline >= 0:
                file.truncate(start + newline + 1)
                return
            position = start
        file.truncate(0)
