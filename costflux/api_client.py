"""Reading a worker's HTTP API from the command line (``costflux report``, ``costflux advise``)."""

from __future__ import annotations

import sys
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

import httpx

from costflux.core.errors import UnavailableError
from costflux.http_clients import client

__all__ = ["WorkerUnreachable", "get_data", "get_json", "print_from_worker",
           "read_from_worker"]

T = TypeVar("T")


class WorkerUnreachable(UnavailableError, OSError):
    """The worker's HTTP API gave no answer (refused, timed out, reset); an OSError, as the
    urllib errors it replaces were, for callers that catch those."""


def read_from_worker(command: str, url: str, produce: Callable[[], T]) -> tuple[T | None, int]:
    """(what ``produce`` builds from the worker's answers, 0), or (None, the exit status):
    2 for a bad query (the API's own message), 1 when the worker cannot be reached; the
    reason is printed."""
    try:
        return produce(), 0
    except (ValueError, LookupError) as exc:
        print(f"costflux {command}: {exc}", file=sys.stderr)
        return None, 2
    except OSError as exc:  # WorkerUnreachable among them
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
    return get_json(base, path, token=token, params=params)["data"]


def get_json(
    base: str, path: str, *, token: str | None = None, params: Mapping[str, str] | None = None,
    timeout_s: float = 60, transport: httpx.BaseTransport | None = None,
) -> Any:
    """The JSON answer to a GET of ``path`` (which may hold a query) on the worker at ``base``.

    An answer other than 2xx is a ValueError with the API's own message (401: set the token);
    no answer at all is a WorkerUnreachable.
    """
    url = f"{base.rstrip('/')}{path}"
    if not url.startswith(("http://", "https://")):
        raise ValueError(f"--url {base!r}: expected http://host:port")
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    try:
        with client(timeout_s=timeout_s, headers=headers, follow_redirects=True,
                    transport=transport) as http:
            response = http.get(url, params=params or None)
    except httpx.TransportError as exc:
        raise WorkerUnreachable(str(exc) or type(exc).__name__) from None
    except httpx.TooManyRedirects:
        raise ValueError(f"{base}: too many redirects") from None
    if response.status_code == 401:
        raise ValueError(f"{base} requires its HTTP token: set COSTFLUX_HTTP_TOKEN (or "
                         "COSTFLUX_HTTP_TOKEN_FILE)" + (" to the right one" if token else ""))
    if not response.is_success:
        raise ValueError(_message(response))  # the API's 400 says what is wrong
    return response.json()


def _message(response: httpx.Response) -> str:
    fallback = f"HTTP Error {response.status_code}: {response.reason_phrase}"
    try:
        body = response.json()
    except ValueError:  # not the API's JSON (a proxy's page)
        return fallback
    return str(body.get("message", fallback)) if isinstance(body, dict) else fallback
