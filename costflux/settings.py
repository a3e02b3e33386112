"""Process configuration: one settings object, read at the process edge only.

Values come from environment variables prefixed ``COSTFLUX_`` or from a YAML/JSON config file
named by ``COSTFLUX_CONFIG_FILE`` (environment wins). The core never reads the environment: the
CLI builds a ``Settings`` and hands plain values down.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import Field, SecretStr, ValidationError, field_validator
from pydantic_settings import (
    BaseSettings,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

from costflux.core.errors import ConfigError

__all__ = ["REDIS_TIMEOUT_S", "REMOVED_SETTINGS", "ConfigError", "Settings", "load_settings"]

#: Far above a dedup round trip of 20,000 events (~0.1 s).
REDIS_TIMEOUT_S = 10.0
REDIS_CONNECT_TIMEOUT_S = 5.0
#: The shortest HTTP bearer token accepted (``openssl rand -hex 32`` gives 64).
MIN_HTTP_TOKEN_CHARS = 16


#: Settings an earlier version had, and what took their place. Still set, they are ignored
#: with a notice, so a deployment upgraded with its old environment or config file starts.
REMOVED_SETTINGS = {
    "topic_partials": "there is no partials topic: ingest applies its flushes to Redis itself",
    "combine_stall_s": "there is no combine stage to stall",
    "buckets_per_window": "windows are no longer sharded (see COSTFLUX_WINDOW_MAX_ROWS)",
    "shard_max_bytes": "replaced by COSTFLUX_WINDOW_MAX_ROWS (rows per window)",
    "state_retention_s": "a window takes events until they are late "
                         "(COSTFLUX_ALLOWED_LATENESS_S) and is kept for its serving retention",
}


def _removed_notice(name: str, where: str) -> None:
    sys.stderr.write(f"costflux: {where} {name} is no longer used: "
                     f"{REMOVED_SETTINGS[name.lower().removeprefix('costflux_')]}; remove it\n")


def invalid_settings(exc: ValidationError, env_prefix: str, what: str) -> ConfigError:
    """A command's own settings that failed validation, each problem named by its variable.

    >>> from pydantic import BaseModel
    >>> class Knobs(BaseModel):
    ...     ttl_s: int
    >>> try:
    ...     Knobs(ttl_s="soon")
    ... except ValidationError as exc:
    ...     print(invalid_settings(exc, "COSTFLUX_CACHE_", "cache"))
    invalid cache configuration:
      COSTFLUX_CACHE_TTL_S: Input should be a valid integer, unable to parse string as an integer
    """
    problems = [f"{env_prefix}{'.'.join(map(str, e['loc'])).upper()}: {e['msg']}"
                for e in exc.errors()]
    return ConfigError(f"invalid {what} configuration:\n  " + "\n  ".join(problems))


class _ConfigFileSource(PydanticBaseSettingsSource):
    """Settings from the YAML/JSON file named by COSTFLUX_CONFIG_FILE (lower priority than env)."""

    def __init__(self, settings_cls: type[BaseSettings], path: Path | None) -> None:
        super().__init__(settings_cls)
        self._path = path

    def get_field_value(self, field: Any, field_name: str) -> tuple[Any, str, bool]:
        return None, field_name, False

    def __call__(self) -> dict[str, Any]:
        if self._path is None:
            return {}
        try:
            loaded = yaml.safe_load(self._path.read_text(encoding="utf-8")) or {}
        except (OSError, yaml.YAMLError) as exc:
            raise ConfigError(f"COSTFLUX_CONFIG_FILE={self._path}: cannot read it ({exc})") from exc
        if not isinstance(loaded, dict):
            raise ConfigError(f"COSTFLUX_CONFIG_FILE={self._path}: expected a mapping of settings")
        values = {str(k).lower(): v for k, v in loaded.items()}
        for name in [n for n in values if n in REMOVED_SETTINGS]:
            _removed_notice(name, f"COSTFLUX_CONFIG_FILE={self._path}:")
            del values[name]
        return values


class Settings(BaseSettings):
    """Everything a costflux process can be told. Field docs are the configuration table."""

    model_config = SettingsConfigDict(env_prefix="COSTFLUX_", extra="forbid", frozen=True)

    config_file: Path | None = Field(None, description="YAML/JSON file with any of these settings")

    # --- Kafka ---
    kafka_bootstrap: str | None = Field(
        None, description="host:port[,host:port]; unset = start an embedded Tansu broker"
    )
    kafka_security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    kafka_sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] | None = None
    kafka_sasl_username: str | None = None
    kafka_sasl_password: SecretStr | None = None
    kafka_ssl_cafile: Path | None = None
    kafka_ssl_certfile: Path | None = None
    kafka_ssl_keyfile: Path | None = None
    topic_usage: str = "llm.usage.v1"
    topic_gpu: str = "gpu.samples.v1"
    topic_alerts: str = "cost.alerts.v1"
    topic_deadletter: str = "cost.deadletter.v1"
    topic_partitions: int = Field(8, ge=1, le=1024, description="partitions for created topics")
    topic_replication_factor: int | None = Field(
        None, ge=1, le=32,
        description="replicas of the topics costflux creates, Faust's changelogs included; "
        "unset = the broker's default for its own topics and 1 for changelogs (set 3 on a "
        "production cluster, or a broker loss loses the tables' state)",
    )
    consumer_group: str = "costflux"

    # --- Redis ---
    redis_url: str | None = Field(
        None, description="redis://host:port/db; unset = start an embedded Redis server"
    )
    redis_password: SecretStr | None = None

    # --- pricing ---
    pricing_file: Path | None = Field(
        None, description="pricing.yaml or a ConfigMap manifest holding it; unset = bundled"
    )

    # --- windows and streaming semantics ---
    window_sizes: Annotated[tuple[int, ...], NoDecode] = Field(
        (60, 3600), description="tumbling window sizes in seconds, comma separated"
    )
    allowed_lateness_s: int = Field(
        300, ge=0, description="how far behind its partition's newest event an event may be"
    )
    partition_idle_s: float = Field(
        30.0, gt=0, description="wall seconds without data after which a partition is idle"
    )
    dedup_horizon_s: int = Field(3600, gt=0, description="how long an event_id is remembered")
    max_future_s: int = Field(
        900, ge=0, description="events further than this ahead of the wall clock are rejected"
    )
    ingest_batch_size: int = Field(10000, ge=1, description="messages per consume() call")
    ingest_flush_s: float = Field(
        0.5, gt=0, description="how often ingest applies what it read to the cost store"
    )
    window_max_rows: int = Field(
        32_000, ge=100, description="usage rows one window may hold; new label combinations "
        "beyond it fold into their model's __overflow__ row (money exact, labels lost): "
        "bounds the cost store's memory whatever producers send",
    )

    serving_retention_days: int = Field(
        62, ge=2, description="days the Redis view keeps hourly (and larger) windows"
    )
    serving_finest_retention_days: int = Field(
        35, ge=2, description="days the Redis view keeps the finest windows (the largest "
        "share of its memory; queries and budgets reaching further back read them as empty)"
    )

    principal_retention_days: int = Field(
        35, ge=2, description="days the cost store keeps each API key's and end user's daily "
        "usage (aggregate=api_key and end_user); enforced budgets keep their own counters "
        "for their period"
    )

    # --- GPU cost ---
    gpu_idle_threshold_pct: float = Field(
        5.0, ge=0, le=100, description="a GPU sample under this utilization (%) is idle time"
    )
    gpu_allocation_weight: Literal["tokens", "requests", "gpu_seconds"] = Field(
        "tokens", description="what a model's GPU cost is shared among its users by"
    )
    gpu_share_idle: bool = Field(
        False, description="share idle GPU cost among users (else an __idle__ row)"
    )
    advice_file: Path | None = Field(
        None, description="savings advice assumptions YAML (target_utilization_pct, routes...);"
        " unset = the defaults in the README"
    )

    # --- alerting ---
    rules_file: Path | None = Field(
        None, description="alert rules YAML (rules: [...]); unset = the seeds' eight rules"
    )
    budgets_file: Path | None = Field(
        None, description="budgets YAML (budgets: [...]); unset = no budgets"
    )
    eval_interval_s: int = Field(
        60, gt=0, description="event-time step of rule evaluation (a multiple of the finest "
        "window)"
    )
    eval_backfill_s: int = Field(
        86400, ge=0, description="a detector without state starts at the oldest window, at "
        "most this far behind the watermark (older alerts are not replayed)"
    )
    eval_settle_s: float = Field(
        1.0, ge=0, description="wall seconds a watermark must stand before its time is evaluated"
    )
    slack_webhook_url: SecretStr | None = Field(
        None, description="Slack incoming webhook for `costflux notify` (a secret)"
    )
    slack_webhook_url_file: Path | None = Field(
        None, description="file holding the webhook URL (a mounted Secret); used when the "
        "URL itself is unset"
    )
    notify_min_interval_s: float = Field(
        1.0, ge=0, description="least seconds between two posts to one webhook, across all "
        "notifier instances (Slack allows about 1/s)"
    )
    notify_metrics_port: int | None = Field(
        None, ge=1, le=65535, description="port of `costflux notify`'s /metrics on "
        "COSTFLUX_HTTP_HOST; unset = not served"
    )

    # --- costflux collect ---
    collect_max_body_bytes: int = Field(
        4 * 1024 * 1024, ge=1024, description="largest request body `costflux collect` "
        "reads, after gzip (413 beyond it)"
    )
    collect_delivery_timeout_s: float = Field(
        30.0, gt=0, le=300, description="how long `costflux collect` waits for Kafka to take "
        "a request's records before answering 503 (the client retries)"
    )
    collect_labels: str = Field(
        "costflux.team=team,team=team,costflux.project=project,project=project,"
        "costflux.app=app,service.name=app,k8s.namespace.name=namespace,"
        "k8s.deployment.name=deployment,k8s.cluster.name=cluster,enduser.id=end_user,"
        "user.id=end_user",
        description="span or resource attribute=label pairs, first match per label winning, "
        "span attributes before resource attributes",
    )
    collect_cloudevent_type: str = Field(
        "io.costflux.usage.v1", min_length=1,
        description="the CloudEvent type that carries usage (others answer 400)",
    )
    collect_subject_label: str = Field(
        "team", min_length=1, description="label a CloudEvent's subject fills (unless its "
        "data's labels set it)"
    )

    # --- HTTP / metrics ---
    http_host: str = "127.0.0.1"
    http_port: int = Field(8080, ge=0, le=65535)
    http_token: SecretStr | None = Field(
        None, description="bearer token the worker's HTTP API and /ui require (a secret; "
        "/healthz, /readyz and /metrics stay open unless http_protect_metrics)"
    )
    http_token_file: Path | None = Field(
        None, description="file holding the bearer token (a mounted Secret); used when the "
        "token itself is unset"
    )
    http_protect_metrics: bool = Field(
        False, description="/metrics needs the bearer token too (give Prometheus "
        "authorization: credentials_file)"
    )
    metric_label_cap: int = Field(
        100, ge=1, description="distinct values per metric label before 'other'"
    )
    metric_label_allow: dict[str, list[str]] = Field(
        default_factory=dict,
        description="per label, values always exported (others count towards the cap)",
    )

    # --- process ---
    data_dir: Path | None = Field(None, description="Faust data directory; unset = a temp dir")
    table_store: Literal["rocksdb", "memory"] = Field(
        "rocksdb", description="where Faust keeps table state between changelog writes: "
        "rocksdb (on disk under data_dir, so a restarted worker replays only the changelog "
        "tail) or memory (rebuilt from the whole changelog at every start)"
    )
    log_level: Literal["debug", "info", "warning", "error"] = "info"

    def redis_password_value(self) -> str | None:
        """The Redis password for a client, None when unset (kept a SecretStr elsewhere)."""
        return self.redis_password.get_secret_value() if self.redis_password else None

    def redis_client_options(self, timeout_s: float = REDIS_TIMEOUT_S) -> dict[str, Any]:
        """Keyword arguments for every Redis client of every command: the password, and
        timeouts that make a hung Redis an error (retried and reported), not a silent stall."""
        return {"password": self.redis_password_value(), "socket_timeout": timeout_s,
                "socket_connect_timeout": min(timeout_s, REDIS_CONNECT_TIMEOUT_S)}

    @field_validator("collect_labels", mode="after")
    @classmethod
    def _check_collect_labels(cls, text: str) -> str:
        from costflux.core.genai_spans import parse_label_mapping

        parse_label_mapping(text)  # its ValueError names the bad pair
        return text

    @field_validator("window_sizes", mode="before")
    @classmethod
    def _split_window_sizes(cls, value: Any) -> Any:
        if isinstance(value, str):
            return tuple(int(part) for part in value.split(",") if part.strip())
        if isinstance(value, int):
            return (value,)
        return value

    # A field validator, not a model validator, so the error is located at window_sizes and
    # load_settings can name COSTFLUX_WINDOW_SIZES (a model-level error has no field).
    @field_validator("window_sizes", mode="after")
    @classmethod
    def _check_windows(cls, sizes: tuple[int, ...]) -> tuple[int, ...]:
        if not sizes or any(s <= 0 for s in sizes):
            raise ValueError(
                "window_sizes: give positive seconds, e.g. COSTFLUX_WINDOW_SIZES=60,3600"
            )
        ordered = sorted(sizes)
        for smaller, larger in zip(ordered, ordered[1:], strict=False):
            if larger % smaller:
                raise ValueError(
                    f"window_sizes: {larger}s is not a multiple of {smaller}s; each size must "
                    "divide the next so a query can combine windows exactly"
                )
        if 86400 % ordered[0]:
            raise ValueError("window_sizes: the smallest size must divide a day (86400 s)")
        return sizes

    @property
    def embedded_broker(self) -> bool:
        return self.kafka_bootstrap is None

    @property
    def embedded_redis(self) -> bool:
        return self.redis_url is None

    def slack_webhook(self) -> str:
        """The webhook URL: the setting, else the file's content; errors never show it."""
        found = _secret(self.slack_webhook_url, self.slack_webhook_url_file,
                        "COSTFLUX_SLACK_WEBHOOK_URL")
        if found is not None:
            url, name = found[0], found[1].removeprefix("COSTFLUX_SLACK_WEBHOOK_")
        else:
            raise ConfigError("no Slack webhook: set COSTFLUX_SLACK_WEBHOOK_URL, or COSTFLUX_"
                              "SLACK_WEBHOOK_URL_FILE to a file holding it (a mounted Secret)")
        if not url.startswith(("https://", "http://")):
            raise ConfigError(f"COSTFLUX_SLACK_WEBHOOK_{name}: not an https:// URL (the value "
                              "is not shown: it is a secret)")
        return url

    def http_token_value(self) -> str | None:
        """The HTTP bearer token: the setting, else the file's content, None when neither is
        set; errors never show it."""
        found = _secret(self.http_token, self.http_token_file, "COSTFLUX_HTTP_TOKEN")
        if found is None:
            return None
        token, name = found
        # Short tokens are guessable; a space would not survive an Authorization header.
        if len(token) < MIN_HTTP_TOKEN_CHARS or any(c.isspace() for c in token):
            raise ConfigError(f"{name}: give at least {MIN_HTTP_TOKEN_CHARS} characters and no "
                              "spaces, e.g. `openssl rand -hex 32` (the value is not shown: it "
                              "is a secret)")
        return token

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        path = os.environ.get("COSTFLUX_CONFIG_FILE")
        file_source = _ConfigFileSource(settings_cls, Path(path) if path else None)
        return (init_settings, env_settings, file_source)


