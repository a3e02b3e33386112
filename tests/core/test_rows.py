"""Window rows and their text form (costflux.core.rows): what the cost store holds.

The text form is stored, so these tests pin it by hand-written examples as well as by round
trips: a reader must keep reading what an older writer of the same version left behind.
"""

from __future__ import annotations

from collections.abc import Mapping

import pytest
from hypothesis import given
from hypothesis import strategies as st

from costflux.core.aggregate import FlushRows, Window
from costflux.core.rows import (
    DIMENSIONS,
    GPU_DIMENSIONS,
    OVERFLOW,
    GpuSums,
    UsageSums,
    WindowRows,
    add_sums,
    decode_gpu_dims,
    decode_gpu_sums,
    decode_usage_dims,
    decode_usage_sums,
    encode_dims,
    encode_sums,
    overflow_dimensions,
)


def stored_windows(flush: FlushRows) -> dict[Window, WindowRows]:
    """A flush's rows as the serving view reads them back from an otherwise empty store.

    Every row goes through its text form (``encode_*`` then ``decode_*``), the one boundary
    between what ingest computes and what the readers see, so tests that build windows this
    way also check that nothing is lost crossing it.
    """
    usage_text = {window: {encode_dims(dims): encode_sums(sums) for dims, sums in rows.items()}
                  for window, rows in flush.usage.items()}
    gpu_text = {window: {encode_dims(dims): encode_sums(sums) for dims, sums in rows.items()}
                for window, rows in flush.gpu.items()}
    empty: Mapping[str, str] = {}
    return {
        window: WindowRows(
            {decode_usage_dims(k): decode_usage_sums(v)
             for k, v in usage_text.get(window, empty).items()},
            {decode_gpu_dims(k): decode_gpu_sums(v)
             for k, v in gpu_text.get(window, empty).items()},
        )
        for window in usage_text.keys() | gpu_text.keys()
    }


# Any label text: quotes, commas, backslashes, brackets and non-ASCII must all survive.
LABELS = st.text(max_size=12)
USAGE_DIMS = st.tuples(*[LABELS] * len(DIMENSIONS))
GPU_DIMS = st.tuples(*[LABELS] * len(GPU_DIMENSIONS))
# Sums past 2^64: the store adds them digit by digit, so no size may be cut or rounded.
SUM = st.integers(min_value=0, max_value=10**30)


def test_the_text_form_is_a_json_array_and_decimal_integers_joined_by_commas() -> None:
    dims = ("gpt-4", "search", "p", "a", "ns", "gpt-4-prod", "eu-west-1")
    assert encode_dims(dims) == '["gpt-4","search","p","a","ns","gpt-4-prod","eu-west-1"]'
    assert encode_sums(UsageSums(12, 3, 4, 0, 2, 250, 7, 1, 13)) == "12,3,4,0,2,250,7,1,13"
    assert encode_sums(GpuSums(10_000, 200, 9_800)) == "10000,200,9800"
    # Trailing zeros are left out (they read back as 0): the store adds fewer fields.
    assert encode_sums(UsageSums(12, 3, 4, 0, 1)) == "12,3,4,0,1"
    assert encode_sums(GpuSums(0, 0, 0)) == "0"
    assert decode_usage_sums(b"12,3,4,0,2,250,7,1,13") == UsageSums(
        cost_pico=12, input_tokens=3, output_tokens=4, cached_input_tokens=0, requests=2,
        gpu_ms=250, cache_saving_pico=7, semantic_cache_hits=1, semantic_saving_pico=13)
    assert decode_gpu_sums("10000,200,9800") == GpuSums(gpu_ms=10_000, busy_ms=200, idle_ms=9_800)


def test_label_text_that_would_break_a_naive_key_survives() -> None:
    dims = ('a,"b"', "c\\", "[]", "é 名前", "", "x\ny", "__overflow__")
    assert decode_usage_dims(encode_dims(dims)) == dims
    assert decode_usage_dims(encode_dims(dims).encode()) == dims


@given(USAGE_DIMS)
def test_usage_dimensions_round_trip(dims: tuple[str, ...]) -> None:
    text = encode_dims(dims)
    assert decode_usage_dims(text) == dims
    assert decode_usage_dims(text.encode()) == dims  # Redis answers bytes


@given(GPU_DIMS)
def test_gpu_dimensions_round_trip(dims: tuple[str, ...]) -> None:
    assert decode_gpu_dims(encode_dims(dims)) == dims
    assert decode_gpu_dims(encode_dims(dims).encode()) == dims


@given(st.builds(UsageSums, *[SUM] * len(UsageSums._fields)),
       st.builds(GpuSums, *[SUM] * len(GpuSums._fields)))
