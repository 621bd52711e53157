"""The worker's end of `rlm.repl.transfer`: the context read from the host's pipe.

A context up to 1 M characters arrives inside the `load` message; a larger one follows it
as a stream of chunks (`ChunkReader`): a str as CPython's own characters, read straight
into the string being built; lists, tuples and dicts in marshal or pickle batches;
anything else pickled. Standard library only: the sandbox worker loads it at start-up
(see `rlm.repl.namespace` on what it keeps out).
"""

from __future__ import annotations

import marshal
import sys

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, BinaryIO

CONTEXT_CHUNK = 1 << 22


def read_exact(stream: BinaryIO, n: int) -> bytes | None:
    data = stream.read(n)
    if data is None or len(data) < n:
        return None
    return data


_KIND_MAXCHAR = {"ascii": 0x7F, 1: 0xFF, 2: 0xFFFF, 4: 0x10FFFF}
_KIND_WIDTH = {"ascii": 1, 1: 1, 2: 2, 4: 4}
_NATIVE = "le" if sys.byteorder == "little" else "be"
_KIND_CODEC = {"ascii": "latin-1", 1: "latin-1", 2: f"utf-16-{_NATIVE}", 4: f"utf-32-{_NATIVE}"}


def _new_str_filler() -> Any:
    """A function that builds a str of a given kind and fills it in place, or None.

    Building the str directly from the file (CPython's `PyUnicode_New`, then reading
    into its buffer) keeps a single copy of a large context in memory instead of the
    bytes and the decoded text side by side. The layout is checked on samples first;
    if anything differs (another Python), the caller decodes the ordinary way.
    """
    if sys.implementation.name != "cpython":
        return None
    try:
        import ctypes

        new = ctypes.pythonapi.PyUnicode_New
        new.restype = ctypes.py_object
        new.argtypes = [ctypes.c_ssize_t, ctypes.c_uint32]
        offsets: dict[Any, int] = {}
        samples = {"ascii": "abc", 1: "ab\xe9", 2: "a\u0100b", 4: "a\U00010000b"}
        for kind, sample in samples.items():
            width = _KIND_WIDTH[kind]
            offset = sys.getsizeof(new(1, _KIND_MAXCHAR[kind])) - 2 * width
            probe = new(len(sample), _KIND_MAXCHAR[kind])
            data = sample.encode(_KIND_CODEC[kind], "surrogatepass")
            ctypes.memmove(id(probe) + offset, data, len(data))
            if probe != sample or hash(probe) != hash(sample):
                return None
            offsets[kind] = offset
    except Exception:
        return None

    def fill(stream: Any, kind: Any, length: int) -> str:
        text = new(length, _KIND_MAXCHAR[kind])
        nbytes = length * _KIND_WIDTH[kind]
        if nbytes:
            buffer = (ctypes.c_char * nbytes).from_address(id(text) + offsets[kind])
            view = memoryview(buffer).cast("B")
            done = 0
            while done < nbytes:
                got = stream.readinto(view[done : done + CONTEXT_CHUNK])
                if not got:
                    raise EOFError(f"the context ended after {done:,} of {nbytes:,} bytes")
                done += got
            view.release()
        return text  # type: ignore[no-any-return]

    return fill


class ChunkReader:
    """The context stream after a `load` message: chunks of `[u32 size][bytes]`, then a
    zero size. File-like enough for `readinto`, `read`, `readline`, marshal and pickle."""

    def __init__(self, raw: BinaryIO) -> None:
        self._raw = raw
        self._left = 0
        self._ended = False

    def _advance(self) -> bool:
        while self._left == 0:
            if self._ended:
                return False
            header = read_exact(self._raw, 4)
            if header is None:
                raise EOFError("the host stopped sending the context")
            self._left = int.from_bytes(header, "big")
            if self._left == 0:
                self._ended = True
                return False
        return True

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        if not view or not self._advance():
            return 0
        got = self._raw.readinto(view[: min(len(view), self._left)])  # type: ignore[attr-defined]
        if not got:
            raise EOFError("the host stopped sending the context")
        self._left -= got
        return int(got)

    def read(self, size: int = -1) -> bytes:
        if size < 0:
            parts = []
            while self._advance():
                parts.append(self.read(self._left))
            return b"".join(parts)
        out = bytearray(size)
        view = memoryview(out)
        done = 0
        while done < size:
            got = self.readinto(view[done:])
            if not got:
                break
            done += got
        view.release()
        del out[done:]
        return bytes(out)

    def readline(self) -> bytes:
        line = bytearray()
        while not line.endswith(b"\n"):
            byte = self.read(1)
            if not byte:
                break
            line += byte
        return bytes(line)

    def chunk(self) -> bytes:
        """The next whole chunk (the writer sent it as one)."""
        if not self._advance():
            raise EOFError("the context ended early")
        return self.read(self._left)

    def drain(self) -> None:
        while self._advance():
            self.read(min(self._left, 1 << 20))


def read_context(spec: dict[str, Any], stream: ChunkReader) -> object:
    how = spec["how"]
    if how == "object":
        value = spec["value"]
        return bytearray(value) if spec.get("type") == "bytearray" else value
    if how == "str":
        kind, length = spec["kind"], spec["length"]
        fill = _new_str_filler() if length >= 1 << 16 else None
        if fill is not None:
            return fill(stream, kind, length)
        return stream.read().decode(_KIND_CODEC[kind], "surrogatepass")
    if how == "utf8":
        return stream.read().decode("utf-8", "surrogatepass")
    if how == "bytes":
        data = stream.read()
        return bytearray(data) if spec["type"] == "bytearray" else data
    if how == "pickle":
        import pickle

        return pickle.load(stream)
    if how == "batches":
        kind, count = spec["type"], spec["count"]
        if kind == "dict":
            mapping: dict[Any, Any] = {}
            while len(mapping) < count:
                mapping.update(_read_batch(stream))
            return mapping
        items: list[Any] = []
        while len(items) < count:
            items.extend(_read_batch(stream))
        return tuple(items) if kind == "tuple" else items
    raise ValueError(f"unknown context format {how!r}")


def _read_batch(stream: ChunkReader) -> Any:
    data = stream.chunk()
    if data[:1] == b"M":
        return marshal.loads(memoryview(data)[1:])
    if data[:1] == b"P":
        import pickle

        return pickle.loads(memoryview(data)[1:])
    raise ValueError(f"the context stream is damaged (batch tag {data[:1]!r})")
