"""GET /dashboard: the page and its headers (Flask test client), and the live page in headless Chromium.

The browser is Debian's ``chromium`` package driven by Playwright (``playwright`` in requirements-dev.txt),
never a browser downloaded by Playwright. When it is missing and the tests run as root, the test installs it
with apt-get; when that is not possible, the browser test is skipped with the reason, loudly.
"""

from __future__ import annotations

import copy
import os
import re
import shutil
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
import requests
from conftest import ECHO_CONFIG, REPO

from bench.debian import NotInstalled, install

CSP = ("default-src 'self'; script-src 'self' 'unsafe-inline'; style-src 'self' 'unsafe-inline'; "
       "img-src 'self' data:; connect-src 'self'")
CHROMIUM = ("/usr/lib/chromium/chromium", "/usr/bin/chromium")  # the binary, then Debian's launcher script
APT_TIMEOUT = 120
SCREENSHOT = REPO / "tests" / "output" / "dashboard.png"
DOCS_SCREENSHOT = REPO / "docs" / "dashboard.png"
BURST = 30
# The echo endpoints, a support process and an endpoint that streams (N items GAP_MS apart).
STREAM_CONFIG = copy.deepcopy(ECHO_CONFIG)
STREAM_CONFIG["CONFIG_ENDPOINTS"]["stream"] = {"SERVER_CLASS": "stream_model", "NR_WORKERS": 2}
SSE = {"Accept": "text/event-stream"}


def test_dashboard_route_serves_a_self_contained_page_with_csp(tmp_path):
    from basic_inference_server.gateway.app import create_gateway_app
    from basic_inference_server.gateway.core import FlaskGateway

    (tmp_path / "endpoints").mkdir()
    (tmp_path / "endpoints" / "mon.py").write_text("print('support')\n")
    gateway = FlaskGateway(config={"CONFIG_ENDPOINTS": {"mon": {"HOST": "NO_HOST"}}}, app_root=tmp_path, run=False)
    reply = create_gateway_app(gateway.parts()).test_client().get("/dashboard")
    assert reply.status_code == 200
    assert reply.headers["Content-Type"] == "text/html; charset=utf-8"
    assert reply.headers["Content-Security-Policy"] == CSP
    html = reply.get_data(as_text=True)
    assert html.startswith("<!doctype html>") and "</html>" in html
    assert not re.search(r"https?://", html), "the page must not load or mention any URL (no CDN)"
    assert not re.search(r"""<script[^>]*\ssrc=|<link[^>]*\shref=["'](?!data:)|url\(|@import""", html)
    assert '<link rel="icon" href="data:,">' in html  # no /favicon.ico request, no 404 in the console
    for testid in ('id="servers"', 'id="requests"', 'id="support"', 'id="memory-rows"', 'id="error-banner"',
                   'id="last-update"', 'data-chart="rps"', 'data-chart="latency"'):
        assert testid in html


# -- /dashboard/data ---------------------------------------------------------------------------

def open_stream(gateway: Any, items: int, gap_ms: int) -> tuple[requests.Response, Iterator[bytes]]:
    """A streamed /run once its first item has arrived, and its lines after that one (keep them:
    when the iterator is collected, urllib3 closes the connection and the gateway the stream)."""
    reply = requests.post(gateway.url + "/run", json={"SIGNATURE": "stream", "N": items, "GAP_MS": gap_ms},
                          headers=SSE, stream=True, timeout=10)
    assert reply.status_code == 200 and reply.headers["Content-Type"] == "text/event-stream", reply.text
    lines = reply.iter_lines()
    assert next(lines).startswith(b'data: {"i":0,')
    return reply, lines


def wait_for_streams(gateway: Any, expected: dict[str, int], timeout: float = 5) -> None:
    deadline = time.monotonic() + timeout
    while (active := gateway.get("/dashboard/data").json()["ACTIVE_STREAMS"]) != expected:
        if time.monotonic() > deadline:
            pytest.fail(f"ACTIVE_STREAMS is {active} after {timeout}s, not {expected}")
        time.sleep(0.05)


@pytest.mark.timeout(60)
def test_dashboard_data_counts_the_streams_in_progress_by_endpoint(gateway_factory):
    gateway = gateway_factory(copy.deepcopy(STREAM_CONFIG))
    idle = {"echo": 0, "echo_b": 0, "stream": 0}  # every started endpoint, support processes not
    assert gateway.get("/dashboard/data").json()["ACTIVE_STREAMS"] == idle
    # A stream of 10 s: counted from its first item until its client closes it, long before its end.
    first, first_lines = open_stream(gateway, items=100, gap_ms=100)  # the lines are kept: see open_stream
    try:
        assert gateway.get("/dashboard/data").json()["ACTIVE_STREAMS"] == {**idle, "stream": 1}
        second, second_lines = open_stream(gateway, items=100, gap_ms=100)
        assert gateway.get("/dashboard/data").json()["ACTIVE_STREAMS"] == {**idle, "stream": 2}
        second.close()
        wait_for_streams(gateway, {**idle, "stream": 1}, timeout=3)
    finally:
        first.close()
    wait_for_streams(gateway, idle, timeout=3)
    # A stream read to its end is no longer counted either; a plain answer never was.
    _, rest = open_stream(gateway, items=3, gap_ms=0)
    assert b"event: end" in list(rest)
    wait_for_streams(gateway, idle)
    assert gateway.run("echo", VALUE=1).status_code == 200
    assert gateway.get("/dashboard/data").json()["ACTIVE_STREAMS"] == idle


