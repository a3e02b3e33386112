"""httpx clients as costflux builds them, for every HTTP call it makes as a client.

httpx logs each request at INFO with its whole URL; a webhook URL is a credential, so that log
keeps the scheme, host and port only (``https://hooks.slack.com/…``). ``transport`` is the
test seam: ``httpx.MockTransport(handler)`` answers without a network.
"""

from __future__ import annotations

import functools
import logging
import re
import ssl
from collections.abc import Mapping

import httpx

__all__ = ["client", "no_answer_reason"]


def client(
    *,
    timeout_s: float,
    headers: Mapping[str, str] | None = None,
    follow_redirects: bool = False,
    transport: httpx.BaseTransport | None = None,
) -> httpx.Client:
    """A synchronous client; ``timeout_s`` bounds connecting, each read and each write."""
    return httpx.Client(timeout=timeout_s, headers=headers, follow_redirects=follow_redirects,
                        transport=transport, verify=_tls_context())


@functools.cache
def _tls_context() -> ssl.SSLContext:
    """httpx's default TLS context (certifi's CAs, or $SSL_CERT_FILE / $SSL_CERT_DIR), made
    once per process: loading the CAs is most of what a client costs (~20 ms), and a client is
    made per request (each scrape, alert, API call, demo poll). Made on first use, not import."""
    return httpx.create_ssl_context()


def no_answer_reason(exc: httpx.TransportError) -> str:
    """Why a request got no answer, as a short type name that holds no URL: ``TimeoutError``,
    else the operating system's error (``ConnectionRefusedError``), else httpx's own."""
    if isinstance(exc, httpx.TimeoutException):
        return "TimeoutError"
    cause: BaseException | None = exc
    while cause is not None:
        if isinstance(cause, OSError):
            return type(cause).__name__
        cause = cause.__cause__ or cause.__context__
    return type(exc).__name__


class _HostOnlyUrls(logging.Filter):
    """Shows httpx's request log with each URL cut to its scheme, host and port.

    It cuts the formatted message, not the record's arguments: another filter on the same
    logger may have formatted them into the message already (LiteLLM's does, and it is on this
    logger wherever LiteLLM is imported)."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.msg = _URL_PATH.sub(r"\1\2/…", record.getMessage())
        record.args = ()
        return True


#: A URL: its scheme (group 1), any user and password, its host and port (group 2), then its
#: path, query and fragment.
_URL_PATH = re.compile(
    r"\b([a-z][a-z0-9+.-]*://)(?:[^/\s\"'?#@]*@)?([^/\s\"'?#@]+)(?:[/?#][^\s\"']*)?",
    re.IGNORECASE,
)


def _hide_paths_in_the_request_log() -> None:
    request_log = logging.getLogger("httpx")
    if not any(isinstance(f, _HostOnlyUrls) for f in request_log.filters):
        request_log.addFilter(_HostOnlyUrls())


# At import: every client is made here, so no request is logged before the filter is on.
_hide_paths_in_the_request_log()
