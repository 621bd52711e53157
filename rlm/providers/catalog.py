"""What rlm knows about well-known models: context windows, and how names are matched.

`context_window("gpt-4o-mini")` is the model's window in tokens, or None when unknown.
Dated snapshots ("gpt-4o-mini-2024-07-18", "claude-sonnet-4-5-20250929") and "-latest"
aliases share their base name's entry; any other suffix is a different model and is not
guessed ("gpt-5-pro" is not "gpt-5"). Add or correct entries with `set_context_window`,
or per run with `RLM(context_windows={...})`.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Iterator

# A snapshot date or a moving alias at the end of a model name.
_SNAPSHOT_SUFFIX = re.compile(r"-(?:\d{4}-\d{2}-\d{2}|\d{8}|latest)$")


def bare_name(model: str) -> str:
    """The model name without a "provider/" prefix."""
    return model.split("/", 1)[1] if "/" in model else model


def name_candidates(model: str) -> Iterator[str]:
    """Names to look `model` up by, most specific first: itself, then its base name."""
    name = bare_name(model.strip())
    yield name
    base = _SNAPSHOT_SUFFIX.sub("", name)
    if base != name:
        yield base


_M = 1_000_000

# Tokens a request may hold (input plus output), from the providers' model pages.
_CONTEXT_WINDOWS: dict[str, int] = {
    # OpenAI
    "gpt-3.5-turbo": 16_385,
    "gpt-4": 8_192,
    "gpt-4-turbo": 128_000,
    "gpt-4o": 128_000,
    "gpt-4o-mini": 128_000,
    "chatgpt-4o": 128_000,
    "gpt-4.1": 1_047_576,
    "gpt-4.1-mini": 1_047_576,
    "gpt-4.1-nano": 1_047_576,
    "gpt-5": 400_000,
    "gpt-5-mini": 400_000,
    "gpt-5-nano": 400_000,
    "gpt-5-pro": 400_000,
    "gpt-5-codex": 400_000,
    "gpt-5.1": 400_000,
    "gpt-5.1-codex": 400_000,
    "gpt-5.2": 400_000,
    "gpt-5.4": 1_050_000,
    "gpt-5.4-mini": 400_000,
    "gpt-5.5": 1 * _M,
    "o1": 200_000,
    "o3": 200_000,
    "o3-mini": 200_000,
    "o3-pro": 200_000,
    "o4-mini": 200_000,
    # Anthropic (the 1M-token beta of some Sonnet models needs a header; not assumed)
    "claude-3-haiku": 200_000,
    "claude-3-opus": 200_000,
    "claude-3-5-haiku": 200_000,
    "claude-3-5-sonnet": 200_000,
    "claude-3-7-sonnet": 200_000,
    "claude-sonnet-4": 200_000,
    "claude-sonnet-4-0": 200_000,
    "claude-sonnet-4-5": 200_000,
    "claude-sonnet-4-6": 1 * _M,
    "claude-opus-4": 200_000,
    "claude-opus-4-0": 200_000,
    "claude-opus-4-1": 200_000,
    "claude-opus-4-5": 200_000,
    "claude-opus-4-6": 1 * _M,
    "claude-opus-4-7": 1 * _M,
    "claude-opus-4-8": 1 * _M,
    "claude-haiku-4-5": 200_000,
    "claude-sonnet-5": 1 * _M,
    "claude-sonnet-5-5": 1 * _M,
    "claude-opus-5": 1 * _M,
    "claude-opus-5-5": 1 * _M,
    "claude-haiku-5-5": 1 * _M,
    "claude-fable-5": 1 * _M,
    "claude-fable-5-1": 1 * _M,
    "claude-mythos-5": 1 * _M,
    "claude-mythos-5-1": 1 * _M,
}

_lock = threading.Lock()


def context_window(model: str) -> int | None:
    """The context window of `model` in tokens, or None when it is not known."""
    with _lock:
        for name in name_candidates(model):
            if name in _CONTEXT_WINDOWS:
                return _CONTEXT_WINDOWS[name]
    return None


def set_context_window(model: str, tokens: int) -> None:
    """Record the context window of `model` (a bare name), for every adapter built after."""
    if not isinstance(tokens, int) or isinstance(tokens, bool) or tokens <= 0:
        raise ValueError(f"a context window is a positive number of tokens, not {tokens!r}")
    with _lock:
        _CONTEXT_WINDOWS[bare_name(model)] = tokens


# OpenAI's reasoning families: o1, o3, o4-mini..., gpt-5 and later, codex models. The
# gpt-5 "chat" variants are not reasoning models.
_REASONING = re.compile(r"^(?:o\d|gpt-(?:[5-9]|\d{2,})|codex)")


def is_reasoning_model(model: str) -> bool:
    """Whether `model` is one of OpenAI's reasoning models (they accept reasoning
    options, such as asking for encrypted reasoning, that other models refuse)."""
    name = bare_name(model.strip()).lower()
    return bool(_REASONING.match(name)) and "-chat" not in name