def test_sums_round_trip_exactly_at_any_size(usage: UsageSums, gpu: GpuSums) -> None:
    assert decode_usage_sums(encode_sums(usage)) == usage
    assert decode_usage_sums(encode_sums(usage).encode()) == usage
    assert decode_gpu_sums(encode_sums(gpu)) == gpu


def test_a_shorter_key_reads_its_missing_dimensions_as_empty() -> None:
    # Written before deployment and cluster were dimensions: five values.
    assert decode_usage_dims('["m","t","p","a","ns"]') == ("m", "t", "p", "a", "ns", "", "")
    assert decode_usage_dims(b'["m"]') == ("m", "", "", "", "", "", "")


def test_shorter_sums_read_their_missing_fields_as_zero() -> None:
    # Five sums: written before gpu_ms and the cache fields existed.
    assert decode_usage_sums("100,10,1,0,1") == UsageSums(100, 10, 1, 0, 1, 0, 0, 0, 0)
    # Seven: before the semantic cache's two fields.
    assert decode_usage_sums(b"10,1,2,0,1,0,3") == UsageSums(10, 1, 2, 0, 1, 0, 3, 0, 0)
    assert decode_gpu_sums("5") == GpuSums(5, 0, 0)


def test_a_shorter_row_added_to_a_full_one_keeps_every_sum() -> None:
    """What the store does when a window holds a row written before the semantic cache fields
    and a flush adds a full row to it: the missing fields count as zero, nothing shifts."""
    older = decode_usage_sums("10,1,2,0,1,0,3")
    newer = decode_usage_sums("20,3,4,0,2,0,0,1,7")
    assert add_sums(older, newer) == UsageSums(30, 4, 6, 0, 3, 0, 3, 1, 7)


@pytest.mark.parametrize("sums", [[-1], [0, 0, 0, 0, -5, 0, 0, 0, 0], [3, -10**20]])
def test_a_negative_sum_is_refused_before_it_reaches_the_store(sums: list[int]) -> None:
    # The store adds sums as digit strings: a minus sign would corrupt the window.
    with pytest.raises(ValueError, match="must not be negative"):
        encode_sums(sums)


@given(st.lists(st.integers(min_value=-(10**20), max_value=10**20), min_size=1, max_size=9))
def test_encode_sums_refuses_exactly_the_rows_with_a_negative_sum(sums: list[int]) -> None:
    if min(sums) < 0:
        with pytest.raises(ValueError, match="must not be negative"):
            encode_sums(sums)
    else:
        assert [int(part) for part in encode_sums(sums).split(",")] == sums


def test_add_sums_adds_field_by_field_and_keeps_the_type() -> None:
    total = add_sums(UsageSums(1, 2, 3, 4, 5, 6, 7, 8, 9),
                     UsageSums(10, 20, 30, 40, 50, 60, 70, 80, 90))
    assert total == UsageSums(11, 22, 33, 44, 55, 66, 77, 88, 99)
    assert type(total) is UsageSums
    gpu = add_sums(GpuSums(3_600_000, 1_000, 3_599_000), GpuSums(1, 1, 0))
    assert gpu == GpuSums(3_600_001, 1_001, 3_599_000)
    assert type(gpu) is GpuSums


@given(st.builds(UsageSums, *[SUM] * len(UsageSums._fields)),
       st.builds(UsageSums, *[SUM] * len(UsageSums._fields)))
def test_add_sums_is_commutative_with_zero_as_identity(a: UsageSums, b: UsageSums) -> None:
    assert add_sums(a, b) == add_sums(b, a)
    assert add_sums(a, UsageSums()) == a
    assert add_sums(a, b).cost_pico == a.cost_pico + b.cost_pico


def test_served_requests_leave_out_the_semantic_cache_hits() -> None:
    assert UsageSums(requests=7, semantic_cache_hits=3).served_requests == 4
    assert UsageSums(requests=7).served_requests == 7


def test_window_rows_are_truthy_when_they_hold_either_kind_of_row() -> None:
    assert not WindowRows()
    assert WindowRows(usage={("m", "", "", "", "", "", ""): UsageSums()})
    assert WindowRows(gpu={("n", "t4", "spot", "", "m", "", "1,2,3"): GpuSums()})


def test_the_overflow_row_keeps_the_model_and_hides_every_label() -> None:
    dims = overflow_dimensions("gpt-4")
    assert dims == ("gpt-4", *[OVERFLOW] * (len(DIMENSIONS) - 1))
    assert decode_usage_dims(encode_dims(dims)) == dims
