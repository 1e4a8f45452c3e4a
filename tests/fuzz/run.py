"""Run Schemathesis against a real API process: every check, 0 server errors and 0 statuses the
OpenAPI document does not list.

Starts `referral serve` on a free port against the PostgreSQL and Redis in DATABASE_URL /
REDIS_URL (with rate limits raised, so the fuzzer measures the API, not the limiter), creates a
merchant with a program, an advocate and a link (so some generated ids are real), runs
`schemathesis run` with that merchant's key, and exits with its status.

Usage: python tests/fuzz/run.py [--max-examples N] [--max-time SECONDS] [--seed N]
(`./manage fuzz` runs it longer; tests/test_fuzz.py runs a bounded pass in `./manage test`.)
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[2]
CONFIG = Path(__file__).with_name("schemathesis.toml")
SECRET_KEY = os.environ.get("SECRET_KEY", "fuzz-secret-0123456789abcdef")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def _seed(dsn: str, base: str) -> str:
    """A merchant with real objects behind its key; returns the key."""
    from app.keyring import Keyring
    from app.services.merchants import create_merchant
    from app.storage.db import create_pool

    pool = await create_pool(dsn, min_size=1, max_size=2)
    try:
        merchant = await create_merchant(pool, Keyring.build(SECRET_KEY), "Fuzz Shop")
    finally:
        await pool.close()
    headers = {"authorization": f"Bearer {merchant.api_key}"}
    async with httpx.AsyncClient(base_url=base, headers=headers) as client:
        program = await client.post(
            "/v1/programs",
            json={"name": "Fuzz", "destination_url": "https://shop.example.com/"},
        )
        program.raise_for_status()
        enrolled = await client.post(
            f"/v1/programs/{program.json()['id']}/advocates", json={"external_id": "fuzz-1"}
        )
        enrolled.raise_for_status()
    return merchant.api_key


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--max-examples", type=int, default=40)
    parser.add_argument("--max-time", type=int, default=None)
    parser.add_argument("--seed", type=int, default=None)
    args = parser.parse_args(argv)

    port = _free_port()
    base = f"http://127.0.0.1:{port}"
    env = {
        **os.environ,
        "SECRET_KEY": SECRET_KEY,
        "SPOOL_DIR": os.environ.get("SPOOL_DIR", str(ROOT / ".data" / "fuzz-spool")),
        "RATE_LIMIT_API_KEY": "1000000/minute",
        "RATE_LIMIT_AUTH_FAILURES_PER_IP": "1000000/minute",
        "RATE_LIMIT_PIXELS_PER_IP": "1000000/minute",
        "LOG_LEVEL": "ERROR",
    }
    server = subprocess.Popen(
        [sys.executable, "-m", "app.cli", "serve", "--port", str(port)], env=env, cwd=ROOT
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(f"{base}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline or server.poll() is not None:
                print("the API did not start", file=sys.stderr)
                return 2
            time.sleep(0.2)
        key = asyncio.run(_seed(os.environ["DATABASE_URL"], base))
        command = [
            str(Path(sys.executable).with_name("schemathesis")),
            "--config-file", str(CONFIG),
            "run", f"{base}/openapi.json",
            "--checks", "all",
            "--header", f"Authorization: Bearer {key}",
            "--max-examples", str(args.max_examples),
            "--no-color",
        ]  # fmt: skip
        if args.max_time:
            command += ["--max-time", str(args.max_time)]
        if args.seed is not None:
            command += ["--seed", str(args.seed)]
        return subprocess.run(command, cwd=ROOT, env=env).returncode
    finally:
        server.terminate()
        server.wait(10)


if __name__ == "__main__":
    sys.exit(main())
