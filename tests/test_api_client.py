"""The worker's API client (costflux report, advise, export, reconcile, demo) through
httpx.MockTransport: what it sends, and the errors its callers tell apart."""

from __future__ import annotations

import httpx
import pytest

from costflux.api_client import WorkerUnreachable, get_json, read_from_worker
from costflux.core.errors import UnavailableError

BASE = "http://worker.test:8080/"
TOKEN = "t0k3n-0123456789abcdef"


def answering(response: httpx.Response, seen: list[httpx.Request]) -> httpx.MockTransport:
    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return response

    return httpx.MockTransport(handler)


def failing(error: Exception) -> httpx.MockTransport:
    def handler(request: httpx.Request) -> httpx.Response:
        raise error

    return httpx.MockTransport(handler)


def test_the_query_and_the_bearer_token_are_sent() -> None:
    seen: list[httpx.Request] = []
    body = get_json(BASE, "/model/allocation", token=TOKEN,
                    params={"window": "2023-11-16T18:00:00Z,2023-11-16T20:00:00Z",
                            "aggregate": "model,label:team"},
                    transport=answering(httpx.Response(200, json={"data": [1]}), seen))
    assert body == {"data": [1]}
    ((request,),) = [seen]
    assert request.url.path == "/model/allocation"
    assert dict(request.url.params) == {"window": "2023-11-16T18:00:00Z,2023-11-16T20:00:00Z",
                                        "aggregate": "model,label:team"}
    assert request.headers["Authorization"] == f"Bearer {TOKEN}"


def test_a_path_with_its_own_query_keeps_it_and_no_token_sends_no_header() -> None:
    seen: list[httpx.Request] = []
    get_json(BASE, "/api/advice?window=a,b", transport=answering(httpx.Response(200, json={}),
                                                                  seen))
    assert (seen[0].url.path, dict(seen[0].url.params)) == ("/api/advice", {"window": "a,b"})
    assert "Authorization" not in seen[0].headers


@pytest.mark.parametrize(("response", "message"), [
    (httpx.Response(400, json={"message": "window: 'soon' is not a time"}),
     "window: 'soon' is not a time"),
    (httpx.Response(502, text="<html>bad gateway</html>"), "HTTP Error 502: Bad Gateway"),
    (httpx.Response(404, json=["not", "an", "object"]), "HTTP Error 404: Not Found"),
])
def test_an_error_answer_is_a_value_error_with_the_apis_message(
    response: httpx.Response, message: str
) -> None:
    with pytest.raises(ValueError) as raised:
        get_json(BASE, "/model/allocation", transport=answering(response, []))
    assert str(raised.value) == message


@pytest.mark.parametrize(("token", "ending"), [(None, "COSTFLUX_HTTP_TOKEN_FILE)"),
                                               (TOKEN, "to the right one")])
def test_401_says_to_set_the_token_and_never_shows_it(token: str | None, ending: str) -> None:
    with pytest.raises(ValueError, match="requires its HTTP token") as raised:
        get_json(BASE, "/api/budgets", token=token,
                 transport=answering(httpx.Response(401), []))
    assert str(raised.value).endswith(ending) and TOKEN not in str(raised.value)


@pytest.mark.parametrize("error", [httpx.ConnectError("[Errno 111] Connection refused"),
                                   httpx.ReadTimeout("timed out")])
def test_no_answer_is_an_os_error_that_callers_already_catch(error: Exception) -> None:
    with pytest.raises(WorkerUnreachable) as raised:
        get_json(BASE, "/api/budgets", token=TOKEN, transport=failing(error))
    assert isinstance(raised.value, OSError) and isinstance(raised.value, UnavailableError)
    assert str(raised.value) == str(error) and TOKEN not in str(raised.value)


def test_a_url_that_is_not_http_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="expected http://host:port"):
        get_json("worker.test:8080", "/api/budgets")


def test_read_from_worker_tells_the_exit_status_from_the_error(
    capsys: pytest.CaptureFixture[str],
) -> None:
    def unreachable() -> object:
        return get_json(BASE, "/x", transport=failing(httpx.ConnectError("refused")))

    def refused() -> object:
        return get_json(BASE, "/x", transport=answering(httpx.Response(400, json={
            "message": "bad window"}), []))

    assert read_from_worker("report", BASE, unreachable) == (None, 1)
    assert "is a worker or `costflux demo` running?" in capsys.readouterr().err
    assert read_from_worker("report", BASE, refused) == (None, 2)
    assert "costflux report: bad window" in capsys.readouterr().err
