"""OpenTelemetry spans: names, kinds, parent links, attributes, errors, content opt-in."""

from __future__ import annotations

import asyncio
import json

import pytest
from opentelemetry import trace
from opentelemetry.trace import SpanKind, StatusCode

import rlm
from rlm.errors import RateLimitError
from rlm.providers.anthropic import AnthropicModel
from rlm.providers.base import ModelRequest, ModelResponse, Usage
from rlm.providers.openai import OpenAIModel
from rlm.telemetry import OTelSubscriber, default_subscribers
from rlm.telemetry import semconv as sc
from rlm.testing import FunctionModel, ScriptedModel
from rlm.testing.server import FakeLLMServer, RawReply


def run_tree(spans, tree, **kwargs):
    root, sub = tree
    return rlm.run(
        "Summarise the parts",
        "some context text",
        model=root,
        sub_model=sub,
        max_depth=2,
        repl="inprocess",
        on_event=OTelSubscriber(tracer_provider=spans.provider, **kwargs),
    )


def test_a_run_tree_becomes_nested_spans(spans, tree):
    result = run_tree(spans, tree)
    assert result.answer == "all done"

    runs = spans.named("invoke_agent")
    assert [s.name for s in runs] == ["invoke_agent rlm", "invoke_agent rlm"]
    root_run, child_run = runs
    assert spans.parent_of(root_run) is None
    assert all(s.kind is SpanKind.INTERNAL for s in runs)

    codes = spans.named("execute_tool")
    assert all(s.kind is SpanKind.INTERNAL and s.name == "execute_tool repl" for s in codes)
    root_code = [c for c in codes if spans.parent_of(c) is root_run]
    assert len(root_code) == 1  # the second reply is a text FINAL, no code
    child_code = [c for c in codes if spans.parent_of(c) is child_run]
    assert len(child_code) == 1

    # The child run hangs under the code block that called rlm_query.
    assert spans.parent_of(child_run) is root_code[0]

    chats = spans.named("chat")
    assert all(s.kind is SpanKind.CLIENT for s in chats)
    by_parent: dict[str, list[str]] = {}
    for chat in chats:
        parent = spans.parent_of(chat)
        assert parent is not None
        key = "root run" if parent is root_run else "root code" if parent is root_code[0] else ""
        key = key or ("child run" if parent is child_run else "child code")
        by_parent.setdefault(key, []).append(chat.name)
    assert by_parent == {
        "root run": ["chat root-model", "chat root-model"],
        "root code": ["chat sub-model"] * 3,  # the batch
        "child run": ["chat sub-model"],
        "child code": ["chat sub-model"],
    }
    # One trace for the whole tree.
    assert len({s.context.trace_id for s in spans.finished}) == 1


def test_batched_subcalls_are_siblings_with_their_batch_position(spans):
    code = "```repl\nout = llm_query_batched([f'item {i}' for i in range(5)])\nprint(out)\n```"
    root = ScriptedModel([code, "FINAL(ok)"], name="root-model")
    # Latency makes the five calls overlap, so their events interleave.
    sub = FunctionModel(lambda r: r.messages[-1].content.upper(), name="sub", latency_s=0.01)
    rlm.run(
        "q",
        "ctx",
        model=root,
        sub_model=sub,
        repl="inprocess",
        on_event=OTelSubscriber(tracer_provider=spans.provider),
    )
    (code_span,) = spans.named("execute_tool")
    batch = [s for s in spans.named("chat sub") if spans.parent_of(s) is code_span]
    assert len(batch) == 5
    assert sorted(s.attributes[sc.RLM_BATCH_INDEX] for s in batch) == [0, 1, 2, 3, 4]
    assert {s.attributes[sc.RLM_BATCH_SIZE] for s in batch} == {5}
    assert len({s.attributes[sc.RLM_SUBCALL_ID] for s in batch}) == 5


