"""Run an evaluation task through an RLM and, optionally, a model reading the whole context.

`evaluate()` generates each instance (one per size and run), runs the RLM on it, asks the
direct model when `direct=True`, scores both and returns one `EvalRow` per instance;
`format_table()` renders the rows as the comparison table `rlm eval` prints.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from rlm.batch.api import ExecutorSpec
from rlm.batch.outcome import BatchItem
from rlm.budget import Budget
from rlm.engine import RLM, ReplSpec
from rlm.errors import ConfigurationError, RLMError
from rlm.evals.base import Instance, Task, extract_number
from rlm.evals.oolong import parse_pairs
from rlm.events import OnEvent, Subscriber
from rlm.providers.base import Message, Model, ModelRequest, describe_model
from rlm.providers.pricing import cost_usd
from rlm.providers.registry import resolve_model
from rlm.result import RLMResult

if TYPE_CHECKING:
    from rlm.telemetry.trajectory import TrajectoryRecorder

DIRECT_PROMPT = "{context}\n\n---\n\nUsing the text above, answer this question.\n{query}"

Winner = Literal["RLM", "direct", "tie"]


@dataclass(frozen=True, slots=True)
class Attempt:
    """One way of answering one instance: its answer, score, cost and time.

    `cost_usd` is None when a model's price is unknown; `error` says why there is no
    answer (a provider failure, a context too long for the direct model...).
    """

    model: str
    answer: str | None
    score: float
    cost_usd: float | None
    duration_s: float
    input_tokens: int = 0
    output_tokens: int = 0
    error: str | None = None
    stop_reason: str | None = None
    iterations: int | None = None
    sub_calls: int | None = None
    trajectory: str | None = None


@dataclass(frozen=True, slots=True)
class EvalRow:
    """One instance: what was asked, the gold answer, and each attempt at it."""

    task: str
    size: int
    size_unit: str
    seed: int
    run: int
    context_chars: int
    context_tokens: int
    expected: str
    answer_kind: str
    rlm: Attempt
    direct: Attempt | None = None
    details: Mapping[str, Any] = field(default_factory=dict)

    @property
    def winner(self) -> Winner | None:
        """The attempt with the higher score ("tie" when equal); None without a direct one."""
        if self.direct is None:
            return None
        if self.rlm.score > self.direct.score:
            return "RLM"
        if self.direct.score > self.rlm.score:
            return "direct"
        return "tie"


Progress = Callable[[str], None]


async def evaluate(
    task: Task,
    *,
    model: str | Model,
    sub_model: str | Model | None = None,
    sizes: Sequence[int] | None = None,
    runs: int = 1,
    seed: int = 0,
    direct: bool = False,
    direct_model: str | Model | None = None,
    params: Mapping[str, Any] | None = None,
    max_iterations: int = 20,
    max_depth: int = 1,
    budget: Budget | None = None,
    repl: ReplSpec = "subprocess",
    trajectory_dir: str | Path | None = None,
    on_event: OnEvent = None,
    progress: Progress | None = None,
    on_row: Callable[[EvalRow], None] | None = None,
    verbose: bool = False,
    executor: ExecutorSpec | None = None,
    max_parallel_runs: int = 8,
) -> list[EvalRow]:
    """Run `task` at each size `runs` times (seeds `seed`, `seed + 1`, ...).

    Configuration errors (an unknown model, a missing key) are raised; any other failed
    attempt (a provider error, a context too long for the direct model, a crash) is
    recorded in its row with score 0 and the evaluation goes on. `progress` receives one
    line per step, `on_row` each row as it is finished; `verbose` shows each RLM run live
    on stderr. With `executor` ("local", "ray" or an executor: see `rlm.batch`), the RLM
    attempts of every instance run first as one batch of `max_parallel_runs` at a time,
    then the direct attempts one by one.
    """
    if runs < 1:
        raise ConfigurationError(f"runs must be >= 1, not {runs}")
    sizes = list(sizes or task.default_sizes)
    for size in sizes:
        task.check_size(size)
    engine = RLM(
        model,
        sub_model,
        max_iterations=max_iterations,
        max_depth=max_depth,
        budget=budget,
        repl=repl,
        on_event=on_event,
        verbose=verbose,
    )
    reader = resolve_model(direct_model if direct_model is not None else engine.model)
    out_dir = Path(trajectory_dir) if trajectory_dir is not None else None
    if out_dir is not None:
        out_dir.mkdir(parents=True, exist_ok=True)
    say = progress or (lambda _: None)
    rows: list[EvalRow] = []
    batched: dict[tuple[int, int], Attempt] = {}
    if executor is not None:
        batched = await _run_batch(
            engine, task, sizes, runs, seed, params, out_dir, executor, max_parallel_runs, say
        )
    for size in sizes:
        for run in range(runs):
            instance = task.generate(size, seed + run, **dict(params or {}))
            label = f"{task.name} {size:,} {task.size_unit}, run {run + 1}/{runs}"
            path = (
                out_dir / f"{_instance_id(task, size, seed + run)}.jsonl"
                if out_dir is not None
                else None
            )
            if (size, run) in batched:
                rlm_attempt = batched[(size, run)]
            else:
                say(f"{label}: RLM ({engine.model.name}) ...")
                rlm_attempt = await _run_rlm(engine, instance, path)
            say(f"{label}: RLM answered {_short(rlm_attempt)}, score {rlm_attempt.score:g}")
            direct_attempt: Attempt | None = None
            if direct:
                say(f"{label}: direct ({reader.name}) ...")
                direct_attempt = await _run_direct(reader, instance)
                say(
                    f"{label}: direct answered {_short(direct_attempt)}, "
                    f"score {direct_attempt.score:g}"
                )
            row = EvalRow(
                task=task.name,
                size=size,
                size_unit=task.size_unit,
                seed=instance.seed,
                run=run + 1,
                context_chars=instance.context_chars,
                context_tokens=instance.context_tokens,
                expected=instance.gold,
                answer_kind=instance.answer_kind,
                rlm=rlm_attempt,
                direct=direct_attempt,
                details=dict(instance.details),
            )
            rows.append(row)
            if on_row is not None:
                on_row(row)
    return rows


def _instance_id(task: Task, size: int, seed: int) -> str:
    return f"{task.name}-{size}-seed{seed}"


async def _run_batch(
    engine: RLM,
    task: Task,
    sizes: Sequence[int],
    runs: int,
    seed: int,
    params: Mapping[str, Any] | None,
    out_dir: Path | None,
    executor: ExecutorSpec,
    max_parallel_runs: int,
    say: Progress,
) -> dict[tuple[int, int], Attempt]:
    """Every instance's RLM attempt, run as one batch."""
    keys: list[tuple[int, int]] = []
    instances: list[Instance] = []
    items: list[BatchItem] = []
    for size in sizes:
        for run in range(runs):
            instance = task.generate(size, seed + run, **dict(params or {}))
            keys.append((size, run))
            instances.append(instance)
            items.append(
                BatchItem(instance.query, instance.context, id=_instance_id(task, size, seed + run))
            )
    say(f"{task.name}: {len(items)} RLM runs on the {executor!r} executor ...")
    report = await engine.abatch(
        items,
        executor=executor,
        max_parallel_runs=max_parallel_runs,
        trajectories=out_dir,
        progress=None,
    )
    failures = {f.index: f.error for f in report.failed}
    attempts: dict[tuple[int, int], Attempt] = {}
    for index, (key, instance) in enumerate(zip(keys, instances, strict=True)):
        result = report.results[index]
        path = out_dir / f"{items[index].id}.jsonl" if out_dir is not None else None
        attempts[key] = _attempt(
            engine.model.name, instance, result, failures.get(index), path, 0.0
        )
    return attempts


