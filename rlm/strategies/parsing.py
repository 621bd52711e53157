"""Parsing strategies: how code and the final answer are read from a model's reply.

A `ParsingStrategy` turns a `ModelResponse` into a `ParsedReply` (code blocks to run, and
the final-answer marker if any) and decides how the conversation carries the replies and
the execution results. Two ship:

- `FencedCodeParser` (the default): code in ```` ```repl ```` or ```` ```python ```` fences,
  answers as `FINAL(answer)` / `FINAL_VAR(name)` text markers at the start of a line.
- `ToolCallingParser`: the model calls `execute_python(code)` and `final_answer(answer)`
  through the provider's native function calling; no text is parsed.

Subclass `ParsingStrategy` (or one of these) to read another format.
"""

from __future__ import annotations

import ast
import json
import keyword
import re
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

from rlm.errors import ConfigurationError
from rlm.providers.base import Message, ModelResponse, ToolCall, ToolSpec


@dataclass(frozen=True, slots=True)
class CodeBlock:
    """Code to run. `call_id` links it to a native tool call, when there is one."""

    code: str
    call_id: str | None = None


@dataclass(frozen=True, slots=True)
class FinalMarker:
    """A final answer given in the reply: the answer text, or the name of a variable.

    An `"answer"` whose value is exactly the name of an existing REPL variable (a model
    writing `FINAL(total)` after computing `total`) is answered with that variable's
    value, as `FINAL_VAR` would; `literal=True` marks a value that is text whatever it
    says (a quoted `FINAL("total")`, a tool's `answer` argument). It is left out of
    comparisons: two markers with the same kind and value are the same answer.
    """

    kind: Literal["answer", "var"]
    value: str
    call_id: str | None = None
    literal: bool = field(default=False, compare=False)

    def __post_init__(self) -> None:
        if self.kind not in ("answer", "var"):
            raise ConfigurationError(
                f"FinalMarker kind {self.kind!r} is not one rlm knows: use 'answer' (value "
                "is the answer text) or 'var' (value names a REPL variable holding it)"
            )
        if not isinstance(self.value, str):
            raise ConfigurationError(
                f"FinalMarker value must be a str, not {type(self.value).__name__}: "
                "convert the answer to text (or give the variable's name)"
            )

    @property
    def bare_name(self) -> str | None:
        """The variable an unquoted `FINAL(name)` may mean: the value, when it is a
        Python name (not a keyword) and the marker is not `literal`; else None."""
        if self.kind != "answer" or self.literal:
            return None
        name = self.value
        return name if name.isidentifier() and not keyword.iskeyword(name) else None


@dataclass(frozen=True, slots=True)
class ParsedReply:
    code_blocks: tuple[CodeBlock, ...]
    final: FinalMarker | None


class ParsingStrategy(ABC):
    """Reads replies and shapes the conversation around them. Subclass to customise.

    Only `parse` is abstract. The other methods have defaults that suit text-based
    formats: the reply goes back as an assistant message and all of an iteration's
    execution results as one user message.
    """

    #: Shown in telemetry and docs.
    name: str = "custom"

    @abstractmethod
    def parse(self, response: ModelResponse) -> ParsedReply:
        """Find the code blocks and the final marker in a reply. Must not raise."""

    def instructions(self) -> str:
        """How to write code and answers, for the system prompt."""
        return FENCE_INSTRUCTIONS

    def tools(self) -> tuple[ToolSpec, ...]:
        """Tools offered to the model on every root call (none for text formats)."""
        return ()

    def assistant_message(self, response: ModelResponse) -> Message:
        """The history entry for the model's reply."""
        return Message("assistant", response.text)

    def feedback(self, parsed: ParsedReply, outputs: Sequence[str]) -> list[Message]:
        """Messages carrying the formatted execution results back to the model."""
        return [Message("user", "\n\n".join(outputs))]

    def reminder(self, response: ModelResponse) -> list[Message]:
        """What to say when a reply had neither code nor a final answer."""
        return [Message("user", FENCE_REMINDER)]

    def parse_last_answer(self, response: ModelResponse) -> FinalMarker | None:
        """Read the reply to the engine's last request for an answer (out of iterations).

        Defaults to `parse(response).final`; a strategy may be more lenient here, since
        the model was asked for nothing but the answer.
        """
        return self.parse(response).final

    def prose(self, response: ModelResponse) -> str:
        """The reply's text outside code: the answer of last resort, when the reply to
        the last-answer request gives no answer the engine can resolve."""
        _, masked = split_fences(response.text.replace("\r\n", "\n").replace("\r", "\n"))
        return re.sub(r"\n{3,}", "\n\n", masked).strip()


FENCE_INSTRUCTIONS = """\
Write Python in fenced blocks tagged `repl`:
```repl
print(len(context))
```
Each block runs in the same namespace, in order; you see what it prints. When you know the \
answer, call FINAL(answer) or FINAL_VAR(variable_name) in code, or write FINAL(answer) / \
FINAL_VAR(variable_name) at the start of a line outside code."""