def test_genai_and_rlm_attributes(spans):
    reply = ModelResponse(
        text="```repl\nprint(1 + 1)\n```",
        usage=Usage(
            input_tokens=120,
            output_tokens=30,
            cache_read_tokens=100,
            cache_write_tokens=7,
            reasoning_tokens=11,
            requests=1,
        ),
        model="root-model-2025-01-01",
        finish_reason="stop",
    )
    root = ScriptedModel([reply, "FINAL(2)"], name="root-model")
    result = rlm.run(
        "q",
        "ctx",
        model=root,
        repl="inprocess",
        on_event=OTelSubscriber(tracer_provider=spans.provider),
    )
    first_chat = spans.named("chat")[0]
    attrs = dict(first_chat.attributes or {})
    assert attrs[sc.GEN_AI_OPERATION_NAME] == "chat"
    assert attrs[sc.GEN_AI_PROVIDER_NAME] == "scripted"
    assert attrs[sc.GEN_AI_REQUEST_MODEL] == "root-model"
    assert attrs[sc.GEN_AI_RESPONSE_MODEL] == "root-model-2025-01-01"
    assert attrs[sc.GEN_AI_RESPONSE_FINISH_REASONS] == ("stop",)
    assert attrs[sc.GEN_AI_USAGE_INPUT_TOKENS] == 120
    assert attrs[sc.GEN_AI_USAGE_OUTPUT_TOKENS] == 30
    assert attrs[sc.GEN_AI_USAGE_CACHE_READ_INPUT_TOKENS] == 100
    assert attrs[sc.GEN_AI_USAGE_CACHE_CREATION_INPUT_TOKENS] == 7
    assert attrs[sc.GEN_AI_USAGE_REASONING_OUTPUT_TOKENS] == 11
    assert attrs[sc.RLM_ITERATION] == 1
    assert attrs[sc.RLM_PURPOSE] == "root"

    (run_span,) = spans.named("invoke_agent")
    run_attrs = dict(run_span.attributes or {})
    assert run_attrs[sc.GEN_AI_OPERATION_NAME] == "invoke_agent"
    assert run_attrs[sc.GEN_AI_AGENT_NAME] == "rlm"
    assert run_attrs[sc.RLM_RUN_ID] == result.run_id
    assert run_attrs[sc.RLM_DEPTH] == 0
    assert run_attrs[sc.RLM_STOP_REASON] == "final"
    assert run_attrs[sc.RLM_ITERATIONS] == 2
    assert run_attrs[sc.RLM_USAGE_INPUT_TOKENS] == result.total_input_tokens
    # Tree totals stay off gen_ai.usage.* so backends summing a trace do not double count.
    assert sc.GEN_AI_USAGE_INPUT_TOKENS not in run_attrs
    assert [e.name for e in run_span.events].count(sc.EVENT_ITERATION) == 2

    (code_span,) = spans.named("execute_tool")
    code_attrs = dict(code_span.attributes or {})
    assert code_attrs[sc.GEN_AI_TOOL_NAME] == "repl"
    assert code_attrs[sc.RLM_ITERATION] == 1
    assert code_span.status.status_code is StatusCode.UNSET


def test_a_model_call_span_names_the_server_the_request_and_the_reply(spans):
    completion = {
        "id": "chatcmpl-from-the-server",
        "object": "chat.completion",
        "model": "gpt-4o-mini",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": "```repl\nx = 2\n```"},
                "finish_reason": "stop",
            }
        ],
    }
    with FakeLLMServer([RawReply(json.dumps(completion)), "FINAL(2)"]) as server:
        model = OpenAIModel(
            "gpt-4o-mini",
            base_url=server.openai_base_url,
            temperature=0.25,
            max_output_tokens=256,
        )
        rlm.run(
            "q",
            "ctx",
            model=model,
            repl="inprocess",
            on_event=OTelSubscriber(tracer_provider=spans.provider),
        )
        port = server.port

    first, second = (dict(s.attributes or {}) for s in spans.named("chat"))
    assert first[sc.SERVER_ADDRESS] == "127.0.0.1"
    assert first[sc.SERVER_PORT] == port
    assert first[sc.GEN_AI_REQUEST_TEMPERATURE] == 0.25
    assert first[sc.GEN_AI_REQUEST_MAX_TOKENS] == 256
    assert first[sc.GEN_AI_RESPONSE_ID] == "chatcmpl-from-the-server"
    assert second[sc.GEN_AI_RESPONSE_ID].startswith("chatcmpl-")
    assert second[sc.GEN_AI_RESPONSE_ID] != first[sc.GEN_AI_RESPONSE_ID]
    # No session: no conversation id (sessions set it through RunStarted.session_id).
    assert sc.GEN_AI_CONVERSATION_ID not in first


@pytest.mark.parametrize(
    ("api", "make", "prefix"),
    [
        ("responses", lambda url: OpenAIModel("m", base_url=url, api="responses"), "resp_"),
        ("anthropic", lambda url: AnthropicModel("m", base_url=url), "msg_"),
    ],
)
def test_every_adapter_reports_the_reply_id(spans, api, make, prefix):
    with FakeLLMServer(["FINAL(1)"]) as server:
        url = server.anthropic_base_url if api == "anthropic" else server.openai_base_url
        rlm.run(
            "q",
            "ctx",
            model=make(url),
            repl="inprocess",
            on_event=OTelSubscriber(tracer_provider=spans.provider),
        )

    (chat,) = spans.named("chat")
    assert str((chat.attributes or {})[sc.GEN_AI_RESPONSE_ID]).startswith(prefix)


