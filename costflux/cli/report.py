"""``costflux report``: the seed's cost report, read from a running worker's allocation API.

Works against any worker (or ``costflux demo``, which serves on 127.0.0.1:8080): the report
is the API's exact figures grouped and rendered here, so it equals what the API serves.
"""

from __future__ import annotations

import argparse
from typing import Any

from costflux.api_client import get_data, print_from_worker
from costflux.core.report import FORMATS, PeakHours, by_time_of_day, render, report_rows
from costflux.settings import Settings

__all__ = ["add_report_command"]

#: --by value -> the allocation API's aggregate parameter (time_of_day: hourly sets instead).
#: api_key and end_user are whole UTC days (``--window 30d``: today and the 29 days before).
DIMENSIONS = {"model": "model", "team": "label:team", "project": "label:project",
              "app": "label:app", "namespace": "namespace", "deployment": "deployment",
              "cluster": "cluster", "api_key": "api_key", "end_user": "end_user"}


def add_report_command(commands: Any) -> None:
    report = commands.add_parser("report", help="cost by team, model, app... from a worker")
    report.add_argument("--window", default="30d",
                        help="24h, 7d, 30d, ... or START,END in RFC 3339 (default 30d)")
    report.add_argument("--by", choices=(*DIMENSIONS, "time_of_day"), default="team")
    report.add_argument("--format", choices=FORMATS, default="table", dest="form")
    report.add_argument("--url", default="http://127.0.0.1:8080",
                        help="the worker's HTTP address (default: the demo's)")
    report.add_argument("--peak-hours", default="9-18",
                        help="time_of_day: peak START-END hours (default 9-18)")
    report.add_argument("--timezone", default="UTC", help="time_of_day: IANA zone of the hours")
    report.set_defaults(run=_run_report)


def _run_report(args: argparse.Namespace, settings: Settings) -> int:
    return print_from_worker("report", args.url,
                             lambda: _report_text(args, settings.http_token_value()))


def _report_text(args: argparse.Namespace, token: str | None) -> str:
    if args.by == "time_of_day":
        peak = PeakHours.parse(args.peak_hours, args.timezone)
        sets = _allocation(args.url, token, window=args.window, aggregate="model", step="1h")
        rows = by_time_of_day(sets, peak)
    else:
        sets = _allocation(args.url, token, window=args.window, aggregate=DIMENSIONS[args.by])
        rows = report_rows(a for s in sets for a in s.values())
    return render(rows, args.by, args.form, args.window)


def _allocation(base: str, token: str | None, **params: str) -> list[dict[str, dict[str, Any]]]:
    data: list[dict[str, dict[str, Any]]] = get_data(base, "/model/allocation", token=token,
                                                     **params)
    return data
