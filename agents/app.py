"""The worker: a Faust app with the ingest threads, the detector agent, timers and HTTP."""

from __future__ import annotations

import asyncio
import gc
import logging
import tempfile
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import faust
import mode
import redis
import redis.asyncio as aioredis

from costflux.agents.alert_metrics import AlertMetrics
from costflux.agents.alerts_view import AlertsView
from costflux.agents.detector import Detector, DetectorOptions
from costflux.agents.http import register_http
from costflux.agents.http_access import HttpAccess
from costflux.agents.http_api import AdviceInputs, WorkerApi
from costflux.agents.serving import ServingView
from costflux.agents.unit_costs import UnitCosts
from costflux.agents.watermark import PipelineWatermark
from costflux.alerting_source import DetectionSource, advice_assumptions_from
from costflux.core.allocation import AllocationOptions
from costflux.core.ingest import IngestRules
from costflux.core.spend import SpendRules
from costflux.pricing_source import PricingSource
from costflux.settings import Settings
from costflux.streams.cost_store import CostStore
from costflux.streams.health import Health, guarded
from costflux.streams.ingest import GPU_SAMPLES, USAGE, IngestLoop, IngestOptions, SourceKind
from costflux.streams.kafka import (
    admin_config,
    consumer_config,
    ensure_topics,
    faust_broker_options,
    producer_config,
)
from costflux.streams.metrics import CostMetrics

__all__ = ["Worker", "build_worker"]

log = logging.getLogger(__name__)


class IngestService(mode.Service):
    """Runs the ingest loops (usage, GPU samples) in threads for as long as the app runs."""

    def __init__(self, loops: list[IngestLoop], **kwargs: object) -> None:
        super().__init__(**kwargs)  # type: ignore[arg-type]
        self.loops = loops
        self._threads = [
            threading.Thread(target=loop.run, name=f"costflux-ingest-{loop.kind}", daemon=True)
            for loop in loops
        ]

    async def on_start(self) -> None:
        _tune_garbage_collector()
        for thread in self._threads:
            thread.start()

    async def on_stop(self) -> None:
        for loop in self.loops:
            loop.stop()
        for thread in self._threads:
            await asyncio.to_thread(thread.join, 15)


def _tune_garbage_collector() -> None:
    """Make cyclic GC rare: it cost as much as decoding on the hot path.

    Ingest allocates a few containers per event (the validated fields, the labels, a tuple),
    nearly all freed at once by reference counting; with the default threshold (700) the
    collector ran every ~150 events and re-walked the survivors each time. Freezing moves
    what start-up allocated (Faust, aiokafka, pydantic schemas) out of full collections.
    Measured in bench/: GC went from ~2 us/event to noise.
    """
    gc.freeze()
    gc.set_threshold(50_000, 20, 100)


@dataclass
class Worker:
    """Everything one worker process runs."""

    app: faust.App
    ingest: IngestLoop
    gpu_ingest: IngestLoop
    watermark: PipelineWatermark
    detector: Detector
    metrics: CostMetrics
    pricing: PricingSource


