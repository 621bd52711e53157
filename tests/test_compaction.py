"""History compaction: a run whose history outgrows a tiny window still finishes right."""

from __future__ import annotations

import re

import pytest
from _llm_harness import MODEL_KINDS, REPLS, Seen, code, harness, seen_by_model

import rlm
from rlm.compaction import SUMMARY_REQUEST, Compaction
from rlm.errors import ConfigurationError, ContextTooLongError
from rlm.events import Event, HistoryCompacted, ModelCallFinished, ModelCallStarted
from rlm.providers.base import Message, ModelRequest, ModelResponse, Usage
from rlm.testing import FunctionModel

NUMBERS = [(i * 37) % 101 for i in range(24)]
CHUNK = 3
FILLER = "." * 1_500  # printed by every block, so the history grows fast


def summing(seen: Seen) -> str:
    """Adds the context up a chunk per iteration, printing noise; it knows where it is
    only from the last message: a block's output, or its own summary after compaction."""
    done = [int(n) for n in re.findall(r"chunk (\d+) done", seen.last)]
    if SUMMARY_REQUEST[:40] in seen.last:
        done = [int(n) for n in re.findall(r"chunk (\d+) done", seen.text)]
        return f"The running sum is in the variable `total`; chunk {max(done)} done."
    step = max(done) + 1 if done else 0
    if step * CHUNK >= len(NUMBERS):
        return "FINAL_VAR(total)"
    add = "total + " if step else ""
    return code(
        f"total = {add}sum(context[{step * CHUNK}:{(step + 1) * CHUNK}])\nstep = {step}\n"
        f"print({FILLER!r})\nprint('chunk {step} done')"
    )


@pytest.mark.parametrize("repl", REPLS)
@pytest.mark.parametrize("kind", MODEL_KINDS)
def test_a_tiny_window_compacts_several_times_and_finishes_right(kind: str, repl: str) -> None:
    events: list[Event] = []
    with harness(kind, summing) as h:
        window = 1_500
        result = rlm.run(
            "What is the sum of the numbers?",
            NUMBERS,
            model=h.model,
            repl=repl,
            context_windows={h.name: window},
            on_event=events.append,
        )
    assert result.answer == str(sum(NUMBERS)) and result.stop_reason == "final"
    compactions = [e for e in events if isinstance(e, HistoryCompacted)]
    assert len(compactions) >= 2
    for event in compactions:
        assert event.window_tokens == window and event.threshold == 0.85
        assert event.tokens_after < event.tokens_before
        assert event.tokens_before > window * 0.85 > event.tokens_after
        assert "`total`" in event.summary
    purposes = [e.purpose for e in events if isinstance(e, ModelCallStarted)]
    assert purposes.count("compaction") == len(compactions)
    # The request after each summary carries it, and the query, in place of the history.
    for before, after in zip(h.requests, h.requests[1:], strict=False):
        if SUMMARY_REQUEST[:40] in before.last:
            assert "Query: What is the sum of the numbers?" in after.last
            assert "compacted into this summary" in after.last
            assert FILLER not in after.text


def test_compaction_can_be_turned_off_and_is_checked() -> None:
    events: list[Event] = []
    with harness("scripted", summing) as h:
        result = rlm.run(
            "sum",
            NUMBERS,
            model=h.model,
            repl="inprocess",
            context_windows={h.name: 1_500},
            compaction_threshold=None,
            on_event=events.append,
        )
    assert result.answer == str(sum(NUMBERS))
    assert not [e for e in events if isinstance(e, HistoryCompacted)]
    for bad in (0, 1.5, "85%", True):
        with pytest.raises(ConfigurationError, match="compaction_threshold"):
            rlm.RLM("openai/gpt-4o-mini", compaction_threshold=bad)  # type: ignore[arg-type]


