"""What judging one partition's raw messages takes the same way for usage events and GPU samples.

A message is decoded into its entries: events, and verdicts on the ones that are not. A
decoder that raises (a bug, or an input nobody foresaw) must not stop the partition: that
message becomes a dead letter with a reason code and the rest of the batch goes on. A verdict
on a decoded event carries the input it came from, the whole message or its batch element.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import TypeVar

from costflux.core.events import Rejected
from costflux.schemas.deadletter import DeadLetterReason

__all__ = ["Decoder", "decoded", "reject", "with_context"]

Entry = TypeVar("Entry")
#: A message's value -> its entries, in order, and whether it was a batch (a JSON array).
Decoder = Callable[[bytes | None], tuple[Sequence[Entry | Rejected], bool]]


def decoded(
    messages: Iterable[tuple[int, bytes | None]],
    decode: Decoder[Entry],
    rejected: list[tuple[int, Rejected]],
) -> Iterator[tuple[int, bytes | None, Sequence[Entry | Rejected], bool]]:
    """(offset, value, entries, batched) of each message given as (offset, value), in order.

    A message whose ``decode`` raises is appended to ``rejected`` as ``_undecodable`` says
    and skipped.

    >>> def decode(value):
    ...     return [int(value)], False
    >>> rejected = []
    >>> [entries for _, _, entries, _ in decoded([(0, b"1"), (1, b"x"), (2, b"3")], decode,
    ...                                          rejected)]
    [[1], [3]]
    >>> [(offset, verdict.reason.value) for offset, verdict in rejected]
    [(1, 'invalid_value')]
    """
    for offset, value in messages:
        try:
            entries, batched = decode(value)
        except Exception as exc:  # noqa: BLE001 - a poison message must not stop the partition
            rejected.append((offset, _undecodable(value, exc)))
            continue
        yield offset, value, entries, batched


def _undecodable(value: bytes | None, exc: Exception) -> Rejected:
    """The verdict on a message its decoder raised on: the whole message, and the error's type
    (not its text, which may echo the input at length)."""
    return Rejected(
        DeadLetterReason.INVALID_VALUE,
        f"could not be decoded ({type(exc).__name__}); please report this input",
        None,
        value or b"",
    )


def reject(reason: DeadLetterReason, detail: str) -> Rejected:
    """A verdict on an event, before ``with_context`` says which input it was."""
    return Rejected(reason, detail, None, b"")


def with_context(
    verdict: Rejected, value: bytes | None, index: int | None, entry: Entry,
    as_written: Callable[[Entry], bytes],
) -> Rejected:
    """``verdict`` on the whole message ``value`` (``index`` None), or on element ``index`` of
    a batch: ``entry`` kept as ``as_written`` writes it (defaults filled in, as the decoder's
    own dead letters are)."""
    original = (value or b"") if index is None else as_written(entry)
    return Rejected(verdict.reason, verdict.detail, index, original)
