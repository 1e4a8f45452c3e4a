"""Limits at the edge: body size before reading, the key before the body, rate limits with
their headers, bounded negative caches — and the redirect never limited."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest

from app.settings import Settings
from app.storage.link_cache import NOT_CACHED
from app.storage.merchants import CreatedMerchant
from tests.conftest import auth, make_advocate, make_program, make_settings, serving
from tests.test_conversions import post


async def test_an_oversized_body_is_413_before_it_is_read(client: httpx.AsyncClient) -> None:
    huge = b"{" + b" " * (8 * 1024 * 1024) + b"}"
    for path in ("/v1/programs", "/v1/conversions"):
        response = await client.post(
            path, content=huge, headers={"content-type": "application/json"}
        )
        assert response.status_code == 413, response.text
        assert response.json()["error"]["code"] == "body_too_large"


async def test_a_chunked_body_growing_past_the_limit_is_413(
    client: httpx.AsyncClient, merchant: CreatedMerchant
) -> None:
    async def chunks() -> Any:
        for _ in range(100):
            yield b" " * 4096

    response = await client.post(
        "/v1/programs",
        content=chunks(),
        headers={**auth(merchant), "content-type": "application/json"},
    )
    assert response.status_code == 413


async def test_the_api_key_is_checked_before_the_body_is_parsed(client: httpx.AsyncClient) -> None:
    response = await client.post(
        "/v1/programs", content=b"not json at all", headers={"content-type": "application/json"}
    )
    assert response.status_code == 401
    assert response.json()["error"]["field"] == "authorization"


async def test_an_unknown_key_costs_one_query_then_comes_from_the_negative_cache(
    app: Any, client: httpx.AsyncClient, db: asyncpg.Pool
) -> None:
    async def lookups() -> int:
        return int(
            await db.fetchval("SELECT coalesce(sum(calls), 0) FROM pg_stat_user_functions") or 0
        )

    bad = {"authorization": "Bearer rk_guessed"}
    assert (await client.get("/v1/programs", headers=bad)).status_code == 401
    from app.security import hash_api_key

    assert hash_api_key("rk_guessed") in app.guard.unknown_keys
    assert (await client.get("/v1/programs", headers=bad)).status_code == 401


async def test_failed_authentications_from_one_ip_are_limited_with_retry_after(
    database_url: str, redis_url: str, tmp_path: Path, db: asyncpg.Pool
) -> None:
    settings = make_settings(
        database_url, redis_url, tmp_path, rate_limit_auth_failures_per_ip="5/minute"
    )
    async with serving(settings) as (_, client):
        answers = [
            await client.get("/v1/programs", headers={"authorization": f"Bearer rk_guess{n}"})
            for n in range(8)
        ]
    # Five failures allowed; the sixth is answered, and counted over the limit.
    assert [a.status_code for a in answers] == [401] * 6 + [429] * 2
    refused = answers[-1]
    assert int(refused.headers["retry-after"]) >= 1
    assert refused.headers["ratelimit-remaining"] == "0"
    assert refused.json()["error"]["code"] == "rate_limited"


async def test_an_api_key_over_its_limit_gets_429_and_every_answer_says_how_much_is_left(
    database_url: str, redis_url: str, tmp_path: Path, db: asyncpg.Pool, merchant: CreatedMerchant
) -> None:
    settings = make_settings(database_url, redis_url, tmp_path, rate_limit_api_key="3/minute")
    async with serving(settings) as (_, client):
        answers = [await client.get("/v1/programs", headers=auth(merchant)) for _ in range(4)]
    assert [a.status_code for a in answers] == [200, 200, 200, 429]
    assert [a.headers["ratelimit-remaining"] for a in answers] == ["2", "1", "0", "0"]
    assert answers[0].headers["ratelimit-limit"] == "3"


async def test_pixels_are_limited_per_ip_but_the_redirect_never_is(
    database_url: str, redis_url: str, tmp_path: Path, db: asyncpg.Pool, merchant: CreatedMerchant
) -> None:
    settings = make_settings(database_url, redis_url, tmp_path, rate_limit_pixels_per_ip="3/minute",
                             rate_limit_api_key="1000/minute")  # fmt: skip
    async with serving(settings) as (_, client):
        program = await make_program(client, merchant)
        link = (await make_advocate(client, merchant, program, "cust-1"))["links"][0]
        params = {"m": str(merchant.id), "order_id": "1"}
        pixels = [await client.get("/t/pixel.gif", params=params) for _ in range(5)]
        redirects = [await client.get(f"/r/{link['code']}") for _ in range(200)]
    assert [p.status_code for p in pixels] == [200, 200, 200, 429, 429]
    assert {r.status_code for r in redirects} == {302}


async def test_postbacks_are_limited_per_merchant(
    database_url: str, redis_url: str, tmp_path: Path, db: asyncpg.Pool, merchant: CreatedMerchant
) -> None:
    settings = make_settings(database_url, redis_url, tmp_path, rate_limit_postbacks="2/minute")
    async with serving(settings) as (_, client):
        answers = [
            await post(client, merchant, {"event_id": f"e{n}", "type": "signup"}) for n in range(3)
        ]
    assert [a.status_code for a in answers] == [202, 202, 429]
    assert [a.headers["ratelimit-remaining"] for a in answers] == ["1", "0", "0"]
    assert {a.headers["ratelimit-limit"] for a in answers} == {"2"}
    assert "retry-after" in answers[2].headers and "retry-after" not in answers[1].headers


async def test_unknown_merchant_ids_are_remembered_in_a_bounded_cache(
    app: Any, client: httpx.AsyncClient, settings: Settings
) -> None:
    secrets = app.api.state.runtime.secrets
    secrets.entries.max_entries = 10
    import uuid

    for _ in range(30):
        headers = {"x-referral-merchant": str(uuid.uuid4()), "x-referral-signature": "t=1,v1=00"}
        response = await client.post("/v1/conversions", content=b"{}", headers=headers)
        assert response.status_code == 401
    assert len(secrets.entries) == 10


@pytest.mark.parametrize("path", ["/readyz", "/healthz"])
async def test_ops_endpoints_answer_during_a_flood_of_bad_keys(
    client: httpx.AsyncClient, path: str
) -> None:
    import asyncio

    flood = [
        client.get("/v1/programs", headers={"authorization": f"Bearer rk_{n}"}) for n in range(100)
    ]
    results = await asyncio.gather(*flood, client.get(path))
    assert results[-1].status_code == 200
    assert {r.status_code for r in results[:-1]} <= {401, 429}


async def test_a_flood_of_made_up_link_codes_neither_fails_readyz_nor_evicts_real_links(
    database_url: str, redis_url: str, tmp_path: Path, db: asyncpg.Pool, merchant: CreatedMerchant
) -> None:
    import asyncio

    settings = make_settings(
        database_url, redis_url, tmp_path, link_cache_negative_ttl_seconds=60.0, db_pool_max=4
    )
    async with serving(settings) as (app, client):
        program = await make_program(client, merchant)
        link = (await make_advocate(client, merchant, program, "cust-1"))["links"][0]
        assert (await client.get(f"/r/{link['code']}")).status_code == 302
        app.redirect._links._unknown.max_entries = 50  # type: ignore[union-attr]
        flood = [client.get(f"/r/made-up-{n:04d}") for n in range(300)]
        results = await asyncio.gather(*flood, client.get("/readyz"))
        assert results[-1].status_code == 200
        assert {r.status_code for r in results[:-1]} == {404}
        cache = app.redirect._links  # type: ignore[union-attr]
        assert len(cache._unknown) <= 50
        assert cache.get(link["code"]) not in (NOT_CACHED, None)  # the real link is still cached
