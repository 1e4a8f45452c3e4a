"""Processing a conversion from the stream: the flusher's sink for "conversions".

A flusher processes a batch's conversions in a few lanes at once (`CONVERSION_WORKERS`), each
conversion in its own transaction (one that fails goes alone to dead_letters): stored once (its
id is derived from the merchant's event id, so a re-delivery is a no-op), attributed from the
evidence in PostgreSQL by the pure domain (app/attribution/), and its rewards (or a refund's
reversals) written to the ledger. Before a batch is processed, the sink waits until every click
that entered the Redis click streams before the batch's conversions entered theirs has been
stored, so a conversion posted a millisecond after its click still finds it. (Both times are
Redis's, from the entry ids. The API keeps the order when Redis fails: while clicks wait in its
spool, conversions are spooled behind them.)

Conversions of one order, and rewards counted per customer or per advocate, are decided one at a
time however many flushers run (advisory locks: an order's key first, then customer and advocate
keys sorted, so two transactions never wait on each other in a circle): without, two first
purchases of one customer processed at once would both be "first", and a refund processed beside
its purchase would find no purchase while the purchase found no refund.
"""

from __future__ import annotations

import asyncio
import logging
import time
import zlib
from dataclasses import dataclass, field, replace
from datetime import datetime
from decimal import Decimal
from typing import Any, cast
from uuid import UUID

import asyncpg

from app import metrics
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
from app.pipeline import keys
from app.pipeline.events import ConversionEvent, PixelEvent, StreamedConversion, decode_conversion
from app.pipeline.flusher import Batch, RetryLater, entry_ms
from app.pipeline.redis_client import RedisClient
from app.services import experiments as experiments_service
from app.services import rewards as rewards_service
from app.services.batch_reads import BatchReads
from app.storage import conversions as repo
from app.storage import dead_letters, evidence
from app.storage import exchange_rates as rates_repo
from app.storage import fraud as fraud_repo
from app.storage import review as review_repo
from app.storage import rewards as rewards_repo
from app.storage.db import is_transient

log = logging.getLogger(__name__)


