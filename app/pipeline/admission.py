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
import hashlib
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any, NamedTuple

from redis.exceptions import NoScriptError

from app.pipeline.events import EVENTS_FIELD

SCRIPT = (Path(__file__).with_name("admission.lua")).read_text()
_SHA = hashlib.sha1(SCRIPT.encode()).hexdigest().encode()


class Outcome(enum.Enum):
    ADDED = "a"
    DUPLICATE = "d"  # the idempotency key holds this fingerprint: nothing added
    CONFLICT = "c"  # the idempotency key holds another fingerprint
    REPLAYED = "r"  # the nonce was used already
    LIMITED = "l"  # over the sender's quota in this window


_OUTCOMES = {o.value.encode(): o for o in Outcome}


class Admission(NamedTuple):
    """The conditions of one event (keys in the stream's slot). A tuple: one is built per
    postback, and a frozen dataclass's __init__ cost more than the rest of it."""

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


class Admitted(NamedTuple):
    outcome: Outcome
    window_count: int  # the sender's events in this window, this one included (0: no quota)


# What an event admitted without Redis gets (Redis down: the spool takes it, no checks).
ADMITTED_BLIND = Admitted(Outcome.ADDED, 0)

RoundTrip = Callable[[list[bytes], int], Awaitable[list[Any]]]
_EVALSHA = b"$7\r\nEVALSHA\r\n$%d\r\n%b\r\n" % (len(_SHA), _SHA)
_EVAL = b"$4\r\nEVAL\r\n$%d\r\n%b\r\n" % (len(SCRIPT.encode()), SCRIPT.encode())


_FOUR = b"$%d\r\n%b\r\n" * 4
# An admitted event's arguments: the flag 1, the event, quota, window, nonce TTL, fingerprint,
# TTL and marker value.
_ADMITTED = b"$1\r\n1\r\n" + b"$%d\r\n%b\r\n" * 7


def _bulk(value: bytes) -> bytes:
    return b"$%d\r\n%b\r\n" % (len(value), value)


class Admitter:
    """Frames the script's call in RESP itself (like the buffer's XADD): redis-py's argument
    packing cost more per postback than the script's work in Redis."""

    async def run(
        self,
        round_trip: RoundTrip,
        stream: str,
        events: Sequence[bytes],
        admissions: Sequence[Admission | None],
        *,
        write: bool,
        per_entry: int,
    ) -> list[Admitted]:
        """Decide (and, with `write`, append) every event; one outcome per event, in order.
        Events without an admission are always added. `round_trip` sends framed commands on
        the stream's connection and returns their replies."""
        keys: list[bytes] = [_bulk(stream.encode())]
        args: list[bytes] = [b"$1\r\n1\r\n" if write else b"$1\r\n0\r\n", _bulk(EVENTS_FIELD),
                             _bulk(b"%d" % per_entry)]  # fmt: skip
        for event, admission in zip(events, admissions, strict=True):
            if admission is None:
                args += (b"$1\r\n0\r\n", _bulk(event))
                continue
            key = admission.key.encode()
            # An unused key's place is held by the idempotency key (a script's keys must all be
            # in one hash slot on a cluster, and "" is not in the stream's).
            window, nonce = (
                admission.window_key.encode() or key,
                admission.nonce_key.encode() or key,
            )
            marker = admission.marker_key.encode()
            # One format per part, not a call per value: this runs for every postback.
            keys.append(_FOUR % (len(window), window, len(nonce), nonce, len(key), key,
                                 len(marker), marker))  # fmt: skip
            numbers = (b"%d" % admission.quota, b"%d" % admission.window_seconds,
                       b"%d" % admission.nonce_ttl, b"%d" % admission.ttl)  # fmt: skip
            fingerprint, value = admission.fingerprint.encode(), admission.marker_value.encode()
            args.append(_ADMITTED % (
                len(event), event, len(numbers[0]), numbers[0], len(numbers[1]), numbers[1],
                len(numbers[2]), numbers[2], len(fingerprint), fingerprint,
                len(numbers[3]), numbers[3], len(value), value,
            ))  # fmt: skip
        # One bytes object: the stream writer's writelines of hundreds of small parts cost
        # more than joining them here.
        # Each admitted event framed 4 keys and 8 arguments above, each other one 2 arguments.
        admitted = sum(1 for a in admissions if a is not None)
        key_count = 1 + 4 * admitted
        arg_count = 3 + 8 * admitted + 2 * (len(events) - admitted)
        tail = b"".join((_bulk(b"%d" % key_count), *keys, *args))
        head = b"*%d\r\n" % (key_count + arg_count + 3)  # with EVALSHA, the digest, numkeys
        try:
            [reply] = await round_trip([head, _EVALSHA, tail], 1)
        except NoScriptError:
            # Not loaded on this server yet (a restart, a failover): the source once, then by
            # its digest again.
            [reply] = await round_trip([head, _EVAL, tail], 1)
        n = len(events)
        return [
            Admitted(_OUTCOMES[code], count)
            for code, count in zip(reply[:n], reply[n:], strict=True)
        ]
