"""The `rlm` command line: `demo`, `run`, `eval` and `view`.

```console
$ rlm demo                                    # offline, scripted model, no key needed
$ rlm run "What is the total salary of Engineering?" --context staff.txt \\
      --model openai/gpt-4o-mini --trajectory run.jsonl
$ rlm run --resume run.jsonl --context staff.txt      # a killed run goes on where it stopped
$ rlm eval salary --model openai/gpt-4o-mini --sizes 1000 10000 --direct
$ rlm view run.jsonl                          # writes run.html
```

Exit codes: 0 success, 1 the run failed or gave no answer, 2 bad usage or configuration
(unknown model, missing key, unreadable file), 3 provider failure, 4 budget or deadline
exhausted, 130 interrupted (Ctrl-C; the partial result is printed).
"""

from __future__ import annotations

import argparse
import asyncio
import inspect
import json
import math
import os
import re
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, NoReturn, TextIO

from rlm import __version__
from rlm._serde import to_jsonable
from rlm.budget import Budget
from rlm.errors import (
    BudgetExceeded,
    ConfigurationError,
    ProviderError,
    ReplayError,
    ReplError,
    RLMError,
    TrajectoryError,
)
from rlm.events import (
    CodeExecuted,
    Event,
    FinalAnswer,
    IterationStarted,
    ModelCallFinished,
    RunFinished,
    SubcallStarted,
    Subscriber,
)
from rlm.result import ResumeInfo, RLMResult

if TYPE_CHECKING:
    from rlm.replay import ResumePoint
    from rlm.telemetry.trajectory import TrajectoryRecorder

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_PROVIDER = 3
EXIT_BUDGET = 4
EXIT_INTERRUPTED = 130

PROG = "rlm"


class UsageError(Exception):
    """Bad arguments found after parsing (a missing file, a bad size)."""


def _one_line(text: object) -> str:
    return " ".join(str(text).split())


def _error(message: object, stream: TextIO | None = None) -> None:
    print(f"{PROG}: error: {_one_line(message)}", file=stream or sys.stderr)


