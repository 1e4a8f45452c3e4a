"""The management API: authentication, validation, tenant isolation, links and QR codes."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from app.storage.merchants import CreatedMerchant
from tests.conftest import auth, make_advocate, make_program


@pytest.mark.parametrize(
    "headers",
    [{}, {"Authorization": "Bearer rk_not-a-real-key"}, {"Authorization": "Basic Zm9vOmJhcg=="}],
)
async def test_missing_or_wrong_api_key_is_401(
    client: httpx.AsyncClient, headers: dict[str, str]
) -> None:
    response = await client.get("/v1/programs", headers=headers)
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "unauthorized"
    assert response.json()["error"]["field"] == "authorization"


async def test_api_keys_are_stored_only_as_hashes(
    client: httpx.AsyncClient, merchant: CreatedMerchant, db: Any
) -> None:
    stored = await db.fetch("SELECT key_hash, key_prefix FROM api_keys")
    assert len(stored) == 1
    assert merchant.api_key.encode() not in bytes(stored[0]["key_hash"])
    assert merchant.api_key.startswith(stored[0]["key_prefix"])
    assert (await client.get("/v1/me", headers=auth(merchant))).json()["name"] == "Acme Shoes"


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"destination_url": "https://shop.example.com"}, "body.name"),
        ({"name": "P", "destination_url": "javascript:alert(1)"}, "body.destination_url"),
        ({"name": "P", "destination_url": "/relative"}, "body.destination_url"),
        ({"name": "P", "destination_url": "https://shop.example.com",
          "attribution_window_days": 0}, "body.attribution_window_days"),
        ({"name": "P", "destination_url": "https://shop.example.com",
          "allowed_domains": ["not a domain"]}, "body.allowed_domains.0"),
        ({"name": "P", "destination_url": "https://evil.example.net",
          "allowed_domains": ["shop.example.com"]}, "body.destination_url"),
        ({"name": "P", "destination_url": "https://shop.example.com", "surprise": 1},
         "body.surprise"),
    ],
)  # fmt: skip
async def test_invalid_program_is_422_naming_the_field(
    client: httpx.AsyncClient, merchant: CreatedMerchant, body: dict[str, Any], field: str, db: Any
) -> None:
    response = await client.post("/v1/programs", json=body, headers=auth(merchant))
    assert response.status_code == 422, response.text
    assert response.json()["error"]["field"] == field
    assert await db.fetchval("SELECT count(*) FROM programs") == 0


async def test_malformed_json_is_422_not_500(
    client: httpx.AsyncClient, merchant: CreatedMerchant
) -> None:
    response = await client.post(
        "/v1/programs",
        content=b"{not json",
        headers={**auth(merchant), "content-type": "application/json"},
    )
    assert response.status_code == 422
    assert response.json()["error"]["code"] == "validation_error"


async def test_enrolling_an_advocate_returns_a_code_and_a_personal_link(
    client: httpx.AsyncClient, merchant: CreatedMerchant
) -> None:
    program = await make_program(client, merchant)
    advocate = await make_advocate(client, merchant, program, "cust-1")

    assert advocate["referral_code"].startswith("ANNAMU-")
    [link] = advocate["links"]
    assert link["url"] == f"https://go.example.test/r/{link['code']}"
    assert link["destination"] == program["destination_url"]
    assert link["channel"] == "default"


async def test_enrolling_the_same_customer_twice_returns_the_same_advocate(
    client: httpx.AsyncClient, merchant: CreatedMerchant
) -> None:
    program = await make_program(client, merchant)
    first = await make_advocate(client, merchant, program, "cust-1")
    again = await client.post(
        f"/v1/programs/{program['id']}/advocates",
        json={"external_id": "cust-1", "name": "Anna"},
        headers=auth(merchant),
    )
    assert again.status_code == 200
    assert again.json()["id"] == first["id"]
    assert again.json()["links"] == first["links"]


async def test_extra_links_per_channel_stay_on_allowed_domains(
    client: httpx.AsyncClient, merchant: CreatedMerchant
) -> None:
    program = await make_program(client, merchant, allowed_domains=["example.com"])
    advocate = await make_advocate(client, merchant, program, "cust-1")
    path = f"/v1/advocates/{advocate['id']}/links"

    ok = await client.post(
        path,
        json={"channel": "whatsapp", "destination": "https://blog.example.com/spring"},
        headers=auth(merchant),
    )
    assert ok.status_code == 201, ok.text
    assert ok.json()["channel"] == "whatsapp"

    off_domain = await client.post(
        path,
        json={"channel": "email", "destination": "https://evil.example.net/"},
        headers=auth(merchant),
    )
    assert off_domain.status_code == 422
    assert off_domain.json()["error"]["field"] == "body.destination"

    bad_channel = await client.post(path, json={"channel": "fax"}, headers=auth(merchant))
    assert bad_channel.status_code == 422
    assert bad_channel.json()["error"]["field"] == "body.channel"

    advocate_now = await client.get(f"/v1/advocates/{advocate['id']}", headers=auth(merchant))
    assert [link["channel"] for link in advocate_now.json()["links"]] == ["default", "whatsapp"]


async def test_one_merchant_never_sees_or_touches_anothers_objects(
    client: httpx.AsyncClient, merchant: CreatedMerchant, other_merchant: CreatedMerchant
) -> None:
    program = await make_program(client, merchant)
    advocate = await make_advocate(client, merchant, program, "cust-1")
    link = advocate["links"][0]
    intruder = auth(other_merchant)

    for path in [
        f"/v1/programs/{program['id']}",
        f"/v1/advocates/{advocate['id']}",
        f"/v1/links/{link['id']}",
        f"/v1/links/{link['id']}/qr",
    ]:
        response = await client.get(path, headers=intruder)
        assert response.status_code == 404, path
    assert (await client.get("/v1/programs", headers=intruder)).json() == []

    enroll = await client.post(
        f"/v1/programs/{program['id']}/advocates", json={"external_id": "x"}, headers=intruder
    )
    assert enroll.status_code == 404
    new_link = await client.post(f"/v1/advocates/{advocate['id']}/links", json={}, headers=intruder)
    assert new_link.status_code == 404
    disable = await client.patch(
        f"/v1/links/{link['id']}", json={"active": False}, headers=intruder
    )
    assert disable.status_code == 404
    assert (await client.get(f"/r/{link['code']}")).status_code == 302


async def test_link_reads_back_with_its_click_counts(
    client: httpx.AsyncClient, merchant: CreatedMerchant
) -> None:
    program = await make_program(client, merchant)
    link = (await make_advocate(client, merchant, program, "cust-1"))["links"][0]
    response = await client.get(f"/v1/links/{link['id']}", headers=auth(merchant))
    assert response.status_code == 200
    assert response.json()["clicks"] == {"human": 0, "bot": 0}
    assert response.json()["code"] == link["code"]


async def test_qr_code_of_a_link_as_svg_and_png(
    client: httpx.AsyncClient, merchant: CreatedMerchant
) -> None:
    program = await make_program(client, merchant)
    link = (await make_advocate(client, merchant, program, "cust-1"))["links"][0]

    svg = await client.get(f"/v1/links/{link['id']}/qr", headers=auth(merchant))
    assert svg.status_code == 200
    assert svg.headers["content-type"] == "image/svg+xml"
    assert svg.content.lstrip().startswith(b"<?xml") or b"<svg" in svg.content[:200]

    png = await client.get(f"/v1/links/{link['id']}/qr?format=png&scale=4", headers=auth(merchant))
    assert png.headers["content-type"] == "image/png"
    assert png.content.startswith(b"\x89PNG\r\n\x1a\n")

    bad = await client.get(f"/v1/links/{link['id']}/qr?format=gif", headers=auth(merchant))
    assert bad.status_code == 422 and bad.json()["error"]["field"] == "query.format"


async def test_unknown_ids_are_404_and_malformed_ids_are_422(
    client: httpx.AsyncClient, merchant: CreatedMerchant
) -> None:
    missing = await client.get(
        "/v1/programs/00000000-0000-0000-0000-000000000000", headers=auth(merchant)
    )
    assert missing.status_code == 404
    malformed = await client.get("/v1/programs/not-a-uuid", headers=auth(merchant))
    assert malformed.status_code == 422
    assert malformed.json()["error"]["field"] == "path.program_id"
