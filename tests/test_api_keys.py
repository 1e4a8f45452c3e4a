"""API keys: several per merchant with scopes, issued, listed (never the secret), rotated and
revoked through the API and the CLI; a scope refuses what it does not grant (403 naming it);
a revoked key stops at once on another API process; every operation states its scope."""

from __future__ import annotations

import os
import subprocess
import sys

import httpx

from app import scopes
from app.main import TrackingApp
from app.settings import Settings
from app.storage.merchants import CreatedMerchant
from tests.conftest import ROOT, auth, make_program, serving
from tests.test_conversions import RULES


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


async def issue(client: httpx.AsyncClient, merchant: CreatedMerchant, *granted: str) -> str:
    answer = await client.post("/v1/api-keys", json={"label": "job", "scopes": list(granted)},
                               headers=auth(merchant))  # fmt: skip
    assert answer.status_code == 201, answer.text
    key: str = answer.json()["key"]
    assert key.startswith("rk_") and answer.json()["scopes"] == sorted(granted)
    return key


def test_every_operation_states_the_scope_it_needs(app: TrackingApp) -> None:
    document = app.api.openapi()
    unstated = [f"{m.upper()} {p}" for p, ops in document["paths"].items() for m in ops
                if not scopes.known(m.upper(), p)]  # fmt: skip
    assert unstated == []


async def test_a_scope_refuses_what_it_does_not_grant_and_names_the_missing_scope(
    client: httpx.AsyncClient, merchant: CreatedMerchant
) -> None:
    program = await make_program(client, merchant, rules=RULES)
    reader = await issue(client, merchant, "read")
    assert (await client.get("/v1/programs", headers=bearer(reader))).status_code == 200
    refused = await client.put(f"/v1/programs/{program['id']}/rules", json=RULES,
                               headers=bearer(reader))  # fmt: skip
    assert refused.status_code == 403
    error = refused.json()["error"]
    assert (error["code"], error["field"]) == ("insufficient_scope", "authorization")
    assert error["message"] == "this API key lacks the 'admin' scope"
    linker = await issue(client, merchant, "links:write")
    enrolled = await client.post(f"/v1/programs/{program['id']}/advocates",
                                 json={"external_id": "a1"}, headers=bearer(linker))  # fmt: skip
    assert enrolled.status_code == 201
    payout = await client.post("/v1/payouts", json={},
                               headers={**bearer(linker), "Idempotency-Key": "k"})  # fmt: skip
    assert payout.status_code == 403 and "'rewards:write'" in payout.json()["error"]["message"]
    finance = await issue(client, merchant, "rewards:write", "read")
    payout = await client.post("/v1/payouts", json={},
                               headers={**bearer(finance), "Idempotency-Key": "k"})  # fmt: skip
    assert payout.status_code == 201
    assert (await client.get("/v1/api-keys", headers=bearer(finance))).status_code == 403


async def test_revocation_and_rotation_take_effect_on_another_api_process(
    client: httpx.AsyncClient, merchant: CreatedMerchant, settings: Settings
) -> None:
    key = await issue(client, merchant, "read")
    async with serving(settings) as (_, other):  # a second replica of the API
        assert (await other.get("/v1/programs", headers=bearer(key))).status_code == 200
        listed = (await client.get("/v1/api-keys", headers=auth(merchant))).json()
        mine = next(k for k in listed if k["label"] == "job")
        assert "key" not in mine and mine["last_used_at"] is not None
        # Rotation with an overlap: both work; without one, the old key stops at once.
        rotated = await client.post(
            f"/v1/api-keys/{mine['id']}/rotate", json={"overlap_seconds": 3600},
            headers=auth(merchant),
        )  # fmt: skip
        new = rotated.json()
        assert rotated.status_code == 201 and new["scopes"] == ["read"]
        for k in (key, new["key"]):
            assert (await other.get("/v1/programs", headers=bearer(k))).status_code == 200
        again = (await client.post(f"/v1/api-keys/{new['id']}/rotate", json={},
                                   headers=auth(merchant))).json()  # fmt: skip
        assert (await other.get("/v1/programs", headers=bearer(new["key"]))).status_code == 401
        assert (await other.get("/v1/programs", headers=bearer(again["key"]))).status_code == 200
        revoked = await client.delete(f"/v1/api-keys/{again['id']}", headers=auth(merchant))
        assert revoked.status_code == 204
        assert (await other.get("/v1/programs", headers=bearer(again["key"]))).status_code == 401


async def test_keys_are_managed_from_the_cli_too(
    merchant: CreatedMerchant, settings: Settings, client: httpx.AsyncClient
) -> None:
    env = {**os.environ, "DATABASE_URL": settings.database_url, "REDIS_URL": settings.redis_url,
           "SECRET_KEY": settings.secret_key}  # fmt: skip

    def cli(*args: str) -> str:
        command = [sys.executable, "-c", "from app.cli import main; main()", *args]
        done = subprocess.run(command, env=env, cwd=ROOT, capture_output=True, text=True,
                              timeout=60)  # fmt: skip
        assert done.returncode == 0, done.stderr
        return done.stdout.strip()

    key = cli("add-api-key", str(merchant.id), "--label", "reports", "--scope", "read")
    assert (await client.get("/v1/programs", headers=bearer(key))).status_code == 200
    listed = cli("api-keys", str(merchant.id))
    assert '"label":"reports"' in listed and key not in listed
    key_id = next(line for line in listed.splitlines() if '"reports"' in line).split('"')[3]
    assert cli("revoke-api-key", str(merchant.id), key_id) == "revoked"
    assert (await client.get("/v1/programs", headers=bearer(key))).status_code == 401