def _note(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one line and exit code 2."""

    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        _error(message)
        raise SystemExit(EXIT_USAGE)


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


def _format_cost(value: float | None) -> str:
    return "cost n/a" if value is None else f"${value:.4f}"


def result_line(result: RLMResult) -> str:
    """One line about a result: stop reason, iterations, sub-calls, tokens, cost, time."""
    return (
        f"stop: {result.stop_reason}"
        + (f" ({result.limit})" if result.limit else "")
        + f" · {result.iterations} iteration{'s' if result.iterations != 1 else ''}"
        + f" · {result.sub_calls} sub-call{'s' if result.sub_calls != 1 else ''}"
        + f" · {result.total_input_tokens:,} in / {result.total_output_tokens:,} out tokens"
        + f" · {_format_cost(result.cost_usd)} · {result.duration_s:.1f} s"
        + (_resumed_part(result.resumed) if result.resumed is not None else "")
    )


def _resumed_part(info: ResumeInfo) -> str:
    differences = len(info.differences)
    return (
        f" · resumed: {info.replayed_calls} call{'s' if info.replayed_calls != 1 else ''}"
        f" replayed, {info.live_calls} live"
        + (f", {info.replayed_tool_calls} tool calls replayed" if info.replayed_tool_calls else "")
        + (f", {differences} difference{'s' if differences != 1 else ''}" if differences else "")
    )


def _exit_code_for(result: RLMResult) -> int:
    if result.stop_reason in ("budget", "deadline"):
        return EXIT_BUDGET
    if result.stop_reason == "cancelled":
        return EXIT_INTERRUPTED
    if result.answer is None or result.stop_reason == "error":
        return EXIT_ERROR
    return EXIT_OK


def _exit_code_for_error(exc: BaseException) -> int:
    if isinstance(exc, ConfigurationError):
        return EXIT_USAGE
    if isinstance(exc, ProviderError):
        return EXIT_PROVIDER
    if isinstance(exc, BudgetExceeded):
        return EXIT_BUDGET
    return EXIT_ERROR


def _describe_error(exc: BaseException) -> str:
    if isinstance(exc, ProviderError):
        return f"provider failure ({type(exc).__name__}): {exc}"
    if isinstance(exc, ConfigurationError):
        return str(exc)
    return f"{type(exc).__name__}: {exc}"


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


# -- rlm demo --------------------------------------------------------------------------


class _DemoPrinter:
    """Prints the demo's iterations, code and output to stdout as they happen."""

    def __init__(self, out: TextIO) -> None:
        from rich.console import Console

        self.console = Console(file=out, soft_wrap=True, highlight=False)
        self.subcalls = 0
        self.sub_model = ""

    def _say(self, text: str, style: str | None = None) -> None:
        self.console.print(text, style=style, markup=False)

    def __call__(self, event: Event) -> None:
        if event.depth != 0:
            return
        if isinstance(event, IterationStarted):
            self.subcalls = 0
            self.console.rule(f"iteration {event.iteration}", style="cyan")
        elif isinstance(event, ModelCallFinished) and event.purpose == "root":
            prose = _prose(event.text)
            if prose:
                self._say(f"model: {prose}", "italic")
        elif isinstance(event, SubcallStarted):
            self.subcalls += 1
            self.sub_model = event.model
        elif isinstance(event, CodeExecuted):
            from rich.syntax import Syntax

            self.console.print(
                Syntax(event.code, "python", theme="ansi_dark", background_color="default")
            )
            if self.subcalls:
                self._say(f"({self.subcalls} sub-calls to {self.sub_model})", "dim")
            output = event.stdout.rstrip("\n")
            if output:
                self._say(_indent(output, "  │ "), "green")
            if event.error:
                self._say(_indent(event.error.rstrip(), "  │ "), "red")
        elif isinstance(event, FinalAnswer):
            self._say(f"FINAL answer given ({event.how}): {event.answer}", "bold")


def _prose(text: str) -> str:
    """A reply's text outside code fences, on one line."""
    return _one_line(re.sub(r"```.*?(?:```|$)", " ", text, flags=re.S))


def _indent(text: str, prefix: str) -> str:
    lines = text.splitlines()
    if len(lines) > 40:
        lines = [*lines[:20], f"... {len(lines) - 40} lines ...", *lines[-20:]]
    return "\n".join(prefix + line[:300] + ("…" if len(line) > 300 else "") for line in lines)


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
    printer = _DemoPrinter(out)
    printer.console.print(
        "[bold]rlm demo[/bold]: a [bold yellow]SCRIPTED[/bold yellow] model plays the LLM "
        "(no API key, no network). Its code really runs over the context in the REPL."
    )
    printer._say(
        f"context: {args.records:,} generated employee records, {instance.context_chars:,} "
        f"characters (about {instance.context_tokens:,} tokens) · REPL: {repl}"
    )
    printer._say(f"query: {instance.query}", "bold")
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
        printer._say(
            f"\nthe sandboxed REPL could not start here ({_one_line(exc)}); "
            "running the demo with --repl inprocess instead",
            "yellow",
        )
        result = attempt("inprocess")
    printer.console.rule("result", style="cyan")
    expected = int(instance.gold)
    score = instance.score(result.answer)
    verdict = "[bold green]correct[/bold green]" if score == 1 else "[bold red]WRONG[/bold red]"
    printer._say(f"answer:   {result.answer}")
    printer._say(f"expected: ${expected:,}")
    printer.console.print(f"verdict:  {verdict}")
    printer._say(result_line(result) + " (tokens estimated by the scripted models)", "dim")
    printer._say(f"trajectory written to {trajectory}")
    printer._say(f"view it:  rlm view {trajectory}   (writes {trajectory.with_suffix('.html')})")
    printer._say(
        "next:     rlm run QUERY --context FILE --model openai/gpt-4o-mini   (needs a key)"
    )
    return EXIT_OK if score == 1 else EXIT_ERROR


# -- rlm run ---------------------------------------------------------------------------


def cmd_run(args: argparse.Namespace) -> int:
    """`rlm run`: one real run; progress on stderr, the answer on stdout. With `--resume`,
    the run recorded in a trajectory file continues where it stopped."""
    from rlm.engine import RLM

    point = _resume_point(args) if args.resume else None
    if point is not None:
        from rlm.replay import describe_point

        _note(describe_point(point))
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
        _note(f"context: {described}")
        sub = engine.sub_model.name
        _note(
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
        code = _exit_code_for(result)
    except KeyboardInterrupt:
        result = capture.result
        code = EXIT_INTERRUPTED
        _note(
            "\ninterrupted: the run was cancelled"
            + ("; partial result below" if result is not None else "")
        )
    except ReplayError as exc:
        # The recording does not fit what was given (another context): bad usage.
        raise UsageError(str(exc)) from None
    except RLMError as exc:
        failure = exc
        result = exc.result or capture.result
        code = _exit_code_for_error(exc)
    finally:
        if recorder is not None:
            recorder.close()
    _report(args, result, code, failure)
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
            f"({_one_line(point.query)[:200]!r}); leave QUERY out to resume that run"
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


def _report(
    args: argparse.Namespace, result: RLMResult | None, code: int, failure: BaseException | None
) -> None:
    if failure is not None:
        _error(_describe_error(failure))
    if args.json:
        payload: dict[str, Any] = to_jsonable(result) if result is not None else {}
        payload["ok"] = bool(result is not None and result.ok and code == EXIT_OK)
        payload["exit_code"] = code
        if failure is not None:
            payload["error_type"] = type(failure).__name__
            payload["error"] = payload.get("error") or _one_line(failure)
        print(json.dumps(payload, ensure_ascii=False, indent=2))
        return
    if result is None:
        return
    if failure is not None:
        if args.trajectory:
            _note(f"trajectory: {args.trajectory} (view with: rlm view {args.trajectory})")
        return
    if result.answer is not None:
        print(result.answer)
    if not args.quiet or code != EXIT_OK:
        _note(result_line(result))
    for difference in result.resumed.differences if result.resumed is not None else ():
        first = difference.splitlines()[0] if difference else ""
        _note(f"note: re-running recorded code gave other output at {first}")
    if code == EXIT_BUDGET:
        _note(f"the budget ran out ({result.limit or result.stop_reason}) before a final answer")
    elif code == EXIT_OK and result.stop_reason == "max_iterations":
        _note("note: the run hit --max-iterations; the answer is the model's best guess")
    elif result.answer is None and failure is None and code == EXIT_ERROR:
        _note(f"no answer{': ' + result.error if result.error else ''}")
    if args.trajectory:
        _note(f"trajectory: {args.trajectory} (view with: rlm view {args.trajectory})")


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
    progress = None if args.quiet else _note
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
        _note("\ninterrupted: showing the rows finished so far")
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


# -- the parser ------------------------------------------------------------------------


def _add_run_limits(parser: argparse.ArgumentParser, *, recorded: bool = False) -> None:
    """The options `run` and `eval` share. With `recorded` (`rlm run`), the two limits a
    resume takes from the recording default to None (`cmd_run` fills them in)."""
    resumed = "; with --resume: the recorded value" if recorded else ""
    parser.add_argument("--sub-model", help=f"model behind llm_query (default: --model{resumed})")
    parser.add_argument(
        "--max-iterations", type=int, default=None if recorded else 20, metavar="N",
        help=f"model turns (default 20{resumed})",
    )  # fmt: skip
    parser.add_argument(
        "--max-depth", type=int, default=None if recorded else 1, metavar="N",
        help=f"1: no child runs (default{resumed}); 2: rlm_query starts child RLMs; ...",
    )  # fmt: skip
    parser.add_argument(
        "--budget-usd", type=float, metavar="X", help="stop once the run tree has spent $X"
    )
    parser.add_argument("--max-tokens", type=int, metavar="N", help="stop after N tokens")
    parser.add_argument(
        "--timeout", type=float, metavar="SECONDS", help="stop after this many seconds"
    )
    parser.add_argument(
        "--repl", choices=("subprocess", "inprocess"), default="subprocess",
        help="where the model's code runs: an isolated worker process (default) or this "
        "process (faster; trusted models only)",
    )  # fmt: skip


def build_parser() -> argparse.ArgumentParser:
    """The `rlm` argument parser."""
    parser = _Parser(
        prog=PROG,
        description="Recursive Language Models: answer queries over contexts of any size.",
        epilog="Exit codes: 0 ok, 1 run failed or no answer, 2 usage/configuration, "
        "3 provider failure, 4 budget or deadline exhausted, 130 interrupted.",
    )
    parser.add_argument("--version", action="version", version=f"rlm {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks for errors")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    demo = commands.add_parser(
        "demo",
        help="run the salary task offline with a scripted model (no key needed)",
        description="Runs the salary-aggregation task through the whole pipeline with a "
        "SCRIPTED model playing the LLM, printing each iteration, and writes a trajectory.",
    )
    demo.add_argument("--records", type=int, default=1_000, help="employee records (1000)")
    demo.add_argument("--seed", type=int, default=0, help="generator seed (0)")
    demo.add_argument(
        "--trajectory", default="rlm-demo.jsonl", metavar="PATH",
        help="where to write the trajectory (rlm-demo.jsonl)",
    )  # fmt: skip
    demo.add_argument("--repl", choices=("subprocess", "inprocess"), default="subprocess")
    demo.set_defaults(handler=cmd_demo)

    run = commands.add_parser(
        "run",
        help="answer QUERY over a context with a real model",
        description="Answers QUERY over the context with an RLM. Progress goes to stderr, "
        "the answer to stdout.",
    )
    run.add_argument("query", metavar="QUERY", nargs="?", help="(optional with --resume)")
    run.add_argument(
        "--context", "-c", required=True, metavar="PATH",
        help="a file, a directory of files (a dict of path to text), or - for stdin",
    )  # fmt: skip
    run.add_argument(
        "--model", "-m",
        help="provider/model, e.g. openai/gpt-4o-mini or anthropic/claude-sonnet-4-5 "
        "(with --resume: the recorded model)",
    )  # fmt: skip
    run.add_argument(
        "--resume", metavar="TRAJECTORY",
        help="continue the run recorded in TRAJECTORY (killed, crashed or out of budget) "
        "over the same --context: recorded model calls are answered from the file, and "
        "the run's events are appended to it (unless --trajectory names another file)",
    )  # fmt: skip
    _add_run_limits(run, recorded=True)
    run.add_argument("--max-concurrency", type=int, default=16, metavar="N")
    run.add_argument(
        "--output-schema", metavar="SCHEMA.json",
        help="a JSON Schema the answer must match; the answer is printed as JSON",
    )  # fmt: skip
    run.add_argument("--trajectory", "-t", metavar="PATH", help="record events to a JSONL file")
    run.add_argument("--json", action="store_true", help="print the full result as JSON")
    run.add_argument("--quiet", "-q", action="store_true", help="no live progress")
    run.set_defaults(handler=cmd_run)

    from rlm.evals import task_names

    ev = commands.add_parser(
        "eval",
        help="run an evaluation task with the RLM and (--direct) the model alone",
        description="Generates TASK instances offline, runs them through the RLM and, with "
        "--direct, through a model given the whole context, and prints a comparison table.",
    )
    ev.add_argument("task", metavar="TASK", choices=task_names(), help=", ".join(task_names()))
    ev.add_argument("--model", "-m", required=True, help="the RLM's model (provider/model)")
    _add_run_limits(ev)
    ev.add_argument(
        "--sizes", nargs="+", metavar="SIZE",
        help="sizes in the task's unit (records or tokens): 1000 10k 1m (default: the task's)",
    )  # fmt: skip
    ev.add_argument("--runs", type=int, default=1, metavar="N", help="runs per size (seeds)")
    ev.add_argument("--seed", type=int, default=0, help="first seed (0)")
    ev.add_argument(
        "--direct", action="store_true", help="also ask a model given the whole context"
    )
    ev.add_argument("--direct-model", metavar="MODEL", help="the direct model (default: --model)")
    ev.add_argument(
        "--param", action="append", metavar="KEY=VALUE",
        help="task option, e.g. department=Sales (salary), depth=0.5 (niah), "
        "question=count (oolong), condition=2 (oolong-pairs)",
    )  # fmt: skip
    ev.add_argument("--trajectory-dir", metavar="DIR", help="write each RLM run's trajectory")
    ev.add_argument(
        "--executor",
        choices=["local", "ray"],
        help="run the RLM attempts as one batch (docs/batch.md); ray needs rlm[ray]",
    )
    ev.add_argument(
        "--parallel", type=int, default=8, metavar="N", help="RLM runs at once with --executor"
    )
    ev.add_argument("--json", action="store_true", help="print rows and summary as JSON")
    ev.add_argument("--quiet", "-q", action="store_true", help="no progress lines")
    ev.add_argument("--verbose", "-v", action="store_true", help="live view of each RLM run")
    ev.set_defaults(handler=cmd_eval)

    view = commands.add_parser(
        "view",
        help="write a trajectory as one self-contained HTML page",
        description="Writes TRAJECTORY (JSONL) as one HTML page with no external resources.",
    )
    view.add_argument("trajectory", metavar="TRAJECTORY.jsonl")
    view.add_argument("-o", "--output", metavar="OUT.html", help="default: TRAJECTORY.html")
    view.add_argument("--open", action="store_true", help="open the page in a browser")
    view.set_defaults(handler=cmd_view)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the `rlm` command line with `argv` (default: `sys.argv[1:]`); returns the exit code."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE
    handler: Callable[[argparse.Namespace], int] | None = getattr(args, "handler", None)
    if handler is None:
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    try:
        return handler(args)
    except UsageError as exc:
        _error(exc)
        return EXIT_USAGE
    except TrajectoryError as exc:
        _error(exc)
        return EXIT_ERROR
    except RLMError as exc:
        if args.debug:
            raise
        _error(_describe_error(exc))
        return _exit_code_for_error(exc)
    except KeyboardInterrupt:
        _note("interrupted")
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        # The reader went away (`rlm run ... | head`): not an error worth a traceback.
        sys.stderr.close()
        return EXIT_OK


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
