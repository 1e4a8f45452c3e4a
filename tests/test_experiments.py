"""Experiments end to end through the API, the redirect and the flusher: advocates of two
variants earn their variant's rewards, the results count them exactly, ending freezes them, and
promoting a variant makes its rules the program's next version while earned rewards stay."""

from __future__ import annotations

from typing import Any

import asyncpg
import httpx

from app.settings import Settings
from app.storage.merchants import CreatedMerchant
from tests.conftest import auth, flush, make_program
from tests.test_conversions import RULES, click, post, read

RULES_A = {**RULES, "advocate_reward": {"kind": "fixed", "amount_minor": 1000},
           "friend_reward": {"kind": "fixed", "amount_minor": 500}}  # fmt: skip
RULES_B = {**RULES, "advocate_reward": {"kind": "fixed", "amount_minor": 1500},
           "friend_reward": {"kind": "percent", "percent": "15"}}  # fmt: skip
PLAN = {"baseline_rate": 0.1, "minimum_detectable_effect": 0.05}


async def start(
    client: httpx.AsyncClient, merchant: CreatedMerchant, program: dict[str, Any]
) -> httpx.Response:
    return await client.post(
        f"/v1/programs/{program['id']}/experiments",
        json={"name": "10+5 vs 15+15%", **PLAN, "variants": [
            {"key": "A", "rules": RULES_A, "share_message": "Give 5 €, get 10 €"},
            {"key": "B", "rules": RULES_B, "share_message": "Give 15 %, get 15 €"},
        ]},
        headers=auth(merchant),
    )  # fmt: skip


async def enroll(
    client: httpx.AsyncClient, merchant: CreatedMerchant, program: dict[str, Any], n: int
) -> dict[str, Any]:
    response = await client.post(
        f"/v1/programs/{program['id']}/advocates",
        json={"external_id": f"adv-{n}", "name": f"Advocate {n}"}, headers=auth(merchant),
    )  # fmt: skip
    assert response.status_code == 201, response.text
    return response.json()


