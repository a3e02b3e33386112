"""The NVML sidecar publishes recorded real readings to the embedded broker, keyed by GPU."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable

import pytest

from costflux.schemas.gpu import GpuSample
from costflux.settings import Settings
from tests.integration.test_producer import read_all
from tests.paths import NVML_H100, REPO

pytestmark = pytest.mark.integration


def test_sidecar_publishes_every_readable_sample_to_the_gpu_topic(
    settings_for: Callable[..., Settings],
) -> None:
    settings = settings_for(topic_partitions=2)
    command = [sys.executable, "-m", "costflux", "sidecar", "nvml", "--recorded", str(NVML_H100),
               "--node", "gpu-node-1", "--labels", "team=search,model=llama-2-70b",
               "--interval", "0.5"]
    env = {**os.environ, "COSTFLUX_KAFKA_BOOTSTRAP": str(settings.kafka_bootstrap),
           "COSTFLUX_TOPIC_GPU": settings.topic_gpu, "COSTFLUX_TOPIC_PARTITIONS": "2"}
    subprocess.run(command, cwd=REPO, env=env, timeout=120, check=True, capture_output=True)
    printed = subprocess.run(
        [*command, "--print"], cwd=REPO, env=env, timeout=60, check=True, capture_output=True,
        text=True,
    ).stdout.splitlines()

    received = read_all(str(settings.kafka_bootstrap), settings.topic_gpu, 2, len(printed))
    published = [GpuSample.model_validate_json(r.value) for r in received]
    assert sorted(published, key=lambda s: s.ts_ms) == [
        GpuSample.model_validate_json(line) for line in printed
    ]
    assert len(published) == 60
    # Keyed by GPU UUID, so one GPU's samples stay in order on one partition.
    assert {r.key for r in received} == {published[0].gpu_uuid.encode()}
    assert len({r.partition for r in received}) == 1
