"""Reconciliation: the shop's orders for a period against ours, and what applying the report
takes back. Pure functions; the service reads both sides and writes the ledger.

Four kinds of difference:
- `rewarded_but_cancelled`: we rewarded an order the shop marks cancelled or refunded;
- `amount_differs`: the shop's total is not ours (after the refunds we applied);
- `missing_here`: the shop has an order we never received (with whatever evidence we hold);
- `missing_there`: we have a purchase the shop does not list.
Applying a report reverses, through the ledger, the rewards of cancelled orders in full and the
share of an order the shop's lower total no longer holds; it never adds rewards.
"""

from __future__ import annotations

from dataclasses import dataclass
from uuid import UUID

CANCELLED = frozenset({"cancelled", "canceled", "refunded", "voided", "void"})
PAID = frozenset({"paid", "completed", "complete", "fulfilled", "processing", "shipped"})


@dataclass(frozen=True, slots=True)
class ShopOrder:
    order_id: str
    status: str  # paid | cancelled (normalised)
    amount_minor: int
    currency: str
    customer_id: str | None = None
    click_id: str | None = None


@dataclass(frozen=True, slots=True)
class OurOrder:
    order_id: str
    conversion_id: UUID
    amount_minor: int  # the order as posted
    refunded_minor: int  # refunds applied to it
    currency: str
    rewarded: bool  # rewards not yet reversed or rejected


@dataclass(frozen=True, slots=True)
class Difference:
    kind: str
    order_id: str
    detail: str
    ours_minor: int | None = None
    theirs_minor: int | None = None
    currency: str | None = None
    conversion_id: UUID | None = None

    def as_json(self) -> dict[str, object]:
        conversion = str(self.conversion_id) if self.conversion_id else None
        return {"kind": self.kind, "order_id": self.order_id, "detail": self.detail,
                "ours_minor": self.ours_minor, "theirs_minor": self.theirs_minor,
                "currency": self.currency, "conversion_id": conversion}  # fmt: skip


def normalise_status(status: str) -> str:
    """paid or cancelled; ValueError for a status we cannot read."""
    word = status.strip().lower()
    if word in PAID:
        return "paid"
    if word in CANCELLED:
        return "cancelled"
    raise ValueError(f"status {status!r} is neither paid ({', '.join(sorted(PAID))}) nor "
                     f"cancelled ({', '.join(sorted(CANCELLED))})")  # fmt: skip


def compare(shop: list[ShopOrder], ours: dict[str, OurOrder],
            in_period: set[str], evidence: dict[str, str]) -> list[Difference]:  # fmt: skip
    """The differences, shop orders first (in their order), then ours the shop lacks.
    `in_period`: our purchases of the period; `evidence`: for orders we never received, what we
    hold (e.g. the click the shop's click id names)."""
    found: list[Difference] = []
    listed = set()
    for order in shop:
        listed.add(order.order_id)
        mine = ours.get(order.order_id)
        if mine is None:
            if order.status == "paid":
                found.append(Difference(
                    "missing_here", order.order_id,
                    "the shop has this order; we never received it"
                    + (f" ({evidence[order.order_id]})" if order.order_id in evidence else ""),
                    None, order.amount_minor, order.currency,
                ))  # fmt: skip
            continue
        net = mine.amount_minor - mine.refunded_minor
        if order.status == "cancelled":
            if mine.rewarded:
                found.append(Difference(
                    "rewarded_but_cancelled", order.order_id,
                    "the shop marks it cancelled or refunded; its rewards stand here", net, 0,
                    mine.currency, mine.conversion_id,
                ))  # fmt: skip
            continue
        if order.currency != mine.currency or order.amount_minor != net:
            found.append(Difference(
                "amount_differs", order.order_id,
                f"the shop's total is {order.amount_minor} {order.currency}, ours {net} "
                f"{mine.currency}", net, order.amount_minor, mine.currency, mine.conversion_id,
            ))  # fmt: skip
    for order_id in sorted(in_period - listed):
        mine = ours[order_id]
        found.append(Difference(
            "missing_there", order_id, "we have this purchase; the shop does not list it",
            mine.amount_minor - mine.refunded_minor, None, mine.currency, mine.conversion_id,
        ))  # fmt: skip
    return found


def takes_back(difference: dict[str, object]) -> bool:
    """Whether applying a stored difference reverses anything: a cancelled order we hold with
    an amount, or a shop total below ours (missing orders are reported only)."""
    kind, ours, theirs = difference["kind"], difference["ours_minor"], difference["theirs_minor"]
    if not isinstance(ours, int) or ours <= 0:
        return False
    if kind == "rewarded_but_cancelled":
        return True
    return kind == "amount_differs" and isinstance(theirs, int) and theirs < ours
