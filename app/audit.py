"""The audit trail's request context: who is writing what, set by the management API's key
dependency (app/routes/deps.py) for an operation that writes, and recorded by
`app/services/tx.transaction` in the first transaction the request commits — so the record
commits with the change, or not at all. Nothing outside a management request sets it (the
flusher and the scheduler write no audit rows)."""

from __future__ import annotations

import hashlib
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any
from uuid import UUID

import orjson

# Bodies larger than this (uploads) are recorded by size and digest.
MAX_RECORDED_BODY = 16_384


@dataclass
class AuditContext:
    merchant_id: UUID
    key_id: UUID | None
    operation: str
    object_ids: dict[str, str]
    change: Any
    recorded: bool = field(default=False)


current: ContextVar[AuditContext | None] = ContextVar("audit", default=None)


# Operations whose body is personal data the operation exists to remove: recorded without it.
NOT_RECORDED = frozenset({"POST /v1/customers/erase"})


def describe_body(body: bytes, content_type: str, operation: str = "") -> Any:
    """The change as recorded: the JSON body, or the size and SHA-256 of anything else."""
    if operation in NOT_RECORDED:
        return {"not_recorded": "the subject of an erasure"}
    if not body:
        return None
    # PostgreSQL's jsonb holds no NUL character: such a body is recorded by its digest.
    if "json" in content_type and len(body) <= MAX_RECORDED_BODY and b"\\u0000" not in body:
        try:
            return orjson.loads(body)
        except orjson.JSONDecodeError:
            pass
    return {"bytes": len(body), "sha256": hashlib.sha256(body).hexdigest(),
            "content_type": content_type}  # fmt: skip
