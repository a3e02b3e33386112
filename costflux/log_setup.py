"""Process logging: one format and the configured level for every command."""

from __future__ import annotations

import logging

from costflux.settings import Settings

__all__ = ["configure_logging"]


def configure_logging(settings: Settings) -> None:
    logging.basicConfig(
        level=settings.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
