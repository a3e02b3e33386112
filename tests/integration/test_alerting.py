"""Alerting end to end: usage events through a worker to alert events, the Redis view, metrics.

The expected alerts are written out from the rules' definitions for the planted data (see
each test), not computed with costflux's code.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import pytest
import redis
from confluent_kafka import Consumer

from costflux.settings import Settings
from costflux.streams.kafka import consumer_config, ensure_topics, producer_config
from costflux.streams.producer import UsageProducer
from tests.core.test_budgets import ISSUE_EXAMPLE
from tests.integration.worker_process import WorkerProcess

pytestmark = pytest.mark.integration

HOUR_MS = 3_600_000
MINUTE_MS = 60_000
FAST_DETECTION = {
    "allowed_lateness_s": 0,
    "partition_idle_s": 1.0,
    "eval_settle_s": 0.3,
    "eval_backfill_s": 40 * 86400,
    "topic_partitions": 2,
}


def gpt4(event_id: str, ts_ms: int, team: str, input_tokens: int = 1000) -> dict[str, Any]:
    """A gpt-4 request: $0.03 per 1K input tokens (the seed's price), no output."""
    return {"event_id": event_id, "ts": ts_ms / 1000, "model": "gpt-4",
            "input_tokens": input_tokens, "output_tokens": 0,
            "labels": {"team": team, "namespace": "prod"}}


def produce(settings: Settings, events: list[dict[str, Any]]) -> None:
    ensure_topics(settings, {settings.topic_usage: settings.topic_partitions})
    with UsageProducer(producer_config(settings), settings.topic_usage,
                       events_per_message=1) as producer:
        for event in events:
            producer.send(event)


class AlertsReader:
    """Reads the alerts topic from the beginning, as a consumer outside the worker."""

    def __init__(self, settings: Settings) -> None:
        ensure_topics(settings, {settings.topic_alerts: settings.topic_partitions})
        self.consumer = Consumer(consumer_config(settings, settings.consumer_group + "-reader",
                                                 **{"auto.offset.reset": "earliest"}))
        self.consumer.subscribe([settings.topic_alerts])
        self.events: list[dict[str, Any]] = []

    def read_until(self, done: Callable[[list[dict[str, Any]]], bool], timeout_s: float,
                   worker: WorkerProcess) -> list[dict[str, Any]]:
        deadline = time.monotonic() + timeout_s
        while not done(self.events):
            if time.monotonic() > deadline:
                raise AssertionError(f"alerts so far: {self.events}\n{worker.log_tail()}")
            for message in self.consumer.consume(100, timeout=0.5):
                if message.error() is None:
                    self.events.append(orjson.loads(message.value()))
        return self.events

    def close(self) -> None:
        self.consumer.close()


def planted_spike() -> tuple[int, list[dict[str, Any]]]:
    """36 hours ago: 30 hours of three $0.03 requests an hour, nine in hour 20 (3x the mean:
    a spike), then a $0 request of another team at hour 31 that moves event time past it."""
    now = int(time.time() * 1000)
    start = now - now % HOUR_MS - 36 * HOUR_MS
    events = [gpt4(f"r{h}-{m}", start + h * HOUR_MS + m * 6 * MINUTE_MS + 1000, "search")
              for h in range(30) for m in range(9 if h == 20 else 3)]
    return start, [*events, gpt4("clock", start + 31 * HOUR_MS, "other", input_tokens=1)]


def alerts_until_evaluated(reader: AlertsReader, worker: WorkerProcess,
                           end_ms: int) -> list[dict[str, Any]]:
    """Every alert event, once the worker has evaluated up to ``end_ms`` and a second more."""
    worker.wait_for(lambda: _evaluated_to(worker) >= end_ms, 60, "evaluating to the last event")
    time.sleep(1.0)
    return reader.read_until(lambda got: True, 5, worker)


def test_a_planted_spike_alerts_once_firing_once_resolved_and_never_in_cold_start(
    settings_for: Callable[..., Settings], start_worker: Callable[[Settings], WorkerProcess],
) -> None:
    settings = settings_for(**FAST_DETECTION)  # the seeds' eight default rules
    start, events = planted_spike()
    reader = AlertsReader(settings)
    worker = start_worker(settings)
    try:
        produce(settings, events)
        worker.wait_ready()
        reader.read_until(lambda got: len(got) >= 2, 120, worker)
        alerts = alerts_until_evaluated(reader, worker, start + 31 * HOUR_MS)
    finally:
        reader.close()
    # The hour from 20:00 closes at 21:00: $0.27 against a mean of $0.09 -> 3 > 2, firing;
    # at 22:00 the last hour is $0.09 against a mean of ~$0.098 -> under 1.5, resolved.
    labels = {"namespace": "prod", "team": "search", "model": "gpt-4"}
    assert [(a["rule"], a["state"], a["labels"], _ms(a["starts_at"]) - start)
            for a in alerts] == [("CostSpike", "firing", labels, 21 * HOUR_MS),
                                 ("CostSpike", "resolved", labels, 21 * HOUR_MS)]
    firing, resolved = alerts
    assert firing["alert_id"] == resolved["alert_id"]
    assert firing["value"] == 3.0
    assert _ms(resolved["ends_at"]) - start == 22 * HOUR_MS
    assert worker.metric("costflux_alerts_total", rule="CostSpike", state="firing") == 1
    assert worker.get("/api/alerts")[1]["data"] == []


@pytest.mark.fault
def test_a_worker_killed_after_firing_resumes_and_resolves_the_same_alert(
    settings_for: Callable[..., Settings], start_worker: Callable[[Settings], WorkerProcess],
) -> None:
    settings = settings_for(**FAST_DETECTION)
    start, events = planted_spike()
    before = [e for e in events if e["ts"] * 1000 < start + 21 * HOUR_MS + 30 * MINUTE_MS]
    after = events[len(before):]
    reader = AlertsReader(settings)
    worker = start_worker(settings)
    try:
        produce(settings, before)
        worker.wait_ready()
        reader.read_until(lambda got: any(a["state"] == "firing" for a in got), 120, worker)
        worker.kill()  # SIGKILL: no commit, no changelog flush beyond what was sent
        restarted = start_worker(settings)
        produce(settings, after)
        restarted.wait_ready()
        reader.read_until(lambda got: any(a["state"] == "resolved" for a in got), 120,
                          restarted)
        alerts = alerts_until_evaluated(reader, restarted, start + 31 * HOUR_MS)
    finally:
        reader.close()
    # At least once on Kafka, but a re-sent notice is the same notice (same id, state,
    # repeat, times): the notifier's claim makes it one message. Exactly these two.
    distinct = {orjson.dumps(a, option=orjson.OPT_SORT_KEYS) for a in alerts}
    assert sorted((a["rule"], a["state"], _ms(a["starts_at"]) - start)
                  for a in map(orjson.loads, distinct)) == [
        ("CostSpike", "firing", 21 * HOUR_MS), ("CostSpike", "resolved", 21 * HOUR_MS)]
    assert len({a["alert_id"] for a in alerts}) == 1


BUDGET_RULES = """
rules:
  - {name: BudgetWarning, signal: budget_projection, op: ">", threshold: 1}
  - {name: BudgetCritical, signal: budget_projection, op: ">", threshold: 1.1,
     severity: critical}
  - {name: BudgetThreshold, signal: budget_spent_pct, op: ">=", threshold: 0, severity: info}
"""
#: One dollar per 1K input tokens: a dollar amount is a whole number of tokens.
PRICING = "model_costs:\n  dollar-model: {input_tokens: 1, output_tokens: 1}\n"
DAY_MS = 86_400_000
PICO = 10**12


def dollars(event_id: str, ts_ms: int, team: str, amount: int) -> dict[str, Any]:
    return {"event_id": event_id, "ts": ts_ms / 1000, "model": "dollar-model",
            "input_tokens": amount * 1000, "output_tokens": 0, "labels": {"team": team}}


def test_the_seeds_budget_example_through_the_stream(
    settings_for: Callable[..., Settings], start_worker: Callable[[Settings], WorkerProcess],
    tmp_path: Path, redis_url: str,
) -> None:
    for name, text in (("budgets.yaml", ISSUE_EXAMPLE), ("rules.yaml", BUDGET_RULES),
                       ("pricing.yaml", PRICING)):
        (tmp_path / name).write_text(text)
    settings = settings_for(
        **FAST_DETECTION, eval_interval_s=3600, budgets_file=tmp_path / "budgets.yaml",
        rules_file=tmp_path / "rules.yaml", pricing_file=tmp_path / "pricing.yaml")
    month = _thirty_day_month_before(datetime.now(UTC))
    day15 = month + 15 * DAY_MS  # the end of day 15

    def clock(at_ms: int) -> dict[str, Any]:
        """A $0 request of another team: moves event time to just past ``at_ms``."""
        return {**dollars(f"clock-{at_ms}", at_ms + 1, "other", 0), "input_tokens": 1}

    # $25,000 by the end of day 15, never ahead of the pace of $50,000 a month: $1,600 in
    # each of days 1-14 (in its last minute), $2,600 on day 15.
    phases = [
        [dollars(f"d{d}", month + (d + 1) * DAY_MS - MINUTE_MS, "ml-research",
                 2_600 if d == 14 else 1_600) for d in range(15)] + [clock(day15)],
        [dollars("w", day15 + 1000, "ml-research", 2_000), clock(day15 + HOUR_MS)],
        [dollars("c", day15 + HOUR_MS + 1000, "ml-research", 1_000),
         clock(day15 + 2 * HOUR_MS)],
        [clock(month + 30 * DAY_MS)],  # October 1st: the next period
    ]
    spend = (25_000, 27_000, 28_000, 0)
    at = (day15, day15 + HOUR_MS, day15 + 2 * HOUR_MS, month + 30 * DAY_MS)
    active = ({"BudgetThreshold"}, {"BudgetThreshold", "BudgetWarning"},
              {"BudgetThreshold", "BudgetWarning", "BudgetCritical"}, set())
    # The seed's projection, by hand: spend / elapsed x 30 days; > budget WARNING, > 1.1x
    # CRITICAL (25,000 -> 50,000 OK; 27,000 -> ~53,851 WARNING; 28,000 -> ~55,692 CRITICAL).
    reader = AlertsReader(settings)
    worker = start_worker(settings)
    gateway = redis.Redis.from_url(redis_url)
    try:
        worker.wait_ready()
        for events, dollars_spent, t, firing in zip(phases, spend, at, active, strict=True):
            produce(settings, events)
            worker.wait_for(lambda t=t: _evaluated_to(worker) >= t, 60, f"evaluating {t}")
            (budget,) = worker.get("/api/budgets")[1]["data"]
            elapsed = (t - month) if dollars_spent else 30 * DAY_MS
            projected = dollars_spent * PICO * 30 * DAY_MS // elapsed
            want = ("CRITICAL" if 10 * projected > 11 * 50_000 * PICO else
                    "WARNING" if projected > 50_000 * PICO else "OK")
            assert (budget["spend"], budget["projected"], budget["status"]) == (
                f"{dollars_spent}.000000000000", _dollars(projected), want)
            # A gateway's check: the team's worst budget status, one GET.
            key = f"{settings.consumer_group}:budget_status:team=ml-research"
            assert gateway.get(key) == want.encode()
            assert {a["rule"] for a in worker.get("/api/alerts")[1]["data"]} == firing
        assert [worker.get("/api/budgets")[1]["data"][0][k] for k in ("status", "periodStart")
                ] == ["OK", datetime.fromtimestamp((month + 30 * DAY_MS) / 1000, UTC).isoformat()]
        alerts = reader.read_until(lambda got: len(got) >= 6, 30, worker)
    finally:
        gateway.close()
        reader.close()
    # Critical resolves at the first hour its projection is back to 1.1x: 28,000 x 720 h /
    # h <= 55,000 -> h >= 366.5; warning at 28,000 x 720 / h <= 50,000 -> h >= 403.2.
    # Kafka orders each alert's events (keyed by alert) but not events of different alerts in
    # other partitions: compare in event-time order.
    assert sorted(((a["rule"], a["state"], a["labels"], _ms(a["ends_at"] or a["starts_at"]) - month)
                   for a in alerts), key=lambda row: row[3]) == [
        ("BudgetThreshold", "firing", {"budget": "ml-research-monthly", "threshold": "50"},
         15 * DAY_MS),
        ("BudgetWarning", "firing", {"budget": "ml-research-monthly"}, 15 * DAY_MS + HOUR_MS),
        ("BudgetCritical", "firing", {"budget": "ml-research-monthly"},
         15 * DAY_MS + 2 * HOUR_MS),
        ("BudgetCritical", "resolved", {"budget": "ml-research-monthly"}, 367 * HOUR_MS),
        ("BudgetWarning", "resolved", {"budget": "ml-research-monthly"}, 404 * HOUR_MS),
        ("BudgetThreshold", "resolved", {"budget": "ml-research-monthly", "threshold": "50"},
         30 * DAY_MS),
    ]
    assert worker.metric("llm_budget_status", budget="ml-research-monthly") == 0
    assert worker.metric("llm_budget_limit_dollars", budget="ml-research-monthly") == 50_000


def _dollars(pico: int) -> str:
    return f"{pico // PICO}.{pico % PICO:012d}"


def _thirty_day_month_before(now: datetime) -> int:
    year, month = now.year, now.month
    while True:
        year, month = (year - 1, 12) if month == 1 else (year, month - 1)
        start = datetime(year, month, 1, tzinfo=UTC)
        following = datetime(year + month // 12, month % 12 + 1, 1, tzinfo=UTC)
        if (following - start).days == 30:
            return int(start.timestamp() * 1000)


def _evaluated_to(worker: WorkerProcess) -> int:
    evaluated = worker.get("/api/alerts")[1]["evaluatedAt"]
    return 0 if evaluated is None else _ms(evaluated)


def _ms(iso: str) -> int:
    return int(datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp() * 1000)


def test_budgets_and_rules_edited_while_the_worker_runs_apply_and_a_broken_edit_is_ignored(
    settings_for: Callable[..., Settings], start_worker: Callable[[Settings], WorkerProcess],
    tmp_path: Path,
) -> None:
    """Files mounted from a ConfigMap change under a running worker (Kubernetes swaps them)."""
    budgets, rules = tmp_path / "budgets.yaml", tmp_path / "rules.yaml"
    budget = ("budgets: [{name: ml-daily, scope: {team: ml}, period: daily, amount: %s, "
              "thresholds: [50, 80, 100]}]\n")
    rule = "rules: [{name: %s, signal: budget_spent_pct, op: '>=', threshold: 0}]\n"
    budgets.write_text(budget % 100)
    rules.write_text(rule % "BudgetThreshold")
    (tmp_path / "pricing.yaml").write_text(PRICING)
    settings = settings_for(**FAST_DETECTION, eval_interval_s=60, budgets_file=budgets,
                            rules_file=rules, pricing_file=tmp_path / "pricing.yaml")
    day = (int(time.time() * 1000) // DAY_MS - 3) * DAY_MS  # a whole past day
    reader = AlertsReader(settings)
    worker = start_worker(settings)

    def evaluated(at_ms: int) -> dict[str, Any]:
        """Moves event time past ``at_ms`` ($0 of another team) and returns the budget."""
        produce(settings, [{**dollars(f"clock-{at_ms}", at_ms + 1, "other", 0),
                            "input_tokens": 1}])
        worker.wait_for(lambda: _evaluated_to(worker) >= at_ms, 60, f"evaluating {at_ms}")
        (status,) = worker.get("/api/budgets")[1]["data"]
        return {k: status[k] for k in ("limit", "spend", "thresholdsReached")}

    def reloaded(times: int) -> None:
        """Until the worker has logged ``times`` successful reloads (it looks every 5 s)."""
        worker.wait_for(lambda: worker.log_path.read_text(errors="replace").count(
            "reloaded rules and budgets") >= times, 30, f"reload {times}")

    def firing() -> set[tuple[str, str]]:
        return {(a["rule"], a["labels"]["threshold"])
                for a in worker.get("/api/alerts")[1]["data"]}

    try:
        worker.wait_ready()
        produce(settings, [dollars("spent", day + HOUR_MS, "ml", 60)])
        assert evaluated(day + 2 * HOUR_MS) == {
            "limit": "100.000000000000", "spend": "60.000000000000", "thresholdsReached": [50]}
        # The budget lowered: the same spend now passes 100 % of it.
        budgets.write_text(budget % 50)
        reloaded(1)
        assert evaluated(day + 3 * HOUR_MS) == {
            "limit": "50.000000000000", "spend": "60.000000000000",
            "thresholdsReached": [50, 80, 100]}
        assert firing() == {("BudgetThreshold", t) for t in ("50", "80", "100")}
        # A broken edit, with a rule renamed in the same change: logged with the file, and
        # the last good set kept whole (the renamed rule waits for the mended budgets).
        budgets.write_text(budget % "'fifty'")
        rules.write_text(rule % "BudgetReached")
        worker.wait_for(lambda: "keeping the last good rules and budgets" in
                        worker.log_path.read_text(errors="replace"), 30, "the broken edit")
        assert "budgets.yaml" in worker.log_path.read_text(errors="replace")
        assert evaluated(day + 4 * HOUR_MS)["limit"] == "50.000000000000"
        assert firing() == {("BudgetThreshold", t) for t in ("50", "80", "100")}
        # Mended: the renamed rule replaces the old one, whose states are dropped.
        budgets.write_text(budget % 50)
        reloaded(2)
        evaluated(day + 5 * HOUR_MS)
        assert firing() == {("BudgetReached", t) for t in ("50", "80", "100")}
        alerts = reader.read_until(lambda got: len(got) >= 6, 30, worker)
    finally:
        reader.close()
    assert sorted((a["rule"], a["state"], a["labels"]["threshold"]) for a in alerts) == sorted(
        (name, "firing", t) for name in ("BudgetThreshold", "BudgetReached")
        for t in ("50", "80", "100"))
