"""Reading a worker's HTTP API from the command line (``costflux report``, ``costflux advise``)."""

from __future__ import annotations

import json
import sys
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from typing import Any

__all__ = ["get_data", "print_from_worker"]


def print_from_worker(command: str, url: str, produce: Callable[[], str]) -> int:
    """Print what ``produce`` builds from the worker's answers; the exit status: 2 for a bad
    query (the API's own message), 1 when the worker cannot be reached."""
    try:
        text = produce()
    except (ValueError, LookupError) as exc:
        print(f"costflux {command}: {exc}", file=sys.stderr)
        return 2
    except (urllib.error.URLError, OSError) as exc:
        print(f"costflux {command}: cannot read {url} ({exc}); is a worker or "
              "`costflux demo` running?", file=sys.stderr)
        return 1
    sys.stdout.write(text)
    return 0


def get_data(base: str, path: str, **params: str) -> Any:
    """The ``data`` of a JSON answer; the API's 400 message as a ValueError."""
    url = f"{base.rstrip('/')}{path}?{urllib.parse.urlencode(params)}"
    if not url.startswith(("http://", "https://")):
        raise ValueError(f"--url {base!r}: expected http://host:port")
    try:
        with urllib.request.urlopen(url, timeout=60) as response:  # noqa: S310 - checked above
            body = json.load(response)
    except urllib.error.HTTPError as error:  # the API's 400 says what is wrong
        raise ValueError(json.load(error).get("message", str(error))) from None
    return body["data"]
