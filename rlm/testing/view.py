"""How `FakeLLMServer` reads a request on each wire format: one provider-neutral view.

A reply handler that answers by prompt should not parse three wire formats itself.
`RecordedRequest.view` gives the system text, the conversation as plain-text messages
and the last user text, whichever SDK sent the request. One reader per format (OpenAI
Chat Completions, OpenAI Responses, Anthropic Messages); each is lenient: a part it
does not know is skipped, a body that is not a request gives an empty view.

In a view, tool calls an assistant made read as `name({"arg": ...})` lines of its
message, and tool results are messages of role "tool"; Anthropic's tool results, sent
inside a user turn, become "tool" messages too, so `last_user` is what a person (or
the engine) wrote. Hidden reasoning (reasoning items, thinking blocks) is left out.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, slots=True)
class ViewMessage:
    """One message as plain text. `role`: "user", "assistant" or "tool"."""

    role: str
    text: str


@dataclass(frozen=True, slots=True)
class RequestView:
    """A request's conversation, the same for every wire format.

    `system` joins every system (and developer) text, in order; `messages` holds the
    rest of the conversation, oldest first; `tools` names the tools offered.
    """

    system: str = ""
    messages: tuple[ViewMessage, ...] = ()
    tools: tuple[str, ...] = ()

    @property
    def last_user(self) -> str:
        """The text of the last user message ("" when there is none)."""
        return next((m.text for m in reversed(self.messages) if m.role == "user"), "")

    @property
    def transcript(self) -> str:
        """The whole conversation as text: the system text, then "role: text" blocks."""
        parts = [f"system: {self.system}"] if self.system else []
        parts += [f"{m.role}: {m.text}" for m in self.messages]
        return "\n\n".join(parts)


def _text(content: object) -> str:
    """Text of a content field: a string, or a list of parts with a "text" each."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(
            str(part["text"])
            for part in content
            if isinstance(part, Mapping) and isinstance(part.get("text"), str)
        )
    return ""


def _call(name: object, arguments: object) -> str:
    """A tool call as `name({...})`, its arguments in one JSON spelling whatever the
    format sent (a JSON string on OpenAI's wire, an object on Anthropic's)."""
    if isinstance(arguments, str):
        try:
            arguments = json.loads(arguments)
        except ValueError:
            return f"{name}({arguments})"
    return f"{name}({json.dumps(arguments, ensure_ascii=False, sort_keys=True)})"


def _joined(*parts: str) -> str:
    return "\n".join(p for p in parts if p)


def read_openai(body: Mapping[str, Any]) -> RequestView:
    """OpenAI Chat Completions: `messages` with system/developer/user/assistant/tool roles."""
    system: list[str] = []
    messages: list[ViewMessage] = []
    for message in _list(body.get("messages")):
        role = message.get("role")
        text = _text(message.get("content"))
        if role in ("system", "developer"):
            system.append(text)
        elif role == "assistant":
            calls = [
                _call(fn.get("name"), fn.get("arguments", ""))
                for call in _list(message.get("tool_calls"))
                if isinstance(fn := call.get("function"), Mapping)
            ]
            messages.append(ViewMessage("assistant", _joined(text, *calls)))
        elif isinstance(role, str):
            messages.append(ViewMessage(role, text))
    tools = tuple(
        str(fn.get("name"))
        for tool in _list(body.get("tools"))
        if isinstance(fn := tool.get("function"), Mapping)
    )
    return RequestView("\n\n".join(system), tuple(messages), tools)


def read_responses(body: Mapping[str, Any]) -> RequestView:
    """OpenAI Responses: `instructions`, and `input` as a string or a list of items."""
    system = [body["instructions"]] if isinstance(body.get("instructions"), str) else []
    messages: list[ViewMessage] = []
    items = body.get("input")
    if isinstance(items, str):
        items = [{"role": "user", "content": items}]
    for item in _list(items):
        kind = item.get("type", "message")
        if kind == "message":
            role = item.get("role")
            text = _text(item.get("content"))
            if role in ("system", "developer"):
                system.append(text)
            elif isinstance(role, str):
                messages.append(ViewMessage(role, text))
        elif kind == "function_call":
            call = _call(item.get("name"), item.get("arguments", ""))
            if messages and messages[-1].role == "assistant":
                messages[-1] = ViewMessage("assistant", _joined(messages[-1].text, call))
            else:
                messages.append(ViewMessage("assistant", call))
        elif kind == "function_call_output":
            messages.append(ViewMessage("tool", _text(item.get("output"))))
    tools = tuple(str(t.get("name")) for t in _list(body.get("tools")) if "name" in t)
    return RequestView("\n\n".join(system), tuple(messages), tools)


def read_anthropic(body: Mapping[str, Any]) -> RequestView:
    """Anthropic Messages: `system` (text or blocks), and turns of content blocks."""
    messages: list[ViewMessage] = []
    for turn in _list(body.get("messages")):
        role = turn.get("role")
        content = turn.get("content")
        if not isinstance(role, str):
            continue
        if isinstance(content, str):
            messages.append(ViewMessage(role, content))
            continue
        texts: list[str] = []
        for block in _list(content):
            kind = block.get("type")
            if kind == "text":
                texts.append(str(block.get("text", "")))
            elif kind == "tool_use":
                texts.append(_call(block.get("name"), block.get("input", {})))
            elif kind == "tool_result":
                messages.append(ViewMessage("tool", _text(block.get("content"))))
        if texts:
            messages.append(ViewMessage(role, _joined(*texts)))
    tools = tuple(str(t.get("name")) for t in _list(body.get("tools")) if "name" in t)
    return RequestView(_text(body.get("system")), tuple(messages), tools)


def _list(value: object) -> list[Mapping[str, Any]]:
    """The mappings of a list field (anything else in it, or a missing field: none)."""
    if not isinstance(value, list):
        return []
    return [v for v in value if isinstance(v, Mapping)]


READERS: dict[str, Callable[[Mapping[str, Any]], RequestView]] = {
    "openai": read_openai,
    "responses": read_responses,
    "anthropic": read_anthropic,
}


def view_of(api: str | None, body: object) -> RequestView:
    """The view of a request body sent to `api` (empty for another path or body)."""
    reader = READERS.get(api) if api is not None else None
    if reader is None or not isinstance(body, Mapping):
        return RequestView()
    return reader(body)
