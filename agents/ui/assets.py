"""The cost console's files, held in memory and served gzip-compressed where the browser takes
it: our own (``agents/ui/static``) and uPlot, the chart library.

uPlot (MIT, github.com/leeoniya/uPlot) comes from the ``youplot`` wheel that ``pip install``
brings, read as a file from the installed distribution (youplot's Python code is never
imported). That wheel is one small publisher's, so the files are pinned to the bytes of
uPlot's own 1.6.31 release: anything else is refused, not served to browsers.
"""

from __future__ import annotations

import gzip
import hashlib
import logging
from dataclasses import dataclass
from importlib import metadata, resources
from importlib.resources.abc import Traversable
from pathlib import Path, PurePosixPath

__all__ = ["UPLOT_FILES", "Asset", "Assets", "load_assets"]

log = logging.getLogger(__name__)

#: Served name -> (file in the youplot distribution, SHA-256 of uPlot 1.6.31's
#: dist/uPlot.iife.min.js and dist/uPlot.min.css, as tagged upstream).
UPLOT_FILES = {
    "uplot.js": ("youplot/vendor/uplot.iife.min.js",
                 "2d27e8ad3d228164525ce213f9dc716f39b4e3aee0cc773fb3491c96cf4921a2"),
    "uplot.css": ("youplot/vendor/uplot.min.css",
                  "df630c6a8d6f8eeaff264b50f73ce5b114f646ffd9a0bb74f049b0a00135fa04"),
}
_CHART_DISTRIBUTION = "youplot"

_TYPES = {
    ".html": "text/html", ".js": "text/javascript", ".css": "text/css",
    ".svg": "image/svg+xml", ".json": "application/json",
}


@dataclass(frozen=True, slots=True)
class Asset:
    """One file as served: its bytes, their gzip form (when smaller) and a validator."""

    content_type: str
    body: bytes
    gzipped: bytes | None
    etag: str

    @classmethod
    def of(cls, name: str, body: bytes) -> Asset:
        content_type = _TYPES.get(PurePosixPath(name).suffix, "application/octet-stream")
        # mtime=0: the same bytes give the same gzip stream, so every worker agrees.
        packed = gzip.compress(body, compresslevel=9, mtime=0)
        etag = '"' + hashlib.sha256(body).hexdigest()[:20] + '"'
        return cls(content_type, body, packed if len(packed) < len(body) else None, etag)


@dataclass(frozen=True, slots=True)
class Assets:
    """Every file of the console by its path under /ui/static/, and what could not be loaded."""

    files: dict[str, Asset]
    problems: tuple[str, ...]


def load_assets() -> Assets:
    """Read the console's files and uPlot once, at start-up."""
    files: dict[str, Asset] = {}
    root = resources.files("costflux.agents.ui").joinpath("static")
    for path in _walk(root, ""):
        files[path] = Asset.of(path, root.joinpath(path).read_bytes())
    problems: list[str] = []
    for name, (inside, sha256) in UPLOT_FILES.items():
        body, problem = _chart_file(inside, sha256)
        if body is None:
            problems.append(problem)
            log.error("cost console: %s; /ui will show the tables without charts", problem)
        else:
            files[name] = Asset.of(name, body)
    return Assets(files, tuple(problems))


def _walk(folder: Traversable, prefix: str) -> list[str]:
    found = []
    for entry in folder.iterdir():
        if entry.is_dir():
            found += _walk(entry, f"{prefix}{entry.name}/")
        elif not entry.name.startswith("."):
            found.append(prefix + entry.name)
    return found


def _chart_file(inside: str, sha256: str) -> tuple[bytes | None, str]:
    """uPlot's file from the installed youplot distribution, if it is the pinned release's."""
    try:
        located = metadata.distribution(_CHART_DISTRIBUTION).locate_file(inside)
        body = Path(str(located)).read_bytes()  # a path on disk for an installed wheel
    except (metadata.PackageNotFoundError, OSError) as exc:
        return None, (f"{inside} not found ({type(exc).__name__}): install costflux's "
                      f"dependencies (pip install costflux, which brings {_CHART_DISTRIBUTION})")
    if hashlib.sha256(body).hexdigest() != sha256:
        return None, (f"{inside} is not uPlot 1.6.31's release file (SHA-256 differs): pin "
                      f"{_CHART_DISTRIBUTION}==1.0.0, or check the new file against uPlot's "
                      "tagged release and update agents/ui/assets.py")
    return body, ""
