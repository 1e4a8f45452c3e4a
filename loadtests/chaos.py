"""The chaos suite: break one part at a time under a steady click load, then count.

For every fault it prints: sent (requests made), acknowledged (answered 302), stored (clicks in
PostgreSQL), duplicates (rows for the same click), lost (acknowledged but not stored); the same
for the signed postbacks beside the clicks; and for the webhooks those postbacks announce:
announced (events), delivered to a local receiver (distinct webhook-ids), lost, invented. Clicks
stored
whose answer never reached the client (the API died after the Redis write) are shown apart: they
were never promised, but they are not lost either.

Everything here is real: a uvicorn API process, flusher processes, a redis-server with AOF and
PostgreSQL stopped with pg_ctl. `Cluster` runs them; `Load` is the steady load; `FAULTS` are the
scenarios. `loadtests/chaos` runs them at full length; tests/test_chaos.py runs short versions.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import orjson
import uvicorn
from redis.asyncio import Redis

from app import webhooks

ROOT = Path(__file__).resolve().parents[1]
CHAOS_WEBHOOK_SECRET = "whsec_chaos"
BROWSER_UA = "Mozilla/5.0 (X11; Linux x86_64) Firefox/128.0"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class PgControl:
    """Stops and starts the PostgreSQL server given by PG_DATA_DIR / PG_BIN_DIR / PG_PORT."""

    data_dir: str
    bin_dir: str
    port: str

    @classmethod
    def from_env(cls) -> PgControl | None:
        values = [os.environ.get(k) for k in ("PG_DATA_DIR", "PG_BIN_DIR", "PG_PORT")]
        return cls(*values) if all(values) else None  # type: ignore[arg-type]

    def _run(self, *args: str) -> None:
        command = [f"{self.bin_dir}/pg_ctl", "-D", self.data_dir, "-w", "-t", "60", *args]
        if os.geteuid() == 0:
            command = ["runuser", "-u", "postgres", "--", *command]
        subprocess.run(command, check=True, capture_output=True)

    def stop(self) -> None:
        self._run("-m", "fast", "stop")

    def start(self) -> None:
        self._run("-o", f"-p {self.port}", "-l", f"{self.data_dir}/server.log", "start")


class Cluster:
    """A private Redis, the API and flushers as real processes, against a given PostgreSQL."""

    def __init__(self, workdir: Path, database_url: str, pg: PgControl | None) -> None:
        self.workdir = workdir
        self.database_url = database_url
        self.pg = pg
        self.redis_port = free_port()
        self.api_port = free_port()
        self.spool_dir = workdir / "spool"
        self.redis_process: subprocess.Popen[bytes] | None = None
        self.api_process: subprocess.Popen[bytes] | None = None
        self.flushers: list[subprocess.Popen[bytes]] = []
        self.webhooks_process: subprocess.Popen[bytes] | None = None

    @property
    def redis_url(self) -> str:
        return f"redis://127.0.0.1:{self.redis_port}/0"

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.api_port}"

    def env(self, **extra: str) -> dict[str, str]:
        return {
            **os.environ,
            "DATABASE_URL": self.database_url,
            "REDIS_URL": self.redis_url,
            "SECRET_KEY": os.environ.get("SECRET_KEY", "chaos-secret-0123456789abcdef"),
            "SPOOL_DIR": str(self.spool_dir),
            "SPOOL_REPLAY_INTERVAL_SECONDS": "0.2",
            "REDIS_WRITE_TIMEOUT_SECONDS": "0.3",
            "FLUSH_MAX_WAIT_MS": "50",
            "FLUSH_CLAIM_IDLE_MS": "1000",
            "FLUSHER_METRICS_PORT": "0",
            "LOG_LEVEL": "ERROR",
            "WEBHOOK_ALLOW_PRIVATE": "true",
            "WEBHOOK_RETRY_SECONDS": "0.2,0.5,1,2,4,8",
            "WEBHOOK_LEASE_SECONDS": "2",
            **extra,
        }

    # Redis
    def start_redis(self) -> None:
        directory = self.workdir / "redis"
        directory.mkdir(parents=True, exist_ok=True)
        binary = shutil.which("redis-server") or "/usr/bin/redis-server"
        self.redis_process = subprocess.Popen(
            [binary, "--port", str(self.redis_port), "--bind", "127.0.0.1", "--dir",
             str(directory), "--appendonly", "yes", "--appendfsync", "everysec", "--save", "",
             "--maxmemory-policy", "noeviction"],
            stdout=subprocess.DEVNULL,
        )  # fmt: skip
        _wait_port(self.redis_port)

    def kill_redis(self) -> None:
        _kill(self.redis_process)

    # API
    def start_api(self) -> None:
        self.api_process = subprocess.Popen(
            [sys.executable, "-m", "app.cli", "serve", "--port", str(self.api_port)],
            env=self.env(),
            cwd=ROOT,
        )
        _wait_port(self.api_port)

    def kill_api(self) -> None:
        _kill(self.api_process)

    # Flushers
    def start_flusher(self, **env: str) -> subprocess.Popen[bytes]:
        process = subprocess.Popen(
            [sys.executable, "-m", "app.cli", "flusher"], env=self.env(**env), cwd=ROOT
        )
        self.flushers.append(process)
        return process

    def stop_flushers(self) -> None:
        for process in self.flushers:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in self.flushers:
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(20)
            _kill(process)
        self.flushers = []

    # The webhook delivery worker
    def start_webhooks(self) -> None:
        self.webhooks_process = subprocess.Popen(
            [sys.executable, "-m", "app.cli", "webhooks"], env=self.env(), cwd=ROOT
        )

    def kill_webhooks(self) -> None:
        _kill(self.webhooks_process)

    def stop_all(self) -> None:
        self.stop_flushers()
        for process in (self.webhooks_process, self.api_process, self.redis_process):
            if process and process.poll() is None:
                process.send_signal(signal.SIGTERM)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    process.wait(10)
            _kill(process)


def _kill(process: subprocess.Popen[bytes] | None) -> None:
    if process and process.poll() is None:
        process.send_signal(signal.SIGKILL)
        process.wait()


def _wait_port(port: int, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on port {port}")


@dataclass
class Load:
    """`concurrency` browsers clicking links in a loop; remembers every click answered 302."""

    base_url: str
    codes: list[str]
    merchant_id: str = ""
    concurrency: int = 16
    postback_concurrency: int = 2
    sent: int = 0
    acknowledged: set[str] = field(default_factory=set)
    postbacks_sent: int = 0
    postbacks_acknowledged: set[str] = field(default_factory=set)
    failed: int = 0
    statuses: dict[int, int] = field(default_factory=dict)
    _stop: asyncio.Event = field(default_factory=asyncio.Event)

    async def _browser(self, n: int) -> None:
        limits = httpx.Limits(max_connections=1)
        async with httpx.AsyncClient(base_url=self.base_url, limits=limits, timeout=5) as client:
            i = n
            while not self._stop.is_set():
                i += 1
                self.sent += 1
                try:
                    response = await client.get(
                        f"/r/{self.codes[i % len(self.codes)]}", headers={"user-agent": BROWSER_UA}
                    )
                except httpx.HTTPError:
                    self.failed += 1  # no answer: nothing was promised
                    await asyncio.sleep(0.05)
                    continue
                if response.status_code == 302:
                    self.acknowledged.add(response.headers["location"].split("rcid=")[1][:32])
                else:
                    self.failed += 1
                    self.statuses[response.status_code] = (
                        self.statuses.get(response.status_code, 0) + 1
                    )
                await asyncio.sleep(0.002)

    async def _shop_backend(self, n: int) -> None:
        """Signed conversion postbacks, each naming a click id answered earlier."""
        async with httpx.AsyncClient(base_url=self.base_url, timeout=5) as client:
            i = 0
            while not self._stop.is_set():
                i += 1
                click = next(iter(self.acknowledged), None)
                body = orjson.dumps({"event_id": f"chaos-{n}-{i}-{os.urandom(4).hex()}",
                                     "type": "signup", "click_id": click})  # fmt: skip
                signature = webhooks.sign(CHAOS_WEBHOOK_SECRET, int(time.time()), body)
                self.postbacks_sent += 1
                try:
                    response = await client.post(
                        "/v1/conversions",
                        content=body,
                        headers={"content-type": "application/json",
                                 "x-referral-merchant": self.merchant_id,
                                 "x-referral-signature": signature},
                    )  # fmt: skip
                except httpx.HTTPError:
                    await asyncio.sleep(0.05)
                    continue
                if response.status_code == 202:
                    self.postbacks_acknowledged.add(response.json()["id"])
                await asyncio.sleep(0.01)

    async def run(self) -> None:
        await asyncio.gather(
            *(self._browser(n) for n in range(self.concurrency)),
            *(
                self._shop_backend(n)
                for n in range(self.postback_concurrency if self.merchant_id else 0)
            ),
        )

    def stop(self) -> None:
        self._stop.set()


@dataclass
class Outcome:
    fault: str
    sent: int
    acknowledged: int
    stored: int
    duplicates: int
    lost: int
    stored_unacknowledged: int
    postbacks_sent: int = 0
    postbacks_acknowledged: int = 0
    postbacks_stored: int = 0
    postbacks_lost: int = 0
    webhooks_announced: int = 0
    webhooks_delivered: int = 0
    webhooks_lost: int = 0
    webhooks_invented: int = 0
    note: str = ""

    def line(self) -> str:
        return (
            f"{self.fault:<34} sent={self.sent:<7} acknowledged={self.acknowledged:<7} "
            f"stored={self.stored:<7} duplicates={self.duplicates} lost={self.lost} | postbacks "
            f"sent={self.postbacks_sent} acknowledged={self.postbacks_acknowledged} "
            f"stored={self.postbacks_stored} lost={self.postbacks_lost} | webhooks "
            f"announced={self.webhooks_announced} delivered={self.webhooks_delivered} "
            f"lost={self.webhooks_lost} invented={self.webhooks_invented}"
            + (f"  (stored, answer lost with the API: {self.stored_unacknowledged})"
               if self.stored_unacknowledged else "")
            + (f"  [{self.note}]" if self.note else "")
        )  # fmt: skip


async def setup_links(database_url: str, links: int = 50) -> tuple[str, list[str]]:
    """A fresh merchant, program and `links` advocates' links: (merchant id, link codes)."""
    from app.storage.db import migrate

    await migrate(database_url)
    conn = await asyncpg.connect(database_url)
    try:
        await conn.execute(
            "TRUNCATE clicks, links, advocates, programs, api_keys, merchants CASCADE"
        )
        merchant = await conn.fetchval(
            "INSERT INTO merchants (name, webhook_secret) VALUES ('chaos', $1) RETURNING id",
            CHAOS_WEBHOOK_SECRET,
        )

        program = await conn.fetchval(
            "INSERT INTO programs (merchant_id, name, destination_url, allowed_domains)"
            " VALUES ($1, 'chaos', 'https://shop.example.com/', '{shop.example.com}') RETURNING id",
            merchant,
        )
        await conn.execute(
            "INSERT INTO program_rules (program_id, version, rules) VALUES ($1, 1, '{}'::jsonb)",
            program,
        )
        await conn.execute(
            "INSERT INTO advocates (merchant_id, program_id, external_id, referral_code)"
            " SELECT $1, $2, 'a' || g, 'CHAOS-' || g FROM generate_series(1, $3) g",
            merchant, program, links,
        )  # fmt: skip
        rows = await conn.fetch(
            "INSERT INTO links (code, merchant_id, program_id, advocate_id, destination, channel)"
            " SELECT 'chaos' || substr(md5(external_id), 1, 8), merchant_id, program_id, id,"
            " 'https://shop.example.com/p', 'default' FROM advocates RETURNING code"
        )
    finally:
        await conn.close()
    return str(merchant), [r["code"] for r in rows]


