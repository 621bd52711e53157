"""The rich console view: what a user watching a run sees."""

from __future__ import annotations

import asyncio
import io

import pytest
from rich.console import Console

import rlm
from rlm.telemetry import ConsoleView
from rlm.testing import FunctionModel, ScriptedModel


def screen(width: int = 100, terminal: bool = False) -> tuple[Console, io.StringIO]:
    buffer = io.StringIO()
    return Console(file=buffer, width=width, force_terminal=terminal, color_system=None), buffer


def test_iterations_code_output_subcalls_and_summary_are_shown(tree):
    console, buffer = screen()
    root, sub = tree
    result = rlm.run(
        "Summarise the parts",
        "some context text",
        model=root,
        sub_model=sub,
        max_depth=2,
        repl="inprocess",
        on_event=ConsoleView(console),
    )
    text = buffer.getvalue()
    for expected in (
        "Summarise the parts",
        "iteration 1",
        "iteration 2",
        "llm_query_batched(['part a', 'part b', 'part c'])",  # the code
        "17",  # what it printed
        "llm_query_batched × 3 → sub-model · 3 ok",  # the batch
        "child run",
        "rlm_query → sub-model · ok",
        "final answer",
        "all done",
    ):
        assert expected in text, expected
    summary = text[text.index(f"rlm run {result.run_id[:8]}", len(text) // 2) :]
    for row in ("stop reason", "final", "iterations", "sub-calls", "input tokens", "cost", "time"):
        assert row in summary
    assert f"{result.total_input_tokens:,}" in summary
    assert "root-model" in summary and "sub-model" in summary  # usage by model


def test_errors_and_failed_runs_are_shown():
    console, buffer = screen()
    code = "```repl\n1 / 0\n```"
    model = ScriptedModel([code, rlm.errors.ProviderUnavailableError("the provider is down")])
    with pytest.raises(rlm.errors.ProviderUnavailableError):
        rlm.run("q", "c", model=model, repl="inprocess", on_event=ConsoleView(console))
    text = buffer.getvalue()
    assert "ZeroDivisionError" in text
    assert "run failed" in text and "the provider is down" in text


def test_model_markup_is_shown_literally():
    console, buffer = screen()
    code = "```repl\nprint('[bold red]not markup[/]')\n```"
    rlm.run(
        "q",
        "c",
        model=ScriptedModel([code, "FINAL([link=x]y[/link])"]),
        repl="inprocess",
        on_event=ConsoleView(console),
    )
    text = buffer.getvalue()
    assert "[bold red]not markup[/]" in text
    assert "[link=x]y[/link]" in text


def test_verbose_writes_to_stderr_not_stdout(capsys):
    rlm.run("q", "c", model=ScriptedModel(["FINAL(done)"]), repl="inprocess", verbose=True)
    out, err = capsys.readouterr()
    assert out == ""
    assert "final answer" in err and "stop reason" in err


def test_the_view_never_ends_up_in_the_models_output(capsys):
    # Sub-call events are emitted while the REPL captures the block's stdout/stderr; the
    # view must still draw on the terminal, not into what the model reads back.
    root = ScriptedModel(["```repl\nprint(llm_query('hi'))\n```", "FINAL(ok)"])
    result = rlm.run(
        "q",
        "c",
        model=root,
        sub_model=FunctionModel(lambda r: "hello"),
        repl="inprocess",
        verbose=True,
    )
    execution = result.history[0].executions[0]
    assert (execution.stdout, execution.stderr) == ("hello\n", "")
    assert "llm_query → function · ok" in capsys.readouterr().err


async def test_the_live_display_serves_concurrent_runs():
    console, buffer = screen(terminal=True)
    view = ConsoleView(console)
    code = "```repl\nxs = llm_query_batched(['a', 'b', 'c', 'd'])\nprint(len(xs))\n```"

    def root(request):
        return "FINAL(ok)" if len(request.messages) > 2 else code

    engine = rlm.RLM(
        FunctionModel(root, latency_s=0.005),
        FunctionModel(lambda r: "x", latency_s=0.005),
        repl="inprocess",
        on_event=view,
    )
    results = await asyncio.gather(*(engine.arun(f"q{i}", "c") for i in range(5)))
    assert all(r.answer == "ok" for r in results)
    assert view.live and view._live is None  # started for the runs, stopped after them
    assert buffer.getvalue().count("stop reason") == 5
