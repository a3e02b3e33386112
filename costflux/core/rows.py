"""Window rows: what one window holds per label combination, as named types, and their text.

A window (one size, one start) holds *usage rows*, keyed by ``DIMENSIONS`` and summing
``UsageSums``, and *GPU rows*, keyed by ``GPU_DIMENSIONS`` and summing ``GpuSums``. Readers
(allocation, signals, advice, reports) get a ``WindowRows`` and read sums by name; the text
form below exists only at the store's boundary (``encode_*`` / ``decode_*``), versioned by
``ROWS_VERSION``, which the store puts in its key names.

Text form, version 2: a row's key is the JSON array of its dimension values (any label text
is safe in it); its value is its sums in field order, as decimal integers joined by commas.
A row written before a field was added is shorter: it reads that field as 0, so a field can
be appended to a type without a new version. Every sum is a non-negative integer: the store
adds rows digit by digit, exactly, at any size.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple, TypeVar

import orjson

__all__ = [
    "DIMENSIONS",
    "GPU_DIMENSIONS",
    "OVERFLOW",
    "ROWS_VERSION",
    "DimKey",
    "GpuDims",
    "GpuSums",
    "UsageSums",
    "WindowRows",
    "add_sums",
    "decode_gpu_dims",
    "decode_gpu_sums",
    "decode_usage_dims",
    "decode_usage_sums",
    "encode_dims",
    "encode_sums",
    "overflow_dimensions",
]

#: The version of the text form (and of the store's key layout that holds it).
ROWS_VERSION = 2

#: What every usage row is keyed by: the model, four labels, the deployment (the event's own
#: field, else its ``deployment`` label) and the ``cluster`` label.
DIMENSIONS = ("model", "team", "project", "app", "namespace", "deployment", "cluster")
#: What a GPU row is keyed by. ``model`` joins it with usage rows; ``rates`` is the price.
GPU_DIMENSIONS = ("node", "gpu_type", "pricing_tier", "namespace", "model", "team", "rates")

DimKey = tuple[str, str, str, str, str, str, str]
GpuDims = tuple[str, str, str, str, str, str, str]

#: Every label dimension of the row a full window folds new label combinations into.
OVERFLOW = "__overflow__"


class UsageSums(NamedTuple):
    """What the requests of one usage row add up to.

    ``cache_saving_pico`` is what prompt caching saved; ``semantic_cache_hits`` are requests
    the semantic cache answered (counted in ``requests``, not in cost or tokens) and
    ``semantic_saving_pico`` the cost they avoided, priced at their event time.
    """

    cost_pico: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    cached_input_tokens: int = 0
    requests: int = 0
    gpu_ms: int = 0  # the events' own gpu_seconds, in ms
    cache_saving_pico: int = 0
    semantic_cache_hits: int = 0
    semantic_saving_pico: int = 0
    # The whole bill (costflux.core.bill.BILL_FIELDS): zero for requests with only input,
    # output and cache reads and no contract, and in rows written before these existed.
    contract_discount_pico: int = 0  # taken off the list cost; cost_pico is after it
    cache_write_input_tokens: int = 0
    cache_write_1h_input_tokens: int = 0
    audio_input_tokens: int = 0
    image_input_tokens: int = 0
    reasoning_tokens: int = 0
    audio_output_tokens: int = 0
    web_search_calls: int = 0
    batch_requests: int = 0
    priority_requests: int = 0
    flex_requests: int = 0
    cache_write_cost_pico: int = 0  # list cost of each kind beyond text and cache reads
    audio_cost_pico: int = 0
    image_cost_pico: int = 0
    reasoning_cost_pico: int = 0
    web_search_cost_pico: int = 0

    @property
    def served_requests(self) -> int:
        """Requests that reached the model (semantic cache hits used no GPU)."""
        return self.requests - self.semantic_cache_hits


class GpuSums(NamedTuple):
    """GPU time of one GPU row, in milliseconds: all of it, and its busy and idle parts."""

    gpu_ms: int = 0
    busy_ms: int = 0
    idle_ms: int = 0


@dataclass(frozen=True, slots=True)
class WindowRows:
    """The rows of one window, decoded: usage rows and GPU rows, apart."""

    usage: Mapping[DimKey, UsageSums] = field(default_factory=dict)
    gpu: Mapping[GpuDims, GpuSums] = field(default_factory=dict)

    def __bool__(self) -> bool:
        return bool(self.usage) or bool(self.gpu)


SumsT = TypeVar("SumsT", UsageSums, GpuSums)


def add_sums(left: SumsT, right: SumsT) -> SumsT:
    """Field-by-field sum of two rows of one type."""
    return type(left)(*(a + b for a, b in zip(left, right, strict=True)))


def encode_dims(dims: Sequence[str]) -> str:
    """A row's key in the store: its dimension values as a JSON array."""
    return orjson.dumps(list(dims)).decode()


def decode_usage_dims(text: str | bytes) -> DimKey:
    """The dimensions of a usage row's key (values a shorter key lacks read as "")."""
    values = [str(v) for v in orjson.loads(text)]
    values += [""] * (len(DIMENSIONS) - len(values))
    model, team, project, app, namespace, deployment, cluster = values[: len(DIMENSIONS)]
    return (model, team, project, app, namespace, deployment, cluster)


def decode_gpu_dims(text: str | bytes) -> GpuDims:
    """The dimensions of a GPU row's key."""
    node, gpu_type, tier, namespace, model, team, rates = (str(v) for v in orjson.loads(text))
    return (node, gpu_type, tier, namespace, model, team, rates)


def encode_sums(sums: Iterable[int]) -> str:
    """A row's value in the store, trailing zeros left out (they read as 0 anyway, and most
    rows have them: the store then adds fewer fields). Sums are never negative: the store
    adds them as digits."""
    values = list(sums)
    if any(value < 0 for value in values):
        raise ValueError(f"a window row's sums must not be negative: {values}")
    while len(values) > 1 and values[-1] == 0:
        values.pop()
    return ",".join(map(str, values))


def decode_usage_sums(text: str | bytes) -> UsageSums:
    return UsageSums(*_fields(text, len(UsageSums._fields)))


def decode_gpu_sums(text: str | bytes) -> GpuSums:
    return GpuSums(*_fields(text, len(GpuSums._fields)))


def _fields(text: str | bytes, count: int) -> list[int]:
    raw = text.decode() if isinstance(text, bytes) else text
    values = [int(part) for part in raw.split(",")][:count]
    return values + [0] * (count - len(values))


def overflow_dimensions(model: str) -> DimKey:
    """The row a full window folds ``model``'s new label combinations into: every label
    ``OVERFLOW``. Its money stays exact; the labels of what it holds are lost."""
    return (model, OVERFLOW, OVERFLOW, OVERFLOW, OVERFLOW, OVERFLOW, OVERFLOW)
