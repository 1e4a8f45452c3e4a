"""The reward ledger's states and the moves between them: one state machine for the routes, the
scheduler, refunds, payouts and statistics.

A reward's amount in a state is what entered the state minus what left it (entries are never
changed). Creating a reward puts its amount in `pending`; approval moves it to `approved`,
payout to `paid` (directly, or through `reserved` while it is in a payout batch: completed →
`paid`, failed → `approved` again). A fraud rule may move it (or part of it) to `held`, where it
waits for a person — the scheduler never approves what is held — who releases it back to
`pending` (its normal hold goes on) or rejects it; a person may reject what is pending, held or
approved. A refund moves a share to `reversed` from wherever it sits (pending, held, approved,
then paid or reserved: a clawback, which the advocate then owes). Pure functions over balances;
the caller writes the entries they return.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class RewardState(StrEnum):
    PENDING = "pending"
    HELD = "held"  # waiting for a person's review (app/services/review.py)
    APPROVED = "approved"
    RESERVED = "reserved"  # in a payout batch not yet completed or failed
    PAID = "paid"
    REVERSED = "reversed"
    REJECTED = "rejected"


STATES: tuple[RewardState, ...] = tuple(RewardState)
Balances = dict[str, int]  # state name -> minor units


class LedgerAction(StrEnum):
    """Moves a person or a job makes (a refund's reversal is `plan_reversal`)."""

    APPROVE = "approve"  # the hold is over
    PAY = "pay"
    REJECT = "reject"
    HOLD = "hold"  # for review
    RELEASE = "release"  # reviewed: back to pending, to its normal hold
    REFUSE = "refuse"  # reviewed: what waits (pending, held) is rejected; approved stays
    RESERVE = "reserve"  # gathered into a payout batch
    SETTLE = "settle"  # the batch's line completed: paid
    RETURN = "return"  # the line failed: approved again


# Where each transition takes money from, and where it puts it.
MOVES: dict[LedgerAction, tuple[tuple[RewardState, ...], RewardState]] = {
    LedgerAction.APPROVE: ((RewardState.PENDING,), RewardState.APPROVED),
    LedgerAction.PAY: ((RewardState.APPROVED,), RewardState.PAID),
    LedgerAction.REJECT: (
        (RewardState.PENDING, RewardState.HELD, RewardState.APPROVED),
        RewardState.REJECTED,
    ),
    LedgerAction.HOLD: ((RewardState.PENDING,), RewardState.HELD),
    LedgerAction.RELEASE: ((RewardState.HELD,), RewardState.PENDING),
    LedgerAction.REFUSE: ((RewardState.PENDING, RewardState.HELD), RewardState.REJECTED),
    LedgerAction.RESERVE: ((RewardState.APPROVED,), RewardState.RESERVED),
    LedgerAction.SETTLE: ((RewardState.RESERVED,), RewardState.PAID),
    LedgerAction.RETURN: ((RewardState.RESERVED,), RewardState.APPROVED),
}
# Where a reversal takes money from, in order.
# What was paid, or is in a payout in flight, is taken last. Taken from paid, it is a clawback
# the advocate owes at once (app/services/payouts.py nets it in their next payout). Taken from
# reserved, it is owed only if that line is then paid: a line that fails sent nothing, so the
# debt is recorded when the line settles, never before (else a later line could net a debt that
# a failed line then cancels, and pay the advocate short).
REVERSIBLE: tuple[RewardState, ...] = (
    RewardState.PENDING, RewardState.HELD, RewardState.APPROVED, RewardState.PAID,
    RewardState.RESERVED,
)  # fmt: skip
CLAWBACK_SOURCES = (RewardState.PAID,)


@dataclass(frozen=True, slots=True)
class Move:
    """One ledger entry to write: `amount_minor` from `source` to `target`."""

    source: RewardState
    target: RewardState
    amount_minor: int


def empty_balances() -> Balances:
    return {state.value: 0 for state in STATES}


def plan_transition(balance: Balances, transition: LedgerAction) -> list[Move]:
    """Everything the reward holds in the transition's sources, moved to its target."""
    sources, target = MOVES[transition]
    return [Move(s, target, balance[s]) for s in sources if balance[s] > 0]


def plan_reversal(balance: Balances, amount_minor: int) -> list[Move]:
    """Take `amount_minor` to reversed, in the order of REVERSIBLE (pending first)."""
    moves, remaining = [], amount_minor
    for state in REVERSIBLE:
        take = min(remaining, balance[state])
        if take > 0:
            moves.append(Move(state, RewardState.REVERSED, take))
            remaining -= take
    return moves


def current_state(balance: Balances) -> RewardState:
    """The state holding the reward's money (the furthest along), or where it all went."""
    for state in (RewardState.PAID, RewardState.RESERVED, RewardState.APPROVED, RewardState.HELD,
                  RewardState.PENDING):  # fmt: skip
        if balance[state] > 0:
            return state
    return RewardState.REJECTED if balance[RewardState.REJECTED] > 0 else RewardState.REVERSED
