"""What the proxying commands (``costflux cache``, ``costflux gateway``) need before they start."""

from __future__ import annotations

from costflux.settings import Settings

__all__ = ["missing_prerequisite"]


def missing_prerequisite(command: str, upstream: str | None, upstream_variable: str,
                         settings: Settings, shared: str) -> str | None:
    """What to tell the user when the upstream URL, Kafka or Redis is not configured (None:
    nothing missing); ``shared`` says what the command keeps in Redis and Kafka.

    >>> missing_prerequisite("costflux cache", "ftp://x", "COSTFLUX_CACHE_UPSTREAM",
    ...                      Settings(), "entries")  # doctest: +ELLIPSIS
    "costflux cache: give the upstream API's base URL: --upstream https://... (or ...)"
    """
    if not upstream or not upstream.startswith(("http://", "https://")):
        return (f"{command}: give the upstream API's base URL: --upstream https://... "
                f"(or {upstream_variable})")
    if settings.kafka_bootstrap is None or settings.redis_url is None:
        return f"{command}: set COSTFLUX_KAFKA_BOOTSTRAP and COSTFLUX_REDIS_URL ({shared})"
    return None
