"""Outgoing webhooks and the event feed, end to end: a real local receiver (uvicorn) verifies
every delivery with the `standardwebhooks` library, as a merchant would; the delivery worker
runs as the service runs it (and is SIGKILLed mid-batch in its own process); real PostgreSQL
and Redis behind the API."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import asyncpg
import httpx
import orjson
import pytest
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from app.services import webhooks as service
from app.settings import Settings
from app.storage.merchants import CreatedMerchant
from app.workers import scheduler
from tests.conftest import ROOT, auth, flush, free_port, make_settings, serve_asgi, serving
from tests.test_conversions import RULES, click, post
from tests.test_fraud import FRIEND_RULES, enroll


@dataclass
class Receiver:
    """A merchant's endpoint: answers `status` (or `failures` times 503 first), records what
    came."""

    port: int
    status: int = 200
    failures: int = 0
    delay: float = 0.0
    healthy_path: str = "/always-up"  # answers 200 whatever `status` says
    received: list[tuple[dict[str, str], bytes]] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hooks"

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        body = b""
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return  # the sender died mid-request: nothing was delivered
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        headers = {k.decode(): v.decode() for k, v in scope["headers"]}
        self.received.append((headers, body))
        if self.delay:
            await asyncio.sleep(self.delay)
        status = 200 if scope["path"] == self.healthy_path else self.status
        if self.failures:
            self.failures -= 1
            status = 503
        await send({"type": "http.response.start", "status": status,
                    "headers": [(b"content-type", b"text/plain")]})  # fmt: skip
        await send({"type": "http.response.body", "body": b"ok" if status < 300 else b"down"})

    def verified(self, secret: str) -> list[dict[str, Any]]:
        """Every delivery checked with the receiver-side library; raises on a bad one."""
        hook = Webhook(secret)
        return [{**hook.verify(body, headers), "webhook-id": headers["webhook-id"]}
                for headers, body in self.received]  # fmt: skip


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    target = Receiver(free_port())
    async with serve_asgi(target, target.port):
        yield target


@pytest.fixture
def hook_settings(database_url: str, redis_url: str, tmp_path: Any) -> Settings:
    return make_settings(
        database_url, redis_url, tmp_path, webhook_allow_private=True,
        webhook_retry_seconds="0.05,0.05,0.05", webhook_lease_seconds=1.0,
    )  # fmt: skip


@pytest.fixture
async def hooked(hook_settings: Settings, db: asyncpg.Pool) -> AsyncIterator[httpx.AsyncClient]:
    async with serving(hook_settings) as (_, client):
        yield client


async def endpoint(client: httpx.AsyncClient, merchant: CreatedMerchant, url: str,
                   **fields: Any) -> dict[str, Any]:  # fmt: skip
    response = await client.post("/v1/webhook-endpoints", json={"url": url, **fields},
                                 headers=auth(merchant))  # fmt: skip
    assert response.status_code == 201, response.text
    created: dict[str, Any] = response.json()
    return created


async def deliver_all(db: asyncpg.Pool, settings: Settings, rounds: int = 50) -> int:
    """Run the worker's rounds until nothing is due (retries included)."""
    total = 0
    async with service.client(settings) as client:
        for _ in range(rounds):
            sent = await service.deliver_due(db, settings, client)
            total += sent
            if not sent:
                due = await db.fetchval(
                    "SELECT count(*) FROM webhook_deliveries WHERE status = 'pending'"
                )
                if not due:
                    break
                await asyncio.sleep(0.06)
    return total


