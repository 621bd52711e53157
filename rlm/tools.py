"""User tools the model's code can call: a spec from a callable, and host-side dispatch.

```python
def lookup_customer(customer_id: int) -> dict:
    '''The customer's record, by id.'''
    ...

rlm.run(query, context, model=..., tools=[lookup_customer])
```

`Tool.from_function` reads a callable's name, signature and the first lines of its
docstring (for the system prompt), with the fields of the models, dataclasses and
TypedDicts its signature names (`shapes`), and builds pydantic adapters for its parameters (the
JSON schema in `Tool.parameters`, and validation that rebuilds models, dataclasses and
TypedDicts from JSON). The REPL gets only a `ToolStub` and makes a function that sends
the call to the host: the tool's function, closure and secrets never enter the sandbox.

`ToolDispatch` is the host side: it validates the arguments, runs the tool (async tools
on the event loop, sync ones on a thread), under the run tree's concurrency limit, the
tool's timeout and the budget's deadline, emits `ToolCallStarted`/`ToolCallFinished`,
and turns the result into a fresh JSON value. Whatever goes wrong reaches the model's
code as a `ToolError` with a one-line message (never a host traceback).
"""

from __future__ import annotations

import asyncio
import builtins
import concurrent.futures
import contextvars
import functools
import inspect
import keyword
import re
import time
import typing
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from rlm.budget import Ledger
from rlm.errors import ConfigurationError
from rlm.events import Event, ToolCallFinished, ToolCallStarted, clip, new_id
from rlm.repl.base import HELPER_NAMES, ToolError, ToolStub
from rlm.repl.values import NotJSON, dumps, to_json_value

if TYPE_CHECKING:
    # pydantic is imported when the first tool is made: `import rlm` does not pay for it.
    from pydantic import TypeAdapter, ValidationError

#: How long one tool call may take unless its `Tool` says otherwise.
DEFAULT_TIMEOUT_S = 60.0
#: Docstring lines shown in the system prompt.
DOC_LINES = 2

# Sync tools run on these threads, not on the event loop's default executor: the
# application's `asyncio.run` waits for that one before it returns, so a tool past its
# timeout would hold up the caller until it ended. Threads start as needed; in-flight
# calls are bounded per run tree by `max_concurrency`.
_TOOL_THREADS = concurrent.futures.ThreadPoolExecutor(max_workers=64, thread_name_prefix="rlm-tool")

_CONTEXT_NAME = re.compile(r"context(_\d+)?")
_QUALIFIED = re.compile(r"\b(?:[A-Za-z_]\w*\.)+([A-Za-z_]\w*)")


def _reserved(name: str) -> str | None:
    """Why `name` cannot be a tool's name in the REPL, or None."""
    if not name.isidentifier() or keyword.iskeyword(name):
        return "it is not a Python identifier"
    if name in HELPER_NAMES or _CONTEXT_NAME.fullmatch(name):
        return "the REPL already has a helper or context by that name"
    if name.startswith("_"):
        return "names starting with '_' are private in the REPL"
    if hasattr(builtins, name):
        return "it would hide a Python built-in"
    return None


def _short(annotation: Any) -> str:
    text = inspect.formatannotation(annotation)
    return _QUALIFIED.sub(r"\1", text)


def _first_lines(doc: str | None, lines: int = DOC_LINES) -> str:
    """The docstring's first paragraph, at most `lines` lines."""
    if not doc:
        return ""
    paragraph = inspect.cleandoc(doc).split("\n\n", 1)[0]
    return " ".join(line.strip() for line in paragraph.splitlines()[:lines])


