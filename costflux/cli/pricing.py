"""``costflux pricing``: import LiteLLM's price catalogue, check a price file."""

from __future__ import annotations

import argparse
import json
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from costflux.core.litellm_import import import_litellm
from costflux.core.pricing import PricingError
from costflux.core.pricing_yaml import dump_pricing_yaml
from costflux.pricing_source import load_pricing_file
from costflux.settings import Settings

__all__ = ["add_pricing_commands"]


def add_pricing_commands(commands: Any) -> None:
    """Add ``pricing import-litellm`` and ``pricing check`` to the top-level subcommands."""
    pricing = commands.add_parser("pricing", help="import and check price files")
    actions = pricing.add_subparsers(dest="subcommand", required=True, metavar="ACTION")

    importer = actions.add_parser(
        "import-litellm", help="convert LiteLLM's model_prices_and_context_window.json to YAML"
    )
    importer.add_argument("file", type=Path, help="the LiteLLM JSON catalogue")
    importer.add_argument("-o", "--output", type=Path, default=None,
                          help="write the price file here (default: stdout)")
    importer.add_argument("--effective-from", type=_rfc3339, default=None, metavar="RFC3339",
                          help="prices apply from this time (unpriced before), e.g. "
                               "2025-07-01T00:00:00Z")
    importer.add_argument("--provider", type=_names, default=None, metavar="P1,P2",
                          help="keep only these litellm_provider values, e.g. openai,anthropic")
    importer.set_defaults(run=_run_import)

    check = actions.add_parser("check", help="parse a price file (or ConfigMap); exit 2 if bad")
    check.add_argument("file", type=Path)
    check.set_defaults(run=_run_check)


def _rfc3339(text: str) -> datetime:
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not RFC 3339") from None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def _names(text: str) -> frozenset[str]:
    return frozenset(name.strip() for name in text.split(",") if name.strip())


def _run_import(args: argparse.Namespace, settings: Settings) -> int:
    try:
        catalogue = json.loads(args.file.read_text(encoding="utf-8"))
    except OSError as exc:
        raise PricingError(f"{args.file}: cannot read the catalogue ({exc.strerror})") from None
    except ValueError as exc:  # JSONDecodeError and UnicodeDecodeError
        raise PricingError(f"{args.file}: not valid JSON ({exc})") from None
    if not isinstance(catalogue, dict):
        raise PricingError(f"{args.file}: expected a JSON object of model -> prices")
    result = import_litellm(catalogue, args.effective_from, args.provider)
    text = dump_pricing_yaml(result.document, _header(args, catalogue))
    if args.output is None:
        sys.stdout.write(text)
    else:
        args.output.write_text(text, encoding="utf-8")
    kept = len(result.document["model_costs"])
    report = [f"costflux pricing: imported {kept} models, rounded {result.rounded} prices to "
              f"1e-12 $/token, skipped {result.skipped.total()} entries:"]
    report += [f"{count:7d}  {reason}" for reason, count in result.skipped.most_common()]
    if result.unrepresented:
        report.append("price keys of imported models the price file cannot represent "
                      "(models billed without them):")
        report += [f"{count:7d}  {key}" for key, count in result.unrepresented.most_common()]
    print("\n".join(report), file=sys.stderr)
    return 0


def _header(args: argparse.Namespace, catalogue: dict[str, Any]) -> list[str]:
    """Where the prices came from, so a reviewer of the file can trace and refresh them."""
    today = datetime.now(UTC).date().isoformat()
    lines = [
        f"Imported from LiteLLM's price catalogue {args.file.name} on {today} "
        "by `costflux pricing import-litellm`.",
        "Source: https://github.com/BerriAI/litellm model_prices_and_context_window.json (MIT).",
        "Prices in $/1K tokens; tiers price a whole request whose prompt exceeds above_tokens.",
    ]
    if isinstance(catalogue.get("last_updated"), str):
        lines.append(f"Catalogue last_updated: {catalogue['last_updated']}")
    if args.effective_from is not None:
        lines.append(f"Effective from: {args.effective_from.isoformat()}")
    if args.provider is not None:
        lines.append(f"Providers: {', '.join(sorted(args.provider))}")
    return lines


def _run_check(args: argparse.Namespace, settings: Settings) -> int:
    book = load_pricing_file(args.file)  # a PricingError is reported by main, exit 2
    others = f", other costs: {', '.join(book.other_costs)}" if book.other_costs else ""
    print(f"{args.file}: ok: {len(book.models)} models, {len(book.gpu_types)} GPU types{others}")
    return 0
