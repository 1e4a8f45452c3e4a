"""Payouts, as pure functions: which balances a batch pays (and why the others are not paid),
and amounts written exactly from minor units in each currency's decimals (0, 2 or 3).

A batch line pays, per advocate and currency, every approved amount at or above the program's
minimum, minus what the advocate owes after an earlier clawback (a refund of money already
paid): the debt is netted, never paid as a negative line. The service locks and moves the
ledger; nothing here reads a database.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from uuid import UUID

from iso4217 import Currency

from app.bounds import MAX_AMOUNT_MINOR


@dataclass(frozen=True, slots=True)
class Balance:
    """An advocate's approved rewards in one currency, and what they owe in it."""

    advocate_id: UUID
    currency: str
    approved_minor: int
    owed_minor: int
    reward_ids: tuple[UUID, ...]
    min_payout_minor: int
    has_details: bool


@dataclass(frozen=True, slots=True)
class Line:
    advocate_id: UUID
    currency: str
    gross_minor: int
    clawback_minor: int
    reward_ids: tuple[UUID, ...]

    @property
    def amount_minor(self) -> int:
        return self.gross_minor - self.clawback_minor


@dataclass(frozen=True, slots=True)
class Skipped:
    advocate_id: UUID
    currency: str
    approved_minor: int
    reason: str


@dataclass(frozen=True, slots=True)
class Plan:
    lines: list[Line] = field(default_factory=list)
    skipped: list[Skipped] = field(default_factory=list)


def plan_batch(balances: list[Balance]) -> Plan:
    plan = Plan()
    for b in balances:
        if b.approved_minor <= 0:
            continue
        why = None
        if b.approved_minor < b.min_payout_minor:
            why = f"below the minimum payout of {format_amount(b.min_payout_minor, b.currency)}"
        elif b.approved_minor <= b.owed_minor:
            why = (f"the advocate owes {format_amount(b.owed_minor, b.currency)} after a "
                   "clawback: carried to a later batch")  # fmt: skip
        elif not b.has_details:
            why = "no payout details (set the advocate's payout_email or payout_reference)"
        if why is not None:
            plan.skipped.append(Skipped(b.advocate_id, b.currency, b.approved_minor, why))
            continue
        plan.lines.append(Line(b.advocate_id, b.currency, b.approved_minor, b.owed_minor,
                               b.reward_ids))  # fmt: skip
    return plan


# -- Amounts --------------------------------------------------------------------------------------


def exponent(currency: str) -> int:
    """The currency's ISO 4217 minor units (the maintained `iso4217` package's data; 2 for a
    code it does not know, or one without minor units such as XAU)."""
    try:
        digits = Currency(currency).exponent
    except ValueError:
        return 2
    return 2 if digits is None else int(digits)


def format_amount(minor: int, currency: str) -> str:
    """12345 EUR → "123.45"; 500 JPY → "500"; 1234 KWD → "1.234" (a dot, no grouping)."""
    digits = exponent(currency)
    sign, minor = ("-", -minor) if minor < 0 else ("", minor)
    if digits == 0:
        return f"{sign}{minor}"
    whole, part = divmod(minor, 10**digits)
    return f"{sign}{whole}.{part:0{digits}d}"


def parse_amount(text: str, currency: str) -> int:
    """ "123.45" EUR → 12345, exactly; ValueError for more decimals than the currency has."""
    try:
        value = Decimal(text.strip())
    except InvalidOperation:
        raise ValueError(f"{text!r} is not an amount") from None
    if not value.is_finite() or value < 0:
        raise ValueError(f"{text!r} is not an amount")
    if value.adjusted() > 18:
        raise ValueError(f"{text!r} is beyond any amount we hold")
    minor = value.scaleb(exponent(currency))
    if minor > MAX_AMOUNT_MINOR:
        raise ValueError(f"{text!r} is beyond any amount we hold")
    if minor != minor.to_integral_value():
        raise ValueError(f"{text!r} has more decimals than {currency} has ({exponent(currency)})")
    return int(minor)
