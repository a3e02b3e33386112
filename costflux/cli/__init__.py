"""The ``costflux`` command: worker, demo, replay, sidecar, notify, pricing, report, advise,
cache, schemas."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from costflux.core.errors import ConfigError, CostfluxError
from costflux.log_setup import configure_logging
from costflux.settings import Settings, load_settings

__all__ = ["command_name", "main"]


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the console script: a costflux error is one line, ``costflux
    <command>: <message>``, and its exit code.

    The codes are in docs/commands-and-api.md (costflux.core.errors): 2 a setting or
    configuration file to fix, 65 unreadable input, 69 a service that did not answer.
    Commands raise them rather than print their own failures; the few answered with codes
    of their own (reconcile, replay, sidecar nvml's 3) are listed there.
    """
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        settings = load_settings()
        return int(args.run(args, settings))
    except CostfluxError as exc:  # its message names the fix and never holds a secret
        print(f"costflux {command_name(args)}: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        return 130


def command_name(args: argparse.Namespace) -> str:
    """The command the user gave, as the parser stored it: ``cache``, ``gateway key-id``.

    >>> command_name(argparse.Namespace(command="pricing", subcommand="check"))
    'pricing check'
    >>> command_name(argparse.Namespace(command="gateway", subcommand=None))
    'gateway'
    """
    return " ".join(filter(None, (args.command, getattr(args, "subcommand", None))))


def _parser() -> argparse.ArgumentParser:
    from costflux.cli.advise import add_advise_command
    from costflux.cli.bridge import add_bridge_arguments
    from costflux.cli.cache import add_cache_command
    from costflux.cli.collect import add_collect_command
    from costflux.cli.export import add_export_command
    from costflux.cli.gateway import add_gateway_command
    from costflux.cli.pricing import add_pricing_commands
    from costflux.cli.reconcile import add_reconcile_command
    from costflux.cli.replay import add_replay_arguments
    from costflux.cli.report import add_report_command
    from costflux.cli.sidecar import add_sidecar_arguments

    parser = argparse.ArgumentParser(
        prog="costflux", description="Real-time cost monitoring and FinOps for LLM inference."
    )
    # The dests name the command in error lines (command_name); every sub-command parser
    # stores its own under ``subcommand``.
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    worker = commands.add_parser("worker", help="run a stream worker (HTTP: /metrics, API)")
    worker.set_defaults(run=_run_worker)

    demo = commands.add_parser(
        "demo", help="embedded broker + Redis + worker, replaying the bundled Azure trace"
    )
    demo.add_argument("--duration", type=float, default=None,
                      help="stop after this many seconds (default: until Ctrl-C)")
    demo.add_argument("--speed", type=float, default=60.0,
                      help="replay speed factor (0 = as fast as possible; default 60)")
    demo.add_argument("--limit", type=int, default=None, help="replay only this many rows")
    demo.add_argument("--no-table", action="store_true", help="print a summary line, no table")
    demo.set_defaults(run=_run_demo)

    replay = commands.add_parser("replay", help="replay a CSV/JSONL trace into the usage topic")
    add_replay_arguments(replay)
    replay.set_defaults(run=_run_replay)

    sidecar = commands.add_parser("sidecar", help="node sidecars that publish GPU samples")
    sidecars = sidecar.add_subparsers(dest="subcommand", required=True, metavar="KIND")
    nvml = sidecars.add_parser(
        "nvml", help="sample this node's NVIDIA GPUs through NVML into the GPU topic"
    )
    add_sidecar_arguments(nvml)
    nvml.set_defaults(run=_run_sidecar_nvml)

    bridge = commands.add_parser("bridge", help="turn inference servers' counters into usage "
                                 "events")
    bridges = bridge.add_subparsers(dest="subcommand", required=True,
                                     metavar="SOURCE")
    prometheus = bridges.add_parser(
        "prometheus", help="scrape a vLLM or TGI /metrics page into the usage topic"
    )
    add_bridge_arguments(prometheus)
    prometheus.set_defaults(run=_run_bridge_prometheus)

    notify = commands.add_parser(
        "notify", help="post alert events to a Slack incoming webhook (until SIGTERM/Ctrl-C)"
    )
    notify.set_defaults(run=_run_notify)

    add_pricing_commands(commands)
    add_report_command(commands)
    add_advise_command(commands)
    add_cache_command(commands)
    add_gateway_command(commands)
    add_collect_command(commands)
    add_export_command(commands)
    add_reconcile_command(commands)

    schemas = commands.add_parser("schemas", help="rewrite the JSON Schema files (the wire "
                                  "contracts and the configuration files)")
    schemas.set_defaults(run=_run_schemas)
    return parser


def _run_worker(args: argparse.Namespace, settings: Settings) -> int:
    import faust

    from costflux.agents.app import build_worker
    from costflux.embedded import embedded_stack

    configure_logging(settings)
    with embedded_stack(settings) as live:
        worker = build_worker(live)
        # Note: Faust at warning level or above runs its spinner and sets the root logger to
        # DEBUG (measured ~15 % slower with a table); run workers at info, the default.
        runner = faust.Worker(worker.app, loglevel=settings.log_level, quiet=True)
        try:
            runner.execute_from_commandline()
        except SystemExit as stop:
            return int(stop.code or 0)
    return 0


def _run_demo(args: argparse.Namespace, settings: Settings) -> int:
    from costflux.cli.demo import run_demo

    return run_demo(settings, duration=args.duration, speed=args.speed, limit=args.limit,
                    show_table=not args.no_table)


def _run_replay(args: argparse.Namespace, settings: Settings) -> int:
    from costflux.cli.replay import run_replay
    from costflux.streams.kafka import ensure_topics, producer_config

    if settings.kafka_bootstrap is None:
        raise ConfigError("set COSTFLUX_KAFKA_BOOTSTRAP to the broker to replay into")
    ensure_topics(settings, {settings.topic_usage: settings.topic_partitions})
    return run_replay(args, producer_config(settings), settings.topic_usage)


def _run_sidecar_nvml(args: argparse.Namespace, settings: Settings) -> int:
    from costflux.cli.sidecar import run_sidecar_command

    return run_sidecar_command(args, settings)


def _run_bridge_prometheus(args: argparse.Namespace, settings: Settings) -> int:
    from costflux.cli.bridge import run_bridge_command

    configure_logging(settings)
    return run_bridge_command(args, settings)


def _run_notify(args: argparse.Namespace, settings: Settings) -> int:
    import signal

    import redis
    from prometheus_client import CollectorRegistry, start_http_server

    from costflux.agents.notify import Notifier, NotifyOptions
    from costflux.agents.notify_metrics import NotifyCollector
    from costflux.streams.kafka import (
        KafkaSetupError,
        consumer_config,
        ensure_topics,
        producer_config,
    )

    url = settings.slack_webhook()  # first: a missing secret is a config error (exit 2)
    configure_logging(settings)
    if settings.kafka_bootstrap is None or settings.redis_url is None:
        # No embedded servers here: instances must share the broker and the Redis claims.
        raise ConfigError("set COSTFLUX_KAFKA_BOOTSTRAP and COSTFLUX_REDIS_URL (shared by "
                          "every notifier instance)")
    try:
        ensure_topics(settings, {settings.topic_alerts: settings.topic_partitions,
                                 settings.topic_deadletter: settings.topic_partitions})
    except KafkaSetupError as exc:
        # Exit 1, the notifier's code for this before the error kinds (69 would be new).
        raise CostfluxError(str(exc)) from exc
    client = redis.Redis.from_url(settings.redis_url, **settings.redis_client_options())
    options = NotifyOptions(
        topic=settings.topic_alerts, deadletter_topic=settings.topic_deadletter,
        namespace=settings.consumer_group, webhook_url=url,
        min_interval_s=settings.notify_min_interval_s,
    )
    notifier = Notifier(options, consumer_config(settings, f"{settings.consumer_group}-notify"),
                        producer_config(settings), client)

    def stop(signum: int, _frame: object) -> None:
        notifier.stop()

    log = logging.getLogger("costflux.notify")
    metrics_server = None
    if settings.notify_metrics_port is not None:
        registry = CollectorRegistry()
        registry.register(NotifyCollector(notifier))
        metrics_server, _ = start_http_server(settings.notify_metrics_port,
                                              addr=settings.http_host, registry=registry)
        log.info("notify metrics on http://%s:%d/metrics", settings.http_host,
                 settings.notify_metrics_port)
    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        notifier.run()
    except Exception:  # Redis or Kafka gone: exit non-zero so the orchestrator restarts it
        log.exception("notify stopped on an error")
        return 1
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        client.close()
        if metrics_server is not None:
            metrics_server.shutdown()
            metrics_server.server_close()
    stats = notifier.stats
    log.info("notify stopped: %d delivered, %d duplicates skipped, %d dead-lettered",
             stats.delivered, stats.duplicates, stats.deadlettered)
    return 0


def _run_schemas(args: argparse.Namespace, settings: Settings) -> int:
    from costflux.cli.config_schemas import CONFIG_FILES
    from costflux.schemas.generate import write_all

    for path in [*write_all(), *write_all(CONFIG_FILES)]:
        print(path)
    return 0
