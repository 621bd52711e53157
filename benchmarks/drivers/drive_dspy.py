"""Driver for `dspy.RLM` with its `LocalInterpreter` (a local CPython worker process).

Runs in benchmarks/.venvs/dspy. One `dspy.LM` and one `dspy.RLM` serve every run; each
call starts (and shuts down) its own interpreter worker, which is timed. The LM
response cache is off so every turn reaches the fake LLM, and DSPy's model-metadata
download is off (loopback only). `llm_query_batched` runs 8 prompts at a time (not
exposed by `dspy.RLM`).
"""

from __future__ import annotations

import os
import tempfile

from _common import Args, PrepareFn, RunFn, main


def setup(args: Args) -> PrepareFn:
    import dspy

    lm = dspy.LM(
        f"openai/{args.model}", api_base=args.base_url, api_key="bench", cache=False, num_retries=0
    )
    dspy.configure(lm=lm)
    module = dspy.RLM(
        "context, query -> answer",
        max_iters=30,
        max_llm_calls=5_000,
        interpreter_factory=dspy.LocalInterpreter,
    )

    def run(query: str, context: str) -> str:
        return module(context=context, query=query).answer

    def prepare() -> RunFn:
        return run

    return prepare


if __name__ == "__main__":
    # No download of LiteLLM's model map: use the bundled copy.
    os.environ["LITELLM_LOCAL_MODEL_COST_MAP"] = "True"
    os.environ.setdefault("DSPY_CACHEDIR", os.path.join(tempfile.gettempdir(), "rlm-bench-dspy"))
    main(setup)
