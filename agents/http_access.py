"""Who may read the worker's HTTP surface: anyone, or the holders of one bearer token.

With a token set (``COSTFLUX_HTTP_TOKEN`` or ``_FILE``), every path answers 401 unless the
request carries ``Authorization: Bearer <token>`` or the cost console's session cookie; the
probes (``/healthz``, ``/readyz``) stay open, and so does ``/metrics`` unless
``COSTFLUX_HTTP_PROTECT_METRICS`` is set. A browser cannot add a header to a navigation, so
``/ui`` answers its 401 with a sign-in form that posts the token once to ``/ui/login``; the
answer sets an HttpOnly, SameSite=Strict cookie holding an HMAC of the token (never the
token itself), and every later request of the page carries it.

The token is compared in constant time and never appears in a log line, an error or a
response.

>>> access = HttpAccess("0123456789abcdef0123")
>>> access.admits("Bearer 0123456789abcdef0123", None), access.admits("Bearer nope", None)
(True, False)
"""

from __future__ import annotations

import hashlib
import hmac
import html
from collections.abc import Awaitable, Callable
from http.cookies import SimpleCookie

from aiohttp import web

__all__ = ["LOGIN_PATH", "SESSION_COOKIE", "HttpAccess"]

LOGIN_PATH = "/ui/login"
SESSION_COOKIE = "costflux_session"
#: Always open: Kubernetes probes carry no credentials.
_PROBES = frozenset({"/healthz", "/readyz"})
#: What the session cookie is an HMAC of (keyed with the token): a new version here, or a new
#: token, signs every browser out.
_SESSION_CONTEXT = b"costflux ui session v1"

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class HttpAccess:
    """The worker's access rule: open (no token) or bearer token."""

    def __init__(self, token: str | None, *, protect_metrics: bool = False) -> None:
        self._token = token.encode() if token else None
        self._protect_metrics = protect_metrics
        self._session = (hmac.new(self._token, _SESSION_CONTEXT, hashlib.sha256).hexdigest()
                         .encode() if self._token else None)

    def __repr__(self) -> str:  # never the token
        state = "token" if self._token else "open"
        return f"HttpAccess({state}, protect_metrics={self._protect_metrics})"

    @property
    def enabled(self) -> bool:
        return self._token is not None

    def is_open(self, path: str) -> bool:
        """Paths anyone may read whatever the token."""
        if self._token is None or path in _PROBES or path == LOGIN_PATH:
            return True
        return path == "/metrics" and not self._protect_metrics

    def admits(self, authorization: str | None, cookie: str | None) -> bool:
        """Whether an ``Authorization`` header or a session cookie value carries the token."""
        if self._token is None:
            return True
        if authorization is not None:
            scheme, _, credentials = authorization.partition(" ")
            if scheme.lower() == "bearer" and hmac.compare_digest(
                    credentials.strip().encode(), self._token):
                return True
        assert self._session is not None
        return cookie is not None and hmac.compare_digest(cookie.encode(), self._session)

    def token_matches(self, candidate: str) -> bool:
        """Whether a token typed into the sign-in form is the token (constant time)."""
        return self._token is not None and hmac.compare_digest(
            candidate.strip().encode(), self._token)

    def session_cookie(self) -> str:
        """The cookie value a signed-in browser presents: an HMAC of the token, not the token."""
        assert self._session is not None, "no token, no session"
        return self._session.decode()

    def middleware(self) -> Callable[[web.Request, Handler], Awaitable[web.StreamResponse]]:
        """An aiohttp middleware refusing what the token does not admit, before any handler."""

        @web.middleware
        async def require_token(request: web.Request, handler: Handler) -> web.StreamResponse:
            if self.is_open(request.path) or self.admits(
                    request.headers.get("Authorization"), _cookie(request)):
                return await handler(request)
            return refusal(request)

        return require_token


def _cookie(request: web.Request) -> str | None:
    # aiohttp's request.cookies skips a malformed Cookie header silently; same here.
    header = request.headers.get("Cookie")
    if not header:
        return None
    morsel = SimpleCookie(header).get(SESSION_COOKIE)
    return morsel.value if morsel is not None else None


def refusal(request: web.Request, *, wrong_token: bool = False) -> web.Response:
    """401: the sign-in form for the console's pages, a JSON answer for everything else."""
    headers = {"WWW-Authenticate": 'Bearer realm="costflux"', "Cache-Control": "no-store"}
    if request.path == "/ui" or request.path.startswith("/ui/"):
        return web.Response(status=401, text=login_page(wrong_token), content_type="text/html",
                            headers=headers)
    return web.json_response(
        {"code": 401, "message": "a bearer token is required: send Authorization: Bearer "
         "<COSTFLUX_HTTP_TOKEN>"}, status=401, headers=headers)


def login_page(wrong_token: bool) -> str:
    """The sign-in form: self-contained (no script, no style sheet: those need the token)."""
    notice = ("<p role=alert style='color:#b3261e'>That is not the token.</p>"
              if wrong_token else "")
    return f"""<!doctype html>
<html lang=en><head><meta charset=utf-8><title>costflux: sign in</title>
<meta name=viewport content="width=device-width, initial-scale=1"><link rel=icon href="data:,">
</head><body style="font:16px system-ui,sans-serif;max-width:28rem;margin:10vh auto;padding:0 1rem">
<h1 style="font-size:1.4rem">costflux cost console</h1>
<p>This worker requires its HTTP token (<code>COSTFLUX_HTTP_TOKEN</code>).</p>{notice}
<form method=post action="{html.escape(LOGIN_PATH)}">
<label>Token <input name=token type=password autocomplete=current-password required autofocus
 style="width:100%;font:inherit;padding:.4rem;margin:.3rem 0 .8rem"></label>
<button type=submit style="font:inherit;padding:.4rem 1.2rem">Sign in</button>
</form></body></html>"""


async def sign_in(access: HttpAccess, request: web.Request) -> web.Response:
    """``/ui/login``: GET shows the form, POST checks the token once and sets the session
    cookie, then sends the browser to the console."""
    if not access.enabled:
        return _to_console()
    if request.method != "POST":
        if access.admits(request.headers.get("Authorization"), _cookie(request)):
            return _to_console()
        return web.Response(text=login_page(False), content_type="text/html",
                            headers={"Cache-Control": "no-store"})
    form = await request.post()
    candidate = form.get("token")
    if not isinstance(candidate, str) or not access.token_matches(candidate):
        return refusal(request, wrong_token=True)
    answer = _to_console()
    # A session cookie (no Max-Age): gone when the browser closes. Secure where the request
    # itself came over TLS; SameSite=Strict keeps other sites' pages from using it.
    answer.set_cookie(SESSION_COOKIE, access.session_cookie(), path="/", httponly=True,
                      samesite="Strict", secure=request.secure)
    return answer


def _to_console() -> web.Response:
    return web.Response(status=303, headers={"Location": "/ui/", "Cache-Control": "no-store"})
