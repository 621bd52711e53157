"""The trajectory viewer's page in a real headless Chromium (Debian's `chromium` package).

Checks that the page renders, that the tree expands on click (sub-calls under their code
block, child runs under their sub-call), that model output cannot inject markup or script,
that a 50 MB trajectory opens, and that nothing logs a console error. Writes the
screenshot used by the docs to docs/images/viewer.png.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

import rlm
from rlm.cli import main
from rlm.events import (
    CodeExecuted,
    CodeStarted,
    FinalAnswer,
    IterationStarted,
    ModelCallFinished,
    ModelCallStarted,
    RunFinished,
    RunStarted,
    SubcallFinished,
    SubcallStarted,
    event_to_json,
)
from rlm.providers.base import Usage
from rlm.result import RLMResult
from rlm.telemetry import TrajectoryRecorder
from rlm.testing import FunctionModel, ScriptedModel
from rlm.viewer import write_html

from .browser import Browser, find_chromium

DOCS_IMAGES = Path(__file__).resolve().parents[2] / "docs" / "images"
CHROMIUM = find_chromium()

pytestmark = pytest.mark.skipif(
    CHROMIUM is None,
    reason="chromium is not installed (apt-get install -y chromium) so the viewer's page "
    "cannot be checked in a browser",
)

HOSTILE = '</script><script>window.pwned = 1</script><img src=x onerror="window.pwned = 2">'


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Browser]:
    assert CHROMIUM is not None
    profile = tmp_path_factory.mktemp("chromium-profile")
    instance = Browser(CHROMIUM, profile)
    try:
        instance.open_page()
        yield instance
    finally:
        instance.close()
        shutil.rmtree(profile, ignore_errors=True)


def load(browser: Browser, page: Path) -> None:
    browser.events.clear()
    browser.navigate(page.resolve().as_uri())


def count(browser: Browser, selector: str) -> int:
    return int(browser.evaluate(f"document.querySelectorAll({json.dumps(selector)}).length"))


def click(browser: Browser, selector: str, index: int = 0) -> None:
    browser.evaluate(f"document.querySelectorAll({json.dumps(selector)})[{index}].click()")


def test_demo_trajectory_renders_and_expands(browser: Browser, tmp_path: Path) -> None:
    trajectory = tmp_path / "demo.jsonl"
    assert main(["demo", "--trajectory", str(trajectory), "--repl", "inprocess"]) == 0
    assert main(["view", str(trajectory)]) == 0
    load(browser, tmp_path / "demo.html")

    text = browser.evaluate("document.body.innerText")
    assert "What is the total salary of all Engineering employees?" in text
    assert "final answer" in text
    assert browser.evaluate("document.title").startswith("rlm · What is the total salary")
    # The root run is open; its iterations are closed, and built only when opened.
    assert count(browser, ".node.iteration") == 4
    assert count(browser, ".node.block") == 0

    click(browser, ".node.iteration > .head", 2)
    assert (
        browser.evaluate(
            "document.querySelectorAll('.node.iteration > .head')[2].getAttribute('aria-expanded')"
        )
        == "true"
    )
    assert count(browser, ".node.block") == 1
    assert count(browser, ".node.block .node.subcall") == 4  # under the code that made them
    assert count(browser, "pre.code .tok-helper") >= 1  # llm_query_batched is highlighted
    click(browser, ".node.subcall > .head", 0)
    subcall = browser.evaluate("document.querySelector('.node.subcall.open').innerText")
    assert "How many of these employee records are in the Engineering department?" in subcall
    assert "Employee #00001" in subcall

    assert browser.errors() == []

    # The docs' screenshot is refreshed on request (RLM_UPDATE_DOCS_IMAGES=1), so a
    # plain test run leaves the tracked image alone.
    shot_dir = DOCS_IMAGES if os.environ.get("RLM_UPDATE_DOCS_IMAGES") else tmp_path
    shot_dir.mkdir(parents=True, exist_ok=True)
    browser.evaluate("window.scrollTo(0, 0)")
    browser.resize(1280, 1250)
    try:
        browser.screenshot(shot_dir / "viewer.png")
    finally:
        browser.resize(1280, 900)
    assert (shot_dir / "viewer.png").stat().st_size > 10_000

    click(browser, ".node.iteration > .head", 1)
    assert count(browser, ".node.block") == 2

    click(browser, ".toolbar button", 1)  # collapse all
    assert count(browser, ".node.open") == 0


def test_child_runs_nest_and_model_output_cannot_inject_markup(
    browser: Browser, tmp_path: Path
) -> None:
    root = ScriptedModel(
        [
            f"Let me delegate. {HOSTILE}\n```repl\nreply = rlm_query('summarise: {HOSTILE}')\n"
            f"print(reply)\nprint({HOSTILE!r})\n```",
            "```repl\nraise ValueError('<b>not bold</b>')\n```",
            f"FINAL({HOSTILE})",
        ],
        name="root-model",
    )
    child = ScriptedModel([f"```repl\nFINAL('child says {HOSTILE}')\n```"], name="child-model")
    trajectory = tmp_path / "hostile.jsonl"
    with TrajectoryRecorder(trajectory) as recorder:
        result = rlm.run(
            f"Question {HOSTILE}",
            context=f"context {HOSTILE}",
            model=root,
            sub_model=child,
            max_depth=2,
            repl="inprocess",
            on_event=recorder,
        )
    assert result.answer == HOSTILE
    page = write_html(trajectory)
    html = page.read_text()
    assert html.count("<script") == 2  # the data island and the viewer, nothing else
    load(browser, page)

    click(browser, ".toolbar button", 0)  # expand all
    assert browser.evaluate("typeof window.pwned") == "undefined"
    assert count(browser, "img") == 0
    nested = ".node.iteration .node.block .node.subcall .node.run"
    assert count(browser, nested) == 1
    child_text = browser.evaluate(f"document.querySelector({json.dumps(nested)}).innerText")
    assert "Child run (depth 1)" in child_text
    assert f"child says {HOSTILE}" in child_text
    body = browser.evaluate("document.body.innerText")
    assert f"Question {HOSTILE}" in body  # shown as text, exactly
    assert "ValueError: <b>not bold</b>" in body
    assert count(browser, ".node.block .badge.bad") == 1  # the failed block is marked
    assert browser.errors() == []


def write_big_trajectory(path: Path, target_bytes: int) -> int:
    """A synthetic trajectory of `target_bytes`: iterations of 500-prompt batches."""
    run = "bigrun"
    code = "answers = llm_query_batched(prompts)\nprint(answers[:3])"
    iteration = 0
    with path.open("w", encoding="utf-8") as f:

        def w(event: rlm.Event) -> None:
            f.write(event_to_json(event) + "\n")

        w(RunStarted(run_id=run, query="Which chunk mentions the needle?", model="big",
                     sub_model="small", max_iterations=99, max_depth=1, context_type="str",
                     context_chars=40_000_000))  # fmt: skip
        while f.tell() < target_bytes:
            iteration += 1
            w(IterationStarted(run_id=run, iteration=iteration))
            w(ModelCallStarted(run_id=run, call_id=f"c{iteration}", model="big",
                               purpose="root", iteration=iteration, message_count=3,
                               prompt_chars=9_000, last_message="results " * 500))  # fmt: skip
            w(ModelCallFinished(run_id=run, call_id=f"c{iteration}", model="big",
                                purpose="root", usage=Usage(3_000, 80), cost_usd=0.01,
                                latency_s=2.0, text=f"```repl\n{code}\n```"))  # fmt: skip
            exec_id = f"e{iteration}"
            w(CodeStarted(run_id=run, exec_id=exec_id, iteration=iteration, index=1, code=code))
            for k in range(500):
                sid = f"s{iteration}-{k}"
                prompt = f"Chunk {k}: does it mention the needle? " + "<lorem> ipsum & " * 120
                w(SubcallStarted(run_id=run, subcall_id=sid, exec_id=exec_id, recursive=False,
                                 model="small", prompt=prompt, prompt_chars=len(prompt),
                                 batch_index=k, batch_size=500))  # fmt: skip
                w(ModelCallStarted(run_id=run, call_id=f"m{sid}", model="small",
                                   purpose="subcall", subcall_id=sid, message_count=1,
                                   prompt_chars=len(prompt), last_message=prompt))  # fmt: skip
                w(ModelCallFinished(run_id=run, call_id=f"m{sid}", model="small",
                                    purpose="subcall", subcall_id=sid, usage=Usage(600, 3),
                                    cost_usd=0.0001, latency_s=0.4, text="no"))  # fmt: skip
                w(SubcallFinished(run_id=run, subcall_id=sid, ok=True, response="no",
                                  response_chars=2, duration_s=0.4))  # fmt: skip
            w(CodeExecuted(run_id=run, exec_id=exec_id, iteration=iteration, index=1,
                           code=code, stdout="['no', 'no', 'no']\n", stderr="", error=None,
                           duration_s=5.0))  # fmt: skip
        w(FinalAnswer(run_id=run, answer="chunk 17", source="code", iteration=iteration))
        result = RLMResult(answer="chunk 17", stop_reason="final", iterations=iteration,
                           total_input_tokens=1, total_output_tokens=1, code_executions=iteration,
                           sub_calls=500 * iteration, history=())  # fmt: skip
        w(RunFinished(run_id=run, result=result))
    return iteration


@pytest.mark.slow
def test_a_50_mb_trajectory_opens_and_expands(browser: Browser, tmp_path: Path) -> None:
    trajectory = tmp_path / "big.jsonl"
    iterations = write_big_trajectory(trajectory, 50_000_000)
    assert trajectory.stat().st_size >= 50_000_000
    page = write_html(trajectory)
    load(browser, page)
    # Only what is open is in the DOM: a few nodes, not 200,000 sub-calls.
    assert count(browser, ".node.iteration") == min(iterations, 100)
    assert count(browser, ".node") < 200
    click(browser, ".node.iteration > .head", 0)
    assert count(browser, ".node.subcall") == 100  # the first page of 500
    click(browser, ".node.block .section > button.more", 0)
    assert count(browser, ".node.subcall") == 200
    click(browser, ".node.subcall > .head", 150)
    assert "does it mention the needle?" in browser.evaluate(
        "document.querySelector('.node.subcall.open').innerText"
    )
    assert browser.errors() == []


def test_a_sessions_turns_and_a_compaction_show(browser: Browser, tmp_path: Path) -> None:
    trajectory = tmp_path / "chat.jsonl"

    def reply(request: rlm.ModelRequest) -> str:
        if request.purpose == "compaction":
            return "The count is in `n`."
        last = request.messages[-1].content
        if "Query: how many?" in last and "compacted" not in last:
            return "```repl\nn = len(context)\nprint('.' * 3000)\n```"
        return "FINAL_VAR(n)"

    engine = rlm.RLM(FunctionModel(reply, name="m"), repl="inprocess", context_windows={"m": 1_200})
    with (
        TrajectoryRecorder(trajectory) as recorder,
        engine.session(context="abc", on_event=recorder) as chat,
    ):
        assert chat.run("how many?").answer == "3"
        chat.run("and again?")
    assert main(["view", str(trajectory)]) == 0
    load(browser, tmp_path / "chat.html")

    text = browser.evaluate("document.body.innerText")
    assert "Turn 1 of a session" in text and "Turn 2 of a session" in text
    click(browser, ".node.iteration > .head", 1)  # turn 1's second iteration compacted
    opened = browser.evaluate("document.querySelector('.node.iteration.open').innerText")
    assert "history compacted" in opened and "The count is in `n`." in opened
    assert browser.errors() == []
