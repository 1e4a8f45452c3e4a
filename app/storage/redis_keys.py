"""Names of the Redis keys that are not streams, and how long each lives.

Redis holds the backlog (the streams) and small, bounded state: every key here has a TTL or a
bound stated beside it (docs/scaling.md adds up the bytes).
"""

from __future__ import annotations

from uuid import UUID

# A postback's digest (idempotency, 409 on a changed body) and its "queued" mark: one day (the
# flusher deletes the mark once the conversion is processed). A retry after a day is still stored
# once, by PostgreSQL's unique key; it is answered "accepted" with the same id.
CONVERSION_TTL_SECONDS = 86_400


def conversion_digest(conversion: UUID | str) -> str:
    return f"conversion-event:{conversion}"


def conversion_queued(conversion: UUID | str) -> str:
    return f"conversion-queued:{conversion}"
