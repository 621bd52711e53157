"""Model adapters behind the `Model` protocol, the model-string registry and prices."""

from rlm.providers.base import (
    Message,
    Model,
    ModelInfo,
    ModelRequest,
    ModelResponse,
    RetryDetails,
    ToolCall,
    ToolSpec,
    Usage,
    describe_model,
)
from rlm.providers.pricing import Price, cost_usd, price_for, set_price
from rlm.providers.registry import register_provider, resolve_model

__all__ = [
    "Message",
    "Model",
    "ModelInfo",
    "ModelRequest",
    "ModelResponse",
    "Price",
    "RetryDetails",
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
