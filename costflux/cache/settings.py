"""The cache proxy's own settings (``COSTFLUX_CACHE_*``, overridden by ``costflux cache`` flags).

Kafka, Redis and the listen address are the shared ``Settings`` (``COSTFLUX_KAFKA_BOOTSTRAP``,
``COSTFLUX_REDIS_URL``, ``COSTFLUX_HTTP_HOST``/``PORT``). Defaults are the seed's deployment:
threshold 0.95, 100,000 entries.
"""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

__all__ = ["CacheSettings"]


class CacheSettings(BaseSettings):
    """What ``costflux cache`` can be told besides the shared settings."""

    model_config = SettingsConfigDict(env_prefix="COSTFLUX_CACHE_", extra="forbid", frozen=True)

    upstream: str | None = Field(None, description="OpenAI-compatible base URL to forward to")
    similarity_threshold: float = Field(0.95, gt=0, le=1, description="least cosine similarity "
                                        "of a stored prompt that may answer a request")
    max_entries: int = Field(100_000, ge=1, description="entries kept; least recently used go")
    ttl_s: int = Field(86_400, ge=1, description="seconds an entry lives after it was stored")
    max_temperature: float = Field(1.0, ge=0, description="requests sampling hotter bypass the "
                                   "cache (no temperature = the API default, 1.0)")
    tenant_label: str = Field("team", description="label whose value isolates entries; empty "
                              "= one cache shared by all tenants")
    labels: str = Field("", description="default event labels, k=v,k=v (headers "
                        "X-Costflux-<Label> override them)")
    upstream_timeout_s: float = Field(600.0, gt=0, description="seconds to wait for upstream")
    redis_timeout_s: float = Field(1.0, gt=0, description="seconds to wait for Redis before a "
                                   "request goes upstream without the cache")
    namespace: str = Field("costflux:cache", min_length=1, description="Redis key prefix")
    candidates: int = Field(8, ge=1, le=256, description="index neighbours checked per lookup")
