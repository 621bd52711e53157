"""A question over a long document that needs both code and understanding.

The document is a maintenance log of a few thousand entries (about 100,000 tokens: too
long to read in one prompt, and expensive). Which entries are *critical* is not written
anywhere; it takes reading each entry. The RLM splits the log into chunks, asks a
sub-model to pick the critical entries of each chunk (`llm_query_batched`, concurrently),
then counts per site in code.

Offline by default: a scripted root model and a keyword-matching sub-model play the LLMs.
Set RLM_MODEL (and optionally RLM_SUB_MODEL, a cheaper model for the sub-calls) to use real
ones, and RLM_TRAJECTORY=run.jsonl to record the run for `rlm view`:

    uv run python examples/long_document.py
    RLM_MODEL=openai/gpt-4o RLM_SUB_MODEL=openai/gpt-4o-mini \\
        uv run python examples/long_document.py
"""

from __future__ import annotations

import os
import random
import re
from collections import Counter

import rlm
from rlm.providers.base import ModelRequest
from rlm.telemetry import TrajectoryRecorder
from rlm.testing import FunctionModel, ScriptedModel

SITES = ["Aberdeen", "Bilbao", "Cork", "Danzig", "Esbjerg", "Faro", "Genoa", "Hull"]
CRITICAL = [
    "the main pump seized and the line was shut down for {h} hours",
    "a gas leak forced an evacuation of hall {n}",
    "the primary transformer failed and all power was lost",
    "a crane cable snapped and the load fell onto the quay",
    "fire broke out in the compressor room; the brigade was called",
]
ROUTINE = [
    "replaced a worn belt on conveyor {n}",
    "repainted the safety markings in hall {n}",
    "a filter was cleaned ahead of schedule",
    "calibrated the pressure gauges on line {n}",
    "a door hinge squeaked and was oiled",
    "minor scratch on the paint of forklift {n}",
    "updated the firmware of the badge readers",
]

QUERY = (
    "Which site had the most critical incidents (ones that stopped work or endangered "
    "people), and how many did it have? Answer as 'Site: N'."
)


def make_log(entries: int = 3_000, seed: int = 1) -> tuple[str, str]:
    """The log and the true answer."""
    rng = random.Random(seed)
    lines = []
    critical: Counter[str] = Counter()
    for i in range(1, entries + 1):
        site = rng.choice(SITES)
        is_critical = rng.random() < (0.09 if site == "Genoa" else 0.05)
        template = rng.choice(CRITICAL if is_critical else ROUTINE)
        text = template.format(h=rng.randint(2, 30), n=rng.randint(1, 9))
        day = f"2024-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}"
        lines.append(f"[{i:05d}] {day} {site}: {text[0].upper()}{text[1:]}.")
        critical[site] += is_critical
    site, count = critical.most_common(1)[0]
    return "\n".join(lines), f"{site}: {count}"


def scripted_models() -> tuple[ScriptedModel, FunctionModel]:
    """A scripted root model and a sub-model that recognises critical entries by keywords."""
    root = ScriptedModel(
        [
            "```repl\nlines = context.splitlines()\nprint(len(lines), 'entries')\n"
            "print('\\n'.join(lines[:3]))\n```",
            "Whether an entry is critical needs reading it, so I'll ask a sub-model per chunk "
            "and count the entry ids it returns by site.\n"
            "```repl\n"
            "import re\n"
            "from collections import Counter\n"
            "chunks = ['\\n'.join(lines[i:i + 200]) for i in range(0, len(lines), 200)]\n"
            "answers = llm_query_batched([\n"
            "    'List the ids (like 00042) of the entries below that describe a critical '\n"
            "    'incident (work stopped or people endangered), comma-separated, or none.'\n"
            "    '\\n\\n' + chunk for chunk in chunks])\n"
            "ids = {i for a in answers for i in re.findall(r'\\d{5}', a)}\n"
            "site_of = {m[1]: m[2] for m in re.finditer(r'\\[(\\d{5})\\] \\S+ (\\w+):', context)}\n"
            "per_site = Counter(site_of[i] for i in ids)\n"
            "print(per_site.most_common(3))\n"
            "```",
            "```repl\nsite, n = per_site.most_common(1)[0]\nFINAL(f'{site}: {n}')\n```",
        ],
        name="scripted-root-model",
    )
    keywords = ("seized", "gas leak", "power was lost", "cable snapped", "fire broke out")

    def pick_critical(request: ModelRequest) -> str:
        entries = request.messages[-1].content.split("\n\n", 1)[-1].splitlines()
        ids = [line[1:6] for line in entries if any(k in line.lower() for k in keywords)]
        return ", ".join(ids) or "none"

    return root, FunctionModel(pick_critical, name="scripted-sub-model")


def main() -> rlm.RLMResult:
    log, expected = make_log()
    print(f"log: {log.count(chr(10)) + 1:,} entries, {len(log):,} characters")
    trajectory = os.environ.get("RLM_TRAJECTORY")
    # TrajectoryRecorder writes every event as a JSON line: `rlm view` turns it into a page.
    on_event = TrajectoryRecorder(trajectory) if trajectory else None
    model_name = os.environ.get("RLM_MODEL")
    if model_name:
        result = rlm.run(
            QUERY,
            log,
            model=model_name,
            sub_model=os.environ.get("RLM_SUB_MODEL") or None,
            verbose=True,
            on_event=on_event,
        )
    else:
        print("(offline: scripted models play the LLMs; set RLM_MODEL for a real one)")
        root, sub = scripted_models()
        result = rlm.run(QUERY, log, model=root, sub_model=sub, repl="inprocess", on_event=on_event)
    if on_event is not None:
        on_event.close()
    print(f"answer:   {result.answer}")
    print(f"expected: {expected}")
    print(
        f"({result.stop_reason}: {result.iterations} iterations, {result.sub_calls} sub-calls, "
        f"{result.total_input_tokens + result.total_output_tokens:,} tokens)"
    )
    if trajectory:
        print(f"trajectory: {trajectory} (view it with: rlm view {trajectory})")
    answer = re.sub(r"\s+", " ", result.answer or "")
    if answer != expected:
        print("(the answer differs from the expected one)")
    return result


if __name__ == "__main__":
    main()
