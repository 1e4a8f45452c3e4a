"""Deciding many conversions at once: the common case in a few statements per group (#18).

Most postbacks are signups and purchases that name their advocate's referral code, or the click
id of the referral link's click. For those the batch has already read what decides the advocate
(the code's owner; the click, and its browser's other clicks, for `attribute` to choose from),
the programs' rules and the advocate's facts (app/services/batch_reads.py). When the conversion
is attributed, its program runs no experiment, the order is in the program currency and the
reward cap is off, what processing still needs from PostgreSQL are counts: the customer's
earlier rewarded purchases and the advocate's referrals, and — when the fraud rules have a
browser or IP address to compare — the advocate's own conversions seen with this browser, the
conversions from it (velocity) and the clicks from the click's IP prefix (flood). A run of such
conversions in a lane (`plan` says which) is one group, one transaction. So are those that name
nothing — most of a shop's orders were referred by nobody: with no code (or one that is
nobody's), no click id and an order no browser claimed with the pixel, they are stored in the
group as unattributed, with the reason `attribute` gives, counted only where one by one counts
them (the advocate's own conversions seen from an IP address and browser). In a group:

1. every lock the group needs — its advocates', customers', e-mails' and orders' keys, the same
   keys the one-by-one path takes — sorted, in one statement;
2. which of them are stored already (a re-delivery), and the counts of each, a query per count;
3. each decided, in stream order, by the same pure domain as one by one (app/attribution/),
   counting those before it in the group (their rewards, their browsers) as the one-by-one path
   would find them committed;
4. the conversions with their outcome, then their rewards with their first ledger entries, a
   statement each, and both announced (the event feed, the webhook deliveries) by a statement
   each instead of their triggers' one per row; the fraud rules' moves and review items for
   those they hold or reject; the orders settled (the pixel's unverified rows superseded,
   waiting refunds applied) in one.

Anything a group holds that cannot be processed fails the group; the caller then processes its
conversions one by one, so that one goes to dead letters alone.
"""

from __future__ import annotations

from datetime import timedelta
from typing import NamedTuple
from uuid import UUID, uuid4

import asyncpg

from app.attribution import conversions as words
from app.attribution import fraud
from app.attribution.fraud import AdvocateFacts, Decision
from app.attribution.model import (
    Attributed,
    Click,
    Customer,
    Evidence,
    Method,
    ProgramTerms,
    Referrer,
    attribute,
)
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
    device_of,
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
    method: Method = "referral_code"
    click: Click | None = None  # the click attributed (by click id or cookie) and its details
    click_details: fraud_repo.ClickDetails | None = None
    # The converting browser as the rules see it (and as the conversion stores it): the
    # postback's, or else the attributed click's.
    device: Device = Device(None, None, None, None)


class Unattributed(NamedTuple):
    """A signup or purchase nothing attributes: no code, no click id, and no browser the order
    pixel saw claim its order. Stored with the reason, like any other of the group."""

    event: ConversionEvent
    reason: str


Planned = Plan | Unattributed


def plan(reads: BatchReads, e: ConversionEvent) -> Planned | None:
    """The conversion's plan if the grouped path can decide it without a query of its own (see
    the module's docstring); None sends it one by one."""
    if e.type not in ("signup", "purchase"):
        return None
    if e.referral_code:  # the code decides, whatever else the postback carries
        owner = reads.prefetched_owner(e.merchant_id, e.referral_code)
        if owner is not None:
            return _planned(reads, e, Attributed(owner, "referral_code", None), None)
        # A code that is nobody's: with no click id, nothing attributes it (the pixel's
        # browser counts only when the postback names neither).
        if not e.click_id and reads.prefetched_unknown_code(e.merchant_id, e.referral_code):
            return _unattributed(e)
        return None
    if not e.click_id:
        # Without a code or click id, only the order pixel's browser can attribute it (one by
        # one, which reads that browser's clicks); else nothing does.
        if e.order_id and not reads.prefetched_unclaimed(e.merchant_id, e.order_id):
            return None
        return _unattributed(e)
    clicked = reads.prefetched_click(e.merchant_id, e.click_id, e.occurred_at)
    if clicked is None:
        return None
    found, browser = clicked
    programs = {f.click.advocate.program_id for f in (found, *browser)}
    rules = reads.prefetched_rules(programs)
    if rules is None:
        return None
    terms = {p: ProgramTerms(r.attribution_window_days, r.attribution_model)
             for p, (_, r) in rules.items()}  # fmt: skip
    customer = Customer(e.customer_id, e.customer_email_hash)
    evidence = Evidence(e.occurred_at, customer, None, found.click, tuple(f.click for f in browser))
    result = attribute(evidence, terms)
    if not isinstance(result, Attributed) or result.click is None:
        return None  # not attributed: one by one says why
    details = {f.click.click_id: f.details for f in (found, *browser)}
    return _planned(reads, e, result, details[result.click.click_id])


