"""A window shard caps its usage rows: new label combinations beyond the cap fold into one
overflow row per model, so the state stays under the broker's record limit and no money is
lost (tests/integration/test_fuzz_worker.py sends 100,000 teams through a worker)."""

from __future__ import annotations

import copy
from collections import defaultdict

from hypothesis import given, settings
from hypothesis import strategies as st

from costflux.core.aggregate import (
    OVERFLOW,
    SUM_FIELDS,
    apply_partial,
    decode_dimensions,
    encode_dimensions,
    overflow_dimensions,
    row_bytes,
)
from costflux.core.gpu_samples import GPU_ROW_PREFIX

MODELS = ("gpt-4", "llama-2-7b")


def usage_key(model: str, team: str) -> str:
    return encode_dimensions((model, team, "", "", "", "", ""))


def overflow_key(model: str) -> str:
    return encode_dimensions(overflow_dimensions(model, 0))


rows_strategy = st.dictionaries(
    st.tuples(st.sampled_from(MODELS), st.integers(0, 60).map(lambda n: f"team-{n}")),
    st.lists(st.integers(0, 10**12), min_size=len(SUM_FIELDS), max_size=len(SUM_FIELDS)),
    max_size=25,
)


@settings(max_examples=200, deadline=None)
@given(partials=st.lists(rows_strategy, min_size=1, max_size=8),
       max_bytes=st.integers(0, 30 * row_bytes(usage_key("gpt-4", "team-10"))))
def test_full_shard_folds_new_combinations_and_keeps_every_sum(
    partials: list[dict[tuple[str, str], list[int]]], max_bytes: int
) -> None:
    state = None
    expected_by_key: dict[tuple[str, str], list[int]] = defaultdict(lambda: [0] * len(SUM_FIELDS))
    for offset, rows in enumerate(partials):
        partial = {"src": "usage:0", "last": offset,
                   "rows": {usage_key(*key): list(sums) for key, sums in rows.items()}}
        state, fresh = apply_partial(state, copy.deepcopy(partial), max_bytes)
        assert fresh
        for key, sums in rows.items():
            expected_by_key[key] = [a + b for a, b in zip(expected_by_key[key], sums, strict=True)]
    assert state is not None
    held = state["rows"]
    kept = {decode_dimensions(k)[:2]: v for k, v in held.items()
            if decode_dimensions(k)[1] != OVERFLOW}
    # The budget holds (plus at most one overflow row per model).
    overflow_bytes = sum(row_bytes(k) for k in held if decode_dimensions(k)[1] == OVERFLOW)
    assert sum(row_bytes(k) for k in held) - overflow_bytes <= max_bytes
    assert overflow_bytes <= sum(row_bytes(overflow_key(model)) for model in MODELS)
    assert state["bytes"] == sum(row_bytes(k) for k in held)
    # A combination that kept its row has all its sums, not just those before the cap.
    for key, sums in kept.items():
        assert sums == expected_by_key[key]
    # Per model, kept rows plus the overflow row add up to everything sent.
    for model in MODELS:
        sent = [sum(v[i] for k, v in expected_by_key.items() if k[0] == model)
                for i in range(len(SUM_FIELDS))]
        held_sums = [sum(v[i] for k, v in held.items() if decode_dimensions(k)[0] == model)
                     for i in range(len(SUM_FIELDS))]
        assert held_sums == sent
    folded_combinations = len(expected_by_key) - len(kept)
    assert (state.get("overflowed", 0) > 0) == (folded_combinations > 0)


def test_gpu_rows_are_never_folded_and_no_cap_means_no_folding() -> None:
    gpu_key = GPU_ROW_PREFIX + '["node-1","H100","on_demand","prod","m","t",[1,2,3]]'
    one_row = row_bytes(usage_key("gpt-4", "a"))
    state, _ = apply_partial(None, {"src": "usage:0", "last": 0, "rows": {
        usage_key("gpt-4", "a"): [1] * len(SUM_FIELDS)}}, max_bytes=one_row)
    state, _ = apply_partial(state, {"src": "usage:0", "last": 1, "rows": {
        gpu_key: [5] * len(SUM_FIELDS), usage_key("gpt-4", "b"): [2] * len(SUM_FIELDS)}},
        max_bytes=one_row)
    assert state["rows"][gpu_key] == [5] * len(SUM_FIELDS)
    overflow = overflow_key("gpt-4")
    # A row already held keeps taking its sums when the shard is full.
    state, _ = apply_partial(state, {"src": "usage:0", "last": 2, "rows": {
        usage_key("gpt-4", "a"): [1] * len(SUM_FIELDS)}}, max_bytes=one_row)
    assert state["rows"][usage_key("gpt-4", "a")] == [2] * len(SUM_FIELDS)
    assert state["rows"][overflow] == [2] * len(SUM_FIELDS)
    assert state["overflowed"] == 1

    uncapped, _ = apply_partial(None, {"src": "usage:0", "last": 0, "rows": {
        usage_key("gpt-4", str(n)): [1] * len(SUM_FIELDS) for n in range(100)}})
    assert len(uncapped["rows"]) == 100 and "overflowed" not in uncapped


def test_each_shard_folds_into_its_own_row() -> None:
    """The serving view holds one row per key and window, written shard by shard: two shards
    of a window sharing an overflow key would overwrite each other's sums there."""
    full = row_bytes(usage_key("gpt-4", "a"))
    keys = []
    for bucket, team in ((0, "x"), (1, "y")):
        state, _ = apply_partial(None, {"src": "usage:0", "last": 0, "rows": {
            usage_key("gpt-4", "a"): [1] * len(SUM_FIELDS),
            usage_key("gpt-4", team): [1] * len(SUM_FIELDS)}}, full, bucket)
        keys.append(set(state["rows"]) - {usage_key("gpt-4", "a")})
    assert keys[0].isdisjoint(keys[1]) and all(len(k) == 1 for k in keys)
