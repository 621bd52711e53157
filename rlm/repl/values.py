"""Values that leave the model's namespace: answers and tool arguments, as JSON.

Answers (`FINAL`, `FINAL_VAR`) and tool arguments cross the sandbox as JSON, so both
REPLs turn them into JSON values here, in the namespace: a pydantic model becomes its
`model_dump(mode="json")`, a dataclass its fields, a tuple a list. Anything else that is
not a JSON value (a set, a function, an open file, NaN) is refused with a message that
says where it was found.

This module imports only the standard library: the sandbox worker loads it.
"""

from __future__ import annotations

import json
import math
import sys

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any


class NotJSON(TypeError):
    """A value that cannot cross to or from the REPL as JSON."""


def to_json_value(value: object, where: str = "value") -> Any:
    """`value` as plain JSON data (dict with str keys, list, str, int, float, bool, None)."""
    if value is None or isinstance(value, str | bool | int):
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            raise NotJSON(f"{where} is {value!r}, which JSON cannot hold")
        return value
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        for key, item in value.items():
            if not isinstance(key, str):
                raise NotJSON(
                    f"{where} has a key {key!r} of type {type(key).__name__}; JSON object "
                    "keys are text"
                )
            out[key] = to_json_value(item, f"{where}[{key!r}]")
        return out
    if isinstance(value, list | tuple):
        return [to_json_value(item, f"{where}[{i}]") for i, item in enumerate(value)]
    dump = getattr(value, "model_dump", None)
    if callable(dump) and not isinstance(value, type):
        # A pydantic model: its own JSON form (no import of pydantic needed here).
        return to_json_value(dump(mode="json"), where)
    # An instance of a dataclass exists only once `dataclasses` was imported: the worker
    # does not import it itself (see `rlm.repl.namespace` on start-up time).
    dataclasses = sys.modules.get("dataclasses")
    if dataclasses is not None and dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {
            f.name: to_json_value(getattr(value, f.name), f"{where}.{f.name}")
            for f in dataclasses.fields(value)
        }
    raise NotJSON(
        f"{where} is a {type(value).__name__}, which is not a JSON value; use dicts, lists, "
        "str, int, float, bool or None (or a pydantic model or dataclass)"
    )


def dumps(value: Any) -> str:
    """Compact JSON text of a value `to_json_value` returned."""
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"), allow_nan=False)


def answer_parts(value: object) -> tuple[str, str | None]:
    """The answer text of a `FINAL` value, and its JSON text when it has one.

    A str is the answer itself (no JSON). Containers, pydantic models and dataclasses
    give their JSON as the text too, never a Python repr; numbers, bools and None keep
    their usual text (`42`, `True`) beside their JSON. Other objects are answered by
    their `str` and carry no JSON.
    """
    if isinstance(value, str):
        return value, None
    try:
        data = dumps(to_json_value(value))
    except (NotJSON, ValueError, RecursionError):
        return str(value), None
    if value is None or isinstance(value, bool | int | float):
        return str(value), data
    return data, data
