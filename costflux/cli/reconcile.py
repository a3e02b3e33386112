"""``costflux reconcile``: costflux's cost against a provider's own cost report, per day and
model (and project), read from a running worker's allocation API.

Exit status: 0 every row within the tolerance, 1 a row off by more, 2 bad input (the report,
a map file or an option; the message names the file, the place and the fix), 3 the worker
could not be read.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import yaml

from costflux.api_client import get_data
from costflux.core.reconcile import (
    FORMATS,
    OUTPUTS,
    AllocationQuery,
    ReportError,
    costflux_costs,
    parse_amount_option,
    parse_name_map,
    parse_report,
    plan_queries,
    reconcile,
    render,
)
from costflux.settings import Settings

__all__ = ["add_reconcile_command"]

EXIT_BAD_INPUT = 2
EXIT_NO_WORKER = 3


def add_reconcile_command(commands: Any) -> None:
    command = commands.add_parser(
        "reconcile", help="compare costflux's cost with a provider's cost report, per day and "
        "model; exit 1 when they differ by more than the tolerance")
    command.add_argument("--report", required=True, metavar="FILE",
                         help="the provider's cost report")
    command.add_argument("--format", choices=FORMATS, default=None, dest="report_format",
                         help="the report's format (default: told from its content)")
    command.add_argument("--url", default="http://127.0.0.1:8080",
                         help="the worker's HTTP address (default: the demo's)")
    command.add_argument("--tolerance", default="0.5", metavar="PERCENT",
                         help="largest |difference| / provider allowed, in %% (default 0.5)")
    command.add_argument("--min-difference", default="0", metavar="DOLLARS",
                         help="differences up to this many dollars always pass (default 0)")
    command.add_argument("--output", choices=OUTPUTS, default="table")
    command.add_argument("--project-map", metavar="FILE",
                         help="YAML/JSON: provider project or workspace id -> costflux project "
                         "label (default: the same name)")
    command.add_argument("--model-map", metavar="FILE",
                         help="YAML/JSON: provider model name -> costflux model (default: the "
                         "same name)")
    command.add_argument("--model", action="append", default=[], metavar="PATTERN",
                         help="compare only models matching this glob (repeatable), e.g. "
                         "'gpt-*'")
    command.add_argument("--cost-column", default=None, metavar="COLUMN",
                         help="focus: the cost column (default EffectiveCost, else BilledCost)")
    command.add_argument("--project-tag", default="project", metavar="KEY",
                         help="focus: the Tags key holding the project (default project)")
    command.set_defaults(run=_run_reconcile)


def _run_reconcile(args: argparse.Namespace, settings: Settings) -> int:
    try:
        tolerance = parse_amount_option(args.tolerance, "--tolerance")
        min_difference = parse_amount_option(args.min_difference, "--min-difference")
        report = parse_report(_read(args.report, "--report"), args.report_format, args.report,
                              cost_column=args.cost_column, project_tag=args.project_tag)
        project_map = _name_map(args.project_map, "--project-map")
        model_map = _name_map(args.model_map, "--model-map")
        if not args.url.startswith(("http://", "https://")):
            raise ReportError(f"--url {args.url!r}: expected http://host:port")
    except ReportError as exc:
        return _fail(str(exc), EXIT_BAD_INPUT)
    queries = plan_queries(report.periods, report.by_project)
    try:
        token = settings.http_token_value()
        answers = [(query, _allocation_sets(args.url, token, query)) for query in queries]
        side = costflux_costs(answers, report.by_project)
    except OSError as exc:  # costflux.api_client.WorkerUnreachable included
        return _fail(f"cannot read {args.url} ({exc}); is a worker or `costflux demo` "
                     "running?", EXIT_NO_WORKER)
    except ValueError as exc:  # refused (401: no token; 400: an older worker?) or odd answers
        return _fail(f"{args.url}: {exc}", EXIT_NO_WORKER)
    result = reconcile(report, side, tolerance_pct=tolerance, min_difference=min_difference,
                       model_map=model_map, project_map=project_map, models=args.model)
    sys.stdout.write(render(result, args.output))
    if args.output == "csv":  # stdout stays pure CSV
        for note in result.notes:
            print(f"costflux reconcile: note: {note}", file=sys.stderr)
    return result.exit_code


def _allocation_sets(base: str, token: str | None, query: AllocationQuery) -> list[Any]:
    data = get_data(base, "/model/allocation", token=token, **query.params)
    if not isinstance(data, list):
        raise ValueError(f"the worker answered {data!r} for /model/allocation, expected a list")
    return data


def _read(path: str, flag: str) -> str:
    try:
        return Path(path).read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise ReportError(f"{path}: byte {exc.start} is not UTF-8; save the file as UTF-8 "
                          "text") from None
    except OSError as exc:
        raise ReportError(f"{flag} {path}: cannot read it ({exc.strerror or exc})") from None


def _name_map(path: str | None, flag: str) -> dict[str, str]:
    if path is None:
        return {}
    text = _read(path, flag)
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        problem = getattr(exc, "problem", None) or exc
        raise ReportError(f"{path}: {where}not valid YAML or JSON ({problem}); write "
                          "`provider-name: costflux-name` lines") from None
    return parse_name_map(data, path, flag)


def _fail(message: str, code: int) -> int:
    print(f"costflux reconcile: {message}", file=sys.stderr)
    return code
