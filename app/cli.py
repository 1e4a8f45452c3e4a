"""The `referral` command: serve, flusher, scheduler, webhooks, migrate, create-merchant, API
keys, dead letters."""

from __future__ import annotations

import argparse
import asyncio
import sys
from uuid import UUID

import orjson

from app.gc_tuning import tune_for_serving
from app.logs import configure_logging
from app.scopes import SCOPES
from app.settings import load_settings


def _serve(args: argparse.Namespace) -> None:
    if args.server == "granian":
        from granian.constants import Interfaces, Loops
        from granian.server import Server

        Server(
            "app.main:create_app",
            address=args.host,
            port=args.port,
            interface=Interfaces.ASGI,
            workers=args.workers,
            loop=Loops.uvloop,
            factory=True,
            log_access=False,
        ).serve()
        return
    import uvicorn

    if args.workers == 1:  # uvicorn's worker processes start afresh, with CPython's defaults
        import app.main  # noqa: F401  # imported before the collector is tuned

        tune_for_serving()
    uvicorn.run(
        "app.main:create_app",
        factory=True,
        host=args.host,
        port=args.port,
        workers=args.workers,
        loop="uvloop",
        http="httptools",
        access_log=False,
        log_config=None,
        backlog=4096,
        # X-Forwarded-For is read by the app itself, only when TRUST_FORWARDED_FOR is set.
        proxy_headers=False,
        server_header=False,
    )


async def _migrate() -> None:
    from app.services.merchant_keys import upgrade_all
    from app.storage.db import create_pool, migrate

    settings = load_settings()
    applied = await migrate(settings.database_url)
    print(f"migrations applied: {', '.join(applied) if applied else 'none (up to date)'}")
    pool = await create_pool(settings.database_url)
    try:
        upgraded = await upgrade_all(pool, settings.keyring)
    finally:
        await pool.close()
    if upgraded:
        print(f"merchants upgraded to encrypted secrets and keyed email hashes: {upgraded}")


async def _reencrypt() -> int:
    from app.services.merchant_keys import reencrypt_all
    from app.storage.db import create_pool

    settings = load_settings()
    pool = await create_pool(settings.database_url)
    try:
        return await reencrypt_all(pool, settings.keyring)
    finally:
        await pool.close()


async def _rebuild_visitor_counts() -> int:
    from app.pipeline.redis_client import connect
    from app.services.visitors import rebuild_visitor_counts
    from app.storage.db import create_pool

    settings = load_settings()
    pool = await create_pool(settings.database_url, min_size=1, max_size=2)
    redis = connect(settings)
    try:
        return await rebuild_visitor_counts(pool, redis)
    finally:
        await redis.aclose()
        await pool.close()


async def _create_merchant(name: str) -> None:
    from app.services.merchants import create_merchant
    from app.storage.db import create_pool

    settings = load_settings()
    pool = await create_pool(settings.database_url)
    try:
        merchant = await create_merchant(pool, settings.keyring, name)
    finally:
        await pool.close()
    print(
        orjson.dumps(
            {
                "merchant_id": str(merchant.id),
                "name": merchant.name,
                "api_key": merchant.api_key,
                "webhook_secret": merchant.webhook_secret,
            },
            option=orjson.OPT_INDENT_2,
        ).decode()
    )


async def _api_keys(args: argparse.Namespace) -> None:
    """add-api-key, api-keys, rotate-api-key, revoke-api-key: the API's key management."""
    from datetime import UTC, datetime

    from app.services import api_keys
    from app.storage.db import create_pool

    pool = await create_pool(load_settings().database_url)
    try:
        if args.command == "add-api-key":
            issued = await api_keys.issue(
                pool, args.merchant_id, args.label, args.scope or ["admin"]
            )
            print(issued["key"])
        elif args.command == "api-keys":
            for key in await api_keys.list_keys(pool, args.merchant_id):
                print(orjson.dumps(key, default=str).decode())
        elif args.command == "rotate-api-key":
            issued = await api_keys.rotate(pool, args.merchant_id, args.key_id,
                                           args.overlap_seconds, datetime.now(UTC))  # fmt: skip
            print(issued["key"])
        else:
            await api_keys.revoke(pool, args.merchant_id, args.key_id)
            print("revoked")
    finally:
        await pool.close()