def build_worker(settings: Settings, app_id: str | None = None) -> Worker:
    """Wire a worker from settings: topics, clients, the ingest loop, agents and HTTP."""
    namespace = settings.consumer_group
    partitions = settings.topic_partitions
    detection = DetectionSource(settings)  # first: a bad rules or budgets file stops here
    assumptions = advice_assumptions_from(settings)
    ensure_topics(
        settings,
        {
            settings.topic_usage: partitions,
            settings.topic_gpu: partitions,
            settings.topic_deadletter: partitions,
            settings.topic_alerts: partitions,
            ticks_topic(settings): 1,
        },
    )
    data_dir = settings.data_dir or Path(tempfile.mkdtemp(prefix="costflux-"))
    app = faust.App(
        app_id or settings.consumer_group,
        **faust_broker_options(settings),
        # RocksDB (the rocksdict driver, which Faust picks whenever rocksdict is installed)
        # keeps each table partition on disk with the changelog offset it holds, so a
        # restarted worker reads only the changelog's tail; memory rebuilds from the start.
        store=f"{settings.table_store}://",
        datadir=str(data_dir),
        web_enabled=True,
        web_bind=settings.http_host,
        web_port=settings.http_port,
        web_in_thread=False,
        topic_partitions=partitions,
        topic_allow_declare=True,
        producer_linger=0.02,
    )
    metrics = CostMetrics(label_cap=settings.metric_label_cap, allowed=settings.metric_label_allow)
    health = Health(metrics.registry)
    pricing = PricingSource(settings.pricing_file)
    redis_options = settings.redis_client_options()
    sync_redis = redis.Redis.from_url(_redis_url(settings), **redis_options)
    async_redis = aioredis.Redis.from_url(_redis_url(settings), **redis_options)
    _warn_unless_noeviction(sync_redis)
    view = ServingView(async_redis, namespace)
    rules = IngestRules(
        window_sizes_s=tuple(settings.window_sizes),
        allowed_lateness_ms=settings.allowed_lateness_s * 1000,
        max_future_ms=settings.max_future_s * 1000,
        gpu_idle_threshold_pct=settings.gpu_idle_threshold_pct,
    )

    def ingest_loop(topic: str, kind: SourceKind, group_suffix: str) -> IngestLoop:
        store = CostStore(
            sync_redis, namespace, dedup_kind=kind.name,
            dedup_horizon_s=settings.dedup_horizon_s,
            retention_s=serving_retention(settings),
            finest_window_s=min(settings.window_sizes),
            window_max_rows=settings.window_max_rows,
            principal_retention_s=settings.principal_retention_days * 86_400,
        )
        return IngestLoop(
            IngestOptions(
                topic=topic,
                deadletter_topic=settings.topic_deadletter,
                rules=rules,
                batch_size=settings.ingest_batch_size,
                flush_interval_s=settings.ingest_flush_s,
                kind=kind,
            ),
            # A 16 MiB prefetch per consumer instead of librdkafka's 64 MiB: no slower, far
            # less RSS.
            consumer_config(
                settings, f"{settings.consumer_group}-{group_suffix}",
                **{"queued.max.messages.kbytes": 16384},
            ),
            producer_config(settings),
            store,
            pricing.current,
            metrics,
            health,
            admin_config(settings),
            spend_rules=spend_rules if kind is USAGE else None,
        )

    def spend_rules() -> SpendRules:
        """The enforced budgets of the budgets file in force (read once per flush)."""
        return SpendRules(detection.current().enforced)

    ingest = ingest_loop(settings.topic_usage, USAGE, "ingest")
    gpu_ingest = ingest_loop(settings.topic_gpu, GPU_SAMPLES, "gpu")
    watermark = PipelineWatermark(view, metrics, rules.allowed_lateness_ms,
                                  int(settings.partition_idle_s * 1000))
    unit_costs = UnitCosts(view, metrics, tuple(settings.window_sizes),
                           lambda: watermark.current_ms)
    for interval_s, name, step in (
        (1.0, "costflux.advance_watermark", watermark.advance),
        (15.0, "costflux.unit_costs", unit_costs.publish),
    ):
        # Guarded: a timer that raises would stop the whole worker (Faust crashes the app);
        # this one reports through /readyz and the error counter and runs again next tick.
        app.timer(interval_s, name=name)(guarded(health, name, step))
    alerts_view = AlertsView(async_redis, namespace)
    detector = Detector(
        app, detection.current, DetectorOptions(
            ticks_topic(settings), settings.topic_alerts, settings.eval_settle_s,
            settings.eval_backfill_s * 1000, min(settings.window_sizes)),
        lambda: watermark.current_ms, view, alerts_view,
        AlertMetrics(metrics.registry, settings.metric_label_cap, settings.metric_label_allow),
        health,
    )
    app.add_dependency(IngestService([ingest, gpu_ingest]))

    @app.on_before_shutdown.connect  # type: ignore[arg-type]  # an async receiver is fine
    async def stop_ingesting(sender: object, **kwargs: object) -> None:
        # Faust stops its own services first and ours last; ingest stops consuming now, so a
        # SIGTERM leaves its partitions to the next owner within a flush, not after shutdown.
        for loop in (ingest, gpu_ingest):
            loop.stop()

    async def reload_files() -> None:
        pricing.reload_if_changed()
        detection.reload_if_changed()

    app.timer(5.0, name="costflux.reload_files")(
        guarded(health, "costflux.reload_files", reload_files))

    def liveness() -> tuple[bool, str]:
        # A dead ingest thread never comes back by itself: fail liveness so the worker is
        # restarted (it resumes at its checkpoints) instead of idling forever.
        for loop in (ingest, gpu_ingest):
            if loop.failure is not None:
                return False, f"{loop.kind} ingest failed: {type(loop.failure).__name__}"
        return True, "ok"

    def readiness() -> tuple[bool, str]:
        alive, why = liveness()
        if not alive:
            return alive, why
        for loop in (ingest, gpu_ingest):
            if not loop.ready.is_set():
                return False, f"{loop.kind} ingest waiting for partition assignment"
        problems = health.problems()
        if problems:
            return False, "; ".join(problems)
        return True, "ok"

    api = WorkerApi(
        view, alerts_view,
        window_sizes_s=tuple(settings.window_sizes),
        gpu_defaults=AllocationOptions(settings.gpu_share_idle, settings.gpu_allocation_weight),
        advice=AdviceInputs(assumptions,
                            lambda model, ts_ms: pricing.current().model_price(model, ts_ms)),
        other_costs=lambda: pricing.current().other_costs,  # re-read: prices reload live
        probes=(liveness, readiness),
        registry=metrics.registry,
    )
    register_http(app, api, access=HttpAccess(settings.http_token_value(),
                                              protect_metrics=settings.http_protect_metrics))
    return Worker(app, ingest, gpu_ingest, watermark, detector, metrics, pricing)


