"""The hot path: GET/HEAD /r/{code}."""

from __future__ import annotations

import asyncio
from typing import Any
from urllib.parse import parse_qs, urlsplit

import asyncpg
import httpx
import orjson
from redis.asyncio import Redis

from app.settings import Settings
from tests.conftest import BROWSER_UA, auth, flush


def _click_id(location: str) -> str:
    return parse_qs(urlsplit(location).query)["rcid"][0]


async def test_redirect_appends_click_id_and_keeps_the_destination_query(
    client: httpx.AsyncClient, link: dict[str, Any]
) -> None:
    response = await client.get(f"/r/{link['code']}", headers={"user-agent": BROWSER_UA})

    assert response.status_code == 302
    location = response.headers["location"]
    parts = urlsplit(location)
    assert (parts.scheme, parts.netloc, parts.path) == ("https", "shop.example.com", "/welcome")
    query = parse_qs(parts.query)
    assert query["src"] == ["ref"]
    assert len(query["rcid"][0]) == 32
    assert parts.fragment == "top"
    assert response.headers["cache-control"] == "private, no-store"


async def test_click_url_query_is_passed_through_but_a_forged_click_id_is_dropped(
    client: httpx.AsyncClient, link: dict[str, Any]
) -> None:
    response = await client.get(
        f"/r/{link['code']}?utm_source=whatsapp&rcid=forged", headers={"user-agent": BROWSER_UA}
    )
    query = parse_qs(urlsplit(response.headers["location"]).query)
    assert query["utm_source"] == ["whatsapp"]
    assert query["rcid"] != ["forged"] and len(query["rcid"]) == 1


async def test_attribution_cookie_is_first_party_secure_lax_for_the_window(
    client: httpx.AsyncClient, link: dict[str, Any]
) -> None:
    response = await client.get(f"/r/{link['code']}", headers={"user-agent": BROWSER_UA})
    cookie = response.headers["set-cookie"]
    name_value, *attributes = [part.strip() for part in cookie.split(";")]
    name, value = name_value.split("=")
    assert name == "rt_ref" and len(value) == 32
    assert f"Max-Age={30 * 86400}" in attributes
    assert {"Path=/", "SameSite=Lax", "HttpOnly", "Secure"} <= set(attributes)


async def test_returning_visitor_keeps_the_visitor_id(
    client: httpx.AsyncClient, link: dict[str, Any]
) -> None:
    first = await client.get(f"/r/{link['code']}", headers={"user-agent": BROWSER_UA})
    visitor = first.headers["set-cookie"].split(";")[0].split("=")[1]
    second = await client.get(
        f"/r/{link['code']}",
        headers={"user-agent": BROWSER_UA, "cookie": f"theme=dark; rt_ref={visitor}"},
    )
    assert second.headers["set-cookie"].startswith(f"rt_ref={visitor};")
    assert _click_id(second.headers["location"]) != _click_id(first.headers["location"])


async def test_click_is_in_redis_before_the_redirect_is_answered(
    client: httpx.AsyncClient, link: dict[str, Any], redis: Redis, settings: Settings
) -> None:
    response = await client.get(f"/r/{link['code']}", headers={"user-agent": BROWSER_UA})
    click_id = _click_id(response.headers["location"])

    entries = await redis.xrange(settings.click_stream)
    buffered = [event for _, fields in entries for event in orjson.loads(fields[b"e"])]
    assert [e[0] for e in buffered] == [click_id]
    assert buffered[0][1] == link["id"]


async def test_head_request_redirects_and_is_stored_as_a_bot(
    client: httpx.AsyncClient, link: dict[str, Any], db: asyncpg.Pool, settings: Settings
) -> None:
    response = await client.head(f"/r/{link['code']}", headers={"user-agent": BROWSER_UA})
    assert response.status_code == 302
    assert "rcid=" in response.headers["location"]

    await flush(settings)
    row = await db.fetchrow("SELECT method, is_bot, bot_reason FROM clicks")
    assert row["method"] == "HEAD" and row["is_bot"]
    assert "HEAD" in row["bot_reason"]


async def test_crawlers_and_prefetches_are_redirected_but_flagged(
    client: httpx.AsyncClient, link: dict[str, Any], db: asyncpg.Pool, settings: Settings
) -> None:
    cases = {
        "crawler": {"user-agent": "Mozilla/5.0 (compatible; Googlebot/2.1)"},
        "preview": {"user-agent": "facebookexternalhit/1.1"},
        "prefetch": {"user-agent": BROWSER_UA, "sec-purpose": "prefetch"},
        "person": {"user-agent": BROWSER_UA},
    }
    for headers in cases.values():
        assert (await client.get(f"/r/{link['code']}", headers=headers)).status_code == 302

    await flush(settings)
    rows = await db.fetch("SELECT user_agent, is_bot, bot_reason FROM clicks")
    flagged = {r["bot_reason"] for r in rows if r["is_bot"]}
    assert len(rows) == 4
    assert sum(not r["is_bot"] for r in rows) == 1
    assert any("Googlebot" in reason for reason in flagged)
    assert any("facebookexternalhit" in reason for reason in flagged)
    assert any(reason.startswith("prefetch") for reason in flagged)


async def test_ip_is_stored_only_hashed_and_truncated(
    client: httpx.AsyncClient, link: dict[str, Any], db: asyncpg.Pool, settings: Settings
) -> None:
    await client.get(f"/r/{link['code']}", headers={"user-agent": BROWSER_UA})
    await flush(settings)
    row = await db.fetchrow("SELECT ip_hash, ip_prefix FROM clicks")
    assert row["ip_prefix"] == "203.0.113.0/24"
    assert len(row["ip_hash"]) == 16
    dump = await db.fetchval("SELECT row_to_json(c)::text FROM clicks c")
    assert "203.0.113.7" not in dump


async def test_unknown_code_is_404_and_never_a_redirect(client: httpx.AsyncClient, db: Any) -> None:
    for path in ["/r/unknown1", "/r/https:%2F%2Fevil.example", "/r/", "/r/a/b", "/r/%0d%0aX:1"]:
        response = await client.get(path, headers={"user-agent": BROWSER_UA})
        assert response.status_code == 404, path
        assert "location" not in response.headers
        assert response.json()["error"]["field"] == "code"
        if path == "/r/unknown1":  # the redirect's own answer (the others are FastAPI's)
            assert response.headers["cache-control"] == "no-store"


async def test_disabled_link_stops_redirecting_at_once(
    client: httpx.AsyncClient, link: dict[str, Any], merchant: Any
) -> None:
    assert (await client.get(f"/r/{link['code']}")).status_code == 302  # now cached in-process

    response = await client.patch(
        f"/v1/links/{link['id']}", json={"active": False}, headers=auth(merchant)
    )
    assert response.status_code == 200 and response.json()["active"] is False

    # The invalidation travels through Redis pub/sub to every API process.
    for _ in range(100):
        if (await client.get(f"/r/{link['code']}")).status_code == 404:
            break
        await asyncio.sleep(0.02)
    else:
        raise AssertionError("disabled link still redirects")


async def test_other_methods_are_refused(client: httpx.AsyncClient, link: dict[str, Any]) -> None:
    response = await client.post(f"/r/{link['code']}")
    assert response.status_code == 405
    assert response.headers["allow"] == "GET, HEAD"