async def _dead_letters(args: argparse.Namespace) -> None:
    from app.pipeline.redis_client import connect
    from app.services import dead_letters
    from app.storage.db import create_pool

    settings = load_settings()
    pool = await create_pool(settings.database_url, min_size=1, max_size=2)
    try:
        if args.command == "dead-letters":
            for row in await dead_letters.list_dead_letters(pool, args.stream, args.limit):
                print(
                    orjson.dumps(
                        {
                            "id": row["id"],
                            "stream": row["stream"],
                            "events": row["events"],
                            "error": row["error"],
                            "created_at": row["created_at"].isoformat(),
                            "payload": bytes(row["payload"]).decode(errors="replace")[:2000],
                        }
                    ).decode()
                )
            return
        redis = connect(settings)
        try:
            replayed = await dead_letters.replay_dead_letters(
                pool, redis, stream=args.stream, ids=args.id or None
            )
        finally:
            await redis.aclose()
        print(f"dead letters replayed: {replayed}")
    finally:
        await pool.close()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="referral", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run the API (redirects and management API)")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument("--workers", type=int, default=1)
    serve.add_argument("--server", choices=["uvicorn", "granian"], default="uvicorn")

    flusher = sub.add_parser("flusher", help="move buffered events from Redis to PostgreSQL")
    flusher.add_argument("--burst", action="store_true", help="drain the streams, then exit")

    hooks = sub.add_parser("webhooks", help="deliver outgoing webhooks (several may run)")
    hooks.add_argument("--once", action="store_true", help="one round of deliveries, then exit")
    scheduler = sub.add_parser("scheduler", help="scheduled jobs: approve rewards after their hold")
    scheduler.add_argument("--once", action="store_true", help="run the jobs once, then exit")

    sub.add_parser("migrate", help="apply database migrations")
    sub.add_parser("reencrypt", help="rewrite stored secrets under the newest of DATA_KEYS")

    create = sub.add_parser("create-merchant", help="create a merchant; prints its API key once")
    create.add_argument("name")

    key = sub.add_parser("add-api-key", help="issue another API key for a merchant")
    key.add_argument("merchant_id", type=UUID)
    key.add_argument("--label", default="")
    key.add_argument("--scope", action="append", choices=SCOPES,
                     help="repeatable; default admin (everything)")  # fmt: skip
    listed = sub.add_parser("api-keys", help="a merchant's API keys (never their secrets)")
    listed.add_argument("merchant_id", type=UUID)
    rotate = sub.add_parser("rotate-api-key", help="a new key with the same scopes")
    rotate.add_argument("merchant_id", type=UUID)
    rotate.add_argument("key_id", type=UUID)
    rotate.add_argument("--overlap-seconds", type=int, default=0,
                        help="how long the old key keeps working")  # fmt: skip
    revoke = sub.add_parser("revoke-api-key", help="the key stops working at once")
    revoke.add_argument("merchant_id", type=UUID)
    revoke.add_argument("key_id", type=UUID)

    sub.add_parser(
        "rebuild-visitor-counts",
        help="recompute the programs' unique-visitor HyperLogLogs in Redis from PostgreSQL",
    )

    listing = sub.add_parser(
        "dead-letters", help="list events the flusher set aside (JSON lines, with the error)"
    )
    listing.add_argument("--stream", default=None)
    listing.add_argument("--limit", type=int, default=100)
    replay = sub.add_parser(
        "replay-dead-letters", help="put dead letters back on their streams to be stored again"
    )
    replay.add_argument("--stream", default=None)
    replay.add_argument("--id", type=int, action="append", help="only this row (repeatable)")

    args = parser.parse_args(argv)
    if args.command == "serve":
        _serve(args)
        return
    settings = load_settings()
    configure_logging(settings.log_level)
    if args.command == "flusher":
        import uvloop

        from app.workers import flusher as flusher_worker

        tune_for_serving()
        uvloop.run(flusher_worker.run(settings, burst=args.burst))
    elif args.command == "webhooks":
        from app.workers import webhooks as webhooks_worker

        sent = asyncio.run(webhooks_worker.run(settings, once=args.once))
        if args.once:
            print(f"webhook attempts: {sent}")
    elif args.command == "scheduler":
        from app.workers import scheduler as scheduler_worker

        approved = asyncio.run(scheduler_worker.run(settings, once=args.once))
        if args.once:
            print(f"rewards approved: {approved}")
    elif args.command == "migrate":
        asyncio.run(_migrate())
    elif args.command == "reencrypt":
        print(f"merchants re-encrypted: {asyncio.run(_reencrypt())}")
    elif args.command == "create-merchant":
        asyncio.run(_create_merchant(args.name))
    elif args.command in ("add-api-key", "api-keys", "rotate-api-key", "revoke-api-key"):
        asyncio.run(_api_keys(args))
    elif args.command in ("dead-letters", "replay-dead-letters"):
        asyncio.run(_dead_letters(args))
    elif args.command == "rebuild-visitor-counts":
        programs = asyncio.run(_rebuild_visitor_counts())
        print(f"programs rebuilt: {programs}")
    else:  # pragma: no cover - argparse enforces the choices
        sys.exit(2)


if __name__ == "__main__":
    main()
