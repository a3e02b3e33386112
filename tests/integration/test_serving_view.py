"""The Redis serving view's versioned shard writes, on a real Redis."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest
import redis.asyncio as aioredis

from agents.serving import ServingView
from costflux.core.aggregate import PartialKey

pytestmark = pytest.mark.integration


def test_a_partition_joining_a_shard_at_offset_0_is_written(
    redis_url: str, unique: Callable[[str], str]
) -> None:
    """Regression: versions were the sum of offsets, so partition 1's first flush (offset 0)
    joining a shard partition 0 had written at offset 0 left the version at 0, the write was
    refused and its rows stayed missing from every answer."""

    async def scenario() -> tuple[dict[str, list[int]], dict[str, list[int]]]:
        client = aioredis.Redis.from_url(redis_url)
        view = ServingView(client, unique("ns"), lambda size_s: 3600)
        key = PartialKey(60, 0, 0)
        first = {"applied": {"0": 0}, "rows": {'["m"]': [5]}}
        joined = {"applied": {"0": 0, "1": 0}, "rows": {'["m"]': [5], '["n"]': [7]}}
        stale = {"applied": {"0": 0}, "rows": {'["m"]': [1]}}
        await view.write_shards([(key, first)], 60)
        await view.write_shards([(key, joined)], 60)
        after_join = (await view.read_windows([(60, 0)]))[0]
        await view.write_shards([(key, stale)], 60)  # an older state, e.g. from a lost owner
        after_stale = (await view.read_windows([(60, 0)]))[0]
        await client.aclose()
        return after_join, after_stale

    after_join, after_stale = asyncio.run(scenario())
    assert after_join == {'["m"]': [5], '["n"]': [7]}
    assert after_stale == after_join
