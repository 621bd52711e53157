"""Driver for `rlms` 0.1.3, the official implementation (its import name is `rlm` too).

Runs in benchmarks/.venvs/rlms. Default environment ("local": the model's code runs in
this process, no sandbox). One `RLM` serves every run, as its API intends; it builds its
OpenAI clients, its sub-call server and its REPL inside each `completion()`, so those
are timed. Batched sub-calls run 16 at a time (the handler's `batch_max_concurrent`,
which `RLM` does not expose).
"""

from __future__ import annotations

import os

from _common import Args, PrepareFn, RunFn, main


def setup(args: Args) -> PrepareFn:
    from rlm import RLM  # the official package, from this venv

    engine = RLM(
        backend="openai",
        backend_kwargs={"model_name": args.model, "base_url": args.base_url, "api_key": "bench"},
        environment="local",
        max_iterations=30,
        max_depth=1,
    )

    def run(query: str, context: str) -> str:
        return engine.completion(context, root_prompt=query).response

    def prepare() -> RunFn:
        return run

    return prepare


if __name__ == "__main__":
    os.environ.setdefault("OPENAI_API_KEY", "bench")
    main(setup)
