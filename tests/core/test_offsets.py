"""OffsetHoles: holes are exactly the offsets skipped within one generation."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from costflux.core.offsets import OffsetHoles


def test_a_skipped_offset_is_reported_once() -> None:
    holes = OffsetHoles()
    assert [list(holes.observe(2, 1, o)) for o in (28, 29, 30, 32, 33)] == [
        [], [], [], [31], []]


def test_a_new_generation_or_a_step_back_is_not_a_hole() -> None:
    holes = OffsetHoles()
    holes.observe(0, 1, 10)
    assert not holes.observe(0, 2, 50)  # reassigned: starts at the committed offset
    assert not holes.observe(0, 2, 40)  # re-delivered after a seek
    assert list(holes.observe(0, 2, 43)) == [41, 42]
    assert not holes.observe(1, 2, 7)  # partitions are independent


def test_a_generations_first_message_is_compared_with_where_it_began() -> None:
    holes = OffsetHoles()
    assert holes.starts_generation(0, 1)
    assert list(holes.observe(0, 1, 12, start=10)) == [10, 11]  # its first two were lost
    assert not holes.starts_generation(0, 1)
    assert not holes.observe(0, 1, 13, start=0)  # start only counts for the first
    assert holes.starts_generation(0, 2)
    assert not holes.observe(0, 2, 20, start=20)
    assert not holes.observe(0, 3, 5, start=9)  # behind where it began: a re-delivery


@given(st.lists(st.integers(0, 60), min_size=1, max_size=40, unique=True))
def test_holes_and_seen_offsets_cover_the_range_without_overlap(delivered: list[int]) -> None:
    """Delivered in increasing order within one generation: the holes are the complement."""
    delivered.sort()
    holes = OffsetHoles()
    skipped = [o for offset in delivered for o in holes.observe(3, 1, offset)]
    assert sorted(skipped + delivered) == list(range(delivered[0], delivered[-1] + 1))
