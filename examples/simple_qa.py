"""Ask one question about a short text.

Runs offline by default: a scripted model plays the LLM (no key, no network) and its
code really searches the text. Set RLM_MODEL to use a real model instead:

    uv run python examples/simple_qa.py
    RLM_MODEL=openai/gpt-4o-mini uv run python examples/simple_qa.py
    RLM_MODEL=anthropic/claude-sonnet-4-5 uv run python examples/simple_qa.py
"""

from __future__ import annotations

import os

import rlm
from rlm.testing import ScriptedModel

CONTEXT = """\
Northwind Trading began as a two-person spice stall in Lisbon. The company was founded in
1987 by Amara Okafor and Tomas Silva, who imported pepper and cardamom from Goa. In 1994 it
opened its first warehouse in Porto, and by 2003 it supplied more than 400 restaurants.
A fire in 2008 destroyed the Porto warehouse; the company rebuilt it within a year. Today
Northwind employs 1,200 people in nine countries and is run by Silva's daughter, Ines.
"""

QUERY = "In which year was the company founded, and by whom?"


def scripted_model() -> ScriptedModel:
    """Plays the LLM: looks for the founding sentence, extracts it with a regex, answers."""
    return ScriptedModel(
        [
            "I'll find the sentences that mention the founding.\n"
            "```repl\n"
            "import re\n"
            "sentences = re.split(r'(?<=[.])\\s+', context)\n"
            "print([s for s in sentences if 'founded' in s])\n"
            "```",
            "```repl\n"
            "m = re.search(r'founded in\\s+(\\d{4})\\s+by\\s+([^,.]+)', context)\n"
            "answer = f'{m[1]}, by {m[2]}'\n"
            "print(answer)\n"
            "```",
            "FINAL_VAR(answer)",
        ],
        name="scripted-model",
    )


def main() -> rlm.RLMResult:
    model_name = os.environ.get("RLM_MODEL")
    if model_name:
        # A real model's code runs in the sandboxed subprocess REPL (the default).
        result = rlm.run(QUERY, CONTEXT, model=model_name, verbose=True)
    else:
        print("(offline: a scripted model plays the LLM; set RLM_MODEL for a real one)")
        # The scripted code is ours, so it may run in this process.
        result = rlm.run(QUERY, CONTEXT, model=scripted_model(), repl="inprocess")
    print(f"Q: {QUERY}")
    print(f"A: {result.answer}")
    print(
        f"({result.stop_reason}, {result.iterations} iterations, "
        f"{result.total_input_tokens + result.total_output_tokens:,} tokens)"
    )
    return result


if __name__ == "__main__":
    main()
