"""When the order pixel counts as evidence.

Anyone can load an image with any cookie for any order id, so a claim made by the pixel is
weak evidence, and only used when the signed postback carries none of its own (no referral
code, no click id). Even then it counts only when
- exactly one browser claimed the order (two claims: someone is guessing order ids), and
- the claim came close to the order time the postback states: not before it (less a clock
  skew: a claim for an order that did not exist yet is a guess), and not long after.
The browser must also have clicked one of the merchant's links; attribution checks that, since
without a click there is nothing to attribute. Pure: the caller passes the claims and times.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from uuid import UUID

# The shop's clock and ours may differ, and the confirmation page loads a moment after the order.
CLAIM_BEFORE_ORDER = timedelta(minutes=10)
CLAIM_AFTER_ORDER = timedelta(days=1)


@dataclass(frozen=True, slots=True)
class PixelClaim:
    visitor_id: UUID
    seen_at: datetime


@dataclass(frozen=True, slots=True)
class PixelEvidence:
    visitor_id: UUID | None  # the browser to attribute by, or None
    reason: str  # why not, when None


def pixel_evidence(claims: list[PixelClaim], order_occurred_at: datetime) -> PixelEvidence:
    if not claims:
        return PixelEvidence(None, "no referral code, click id or pixel")
    browsers = {c.visitor_id for c in claims}
    if len(browsers) > 1:
        return PixelEvidence(
            None, f"{len(browsers)} browsers claimed this order through the pixel: no evidence"
        )
    earliest = min(c.seen_at for c in claims)
    if earliest < order_occurred_at - CLAIM_BEFORE_ORDER:
        return PixelEvidence(None, "the pixel claimed this order before it was placed: no evidence")
    if earliest > order_occurred_at + CLAIM_AFTER_ORDER:
        return PixelEvidence(None, "the pixel claimed this order more than a day after it")
    return PixelEvidence(claims[0].visitor_id, "")
