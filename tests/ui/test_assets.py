"""The console's files as the worker serves them: all present, uPlot only as its pinned
release, gzip on the wire, revalidated with 304."""

from __future__ import annotations

import gzip
import hashlib
import re
import urllib.error
import urllib.request
from pathlib import PurePosixPath

import pytest

from costflux.agents.ui import assets
from tests.ui.conftest import TOKEN, ConsoleWorker


def test_every_module_the_page_imports_is_served_and_preloaded() -> None:
    loaded = assets.load_assets()
    assert loaded.problems == ()
    index = loaded.files["index.html"].body.decode()
    preloaded = set(re.findall(r'rel="modulepreload" href="static/([^"]+)"', index))
    modules = {name for name in loaded.files if name.endswith(".js") and name != "uplot.js"}
    assert preloaded == modules - {"app.js"}, "index.html must preload every module"
    for name in modules:
        source = loaded.files[name].body.decode()
        for target in re.findall(r'^import .* from "([^"]+)";$', source, re.MULTILINE):
            resolved = PurePosixPath(name).parent / target
            parts: list[str] = []
            for part in resolved.parts:
                if part == "..":
                    parts.pop()
                elif part != ".":
                    parts.append(part)
            assert "/".join(parts) in loaded.files, f"{name} imports {target}"


def test_uplot_is_served_only_as_the_pinned_upstream_release(
        monkeypatch: pytest.MonkeyPatch) -> None:
    loaded = assets.load_assets()
    chart = loaded.files["uplot.js"]
    assert hashlib.sha256(chart.body).hexdigest() == assets.UPLOT_FILES["uplot.js"][1]
    assert chart.body.startswith(b"/*! https://github.com/leeoniya/uPlot (v1.6.31) */")
    assert chart.gzipped is not None and gzip.decompress(chart.gzipped) == chart.body
    monkeypatch.setitem(assets.UPLOT_FILES, "uplot.js",
                        ("youplot/vendor/uplot.iife.min.js", "0" * 64))
    tampered = assets.load_assets()
    assert "uplot.js" not in tampered.files
    assert "not uPlot 1.6.31's release file" in tampered.problems[0]


@pytest.mark.integration
def test_the_worker_serves_the_files_gzipped_and_revalidates_them(
        console_worker: ConsoleWorker) -> None:
    def get(path: str, **headers: str) -> tuple[int, dict[str, str], bytes]:
        request = urllib.request.Request(console_worker.base + path, headers={
            "Authorization": f"Bearer {TOKEN}", **headers})
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                return response.status, dict(response.headers), response.read()
        except urllib.error.HTTPError as error:
            return error.code, dict(error.headers), error.read()

    status, headers, body = get("/ui/static/uplot.js", **{"Accept-Encoding": "gzip"})
    assert status == 200 and headers["Content-Encoding"] == "gzip"
    assert headers["Content-Type"].startswith("text/javascript")
    assert gzip.decompress(body) == assets.load_assets().files["uplot.js"].body
    assert get("/ui/static/uplot.js", **{"If-None-Match": headers["ETag"]})[0] == 304
    status, headers, body = get("/ui/static/uplot.js")  # a client that does not take gzip
    assert status == 200 and "Content-Encoding" not in headers and body.startswith(b"/*!")

    status, headers, _ = get("/ui/", **{"Accept-Encoding": "gzip"})
    assert status == 200 and "script-src 'self'" in headers["Content-Security-Policy"]
    assert get("/ui")[0] == 200  # redirected to /ui/
    assert get("/ui/static/nothing.js")[0] == 404
    # The API's JSON is gzipped for clients that ask, as before for those that do not.
    query = "/model/allocation?window=24h&step=1h&aggregate=label:team"
    status, headers, body = get(query, **{"Accept-Encoding": "gzip"})
    assert status == 200 and headers["Content-Encoding"] == "gzip"
    assert gzip.decompress(body) == get(query)[2]
