"""Deciding many conversions at once: the common case in a few statements per group (#18).

Most postbacks are signups and purchases that name their advocate's referral code. For those the
code decides the advocate (whatever else the postback carries), the batch has already read the
code's owner, the program's rules and the advocate's facts (app/services/batch_reads.py), and —
when the program runs no experiment, the order is in the program currency and the fraud rules
have nothing to count (no browser or IP address to compare, no reward cap) — the only numbers
processing needs from PostgreSQL are the customer's earlier rewarded purchases and the
advocate's referrals. A run of such conversions in a lane (`plan` says which) is one group, one
transaction:

1. every lock the group needs — its advocates', customers', e-mails' and orders' keys, the same
   keys the one-by-one path takes — sorted, in one statement;
2. which of them are stored already (a re-delivery), and the two counts of each, a query each;
3. each decided, in stream order, by the same pure domain as one by one (app/attribution/),
   counting the rewards of those before it in the group as the one-by-one path would find them
   committed;
4. the conversions with their outcome, then their rewards with their first ledger entries, a
   statement each, and both announced (the event feed, the webhook deliveries) by a statement
   each instead of their triggers' one per row; the fraud rules' moves and review items for
   those they hold or reject; the orders settled (the pixel's unverified rows superseded,
   waiting refunds applied) in one.

Anything a group holds that cannot be processed fails the group; the caller then processes its
conversions one by one, so that one goes to dead letters alone.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import NamedTuple
from uuid import UUID, uuid4

import asyncpg

from app.attribution import conversions as words
from app.attribution import fraud
from app.attribution.fraud import AdvocateFacts, Decision
from app.attribution.model import Referrer
from app.attribution.rewards import NoReward, RewardDraft, compute_rewards
from app.attribution.rules import ProgramRules
from app.pipeline.events import ConversionEvent
from app.services.batch_reads import BatchReads
from app.services.processing import (
    Device,
    Wanted,
    apply_refund,
    conversion_facts,
    counts_wanted,
    order_key,
    reward_lock_keys,
    sale_of,
)
from app.storage import conversions as repo
from app.storage import events as events_repo
from app.storage import fraud as fraud_repo
from app.storage import review as review_repo
from app.storage import rewards as rewards_repo

# Conversions per group: each holds three or four advisory locks until the group commits.
MOST = 200


class Plan(NamedTuple):
    """A conversion the grouped path can decide, with what the batch read for it."""

    event: ConversionEvent
    advocate: Referrer
    rules_version: int
    rules: ProgramRules
    facts: AdvocateFacts
    wanted: Wanted  # which of the fraud rules' counts it needs (browser, IP prefix)


def plan(reads: BatchReads, e: ConversionEvent) -> Plan | None:
    """The conversion's plan if the grouped path can decide it without a query of its own (see
    the module's docstring); None sends it one by one."""
    if e.type not in ("signup", "purchase") or not e.referral_code:
        return None
    known = reads.prefetched(e.merchant_id, e.referral_code)
    if known is None:
        return None
    advocate, (version, rules), facts = known
    if e.currency and e.amount_minor is not None and e.currency != rules.currency:
        return None  # converted at the merchant's rate of the day: one by one
    device = Device(None, e.ip_hash, e.ip_prefix, e.user_agent)
    wanted = counts_wanted(rules.fraud, None, device, 1)
    # The reward cap counts only when there is a reward, known after the counts: never grouped.
    if wanted.reward_cap:
        return None
    return Plan(e, advocate, version, rules, facts, wanted)


class _Decided(NamedTuple):
    plan: Plan
    decision: Decision
    drafts: list[RewardDraft]
    reason: str


async def process(conn: asyncpg.Connection, plans: list[Plan], decided: list[Decision]) -> int:
    """Store, attribute and reward the group's conversions in the caller's transaction; returns
    how many were new. Their fraud decisions are appended to `decided`."""
    await repo.lock(conn, *(k for p in plans for k in _lock_keys(p)))
    stored = await repo.stored_ids(conn, [p.event.id for p in plans])
    fresh: list[Plan] = []
    for p in plans:  # a re-delivery, or the same event twice in the stream (spooled unchecked)
        if p.event.id not in stored:
            fresh.append(p)
            stored.add(p.event.id)
    if not fresh:
        return 0
    counts = await repo.reward_counts_of(conn, [
        (p.event.merchant_id, p.advocate.program_id, p.advocate.id, p.event.id,
         p.event.customer_id, p.event.customer_email_hash) for p in fresh
    ])  # fmt: skip
    devices = await _device_counts(conn, fresh)
    outcomes: list[_Decided] = []
    earlier = _Earlier()
    for p, (prior, referrals), (shared, velocity) in zip(fresh, counts, devices, strict=True):
        decided_here = _decide(
            p, prior + earlier.purchases(p), referrals + earlier.referrals(p),
            shared or earlier.shared_device(p),
            velocity + earlier.velocity(p) if velocity is not None else None,
        )  # fmt: skip
        earlier.add(decided_here)
        outcomes.append(decided_here)
    await _write(conn, outcomes)
    decided += [o.decision for o in outcomes]
    return len(outcomes)


