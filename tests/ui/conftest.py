"""Fixtures of the cost console's tests: one worker behind a bearer token that has served the
bundled Azure trace as ``costflux demo`` replays it (usage, the simulated GPU fleet and the
demo's budgets, evaluated to the end), and a real headless Chromium driven by Playwright.

The browser is Debian's ``chromium`` (``./run-tests`` installs it): Playwright's own browser
download needs a host CI cannot reach. ``COSTFLUX_CHROMIUM`` names another binary.
"""

from __future__ import annotations

import json
import os
import shutil
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from importlib import resources
from pathlib import Path
from typing import Any

import pytest

from costflux.cli.demo import DEMO_LABELS, DEMO_MODELS, bundled_trace_path
from costflux.cli.demo_gpu import demo_gpu_samples
from costflux.cli.replay import replay
from costflux.core.trace import Assignment, ColumnMapping
from costflux.embedded import free_port
from costflux.settings import Settings
from costflux.streams.kafka import ensure_topics, producer_config
from costflux.streams.producer import UsageProducer
from costflux.streams.trace import iter_usage_events
from tests.integration.worker_process import WorkerProcess

try:
    from playwright.sync_api import Browser, BrowserContext, ConsoleMessage, Page, sync_playwright
except ImportError:  # the test extra not installed: the browser tests skip, saying so
    sync_playwright = None

#: The worker's token in these tests (a real deployment's comes from a Secret).
TOKEN = "ui-tests-" + "7f3c9a1e5b2d4c6f8a0e"
#: What the screenshots are written to (gitignored); tests/ui/readme_images.py copies the
#: README's two into docs/images/.
SCREENSHOTS = Path(__file__).parent / "screenshots"
#: The bundled trace's span (the demo's allocation query), and its last evaluation: the
#: newest event (GPU sample at 19:14:10) less the allowed lateness (300 s), floored to the
#: evaluation interval.
TRACE_WINDOW = "2023-11-16T18:00:00Z,2023-11-16T19:30:00Z"
FINAL_EVALUATION = "2023-11-16T19:09:00+00:00"


def _assignment() -> Assignment:
    return Assignment(models=DEMO_MODELS, labels=DEMO_LABELS)


def _events() -> list[dict[str, Any]]:
    return list(iter_usage_events(bundled_trace_path(), ColumnMapping(), _assignment(),
                                  id_prefix="azure-conv", limit=None))


class ConsoleWorker:
    """The worker, and its API read with the token (what the page must agree with)."""

    def __init__(self, process: WorkerProcess) -> None:
        self.process = process
        self.base = process.base
        self.ui = f"{process.base}/ui/"

    def get(self, path: str, token: str | None = TOKEN, **params: str) -> tuple[int, Any]:
        url = self.base + path + ("?" + urllib.parse.urlencode(params) if params else "")
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        try:
            with urllib.request.urlopen(urllib.request.Request(url, headers=headers),
                                        timeout=10) as response:
                status, body = response.status, response.read()
        except urllib.error.HTTPError as error:
            status, body = error.code, error.read()
        try:
            return status, json.loads(body)
        except ValueError:  # /metrics, the sign-in page
            return status, body.decode()

    def data(self, path: str, **params: str) -> Any:
        status, body = self.get(path, **params)
        assert status == 200, body
        return body["data"]

    def rows(self, path: str, **params: str) -> dict[str, dict[str, Any]]:
        """The rows of a one-set answer by name."""
        return {name: row for group in self.data(path, **params) for name, row in group.items()}