FENCE_REMINDER = (
    "Your reply had no ```repl code block and no final answer. Write code in a ```repl "
    "block to look at `context`, or give the answer with FINAL(answer) at the start of a "
    "line (or FINAL_VAR(variable_name))."
)

CODE_LANGUAGES = frozenset({"repl", "python", "py", "python3", "ipython"})

_FENCE_OPEN = re.compile(r"^(?P<indent>[ \t]*)(?P<fence>`{3,}|~{3,})[ \t]*(?P<info>[^\n`]*)$")
# A marker starts a line, possibly after list, quote or heading marks and emphasis.
_MARKER = re.compile(r"(?m)^[ \t>#\-+*_]*?(?:\d+\.[ \t]+)?(?P<name>FINAL_VAR|FINAL)[ \t]*\(")
_MARKER_ANYWHERE = re.compile(r"(?<![A-Za-z0-9_])(?P<name>FINAL_VAR|FINAL)[ \t]*\(")
_INLINE_CODE = re.compile(r"(`+)(?:(?!\1).)+?\1", re.DOTALL)


def _strip_indent(line: str, indent: str) -> str:
    width = 0
    while width < len(indent) and width < len(line) and line[width] in " \t":
        width += 1
    return line[width:]


def split_fences(text: str) -> tuple[list[tuple[str, str]], str]:
    """Find fenced blocks. Returns ([(language, code)], the text with blocks blanked out).

    Fences may use backticks or tildes, three or more; a block closes at a line holding
    only the same fence character at least as many times. A fence indented inside a list
    item has that indentation removed from its lines. An unclosed fence runs to the end.
    """
    lines = text.split("\n")
    blocks: list[tuple[str, str]] = []
    masked: list[str] = []
    i = 0
    while i < len(lines):
        opened = _FENCE_OPEN.match(lines[i])
        if opened is None:
            masked.append(lines[i])
            i += 1
            continue
        indent, fence = opened["indent"], opened["fence"]
        info = opened["info"].strip()
        language = info.split()[0].lower() if info else ""
        body: list[str] = []
        masked.append("")
        i += 1
        while i < len(lines):
            stripped = lines[i].strip()
            if stripped and set(stripped) == {fence[0]} and len(stripped) >= len(fence):
                masked.append("")
                i += 1
                break
            body.append(_strip_indent(lines[i], indent))
            masked.append("")
            i += 1
        blocks.append((language, "\n".join(body)))
    return blocks, "\n".join(masked)


def _blank(match: re.Match[str]) -> str:
    return re.sub(r"[^\n]", " ", match.group(0))


def _closing_paren(text: str, start: int, quote_aware: bool) -> int | None:
    """Index of the ')' that closes the '(' just before `start`, or None."""
    depth = 1
    i = start
    n = len(text)
    while i < n:
        ch = text[i]
        if quote_aware and ch in "\"'":
            end = text.find(ch, i + 1)
            if end != -1:
                i = end + 1
                continue
        elif ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
            if depth == 0:
                return i
        i += 1
    return None


def _unquote(answer: str) -> str:
    """`FINAL("Paris")` means Paris: a lone Python string literal is unwrapped."""
    if len(answer) >= 2 and answer[0] in "\"'" and answer[-1] == answer[0]:
        try:
            value = ast.literal_eval(answer)
        except (ValueError, SyntaxError, MemoryError, RecursionError):
            return answer
        if isinstance(value, str):
            return value
    return answer


def find_final_marker(text: str, *, anywhere: bool = False) -> FinalMarker | None:
    """The first `FINAL(...)`/`FINAL_VAR(...)` marker outside code, or None.

    A marker must start a line (list, quote and heading marks and markdown emphasis may
    come before it). Parentheses balance, also across lines; parentheses inside matching
    quotes do not count. Text after the closing parenthesis is not part of the answer.
    With `anywhere=True` a marker may also stand inside a line of prose.
    """
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    _, prose = split_fences(text)
    prose = _INLINE_CODE.sub(_blank, prose)
    for match in (_MARKER_ANYWHERE if anywhere else _MARKER).finditer(prose):
        start = match.end()
        # Positions line up: split_fences blanks fenced lines but keeps line count, and
        # prose before a marker is unchanged, so map back through line offsets.
        offset = _original_offset(text, prose, start)
        close = _closing_paren(text, offset, quote_aware=True)
        if close is None:
            close = _closing_paren(text, offset, quote_aware=False)
        if close is None:
            continue
        inner = text[offset:close].strip()
        if match["name"] == "FINAL":
            answer = _unquote(inner)
            return FinalMarker("answer", answer, literal=answer != inner)
        name = _unquote(inner).strip()
        return FinalMarker("var", name)
    return None


def _original_offset(original: str, prose: str, prose_offset: int) -> int:
    line_no = prose.count("\n", 0, prose_offset)
    column = prose_offset - (prose.rfind("\n", 0, prose_offset) + 1)
    line_start = 0
    for _ in range(line_no):
        line_start = original.index("\n", line_start) + 1
    return line_start + column