def test_a_model_without_a_server_or_settings_leaves_those_attributes_out(spans):
    rlm.run(
        "q",
        "ctx",
        model=ScriptedModel(["FINAL(1)"]),
        repl="inprocess",
        on_event=OTelSubscriber(tracer_provider=spans.provider),
    )

    (chat,) = spans.named("chat")
    attrs = dict(chat.attributes or {})
    for name in (sc.SERVER_ADDRESS, sc.SERVER_PORT, sc.GEN_AI_REQUEST_TEMPERATURE):
        assert name not in attrs


def test_a_priced_model_puts_cost_on_spans(spans):
    rlm.set_price("priced-test-model", rlm.Price(input=1.0, output=2.0))
    root = ScriptedModel(["FINAL(yes)"], name="priced-test-model")
    result = rlm.run(
        "q", "c", model=root, repl="inprocess", on_event=OTelSubscriber(spans.provider)
    )
    assert result.cost_usd is not None
    (chat,) = spans.named("chat")
    (run_span,) = spans.named("invoke_agent")
    assert chat.attributes[sc.RLM_COST_USD] == pytest.approx(result.cost_usd)
    assert run_span.attributes[sc.RLM_COST_USD] == pytest.approx(result.cost_usd)


def test_a_failing_run_marks_its_spans_as_errors(spans):
    root = ScriptedModel([RateLimitError("slow down", model="root-model", status=429)])
    with pytest.raises(RateLimitError):
        rlm.run("q", "c", model=root, repl="inprocess", on_event=OTelSubscriber(spans.provider))
    (run_span,) = spans.named("invoke_agent")
    (chat,) = spans.named("chat")
    for span in (run_span, chat):
        assert span.status.status_code is StatusCode.ERROR
        assert span.attributes[sc.ERROR_TYPE] == "RateLimitError"
    assert "slow down" in (run_span.status.description or "")


def test_code_errors_mark_the_tool_span_without_leaking_the_message(spans):
    code = "```repl\nsecret = 'hunter2'\nraise ValueError(secret)\n```"
    root = ScriptedModel([code, "FINAL(gave up)"])
    rlm.run("q", "c", model=root, repl="inprocess", on_event=OTelSubscriber(spans.provider))
    (code_span,) = spans.named("execute_tool")
    assert code_span.status.status_code is StatusCode.ERROR
    assert code_span.attributes[sc.ERROR_TYPE] == "ValueError"
    everything = repr([(s.attributes, s.status.description, s.events) for s in spans.finished])
    assert "hunter2" not in everything


def test_content_is_recorded_only_on_opt_in(spans, monkeypatch):
    code = "```repl\nprint('the output ' + context)\n```"

    def run(**kwargs):
        spans.exporter.clear()
        root = ScriptedModel([code, "FINAL(answer text)"])
        rlm.run(
            "the query",
            "CTX",
            model=root,
            repl="inprocess",
            on_event=OTelSubscriber(spans.provider, **kwargs),
        )
        return repr([(s.attributes, [e.attributes for e in s.events]) for s in spans.finished])

    monkeypatch.delenv(sc.CAPTURE_CONTENT_ENV, raising=False)
    hidden = run()
    for text in ("the query", "the output CTX", "print(", "answer text"):
        assert text not in hidden

    shown = run(capture_content=True)
    for text in ("the query", "the output CTX", "print(", "answer text"):
        assert text in shown

    monkeypatch.setenv(sc.CAPTURE_CONTENT_ENV, "true")
    assert "the output CTX" in run()
    assert "the output CTX" not in run(capture_content=False)


def test_a_root_run_nests_under_the_callers_span(spans):
    tracer = spans.provider.get_tracer("app")
    with tracer.start_as_current_span("handle request") as outer:
        rlm.run(
            "q",
            "c",
            model=ScriptedModel(["FINAL(1)"]),
            repl="inprocess",
            on_event=OTelSubscriber(spans.provider),
        )
    (run_span,) = spans.named("invoke_agent")
    assert run_span.parent is not None
    assert run_span.parent.span_id == outer.get_span_context().span_id


async def test_the_model_call_span_is_current_while_the_provider_runs(spans):
    seen: list[int] = []

    def reply(request: ModelRequest) -> str:
        seen.append(trace.get_current_span().get_span_context().span_id)
        return "FINAL(done)"

    outer = trace.get_current_span()
    engine = rlm.RLM(
        FunctionModel(reply), repl="inprocess", on_event=OTelSubscriber(spans.provider)
    )
    await engine.arun("q", "c")
    (chat,) = spans.named("chat")
    assert seen == [chat.context.span_id]
    # Afterwards the caller's context is as it was.
    assert trace.get_current_span() is outer


