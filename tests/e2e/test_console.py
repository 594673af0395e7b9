"""The browser console in a real headless Chromium against the session's `ratewatch up`:
sign in (from the address's ``#key=``, the form, a bad key), see the traffic the test sent
in Overview and Segments, read a block's reason in Security and lift it, move between
pages with the keyboard, sign out.  Screenshots (light and dark, narrow and wide) go to a
folder the run prints."""

from __future__ import annotations

import asyncio
import re
import secrets
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.sync_api import Browser, BrowserContext, Dialog, Page
from redis.asyncio import Redis

from limiter.keyspace import Keyspace
from limiter.state.blocks import BlockStore
from tests.support.browser import PageProblems, chromium, chromium_path, screenshots_dir
from tests.support.credentials import STACK_PREFIX, create_key
from tests.support.polling import wait_until
from tests.support.servers import RatewatchProcess, RedisServer

pytestmark = pytest.mark.timeout(180)

WIDE = {"width": 1280, "height": 900}
NARROW = {"width": 390, "height": 844}
# (key, route, segment, checks, limit): 9 requests, 7 allowed, 2 denied
TRAFFIC = [
    ("user:console-1", "/search", "pro", 6, 4),
    ("user:console-2", "/orders", "free", 3, 10),
]


@pytest.fixture(scope="module")
def browser(stack: RatewatchProcess) -> Iterator[Browser]:
    # the stack first: its start runs an event loop, and Playwright's keeps one running
    with chromium() as launched:
        yield launched


def new_key(redis_url: str, tenant: str, *, admin: bool = False) -> str:
    """A key of ``tenant`` on the stack, made on a thread of its own: Playwright's event
    loop runs on this one."""
    with ThreadPoolExecutor(1) as pool:
        return pool.submit(create_key, redis_url, tenant, admin=admin, prefix=STACK_PREFIX).result()


