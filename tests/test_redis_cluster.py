"""The service on a Redis Cluster (REDIS_CLUSTER=1), a local three-node one from `./manage test`.

Clicks spread over the cluster's primaries by their stream shard's hash tag, links are cached and
invalidated across processes, conversions are attributed, and a stream whose hash slot moves to
another primary while clicks arrive loses and doubles nothing.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
from redis.asyncio import Redis, RedisCluster
from redis.crc import key_slot

from app.services.merchants import create_merchant
from app.settings import Settings
from app.storage.merchants import CreatedMerchant
from tests.conftest import (
    TEST_KEYRING,
    auth,
    flush,
    make_advocate,
    make_program,
    make_settings,
    serving,
)
from tests.test_conversions import RULES, click, post, read
from tests.test_flusher import _click, _stored


@pytest.fixture
async def cluster(db: asyncpg.Pool) -> AsyncIterator[RedisCluster]:
    url = os.environ.get("REDIS_CLUSTER_URL")
    if not url:
        pytest.exit("REDIS_CLUSTER_URL is not set: run the suite with ./manage test", returncode=2)
    client = RedisCluster.from_url(url)
    await client.flushall(target_nodes=RedisCluster.PRIMARIES)
    try:
        yield client
    finally:
        await client.aclose()


def cluster_settings(database_url: str, tmp_path: Path, **overrides: Any) -> Settings:
    url = os.environ["REDIS_CLUSTER_URL"]
    return make_settings(database_url, url, tmp_path, redis_cluster=True, **overrides)


async def test_clicks_links_and_conversions_on_a_cluster(
    cluster: RedisCluster, database_url: str, db: asyncpg.Pool, tmp_path: Path
) -> None:
    settings = cluster_settings(database_url, tmp_path, click_stream_shards=3)
    merchant = await create_merchant(db, TEST_KEYRING, "Cluster Shop")
    sent: set[str] = set()
    # A second API process beside the first: it must hear of link changes.
    async with serving(settings) as (_, api), serving(settings) as (_, other_api):
        program = await make_program(api, merchant, rules=RULES)
        advocates = [await make_advocate(api, merchant, program, f"c{n}") for n in range(9)]
        links = [a["links"][0] for a in advocates]
        for link in links:
            sent |= await _click(api, link, 4)
            sent |= await _click(other_api, link, 1)  # now cached in the other process too

        # The shards live on different primaries.
        owners = {str(cluster.get_node_from_key(s)) for s in settings.click_streams}
        assert len(owners) >= 2, owners
        assert sum([await cluster.xlen(s) for s in settings.click_streams]) > 0

        # A link switched off through one process stops redirecting in the other.
        off = await api.patch(
            f"/v1/links/{links[0]['id']}", json={"active": False}, headers=auth(merchant)
        )
        assert off.status_code == 200, off.text
        for _ in range(50):
            answer = await other_api.get(f"/r/{links[0]['code']}")
            if answer.status_code == 404:
                break
            sent.add(answer.headers["location"].split("rcid=")[1][:32])  # a click all the same
            await asyncio.sleep(0.1)
        else:
            raise AssertionError("the other process still redirects a disabled link")

        # A purchase after a click is attributed through the cluster's streams.
        click_id = await click(api, links[1])
        sent.add(click_id)
        response = await post(api, merchant, {
            "event_id": "o-1", "type": "purchase", "order_id": "1", "amount_minor": 5000,
            "currency": "EUR", "click_id": click_id, "customer_id": "cust-ben"})  # fmt: skip
        assert response.status_code == 202, response.text
        # Decided by the admission script on the stream's node (its keys share the stream's
        # slot), not spooled blind: a retry is known for what it is.
        retry = await post(api, merchant, {
            "event_id": "o-1", "type": "purchase", "order_id": "1", "amount_minor": 5000,
            "currency": "EUR", "click_id": click_id, "customer_id": "cust-ben"},
            timestamp=int(time.time()) + 1)  # fmt: skip
        assert retry.json() == {"id": response.json()["id"], "status": "duplicate"}
        await flush(settings)
        conversion = await read(api, merchant, response.json()["id"])
        assert conversion["attribution_method"] == "click_id"
        assert conversion["advocate_id"] == advocates[1]["id"]

        ready = await api.get("/readyz")
        assert ready.json()["status"] == "ok", ready.text
        assert "referral_stream_length" in (await api.get("/metrics")).text

    assert sorted(await _stored(db)) == sorted(sent)  # every click once
    for stream in settings.click_streams:
        assert await cluster.xlen(stream) == 0


def _spooled(metrics: httpx.Response) -> float:
    lines = metrics.text.splitlines()
    return sum(float(x.split()[-1]) for x in lines if x.startswith("referral_events_spooled_total"))


async def _move_slot(cluster: RedisCluster, key: str) -> None:
    """Reshard by hand: move `key`'s hash slot, with its keys, to another primary."""
    slot = key_slot(key.encode())
    source_node = cluster.get_node_from_key(key)
    target_node = next(n for n in cluster.get_primaries() if n.name != source_node.name)
    nodes = {n.name: Redis(host=n.host, port=n.port) for n in cluster.get_primaries()}
    source, target = nodes[source_node.name], nodes[target_node.name]
    try:
        source_id = await source.execute_command("CLUSTER", "MYID")
        target_id = await target.execute_command("CLUSTER", "MYID")
        await target.execute_command("CLUSTER", "SETSLOT", slot, "IMPORTING", source_id)
        await source.execute_command("CLUSTER", "SETSLOT", slot, "MIGRATING", target_id)
        keys = await source.execute_command("CLUSTER", "GETKEYSINSLOT", slot, 1000)
        if keys:
            await source.execute_command(
                "MIGRATE", target_node.host, target_node.port, "", 0, 5000, "KEYS", *keys
            )
        for node in (target, source, *nodes.values()):
            await node.execute_command("CLUSTER", "SETSLOT", slot, "NODE", target_id)
    finally:
        for node in nodes.values():
            await node.aclose()