def _attempt(
    model: str,
    instance: Instance,
    result: RLMResult | None,
    error: str | None,
    trajectory: Path | None,
    duration_s: float,
) -> Attempt:
    """The RLM's attempt from its result, or from its error (with the partial result)."""
    if error is not None or result is None:
        return Attempt(
            model=model,
            answer=None,
            score=0.0,
            cost_usd=result.cost_usd if result else None,
            duration_s=result.duration_s if result else duration_s,
            input_tokens=result.total_input_tokens if result else 0,
            output_tokens=result.total_output_tokens if result else 0,
            error=error or "the run did not start",
            stop_reason="error",
            trajectory=str(trajectory) if trajectory else None,
        )
    return Attempt(
        model=model,
        answer=result.answer,
        score=instance.score(result.answer),
        cost_usd=result.cost_usd,
        duration_s=result.duration_s,
        input_tokens=result.total_input_tokens,
        output_tokens=result.total_output_tokens,
        error=result.error,
        stop_reason=result.stop_reason,
        iterations=result.iterations,
        sub_calls=result.sub_calls,
        trajectory=str(trajectory) if trajectory else None,
    )


def _short(attempt: Attempt) -> str:
    if attempt.answer is None:
        return f"nothing ({attempt.error or attempt.stop_reason})"
    text = " ".join(attempt.answer.split())
    return repr(text if len(text) <= 60 else text[:57] + "...")