def _unattributed(e: ConversionEvent) -> Unattributed | None:
    """Stored with the reason the domain gives when there is no evidence."""
    nothing = Evidence(e.occurred_at, Customer(e.customer_id, e.customer_email_hash))
    result = attribute(nothing, {})
    return None if isinstance(result, Attributed) else Unattributed(e, result.reason)


def _planned(
    reads: BatchReads, e: ConversionEvent, result: Attributed,
    click: fraud_repo.ClickDetails | None,
) -> Plan | None:  # fmt: skip
    known = reads.prefetched_terms(result.advocate)
    if known is None:
        return None
    advocate, (version, rules), facts = known
    if e.currency and e.amount_minor is not None and e.currency != rules.currency:
        return None  # converted at the merchant's rate of the day: one by one
    device = device_of(e, click, None)
    wanted = counts_wanted(rules.fraud, click, device, 1)
    # The reward cap counts only when there is a reward, known after the counts: never grouped.
    if wanted.reward_cap:
        return None
    return Plan(e, advocate, version, rules, facts, wanted, result.method, result.click, click,
                device)  # fmt: skip


class _Decided(NamedTuple):
    plan: Plan
    decision: Decision
    drafts: list[RewardDraft]
    reason: str

    @property
    def event(self) -> ConversionEvent:
        return self.plan.event


async def process(
    conn: asyncpg.Connection, plans: list[Planned], decided: list[Decision]
) -> int:  # fmt: skip
    """Store, attribute and reward the group's conversions in the caller's transaction; returns
    how many were new. Their fraud decisions are appended to `decided`."""
    await repo.lock(conn, *(k for p in plans for k in _lock_keys(p)))
    stored = await repo.stored_ids(conn, [p.event.id for p in plans])
    fresh: list[Planned] = []
    for p in plans:  # a re-delivery, or the same event twice in the stream (spooled unchecked)
        if p.event.id not in stored:
            fresh.append(p)
            stored.add(p.event.id)
    if not fresh:
        return 0
    unclaimed = [(p.event.merchant_id, p.event.order_id) for p in fresh
                 if isinstance(p, Unattributed) and p.event.order_id
                 and not p.event.referral_code]  # fmt: skip
    if unclaimed and await repo.claimed_orders(conn, unclaimed):
        # The pixel claimed one of these orders since the batch was read (a pixel earlier in
        # the lane): its browser may attribute it, which one by one reads.
        raise RuntimeError("an order of the group was claimed by the pixel meanwhile")
    attributed = [p for p in fresh if isinstance(p, Plan)]
    counts = await repo.reward_counts_of(conn, [
        (p.event.merchant_id, p.advocate.program_id, p.advocate.id, p.event.id,
         p.event.customer_id, p.event.customer_email_hash) for p in attributed
    ]) if attributed else []  # fmt: skip
    devices = iter(await _device_counts(conn, attributed))
    counted = iter(counts)
    outcomes: list[_Decided | Unattributed] = []
    earlier = _Earlier()
    for p in fresh:
        if isinstance(p, Unattributed):
            earlier.add_unattributed(p)
            outcomes.append(p)
            continue
        (prior, referrals), (shared, flood, velocity) = next(counted), next(devices)
        decided_here = _decide(
            p, prior + earlier.purchases(p), referrals + earlier.referrals(p),
            _same_device(shared, earlier.shared_device(p)) if p.wanted.shared_device else None,
            flood, velocity + earlier.velocity(p) if velocity is not None else None,
        )  # fmt: skip
        earlier.add(decided_here)
        outcomes.append(decided_here)
    await _write(conn, outcomes)
    decided += [o.decision for o in outcomes if isinstance(o, _Decided)]
    return len(outcomes)


