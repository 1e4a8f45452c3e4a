"""Pages in a real browser (Debian's headless Chromium through Playwright): the advocate's own
page on a phone-sized viewport shows their link and balance, its copy button copies the link,
the Content-Security-Policy holds (no inline script, nothing refused), and an expired or
revoked link shows a 401 page. Screenshots go to tests/screenshots/ (git-ignored)."""

from __future__ import annotations

import shutil
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import httpx
import pytest
from playwright.async_api import async_playwright

from app.settings import Settings
from app.storage.merchants import CreatedMerchant
from app.workers import scheduler
from tests.conftest import (
    BROWSER_UA,
    CHROMIUM,
    CHROMIUM_ARGS,
    ROOT,
    auth,
    flush,
    free_port,
    live_api,
    make_settings,
)
from tests.test_conversions import RULES, post

pytestmark = pytest.mark.skipif(not shutil.which("chromium"), reason="./manage test installs it")
SHOTS = ROOT / "tests" / "screenshots"


@pytest.fixture
async def site(database_url: str, redis_url: str, tmp_path: Any,
               db: asyncpg.Pool) -> AsyncIterator[tuple[Settings, str]]:  # fmt: skip
    port = free_port()
    base = f"http://127.0.0.1:{port}"  # loopback is a secure context: the clipboard works
    settings = make_settings(database_url, redis_url, tmp_path, cookie_secure=False,
                             public_base_url=base)  # fmt: skip
    async with live_api(settings, port):
        yield settings, base


async def test_the_advocate_page_on_a_phone_shows_the_link_and_balance_and_copies(
    site: tuple[Settings, str], merchant: CreatedMerchant,
) -> None:  # fmt: skip
    settings, base = site
    SHOTS.mkdir(exist_ok=True)
    async with httpx.AsyncClient(base_url=base) as client:
        program = (await client.post("/v1/programs", headers=auth(merchant), json={
            "name": "Acme Shoes", "destination_url": "https://shop.example.com/",
            "rules": {**RULES, "hold_days": 0},
            "share_text": "Get 10 % off your first pair at Acme: {link}"})).json()  # fmt: skip
        anna = (await client.post(f"/v1/programs/{program['id']}/advocates",
                                  json={"external_id": "anna", "name": "Anna"},
                                  headers=auth(merchant))).json()  # fmt: skip
        link = anna["links"][0]
        answer = await client.get(f"/r/{link['code']}", headers={"user-agent": BROWSER_UA})
        click_id = answer.headers["location"].split("rcid=")[1][:32]
        body = {"event_id": "o-1", "type": "purchase", "order_id": "o-1", "amount_minor": 5000,
                "currency": "EUR", "customer_id": "friend-1", "click_id": click_id}  # fmt: skip
        assert (await post(client, merchant, body)).status_code == 202
        await flush(settings)
        await scheduler.run(settings, once=True)
        issued = (await client.post(f"/v1/advocates/{anna['id']}/dashboard-token",
                                    headers=auth(merchant))).json()  # fmt: skip
        assert issued["url"] == f"{base}/advocate?token={issued['token']}"

    async with async_playwright() as p:
        browser = await p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        context = await browser.new_context(viewport={"width": 390, "height": 844},
                                            user_agent=BROWSER_UA)  # fmt: skip
        await context.grant_permissions(["clipboard-read", "clipboard-write"], origin=base)
        page = await context.new_page()
        refused: list[str] = []
        page.on("console", lambda m: refused.append(m.text) if "Content Security" in m.text
                else None)  # fmt: skip
        response = await page.goto(issued["url"])
        assert response is not None and response.status == 200
        assert "script-src 'self'" in (await response.all_headers())["content-security-policy"]
        assert await page.input_value("#link") == link["url"]
        assert await page.inner_text("#code") == anna["referral_code"]
        balance = await page.inner_text("#balance")
        assert "EUR" in balance and "10.00" in balance  # approved (no hold here)
        assert await page.inner_text("#clicks") == "1"
        assert await page.inner_text("#purchases") == "1"
        share = await page.get_attribute("a[href^='https://wa.me/']", "href")
        assert share is not None and "Acme" in share and link["code"] in share
        assert await page.locator(".qr svg").count() == 1
        # Fits the phone: nothing wider than the viewport.
        assert await page.evaluate("document.documentElement.scrollWidth") <= 390
        await page.click("#copy")
        await page.wait_for_function("document.getElementById('copy').textContent === 'Copied'")
        assert await page.evaluate("navigator.clipboard.readText()") == link["url"]
        await page.screenshot(path=str(SHOTS / "advocate-page.png"), full_page=True)
        assert not refused, refused

        expired = await page.goto(f"{base}/advocate?token=at_k0.{'x' * 32}.{'y' * 43}")
        assert expired is not None and expired.status == 401
        assert "expired" in (await page.inner_text("h1")).lower()
        await browser.close()
