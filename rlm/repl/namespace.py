"""The namespace the model's code runs in, shared by every REPL implementation.

`Namespace.run(code)` executes one block: statements in order, the value of a trailing
expression printed as in an interactive session, a traceback whose line numbers point
into the block, variables kept across blocks (also those assigned before an exception),
and the helper functions restored if the code overwrote them.

Output is captured per execution without redirecting the process: `print` in the
namespace writes to the execution's sinks, and `sys.stdout`/`sys.stderr` are wrapped
once by a proxy that sends writes from a capturing execution context to its sinks and
everything else to the original stream. Two runs in two threads never see each other's
output.

The sandbox worker imports this module (and `rlm.repl.values`, `rlm.repl.helpers`) when
it starts, so they import no `dataclasses` or `typing` at run time and `traceback` only
when there is an error: `dataclasses` alone brings `inspect` and `dis`, and together they
took 10-15 ms of the 40 ms a worker spent importing before it could take its first block
(measured on the 2-core CI machine). Their small value classes use `__slots__` instead.
"""

from __future__ import annotations

import ast
import builtins
import contextvars
import itertools
import linecache
import os
import sys
import threading
from collections.abc import Callable, Sequence

from rlm.repl.helpers import HELPER_NAMES, RESERVED_NAMES, missing_variable_message
from rlm.repl.values import NotJSON, answer_parts, to_json_value

# Run time imports stay light: the sandbox worker imports this module at start-up.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, Protocol, TextIO, TypeVar

    T = TypeVar("T")

    class ToolSpec(Protocol):
        """What the namespace needs of a tool (`rlm.repl.base.ToolStub` is one)."""

        @property
        def name(self) -> str: ...
        @property
        def signature(self) -> str: ...
        @property
        def description(self) -> str: ...
        @property
        def shapes(self) -> tuple[str, ...]: ...

    class TextSink(Protocol):
        def write(self, text: str) -> int: ...


class _Sinks:
    __slots__ = ("stderr", "stdout")

    def __init__(self, stdout: TextSink, stderr: TextSink) -> None:
        self.stdout = stdout
        self.stderr = stderr


class _Discard:
    """Where a finished cell's output goes: the caller has read its buffers already."""

    __slots__ = ()

    def write(self, text: str) -> int:
        return len(text)

    def flush(self) -> None:
        return None


_current_sinks: contextvars.ContextVar[_Sinks | None] = contextvars.ContextVar(
    "rlm_repl_sinks", default=None
)


class _RoutingStream:
    """Stands in for sys.stdout/sys.stderr: capturing contexts get their sink."""

    def __init__(self, original: TextIO, pick: Callable[[_Sinks], TextSink]) -> None:
        self._original = original
        self._pick = pick

    def write(self, text: str) -> int:
        sinks = _current_sinks.get()
        if sinks is None:
            return self._original.write(text)
        return self._pick(sinks).write(text)

    def flush(self) -> None:
        if _current_sinks.get() is None:
            self._original.flush()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._original, name)


def outside_capture(fn: Callable[..., T], /, *args: Any) -> T:
    """Call `fn` in a copy of the current context with capture switched off.

    Work handed from a capturing execution to another task (a sub-call on the event
    loop) must not inherit the capture, or the host's own printing during that work
    would land in the model's output.
    """
    ctx = contextvars.copy_context()
    ctx.run(_current_sinks.set, None)
    return ctx.run(fn, *args)


_install_lock = threading.Lock()


def _ensure_routing_streams() -> None:
    with _install_lock:
        if not isinstance(sys.stdout, _RoutingStream) and sys.stdout is not None:
            sys.stdout = _RoutingStream(sys.stdout, lambda s: s.stdout)
        if not isinstance(sys.stderr, _RoutingStream) and sys.stderr is not None:
            sys.stderr = _RoutingStream(sys.stderr, lambda s: s.stderr)


if TYPE_CHECKING:
    SubcallFn = Callable[[str, str | None], str]
    BatchedSubcallFn = Callable[[list[str], str | None], list[str]]
    ToolCallFn = Callable[[str, list[Any], dict[str, Any]], Any]


