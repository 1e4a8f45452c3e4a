"""The snippet for the shop's pages, in a real browser: headless Chromium (Debian's, driven by
Playwright) follows one of our links to a local test shop, whose page script keeps the click id
the redirect issued in the shop's own cookie; the confirmation page's pixel reaches us with our
cookie, and the shop's postback without a click id is attributed by it. The shop and the
tracking domain are two hosts of one site (shop.example.test, go.example.test), as in
production (shop.com and go.shop.com), both on loopback through Chromium's resolver rules."""

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
from tests.conftest import (
    BROWSER_UA,
    CHROMIUM,
    CHROMIUM_ARGS,
    auth,
    flush,
    free_port,
    live_api,
    make_settings,
    serve_asgi,
)
from tests.test_conversions import RULES, post, read

pytestmark = pytest.mark.skipif(not shutil.which("chromium"), reason="./manage test installs it")


def _shop(api: str, merchant: str) -> Any:
    """A shop with a landing page and an order-confirmation page, each with the two lines."""
    snippet = f'<script src="{api}/t/rt.js" data-merchant="{merchant}" data-days="30"></script>'
    pages = {
        "/landing": f"<html><head>{snippet}</head><body><h1>Welcome</h1>"
                    "<form id='checkout'><button>Pay</button></form>"
                    "<script>referral.fill(document.getElementById('checkout'))</script>"
                    "</body></html>",
        "/confirmation": f"<html><head>{snippet}</head><body><h1>Thanks</h1><script>"
                         "referral.trackOrder({orderId: 'order-77', amountMinor: 5000,"
                         " currency: 'EUR'})</script></body></html>",
    }  # fmt: skip

    async def app(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        body = pages.get(scope["path"], "not found").encode()
        await send({"type": "http.response.start", "status": 200 if scope["path"] in pages
                    else 404, "headers": [(b"content-type", b"text/html")]})  # fmt: skip
        await send({"type": "http.response.body", "body": body})

    return app


@pytest.fixture
async def live(database_url: str, redis_url: str, tmp_path: Any,
               db: asyncpg.Pool) -> AsyncIterator[tuple[Settings, Any, int]]:  # fmt: skip
    port = free_port()
    settings = make_settings(database_url, redis_url, tmp_path, cookie_secure=False,
                             public_base_url=f"http://go.example.test:{port}")  # fmt: skip
    async with live_api(settings, port) as app:
        yield settings, app, port


async def test_the_snippet_keeps_the_click_id_on_the_shop_and_the_pixel_carries_our_cookie(
    live: tuple[Settings, Any, int], merchant: CreatedMerchant, db: asyncpg.Pool,
) -> None:  # fmt: skip
    settings, _, api_port = live
    api = f"http://go.example.test:{api_port}"
    shop_port = free_port()
    shop = f"http://shop.example.test:{shop_port}"
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{api_port}") as client:
        program = await client.post("/v1/programs", headers=auth(merchant), json={
            "name": "Shop", "destination_url": f"{shop}/landing",
            "allowed_domains": ["shop.example.test"], "rules": RULES})  # fmt: skip
        assert program.status_code == 201, program.text
        anna = await client.post(f"/v1/programs/{program.json()['id']}/advocates",
                                 json={"external_id": "anna"}, headers=auth(merchant))  # fmt: skip
        code = anna.json()["links"][0]["code"]
        script = await client.get("/t/rt.js")
        assert script.status_code == 200 and len(script.content) < 4096
        assert "public" in script.headers["cache-control"]
        cached = await client.get("/t/rt.js", headers={"if-none-match": script.headers["etag"]})
        assert cached.status_code == 304
        shop_site = serve_asgi(_shop(api, str(merchant.id)), shop_port)
        async with shop_site, async_playwright() as p:
            browser = await p.chromium.launch(executable_path=CHROMIUM, args=[
                *CHROMIUM_ARGS, "--host-resolver-rules=MAP *.example.test 127.0.0.1",
            ])  # fmt: skip
            # Headless Chromium says so in its user agent, and we count it as a bot: the
            # shopper's browser is a plain Chrome.
            page = await browser.new_page(user_agent=BROWSER_UA)
            redirect = await page.goto(f"{api}/r/{code}")
            assert redirect is not None and page.url.startswith(f"{shop}/landing?")
            issued = page.url.split(f"{settings.click_id_param}=")[1][:32]
            assert await page.evaluate("referral.clickId()") == issued
            hidden = await page.eval_on_selector("input[name=rcid]", "e => e.value")
            assert hidden == issued
            cookies = {c["name"]: c for c in await page.context.cookies()}
            assert cookies["rt_click"]["domain"] == "shop.example.test"  # first-party
            ours = cookies[settings.cookie_name]
            assert ours["domain"] == "go.example.test"

            async with page.expect_request("**/t/pixel.gif*") as pixel_request:
                await page.goto(f"{shop}/confirmation")
            pixel = await pixel_request.value
            sent = await pixel.all_headers()
            assert f"{settings.cookie_name}={ours['value']}" in sent.get("cookie", "")
            assert "order_id=order-77" in pixel.url
            response = await pixel.response()
            assert response is not None and response.status == 200
            await browser.close()
        await flush(settings)
        claimed = await db.fetchval("SELECT visitor_id FROM order_pixels WHERE order_id = $1",
                                    "order-77")  # fmt: skip
        assert claimed is not None and claimed.hex == ours["value"]
        # The shop's backend posts the order without a click id: our cookie attributes it.
        body = {"event_id": "o-77", "type": "purchase", "order_id": "order-77",
                "amount_minor": 5000, "currency": "EUR", "customer_id": "friend-77"}  # fmt: skip
        assert (await post(client, merchant, body)).status_code == 202
        await flush(settings)
        conversions = await db.fetch("SELECT id FROM conversions WHERE event_id = 'o-77'")
        found = await read(client, merchant, str(conversions[0]["id"]))
        assert found["state"] == "attributed", found["reason"]
        assert found["attribution_method"] == "cookie"