@pytest.fixture(scope="package")
def console_worker(kafka_bootstrap: str, redis_url: str,
                   tmp_path_factory: pytest.TempPathFactory) -> Iterator[ConsoleWorker]:
    """A worker behind ``TOKEN`` that has served the whole trace, GPU samples included, and
    evaluated its budgets up to the last event: every answer is final."""
    tag = uuid.uuid4().hex[:8]
    folder = tmp_path_factory.mktemp("console")
    settings = Settings(
        kafka_bootstrap=kafka_bootstrap, redis_url=redis_url, topic_usage=f"usage-{tag}",
        topic_gpu=f"gpu-{tag}", topic_alerts=f"alerts-{tag}",
        topic_deadletter=f"deadletter-{tag}", consumer_group=f"console-{tag}",
        http_port=free_port(), data_dir=folder / "data", table_store="memory",
        budgets_file=Path(str(resources.files("costflux").joinpath("data",
                                                                   "demo_budgets.yaml"))),
    )
    process = WorkerProcess(settings, folder / "logs", env={"COSTFLUX_HTTP_TOKEN": TOKEN})
    worker = ConsoleWorker(process)
    try:
        process.wait_ready()
        events = _events()
        samples = list(demo_gpu_samples(events))
        ensure_topics(settings, {settings.topic_usage: settings.topic_partitions,
                                 settings.topic_gpu: settings.topic_partitions})
        with UsageProducer(producer_config(settings), settings.topic_usage) as producer:
            replay(iter(events), producer, speed=0, progress=False)
        with UsageProducer(producer_config(settings), settings.topic_gpu,
                           events_per_message=1) as producer:
            replay(iter(samples), producer, speed=0, progress=False)
        process.wait_for(lambda: process.metric("costflux_ingest_events_total") == len(events)
                         and process.metric("costflux_gpu_samples_total") == len(samples),
                         120, "ingesting the trace and the GPU samples")
        process.wait_for(lambda: worker.get("/api/budgets")[1]["evaluatedAt"]
                         == FINAL_EVALUATION, 120, "evaluating to the last event")
        yield worker
    finally:
        process.stop()


def chromium_path() -> str | None:
    return os.environ.get("COSTFLUX_CHROMIUM") or shutil.which("chromium")


@pytest.fixture(scope="session")
def browser() -> Iterator[Browser]:
    if sync_playwright is None:
        pytest.skip("playwright is not installed (pip install -e '.[test]')")
    executable = chromium_path()
    if executable is None:
        pytest.skip("no chromium: ./run-tests installs Debian's package (apt-get install "
                    "chromium), or set COSTFLUX_CHROMIUM")
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=executable)
        yield launched
        launched.close()


class ConsolePage:
    """A browser tab on the console; every console error and uncaught exception it sees is
    kept, and the test fails on any it did not expect."""

    def __init__(self, context: BrowserContext, worker: ConsoleWorker) -> None:
        self.context = context
        self.worker = worker
        self.page: Page = context.new_page()
        self.errors: list[str] = []
        self.page.on("console", self._console)
        self.page.on("pageerror", lambda error: self.errors.append(f"uncaught: {error}"))

    def _console(self, message: ConsoleMessage) -> None:
        if message.type == "error":
            self.errors.append(f"console error: {message.text}")

    def open(self, view: str) -> Page:
        """Go to ``#view`` and wait until that view is drawn (or failed: then it fails)."""
        name = view.split("?")[0]
        self.page.goto(f"{self.worker.ui}#{view}")
        return self.wait_drawn(name)

    def wait_drawn(self, name: str) -> Page:
        self.page.locator(f"body[data-page='{name}']:not([data-state='loading'])").wait_for(
            state="attached")
        state = self.page.locator("body").get_attribute("data-state")
        assert state == "drawn", f"{name}: {self.page.locator('#problem').inner_text()}"
        return self.page

    def assert_clean(self) -> None:
        """No console error and no uncaught exception so far."""
        assert not self.errors, "\n".join(self.errors)

    def screenshot(self, name: str, *, full_page: bool = True) -> Path:
        SCREENSHOTS.mkdir(exist_ok=True)
        path = SCREENSHOTS / f"{name}.png"
        self.page.screenshot(path=str(path), full_page=full_page)
        return path


@pytest.fixture
def console(browser: Browser, console_worker: ConsoleWorker
            ) -> Iterator[Callable[..., ConsolePage]]:
    """Open a tab on the console: with the token in its requests' Authorization header
    (``token=None``: none), in a browser context of the given time zone."""
    pages: list[ConsolePage] = []

    def open_tab(token: str | None = TOKEN, timezone: str = "Europe/Berlin") -> ConsolePage:
        context = browser.new_context(
            viewport={"width": 1280, "height": 900}, locale="en-US", timezone_id=timezone,
            accept_downloads=True,
            extra_http_headers={"Authorization": f"Bearer {token}"} if token else None)
        tab = ConsolePage(context, console_worker)
        pages.append(tab)
        return tab

    yield open_tab
    for tab in pages:
        tab.context.close()