async def test_a_cancelled_run_ends_its_open_spans_and_restores_the_context(spans):
    called = asyncio.Event()

    async def hang(request: ModelRequest) -> str:
        called.set()
        await asyncio.Event().wait()
        return "never"

    engine = rlm.RLM(FunctionModel(hang), repl="inprocess", on_event=OTelSubscriber(spans.provider))
    outer = trace.get_current_span()
    task = asyncio.ensure_future(engine.arun("q", "c"))
    await called.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    (chat,) = spans.named("chat")
    assert chat.status.status_code is StatusCode.ERROR
    assert chat.attributes[sc.ERROR_TYPE] == "cancelled"
    (run_span,) = spans.named("invoke_agent")
    assert run_span.attributes[sc.RLM_STOP_REASON] == "cancelled"
    assert trace.get_current_span() is outer


def test_the_global_tracer_provider_is_never_set(spans):
    before = trace.get_tracer_provider()
    rlm.run(
        "q",
        "c",
        model=ScriptedModel(["FINAL(1)"]),
        repl="inprocess",
        on_event=OTelSubscriber(spans.provider),
    )
    rlm.run("q", "c", model=ScriptedModel(["FINAL(1)"]), repl="inprocess")
    assert trace.get_tracer_provider() is before


def test_default_subscribers_trace_unless_the_user_brought_a_tracer(spans):
    def kinds(subscribers):  # metrics are on too once opentelemetry.metrics is loaded
        return [type(s).__name__ for s in subscribers if type(s).__name__ != "MetricsSubscriber"]

    assert kinds(default_subscribers()) == ["OTelSubscriber", "StructlogSubscriber"]
    mine = OTelSubscriber(spans.provider)
    assert kinds(default_subscribers([mine])) == ["StructlogSubscriber"]
    # ...so a run with its own subscriber yields exactly one span tree.
    rlm.run("q", "c", model=ScriptedModel(["FINAL(1)"]), repl="inprocess", on_event=mine)
    assert len(spans.named("invoke_agent")) == 1


async def test_blocking_run_inside_an_event_loop_still_nests_under_the_callers_span(spans):
    # rlm.run() called from async code runs on a helper thread; the caller's span must
    # follow it there.
    tracer = spans.provider.get_tracer("app")
    with tracer.start_as_current_span("async handler") as outer:
        rlm.run(
            "q",
            "c",
            model=ScriptedModel(["FINAL(1)"]),
            repl="inprocess",
            on_event=OTelSubscriber(spans.provider),
        )
    (run_span,) = spans.named("invoke_agent")
    assert run_span.parent is not None
    assert run_span.parent.span_id == outer.get_span_context().span_id


def test_a_sessions_turns_share_a_conversation_id(spans):
    model = ScriptedModel(["FINAL(1)", "FINAL(2)"])
    engine = rlm.RLM(model, repl="inprocess")
    with engine.session("c", on_event=OTelSubscriber(tracer_provider=spans.provider)) as chat:
        chat.run("one")
        chat.run("two")
    runs = spans.named(sc.SPAN_RUN)
    chats = spans.named("chat")
    assert len(runs) == 2 and len(chats) == 2
    for span in [*runs, *chats]:
        assert (span.attributes or {})[sc.GEN_AI_CONVERSATION_ID] == chat.session_id


def test_a_worker_past_a_host_bound_is_an_event_on_its_code_span(spans):
    import structlog

    from rlm.repl import SubprocessRepl
    from rlm.telemetry import StructlogSubscriber

    forged = "import os, sys\nos.write(int(sys.argv[3]), (300 << 20).to_bytes(4, 'big'))"
    root = ScriptedModel([f"```repl\n{forged}\n```", "FINAL(went on)"])
    with structlog.testing.capture_logs() as logged:
        result = rlm.run(
            "q",
            "c",
            model=root,
            repl=SubprocessRepl.factory(isolation="none"),
            on_event=[OTelSubscriber(spans.provider), StructlogSubscriber()],
        )
    assert result.answer == "went on"
    (code_span,) = spans.named("execute_tool")
    (event,) = [e for e in code_span.events if e.name == sc.EVENT_REPL_VIOLATION]
    assert event.attributes[sc.RLM_REPL_LIMIT] == "frame_bytes"
    (line,) = [entry for entry in logged if entry["event"] == "rlm.repl.violation"]
    assert line["limit"] == "frame_bytes" and line["log_level"] == "warning"
