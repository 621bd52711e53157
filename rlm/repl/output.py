"""Bounded capture of printed output, and cutting long text for the model."""

from __future__ import annotations

import threading


def cut_middle(text: str, limit: int, total_chars: int | None = None) -> str:
    """Keep the head and tail of `text` within about `limit` characters.

    The note in the middle gives the true length (`total_chars`, when the text was already
    cut upstream) so the model knows how much it did not see.
    """
    total = len(text) if total_chars is None else max(total_chars, len(text))
    if len(text) <= limit and total == len(text):
        return text
    if len(text) <= limit:
        return f"{text}\n[output cut: {total:,} characters in all]"
    head = max(0, limit * 2 // 3)
    tail = max(0, limit - head)
    omitted = total - head - tail
    return (
        f"{text[:head]}\n[... {omitted:,} characters omitted; {total:,} characters in all ...]\n"
        f"{text[len(text) - tail :] if tail else ''}"
    )


class OutputBuffer:
    """A text sink that keeps at most `head_chars` from the start and `tail_chars` from
    the end, counting everything, so a cell that prints a gigabyte costs a few megabytes."""

    def __init__(self, head_chars: int = 1_000_000, tail_chars: int = 1_000_000) -> None:
        self._head: list[str] = []
        self._head_len = 0
        self._tail: list[str] = []
        self._tail_len = 0
        self._head_limit = head_chars
        self._tail_limit = tail_chars
        self.total_chars = 0
        self._lock = threading.Lock()

    def write(self, text: str) -> int:
        if not isinstance(text, str):
            raise TypeError(f"write() argument must be str, not {type(text).__name__}")
        written = len(text)
        with self._lock:
            self.total_chars += written
            room = self._head_limit - self._head_len
            if room > 0:
                piece = text[:room]
                self._head.append(piece)
                self._head_len += len(piece)
                text = text[room:]
            if text:
                self._tail.append(text[-self._tail_limit :])
                self._tail_len += min(len(text), self._tail_limit)
                if self._tail_len > 2 * self._tail_limit:
                    joined = "".join(self._tail)[-self._tail_limit :]
                    self._tail = [joined]
                    self._tail_len = len(joined)
        return written

    def flush(self) -> None:
        return None

    def getvalue(self) -> str:
        with self._lock:
            head = "".join(self._head)
            tail = "".join(self._tail)[-self._tail_limit :] if self._tail else ""
            kept = len(head) + len(tail)
            if kept >= self.total_chars:
                return head + tail
            omitted = self.total_chars - kept
            return f"{head}\n[... {omitted:,} characters not kept ...]\n{tail}"