# -- the live page in a browser ---------------------------------------------------------------

def skip_loudly(capsys: pytest.CaptureFixture[str], reason: str, detail: str = "") -> None:
    with capsys.disabled():
        print(f"\n*** BROWSER TEST SKIPPED: {reason}\n{detail}", file=sys.stderr)
    pytest.skip(reason)


def find_or_install_chromium(capsys: pytest.CaptureFixture[str]) -> str:
    found = next((path for path in CHROMIUM if os.access(path, os.X_OK)), None)
    if found:
        return found
    try:
        install("chromium", APT_TIMEOUT)
    except NotInstalled as exc:
        skip_loudly(capsys, f"Chromium is not installed (/usr/bin/chromium): {exc}")
    found = next((path for path in CHROMIUM if os.access(path, os.X_OK)), None)
    if found is None:
        skip_loudly(capsys, "`apt-get install -y chromium` did not install Chromium")
    return found  # type: ignore[return-value]


@pytest.fixture
def chromium(capsys) -> Iterator[Any]:
    """A headless Chromium browser (Playwright), the system's package; skips the test when there is none."""
    try:
        from playwright.sync_api import Error as PlaywrightError
        from playwright.sync_api import sync_playwright
    except ImportError as exc:
        skip_loudly(capsys, f"Playwright is not installed ({exc}): pip install -r requirements-dev.txt")
    executable = find_or_install_chromium(capsys)
    with sync_playwright() as playwright:
        try:
            browser = playwright.chromium.launch(executable_path=executable, headless=True, timeout=30_000)
        except PlaywrightError as exc:
            skip_loudly(capsys, f"Chromium {executable} does not start: {str(exc).splitlines()[0]}", str(exc))
        try:
            yield browser
        finally:
            browser.close()


