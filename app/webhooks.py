"""Signed webhooks: how a merchant's backend proves a conversion postback is theirs.

Header `X-Referral-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256(secret, "<t>.<raw body>")>`
(the scheme Stripe made familiar). Rejected: a missing or malformed header, a wrong signature, a
timestamp more than `TOLERANCE` away from now (stale or from the future), and — checked by the
caller with Redis — the same signature seen twice (a replay). Python's `hmac` and
`hmac.compare_digest` are the library here: constant-time, nothing to hand-roll.
"""

from __future__ import annotations

import hashlib
import hmac
from datetime import datetime, timedelta

TOLERANCE = timedelta(minutes=5)
HEADER = "X-Referral-Signature"


class InvalidSignature(ValueError):
    """The reason is safe to show to the sender."""


def sign(secret: str, timestamp: int, body: bytes) -> str:
    mac = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256)
    return f"t={timestamp},v1={mac.hexdigest()}"


def verify(secret: str, header: str | None, body: bytes, now: datetime) -> str:
    """Check the signature header; returns the signature (for replay detection)."""
    if not header:
        raise InvalidSignature(f"missing {HEADER} header")
    parts = dict(p.split("=", 1) for p in header.split(",") if "=" in p)
    try:
        timestamp = int(parts["t"])
        signatures = [v for k, v in parts.items() if k == "v1"]
    except (KeyError, ValueError) as exc:
        raise InvalidSignature(f"malformed {HEADER} header: expected t=<unix>,v1=<hex>") from exc
    if abs(now.timestamp() - timestamp) > TOLERANCE.total_seconds():
        raise InvalidSignature("timestamp outside the 5 minute tolerance (stale or clock skew)")
    expected = sign(secret, timestamp, body).split("v1=", 1)[1]
    if not any(hmac.compare_digest(expected, s) for s in signatures):
        raise InvalidSignature("signature does not match the body and timestamp")
    return expected