async def _run_rlm(engine: RLM, instance: Instance, trajectory: Path | None) -> Attempt:
    subscribers: list[Subscriber] = []
    recorder: TrajectoryRecorder | None = None
    if trajectory is not None:
        from rlm.telemetry.trajectory import TrajectoryRecorder

        recorder = TrajectoryRecorder(trajectory)
        subscribers.append(recorder)
    started = time.perf_counter()
    try:
        result = await engine.arun(instance.query, instance.context, on_event=subscribers)
    except ConfigurationError:
        raise
    except Exception as exc:
        partial = exc.result if isinstance(exc, RLMError) else None
        error = f"{type(exc).__name__}: {exc}"
        return _attempt(
            engine.model.name, instance, partial, error, trajectory, time.perf_counter() - started
        )
    finally:
        if recorder is not None:
            recorder.close()
    return _attempt(engine.model.name, instance, result, None, trajectory, result.duration_s)


async def _run_direct(model: Model, instance: Instance) -> Attempt:
    """One call with the whole context in the prompt."""
    prompt = DIRECT_PROMPT.format(context=instance.context, query=instance.query)
    window = describe_model(model).context_window
    if window is not None and len(prompt) // 4 > window:
        return Attempt(
            model=model.name,
            answer=None,
            score=0.0,
            cost_usd=0.0,
            duration_s=0.0,
            error=f"context too long: about {len(prompt) // 4:,} tokens, window {window:,}",
        )
    request = ModelRequest(messages=(Message("user", prompt),), purpose="root")
    started = time.perf_counter()
    try:
        response = await model.complete(request)
    except ConfigurationError:
        raise
    except Exception as exc:
        return Attempt(
            model=model.name,
            answer=None,
            score=0.0,
            cost_usd=None,
            duration_s=time.perf_counter() - started,
            error=f"{type(exc).__name__}: {exc}",
        )
    elapsed = time.perf_counter() - started
    return Attempt(
        model=model.name,
        answer=response.text,
        score=instance.score(response.text),
        cost_usd=cost_usd(model.name, response.usage),
        duration_s=elapsed,
        input_tokens=response.usage.input_tokens,
        output_tokens=response.usage.output_tokens,
    )


# -- the table -----------------------------------------------------------------------------


def _cell(text: str, width: int = 28) -> str:
    text = " ".join(text.split()).replace("|", "\\|")
    return text if len(text) <= width else text[: width - 1] + "…"


def _answer_cell(row: EvalRow, attempt: Attempt | None) -> str:
    if attempt is None:
        return "-"
    if attempt.answer is None:
        reason = attempt.error or attempt.stop_reason or "no answer"
        if "too long" in reason.lower() or "ContextTooLong" in reason:
            return "(context too long)"
        return _cell(f"(failed: {reason})")
    if row.answer_kind == "pairs":
        return f"{len(parse_pairs(attempt.answer))} pairs"
    if row.answer_kind == "number":
        # The number the scorer read, so the cell shows what was judged.
        value = extract_number(attempt.answer)
        if value is not None:
            return f"{int(value):,}" if value.is_integer() else f"{value:,}"
    return _cell(attempt.answer)


