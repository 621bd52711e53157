"""Model strings ("openai/gpt-4o-mini", "claude-sonnet-4-5") to `Model` instances.

`register_provider("myprefix", lambda name: MyModel(name))` adds a prefix in one line.
Bare names are routed by their shape: `gpt-*`, `o1*`/`o3*`/`o4*`, `chatgpt-*` go to
OpenAI, `claude-*` to Anthropic.
"""

from __future__ import annotations

import importlib
import re
import threading
from collections.abc import Callable

from rlm.errors import UnknownModelError
from rlm.providers.base import Model

ModelFactory = Callable[[str], Model]

_lock = threading.Lock()
_factories: dict[str, ModelFactory] = {}

_BARE_ROUTES: tuple[tuple[re.Pattern[str], str], ...] = (
    (re.compile(r"^(gpt-|chatgpt-|o\d)"), "openai"),
    (re.compile(r"^claude-"), "anthropic"),
)


def _lazy(module: str, attr: str) -> ModelFactory:
    """A factory that imports its adapter (and its SDK) only when first used."""

    def factory(name: str) -> Model:
        cls = getattr(importlib.import_module(module), attr)
        model: Model = cls(name)
        return model

    return factory


def register_provider(prefix: str, factory: ModelFactory) -> None:
    """Make `"prefix/<model>"` strings build models with `factory(<model>)`."""
    if not prefix or "/" in prefix:
        raise ValueError(f"a provider prefix is a non-empty word without '/', not {prefix!r}")
    with _lock:
        _factories[prefix] = factory


def registered_prefixes() -> list[str]:
    with _lock:
        return sorted(_factories)


def split_model_string(spec: str) -> tuple[str, str]:
    """("provider", "model") for a model string, routing bare names by their shape."""
    spec = spec.strip()
    if "/" in spec:
        prefix, _, name = spec.partition("/")
        if prefix in registered_prefixes():
            return prefix, name
    for pattern, provider in _BARE_ROUTES:
        if pattern.match(spec):
            return provider, spec
    prefixes = ", ".join(f"'{p}/'" for p in registered_prefixes())
    raise UnknownModelError(
        f"cannot tell which provider serves {spec!r}. Use a 'provider/model' string with a "
        f"known prefix ({prefixes}), a bare OpenAI ('gpt-...', 'o3-...') or Anthropic "
        "('claude-...') name, register your own with rlm.register_provider(), or pass a "
        "Model instance."
    )


def resolve_model(spec: str | Model) -> Model:
    """A `Model` for a model string, or the model itself."""
    if not isinstance(spec, str):
        if isinstance(spec, Model):
            return spec
        raise UnknownModelError(
            f"model must be a 'provider/model' string or an object with a `name` and an "
            f"async `complete(request)` method, not {type(spec).__name__}"
        )
    if not spec.strip():
        raise UnknownModelError("model is an empty string; pass e.g. 'openai/gpt-4o-mini'")
    provider, name = split_model_string(spec)
    if not name:
        raise UnknownModelError(f"{spec!r} names no model after the provider prefix")
    with _lock:
        factory = _factories[provider]
    return factory(name)


register_provider("openai", _lazy("rlm.providers.openai", "OpenAIModel"))
register_provider("anthropic", _lazy("rlm.providers.anthropic", "AnthropicModel"))