async def test_advocates_of_two_variants_earn_their_variants_rewards_and_are_counted_exactly(
    client: httpx.AsyncClient, merchant: CreatedMerchant, settings: Settings, db: asyncpg.Pool
) -> None:
    program = await make_program(client, merchant, rules=RULES)
    before = [await enroll(client, merchant, program, n) for n in range(4)]
    started = await start(client, merchant, program)
    assert started.status_code == 201, started.text
    experiment = started.json()
    assert experiment["required_advocates_per_variant"] == 686
    assert sum(v["advocates"] for v in experiment["variants"]) == 4  # the existing ones
    assert (await start(client, merchant, program)).status_code == 409  # one at a time
    later = [await enroll(client, merchant, program, n) for n in range(4, 16)]
    advocates = before + later
    # Each advocate shows their variant and its offer, and keeps it.
    shown = [(await client.get(f"/v1/advocates/{a['id']}", headers=auth(merchant))).json()
             for a in advocates]  # fmt: skip
    assert all(a["experiment"]["experiment_id"] == experiment["id"] for a in shown)
    by_variant: dict[str, list[dict[str, Any]]] = {"A": [], "B": []}
    for a in shown:
        by_variant[a["experiment"]["variant"]].append(a)
    assert by_variant["A"] and by_variant["B"]
    a_adv, b_adv = by_variant["A"][0], by_variant["B"][0]
    assert b_adv["experiment"]["share_message"] == "Give 15 %, get 15 €"

    # One friend of A's buys for 80.00; two of B's for 40.00 and 60.00; B's link gets an extra
    # click that does not convert.
    purchases = [(a_adv, 8000), (b_adv, 4000), (b_adv, 6000)]
    ids = []
    for n, (advocate, amount) in enumerate(purchases):
        client.cookies.clear()
        click_id = await click(client, advocate["links"][0])
        response = await post(client, merchant, {
            "event_id": f"o-{n}", "type": "purchase", "order_id": f"order-{n}",
            "amount_minor": amount, "currency": "EUR", "customer_id": f"friend-{n}",
            "click_id": click_id})  # fmt: skip
        ids.append(response.json()["id"])
    client.cookies.clear()
    await click(client, b_adv["links"][0])
    await flush(settings)

    rewards = [{r["beneficiary"]: r["amount_minor"] for r in (await read(client, merchant, i))
                ["rewards"]} for i in ids]  # fmt: skip
    assert rewards == [{"advocate": 1000, "friend": 500}, {"advocate": 1500, "friend": 600},
                       {"advocate": 1500, "friend": 900}]  # fmt: skip
    variants = await db.fetch("SELECT variant FROM rewards ORDER BY amount_minor")
    assert {r["variant"] for r in variants} == {"A", "B"}

    results = (await client.get(f"/v1/experiments/{experiment['id']}/results",
                                headers=auth(merchant))).json()  # fmt: skip
    got = {v["key"]: v for v in results["variants"]}
    assert got["A"]["advocates"] == len(by_variant["A"])
    assert got["B"]["advocates"] == len(by_variant["B"])
    assert (got["A"]["sharers"], got["A"]["referrers"], got["A"]["clicks"]) == (1, 1, 1)
    assert (got["B"]["sharers"], got["B"]["referrers"], got["B"]["clicks"]) == (1, 1, 3)
    assert (got["A"]["conversions"], got["A"]["revenue_minor"]) == (1, 8000)
    assert (got["B"]["conversions"], got["B"]["revenue_minor"]) == (2, 10_000)
    assert (got["A"]["reward_cost_minor"], got["B"]["reward_cost_minor"]) == (1500, 4500)
    assert got["B"]["reward_cost_per_conversion_minor"]["value"] == 2250
    assert got["B"]["friend_conversion_rate"]["value"] == round(2 / 3, 6)
    assert results["answer"]["verdict"] == "not_enough_data"
    assert "not enough data yet" in results["answer"]["words"]

    # Ending freezes the results; promoting B makes its rules the next version.
    ended = await client.post(f"/v1/experiments/{experiment['id']}/end", headers=auth(merchant))
    assert ended.json()["status"] == "ended"
    promoted = await client.post(f"/v1/experiments/{experiment['id']}/promote",
                                 json={"variant": "B"}, headers=auth(merchant))  # fmt: skip
    assert promoted.status_code == 200, promoted.text
    assert promoted.json()["promoted_variant"] == "B"
    rules = (await client.get(f"/v1/programs/{program['id']}/rules", headers=auth(merchant))).json()
    assert rules["version"] == promoted.json()["promoted_rules_version"] == 2
    assert rules["rules"]["advocate_reward"] == {"kind": "fixed", "amount_minor": 1500}
    again = await client.post(f"/v1/experiments/{experiment['id']}/promote",
                              json={"variant": "A"}, headers=auth(merchant))  # fmt: skip
    assert again.status_code == 409
    # A's advocate keeps the reward earned under A; a later purchase earns under the new rules.
    assert (await read(client, merchant, ids[0]))["rewards"][0]["amount_minor"] == 1000
    client.cookies.clear()
    click_id = await click(client, a_adv["links"][0])
    late_purchase = {"event_id": "o-late", "type": "purchase", "order_id": "late",
                     "amount_minor": 2000, "currency": "EUR", "customer_id": "friend-late",
                     "click_id": click_id}  # fmt: skip
    later_id = (await post(client, merchant, late_purchase)).json()["id"]
    await flush(settings)
    late = {r["beneficiary"]: r["amount_minor"] for r in
            (await read(client, merchant, later_id))["rewards"]}  # fmt: skip
    assert late == {"advocate": 1500, "friend": 300}
    frozen = (await client.get(f"/v1/experiments/{experiment['id']}/results",
                               headers=auth(merchant))).json()  # fmt: skip
    assert frozen["variants"] == results["variants"]  # the late purchase is not in it
    assert frozen["status"] == "ended"


async def test_experiments_are_the_merchants_own(
    client: httpx.AsyncClient, merchant: CreatedMerchant, other_merchant: CreatedMerchant
) -> None:
    program = await make_program(client, merchant, rules=RULES)
    experiment = (await start(client, merchant, program)).json()
    for path in (f"/v1/experiments/{experiment['id']}",
                 f"/v1/experiments/{experiment['id']}/results",
                 f"/v1/programs/{program['id']}/experiments"):  # fmt: skip
        assert (await client.get(path, headers=auth(other_merchant))).status_code == 404
    answer = await client.post(f"/v1/experiments/{experiment['id']}/end",
                               headers=auth(other_merchant))  # fmt: skip
    assert answer.status_code == 404
    bad = await client.post(
        f"/v1/programs/{program['id']}/experiments",
        json={"name": "x", **PLAN, "variants": [{"key": "A", "rules": RULES_A},
                                                {"key": "A", "rules": RULES_B}]},
        headers=auth(merchant),
    )  # fmt: skip
    assert bad.status_code == 422 and bad.json()["error"]["field"] == "body.variants"
