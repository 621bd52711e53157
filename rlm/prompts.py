"""Every piece of text the engine sends to a model lives here.

The system prompt names the helpers and stays short; the first user message carries the
query and a description of the context (type, size, a short preview), never the context
itself; later messages carry execution results, cut head and tail to a set size.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from rlm.errors import ConfigurationError
from rlm.repl.base import ExecutionResult, ToolStub
from rlm.repl.output import cut_middle

PREVIEW_CHARS = 500


# How many leading items the description names the types of.
SHOWN_ITEM_TYPES = 3


@dataclass(frozen=True, slots=True)
class ContextInfo:
    """A cheap description of the context: never a copy of it.

    `items` is the number of items of a list, tuple, set or dict (None for other
    types); `item_types` names the types of the first few items ("key: value" types for
    a dict).
    """

    type_name: str
    chars: int
    items: int | None
    preview: str
    item_types: tuple[str, ...] = ()


def describe_context(context: object, preview_chars: int = PREVIEW_CHARS) -> ContextInfo:
    """Type, size and a preview of `context`, computed without copying large values.

    Raises `ConfigurationError` for a context that contains itself or is nested too
    deeply to measure.
    """
    try:
        return _describe(context, preview_chars)
    except RecursionError:
        raise ConfigurationError(
            "the context is nested too deeply to describe (thousands of levels of lists "
            "or dicts): flatten it, or pass it as text"
        ) from None


def _describe(context: object, preview_chars: int) -> ContextInfo:
    type_name = type(context).__name__
    if isinstance(context, str):
        return ContextInfo(type_name, len(context), None, context[:preview_chars])
    if isinstance(context, bytes | bytearray):
        return ContextInfo(type_name, len(context), None, repr(bytes(context[:preview_chars])))
    if isinstance(context, Mapping):
        keys = list(_take(context.keys(), 20))
        chars = _size(context, frozenset())
        preview = f"keys: {keys!r}"[:preview_chars]
        pairs = tuple(
            f"{type(key).__name__}: {type(context[key]).__name__}"
            for key in _take(context.keys(), SHOWN_ITEM_TYPES)
        )
        return ContextInfo(type_name, chars, len(context), preview, pairs)
    if isinstance(context, Sequence | set | frozenset):
        items = list(_take(context, SHOWN_ITEM_TYPES))
        path = frozenset({id(context)})
        chars = sum(_size(v, path) for v in context)
        shown = ", ".join(repr(v)[: preview_chars // 3] for v in items)
        return ContextInfo(
            type_name,
            chars,
            len(context),
            f"first items: [{shown}]"[:preview_chars],
            _type_names(items),
        )
    text = repr(context)
    return ContextInfo(type_name, len(text), None, text[:preview_chars])


def context_summary(info: ContextInfo) -> str:
    """'str of 1,234 characters'; for a container its items, the types of the first ones
    and the characters of text in all: 'list of 3 items (str, str, dict), 1,234 characters
    in all', 'dict of 2 items (str: list, str: int), 57 characters in all'."""
    chars = _count(info.chars, "character")
    if info.items is None:
        return f"{info.type_name} of {chars}"
    types = ""
    if info.item_types:
        more = ", ..." if info.items > len(info.item_types) else ""
        types = f" ({', '.join(info.item_types)}{more})"
    return f"{info.type_name} of {_count(info.items, 'item')}{types}, {chars} in all"


def _count(n: int, noun: str) -> str:
    return f"{n:,} {noun}{'' if n == 1 else 's'}"


def _type_names(values: Iterable[object]) -> tuple[str, ...]:
    return tuple(type(v).__name__ for v in values)


def _take(values: Iterable[object], n: int) -> list[object]:
    out: list[object] = []
    for i, v in enumerate(values):
        if i >= n:
            break
        out.append(v)
    return out


def _size(value: object, path: frozenset[int]) -> int:
    """Characters of text in `value`. `path` holds the containers being measured, so a
    container found inside itself is reported instead of recursing forever."""
    if isinstance(value, str | bytes):
        return len(value)
    if isinstance(value, int | float | bool) or value is None:
        return len(str(value))
    if isinstance(value, Mapping | list | tuple):
        if id(value) in path:
            raise ConfigurationError(
                f"the context contains itself (a {type(value).__name__} that holds itself, "
                "directly or through other items), so it cannot be described or copied into "
                "the REPL: pass data without such cycles"
            )
        inner = path | {id(value)}
        if isinstance(value, Mapping):
            return sum(len(str(k)) + _size(v, inner) for k, v in value.items())
        return sum(_size(v, inner) for v in value)
    return len(repr(value))


