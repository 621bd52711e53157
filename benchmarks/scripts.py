"""The scripted "model": the same work for every framework, in each one's own format.

A `Script` is a list of root turns (code to run, and/or the name of the variable that
holds the answer) plus, for fan-out, the sub-model's reply. `Script.reply(request)`
answers one chat-completions request: it works out which turn the framework is on from
the request itself and renders that turn the way the framework expects:

- `rlm` (this library): ```` ```repl ```` blocks, the answer as `FINAL_VAR(name)`.
- `rlms` (the official implementation): ```` ```repl ```` blocks, the answer by setting
  `answer["content"]` and `answer["ready"] = True` in a block.
- `dspy` (`dspy.RLM`): DSPy's chat-adapter fields, code in a ```` ```python ```` block,
  the answer with `SUBMIT(answer=...)`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

FRAMEWORKS = ("rlm", "rlms", "dspy")


@dataclass(frozen=True)
class Turn:
    code: str | None = None
    answer_var: str | None = None


@dataclass
class Script:
    framework: str
    turns: list[Turn]
    latency_s: float = 0.0
    subcall: bool = False
    problems: list[str] = field(default_factory=list)

    @property
    def root_trips(self) -> int:
        return len(self.turns)

    def reply(self, request: dict[str, Any]) -> str:
        messages = request.get("messages") or []
        if not any(m.get("role") in ("system", "developer") for m in messages):
            return self._subcall_reply(messages)
        turn = self._turn_number(messages)
        if turn > len(self.turns):
            self.problems.append(f"asked for turn {turn} of a {len(self.turns)}-turn script")
            return "The script is over."
        return render(self.framework, self.turns[turn - 1])

    def _turn_number(self, messages: list[dict[str, Any]]) -> int:
        if self.framework == "dspy":
            text = _text(messages[-1])
            found = re.search(r"\[\[ ## iteration ## \]\]\s*(\d+)\s*/", text)
            return int(found.group(1)) if found else 1
        return 1 + sum(1 for m in messages if m.get("role") == "assistant")

    def _subcall_reply(self, messages: list[dict[str, Any]]) -> str:
        prompt = _text(messages[-1]) if messages else ""
        found = re.match(r"chunk (\d+)\n", prompt)
        if not self.subcall or not found:
            self.problems.append(f"unexpected sub-call: {prompt[:80]!r}")
            return "unexpected"
        return f"ok {found.group(1)}"


def _text(message: dict[str, Any]) -> str:
    content = message.get("content")
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(p.get("text", "") for p in content if isinstance(p, dict))
    return ""


def render(framework: str, turn: Turn) -> str:
    code = turn.code or ""
    var = turn.answer_var
    if framework == "rlm":
        parts = []
        if code:
            parts.append(f"```repl\n{code}\n```")
        if var:
            parts.append(f"FINAL_VAR({var})")
        return "\n".join(parts)
    if framework == "rlms":
        lines = [code] if code else []
        if var:
            lines.append(f'answer["content"] = str({var})\nanswer["ready"] = True')
        return "```repl\n" + "\n".join(lines) + "\n```"
    if framework == "dspy":
        lines = [code] if code else []
        if var:
            lines.append(f"SUBMIT(answer=str({var}))")
        body = "\n".join(lines)
        return (
            "[[ ## reasoning ## ]]\nScripted step.\n\n"
            f"[[ ## code ## ]]\n```python\n{body}\n```\n\n[[ ## completed ## ]]"
        )
    raise ValueError(f"unknown framework {framework!r}")


# -- the scenarios -----------------------------------------------------------------------

SALARY_CODE = """\
import re
found = re.findall(r"Department: Engineering \\| Salary: \\$([\\d,]+)", context)
total = sum(int(s.replace(",", "")) for s in found)
print(total)"""

COUNT_CODE = """\
n = context.count("\\n")
print(n)"""


def fanout_code(chunks: int) -> str:
    return f"""\
lines = context.split("\\n")
n = {chunks}
parts = ["\\n".join(lines[i * len(lines) // n:(i + 1) * len(lines) // n]) for i in range(n)]
replies = llm_query_batched([f"chunk {{i}}\\n{{p}}" for i, p in enumerate(parts)])
ok = sum(r.strip() == f"ok {{i}}" for i, r in enumerate(replies))
print(ok)"""


def salary_script(framework: str) -> Script:
    """Scenario 1: one code block, then the answer."""
    return Script(framework, [Turn(code=SALARY_CODE), Turn(answer_var="total")])


def iterations_script(framework: str, steps: int = 20) -> Script:
    """Scenario 2: `steps` small blocks, each making one more variable, then the answer."""
    # Fixed-width names and numbers: every turn has the same size, so any growth of the
    # request from one turn to the next beyond that is the framework's own.
    turns = [
        Turn(code=f"step_{i:02d} = len(context) + {i:2d}\nprint('step {i:02d}:', step_{i:02d})")
        for i in range(1, steps + 1)
    ]
    total = " + ".join(f"step_{i:02d}" for i in range(1, steps + 1))
    turns.append(Turn(code=f"total = {total}", answer_var="total"))
    return Script(framework, turns)


def fanout_script(framework: str, chunks: int, latency_s: float) -> Script:
    """Scenario 3: one block with one `llm_query_batched` over `chunks` prompts, and the
    answer in the same reply (one root round trip)."""
    return Script(
        framework,
        [Turn(code=fanout_code(chunks), answer_var="ok")],
        latency_s=latency_s,
        subcall=True,
    )


def large_script(framework: str) -> Script:
    """Scenario 4: count the records (a memory-speed pass), then the answer."""
    return Script(framework, [Turn(code=COUNT_CODE), Turn(answer_var="n")])
