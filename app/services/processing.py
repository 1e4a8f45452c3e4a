"""Processing one conversion from the stream, in the caller's transaction (the flusher's sink,
app/services/conversion_sink.py, holds it; app/services/grouped.py decides the common case many
at once with the same rules): stored once (its id is derived from the merchant's event id, so a
re-delivery is a no-op), attributed from the evidence in PostgreSQL by the pure domain
(app/attribution/), and its rewards (or a refund's reversals) written to the ledger.

Conversions of one order, and rewards counted per customer or per advocate, are decided one at a
time however many flushers run (advisory locks: an order's key first, then customer and advocate
keys sorted, so two transactions never wait on each other in a circle): without, two first
purchases of one customer processed at once would both be "first", and a refund processed beside
its purchase would find no purchase while the purchase found no refund.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from datetime import datetime
from decimal import Decimal
from typing import Any, NamedTuple
from uuid import UUID

import asyncpg

from app.attribution import conversions as words
from app.attribution import fraud
from app.attribution.conversions import ConversionState
from app.attribution.fraud import Decision
from app.attribution.model import (
    Attributed,
    Customer,
    Evidence,
    Method,
    NotAttributed,
    ProgramTerms,
    attribute,
)
from app.attribution.payouts import exponent
from app.attribution.pixels import pixel_evidence
from app.attribution.refunds import currency_refusal, settle_refund
from app.attribution.rewards import (
    NoReward,
    RewardDraft,
    Sale,
    compute_rewards,
    convert,
    renewal_rewards,
)
from app.attribution.rules import ProgramRules
from app.pipeline.events import ConversionEvent, PixelEvent, StreamedConversion
from app.services import experiments as experiments_service
from app.services import rewards as rewards_service
from app.services.batch_reads import BatchReads
from app.storage import conversions as repo
from app.storage import evidence
from app.storage import exchange_rates as rates_repo
from app.storage import fraud as fraud_repo
from app.storage import review as review_repo
from app.storage import rewards as rewards_repo

log = logging.getLogger(__name__)


async def process(
    conn: asyncpg.Connection, event: StreamedConversion, decided: list[Decision] | None = None,
    reads: BatchReads | None = None,
) -> int:  # fmt: skip
    """Store, attribute and reward one conversion; 0 when it was already stored. (The caller
    holds the transaction.) The fraud decision, if any, is appended to `decided`; `reads`: what
    the batch read once for all its conversions (app/services/batch_reads.py)."""
    reads = reads or BatchReads()
    if isinstance(event, PixelEvent):
        return await _record_pixel(conn, event, reads)
    order_id = event.refund_of if event.type == "refund" else event.order_id
    if order_id:
        await repo.lock(conn, order_key(event.merchant_id, order_id))
    if not await repo.insert(conn, event):
        return 0
    if event.type == "refund":
        assert event.refund_of is not None  # intake requires it
        await apply_refund(
            conn, event.merchant_id, event.id, event.refund_of, event.amount_minor, event.currency
        )
        return 1
    if event.type == "renewal":
        decision = await _reward_renewal(conn, event, reads)
    else:
        decision = await _attribute_and_reward(conn, event, reads)
    if decision is not None and decided is not None:
        decided.append(decision)
    if event.order_id:
        waiting_refunds = await repo.settle_order(
            conn, event.merchant_id, event.order_id, words.SUPERSEDED_REASON,
            refunds_wait=event.type in ("purchase", "renewal"),
        )  # fmt: skip
        for waiting in waiting_refunds:
            await apply_refund(
                conn, event.merchant_id, waiting.id, event.order_id, waiting.requested_minor,
                waiting.currency,
            )  # fmt: skip
    return 1


def order_key(merchant: UUID, order_id: str) -> str:
    return f"order:{merchant}:{order_id}"


def reward_lock_keys(e: ConversionEvent, advocate: UUID, program: UUID) -> list[str]:
    """The keys under which the counts of an attributed conversion's rewards are read: its
    advocate's, and its customer's in the program (by id and by e-mail hash)."""
    keys = [f"advocate:{advocate}"]
    if e.customer_id:
        keys.append(f"customer:{program}:{e.customer_id}")
    if e.customer_email_hash:
        keys.append(f"email:{program}:{e.customer_email_hash.hex()}")
    return keys


async def _record_pixel(conn: asyncpg.Connection, pixel: PixelEvent, reads: BatchReads) -> int:
    """Keep the browser's claim on this order; without a signed postback yet, show the order as
    an unverified conversion: attributed by cookie for the statistics (apart from purchases and
    revenue), never rewarded, and only while exactly one browser claims it."""
    merchant, order_id = pixel.merchant_id, pixel.order_id
    await repo.lock(conn, order_key(merchant, order_id))
    if not await repo.insert_pixel_claim(conn, pixel):
        return 0
    if await repo.has_signed_order(conn, merchant, order_id):
        return 1  # the postback was decided on its own evidence; the claim stays on record
    await repo.insert_unverified(conn, pixel, f"{words.PIXEL_EVENT_ID_PREFIX}{order_id}")
    claims = await repo.pixel_claims(conn, merchant, order_id)
    first = claims[0]
    verdict = pixel_evidence(claims, first.seen_at)
    result: Attributed | NotAttributed = NotAttributed(verdict.reason)
    if verdict.visitor_id is not None:
        found = await _evidence(
            conn, reads, merchant, first.seen_at, Customer(None, None), None, None,
            verdict.visitor_id,
        )  # fmt: skip
        _, terms = await _program_terms(conn, reads, found)
        result = attribute(found, terms)
    if isinstance(result, Attributed):
        await repo.set_unverified_outcome(
            conn, merchant, order_id, reason=words.UNVERIFIED_ATTRIBUTED,
            program=result.advocate.program_id, advocate=result.advocate.id,
            click=result.click.click_id if result.click else None,
        )  # fmt: skip
    else:
        await repo.set_unverified_outcome(
            conn, merchant, order_id, reason=words.unverified_reason(result.reason)
        )
    return 1


async def _evidence(
    conn: asyncpg.Connection,
    reads: BatchReads,
    merchant: UUID,
    occurred_at: Any,
    customer: Customer,
    referral_code: str | None,
    click_id: str | None,
    visitor: UUID | None,
) -> Evidence:
    """The evidence PostgreSQL holds: the typed code's owner, the click the click id names, and
    every click of the browser (from the click, or the given visitor)."""
    code_advocate = await reads.code_owner(conn, merchant, referral_code) if referral_code else None
    click = None
    if click_id:
        found = await evidence.click_by_id(conn, merchant, click_id)
        if found is not None:
            click, visitor = found
    browser = await evidence.browser_clicks(conn, merchant, visitor, occurred_at) if visitor else ()
    return Evidence(occurred_at, customer, code_advocate, click, browser)


async def _program_terms(
    conn: asyncpg.Connection, reads: BatchReads, found: Evidence
) -> tuple[dict[UUID, tuple[int, ProgramRules]], dict[UUID, ProgramTerms]]:
    """The current rules of every program the evidence points at, and their attribution terms."""
    programs = {c.advocate.program_id for c in (found.click, *found.browser_clicks) if c}
    if found.code_advocate:
        programs.add(found.code_advocate.program_id)
    rules = await reads.rules(conn, programs)
    terms = {
        p: ProgramTerms(r.attribution_window_days, r.attribution_model)
        for p, (_, r) in rules.items()
    }
    return rules, terms


async def _attribute_and_reward(
    conn: asyncpg.Connection, e: ConversionEvent, reads: BatchReads
) -> Decision | None:
    """Attribute the conversion, compute its rewards, let the fraud rules decide, and write the
    rewards with the decision's moves; returns the decision (None when not attributed)."""
    customer = Customer(e.customer_id, e.customer_email_hash)
    # The pixel's browser is evidence only when the postback brings none of its own.
    visitor, pixel_reason = None, ""
    if not e.click_id and not e.referral_code and e.order_id:
        claims = await repo.pixel_claims(conn, e.merchant_id, e.order_id)
        if claims:
            verdict = pixel_evidence(claims, e.occurred_at)
            visitor, pixel_reason = verdict.visitor_id, verdict.reason
    found = await _evidence(
        conn, reads, e.merchant_id, e.occurred_at, customer, e.referral_code, e.click_id, visitor
    )
    rules, terms = await _program_terms(conn, reads, found)
    result = attribute(found, terms)
    if not isinstance(result, Attributed):
        await repo.set_reason(conn, e.id, pixel_reason or result.reason)
        if visitor is not None:  # kept: the advocate's own browser, should this be theirs
            await fraud_repo.set_browser(conn, e.id, visitor)
        return None
    advocate = result.advocate
    if advocate.program_id not in rules:
        await repo.set_reason(conn, e.id, words.NO_RULES)  # stated, not a crash
        return None
    version, program_rules = rules[advocate.program_id]
    # A running experiment gives the advocate their variant's rules (rewards and fraud rules).
    offer = await experiments_service.offer_for(conn, advocate.program_id, advocate.id, reads)
    if offer is not None:
        program_rules = offer[2]
    # Counted per customer and per advocate: decided one conversion at a time.
    await repo.lock(conn, *reward_lock_keys(e, advocate.id, advocate.program_id))
    priced, fx = await _in_program_currency(conn, e, program_rules.currency)
    prior_purchases, referrals = await repo.reward_counts(
        conn, e.merchant_id, advocate.program_id, advocate.id, e.id, e.customer_id,
        e.customer_email_hash,
    )  # fmt: skip
    sale = sale_of(priced, prior_purchases, referrals)
    click = await fraud_repo.click_details(conn, result.click.click_id) if result.click else None
    device = device_of(e, click, visitor)
    return await _reward(
        conn, reads, priced,
        Credit(advocate.id, advocate.program_id, version, program_rules, offer, fx),
        compute_rewards(program_rules, sale), click, device, result.method, visitor is not None,
        result.click.click_id if result.click else None,
    )  # fmt: skip