def _no_tools(name: str, args: list[Any], kwargs: dict[str, Any]) -> Any:
    raise NameError(f"no tool named {name!r}")


class SubcallFunctions:
    """How the namespace's sub-call helpers and tool stubs reach the engine (blocking
    calls). `call_tool` takes JSON arguments and returns a JSON value."""

    __slots__ = ("call_tool", "llm_query", "llm_query_batched", "rlm_query", "rlm_query_batched")

    def __init__(
        self,
        llm_query: SubcallFn,
        llm_query_batched: BatchedSubcallFn,
        rlm_query: SubcallFn,
        rlm_query_batched: BatchedSubcallFn,
        call_tool: ToolCallFn = _no_tools,
    ) -> None:
        self.llm_query = llm_query
        self.llm_query_batched = llm_query_batched
        self.rlm_query = rlm_query
        self.rlm_query_batched = rlm_query_batched
        self.call_tool = call_tool


class CellOutcome:
    """What `Namespace.run` gives back for one block."""

    __slots__ = ("error", "final", "final_json")

    def __init__(self, error: str | None, final: str | None, final_json: str | None = None):
        self.error = error
        self.final = final
        self.final_json = final_json


class Found:
    """What `Namespace.lookup` gives back: the variable's answer text and its JSON, or
    why there is none (the REPLs turn it into `rlm.repl.base.VariableLookup`)."""

    __slots__ = ("error", "json", "value")

    def __init__(
        self, value: str | None, error: str | None = None, json: str | None = None
    ) -> None:
        self.value = value
        self.error = error
        self.json = json


def _check_prompt(name: str, prompt: object) -> str:
    if not isinstance(prompt, str):
        raise TypeError(f"{name}() takes the prompt as a str, not {type(prompt).__name__}")
    return prompt


def _check_prompts(name: str, prompts: object) -> list[str]:
    if isinstance(prompts, str) or not isinstance(prompts, Sequence | set | tuple):
        raise TypeError(f"{name}() takes a list of str prompts, not {type(prompts).__name__}")
    items = list(prompts)
    for i, p in enumerate(items):
        if not isinstance(p, str):
            raise TypeError(f"{name}(): prompt {i} is a {type(p).__name__}, not a str")
    return items


def _check_model(name: str, model: object) -> str | None:
    if model is not None and not isinstance(model, str):
        raise TypeError(f"{name}(model=...) takes a model name str, not {type(model).__name__}")
    return model


