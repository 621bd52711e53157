"""Driver for this library, `rlm`, run with the project's own environment.

`params` may set `repl` ("subprocess", the default, or "inprocess") and
`max_concurrency` (default 16). With `fresh`, nothing is built before the first run
(only imported): the timed first run builds the model (its SDK client and TLS context)
and the engine (its sandbox worker) as a new process would. Otherwise one `OpenAIModel`
and one `RLM` serve every run, as the API intends (a model keeps one SDK client per
event loop, and blocking runs on one thread share a loop: the first run builds the
client and opens its connections, the later ones reuse them).

`RLM_BENCH_PROFILE=/path/prof.txt` profiles each run after the first with pyinstrument.
"""

from __future__ import annotations

import os
import time

from _common import REPORT, Args, PrepareFn, RunFn, main


def setup(args: Args) -> PrepareFn:
    import rlm
    from rlm.providers.openai import OpenAIModel

    def build() -> rlm.RLM:
        model = OpenAIModel(args.model, base_url=args.base_url, api_key="bench")
        return rlm.RLM(
            model,
            max_iterations=30,
            max_concurrency=int(args.params.get("max_concurrency", 16)),
            repl=args.params.get("repl", "subprocess"),
        )

    engine: rlm.RLM | None = None
    if not args.params.get("fresh"):
        started = time.perf_counter()
        engine = build()
        REPORT["construct_s"] = time.perf_counter() - started
    runs = 0

    def run(query: str, context: str) -> str:
        nonlocal engine
        if engine is None:
            engine = build()
        result = engine.run(query, context)
        if result.answer is None:
            raise RuntimeError(f"no answer: {result.stop_reason} {result.error}")
        return result.answer

    def prepare() -> RunFn:
        nonlocal runs
        runs += 1
        return profiled(run) if PROFILE and runs > 1 else run

    return prepare


PROFILE = os.environ.get("RLM_BENCH_PROFILE")


def profiled(run: RunFn) -> RunFn:
    """`run` under pyinstrument, appending the text report to $RLM_BENCH_PROFILE (the
    first run, which imports and warms up, is not profiled)."""
    from pyinstrument import Profiler

    def wrapper(query: str, context: str) -> str:
        profiler = Profiler(interval=0.0005, async_mode="disabled")
        profiler.start()
        try:
            return run(query, context)
        finally:
            profiler.stop()
            assert PROFILE is not None
            with open(PROFILE, "a") as f:
                f.write(profiler.output_text(unicode=True, show_all=False, timeline=False))
            html = PROFILE.rsplit(".", 1)[0] + ".html"
            with open(html, "w") as f:
                f.write(profiler.output_html())

    return wrapper


if __name__ == "__main__":
    main(setup)
