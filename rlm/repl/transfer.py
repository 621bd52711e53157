"""How a context reaches the worker: once, at start, without a second full copy.

A small context rides inside the `load` message. A large one is streamed through the
worker's pipe right after it, from a thread, as chunks (`[u32 size][bytes]`, then a zero
size) that `rlm.repl.receive` (in the worker) reads straight into the final object:

- a `str` goes as CPython's own characters (1, 2 or 4 bytes each, read from the string's
  memory with no copy), which the worker reads into a string it has allocated, so it
  holds one copy and the host makes none; where the layout cannot be confirmed, UTF-8;
- `bytes`/`bytearray` go as they are;
- a `list`, `tuple` or `dict` goes in batches of `BATCH_ITEMS` (marshal for built-in
  types, else pickle), each its own chunk, so neither side holds more than a batch extra;
- anything else is pickled straight into the pipe.

Pickling is host to worker only (the host never unpickles what a worker sends). Classes
and functions defined in `__main__` (a script, a notebook) cannot be imported by the
worker, so they travel by value with `cloudpickle`: always for a single object, and for
a batch whose plain pickle names `__main__` (plain pickle stays the fast path). Functions
are refused: one the caller wants the model to call belongs on the host, as a tool.
"""

from __future__ import annotations

import itertools
import marshal
import os
import select
import sys
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from rlm.repl.protocol import HEADER

# str/bytes contexts up to this length travel inside the `load` message.
INLINE_CHARS = 1 << 20
CHUNK_BYTES = 1 << 22
# Items per batch when a large list/tuple/dict is streamed (each with a fresh memo).
BATCH_ITEMS = 4096


class TransferCancelled(Exception):
    """The REPL was closed while the context was being sent."""


_NATIVE = "le" if sys.byteorder == "little" else "be"
# How each kind of CPython str stores its characters, as a codec (native byte order).
_CODECS: dict[object, str] = {
    "ascii": "latin-1",
    1: "latin-1",
    2: f"utf-16-{_NATIVE}",
    4: f"utf-32-{_NATIVE}",
}
_WIDTH: dict[object, int] = {"ascii": 1, 1: 1, 2: 2, 4: 4}


@dataclass(frozen=True, slots=True)
class _StrLayout:
    """Where CPython keeps a str's kind bits and characters (checked on samples)."""

    state: int
    ascii_data: int
    compact_data: int

    def kind(self, text: str) -> object:
        """'ascii', 1, 2 or 4 (bytes per character), or None if not a compact str."""
        if text.isascii():
            return "ascii"
        import ctypes

        state = ctypes.string_at(id(text) + self.state, 1)[0]
        kind = (state >> 2) & 7
        compact, ascii_bit = (state >> 5) & 1, (state >> 6) & 1
        return kind if compact and not ascii_bit and kind in (1, 2, 4) else None

    def raw(self, text: str, kind: object) -> memoryview:
        """The characters of `text` as they sit in memory (no copy; keep `text` alive)."""
        import ctypes

        offset = self.ascii_data if kind == "ascii" else self.compact_data
        size = len(text) * _WIDTH[kind]
        return memoryview((ctypes.c_char * size).from_address(id(text) + offset)).cast("B")


def _find_layout() -> _StrLayout | None:
    if sys.implementation.name != "cpython":
        return None
    try:
        import ctypes

        layout = _StrLayout(
            state=4 * ctypes.sizeof(ctypes.c_void_p),  # refcount, type, length, hash
            ascii_data=sys.getsizeof("".join(["a", "b"])) - 3,
            compact_data=sys.getsizeof("".join(["a", "\xe9"])) - 3,
        )
        for sample in ("abc", "ab\xe9", "a\u0100b", "a\U00010000b\ud800"):
            text = "".join(list(sample))  # a fresh object, no cached UTF-8
            kind = layout.kind(text)
            if kind is None or layout.raw(text, kind).tobytes() != text.encode(
                _CODECS[kind], "surrogatepass"
            ):
                return None
        return layout
    except Exception:
        return None


_layout: _StrLayout | bool | None = False


class ChunkWriter:
    """Writes the context stream (`[u32 size][bytes]` chunks, then a zero size) to the
    worker's pipe. Runs on a thread: it blocks while the worker is still reading."""

    def __init__(self, fd: int, cancelled: threading.Event) -> None:
        self._fd = fd
        self._cancelled = cancelled
        self._buffer = bytearray()

    def write(self, data: bytes | bytearray | memoryview) -> int:
        view = memoryview(data).cast("B")
        size = len(view)
        if size >= 1 << 16:
            self._flush()
            for start in range(0, size, CHUNK_BYTES):
                piece = view[start : start + CHUNK_BYTES]
                self.write_raw(HEADER.pack(len(piece)))
                self.write_raw(piece)
        else:
            self._buffer += view
            if len(self._buffer) >= 1 << 18:
                self._flush()
        view.release()
        return size

    def write_chunk(self, data: bytes) -> None:
        """`data` as exactly one chunk (the reader gets it whole)."""
        self._flush()
        self.write_raw(HEADER.pack(len(data)))
        self.write_raw(data)

    def _flush(self) -> None:
        if self._buffer:
            self.write_raw(HEADER.pack(len(self._buffer)))
            self.write_raw(self._buffer)
            self._buffer = bytearray()

    def close(self) -> None:
        self._flush()
        self.write_raw(HEADER.pack(0))

    def write_raw(self, data: bytes | bytearray | memoryview) -> None:
        view = memoryview(data).cast("B")
        while view:
            if self._cancelled.is_set():
                raise TransferCancelled("the REPL was closed while the context was being sent")
            try:
                written = os.write(self._fd, view[: 1 << 20])
            except BlockingIOError:
                select.select([], [self._fd], [], 0.5)
                continue
            view = view[written:]


