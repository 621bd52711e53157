"""The loop as a user sees it: scripted models drive real runs through the in-process REPL."""

from __future__ import annotations

import asyncio
import threading

import pytest

import rlm
from rlm import ModelRequest
from rlm.errors import ScriptError, UnknownModelError
from rlm.events import Event, ModelCallFinished
from rlm.testing import FunctionModel, ScriptedModel


def code(src: str) -> str:
    return f"```repl\n{src}\n```"


def run(steps: list[object], context: object = "abc", **kwargs: object) -> rlm.RLMResult:
    kwargs.setdefault("repl", "inprocess")
    model = kwargs.pop("model", None) or ScriptedModel(steps)  # type: ignore[arg-type]
    return rlm.run("What?", context, model=model, **kwargs)  # type: ignore[arg-type]


def last_user_message(request: ModelRequest) -> str:
    return request.messages[-1].content


def test_context_is_described_not_sent() -> None:
    context = "secret-data " * 20_000
    model = ScriptedModel([code("print(len(context))"), "FINAL(done)"])
    result = rlm.run("How long?", context, model=model, repl="inprocess")
    assert result.answer == "done"
    first = model.calls[0]
    assert first.messages[0].role == "system"
    user = first.messages[1].content
    assert "str" in user and f"{len(context):,}" in user
    assert "secret-data" in user  # the preview
    for call in model.calls:
        assert sum(len(m.content) for m in call.messages) < 10_000
    assert str(len(context)) in last_user_message(model.calls[1])


def test_system_prompt_is_short_and_names_every_helper() -> None:
    model = ScriptedModel(["FINAL(x)"])
    rlm.run("q", "c", model=model, repl="inprocess")
    system = model.calls[0].messages[0].content
    assert len(system) < 4000
    for name in (*rlm.repl.HELPER_NAMES, "context"):
        assert name in system


def test_blocks_share_one_namespace_and_run_in_order() -> None:
    model = ScriptedModel(
        [
            "```repl\nx = 2\n```\n```python\nx = x * 10\nprint('x is', x)\n```",
            "FINAL_VAR(x)",
        ]
    )
    result = rlm.run("q", "c", model=model, repl="inprocess")
    assert result.answer == "20"
    assert "x is 20" in last_user_message(model.calls[1])
    assert result.code_executions == 2


def test_errors_go_back_with_line_numbers_and_variables_survive() -> None:
    model = ScriptedModel(
        [
            code("kept = 41\n\nboom = 1 / 0"),
            code("print(kept + 1)"),
            "FINAL(ok)",
        ]
    )
    result = rlm.run("q", "c", model=model, repl="inprocess")
    feedback = last_user_message(model.calls[1])
    assert "ZeroDivisionError" in feedback
    assert "line 3" in feedback and "boom = 1 / 0" in feedback
    assert "rlm/repl" not in feedback  # our frames are not shown
    assert "42" in last_user_message(model.calls[2])
    assert result.history[0].executions[0].error is not None


def test_reply_without_code_or_marker_gets_a_reminder() -> None:
    model = ScriptedModel(["Let me think about it.", "FINAL(1)"])
    rlm.run("q", "c", model=model, repl="inprocess")
    reminder = last_user_message(model.calls[1])
    assert "```repl" in reminder and "FINAL(" in reminder


def test_long_output_is_cut_head_and_tail_with_true_length() -> None:
    model = ScriptedModel([code("print('A' * 50_000 + 'Z' * 50_000)"), "FINAL(1)"])
    rlm.run("q", "c", model=model, repl="inprocess", max_output_chars=2_000)
    feedback = last_user_message(model.calls[1])
    assert len(feedback) < 3_000
    assert feedback.count("A") > 500 and feedback.count("Z") > 300
    assert "100,001 characters" in feedback


def test_trailing_expression_is_shown() -> None:
    model = ScriptedModel([code("len(context) * 2"), "FINAL(1)"])
    rlm.run("q", "abcd", model=model, repl="inprocess")
    assert "8" in last_user_message(model.calls[1])


def test_overwritten_helpers_are_restored() -> None:
    model = ScriptedModel(
        [
            code("llm_query = 'oops'\nFINAL = None"),
            code("print(type(llm_query).__name__)\nFINAL('restored')"),
        ]
    )
    result = rlm.run(
        "q", "c", model=model, sub_model=FunctionModel(lambda r: "s"), repl="inprocess"
    )
    assert "restored" in last_user_message(model.calls[1])
    assert result.answer == "restored"


def test_final_in_code_and_final_var_see_new_variables() -> None:
    result = run([code("FINAL(6 * 7)")])
    assert (result.answer, result.stop_reason) == ("42", "final")
    result = run(["```repl\ntotal = sum(range(5))\n```\nFINAL_VAR(total)"])
    assert result.answer == "10"
    assert result.iterations == 1


