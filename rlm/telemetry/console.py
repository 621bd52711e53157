"""A live terminal view of runs (`verbose=True`, `rlm run`), drawn with `rich`.

What it shows: a header per run, each iteration, the code the model wrote (syntax
highlighted), what the code printed, sub-calls (a progress bar per batch while they run,
one line each when done), retries, the final answer, and a summary table (iterations,
sub-calls, tokens, cost, time) when the root run ends. On a terminal a live status area
at the bottom shows what each run is doing right now; elsewhere (a file, a CI log) only
the permanent lines are written.

```python
from rich.console import Console
from rlm.telemetry import ConsoleView

rlm.run(query, context, model=..., on_event=ConsoleView(Console(stderr=True)))
```
"""

from __future__ import annotations

import contextvars
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.padding import Padding
from rich.panel import Panel
from rich.progress_bar import ProgressBar
from rich.rule import Rule
from rich.spinner import Spinner
from rich.syntax import Syntax
from rich.table import Table
from rich.text import Text

from rlm.events import (
    CodeExecuted,
    CodeStarted,
    Event,
    FinalAnswer,
    HistoryCompacted,
    IterationStarted,
    ModelCallFinished,
    ModelCallStarted,
    ModelRetry,
    ReplViolation,
    RunFailed,
    RunFinished,
    RunStarted,
    SubcallFinished,
    SubcallStarted,
    ToolCallFinished,
    ToolCallStarted,
)
from rlm.result import RLMResult

_BatchKey = tuple[str, str | None, int, bool]


@dataclass(slots=True)
class _RunView:
    run_id: str
    depth: int
    model: str
    started: float
    iteration: int = 0
    status: str = "starting"
    code_this_iteration: bool = False
    pending_reply: str | None = None


@dataclass(slots=True)
class _Batch:
    key: _BatchKey
    model: str
    started: float
    indices: set[int] = field(default_factory=set)
    done: int = 0
    failed: int = 0


def _money(cost: float | None) -> str:
    if cost is None:
        return "n/a (no price)"
    return f"${cost:.4f}" if cost < 1 else f"${cost:,.2f}"


def _clip_lines(text: str, max_lines: int) -> str:
    lines = text.rstrip("\n").splitlines()
    if len(lines) <= max_lines:
        return "\n".join(lines)
    head = lines[: max_lines - 1]
    return "\n".join([*head, f"… {len(lines) - len(head)} more lines"])


