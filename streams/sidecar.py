"""``costflux sidecar nvml``: sample this node's GPUs every interval and publish the samples."""

from __future__ import annotations

import logging
import sys
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from costflux.core.errors import ConfigError
from costflux.schemas.gpu import GpuSample
from costflux.streams.nvml import (
    EXIT_NO_NVML,
    NvmlSampler,
    NvmlUnavailable,
    SidecarOptions,
    open_nvml,
)
from costflux.streams.nvml_recorded import RecordedNvml
from costflux.streams.producer import ProducerError, UsageProducer

__all__ = ["SidecarSettings", "parse_labels", "publish_rounds", "run_sidecar"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SidecarSettings:
    """What ``costflux sidecar nvml`` was told, read from its flags and environment at the
    command line (``costflux.cli.sidecar``): what to stamp on samples, and where they come
    from."""

    sampling: SidecarOptions
    recorded: Path | None = None  # replay these recorded NVML readings, not the driver
    once: bool = False  # one sample round, then exit
    print_only: bool = False  # samples to stdout as JSON lines, not Kafka


def parse_labels(text: str, flag: str = "--labels") -> dict[str, str]:
    """``k=v,k=v`` -> dict; a malformed pair is a ConfigError naming the flag and the shape."""
    labels: dict[str, str] = {}
    for pair in filter(None, (p.strip() for p in text.split(","))):
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"{flag}: {pair!r} is not key=value")
        labels[key.strip()] = value.strip()
    return labels


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
    sidecar: SidecarSettings, producer_config: Mapping[str, Any] | None, topic: str
) -> int:
    """Sample live or recorded NVML, publish to ``topic`` (print without a producer config)."""
    options = sidecar.sampling
    stop = threading.Event()
    if sidecar.recorded is not None:
        recorded = RecordedNvml.from_file(sidecar.recorded)
        api: Any = recorded
        rounds: Iterable[int] = recorded.rounds()
    else:
        try:
            api = open_nvml()
        except NvmlUnavailable as exc:
            # Its own documented code (3), not a CostfluxError's: see deploy/kubernetes.
            print(f"costflux sidecar nvml: {exc}", file=sys.stderr)
            return EXIT_NO_NVML
        rounds = live_rounds(options.interval_s, stop, sidecar.once)
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
