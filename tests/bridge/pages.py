"""The real vLLM page with chosen counter values, and a local /metrics server that serves it."""

from __future__ import annotations

import re
import threading
from collections import deque
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from costflux.embedded import free_port
from tests.paths import REPO

VLLM_FIXTURE = REPO / "tests/fixtures/vllm_metrics/datadog_vllm_metrics.txt"
VLLM_TEXT = VLLM_FIXTURE.read_text()
MODEL = "facebook/opt-125m"

#: Series of the fixture the bridge reads (counters, the start time, queue gauges), by a short
#: name.
SERIES = {
    "prompt": f'vllm:prompt_tokens_total{{model_name="{MODEL}"}}',
    "generation": f'vllm:generation_tokens_total{{model_name="{MODEL}"}}',
    "success": f'vllm:request_success_total{{finished_reason="length",model_name="{MODEL}"}}',
    "hits": f'vllm:prefix_cache_hits_total{{model_name="{MODEL}"}}',
    "cached": f'vllm:prompt_tokens_cached_total{{model_name="{MODEL}"}}',
    "start": "process_start_time_seconds",
    "waiting": f'vllm:num_requests_waiting{{model_name="{MODEL}"}}',
    "running": f'vllm:num_requests_running{{model_name="{MODEL}"}}',
}
_ABORT = f'vllm:request_success_total{{finished_reason="abort",model_name="{MODEL}"}}'


def fixture_value(series: str) -> float:
    """A series' value in the fixture file, read with a regex (not with the code under test)."""
    found = re.findall(rf"^{re.escape(series)} (\S+)$", VLLM_TEXT, flags=re.MULTILINE)
    assert len(found) == 1, series
    return float(found[0])


FIXTURE_VALUES = {name: fixture_value(series) for name, series in SERIES.items()}


def vllm_page(abort: float | None = None, **values: float) -> str:
    """The fixture page with some series set (by short name); ``abort`` adds that series."""
    text = VLLM_TEXT
    for name, value in values.items():
        series = SERIES[name]
        text, replaced = re.subn(rf"^{re.escape(series)} \S+$", f"{series} {float(value)!r}",
                                 text, flags=re.MULTILINE)
        assert replaced == 1, name
    if abort is not None:
        success = SERIES["success"]
        text = re.sub(rf"^({re.escape(success)} \S+)$", rf"\1\n{_ABORT} {float(abort)!r}", text,
                      flags=re.MULTILINE)
    return text


def grown(**increments: float) -> str:
    """The fixture page with counters grown by ``increments`` from the fixture's values."""
    return vllm_page(**{name: FIXTURE_VALUES[name] + step for name, step in increments.items()})


class MetricsServer:
    """A /metrics endpoint on 127.0.0.1 whose answers the test scripts; it can go down and
    come back on the same port.

    Each GET takes the next scripted answer, or repeats the last one when the script is empty.
    An answer is a page (200) or a (status, body) pair.
    """

    def __init__(self) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/metrics"
        self.requests = 0
        self.delay_s = 0.0
        self._script: deque[str | tuple[int, str]] = deque()
        self._last: str | tuple[int, str] = (503, "nothing scripted")
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    def serve(self, *answers: str | tuple[int, str]) -> None:
        with self._lock:
            self._script.extend(answers)

    def next_answer(self) -> tuple[int, str]:
        with self._lock:
            self.requests += 1
            if self._script:
                self._last = self._script.popleft()
            answer = self._last
        return answer if isinstance(answer, tuple) else (200, answer)

    def start(self) -> MetricsServer:
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (http.server's name)
                status, body = owner.next_answer()
                if owner.delay_s:
                    threading.Event().wait(owner.delay_s)
                data = body.encode()
                self.send_response(status)
                self.send_header("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: Any) -> None:
                pass

        class Server(ThreadingHTTPServer):
            daemon_threads = True

            def handle_error(self, request: Any, client_address: Any) -> None:
                pass  # a client that timed out and left: nothing to report

        self._server = Server(("127.0.0.1", self.port), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            assert self._thread is not None
            self._thread.join(10)
            self._server = self._thread = None
