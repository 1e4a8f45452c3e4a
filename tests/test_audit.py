"""The audit trail: each management write is recorded with its key, time, operation, objects
and change — in the change's own transaction, so a refused write leaves no record — readable
newest first with filters and a cursor, and append-only."""

from __future__ import annotations

import asyncpg
import httpx
import pytest

from app.storage.merchants import CreatedMerchant
from tests.conftest import auth, make_advocate, make_program
from tests.test_conversions import RULES


async def test_each_management_write_is_recorded_with_its_key_and_change(
    client: httpx.AsyncClient, merchant: CreatedMerchant, db: asyncpg.Pool
) -> None:
    h = auth(merchant)
    program = await make_program(client, merchant, rules=RULES)
    anna = await make_advocate(client, merchant, program, "cust-anna")
    link = anna["links"][0]
    assert (await client.patch(f"/v1/links/{link['id']}", json={"active": False},
                               headers=h)).status_code == 200  # fmt: skip
    await client.put(f"/v1/advocates/{anna['id']}/payout-details",
                     json={"payout_email": "anna@example.com"}, headers=h)  # fmt: skip
    await client.post(f"/v1/advocates/{anna['id']}/dashboard-token", json={}, headers=h)
    upload = await client.post(
        "/v1/reconciliation-reports", content=b"order_id,status,amount,currency\n",
        params={"period_start": "2026-01-01T00:00:00Z", "period_end": "2027-01-01T00:00:00Z"},
        headers={**h, "content-type": "text/csv"},
    )  # fmt: skip
    assert upload.status_code == 201
    # Reads and refused writes leave no record.
    await client.get(f"/v1/links/{link['id']}", headers=h)
    refused = await client.put(f"/v1/programs/{program['id']}/rules",
                               json={"attribution_window_days": 0}, headers=h)  # fmt: skip
    assert refused.status_code == 422

    page = (await client.get("/v1/audit", headers=h)).json()
    operations = [r["operation"] for r in page["records"]]
    assert operations == [
        "POST /v1/reconciliation-reports",
        "POST /v1/advocates/{advocate_id}/dashboard-token",
        "PUT /v1/advocates/{advocate_id}/payout-details",
        "PATCH /v1/links/{link_id}",
        "POST /v1/programs/{program_id}/advocates",
        "POST /v1/programs",
    ]
    key_id = await db.fetchval("SELECT id FROM api_keys WHERE merchant_id = $1", merchant.id)
    assert {r["key_id"] for r in page["records"]} == {str(key_id)}
    patch = page["records"][3]
    assert patch["object_ids"] == {"link_id": link["id"]} and patch["change"] == {"active": False}
    assert page["records"][0]["change"]["bytes"] == 32  # an upload: its size and digest
    by_link = (await client.get("/v1/audit", params={"object_id": link["id"]},
                                headers=h)).json()  # fmt: skip
    assert [r["operation"] for r in by_link["records"]] == ["PATCH /v1/links/{link_id}"]
    first = (await client.get("/v1/audit", params={"limit": 4}, headers=h)).json()
    rest = (await client.get("/v1/audit", params={"limit": 4, "before": first["next_cursor"]},
                             headers=h)).json()  # fmt: skip
    assert [r["operation"] for r in first["records"] + rest["records"]] == operations
    with pytest.raises(asyncpg.RaiseError):
        await db.execute("UPDATE audit_log SET operation = 'x'")


async def test_another_merchant_sees_none_of_it_and_a_reader_may_not_read_it(
    client: httpx.AsyncClient, merchant: CreatedMerchant, other_merchant: CreatedMerchant
) -> None:
    await make_program(client, merchant, rules=RULES)
    assert (await client.get("/v1/audit", headers=auth(other_merchant))).json()["records"] == []
    reader = (await client.post("/v1/api-keys", json={"scopes": ["read"]},
                                headers=auth(merchant))).json()["key"]  # fmt: skip
    refused = await client.get("/v1/audit", headers={"Authorization": f"Bearer {reader}"})
    assert refused.status_code == 403
