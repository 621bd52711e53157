"""Model adapters behind the `Model` protocol, the model-string registry and prices.

`OpenAIModel`, `AnthropicModel` and `RetryPolicy` are imported on first use, so that
`import rlm` loads neither SDK.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from rlm.providers.base import (
    Message,
    Model,
    ModelInfo,
    ModelRequest,
    ModelResponse,
    ProviderItem,
    RetryDetails,
    ToolCall,
    ToolSpec,
    Usage,
    describe_model,
)
from rlm.providers.pricing import Price, cost_usd, price_for, set_price
from rlm.providers.registry import register_provider, resolve_model

if TYPE_CHECKING:
    from rlm.providers.anthropic import AnthropicModel
    from rlm.providers.openai import OpenAIModel
    from rlm.providers.retry import RetryPolicy

_LAZY = {
    "OpenAIModel": "rlm.providers.openai",
    "AnthropicModel": "rlm.providers.anthropic",
    "RetryPolicy": "rlm.providers.retry",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


__all__ = [
    "AnthropicModel",
    "Message",
    "Model",
    "ModelInfo",
    "ModelRequest",
    "ModelResponse",
    "OpenAIModel",
    "Price",
    "ProviderItem",
    "RetryDetails",
    "RetryPolicy",
    "ToolCall",
    "ToolSpec",
    "Usage",
    "cost_usd",
    "describe_model",
    "price_for",
    "register_provider",
    "resolve_model",
    "set_price",
]
