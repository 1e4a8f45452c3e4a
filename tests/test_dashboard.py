"""The merchant dashboard in a real browser (Debian's headless Chromium through Playwright),
against a live API with real PostgreSQL and Redis: sign in with an API key; the funnel on the
program page equals GET /v1/programs/{id}/stats and its chart is drawn; a conversion's page
shows its evidence; a held conversion is approved from the review page; a payout batch is
created and its CSV downloaded; a form without its CSRF token is refused; another merchant's
advocate is a 404 page; a read-only key sees no write buttons; sign-out ends the session.
Screenshots go to tests/screenshots/ (git-ignored)."""

from __future__ import annotations

import shutil
from typing import Any

import asyncpg
import httpx
import pytest
from playwright.async_api import async_playwright

from app.services import webhooks as webhooks_service
from app.settings import Settings
from app.storage.merchants import CreatedMerchant
from app.workers import scheduler
from tests.conftest import BROWSER_UA, CHROMIUM, CHROMIUM_ARGS, auth, flush
from tests.test_conversions import RULES, post
from tests.test_pages import SHOTS, site  # noqa: F401  (the live-server fixture)

pytestmark = pytest.mark.skipif(not shutil.which("chromium"), reason="./manage test installs it")


async def _referral(client: httpx.AsyncClient, merchant: CreatedMerchant) -> dict[str, Any]:
    rules = {**RULES, "hold_days": 0,
             "fraud": {"high_value_order": {"action": "hold", "above_minor": 20_000}}}  # fmt: skip
    program = (await client.post("/v1/programs", headers=auth(merchant), json={
        "name": "Acme Shoes", "destination_url": "https://shop.example.com/",
        "rules": rules})).json()  # fmt: skip
    anna = (await client.post(f"/v1/programs/{program['id']}/advocates", headers=auth(merchant),
                              json={"external_id": "anna", "name": "Anna"})).json()  # fmt: skip
    ids = []
    for n, amount in enumerate((5000, 50_000)):
        answer = await client.get(f"/r/{anna['links'][0]['code']}",
                                  headers={"user-agent": BROWSER_UA})  # fmt: skip
        click_id = answer.headers["location"].split("rcid=")[1][:32]
        body = {"event_id": f"o-{n}", "type": "purchase", "order_id": f"o-{n}",
                "amount_minor": amount, "currency": "EUR", "customer_id": f"friend-{n}",
                "click_id": click_id}  # fmt: skip
        ids.append((await post(client, merchant, body)).json()["id"])
    return {"program": program, "anna": anna, "conversions": ids}


