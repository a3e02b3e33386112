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

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Final

import aiohttp
import numpy as np
import orjson
from aiohttp import web
from redis.exceptions import RedisError

from costflux.cache.embedder import Embedder
from costflux.cache.index import VectorIndex
from costflux.cache.policy import (
    Bypass,
    CachePolicy,
    Candidate,
    Lookup,
    TokenUsage,
    best_hit,
    classify,
    labels_from_headers,
    text_digest,
)
from costflux.cache.store import EntryStore, NewEntry
from costflux.cache.usage import usage_event
from costflux.gateway.guard import Admission, BudgetGuard, Refusal
from costflux.gateway.usage import ROUTES, Route, StreamUsage, answer_usage, request_model

__all__ = ["CACHE_HEADER", "Gateway", "ProxyConfig", "SemanticCache"]

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

_REBUILD_BATCH: Final = 5000

Vector = np.ndarray[Any, np.dtype[np.float32]]
#: What a miss needs to store its answer: lookup, vector, truncated-text digest, text digest.
_Remember = tuple[Lookup, Vector, str | None, str]

Publish = Callable[[dict[str, Any]], None]


@dataclass(frozen=True, slots=True)
class ProxyConfig:
    """Plain values the proxy runs with."""

    upstream: str
    policy: CachePolicy = CachePolicy()
    label_defaults: Mapping[str, str] = field(default_factory=dict)
    upstream_timeout_s: float = 600.0
    candidates: int = 8