async def warm_up(cluster: Cluster, codes: list[str], merchant_id: str) -> None:
    """Visit every link once and post one conversion, as production traffic would have: links
    are then in the API's cache and in Redis (where the management API writes them through on
    creation), and the merchant's webhook secret in the API's cache."""
    async with httpx.AsyncClient(base_url=cluster.api_url, timeout=10) as client:
        for code in codes:
            response = await client.get(f"/r/{code}", headers={"user-agent": BROWSER_UA})
            assert response.status_code == 302, (code, response.status_code, response.text)
        body = orjson.dumps({"event_id": "warm-up", "type": "signup"})
        signature = webhooks.sign(CHAOS_WEBHOOK_SECRET, int(time.time()), body)
        response = await client.post(
            "/v1/conversions",
            content=body,
            headers={"x-referral-merchant": merchant_id, "x-referral-signature": signature},
        )
        assert response.status_code == 202, response.text


@dataclass
class Receiver:
    """The merchant's webhook endpoint: answers 200 and remembers every webhook-id."""

    port: int = field(default_factory=lambda: free_port())
    ids: set[str] = field(default_factory=set)
    deliveries: int = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hooks"

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        while (await receive()).get("more_body"):
            pass
        self.deliveries += 1
        self.ids.add(dict(scope["headers"]).get(b"webhook-id", b"").decode())
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b""})


