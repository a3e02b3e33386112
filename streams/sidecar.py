"""``costflux sidecar nvml``: sample this node's GPUs every interval and publish the samples."""

from __future__ import annotations

import argparse
import logging
import os
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any, get_args

from schemas.gpu import GpuSample, PricingTier
from streams.nvml import (
    EXIT_NO_NVML,
    NvmlSampler,
    NvmlUnavailable,
    SidecarOptions,
    open_nvml,
)
from streams.nvml_recorded import RecordedNvml
from streams.producer import ProducerError, UsageProducer

__all__ = ["add_sidecar_arguments", "parse_labels", "publish_rounds", "sidecar_options"]

log = logging.getLogger(__name__)


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


def parse_labels(text: str, flag: str = "--labels") -> dict[str, str]:
    """``k=v,k=v`` -> dict; a malformed pair names the flag and the expected shape."""
    labels: dict[str, str] = {}
    for pair in filter(None, (p.strip() for p in text.split(","))):
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"{flag}: {pair!r} is not key=value")
        labels[key.strip()] = value.strip()
    return labels


def read_downward_labels(path: Path) -> dict[str, str]:
    """The downward API's labels file: one ``key="value"`` per line."""
    labels = {}
    for line in path.read_text().splitlines():
        key, sep, value = line.partition("=")
        if sep:
            labels[key.strip()] = value.strip().strip('"')
    return labels


def sidecar_options(args: argparse.Namespace) -> SidecarOptions:
    labels = read_downward_labels(args.labels_file) if args.labels_file else {}
    labels.update(parse_labels(args.labels))
    overrides = parse_labels(",".join(args.gpu_type), "--gpu-type")
    if args.interval <= 0:
        raise ValueError("--interval: must be more than 0 seconds")
    return SidecarOptions(
        node=args.node or os.environ.get("NODE_NAME") or socket.gethostname(),
        interval_s=args.interval,
        pricing_tier=args.tier,
        labels=labels,
        gpu_type_overrides=overrides,
    )


def publish_rounds(
    sampler: NvmlSampler,
    rounds: Iterable[int],
    send: Callable[[GpuSample], None],
    after_round: Callable[[], None] = lambda: None,
) -> tuple[int, int]:
    """Sample once per round time in ``rounds``; return (samples sent, GPUs skipped)."""
    sent = skipped = 0
    for now_ms in rounds:
        samples, skips = sampler.sample(now_ms)
        for skip in skips:
            log.warning("GPU %d not sampled: %s", skip.gpu_index, skip.reason)
        for sample in samples:
            send(sample)
        after_round()
        sent += len(samples)
        skipped += len(skips)
    return sent, skipped


def live_rounds(interval_s: float, stop: threading.Event, once: bool) -> Iterable[int]:
    """Wall-clock round times, one per interval, aligned to the interval's grid."""
    while not stop.is_set():
        yield time.time_ns() // 1_000_000
        if once:
            return
        stop.wait(interval_s - time.time() % interval_s)


def _send_to(producer: UsageProducer) -> Callable[[GpuSample], None]:
    def send(sample: GpuSample) -> None:
        # Keyed by GPU: one GPU's samples stay in order on one partition.
        producer.send_raw(sample.model_dump_json().encode(), key=sample.gpu_uuid.encode())

    return send


def _flush_logging_failures(producer: UsageProducer) -> Callable[[], None]:
    def flush() -> None:
        # A broker outage loses this round's samples, not the sidecar: log and go on.
        try:
            producer.flush(10)
        except ProducerError as exc:
            log.error("GPU samples not delivered: %s", exc)

    return flush


def run_sidecar(
    args: argparse.Namespace, producer_config: Mapping[str, Any] | None, topic: str
) -> int:
    """The command: sample live or recorded NVML, publish to ``topic`` (print without config)."""
    try:
        options = sidecar_options(args)
    except (ValueError, OSError) as exc:
        print(f"costflux sidecar: {exc}", file=sys.stderr)
        return 2
    stop = threading.Event()
    if args.recorded is not None:
        recorded = RecordedNvml.from_file(args.recorded)
        api: Any = recorded
        rounds: Iterable[int] = recorded.rounds()
    else:
        try:
            api = open_nvml()
        except NvmlUnavailable as exc:
            print(f"costflux sidecar: {exc}", file=sys.stderr)
            return EXIT_NO_NVML
        rounds = live_rounds(options.interval_s, stop, args.once)
    sampler = NvmlSampler(api, options)
    if producer_config is None:
        def send(sample: GpuSample) -> None:
            print(sample.model_dump_json(), flush=True)

        sent, skipped = publish_rounds(sampler, rounds, send)
    else:
        producer = UsageProducer(producer_config, topic, events_per_message=1)
        flush = _flush_logging_failures(producer)
        try:
            sent, skipped = publish_rounds(sampler, rounds, _send_to(producer), flush)
        finally:
            flush()
    log.info("sidecar done: %d samples, %d GPU readings skipped", sent, skipped)
    return 0
