"""A MIG-mode GPU is sampled per compute instance, plus its unallocated slices.

No MIG-mode GPU was available to record (the lent H100 must keep its MIG setting, and
enabling MIG needs a GPU reset), so these readings are written here after NVML's documented
behaviour on an H100 80GB: the parent answers NOT_SUPPORTED for utilization in MIG mode, a MIG
device's name is "<GPU name> MIG <profile>", its attributes carry its slice counts, the
largest GPU instance profile (7g.80gb) has 7 slices, and an empty slot answers NOT_FOUND.
``tests/fixtures/nvml_mig/record_mig.py`` records the same shape on a MIG-enabled node.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest

from costflux.schemas.gpu import UNALLOCATED_PROFILE, GpuSample
from costflux.streams.nvml import NvmlSampler, SidecarOptions
from costflux.streams.nvml_recorded import RecordedNvml
from costflux.streams.sidecar import publish_rounds

PARENT = "GPU-29d8e695-e43e-54b9-9464-377db75d29a5"  # the recorded H100's identity
NAME = "NVIDIA H100 80GB HBM3"
NOT_SUPPORTED = {"nvml_error": "Not Supported", "code": 3}
POD_UID = "0b6c3b2e-6a1f-4c8e-9a41-3f2f9d6c1a77"
# Slice counts of the H100's GPU instance profiles, by NVML profile id (1g,2g,3g,4g,7g,1g+me).
PROFILES = {"0": 1, "1": 2, "2": 3, "3": 4, "4": 7, "7": 1}


def instance(slot: int, profile: str, slices: int, used: int, pids: list[int]) -> dict[str, Any]:
    return {
        "name": f"{NAME} MIG {profile}",
        "uuid": f"MIG-7f3c2a10-0000-5000-8000-00000000000{slot}",
        "gpu_instance_id": 1 + slot, "compute_instance_id": 0,
        "attributes": {"computeInstanceSliceCount": slices, "gpuInstanceSliceCount": slices,
                       "memorySizeMB": slices * 10_240},
        "memory": {"total": slices * 10_737_418_240, "used": used, "free": 0},
        "utilization": NOT_SUPPORTED,
        "compute_processes": [{"pid": pid, "usedGpuMemory": used} for pid in pids],
    }


def mig_round(ts: float) -> dict[str, Any]:
    return {
        "ts": ts, "index": 0, "name": NAME, "uuid": PARENT,
        "utilization": NOT_SUPPORTED, "memory": {"total": 85520809984, "used": 0, "free": 0},
        "power_mw": 210_000, "mig_mode": [1, 1], "max_mig_device_count": 7,
        "gpu_instance_profiles": {
            key: {"id": int(key), "sliceCount": n} for key, n in PROFILES.items()
        },
        "mig_devices": [
            instance(0, "3g.40gb", 3, 30 << 30, [400]),  # serving: a process on it
            instance(1, "1g.10gb", 1, 0, []),  # allocated but idle
            instance(2, "1g.10gb", 1, 5 << 30, [512]),
            None, None, None, None,  # two slices in no instance
        ],
    }


def readings(rounds: int = 3) -> list[dict[str, Any]]:
    return [{"meta": {"count": 1}}] + [mig_round(1_795_349_090.0 + 10 * i) for i in range(rounds)]


def sample_all(
    lines: list[dict[str, Any]], proc_root: Path = Path("/nonexistent")
) -> tuple[list[list[GpuSample]], int]:
    api = RecordedNvml(lines)
    sampler = NvmlSampler(api, SidecarOptions(node="gpu-node-1", labels={"team": "search"},
                                              proc_root=proc_root))
    sent: list[GpuSample] = []
    _, skipped = publish_rounds(sampler, api.rounds(), sent.append)
    by_time: dict[int, list[GpuSample]] = {}
    for sample in sent:
        by_time.setdefault(sample.ts_ms, []).append(sample)
    return [by_time[ts] for ts in sorted(by_time)], skipped


def test_each_instance_and_the_unallocated_slices_add_up_to_the_whole_gpu(
    tmp_path: Path,
) -> None:
    (tmp_path / "400").mkdir()
    (tmp_path / "400" / "cgroup").write_text(f"0::/kubepods/pod{POD_UID}/abc\n")
    rounds, skipped = sample_all(readings(), proc_root=tmp_path)
    assert skipped == 0 and len(rounds) == 3
    for samples in rounds:
        assert all(s.mig is not None and s.mig.slices_total == 7 for s in samples)
        assert sum(s.mig.slices for s in samples if s.mig) == 7
        assert all(s.utilization_pct is None for s in samples)  # never a made-up 0
        assert {s.gpu_type for s in samples} == {"nvidia-h100-80gb"}
    first = {s.gpu_uuid: s for s in rounds[0]}
    serving = first["MIG-7f3c2a10-0000-5000-8000-000000000000"]
    assert serving.mig is not None
    assert (serving.mig.profile, serving.mig.slices, serving.mig.gpu_instance_id) == (
        "3g.40gb", 3, 1)
    assert serving.gpu_model == f"{NAME} MIG 3g.40gb" and serving.mig.parent_gpu_uuid == PARENT
    assert serving.labels == {"team": "search", "pids": "400", "pod_uid": POD_UID}
    assert serving.memory_used_bytes == 30 << 30
    idle = first["MIG-7f3c2a10-0000-5000-8000-000000000001"]
    assert "pids" not in idle.labels
    unallocated = first[PARENT]
    assert unallocated.mig is not None
    assert (unallocated.mig.profile, unallocated.mig.slices) == (UNALLOCATED_PROFILE, 2)
    assert unallocated.labels == {"team": "search"}
    assert {s.interval_s for s in rounds[1]} == {10.0}


def test_an_instance_that_errors_is_skipped_and_its_slices_stay_allocated(
    caplog: pytest.LogCaptureFixture,
) -> None:
    lines = readings()
    lines[2]["mig_devices"][2]["memory"] = {"nvml_error": "Unknown Error", "code": 999}
    caplog.set_level(logging.WARNING)
    rounds, skipped = sample_all(lines)
    assert skipped == 1
    assert "MIG slot 2: nvmlDeviceGetMemoryInfo: Unknown Error" in caplog.text
    second = {s.gpu_uuid: s for s in rounds[1]}
    assert "MIG-7f3c2a10-0000-5000-8000-000000000002" not in second
    unallocated = second[PARENT].mig
    assert unallocated is not None and unallocated.slices == 2  # not 3: slot 2 is allocated


def test_when_a_failed_instance_hides_its_slices_the_remainder_is_not_guessed() -> None:
    lines = readings(rounds=1)
    broken = lines[1]["mig_devices"][0]
    broken["uuid"] = broken["attributes"] = {"nvml_error": "GPU is lost", "code": 15}
    rounds, skipped = sample_all(lines)
    assert skipped == 2  # the instance, and the remainder it makes unknown
    assert [s.mig.profile for s in rounds[0] if s.mig] == ["1g.10gb", "1g.10gb"]


def test_a_mig_gpu_without_readable_profiles_is_skipped_not_priced_whole() -> None:
    lines = readings(rounds=1)
    lines[1]["gpu_instance_profiles"] = {}
    rounds, skipped = sample_all(lines)
    assert (rounds, skipped) == ([], 1)


def test_a_gpu_whose_mig_mode_is_unsupported_is_a_whole_gpu() -> None:
    lines = readings(rounds=1)
    line = lines[1]
    line.update(mig_mode=NOT_SUPPORTED, utilization={"gpu": 37, "memory": 5})
    (samples,), skipped = sample_all(lines)
    (whole,) = samples
    assert skipped == 0 and whole.mig is None and whole.utilization_pct == 37
    assert whole.gpu_uuid == PARENT and whole.power_watts == 210
