"""Every Redis key, channel and stream-name convention of the service, and how long each lives.

Redis holds the backlog (the streams) and small, bounded state: every key here has a TTL or a
bound stated beside it (docs/scaling.md adds up the bytes). The streams themselves are named by
the settings (`CLICK_STREAM`, its shards `clicks:{i}`, `CONVERSION_STREAM`); rate-limit counters
live under the `limits` library's own prefix `LIMITS:` (one window each).
"""

from __future__ import annotations

from uuid import UUID

# -- Links: what the redirect reads on a miss of its in-process cache -------------------------
# A link's record, renewed by each write and by each miss read back from PostgreSQL.
LINK_RECORD_TTL_SECONDS = 7 * 86_400
# Pub/sub: "drop your copy of this code" to every API process.
LINK_INVALIDATION_CHANNEL = "link-invalidate"


def link_record(code: str) -> str:
    return f"link:{code}"


# -- Postbacks -------------------------------------------------------------------------------
# A postback's digest (idempotency, 409 on a changed body) and its "queued" mark: one day (the
# flusher deletes the mark once the conversion is processed). A retry after a day is still stored
# once, by PostgreSQL's unique key; it is answered "accepted" with the same id.
CONVERSION_TTL_SECONDS = 86_400


def conversion_digest(conversion: UUID | str) -> str:
    return f"conversion-event:{conversion}"


def conversion_queued(conversion: UUID | str) -> str:
    return f"conversion-queued:{conversion}"


def used_signature(signature: str) -> str:
    """A postback signature already seen (replay protection), for twice the tolerance."""
    return f"webhook-signature:{signature}"


# -- Statistics ------------------------------------------------------------------------------
def program_visitors(program_id: UUID) -> str:
    """A program's visitors' HyperLogLog: no TTL, at most 12 KB per program."""
    return f"program-visitors:{program_id}"