SYSTEM_PROMPT = """\
You answer a query about a context that is too large to read at once. The context is \
loaded in a persistent Python REPL as the variable `context`; you see it only through \
code you write and what that code prints.

In the REPL you have:
- `context`: the data, a {context_type}.
- `llm_query(prompt, model=None) -> str`: ask a sub-model one question. It sees only \
the prompt you pass, so put the text it needs in the prompt. {window_note}
- `llm_query_batched(prompts, model=None) -> list[str]`: many prompts at once, run \
concurrently, answers in order. Prefer it over calling llm_query in a loop.
- `rlm_query(prompt, model=None) -> str` and `rlm_query_batched(prompts)`: {rlm_note}
- `FINAL(answer)`: finish with `answer`. `FINAL_VAR(name)`: finish with the variable \
called `name`.
- `SHOW_VARS()`: list the variables you created.
{tools}
{format_instructions}

How to work:
1. Look before you read: print the context's length, structure and a few samples; \
never print all of it.
2. Use code (slicing, regexes, parsing, counting) for what code can do exactly.
3. For what needs understanding, split the context into chunks, ask sub-calls about \
each chunk, and combine their answers in code.
4. Check your answer against the data before you finish. Output is cut when long, so \
print summaries, not bulk.
"""

RLM_NOTE_RECURSIVE = (
    "start a child RLM that gets the prompt as its own `context` and REPL; use it for "
    "sub-tasks too large or complex for one llm_query."
)
RLM_NOTE_FLAT = "the same as llm_query here (no deeper recursion is allowed)."

TOOLS_HEADER = (
    "\nTools of the application, called from your code like functions (they run outside "
    "the REPL; arguments and results are JSON values; a failing tool raises an "
    "exception with its message):"
)
# The most a tool's description may add to the system prompt.
TOOL_DESCRIPTION_CHARS = 200
# What the tool list may add to the system prompt before descriptions are shortened, then
# left out (the model can still read them: each tool's `__doc__` has the full text).
TOOLS_SECTION_CHARS = 2000
TOOLS_DOC_NOTE = "Descriptions are cut to fit; `print(name.__doc__)` shows a tool's own."


def tools_section(tools: Sequence[ToolStub]) -> str:
    """The system prompt's list of user tools (empty without tools), kept within
    `TOOLS_SECTION_CHARS` when it can be by shortening descriptions."""
    if not tools:
        return ""
    shapes = list(dict.fromkeys(s for tool in tools for s in tool.shapes))
    text = ""
    for limit in (TOOL_DESCRIPTION_CHARS, 60, 0):
        lines = [TOOLS_HEADER]
        for tool in tools:
            about = tool.description
            if len(about) > limit:
                about = about[: max(0, limit - 3)] + "..." if limit else ""
            lines.append(f"- `{tool.signature}`" + (f": {about}" if about else ""))
        if shapes:
            lines.append("Their types, passed and returned as dicts: " + "; ".join(shapes))
        if limit < TOOL_DESCRIPTION_CHARS:
            lines.append(TOOLS_DOC_NOTE)
        text = "\n".join(lines) + "\n"
        if len(text) <= TOOLS_SECTION_CHARS:
            break
    return text


def system_prompt(
    *,
    context_type: str,
    format_instructions: str,
    can_recurse: bool,
    subcall_window_chars: int | None,
    tools: Sequence[ToolStub] = (),
) -> str:
    """The system prompt for one run."""
    window_note = (
        f"A prompt may hold up to about {subcall_window_chars:,} characters."
        if subcall_window_chars
        else "Keep prompts well under the sub-model's context window."
    )
    return SYSTEM_PROMPT.format(
        context_type=context_type,
        window_note=window_note,
        rlm_note=RLM_NOTE_RECURSIVE if can_recurse else RLM_NOTE_FLAT,
        format_instructions=format_instructions,
        tools=tools_section(tools),
    )


def first_user_message(query: str, info: ContextInfo, answer_shape: str | None = None) -> str:
    """The query, what the context looks like, and the shape the answer must have."""
    shape = f"{answer_shape}\n\n" if answer_shape else ""
    return (
        f"Query: {query}\n\n"
        f"The context is a {context_summary(info)}. Preview:\n{info.preview}\n\n"
        f"{shape}Start by exploring `context` with code."
    )


def invalid_answer(errors: str) -> str:
    """What the model is told when its answer does not have the required shape."""
    return (
        "Your final answer was not accepted: it does not match the required shape.\n"
        f"{errors}\nFix the value and give it again with FINAL(value) or FINAL_VAR(name)."
    )


