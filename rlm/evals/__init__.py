"""Long-context evaluation tasks, generated offline from a seed and scored exactly.

```python
from rlm.evals import get_task

task = get_task("salary")
instance = task.generate(10_000, seed=0)       # 10,000 employee records
result = rlm.run(instance.query, instance.context, model="openai/gpt-4o-mini")
print(instance.gold, result.answer, instance.score(result.answer))
```

Tasks: `salary` (total salary of a department), `niah` (single needle in a haystack),
`oolong` (aggregates over inferred labels) and `oolong-pairs` (user pairs, F1). The
`rlm eval` command runs them against a model, with the RLM and directly
(`rlm.evals.runner`).
"""

from __future__ import annotations

from rlm.evals.base import Instance, Task, extract_number
from rlm.evals.niah import NiahTask
from rlm.evals.oolong import OolongPairsTask, OolongTask
from rlm.evals.registry import get_task, register_task, task_names
from rlm.evals.salary import SalaryTask

for _task in (SalaryTask(), NiahTask(), OolongTask(), OolongPairsTask()):
    register_task(_task)

__all__ = [
    "Instance",
    "NiahTask",
    "OolongPairsTask",
    "OolongTask",
    "SalaryTask",
    "Task",
    "extract_number",
    "get_task",
    "register_task",
    "task_names",
]
