"""Recorded NVML: answers the sidecar's pynvml calls from a file of real readings.

The readings are ``record.py``'s JSON lines (tests/fixtures/nvml_h100/, and for a MIG-mode
GPU tests/fixtures/nvml_mig/record_mig.py): every call's result, or the NVML error it gave,
which is raised as pynvml's own ``NVMLError`` with the recorded code.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import orjson

__all__ = ["Handle", "RecordedNvml"]


#: A recorded device handle: a GPU's index, or (GPU index, MIG slot) for a MIG instance.
Handle = int | tuple[int, int]


class RecordedNvml:
    """Answers pynvml's calls from recorded readings (``record.py``'s JSON lines).

    ``advance()`` moves to the next recorded sample; ``now_ms()`` is its recorded time. A
    recorded error is raised as pynvml's own ``NVMLError`` with the recorded code.
    """

    def __init__(self, lines: list[dict[str, Any]]) -> None:
        import pynvml

        self.NVMLError = pynvml.NVMLError
        self._error = pynvml.NVMLError
        meta: dict[str, Any] = next((line["meta"] for line in lines if "meta" in line), {})
        readings = [line for line in lines if "meta" not in line]
        self._count = int(meta.get("count", max((r["index"] for r in readings), default=-1) + 1))
        # Group per sampling round: a round is one reading per GPU index.
        self._rounds: list[dict[int, dict[str, Any]]] = []
        for reading in readings:
            if not self._rounds or reading["index"] in self._rounds[-1]:
                self._rounds.append({})
            self._rounds[-1][reading["index"]] = reading
        self._position = -1

    @classmethod
    def from_file(cls, path: Path) -> RecordedNvml:
        return cls([orjson.loads(line) for line in path.read_bytes().splitlines() if line.strip()])

    def rounds(self) -> Iterator[int]:
        """Advance through every recorded round, yielding its time in epoch ms."""
        for position in range(len(self._rounds)):
            self._position = position
            yield self.now_ms()

    def now_ms(self) -> int:
        first = next(iter(self._rounds[self._position].values()))
        return round(float(first["ts"]) * 1000)

    # --- the pynvml calls the sampler makes ---------------------------------------------

    NVML_GPU_INSTANCE_PROFILE_COUNT = 0x12  # as pynvml's, which a recording may index

    def nvmlDeviceGetCount(self) -> int:  # noqa: N802 - pynvml's names
        return self._count

    def nvmlDeviceGetHandleByIndex(self, index: int) -> Handle:  # noqa: N802
        if index not in self._rounds[self._position]:
            raise self._error(15)  # NVML_ERROR_GPU_IS_LOST: no reading for it this round
        return index

    def nvmlDeviceGetName(self, handle: Handle) -> str:  # noqa: N802
        return str(self._field(handle, "name"))

    def nvmlDeviceGetUUID(self, handle: Handle) -> str:  # noqa: N802
        return str(self._field(handle, "uuid"))

    def nvmlDeviceGetUtilizationRates(self, handle: Handle) -> SimpleNamespace:  # noqa: N802
        return SimpleNamespace(**self._field(handle, "utilization"))

    def nvmlDeviceGetMemoryInfo(self, handle: Handle) -> SimpleNamespace:  # noqa: N802
        return SimpleNamespace(**self._field(handle, "memory"))

    def nvmlDeviceGetPowerUsage(self, handle: Handle) -> int:  # noqa: N802
        return int(self._field(handle, "power_mw"))

    def nvmlDeviceGetComputeRunningProcesses(  # noqa: N802
        self, handle: Handle
    ) -> list[SimpleNamespace]:
        # record.py wrote each process struct with str(); its text is a Python dict literal.
        return [
            SimpleNamespace(**(ast.literal_eval(p) if isinstance(p, str) else p))
            for p in self._field(handle, "compute_processes")
        ]

    # --- MIG: a MIG device's handle is (GPU index, slot) --------------------------------

    def nvmlDeviceGetMigMode(self, handle: Handle) -> list[int]:  # noqa: N802
        return list(self._field(handle, "mig_mode"))

    def nvmlDeviceGetMaxMigDeviceCount(self, handle: Handle) -> int:  # noqa: N802
        return int(self._field(handle, "max_mig_device_count"))

    def nvmlDeviceGetMigDeviceHandleByIndex(  # noqa: N802
        self, handle: Handle, slot: int
    ) -> Handle:
        devices = self._field(handle, "mig_devices")
        if slot >= len(devices) or devices[slot] is None:
            raise self._error(6)  # NVML_ERROR_NOT_FOUND: no instance in this slot
        assert isinstance(handle, int), "a MIG device has no MIG devices of its own"
        return handle, slot

    def nvmlDeviceGetGpuInstanceProfileInfo(  # noqa: N802
        self, handle: Handle, profile: int
    ) -> SimpleNamespace:
        profiles = self._field(handle, "gpu_instance_profiles")
        info = profiles.get(str(profile), {"nvml_error": "Not Supported", "code": 3})
        return SimpleNamespace(**self._value(info))

    def nvmlDeviceGetAttributes(self, handle: Handle) -> SimpleNamespace:  # noqa: N802
        return SimpleNamespace(**self._field(handle, "attributes"))

    def nvmlDeviceGetGpuInstanceId(self, handle: Handle) -> int:  # noqa: N802
        return int(self._field(handle, "gpu_instance_id"))

    def nvmlDeviceGetComputeInstanceId(self, handle: Handle) -> int:  # noqa: N802
        return int(self._field(handle, "compute_instance_id"))

    def _field(self, handle: Handle, name: str) -> Any:
        if isinstance(handle, tuple):
            index, slot = handle
            reading = self._rounds[self._position][index]["mig_devices"][slot]
        else:
            reading = self._rounds[self._position][handle]
        return self._value(reading.get(name))

    def _value(self, value: Any) -> Any:
        if isinstance(value, dict) and "nvml_error" in value:
            raise self._error(int(value["code"]))
        if value is None:
            raise self._error(3)  # NVML_ERROR_NOT_SUPPORTED: not in the recording
        return value
