"""Prices per million tokens, and the cost of a call's usage.

`cost_usd(model, usage)` is None, not 0, for a model without a known price. Override or
add prices with `set_price("my-model", Price(input=1.0, output=2.0))`.

The shipped table holds the providers' published standard (not batch, not priority)
prices in US dollars per million tokens. Dated snapshots ("gpt-4o-mini-2024-07-18",
"claude-sonnet-4-5-20250929") and "-latest" aliases cost what their base name costs; any
other variant ("gpt-5-pro", "o3-pro") needs its own entry and is never priced as its
base. Long-context surcharges (requests past 100K/200K/272K tokens on some models, such
as gpt-5.4 or claude-haiku-5-5) are not modelled: the table holds the lower tier, so set
your own price if your requests are that long.
"""

from __future__ import annotations

import functools
import threading
from dataclasses import dataclass

from rlm.providers.base import Usage
from rlm.providers.catalog import bare_name, name_candidates


@dataclass(frozen=True, slots=True)
class Price:
    """US dollars per million tokens. Cache prices default to the input price."""

    input: float
    output: float
    cache_read: float | None = None
    cache_write: float | None = None


def _openai(input: float, output: float, cached: float | None = None) -> Price:
    # OpenAI caches automatically and charges nothing extra to write the cache.
    return Price(input=input, output=output, cache_read=cached, cache_write=input)


def _anthropic(input: float, output: float, cache_read: float | None = None) -> Price:
    # Cache hits cost 0.1x the input price unless given, 5-minute cache writes 1.25x.
    return Price(
        input=input,
        output=output,
        cache_read=cache_read if cache_read is not None else round(input * 0.1, 6),
        cache_write=round(input * 1.25, 6),
    )


_OPUS_4 = _anthropic(15.0, 75.0)
_OPUS_45 = _anthropic(5.0, 25.0)
_SONNET = _anthropic(3.0, 15.0)

_DEFAULT_PRICES: dict[str, Price] = {
    # OpenAI (platform.openai.com pricing, standard tier)
    "gpt-3.5-turbo": _openai(0.50, 1.50),
    "gpt-4": _openai(30.0, 60.0),
    "gpt-4-turbo": _openai(10.0, 30.0),
    "gpt-4o": _openai(2.50, 10.0, 1.25),
    "gpt-4o-mini": _openai(0.15, 0.60, 0.075),
    "chatgpt-4o": _openai(5.0, 15.0),
    "gpt-4.1": _openai(2.0, 8.0, 0.50),
    "gpt-4.1-mini": _openai(0.40, 1.60, 0.10),
    "gpt-4.1-nano": _openai(0.10, 0.40, 0.025),
    "gpt-5": _openai(1.25, 10.0, 0.125),
    "gpt-5-mini": _openai(0.25, 2.0, 0.025),
    "gpt-5-nano": _openai(0.05, 0.40, 0.005),
    "gpt-5-pro": _openai(15.0, 120.0),
    "gpt-5-codex": _openai(1.25, 10.0, 0.125),
    "gpt-5.1": _openai(1.25, 10.0, 0.125),
    "gpt-5.1-codex": _openai(1.25, 10.0, 0.125),
    "gpt-5.2": _openai(1.75, 14.0, 0.175),
    "gpt-5.4": _openai(2.50, 15.0, 0.25),
    "gpt-5.4-mini": _openai(0.75, 4.50, 0.075),
    "gpt-5.4-nano": _openai(0.20, 1.25, 0.02),
    "gpt-5.5": _openai(5.0, 30.0, 0.50),
    "o1": _openai(15.0, 60.0, 7.50),
    "o3": _openai(2.0, 8.0, 0.50),
    "o3-mini": _openai(1.10, 4.40, 0.55),
    "o3-pro": _openai(20.0, 80.0),
    "o4-mini": _openai(1.10, 4.40, 0.275),
    # Anthropic (platform.claude.com pricing; cache writes at the 5-minute rate)
    "claude-3-haiku": _anthropic(0.25, 1.25),
    "claude-3-opus": _OPUS_4,
    "claude-3-5-haiku": _anthropic(0.80, 4.0),
    "claude-3-5-sonnet": _SONNET,
    "claude-3-7-sonnet": _SONNET,
    "claude-sonnet-4": _SONNET,
    "claude-sonnet-4-0": _SONNET,
    "claude-sonnet-4-5": _SONNET,
    "claude-sonnet-4-6": _SONNET,
    "claude-opus-4": _OPUS_4,
    "claude-opus-4-0": _OPUS_4,
    "claude-opus-4-1": _OPUS_4,
    "claude-opus-4-5": _OPUS_45,
    "claude-opus-4-6": _OPUS_45,
    "claude-opus-4-7": _OPUS_45,
    "claude-opus-4-8": _OPUS_45,
    "claude-haiku-4-5": _anthropic(1.0, 5.0),
    "claude-sonnet-5": _anthropic(2.0, 10.0),
    "claude-sonnet-5-5": _anthropic(2.0, 10.0, 0.10),
    "claude-opus-5": _OPUS_45,
    "claude-opus-5-5": _anthropic(4.0, 20.0, 0.20),
    # Haiku 5.5 costs 5x more for prompts over 100K tokens; this is the lower tier.
    "claude-haiku-5-5": _anthropic(0.10, 0.50, 0.01),
    "claude-fable-5": _anthropic(10.0, 50.0),
    "claude-fable-5-1": _anthropic(10.0, 50.0, 0.25),
    "claude-mythos-5": _anthropic(10.0, 50.0),
    "claude-mythos-5-1": _anthropic(10.0, 50.0, 0.25),
}

_lock = threading.Lock()
_prices: dict[str, Price] = dict(_DEFAULT_PRICES)


def set_price(model: str, price: Price) -> None:
    """Set the price of `model` (a bare name, e.g. "gpt-4o-mini"); it wins over the table."""
    if not isinstance(price, Price):
        raise TypeError(f"price must be an rlm.Price, not {type(price).__name__}")
    with _lock:
        _prices[bare_name(model)] = price


def price_for(model: str) -> Price | None:
    """The price of `model`: its own entry, else its base name's for a dated snapshot."""
    # Read without the lock (called for every model call): a dict look-up is atomic,
    # and `set_price` changes one entry at a time.
    prices = _prices
    for name in _candidates(model):
        price = prices.get(name)
        if price is not None:
            return price
    return None


@functools.lru_cache(maxsize=1024)
def _candidates(model: str) -> tuple[str, ...]:
    return tuple(name_candidates(model))


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