@pytest.mark.timeout(180)
def test_dashboard_shows_servers_support_data_and_live_request_counts(gateway_factory, chromium):
    from playwright.sync_api import expect

    gateway = gateway_factory(copy.deepcopy(STREAM_CONFIG))
    servers = gateway.servers()
    page = chromium.new_page(viewport={"width": 1280, "height": 900})
    page.set_default_timeout(10_000)
    problems: list[str] = []
    foreign: list[str] = []
    navigations: list[str] = []
    page.on("console", lambda m: problems.append(f"console {m.type}: {m.text}") if m.type in ("error", "warning")
            else None)
    page.on("pageerror", lambda exc: problems.append(f"page error: {exc}"))
    page.on("requestfailed", lambda r: problems.append(f"request failed: {r.url} ({r.failure})"))
    page.on("response", lambda r: problems.append(f"HTTP {r.status}: {r.url}") if r.status >= 400 else None)
    page.on("request", lambda r: None if r.url.startswith(gateway.url + "/") else foreign.append(r.url))
    page.on("framenavigated", lambda frame: navigations.append(frame.url) if frame == page.main_frame else None)

    reply = page.goto(gateway.url + "/dashboard")
    assert reply is not None and reply.status == 200
    try:
        expect(page.locator("#last-update")).not_to_have_text("never")
    except AssertionError as exc:
        raise AssertionError(f"the page shows no data; the browser reported: {problems}") from exc
    assert problems == [], problems
    # Every configured model server has its row, READY, with the pid and port the gateway reports.
    for name in ("echo", "echo_b"):
        row = page.locator(f'tr[data-server="{name}"]')
        expect(row.locator('[data-col="state"]')).to_have_text("READY")
        expect(row.locator('[data-col="pid"]')).to_have_text(str(servers[name]["PID"]))
        expect(row.locator('[data-col="port"]')).to_have_text(str(servers[name]["PORT"]))
        expect(page.locator(f'[data-requests="{name}"]')).to_have_text("0")
        expect(page.locator(f'tr[data-memory="{name}"]')).to_contain_text(re.compile(r"\d+\.\d"))
    expect(page.locator('tr[data-server="echo"] [data-col="workers"]')).to_have_text("2/2")
    expect(page.locator('tr[data-server="echo_off"]')).to_have_count(0)  # disabled: never started
    # The support process, with the data it posts.
    expect(page.locator('tr[data-support="helper"] [data-col="state"]')).to_have_text("READY")
    expect(page.locator('[data-support-data="helper"]')).to_contain_text(re.compile(r"beat: \d+"))
    expect(page.locator("#error-banner")).to_be_hidden()

    # A burst of requests shows up without reloading the page: in the totals, then in the chart.
    with ThreadPoolExecutor(max_workers=6) as pool:
        codes = list(pool.map(lambda i: requests.post(gateway.url + "/run", json={"SIGNATURE": "echo", "VALUE": i},
                                                      timeout=10).status_code, range(BURST)))
    assert codes == [200] * BURST
    # The update that shows the total also shows a rate (from the totals of two polls), in the same render.
    page.wait_for_function(
        """total => document.querySelector('[data-requests="echo"]').textContent === String(total)
                    && Number(document.querySelector('[data-rate="echo"]').textContent) > 0""",
        arg=BURST, timeout=10_000)
    expect(page.locator('tr[data-endpoint="echo"] [data-code="200"]')).to_have_text(f"200: {BURST}")
    expect(page.locator('[data-requests="echo_b"]')).to_have_text("0")
    # Errors are counted by status code.
    for i in range(8):
        assert gateway.run("echo_b", VALUE=i, FAIL=int(i < 2)).status_code == (500 if i < 2 else 200)
    expect(page.locator('[data-requests="echo_b"]')).to_have_text("8")
    expect(page.locator('[data-server-errors="echo_b"]')).to_have_text("2")
    expect(page.locator('[data-client-errors="echo_b"]')).to_have_text("0")
    assert gateway.run("echo_b").status_code == 400  # no VALUE: the caller's mistake
    expect(page.locator('[data-client-errors="echo_b"]')).to_have_text("1")
    expect(page.locator('[data-server-errors="echo_b"]')).to_have_text("2")
    # The event history: the start, then a reload, newest first.
    expect(page.locator('tr[data-event="STARTUP"]')).to_have_count(1)
    assert gateway.admin("/reload_server", {"SIGNATURE": "echo_b"}).status_code == 200
    expect(page.locator('#events tr').first).to_have_attribute("data-event", "RELOAD", timeout=6_000)
    expect(page.locator('#events tr').first.locator('[data-col="name"]')).to_have_text("echo_b")
    expect(page.locator('tr[data-endpoint="echo_b"] [data-code="500"]')).to_have_text("500: 2")
    # A stream in progress shows in its endpoint's row and in the total until its client closes it.
    expect(page.locator('[data-streams="stream"]')).to_have_text("0")
    reply, lines = open_stream(gateway, items=100, gap_ms=100)  # 10 s, closed well before its end; lines kept
    try:
        expect(page.locator('[data-streams="stream"]')).to_have_text("1", timeout=6_000)
        expect(page.locator("[data-streams-total]")).to_have_text("1")
        expect(page.locator('[data-streams="echo"]')).to_have_text("0")
    finally:
        reply.close()
    expect(page.locator('[data-streams="stream"]')).to_have_text("0", timeout=6_000)
    # Durable jobs: a row per endpoint once the store has been counted (every 5 s), with the jobs ended.
    expect(page.locator("#jobs")).to_contain_text("No job yet.")
    for i in range(3):
        submitted = requests.post(gateway.url + "/jobs", json={"SIGNATURE": "echo", "VALUE": i}, timeout=10)
        assert submitted.status_code == 202
    expect(page.locator('tr[data-jobs="echo"] [data-col="ended"]')).to_have_text("3", timeout=12_000)
    expect(page.locator('tr[data-jobs="echo"] [data-col="queued"]')).to_have_text("0", timeout=12_000)
    # The gateway's 5 s interval with the burst ends, then the next poll draws it.
    rps_line = page.locator('svg[data-chart="rps"] path[data-series="echo"][data-kind="rps"]')
    expect(rps_line).to_have_count(1, timeout=12_000)
    expect(page.locator('svg[data-chart="latency"] path[data-series="echo"][data-kind="p99"]')).to_have_count(1)
    assert navigations == [gateway.url + "/dashboard"], navigations
    assert foreign == [], f"requests outside the gateway: {foreign}"
    assert problems == [], problems

    SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOT), full_page=True)
    if os.environ.get("BIS_UPDATE_DOCS") == "1":  # refresh the README's picture on request only
        shutil.copyfile(SCREENSHOT, DOCS_SCREENSHOT)

    # A failing poll shows the banner and keeps the last data; the next good poll clears it.
    page.route("**/dashboard/data", lambda route: route.fulfill(status=503, body="down for the test"))
    expect(page.locator("#error-banner")).to_be_visible(timeout=6_000)
    expect(page.locator("#error-banner")).to_contain_text("HTTP 503")
    expect(page.locator('[data-requests="echo"]')).to_have_text(str(BURST))
    page.unroute("**/dashboard/data")
    expect(page.locator("#error-banner")).to_be_hidden(timeout=6_000)
    page.close()