async def _device_counts(
    conn: asyncpg.Connection, plans: list[Plan]
) -> list[tuple[str | None, int | None, int | None]]:
    """What the fraud rules count, for those that need it (a query each for the group): the
    advocate's own conversions seen with this browser (our cookie, or IP address and user
    agent), the clicks on the link from the click's IP prefix, and the advocate's conversions
    from this browser or IP prefix in the rule's days."""
    shared = iter(await fraud_repo.shared_devices(conn, [
        fraud_repo.DeviceQuery(p.event.merchant_id, p.facts, p.event.id, p.device.visitor,
                               p.device.ip_hash, p.device.user_agent)
        for p in plans if p.wanted.shared_device
    ]))  # fmt: skip
    floods = iter(await fraud_repo.floods(conn, [
        (p.click_details.link_id, p.click_details.ip_prefix, p.click_details.clicked_at,
         p.rules.fraud.click_flood.minutes)
        for p in plans
        if p.wanted.click_flood and p.click_details and p.click_details.ip_prefix
    ]))  # fmt: skip
    velocities = iter(await fraud_repo.velocities(conn, [
        fraud_repo.VelocityQuery(p.event.merchant_id, p.advocate.id, p.event.id,
                                 p.device.visitor, p.device.ip_prefix, p.event.occurred_at,
                                 p.rules.fraud.conversion_velocity.days)
        for p in plans if p.wanted.velocity
    ]))  # fmt: skip
    return [
        (next(shared) if p.wanted.shared_device else None,
         next(floods) if p.wanted.click_flood else None,
         next(velocities) if p.wanted.velocity else None)
        for p in plans
    ]  # fmt: skip


def _same_device(stored: str | None, in_group: str | None) -> str | None:
    """What of the browser was seen, stored or in the group: the cookie before the network."""
    if fraud_repo.SAME_BROWSER in (stored, in_group):
        return fraud_repo.SAME_BROWSER
    return stored or in_group


def _lock_keys(p: Planned) -> list[str]:
    """The one-by-one path's keys for this conversion (processing.py)."""
    e = p.event
    keys = (
        []
        if isinstance(p, Unattributed)
        else reward_lock_keys(e, p.advocate.id, p.advocate.program_id)
    )
    if e.order_id:
        keys.append(order_key(e.merchant_id, e.order_id))
    return keys


