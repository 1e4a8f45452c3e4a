"""Every Redis key, channel and stream-name convention of the service, and how long each lives.

Redis holds the backlog (the streams) and small, bounded state: every key here has a TTL or a
bound stated beside it (docs/scaling.md adds up the bytes). The streams themselves are named by
the settings (`CLICK_STREAM`, its shards `clicks:{i}`, `CONVERSION_STREAM`); rate-limit counters
live under the `limits` library's own prefix `LIMITS:` (one window each).
"""

from __future__ import annotations

import functools
from uuid import UUID

# -- Links: what the redirect reads on a miss of its in-process cache -------------------------
# A link's record, renewed by each write and by each miss read back from PostgreSQL.
LINK_RECORD_TTL_SECONDS = 7 * 86_400
# Pub/sub: "drop your copy of this code" to every API process.
LINK_INVALIDATION_CHANNEL = "link-invalidate"


def link_record(code: str) -> str:
    return f"link:{code}"


# -- Postbacks -------------------------------------------------------------------------------
# A postback's digest (idempotency, 409 on a changed body), its "queued" mark, the signatures
# already used and the merchant's rate-limit window live in the hash slot of the conversion
# stream (`{<stream>}:` prefix), so that one server-side script can check and write all of a
# batch's postbacks together with the stream entry, on a Redis Cluster too
# (app/pipeline/admission.py).
# Digest and mark: one day (the flusher deletes the mark once the conversion is processed). A
# retry after a day is still stored once, by PostgreSQL's unique key; it is answered "accepted"
# with the same id.
CONVERSION_TTL_SECONDS = 86_400


@functools.cache
def in_slot_of(stream: str) -> str:
    """The prefix that puts a key in `stream`'s hash slot: `{tag}:`, the tag being the stream's
    own if its name has one. (Cached: computed per postback otherwise.)"""
    start = stream.find("{")
    end = stream.find("}", start + 1)
    return "{" + (stream[start + 1 : end] if start >= 0 and end > start + 1 else stream) + "}:"


def conversion_digest(stream: str, conversion: UUID | str) -> str:
    return f"{in_slot_of(stream)}conversion-event:{conversion}"


def conversion_queued(stream: str, conversion: UUID | str) -> str:
    return f"{in_slot_of(stream)}conversion-queued:{conversion}"


def used_signature(stream: str, signature: str) -> str:
    """A postback signature already seen (replay protection), for twice the tolerance."""
    return f"{in_slot_of(stream)}webhook-signature:{signature}"


def postback_window(stream: str, merchant: UUID | str, window: int, index: int) -> str:
    """A merchant's postbacks counted in one fixed window (`RATE_LIMIT_POSTBACKS`); expires
    with the window."""
    return f"{in_slot_of(stream)}postbacks:{merchant}:{window}:{index}"


# -- Statistics ------------------------------------------------------------------------------
def program_visitors(program_id: UUID) -> str:
    """A program's visitors' HyperLogLog: no TTL, at most 12 KB per program."""
    return f"program-visitors:{program_id}"