async def _device_counts(
    conn: asyncpg.Connection, plans: list[Plan]
) -> list[tuple[str | None, int | None]]:
    """What the same-device and velocity rules count, for those that need it (a query each for
    the group): the advocate's own conversions seen with this IP address and user agent, and
    the advocate's conversions from this IP prefix in the rule's days."""
    shared_asked = [p for p in plans if p.wanted.shared_device]
    shared = iter(await fraud_repo.shared_devices(conn, [
        fraud_repo.DeviceQuery(p.event.merchant_id, p.facts, p.event.id, None, p.event.ip_hash,
                               p.event.user_agent)
        for p in shared_asked
    ]))  # fmt: skip
    velocity_asked = [p for p in plans if p.wanted.velocity]
    velocities = iter(await fraud_repo.velocities(conn, [
        fraud_repo.VelocityQuery(p.event.merchant_id, p.advocate.id, p.event.id, None,
                                 p.event.ip_prefix, p.event.occurred_at,
                                 p.rules.fraud.conversion_velocity.days)
        for p in velocity_asked
    ]))  # fmt: skip
    return [
        (next(shared) if p.wanted.shared_device else None,
         next(velocities) if p.wanted.velocity else None)
        for p in plans
    ]  # fmt: skip


def _lock_keys(p: Plan) -> list[str]:
    """The one-by-one path's keys for this conversion (processing.py)."""
    e = p.event
    keys = reward_lock_keys(e, p.advocate.id, p.advocate.program_id)
    if e.order_id:
        keys.append(order_key(e.merchant_id, e.order_id))
    return keys


class _Earlier:
    """What the group's conversions decided so far add to the counts PostgreSQL gave (which
    cannot see them yet): the customers' rewarded purchases, as repo.reward_counts counts them
    (by customer id or by e-mail hash, in the program, one conversion once), the advocates'
    rewards, and what the fraud rules count as fraud_repo counts it: the advocates' conversions
    by IP prefix (velocity) and the conversions by IP address and user agent (the same device
    as the advocate's own)."""

    def __init__(self) -> None:
        self._by_customer: dict[tuple[UUID, UUID, str], set[UUID]] = {}
        self._by_email: dict[tuple[UUID, UUID, bytes], set[UUID]] = {}
        self._advocate_rewards: dict[UUID, int] = {}
        self._by_prefix: dict[tuple[UUID, UUID, str], list[datetime]] = {}
        self._by_device: dict[tuple[UUID, bytes, str], list[ConversionEvent]] = {}

    def purchases(self, p: Plan) -> int:
        e, program = p.event, p.advocate.program_id
        matched: set[UUID] = set()
        if e.customer_id is not None:
            matched |= self._by_customer.get((e.merchant_id, program, e.customer_id), set())
        if e.customer_email_hash is not None:
            matched |= self._by_email.get((e.merchant_id, program, e.customer_email_hash), set())
        return len(matched)

    def referrals(self, p: Plan) -> int:
        return self._advocate_rewards.get(p.advocate.id, 0)

    def velocity(self, p: Plan) -> int:
        e = p.event
        if e.ip_prefix is None:
            return 0
        since = e.occurred_at - timedelta(days=p.rules.fraud.conversion_velocity.days)
        seen = self._by_prefix.get((e.merchant_id, p.advocate.id, e.ip_prefix), [])
        return sum(1 for at in seen if since < at <= e.occurred_at)

    def shared_device(self, p: Plan) -> str | None:
        e, a = p.event, p.facts
        if e.ip_hash is None or e.user_agent is None:
            return None
        for other in self._by_device.get((e.merchant_id, e.ip_hash, e.user_agent), []):
            if (
                (other.customer_id is not None and other.customer_id == a.external_id)
                or (other.customer_email_hash is not None
                    and other.customer_email_hash == a.email_hash)
                or (other.customer_email_canonical is not None
                    and other.customer_email_canonical == a.email_canonical)
            ):  # fmt: skip
                return fraud_repo.SAME_NETWORK
        return None

    def add(self, decided: _Decided) -> None:
        e, program = decided.plan.event, decided.plan.advocate.program_id
        advocate = decided.plan.advocate.id
        # Every conversion is counted by the fraud rules, rewarded or not.
        if e.ip_prefix is not None:
            by_prefix = (e.merchant_id, advocate, e.ip_prefix)
            self._by_prefix.setdefault(by_prefix, []).append(e.occurred_at)
        if e.ip_hash is not None and e.user_agent is not None:
            self._by_device.setdefault((e.merchant_id, e.ip_hash, e.user_agent), []).append(e)
        sides = sum(1 for d in decided.drafts if d.beneficiary == "advocate")
        self._advocate_rewards[advocate] = self._advocate_rewards.get(advocate, 0) + sides
        if e.type != "purchase" or not decided.drafts:
            return
        if e.customer_id is not None:
            self._by_customer.setdefault((e.merchant_id, program, e.customer_id), set()).add(e.id)
        if e.customer_email_hash is not None:
            key = (e.merchant_id, program, e.customer_email_hash)
            self._by_email.setdefault(key, set()).add(e.id)


