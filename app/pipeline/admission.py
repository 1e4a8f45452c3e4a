"""Admitting events into a stream once: a quota window, a nonce, an idempotency key, a marker.

Some events may enter a stream only under conditions that Redis itself keeps: at most `quota`
per window for their sender, a nonce never seen before, and an idempotency key that either is new
(the event is added and the key set to its fingerprint) or already holds the same fingerprint (a
duplicate: nothing added) or another one (a conflict). A marker is set beside each added event.

All of a batch is decided and written by one server-side script (app/pipeline/admission.lua) in
one round trip, the stream entry included: the checks of concurrent requests cost Redis one call,
not four each. Every key of an admission must live in the stream's hash slot (see
app/pipeline/keys.py), which a Redis Cluster requires of one script's keys.

This module knows events, keys and fingerprints, not what they mean to the business.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from app.pipeline.events import EVENTS_FIELD
from app.pipeline.redis_client import RedisClient

SCRIPT = (Path(__file__).with_name("admission.lua")).read_text()


class Outcome(enum.Enum):
    ADDED = "a"
    DUPLICATE = "d"  # the idempotency key holds this fingerprint: nothing added
    CONFLICT = "c"  # the idempotency key holds another fingerprint
    REPLAYED = "r"  # the nonce was used already
    LIMITED = "l"  # over the sender's quota in this window


@dataclass(frozen=True, slots=True)
class Admission:
    """The conditions of one event (keys in the stream's slot)."""

    key: str  # idempotency key
    fingerprint: str
    ttl: int  # of the idempotency key and the marker
    marker_key: str
    marker_value: str
    window_key: str = ""  # the sender's counter for this window
    quota: int = 0  # events allowed per window; 0: no quota
    window_seconds: int = 1
    nonce_key: str = ""  # "" (with nonce_ttl 0): no nonce
    nonce_ttl: int = 0


@dataclass(frozen=True, slots=True)
class Admitted:
    outcome: Outcome
    window_count: int  # the sender's events in this window, this one included (0: no quota)


# What an event admitted without Redis gets (Redis down: the spool takes it, no checks).
ADMITTED_BLIND = Admitted(Outcome.ADDED, 0)


class Admitter:
    def __init__(self, redis: RedisClient) -> None:
        self._script: Any = redis.register_script(SCRIPT)

    async def run(
        self,
        stream: str,
        events: Sequence[bytes],
        admissions: Sequence[Admission | None],
        *,
        write: bool,
        per_entry: int,
    ) -> list[Admitted]:
        """Decide (and, with `write`, append) every event; one outcome per event, in order.
        Events without an admission are always added."""
        keys: list[str] = [stream]
        args: list[Any] = ["1" if write else "0", EVENTS_FIELD, per_entry]
        for event, admission in zip(events, admissions, strict=True):
            if admission is None:
                args += ["0", event]
                continue
            # An unused key's place is held by the idempotency key (a script's keys must all be
            # in one hash slot on a cluster, and "" is not in the stream's).
            keys += [admission.window_key or admission.key, admission.nonce_key or admission.key,
                     admission.key, admission.marker_key]  # fmt: skip
            args += ["1", event, admission.quota, admission.window_seconds, admission.nonce_ttl,
                     admission.fingerprint, admission.ttl, admission.marker_value]  # fmt: skip
        reply = await self._script(keys=keys, args=args)
        n = len(events)
        codes, counts = reply[:n], reply[n:]
        return [
            Admitted(Outcome(code.decode() if isinstance(code, bytes) else code), int(count))
            for code, count in zip(codes, counts, strict=True)
        ]
