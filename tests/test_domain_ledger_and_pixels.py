"""The pure domain without I/O: the ledger's moves, the pixel's evidence, the refund rules."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from uuid import UUID

import pytest

from app.attribution.ledger import (
    LedgerAction,
    Move,
    RewardState,
    current_state,
    empty_balances,
    plan_reversal,
    plan_transition,
)
from app.attribution.pixels import PixelClaim, pixel_evidence
from app.attribution.refunds import currency_refusal, settle_refund

P, A, PAID, REV, REJ = (RewardState.PENDING, RewardState.APPROVED, RewardState.PAID,
                        RewardState.REVERSED, RewardState.REJECTED)  # fmt: skip


def balances(**amounts: int) -> dict[str, int]:
    return {**empty_balances(), **amounts}


@pytest.mark.parametrize(
    ("held", "action", "moves"),
    [
        (balances(pending=1000), LedgerAction.APPROVE, [Move(P, A, 1000)]),
        (balances(approved=1000), LedgerAction.PAY, [Move(A, PAID, 1000)]),
        (balances(pending=300, approved=700), LedgerAction.REJECT,
         [Move(P, REJ, 300), Move(A, REJ, 700)]),
        (balances(paid=1000), LedgerAction.REJECT, []),  # what is paid is clawed back by refunds
        (balances(rejected=1000), LedgerAction.APPROVE, []),
    ],
)  # fmt: skip
def test_a_person_or_a_job_moves_only_what_the_state_machine_allows(
    held: dict[str, int], action: LedgerAction, moves: list[Move]
) -> None:
    assert plan_transition(held, action) == moves


def test_a_reversal_takes_from_pending_then_approved_then_paid() -> None:
    held = balances(pending=100, approved=200, paid=300)
    assert plan_reversal(held, 450) == [Move(P, REV, 100), Move(A, REV, 200), Move(PAID, REV, 150)]
    assert plan_reversal(held, 0) == []


@pytest.mark.parametrize(
    ("held", "state"),
    [
        (balances(pending=1), P), (balances(approved=1, pending=1), A),
        (balances(paid=1, approved=1), PAID), (balances(rejected=5), REJ), (balances(), REV),
    ],
)  # fmt: skip
def test_a_rewards_state_is_where_its_money_is_furthest_along(
    held: dict[str, int], state: RewardState
) -> None:
    assert current_state(held) == state


ORDER = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
BROWSER, OTHER = UUID(int=1), UUID(int=2)


@pytest.mark.parametrize(
    ("claims", "counts", "reason"),
    [
        ([PixelClaim(BROWSER, ORDER + timedelta(seconds=5))], True, ""),
        ([PixelClaim(BROWSER, ORDER - timedelta(minutes=9))], True, ""),  # clock skew
        ([PixelClaim(BROWSER, ORDER - timedelta(hours=2))], False, "before it was placed"),
        ([PixelClaim(BROWSER, ORDER + timedelta(days=2))], False, "more than a day after"),
        ([PixelClaim(BROWSER, ORDER), PixelClaim(OTHER, ORDER)], False, "2 browsers"),
        ([], False, "no referral code, click id or pixel"),
    ],
)
def test_the_pixel_is_evidence_only_from_one_browser_near_the_order_time(
    claims: list[PixelClaim], counts: bool, reason: str
) -> None:
    verdict = pixel_evidence(claims, ORDER)
    assert (verdict.visitor_id == BROWSER) is counts
    assert reason in verdict.reason


def test_refund_settlement_and_the_currency_rule_read_as_a_person_would() -> None:
    assert settle_refund(10_000, 0, None, "1001").applied_minor == 10_000
    partial = settle_refund(10_000, 7_000, 5_000, "1001")
    assert (partial.applied_minor, partial.refused_minor) == (3_000, 2_000)
    assert "2000 refused" in partial.reason
    assert "already refunded in full" in settle_refund(10_000, 10_000, 1, "1001").reason
    assert currency_refusal("USD", "EUR") == "refund currency USD is not the order currency EUR"
    assert currency_refusal(None, "EUR") is None and currency_refusal("EUR", "EUR") is None