class ConversionSink:
    def __init__(
        self,
        redis: RedisClient,
        click_streams: list[str],
        wait_seconds: float = 10.0,
        stream: str = "conversions",
        dsn: str | None = None,
        workers: int = 1,
    ) -> None:
        self._redis = redis
        self._click_streams = click_streams
        self._wait_seconds = wait_seconds
        self._stream = stream
        self._processed: list[UUID] = []
        self._dsn = dsn
        self._workers = workers if dsn else 1
        # The lanes' own connections beyond the flusher's (opened on first use).
        self._connections: list[asyncpg.Connection] = []

    async def prepare(self, conn: asyncpg.Connection) -> None:
        return None

    async def _clicks_flushed_until(self, entered_ms: int) -> None:
        """Wait until the click streams hold nothing that entered them by `entered_ms`
        (acknowledged clicks are deleted, so a stream's first entry is its oldest click not yet
        stored)."""
        deadline = time.monotonic() + self._wait_seconds
        while True:
            heads = [await self._redis.xrange(s, count=1) for s in self._click_streams]
            if all(not h or entry_ms(cast(bytes, h[0][0])) > entered_ms for h in heads):
                return
            if time.monotonic() > deadline:
                raise RetryLater("clicks older than these conversions are not stored yet")
            await asyncio.sleep(0.02)

    def before_ack(self, pipe: Any) -> None:
        """Processed conversions are in PostgreSQL now: drop their "queued" marks (one DEL: they
        share the conversion stream's hash slot)."""
        if self._processed:
            pipe.delete(*(keys.conversion_queued(self._stream, c) for c in self._processed))
        self._processed = []

    async def store(self, conn: asyncpg.Connection, batch: Batch) -> int:
        """Process the batch in up to `workers` lanes at once, one PostgreSQL connection each
        (the time goes to round trips, not to Python: one lane waits on PostgreSQL most of the
        time). Each conversion in a transaction of its own, so no transaction holds the locks of
        two conversions (two lanes could then wait on each other). The conversions of one order
        or customer share a lane, in stream order. A transient failure (outage, deadlock,
        failover) in any lane stops them all, and the flusher retries the batch: storing is
        idempotent."""
        await self._clicks_flushed_until(batch.entered_until_ms())
        self._processed = []
        lanes: list[list[dict[str, Any]]] = [[] for _ in range(self._workers)]
        for raw in batch.events:
            lanes[_lane_of(raw, self._workers)].append(raw)
        busy = [lane for lane in lanes if lane]
        connections = [conn, *await self._lane_connections(len(busy) - 1)]
        outcomes = [_Lane() for _ in busy]
        try:
            async with asyncio.TaskGroup() as group:
                for lane, connection, outcome in zip(busy, connections, outcomes, strict=False):
                    group.create_task(self._process_lane(connection, lane, outcome))
        except BaseException as exc:
            await self._drop_lane_connections()  # their state is unknown after a cancel
            failures = exc.exceptions if isinstance(exc, BaseExceptionGroup) else [exc]
            raise failures[0] from None
        for outcome in outcomes:
            self._processed += outcome.processed
            _count_decisions(outcome.decided)  # committed
        return sum(outcome.stored for outcome in outcomes)

    async def _process_lane(
        self, conn: asyncpg.Connection, events: list[dict[str, Any]], out: _Lane
    ) -> None:
        decoded: list[tuple[dict[str, Any], StreamedConversion | Exception]] = []
        for raw in events:
            try:
                decoded.append((raw, decode_conversion(raw)))
            except Exception as exc:  # dead-lettered below, in its turn
                decoded.append((raw, exc))
        reads = BatchReads()
        await reads.prefetch(conn, (e for _, e in decoded if isinstance(e, ConversionEvent)))
        for raw, event in decoded:
            try:
                if isinstance(event, Exception):
                    raise event
                decided: list[Decision] = []
                async with conn.transaction():
                    out.stored += await process(conn, event, decided, reads)
                if isinstance(event, ConversionEvent):
                    out.processed.append(event.id)
                out.decided += decided
            except Exception as exc:
                if is_transient(exc):
                    raise  # outage, deadlock, failover: the flusher retries the batch
                # One conversion that cannot be processed must not hold back the others: it is
                # set aside, with the error, for a person to look at and replay.
                log.exception("conversion moved to dead letters", extra={"id": raw.get("id")})
                await dead_letters.add(conn, self._stream, [raw], repr(exc))

    async def _lane_connections(self, n: int) -> list[asyncpg.Connection]:
        self._connections = [c for c in self._connections if not c.is_closed()]
        while len(self._connections) < n:
            assert self._dsn is not None  # workers > 1 only with a dsn
            self._connections.append(await asyncpg.connect(self._dsn, command_timeout=60))
        return self._connections[:n]

    async def _drop_lane_connections(self) -> None:
        for connection in self._connections:
            connection.terminate()
        self._connections = []


@dataclass
class _Lane:
    stored: int = 0
    processed: list[UUID] = field(default_factory=list)
    decided: list[Decision] = field(default_factory=list)


def _lane_of(raw: dict[str, Any], lanes: int) -> int:
    """The lane of a conversion: by its order (a refund by the order it refunds), else its
    customer, else its subscription; pixels by their order. (Advocates are known only once
    attributed; their locks are taken one conversion at a time.)"""
    if lanes == 1:
        return 0
    key = (raw.get("refund_of") or raw.get("order_id") or raw.get("customer_id")
           or raw.get("subscription_id") or raw.get("id") or "")  # fmt: skip
    return zlib.crc32(f"{raw.get('merchant_id')}:{key}".encode()) % lanes


