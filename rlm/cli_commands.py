"""What each `rlm` command does: `demo`, `run`, `eval` and `view` (`rlm.cli` parses the
arguments and calls them; `rlm.cli_output` prints what they return).

A command reads its inputs (`--context`, `--output-schema`, `--sizes`, `--param`,
`--resume`), raises `UsageError` for bad ones, and returns the exit code.
"""

from __future__ import annotations

import argparse
import asyncio
import inspect
import json
import math
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, TextIO

from rlm._serde import to_jsonable
from rlm.budget import Budget
from rlm.cli_output import (
    EXIT_ERROR,
    EXIT_INTERRUPTED,
    EXIT_OK,
    DemoPrinter,
    exit_code_for,
    exit_code_for_error,
    note,
    one_line,
    report,
    result_line,
)
from rlm.errors import ReplayError, ReplError, RLMError, TrajectoryError
from rlm.events import Event, RunFinished, Subscriber
from rlm.result import RLMResult

if TYPE_CHECKING:
    from rlm.replay import ResumePoint
    from rlm.telemetry.trajectory import TrajectoryRecorder


class UsageError(Exception):
    """Bad arguments found after parsing (a missing file, a bad size)."""


# -- shared pieces ---------------------------------------------------------------------


def open_trajectory(path: str | os.PathLike[str], *, append: bool = False) -> TrajectoryRecorder:
    """A `TrajectoryRecorder` for `path`; an unwritable path is a usage error."""
    from rlm.telemetry.trajectory import TrajectoryRecorder

    try:
        return TrajectoryRecorder(path, append=append)
    except TrajectoryError as exc:
        raise UsageError(str(exc)) from None


ReplChoice = Literal["subprocess", "inprocess"]


def _repl_choice(value: str) -> ReplChoice:
    return "inprocess" if value == "inprocess" else "subprocess"


def _budget(args: argparse.Namespace) -> Budget | None:
    limits = {
        "max_cost_usd": getattr(args, "budget_usd", None),
        "max_tokens": getattr(args, "max_tokens", None),
        "max_seconds": getattr(args, "timeout", None),
    }
    if all(v is None for v in limits.values()):
        return None
    return Budget(**limits)


class _Capture:
    """Keeps the root run's final result, so an interrupted run can still report it."""

    def __init__(self) -> None:
        self.result: RLMResult | None = None

    def __call__(self, event: Event) -> None:
        if isinstance(event, RunFinished) and event.depth == 0:
            self.result = event.result


# -- context loading -------------------------------------------------------------------

_SKIP_DIRS = {".git", ".hg", ".svn", "__pycache__", "node_modules", ".venv", ".mypy_cache"}


def load_output_schema(spec: str) -> dict[str, Any]:
    """The JSON Schema named by `--output-schema` (the answer must match it)."""
    try:
        schema = json.loads(Path(spec).expanduser().read_text(encoding="utf-8"))
    except OSError as exc:
        raise UsageError(f"cannot read --output-schema {spec}: {exc.strerror or exc}") from None
    except ValueError as exc:
        raise UsageError(f"--output-schema {spec} is not JSON: {exc}") from None
    if not isinstance(schema, dict):
        raise UsageError(f"--output-schema {spec} must hold a JSON object (a JSON Schema)")
    return schema