def sale_of(priced: ConversionEvent, prior_purchases: int, referrals: int) -> Sale:
    """What the reward rules see of a signup or purchase (priced in the program currency)."""
    return Sale(
        type="purchase" if priced.type == "purchase" else "signup",
        amount_minor=priced.amount_minor or 0,
        currency=priced.currency,
        occurred_at=priced.occurred_at,
        prior_rewarded_purchases=prior_purchases,
        advocate_successful_referrals=referrals,
        customer_known=bool(priced.customer_id or priced.customer_email_hash),
    )


@dataclass(frozen=True, slots=True)
class Credit:
    """Who is credited, in which program, under which rules (the experiment's variant, if any),
    and the exchange rate an order in another currency was converted at."""

    advocate_id: UUID
    program_id: UUID
    rules_version: int
    rules: ProgramRules
    offer: tuple[UUID, str, ProgramRules] | None
    fx: tuple[Decimal, str, int] | None  # rate, order currency, order amount


async def _reward(
    conn: asyncpg.Connection, reads: BatchReads, e: ConversionEvent, credit: Credit,
    drafts: list[RewardDraft] | NoReward, click: fraud_repo.ClickDetails | None, device: Device,
    method: Method, by_pixel: bool, click_id: UUID | None,
) -> Decision:  # fmt: skip
    """The fraud rules' decision on the rewards, the rewards with the decision's moves, and the
    conversion's outcome — for any attributed conversion (`e` priced in the program currency)."""
    rules = credit.rules
    no_reward = drafts.reason if isinstance(drafts, NoReward) else None
    rewarded = [] if isinstance(drafts, NoReward) else drafts
    variant = (credit.offer[0], credit.offer[1]) if credit.offer is not None else None
    advocate_reward = sum(d.amount_minor for d in rewarded if d.beneficiary == "advocate")
    facts = await gather_facts(
        conn,
        rules,
        e,
        credit.advocate_id,
        click,
        device,
        advocate_reward,
        rules.currency,
        reads=reads,
    )
    decision = fraud.evaluate(rules.fraud, facts.advocate, facts.conversion)
    for draft in rewarded:
        reward_id = await rewards_repo.create_reward(
            conn,
            merchant_id=e.merchant_id,
            program_id=credit.program_id,
            advocate_id=credit.advocate_id,
            conversion_id=e.id,
            customer_id=e.customer_id,
            rules_version=credit.rules_version,
            draft=draft,
            reason=f"{e.type} {e.order_id or e.event_id}",
            fx=credit.fx,
            variant=variant,
        )
        moves = fraud.reward_moves(decision, draft.beneficiary, draft.amount_minor)
        if moves:
            await rewards_repo.write_moves(
                conn, reward_id, e.merchant_id, moves, fraud.decision_reason(decision)
            )
    await repo.set_attributed(
        conn, e.id, program=credit.program_id, advocate=credit.advocate_id, click=click_id,
        method=method,
        reason=words.attributed_reason(method, by_pixel, no_reward,
                                       fraud.decision_reason(decision)),
        rules_version=credit.rules_version, decision=decision,
        device=(device.visitor, device.ip_hash, device.ip_prefix, device.user_agent),
        variant=variant,
    )  # fmt: skip
    if decision.holds and rewarded:
        await review_repo.open_item(
            conn, e.merchant_id, credit.program_id, credit.advocate_id, e.id,
            decision.held_by or ["reward_cap"],
        )  # fmt: skip
    return decision