async def test_a_referral_is_announced_in_order_signed_and_verified_by_the_merchant(
    hooked: httpx.AsyncClient, merchant: CreatedMerchant, hook_settings: Settings,
    db: asyncpg.Pool, receiver: Receiver,
) -> None:  # fmt: skip
    hook = await endpoint(hooked, merchant, receiver.url)
    assert hook["secret"].startswith("whsec_") and hook["enabled"]
    program = await hooked.post("/v1/programs", headers=auth(merchant), json={
        "name": "p", "destination_url": "https://shop.example.com/",
        "rules": {**FRIEND_RULES, "hold_days": 0}})  # fmt: skip
    anna = await enroll(hooked, merchant, program.json())
    body = {"event_id": "o-1", "type": "purchase", "order_id": "order-1", "amount_minor": 5000,
            "currency": "EUR", "customer_id": "friend-1",
            "click_id": await click(hooked, anna["links"][0])}  # fmt: skip
    assert (await post(hooked, merchant, body)).status_code == 202
    await flush(hook_settings)
    await scheduler.run(hook_settings, once=True)
    await deliver_all(db, hook_settings)

    events = receiver.verified(hook["secret"])  # every one verifies with the library
    types = [e["type"] for e in events]
    assert types == ["advocate.enrolled", "conversion.attributed", "reward.created",
                     "reward.created", "reward.approved", "reward.approved"]  # fmt: skip
    attributed = events[1]["data"]
    assert attributed["advocate_id"] == anna["id"] and attributed["amount_minor"] == 5000
    assert {e["data"]["beneficiary"] for e in events[2:4]} == {"advocate", "friend"}

    # The feed has the same events, in the same order, across pages.
    seen, after = [], 0
    while True:
        page = (await hooked.get("/v1/events", params={"after": after, "limit": 2},
                                 headers=auth(merchant))).json()  # fmt: skip
        if not page["events"]:
            break
        seen += page["events"]
        after = page["next_cursor"]
    assert [e["id"] for e in seen] == [e["webhook-id"] for e in events]
    only = await hooked.get("/v1/events", params={"types": "reward.approved"},
                            headers=auth(merchant))  # fmt: skip
    assert [e["type"] for e in only.json()["events"]] == ["reward.approved"] * 2
    # The delivery log.
    log = (await hooked.get(f"/v1/webhook-endpoints/{hook['id']}/attempts",
                            headers=auth(merchant))).json()  # fmt: skip
    assert len(log) == 6 and {a["status_code"] for a in log} == {200}
    assert all(a["delivery_status"] == "delivered" for a in log)


async def test_a_receiver_down_for_a_while_gets_it_once_up_with_the_same_id(
    hooked: httpx.AsyncClient, merchant: CreatedMerchant, hook_settings: Settings,
    db: asyncpg.Pool, receiver: Receiver,
) -> None:  # fmt: skip
    hook = await endpoint(hooked, merchant, receiver.url, event_types=["webhook.test"])
    receiver.failures = 2
    assert (await hooked.post(f"/v1/webhook-endpoints/{hook['id']}/test",
                              headers=auth(merchant))).status_code == 202  # fmt: skip
    await deliver_all(db, hook_settings)
    ids = {headers["webhook-id"] for headers, _ in receiver.received}
    assert len(receiver.received) == 3 and len(ids) == 1
    log = (await hooked.get(f"/v1/webhook-endpoints/{hook['id']}/attempts",
                            headers=auth(merchant))).json()  # fmt: skip
    assert [a["status_code"] for a in reversed(log)] == [503, 503, 200]
    assert log[0]["response_excerpt"] == "ok"
    # Redelivered on request: the same id again.
    redo = await hooked.post(f"/v1/webhook-deliveries/{log[0]['delivery_id']}/redeliver",
                             headers=auth(merchant))  # fmt: skip
    assert redo.status_code == 202
    await deliver_all(db, hook_settings)
    assert len(receiver.received) == 4 and receiver.received[-1][0]["webhook-id"] in ids


async def test_an_endpoint_failing_for_too_long_is_disabled_with_a_notice(
    merchant: CreatedMerchant, database_url: str, redis_url: str, tmp_path: Any,
    db: asyncpg.Pool, receiver: Receiver,
) -> None:  # fmt: skip
    settings = make_settings(
        database_url, redis_url, tmp_path, webhook_allow_private=True,
        webhook_retry_seconds="0.05,0.05", webhook_disable_after_hours=0,
    )  # fmt: skip
    async with serving(settings) as (_, client):
        hook = await endpoint(client, merchant, receiver.url)
        other = await endpoint(client, merchant, receiver.url.replace("/hooks", "/always-up"),
                               event_types=["endpoint.disabled"])  # fmt: skip
        receiver.status = 500
        await client.post(f"/v1/webhook-endpoints/{hook['id']}/test", headers=auth(merchant))
        await deliver_all(db, settings)
        got = (await client.get(f"/v1/webhook-endpoints/{hook['id']}",
                                headers=auth(merchant))).json()  # fmt: skip
        assert got["enabled"] is False and "failing since" in got["disabled_reason"]
        feed = (await client.get("/v1/events", params={"types": "endpoint.disabled"},
                                 headers=auth(merchant))).json()  # fmt: skip
        assert [e["data"]["endpoint_id"] for e in feed["events"]] == [hook["id"]]
        # The other endpoint was told.
        told = [orjson.loads(b) for _, b in receiver.received if b"endpoint.disabled" in b]
        assert len(told) == 1 and told[0]["data"]["endpoint_id"] == hook["id"]
        assert other["enabled"]
        # Enabled again by a person, with a clean record.
        again = await client.patch(f"/v1/webhook-endpoints/{hook['id']}", json={"enabled": True},
                                   headers=auth(merchant))  # fmt: skip
        assert again.json()["enabled"] and again.json()["failing_since"] is None


