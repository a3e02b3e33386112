"""The examples in docstrings run, so they cannot drift from the code: the pure core's, the
schemas', the gateway's, the cache's and the commands', and the settings'."""

from __future__ import annotations

import doctest
import importlib
import pkgutil

import pytest

import costflux.cache
import costflux.cli
import costflux.core
import costflux.gateway
import costflux.schemas

MODULES = sorted(
    [f"{package.__name__}.{info.name}"
     for package in (costflux.core, costflux.schemas, costflux.gateway, costflux.cache,
                     costflux.cli)
     for info in pkgutil.iter_modules(package.__path__)] + ["costflux.cli", "costflux.settings"]
)


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name: str) -> None:
    result = doctest.testmod(importlib.import_module(name), optionflags=doctest.ELLIPSIS)
    assert result.failed == 0
