"""Watermarks as far as the combiner has applied: read in-band per partials partition."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from costflux.core.windows import AppliedWatermarks, PartitionMark

NOW, IDLE_AFTER = 1_000_000, 30_000
ACTIVE, IDLE = NOW - 1, NOW - IDLE_AFTER


def activity(**last_data: int) -> dict[str, PartitionMark]:
    """Ingest's Redis marks: its watermarks are far ahead, and must not be used."""
    return {source: PartitionMark(10**15, wall) for source, wall in last_data.items()}


def test_nothing_read_in_a_partition_closes_nothing_there() -> None:
    applied = AppliedWatermarks()
    applied.observe(0, {"u:0": 500, "u:1": 700})
    assert applied.watermark(0, activity(**{"u:0": ACTIVE, "u:1": ACTIVE}), NOW, IDLE_AFTER) == 500
    assert applied.watermark(1, activity(**{"u:0": ACTIVE, "u:1": ACTIVE}), NOW, IDLE_AFTER) is None


def test_an_active_source_not_read_yet_holds_the_partition() -> None:
    applied = AppliedWatermarks()
    applied.observe(0, {"u:0": 500})
    assert applied.watermark(0, activity(**{"u:0": ACTIVE, "u:1": ACTIVE}), NOW, IDLE_AFTER) is None
    # Idle per Redis (no data for IDLE_AFTER): it stops holding, as in global_watermark.
    assert applied.watermark(0, activity(**{"u:0": ACTIVE, "u:1": IDLE}), NOW, IDLE_AFTER) == 500


def test_marks_only_move_forward_and_none_keeps_what_was_read() -> None:
    applied = AppliedWatermarks()
    applied.observe(0, {"u:0": 500})
    applied.observe(0, {"u:0": 400})  # a replayed flush re-publishes an older mark
    applied.observe(0, {"u:0": None})
    assert applied.watermark(0, activity(**{"u:0": ACTIVE}), NOW, IDLE_AFTER) == 500


def test_sources_unknown_to_redis_do_not_count_and_revoked_partitions_are_forgotten() -> None:
    applied = AppliedWatermarks()
    applied.observe(0, {"u:0": 500, "old-topic:3": 1})
    applied.observe(1, {"u:0": 900})
    assert applied.watermark(0, activity(**{"u:0": ACTIVE}), NOW, IDLE_AFTER) == 500
    applied.keep_only([1])
    assert applied.watermark(0, activity(**{"u:0": ACTIVE}), NOW, IDLE_AFTER) is None
    assert applied.watermark(1, activity(**{"u:0": ACTIVE}), NOW, IDLE_AFTER) == 900


@given(st.lists(st.tuples(st.sampled_from(["u:0", "u:1", "g:0"]),
                          st.one_of(st.none(), st.integers(0, 10**6))), max_size=40),
       st.dictionaries(st.sampled_from(["u:0", "u:1", "g:0"]), st.sampled_from([ACTIVE, IDLE])))
def test_never_past_the_oldest_mark_read_of_an_active_source(
    records: list[tuple[str, int | None]], last_data: dict[str, int],
) -> None:
    applied = AppliedWatermarks()
    newest: dict[str, int] = {}
    for source, watermark in records:
        applied.observe(7, {source: watermark})
        if watermark is not None:
            newest[source] = max(newest.get(source, watermark), watermark)
    result = applied.watermark(7, activity(**last_data), NOW, IDLE_AFTER)
    active = [s for s, wall in last_data.items() if wall == ACTIVE]
    if active:
        expected = (min(newest[s] for s in active) if all(s in newest for s in active)
                    else None)
    else:
        known = [newest[s] for s in last_data if s in newest]
        expected = max(known) if known else None
    assert result == expected