def _text_plan(text: str) -> tuple[dict[str, Any], Callable[[ChunkWriter], None]]:
    """A large str: its raw characters when CPython's layout is known, else UTF-8."""
    global _layout
    if _layout is False:
        _layout = _find_layout()
    layout = _layout if isinstance(_layout, _StrLayout) else None
    kind = layout.kind(text) if layout else None
    if layout is not None and kind is not None:

        def raw(out: ChunkWriter) -> None:
            view = layout.raw(text, kind)
            try:
                out.write(view)
            finally:
                view.release()

        return {"how": "str", "kind": kind, "length": len(text)}, raw

    def utf8(out: ChunkWriter) -> None:
        for start in range(0, len(text), CHUNK_BYTES):
            out.write(text[start : start + CHUNK_BYTES].encode("utf-8", "surrogatepass"))

    return {"how": "utf8"}, utf8


def _write_batch(batch: list[Any] | dict[Any, Any], out: ChunkWriter) -> None:
    """One batch, as one chunk: b"M" + marshal data (built-in types), else b"P" + a pickle."""
    try:
        data = b"M" + marshal.dumps(batch, 4)
    except ValueError:
        import pickle

        try:
            data = b"P" + pickle.dumps(batch, protocol=5)
        except (pickle.PicklingError, AttributeError, TypeError):
            data = b""  # a local class: cloudpickle sends it by value
        if not data or b"__main__" in data:
            import cloudpickle

            _refuse_functions(batch)
            data = b"P" + cloudpickle.dumps(batch, protocol=5)
    out.write_chunk(data)


def function_in(value: object, path: str = "context", depth: int = 4) -> str | None:
    """Where a function or method sits in the context (a few levels down), or None."""
    import types

    if isinstance(value, types.FunctionType | types.BuiltinFunctionType | types.MethodType):
        return path
    if depth == 0:
        return None
    items: Iterable[tuple[str, object]]
    if isinstance(value, dict):
        items = ((f"{path}[{k!r}]", v) for k, v in value.items())
    elif isinstance(value, list | tuple):
        items = ((f"{path}[{i}]", v) for i, v in enumerate(value))
    else:
        return None
    for where, item in itertools.islice(items, 10_000):
        found = function_in(item, where, depth - 1)
        if found is not None:
            return found
    return None


def _refuse_functions(value: object) -> None:
    where = function_in(value)
    if where is not None:
        raise TypeError(f"{where} is a function")


Plan = tuple[dict[str, Any], Callable[[ChunkWriter], None] | None]


def context_plan(context: object) -> Plan:
    """How the context reaches the worker: inside the `load` message when small, else
    streamed after it by the returned function (run on a thread).

    A large str goes as CPython's own characters (1, 2 or 4 bytes each), read by the
    worker straight into its new string; a list, tuple or dict goes in batches (marshal,
    or pickle for other types), so neither side ever holds a second full copy; anything
    else is pickled straight into the pipe (`cloudpickle`, so `__main__` classes work).
    """
    if isinstance(context, str):
        if len(context) <= INLINE_CHARS:
            return {"how": "object", "value": context}, None
        return _text_plan(context)
    if isinstance(context, bytes | bytearray) and type(context) in (bytes, bytearray):
        if len(context) <= INLINE_CHARS:
            return {"how": "object", "value": bytes(context), "type": type(context).__name__}, None
        data = context

        def raw(out: ChunkWriter) -> None:
            out.write(data)

        return {"how": "bytes", "type": type(context).__name__}, raw
    if isinstance(context, list | tuple | dict) and type(context) in (list, tuple, dict):
        container = context

        def batches(out: ChunkWriter) -> None:
            if isinstance(container, dict):
                pairs = iter(container.items())
                while batch := list(itertools.islice(pairs, BATCH_ITEMS)):
                    _write_batch(dict(batch), out)
            else:
                for start in range(0, len(container), BATCH_ITEMS):
                    _write_batch(list(container[start : start + BATCH_ITEMS]), out)

        spec = {"how": "batches", "type": type(context).__name__, "count": len(context)}
        return spec, batches

    def pickled(out: ChunkWriter) -> None:
        import cloudpickle

        _refuse_functions(context)
        cloudpickle.dump(context, out, protocol=5)

    return {"how": "pickle"}, pickled