async def _in_program_currency(
    conn: asyncpg.Connection, e: ConversionEvent, currency: str
) -> tuple[ConversionEvent, tuple[Decimal, str, int] | None]:
    """The conversion priced in the program currency, at the merchant's exchange rate for its
    day (and the rate used); unchanged when it is already, or when no rate was posted."""
    if not e.currency or e.currency == currency or e.amount_minor is None:
        return e, None
    rate = await rates_repo.rate(conn, e.merchant_id, e.currency, currency, e.occurred_at.date())
    if rate is None:
        return e, None
    converted = convert(e.amount_minor, exponent(e.currency), exponent(currency), rate)
    return replace(e, amount_minor=converted, currency=currency), (rate, e.currency,
                                                                   e.amount_minor)  # fmt: skip


async def _reward_renewal(
    conn: asyncpg.Connection, e: ConversionEvent, reads: BatchReads
) -> Decision | None:
    """A renewal earns the advocate of its subscription's first purchase their recurring
    commission (no click needed); the subscription's renewals are decided one at a time."""
    assert e.subscription_id is not None  # intake requires it
    await repo.lock(conn, f"subscription:{e.merchant_id}:{e.subscription_id}")
    first = await repo.first_purchase_of(conn, e.merchant_id, e.subscription_id)
    if first is None:
        await repo.set_reason(conn, e.id, words.no_subscription_purchase(e.subscription_id))
        return None
    if first.advocate_id is None or first.program_id is None:
        await repo.set_reason(conn, e.id, words.SUBSCRIPTION_NOT_REFERRED)
        return None
    rules = await reads.rules(conn, [first.program_id])
    if first.program_id not in rules:
        await repo.set_reason(conn, e.id, words.NO_RULES)
        return None
    version, program_rules = rules[first.program_id]
    offer = await experiments_service.offer_for(conn, first.program_id, first.advocate_id, reads)
    if offer is not None:
        program_rules = offer[2]
    await repo.lock(conn, f"advocate:{first.advocate_id}")
    priced, fx = await _in_program_currency(conn, e, program_rules.currency)
    earlier = await repo.rewarded_renewals(conn, e.merchant_id, e.subscription_id, e.id)
    drafts = renewal_rewards(
        program_rules, priced.amount_minor or 0, priced.currency, e.occurred_at,
        first.occurred_at, earlier,
    )  # fmt: skip
    device = Device(None, e.ip_hash, e.ip_prefix, e.user_agent)
    credit = Credit(first.advocate_id, first.program_id, version, program_rules, offer, fx)
    return await _reward(
        conn, reads, priced, credit, drafts, None, device, "subscription", False, None
    )