@dataclass(frozen=True, slots=True, eq=False)
class Tool:
    """A host function the model's code can call by `name`.

    Build one with `Tool.from_function(fn, name=..., timeout_s=...)`, or pass the plain
    function in `tools=[...]`. `signature` and `description` are what the system prompt
    shows; `parameters` is the JSON schema of the arguments; `timeout_s` bounds one call
    (None: only the run's deadline).
    """

    function: Callable[..., Any]
    name: str
    signature: str
    description: str
    parameters: Mapping[str, Any]
    timeout_s: float | None = DEFAULT_TIMEOUT_S
    shapes: tuple[str, ...] = ()
    _signature: inspect.Signature = field(repr=False, default=inspect.Signature())
    _adapters: Mapping[str, TypeAdapter[Any]] = field(repr=False, default_factory=dict)
    _returns: TypeAdapter[Any] | None = field(repr=False, default=None)

    @classmethod
    def from_function(
        cls,
        function: Callable[..., Any],
        *,
        name: str | None = None,
        description: str | None = None,
        timeout_s: float | None = DEFAULT_TIMEOUT_S,
    ) -> Tool:
        """A `Tool` for `function`; raises `ConfigurationError` when it cannot be one."""
        from pydantic import TypeAdapter
        from pydantic.errors import PydanticSchemaGenerationError, PydanticUserError

        if not callable(function):
            raise ConfigurationError(
                f"tools=[...] takes functions (or rlm.Tool), not {type(function).__name__}"
            )
        name = str(name or getattr(function, "__name__", ""))
        why = _reserved(name)
        if why:
            raise ConfigurationError(
                f"a tool cannot be called {name!r}: {why}. Give it another name with "
                "rlm.Tool.from_function(fn, name='...')."
            )
        if timeout_s is not None and not timeout_s > 0:
            raise ConfigurationError(f"tool {name!r}: timeout_s must be positive or None")
        try:
            signature = inspect.signature(function)
            hints = typing.get_type_hints(function, include_extras=True)
        except (TypeError, ValueError, NameError) as exc:
            raise ConfigurationError(f"tool {name!r}: cannot read its signature ({exc})") from exc
        adapters: dict[str, TypeAdapter[Any]] = {}
        params = []
        for param in signature.parameters.values():
            annotation = hints.get(param.name, param.annotation)
            if annotation is not inspect.Parameter.empty:
                adapters[param.name] = _adapter(name, f"parameter {param.name!r}", annotation)
            params.append(param.replace(annotation=annotation))
        returns = hints.get("return", signature.return_annotation)
        return_adapter = (
            None
            if returns in (inspect.Signature.empty, Any, None, type(None))
            else _adapter(name, "its return annotation", returns)
        )
        shown = ", ".join(_param_text(p) for p in params)
        arrow = "" if returns is inspect.Signature.empty else f" -> {_short(returns)}"
        about = description if description is not None else _first_lines(function.__doc__)
        shapes = tuple(_shapes([p.annotation for p in params] + [returns]))
        try:
            schema = TypeAdapter(function).json_schema()  # type: ignore[arg-type]
        except (PydanticSchemaGenerationError, PydanticUserError, TypeError, NameError):
            # Only documentation: calls are checked with the adapters above.
            schema = {"type": "object"}
        return cls(
            function=function,
            name=name,
            signature=f"{name}({shown}){arrow}",
            description=about,
            shapes=shapes,
            parameters=schema,
            timeout_s=timeout_s,
            _signature=signature,
            _adapters=adapters,
            _returns=return_adapter,
        )

    @property
    def stub(self) -> ToolStub:
        return ToolStub(self.name, self.signature, self.description, self.shapes)

    def bind(self, args: Sequence[Any], kwargs: Mapping[str, Any]) -> inspect.BoundArguments:
        """The call's arguments checked against the signature and rebuilt from JSON."""
        from pydantic import ValidationError

        try:
            bound = self._signature.bind(*args, **kwargs)
        except TypeError as exc:
            raise ToolError(f"{self.name}(): {exc}; the signature is {self.signature}") from None
        for pname, value in list(bound.arguments.items()):
            adapter = self._adapters.get(pname)
            if adapter is None:
                continue
            kind = self._signature.parameters[pname].kind
            try:
                if kind is inspect.Parameter.VAR_POSITIONAL:
                    value = tuple(adapter.validate_python(v) for v in value)
                elif kind is inspect.Parameter.VAR_KEYWORD:
                    value = {k: adapter.validate_python(v) for k, v in value.items()}
                else:
                    value = adapter.validate_python(value)
            except ValidationError as exc:
                raise ToolError(
                    f"{self.name}(): argument {pname!r} is not valid: {_errors(exc)}"
                ) from None
            bound.arguments[pname] = value
        return bound

    def to_json(self, result: Any) -> Any:
        """The tool's result as a fresh JSON value, or a `ToolError` saying why not."""
        try:
            if self._returns is not None:
                result = self._returns.dump_python(result, mode="json", warnings="error")
            return to_json_value(result, "the result")
        except NotJSON as exc:
            raise ToolError(
                f"{self.name}() returned a value that cannot be sent back as JSON: {exc}"
            ) from None
        except Exception as exc:  # pydantic's serialization errors
            raise ToolError(
                f"{self.name}() returned a {type(result).__name__}, which does not match "
                f"its return annotation: {exc}"
            ) from None


