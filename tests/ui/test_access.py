"""The bearer token on the worker's HTTP surface: the rule itself on a real aiohttp server,
the settings it comes from, and a real worker refusing a browser and a client without it."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from costflux.agents.http_access import LOGIN_PATH, SESSION_COOKIE, HttpAccess, sign_in
from costflux.settings import ConfigError, Settings, load_settings
from tests.ui.conftest import TOKEN, TRACE_WINDOW, ConsolePage, ConsoleWorker

Console = Callable[..., ConsolePage]


# --- the rule on a real server (no broker) ---

async def _answers(access: HttpAccess, requests: list[tuple[str, str, dict[str, str]]]
                   ) -> list[tuple[int, str]]:
    """(status, body) of each (method, path, headers) against an app behind ``access``."""

    async def ok(request: web.Request) -> web.Response:
        return web.Response(text="data")

    async def login(request: web.Request) -> web.StreamResponse:
        return await sign_in(access, request)

    app = web.Application(middlewares=[access.middleware()])
    for path in ("/healthz", "/readyz", "/metrics", "/model/allocation", "/ui/", "/"):
        app.router.add_get(path, ok)
    app.router.add_route("*", LOGIN_PATH, login)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    answers = []
    try:
        async with aiohttp.ClientSession() as session:
            for method, path, headers in requests:
                data = {"token": headers.pop("form-token")} if "form-token" in headers else None
                async with session.request(method, f"http://127.0.0.1:{port}{path}",
                                           headers=headers, data=data,
                                           allow_redirects=False) as response:
                    cookie = response.cookies.get(SESSION_COOKIE)
                    text = await response.text()
                    answers.append((response.status, f"{text}|cookie={cookie.value}|"
                                    f"{cookie['httponly']}|{cookie['samesite']}" if cookie
                                    else text))
    finally:
        await runner.cleanup()
    return answers


def test_without_a_token_everything_is_open() -> None:
    answers = asyncio.run(_answers(HttpAccess(None), [
        ("GET", path, {}) for path in ("/model/allocation", "/ui/", "/metrics")]))
    assert [status for status, _ in answers] == [200, 200, 200]


def test_a_token_guards_every_path_but_the_probes_and_metrics() -> None:
    bearer = {"Authorization": f"Bearer {TOKEN}"}
    answers = asyncio.run(_answers(HttpAccess(TOKEN), [
        ("GET", "/model/allocation", {}),
        ("GET", "/", {}),  # Faust's own pages too
        ("GET", "/model/allocation", {"Authorization": "Bearer wrong-token-0123456789"}),
        ("GET", "/model/allocation", {"Authorization": f"Basic {TOKEN}"}),
        ("GET", "/model/allocation", bearer),
        ("GET", "/model/allocation", {"Authorization": f"bearer  {TOKEN} "}),
        ("GET", "/healthz", {}), ("GET", "/readyz", {}), ("GET", "/metrics", {}),
        ("GET", "/ui/", {}),
    ]))
    assert [status for status, _ in answers] == [401, 401, 401, 401, 200, 200, 200, 200, 200,
                                                 401]
    assert "bearer token is required" in answers[0][1]
    assert "<form method=post" in answers[-1][1]  # a browser gets the sign-in form
    assert all(TOKEN not in body for _, body in answers)


def test_metrics_can_be_guarded_too() -> None:
    answers = asyncio.run(_answers(HttpAccess(TOKEN, protect_metrics=True), [
        ("GET", "/metrics", {}), ("GET", "/metrics", {"Authorization": f"Bearer {TOKEN}"}),
        ("GET", "/healthz", {})]))
    assert [status for status, _ in answers] == [401, 200, 200]


def test_signing_in_sets_a_session_cookie_that_is_not_the_token() -> None:
    access = HttpAccess(TOKEN)
    answers = asyncio.run(_answers(access, [
        ("POST", LOGIN_PATH, {"form-token": "not-the-token-0123456789"}),
        ("POST", LOGIN_PATH, {"form-token": TOKEN}),
        ("GET", "/model/allocation", {"Cookie": f"{SESSION_COOKIE}={access.session_cookie()}"}),
        ("GET", "/model/allocation", {"Cookie": f"{SESSION_COOKIE}={TOKEN}"}),
        ("GET", LOGIN_PATH, {}),
    ]))
    assert answers[0][0] == 401 and "That is not the token" in answers[0][1]
    status, body = answers[1]
    assert status == 303
    assert body.endswith(f"|cookie={access.session_cookie()}|True|Strict")
    assert access.session_cookie() != TOKEN and TOKEN not in access.session_cookie()
    assert [status for status, _ in answers[2:]] == [200, 401, 200]
    assert TOKEN not in repr(access)


# --- where the token comes from ---

def test_the_token_comes_from_the_setting_or_a_file(tmp_path: Path) -> None:
    assert Settings().http_token_value() is None
    assert Settings(http_token=TOKEN).http_token_value() == TOKEN
    secret = tmp_path / "token"
    secret.write_text(TOKEN + "\n")  # a mounted Secret ends in a newline
    assert Settings(http_token_file=secret).http_token_value() == TOKEN


@pytest.mark.parametrize("bad", ["short", "has a space in the middle of it"])
def test_a_weak_or_broken_token_stops_the_worker_without_showing_it(bad: str) -> None:
    with pytest.raises(ConfigError) as raised:
        Settings(http_token=bad).http_token_value()
    assert bad not in str(raised.value) and "COSTFLUX_HTTP_TOKEN" in str(raised.value)


def test_an_unreadable_token_file_is_named_and_a_bad_value_never_echoed(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ConfigError, match="COSTFLUX_HTTP_TOKEN_FILE=.*cannot read it"):
        Settings(http_token_file=tmp_path / "missing").http_token_value()
    config = tmp_path / "costflux.yaml"
    config.write_text("http_token: [4711, 8150]\n")
    monkeypatch.setenv("COSTFLUX_CONFIG_FILE", str(config))
    with pytest.raises(ConfigError) as raised:
        load_settings()
    assert "COSTFLUX_HTTP_TOKEN" in str(raised.value) and "4711" not in str(raised.value)


# --- a real worker ---

@pytest.mark.integration
def test_without_the_token_the_console_and_the_api_answer_401(
        console: Console, console_worker: ConsoleWorker) -> None:
    tab = console(token=None)
    response = tab.page.goto(console_worker.ui)
    assert response is not None and response.status == 401
    assert tab.page.locator("input[name='token']").is_visible()
    for path in ("/ui/static/app.js", "/ui/static/uplot.js", "/model/allocation",
                 "/model/gpu", "/api/budgets", "/api/alerts", "/api/advice", "/"):
        status, _ = console_worker.get(path, token=None)
        assert status == 401, path
        assert console_worker.get(path, token="wrong-token-0123456789abcdef")[0] == 401, path
    for path in ("/healthz", "/readyz", "/metrics"):
        assert console_worker.get(path, token=None)[0] == 200, path
    log = console_worker.process.log_path.read_text(errors="replace")
    assert TOKEN not in log


@pytest.mark.integration
def test_a_browser_signs_in_with_the_token_once_and_the_console_works(
        console: Console, console_worker: ConsoleWorker) -> None:
    tab = console(token=None)
    tab.page.goto(console_worker.ui)
    tab.page.fill("input[name='token']", "not-the-token-0123456789")
    with tab.page.expect_navigation():
        tab.page.click("button[type='submit']")
    assert tab.page.locator("[role='alert']").inner_text() == "That is not the token."
    tab.page.fill("input[name='token']", TOKEN)
    with tab.page.expect_navigation():
        tab.page.click("button[type='submit']")
    tab.errors.clear()  # the 401s above were expected; from here on, none
    tab.wait_drawn("overview")
    cookie = next(c for c in tab.context.cookies() if c["name"] == SESSION_COOKIE)
    assert cookie["httpOnly"] and cookie["sameSite"] == "Strict" and cookie["value"] != TOKEN
    tab.open(f"cost?window={TRACE_WINDOW}&step=5m")
    tab.assert_clean()


@pytest.mark.integration
def test_the_cli_clients_send_the_token(console_worker: ConsoleWorker) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("COSTFLUX_")}

    def report(**extra: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "costflux", "report", "--url", console_worker.base,
             "--window", TRACE_WINDOW, "--by", "team", "--format", "csv"],
            env=env | extra, capture_output=True, text=True, timeout=60, check=False)

    refused = report()
    assert refused.returncode == 2
    assert "requires its HTTP token: set COSTFLUX_HTTP_TOKEN" in refused.stderr
    served = report(COSTFLUX_HTTP_TOKEN=TOKEN)
    assert served.returncode == 0, served.stderr
    assert "search" in served.stdout
    advised = subprocess.run(
        [sys.executable, "-m", "costflux", "advise", "--url", console_worker.base,
         "--window", "7d", "--format", "json"],
        env=env | {"COSTFLUX_HTTP_TOKEN": TOKEN}, capture_output=True, text=True, timeout=60,
        check=False)
    assert advised.returncode == 0, advised.stderr
    assert TOKEN not in refused.stderr + served.stderr + advised.stderr
