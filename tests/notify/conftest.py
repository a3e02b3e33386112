"""Fixtures of the notify tests: scripted webhook receivers, closed after each test."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.notify.receiver import Receiver


@pytest.fixture
def receiver_for() -> Iterator[type[Receiver]]:
    made: list[Receiver] = []

    class Made(Receiver):
        def __init__(self, script: list[tuple[int, dict[str, str]]]) -> None:
            super().__init__(script)
            made.append(self)

    yield Made
    for receiver in made:
        receiver.close()
