"""A call that fails for a while: the retry loops' tests share it."""

from __future__ import annotations


class Flaky:
    """Raises each of ``errors`` in turn, then returns ``"ok"``."""

    def __init__(self, *errors: Exception) -> None:
        self.errors = list(errors)
        self.calls = 0

    def __call__(self) -> str:
        self.calls += 1
        if self.errors:
            raise self.errors.pop(0)
        return "ok"
