"""Fixtures: real PostgreSQL and Redis (started by `./manage test`), clean state for every test.

DATABASE_URL and REDIS_URL point at the throw-away test servers. Tests that kill a server get
their own: `redis_server` starts a private redis-server, so killing it touches nobody else.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import traceback
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
import uvicorn
from redis.asyncio import Redis

from app.keyring import Keyring
from app.main import TrackingApp, create_app
from app.services.merchants import create_merchant
from app.settings import Settings
from app.storage.db import migrate
from app.storage.merchants import CreatedMerchant
from app.workers import flusher as flusher_worker

ROOT = Path(__file__).resolve().parents[1]
BROWSER_UA = (
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/126.0 Safari/537.36"
)

_TABLES = [
    "clicks", "links", "advocates", "programs", "api_keys", "merchants", "dead_letters",
    "link_outbox", "review_items", "click_flood_sweeps", "advocate_owed", "audit_log", "events",
    "webhook_endpoints", "advocate_tokens", "erasures", "click_retention",
]  # fmt: skip


@pytest.fixture(autouse=True)
def _stacks_before_the_timeout(request: pytest.FixtureRequest) -> Iterator[None]:
    """A test that hangs is failed by pytest-timeout with the stack of the event loop's select,
    which names no coroutine: shortly before, print every thread's and every asyncio task's
    stack, so the report says what was being waited for."""
    config = request.config
    limit = float(config.getoption("timeout", None) or config.getini("timeout") or 0)
    if limit <= 30:
        yield
        return

    def dump() -> None:
        out = sys.__stderr__
        assert out is not None
        print(f"--- {request.node.nodeid} still running after {limit - 15:.0f} s ---", file=out)
        for thread_id, frame in sys._current_frames().items():
            print(f"thread {thread_id}:", "".join(traceback.format_stack(frame)), file=out)
        for task in list(asyncio.tasks._all_tasks):  # type: ignore[attr-defined]
            if not task.done():
                print(f"task {task.get_name()}:", file=out)
                task.print_stack(file=out)

    timer = threading.Timer(limit - 15, dump)
    timer.daemon = True
    timer.start()
    try:
        yield
    finally:
        timer.cancel()


def _require_env(name: str) -> str:
    value = os.environ.get(name)
    if not value:
        pytest.exit(f"{name} is not set: run the suite with ./manage test", returncode=2)
    return value


@pytest.fixture(scope="session")
def database_url() -> str:
    url = _require_env("DATABASE_URL")
    asyncio.run(migrate(url))
    return url


@pytest.fixture(scope="session")
def redis_url() -> str:
    return _require_env("REDIS_URL")


# Debian's Chromium (./manage test installs it), as the browser tests launch it: without the
# background-networking flags it tries this closed network at every start.
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]  # fmt: skip

TEST_SECRET_KEY = "test-secret-key-0123456789abcdef"
# The keys the app under test derives from its settings (merchants made by tests use them too).
TEST_KEYRING = Keyring.build(TEST_SECRET_KEY)


def make_settings(database_url: str, redis_url: str, tmp_path: Path, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "database_url": database_url,
        "redis_url": redis_url,
        "secret_key": TEST_SECRET_KEY,
        "public_base_url": "https://go.example.test",
        "spool_dir": tmp_path / "spool",
        "flush_max_wait_ms": 50,
        "flush_claim_idle_ms": 300,
        "flusher_metrics_port": 0,
        "spool_replay_interval_seconds": 0.1,
        "link_cache_negative_ttl_seconds": 0.0,
        "log_level": "WARNING",
    }
    values.update(overrides)
    return Settings(**values)


@pytest.fixture
def settings(database_url: str, redis_url: str, tmp_path: Path) -> Settings:
    return make_settings(database_url, redis_url, tmp_path)


@pytest.fixture
async def db(database_url: str, redis_url: str) -> AsyncIterator[asyncpg.Pool]:
    """A pool on a database emptied of all rows, and an empty Redis."""
    pool = await asyncpg.create_pool(database_url, min_size=1, max_size=4)
    assert pool is not None
    await pool.execute(f"TRUNCATE {', '.join(_TABLES)} CASCADE")
    redis = Redis.from_url(redis_url)
    await redis.flushdb()
    await redis.aclose()
    try:
        yield pool
    finally:
        await pool.close()


@pytest.fixture
async def redis(redis_url: str, db: asyncpg.Pool) -> AsyncIterator[Redis]:
    client = Redis.from_url(redis_url)
    try:
        yield client
    finally:
        await client.aclose()


async def start_app(settings: Settings) -> tuple[TrackingApp, Any]:
    app = create_app(settings)
    lifespan = app.api.router.lifespan_context(app.api)
    await lifespan.__aenter__()
    return app, lifespan


@contextlib.asynccontextmanager
async def serving(
    settings: Settings, client_address: tuple[str, int] = ("203.0.113.7", 50000)
) -> AsyncIterator[tuple[TrackingApp, httpx.AsyncClient]]:
    """An app of its own (its lifespan run) and an HTTP client for it."""
    app, lifespan = await start_app(settings)
    transport = httpx.ASGITransport(app=app, client=client_address)
    try:
        async with httpx.AsyncClient(transport=transport, base_url="https://go.test") as client:
            yield app, client
    finally:
        await lifespan.__aexit__(None, None, None)


@contextlib.asynccontextmanager
async def serve_asgi(app: Any, port: int) -> AsyncIterator[None]:
    """An ASGI app on a real loopback port (uvicorn, its lifespan left to the caller), for a
    browser or a delivery worker to reach over HTTP."""
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, lifespan="off",
                                           log_level="warning"))  # fmt: skip
    task = asyncio.create_task(server.serve())
    for _ in range(500):
        if server.started:
            break
        await asyncio.sleep(0.01)
    try:
        yield
    finally:
        server.should_exit = True
        await task


@contextlib.asynccontextmanager
async def live_api(settings: Settings, port: int) -> AsyncIterator[TrackingApp]:
    """The whole app (its lifespan run) answering on a real port."""
    app, lifespan = await start_app(settings)
    try:
        async with serve_asgi(app, port):
            yield app
    finally:
        await lifespan.__aexit__(None, None, None)


@pytest.fixture
async def app(settings: Settings, db: asyncpg.Pool) -> AsyncIterator[TrackingApp]:
    tracking_app, lifespan = await start_app(settings)
    try:
        yield tracking_app
    finally:
        await lifespan.__aexit__(None, None, None)


@pytest.fixture
async def client(app: TrackingApp) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=app, client=("203.0.113.7", 50000))
    async with httpx.AsyncClient(transport=transport, base_url="https://go.example.test") as c:
        yield c


@pytest.fixture
async def merchant(db: asyncpg.Pool) -> CreatedMerchant:
    return await create_merchant(db, TEST_KEYRING, "Acme Shoes")


@pytest.fixture
async def other_merchant(db: asyncpg.Pool) -> CreatedMerchant:
    return await create_merchant(db, TEST_KEYRING, "Rival Boots")


def auth(merchant: CreatedMerchant) -> dict[str, str]:
    return {"Authorization": f"Bearer {merchant.api_key}"}


async def make_program(
    client: httpx.AsyncClient, merchant: CreatedMerchant, **fields: Any
) -> dict[str, Any]:
    body = {
        "name": "Friends get 10%",
        "destination_url": "https://shop.example.com/welcome?src=ref#top",
        "attribution_window_days": 30,
        **fields,
    }
    response = await client.post("/v1/programs", json=body, headers=auth(merchant))
    assert response.status_code == 201, response.text
    return response.json()


async def make_advocate(
    client: httpx.AsyncClient, merchant: CreatedMerchant, program: dict[str, Any], external_id: str
) -> dict[str, Any]:
    response = await client.post(
        f"/v1/programs/{program['id']}/advocates",
        json={"external_id": external_id, "name": "Anna Müller", "email": "anna@example.com"},
        headers=auth(merchant),
    )
    assert response.status_code == 201, response.text
    return response.json()


@pytest.fixture
async def link(client: httpx.AsyncClient, merchant: CreatedMerchant) -> dict[str, Any]:
    """A default link of a fresh advocate in a fresh program."""
    program = await make_program(client, merchant)
    advocate = await make_advocate(client, merchant, program, "cust-42")
    return advocate["links"][0]


async def flush(settings: Settings) -> None:
    """Drain the streams into PostgreSQL, like a flusher in burst mode."""
    await flusher_worker.run(settings, burst=True)


# -- Processes -------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class RedisServer:
    """A private redis-server with AOF, for tests that kill or restart Redis."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        binary = shutil.which("redis-server") or "/usr/bin/redis-server"
        self.process = subprocess.Popen(
            [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--dir",
             str(self.directory), "--appendonly", "yes", "--appendfsync", "always",
             "--save", ""],
            stdout=subprocess.DEVNULL,
        )  # fmt: skip
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2) as s:
                    s.sendall(b"PING\r\n")
                    if s.recv(16).startswith(b"+PONG"):
                        return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("redis-server did not start")

    def kill(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait()


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path / "redis")
    server.start()
    try:
        yield server
    finally:
        server.kill()


def flusher_process(settings: Settings, *, burst: bool, **env: str) -> subprocess.Popen[bytes]:
    """The real flusher command in its own process, so a test can SIGKILL it."""
    environment = {
        **os.environ,
        "DATABASE_URL": settings.database_url,
        "REDIS_URL": settings.redis_url,
        "SECRET_KEY": settings.secret_key,
        "FLUSH_MAX_WAIT_MS": str(settings.flush_max_wait_ms),
        "FLUSH_CLAIM_IDLE_MS": str(settings.flush_claim_idle_ms),
        "FLUSHER_METRICS_PORT": "0",
        "LOG_LEVEL": "WARNING",
        **env,
    }
    args = [sys.executable, "-m", "app.cli", "flusher", *(["--burst"] if burst else [])]
    return subprocess.Popen(args, env=environment, cwd=ROOT)
