"""Typed answers: `output_type=` checks the final answer and hands back a value.

`output_type` is a pydantic model, a dataclass, a `TypedDict`, `int`/`float`/`bool`/`str`,
a generic such as `list[...]`/`dict[...]` (validated by pydantic's `TypeAdapter`), or a
JSON Schema dict (validated by `jsonschema`). The answer arrives as a `FinalValue`: the
text the REPL or the reply gave, and the JSON of the value when `FINAL`/`FINAL_VAR` was
given one (values cross the sandbox as JSON). `OutputSpec.accept` turns it into an
`Answer` (text and value) or raises `InvalidOutput` with the validation errors, which
go back to the model while the run goes on.

Without `output_type`, `UNTYPED.accept` keeps the text and gives the JSON value (a dict
answered with FINAL_VAR arrives as that dict, its text as JSON, never a Python repr).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from rlm.errors import ConfigurationError

if TYPE_CHECKING:
    # Imported when an output type is given: `import rlm` does not pay for pydantic.
    from pydantic import TypeAdapter, ValidationError

#: The most validation errors shown to the model at once.
MAX_ERRORS = 8
#: The longest schema shown in the prompt (characters); past it, only its outline.
MAX_SCHEMA_CHARS = 3000


@dataclass(frozen=True, slots=True)
class FinalValue:
    """An answer as given: its text, and its JSON when it was a value (not a str)."""

    text: str
    json: str | None = None


@dataclass(frozen=True, slots=True)
class Answer:
    """An accepted answer: `text` for `RLMResult.answer`, `value` for `RLMResult.output`."""

    text: str
    value: Any


class InvalidOutput(ValueError):
    """The answer does not have the shape `output_type` asks for (message: the errors)."""


class OutputSpec:
    """How one run checks its answer. `OutputSpec(None)` (`UNTYPED`) accepts any."""

    def __init__(self, output_type: Any = None) -> None:
        self.output_type = output_type
        self._adapter: TypeAdapter[Any] | None = None
        self._validator: Any = None
        self.schema: dict[str, Any] | None = None
        if output_type is None:
            return
        if isinstance(output_type, dict):
            import jsonschema

            try:
                cls = jsonschema.validators.validator_for(output_type)
                cls.check_schema(output_type)
            except jsonschema.SchemaError as exc:
                raise ConfigurationError(
                    f"output_type is not a valid JSON Schema: {exc.message}"
                ) from None
            self._validator = cls(output_type)
            self.schema = output_type
            return
        from pydantic import TypeAdapter
        from pydantic.errors import PydanticSchemaGenerationError, PydanticUserError

        try:
            self._adapter = TypeAdapter(output_type)
            self.schema = self._adapter.json_schema()
        except (PydanticSchemaGenerationError, PydanticUserError, TypeError) as exc:
            raise ConfigurationError(
                f"output_type={output_type!r} is not a type pydantic can validate ({exc}). "
                "Use a pydantic model, dataclass, TypedDict, int/float/bool/str, "
                "list[...]/dict[...], or a JSON Schema dict."
            ) from None

    @property
    def typed(self) -> bool:
        return self.schema is not None

    @property
    def is_text(self) -> bool:
        return self.output_type is str

    def instructions(self) -> str | None:
        """What the prompt says about the answer's shape (None: any text)."""
        if self.schema is None or self.is_text:
            return None
        shown = json.dumps(_without_titles(self.schema), separators=(",", ":"))
        if len(shown) > MAX_SCHEMA_CHARS:
            shown = shown[:MAX_SCHEMA_CHARS] + " ...(cut)"
        return (
            "The final answer must be a value matching this JSON Schema: "
            f"{shown}\nBuild it in code and give it with FINAL(value) or "
            "FINAL_VAR(name); it is checked, and you are told what to fix if it does not match."
        )

    def accept(self, final: FinalValue) -> Answer:
        """The answer's text and value, or `InvalidOutput` with what is wrong."""
        if self.schema is None:
            value = json.loads(final.json) if final.json is not None else final.text
            return Answer(final.text, value)
        if self._adapter is not None:
            value = self._validate_typed(self._adapter, final)
            text = (
                value if isinstance(value, str) else self._adapter.dump_json(value).decode("utf-8")
            )
            return Answer(text, value)
        data = self._validate_schema(final)
        text = data if isinstance(data, str) else json.dumps(data, ensure_ascii=False)
        return Answer(text, data)

    def _validate_typed(self, adapter: TypeAdapter[Any], final: FinalValue) -> Any:
        from pydantic import ValidationError

        if self.is_text:
            return final.text  # any answer has a text
        try:
            if final.json is not None:
                return adapter.validate_json(final.json)
            try:
                json.loads(final.text)
            except ValueError:
                # Not JSON: a str-like type (a Literal, say) may still take the text.
                try:
                    return adapter.validate_python(final.text)
                except ValidationError:
                    raise InvalidOutput(_not_json(final.text)) from None
            return adapter.validate_json(final.text)
        except ValidationError as exc:
            raise InvalidOutput(_pydantic_errors(exc)) from None

    def _validate_schema(self, final: FinalValue) -> Any:
        source = final.json if final.json is not None else final.text
        try:
            data = json.loads(source)
        except ValueError:
            data = final.text  # a string, if the schema allows one
        errors = sorted(self._validator.iter_errors(data), key=lambda e: list(e.path))
        if errors:
            if data is final.text and final.json is None:
                raise InvalidOutput(_not_json(final.text))
            raise InvalidOutput(_schema_errors(errors))
        return data


UNTYPED = OutputSpec(None)


def _without_titles(schema: Any, parent: str | None = None) -> Any:
    """The schema without pydantic's `title` keys (they cost prompt and say little)."""
    if isinstance(schema, dict):
        return {
            k: _without_titles(v, k)
            for k, v in schema.items()
            if not (k == "title" and isinstance(v, str) and parent != "properties")
        }
    if isinstance(schema, list):
        return [_without_titles(v, parent) for v in schema]
    return schema


def _not_json(text: str) -> str:
    shown = text if len(text) <= 200 else text[:200] + "..."
    return (
        f"the answer is not valid JSON: {shown!r}. Give the value itself with "
        "FINAL(value) in code, or FINAL_VAR(name)."
    )


def _pydantic_errors(exc: ValidationError) -> str:
    lines = []
    for error in exc.errors(include_url=False)[:MAX_ERRORS]:
        where = ".".join(str(p) for p in error["loc"]) or "(the answer)"
        lines.append(f"- {where}: {error['msg']}")
    more = exc.error_count() - MAX_ERRORS
    if more > 0:
        lines.append(f"- ... and {more} more")
    return "\n".join(lines)


def _schema_errors(errors: list[Any]) -> str:
    lines = []
    for error in errors[:MAX_ERRORS]:
        where = ".".join(str(p) for p in error.path) or "(the answer)"
        lines.append(f"- {where}: {error.message}")
    if len(errors) > MAX_ERRORS:
        lines.append(f"- ... and {len(errors) - MAX_ERRORS} more")
    return "\n".join(lines)
