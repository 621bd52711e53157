"""A short fingerprint of a context: its type, size and a hash, for telling contexts apart.

A trajectory records the fingerprint of every run's context so that a replay or a resume
over a different context is refused with a clear message instead of serving replies that
were made for other data.

Hashing a 1 GB string in full costs about a second, which a run must not pay for a check
that only compares fingerprints. Contexts up to `FULL_HASH_BYTES` are hashed in full;
larger ones are hashed from their head, their tail and `SAMPLES` evenly spaced windows,
together with their exact size. Two large contexts of the same type and size that differ
only between the sampled windows get the same fingerprint (documented in
docs/replay-and-resume.md).
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from typing import Any

FULL_HASH_BYTES = 8 << 20
EDGE_BYTES = 1 << 20
SAMPLES = 256
WINDOW_BYTES = 4096
# Containers: items hashed (by repr) when there are more than this many, evenly spaced.
ITEM_SAMPLES = 4096


def context_fingerprint(context: object) -> str:
    """`"<type>:<size>:<hash>"` for `context` (size in characters, bytes or items)."""
    digest = hashlib.blake2b(digest_size=8)
    type_name = type(context).__name__
    if isinstance(context, str):
        size = len(context)
        for piece in _pieces(context):
            digest.update(piece.encode("utf-8", "surrogatepass"))
    elif isinstance(context, bytes | bytearray | memoryview):
        data = memoryview(context).cast("B")
        size = len(data)
        for chunk in _pieces(data):
            digest.update(chunk)
    elif isinstance(context, Mapping):
        size = len(context)
        keys = list(context.keys())
        for index in _spread(len(keys)):
            key = keys[index]
            digest.update(_repr_bytes(key))
            digest.update(_repr_bytes(context[key])[:WINDOW_BYTES])
    elif isinstance(context, Sequence | set | frozenset):
        items = list(context) if isinstance(context, set | frozenset) else context
        if isinstance(context, set | frozenset):
            items = sorted(items, key=_repr_bytes)
        size = len(items)
        for index in _spread(len(items)):
            digest.update(_repr_bytes(items[index])[:WINDOW_BYTES])
            digest.update(b"\x00")
    else:
        text = _repr_bytes(context)
        size = len(text)
        digest.update(text)
    return f"{type_name}:{size}:{digest.hexdigest()}"


def _pieces(data: Sequence[Any]) -> list[Any]:
    """The whole of `data` when small; else its head, tail and evenly spaced windows."""
    if len(data) <= FULL_HASH_BYTES:
        return [data]
    step = max(1, (len(data) - WINDOW_BYTES) // SAMPLES)
    windows = [data[i : i + WINDOW_BYTES] for i in range(0, len(data) - WINDOW_BYTES, step)]
    return [data[:EDGE_BYTES], *windows, data[-EDGE_BYTES:]]


def _repr_bytes(value: object) -> bytes:
    """`repr(value)` as bytes; never raises (a fingerprint must not fail a run: a value
    whose repr fails or recurses too deeply is named by its type instead)."""
    try:
        return repr(value).encode("utf-8", "replace")
    except Exception:  # RecursionError included
        return f"<{type(value).__qualname__}>".encode()


def _spread(count: int) -> range | list[int]:
    if count <= ITEM_SAMPLES:
        return range(count)
    step = count / ITEM_SAMPLES
    return [int(i * step) for i in range(ITEM_SAMPLES)] + [count - 1]


def describe_fingerprint(fingerprint: str) -> str:
    """A readable form: `"a str of 12,345 characters (hash 1a2b...)"`."""
    type_name, _, rest = fingerprint.partition(":")
    size, _, digest = rest.partition(":")
    unit = {"str": "characters", "bytes": "bytes", "bytearray": "bytes"}.get(type_name, "items")
    try:
        shown = f"{int(size):,}"
    except ValueError:
        shown = size
    return f"a {type_name} of {shown} {unit} (hash {digest})"
