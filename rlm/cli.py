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

This module is the entry point (`main`, the `rlm` console script) and the argument
parser; what each command does is in `rlm.cli_commands`, what it prints in
`rlm.cli_output`. Their public names are importable from here too.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from typing import NoReturn

from rlm import __version__
from rlm.cli_commands import (
    ReplChoice,
    UsageError,
    cmd_demo,
    cmd_eval,
    cmd_run,
    cmd_view,
    load_context,
    load_output_schema,
    open_trajectory,
    parse_size,
)
from rlm.cli_output import (
    EXIT_BUDGET,
    EXIT_ERROR,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_PROVIDER,
    EXIT_USAGE,
    PROG,
    describe_error,
    error,
    exit_code_for_error,
    note,
    result_line,
)
from rlm.errors import RLMError, TrajectoryError

__all__ = [
    "EXIT_BUDGET",
    "EXIT_ERROR",
    "EXIT_INTERRUPTED",
    "EXIT_OK",
    "EXIT_PROVIDER",
    "EXIT_USAGE",
    "PROG",
    "ReplChoice",
    "UsageError",
    "build_parser",
    "cmd_demo",
    "cmd_eval",
    "cmd_run",
    "cmd_view",
    "load_context",
    "load_output_schema",
    "main",
    "open_trajectory",
    "parse_size",
    "result_line",
]


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one line and exit code 2."""

    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        error(message)
        raise SystemExit(EXIT_USAGE)


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
        error(exc)
        return EXIT_USAGE
    except TrajectoryError as exc:
        error(exc)
        return EXIT_ERROR
    except RLMError as exc:
        if args.debug:
            raise
        error(describe_error(exc))
        return exit_code_for_error(exc)
    except KeyboardInterrupt:
        note("interrupted")
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        # The reader went away (`rlm run ... | head`): not an error worth a traceback.
        sys.stderr.close()
        return EXIT_OK


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
