"""The operator console (``/console``) driven in a real headless Chromium.

A real control plane (and, for the health test, a real data plane) with real demo
backends; Selenium drives Debian's ``chromium`` through ``chromium-driver``. The
session fixture installs both with apt-get when they are missing and skips, loudly,
only when that install fails. Every wait polls the page with a deadline
(WebDriverWait); the browser is quit and every process stopped even on failure.
Selenium blocks, so the browser steps run in a worker thread while the event loop
keeps serving the in-process demo backends.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import shutil
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from selenium import webdriver
from selenium.common.exceptions import (
    ElementClickInterceptedException,
    ElementNotInteractableException,
    NoSuchElementException,
    StaleElementReferenceException,
)
from selenium.webdriver.chrome.options import Options as ChromeOptions
from selenium.webdriver.chrome.service import Service as ChromeService
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webelement import WebElement
from selenium.webdriver.support.ui import Select, WebDriverWait

from control_plane.console_site import add_console_routes
from tests.support.admin import admin
from tests.support.ferry_cluster import Cluster, wait_dp_synced
from tests.support.http import wait_http_ok
from tests.support.polling import wait_for

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
APT_PACKAGES = ["chromium", "chromium-driver"]

#: Passive checks only: nothing but the operator changes a target's health here, so
#: each state the test waits for holds still (no probe can bring a target back).
PASSIVE_CHECKS = {"passive": {"unhealthy": {"tcp_failures": 3}}}
#: A tag that would run script if the console rendered it as HTML.
HOSTILE_TAG = "<img src=x onerror=window.pwned=1>"
#: Deadline of one wait on the page: a DP report plus one 2 s poll takes ~3 s.
WAIT = 20.0

T = TypeVar("T")


# ------------------------------------------------------------------ browser


def _run(command: list[str]) -> subprocess.CompletedProcess[str]:
    """Run an apt-get command non-interactively; a hang past 20 minutes is a failure."""
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    try:
        return subprocess.run(
            command, env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True,
            timeout=1200, check=False,
        )
    except subprocess.TimeoutExpired as exc:
        output = (exc.stdout or b"").decode(errors="replace") if isinstance(exc.stdout, bytes) else (exc.stdout or "")
        return subprocess.CompletedProcess(command, -1, output, f"timed out after {exc.timeout} s")


@pytest.fixture(scope="session")
def chromium() -> None:
    """Debian's chromium + chromium-driver, installed with apt-get when missing."""
    if CHROMIUM.exists() and CHROMEDRIVER.exists():
        return
    if shutil.which("apt-get") is None:
        pytest.skip(f"!!! BROWSER TESTS SKIPPED: {CHROMEDRIVER} is missing and there is no apt-get "
                    f"to install {' '.join(APT_PACKAGES)} !!!")
    sudo = [] if os.geteuid() == 0 else ["sudo", "-n"]
    if sudo and shutil.which("sudo") is None:
        pytest.skip(f"!!! BROWSER TESTS SKIPPED: {CHROMEDRIVER} is missing, and installing "
                    f"{' '.join(APT_PACKAGES)} needs root (no sudo here) !!!")
    # `env`: sudo may drop DEBIAN_FRONTEND from the environment it passes on.
    apt = [*sudo, "env", "DEBIAN_FRONTEND=noninteractive", "apt-get"]
    install = [*apt, "install", "-y", "--no-install-recommends", *APT_PACKAGES]
    result = _run(install)
    if result.returncode != 0:  # no package lists yet (a fresh container): update, then again
        _run([*apt, "update"])
        result = _run(install)
    if result.returncode != 0 or not (CHROMIUM.exists() and CHROMEDRIVER.exists()):
        tail = (result.stdout + result.stderr)[-3000:]
        pytest.skip(
            f"!!! BROWSER TESTS SKIPPED: `{' '.join(install)}` failed (exit {result.returncode}); "
            f"install {' '.join(APT_PACKAGES)} to run them. apt output (tail):\n{tail}"
        )


@pytest.fixture
def browser(chromium: None, tmp_path: Path) -> Iterator[webdriver.Chrome]:
    """A headless Chromium with its own profile; quit at teardown whatever happened."""
    options = ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for argument in (
        "--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
        "--no-first-run", "--disable-extensions", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--window-size=1400,1000",
        f"--user-data-dir={tmp_path / 'chromium-profile'}",
    ):
        options.add_argument(argument)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    service = ChromeService(executable_path=str(CHROMEDRIVER), log_output=str(tmp_path / "chromedriver.log"))
    driver = webdriver.Chrome(service=service, options=options)
    try:
        yield driver
    finally:
        driver.quit()