async def test_a_merchant_signs_in_reads_the_funnel_reviews_pays_out_and_signs_out(
    site: tuple[Settings, str],  # noqa: F811
    merchant: CreatedMerchant, other_merchant: CreatedMerchant,
) -> None:  # fmt: skip
    settings, base = site
    SHOTS.mkdir(exist_ok=True)
    async with httpx.AsyncClient(base_url=base) as client:
        made = await _referral(client, merchant)
        await flush(settings)
        await scheduler.run(settings, once=True)
        program = made["program"]
        stats = (await client.get(f"/v1/programs/{program['id']}/stats",
                                  headers=auth(merchant))).json()  # fmt: skip
        rival = (await client.post("/v1/programs", headers=auth(other_merchant), json={
            "name": "Rival", "destination_url": "https://rival.example.com/"})).json()  # fmt: skip
        theirs = (await client.post(f"/v1/programs/{rival['id']}/advocates",
                                    headers=auth(other_merchant),
                                    json={"external_id": "x"})).json()  # fmt: skip
        issued = await client.post("/v1/api-keys", headers=auth(merchant),
                                   json={"label": "reports", "scopes": ["read"]})  # fmt: skip
        reader = issued.json()["key"]

    async with async_playwright() as p:
        browser = await p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = await browser.new_page(viewport={"width": 1200, "height": 900})
        await page.goto(f"{base}/dashboard")
        assert page.url.endswith("/dashboard/sign-in")
        await page.fill("#api_key", "rk_not_a_key")
        await page.click("#sign-in")
        assert "unknown" in await page.inner_text("#error")
        await page.fill("#api_key", merchant.api_key)
        await page.click("#sign-in")
        assert page.url == f"{base}/dashboard"
        cookie = next(c for c in await page.context.cookies() if c["name"] == "rt_session")
        assert cookie["httpOnly"] and cookie["sameSite"] == "Strict"

        await page.click(f"a[href='/dashboard/programs/{program['id']}']")
        figures = {}
        for row in await page.query_selector_all("#funnel tbody tr"):
            cell = await row.query_selector("td.n")
            assert cell is not None
            figures[await row.get_attribute("data-step")] = int(await cell.inner_text())
        assert figures["Clicks"] == stats["clicks"] == 2
        assert figures["Purchases"] == stats["purchases"] == 2
        assert figures["Signups"] == stats["signups"]
        assert await page.locator("#chart svg rect.bar").count() == 30
        assert await page.locator("#chart svg polyline").count() == 1
        assert await page.inner_text("#channels tr[data-channel=default] td.clicks") == "2"
        assert "2 purchases" in await page.inner_text("#period")
        await page.screenshot(path=str(SHOTS / "dashboard-program.png"), full_page=True)

        await page.click(f"a[href='/dashboard/advocates/{made['anna']['id']}']")
        assert await page.inner_text("#purchases") == "2"
        assert await page.locator(".qr svg").count() == 1
        await page.click(f"a[href='/dashboard/conversions/{made['conversions'][0]}']")
        assert await page.inner_text("#method") == "click_id"
        assert "click" in (await page.inner_text("#reason")).lower()
        await page.screenshot(path=str(SHOTS / "dashboard-conversion.png"), full_page=True)

        # The held order, approved from the review page.
        await page.goto(f"{base}/dashboard/review")
        assert await page.locator("#review button[value=approve]").count() == 1
        await page.click("#review button[value=approve]")
        assert "Nothing is held" in await page.inner_text("#review")

        # A payout batch, and its file.
        await page.goto(f"{base}/dashboard/payouts")
        await page.click("#create-payout")
        assert "created" in await page.inner_text("#payouts")
        async with page.expect_download() as download:
            await page.click("#payouts a[href$='.csv']")
        assert (await download.value).suggested_filename.endswith(".csv")

        # A form without its token, and another merchant's advocate.
        forged = await page.request.post(f"{base}/dashboard/payouts", form={"x": "1"})
        assert forged.status == 403
        # Nor may another site's form sign this browser in (no login token of ours).
        login_forged = await page.request.post(f"{base}/dashboard/sign-in",
                                               form={"api_key": merchant.api_key})  # fmt: skip
        assert login_forged.status == 403
        other = await page.goto(f"{base}/dashboard/advocates/{theirs['id']}")
        assert other is not None and other.status == 404

        await page.goto(f"{base}/dashboard")
        await page.click("#sign-out")
        assert page.url.endswith("/dashboard/sign-in")
        await page.goto(f"{base}/dashboard")
        assert page.url.endswith("/dashboard/sign-in")

        # A read-only key sees everything and no write button.
        await page.fill("#api_key", reader)
        await page.click("#sign-in")
        await page.goto(f"{base}/dashboard/payouts")
        assert await page.locator("#create-payout").count() == 0
        assert "read only" in await page.inner_text(".who")
        await browser.close()


async def test_the_webhooks_page_shows_the_delivery_log_and_redelivers(
    site: tuple[Settings, str],  # noqa: F811
    merchant: CreatedMerchant, db: asyncpg.Pool,
) -> None:  # fmt: skip
    settings, base = site
    async with httpx.AsyncClient(base_url=base) as client:
        hook = (await client.post("/v1/webhook-endpoints", headers=auth(merchant), json={
            "url": "https://hooks.invalid/referrals", "description": "CRM"})).json()  # fmt: skip
        await client.post(f"/v1/webhook-endpoints/{hook['id']}/test", headers=auth(merchant))
    async with webhooks_service.client(settings) as http:
        assert await webhooks_service.deliver_due(db, settings, http) == 1  # fails: no such host
    async with async_playwright() as p:
        browser = await p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = await browser.new_page()
        await page.goto(f"{base}/dashboard/sign-in")
        await page.fill("#api_key", merchant.api_key)
        await page.click("#sign-in")
        await page.click("a[href='/dashboard/webhooks']")
        section = page.locator(f"#endpoint-{hook['id']}")
        assert "webhook.test" in await section.inner_text()
        await db.execute("UPDATE webhook_deliveries SET status = 'failed'")  # given up
        await section.locator("button.redeliver").first.click()
        assert page.url.endswith("/dashboard/webhooks")
        await browser.close()
    assert await db.fetchval("SELECT status FROM webhook_deliveries") == "pending"