def load_context(spec: str, stdin: TextIO | None = None) -> tuple[object, str]:
    """The context named by `--context`, and a short description of what was loaded.

    "-" reads stdin; a file is read as text; a directory becomes a dict of relative path
    to text for every readable text file under it (hidden files, VCS and cache folders
    and binary files are skipped).
    """
    if spec == "-":
        text = (stdin or sys.stdin).read()
        return text, f"stdin ({len(text):,} characters)"
    path = Path(spec).expanduser()
    if path.is_file():
        try:
            text = path.read_text(encoding="utf-8", errors="replace")
        except OSError as exc:
            raise UsageError(f"cannot read --context {spec}: {exc.strerror or exc}") from None
        return text, f"{path} ({len(text):,} characters)"
    if path.is_dir():
        files: dict[str, str] = {}
        skipped = 0
        for root, dirs, names in os.walk(path):
            dirs[:] = sorted(d for d in dirs if d not in _SKIP_DIRS and not d.startswith("."))
            for name in sorted(names):
                if name.startswith("."):
                    continue
                file = Path(root, name)
                try:
                    raw = file.read_bytes()
                except OSError:
                    skipped += 1
                    continue
                if b"\0" in raw[:8192]:
                    skipped += 1
                    continue
                files[file.relative_to(path).as_posix()] = raw.decode("utf-8", errors="replace")
        if not files:
            raise UsageError(f"--context {spec}: the directory holds no readable text files")
        chars = sum(len(v) for v in files.values())
        note = f"{path}/ ({len(files):,} files, {chars:,} characters"
        note += f"; {skipped} binary or unreadable files skipped)" if skipped else ")"
        return files, note
    raise UsageError(f"--context {spec}: no such file or directory (use - for stdin)")


def cmd_demo(args: argparse.Namespace) -> int:
    """`rlm demo`: the salary task end to end with a scripted model."""
    import rlm
    from rlm.evals import get_task
    from rlm.evals.demo import demo_models

    out = sys.stdout
    try:
        instance = get_task("salary").generate(args.records, args.seed)
    except ValueError as exc:
        raise UsageError(f"--records: {exc}") from None
    department = str(instance.details["department"])
    repl = _repl_choice(args.repl)
    printer = DemoPrinter(out)
    printer.console.print(
        "[bold]rlm demo[/bold]: a [bold yellow]SCRIPTED[/bold yellow] model plays the LLM "
        "(no API key, no network). Its code really runs over the context in the REPL."
    )
    printer.say(
        f"context: {args.records:,} generated employee records, {instance.context_chars:,} "
        f"characters (about {instance.context_tokens:,} tokens) · REPL: {repl}"
    )
    printer.say(f"query: {instance.query}", "bold")
    trajectory = Path(args.trajectory)

    def attempt(where: ReplChoice) -> RLMResult:
        root, sub = demo_models(department)
        with open_trajectory(trajectory) as recorder:
            return rlm.run(
                instance.query,
                instance.context,
                model=root,
                sub_model=sub,
                max_iterations=8,
                repl=where,
                on_event=[printer, recorder],
            )

    try:
        result = attempt(repl)
    except ReplError as exc:
        if repl != "subprocess":
            raise
        # The scripted code is ours and harmless, so the demo may run it in this process.
        printer.say(
            f"\nthe sandboxed REPL could not start here ({one_line(exc)}); "
            "running the demo with --repl inprocess instead",
            "yellow",
        )
        result = attempt("inprocess")
    printer.console.rule("result", style="cyan")
    expected = int(instance.gold)
    score = instance.score(result.answer)
    verdict = "[bold green]correct[/bold green]" if score == 1 else "[bold red]WRONG[/bold red]"
    printer.say(f"answer:   {result.answer}")
    printer.say(f"expected: ${expected:,}")
    printer.console.print(f"verdict:  {verdict}")
    printer.say(result_line(result) + " (tokens estimated by the scripted models)", "dim")
    printer.say(f"trajectory written to {trajectory}")
    printer.say(f"view it:  rlm view {trajectory}   (writes {trajectory.with_suffix('.html')})")
    printer.say("next:     rlm run QUERY --context FILE --model openai/gpt-4o-mini   (needs a key)")
    return EXIT_OK if score == 1 else EXIT_ERROR


# -- rlm run ---------------------------------------------------------------------------