def test_final_var_of_missing_name_lists_variables() -> None:
    model = ScriptedModel([code("alpha = 1\nbeta = 2"), "FINAL_VAR(gamma)", "FINAL_VAR(beta)"])
    result = rlm.run("q", "c", model=model, repl="inprocess")
    told = last_user_message(model.calls[2])
    assert "gamma" in told and "alpha" in told and "beta" in told
    assert result.answer == "2"


def test_final_var_called_in_code_with_missing_name() -> None:
    model = ScriptedModel([code("FINAL_VAR('nope')"), "FINAL(fine)"])
    result = rlm.run("q", "c", model=model, repl="inprocess")
    assert "no variable named 'nope'" in last_user_message(model.calls[1])
    assert result.answer == "fine"


def test_max_iterations_asks_once_for_the_answer() -> None:
    model = ScriptedModel([code("x = 1"), code("x += 1"), "My best guess: FINAL(2)"])
    result = rlm.run("q", "c", model=model, repl="inprocess", max_iterations=2)
    assert result.stop_reason == "max_iterations"
    assert result.answer == "2"
    assert result.iterations == 2
    assert model.calls[-1].purpose == "final"
    assert "out of iterations" in last_user_message(model.calls[-1])
    model.assert_exhausted()


def test_max_iterations_final_ask_failure_is_not_an_answer() -> None:
    model = ScriptedModel([code("x = 1"), rlm.errors.ProviderUnavailableError("down")])
    result = rlm.run("q", "c", model=model, repl="inprocess", max_iterations=1)
    assert result.stop_reason == "max_iterations"
    assert result.answer is None
    assert not result.ok


def test_llm_query_and_usage_roll_up() -> None:
    sub = FunctionModel(lambda r: r.messages[-1].content.upper(), name="sub")
    model = ScriptedModel([code("print(llm_query('hello'))"), "FINAL(ok)"], name="root")
    result = rlm.run("q", "c", model=model, sub_model=sub, repl="inprocess")
    assert "HELLO" in last_user_message(model.calls[1])
    assert result.sub_calls == 1
    assert set(result.usage) == {"root", "sub"}
    assert result.usage["sub"].usage.requests == 1
    assert result.total_input_tokens == sum(u.usage.input_tokens for u in result.usage.values())
    assert result.total_output_tokens == sum(u.usage.output_tokens for u in result.usage.values())
    assert result.cost_usd is None  # no price for scripted models


def test_cost_is_reported_when_a_price_is_known() -> None:
    rlm.set_price("priced-test-model", rlm.Price(input=1.0, output=2.0))
    model = ScriptedModel(["FINAL(1)"], name="priced-test-model")
    result = rlm.run("q", "c", model=model, repl="inprocess")
    usage = result.usage["priced-test-model"].usage
    expected = (usage.input_tokens * 1.0 + usage.output_tokens * 2.0) / 1e6
    assert result.cost_usd == pytest.approx(expected)


def test_batched_keeps_order_reports_failures_and_respects_concurrency() -> None:
    in_flight = 0
    peak = 0

    async def answer(request: ModelRequest) -> str:
        nonlocal in_flight, peak
        in_flight += 1
        peak = max(peak, in_flight)
        await asyncio.sleep(0.01)
        in_flight -= 1
        prompt = request.messages[-1].content
        if prompt == "p3":
            raise rlm.errors.BadRequestError("refused")
        return prompt.upper()

    model = ScriptedModel(
        [
            code("out = llm_query_batched([f'p{i}' for i in range(10)])\nprint(out)"),
            "FINAL(done)",
        ]
    )
    result = rlm.run(
        "q", "c", model=model, sub_model=FunctionModel(answer), repl="inprocess", max_concurrency=3
    )
    feedback = last_user_message(model.calls[1])
    assert "'P0', 'P1', 'P2', '[error: BadRequestError: refused]', 'P4'" in feedback
    assert peak == 3
    assert result.sub_calls == 10


def test_single_llm_query_failure_raises_in_the_code() -> None:
    def fail(request: ModelRequest) -> str:
        raise rlm.errors.ProviderUnavailableError("sub-model down")

    model = ScriptedModel([code("llm_query('x')"), "FINAL(1)"])
    rlm.run("q", "c", model=model, sub_model=FunctionModel(fail), repl="inprocess")
    feedback = last_user_message(model.calls[1])
    assert "LLMQueryError" in feedback and "sub-model down" in feedback


