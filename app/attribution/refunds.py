"""Refunds: how much of a refund an order can take, and what it takes back from the rewards.

Pure functions over integer minor units. An order is refunded at most once in full: the sum of
its refunds is capped at the order's amount, and what goes beyond is refused with the reason.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class RefundSettlement:
    applied_minor: int  # what this refund takes off the order (0: refused)
    refused_minor: int  # what it asked beyond the order's remaining amount
    reason: str


def currency_refusal(refund_currency: str | None, order_currency: str) -> str | None:
    """Why a refund cannot be matched to its order by currency (no FX), or None. A refund that
    names no currency is in the order's."""
    if refund_currency and refund_currency != order_currency:
        return f"refund currency {refund_currency} is not the order currency {order_currency}"
    return None


def settle_refund(
    order_minor: int, refunded_before_minor: int, requested_minor: int | None, order_id: str
) -> RefundSettlement:
    """Cap a refund at what is left of the order. `requested_minor` None: the whole rest."""
    remaining = max(order_minor - refunded_before_minor, 0)
    requested = remaining if requested_minor is None else requested_minor
    applied = min(requested, remaining)
    refused = requested - applied
    if remaining == 0:
        reason = (
            f"refused: order {order_id} ({order_minor}) was already refunded in full"
            if order_minor > 0
            else f"refused: order {order_id} has no amount to refund"
        )
        return RefundSettlement(0, refused, reason)
    reason = f"refund of {applied} of {order_minor} on order {order_id}"
    if refused:
        reason += f"; {refused} refused: more than the {remaining} left to refund"
    return RefundSettlement(applied, refused, reason)


def reversal_amount(
    reward_minor: int, already_reversed_minor: int, order_minor: int, refunded_minor: int
) -> int:
    """How much more of a reward a refund takes back: the refunded share of the order, of the
    original reward, minus what earlier refunds already took (never more than what is left)."""
    if order_minor <= 0 or refunded_minor >= order_minor:
        return max(0, reward_minor - already_reversed_minor)
    # Exact integer arithmetic, rounded down: a Decimal quotient is rounded to 28 digits first,
    # and at large amounts that rounding could take one minor unit more than the share.
    due = reward_minor * max(refunded_minor, 0) // order_minor
    return max(0, min(due - already_reversed_minor, reward_minor - already_reversed_minor))
