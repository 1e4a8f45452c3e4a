"""Operators' endpoints: /healthz, /readyz, /metrics."""

from __future__ import annotations

import asyncio
import os
import subprocess
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest

from tests.conftest import BROWSER_UA, make_settings, serving


async def test_healthz(client: httpx.AsyncClient) -> None:
    response = await client.get("/healthz")
    assert response.status_code == 200 and response.json() == {"status": "ok"}


async def test_readyz_when_everything_is_up(client: httpx.AsyncClient) -> None:
    response = await client.get("/readyz")
    assert response.status_code == 200
    assert response.json()["status"] == "ok"
    assert response.json()["postgres"] == response.json()["redis"] == "ok"


async def test_metrics_expose_the_named_series(
    client: httpx.AsyncClient, link: dict[str, Any]
) -> None:
    await client.get(f"/r/{link['code']}", headers={"user-agent": BROWSER_UA})
    await client.get("/r/nosuchcode")
    text = (await client.get("/metrics")).text

    for series in [
        'referral_http_requests_total{method="GET",route="/r/{code}",status="302"}',
        'referral_http_requests_total{method="GET",route="/r/{code}",status="404"}',
        'referral_http_request_duration_seconds_bucket{le="0.005",route="/r/{code}"}',
        'referral_http_requests_total{method="POST",route="/v1/programs",status="201"}',
        'referral_events_buffered_total{stream="clicks"}',
        'referral_stream_length{stream="clicks"} 1.0',
        'referral_stream_pending{stream="clicks"}',
        'referral_oldest_unflushed_event_age_seconds{stream="clicks"}',
        "referral_event_write_batch_size_bucket",
        "referral_degraded",
        "referral_flush_batch_size_bucket",
        "referral_flush_duration_seconds_bucket",
        "referral_errors_total",
    ]:
        assert series in text, series


def _pg_ctl(action: str) -> None:
    data, bindir, port = (os.environ.get(k) for k in ("PG_DATA_DIR", "PG_BIN_DIR", "PG_PORT"))
    assert data and bindir and port
    command = [f"{bindir}/pg_ctl", "-D", data, "-w", "-t", "60", "-m", "fast", action]
    if action == "start":
        command[1:1] = ["-o", f"-p {port}", "-l", f"{data}/server.log"]
    if os.geteuid() == 0:
        command = ["runuser", "-u", "postgres", "--", *command]
    subprocess.run(command, check=True, capture_output=True)


@pytest.mark.skipif(
    not os.environ.get("PG_DATA_DIR"), reason="needs the PostgreSQL that ./manage test started"
)
async def test_readyz_fails_while_postgres_is_down_and_recovers(
    client: httpx.AsyncClient, link: dict[str, Any]
) -> None:
    await _pg_ctl_async("stop")
    try:
        response = await client.get("/readyz")
        assert response.status_code == 503
        assert response.json()["status"] == "unavailable"
        assert response.json()["postgres"].startswith("down")
        # The hot path does not need PostgreSQL: a cached link still redirects.
        assert (await client.get(f"/r/{link['code']}")).status_code == 302
        # The management API answers 503, not 500.
        assert (
            await client.get("/v1/programs", headers={"authorization": "Bearer x"})
        ).status_code == 503
    finally:
        await _pg_ctl_async("start")
    for _ in range(50):
        if (await client.get("/readyz")).status_code == 200:
            break
        await asyncio.sleep(0.1)
    assert (await client.get("/readyz")).json()["status"] == "ok"


async def _pg_ctl_async(action: str) -> None:
    await asyncio.to_thread(_pg_ctl, action)


async def test_openapi_document_builds_and_lists_the_api(client: httpx.AsyncClient) -> None:
    response = await client.get("/openapi.json")
    assert response.status_code == 200
    paths = response.json()["paths"]
    for path in ["/v1/programs", "/v1/programs/{program_id}/rules", "/v1/conversions",
                 "/v1/conversions/{conversion_id}", "/v1/advocates/{advocate_id}/links",
                 "/v1/links/{link_id}/qr", "/v1/advocate/stats", "/t/pixel.gif"]:  # fmt: skip
        assert path in paths, path
    assert (await client.get("/docs")).status_code == 200


async def test_the_ops_surface_asks_for_its_token_when_one_is_set(
    database_url: str, redis_url: str, tmp_path: Path, db: asyncpg.Pool
) -> None:
    token = "ops-token-0123456789"
    settings = make_settings(database_url, redis_url, tmp_path, ops_token=token)
    operator = {"Authorization": f"Bearer {token}"}
    async with serving(settings) as (_, client):
        for path in ("/metrics", "/openapi.json", "/docs"):
            refused = await client.get(path)
            assert (
                refused.status_code == 401 and refused.json()["error"]["field"] == "authorization"
            )
            assert (await client.get(path, headers=operator)).status_code == 200
        # A load balancer still learns whether to send traffic; only operators see why.
        assert (await client.get("/readyz")).json() == {"status": "ok"}
        assert set((await client.get("/readyz", headers=operator)).json()) == {
            "status",
            "postgres",
            "redis",
            "spool_files",
        }
        assert (await client.get("/healthz")).status_code == 200


def test_the_service_refuses_to_start_with_an_example_secret(
    database_url: str, redis_url: str, tmp_path: Path
) -> None:
    with pytest.raises(ValueError, match="SECRET_KEY is an example value"):
        make_settings(database_url, redis_url, tmp_path,
                      secret_key="change-me-to-a-long-random-secret")  # fmt: skip