class ConsoleView:
    """An event subscriber that draws runs in the terminal.

    Args:
        console: where to draw; default a `rich` console on stderr (stdout stays the
            application's).
        show_code: show each code block (syntax highlighted).
        max_output_lines: lines of each block's output to show.
        show_children: also draw the iterations of child runs (`rlm_query`); when False
            they appear only in the status area and as one line when they end.
        live: use the live status area; default: when the console is a terminal.
    """

    def __init__(
        self,
        console: Console | None = None,
        *,
        show_code: bool = True,
        max_output_lines: int = 20,
        show_children: bool = True,
        live: bool | None = None,
    ) -> None:
        self.console = console if console is not None else Console(stderr=True)
        self.show_code = show_code
        self.max_output_lines = max(2, max_output_lines)
        self.show_children = show_children
        self.live = (
            live
            if live is not None
            else self.console.is_terminal and not self.console.is_dumb_terminal
        )
        # Lock order: _io_lock, then _lock. rich's refresh thread takes the Live's lock
        # and then _lock (to draw the status area), so nothing holding _lock may print.
        self._io_lock = threading.Lock()
        self._lock = threading.RLock()
        self._actions: list[Callable[[], None]] = []
        self._runs: dict[str, _RunView] = {}
        self._batches: dict[_BatchKey, _Batch] = {}
        self._subcall_batch: dict[str, _BatchKey] = {}
        self._single: dict[str, tuple[str, str, bool, float]] = {}
        self._live: Live | None = None

    def __repr__(self) -> str:
        return f"ConsoleView(live={self.live})"

    # -- the live status area ---------------------------------------------------------

    def __rich__(self) -> RenderableType:
        with self._lock:
            rows: list[RenderableType] = []
            for run in self._runs.values():
                label = "run" if run.depth == 0 else f"child run (depth {run.depth})"
                text = Text.assemble(
                    (f"{label} {run.run_id[:8]}", "bold"),
                    f" · {run.model} · iteration {run.iteration} · ",
                    (run.status, "cyan"),
                )
                rows.append(Padding(Spinner("dots", text), (0, 0, 0, 2 * run.depth)))
                singles = sum(1 for s in self._single.values() if s[0] == run.run_id)
                if singles:
                    rows.append(
                        Padding(
                            Text(f"{singles} sub-call(s) running", "dim"),
                            (0, 0, 0, 2 + 2 * run.depth),
                        )
                    )
                for batch in self._batches.values():
                    if batch.key[0] != run.run_id:
                        continue
                    total = batch.key[2]
                    grid = Table.grid(padding=(0, 1))
                    grid.add_row(
                        Text(f"{'rlm' if batch.key[3] else 'llm'}_query_batched → {batch.model}"),
                        ProgressBar(total=total, completed=batch.done, width=30),
                        Text(f"{batch.done}/{total}"),
                        Text(f"{batch.failed} failed", "red") if batch.failed else Text(""),
                    )
                    rows.append(Padding(grid, (0, 0, 0, 2 + 2 * run.depth)))
            return Group(*rows)

    def _start_live(self) -> None:
        if self.live and self._live is None:
            self._actions.append(self._do_start_live)

    def _do_start_live(self) -> None:
        if self._live is not None:
            return
        live = Live(
            self,
            console=self.console,
            refresh_per_second=8,
            transient=True,
            redirect_stdout=False,  # never swap the process's sys.stdout/sys.stderr
            redirect_stderr=False,
        )
        try:
            live.start()
        except Exception:  # another live display owns this console: print lines only
            return
        self._live = live

    def _stop_live(self) -> None:
        self._actions.append(self._do_stop_live)

    def _do_stop_live(self) -> None:
        if self._live is not None:
            live, self._live = self._live, None
            live.stop()

    # -- printing ----------------------------------------------------------------------

    def _visible(self, depth: int) -> bool:
        return depth == 0 or self.show_children

    def _print(self, depth: int, renderable: RenderableType) -> None:
        shown = Padding(renderable, (0, 0, 0, 2 * depth), expand=False) if depth else renderable
        self._actions.append(lambda: self.console.print(shown))

    def _flush_reply(self, run: _RunView) -> None:
        """Show a reply that ran no code (the model may have forgotten the format)."""
        reply, run.pending_reply = run.pending_reply, None
        if reply and not run.code_this_iteration and self._visible(run.depth):
            self._print(
                run.depth,
                Panel(
                    Text(_clip_lines(reply, self.max_output_lines)),
                    title="model reply (no code)",
                    title_align="left",
                    border_style="dim",
                ),
            )

    # -- events ------------------------------------------------------------------------

    def __call__(self, event: Event) -> None:
        with self._io_lock:
            with self._lock:
                try:
                    self._handle(event)
                finally:
                    actions, self._actions = self._actions, []
            # Draw from an empty context: events of sub-calls are emitted in tasks that
            # inherit the REPL's output capture, and the view must reach the terminal,
            # not the model's stdout.
            quiet = contextvars.Context()
            for action in actions:
                quiet.run(action)

    def _handle(self, event: Event) -> None:
        run = self._runs.get(event.run_id)
        if isinstance(event, RunStarted):
            self._run_started(event)
        elif run is None:
            return
        elif isinstance(event, IterationStarted):
            self._flush_reply(run)
            run.iteration = event.iteration
            run.code_this_iteration = False
            run.status = "starting"
            if self._visible(run.depth):
                self._print(
                    run.depth,
                    Rule(Text(f"iteration {event.iteration}", "bold"), align="left", style="dim"),
                )
        elif isinstance(event, ModelCallStarted):
            if event.purpose != "subcall":
                run.status = f"waiting for {event.model}"
        elif isinstance(event, ModelCallFinished):
            self._model_call_finished(run, event)
        elif isinstance(event, ModelRetry):
            self._print(
                run.depth,
                Text(
                    f"retrying {event.model} (attempt {event.attempt}) in {event.wait_s:.1f} s: "
                    f"{event.error_type}: {event.error[:200]}",
                    "yellow",
                ),
            )
        elif isinstance(event, ReplViolation):
            self._print(
                run.depth,
                Text(f"REPL worker killed ({event.limit}): {event.message[:300]}", "red"),
            )
        elif isinstance(event, CodeStarted):
            run.code_this_iteration = True
            run.pending_reply = None
            run.status = f"running code block {event.index}"
            if self.show_code and self._visible(run.depth):
                self._print(
                    run.depth,
                    Panel(
                        Syntax(event.code, "python", theme="ansi_dark", word_wrap=True),
                        title=f"code {event.iteration}.{event.index}",
                        title_align="left",
                        border_style="blue",
                    ),
                )
        elif isinstance(event, CodeExecuted):
            self._code_executed(run, event)
        elif isinstance(event, SubcallStarted):
            self._subcall_started(run, event)
        elif isinstance(event, SubcallFinished):
            self._subcall_finished(run, event)
        elif isinstance(event, ToolCallStarted):
            run.status = f"waiting for tool {event.name}"
        elif isinstance(event, ToolCallFinished):
            self._tool_call_finished(run, event)
        elif isinstance(event, HistoryCompacted):
            self._print(
                run.depth,
                Text(
                    f"history compacted: about {event.tokens_before:,} -> "
                    f"{event.tokens_after:,} tokens (window {event.window_tokens:,})",
                    "cyan",
                ),
            )
        elif isinstance(event, FinalAnswer):
            run.pending_reply = None
            if run.depth == 0:
                self._print(
                    0,
                    Panel(
                        Text(event.answer),
                        title=f"final answer ({event.how})",
                        title_align="left",
                        border_style="green",
                    ),
                )
        elif isinstance(event, RunFinished):
            self._flush_reply(run)
            self._run_ended(run, event.result, None)
        elif isinstance(event, RunFailed):
            self._run_ended(run, None, event)

    def _run_started(self, event: RunStarted) -> None:
        run = _RunView(event.run_id, event.depth, event.model, time.perf_counter())
        self._runs[event.run_id] = run
        if event.depth == 0:
            header = Text.assemble(
                ("rlm ", "bold magenta"),
                (event.run_id[:8], "bold"),
                f" · {event.model}",
                f" (sub-calls: {event.sub_model})" if event.sub_model != event.model else "",
                f" · context {event.context_type}, {event.context_chars:,} chars",
            )
            self._print(0, Rule(header, align="left", style="magenta"))
            self._print(0, Text(_clip_lines(event.query, 5), "italic"))
            self._start_live()
        elif self.show_children:
            self._print(
                event.depth,
                Text(
                    f"↳ child run {event.run_id[:8]} (depth {event.depth}) · {event.model}",
                    "bold magenta",
                ),
            )

    def _model_call_finished(self, run: _RunView, event: ModelCallFinished) -> None:
        if event.purpose in ("subcall", "compaction"):
            return
        run.status = "thinking"
        if event.error_type is not None:
            self._print(
                run.depth, Text(f"{event.model} failed: {event.error_type}: {event.error}", "red")
            )
            return
        if not self._visible(run.depth):
            return
        u = event.usage
        self._print(
            run.depth,
            Text(
                f"{event.response_model or event.model} · {u.input_tokens:,} in / "
                f"{u.output_tokens:,} out tokens · {event.latency_s:.2f} s"
                + (f" · {_money(event.cost_usd)}" if event.cost_usd is not None else ""),
                "dim",
            ),
        )
        run.pending_reply = event.text

    def _code_executed(self, run: _RunView, event: CodeExecuted) -> None:
        run.status = "thinking"
        for key in [k for k in self._batches if k[0] == event.run_id and k[1] == event.exec_id]:
            self._end_batch(run, self._batches.pop(key))
        if not self._visible(run.depth):
            return
        parts: list[RenderableType] = []
        if event.stdout:
            parts.append(Text(_clip_lines(event.stdout, self.max_output_lines)))
        if event.stderr:
            parts.append(Text(_clip_lines(event.stderr, self.max_output_lines), "yellow"))
        if event.error:
            parts.append(Text(_clip_lines(event.error, self.max_output_lines), "red"))
        if not parts:
            parts.append(Text("(no output)", "dim"))
        note = " · REPL restarted, variables lost" if event.restarted else ""
        self._print(
            run.depth,
            Panel(
                Group(*parts),
                title=f"output {event.iteration}.{event.index} · {event.duration_s:.2f} s{note}",
                title_align="left",
                border_style="red" if event.error else "green",
            ),
        )

    def _subcall_started(self, run: _RunView, event: SubcallStarted) -> None:
        if event.batch_index is None or event.batch_size is None:
            self._single[event.subcall_id] = (
                event.run_id,
                event.model,
                event.recursive,
                time.perf_counter(),
            )
            run.status = "waiting for a sub-call"
            return
        key: _BatchKey = (event.run_id, event.exec_id, event.batch_size, event.recursive)
        batch = self._batches.get(key)
        if batch is not None and event.batch_index in batch.indices:
            self._end_batch(run, self._batches.pop(key))  # a new batch of the same shape
            batch = None
        if batch is None:
            batch = _Batch(key, event.model, time.perf_counter())
            self._batches[key] = batch
        batch.indices.add(event.batch_index)
        self._subcall_batch[event.subcall_id] = key
        run.status = f"waiting for {event.batch_size} sub-calls"

    def _subcall_finished(self, run: _RunView, event: SubcallFinished) -> None:
        key = self._subcall_batch.pop(event.subcall_id, None)
        if key is not None:
            batch = self._batches.get(key)
            if batch is None:
                return
            batch.done += 1
            batch.failed += 0 if event.ok else 1
            if batch.done >= key[2]:
                self._end_batch(run, self._batches.pop(key))
            return
        single = self._single.pop(event.subcall_id, None)
        if single is None or not self._visible(run.depth):
            return
        _, model, recursive, _ = single
        name = "rlm_query" if recursive else "llm_query"
        if event.ok:
            line = Text(
                f"↳ {name} → {model} · ok · {event.duration_s:.2f} s · "
                f"{event.response_chars:,} chars",
                "dim",
            )
        else:
            line = Text(f"↳ {name} → {model} · failed: {event.error}", "red")
        self._print(run.depth + 1, line)

    def _tool_call_finished(self, run: _RunView, event: ToolCallFinished) -> None:
        if not self._visible(run.depth):
            return
        if event.ok:
            line = Text(
                f"↳ tool {event.name} · ok · {event.duration_s:.2f} s · "
                f"{event.result_chars:,} chars",
                "dim",
            )
        else:
            line = Text(f"↳ tool {event.name} · failed: {(event.error or '')[:300]}", "red")
        self._print(run.depth + 1, line)

    def _end_batch(self, run: _RunView, batch: _Batch) -> None:
        for subcall_id in [s for s, k in self._subcall_batch.items() if k == batch.key]:
            del self._subcall_batch[subcall_id]
        if not self._visible(run.depth):
            return
        total = batch.key[2]
        name = "rlm_query_batched" if batch.key[3] else "llm_query_batched"
        ok = batch.done - batch.failed
        text = Text(
            f"↳ {name} × {total} → {batch.model} · {ok} ok"
            + (f", {batch.failed} failed" if batch.failed else "")
            + (f", {total - batch.done} unfinished" if batch.done < total else "")
            + f" · {time.perf_counter() - batch.started:.2f} s",
            "red" if batch.failed or batch.done < total else "dim",
        )
        self._print(run.depth + 1, text)

    def _run_ended(self, run: _RunView, result: RLMResult | None, failed: RunFailed | None) -> None:
        del self._runs[run.run_id]
        for key in [k for k in self._batches if k[0] == run.run_id]:
            self._batches.pop(key)
        for subcall_id in [s for s, v in self._single.items() if v[0] == run.run_id]:
            del self._single[subcall_id]
        if run.depth > 0:
            if failed is not None:
                text = Text(f"child run {run.run_id[:8]} failed: {failed.error_type}", "red")
            else:
                assert result is not None
                text = Text(
                    f"child run {run.run_id[:8]} done · {result.stop_reason} · "
                    f"{result.iterations} iterations · {result.duration_s:.2f} s",
                    "magenta",
                )
            self._print(run.depth, text)
            return
        if not any(r.depth == 0 for r in self._runs.values()):
            self._stop_live()
        if failed is not None:
            self._print(
                0,
                Panel(
                    Text(f"{failed.error_type}: {failed.error}"),
                    title="run failed",
                    title_align="left",
                    border_style="red",
                ),
            )
            return
        assert result is not None
        self._print(0, summary_table(result))


def summary_table(result: RLMResult) -> Table:
    """The end-of-run table: iterations, sub-calls, tokens, cost and time, by model."""
    table = Table(title=f"rlm run {result.run_id[:8]}", title_justify="left", show_header=True)
    table.add_column("")
    table.add_column("value", justify="right")
    stop = result.stop_reason + (f" ({result.limit})" if result.limit else "")
    rows = [
        ("stop reason", stop),
        ("iterations", str(result.iterations)),
        ("code executions", str(result.code_executions)),
        ("sub-calls", str(result.sub_calls)),
        ("input tokens", f"{result.total_input_tokens:,}"),
        ("output tokens", f"{result.total_output_tokens:,}"),
        ("cost", _money(result.cost_usd)),
        ("time", f"{result.duration_s:.2f} s"),
    ]
    for name, value in rows:
        table.add_row(name, value)
    if len(result.usage) > 1:
        table.add_section()
        for model, entry in result.usage.items():
            u = entry.usage
            table.add_row(
                Text(model, "dim"),
                Text(
                    f"{u.requests} calls · {u.input_tokens:,} in / {u.output_tokens:,} out · "
                    f"{_money(entry.cost_usd)}",
                    "dim",
                ),
            )
    return table
