"""The data of a server-sent-events stream's events, read as its bytes pass by. Pure.

Follows the WHATWG ``text/event-stream`` rules a usage reader needs: a byte order mark may open
the stream; lines end in ``\\r\\n``, ``\\n`` or ``\\r`` (a piece may end between the two bytes
of ``\\r\\n``); an event's ``data:`` lines (one optional space after the colon removed) are
joined with ``\\n`` and the event ends at a blank line; comments (``:...``) and other fields
are skipped. One difference: ``close`` hands over an event the stream left unfinished, since a
stream cut after its last data line still reported what it used.
"""

from __future__ import annotations

import re
from typing import Final

__all__ = ["MAX_EVENT_BYTES", "SseDataReader"]

#: Larger events are dropped whole rather than held: a Responses API ``response.completed``
#: repeats the whole answer, so the cap is generous, but a stream that never ends a line must
#: not take all memory.
MAX_EVENT_BYTES: Final = 32 * 1024 * 1024
_LINE_END: Final = re.compile(rb"\r\n|\r|\n")


class SseDataReader:
    """Splits a stream into its events' data, whatever pieces the bytes come in.

    >>> reader = SseDataReader()
    >>> reader.feed(b'event: ping\\r\\ndata: {"a":')
    []
    >>> reader.feed(b' 1}\\r\\n\\r\\ndata: [DONE]\\n\\n')
    [b'{"a": 1}', b'[DONE]']
    """

    def __init__(self, max_event_bytes: int = MAX_EVENT_BYTES) -> None:
        self._max_event_bytes = max_event_bytes
        self._pending: list[bytes] = []  # the line being received, in pieces
        self._pending_size = 0
        self._after_cr = False  # the last piece ended in \r: a \n next ends no new line
        self._data: list[bytes] = []  # the data lines of the event being received
        self._data_size = 0
        self._oversized = False  # the event being received is over the limit: drop it
        self._first_line = True  # a byte order mark may open the stream

    def feed(self, chunk: bytes) -> list[bytes]:
        """Read another piece of the stream; the data of the events it completed."""
        if self._after_cr and chunk.startswith(b"\n"):
            chunk = chunk[1:]
            self._after_cr = False
        if not chunk:
            return []
        self._after_cr = chunk.endswith(b"\r")
        if b"\n" not in chunk and b"\r" not in chunk:
            # Joined only once a line ends: a long line in many pieces is copied once.
            self._hold(chunk)
            return []
        lines = _LINE_END.split(b"".join((*self._pending, chunk)))
        self._pending, self._pending_size = [], 0
        self._hold(lines.pop())
        events: list[bytes] = []
        for line in lines:
            self._read_line(line, events)
        return events

    def close(self) -> list[bytes]:
        """The data of the event the stream left unfinished, if any."""
        events: list[bytes] = []
        if self._pending:
            self._read_line(b"".join(self._pending), events)
        self._read_line(b"", events)
        self._pending, self._pending_size, self._after_cr = [], 0, False
        return events

    def _hold(self, piece: bytes) -> None:
        if not piece:
            return
        self._pending.append(piece)
        self._pending_size += len(piece)
        if self._pending_size + self._data_size > self._max_event_bytes:
            self._pending, self._pending_size, self._oversized = [], 0, True

    def _read_line(self, line: bytes, events: list[bytes]) -> None:
        if self._first_line:
            self._first_line = False
            line = line.removeprefix(b"\xef\xbb\xbf")
        if not line:
            payload = b"\n".join(self._data)
            if payload and not self._oversized:
                events.append(payload)
            self._data, self._data_size, self._oversized = [], 0, False
            return
        if self._oversized:
            return
        name, colon, value = line.partition(b":")
        if name != b"data":
            return  # a comment, event:, id:, retry: or an unknown field
        if colon and value.startswith(b" "):
            value = value[1:]
        self._data.append(value)
        self._data_size += len(value) + 1
        if self._data_size > self._max_event_bytes:
            self._data, self._data_size, self._oversized = [], 0, True