async def _add_endpoint(cluster: Cluster, merchant_id: str, url: str) -> None:
    from app.keyring import Keyring

    keyring = Keyring.build(cluster.env()["SECRET_KEY"])
    conn = await asyncpg.connect(cluster.database_url)
    try:
        await conn.execute(
            "INSERT INTO webhook_endpoints (merchant_id, url, secret_enc) VALUES ($1, $2, $3)",
            merchant_id, url, keyring.encrypt(b"whsec_" + b"c" * 32),
        )  # fmt: skip
    finally:
        await conn.close()


async def _webhooks_pending(database_url: str) -> int:
    conn = await asyncpg.connect(database_url)
    try:
        pending: int = await conn.fetchval(
            "SELECT count(*) FROM webhook_deliveries WHERE status = 'pending'"
        )
        return pending
    finally:
        await conn.close()


async def settle(cluster: Cluster, limit_seconds: float = 60) -> None:
    """Wait until nothing is left in the spool, the stream or the flushers' hands."""
    redis = Redis.from_url(cluster.redis_url)
    deadline = time.monotonic() + limit_seconds
    try:
        while time.monotonic() < deadline:
            with contextlib.suppress(Exception):
                spooled = (
                    list(cluster.spool_dir.glob("*.spool")) if cluster.spool_dir.exists() else []
                )
                length = await redis.xlen("clicks") + await redis.xlen("conversions")
                pending = (await redis.xpending("clicks", "flushers"))["pending"] + (
                    await redis.xpending("conversions", "flushers")
                )["pending"]
                if not spooled and length == 0 and pending == 0:
                    break
            await asyncio.sleep(0.2)
        else:
            raise TimeoutError("the system did not settle: events still in the spool or the stream")
        # Then what the stored conversions announced is delivered (when a worker runs).
        while time.monotonic() < deadline:
            if not cluster.webhooks_process or cluster.webhooks_process.poll() is not None:
                return
            with contextlib.suppress(Exception):
                if await _webhooks_pending(cluster.database_url) == 0:
                    return
            await asyncio.sleep(0.2)
    finally:
        await redis.aclose()
    raise TimeoutError("the system did not settle: webhooks still waiting to be delivered")


