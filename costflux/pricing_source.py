"""Prices from a file (or the bundled seed), reloaded on change, last good kept on error."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from costflux.core.pricing import PriceBook, PricingError
from costflux.core.pricing_file import parse_pricing_text
from costflux.file_watch import ReloadedFiles

__all__ = ["PricingSource", "bundled_pricing_text", "load_pricing_file"]


def bundled_pricing_text() -> str:
    """The seed's pricing.yaml, shipped in the package."""
    return resources.files("costflux").joinpath("data/pricing.yaml").read_text(encoding="utf-8")


def load_pricing_file(path: Path) -> PriceBook:
    """Read and parse a price file or a ConfigMap manifest; errors name file, line and field."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise PricingError(f"{path}: cannot read the price file ({exc.strerror})") from None
    return parse_pricing_text(text, str(path))


class PricingSource(ReloadedFiles[PriceBook]):
    """The current PriceBook; ``reload_if_changed`` swaps it only for a valid new file."""

    def __init__(self, path: Path | None) -> None:
        super().__init__("prices", (path,), lambda: _load(path), (PricingError,))


def _load(path: Path | None) -> PriceBook:
    if path is None:
        return parse_pricing_text(bundled_pricing_text(), "bundled pricing.yaml")
    return load_pricing_file(path)