def _expected_cell(row: EvalRow) -> str:
    if row.answer_kind == "pairs":
        return f"{len([p for p in row.expected.splitlines() if p])} pairs"
    if row.answer_kind == "number" and row.expected.lstrip("-").isdigit():
        return f"{int(row.expected):,}"
    return _cell(row.expected)


def format_cost(value: float | None) -> str:
    """ "$0.0123", or "n/a" when the price is unknown."""
    if value is None:
        return "n/a"
    if value == 0:
        return "$0"
    return f"${value:.4f}" if value < 10 else f"${value:,.2f}"


def format_seconds(value: float) -> str:
    return f"{value:.1f} s" if value >= 0.1 else f"{value * 1000:.0f} ms"


def format_table(rows: Sequence[EvalRow]) -> str:
    """The rows as a Markdown table, with a summary line per method."""
    if not rows:
        return "(no rows)"
    has_direct = any(r.direct is not None for r in rows)
    show_run = len({r.run for r in rows}) > 1
    unit = rows[0].size_unit
    header = [unit, "context chars", "expected", "RLM answer", "RLM score", "RLM cost", "RLM time"]
    if show_run:
        header.insert(1, "run")
    if has_direct:
        header += ["direct answer", "direct score", "direct cost", "direct time", "winner"]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    for row in rows:
        cells = [
            f"{row.size:,}",
            f"{row.context_chars:,}",
            _expected_cell(row),
            _answer_cell(row, row.rlm),
            f"{row.rlm.score:.2f}",
            format_cost(row.rlm.cost_usd),
            format_seconds(row.rlm.duration_s),
        ]
        if show_run:
            cells.insert(1, str(row.run))
        if has_direct:
            d = row.direct
            cells += [
                _answer_cell(row, d),
                f"{d.score:.2f}" if d else "-",
                format_cost(d.cost_usd) if d else "-",
                format_seconds(d.duration_s) if d else "-",
                row.winner or "-",
            ]
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    lines.append(_summary_line("RLM", [r.rlm for r in rows], rows[0].rlm.model))
    directs = [r.direct for r in rows if r.direct is not None]
    if directs:
        lines.append(_summary_line("direct", directs, directs[0].model))
        wins = [r.winner for r in rows]
        lines.append(
            f"winner: RLM {wins.count('RLM')}, direct {wins.count('direct')}, "
            f"tie {wins.count('tie')}"
        )
    return "\n".join(lines)


def _summary_line(label: str, attempts: Sequence[Attempt], model: str) -> str:
    mean = sum(a.score for a in attempts) / len(attempts)
    costs = [a.cost_usd for a in attempts]
    total_cost = None if any(c is None for c in costs) else sum(c for c in costs if c is not None)
    total_time = sum(a.duration_s for a in attempts)
    return (
        f"{label} ({model}): mean score {mean:.2f} over {len(attempts)}, "
        f"cost {format_cost(total_cost)}, time {format_seconds(total_time)}"
    )


def summary(rows: Sequence[EvalRow]) -> dict[str, Any]:
    """Mean scores, total costs and win counts, for `--json` output."""

    def block(attempts: list[Attempt]) -> dict[str, Any]:
        costs = [a.cost_usd for a in attempts]
        return {
            "model": attempts[0].model,
            "mean_score": sum(a.score for a in attempts) / len(attempts),
            "cost_usd": None if any(c is None for c in costs) else sum(c or 0.0 for c in costs),
            "duration_s": sum(a.duration_s for a in attempts),
        }

    out: dict[str, Any] = {"rows": len(rows)}
    if rows:
        out["rlm"] = block([r.rlm for r in rows])
        directs = [r.direct for r in rows if r.direct is not None]
        if directs:
            out["direct"] = block(directs)
            wins = [r.winner for r in rows]
            out["wins"] = {k: wins.count(k) for k in ("RLM", "direct", "tie")}
    return out
