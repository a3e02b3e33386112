"""``costflux bridge prometheus``: its flags and $COSTFLUX_BRIDGE_LABELS, read once into
``BridgeSettings`` for ``costflux.streams.bridge``, which reads neither."""

from __future__ import annotations

import argparse
import math
import os
import socket
import urllib.parse
from collections.abc import Mapping
from typing import Any, Final, get_args

from pydantic import TypeAdapter, ValidationError

from costflux.core.bridge import EventTemplate, ServerKind
from costflux.core.errors import ConfigError
from costflux.core.windows import duration_ms
from costflux.schemas._types import Identifier, Labels
from costflux.settings import Settings
from costflux.streams.bridge import BridgeOptions, BridgeSettings, run_bridge
from costflux.streams.sidecar import parse_labels

__all__ = ["LABELS_ENV", "add_bridge_arguments", "bridge_settings", "run_bridge_command"]

LABELS_ENV: Final = "COSTFLUX_BRIDGE_LABELS"
_LABELS: TypeAdapter[dict[str, str]] = TypeAdapter(Labels)
_IDENTIFIER: TypeAdapter[str] = TypeAdapter(Identifier)


def add_bridge_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--url", required=True,
                        help="the inference server's metrics URL, e.g. http://vllm:8000/metrics")
    parser.add_argument("--interval", default="15s",
                        help="time between scrapes: 15s, 1m, or seconds (default 15s); event "
                        "times are accurate to one interval")
    parser.add_argument("--timeout", default="10s",
                        help="HTTP timeout per scrape (default 10s, at most the interval)")
    parser.add_argument("--kind", choices=get_args(ServerKind), default=None,
                        help="server kind (default: told from the metric names)")
    parser.add_argument("--model", default=None,
                        help="model pricing key for every event (overrides vLLM's model_name "
                        "label; required for TGI, whose metrics name no model)")
    parser.add_argument("--deployment", default=None, help="deployment of every event")
    parser.add_argument("--label", action="append", default=[], metavar="KEY=VALUE",
                        help=f"label of every event (repeatable; added to ${LABELS_ENV}, "
                        "k=v,k=v)")
    parser.add_argument("--source", default=None,
                        help="server name in event ids, unique per scraped server (default: "
                        "this host's name and the URL's host:port)")
    parser.add_argument("--once", action="store_true",
                        help="scrape twice, one interval apart (baseline + one interval), and "
                        "exit; non-zero if a scrape failed")
    parser.add_argument("--print", action="store_true", dest="print_only",
                        help="write events to stdout as JSON lines instead of Kafka")
    parser.add_argument("--metrics-port", type=int, default=None,
                        help="serve the bridge's own counters (scrape errors, resets) and the "
                        "server's request queue (costflux_inference_requests_waiting, "
                        "_running) on this port's /metrics")


def bridge_settings(args: argparse.Namespace, environ: Mapping[str, str]) -> BridgeSettings:
    """Check the flags (and $COSTFLUX_BRIDGE_LABELS); a ConfigError names the one to fix."""
    url = urllib.parse.urlsplit(args.url)
    if "@" in url.netloc:
        # Never echoed: the URL would otherwise reach logs, scrape errors and event ids.
        raise ConfigError("--url: user:password@ in the URL is not supported (it would show in "
                         "logs and event ids); scrape /metrics without credentials")
    if url.scheme not in ("http", "https") or not url.netloc:
        raise ConfigError(f"--url: {args.url!r} is not an http(s) URL such as "
                         "http://127.0.0.1:8000/metrics")
    if args.kind == "tgi" and args.model is None:
        raise ConfigError("--model: required with --kind tgi (TGI's metrics name no model)")
    interval_s = _seconds(args.interval, "--interval")
    timeout_s = min(_seconds(args.timeout, "--timeout"), interval_s)
    labels = parse_labels(environ.get(LABELS_ENV, ""), LABELS_ENV)
    for item in args.label:
        labels.update(parse_labels(item, "--label"))
    _check(_LABELS, labels, f"--label / {LABELS_ENV}")
    for flag, value in (("--deployment", args.deployment), ("--model", args.model),
                        ("--source", args.source)):
        if value is not None:
            _check(_IDENTIFIER, value, flag)
    source = args.source or f"{socket.gethostname()}/{url.netloc}"
    scrape = BridgeOptions(
        url=args.url,
        interval_s=interval_s,
        timeout_s=timeout_s,
        kind=args.kind,
        model=args.model,
        template=EventTemplate(source, args.deployment, labels),
    )
    return BridgeSettings(scrape, once=args.once, print_only=args.print_only,
                          metrics_port=args.metrics_port)


def run_bridge_command(args: argparse.Namespace, settings: Settings) -> int:
    """The command: its settings from the flags and the environment, then the bridge."""
    return run_bridge(bridge_settings(args, os.environ), settings)


def _seconds(text: str, flag: str) -> float:
    length_ms = duration_ms(text)
    if length_ms is not None:
        seconds = length_ms / 1000
    else:
        try:
            seconds = float(text)
        except ValueError:
            seconds = math.nan
    if not math.isfinite(seconds) or seconds <= 0:
        raise ConfigError(f"{flag}: {text!r} is not a positive duration such as 15s, 1m or 0.5")
    return seconds


def _check(adapter: TypeAdapter[Any], value: object, flag: str) -> None:
    try:
        adapter.validate_python(value)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in error['loc']) or 'value'}: {error['msg']}"
            for error in exc.errors()
        )
        raise ConfigError(f"{flag}: {problems}") from None