def cmd_run(args: argparse.Namespace) -> int:
    """`rlm run`: one real run; progress on stderr, the answer on stdout. With `--resume`,
    the run recorded in a trajectory file continues where it stopped."""
    from rlm.engine import RLM

    point = _resume_point(args) if args.resume else None
    if point is not None:
        from rlm.replay import describe_point

        note(describe_point(point))
    if args.query is None and point is None:
        raise UsageError("QUERY is required (or --resume TRAJECTORY to continue a run)")
    model: str | None = args.model or (point.model_string if point is not None else None)
    if model is None:
        raise UsageError("--model is required, e.g. --model openai/gpt-4o-mini")
    context, described = load_context(args.context)
    budget = _budget(args)
    schema = load_output_schema(args.output_schema) if args.output_schema else None
    sub_model: str | None = args.sub_model or (
        _recorded_sub_model(point) if point is not None else None
    )
    engine = RLM(
        model,
        sub_model,
        max_iterations=_recorded_or(args.max_iterations, point, "max_iterations", 20),
        max_depth=_recorded_or(args.max_depth, point, "max_depth", 1),
        max_concurrency=args.max_concurrency,
        budget=budget,
        repl=_repl_choice(args.repl),
        verbose=not args.quiet,
        output_type=schema,
    )
    if not args.quiet:
        note(f"context: {described}")
        sub = engine.sub_model.name
        note(
            f"model: {engine.model.name}"
            + (f" (sub-model {sub})" if sub != engine.model.name else "")
        )
    capture = _Capture()
    subscribers: list[Subscriber] = [capture]
    recorder: TrajectoryRecorder | None = None
    if point is not None and args.trajectory is None:
        # A resumed run is recorded where the run it continues is: killed again, the
        # same file resumes it again.
        args.trajectory = args.resume
    if args.trajectory:
        same = point is not None and _same_file(args.trajectory, point.path)
        recorder = open_trajectory(args.trajectory, append=same)
        subscribers.append(recorder)
    result: RLMResult | None = None
    failure: BaseException | None = None
    try:
        if point is None:
            result = asyncio.run(engine.arun(args.query, context, on_event=subscribers))
        else:
            result = asyncio.run(engine.aresume(point.path, context=context, on_event=subscribers))
        code = exit_code_for(result)
    except KeyboardInterrupt:
        result = capture.result
        code = EXIT_INTERRUPTED
        note(
            "\ninterrupted: the run was cancelled"
            + ("; partial result below" if result is not None else "")
        )
    except ReplayError as exc:
        # The recording does not fit what was given (another context): bad usage.
        raise UsageError(str(exc)) from None
    except RLMError as exc:
        failure = exc
        result = exc.result or capture.result
        code = exit_code_for_error(exc)
    finally:
        if recorder is not None:
            recorder.close()
    report(args, result, code, failure)
    return code


def _resume_point(args: argparse.Namespace) -> ResumePoint:
    """The run `--resume` names; a QUERY given as well must be the recorded one."""
    from rlm.replay import load_resume_point

    try:
        point = load_resume_point(args.resume)
    except TrajectoryError as exc:
        raise UsageError(f"--resume: {exc}") from None
    if args.query is not None and args.query != point.query:
        raise UsageError(
            f"QUERY differs from the one recorded in {args.resume} "
            f"({one_line(point.query)[:200]!r}); leave QUERY out to resume that run"
        )
    return point


def _recorded_or(given: int | None, point: ResumePoint | None, name: str, default: int) -> int:
    """An option's value: as given, else as the resumed run had it, else the default."""
    if given is not None:
        return given
    if point is not None:
        return int(getattr(point.started, name))
    return default


def _recorded_sub_model(point: ResumePoint) -> str | None:
    """The resumed run's sub-model as a model string, when it had its own: the recording
    names it without a provider, so the root model's is assumed (`--sub-model` says
    otherwise)."""
    started = point.started
    if started.sub_model == started.model:
        return None
    return point.model_string_of(replace(started, model=started.sub_model))


def _same_file(a: str | os.PathLike[str], b: str | os.PathLike[str]) -> bool:
    return Path(a).expanduser().resolve() == Path(b).expanduser().resolve()


# -- rlm eval --------------------------------------------------------------------------