# What a session's later turn is told of the earlier ones: queries and answers, not
# transcripts, so a long conversation costs little per turn.
SESSION_TURNS_SHOWN = 20
SESSION_ANSWER_CHARS = 2_000
SESSION_QUERY_CHARS = 1_000
SESSION_VARIABLES_CHARS = 3_000


@dataclass(frozen=True, slots=True)
class EarlierTurn:
    """One earlier turn of a session, as the next turn's prompt shows it."""

    query: str
    answer: str | None
    stop_reason: str


@dataclass(frozen=True, slots=True)
class NamedContext:
    """A context of a session: its REPL name, its description, and whether it is new."""

    name: str
    info: ContextInfo
    new: bool = False


def session_preamble(
    *,
    turn: int,
    contexts: Sequence[NamedContext],
    earlier: Sequence[EarlierTurn],
    variables: str,
    worker_replaced: bool,
) -> str:
    """What a session's turn is told before its query (`first_user_message`): what earlier
    turns asked and answered, the REPL's variables, and its contexts. Empty for a first
    turn with one context."""
    parts: list[str] = []
    if turn > 1:
        if worker_replaced:
            parts.append(
                f"This is turn {turn} of a conversation. The REPL worker stopped after the "
                "last turn and was replaced: every variable of earlier turns is gone (the "
                "contexts and helpers are loaded again), so recompute what you need."
            )
        else:
            parts.append(
                f"This is turn {turn} of a conversation in the same REPL: the variables, "
                "imports and results of earlier turns are still there; reuse them."
            )
        shown = earlier[-SESSION_TURNS_SHOWN:]
        lines = ["Earlier turns (query, then final answer):"]
        if len(earlier) > len(shown):
            lines.append(f"({len(earlier) - len(shown)} earlier turns not shown)")
        for number, past in enumerate(shown, start=len(earlier) - len(shown) + 1):
            answer = (
                cut_middle(past.answer, SESSION_ANSWER_CHARS)
                if past.answer is not None
                else f"(no answer: the turn stopped with {past.stop_reason})"
            )
            lines.append(f"{number}. {cut_middle(past.query, SESSION_QUERY_CHARS)}")
            lines.append(f"   Answer: {answer}")
        parts.append("\n".join(lines))
        if not worker_replaced:
            parts.append(
                "Variables in the REPL now (SHOW_VARS()):\n"
                + cut_middle(variables.strip() or "(none)", SESSION_VARIABLES_CHARS)
            )
    note = contexts_note(contexts)
    if note:
        parts.append(note)
    return "\n\n".join(parts)


def contexts_note(contexts: Sequence[NamedContext]) -> str:
    """The contexts a session's REPL holds, when there is more than `context`, with a
    preview of those new in this turn ('' otherwise)."""
    if len(contexts) < 2:
        return ""
    described = [
        f"- `{c.name}`: {context_summary(c.info)}" + (" (new in this turn)" if c.new else "")
        for c in contexts
    ]
    parts = ["Contexts in the REPL:\n" + "\n".join(described)]
    parts += [f"Preview of `{c.name}`:\n{c.info.preview}" for c in contexts if c.new]
    return "\n\n".join(parts)


def format_execution(index: int, result: ExecutionResult, max_chars: int) -> str:
    """One block's result, as the model sees it."""
    parts = [f"[block {index}]"]
    if result.stdout or result.stdout_chars:
        parts.append(cut_middle(result.stdout, max_chars, result.stdout_chars))
    if result.stderr or result.stderr_chars:
        parts.append("stderr:\n" + cut_middle(result.stderr, max_chars // 2, result.stderr_chars))
    if result.error:
        parts.append("error:\n" + cut_middle(result.error, max_chars // 2))
    if result.restarted:
        parts.append(
            "The REPL worker was restarted: every variable you made is gone; the "
            "context(s) and the helpers are loaded again."
        )
    if len(parts) == 1:
        parts.append("(no output)")
    return "\n".join(parts)


def format_final_var_error(message: str) -> str:
    return f"{message}"


LAST_ITERATION = (
    "You are out of iterations. From what you found so far, give your best final answer "
    "now as FINAL(answer). Do not write more code."
)

LAST_ITERATION_TOOLS = (
    "You are out of iterations. From what you found so far, call final_answer now with "
    "your best answer. Do not run more code."
)


def subcall_too_large(chars: int, model: str, window_tokens: int, limit_chars: int) -> str:
    return (
        f"prompt of {chars:,} characters (about {chars // 4:,} tokens) is larger than "
        f"{model} accepts ({window_tokens:,} tokens, about {limit_chars:,} characters "
        "of prompt). Split the input into smaller chunks."
    )