async def test_a_stream_moved_to_another_primary_loses_and_doubles_nothing(
    cluster: RedisCluster, database_url: str, db: asyncpg.Pool, tmp_path: Path
) -> None:
    settings = cluster_settings(database_url, tmp_path)
    merchant: CreatedMerchant = await create_merchant(db, TEST_KEYRING, "Resharded Shop")
    sent: set[str] = set()
    async with serving(settings) as (app, api):
        program = await make_program(api, merchant)
        link = (await make_advocate(api, merchant, program, "anna"))["links"][0]
        sent |= await _click(api, link, 20)
        await flush(settings)  # the stream and its consumer group exist on the first owner
        sent |= await _click(api, link, 20)  # these wait in the stream when it moves

        before = str(cluster.get_node_from_key(settings.click_stream))
        spooled_before = _spooled(await api.get("/metrics"))
        await _move_slot(cluster, settings.click_stream)
        # The writer's connection still points at the old owner: it is told MOVED, spools the
        # batch and replays it to the new owner. Every click is answered 302 meanwhile.
        for _ in range(5):
            sent |= await _click(api, link, 10)
            await asyncio.sleep(0.1)
        probe = RedisCluster.from_url(os.environ["REDIS_CLUSTER_URL"])
        after = str((await probe.initialize()).get_node_from_key(settings.click_stream))
        await probe.aclose()
        assert after != before
        assert _spooled(await api.get("/metrics")) > spooled_before  # the MOVED path was taken
        for _ in range(50):  # the spool is replayed within a few replay intervals
            if not any(b.spool_files() for b in app.api.state.runtime.event_buffers):
                break
            await asyncio.sleep(0.1)

    await flush(settings)
    assert sorted(await _stored(db)) == sorted(sent)
    assert len(sent) == 90
