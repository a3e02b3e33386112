"""The NVML sidecar: read every GPU on this node, turn each reading into a GPU sample.

One code path for live and recorded NVML: ``NvmlSampler`` calls the pynvml function names on
whatever ``api`` it is given, the ``pynvml`` module itself or a ``RecordedNvml`` that answers
from a file of real readings (and raises pynvml's own errors where the recording has one).

Never publish a guess: a GPU whose required readings (name, UUID, utilization, memory) fail is
skipped for that interval with the reason logged; optional ones (power, processes) are
omitted from the sample, not reported as zero.
"""

from __future__ import annotations

import ast
import logging
import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import orjson

from costflux.core.gpu import gpu_type_for
from schemas._types import MAX_LABEL_VALUE_LENGTH, MAX_LABELS, from_epoch_ms
from schemas.gpu import GpuSample, PricingTier

__all__ = [
    "NvmlUnavailable",
    "NvmlSampler",
    "RecordedNvml",
    "SidecarOptions",
    "Skipped",
    "open_nvml",
    "pod_uid_of",
]

log = logging.getLogger(__name__)

#: Exit code of ``costflux sidecar nvml`` when this host has no usable NVML.
EXIT_NO_NVML = 3
# The pod UID in a cgroup path: "pod<uid>" (cgroupfs) or "pod<uid with _>" (systemd driver).
_POD_UID = re.compile(
    r"pod([0-9a-f]{8}[-_][0-9a-f]{4}[-_][0-9a-f]{4}[-_][0-9a-f]{4}[-_][0-9a-f]{12})"
)


class NvmlUnavailable(RuntimeError):
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

    def sample(self, now_ms: int) -> tuple[list[GpuSample], list[Skipped]]:
        samples: list[GpuSample] = []
        skipped: list[Skipped] = []
        api = self._api
        for index in range(api.nvmlDeviceGetCount()):
            try:
                samples.append(self._read(index, now_ms))
            except api.NVMLError as exc:
                skipped.append(Skipped(index, f"{_call_name(exc)}: {exc}"))
        return samples, skipped

    def _read(self, index: int, now_ms: int) -> GpuSample:
        api, options = self._api, self._options
        handle = _call(api.nvmlDeviceGetHandleByIndex, index)
        name = _text(_call(api.nvmlDeviceGetName, handle))
        uuid = _text(_call(api.nvmlDeviceGetUUID, handle))
        utilization = _call(api.nvmlDeviceGetUtilizationRates, handle)
        memory = _call(api.nvmlDeviceGetMemoryInfo, handle)
        power_mw = self._optional(api.nvmlDeviceGetPowerUsage, handle)
        processes = self._optional(api.nvmlDeviceGetComputeRunningProcesses, handle) or []
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
            gpu_model=name,
            gpu_type=gpu_type_for(name, options.gpu_type_overrides),
            pricing_tier=options.pricing_tier,
            utilization_pct=float(utilization.gpu),
            memory_used_bytes=int(memory.used),
            memory_total_bytes=int(memory.total),
            power_watts=None if power_mw is None else power_mw / 1000,
            labels=self._labels(processes),
        )

    def _optional(self, function: Callable[..., Any], handle: Any) -> Any:
        try:
            return function(handle)
        except self._api.NVMLError as exc:
            log.debug("%s: %s (left out of the sample)", function.__name__, exc)
            return None

    def _labels(self, processes: list[Any]) -> dict[str, str]:
        labels = dict(self._options.labels)
        if processes:
            pids = sorted(int(p.pid) for p in processes)
            labels["pids"] = ",".join(map(str, pids))[:MAX_LABEL_VALUE_LENGTH]
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

    def nvmlDeviceGetCount(self) -> int:  # noqa: N802 - pynvml's names
        return self._count

    def nvmlDeviceGetHandleByIndex(self, index: int) -> int:  # noqa: N802
        if index not in self._rounds[self._position]:
            raise self._error(15)  # NVML_ERROR_GPU_IS_LOST: no reading for it this round
        return index

    def nvmlDeviceGetName(self, handle: int) -> str:  # noqa: N802
        return str(self._field(handle, "name"))

    def nvmlDeviceGetUUID(self, handle: int) -> str:  # noqa: N802
        return str(self._field(handle, "uuid"))

    def nvmlDeviceGetUtilizationRates(self, handle: int) -> SimpleNamespace:  # noqa: N802
        return SimpleNamespace(**self._field(handle, "utilization"))

    def nvmlDeviceGetMemoryInfo(self, handle: int) -> SimpleNamespace:  # noqa: N802
        return SimpleNamespace(**self._field(handle, "memory"))

    def nvmlDeviceGetPowerUsage(self, handle: int) -> int:  # noqa: N802
        return int(self._field(handle, "power_mw"))

    def nvmlDeviceGetComputeRunningProcesses(  # noqa: N802
        self, handle: int
    ) -> list[SimpleNamespace]:
        # record.py wrote each process struct with str(); its text is a Python dict literal.
        return [
            SimpleNamespace(**(ast.literal_eval(p) if isinstance(p, str) else p))
            for p in self._field(handle, "compute_processes")
        ]

    def _field(self, handle: int, name: str) -> Any:
        value = self._rounds[self._position][handle].get(name)
        if isinstance(value, dict) and "nvml_error" in value:
            raise self._error(int(value["code"]))
        if value is None:
            raise self._error(3)  # NVML_ERROR_NOT_SUPPORTED: not in the recording
        return value