class Namespace:
    """One persistent namespace holding `context` and the helper functions."""

    def __init__(
        self, context: object, subcalls: SubcallFunctions, tools: Sequence[ToolSpec] = ()
    ) -> None:
        self._cell = 0
        self._final: tuple[str, str | None] | None = None
        self._builtins = dict(vars(builtins))
        self._builtins["print"] = self._print
        self._helpers = self._make_helpers(subcalls)
        self._tools = {t.name: _tool_stub(t, subcalls.call_tool) for t in tools}
        self._helpers.update(self._tools)
        self.globals: dict[str, Any] = {
            "__name__": "__main__",
            "__builtins__": self._builtins,
            "context": context,
        }
        self.globals.update(self._helpers)
        self._contexts = {"context"}

    def add_context(self, name: str, value: object) -> None:
        """Load one more context (a session's `context_1`, ...) beside the first."""
        self._contexts.add(name)
        self.globals[name] = value

    # -- helpers visible to the model -------------------------------------------------

    def _make_helpers(self, sub: SubcallFunctions) -> dict[str, Any]:
        def llm_query(prompt: str, model: str | None = None) -> str:
            """Ask the sub-model one question; returns its reply."""
            return sub.llm_query(
                _check_prompt("llm_query", prompt), _check_model("llm_query", model)
            )

        def llm_query_batched(prompts: list[str], model: str | None = None) -> list[str]:
            """Ask many prompts concurrently; replies in the same order (errors as text)."""
            items = _check_prompts("llm_query_batched", prompts)
            return (
                sub.llm_query_batched(items, _check_model("llm_query_batched", model))
                if items
                else []
            )

        def rlm_query(prompt: str, model: str | None = None) -> str:
            """Start a child RLM run whose `context` is the prompt; returns its answer."""
            return sub.rlm_query(
                _check_prompt("rlm_query", prompt), _check_model("rlm_query", model)
            )

        def rlm_query_batched(prompts: list[str], model: str | None = None) -> list[str]:
            """Start child runs concurrently, one per prompt; answers in order."""
            items = _check_prompts("rlm_query_batched", prompts)
            return (
                sub.rlm_query_batched(items, _check_model("rlm_query_batched", model))
                if items
                else []
            )

        def FINAL(answer: object) -> None:
            """End the run with `answer`: text, or a value (sent as JSON)."""
            if self._final is None:
                self._final = answer_parts(answer)

        def FINAL_VAR(name: object) -> None:
            """End the run with the value of the variable called `name`."""
            if not isinstance(name, str):
                # The model passed the value itself; that is what it meant.
                FINAL(name)
                return
            key = name.strip().strip("'\"")
            if not self._is_variable(key):
                self._print(self.lookup(key).error, file=_current_stderr())
                return
            FINAL(self.globals[key])

        def SHOW_VARS() -> None:
            """Print the variables you created, with their types and sizes."""
            names = self.variables()
            if not names:
                self._print("No variables yet (besides `context` and the helpers).")
                return
            for n in names:
                value = self.globals[n]
                size = ""
                if hasattr(value, "__len__"):
                    try:
                        size = f", len={len(value)}"
                    except Exception:
                        size = ""
                self._print(f"{n}: {type(value).__name__}{size}")

        helpers = {
            "llm_query": llm_query,
            "llm_query_batched": llm_query_batched,
            "rlm_query": rlm_query,
            "rlm_query_batched": rlm_query_batched,
            "FINAL": FINAL,
            "FINAL_VAR": FINAL_VAR,
            "SHOW_VARS": SHOW_VARS,
        }
        assert set(helpers) == set(HELPER_NAMES)
        return helpers

    @property
    def tool_names(self) -> list[str]:
        return list(self._tools)

    def _print(
        self,
        *args: object,
        sep: str | None = " ",
        end: str | None = "\n",
        file: Any = None,
        flush: bool = False,
    ) -> None:
        sinks = _current_sinks.get()
        if file is None and sinks is not None:
            sep = " " if sep is None else sep
            end = "\n" if end is None else end
            sinks.stdout.write(sep.join(str(a) for a in args) + end)
            return
        builtins.print(*args, sep=sep, end=end, file=file, flush=flush)

    # -- running code -------------------------------------------------------------------

    def variables(self) -> list[str]:
        """Names the model created (not `context`, helpers, modules or dunders)."""
        import types

        return [
            n
            for n, v in self.globals.items()
            if n not in RESERVED_NAMES
            and n not in self._tools
            and n not in self._contexts
            and not n.startswith("_")
            and not isinstance(v, types.ModuleType)
        ]

    def _is_variable(self, name: str) -> bool:
        return (
            name in self.globals
            and name not in HELPER_NAMES
            and name not in self._tools
            and name != "__builtins__"
        )

    def lookup(self, name: str) -> Found:
        """The answer text of a variable (JSON for structured values), and its JSON."""
        if self._is_variable(name):
            try:
                text, data = answer_parts(self.globals[name])
            except Exception as exc:  # its __str__ failed (too deep, or broken)
                return Found(
                    value=None,
                    error=f"{name!r} cannot be turned into text ({type(exc).__name__}: "
                    f"{exc}); make the answer a str first.",
                )
            return Found(value=text, json=data)
        return Found(value=None, error=missing_variable_message(name, self.variables()))

    def run(self, code: str, stdout: TextSink, stderr: TextSink) -> CellOutcome:
        """Execute one block; never raises for errors in the block itself."""
        _ensure_routing_streams()
        self._cell += 1
        self._final = None
        filename = f"<cell {self._cell}>"
        linecache.cache[filename] = (len(code), None, code.splitlines(keepends=True), filename)
        sinks = _Sinks(stdout, stderr)
        token = _current_sinks.set(sinks)
        error: str | None = None
        try:
            try:
                tree = ast.parse(code, filename=filename, mode="exec")
            except SyntaxError as exc:
                import traceback  # only when there is an error: not on every worker's start

                error = "".join(traceback.format_exception_only(type(exc), exc))
                return CellOutcome(error=error.rstrip(), final=None)
            trailing: ast.expr | None = None
            last = tree.body[-1] if tree.body else None
            if isinstance(last, ast.Expr):
                trailing = last.value
                tree.body.pop()
            try:
                exec(compile(tree, filename, "exec"), self.globals)
                if trailing is not None:
                    value = eval(compile(ast.Expression(trailing), filename, "eval"), self.globals)
                    if value is not None:
                        self._print(repr(value))
            except BaseException as exc:  # sys.exit() and KeyboardInterrupt too: the run goes on
                error = _format_exception(exc)
        finally:
            _current_sinks.reset(token)
            # Copies of this context outlive the cell (a timer an HTTP client scheduled
            # during a sub-call keeps one): let them not keep its buffers alive.
            sinks.stdout = sinks.stderr = _Discard()
            restored = self._restore_helpers()
            if restored:
                stderr.write(
                    f"note: {', '.join(restored)} {'is a' if len(restored) == 1 else 'are'} "
                    "built-in helper(s) and was restored; use another name for your variable.\n"
                )
        final, final_json = self._final or (None, None)
        return CellOutcome(error=error, final=final, final_json=final_json)

    def _restore_helpers(self) -> list[str]:
        restored = []
        for name, fn in self._helpers.items():
            if self.globals.get(name) is not fn:
                self.globals[name] = fn
                restored.append(name)
        if self.globals.get("__builtins__") is not self._builtins:
            self.globals["__builtins__"] = self._builtins
        return restored


