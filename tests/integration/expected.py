"""Independent recomputation of expected totals: plain Python and Decimal, no costflux code."""

from __future__ import annotations

import csv
from collections import defaultdict
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from tests.paths import AZURE_TRACE

#: The seed's pricing.yaml, written out by hand: $/1K tokens (input, output).
SEED_PRICES = {
    "llama-2-70b": (Decimal("0.0008"), Decimal("0.0016")),
    "llama-2-7b": (Decimal("0.0001"), Decimal("0.0002")),
    "gpt-4": (Decimal("0.03"), Decimal("0.06")),
}



def event_cost(event: Mapping[str, Any]) -> Decimal:
    price_in, price_out = SEED_PRICES[event["model"]]
    cached = event.get("cached_input_tokens", 0)
    return ((event["input_tokens"] - cached) * price_in + cached * price_in
            + event["output_tokens"] * price_out) / 1000


def dimension_value(event: Mapping[str, Any], key: str) -> str:
    """The model, the deployment (the event's field, else its label), or a label (``key`` may
    be written ``label:<name>``, as the API accepts it)."""
    labels = event.get("labels", {})
    key = key.removeprefix("label:")
    if key == "model":
        return str(event["model"])
    if key == "deployment":
        return str(event.get("deployment") or labels.get("deployment", ""))
    return str(labels.get(key, ""))


def group_name(event: Mapping[str, Any], keys: str) -> str:
    """The allocation row an event lands in for comma-separated ``keys`` (e.g. cluster,model)."""
    return "/".join(dimension_value(event, key) or "__unallocated__" for key in keys.split(","))


def totals_by(events: Iterable[Mapping[str, Any]], key: str) -> dict[str, dict[str, Any]]:
    """Cost, tokens and requests grouped by the model, a label, or several (comma-separated)."""
    groups: dict[str, dict[str, Any]] = defaultdict(
        lambda: {"cost": Decimal(0), "input": 0, "output": 0, "requests": 0}
    )
    for event in events:
        group = groups[group_name(event, key)]
        group["cost"] += event_cost(event)
        group["input"] += event["input_tokens"]
        group["output"] += event["output_tokens"]
        group["requests"] += 1
    return dict(groups)


def totals_by_window(events: Iterable[Mapping[str, Any]], size_s: int) -> dict[int, Decimal]:
    """Cost per tumbling window start (epoch ms) for windows of ``size_s``."""
    windows: dict[int, Decimal] = defaultdict(Decimal)
    for event in events:
        moment = datetime.fromisoformat(event["ts"].replace("Z", "+00:00"))
        seconds = int(moment.timestamp())
        windows[(seconds - seconds % size_s) * 1000] += event_cost(event)
    return dict(windows)


def azure_rows(limit: int | None = None) -> list[dict[str, Any]]:
    """The bundled trace read with the csv module, with the demo's documented rotation."""
    models = ("llama-2-70b", "llama-2-7b", "gpt-4")
    teams = ("search", "ads", "chat", "research")
    deployments = ("llama-2-70b-prod", "llama-2-7b-prod", "gpt-4-prod")
    clusters = ("us-east-1", "us-east-1", "us-east-1", "eu-west-1", "eu-west-1")
    rows = []
    with AZURE_TRACE.open(newline="") as handle:
        for index, row in enumerate(csv.DictReader(handle)):
            if limit is not None and index >= limit:
                break
            stamp = row["TIMESTAMP"]
            whole, _, fraction = stamp.partition(".")
            moment = datetime.strptime(whole, "%Y-%m-%d %H:%M:%S").replace(tzinfo=UTC)
            rows.append({
                "ts": moment.isoformat().replace("+00:00", f".{fraction[:6]:0<6}Z"),
                "model": models[index % 3],
                "input_tokens": int(row["ContextTokens"]),
                "output_tokens": int(row["GeneratedTokens"]),
                "labels": {"team": teams[index % 4], "deployment": deployments[index % 3],
                           "cluster": clusters[index % 5]},
            })
    return rows
