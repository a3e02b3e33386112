"""``costflux advise``: savings advice and the ROI table, read from a worker's /api/advice."""

from __future__ import annotations

import argparse
from typing import Any

from costflux.api_client import get_data, print_from_worker
from costflux.core.advice_report import ADVICE_FORMATS, render_advice
from costflux.settings import Settings

__all__ = ["add_advise_command"]


def add_advise_command(commands: Any) -> None:
    advise = commands.add_parser("advise", help="estimated monthly savings and the ROI table")
    advise.add_argument("--window", default="7d",
                        help="measured span: 24h, 7d, 30d, month, ... (default 7d)")
    advise.add_argument("--format", choices=ADVICE_FORMATS, default="table", dest="form")
    advise.add_argument("--url", default="http://127.0.0.1:8080",
                        help="the worker's HTTP address (default: the demo's)")
    advise.set_defaults(run=_run_advise)


def _run_advise(args: argparse.Namespace, settings: Settings) -> int:
    return print_from_worker("advise", args.url, lambda: render_advice(
        get_data(args.url, "/api/advice", token=settings.http_token_value(),
                 window=args.window), args.form))
