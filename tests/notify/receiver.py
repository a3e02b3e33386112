"""A real webhook receiver on 127.0.0.1 that answers as scripted, and alerts to send it."""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Literal

from costflux.schemas.alert import AlertEvent

#: The secret part of every Receiver URL: tests assert it never shows anywhere.
SECRET = "s3cr3t"


class Receiver:
    """Answers each POST with the next scripted (status, headers); records what arrived.

    ``attempts`` has the monotonic time of every POST; ``received`` (time, body) of the
    accepted (200) ones.
    """

    def __init__(self, script: list[tuple[int, dict[str, str]]]) -> None:
        self.script = list(script)
        self.attempts: list[float] = []
        self.received: list[tuple[float, bytes]] = []
        self._lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                body = self.rfile.read(int(self.headers["Content-Length"]))
                with receiver._lock:  # concurrent posts must each take their own answer
                    now = time.monotonic()
                    receiver.attempts.append(now)
                    status, headers = receiver.script.pop(0) if receiver.script else (200, {})
                    if status == 200:
                        receiver.received.append((now, body))
                self.send_response(status)
                for name, value in headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/services/T0/B0/{SECRET}"
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def make_alert(
    team: str = "search",
    alert_id: str = "a" * 32,
    state: Literal["firing", "resolved"] = "firing",
    repeat: int = 0,
) -> AlertEvent:
    return AlertEvent(alert_id=alert_id, rule="CostSpike", severity="warning", state=state,
                      labels={"team": team}, value=2.5, threshold=2.0, summary="Cost spike",
                      starts_at=datetime(2026, 11, 23, 10, tzinfo=UTC), repeat=repeat)