@dataclass(frozen=True, slots=True)
class SemanticCache:
    """What the semantic cache runs on: the embedding model and the shared entry store."""

    embedder: Embedder
    store: EntryStore


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
                 metrics: Callable[[], bytes] | None = None,
                 sync_interval_s: float = 2.0) -> None:
        self._config = config
        self._upstream = config.upstream.rstrip("/")
        self._upstream_has_v1 = self._upstream.endswith("/v1")
        self._cache = cache
        self._guard = guard
        self._metrics = metrics
        self._publish = publish
        self._index = VectorIndex()
        self._session: aiohttp.ClientSession | None = None
        self._sync_interval_s = sync_interval_s
        self._synced_id = 0
        # Ids the last sync found missing: another replica may have taken the id (INCR) but
        # not yet written its entry; they are asked for once more before counting as evicted.
        self._unsynced: list[int] = []
        self._sync_task: asyncio.Task[None] | None = None
        # One embedding at a time: numpy already uses the cores, and a queue beats thrashing.
        self._embed_lock = asyncio.Lock()
        self.stats = {"hits": 0, "misses": 0, "bypassed": 0, "stored": 0, "evicted": 0,
                      "redis_errors": 0}

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
        if self._cache is None:
            return
        # Read before loading: entries stored meanwhile are picked up by the sync below.
        self._synced_id = await self._store.newest_id()
        loaded, batch = 0, []
        async for stored in self._store.all_vectors():
            batch.append((stored.entry_id, stored.partition, stored.vector))
            if len(batch) == _REBUILD_BATCH:
                await asyncio.to_thread(self._index.add_many, batch)
                loaded, batch = loaded + len(batch), []
        await asyncio.to_thread(self._index.add_many, batch)
        loaded += len(batch)
        log.info("semantic cache: %d entries loaded from Redis into the index", loaded)
        self._sync_task = asyncio.create_task(self._sync_forever())

    async def _sync_forever(self) -> None:
        """Index entries other replicas store (ids are one shared sequence)."""
        while True:
            await asyncio.sleep(self._sync_interval_s)
            try:
                await self._sync()
            except Exception:  # Redis away for a moment: the next round catches up
                log.warning("semantic cache: index sync failed; retrying", exc_info=True)

    async def _sync(self) -> None:
        newest = await self._store.newest_id()
        retry, self._unsynced = self._unsynced, []
        while retry or self._synced_id < newest:
            last = min(newest, self._synced_id + 1000)
            # Entries this replica stored are indexed already (``_remember``).
            fresh = [i for i in range(self._synced_id + 1, last + 1) if i not in self._index]
            found, gone = await self._store.vectors(retry + fresh)
            self._index.add_many([(s.entry_id, s.partition, s.vector) for s in found])
            # A retried id still gone was evicted or expired; a fresh one gets one more try.
            self._unsynced += [i for i in gone if i not in retry]
            retry, self._synced_id = [], last

    async def _stop(self, app: web.Application) -> None:
        if self._sync_task is not None:
            self._sync_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sync_task
        if self._session is not None:
            await self._session.close()

    @property
    def _store(self) -> EntryStore:
        assert self._cache is not None
        return self._cache.store

    async def _healthz(self, request: web.Request) -> web.Response:
        return web.json_response({"status": "ok", "indexed": len(self._index), **self.stats})

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
            return web.json_response(admitted.body, status=admitted.status)
        outcome = _Outcome(admitted)
        if not body:
            return await self._forward(request, raw, outcome, started, lookup=None,
                                       decision="not_json")
        if admitted.body_patch or "cache" in body:  # "cache" is ours, not the upstream's
            body.update(admitted.body_patch or {})
            raw = orjson.dumps({k: v for k, v in body.items() if k != "cache"})
        if body.get("stream") is True:
            return await self._stream(request, raw, outcome, started)
        if self._cache is None or route not in _CACHED_ROUTES:
            return await self._forward(request, raw, outcome, started, lookup=None,
                                       decision="bypass:route" if self._cache else "off")
        decision = classify(route, body, admitted.labels,  # type: ignore[arg-type]
                            self._config.policy)
        if isinstance(decision, Bypass):
            self.stats["bypassed"] += 1
            return await self._forward(request, raw, outcome, started, lookup=None,
                                       decision=f"bypass:{decision.reason}")
        try:
            looked_up = await self._look_up(decision, started, outcome)
        except RedisError as exc:
            # The cache is an optimisation: without its Redis, requests still get answers.
            self._redis_failed("look-up", exc)
            return await self._forward(request, raw, outcome, started, lookup=None,
                                       decision="bypass:cache_unavailable")
        if isinstance(looked_up, web.Response):
            return looked_up
        self.stats["misses"] += 1
        return await self._forward(request, raw, outcome, started, lookup=looked_up,
                                   decision="miss")

    async def _admit(self, request: web.Request, route: Route, body: dict[str, Any],
                     size: int) -> Admission | Refusal:
        model = request_model(route, body) or "unknown"
        if self._guard is None:
            labels = labels_from_headers(request.headers, self._config.label_defaults)
            return Admission(f"gw:{uuid.uuid4().hex}", labels, model)
        client_labels = labels_from_headers(request.headers, {})
        return await self._guard.admit(route, body, size, request.headers, client_labels,
                                       model)

    async def _look_up(self, decision: Lookup, started: float,
                       outcome: _Outcome) -> web.Response | _Remember:
        """A hit's answer, or what storing the upstream's answer to a miss needs."""
        text_sha = text_digest(decision.text)
        # The same text needs no embedding and cannot be missed by the approximate index.
        exact = await self._store.exact(decision.partition, text_sha)
        if exact is not None:
            hit = await self._answer(exact, 1.0, started, outcome)
            if hit is not None:
                return hit
        vector, truncated = await self._embed(decision.text)
        digest = text_sha if truncated else None
        found = await self._find(decision, vector, digest)
        if found is not None:
            hit = await self._answer(found.entry_id, found.similarity, started, outcome)
            if hit is not None:
                return hit
            self._index.remove(found.entry_id)
        return decision, vector, digest, text_sha

    def _redis_failed(self, step: str, exc: RedisError) -> None:
        self.stats["redis_errors"] += 1
        # The type only: a connection error's text may name the server.
        log.warning("semantic cache: Redis failed in %s (%s); answered without the cache",
                    step, type(exc).__name__)

    async def _answer(self, entry_id: int, similarity: float, started: float,
                      outcome: _Outcome) -> web.Response | None:
        """The stored answer as a hit, or None if the entry is gone."""
        answer = await self._store.answer(entry_id, _now_ms())
        if answer is None:
            return None
        self.stats["hits"] += 1
        outcome.admission.model = answer.model
        outcome.usage, outcome.cache_hit = answer.usage.fields(), True
        await self._emit(outcome, started)
        return web.Response(body=answer.response, content_type="application/json",
                            headers={CACHE_HEADER: "hit",
                                     f"{CACHE_HEADER}-Similarity": f"{similarity:.4f}",
                                     **outcome.admission.headers})

    async def _embed(self, text: str) -> tuple[Vector, bool]:
        """The prompt's vector, and whether the model saw only its beginning."""
        async with self._embed_lock:
            assert self._cache is not None
            (embedding,) = await asyncio.to_thread(self._cache.embedder.embed, [text])
        return embedding.vector, embedding.truncated

    async def _find(self, lookup: Lookup, vector: Vector,
                    digest: str | None) -> Candidate | None:
        ids = self._index.nearest(lookup.partition, vector, self._config.candidates)
        stored, gone = await self._store.vectors(ids)
        for entry_id in gone:
            self._index.remove(entry_id)
        await self._store.forget(gone)
        candidates = [Candidate(s.entry_id, s.partition, float(s.vector @ vector), s.digest)
                      for s in stored]
        return best_hit(candidates, lookup.partition, self._config.policy.threshold, digest)

    async def _forward(self, request: web.Request, raw: bytes, outcome: _Outcome,
                       started: float, *, lookup: _Remember | None,
                       decision: str) -> web.Response:
        try:
            status, headers, body = await self._upstream_call(request, raw)
        except (TimeoutError, aiohttp.ClientError) as exc:
            return await self._upstream_failed(exc, outcome, started)
        answer = _json_object(body)
        outcome.ok = 200 <= status < 300
        outcome.usage = answer_usage(_route(request), answer) if answer is not None else None
        if lookup is not None and status == 200 and outcome.usage is not None:
            try:
                await self._remember(lookup, body, outcome)
            except RedisError as exc:
                self._redis_failed("store", exc)
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

    async def _remember(self, lookup: _Remember, body: bytes, outcome: _Outcome) -> None:
        decision, vector, digest, text_sha = lookup
        assert outcome.usage is not None
        entry_id, evicted = await self._store.put(
            NewEntry(decision.partition, vector, digest, text_sha, body, outcome.model,
                     TokenUsage.of(outcome.usage)),
            _now_ms(),
        )
        self._index.add(entry_id, decision.partition, vector)
        for old in evicted:
            self._index.remove(old)
        self.stats["stored"] += 1
        self.stats["evicted"] += len(evicted)

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
