"""costflux's own exceptions: one base, a few kinds, each with the exit code the CLI gives it.

The codes follow sysexits(3) where one fits (``costflux`` exits with them, see
docs/commands-and-api.md)::

    1   CostfluxError     anything else costflux refuses or could not do
    2   ConfigError       a setting or a configuration file (prices, rules, budgets...) to fix
    65  InputError        the data given (a trace, a payload, a report) cannot be read
    69  UnavailableError  a broker, Redis, an upstream or a device did not answer

Errors keep ``ValueError`` or ``RuntimeError`` as a second base where callers catch those.
Their messages name the place and the fix and never hold a secret: the CLI prints them as is.
"""

from __future__ import annotations

from typing import ClassVar

__all__ = ["ConfigError", "CostfluxError", "InputError", "UnavailableError"]


class CostfluxError(Exception):
    """Base of every error costflux raises on purpose."""

    exit_code: ClassVar[int] = 1


class ConfigError(CostfluxError, ValueError):
    """A setting or configuration file is missing or invalid; the message names the fix."""

    exit_code: ClassVar[int] = 2


class InputError(CostfluxError, ValueError):
    """Data given to costflux cannot be read; the message names the place (EX_DATAERR)."""

    exit_code: ClassVar[int] = 65


class UnavailableError(CostfluxError, RuntimeError):
    """A service costflux needs did not answer or is missing (EX_UNAVAILABLE)."""

    exit_code: ClassVar[int] = 69