def _decide(
    p: Plan, prior: int, referrals: int, shared: str | None, velocity: int | None
) -> _Decided:
    e, rules = p.event, p.rules
    drafts = compute_rewards(rules, sale_of(e, prior, referrals))
    no_reward = drafts.reason if isinstance(drafts, NoReward) else None
    rewarded = [] if isinstance(drafts, NoReward) else drafts
    advocate_reward = sum(d.amount_minor for d in rewarded if d.beneficiary == "advocate")
    facts = conversion_facts(e, None, advocate_reward, shared=shared, velocity=velocity)
    decision = fraud.evaluate(rules.fraud, p.facts, facts)
    reason = words.attributed_reason(
        "referral_code", False, no_reward, fraud.decision_reason(decision)
    )
    return _Decided(p, decision, rewarded, reason)


async def _write(conn: asyncpg.Connection, outcomes: list[_Decided]) -> None:
    # The conversions and their rewards announced by a statement each, not a trigger per row.
    await events_repo.announce_by_statement(conn)
    inserted = await repo.insert_attributed(conn, [
        (o.plan.event, o.plan.advocate.program_id, o.plan.advocate.id, o.plan.rules_version,
         o.reason, o.decision) for o in outcomes
    ])  # fmt: skip
    if inserted != len(outcomes):  # stored meanwhile by another flusher: redo one by one
        raise RuntimeError("a conversion of the group was stored meanwhile")
    rewards: list[tuple[UUID, _Decided, RewardDraft]] = [
        (uuid4(), o, d) for o in outcomes for d in o.drafts
    ]
    await rewards_repo.create_rewards(conn, [
        rewards_repo.NewReward(
            id=reward_id, merchant_id=o.plan.event.merchant_id,
            program_id=o.plan.advocate.program_id, advocate_id=o.plan.advocate.id,
            conversion_id=o.plan.event.id, customer_id=o.plan.event.customer_id,
            rules_version=o.plan.rules_version, draft=draft,
            reason=f"{o.plan.event.type} {o.plan.event.order_id or o.plan.event.event_id}",
        )
        for reward_id, o, draft in rewards
    ])  # fmt: skip
    await events_repo.announce_written(
        conn, [o.plan.event.id for o in outcomes], [reward_id for reward_id, _, _ in rewards]
    )
    for reward_id, o, draft in rewards:
        moves = fraud.reward_moves(o.decision, draft.beneficiary, draft.amount_minor)
        if moves:
            await rewards_repo.write_moves(
                conn, reward_id, o.plan.event.merchant_id, moves,
                fraud.decision_reason(o.decision),
            )  # fmt: skip
    for o in outcomes:
        if o.decision.holds and o.drafts:
            e = o.plan.event
            await review_repo.open_item(
                conn, e.merchant_id, o.plan.advocate.program_id, o.plan.advocate.id, e.id,
                o.decision.held_by or ["reward_cap"],
            )  # fmt: skip
    orders = [(o.plan.event.merchant_id, o.plan.event.order_id, o.plan.event.type == "purchase")
              for o in outcomes if o.plan.event.order_id]  # fmt: skip
    if orders:
        waiting = await repo.settle_orders(conn, orders, words.SUPERSEDED_REASON)
        for merchant, order_id, refund in waiting:
            await apply_refund(
                conn, merchant, refund.id, order_id, refund.requested_minor, refund.currency
            )
