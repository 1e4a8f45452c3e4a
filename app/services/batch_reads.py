"""What the conversions of one batch read alike, read once for the batch (#18).

Most conversions of a batch name a referral code, and most codes lead to a handful of programs:
their owners, the programs' current rules, running experiments and the advocates' facts the
fraud rules compare with are read for the whole batch in a few queries (`prefetch`), instead of
four or five round trips per conversion. What was not prefetched is read on first use and kept
for the rest of the batch.

What is kept is what the processing of a conversion does not change: it is as fresh as when the
batch started (a batch is processed in well under a second; a rules version saved meanwhile
applies from the next batch, as it would have had the batch come a moment earlier). Counts that
processing changes (earlier rewards of a customer, of an advocate) are never kept here: they are
read in each conversion's transaction, under its locks. Whether the order pixel claimed an
order (of a conversion with no code and no click id) is read for the batch too: the batch's own
pixels count as claims, and a group checks again under its locks (app/services/grouped.py).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from datetime import datetime
from uuid import UUID

import asyncpg

from app.attribution.fraud import AdvocateFacts
from app.attribution.model import Referrer
from app.attribution.rules import ProgramRules
from app.codes import normalize_referral_code
from app.pipeline.events import ConversionEvent
from app.storage import conversions as conversions_repo
from app.storage import evidence
from app.storage import experiments as experiments_repo
from app.storage import fraud as fraud_repo
from app.storage.rules import current_rules_json

Db = asyncpg.Connection | asyncpg.Pool


class BatchReads:
    """A read-through cache for one batch (a fresh one reads everything live)."""

    def __init__(self) -> None:
        self._owners: dict[tuple[UUID, str], Referrer | None] = {}
        self._rules_json: dict[UUID, tuple[int, str] | None] = {}
        self._rules: dict[UUID, tuple[int, ProgramRules]] = {}
        self._running: dict[UUID, experiments_repo.Running | None] = {}
        self._variant_rules: dict[tuple[UUID, str], ProgramRules] = {}
        self._advocates: dict[UUID, AdvocateFacts] = {}
        self._clicks: dict[tuple[UUID, str], evidence.ClickFound | None] = {}
        self._browsers: dict[tuple[UUID, UUID], list[evidence.ClickFound]] = {}
        # Orders of conversions without a code or click id: whether the order pixel saw a
        # browser claim them (the one evidence left).
        self._claimed: dict[tuple[UUID, str], bool] = {}

    async def prefetch(
        self, conn: asyncpg.Connection, events: Iterable[ConversionEvent],
        pixel_orders: Iterable[tuple[UUID, str]] = (),
    ) -> None:  # fmt: skip
        """The codes' owners, the clicks the click ids name (of conversions without a code) and
        those clicks' browsers' clicks, and their programs' rules and experiments and their
        advocates' facts, for every conversion of the batch: a query or two each."""
        codes: dict[UUID, set[str]] = defaultdict(set)
        clicked: dict[UUID, set[str]] = defaultdict(set)
        earliest: dict[UUID, datetime] = {}
        orders: set[tuple[UUID, str]] = set()
        for e in events:
            if e.referral_code:
                codes[e.merchant_id].add(normalize_referral_code(e.referral_code))
            elif e.click_id:
                clicked[e.merchant_id].add(e.click_id)
                since = earliest.get(e.merchant_id, e.occurred_at)
                earliest[e.merchant_id] = min(since, e.occurred_at)
            elif e.order_id:
                orders.add((e.merchant_id, e.order_id))
        if orders:
            claimed = await conversions_repo.claimed_orders(conn, sorted(orders))
            self._claimed |= {order: order in claimed for order in orders}
        # The batch's own pixels claim their orders before those orders' postbacks come up.
        self._claimed |= dict.fromkeys(pixel_orders, True)
        for merchant, named in codes.items():
            owners = await evidence.advocates_by_codes(conn, merchant, sorted(named))
            for code in named:
                self._owners[(merchant, code)] = owners.get(code)
        advocates = {a.id: a.program_id for a in self._owners.values() if a is not None}
        for merchant, ids in clicked.items():
            await self._fill_clicks(conn, merchant, ids, earliest[merchant] - evidence.LOOKBACK)
        for browser in self._browsers.values():
            advocates |= {f.click.advocate.id: f.click.advocate.program_id for f in browser}
        for found in self._clicks.values():
            if found is not None:
                advocates[found.click.advocate.id] = found.click.advocate.program_id
        programs = sorted(set(advocates.values()))
        found_rules = await current_rules_json(conn, programs)
        for program in programs:
            self._rules_json[program] = found_rules.get(program)  # read (parsed on first use)
        await self._fill_running(conn, programs)
        await self._fill_advocates(conn, list(advocates))

    async def _fill_clicks(
        self, conn: asyncpg.Connection, merchant: UUID, ids: set[str], since: datetime
    ) -> None:
        found = await evidence.clicks_by_ids(conn, merchant, sorted(ids))
        for click_id in ids:
            self._clicks[(merchant, click_id)] = found.get(click_id)
        visitors = sorted({f.details.visitor_id for f in found.values() if f.details.visitor_id})
        if visitors:
            browsers = await evidence.browsers_clicks(conn, merchant, visitors, since)
            for visitor, clicks in browsers.items():
                self._browsers[(merchant, visitor)] = clicks

    def prefetched_unclaimed(self, merchant: UUID, order_id: str) -> bool:
        """Whether the batch read that no browser claimed this order with the pixel."""
        return self._claimed.get((merchant, order_id)) is False

    def prefetched_unknown_code(self, merchant: UUID, code: str) -> bool:
        """Whether the batch read that this code is nobody's."""
        key = (merchant, normalize_referral_code(code))
        return key in self._owners and self._owners[key] is None

    def prefetched_owner(self, merchant: UUID, code: str) -> Referrer | None:
        """Without a query: the code's owner, when one was read for the batch."""
        return self._owners.get((merchant, normalize_referral_code(code)))

    def prefetched_terms(
        self, advocate: Referrer
    ) -> tuple[Referrer, tuple[int, ProgramRules], AdvocateFacts] | None:
        """Without a query: the advocate's program's current rules and their facts, when both
        were read for the batch, the rules can be read and the program runs no experiment;
        None otherwise."""
        if self._running.get(advocate.program_id, False) is not None:
            return None  # not prefetched, or an experiment running
        facts = self._advocates.get(advocate.id)
        rules = self.prefetched_rules([advocate.program_id])
        if facts is None or advocate.program_id not in (rules or {}):
            return None
        assert rules is not None
        return advocate, rules[advocate.program_id], facts

    def prefetched_rules(
        self, programs: Iterable[UUID]
    ) -> dict[UUID, tuple[int, ProgramRules]] | None:
        """Without a query: `rules` of the programs, when each was read for the batch and those
        it found can be read; None otherwise."""
        out = {}
        for program in programs:
            if program not in self._rules_json:
                return None
            if self._rules_json[program] is None:
                continue  # no rules: as `rules` leaves it out
            if program not in self._rules:
                try:
                    self.parse_rules(program)
                except ValueError:  # pydantic's ValidationError: one by one, set aside
                    return None
            out[program] = self._rules[program]
        return out

    def prefetched_click(
        self, merchant: UUID, click_id: str, occurred_at: datetime
    ) -> tuple[evidence.ClickFound, tuple[evidence.ClickFound, ...]] | None:
        """Without a query: the click the click id names, and its browser's clicks as
        `evidence.browser_clicks` finds them for a conversion at `occurred_at`; None when not
        prefetched, or when no such click is stored."""
        found = self._clicks.get((merchant, click_id))
        if found is None:
            return None
        visitor = found.details.visitor_id
        if visitor is None:
            return found, ()
        since = occurred_at - evidence.LOOKBACK
        browser = self._browsers.get((merchant, visitor))
        if browser is None:
            return None
        return found, tuple(f for f in browser if f.click.clicked_at >= since)

    def parse_rules(self, program: UUID) -> None:
        stored = self._rules_json[program]
        assert stored is not None
        version, text = stored
        self._rules[program] = (version, ProgramRules.model_validate_json(text))

    async def code_owner(
        self, conn: asyncpg.Connection, merchant: UUID, code: str
    ) -> Referrer | None:
        key = (merchant, normalize_referral_code(code))
        if key not in self._owners:
            self._owners[key] = await evidence.advocate_by_code(conn, merchant, code)
        return self._owners[key]

    async def rules(
        self, conn: asyncpg.Connection, programs: Iterable[UUID]
    ) -> dict[UUID, tuple[int, ProgramRules]]:
        """The current rules (version, rules) of those of the programs that have some. Rules
        that cannot be read fail the conversions that need them, each in its turn, and no
        other."""
        wanted = list(dict.fromkeys(programs))
        missing = [p for p in wanted if p not in self._rules_json]
        if missing:
            found = await current_rules_json(conn, missing)
            for program in missing:
                self._rules_json[program] = found.get(program)
        out = {}
        for program in wanted:
            if program not in self._rules and self._rules_json[program] is not None:
                self.parse_rules(program)
            if program in self._rules:
                out[program] = self._rules[program]
        return out

    async def running(
        self, conn: asyncpg.Connection, program: UUID
    ) -> experiments_repo.Running | None:
        """The program's running experiment and its variants' weights, if it runs one."""
        if program not in self._running:
            await self._fill_running(conn, [program])
        return self._running[program]

    async def variant_rules(
        self, conn: asyncpg.Connection, experiment: UUID, key: str
    ) -> ProgramRules:
        if (experiment, key) not in self._variant_rules:
            self._variant_rules[(experiment, key)] = await experiments_repo.variant_rules(
                conn, experiment, key
            )
        return self._variant_rules[(experiment, key)]

    async def advocate_facts(self, conn: Db, advocate: UUID) -> AdvocateFacts:
        if advocate not in self._advocates:
            await self._fill_advocates(conn, [advocate])
        return self._advocates[advocate]  # attribution found this advocate: it exists

    async def _fill_running(self, conn: asyncpg.Connection, programs: list[UUID]) -> None:
        missing = [p for p in programs if p not in self._running]
        if missing:
            found = await experiments_repo.running(conn, missing)
            for program in missing:
                self._running[program] = found.get(program)

    async def _fill_advocates(self, conn: Db, advocates: list[UUID]) -> None:
        missing = [a for a in advocates if a not in self._advocates]
        if missing:
            self._advocates |= await fraud_repo.advocate_facts(conn, missing)
