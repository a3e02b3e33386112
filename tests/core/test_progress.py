"""The stall check: behind the log's end and not moving for long enough, and nothing else."""

from __future__ import annotations

from costflux.core.progress import Held, PartitionStall, StallCheck


def test_a_partition_behind_and_still_stalls_once_the_threshold_has_passed() -> None:
    check = StallCheck(stall_after_s=60)
    assert check.check(0.0, {0: 10}, {0: 25}).stalled == ()
    early = check.check(59.0, {0: 10}, {0: 25})
    assert early.stalled == () and early.behind == 15 and early.longest_still_s == 59.0
    late = check.check(61.0, {0: 10}, {0: 30})
    assert late.stalled == (PartitionStall(0, 10, 30, 61.0),)
    assert late.behind == 20
    assert late.stalled[0].describe() == (
        "partition 0: 20 behind the log end (at offset 10 of 30), nothing taken for 61 s")


def test_a_position_that_moves_never_stalls_however_far_behind() -> None:
    check = StallCheck(stall_after_s=5)
    for second in range(100):
        progress = check.check(float(second), {0: second}, {0: 1_000})
        assert progress.stalled == ()
        assert progress.longest_still_s == 0.0


def test_a_quiet_partition_at_its_end_never_stalls() -> None:
    check = StallCheck(stall_after_s=5)
    for second in range(0, 3_600, 60):
        progress = check.check(float(second), {0: 7}, {0: 7})
        assert progress.stalled == () and progress.behind == 0


def test_records_arriving_after_an_idle_hour_are_given_the_whole_threshold() -> None:
    check = StallCheck(stall_after_s=30)
    check.check(0.0, {0: 7}, {0: 7})
    check.check(3_600.0, {0: 7}, {0: 7})
    assert check.check(3_601.0, {0: 7}, {0: 9}).stalled == ()
    assert check.check(3_629.0, {0: 7}, {0: 9}).stalled == ()
    (stall,) = check.check(3_631.0, {0: 7}, {0: 9}).stalled
    assert stall.still_s == 31.0


def test_only_the_partition_that_stands_still_is_named() -> None:
    check = StallCheck(stall_after_s=10)
    check.check(0.0, {0: 0, 1: 0, 2: 5}, {0: 50, 1: 50, 2: 5})
    progress = check.check(12.0, {0: 0, 1: 40, 2: 5}, {0: 50, 1: 50, 2: 5})
    assert [s.partition for s in progress.stalled] == [0]
    assert progress.behind == 50 + 10
    assert progress.longest_still_s == 12.0


def test_a_partition_unknown_to_either_side_is_not_judged_and_starts_afresh_when_back() -> None:
    check = StallCheck(stall_after_s=10)
    check.check(0.0, {0: 3, 1: 3}, {0: 9, 1: 9})
    # Revoked (no position), or its end unknown this time: not judged, forgotten.
    progress = check.check(20.0, {1: 3}, {0: 9})
    assert progress.stalled == () and progress.behind == 0
    # Assigned again at the same position: its clock starts at this check, not at 0.
    assert check.check(25.0, {0: 3, 1: 3}, {0: 9, 1: 9}).stalled == ()
    assert [s.partition for s in check.check(36.0, {0: 3, 1: 3}, {0: 9, 1: 9}).stalled] \
        == [0, 1]


def test_a_stale_log_end_below_the_position_counts_as_caught_up() -> None:
    # Log ends are read less often than the agent moves: it may be past the end last read.
    check = StallCheck(stall_after_s=1)
    check.check(0.0, {0: 12}, {0: 10})
    progress = check.check(5.0, {0: 12}, {0: 10})
    assert progress.stalled == () and progress.behind == 0


def test_held_counts_only_an_unbroken_stretch() -> None:
    held = Held()
    assert held.observe(0.0, False) == 0.0
    assert held.observe(2.0, True) == 0.0
    assert held.observe(6.0, True) == 4.0
    assert held.observe(8.0, False) == 0.0
    assert held.observe(10.0, True) == 0.0
    assert held.observe(13.0, True) == 3.0
