"""Rate limits, counted in Redis so every replica shares them (the `limits` library).

Who is limited, and by what (all configurable, see Settings):
- an API key's management requests (`RATE_LIMIT_API_KEY`);
- a merchant's signed postbacks (`RATE_LIMIT_POSTBACKS`: its item is parsed here, but the
  window is counted by the postbacks' admission script, in the batch's one Redis call — see
  app/pipeline/admission.py) and anonymous pixels (`RATE_LIMIT_PIXELS_PER_MERCHANT`);
- one IP's pixels (`RATE_LIMIT_PIXELS_PER_IP`) and one IP's failed authentications
  (`RATE_LIMIT_AUTH_FAILURES_PER_IP`: unknown keys, bad signatures, unknown merchants), so that
  guessing costs the guesser, not PostgreSQL.
The redirect is never limited: a shopper is always redirected.

Fixed windows (one INCR per request). While Redis is unreachable the limits are not enforced:
refusing honest merchants because a counter is away would break more than it protects.
An IP over its failure limit is also remembered in-process until its window ends, so a flood of
bad credentials costs neither Redis nor PostgreSQL a round trip.
"""

from __future__ import annotations

import logging
import time
from typing import NamedTuple

from limits import RateLimitItem, parse
from limits.aio.storage import RedisClusterStorage, RedisStorage, Storage
from limits.aio.strategies import FixedWindowRateLimiter

from app import metrics
from app.pipeline.redis_client import REDIS_UNAVAILABLE
from app.settings import Settings

log = logging.getLogger(__name__)


class Verdict(NamedTuple):
    """A limit's answer for one request. A tuple: one is made per postback, and a frozen
    dataclass's __init__ costs three times as much."""

    allowed: bool
    limit: int
    remaining: int
    reset_after: int  # seconds until the window ends

    def headers(self) -> list[tuple[bytes, bytes]]:
        """RateLimit-* (IETF httpapi draft) and, when refused, Retry-After."""
        out = [
            (b"ratelimit-limit", str(self.limit).encode()),
            (b"ratelimit-remaining", str(self.remaining).encode()),
            (b"ratelimit-reset", str(self.reset_after).encode()),
        ]
        if not self.allowed:
            out.append((b"retry-after", str(max(self.reset_after, 1)).encode()))
        return out


_UNLIMITED = Verdict(True, 0, 0, 0)


class RateLimits:
    def __init__(self, settings: Settings) -> None:
        uri = "async+" + settings.redis_url
        storage: Storage
        if settings.redis_cluster:
            storage = RedisClusterStorage(
                uri.replace("async+redis://", "async+redis+cluster://", 1),
                implementation="redispy",
            )
        else:
            storage = RedisStorage(
                uri,
                implementation="redispy",
                socket_timeout=1.0,
                socket_connect_timeout=settings.redis_write_timeout_seconds,
            )
        self._limiter = FixedWindowRateLimiter(storage)
        self.api_key = parse(settings.rate_limit_api_key)
        self.postbacks = parse(settings.rate_limit_postbacks)
        self.pixels_per_merchant = parse(settings.rate_limit_pixels_per_merchant)
        self.pixels_per_ip = parse(settings.rate_limit_pixels_per_ip)
        self.auth_failures = parse(settings.rate_limit_auth_failures_per_ip)
        self._blocked: dict[str, float] = {}  # ip → monotonic end of its failure window
        self._max_blocked = 100_000

    async def hit(self, item: RateLimitItem, *identity: str) -> Verdict:
        """Count one request against `item` for `identity`."""
        try:
            allowed = await self._limiter.hit(item, *identity)
            stats = await self._limiter.get_window_stats(item, *identity)
        except REDIS_UNAVAILABLE as exc:
            metrics.errors.labels("rate_limit_redis").inc()
            log.warning("rate limits not enforced: redis unavailable", extra={"error": repr(exc)})
            return _UNLIMITED
        reset_after = max(int(stats.reset_time - time.time()), 0)
        return Verdict(allowed, item.amount, max(stats.remaining, 0), reset_after)

    def blocked(self, ip: str) -> Verdict | None:
        """The refusal for an IP over its failure limit, answered without any I/O."""
        until = self._blocked.get(ip)
        if until is None:
            return None
        left = until - time.monotonic()
        if left <= 0:
            del self._blocked[ip]
            return None
        return Verdict(False, self.auth_failures.amount, 0, int(left) + 1)

    async def failed_authentication(self, ip: str) -> None:
        verdict = await self.hit(self.auth_failures, "auth-failures", ip)
        if not verdict.allowed:
            if len(self._blocked) >= self._max_blocked:
                self._blocked.clear()
            self._blocked[ip] = time.monotonic() + verdict.reset_after
            metrics.errors.labels("auth_failures_blocked").inc()