def parse_size(text: str) -> int:
    """ "8000", "8k", "8K", "1.5m" or "1_000" as an integer (commas separate sizes)."""
    raw = text.strip().lower().replace("_", "")
    scale = 1
    if raw.endswith("k"):
        scale, raw = 1_000, raw[:-1]
    elif raw.endswith("m"):
        scale, raw = 1_000_000, raw[:-1]
    try:
        value = float(raw) * scale
    except ValueError:
        raise UsageError(f"bad size {text!r}: use a number like 1000, 8k or 1m") from None
    if not math.isfinite(value) or value <= 0 or value != int(value):
        raise UsageError(f"bad size {text!r}: sizes are positive whole numbers")
    return int(value)


def _sizes(values: Sequence[str] | None) -> list[int] | None:
    if not values:
        return None
    return [parse_size(part) for value in values for part in value.split(",") if part.strip()]


def _params(values: Sequence[str] | None) -> dict[str, Any]:
    params: dict[str, Any] = {}
    for item in values or ():
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise UsageError(f"--param {item!r}: use KEY=VALUE, e.g. --param depth=0.5")
        value: Any = raw
        for convert in (int, float):
            try:
                value = convert(raw)
                break
            except ValueError:
                continue
        params[key.strip()] = value
    return params


def cmd_eval(args: argparse.Namespace) -> int:
    """`rlm eval`: a task through the RLM (and directly), as a comparison table."""
    from rlm.evals import get_task
    from rlm.evals.runner import EvalRow, evaluate, format_table, summary

    try:
        task = get_task(args.task)
    except KeyError as exc:
        raise UsageError(exc.args[0]) from None
    sizes = _sizes(args.sizes)
    params = _params(args.param)
    if args.runs < 1:
        raise UsageError("--runs must be at least 1")
    options = [
        name
        for name, p in inspect.signature(task.generate).parameters.items()
        if p.kind is inspect.Parameter.KEYWORD_ONLY
    ]
    unknown = sorted(set(params) - set(options))
    if unknown:
        raise UsageError(
            f"{task.name} has no option {', '.join(unknown)}; its options: "
            f"{', '.join(options) or '(none)'}"
        )
    try:
        for size in sizes or task.default_sizes:
            task.check_size(size)
        task.generate(task.min_size, args.seed, **params)  # checks the options' values
    except (ValueError, TypeError) as exc:
        raise UsageError(str(exc)) from None
    rows: list[EvalRow] = []
    progress = None if args.quiet else note
    code = EXIT_OK
    try:
        rows = asyncio.run(
            evaluate(
                task,
                model=args.model,
                sub_model=args.sub_model,
                sizes=sizes,
                runs=args.runs,
                seed=args.seed,
                direct=args.direct or args.direct_model is not None,
                direct_model=args.direct_model,
                params=params,
                max_iterations=args.max_iterations,
                max_depth=args.max_depth,
                budget=_budget(args),
                repl=_repl_choice(args.repl),
                trajectory_dir=args.trajectory_dir,
                progress=progress,
                on_row=rows.append,
                verbose=args.verbose,
                executor=args.executor,
                max_parallel_runs=args.parallel,
            )
        )
    except KeyboardInterrupt:
        note("\ninterrupted: showing the rows finished so far")
        code = EXIT_INTERRUPTED
    if args.json:
        payload = {
            "task": task.name,
            "size_unit": task.size_unit,
            "rows": [{**to_jsonable(row), "winner": row.winner} for row in rows],
            "summary": summary(rows),
            "exit_code": code,
        }
        print(json.dumps(payload, ensure_ascii=False, indent=2))
    else:
        print(format_table(rows))
    return code


# -- rlm view --------------------------------------------------------------------------


def cmd_view(args: argparse.Namespace) -> int:
    """`rlm view`: a trajectory JSONL file to one self-contained HTML page."""
    from rlm.viewer import write_html

    source = Path(args.trajectory)
    if not source.is_file():
        raise UsageError(f"{source}: no such trajectory file")
    started = time.perf_counter()
    target = write_html(source, args.output)
    size = target.stat().st_size
    print(f"wrote {target} ({size / 1_000_000:.1f} MB) in {time.perf_counter() - started:.1f} s")
    print(f"open it in a browser: {target.resolve().as_uri()}")
    if args.open:
        import webbrowser

        webbrowser.open(target.resolve().as_uri())
    return EXIT_OK