def _tool_stub(stub: ToolSpec, call: ToolCallFn) -> Callable[..., Any]:
    """The REPL's function for a tool: JSON arguments out, a JSON value back."""
    name = stub.name

    def tool(*args: object, **kwargs: object) -> Any:
        try:
            json_args = [to_json_value(a, f"argument {i + 1}") for i, a in enumerate(args)]
            json_kwargs = {k: to_json_value(v, f"argument {k!r}") for k, v in kwargs.items()}
        except NotJSON as exc:
            raise TypeError(f"{name}(): {exc}. Tool arguments travel as JSON.") from None
        return call(name, json_args, json_kwargs)

    tool.__name__ = tool.__qualname__ = name
    tool.__doc__ = "\n\n".join(p for p in (stub.signature, stub.description, *stub.shapes) if p)
    return tool


def _current_stderr() -> Any:
    sinks = _current_sinks.get()
    return sinks.stderr if sinks is not None else sys.stderr


# rlm's own source files: their frames are never shown to the model.
_RLM_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__))) + os.sep


def _format_exception(exc: BaseException) -> str:
    """The traceback from the model's own frames on, cut where the call enters rlm (a
    helper's or a tool stub's failure reads as a failure of the call in the model's code)."""
    import traceback  # only when there is an error: not on every worker's start

    tb = exc.__traceback__
    while tb is not None and not tb.tb_frame.f_code.co_filename.startswith("<cell "):
        tb = tb.tb_next
    report = traceback.TracebackException(type(exc), exc, tb)
    seen: set[int] = set()
    pending: list[traceback.TracebackException | None] = [report]
    while pending:
        current = pending.pop()
        if current is None or id(current) in seen:
            continue
        seen.add(id(current))
        # Cut where the call enters rlm: rlm's frames and the thread plumbing below them
        # (concurrent.futures, whose line numbers vary between runs) say nothing to the
        # model and would make a recorded run's feedback unrepeatable.
        frames = list(
            itertools.takewhile(lambda f: not f.filename.startswith(_RLM_DIR), current.stack)
        )
        current.stack = traceback.StackSummary.from_list(frames)
        pending += [current.__cause__, current.__context__]
    return "".join(report.format()).rstrip()