async def account(
    cluster: Cluster, fault: str, load: Load, note: str = "", receiver: Receiver | None = None
) -> Outcome:
    await settle(cluster)
    conn = await asyncpg.connect(cluster.database_url)
    try:
        rows = await conn.fetch("SELECT replace(click_id::text, '-', '') AS id FROM clicks")
        conversions = {str(r["id"]) for r in await conn.fetch("SELECT id FROM conversions")}
        announced = {"msg_" + r["id"].hex for r in await conn.fetch("SELECT id FROM events")}
    finally:
        await conn.close()
    ids = [r["id"] for r in rows]
    stored = set(ids)
    return Outcome(
        fault=fault,
        sent=load.sent,
        acknowledged=len(load.acknowledged),
        stored=len(ids),
        duplicates=len(ids) - len(stored),
        lost=len(load.acknowledged - stored),
        stored_unacknowledged=len(stored - load.acknowledged),
        postbacks_sent=load.postbacks_sent,
        postbacks_acknowledged=len(load.postbacks_acknowledged),
        postbacks_stored=len(conversions & load.postbacks_acknowledged),
        postbacks_lost=len(load.postbacks_acknowledged - conversions),
        webhooks_announced=len(announced),
        webhooks_delivered=len(announced & receiver.ids) if receiver else 0,
        webhooks_lost=len(announced - receiver.ids) if receiver else 0,
        webhooks_invented=len(receiver.ids - announced) if receiver else 0,
        note=note,
    )


async def _truncate(database_url: str) -> None:
    conn = await asyncpg.connect(database_url)
    await conn.execute("TRUNCATE clicks, conversions, events CASCADE")
    await conn.close()


# -- Faults: each runs under load and returns a note (or "") ---------------------------------

Fault = Callable[[Cluster, float], Awaitable[str]]