class _Earlier:
    """What the group's conversions decided so far add to the counts PostgreSQL gave (which
    cannot see them yet): the customers' rewarded purchases, as repo.reward_counts counts them
    (by customer id or by e-mail hash, in the program, one conversion once), the advocates'
    rewards, and what the fraud rules count as fraud_repo counts it: the advocates' conversions
    by browser or IP prefix (velocity) and the conversions by browser, or IP address and user
    agent (the same device as the advocate's own)."""

    def __init__(self) -> None:
        self._by_customer: dict[tuple[UUID, UUID, str], set[UUID]] = {}
        self._by_email: dict[tuple[UUID, UUID, bytes], set[UUID]] = {}
        self._advocate_rewards: dict[UUID, int] = {}
        self._of_advocate: dict[tuple[UUID, UUID], list[Plan]] = {}
        self._by_visitor: dict[tuple[UUID, UUID], list[Plan]] = {}
        self._by_network: dict[tuple[UUID, bytes, str], list[Planned]] = {}

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
        e, device = p.event, p.device
        since = e.occurred_at - timedelta(days=p.rules.fraud.conversion_velocity.days)
        return sum(
            1 for other in self._of_advocate.get((e.merchant_id, p.advocate.id), [])
            if since < other.event.occurred_at <= e.occurred_at
            and ((device.visitor is not None and other.device.visitor == device.visitor)
                 or (device.ip_prefix is not None
                     and other.device.ip_prefix == device.ip_prefix))
        )  # fmt: skip

    def shared_device(self, p: Plan) -> str | None:
        e, device, a = p.event, p.device, p.facts

        def own(other: Planned) -> bool:  # the advocate's own conversion, as the query matches it
            c = other.event
            return (
                (c.customer_id is not None and c.customer_id == a.external_id)
                or (c.customer_email_hash is not None and c.customer_email_hash == a.email_hash)
                or (c.customer_email_canonical is not None
                    and c.customer_email_canonical == a.email_canonical)
            )  # fmt: skip

        visitor = device.visitor
        if visitor is not None and any(
            own(o) for o in self._by_visitor.get((e.merchant_id, visitor), [])
        ):
            return fraud_repo.SAME_BROWSER
        if device.ip_hash is not None and device.user_agent is not None:
            network = (e.merchant_id, device.ip_hash, device.user_agent)
            if any(own(o) for o in self._by_network.get(network, [])):
                return fraud_repo.SAME_NETWORK
        return None

    def add_unattributed(self, p: Unattributed) -> None:
        """An unattributed conversion counts only as the advocate's own, seen from its IP
        address and user agent (stored without a visitor, as one by one stores it)."""
        e = p.event
        if e.ip_hash is not None and e.user_agent is not None:
            self._by_network.setdefault((e.merchant_id, e.ip_hash, e.user_agent), []).append(p)

    def add(self, decided: _Decided) -> None:
        e, program = decided.plan.event, decided.plan.advocate.program_id
        advocate, device = decided.plan.advocate.id, decided.plan.device
        # Every conversion is counted by the fraud rules, rewarded or not, with its browser as
        # stored (the postback's, or else its click's).
        self._of_advocate.setdefault((e.merchant_id, advocate), []).append(decided.plan)
        if device.visitor is not None:
            self._by_visitor.setdefault((e.merchant_id, device.visitor), []).append(decided.plan)
        if device.ip_hash is not None and device.user_agent is not None:
            network = (e.merchant_id, device.ip_hash, device.user_agent)
            self._by_network.setdefault(network, []).append(decided.plan)
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
    p: Plan, prior: int, referrals: int, shared: str | None, flood: int | None,
    velocity: int | None,
) -> _Decided:  # fmt: skip
    e, rules = p.event, p.rules
    drafts = compute_rewards(rules, sale_of(e, prior, referrals))
    no_reward = drafts.reason if isinstance(drafts, NoReward) else None
    rewarded = [] if isinstance(drafts, NoReward) else drafts
    advocate_reward = sum(d.amount_minor for d in rewarded if d.beneficiary == "advocate")
    facts = conversion_facts(e, p.click_details, advocate_reward, shared, flood, velocity)
    decision = fraud.evaluate(rules.fraud, p.facts, facts)
    reason = words.attributed_reason(p.method, False, no_reward, fraud.decision_reason(decision))
    return _Decided(p, decision, rewarded, reason)


def _row(o: _Decided | Unattributed) -> repo.DecidedRow:
    if isinstance(o, Unattributed):
        e = o.event  # stored as one by one stores it: the postback's network, no visitor
        return repo.DecidedRow(e, None, None, None, o.reason, None, None, None,
                               (None, e.ip_hash, e.ip_prefix, e.user_agent))  # fmt: skip
    p = o.plan
    return repo.DecidedRow(
        p.event, p.advocate.program_id, p.advocate.id, p.rules_version, o.reason, o.decision,
        p.method, p.click.click_id if p.click else None,
        (p.device.visitor, p.device.ip_hash, p.device.ip_prefix, p.device.user_agent),
    )  # fmt: skip


async def _write(conn: asyncpg.Connection, written: list[_Decided | Unattributed]) -> None:
    # The conversions and their rewards announced by a statement each, not a trigger per row.
    await events_repo.announce_by_statement(conn)
    inserted = await repo.insert_decided(conn, [_row(o) for o in written])
    if inserted != len(written):  # stored meanwhile by another flusher: redo one by one
        raise RuntimeError("a conversion of the group was stored meanwhile")
    outcomes = [o for o in written if isinstance(o, _Decided)]
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
        conn, [o.event.id for o in written], [reward_id for reward_id, _, _ in rewards]
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
    orders = [(o.event.merchant_id, o.event.order_id, o.event.type == "purchase")
              for o in written if o.event.order_id]  # fmt: skip
    if orders:
        waiting = await repo.settle_orders(conn, orders, words.SUPERSEDED_REASON)
        for merchant, order_id, refund in waiting:
            await apply_refund(
                conn, merchant, refund.id, order_id, refund.requested_minor, refund.currency
            )
