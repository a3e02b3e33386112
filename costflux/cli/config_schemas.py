"""JSON Schemas of the configuration files, from the models that check them.

Written to ``schemas/json/`` beside the wire contracts by ``costflux schemas`` (a test fails
when they drift), for editors and CI to validate a file before costflux reads it: a YAML file
names its schema with ``# yaml-language-server: $schema=<path or URL of the .json>``.
"""

from __future__ import annotations

from pydantic import BaseModel

from costflux.core.advice_config import AdviceFile
from costflux.core.alert_rules import RulesFile
from costflux.core.budgets import BudgetsFile
from costflux.core.pricing_file import PricingFile
from costflux.gateway.identity import KeysFile

__all__ = ["CONFIG_FILES"]

#: file name -> the model of the configuration file it describes.
CONFIG_FILES: dict[str, type[BaseModel]] = {
    "pricing_file.v1.json": PricingFile,
    "rules_file.v1.json": RulesFile,
    "budgets_file.v1.json": BudgetsFile,
    "advice_file.v1.json": AdviceFile,
    "keys_file.v1.json": KeysFile,
}

