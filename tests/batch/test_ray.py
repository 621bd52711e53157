"""Batches on the Ray executor, on a real local Ray instance (started once for this module)
and the fake LLM server."""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

ray = pytest.importorskip("ray")
from ray import cloudpickle  # noqa: E402

import rlm  # noqa: E402
from rlm.providers.base import ModelRequest  # noqa: E402
from rlm.providers.openai import OpenAIModel  # noqa: E402
from rlm.testing import FunctionModel  # noqa: E402
from rlm.testing.server import FakeLLMServer, RecordedRequest  # noqa: E402

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module", autouse=True)
def ray_instance() -> Iterator[None]:
    # The functions below travel by value: workers cannot import this test module.
    cloudpickle.register_pickle_by_value(sys.modules[__name__])
    for attempt in (1, 2):
        try:
            ray.init(
                num_cpus=2, include_dashboard=False, logging_level="ERROR", log_to_driver=False
            )
            break
        except Exception:  # Ray gives a raylet 30 s to register: a busy machine can miss it
            ray.shutdown()
            if attempt == 2:
                raise
    yield
    ray.shutdown()
    cloudpickle.unregister_pickle_by_value(sys.modules[__name__])


def answer_from_wire(request: RecordedRequest) -> str:
    """The fake server's model: measure the context, then answer `<query>:<size>`."""
    messages = request.json["messages"]
    query = messages[1]["content"].splitlines()[0].removeprefix("Query: ")
    if len(messages) <= 2:
        return "```repl\nn = len(context)\nprint(n)\n```"
    size = next(w for w in messages[-1]["content"].split() if w.isdigit())
    return f"FINAL({query}:{size})"


def items(n: int, context: object = "ctx") -> list[rlm.BatchItem]:
    return [rlm.BatchItem(query=f"q-{i}", context=context, id=f"item-{i}") for i in range(n)]


def test_runs_go_to_ray_tasks_with_one_object_store_copy_of_a_shared_context(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    puts: list[type] = []
    real_put = ray.put
    monkeypatch.setattr(ray, "put", lambda value, **kw: puts.append(type(value)) or real_put(value))
    big = "x" * 300_000
    with FakeLLMServer(handler=answer_from_wire) as server:
        model = OpenAIModel("fake-model", base_url=server.openai_base_url)  # pickled
        report = rlm.batch(
            items(3, big),
            model,
            executor=rlm.RayExecutor(num_cpus_per_run=0.5),
            max_parallel_runs=4,
            results=tmp_path / "out.jsonl",
        )
        requests = len(server.requests)
    assert report.failed == () and report.retried == {}, [f.error for f in report.failed]
    assert report.answers == [f"q-{i}:300000" for i in range(3)], report.results
    assert requests == 6
    assert puts.count(str) == 1  # the context went to the object store once
    assert len((tmp_path / "out.jsonl").read_text().splitlines()) == 3
    assert report.usage["fake-model"].usage.requests == 6


def test_a_model_string_is_resolved_on_the_worker_from_its_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    with FakeLLMServer(handler=answer_from_wire) as server:
        env = {"OPENAI_BASE_URL": server.openai_base_url, "OPENAI_API_KEY": "sk-worker"}
        report = rlm.batch(
            items(2),
            "openai/gpt-4o-mini",  # the driver has no key for it: only the workers do
            executor=rlm.RayExecutor(runtime_env={"env_vars": env}, num_cpus_per_run=0.5),
            repl="inprocess",
        )
        keys = {r.headers.get("authorization") for r in server.requests}
    assert report.answers == ["q-0:3", "q-1:3"]
    assert keys == {"Bearer sk-worker"}


def test_the_total_budget_holds_across_the_cluster() -> None:
    def never_done(request: ModelRequest) -> str:
        return "```repl\nprint(1)\n```"

    limit = 4_000
    report = rlm.batch(
        items(8),
        FunctionModel(never_done, latency_s=0.01),
        executor=rlm.RayExecutor(num_cpus_per_run=0.5),
        max_parallel_runs=2,
        max_iterations=100,
        repl="inprocess",
        total_budget=rlm.Budget(max_tokens=limit),
    )
    ran = [r for r in report.results if r is not None]
    assert ran and all(r.stop_reason == "budget" for r in ran)
    assert report.not_run
    spent = report.total_usage.total_tokens
    # Two runs in flight, each at most one call past the limit plus one round trip late.
    assert limit <= spent <= limit + 4 * max(r.total_usage.total_tokens for r in ran)


def kill_own_worker_once(marker: str) -> Any:
    def reply(request: ModelRequest) -> str:
        query = request.messages[1].content.splitlines()[0].removeprefix("Query: ")
        if query == "q-1" and not os.path.exists(marker):
            Path(marker).write_text("killed")
            os.kill(os.getpid(), signal.SIGKILL)  # the Ray worker process dies mid-run
        if query == "q-2":
            os.kill(os.getpid(), signal.SIGKILL)  # every time: retries run out
        return f"FINAL({query})"

    return reply


def test_a_killed_worker_is_retried_and_reported(tmp_path: Path) -> None:
    report = rlm.batch(
        items(4),
        FunctionModel(kill_own_worker_once(str(tmp_path / "killed"))),
        executor=rlm.RayExecutor(num_cpus_per_run=0.5, max_retries=1),
        repl="inprocess",
        results=tmp_path / "out.jsonl",
    )
    assert report.answers == ["q-0", "q-1", None, "q-3"]
    assert report.retried == {"item-1": 2, "item-2": 2}
    assert [f.id for f in report.failed] == ["item-2"]
    assert "Worker" in report.failed[0].error or "died" in report.failed[0].error


async def test_rlm_eval_runs_its_attempts_on_ray() -> None:
    from rlm.evals import get_task
    from rlm.evals.runner import evaluate

    def solver(request: ModelRequest) -> str:
        return (
            "```repl\nimport re\ntotal = sum(int(m.replace(',', '')) for m in re.findall("
            "r'Department: Engineering .*?Salary: \\$([\\d,]+)', context))\nFINAL(total)\n```"
        )

    rows = await evaluate(
        get_task("salary"),
        model=FunctionModel(solver),
        sizes=[30],
        runs=2,
        repl="inprocess",
        executor=rlm.RayExecutor(num_cpus_per_run=0.5),
    )
    assert [r.seed for r in rows] == [0, 1]
    assert all(r.rlm.score == 1.0 for r in rows), [r.rlm for r in rows]