async def test_both_secrets_verify_during_a_rotations_overlap(
    hooked: httpx.AsyncClient, merchant: CreatedMerchant, hook_settings: Settings,
    db: asyncpg.Pool, receiver: Receiver,
) -> None:  # fmt: skip
    hook = await endpoint(hooked, merchant, receiver.url)
    rotated = await hooked.post(f"/v1/webhook-endpoints/{hook['id']}/rotate-secret",
                                json={"overlap_seconds": 3600}, headers=auth(merchant))  # fmt: skip
    assert rotated.status_code == 200 and rotated.json()["secret"] != hook["secret"]
    await hooked.post(f"/v1/webhook-endpoints/{hook['id']}/test", headers=auth(merchant))
    await deliver_all(db, hook_settings)
    assert receiver.verified(hook["secret"]) == receiver.verified(rotated.json()["secret"])
    # Without an overlap, the old secret stops at once.
    final = await hooked.post(f"/v1/webhook-endpoints/{hook['id']}/rotate-secret",
                              json={"overlap_seconds": 0}, headers=auth(merchant))  # fmt: skip
    await hooked.post(f"/v1/webhook-endpoints/{hook['id']}/test", headers=auth(merchant))
    receiver.received.clear()
    await deliver_all(db, hook_settings)
    receiver.verified(final.json()["secret"])
    with pytest.raises(WebhookVerificationError):
        receiver.verified(rotated.json()["secret"])


async def test_private_addresses_are_refused(
    client: httpx.AsyncClient, merchant: CreatedMerchant, settings: Settings, db: asyncpg.Pool,
    hook_settings: Settings, receiver: Receiver,
) -> None:  # fmt: skip
    for url in (
        "http://127.0.0.1:8080/x",
        "http://10.1.2.3/x",
        "http://169.254.169.254/latest",
        "http://[::1]/x",
        "http://localhost/x",
        "http://[::ffff:192.168.0.1]/x",
    ):
        response = await client.post("/v1/webhook-endpoints", json={"url": url},
                                     headers=auth(merchant))  # fmt: skip
        assert response.status_code == 422, url
        assert response.json()["error"]["field"] == "body.url"
    # Saved while allowed, then sent where it is not: refused at send time, recorded.
    async with serving(hook_settings) as (_, allowed):
        hook = await endpoint(allowed, merchant, receiver.url)
        await allowed.post(f"/v1/webhook-endpoints/{hook['id']}/test", headers=auth(merchant))
    await deliver_all(db, settings, rounds=1)
    assert receiver.received == []
    error = await db.fetchval("SELECT error FROM webhook_attempts")
    assert "private address" in error


def _worker(settings: Settings, **env: str) -> subprocess.Popen[bytes]:
    environment = {
        **os.environ, "DATABASE_URL": settings.database_url, "REDIS_URL": settings.redis_url,
        "SECRET_KEY": settings.secret_key, "WEBHOOK_ALLOW_PRIVATE": "true",
        "WEBHOOK_LEASE_SECONDS": "1", "WEBHOOK_RETRY_SECONDS": "0.1,0.1,0.1",
        "LOG_LEVEL": "WARNING", **env,
    }  # fmt: skip
    return subprocess.Popen([sys.executable, "-m", "app.cli", "webhooks"], env=environment,
                            cwd=ROOT)  # fmt: skip