@dataclass(frozen=True, slots=True)
class Device:
    """The converting browser as the rules see it: the postback's, or else its click's."""

    visitor: UUID | None
    ip_hash: bytes | None
    ip_prefix: str | None
    user_agent: str | None


def device_of(
    e: ConversionEvent, click: fraud_repo.ClickDetails | None, visitor: UUID | None
) -> Device:
    """The converting browser as the rules see it (and the conversion stores it): the
    postback's, or else the attributed click's; the click's browser, or else `visitor` (the
    order pixel's)."""
    return Device(
        visitor=click.visitor_id if click and click.visitor_id else visitor,
        ip_hash=e.ip_hash or (click.ip_hash if click else None),
        ip_prefix=e.ip_prefix or (click.ip_prefix if click else None),
        user_agent=e.user_agent or (click.user_agent if click else None),
    )


@dataclass(frozen=True, slots=True)
class Facts:
    advocate: fraud.AdvocateFacts
    conversion: fraud.ConversionFacts


async def gather_facts(
    conn: asyncpg.Connection | asyncpg.Pool, rules: ProgramRules, e: ConversionEvent,
    advocate_id: UUID, click: fraud_repo.ClickDetails | None, device: Device,
    advocate_reward_minor: int, currency: str, until: datetime | None = None,
    reads: BatchReads | None = None,
) -> Facts:  # fmt: skip
    """What the fraud rules read about one conversion, counted as far as their thresholds need
    (a rule that is off costs no query). `until` bounds the reward cap's period (the preview
    counts only earlier conversions)."""
    config = rules.fraud
    advocate = await (reads or BatchReads()).advocate_facts(conn, advocate_id)
    wanted = counts_wanted(config, click, device, advocate_reward_minor)
    shared = None
    if wanted.shared_device:
        shared = await fraud_repo.shared_device(
            conn, e.merchant_id, advocate, e.id, device.visitor, device.ip_hash, device.user_agent
        )
    flood = None
    if wanted.click_flood:
        assert click is not None and click.ip_prefix is not None  # what it counts by
        flood = await fraud_repo.flood_clicks(
            conn, click.link_id, click.ip_prefix, click.clicked_at, config.click_flood.minutes
        )
    velocity = None
    if wanted.velocity:
        velocity = await fraud_repo.velocity(
            conn, e.merchant_id, advocate_id, e.id, device.visitor, device.ip_prefix,
            e.occurred_at, config.conversion_velocity.days,
        )  # fmt: skip
    so_far = 0
    if wanted.reward_cap:
        start, end = fraud.cap_period(config.reward_cap.period, e.occurred_at)
        so_far = await fraud_repo.period_rewards(
            conn, e.merchant_id, advocate_id, e.id, currency, start, min(end, until or end)
        )
    return Facts(
        advocate,
        conversion_facts(e, click, advocate_reward_minor, shared, flood, velocity, so_far),
    )