class Console:
    """The console page, read and clicked as an operator would (visible text, buttons)."""

    def __init__(self, driver: webdriver.Chrome, admin_url: str) -> None:
        self.driver = driver
        self.url = f"{admin_url}/console"

    def open(self) -> None:
        self.driver.get(self.url)

    def wait(self, condition: Callable[[], T | None], message: str, timeout: float = WAIT) -> T:
        """Poll ``condition`` until it returns something truthy; fail after ``timeout`` s."""
        waiter = WebDriverWait(
            self.driver, timeout, poll_frequency=0.05,
            ignored_exceptions=(NoSuchElementException, StaleElementReferenceException),
        )
        try:
            result = waiter.until(lambda _driver: condition(), message)
        except Exception:
            print(f"--- page when waiting for {message} ---\n{self.page_text()}")
            raise
        assert result is not None  # until() returns only a truthy value
        return result

    def page_text(self) -> str:
        try:
            return str(self.driver.find_element(By.TAG_NAME, "body").text)
        except Exception as exc:  # noqa: BLE001 - diagnostics only
            return f"(no page text: {exc})"

    def visible(self, css: str) -> WebElement | None:
        found = [e for e in self.driver.find_elements(By.CSS_SELECTOR, css) if e.is_displayed()]
        return found[0] if found else None

    def text(self, css: str) -> str:
        element = self.visible(css)
        return str(element.text) if element is not None else ""

    def click(self, css: str, message: str) -> None:
        """Click the visible element ``css`` once (retried only while the click cannot happen)."""

        def clicked() -> bool:
            element = self.visible(css)
            if element is None or not element.is_enabled():
                return False
            try:
                element.click()
            except (ElementClickInterceptedException, ElementNotInteractableException):
                return False
            return True

        self.wait(clicked, message)

    def type_into(self, css: str, text: str) -> None:
        element = self.wait(lambda: self.visible(css), f"{css} to be visible")
        assert element is not None
        element.clear()
        element.send_keys(text)

    @staticmethod
    def row_css(upstream: str, target: str) -> str:
        return f'section.upstream[data-upstream="{upstream}"] tr[data-target="{target}"]'

    def target_row(self, upstream: str, target: str) -> dict[str, Any] | None:
        """What the row of ``target`` shows: weight, cluster health, each DP's view."""
        row = self.visible(self.row_css(upstream, target))
        if row is None:
            return None
        per_dp = {
            str(item.get_attribute("data-dp")): str(item.find_element(By.CSS_SELECTOR, ".badge").text)
            for item in row.find_elements(By.CSS_SELECTOR, "td.per-dp li")
        }
        return {
            "target": str(row.find_element(By.CSS_SELECTOR, "td.target").text),
            "weight": str(row.find_element(By.CSS_SELECTOR, "td.weight").text),
            "health": str(row.find_element(By.CSS_SELECTOR, "td.health-cell .badge").text),
            "data_planes": per_dp,
        }

    def wait_target(self, upstream: str, target: str, *, health: str, dp: str | None = None,
                    weight: str | None = None) -> dict[str, Any]:
        """Until the row of ``target`` shows ``health`` (and so does ``dp``'s view, if given)."""

        def shown() -> dict[str, Any] | None:
            row = self.target_row(upstream, target)
            if row is None or row["health"] != health:
                return None
            if dp is not None and row["data_planes"].get(dp) != health:
                return None
            if weight is not None and row["weight"] != weight:
                return None
            return row

        return self.wait(shown, f"{upstream}/{target} to show {health}" + (f" on {dp}" if dp else ""))

    def add_target(self, upstream: str, target: str, weight: int) -> None:
        select = self.wait(lambda: self.visible("#add-upstream"), "the add-target form")
        assert select is not None
        Select(select).select_by_visible_text(upstream)
        self.type_into("#add-target", target)
        self.type_into("#add-weight", str(weight))
        self.click("#add-submit", "the Add target button")

    def press(self, upstream: str, target: str, action: str) -> None:
        self.click(f'{self.row_css(upstream, target)} button[data-action="{action}"]',
                   f"the {action} button of {target}")

    def enter_token(self, token: str) -> None:
        self.type_into("#token-input", token)
        self.click("#token-submit", "the Use token button")

    def severe_log_entries(self) -> list[str]:
        """Browser console errors other than the expected failed requests (CSP
        violations and script errors show here)."""
        entries = self.driver.get_log("browser")
        return [
            str(e["message"]) for e in entries
            if e.get("level") == "SEVERE" and "Failed to load resource" not in str(e["message"])
        ]