async def test_the_delivery_worker_killed_mid_batch_loses_and_invents_nothing(
    hooked: httpx.AsyncClient, merchant: CreatedMerchant, hook_settings: Settings,
    db: asyncpg.Pool, receiver: Receiver,
) -> None:  # fmt: skip
    hook = await endpoint(hooked, merchant, receiver.url)
    for _ in range(30):
        await hooked.post(f"/v1/webhook-endpoints/{hook['id']}/test", headers=auth(merchant))
    announced = {f"msg_{r['id'].hex}" for r in await db.fetch("SELECT id FROM events")}
    receiver.delay = 0.5  # every answer slow: the kill lands with requests in flight
    worker = _worker(hook_settings)
    try:
        for _ in range(200):
            if receiver.received:
                break
            await asyncio.sleep(0.02)
        worker.send_signal(signal.SIGKILL)
        worker.wait(timeout=10)
        in_flight = len(receiver.received)
        assert 0 < in_flight < 30
        receiver.delay = 0.0
        worker = _worker(hook_settings)
        for _ in range(300):
            pending = await db.fetchval(
                "SELECT count(*) FROM webhook_deliveries WHERE status <> 'delivered'"
            )
            if not pending:
                break
            await asyncio.sleep(0.05)
        assert pending == 0
    finally:
        worker.send_signal(signal.SIGTERM)
        worker.wait(timeout=10)
    delivered = {h["webhook-id"] for h, _ in receiver.received}
    assert delivered == announced  # every one, and nothing else
    assert all(orjson.loads(b)["type"] == "webhook.test" for _, b in receiver.received)
    receiver.verified(hook["secret"])


async def test_endpoints_are_managed_and_unknown_event_types_refused(
    hooked: httpx.AsyncClient, merchant: CreatedMerchant, receiver: Receiver,
) -> None:  # fmt: skip
    hook = await endpoint(hooked, merchant, receiver.url, description="CRM",
                          event_types=["reward.approved"])  # fmt: skip
    listed = (await hooked.get("/v1/webhook-endpoints", headers=auth(merchant))).json()
    assert [e["id"] for e in listed] == [hook["id"]] and "secret" not in listed[0]
    changed = await hooked.patch(f"/v1/webhook-endpoints/{hook['id']}",
                                 json={"event_types": ["reward.paid", "reward.approved"]},
                                 headers=auth(merchant))  # fmt: skip
    assert changed.json()["event_types"] == ["reward.approved", "reward.paid"]
    wrong = {"url": receiver.url, "event_types": ["reward.stolen"]}
    bad = await hooked.post("/v1/webhook-endpoints", headers=auth(merchant), json=wrong)
    assert bad.status_code == 422 and bad.json()["error"]["field"].startswith("body.event_types")
    gone = await hooked.delete(f"/v1/webhook-endpoints/{hook['id']}", headers=auth(merchant))
    assert gone.status_code == 204
    assert (await hooked.get(f"/v1/webhook-endpoints/{hook['id']}",
                             headers=auth(merchant))).status_code == 404  # fmt: skip
    assert RULES


async def test_events_past_the_retention_expire_with_their_deliveries_and_the_rest_stay(
    hooked: httpx.AsyncClient, merchant: CreatedMerchant, db: asyncpg.Pool, receiver: Receiver,
) -> None:  # fmt: skip
    await endpoint(hooked, merchant, receiver.url)
    async with db.acquire() as conn:
        old = await conn.fetchval("SELECT announce($1, 'webhook.test', '{}')", merchant.id)
        new = await conn.fetchval("SELECT announce($1, 'webhook.test', '{}')", merchant.id)
        await conn.execute(
            "UPDATE events SET created_at = now() - interval '31 days' WHERE seq = $1", old
        )
    now = datetime.now(UTC)
    assert await service.expire_events(db, now, 30) == 1
    left = await db.fetch("SELECT seq FROM events WHERE seq = ANY($1::bigint[])", [old, new])
    assert [r["seq"] for r in left] == [new]
    deliveries = await db.fetch(
        "SELECT event_seq FROM webhook_deliveries WHERE event_seq = ANY($1::bigint[])", [old, new]
    )
    assert [r["event_seq"] for r in deliveries] == [new]  # the old one's went with it