def _secret(value: SecretStr | None, path: Path | None, variable: str
            ) -> tuple[str, str] | None:
    """(the secret, the variable it came from): ``variable`` itself, else the file that
    ``variable``_FILE names; None when neither is set. Errors never show it."""
    if value is not None:
        return value.get_secret_value().strip(), variable
    if path is None:
        return None
    try:
        return path.read_text(encoding="utf-8").strip(), f"{variable}_FILE"  # a Secret ends in \n
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{variable}_FILE={path}: cannot read it ({type(exc).__name__})") \
            from None


def load_settings(**overrides: Any) -> Settings:
    """Build Settings from env/config file, turning validation errors into a ConfigError."""
    for name in REMOVED_SETTINGS:
        if f"COSTFLUX_{name.upper()}" in os.environ:
            _removed_notice(f"COSTFLUX_{name.upper()}", "the environment variable")
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            field = ".".join(str(p) for p in err["loc"]) or "settings"
            env_name = "COSTFLUX_" + field.split(".")[0].upper()
            # A mapping input is the whole raw settings dict (model-level error): echoing it
            # would print every secret in it, so only scalar, non-secret inputs are shown.
            shown = err.get("input")
            # URLs may carry credentials (redis://:password@host).
            secret = ("password" in field or "token" in field or field.endswith("_url")
                      or isinstance(shown, dict))
            problems.append(f"{env_name}: {err['msg']}" if secret
                            else f"{env_name}: {err['msg']} (got {shown!r})")
        raise ConfigError("invalid configuration:\n  " + "\n  ".join(problems)) from None