def test_a_session_turn_compacts_and_the_next_turn_still_has_the_variables() -> None:
    def brain(seen: Seen) -> str:
        doubling = "Query: and doubled?" in seen.last
        return code("FINAL(total * 2)") if doubling else summing(seen)

    events: list[Event] = []
    with harness("scripted", brain) as h:
        engine = rlm.RLM(h.model, repl="subprocess", context_windows={h.name: 1_500})
        with engine.session(NUMBERS, on_event=events.append) as chat:
            assert chat.run("sum", context=["notes"]).answer == str(sum(NUMBERS))
            assert chat.run("and doubled?").answer == str(2 * sum(NUMBERS))
    assert any(isinstance(e, HistoryCompacted) for e in events)
    # After compaction the turn still knows which contexts the REPL holds.
    resumed = [s.last for s in h.requests if "compacted into this summary" in s.last]
    assert resumed and all("`context_1`" in last for last in resumed)
    assert {e.session_id for e in events} == {chat.session_id}


def test_the_summary_request_keeps_roles_alternating() -> None:
    compaction = Compaction(0.5, 100)
    history = [
        Message("system", "s" * 200),
        Message("user", "q"),
        Message("assistant", "a"),
        Message("user", "out"),
    ]
    assert compaction.needed(history) and not compaction.needed(history[:2])
    request = compaction.summary_request(history)
    assert [m.role for m in request] == ["system", "user", "assistant", "user"]
    assert request[-1].content.startswith("out") and SUMMARY_REQUEST in request[-1].content
    assert not Compaction(None, 100).needed(history) and not Compaction(0.5, None).needed(history)


def test_a_history_too_long_to_summarise_is_dropped_and_the_repl_still_knows() -> None:
    def brain(seen: Seen) -> str:
        if SUMMARY_REQUEST[:40] in seen.last:
            raise ContextTooLongError("the summary request is too long", model="brain")
        if "too long to summarise" in seen.last:
            return code("print(f'chunk {step} done')")  # the REPL remembers
        return summing(seen)

    events: list[Event] = []
    with harness("scripted", brain) as h:
        result = rlm.run(
            "sum",
            NUMBERS,
            model=h.model,
            repl="inprocess",
            context_windows={h.name: 1_500},
            on_event=events.append,
        )
    assert result.answer == str(sum(NUMBERS)) and result.stop_reason == "final"
    dropped = [e for e in events if isinstance(e, HistoryCompacted)]
    assert dropped and all("SHOW_VARS()" in e.summary for e in dropped)


def test_the_providers_token_count_is_trusted_over_the_character_estimate() -> None:
    compaction = Compaction(0.5, 1_000)
    history = [
        Message("system", "s" * 400),
        Message("user", "q"),
        Message("assistant", "a"),
        Message("user", "o" * 40),
    ]
    assert not compaction.needed(history)  # about 100 tokens by characters
    assert compaction.size(history, (3, 600)) == 600 + 10  # counted, plus what came since
    assert compaction.needed(history, (3, 600))
    assert not compaction.needed(history, (9, 600))  # a count of other messages is ignored


def test_a_model_that_counts_more_tokens_than_characters_suggest_is_compacted_in_time() -> None:
    # A tokenizer at one character a token: the character estimate alone would let the
    # history grow to four times the window.
    def reply(request: ModelRequest) -> ModelResponse:
        text = summing(seen_by_model(request))
        sent = sum(len(m.content) for m in request.messages)
        return ModelResponse(text, usage=Usage(input_tokens=sent, output_tokens=len(text)))

    events: list[Event] = []
    result = rlm.run(
        "sum",
        NUMBERS,
        model=FunctionModel(reply, name="dense"),
        repl="inprocess",
        context_windows={"dense": 6_000},
        on_event=events.append,
    )
    assert result.answer == str(sum(NUMBERS))
    compactions = [e for e in events if isinstance(e, HistoryCompacted)]
    assert compactions and all(e.tokens_before > 6_000 * 0.85 for e in compactions)
    # Every root request stayed inside the window as the model counts it.
    sizes = [
        e.usage.input_tokens
        for e in events
        if isinstance(e, ModelCallFinished) and e.purpose == "root"
    ]
    assert max(sizes) <= 6_000
