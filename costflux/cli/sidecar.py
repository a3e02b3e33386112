"""``costflux sidecar nvml``: its flags, $NODE_NAME and the downward API labels file, read
once into ``SidecarSettings`` for ``costflux.streams.sidecar``, which reads none of them."""

from __future__ import annotations

import argparse
import os
import socket
from collections.abc import Mapping
from pathlib import Path
from typing import get_args

from costflux.core.errors import ConfigError, CostfluxError
from costflux.log_setup import configure_logging
from costflux.schemas.gpu import PricingTier
from costflux.settings import Settings
from costflux.streams.kafka import KafkaSetupError, ensure_topics, producer_config
from costflux.streams.nvml import SidecarOptions
from costflux.streams.sidecar import SidecarSettings, parse_labels, run_sidecar

__all__ = ["add_sidecar_arguments", "read_downward_labels", "run_sidecar_command",
           "sidecar_settings"]


def add_sidecar_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--interval", type=float, default=10.0,
                        help="seconds between samples (default 10)")
    parser.add_argument("--node", default=None,
                        help="node name (default: $NODE_NAME from the downward API, or hostname)")
    parser.add_argument("--tier", default="on_demand", choices=get_args(PricingTier),
                        help="pricing tier of this node's GPUs (default on_demand)")
    parser.add_argument("--labels", default="",
                        help="labels for every sample: k=v,k=v (team=search,model=llama-2-70b)")
    parser.add_argument("--labels-file", type=Path, default=None,
                        help="Kubernetes downward API labels file (lines of key=\"value\")")
    parser.add_argument("--gpu-type", action="append", default=[], metavar="NVML_NAME=KEY",
                        help="pricing key for an NVML device name (repeatable)")
    parser.add_argument("--recorded", type=Path, default=None,
                        help="replay recorded NVML readings (record.py JSON lines) instead of "
                        "the live driver")
    parser.add_argument("--once", action="store_true", help="take one sample round and exit")
    parser.add_argument("--print", action="store_true", dest="print_only",
                        help="write samples to stdout as JSON lines instead of Kafka")


def read_downward_labels(path: Path) -> dict[str, str]:
    """The downward API's labels file: one ``key="value"`` per line."""
    labels = {}
    for line in path.read_text().splitlines():
        key, sep, value = line.partition("=")
        if sep:
            labels[key.strip()] = value.strip().strip('"')
    return labels


def sidecar_settings(args: argparse.Namespace, environ: Mapping[str, str]) -> SidecarSettings:
    """Check the flags and read the labels file; a ConfigError names the one to fix."""
    try:
        labels = read_downward_labels(args.labels_file) if args.labels_file else {}
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else exc
        raise ConfigError(f"--labels-file {args.labels_file}: cannot read it ({reason})") from None
    labels.update(parse_labels(args.labels))
    overrides = parse_labels(",".join(args.gpu_type), "--gpu-type")
    if args.interval <= 0:
        raise ConfigError("--interval: must be more than 0 seconds")
    sampling = SidecarOptions(
        node=args.node or environ.get("NODE_NAME") or socket.gethostname(),
        interval_s=args.interval,
        pricing_tier=args.tier,
        labels=labels,
        gpu_type_overrides=overrides,
    )
    return SidecarSettings(sampling, recorded=args.recorded, once=args.once,
                           print_only=args.print_only)


def run_sidecar_command(args: argparse.Namespace, settings: Settings) -> int:
    """The command: its settings, then the sidecar publishing to the GPU topic (or printing)."""
    configure_logging(settings)
    sidecar = sidecar_settings(args, os.environ)
    if settings.kafka_bootstrap is None and not sidecar.print_only:
        raise ConfigError("set COSTFLUX_KAFKA_BOOTSTRAP to the broker to publish to, or pass "
                          "--print")
    if sidecar.print_only:
        return run_sidecar(sidecar, None, settings.topic_gpu)  # no producer: print
    try:
        ensure_topics(settings, {settings.topic_gpu: settings.topic_partitions})
    except KafkaSetupError as exc:  # e.g. the broker is unreachable: a message, not a trace
        # Exit 1, the sidecar's code for this before the error kinds (69 would be new).
        raise CostfluxError(str(exc)) from exc
    return run_sidecar(sidecar, producer_config(settings), settings.topic_gpu)