async def api_sigkill(cluster: Cluster, seconds: float) -> str:
    await asyncio.sleep(seconds / 2)
    cluster.kill_api()
    await asyncio.sleep(0.3)
    cluster.start_api()
    await asyncio.sleep(seconds / 2)
    return "API SIGKILLed and restarted"


async def flusher_sigkill_before_ack(cluster: Cluster, seconds: float) -> str:
    cluster.stop_flushers()
    doomed = cluster.start_flusher(FLUSHER_FAILPOINT="kill-after-commit")
    await asyncio.sleep(seconds / 2)
    await asyncio.to_thread(doomed.wait, 30)
    assert doomed.returncode == -signal.SIGKILL, doomed.returncode
    cluster.start_flusher()
    cluster.start_flusher()
    await asyncio.sleep(seconds / 2)
    return "flusher SIGKILLed between commit and ack; then two flushers"


async def redis_restart(cluster: Cluster, seconds: float) -> str:
    await asyncio.sleep(seconds / 3)
    cluster.kill_redis()
    await asyncio.sleep(seconds / 3)  # clicks go to the spool meanwhile
    cluster.start_redis()
    await asyncio.sleep(seconds / 3)
    return "redis SIGKILLed, restarted from its AOF"


async def postgres_down(cluster: Cluster, seconds: float) -> str:
    if cluster.pg is None:
        return "skipped: no PG_DATA_DIR"
    await asyncio.to_thread(cluster.pg.stop)
    try:
        await asyncio.sleep(seconds)
    finally:
        await asyncio.to_thread(cluster.pg.start)
    return f"PostgreSQL stopped for {seconds:g} s"


async def stream_full(cluster: Cluster, seconds: float) -> str:
    """PostgreSQL down while the stream fills up to Redis' maxmemory: then events go to the spool.
    (Without control of PostgreSQL, the flushers are stopped instead: the same for the stream.)"""
    if cluster.pg is not None:
        await asyncio.to_thread(cluster.pg.stop)
    else:
        cluster.stop_flushers()
    redis = Redis.from_url(cluster.redis_url)
    try:
        used = (await redis.info("memory"))["used_memory"]
        await redis.config_set("maxmemory", used + 256 * 1024)
        await asyncio.sleep(seconds)
        full = (await redis.info("memory"))["used_memory"] >= used + 200 * 1024
        spooled = list(cluster.spool_dir.glob("*.spool"))
        await redis.config_set("maxmemory", 0)
    finally:
        await redis.aclose()
        if cluster.pg is not None:
            await asyncio.to_thread(cluster.pg.start)
    if not any(p.poll() is None for p in cluster.flushers):
        cluster.start_flusher()
    down = "PostgreSQL down" if cluster.pg is not None else "no flusher"
    return f"{down}, redis maxmemory reached: {full}, spool files: {len(spooled)}"


async def poison_and_floods(cluster: Cluster, seconds: float) -> str:
    """Hostile traffic from another address (127.0.0.2) beside the honest load: values the
    storage cannot hold (2^64 amounts through the anonymous pixel and signed postbacks), bodies
    over the limit, made-up link codes, guessed API keys, and a pixel flood. Honest clicks and
    postbacks must all be stored; the attacker gets 4xx answers, never a 500."""
    statuses: dict[int, int] = {}
    stop = time.monotonic() + seconds
    merchant = await _chaos_merchant(cluster.database_url)
    transport = httpx.AsyncHTTPTransport(local_address="127.0.0.2")

    async def attacker(kind: int) -> None:
        async with httpx.AsyncClient(
            base_url=cluster.api_url, timeout=5, transport=transport, cookies={"rt_ref": "a" * 32}
        ) as client:
            n = 0
            while time.monotonic() < stop:
                n += 1
                if kind == 0:  # the anonymous pixel, with an amount beyond 64 bits
                    params = {"m": merchant, "order_id": f"p{n}", "amount_minor": str(2**64)}
                    request = client.get("/t/pixel.gif", params=params)
                elif kind == 1:  # a signed postback with a poisoned amount
                    body = b'{"event_id":"bad-%d","type":"purchase","order_id":"1",' % n
                    body += b'"amount_minor":18446744073709551616,"currency":"EUR"}'
                    sig = webhooks.sign(CHAOS_WEBHOOK_SECRET, int(time.time()), body)
                    request = client.post("/v1/conversions", content=body, headers={
                        "x-referral-merchant": merchant, "x-referral-signature": sig})  # fmt: skip
                elif kind == 2:  # a body far over the limit
                    request = client.post("/v1/programs", content=b"x" * 2_000_000)
                elif kind == 3:  # made-up link codes
                    request = client.get(f"/r/made-up-{os.urandom(6).hex()}")
                else:  # guessed API keys
                    request = client.get(
                        "/v1/programs",
                        headers={"authorization": f"Bearer rk_{os.urandom(8).hex()}"},
                    )
                try:
                    response = await request
                except httpx.HTTPError:
                    continue
                statuses[response.status_code] = statuses.get(response.status_code, 0) + 1

    await asyncio.gather(*(attacker(kind) for kind in range(5)))
    summary = " ".join(f"{code}:{count}" for code, count in sorted(statuses.items()))
    assert not any(code >= 500 for code in statuses), summary
    return f"hostile answers {summary}"