class Wanted(NamedTuple):
    """The counts the fraud rules need for one conversion."""

    shared_device: bool
    click_flood: bool
    velocity: bool
    reward_cap: bool


def counts_wanted(
    config: fraud.FraudRules, click: fraud_repo.ClickDetails | None, device: Device,
    advocate_reward_minor: int,
) -> Wanted:  # fmt: skip
    """A rule that is off, or has nothing to count by, costs no query."""
    off = fraud.RuleAction.OFF
    return Wanted(
        shared_device=config.same_device_as_advocate.action != off
        and (device.visitor is not None or (device.ip_hash is not None
                                            and device.user_agent is not None)),
        click_flood=config.click_flood.action != off and click is not None
        and click.ip_prefix is not None,
        velocity=config.conversion_velocity.action != off
        and bool(device.visitor or device.ip_prefix),
        reward_cap=config.reward_cap.action != off and bool(advocate_reward_minor),
    )  # fmt: skip


def conversion_facts(
    e: ConversionEvent, click: fraud_repo.ClickDetails | None, advocate_reward_minor: int,
    shared: str | None = None, flood: int | None = None, velocity: int | None = None,
    period_rewards_minor: int = 0,
) -> fraud.ConversionFacts:  # fmt: skip
    """The conversion as the fraud rules see it, with the counts read for it."""
    return fraud.ConversionFacts(
        type=e.type, occurred_at=e.occurred_at, amount_minor=e.amount_minor or 0,
        currency=e.currency, customer_id=e.customer_id, email_hash=e.customer_email_hash,
        email_canonical=e.customer_email_canonical, email_near=frozenset(e.customer_email_near),
        email_disposable=e.customer_email_disposable,
        clicked_at=click.clicked_at if click else None,
        ad_click_param=click.ad_click_param if click else None,
        shared_device=shared, flood_clicks=flood, velocity_conversions=velocity,
        period_rewards_minor=period_rewards_minor, advocate_reward_minor=advocate_reward_minor,
    )  # fmt: skip


async def apply_refund(
    conn: asyncpg.Connection,
    merchant: UUID,
    refund_id: UUID,
    refund_of: str,
    requested_minor: int | None,
    currency: str | None,
) -> None:
    """Match the refund to its signed purchase, cap it at what is left of the order, and
    reverse that share of the order's rewards. (The caller holds the order's lock.)"""
    purchase = await repo.signed_purchase(conn, merchant, refund_of)
    if purchase is None:
        await repo.set_refund_outcome(
            conn, refund_id, ConversionState.REFUND_UNMATCHED, words.no_purchase_yet(refund_of)
        )
        return
    if (refusal := currency_refusal(currency, purchase.currency)) is not None:
        await repo.set_refund_outcome(conn, refund_id, ConversionState.REFUND_UNMATCHED, refusal)
        return
    earlier = await repo.refunded_total(conn, merchant, refund_of, excluding=refund_id)
    order = purchase.amount_minor
    settlement = settle_refund(order, earlier, requested_minor, refund_of)
    if settlement.applied_minor == 0:
        await repo.set_refund_outcome(
            conn, refund_id, ConversionState.REFUND_REFUSED, settlement.reason, purchase, 0
        )
        return
    reversed_now = await rewards_service.reverse_order_share(
        conn, merchant, purchase, earlier + settlement.applied_minor,
        f"refund of {settlement.applied_minor} of order {refund_of}", refund_id,
    )  # fmt: skip
    await repo.set_refund_outcome(
        conn, refund_id, ConversionState.REFUNDED,
        words.refund_applied(settlement.reason, reversed_now), purchase,
        settlement.applied_minor,
    )  # fmt: skip
