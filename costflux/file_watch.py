"""Values a running process builds from files and rebuilds when they change (prices, rules,
budgets), keeping the last good value when a change is invalid."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Generic, TypeVar

__all__ = ["ReloadedFiles", "file_stamp"]

log = logging.getLogger(__name__)

_T = TypeVar("_T")
_Stamp = tuple[float, int] | None


def file_stamp(path: Path | None) -> _Stamp:
    """Modification time and size, None when unset or unreadable. Kubernetes swaps a
    ConfigMap's files through a symlink; stat follows it, so a swap changes the stamp."""
    if path is None:
        return None
    try:
        info = path.stat()
    except OSError:
        return None
    return (info.st_mtime, info.st_size)


class ReloadedFiles(Generic[_T]):
    """``load()``'s value; ``reload_if_changed`` rebuilds it when one of ``paths`` changed,
    and keeps the last good value (logging the error, which names file and field) when the
    new files raise one of ``errors``. At start-up the error propagates: a bad file stops
    the process there, before it serves anything."""

    def __init__(self, what: str, paths: Sequence[Path | None], load: Callable[[], _T],
                 errors: tuple[type[Exception], ...]) -> None:
        self._what = what
        self._paths = tuple(paths)
        self._load = load
        self._errors = errors
        self._value = load()
        self._stamps = self._current_stamps()
        self.last_error: str | None = None

    def current(self) -> _T:
        return self._value

    def reload_if_changed(self) -> bool:
        stamps = self._current_stamps()
        if stamps == self._stamps:
            return False
        self._stamps = stamps
        try:
            self._value = self._load()
        except self._errors as exc:
            self.last_error = str(exc)
            log.error("keeping the last good %s: %s", self._what, exc)
            return False
        self.last_error = None
        log.info("reloaded %s", self._what)
        return True

    def _current_stamps(self) -> tuple[_Stamp, ...]:
        return tuple(file_stamp(path) for path in self._paths)