async def webhook_worker_sigkill(cluster: Cluster, seconds: float) -> str:
    await asyncio.sleep(seconds / 2)
    cluster.kill_webhooks()
    await asyncio.sleep(0.5)
    cluster.start_webhooks()
    await asyncio.sleep(seconds / 2)
    return "webhook delivery worker SIGKILLed and restarted"


async def _chaos_merchant(database_url: str) -> str:
    conn = await asyncpg.connect(database_url)
    try:
        return str(await conn.fetchval("SELECT id FROM merchants WHERE name = 'chaos'"))
    finally:
        await conn.close()


FAULTS: dict[str, Fault] = {
    "api SIGKILL + restart": api_sigkill,
    "flusher SIGKILL before ack, 2 flushers": flusher_sigkill_before_ack,
    "redis SIGKILL + restart (AOF)": redis_restart,
    "postgresql down": postgres_down,
    "stream full (redis maxmemory)": stream_full,
    "poison and floods beside load": poison_and_floods,
    "webhook worker SIGKILL + restart": webhook_worker_sigkill,
}


async def run_fault(
    name: str, workdir: Path, database_url: str, seconds: float, pg_seconds: float | None = None
) -> Outcome:
    merchant_id, codes = await setup_links(database_url)
    cluster = Cluster(workdir, database_url, PgControl.from_env())
    receiver = Receiver()
    hook_server = uvicorn.Server(uvicorn.Config(receiver, host="127.0.0.1", port=receiver.port,
                                                lifespan="off", log_level="error"))  # fmt: skip
    hook_task = asyncio.create_task(hook_server.serve())
    await _add_endpoint(cluster, merchant_id, receiver.url)
    cluster.start_redis()
    cluster.start_api()
    cluster.start_flusher()
    cluster.start_webhooks()
    load = Load(cluster.api_url, codes, merchant_id)
    try:
        await warm_up(cluster, codes, merchant_id)
        await settle(cluster)  # the warm-up clicks are stored before the count starts
        await _truncate(database_url)
        receiver.ids.clear()  # the warm-up's events were delivered, then truncated
        runner = asyncio.create_task(load.run())
        await asyncio.sleep(0.5)
        fault_seconds = pg_seconds if name == "postgresql down" and pg_seconds else seconds
        note = await FAULTS[name](cluster, fault_seconds)
        await asyncio.sleep(0.5)
        load.stop()
        await runner
        if not any(p.poll() is None for p in cluster.flushers):
            cluster.start_flusher()
        return await account(cluster, name, load, note, receiver)
    finally:
        load.stop()
        cluster.stop_all()
        hook_server.should_exit = True
        await hook_task


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=6, help="load around each fault")
    parser.add_argument("--pg-seconds", type=float, default=30, help="PostgreSQL outage")
    parser.add_argument("faults", nargs="*", default=list(FAULTS))
    args = parser.parse_args()
    database_url = os.environ["DATABASE_URL"]
    failed = False
    for name in args.faults:
        with tempfile.TemporaryDirectory() as tmp:
            outcome = asyncio.run(
                run_fault(name, Path(tmp), database_url, args.seconds, args.pg_seconds)
            )
        print(outcome.line(), flush=True)
        failed |= bool(outcome.lost or outcome.duplicates or outcome.postbacks_lost
                       or outcome.webhooks_lost or outcome.webhooks_invented)  # fmt: skip
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
