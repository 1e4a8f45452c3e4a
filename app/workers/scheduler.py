"""Scheduled jobs (every minute by default): approve rewards whose hold period has passed, and
flag the clicks of click floods for the statistics (app/services/fraud.py).

Approval locks the due rewards before it reads their balances (app/services/rewards.py), so
running it twice, or on two machines at once, approves nothing twice.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from datetime import UTC, datetime

from app.services.fraud import flag_click_floods
from app.services.retention import strip_old_clicks
from app.services.rewards import approve_due
from app.services.webhooks import expire_events
from app.settings import Settings
from app.storage.db import create_pool

log = logging.getLogger(__name__)


async def run(settings: Settings, *, once: bool = False, interval: float = 60.0) -> int:
    pool = await create_pool(settings.database_url, min_size=1, max_size=2)
    stop = asyncio.Event()
    if not once:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
    approved_total = 0
    try:
        while True:
            now = datetime.now(UTC)
            approved = await approve_due(pool, now)
            approved_total += approved
            if approved:
                log.info("rewards approved", extra={"count": approved})
            flagged = await flag_click_floods(pool, now)
            if flagged:
                log.info("flood clicks flagged", extra={"count": flagged})
            await expire_events(pool, now, settings.event_retention_days)
            stripped = await strip_old_clicks(pool, now, settings.click_retention_days)
            if stripped:
                log.info("old clicks stripped of personal data", extra={"partitions": stripped})
            if once:
                break
            try:
                await asyncio.wait_for(stop.wait(), timeout=interval)
                break
            except TimeoutError:
                continue
    finally:
        await pool.close()
    return approved_total