async def ui(step: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """Run a blocking browser step in a thread: the loop keeps serving the backends."""
    return await asyncio.to_thread(step, *args, **kwargs)


# ------------------------------------------------------------------ tests


async def test_console_assets_are_served_without_a_token_with_types_and_a_strict_policy() -> None:
    app = web.Application()
    add_console_routes(app)
    async with TestClient(TestServer(app)) as client:
        page = await client.get("/console")
        assert page.status == 200
        assert page.headers["Content-Type"] == "text/html; charset=utf-8"
        assert page.headers["Cache-Control"] == "no-cache"
        assert "default-src 'self'" in page.headers["Content-Security-Policy"]
        html = await page.text()
        assert '<script src="/console/console.js"' in html and "<script>" not in html
        for asset, content_type in (("console.js", "text/javascript"), ("console.css", "text/css")):
            response = await client.get(f"/console/{asset}")
            assert response.status == 200
            assert response.headers["Content-Type"] == f"{content_type}; charset=utf-8"
            assert response.headers["Cache-Control"] == "no-cache"
        js = await (await client.get("/console/console.js")).text()
        assert "innerHTML" not in js and "insertAdjacentHTML" not in js and "eval(" not in js
        missing = await client.get("/console/secrets.txt")
        assert missing.status == 404
        assert await missing.json() == {"message": "Not found"}
        redirect = await client.get("/console/", allow_redirects=False)
        assert redirect.status == 301 and redirect.headers["Location"] == "/console"


async def test_console_adds_a_target_and_shows_its_health(
    cluster: Cluster, http: aiohttp.ClientSession, backends: Any, browser: webdriver.Chrome
) -> None:
    cp = cluster.start_control_plane()
    await wait_http_ok(http, f"{cluster.admin}/status", cp)
    a = f"127.0.0.1:{await backends('backend-a')}"
    b = f"127.0.0.1:{await backends('backend-b')}"
    await admin(http, "POST", f"{cluster.admin}/upstreams",
                {"name": "shop", "tags": [HOSTILE_TAG], "healthchecks": PASSIVE_CHECKS})
    await admin(http, "POST", f"{cluster.admin}/upstreams/shop/targets", {"target": a})
    dp = cluster.start_data_plane("dp1")
    await wait_http_ok(http, f"{dp.status}/status/ready", dp.process)
    await wait_dp_synced(http, cluster, dp.status)

    console = Console(browser, cluster.admin)
    await ui(console.open)
    # The upstream, its existing target and how the data plane sees it; the data plane.
    await ui(console.wait_target, "shop", a, health="HEALTHY", dp="dp1", weight="100")
    # The DP's ACK may reach the CP a moment after the DP shows the version: wait for it.
    sync = await ui(console.wait,
                    lambda: console.text('#data-planes-body tr[data-dp="dp1"] td.dp-sync') == "SYNCED",
                    "the data plane row, SYNCED")
    assert sync
    # User text is shown as text, never run as HTML.
    tag = await ui(console.text, 'section.upstream[data-upstream="shop"] .tag')
    assert tag == HOSTILE_TAG
    assert await ui(browser.find_elements, By.CSS_SELECTOR, "#upstreams img") == []
    assert await ui(browser.execute_script, "return window.pwned === undefined") is True

    # Add a target through the form: it appears, and the data plane reports it.
    await ui(console.add_target, "shop", b, 50)
    row = await ui(console.wait_target, "shop", b, health="HEALTHY", dp="dp1", weight="50")
    assert row["target"] == b
    targets = await admin(http, "GET", f"{cluster.admin}/upstreams/shop/targets")
    assert {t["target"]: t["weight"] for t in targets["data"]} == {a: 100, b: 50}

    # An Admin API error is shown in the page: the same target again is a conflict.
    await ui(console.add_target, "shop", b, 10)
    error = await ui(console.wait, lambda: console.text("#error"), "the conflict to be shown")
    assert "UNIQUE violation" in error and "409" in error, error
    await ui(console.click, "#error-dismiss", "the Dismiss button")

    # Mark it unhealthy: every data plane takes it out and the view follows; a stays up.
    await ui(console.press, "shop", b, "unhealthy")
    await ui(console.wait_target, "shop", b, health="UNHEALTHY", dp="dp1")
    assert (await ui(console.target_row, "shop", a) or {}).get("health") == "HEALTHY"
    # ...and back.
    await ui(console.press, "shop", b, "healthy")
    await ui(console.wait_target, "shop", b, health="HEALTHY", dp="dp1")

    # Remove it (the console asks first): the row disappears, and so does the target.
    await ui(console.press, "shop", b, "remove")
    await ui(console.press, "shop", b, "confirm-remove")
    await ui(console.wait, lambda: console.visible(Console.row_css("shop", b)) is None, f"{b} to disappear")
    targets = await admin(http, "GET", f"{cluster.admin}/upstreams/shop/targets")
    assert [t["target"] for t in targets["data"]] == [a]
    assert await ui(console.visible, Console.row_css("shop", a)) is not None

    assert await ui(console.severe_log_entries) == []


async def test_console_asks_for_an_admin_token_and_says_when_it_is_read_only(
    cluster: Cluster, http: aiohttp.ClientSession, browser: webdriver.Chrome, tmp_path: Path
) -> None:
    admin_token, read_only_token = "ferry_console-test-admin", "ferry_console-test-read-only"
    tokens_file = tmp_path / "admin-tokens.yaml"
    tokens_file.write_text(
        "# ferry admin tokens: only SHA-256 hashes of the tokens are stored\n"
        "tokens:\n"
        f"  - name: ops\n    role: admin\n    sha256: {hashlib.sha256(admin_token.encode()).hexdigest()}\n"
        f"  - name: viewer\n    role: read-only\n    sha256: {hashlib.sha256(read_only_token.encode()).hexdigest()}\n"
    )
    cp = cluster.start_control_plane("--admin-tokens", str(tokens_file))
    headers = {"Ferry-Admin-Token": admin_token}

    async def ready() -> bool:
        assert cp.returncode is None, f"control plane exited {cp.returncode}:\n{cp.log()}"
        try:
            async with http.get(f"{cluster.admin}/status", headers=headers,
                                timeout=aiohttp.ClientTimeout(total=1)) as response:
                return response.status == 200
        except (aiohttp.ClientError, OSError, TimeoutError):
            return False

    await wait_for(ready, timeout=30, message="the control plane to answer with the admin token")
    for path, body in (("/upstreams", {"name": "shop"}),
                       ("/upstreams/shop/targets", {"target": "127.0.0.1:9"})):
        async with http.post(f"{cluster.admin}{path}", json=body, headers=headers) as response:
            assert response.status == 201, await response.text()

    console = Console(browser, cluster.admin)
    await ui(console.open)  # the page itself needs no token
    message = await ui(console.wait, lambda: console.text("#token-message"), "the token form")
    assert "requires an admin token" in message, message
    assert await ui(console.visible, "#main") is None

    # A wrong token is refused and the form asks again.
    await ui(console.enter_token, "not-a-token")
    await ui(console.wait, lambda: console.visible('#token-message[data-refused="true"]'), "the refusal")

    # A read-only token shows the upstreams; a write with it says it is read-only.
    await ui(console.enter_token, read_only_token)
    # No data plane and no checks configured: Kong's HEALTHCHECKS_OFF.
    await ui(console.wait_target, "shop", "127.0.0.1:9", health="HEALTHCHECKS_OFF")
    stored = await ui(browser.execute_script, "return sessionStorage.getItem('ferry-admin-token')")
    assert stored == read_only_token
    await ui(console.press, "shop", "127.0.0.1:9", "unhealthy")
    error = await ui(console.wait, lambda: console.text("#error"), "the read-only message")
    assert "This token is read-only" in error and "403" in error, error

    # Forget it, give the admin token: the same write now goes through.
    await ui(console.click, "#forget-token", "the Forget token button")
    await ui(console.wait, lambda: console.visible("#token-panel"), "the token form again")
    await ui(console.enter_token, admin_token)
    await ui(console.wait_target, "shop", "127.0.0.1:9", health="HEALTHCHECKS_OFF")
    await ui(console.press, "shop", "127.0.0.1:9", "unhealthy")
    notice = await ui(console.wait, lambda: console.text("#notice"), "the write to succeed")
    assert "Marked 127.0.0.1:9 unhealthy" in notice, notice
    assert await ui(console.severe_log_entries) == []


def timeline(console: Console, upstream: str, target: str) -> dict[str, list[tuple[str, str, str]]]:
    """What the open history of ``upstream`` shows for ``target``: per data plane
    (hostname), its events as ``(from, to, reason)``, in the page's order."""
    section = console.visible(f'section.upstream[data-upstream="{upstream}"] details.history '
                              f'section.timeline[data-target="{target}"]')
    if section is None:
        return {}
    return {
        str(lane.get_attribute("data-dp")): [
            (str(item.get_attribute("data-from")), str(item.get_attribute("data-to")),
             "".join(str(r.text) for r in item.find_elements(By.CSS_SELECTOR, ".reason")).strip())
            for item in lane.find_elements(By.CSS_SELECTOR, "li.event")
        ]
        for lane in section.find_elements(By.CSS_SELECTOR, ".timeline-dp")
    }


async def test_console_shows_each_targets_health_timeline_per_data_plane(
    cluster: Cluster, http: aiohttp.ClientSession, backends: Any, browser: webdriver.Chrome
) -> None:
    cp = cluster.start_control_plane()
    await wait_http_ok(http, f"{cluster.admin}/status", cp)
    a = f"127.0.0.1:{await backends('backend-a')}"
    await admin(http, "POST", f"{cluster.admin}/upstreams", {"name": "shop", "healthchecks": PASSIVE_CHECKS})
    await admin(http, "POST", f"{cluster.admin}/upstreams/shop/targets", {"target": a})
    dp = cluster.start_data_plane("dp1")
    await wait_http_ok(http, f"{dp.status}/status/ready", dp.process)
    await wait_dp_synced(http, cluster, dp.status)

    console = Console(browser, cluster.admin)
    await ui(console.open)
    await ui(console.wait_target, "shop", a, health="HEALTHY", dp="dp1")
    await ui(console.click, 'section.upstream[data-upstream="shop"] details.history summary',
             "the Health history summary")
    first = await ui(console.wait, lambda: timeline(console, "shop", a).get("dp1"), "the first event")
    assert [(f, t) for f, t, _ in first] == [("", "HEALTHY")]

    # Out and back through the operator's overrides: each is a transition on dp1.
    await ui(console.press, "shop", a, "unhealthy")
    await ui(console.wait_target, "shop", a, health="UNHEALTHY", dp="dp1")
    await ui(console.press, "shop", a, "healthy")
    await ui(console.wait_target, "shop", a, health="HEALTHY", dp="dp1")
    events = await ui(console.wait, lambda: (lambda e: e if len(e) == 3 else None)(
        timeline(console, "shop", a).get("dp1", [])), "three events on dp1's timeline")
    assert [(f, t) for f, t, _ in events] == [("UNHEALTHY", "HEALTHY"), ("HEALTHY", "UNHEALTHY"), ("", "HEALTHY")]
    assert events[0][2] and events[1][2]  # each transition says why
    # The timeline is the Admin API's history, newest first.
    history = await admin(http, "GET", f"{cluster.admin}/upstreams/shop/health/events")
    assert [(e["from"] or "", e["to"], e["reason"]) for e in history["data"]] == events
    assert await ui(console.severe_log_entries) == []


async def test_console_says_which_data_planes_have_an_upstream_in_panic(
    cluster: Cluster, http: aiohttp.ClientSession, backends: Any, browser: webdriver.Chrome
) -> None:
    cp = cluster.start_control_plane()
    await wait_http_ok(http, f"{cluster.admin}/status", cp)
    a = f"127.0.0.1:{await backends('backend-a')}"
    b = f"127.0.0.1:{await backends('backend-b')}"
    await admin(http, "POST", f"{cluster.admin}/upstreams",
                {"name": "shop", "healthchecks": {**PASSIVE_CHECKS, "panic_threshold": 60}})
    for target in (a, b):
        await admin(http, "POST", f"{cluster.admin}/upstreams/shop/targets", {"target": target})
    dp = cluster.start_data_plane("dp1")
    await wait_http_ok(http, f"{dp.status}/status/ready", dp.process)
    await wait_dp_synced(http, cluster, dp.status)

    console = Console(browser, cluster.admin)
    badge_css = 'section.upstream[data-upstream="shop"] .badge.panic'
    await ui(console.open)
    await ui(console.wait_target, "shop", b, health="HEALTHY", dp="dp1")
    assert await ui(console.visible, badge_css) is None  # 100 % healthy: no panic

    # One of two targets out: 50 % healthy < 60 %, dp1 balances over both.
    await ui(console.press, "shop", a, "unhealthy")
    text = await ui(console.wait, lambda: console.text(badge_css), "the panic badge")
    assert text == "panic on 1 data plane"
    badge = await ui(console.visible, badge_css)
    assert badge is not None and "60%" in str(badge.get_attribute("title"))
    await ui(console.press, "shop", a, "healthy")
    await ui(console.wait, lambda: console.visible(badge_css) is None or None, "the panic badge to go")
    assert await ui(console.severe_log_entries) == []