def _adapter(tool: str, what: str, annotation: Any) -> TypeAdapter[Any]:
    from pydantic import TypeAdapter
    from pydantic.errors import PydanticSchemaGenerationError, PydanticUserError

    try:
        return TypeAdapter(annotation)
    except (PydanticSchemaGenerationError, PydanticUserError, TypeError) as exc:
        raise ConfigurationError(
            f"tool {tool!r}: {what} ({_short(annotation)}) cannot be rebuilt from JSON, so "
            "the model's code could not pass or receive it. Use JSON types, pydantic "
            f"models, dataclasses or TypedDicts. ({type(exc).__name__})"
        ) from None


def _shapes(annotations: Iterable[Any]) -> list[str]:
    """`Name = {field: type, ...}` for the models, dataclasses and TypedDicts a
    signature names, so the model knows what to pass and what comes back (as a dict)."""
    import dataclasses

    found: dict[str, str] = {}

    def visit(annotation: Any) -> None:
        for arg in typing.get_args(annotation):
            visit(arg)
        if not isinstance(annotation, type) or annotation.__name__ in found:
            return
        is_model = hasattr(annotation, "model_fields")
        if not (
            is_model or dataclasses.is_dataclass(annotation) or typing.is_typeddict(annotation)
        ):
            return
        try:
            hints = typing.get_type_hints(annotation)
        except Exception:
            return
        if is_model:
            fields = getattr(annotation, "model_fields", {})
            hints = {k: v for k, v in hints.items() if k in fields}
        found[annotation.__name__] = ""
        for hint in hints.values():
            visit(hint)
        shown = ", ".join(f"{k}: {_short(v)}" for k, v in hints.items())
        found[annotation.__name__] = f"{annotation.__name__} = {{{shown}}}"

    for annotation in annotations:
        if annotation is not inspect.Parameter.empty:
            visit(annotation)
    return [text for text in found.values() if text]


def _param_text(param: inspect.Parameter) -> str:
    text = param.name
    if param.kind is inspect.Parameter.VAR_POSITIONAL:
        text = "*" + text
    elif param.kind is inspect.Parameter.VAR_KEYWORD:
        text = "**" + text
    if param.annotation is not inspect.Parameter.empty:
        text += f": {_short(param.annotation)}"
    if param.default is not inspect.Parameter.empty:
        text += f" = {param.default!r}" if ":" in text else f"={param.default!r}"
    return text


def _errors(exc: ValidationError) -> str:
    parts = []
    for error in exc.errors(include_url=False)[:5]:
        where = ".".join(str(p) for p in error["loc"])
        parts.append(f"{where}: {error['msg']}" if where else str(error["msg"]))
    return "; ".join(parts)


def as_tools(items: Iterable[Callable[..., Any] | Tool] | None) -> tuple[Tool, ...]:
    """Normalise a `tools=[...]` argument: functions become `Tool`s, names must differ."""
    if items is None:
        return ()
    if callable(items) or isinstance(items, str | bytes):
        raise ConfigurationError("tools= takes a list of functions, e.g. tools=[lookup]")
    tools = tuple(t if isinstance(t, Tool) else Tool.from_function(t) for t in items)
    seen: set[str] = set()
    for t in tools:
        if t.name in seen:
            raise ConfigurationError(
                f"two tools are called {t.name!r}; rename one with "
                "rlm.Tool.from_function(fn, name='...')"
            )
        seen.add(t.name)
    return tools


# -- the host side of a call ---------------------------------------------------------------


class ToolOwner(Protocol):
    """What dispatch needs of the run whose code made the call."""

    @property
    def ledger(self) -> Ledger: ...

    @property
    def current_exec_id(self) -> str | None: ...

    def _base(self) -> dict[str, Any]: ...

    async def emit(self, event: Event) -> None: ...


