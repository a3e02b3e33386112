"""The gateway: aiohttp in front of an OpenAI- or Anthropic-compatible upstream, one usage
event per request.

Routes (costflux.gateway.usage.ROUTES): OpenAI chat completions, completions, responses and
embeddings, and Anthropic messages. Each request is first admitted by the budget guard
(costflux.gateway.guard) when there is one: a hard budget reached answers 429 before anything
goes upstream. With the semantic cache on, ``/v1/chat/completions`` and ``/v1/completions``
are answered from it when ``policy.classify`` allows it and a stored prompt of the same
partition is similar enough; otherwise they go upstream, and a successful non-streamed answer
with usage is stored. Streams are passed through (never cached), their usage read from the
final chunk as it passes. Every other path is passed through untouched. The client's
credentials go upstream as they are and nowhere else: not into Redis, events, metrics or logs
(the guard keeps a SHA-256 prefix of the key).
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Final

import aiohttp
import orjson
from aiohttp import web
from redis.exceptions import RedisError

from costflux.cache.policy import Bypass, TokenUsage, classify, labels_from_headers
from costflux.cache.usage import usage_event
from costflux.gateway.guard import Admission, BudgetGuard, Refusal
from costflux.gateway.usage import ROUTES, Route, StreamUsage, answer_usage, request_model

if TYPE_CHECKING:  # the cache needs the ``cache`` extra; the gateway without it does not
    from costflux.gateway.semantic import Miss, SemanticCache

__all__ = ["CACHE_HEADER", "Gateway", "ProxyConfig"]

log = logging.getLogger("costflux.gateway")

CACHE_HEADER: Final = "X-Costflux-Cache"
_HOP_BY_HOP: Final = frozenset({
    "connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te", "trailer",
    "trailers", "transfer-encoding", "upgrade", "host", "content-length",
})
# aiohttp's client decompresses answers, so their encoding header no longer applies.
_NOT_RETURNED: Final = _HOP_BY_HOP | {"content-encoding"}
_NOT_FORWARDED: Final = _HOP_BY_HOP | {"accept-encoding"}
#: The routes the semantic cache may answer.
_CACHED_ROUTES: Final = frozenset({"chat", "completions"})
#: The routes whose streams report usage only when asked to (``stream_options``).
_STREAM_USAGE_OPTION: Final = frozenset({"chat", "completions"})

Publish = Callable[[dict[str, Any]], None]


@dataclass(frozen=True, slots=True)
class ProxyConfig:
    """Plain values the proxy runs with."""

    upstream: str
    label_defaults: Mapping[str, str] = field(default_factory=dict)
    upstream_timeout_s: float = 600.0
    # Ask chat and completions streams for their usage (``stream_options.include_usage``):
    # without it OpenAI's streams report none, and the request would count as free.
    stream_usage: bool = False


@dataclass(slots=True)
class _Outcome:
    """What one request did, for its usage event."""

    admission: Admission
    usage: dict[str, int] | None = None
    ok: bool = True
    cache_hit: bool = False

    @property
    def model(self) -> str:
        return self.admission.model


class Gateway:
    """Serve the gateway's routes; ``app()`` is the aiohttp application."""

    def __init__(self, config: ProxyConfig, publish: Publish, *,
                 cache: SemanticCache | None = None, guard: BudgetGuard | None = None,
                 metrics: Callable[[], bytes] | None = None) -> None:
        self._config = config
        self._upstream = config.upstream.rstrip("/")
        self._upstream_has_v1 = self._upstream.endswith("/v1")
        self._cache = cache
        self._guard = guard
        self._metrics = metrics
        self._publish = publish
        self._session: aiohttp.ClientSession | None = None

    def app(self) -> web.Application:
        """The aiohttp application (index rebuilt from Redis on start-up)."""
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_get("/healthz", self._healthz)
        if self._metrics is not None:
            app.router.add_get("/metrics", self._metrics_page)
        for path, route in ROUTES.items():
            app.router.add_post(path, self._completion_handler(route))
        app.router.add_route("*", "/{tail:.*}", self._pass_through)
        app.on_startup.append(self._start)
        app.on_cleanup.append(self._stop)
        return app

    async def _start(self, app: web.Application) -> None:
        self._session = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=self._config.upstream_timeout_s),
        )
        if self._cache is not None:
            await self._cache.start()

    async def _stop(self, app: web.Application) -> None:
        if self._cache is not None:
            await self._cache.stop()
        if self._session is not None:
            await self._session.close()

    async def _healthz(self, request: web.Request) -> web.Response:
        cache = self._cache
        state = {} if cache is None else {"indexed": cache.indexed, **cache.stats}
        return web.json_response({"status": "ok", **state})

    async def _metrics_page(self, request: web.Request) -> web.Response:
        assert self._metrics is not None
        return web.Response(body=self._metrics(), content_type="text/plain",
                            charset="utf-8")

    def _completion_handler(self, route: Route) -> Callable[[web.Request], Any]:
        async def handle(request: web.Request) -> web.StreamResponse:
            return await self._completion(request, route)
        return handle

    async def _completion(self, request: web.Request, route: Route) -> web.StreamResponse:
        started = time.perf_counter()
        raw = await request.read()
        try:
            body = orjson.loads(raw)
        except orjson.JSONDecodeError:
            body = None
        if not isinstance(body, dict):
            body = {}
        admitted = await self._admit(request, route, body, len(raw))
        if isinstance(admitted, Refusal):
            return web.json_response(admitted.body, status=admitted.status,
                                     headers=admitted.headers)
        outcome = _Outcome(admitted)
        if not body:
            return await self._forward(request, raw, outcome, started, miss=None,
                                       decision="not_json")
        if admitted.body_patch or "cache" in body:  # "cache" is ours, not the upstream's
            body.update(admitted.body_patch or {})
            raw = orjson.dumps({k: v for k, v in body.items() if k != "cache"})
        if body.get("stream") is True:
            if self._config.stream_usage and route in _STREAM_USAGE_OPTION:
                raw = orjson.dumps(with_stream_usage(body))
            return await self._stream(request, raw, outcome, started)
        cache = self._cache
        if cache is None or route not in _CACHED_ROUTES:
            return await self._forward(request, raw, outcome, started, miss=None,
                                       decision="bypass:route" if cache else "off")
        decision = classify(route, body, admitted.labels,  # type: ignore[arg-type]
                            cache.policy)
        if isinstance(decision, Bypass):
            cache.stats["bypassed"] += 1
            return await self._forward(request, raw, outcome, started, miss=None,
                                       decision=f"bypass:{decision.reason}")
        try:
            found = await cache.look_up(decision)
        except RedisError as exc:
            # The cache is an optimisation: without its Redis, requests still get answers.
            cache.redis_failed("look-up", exc)
            return await self._forward(request, raw, outcome, started, miss=None,
                                       decision="bypass:cache_unavailable")
        from costflux.gateway.semantic import Hit  # loaded already: the cache is on

        if isinstance(found, Hit):
            outcome.admission.model = found.answer.model
            outcome.usage, outcome.cache_hit = found.answer.usage.fields(), True
            await self._emit(outcome, started)
            return web.Response(body=found.answer.response, content_type="application/json",
                                headers={CACHE_HEADER: "hit",
                                         f"{CACHE_HEADER}-Similarity": f"{found.similarity:.4f}",
                                         **outcome.admission.headers})
        return await self._forward(request, raw, outcome, started, miss=found, decision="miss")

    async def _admit(self, request: web.Request, route: Route, body: dict[str, Any],
                     size: int) -> Admission | Refusal:
        model = request_model(route, body) or "unknown"
        if self._guard is None:
            labels = labels_from_headers(request.headers, self._config.label_defaults)
            return Admission(f"gw:{uuid.uuid4().hex}", labels, model)
        client_labels = labels_from_headers(request.headers, {})
        return await self._guard.admit(route, body, size, request.headers, client_labels,
                                       model)

    async def _forward(self, request: web.Request, raw: bytes, outcome: _Outcome,
                       started: float, *, miss: Miss | None,
                       decision: str) -> web.Response:
        try:
            status, headers, body = await self._upstream_call(request, raw)
        except (TimeoutError, aiohttp.ClientError) as exc:
            return await self._upstream_failed(exc, outcome, started)
        answer = _json_object(body)
        outcome.ok = 200 <= status < 300
        outcome.usage = answer_usage(_route(request), answer) if answer is not None else None
        if miss is not None and status == 200 and outcome.usage is not None:
            assert self._cache is not None
            try:
                await self._cache.remember(miss, body, outcome.model,
                                           TokenUsage.of(outcome.usage))
            except RedisError as exc:
                self._cache.redis_failed("store", exc)
        await self._emit(outcome, started)
        headers[CACHE_HEADER] = decision
        headers.update(outcome.admission.headers)
        return web.Response(status=status, body=body, headers=headers)

    async def _upstream_failed(self, exc: Exception, outcome: _Outcome,
                               started: float) -> web.Response:
        """The client's answer when the upstream timed out or could not be reached; the
        request still publishes its (failed) usage event."""
        outcome.ok = False
        await self._emit(outcome, started)
        if not isinstance(exc, TimeoutError):
            log.warning("upstream unreachable: %s", type(exc).__name__)
        return _upstream_error(exc)

    async def _upstream_call(self, request: web.Request,
                             raw: bytes) -> tuple[int, dict[str, str], bytes]:
        assert self._session is not None
        # Redirects (here and in _stream) go back to the client: following them would send
        # its credentials wherever the upstream points.
        async with self._session.request(request.method, self._target(request), data=raw,
                                         headers=_forwarded(request.headers),
                                         allow_redirects=False) as upstream:
            body = await upstream.read()
            return upstream.status, _returned(upstream.headers), body

    async def _stream(self, request: web.Request, raw: bytes, outcome: _Outcome,
                      started: float) -> web.StreamResponse:
        assert self._session is not None
        scanner = StreamUsage(_route(request))
        try:
            async with self._session.post(self._target(request), data=raw,
                                          headers=_forwarded(request.headers),
                                          allow_redirects=False) as upstream:
                response = web.StreamResponse(status=upstream.status,
                                              headers=_returned(upstream.headers))
                response.headers[CACHE_HEADER] = "bypass:stream"
                response.headers.update(outcome.admission.headers)
                await response.prepare(request)
                async for chunk in upstream.content.iter_any():
                    scanner.feed(chunk)
                    await response.write(chunk)
                await response.write_eof()
                outcome.ok = 200 <= upstream.status < 300
        except (TimeoutError, aiohttp.ClientError) as exc:
            return await self._upstream_failed(exc, outcome, started)
        scanner.close()
        outcome.usage = scanner.usage
        if outcome.ok and scanner.usage is None:
            log.warning("a streamed answer reported no usage: its event carries 0 tokens "
                        "(ask for stream_options.include_usage)")
        await self._emit(outcome, started)
        return response

    async def _pass_through(self, request: web.Request) -> web.Response:
        raw = await request.read()
        try:
            status, headers, body = await self._upstream_call(request, raw)
        except (TimeoutError, aiohttp.ClientError) as exc:
            return _upstream_error(exc)
        return web.Response(status=status, body=body, headers=headers)

    def _target(self, request: web.Request) -> str:
        path = request.rel_url.path_qs
        # An upstream given as https://api.openai.com/v1 must not become .../v1/v1/...
        if self._upstream_has_v1 and path.startswith("/v1/"):
            path = path[3:]
        return self._upstream + path

    async def _emit(self, outcome: _Outcome, started: float) -> None:
        admission = outcome.admission
        if self._guard is not None:
            # Before the event: its hold must show the real cost before the pipeline counts
            # it (a hold counted already is dropped at the next admission).
            await self._guard.finish(admission, None if outcome.cache_hit else outcome.usage,
                                     outcome.ok)
        event = usage_event(
            event_id=admission.event_id, ts=datetime.now(UTC), model=admission.model,
            usage=outcome.usage, labels=admission.labels,
            latency_ms=(time.perf_counter() - started) * 1000.0, ok=outcome.ok,
            cache_hit=outcome.cache_hit,
        )
        try:
            self._publish(event)
        except Exception:  # the answer matters more than its event; the failure is logged
            log.exception("could not publish a usage event")