@pytest.fixture(scope="module")
def shots(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = screenshots_dir(tmp_path_factory.mktemp("console-screenshots"))
    reporter = request.config.pluginmanager.get_plugin("terminalreporter")
    if reporter is not None:
        reporter.write_line(f"console screenshots: {folder}")
    return folder


@pytest.fixture
def admin_key(stack: RatewatchProcess, redis_server: RedisServer, tenant: str) -> str:
    return new_key(redis_server.url, tenant, admin=True)


@pytest.fixture
def admin(stack: RatewatchProcess, admin_key: str) -> Iterator[httpx.Client]:
    with httpx.Client(
        base_url=stack.base_url, timeout=30, headers={"Authorization": f"Bearer {admin_key}"}
    ) as client:
        yield client


class Tab:
    """A page of a fresh browser context (its own session storage), and what went wrong
    in it."""

    def __init__(self, browser: Browser, base_url: str, scheme: str = "light", size: Any = WIDE):
        self.context: BrowserContext = browser.new_context(
            base_url=base_url, color_scheme=scheme, viewport=size
        )
        self.page: Page = self.context.new_page()
        self.problems = PageProblems(self.page)

    def stored_key(self) -> str | None:
        value: str | None = self.page.evaluate("sessionStorage.getItem('ratewatch.apiKey')")
        return value

    def refresh(self) -> None:
        """Reload the page's data with its Refresh button and wait for the answer."""
        self.page.get_by_role("button", name="Refresh").click()
        self.page.wait_for_selector(".page-body[aria-busy=false]")

    def open(self, name: str) -> None:
        self.page.get_by_role("navigation").get_by_role("link", name=name).click()
        self.page.wait_for_selector(f"h1:text-is('{name}')")
        self.page.wait_for_selector(".page-body[aria-busy=false]")

    def close(self) -> None:
        self.context.close()
        assert not self.problems.messages, self.problems.messages


@pytest.fixture
def tab(browser: Browser, stack: RatewatchProcess) -> Iterator[Tab]:
    opened = Tab(browser, stack.base_url)
    yield opened
    opened.close()


def detector_block(redis_url: str, tenant: str, explanation: dict[str, Any]) -> str:
    """A block of the kind the detector writes (score, explanation), straight to the
    stack's store as the detector does; its id."""

    async def go() -> str:
        client = Redis.from_url(redis_url)
        try:
            block = await BlockStore(client, Keyspace(STACK_PREFIX)).create(
                tenant,
                "ip",
                "192.0.2.77",
                600,
                explanation["reasons"][0],
                source="detector",
                detector="rules",
                score=0.93,
                explanation=explanation,
            )
            return block.id
        finally:
            await client.aclose()

    with ThreadPoolExecutor(1) as pool:  # Playwright's event loop runs on this thread
        return pool.submit(asyncio.run, go()).result()


def send_traffic(client: httpx.Client) -> None:
    for key, route, segment, checks, limit in TRAFFIC:
        for _ in range(checks):
            body = {"key": key, "limit": limit, "window": 300, "route": route, "segment": segment}
            response = client.post("/v1/check", json=body)
            assert response.status_code == 200, response.text


def stat(page: Page, name: str) -> str:
    return page.inner_text(f"[data-stat={name}]").strip()


def test_up_prints_the_console_address(stack: RatewatchProcess) -> None:
    # the whole log: the address is printed at start, and the session's stack logs a lot since
    assert stack.log_path is not None
    log = stack.log_path.read_text(errors="replace")
    assert f"Console: http://127.0.0.1:{stack.port}/" in log


def test_sign_in_from_the_address_shows_the_traffic_sent_and_lifts_a_block(
    browser: Browser, stack: RatewatchProcess, admin: httpx.Client, admin_key: str, shots: Path
) -> None:
    send_traffic(admin)
    subject = f"198.51.100.{secrets.randbelow(250) + 1}"
    reason = f"credential stuffing seen by the console test {secrets.token_hex(3)}"
    created = admin.post(
        "/v1/blocks", json={"scope": "ip", "value": subject, "ttl": 600, "reason": reason}
    )
    assert created.status_code == 201, created.text
    block_id = created.json()["id"]

    tab = Tab(browser, stack.base_url)
    page = tab.page
    page.goto(f"/#key={admin_key}")
    page.wait_for_selector("h1:text-is('Overview')")
    # the key left the address bar (its history entry replaced) for the tab's storage
    assert admin_key not in page.url
    assert "key=" not in page.url
    assert tab.stored_key() == admin_key
    assert page.inner_text("#role") == "Admin key"

    page.get_by_role("radio", name="1h", exact=True).check()
    page.wait_for_selector("h2:text-is('Totals, last 1h')")

    # the pipeline writes the rollups a moment after the checks: poll the page
    def totals_shown() -> bool:
        tab.refresh()
        return (stat(page, "requests"), stat(page, "allowed"), stat(page, "denied")) == (
            "9",
            "7",
            "2",
        )

    wait_until(totals_shown, 60, "the Overview showing 9 requests, 7 allowed, 2 denied", 0.5)
    assert stat(page, "deny_rate") == "22.22 %"
    top_keys = page.get_by_role("table", name="Top keys by requests")
    assert top_keys.get_by_role("row", name="user:console-1").inner_text().split() == [
        "user:console-1",
        "6",
        "4",
        "2",
        "33.33",
        "%",
    ]
    page.wait_for_selector(".chart canvas")
    page.screenshot(path=shots / "overview-light-wide.png", full_page=True)

    tab.open("Segments")
    page.get_by_role("radio", name="1h", exact=True).check()
    page.wait_for_selector(".page-body[aria-busy=false] table")
    segments = page.get_by_role("table", name="Usage by segment")
    assert segments.get_by_role("row", name="pro").inner_text().split()[:2] == ["pro", "6"]
    assert segments.get_by_role("row", name="free").inner_text().split()[:2] == ["free", "3"]
    page.screenshot(path=shots / "segments-light-wide.png", full_page=True)

    tab.open("Security")
    card = page.locator(f"[data-block-id='{block_id}']")
    assert card.locator(".reason").inner_text() == reason
    assert "Manual" in card.inner_text()
    page.screenshot(path=shots / "security-light-wide.png", full_page=True)
    page.once("dialog", lambda dialog: dialog.accept())
    card.get_by_role("button", name=f"Lift the block on ip {subject}").click()
    card.wait_for(state="detached")
    assert page.get_by_role("status").filter(has_text="Lifted the block").count() == 1
    listed = admin.get("/v1/blocks").json()["blocks"]
    assert block_id not in {block["id"] for block in listed}
    tab.close()


def test_a_detector_block_shows_its_explanation(
    tab: Tab, redis_server: RedisServer, tenant: str, admin_key: str, shots: Path
) -> None:
    explanation = {
        "detector": "rules",
        "detector_version": "1",
        "score": 0.93,
        "threshold": 0.8,
        "window_seconds": 60,
        "reasons": [
            "41 failed logins in 60 s from one address",
            "12 distinct user ids tried",
        ],
        "signals": [
            {"feature": "auth_failures", "value": 41, "baseline": 0.4, "weight": 0.7},
            {"feature": "distinct_users", "value": 12, "baseline": None, "weight": 0.3},
        ],
    }
    block_id = detector_block(redis_server.url, tenant, explanation)
    page = tab.page
    page.goto(f"/#key={admin_key}&page=security")
    card = page.locator(f"[data-block-id='{block_id}']")
    card.wait_for()
    assert card.locator(".reasons li").all_inner_texts() == explanation["reasons"]
    assert "Detector rules" in card.inner_text()
    assert "Score 0.93 against a threshold of 0.8 (rules)." in card.inner_text()
    card.get_by_text("Signals", exact=True).click()
    signals = card.get_by_role("table", name="Signals behind the score")
    assert signals.get_by_role("row", name="auth_failures").inner_text().split() == [
        "auth_failures",
        "41",
        "0.4",
        "0.7",
    ]
    assert signals.get_by_role("row", name="distinct_users").inner_text().split()[2] == "–"
    page.screenshot(path=shots / "security-explanation-light-wide.png", full_page=True)


def test_pages_in_dark_and_narrow_layouts(
    browser: Browser, stack: RatewatchProcess, admin: httpx.Client, admin_key: str, shots: Path
) -> None:
    admin.post(
        "/v1/blocks",
        json={"scope": "user_id", "value": "u-42", "ttl": 600, "reason": "scraping the catalogue"},
    ).raise_for_status()
    for scheme, size, label in (("dark", WIDE, "wide"), ("dark", NARROW, "narrow")):
        tab = Tab(browser, stack.base_url, scheme, size)
        tab.page.goto(f"/#key={admin_key}")
        tab.page.wait_for_selector(".page-body[aria-busy=false]")
        tab.page.screenshot(path=shots / f"overview-{scheme}-{label}.png", full_page=True)
        tab.open("Security")
        assert "scraping the catalogue" in tab.page.inner_text(".blocks")
        tab.page.screenshot(path=shots / f"security-{scheme}-{label}.png", full_page=True)
        tab.close()
    tab = Tab(browser, stack.base_url, "light", NARROW)
    tab.page.goto(f"/#key={admin_key}&page=security")
    tab.page.wait_for_selector("h1:text-is('Security')")
    tab.page.screenshot(path=shots / "security-light-narrow.png", full_page=True)
    # nothing is wider than a phone's screen: tables scroll inside their own box
    width = tab.page.evaluate("document.documentElement.scrollWidth")
    assert width <= NARROW["width"], width
    tab.close()


def test_keyboard_moves_between_pages(tab: Tab, admin_key: str) -> None:
    page = tab.page
    page.goto(f"/#key={admin_key}")
    page.wait_for_selector("h1:text-is('Overview')")
    for _ in range(12):
        page.keyboard.press("Tab")
        if page.evaluate("document.activeElement.textContent") == "Security":
            break
    else:
        raise AssertionError("Tab never reached the Security link")
    page.keyboard.press("Enter")
    page.wait_for_selector("h1:text-is('Security')")
    # the new page's heading takes the focus, so a screen reader announces it
    assert page.evaluate("document.activeElement.id") == "page-title"
    current = page.get_by_role("link", name="Security")
    assert current.get_attribute("aria-current") == "page"


def test_sign_in_with_the_form_and_sign_out_clears_the_tab(tab: Tab, admin_key: str) -> None:
    page = tab.page
    page.goto("/")
    page.get_by_label("API key").fill(admin_key)
    page.get_by_label("API key").press("Enter")
    page.wait_for_selector("h1:text-is('Overview')")
    assert tab.stored_key() == admin_key
    page.get_by_role("button", name="Sign out").click()
    page.wait_for_selector("h1:text-is('Sign in')")
    assert page.evaluate("sessionStorage.length") == 0
    assert page.get_by_role("navigation").is_hidden()
    page.reload()
    page.wait_for_selector("h1:text-is('Sign in')")


def test_a_bad_key_shows_an_error(tab: Tab) -> None:
    page = tab.page
    page.goto("/#key=rwk_not_a_key_of_anyone")
    alert = page.get_by_role("alert")
    alert.filter(has_text="refused").wait_for()
    assert "API key" in alert.inner_text()
    assert page.evaluate("sessionStorage.length") == 0
    assert page.get_by_label("API key").get_attribute("aria-invalid") == "true"


def test_a_standard_key_reads_but_cannot_lift(
    tab: Tab, stack: RatewatchProcess, redis_server: RedisServer, tenant: str, admin: httpx.Client
) -> None:
    admin.post(
        "/v1/blocks", json={"scope": "key", "value": "k-7", "ttl": 600, "reason": "abuse"}
    ).raise_for_status()
    key = new_key(redis_server.url, tenant)
    page = tab.page
    page.goto(f"/#key={key}&page=security")
    page.wait_for_selector(".page-body[aria-busy=false]")
    assert page.inner_text("#role") == "Read-only key"
    assert "Lifting a block needs an admin key." in page.inner_text(".page-body")
    assert page.get_by_role("button", name="Lift the block on key k-7").count() == 0
    tab.open("Webhooks")
    assert "admin keys only" in page.inner_text(".page-body")


def test_webhooks_page_shows_delivery_health(tab: Tab, admin: httpx.Client, admin_key: str) -> None:
    created = admin.post(
        "/v1/webhooks", json={"url": "http://127.0.0.1:9/hooks/ratewatch", "description": "ops"}
    )
    assert created.status_code == 201, created.text
    page = tab.page
    page.goto(f"/#key={admin_key}&page=webhooks")
    page.wait_for_selector(".page-body[aria-busy=false]")
    row = page.get_by_role("table", name="Webhook delivery health").get_by_role(
        "row", name="http://127.0.0.1:9/hooks/ratewatch"
    )
    assert "No deliveries yet" in row.inner_text()


def test_incidents_section_answers_either_way(
    tab: Tab, admin: httpx.Client, admin_key: str
) -> None:
    """Incidents show where the server has ``GET /v1/incidents``, a plain note where not."""
    page = tab.page
    page.goto(f"/#key={admin_key}&page=security")
    page.wait_for_selector(".page-body[aria-busy=false]")
    section = page.get_by_role("region", name="Incidents", exact=True)
    if admin.get("/v1/incidents").status_code == 404:
        assert section.inner_text().endswith("Incidents are not available on this server.")
    else:
        assert section.get_by_role("table").count() + section.locator(".empty").count() == 1


def test_an_admin_manages_a_policy_and_its_overrides(
    tab: Tab, stack: RatewatchProcess, admin: httpx.Client, admin_key: str, shots: Path
) -> None:
    name = f"plan-{secrets.token_hex(3)}"
    page = tab.page
    dialogs: list[str] = []

    def accept(dialog: Dialog) -> None:
        dialogs.append(dialog.message)
        dialog.accept()

    page.goto(f"/#key={admin_key}&page=policies")
    page.wait_for_selector(".page-body[aria-busy=false]")
    new = page.get_by_role("region", name="New policy")
    new.get_by_label("Name").fill(name)
    new.get_by_label("Limit (requests)").fill("2")
    new.get_by_label("Window (seconds)").fill("60")
    new.get_by_role("button", name="Add a window").click()
    new.get_by_label("Limit (requests)").nth(1).fill("100")
    new.get_by_label("Window (seconds)").nth(1).fill("3600")
    new.get_by_label("Algorithm").select_option("fixed_window")
    new.get_by_role("button", name="Create the policy").click()
    overrides = page.locator("#overrides-card")
    overrides.get_by_role("heading", name=f"Overrides of {name}").wait_for()
    # the focus moves on to the new policy's overrides, and the change is announced
    assert page.evaluate("document.activeElement.id") == "overrides-title"
    assert page.get_by_role("status").filter(has_text=f"Created the policy {name}.").count() == 1
    row = page.get_by_role("table", name="Named policies").get_by_role("row", name=name)
    assert "2 per 1 min, 100 per 1 h" in row.inner_text()
    assert "fixed window" in row.inner_text()
    assert "Enforce" in row.inner_text()

    overrides.get_by_label("Identifier").fill("acct:vip-*")
    overrides.get_by_label("Limit (requests)").fill("5")
    overrides.get_by_label("Window (seconds)").fill("60")
    overrides.get_by_role("button", name="Add the override").click()
    overrides.get_by_role("row", name="acct:vip-*").wait_for()
    assert "5 per 1 min" in overrides.get_by_role("row", name="acct:vip-*").inner_text()
    page.screenshot(path=shots / "policies-light-wide.png", full_page=True)
    page.emulate_media(color_scheme="dark")
    page.set_viewport_size(NARROW)
    page.screenshot(path=shots / "policies-dark-narrow.png", full_page=True)
    # the forms fit a phone's screen too
    assert page.evaluate("document.documentElement.scrollWidth") <= NARROW["width"]
    page.emulate_media(color_scheme="light")
    page.set_viewport_size(WIDE)

    stored = admin.get(f"/v1/policies/{name}").json()
    assert stored["limits"] == [{"limit": 2, "window": 60}, {"limit": 100, "window": 3600}]
    assert (stored["algorithm"], stored["mode"]) == ("fixed_window", "enforce")
    listed = admin.get(f"/v1/policies/{name}/overrides").json()["overrides"]
    assert [(o["identifier"], o["limits"]) for o in listed] == [
        ("acct:vip-*", [{"limit": 5, "window": 60}])
    ]
    assert "mode" not in listed[0]  # left to the policy
    assert stored["overrides"] == listed

    # checks by the policy are decided by it: two a minute, five under the override
    basic = [admin.post("/v1/check", json={"key": "acct:basic-1", "policy": name}).json()
             for _ in range(3)]  # fmt: skip
    assert [d["allowed"] for d in basic] == [True, True, False]
    assert basic[2]["limit"] == 2
    vip = [admin.post("/v1/check", json={"key": "acct:vip-9", "policy": name}).json()
           for _ in range(3)]  # fmt: skip
    assert [(d["allowed"], d["limit"]) for d in vip] == [(True, 5)] * 3

    # an invalid window is refused by the API, whose detail names the field
    row.get_by_role("button", name=f"Edit the policy {name}").click()
    edit = page.get_by_role("region", name=f"Edit the policy {name}")
    assert edit.get_by_label("Name").input_value() == name
    edit.get_by_label("Window (seconds)").first.fill("0")
    edit.get_by_role("button", name="Save the policy").click()
    alert = edit.get_by_role("alert")
    alert.filter(has_text="out of range").wait_for()
    assert "`$.limits[0].window` = 0 is out of range" in alert.inner_text()
    window = edit.get_by_label("Window (seconds)").first
    assert window.get_attribute("aria-invalid") == "true"
    assert window.evaluate("input => input === document.activeElement")
    assert admin.get(f"/v1/policies/{name}").json()["limits"][0] == {"limit": 2, "window": 60}
    edit.get_by_role("button", name="Cancel").click()
    page.get_by_role("region", name="New policy").wait_for()

    page.on("dialog", accept)
    overrides.get_by_role("button", name="Delete the override acct:vip-*").click()
    overrides.get_by_text("none: every identifier gets the policy's own windows.").wait_for()
    assert admin.get(f"/v1/policies/{name}/overrides").json()["overrides"] == []
    row.get_by_role("button", name=f"Delete the policy {name}").click()
    row.wait_for(state="detached")
    assert dialogs[0].startswith("Delete the override acct:vip-* of ")
    assert dialogs[1].startswith(f"Delete the policy {name}?")
    assert admin.get(f"/v1/policies/{name}").status_code == 404
    refused = admin.post("/v1/check", json={"key": "acct:basic-1", "policy": name})
    assert refused.status_code == 422


def test_a_read_only_key_sees_policies_without_edit_controls(
    browser: Browser,
    stack: RatewatchProcess,
    redis_server: RedisServer,
    tenant: str,
    admin: httpx.Client,
    shots: Path,
) -> None:
    name = "free"
    rule = {"limits": [{"limit": 10, "window": 1}, {"limit": 1000, "window": 3600}]}
    admin.put(f"/v1/policies/{name}", json={**rule, "mode": "shadow"}).raise_for_status()
    override = {"limits": [{"limit": 50, "window": 1}]}
    admin.put(f"/v1/policies/{name}/overrides/acct:42", json=override).raise_for_status()
    key = new_key(redis_server.url, tenant)
    # reading policies takes any key of the tenant; changing them an admin key
    reader = {"Authorization": f"Bearer {key}"}
    assert httpx.get(f"{stack.base_url}/v1/policies", headers=reader).status_code == 200
    refused = httpx.put(f"{stack.base_url}/v1/policies/{name}", headers=reader, json=rule)
    assert refused.status_code == 403

    tab = Tab(browser, stack.base_url, "dark", NARROW)
    page = tab.page
    page.goto(f"/#key={key}&page=policies")
    page.wait_for_selector(".page-body[aria-busy=false]")
    body = page.locator(".page-body")
    assert "Changing policies needs an admin key." in body.inner_text()
    row = page.get_by_role("table", name="Named policies").get_by_role("row", name=name)
    assert row.inner_text().split("\t")[1:4] == ["10 per 1 s, 1,000 per 1 h", "server default",
                                                 "Shadow"]  # fmt: skip
    row.get_by_role("button", name=f"Show the overrides of {name}").click()
    overrides = page.get_by_role("table", name=f"Overrides of {name}")
    assert "50 per 1 s" in overrides.get_by_role("row", name="acct:42").inner_text()
    assert page.evaluate("document.activeElement.id") == "overrides-title"
    assert body.locator("form").count() == 0
    assert body.get_by_role("button", name=re.compile("Edit|Delete|Create|Add")).count() == 0
    page.screenshot(path=shots / "policies-dark-narrow-read-only.png", full_page=True)
    width = page.evaluate("document.documentElement.scrollWidth")
    assert width <= NARROW["width"], width
    tab.close()


def test_a_missing_chromium_fails_naming_the_package(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", "/nonexistent")
    with pytest.raises(RuntimeError, match="apt-get install -y chromium"):
        chromium_path()