@dataclass(frozen=True, slots=True)
class RecordedToolResult:
    """What a recorded tool call returned (`value`, JSON) or the error its caller got."""

    value: Any = None
    error: str | None = None


class RecordedTools(Protocol):
    """Answers tool calls from a recording instead of calling the tools (a resume)."""

    def take(self, call_path: str, name: str, arguments: str) -> RecordedToolResult | None:
        """The recorded outcome of the call at `call_path`, if the recording holds this
        call (same tool, same arguments) there; None to call the tool."""
        ...


class ToolDispatch:
    """Runs one run's tool calls: the `call_tool` half of its `ReplHost`."""

    def __init__(
        self,
        tools: Sequence[Tool],
        owner: ToolOwner,
        slots: asyncio.Semaphore,
        recorded: RecordedTools | None = None,
    ):
        self.tools = {t.name: t for t in tools}
        self.stubs = tuple(t.stub for t in tools)
        self._owner = owner
        self._slots = slots
        self._recorded = recorded

    async def call(
        self, name: str, args: list[Any], kwargs: dict[str, Any], call_path: str | None = None
    ) -> Any:
        tool = self.tools.get(name)
        if tool is None:
            raise ToolError(f"there is no tool named {name!r}")
        owner = self._owner
        call_id = new_id()
        arguments = dumps({"args": args, "kwargs": kwargs}) if kwargs else dumps(args)
        await owner.emit(
            ToolCallStarted(
                **owner._base(),
                tool_call_id=call_id,
                exec_id=owner.current_exec_id,
                name=name,
                arguments=clip(arguments),
                call_path=call_path,
            )
        )
        owner.ledger.record_tool_call()
        started = time.perf_counter()
        text, error, value = "", None, None
        recorded = (
            self._recorded.take(call_path, name, arguments)
            if self._recorded is not None and call_path is not None
            else None
        )
        try:
            if recorded is not None:
                if recorded.error is not None:
                    raise ToolError(recorded.error)
                value = recorded.value
            else:
                value = await self._run(tool, args, kwargs)
            text = dumps(value)
            return value
        except ToolError as exc:
            error = str(exc)
            raise
        except asyncio.CancelledError:
            error = "cancelled"
            raise
        finally:
            await owner.emit(
                ToolCallFinished(
                    **owner._base(),
                    tool_call_id=call_id,
                    name=name,
                    ok=error is None,
                    result=clip(text),
                    result_chars=len(text),
                    error=error,
                    duration_s=time.perf_counter() - started,
                    value=value if error is None else None,
                    replayed=recorded is not None,
                )
            )

    async def _run(self, tool: Tool, args: list[Any], kwargs: dict[str, Any]) -> Any:
        bound = tool.bind(args, kwargs)
        async with self._slots:
            remaining = self._owner.ledger.remaining_seconds()
            limits = [t for t in (tool.timeout_s, remaining) if t is not None]
            timeout = min(limits) if limits else None
            limit = asyncio.timeout(timeout)
            try:
                async with limit:
                    if inspect.iscoroutinefunction(tool.function):
                        result = await tool.function(*bound.args, **bound.kwargs)
                    else:
                        # A thread, so a blocking tool does not stop the event loop; it
                        # cannot be interrupted, so past the timeout it ends unheard.
                        call = functools.partial(tool.function, *bound.args, **bound.kwargs)
                        result = await asyncio.get_running_loop().run_in_executor(
                            _TOOL_THREADS, contextvars.copy_context().run, call
                        )
                        if inspect.isawaitable(result):
                            result = await result
            except TimeoutError as exc:
                if not limit.expired():
                    raise ToolError(f"{tool.name}() raised TimeoutError: {exc}") from None
                cause = (
                    f"its time limit ({tool.timeout_s:g} s)"
                    if timeout == tool.timeout_s
                    else "the run's deadline"
                )
                raise ToolError(f"{tool.name}() did not finish within {cause}") from None
            except ToolError:
                raise
            except Exception as exc:
                raise ToolError(f"{tool.name}() raised {type(exc).__name__}: {exc}") from None
        return tool.to_json(result)