def _forwarded(headers: Mapping[str, str]) -> dict[str, str]:
    return {name: value for name, value in headers.items()
            if name.lower() not in _NOT_FORWARDED
            and not name.lower().startswith("x-costflux-")}


def _returned(headers: Mapping[str, str]) -> dict[str, str]:
    return {name: value for name, value in headers.items()
            if name.lower() not in _NOT_RETURNED}


def _json_object(body: bytes) -> dict[str, Any] | None:
    try:
        value = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    return value if isinstance(value, dict) else None


def _upstream_error(exc: Exception) -> web.Response:
    """The client's answer when the upstream timed out (504) or could not be reached (502)."""
    if isinstance(exc, TimeoutError):
        return _error(504, "upstream_timeout", "the upstream API did not answer in time")
    return _error(502, "upstream_unreachable", "the upstream API could not be reached")


def _error(status: int, kind: str, message: str) -> web.Response:
    return web.json_response({"error": {"message": message, "type": kind}}, status=status)


def _route(request: web.Request) -> Route:
    return ROUTES[request.path]


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


def with_stream_usage(body: Mapping[str, Any]) -> dict[str, Any]:
    """An OpenAI streaming request that asks for the usage chunk at the stream's end.

    >>> with_stream_usage({"stream": True, "stream_options": {"include_obfuscation": False}})
    {'stream': True, 'stream_options': {'include_obfuscation': False, 'include_usage': True}}
    """
    options = body.get("stream_options")
    options = dict(options) if isinstance(options, dict) else {}
    options["include_usage"] = True
    return {**body, "stream_options": options}
