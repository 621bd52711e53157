"""The offline demo: the `salary` task through the whole pipeline with a scripted model.

`demo_models()` returns a `ScriptedModel` that plays the root LLM and a `FunctionModel`
that plays the sub-model. The script's code is real: it explores `context`, parses the
records with a regex, sums one department's salaries and cross-checks the head count with
one `llm_query_batched` over chunks of records, then answers with `FINAL`. Nothing is
hard-coded: the answer is computed from the context the REPL holds.

`rlm demo` runs it; the examples and tests reuse it.
"""

from __future__ import annotations

import re

from rlm.providers.base import ModelRequest
from rlm.testing import FunctionModel, ScriptedModel

CHUNK_LINES = 250

_STEP_EXPLORE = """\
I can't read the whole context at once, so I'll start by looking at its shape.

```repl
print(type(context).__name__, f"{len(context):,} characters")
lines = context.splitlines()
print(f"{len(lines):,} lines; the first two:")
for line in lines[:2]:
    print(line)
```"""

_STEP_PARSE = """\
Each line is one employee record with `Department:` and `Salary:` fields. A regex can \
read them exactly, so I'll parse every record and sum the {department} salaries in code.

```repl
import re

record = re.compile(r"Department: (?P<dept>[^|]+?) \\| .*?Salary: \\$(?P<salary>[\\d,]+)")
rows = [(m["dept"], int(m["salary"].replace(",", ""))) for m in map(record.search, lines) if m]
print(f"parsed {{len(rows):,}} of {{len(lines):,}} records")
in_department = [salary for dept, salary in rows if dept == {department!r}]
total = sum(in_department)
print(f"{{len(in_department):,}} {department} employees, total salary ${{total:,}}")
```"""

_STEP_CHECK = """\
Before answering, I'll cross-check the head count with a sub-model: one question per \
chunk of {chunk} records, sent concurrently with `llm_query_batched`.

```repl
chunks = ["\\n".join(lines[i:i + {chunk}]) for i in range(0, len(lines), {chunk})]
prompts = [
    "How many of these employee records are in the {department} department? "
    "Reply with a number only.\\n\\n" + chunk
    for chunk in chunks
]
counts = llm_query_batched(prompts)
print("sub-model counts per chunk:", counts)
checked = sum(int(c) for c in counts)
print(f"sub-model total {{checked:,}} vs regex {{len(in_department):,}}:",
      "agree" if checked == len(in_department) else "DISAGREE")
```"""

_STEP_ANSWER = """\
The two counts agree, so the parse is complete. The answer is the total computed above.

```repl
FINAL(f"${total:,}")
```"""


def _count_in_chunk(department: str) -> FunctionModel:
    """The sub-model: counts a department's records in the chunk after the question."""
    marker = f"Department: {department} |"

    def reply(request: ModelRequest) -> str:
        prompt = request.messages[-1].content
        _, _, records = prompt.partition("\n\n")
        return str(len(re.findall(re.escape(marker), records)))

    return FunctionModel(reply, name="scripted-sub-model")


def demo_models(
    department: str = "Engineering", *, chunk_lines: int = CHUNK_LINES
) -> tuple[ScriptedModel, FunctionModel]:
    """The scripted root model and the sub-model that answer the salary query offline."""
    root = ScriptedModel(
        [
            _STEP_EXPLORE,
            _STEP_PARSE.format(department=department),
            _STEP_CHECK.format(department=department, chunk=chunk_lines),
            _STEP_ANSWER,
        ],
        name="scripted-root-model",
    )
    return root, _count_in_chunk(department)