def _count_decisions(decisions: list[Decision]) -> None:
    for decision in decisions:
        for finding in decision.findings:
            metrics.fraud_decisions.labels(finding.rule, finding.action.value).inc()


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
        await repo.lock(conn, _order_key(event.merchant_id, order_id))
    if not await repo.insert(conn, event):
        return 0
    if event.type == "refund":
        assert event.refund_of is not None  # intake requires it
        await _apply_refund(
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
            await _apply_refund(
                conn, event.merchant_id, waiting.id, event.order_id, waiting.requested_minor,
                waiting.currency,
            )  # fmt: skip
    return 1


def _order_key(merchant: UUID, order_id: str) -> str:
    return f"order:{merchant}:{order_id}"


async def _record_pixel(conn: asyncpg.Connection, pixel: PixelEvent, reads: BatchReads) -> int:
    """Keep the browser's claim on this order; without a signed postback yet, show the order as
    an unverified conversion: attributed by cookie for the statistics (apart from purchases and
    revenue), never rewarded, and only while exactly one browser claims it."""
    merchant, order_id = pixel.merchant_id, pixel.order_id
    await repo.lock(conn, _order_key(merchant, order_id))
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
    lock_keys = [f"advocate:{advocate.id}"]
    if e.customer_id:
        lock_keys.append(f"customer:{advocate.program_id}:{e.customer_id}")
    if e.customer_email_hash:
        lock_keys.append(f"email:{advocate.program_id}:{e.customer_email_hash.hex()}")
    await repo.lock(conn, *lock_keys)
    priced, fx = await _in_program_currency(conn, e, program_rules.currency)
    prior_purchases, referrals = await repo.reward_counts(
        conn, e.merchant_id, advocate.program_id, advocate.id, e.id, e.customer_id,
        e.customer_email_hash,
    )  # fmt: skip
    sale = Sale(
        type="purchase" if e.type == "purchase" else "signup",
        amount_minor=priced.amount_minor or 0,
        currency=priced.currency,
        occurred_at=found.occurred_at,
        prior_rewarded_purchases=prior_purchases,
        advocate_successful_referrals=referrals,
        customer_known=bool(e.customer_id or e.customer_email_hash),
    )
    click = await fraud_repo.click_details(conn, result.click.click_id) if result.click else None
    device = Device(
        visitor=click.visitor_id if click and click.visitor_id else visitor,
        ip_hash=e.ip_hash or (click.ip_hash if click else None),
        ip_prefix=e.ip_prefix or (click.ip_prefix if click else None),
        user_agent=e.user_agent or (click.user_agent if click else None),
    )
    return await _reward(
        conn, reads, priced,
        Credit(advocate.id, advocate.program_id, version, program_rules, offer, fx),
        compute_rewards(program_rules, sale), click, device, result.method, visitor is not None,
        result.click.click_id if result.click else None,
    )  # fmt: skip


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
    shared = None
    if config.same_device_as_advocate.action != fraud.RuleAction.OFF:
        shared = await fraud_repo.shared_device(
            conn, e.merchant_id, advocate, e.id, device.visitor, device.ip_hash, device.user_agent
        )
    flood = None
    if config.click_flood.action != fraud.RuleAction.OFF and click and click.ip_prefix:
        flood = await fraud_repo.flood_clicks(
            conn, click.link_id, click.ip_prefix, click.clicked_at, config.click_flood.minutes
        )
    velocity = None
    rule = config.conversion_velocity
    if rule.action != fraud.RuleAction.OFF and (device.visitor or device.ip_prefix):
        velocity = await fraud_repo.velocity(
            conn, e.merchant_id, advocate_id, e.id, device.visitor, device.ip_prefix,
            e.occurred_at, rule.days,
        )  # fmt: skip
    so_far = 0
    if config.reward_cap.action != fraud.RuleAction.OFF and advocate_reward_minor:
        start, end = fraud.cap_period(config.reward_cap.period, e.occurred_at)
        so_far = await fraud_repo.period_rewards(
            conn, e.merchant_id, advocate_id, e.id, currency, start, min(end, until or end)
        )
    return Facts(
        advocate,
        fraud.ConversionFacts(
            type=e.type, occurred_at=e.occurred_at, amount_minor=e.amount_minor or 0,
            currency=e.currency, customer_id=e.customer_id, email_hash=e.customer_email_hash,
            email_canonical=e.customer_email_canonical,
            email_near=frozenset(e.customer_email_near),
            email_disposable=e.customer_email_disposable,
            clicked_at=click.clicked_at if click else None,
            ad_click_param=click.ad_click_param if click else None,
            shared_device=shared, flood_clicks=flood, velocity_conversions=velocity,
            period_rewards_minor=so_far, advocate_reward_minor=advocate_reward_minor,
        ),
    )  # fmt: skip


async def _apply_refund(
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
