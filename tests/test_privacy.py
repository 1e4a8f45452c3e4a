"""Privacy end to end (real PostgreSQL and Redis, through the API): secrets encrypted at rest and
rotated, emails hashed under each merchant's own key (and the upgrade of merchants from before,
self-referral detection intact), advocate page tokens (opaque, revocable, canonical, expiring,
friends' amounts hidden unless the program shows them), erasure of a customer and of an advocate
(a scan of every table and Redis key finds none of their values after, and the books are equal),
and retention on an old click partition."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID

import asyncpg
import httpx
from cryptography.fernet import Fernet
from redis.asyncio import Redis

from app.attribution.fraud import canonical_email, near_variants
from app.keyring import Keyring
from app.security import IpAnonymizer, hash_email
from app.services import merchant_keys
from app.services.merchants import create_merchant
from app.services.retention import strip_old_clicks
from app.settings import Settings
from app.storage.merchants import CreatedMerchant
from tests.conftest import BROWSER_UA, TEST_KEYRING, TEST_SECRET_KEY, auth, flush, make_program
from tests.test_conversions import RULES, click, post, read
from tests.test_fraud import FRIEND_RULES, buy, enroll, rule_names


async def test_secrets_are_encrypted_at_rest_and_emails_keyed_per_merchant(
    client: httpx.AsyncClient, merchant: CreatedMerchant, other_merchant: CreatedMerchant,
    db: asyncpg.Pool,
) -> None:  # fmt: skip
    rows = await db.fetch("SELECT * FROM merchants")
    for row in rows:
        assert row["webhook_secret"] is None and row["keys_version"] == 1
        stored = " ".join(str(v) for v in dict(row).values())
        assert merchant.webhook_secret not in stored and other_merchant.webhook_secret not in stored
    # The same person at two merchants: two unrelated hashes, neither the bare SHA-256.
    for m in (merchant, other_merchant):
        program = await make_program(client, m)
        await enroll(client, m, program, email="Anna@Example.com")
    hashes = [r["email_hash"] for r in await db.fetch("SELECT email_hash FROM advocates")]
    assert len(set(hashes)) == 2
    assert hashlib.sha256(b"anna@example.com").digest() not in hashes


async def test_rotating_the_data_key_keeps_postbacks_verifying(
    db: asyncpg.Pool, settings: Settings, tmp_path: Any
) -> None:
    old = Fernet.generate_key().decode()
    new = Fernet.generate_key().decode()
    before = Keyring.build(TEST_SECRET_KEY, data_keys=old)
    merchant = await create_merchant(db, before, "Rotating")
    both = Keyring.build(TEST_SECRET_KEY, data_keys=f"{new},{old}")
    assert await merchant_keys.reencrypt_all(db, both) >= 1
    after = Keyring.build(TEST_SECRET_KEY, data_keys=new)
    keys = await merchant_keys.keys_of(db, after, merchant.id)
    assert keys is not None and keys.webhook_secret == merchant.webhook_secret


def _unkeyed(email: str) -> tuple[bytes, bytes, list[bytes]]:
    """What hashes were before per-merchant keys: bare SHA-256."""
    canonical = canonical_email(email)
    return (hashlib.sha256(email.strip().lower().encode()).digest(),
            hashlib.sha256(b"email-canonical:" + canonical.encode()).digest(),
            sorted(hashlib.sha256(b"email-near:" + v.encode()).digest()[:16]
                   for v in near_variants(canonical)))  # fmt: skip


async def test_a_merchant_from_before_is_upgraded_and_still_catches_self_referrals(
    client: httpx.AsyncClient, merchant: CreatedMerchant, settings: Settings, db: asyncpg.Pool,
) -> None:  # fmt: skip
    program = await make_program(client, merchant, rules=FRIEND_RULES)
    anna = await enroll(client, merchant, program)
    # As the merchant was stored before this version: plain secret, bare SHA-256 hashes.
    await db.execute(
        "UPDATE merchants SET webhook_secret = $2, webhook_secret_enc = NULL,"
        " email_key_enc = NULL, keys_version = 0 WHERE id = $1",
        merchant.id, merchant.webhook_secret,
    )  # fmt: skip
    plain, canonical, near = _unkeyed("anna.maria@gmail.com")
    await db.execute(
        "UPDATE advocates SET email_hash = $2, email_canonical = $3, email_near = $4 WHERE id = $1",
        anna["id"], plain, canonical, near,
    )  # fmt: skip
    assert await merchant_keys.upgrade_all(db, TEST_KEYRING) == 1
    assert await merchant_keys.upgrade_all(db, TEST_KEYRING) == 0  # idempotent
    row = await db.fetchrow("SELECT * FROM advocates WHERE id = $1", anna["id"])
    assert row["email_hash"] != plain and row["email_canonical"] != canonical
    # The secret still verifies, and a tagged address of the advocate is still a self-referral.
    conversion = await buy(client, merchant, 1, customer_email="anna.maria+x@gmail.com",
                           click_id=await click(client, anna["links"][0]))  # fmt: skip
    await flush(settings)
    found = await read(client, merchant, conversion)
    assert "self_referral" in rule_names(found)


# -- Advocate page tokens ------------------------------------------------------------------------


async def _page(client: httpx.AsyncClient, token: str) -> httpx.Response:
    return await client.get("/v1/advocate/stats", params={"token": token})


async def test_an_advocate_token_is_opaque_revocable_and_expires(
    client: httpx.AsyncClient, merchant: CreatedMerchant, settings: Settings, db: asyncpg.Pool,
) -> None:  # fmt: skip
    program = await make_program(client, merchant, rules=RULES)
    anna = await enroll(client, merchant, program)
    issued = await client.post(f"/v1/advocates/{anna['id']}/dashboard-token",
                               headers=auth(merchant))  # fmt: skip
    assert issued.status_code == 200
    token = issued.json()["token"]
    assert (
        token.startswith("at_") and str(anna["id"]) not in token and str(merchant.id) not in token
    )
    assert issued.json()["url"].endswith(f"/advocate?token={token}")
    assert (await _page(client, token)).status_code == 200
    assert await db.fetchval("SELECT count(*) FROM advocate_tokens WHERE token_hash = $1",
                             hashlib.sha256(token.encode()).digest()) == 1  # fmt: skip

    kid, nonce, mac = token.removeprefix("at_").split(".")
    other_char = "A" if mac[-1] != "A" else "B"
    for bad, reason in [
        (token[:-1] + other_char, "bad signature"),  # forged, or another encoding of the bytes
        (f"at_{kid}.{nonce}.{mac}=", "malformed"),  # padding: one spelling only
        ("x", "malformed"),
    ]:
        response = await _page(client, bad)
        assert response.status_code == 401 and reason in response.json()["error"]["message"]

    listed = await client.get(f"/v1/advocates/{anna['id']}/dashboard-tokens",
                              headers=auth(merchant))  # fmt: skip
    assert [t["id"] for t in listed.json()] == [issued.json()["id"]]
    assert "token" not in listed.json()[0]
    revoked = await client.delete(
        f"/v1/advocates/{anna['id']}/dashboard-tokens/{issued.json()['id']}",
        headers=auth(merchant),
    )
    assert revoked.status_code == 204
    response = await _page(client, token)
    assert response.status_code == 401 and "revoked" in response.json()["error"]["message"]

    second = (await client.post(f"/v1/advocates/{anna['id']}/dashboard-token",
                                headers=auth(merchant))).json()  # fmt: skip
    await db.execute("UPDATE advocate_tokens SET expires_at = $2 WHERE id = $1",
                     second["id"], datetime.now(UTC) - timedelta(seconds=1))  # fmt: skip
    assert (await _page(client, second["token"])).status_code == 401


async def test_a_retired_signing_key_stops_its_tokens(
    client: httpx.AsyncClient, merchant: CreatedMerchant, settings: Settings
) -> None:
    program = await make_program(client, merchant, rules=RULES)
    anna = await enroll(client, merchant, program)
    settings.__dict__["keyring"] = Keyring.build(TEST_SECRET_KEY,
                                                 signing_keys="old:" + "o" * 32)  # fmt: skip
    old = (await client.post(f"/v1/advocates/{anna['id']}/dashboard-token",
                             headers=auth(merchant))).json()["token"]  # fmt: skip
    # A new key in front: new tokens use it, the old ones still verify.
    settings.__dict__["keyring"] = Keyring.build(
        TEST_SECRET_KEY, signing_keys="new:" + "n" * 32 + ",old:" + "o" * 32
    )
    new = (await client.post(f"/v1/advocates/{anna['id']}/dashboard-token",
                             headers=auth(merchant))).json()["token"]  # fmt: skip
    assert new.startswith("at_new.") and old.startswith("at_old.")
    assert (await _page(client, old)).status_code == 200
    # The old key removed: what it signed stops working.
    settings.__dict__["keyring"] = Keyring.build(TEST_SECRET_KEY, signing_keys="new:" + "n" * 32)
    assert (await _page(client, old)).status_code == 401
    assert (await _page(client, new)).status_code == 200


async def test_the_advocate_page_hides_friends_amounts_unless_the_program_shows_them(
    client: httpx.AsyncClient, merchant: CreatedMerchant, settings: Settings
) -> None:
    for shown in (False, True):
        response = await client.post(
            "/v1/programs", headers=auth(merchant),
            json={"name": f"p{shown}", "destination_url": "https://shop.example.com/",
                  "rules": FRIEND_RULES, "advocate_sees_amounts": shown},
        )  # fmt: skip
        program = response.json()
        anna = await enroll(client, merchant, program, external_id=f"anna-{shown}",
                            email=f"anna{shown}@example.com")  # fmt: skip
        await buy(client, merchant, int(shown), customer_email=f"friend{shown}@example.com",
                  click_id=await click(client, anna["links"][0]))  # fmt: skip
        await flush(settings)
        token = (await client.post(f"/v1/advocates/{anna['id']}/dashboard-token",
                                   headers=auth(merchant))).json()["token"]  # fmt: skip
        page = (await _page(client, token)).json()
        assert page["purchases"] == 1 and page["clicks"] == 1
        assert sum(page["rewards_minor"]["EUR"].values()) == 1000  # their own reward
        if shown:
            assert page["revenue_minor"] == {"EUR": 5000}
            assert sum(page["friend_rewards_minor"]["EUR"].values()) == 500
        else:
            assert page["revenue_minor"] is None and page["friend_rewards_minor"] is None


# -- Erasure -------------------------------------------------------------------------------------

FRIEND_UA = BROWSER_UA + " FriendPhone/7.7"
FRIEND_REFERER = "https://mail.example.net/inbox/bob-private"


async def _tables(db: asyncpg.Pool) -> list[str]:
    rows = await db.fetch(
        "SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
        " WHERE n.nspname = 'public' AND c.relkind IN ('r', 'p') AND NOT c.relispartition"
    )
    return [r["relname"] for r in rows]


async def _find_anywhere(db: asyncpg.Pool, redis: Redis, values: list[str]) -> list[str]:
    """Every table's rows as text, and every Redis key's content: where the values still are."""
    found = []
    needles = [v.lower() for v in values]
    for table in await _tables(db):
        for row in await db.fetch(f"SELECT t::text AS t FROM {table} t"):
            text = row["t"].lower()
            found += [f"{table}: {v}" for v in needles if v in text]
    async for key in redis.scan_iter():
        kind = (await redis.type(key)).decode()
        if kind == "string":
            content = repr(await redis.get(key))
        elif kind == "stream":
            content = repr(await redis.xrange(key))
        elif kind == "hash":
            content = repr(await redis.hgetall(key))
        else:
            content = ""
        text = (repr(key) + content).lower()
        found += [f"redis {key!r}: {v}" for v in needles if v in text]
    return found


async def _books(client: httpx.AsyncClient, merchant: CreatedMerchant, db: asyncpg.Pool,
                 program: dict[str, Any], advocate: dict[str, Any]) -> Any:  # fmt: skip
    stats = (await client.get(f"/v1/programs/{program['id']}/stats", headers=auth(merchant))).json()
    mine = (
        await client.get(f"/v1/advocates/{advocate['id']}/stats", headers=auth(merchant))
    ).json()
    ledger = await db.fetch(
        "SELECT reward_id, state, amount_minor FROM reward_balances ORDER BY reward_id, state"
    )
    entries = await db.fetchval("SELECT count(*) FROM reward_entries")
    amounts = await db.fetch(
        "SELECT id, amount_minor, currency, state FROM conversions ORDER BY id"
    )
    return stats, mine, [tuple(r) for r in ledger], entries, [tuple(r) for r in amounts]


async def test_erasing_a_customer_and_an_advocate_leaves_no_trace_and_the_books_whole(
    client: httpx.AsyncClient, merchant: CreatedMerchant, settings: Settings, db: asyncpg.Pool,
    redis: Redis,
) -> None:  # fmt: skip
    program = await make_program(client, merchant, rules=FRIEND_RULES)
    anna = await enroll(client, merchant, program, email="anna.maria@gmail.com")
    details = {"payout_email": "anna.payouts@example.org", "payout_name": "Anna Maria Privat",
               "payout_reference": "IBAN-DE-ANNA-0042"}  # fmt: skip
    put = await client.put(f"/v1/advocates/{anna['id']}/payout-details", json=details,
                           headers=auth(merchant))  # fmt: skip
    assert put.status_code == 204
    # Bob, the friend: clicks from his phone (cookie, user agent, referer), then buys.
    phone = {"user-agent": FRIEND_UA, "referer": FRIEND_REFERER}
    response = await client.get(f"/r/{anna['links'][0]['code']}", headers=phone)
    click_id = response.headers["location"].split("rcid=")[1][:32]
    visitor = client.cookies.get(settings.cookie_name)
    assert visitor
    for n, kind in enumerate(("signup", "purchase")):
        body = {"event_id": f"bob-{n}", "type": kind, "customer_id": "cust-bob-77",
                "customer_email": "Bob.Friend@example.com", "click_id": click_id,
                "ip": "198.51.100.23", "user_agent": FRIEND_UA}  # fmt: skip
        if kind == "purchase":
            body |= {"order_id": "order-bob-1", "amount_minor": 5000, "currency": "EUR"}
        assert (await post(client, merchant, body)).status_code == 202
    await flush(settings)
    token = (await client.post(f"/v1/advocates/{anna['id']}/dashboard-token",
                               headers=auth(merchant))).json()["token"]  # fmt: skip
    before = await _books(client, merchant, db, program, anna)
    assert before[0]["purchases"] == 1 and before[0]["signups"] == 1

    keys = await merchant_keys.keys_of(db, TEST_KEYRING, merchant.id)
    assert keys is not None
    bob_hash = hash_email(keys.email_key, "Bob.Friend@example.com").hex()
    ip_hash = IpAnonymizer(settings.keyring.ip_hash_key)
    bob = ["cust-bob-77", "bob.friend@example.com", bob_hash, visitor,
           str(UUID(visitor)), ip_hash("198.51.100.23")[0] or "", "198.51.100.0/24",
           "FriendPhone/7.7", "bob-private"]  # fmt: skip
    assert await _find_anywhere(db, redis, bob)  # there before

    erased = await client.post("/v1/customers/erase", headers=auth(merchant),
                               json={"customer_id": "cust-bob-77",
                                     "customer_email": "Bob.Friend@example.com"})  # fmt: skip
    assert erased.status_code == 200, erased.text
    record = erased.json()
    assert record["kind"] == "customer" and record["pseudonym"].startswith("erased:")
    assert record["changed"]["conversions"] == 2 and record["changed"]["clicks"] >= 1
    assert await _find_anywhere(db, redis, bob) == []
    assert await _books(client, merchant, db, program, anna) == before

    again = await client.post("/v1/customers/erase", headers=auth(merchant),
                              json={"customer_id": "cust-bob-77",
                                    "customer_email": "Bob.Friend@example.com"})  # fmt: skip
    assert again.json()["id"] == record["id"] and set(again.json()["changed"].values()) == {0}

    # Anna, the advocate.
    anna_values = ["cust-anna", "anna.payouts@example.org", "Anna Maria Privat",
                   "IBAN-DE-ANNA-0042", anna["referral_code"],
                   hash_email(keys.email_key, "anna.maria@gmail.com").hex()]  # fmt: skip
    gone = await client.post(f"/v1/advocates/{anna['id']}/erase", headers=auth(merchant))
    assert gone.status_code == 200, gone.text
    assert gone.json()["changed"]["advocates"] == 1 and gone.json()["changed"]["links"] == 1
    assert await _find_anywhere(db, redis, anna_values) == []
    assert (await client.get(f"/r/{anna['links'][0]['code']}")).status_code == 404
    assert (await _page(client, token)).status_code == 401
    after = await _books(client, merchant, db, program, anna)
    assert after == before
    again = await client.post(f"/v1/advocates/{anna['id']}/erase", headers=auth(merchant))
    assert set(again.json()["changed"].values()) == {0}

    # The audit trail recorded both, without the erased values.
    audit = (await client.get("/v1/audit", headers=auth(merchant))).json()
    operations = [e["operation"] for e in audit["records"]]
    assert "POST /v1/customers/erase" in operations
    assert "POST /v1/advocates/{advocate_id}/erase" in operations
    recorded = [e for e in audit["records"] if e["operation"] == "POST /v1/customers/erase"]
    assert recorded[0]["change"] == {"not_recorded": "the subject of an erasure"}


async def test_an_erasure_waits_for_queued_events_and_refuses_without_redis(
    client: httpx.AsyncClient, merchant: CreatedMerchant, settings: Settings, redis: Redis,
) -> None:  # fmt: skip
    # An event queued and never flushed: the erasure cannot promise it is gone.
    await redis.xadd(settings.conversion_stream, {"e": b"[]"})
    started = await client.post("/v1/customers/erase", headers=auth(merchant),
                                json={"customer_id": "cust-x"})  # fmt: skip
    assert started.status_code == 503
    assert "retry" in started.json()["error"]["message"]
    nobody = await client.post("/v1/customers/erase", headers=auth(merchant), json={})
    assert nobody.status_code == 422 and nobody.json()["error"]["field"] == "body.customer_id"


# -- Retention -----------------------------------------------------------------------------------


async def test_old_click_partitions_lose_personal_data_and_keep_their_counts(
    client: httpx.AsyncClient, merchant: CreatedMerchant, settings: Settings, db: asyncpg.Pool,
) -> None:  # fmt: skip
    program = await make_program(client, merchant, rules=RULES)
    anna = await enroll(client, merchant, program)
    for n in range(3):
        client.cookies.clear()
        browser = {"user-agent": FRIEND_UA, "referer": f"https://r{n}.example/"}
        await client.get(f"/r/{anna['links'][0]['code']}", headers=browser)
    await flush(settings)
    # Two of the clicks are from January 2020, in a partition of their own.
    await db.execute("SELECT ensure_click_partitions('2020-01-01', 1)")
    old = [r["click_id"] for r in await db.fetch("SELECT click_id FROM clicks LIMIT 2")]
    await db.execute("UPDATE clicks SET clicked_at = '2020-01-15' WHERE click_id = ANY($1)", old)
    assert await db.fetchval("SELECT count(*) FROM clicks_2020_01") == 2
    stats = f"/v1/advocates/{anna['id']}/stats"
    before = (await client.get(stats, headers=auth(merchant))).json()

    done = await strip_old_clicks(db, datetime.now(UTC), settings.click_retention_days)
    assert done == {"clicks_2020_01": 2}
    rows = await db.fetch("SELECT * FROM clicks ORDER BY clicked_at")
    assert all(r["user_agent"] is None and r["referer"] is None and r["ip_hash"] is None
               and r["ip_prefix"] is None and r["visitor_id"] for r in rows[:2])  # fmt: skip
    assert rows[2]["user_agent"] == FRIEND_UA  # recent: kept
    assert (await client.get(stats, headers=auth(merchant))).json() == before
    assert await strip_old_clicks(db, datetime.now(UTC), settings.click_retention_days) == {}
