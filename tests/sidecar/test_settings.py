"""The sidecar's settings: read once from the flags and the given environment, not os.environ."""

from __future__ import annotations

import argparse
import socket
from pathlib import Path

import pytest

from costflux.cli.sidecar import add_sidecar_arguments, sidecar_settings
from costflux.core.errors import ConfigError
from costflux.streams.sidecar import SidecarSettings


def parsed(*flags: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_sidecar_arguments(parser)
    return parser.parse_args(list(flags))


def test_the_defaults_and_the_node_from_the_given_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("NODE_NAME", "not-this-one")  # the process's own: never read
    settings = sidecar_settings(parsed(), {"NODE_NAME": "gpu-node-7"})
    assert settings == SidecarSettings(settings.sampling)
    sampling = settings.sampling
    assert (sampling.node, sampling.interval_s, sampling.pricing_tier) == (
        "gpu-node-7", 10.0, "on_demand")
    assert sidecar_settings(parsed(), {}).sampling.node == socket.gethostname()
    assert sidecar_settings(parsed("--node", "n2"), {"NODE_NAME": "n1"}).sampling.node == "n2"


def test_flags_and_the_labels_file_are_read_into_the_settings(tmp_path: Path) -> None:
    labels_file = tmp_path / "labels"
    labels_file.write_text('team="search"\napp="chat"\n')
    recorded = tmp_path / "readings.jsonl"
    settings = sidecar_settings(parsed(
        "--interval", "5", "--tier", "spot", "--labels", "team=infra,model=m",
        "--labels-file", str(labels_file), "--gpu-type", "NVIDIA H100 80GB HBM3=h100",
        "--recorded", str(recorded), "--once", "--print"), {})
    assert (settings.recorded, settings.once, settings.print_only) == (recorded, True, True)
    sampling = settings.sampling
    assert (sampling.interval_s, sampling.pricing_tier) == (5.0, "spot")
    assert dict(sampling.labels) == {"team": "infra", "app": "chat", "model": "m"}
    assert dict(sampling.gpu_type_overrides) == {"NVIDIA H100 80GB HBM3": "h100"}


@pytest.mark.parametrize(("flags", "message"), [
    (["--interval", "0"], "--interval"),
    (["--labels", "team"], "--labels: 'team' is not key=value"),
    (["--gpu-type", "H100"], "--gpu-type"),
])
def test_bad_flags_are_errors_naming_the_flag(flags: list[str], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        sidecar_settings(parsed(*flags), {})


def test_a_missing_labels_file_is_a_config_error_naming_the_flag(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="--labels-file .*absent: cannot read it"):
        sidecar_settings(parsed("--labels-file", str(tmp_path / "absent")), {})