def serving_retention(settings: Settings) -> Callable[[int], int]:
    """How long the serving view keeps a window size: hourly and larger roll-ups long (the
    allocation API's 30d, month and lastmonth), the finer windows as configured."""
    finest = min(settings.window_sizes)

    def retention_s(size_s: int) -> int:
        days = settings.serving_finest_retention_days if size_s == finest and size_s < 3600 \
            else settings.serving_retention_days
        return days * 86400

    return retention_s


def _warn_unless_noeviction(client: redis.Redis) -> None:
    """The cost store must never lose a key to eviction: window rows carry a TTL, so any
    volatile-* or allkeys-* policy can drop money silently under memory pressure."""
    try:
        policy = client.config_get("maxmemory-policy").get("maxmemory-policy")
    except redis.exceptions.RedisError:  # CONFIG is disabled on some managed Redis services
        log.info("Redis maxmemory-policy unknown (CONFIG GET refused); it must be noeviction")
        return
    if policy not in (None, "noeviction"):
        log.error("Redis maxmemory-policy is %s: under memory pressure Redis would evict cost "
                  "windows (counted money, silently lost). Set maxmemory-policy noeviction: "
                  "ingest then waits for memory instead of losing data", policy)


def ticks_topic(settings: Settings) -> str:
    """The detector's internal topic, one per deployment (named like Faust's own topics)."""
    return f"{settings.consumer_group}-detect-ticks"


def _redis_url(settings: Settings) -> str:
    if settings.redis_url is None:
        raise ValueError("COSTFLUX_REDIS_URL is unset; start the embedded stack first")
    return settings.redis_url
