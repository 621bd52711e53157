"""Prices per million tokens, and the cost of a call's usage.

`cost_usd(model, usage)` is None, not 0, for a model without a known price. Override or
add prices with `set_price("my-model", Price(input=1.0, output=2.0))`.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

from rlm.providers.base import Usage


@dataclass(frozen=True, slots=True)
class Price:
    """US dollars per million tokens. Cache prices default to the input price."""

    input: float
    output: float
    cache_read: float | None = None
    cache_write: float | None = None


_lock = threading.Lock()
_prices: dict[str, Price] = {}


def set_price(model: str, price: Price) -> None:
    """Set the price of `model` (a bare name, e.g. "gpt-4o-mini")."""
    with _lock:
        _prices[model] = price


def price_for(model: str) -> Price | None:
    """The price of `model`, trying the bare name and dated variants' base names."""
    name = model.split("/", 1)[1] if "/" in model else model
    with _lock:
        if name in _prices:
            return _prices[name]
        # Dated snapshots ("gpt-4o-mini-2024-07-18") cost what their base name costs.
        best = max((k for k in _prices if name.startswith(k + "-")), key=len, default=None)
        return _prices[best] if best else None


def cost_usd(model: str, usage: Usage) -> float | None:
    """What `usage` cost on `model`, or None when the price is unknown."""
    price = price_for(model)
    if price is None:
        return None
    cache_read = usage.cache_read_tokens
    cache_write = usage.cache_write_tokens
    plain_input = max(0, usage.input_tokens - cache_read - cache_write)
    total = (
        plain_input * price.input
        + cache_read * (price.cache_read if price.cache_read is not None else price.input)
        + cache_write * (price.cache_write if price.cache_write is not None else price.input)
        + usage.output_tokens * price.output
    )
    return total / 1_000_000
