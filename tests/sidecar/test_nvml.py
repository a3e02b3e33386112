"""The NVML sidecar on real H100 readings, through the same sampler as live NVML."""

from __future__ import annotations

import copy
import json
import logging
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from costflux.schemas.gpu import GpuSample
from costflux.streams.nvml import EXIT_NO_NVML, NvmlSampler, SidecarOptions, pod_uid_of
from costflux.streams.nvml_recorded import RecordedNvml
from costflux.streams.sidecar import publish_rounds
from tests.paths import NVML_H100, REPO

UUID = "GPU-29d8e695-e43e-54b9-9464-377db75d29a5"


def readings() -> list[dict[str, Any]]:
    return [json.loads(line) for line in NVML_H100.read_text().splitlines()]


def sample_all(lines: list[dict[str, Any]], **options: Any) -> tuple[list[GpuSample], int]:
    api = RecordedNvml(lines)
    sampler = NvmlSampler(api, SidecarOptions(node="gpu-node-1", interval_s=0.5, **options))
    sent: list[GpuSample] = []
    _, skipped = publish_rounds(sampler, api.rounds(), sent.append)
    return sent, skipped


def test_recorded_h100_phases_become_samples_with_real_values() -> None:
    lines = readings()
    samples, skipped = sample_all(lines, labels={"team": "search", "model": "llama-2-70b"})
    recorded = [line for line in lines if "meta" not in line]
    assert skipped == 0 and len(samples) == len(recorded) == 60
    for sample, line in zip(samples, recorded, strict=True):
        assert sample.gpu_uuid == UUID and sample.gpu_model == "NVIDIA H100 80GB HBM3"
        assert sample.gpu_type == "nvidia-h100-80gb"
        assert sample.utilization_pct == line["utilization"]["gpu"]
        assert sample.memory_used_bytes == line["memory"]["used"]
        assert sample.memory_total_bytes == 85520809984
        assert sample.power_watts == pytest.approx(line["power_mw"] / 1000)
        assert sample.ts_ms == round(line["ts"] * 1000)
        assert sample.labels["team"] == "search"
    by_phase: dict[str, list[GpuSample]] = {}
    for sample, line in zip(samples, recorded, strict=True):
        by_phase.setdefault(line["phase"], []).append(sample)
    assert max(s.utilization_pct for s in by_phase["idle"]) == 0
    assert max(s.utilization_pct for s in by_phase["load"]) >= 99
    # Allocated but idle: the process still holds memory, the GPU computes nothing.
    # NVML averages utilization over its last period, so the first reading after the load
    # still says 99 %: the sidecar reports it as read.
    after = by_phase["idle-after"]
    assert after[0].utilization_pct == 99
    assert all(s.utilization_pct == 0 and s.labels.get("pids") == "400" for s in after[1:])
    assert all(s.memory_used_bytes > by_phase["idle"][0].memory_used_bytes for s in after)


def test_intervals_are_the_time_between_samples_of_one_gpu() -> None:
    samples, _ = sample_all(readings())
    assert samples[0].interval_s == 0.5  # the first covers the configured interval
    for before, after in zip(samples, samples[1:], strict=False):
        assert round(after.interval_s * 1000) == after.ts_ms - before.ts_ms


def test_gpu_that_errors_mid_run_is_skipped_with_a_reason_never_zeroed(
    caplog: pytest.LogCaptureFixture,
) -> None:
    lines = readings()
    broken = copy.deepcopy(lines)
    lost = {"nvml_error": "GPU is lost", "code": 15}
    for line in broken[30:33]:  # three rounds of the load phase
        line["utilization"] = lost
    caplog.set_level(logging.WARNING)
    samples, skipped = sample_all(broken)
    assert skipped == 3 and len(samples) == 57
    skipped_times = {round(line["ts"] * 1000) for line in broken[30:33]}
    assert not skipped_times & {s.ts_ms for s in samples}
    assert "nvmlDeviceGetUtilizationRates: GPU is lost" in caplog.text
    # The sample after the gap covers the gap: GPU time is not lost, only the reading.
    resumed = next(s for s in samples if s.ts_ms > max(skipped_times))
    previous = max(s.ts_ms for s in samples if s.ts_ms < min(skipped_times))
    assert round(resumed.interval_s * 1000) == resumed.ts_ms - previous


def test_optional_readings_that_fail_are_left_out_not_zero() -> None:
    lines = readings()
    for line in lines[1:]:
        line["power_mw"] = {"nvml_error": "Not Supported", "code": 3}
    samples, skipped = sample_all(lines)
    assert skipped == 0 and all(s.power_watts is None for s in samples)


def test_host_without_nvml_exits_with_a_clear_error() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "costflux", "sidecar", "nvml", "--once", "--print"],
        capture_output=True, text=True, cwd=REPO, timeout=60, check=False,
    )
    if result.returncode == 0:
        pytest.skip("this host has a working NVIDIA driver")
    assert result.returncode == EXIT_NO_NVML
    assert "NVML cannot start" in result.stderr and "NVIDIA driver" in result.stderr
    assert result.stdout == ""  # nothing published as if measured


def test_cli_replays_recorded_readings_as_json_lines() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "costflux", "sidecar", "nvml", "--recorded", str(NVML_H100),
         "--print", "--node", "n1", "--labels", "team=search", "--interval", "0.5"],
        capture_output=True, text=True, cwd=REPO, timeout=60, check=True,
    )
    samples = [GpuSample.model_validate_json(line) for line in result.stdout.splitlines()]
    assert len(samples) == 60 and {s.node for s in samples} == {"n1"}


def test_unreachable_broker_is_a_message_and_exit_1_not_a_traceback() -> None:
    from costflux.embedded import free_port

    env = {k: v for k, v in os.environ.items() if not k.startswith("COSTFLUX_")}
    env["COSTFLUX_KAFKA_BOOTSTRAP"] = f"127.0.0.1:{free_port()}"  # nothing listens there
    result = subprocess.run(
        [sys.executable, "-m", "costflux", "sidecar", "nvml", "--recorded", str(NVML_H100),
         "--once"],
        capture_output=True, text=True, cwd=REPO, env=env, timeout=90, check=False,
    )
    assert result.returncode == 1
    assert "costflux sidecar nvml: cannot reach Kafka" in result.stderr
    assert "Traceback" not in result.stderr


def test_pod_uid_from_cgroup_paths(tmp_path: Path) -> None:
    uid = "0b6c3b2e-6a1f-4c8e-9a41-3f2f9d6c1a77"
    systemd = (
        "0::/kubepods.slice/kubepods-burstable.slice/"
        f"kubepods-burstable-pod{uid.replace('-', '_')}.slice/cri-containerd-abc.scope\n"
    )
    cgroupfs = f"12:memory:/kubepods/besteffort/pod{uid}/0123abcd\n"
    for pid, text in ((1, systemd), (2, cgroupfs), (3, "0::/user.slice\n")):
        (tmp_path / str(pid)).mkdir()
        (tmp_path / str(pid) / "cgroup").write_text(text)
    assert pod_uid_of(1, tmp_path) == uid
    assert pod_uid_of(2, tmp_path) == uid
    assert pod_uid_of(3, tmp_path) is None
    assert pod_uid_of(4, tmp_path) is None
