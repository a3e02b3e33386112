"""What the proxying commands (``costflux cache``, ``costflux gateway``) need before they start."""

from __future__ import annotations

from costflux.core.errors import ConfigError
from costflux.settings import Settings

__all__ = ["require_prerequisites"]


def require_prerequisites(upstream: str | None, upstream_variable: str, settings: Settings,
                          shared: str) -> None:
    """Raise a ConfigError saying what to set when the upstream URL, Kafka or Redis is not
    configured; ``shared`` says what the command keeps in Redis and Kafka.

    >>> require_prerequisites("ftp://x", "COSTFLUX_CACHE_UPSTREAM", Settings(),
    ...                       "entries")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    costflux.core.errors.ConfigError: give the upstream API's base URL: --upstream ... (or ...)
    """
    if not upstream or not upstream.startswith(("http://", "https://")):
        raise ConfigError("give the upstream API's base URL: --upstream https://... "
                          f"(or {upstream_variable})")
    if settings.kafka_bootstrap is None or settings.redis_url is None:
        raise ConfigError(f"set COSTFLUX_KAFKA_BOOTSTRAP and COSTFLUX_REDIS_URL ({shared})")
