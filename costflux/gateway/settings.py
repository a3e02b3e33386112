"""The gateway's own settings (``COSTFLUX_GATEWAY_*``, overridden by ``costflux gateway`` flags).

Kafka, Redis, the listen address, the budgets and prices files are the shared ``Settings``
(``COSTFLUX_KAFKA_BOOTSTRAP``, ``COSTFLUX_REDIS_URL``, ``COSTFLUX_HTTP_HOST``/``PORT``,
``COSTFLUX_BUDGETS_FILE``, ``COSTFLUX_PRICING_FILE``): the gateway must read the same budgets
and the same Redis namespace (``COSTFLUX_CONSUMER_GROUP``) as the workers that count them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import AliasChoices, Field
from pydantic_settings import BaseSettings, SettingsConfigDict

__all__ = ["GatewaySettings"]


class GatewaySettings(BaseSettings):
    """What ``costflux gateway`` can be told besides the shared settings."""

    model_config = SettingsConfigDict(env_prefix="COSTFLUX_GATEWAY_", extra="forbid",
                                      frozen=True)

    upstream: str | None = Field(None, description="OpenAI- or Anthropic-compatible base URL")
    keys_file: Path | None = Field(
        None, validation_alias=AliasChoices("keys_file", "COSTFLUX_KEYS_FILE"),
        description="keys file: alias, team, project and labels per key id")
    fail_mode: Literal["open", "closed"] = Field(
        "open", description="when Redis does not answer: let requests through unchecked "
        "(open) or answer 503 (closed)")
    reservation: bool = Field(False, description="hold each request's maximum cost at "
                              "admission so that a hard budget is never passed")
    default_max_output_tokens: int = Field(
        4096, ge=1, description="reservation mode: the output limit set on requests that "
        "set none")
    budget_max_age_s: float = Field(1.0, gt=0, le=1.0, description="seconds a budget's "
                                    "spend may be cached per scope (at most 1)")
    hold_s: float = Field(600.0, gt=0, description="reservation mode: seconds a hold lives "
                          "if its request never settles (a crashed replica)")
    redis_timeout_s: float = Field(0.5, gt=0, description="seconds to wait for Redis before "
                                   "the fail mode applies")
    upstream_timeout_s: float = Field(600.0, gt=0, description="seconds to wait for upstream")
    labels: str = Field("", description="default event labels, k=v,k=v (X-Costflux-<Label> "
                        "headers override them; a key's keys-file labels override both)")
    semantic_cache: bool = Field(False, description="answer similar chat prompts from the "
                                 "semantic cache (COSTFLUX_CACHE_* settings; costflux[cache])")
    reload_interval_s: float = Field(5.0, gt=0, description="seconds between checks of the "
                                     "budgets, prices and keys files for changes")
