"""Reading a worker's HTTP API from the command line (``costflux report``, ``costflux advise``)."""

from __future__ import annotations

import json
import sys
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from typing import Any, TypeVar

__all__ = ["get_data", "print_from_worker", "read_from_worker"]

T = TypeVar("T")


def read_from_worker(command: str, url: str, produce: Callable[[], T]) -> tuple[T | None, int]:
    """(what ``produce`` builds from the worker's answers, 0), or (None, the exit status):
    2 for a bad query (the API's own message), 1 when the worker cannot be reached; the
    reason is printed."""
    try:
        return produce(), 0
    except (ValueError, LookupError) as exc:
        print(f"costflux {command}: {exc}", file=sys.stderr)
        return None, 2
    except (urllib.error.URLError, OSError) as exc:
        print(f"costflux {command}: cannot read {url} ({exc}); is a worker or "
              "`costflux demo` running?", file=sys.stderr)
        return None, 1


def print_from_worker(command: str, url: str, produce: Callable[[], str]) -> int:
    """Print what ``produce`` builds from the worker's answers; the exit status as
    ``read_from_worker`` says."""
    text, status = read_from_worker(command, url, produce)
    if text is not None:
        sys.stdout.write(text)
    return status


def get_data(base: str, path: str, *, token: str | None = None, **params: str) -> Any:
    """The ``data`` of a JSON answer; the API's 400 message as a ValueError. ``token``: the
    worker's bearer token (COSTFLUX_HTTP_TOKEN), sent when set."""
    url = f"{base.rstrip('/')}{path}?{urllib.parse.urlencode(params)}"
    if not url.startswith(("http://", "https://")):
        raise ValueError(f"--url {base!r}: expected http://host:port")
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    try:
        request = urllib.request.Request(url, headers=headers)  # noqa: S310 - checked above
        with urllib.request.urlopen(request, timeout=60) as response:  # noqa: S310
            body = json.load(response)
    except urllib.error.HTTPError as error:
        if error.code == 401:
            raise ValueError(f"{base} requires its HTTP token: set COSTFLUX_HTTP_TOKEN (or "
                             "COSTFLUX_HTTP_TOKEN_FILE)" + (" to the right one" if token
                                                            else "")) from None
        # the API's 400 says what is wrong
        raise ValueError(_message(error)) from None
    return body["data"]


def _message(error: urllib.error.HTTPError) -> str:
    try:
        return str(json.load(error).get("message", error))
    except ValueError:  # not the API's JSON (a proxy's page)
        return str(error)
