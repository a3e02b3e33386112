"""Prices from a file (or the bundled seed), reloaded on change, last good kept on error."""

from __future__ import annotations

import logging
from importlib import resources
from pathlib import Path

from costflux.core.pricing import PriceBook, PricingError, parse_pricing_text

__all__ = ["PricingSource", "bundled_pricing_text", "load_pricing_file"]

log = logging.getLogger(__name__)


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


class PricingSource:
    """The current PriceBook; ``reload_if_changed`` swaps it only for a valid new file."""

    def __init__(self, path: Path | None) -> None:
        self._path = path
        self._book = load_pricing_file(path) if path else parse_pricing_text(
            bundled_pricing_text(), "bundled pricing.yaml"
        )
        self._stamp = self._file_stamp()
        self.last_error: str | None = None

    def current(self) -> PriceBook:
        return self._book

    def reload_if_changed(self) -> bool:
        """Reload when the file changed; keep the last good prices if the new file is invalid."""
        if self._path is None:
            return False
        stamp = self._file_stamp()
        if stamp == self._stamp:
            return False
        self._stamp = stamp
        try:
            self._book = load_pricing_file(self._path)
        except PricingError as exc:
            self.last_error = str(exc)
            log.error("keeping the last good prices: %s", exc)
            return False
        self.last_error = None
        log.info("reloaded prices from %s", self._path)
        return True

    def _file_stamp(self) -> tuple[float, int] | None:
        if self._path is None:
            return None
        try:
            # Kubernetes swaps ConfigMap files through a symlink; stat follows it.
            info = self._path.stat()
        except OSError:
            return None
        return (info.st_mtime, info.st_size)
