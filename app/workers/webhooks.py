"""The webhook delivery worker (`referral webhooks`; `./manage serve` starts one, several may run):
sends what the outbox holds as it comes due (app/services/webhooks.py). Killed at any point, it
loses nothing: a claimed delivery is claimed again when its lease runs out."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal

from app.services import webhooks
from app.settings import Settings
from app.storage.db import create_pool

log = logging.getLogger(__name__)


async def run(settings: Settings, *, once: bool = False, idle: float = 0.2) -> int:
    pool = await create_pool(settings.database_url, min_size=1, max_size=4)
    stop = asyncio.Event()
    if not once:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
    sent = 0
    try:
        async with webhooks.client(settings) as client:
            while not stop.is_set():
                try:
                    attempts = await webhooks.deliver_due(pool, settings, client,
                                                          settings.webhook_concurrency)  # fmt: skip
                except Exception as exc:  # PostgreSQL away: say so, wait, go on (nothing is lost)
                    log.error("webhook delivery round failed, retrying",
                              extra={"error": repr(exc)[:300]})  # fmt: skip
                    await asyncio.sleep(1.0)
                    attempts = 0
                sent += attempts
                if once:
                    break
                if not attempts:
                    # Nothing due: wait a little (deliveries are found by time, not notified).
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(stop.wait(), timeout=idle)
    finally:
        await pool.close()
    return sent
