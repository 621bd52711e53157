"""The trajectory viewer: one self-contained HTML page from a trajectory JSONL file.

A trajectory is one `rlm.events.event_to_json(event)` per line (what
`rlm.telemetry.TrajectoryRecorder` writes). `write_html("run.jsonl")` writes `run.html`:
the run as a collapsible tree (runs, iterations, model replies, code with syntax
highlighting, outputs, sub-calls under the code that made them, child runs under their
sub-call), with tokens, cost and time at every step and the final answer.

The page needs no network and no build step: the data is embedded as JSON and rendered
by a small script, lazily (a node's children are built when it is first opened, long
lists a page at a time), so a 50 MB trajectory opens without freezing the browser. All
text from the trajectory is inserted as text, never as HTML, and a Content Security
Policy allows only the page's own script and style.

```console
$ rlm view run.jsonl -o run.html
```
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
from collections.abc import Iterable
from importlib import resources
from pathlib import Path
from typing import Any

from rlm.errors import TrajectoryError
from rlm.events import Event
from rlm.telemetry.trajectory import LineDecoder
from rlm.viewer.tree import build_tree

__all__ = [
    "build_html",
    "load_events",
    "write_html",
]

FORMAT_VERSION = 1


def load_events(path: str | os.PathLike[str]) -> tuple[list[Event], int]:
    """The events of a trajectory file, and how many lines could not be read.

    Blank lines are ignored; unreadable lines (a run cut off mid-write, a foreign line)
    are skipped and counted. Raises `TrajectoryError` when the file is missing, empty or
    holds no rlm event at all.
    """
    file = Path(path)
    try:
        handle = file.open(encoding="utf-8", errors="replace")
    except FileNotFoundError:
        raise TrajectoryError(
            f"{file}: no such file. Record one with `rlm run ... --trajectory {file}`."
        ) from None
    except OSError as exc:
        raise TrajectoryError(f"{file}: cannot be read ({exc.strerror or exc}).") from None
    events: list[Event] = []
    skipped = 0
    first_problem: str | None = None
    decode = LineDecoder()
    with handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                events.append(decode(line))
            except (ValueError, TypeError, KeyError) as exc:
                skipped += 1
                if first_problem is None:
                    first_problem = f"line {number}: {str(exc)[:200]}"
    if not events:
        if skipped:
            raise TrajectoryError(
                f"{file} is not an rlm trajectory ({first_problem}). A trajectory has one "
                "rlm event as JSON per line, as `rlm run --trajectory` writes."
            )
        raise TrajectoryError(f"{file} is empty: the run recorded no events.")
    return events, skipped


def _asset(name: str) -> str:
    return resources.files("rlm.viewer").joinpath("assets", name).read_text(encoding="utf-8")


def _csp_hash(text: str) -> str:
    digest = hashlib.sha256(text.encode("utf-8")).digest()
    return "'sha256-" + base64.b64encode(digest).decode("ascii") + "'"


def _embed_json(data: Any) -> str:
    """JSON that is safe inside a <script> element: no "<", ">" or "&" characters."""
    text = json.dumps(data, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def build_html(events: Iterable[Event], *, source: str = "", skipped_lines: int = 0) -> str:
    """The viewer page for `events`, as one HTML string."""
    event_list = list(events)
    data = {
        "version": FORMAT_VERSION,
        "source": source,
        "events": len(event_list),
        "skipped_lines": skipped_lines,
        "runs": build_tree(event_list),
    }
    css = _asset("viewer.css")
    js = _asset("viewer.js")
    policy = (
        f"default-src 'none'; script-src {_csp_hash(js)}; style-src {_csp_hash(css)}; "
        "img-src data:; base-uri 'none'; form-action 'none'"
    )
    return (
        "<!DOCTYPE html>\n"
        '<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        f'<meta http-equiv="Content-Security-Policy" content="{policy}">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        '<meta name="generator" content="rlm view">\n'
        "<title>rlm trajectory</title>\n"
        f"<style>{css}</style>\n</head>\n<body>\n"
        '<div id="app"><noscript>This page needs JavaScript to show the trajectory.'
        "</noscript></div>\n"
        f'<script type="application/json" id="rlm-data">{_embed_json(data)}</script>\n'
        f"<script>{js}</script>\n</body>\n</html>\n"
    )


def write_html(
    trajectory: str | os.PathLike[str], output: str | os.PathLike[str] | None = None
) -> Path:
    """Write the viewer page for a trajectory file; returns the page's path.

    `output` defaults to the trajectory's path with an `.html` suffix.
    """
    source = Path(trajectory)
    events, skipped = load_events(source)
    target = Path(output) if output is not None else source.with_suffix(".html")
    page = build_html(events, source=source.name, skipped_lines=skipped)
    target.write_text(page, encoding="utf-8", errors="replace")
    return target
