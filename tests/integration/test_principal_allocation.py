"""aggregate=api_key and end_user end to end: events naming an API key and an end user (or
neither) go through a worker's ingest, whose atomic store step writes each UTC day's roll-up
beside the windows, and the worker's allocation API answers per key and per user in whole
days. Every figure is checked against a recomputation written here with Decimal and the seed's
prices as written (tests.integration.expected), never against costflux code."""

from __future__ import annotations

import json
import random
from collections import defaultdict
from collections.abc import Callable, Iterable
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest

from costflux.cli import main
from costflux.settings import Settings
from tests.integration.expected import SEED_PRICES, event_cost
from tests.integration.test_pipeline import produce_events
from tests.integration.worker_process import WorkerProcess

pytestmark = pytest.mark.integration

#: Three whole UTC days and the start of a fourth: 2023-11-14 00:00 to 2023-11-17 06:00.
FIRST_DAY = datetime(2023, 11, 14, tzinfo=UTC)
EVENTS = 360
WHOLE_DAYS = "2023-11-14T00:00:00Z,2023-11-18T00:00:00Z"
KEYS = ("key-search", "key-ads", "key/batch", "")  # "": the event names no key
USERS = ("alice", "bob", "carol@example.com", "")


def usage_events() -> list[dict[str, Any]]:
    """In time order (each partition's clock only moves forward), 15 minutes apart."""
    rng = random.Random(20231114)
    events = []
    for index in range(EVENTS):
        labels = {"team": rng.choice(("search", "ads"))}
        key, user = rng.choice(KEYS), rng.choice(USERS)
        if key:
            labels["api_key"] = key
        if user:
            labels["end_user"] = user
        moment = FIRST_DAY + timedelta(minutes=13 * index, seconds=rng.randrange(60))
        events.append({
            "event_id": f"principal-{index}",
            "ts": moment.isoformat().replace("+00:00", "Z"),
            "model": rng.choice(sorted(SEED_PRICES)),
            "input_tokens": rng.randint(1, 200_000), "output_tokens": rng.randint(0, 8_000),
            "labels": labels,
        })
    return events


def day_of(event: dict[str, Any]) -> str:
    return str(event["ts"][:10])


def expected_by(events: Iterable[dict[str, Any]], label: str) -> dict[str, tuple[Any, ...]]:
    """(cost, input tokens, output tokens, requests) per label value; __unallocated__ for
    events without it."""
    groups: dict[str, list[Any]] = defaultdict(lambda: [Decimal(0), 0, 0, 0])
    for event in events:
        group = groups[event["labels"].get(label) or "__unallocated__"]
        group[0] += event_cost(event)
        group[1] += event["input_tokens"]
        group[2] += event["output_tokens"]
        group[3] += 1
    return {name: tuple(values) for name, values in groups.items()}


def served(answer_set: dict[str, dict[str, Any]]) -> dict[str, tuple[Any, ...]]:
    return {name: (Decimal(row["totalCostExact"]), row["inputTokens"], row["outputTokens"],
                   row["requests"]) for name, row in answer_set.items()}


def allocation_sets(worker: WorkerProcess, **params: str) -> list[dict[str, dict[str, Any]]]:
    status, body = worker.get("/model/allocation", **params)
    assert status == 200, body
    sets: list[dict[str, dict[str, Any]]] = body["data"]
    return sets


def test_per_key_and_per_user_rows_equal_a_decimal_recomputation(
    settings_for: Callable[..., Settings], start_worker: Callable[[Settings], WorkerProcess],
    capsys: pytest.CaptureFixture[str],
) -> None:
    settings = settings_for()
    events = usage_events()
    produce_events(settings, events)
    worker = start_worker(settings)
    worker.wait_ready()
    worker.wait_for(
        lambda: sum(r["requests"] for r in worker.allocation(WHOLE_DAYS, "model").values())
        == EVENTS, 120, f"serving {EVENTS} requests")

    for label, values in (("api_key", KEYS), ("end_user", USERS)):
        expected = expected_by(events, label)
        assert set(expected) == {value or "__unallocated__" for value in values}
        for aggregate in (label, f"label:{label}"):
            [whole] = allocation_sets(worker, window=WHOLE_DAYS, aggregate=aggregate)
            assert served(whole) == expected, aggregate
            for row in whole.values():
                assert row["window"] == {"start": "2023-11-14T00:00:00Z",
                                         "end": "2023-11-18T00:00:00Z"}
                assert row["gpuCost"] == 0.0 and "listCostExact" in row
        # The set adds up to what the windows hold: the same total as by model.
        by_model = worker.allocation(WHOLE_DAYS, "model")
        assert sum(Decimal(r["totalCostExact"]) for r in whole.values()) == sum(
            Decimal(r["totalCostExact"]) for r in by_model.values())

        # One set per UTC day, each the recomputation of that day's events.
        days = allocation_sets(worker, window=WHOLE_DAYS, aggregate=label, step="1d")
        assert [s and next(iter(s.values()))["window"]["start"][:10] for s in days] == [
            "2023-11-14", "2023-11-15", "2023-11-16", "2023-11-17"]
        for answer_set in days:
            day = next(iter(answer_set.values()))["window"]["start"][:10]
            assert served(answer_set) == expected_by(
                (e for e in events if day_of(e) == day), label), day
        [accumulated] = allocation_sets(worker, window=WHOLE_DAYS, aggregate=label, step="1d",
                                        accumulate="true")
        assert served(accumulated) == expected

    # "Now" is the newest event (on 2023-11-17): 2d is that day and the one before, whole.
    [recent] = allocation_sets(worker, window="2d", aggregate="end_user")
    assert served(recent) == expected_by(
        (e for e in events if day_of(e) in ("2023-11-16", "2023-11-17")), "end_user")
    assert next(iter(recent.values()))["window"] == {"start": "2023-11-16T00:00:00Z",
                                                     "end": "2023-11-18T00:00:00Z"}

    # Instants inside days: the whole days holding them, as the answer's window says.
    [widened] = allocation_sets(worker, window="2023-11-15T06:00:00Z,2023-11-16T00:10:00Z",
                                aggregate="api_key")
    assert served(widened) == expected_by(
        (e for e in events if day_of(e) in ("2023-11-15", "2023-11-16")), "api_key")
    assert next(iter(widened.values()))["window"] == {"start": "2023-11-15T00:00:00Z",
                                                      "end": "2023-11-17T00:00:00Z"}

    for params, message in (
        ({"window": WHOLE_DAYS, "aggregate": "api_key", "step": "1h"},
         "kept per UTC day: step must be whole days"),
        ({"window": WHOLE_DAYS, "aggregate": "api_key,model"}, "aggregate by api_key alone"),
    ):
        status, body = worker.get("/model/allocation", **params)
        assert status == 400 and message in body["message"], (params, body)

    # costflux report groups by them the same way.
    assert main(["report", "--window", WHOLE_DAYS, "--by", "api_key", "--format", "json",
                 "--url", worker.base]) == 0
    report = json.loads(capsys.readouterr().out)
    assert {row["api_key"]: (Decimal(row["cost"]), row["requests"])
            for row in report["rows"]} == {
        name: (group[0], group[3]) for name, group in expected_by(events, "api_key").items()}
