"""``costflux collect``: the OTLP/HTTP and CloudEvents receiver's command."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
from typing import Any

from costflux.settings import Settings

__all__ = ["add_collect_command"]

log = logging.getLogger("costflux.collect")

_PRICES_RELOAD_S = 30.0
#: A client waits for its records' acknowledgement: librdkafka's 5 ms linger added 5 ms to
#: every export (bench/collect.py); concurrent requests still share batches.
_LINGER_MS = 1


def add_collect_command(commands: Any) -> None:
    collect = commands.add_parser(
        "collect", help="receive usage as OTLP traces (/v1/traces) and CloudEvents "
        "(/v1/events) over HTTP, into the usage topic"
    )
    collect.set_defaults(run=_run_collect)


def _run_collect(args: argparse.Namespace, settings: Settings) -> int:
    from aiohttp import web

    from costflux.core.genai_spans import SpanMapping, parse_label_mapping
    from costflux.embedded import EmbeddedBroker
    from costflux.log_setup import configure_logging
    from costflux.pricing_source import PricingSource
    from costflux.streams.collect import CollectorConfig, UsageCollector
    from costflux.streams.delivery import AsyncDelivery
    from costflux.streams.kafka import ensure_topics, producer_config

    configure_logging(settings)
    prices = PricingSource(settings.pricing_file)
    with contextlib.ExitStack() as stack:
        if settings.embedded_broker:
            broker = stack.enter_context(EmbeddedBroker())
            settings = settings.model_copy(update={"kafka_bootstrap": broker.bootstrap})
            print(f"costflux collect: embedded broker at {broker.bootstrap}", flush=True)
        ensure_topics(settings, {settings.topic_usage: settings.topic_partitions,
                                 settings.topic_deadletter: settings.topic_partitions})
        delivery = AsyncDelivery(producer_config(
            settings, **{"linger.ms": _LINGER_MS,
                         # librdkafka's default, 5 minutes, outlasts every client's timeout.
                         "message.timeout.ms": int(settings.collect_delivery_timeout_s * 1000)}))
        stack.callback(delivery.close)
        config = CollectorConfig(
            usage_topic=settings.topic_usage, deadletter_topic=settings.topic_deadletter,
            span_mapping=SpanMapping(
                labels=parse_label_mapping(settings.collect_labels),
                priced=lambda model, ts_ms: prices.current().model_price_span(
                    model, ts_ms) is not None),
            cloudevent_type=settings.collect_cloudevent_type,
            subject_label=settings.collect_subject_label,
            max_body_bytes=settings.collect_max_body_bytes,
        )
        app = UsageCollector(config, delivery).app()

        async def reload_prices(app: web.Application) -> None:
            async def every_while() -> None:
                while True:
                    await asyncio.sleep(_PRICES_RELOAD_S)
                    prices.reload_if_changed()
            app["reload_prices"] = asyncio.create_task(every_while())

        app.on_startup.append(reload_prices)
        # run_app stops on SIGTERM and SIGINT: in-flight requests finish, then the producer
        # delivers what is queued (ExitStack) before the process exits.
        web.run_app(app, host=settings.http_host, port=settings.http_port,
                    print=lambda line: print(f"costflux collect: {line}", flush=True),
                    access_log=None, shutdown_timeout=10.0)
    return 0
