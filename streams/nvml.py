"""The NVML sidecar: read every GPU on this node, turn each reading into a GPU sample.

One code path for live and recorded NVML: ``NvmlSampler`` calls the pynvml function names on
whatever ``api`` it is given, the ``pynvml`` module itself or a ``RecordedNvml``
(``costflux.streams.nvml_recorded``) that answers from a file of real readings.

Never publish a guess: a GPU whose required readings (name, UUID, utilization, memory) fail is
skipped for that interval with the reason logged; optional ones (power, processes) are
omitted from the sample, not reported as zero.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from costflux.core.errors import UnavailableError
from costflux.core.gpu import gpu_type_for
from costflux.core.gpu_samples import PROCESS_LABEL
from costflux.schemas._types import MAX_LABEL_VALUE_LENGTH, MAX_LABELS, from_epoch_ms
from costflux.schemas.gpu import UNALLOCATED_PROFILE, GpuSample, MigInstance, PricingTier

__all__ = [
    "NvmlUnavailable",
    "NvmlSampler",
    "SidecarOptions",
    "Skipped",
    "open_nvml",
    "pod_uid_of",
]

log = logging.getLogger(__name__)

#: Exit code of ``costflux sidecar nvml`` when this host has no usable NVML.
EXIT_NO_NVML = 3
# pynvml's values, kept here so that recorded readings need no driver to be read.
_MIG_ENABLED = 1  # NVML_DEVICE_MIG_ENABLE
_NVML_ERROR_NOT_SUPPORTED = 3
_NVML_ERROR_NOT_FOUND = 6
# The pod UID in a cgroup path: "pod<uid>" (cgroupfs) or "pod<uid with _>" (systemd driver).
_POD_UID = re.compile(
    r"pod([0-9a-f]{8}[-_][0-9a-f]{4}[-_][0-9a-f]{4}[-_][0-9a-f]{4}[-_][0-9a-f]{12})"
)


class NvmlUnavailable(UnavailableError):
    """No NVML on this host (no driver, no library, no GPU): the message says which."""


def open_nvml() -> Any:
    """Import and initialise pynvml; raise ``NvmlUnavailable`` with the cause and the fix."""
    try:
        import pynvml
    except ImportError as exc:  # pragma: no cover - nvidia-ml-py is a dependency
        raise NvmlUnavailable(
            f"pynvml is not importable ({exc}); pip install nvidia-ml-py"
        ) from None
    try:
        pynvml.nvmlInit()
        count = pynvml.nvmlDeviceGetCount()
    except pynvml.NVMLError as exc:
        raise NvmlUnavailable(
            f"NVML cannot start: {exc}. This host needs an NVIDIA driver (libnvidia-ml.so); in "
            "Kubernetes run the sidecar with the NVIDIA device plugin's runtime class"
        ) from None
    if count == 0:
        raise NvmlUnavailable("NVML reports no GPU on this host")
    return pynvml


@dataclass(frozen=True, slots=True)
class SidecarOptions:
    """What the sidecar stamps on every sample."""

    node: str
    interval_s: float = 10.0
    pricing_tier: PricingTier = "on_demand"
    labels: Mapping[str, str] = field(default_factory=dict)  # e.g. team, model, namespace
    gpu_type_overrides: Mapping[str, str] = field(default_factory=dict)  # NVML name -> key
    proc_root: Path = Path("/proc")


@dataclass(frozen=True, slots=True)
class Skipped:
    """A GPU not sampled this interval, and why."""

    gpu_index: int
    reason: str


class NvmlSampler:
    """Reads all GPUs through an NVML api and builds one ``GpuSample`` per readable GPU."""

    def __init__(self, api: Any, options: SidecarOptions) -> None:
        self._api = api
        self._options = options
        self._last_ts_ms: dict[str, int] = {}  # uuid -> previous sample time
        self._slice_totals: dict[str, int] = {}  # MIG-mode GPU uuid -> its compute slices

    def sample(self, now_ms: int) -> tuple[list[GpuSample], list[Skipped]]:
        samples: list[GpuSample] = []
        skipped: list[Skipped] = []
        api = self._api
        for index in range(api.nvmlDeviceGetCount()):
            try:
                handle = _call(api.nvmlDeviceGetHandleByIndex, index)
                name = _text(_call(api.nvmlDeviceGetName, handle))
                uuid = _text(_call(api.nvmlDeviceGetUUID, handle))
                if self._mig_enabled(handle):
                    samples.extend(self._read_mig(index, handle, name, uuid, now_ms, skipped))
                else:
                    samples.append(self._read_whole(index, handle, name, uuid, now_ms))
            except api.NVMLError as exc:
                skipped.append(Skipped(index, f"{_call_name(exc)}: {exc}"))
        return samples, skipped

    def _read_whole(
        self, index: int, handle: Any, name: str, uuid: str, now_ms: int
    ) -> GpuSample:
        api = self._api
        utilization = _call(api.nvmlDeviceGetUtilizationRates, handle)
        memory = _call(api.nvmlDeviceGetMemoryInfo, handle)
        power_mw = self._optional(api.nvmlDeviceGetPowerUsage, handle)
        processes = self._optional(api.nvmlDeviceGetComputeRunningProcesses, handle) or []
        return self._sample(
            index, name, uuid, now_ms,
            utilization_pct=float(utilization.gpu),
            memory_used_bytes=int(memory.used),
            memory_total_bytes=int(memory.total),
            power_watts=None if power_mw is None else power_mw / 1000,
            labels=self._labels(processes),
        )

    def _mig_enabled(self, handle: Any) -> bool:
        # A GPU without MIG support answers NOT_SUPPORTED: it is a whole GPU.
        mode = self._optional(self._api.nvmlDeviceGetMigMode, handle)
        return bool(mode) and mode[0] == _MIG_ENABLED

    def _read_mig(
        self, index: int, parent: Any, name: str, parent_uuid: str, now_ms: int,
        skipped: list[Skipped],
    ) -> list[GpuSample]:
        """One sample per MIG compute instance, plus one for the slices none holds.

        An instance whose readings fail is skipped with its reason; its slices are then
        reported by nobody this round (not as unallocated: they are allocated), and when even
        its slice count is unreadable, neither is the unallocated remainder.
        """
        api = self._api
        total = self._slices_total(parent, parent_uuid)
        samples = []
        held: list[int | None] = []  # each instance's slices; None where unreadable
        for slot in range(_call(api.nvmlDeviceGetMaxMigDeviceCount, parent)):
            try:
                handle = api.nvmlDeviceGetMigDeviceHandleByIndex(parent, slot)
            except api.NVMLError as exc:
                if getattr(exc, "value", None) == _NVML_ERROR_NOT_FOUND:
                    continue  # an empty slot
                raise
            try:
                sample = self._read_instance(index, handle, name, parent_uuid, total, now_ms)
            except api.NVMLError as exc:
                skipped.append(Skipped(index, f"MIG slot {slot}: {_call_name(exc)}: {exc}"))
                attributes = self._optional(api.nvmlDeviceGetAttributes, handle)
                held.append(None if attributes is None else
                            int(attributes.computeInstanceSliceCount))
                continue
            assert sample.mig is not None
            held.append(sample.mig.slices)
            samples.append(sample)
        if None in held:
            skipped.append(Skipped(index, "MIG: unallocated slices unknown this round"))
        elif (free := total - sum(s for s in held if s is not None)) > 0:
            samples.append(self._sample(
                index, name, parent_uuid, now_ms,
                utilization_pct=None, memory_used_bytes=0, memory_total_bytes=0,
                power_watts=None, labels=dict(self._options.labels),
                mig=MigInstance(parent_gpu_uuid=parent_uuid, profile=UNALLOCATED_PROFILE,
                                slices=free, slices_total=total),
            ))
        return samples

    def _read_instance(
        self, index: int, handle: Any, parent_name: str, parent_uuid: str, total: int,
        now_ms: int,
    ) -> GpuSample:
        api = self._api
        uuid = _text(_call(api.nvmlDeviceGetUUID, handle))
        instance_name = _text(_call(api.nvmlDeviceGetName, handle))
        attributes = _call(api.nvmlDeviceGetAttributes, handle)
        memory = _call(api.nvmlDeviceGetMemoryInfo, handle)
        processes = self._optional(api.nvmlDeviceGetComputeRunningProcesses, handle) or []
        mig = MigInstance(
            parent_gpu_uuid=parent_uuid,
            # NVML names an instance "<GPU name> MIG 1g.10gb".
            profile=instance_name.rpartition(" MIG ")[2] or instance_name,
            gpu_instance_id=_call(api.nvmlDeviceGetGpuInstanceId, handle),
            compute_instance_id=_call(api.nvmlDeviceGetComputeInstanceId, handle),
            slices=int(attributes.computeInstanceSliceCount),
            slices_total=total,
        )
        return self._sample(
            index, parent_name, uuid, now_ms, gpu_model=instance_name,
            utilization_pct=None,  # NVML measures none per instance; occupancy judges idle
            memory_used_bytes=int(memory.used), memory_total_bytes=int(memory.total),
            power_watts=None, labels=self._labels(processes), mig=mig,
        )

    def _slices_total(self, parent: Any, parent_uuid: str) -> int:
        """A GPU's compute slices: the largest GPU instance profile it supports (7 on H100)."""
        total = self._slice_totals.get(parent_uuid)
        if total is None:
            api = self._api
            counts = [
                int(info.sliceCount)
                for profile in range(api.NVML_GPU_INSTANCE_PROFILE_COUNT)
                if (info := self._optional(api.nvmlDeviceGetGpuInstanceProfileInfo, parent,
                                           profile)) is not None
            ]
            if not counts:
                raise api.NVMLError(_NVML_ERROR_NOT_SUPPORTED)
            total = self._slice_totals[parent_uuid] = max(counts)
        return total

    def _sample(
        self, index: int, gpu_name: str, uuid: str, now_ms: int, *,
        gpu_model: str | None = None, **readings: Any,
    ) -> GpuSample:
        """Stamp the readings of one GPU or MIG instance with its identity and interval."""
        options = self._options
        previous = self._last_ts_ms.get(uuid)
        interval_ms = now_ms - previous if previous is not None else None
        if interval_ms is None or interval_ms <= 0:
            interval_ms = round(options.interval_s * 1000)
        self._last_ts_ms[uuid] = now_ms
        return GpuSample(
            event_id=f"{options.node}:{uuid}:{now_ms}",
            ts=from_epoch_ms(now_ms),
            interval_s=interval_ms / 1000,
            node=options.node,
            gpu_uuid=uuid,
            gpu_index=index,
            gpu_model=gpu_model or gpu_name,
            # The whole GPU's pricing key: a MIG sample is priced at its share of it.
            gpu_type=gpu_type_for(gpu_name, options.gpu_type_overrides),
            pricing_tier=options.pricing_tier,
            **readings,
        )

    def _optional(self, function: Callable[..., Any], *args: Any) -> Any:
        try:
            return function(*args)
        except self._api.NVMLError as exc:
            log.debug("%s: %s (left out of the sample)", function.__name__, exc)
            return None

    def _labels(self, processes: list[Any]) -> dict[str, str]:
        labels = dict(self._options.labels)
        if processes:
            pids = sorted(int(p.pid) for p in processes)
            labels[PROCESS_LABEL] = ",".join(map(str, pids))[:MAX_LABEL_VALUE_LENGTH]
            proc_root = self._options.proc_root
            pods = sorted({uid for pid in pids if (uid := pod_uid_of(pid, proc_root))})
            if pods:
                labels["pod_uid"] = ",".join(pods)[:MAX_LABEL_VALUE_LENGTH]
        return dict(list(labels.items())[:MAX_LABELS])


def pod_uid_of(pid: int, proc_root: Path = Path("/proc")) -> str | None:
    """The Kubernetes pod UID a process runs in, from its cgroup path; None outside a pod."""
    try:
        text = (proc_root / str(pid) / "cgroup").read_text()
    except OSError:
        return None
    found = _POD_UID.search(text)
    return found.group(1).replace("_", "-") if found else None


def _call(function: Callable[..., Any], *args: Any) -> Any:
    """Call an NVML function; tag an error with the call's name for the skip reason."""
    try:
        return function(*args)
    except Exception as exc:
        exc.nvml_call = function.__name__  # type: ignore[attr-defined]
        raise


def _call_name(exc: BaseException) -> str:
    return str(getattr(exc, "nvml_call", "nvml"))


def _text(value: str | bytes) -> str:
    return value.decode() if isinstance(value, bytes) else value
