"""One judge path for usage and GPU messages: a decoder that raises costs one dead letter."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from costflux.core.events import Rejected, decode_gpu_message, decode_usage_fields
from costflux.core.gpu_samples import judge_gpu
from costflux.core.ingest import PartitionClock, judge
from costflux.core.judging import decoded, with_context
from costflux.schemas.deadletter import DeadLetterReason as R
from tests.core import test_gpu_samples as gpu
from tests.core import test_ingest_aggregate as usage

POISON = b'{"trips": "the decoder"}'


def raising_on(poison: bytes, decode: Callable[[bytes | None], Any]) -> Callable[..., Any]:
    """``decode``, but a bug (a RecursionError here) on the ``poison`` message."""

    def decode_or_raise(value: bytes | None) -> Any:
        if value == poison:
            raise RecursionError("maximum recursion depth exceeded")
        return decode(value)

    return decode_or_raise


def test_a_gpu_message_whose_decoding_raises_is_a_dead_letter_and_the_batch_goes_on() -> None:
    messages = [(10, gpu.raw(gpu.sample(event_id="before"))), (11, POISON),
                (12, gpu.raw(gpu.sample(gpu.BASE_MS + 20_000, event_id="after")))]
    judged = judge_gpu(messages, PartitionClock(), gpu.PRICES, gpu.RULES, gpu.NOW_MS,
                       decode=raising_on(POISON, decode_gpu_message))
    assert [c.event_id for c in judged.candidates] == ["before", "after"]
    ((offset, verdict),) = judged.rejected
    assert (offset, verdict.reason, verdict.batch_index, verdict.original) == (
        11, R.INVALID_VALUE, None, POISON)
    assert verdict.detail == "could not be decoded (RecursionError); please report this input"


def test_a_usage_message_whose_decoding_raises_gets_the_same_verdict() -> None:
    messages = [(0, usage.raw(usage.event("before"))), (1, POISON),
                (2, usage.raw(usage.event("after", usage.BASE_MS + 1)))]
    judged = judge(messages, PartitionClock(), usage.PRICES, usage.RULES, usage.BASE_MS,
                   decode=raising_on(POISON, decode_usage_fields))
    assert [c.event_id for c in judged.candidates] == ["before", "after"]
    ((offset, verdict),) = judged.rejected
    assert (offset, verdict.reason, verdict.original) == (1, R.INVALID_VALUE, POISON)
    assert "RecursionError" in verdict.detail


def test_a_message_without_a_value_that_breaks_the_decoder_keeps_an_empty_original() -> None:
    rejected: list[tuple[int, Rejected]] = []

    def always_raises(value: bytes | None) -> tuple[list[Any], bool]:
        raise TypeError("a bug")

    assert list(decoded([(7, None)], always_raises, rejected)) == []
    assert [(offset, r.reason, r.original) for offset, r in rejected] == [
        (7, R.INVALID_VALUE, b"")]


def test_an_error_that_is_not_an_exception_still_stops_the_partition() -> None:
    # KeyboardInterrupt and SystemExit are the process stopping, not a poison message.
    def interrupted(value: bytes | None) -> tuple[list[Any], bool]:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        judge_gpu([(0, b"{}")], PartitionClock(), gpu.PRICES, gpu.RULES, gpu.NOW_MS,
                  decode=interrupted)


@pytest.mark.parametrize(("index", "expected"), [(None, b"the message"), (3, b"element 3")])
def test_a_verdict_carries_the_message_or_its_batch_element(
    index: int | None, expected: bytes
) -> None:
    verdict = Rejected(R.LATE, "window closed", None, b"")
    placed = with_context(verdict, b"the message", index, 3, lambda i: b"element %d" % i)
    assert placed == Rejected(R.LATE, "window closed", index, expected)
