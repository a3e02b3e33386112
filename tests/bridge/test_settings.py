"""The bridge's settings: read once from the flags and the given environment."""

from __future__ import annotations

import argparse

import pytest

from costflux.cli.bridge import LABELS_ENV, add_bridge_arguments, bridge_settings

URL = "http://vllm:8000/metrics"


def parsed(*flags: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_bridge_arguments(parser)
    return parser.parse_args(["--url", URL, *flags])


def test_the_defaults() -> None:
    settings = bridge_settings(parsed(), {})
    assert (settings.once, settings.print_only, settings.metrics_port) == (False, False, None)
    assert (settings.scrape.url, settings.scrape.interval_s, settings.scrape.timeout_s) == (
        URL, 15.0, 10.0)
    assert dict(settings.scrape.template.labels) == {}


def test_what_to_do_with_the_scrapes_comes_from_the_flags() -> None:
    settings = bridge_settings(parsed("--once", "--print", "--metrics-port", "9400",
                                      "--timeout", "30s", "--interval", "20s"), {})
    assert (settings.once, settings.print_only, settings.metrics_port) == (True, True, 9400)
    assert settings.scrape.timeout_s == 20.0  # at most the interval


def test_labels_come_from_the_given_environment_not_the_process(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv(LABELS_ENV, "team=not-this-one")
    assert dict(bridge_settings(parsed(), {}).scrape.template.labels) == {}
    assert dict(bridge_settings(parsed(), {LABELS_ENV: "team=infra"}).scrape.template.labels) == {
        "team": "infra"}