class FencedCodeParser(ParsingStrategy):
    """The default: ```` ```repl ```` / ```` ```python ```` fences and `FINAL(...)` markers."""

    name = "fenced"

    def __init__(self, languages: Sequence[str] = tuple(CODE_LANGUAGES)) -> None:
        self.languages = frozenset(lang.lower() for lang in languages)

    def parse(self, response: ModelResponse) -> ParsedReply:
        text = response.text.replace("\r\n", "\n").replace("\r", "\n")
        blocks, _ = split_fences(text)
        code = tuple(
            CodeBlock(body)
            for language, body in blocks
            if language in self.languages and body.strip()
        )
        return ParsedReply(code_blocks=code, final=find_final_marker(text))

    def parse_last_answer(self, response: ModelResponse) -> FinalMarker | None:
        # Asked for nothing but the answer, "My best guess is FINAL(2)" counts too.
        return find_final_marker(response.text, anywhere=True)


EXECUTE_TOOL = ToolSpec(
    name="execute_python",
    description=(
        "Run Python code in the persistent REPL that holds `context`; returns what it "
        "prints. Variables persist between calls."
    ),
    parameters={
        "type": "object",
        "properties": {"code": {"type": "string", "description": "Python code to run"}},
        "required": ["code"],
        "additionalProperties": False,
    },
)

FINAL_TOOL = ToolSpec(
    name="final_answer",
    description=(
        "Finish with the answer. Pass `answer` (the text), or `variable` (the name of a "
        "REPL variable holding it)."
    ),
    parameters={
        "type": "object",
        "properties": {
            "answer": {"type": "string", "description": "the final answer"},
            "variable": {"type": "string", "description": "name of a REPL variable"},
        },
        "additionalProperties": False,
    },
)

TOOL_INSTRUCTIONS = """\
Use the `execute_python` tool to run Python code; each call runs in the same namespace, \
in order, and returns what the code prints. When you know the answer, call the \
`final_answer` tool (with `answer`, or with `variable` naming a REPL variable), or call \
FINAL(answer) / FINAL_VAR(name) inside your code."""

TOOL_REMINDER = (
    "Use the execute_python tool to run code on `context`, or the final_answer tool to finish."
)


def _tool_argument(call: ToolCall, key: str) -> str | None:
    value = call.arguments.get(key)
    if value is None:
        return None
    return value if isinstance(value, str) else json.dumps(value)


class ToolCallingParser(ParsingStrategy):
    """Native function calling: `execute_python(code)` and `final_answer(answer)` tools.

    Needs a model whose adapter passes `ModelRequest.tools` to the provider and returns
    `ModelResponse.tool_calls` (the OpenAI and Anthropic adapters do).
    """

    name = "tool_calling"

    def parse(self, response: ModelResponse) -> ParsedReply:
        blocks: list[CodeBlock] = []
        final: FinalMarker | None = None
        for call in response.tool_calls:
            if call.name == EXECUTE_TOOL.name:
                code = _tool_argument(call, "code")
                blocks.append(CodeBlock(code or "", call_id=call.id))
            elif call.name == FINAL_TOOL.name and final is None:
                variable = _tool_argument(call, "variable")
                answer = _tool_argument(call, "answer")
                if answer is not None:
                    final = FinalMarker("answer", answer, call_id=call.id, literal=True)
                elif variable:
                    final = FinalMarker("var", variable.strip(), call_id=call.id)
                else:
                    final = FinalMarker("answer", "", call_id=call.id)
        return ParsedReply(code_blocks=tuple(blocks), final=final)

    def instructions(self) -> str:
        return TOOL_INSTRUCTIONS

    def tools(self) -> tuple[ToolSpec, ...]:
        return (EXECUTE_TOOL, FINAL_TOOL)

    def assistant_message(self, response: ModelResponse) -> Message:
        return Message("assistant", response.text, tool_calls=response.tool_calls)

    def feedback(self, parsed: ParsedReply, outputs: Sequence[str]) -> list[Message]:
        messages: list[Message] = []
        answered: set[str] = set()
        for block, output in zip(parsed.code_blocks, outputs, strict=False):
            if block.call_id is not None:
                messages.append(Message("tool", output, tool_call_id=block.call_id))
                answered.add(block.call_id)
        # Providers require a result for every tool call the assistant made.
        final_id = parsed.final.call_id if parsed.final is not None else None
        if final_id is not None and final_id not in answered:
            messages.append(
                Message(
                    "tool", "No answer was taken from this call; see above.", tool_call_id=final_id
                )
            )
        extra = outputs[len(parsed.code_blocks) :]
        if extra:
            messages.append(Message("user", "\n\n".join(extra)))
        return messages

    def reminder(self, response: ModelResponse) -> list[Message]:
        messages = [
            Message("tool", "Unknown tool; use execute_python or final_answer.", tool_call_id=c.id)
            for c in response.tool_calls
            if c.name not in (EXECUTE_TOOL.name, FINAL_TOOL.name)
        ]
        return [*messages, Message("user", TOOL_REMINDER)]