def test_two_runs_in_two_threads_keep_their_output_apart() -> None:
    results: dict[str, str] = {}
    barrier = threading.Barrier(2)

    def worker(tag: str) -> None:
        def step(request: ModelRequest) -> str:
            barrier.wait(timeout=5)
            return code(
                f"import sys\nfor i in range(300):\n    print('{tag}', i)\n"
                f"    sys.stdout.write('{tag}-w\\n')"
            )

        model = ScriptedModel([step, "FINAL(ok)"])
        rlm.run("q", "c", model=model, repl="inprocess")
        results[tag] = last_user_message(model.calls[1])

    threads = [threading.Thread(target=worker, args=(t,)) for t in ("AAA", "BBB")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert "AAA" in results["AAA"] and "BBB" not in results["AAA"]
    assert "BBB" in results["BBB"] and "AAA" not in results["BBB"]


def test_engine_is_reusable_across_threads() -> None:
    engine = rlm.RLM(FunctionModel(lambda r: "FINAL(same)"), repl="inprocess")
    answers: list[str | None] = []
    threads = [
        threading.Thread(target=lambda: answers.append(engine.run("q", "c").answer))
        for _ in range(4)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert answers == ["same"] * 4


async def test_arun_and_run_inside_a_running_loop() -> None:
    result = await rlm.arun("q", "c", model=ScriptedModel(["FINAL(a)"]), repl="inprocess")
    assert result.answer == "a"
    # A blocking run() from async code (e.g. a notebook) must not fail on the running loop.
    sync = rlm.run("q", "c", model=ScriptedModel(["FINAL(b)"]), repl="inprocess")
    assert sync.answer == "b"


def test_contexts_of_other_types() -> None:
    for context, check in [
        (["a", "bb", "ccc"], "print(sum(len(x) for x in context))"),
        ({"k": [1, 2, 3]}, "print(sum(context['k']))"),
    ]:
        model = ScriptedModel([code(check), "FINAL(1)"])
        rlm.run("q", context, model=model, repl="inprocess")
        assert "6" in last_user_message(model.calls[1])
        assert type(context).__name__ in model.calls[0].messages[1].content


def test_unknown_model_string_names_the_prefixes() -> None:
    with pytest.raises(UnknownModelError) as info:
        rlm.run("q", "c", model="nosuch/model-x")
    assert "'openai/'" in str(info.value) and "'anthropic/'" in str(info.value)


def test_bad_arguments_are_clear() -> None:
    model = ScriptedModel([])
    with pytest.raises(rlm.ConfigurationError, match="max_iterations"):
        rlm.RLM(model, max_iterations=0)
    with pytest.raises(rlm.ConfigurationError, match="query"):
        rlm.RLM(model, repl="inprocess").run("", "c")
    with pytest.raises(rlm.ConfigurationError, match="repl"):
        rlm.RLM(model, repl="docker")  # type: ignore[arg-type]
    with pytest.raises(UnknownModelError, match="complete"):
        rlm.RLM(object())  # type: ignore[arg-type]


def test_scripted_model_fails_loudly_and_keeps_the_partial_result() -> None:
    model = ScriptedModel([code("x = 1")])
    with pytest.raises(ScriptError, match="ran out of steps") as info:
        rlm.run("q", "c", model=model, repl="inprocess")
    partial = info.value.result
    assert partial is not None and partial.stop_reason == "error"
    assert partial.iterations == 2 and partial.code_executions == 1
    leftover = ScriptedModel(["FINAL(1)", "unused"])
    rlm.run("q", "c", model=leftover, repl="inprocess")
    with pytest.raises(ScriptError, match="1 unused step"):
        leftover.assert_exhausted()


def test_scripted_model_steps_can_be_callables_and_exceptions() -> None:
    events: list[Event] = []
    model = ScriptedModel(
        [
            lambda request: code(f"print({len(request.messages)})"),
            ValueError("scripted failure"),
        ]
    )
    with pytest.raises(ValueError, match="scripted failure"):
        rlm.run("q", "c", model=model, repl="inprocess", on_event=events.append)
    assert "2" in last_user_message(model.calls[1])
    failed = [e for e in events if isinstance(e, ModelCallFinished) and e.error_type]
    assert failed and failed[0].error == "scripted failure"
    assert events[-1].kind == "run_failed"


def test_host_printing_during_a_subcall_stays_out_of_the_models_output(
    capsys: pytest.CaptureFixture[str],
) -> None:
    def noisy_subscriber(event: Event) -> None:
        if event.kind == "subcall_started":
            print("HOST-SIDE LOG LINE")

    model = ScriptedModel([code("print(llm_query('x'))"), "FINAL(1)"])
    rlm.run(
        "q",
        "c",
        model=model,
        sub_model=FunctionModel(lambda r: "sub-answer"),
        repl="inprocess",
        on_event=noisy_subscriber,
    )
    feedback = last_user_message(model.calls[1])
    assert "sub-answer" in feedback and "HOST-SIDE" not in feedback
    assert "HOST-SIDE LOG LINE" in capsys.readouterr().out


def test_iterating_a_stream_without_async_for_says_what_to_do() -> None:
    model = ScriptedModel(["FINAL(1)"])
    events = rlm.stream("q", "c", model=model, repl="inprocess")
    with pytest.raises(TypeError, match="async for"):
        for _ in events:
            pass
    assert model.calls == []  # nothing started
