"""Attribution: which advocate referred a conversion, from the evidence at hand.

Evidence, strongest first: a referral code typed at checkout, then the click id carried back by
the shop, then our cookie (every click of the same browser). Only clicks inside the program's
attribution window count, and bot clicks never do. Whether the advocate referred themselves is
the fraud rules' question (app/attribution/fraud.py), asked of the advocate found here. Pure
functions: the caller gathers the evidence and passes the time.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Literal
from uuid import UUID

# "subscription": a renewal, credited to the advocate of its subscription's first purchase.
Method = Literal["referral_code", "click_id", "cookie", "subscription"]


@dataclass(frozen=True, slots=True)
class Referrer:
    """An advocate as attribution sees them: who they are and in which program (the API's view
    of an advocate is app.schemas.Advocate)."""

    id: UUID
    program_id: UUID
    external_id: str
    email_hash: bytes | None


@dataclass(frozen=True, slots=True)
class Click:
    click_id: UUID
    clicked_at: datetime
    link_id: UUID
    advocate: Referrer
    is_bot: bool


@dataclass(frozen=True, slots=True)
class Customer:
    id: str | None
    email_hash: bytes | None


@dataclass(frozen=True, slots=True)
class Evidence:
    occurred_at: datetime
    customer: Customer
    code_advocate: Referrer | None = None  # the advocate whose referral code was typed
    click: Click | None = None  # the click named by the click id
    browser_clicks: tuple[Click, ...] = ()  # clicks of the browser (cookie / same visitor)


@dataclass(frozen=True, slots=True)
class Attributed:
    advocate: Referrer
    method: Method
    click: Click | None


@dataclass(frozen=True, slots=True)
class NotAttributed:
    reason: str


# A click may be stamped a little after the shop's own clock says the order happened.
_CLOCK_SKEW = timedelta(seconds=5)

Model = Literal["last_click", "first_click"]


@dataclass(frozen=True, slots=True)
class ProgramTerms:
    window_days: int
    model: Model


def _counts(click: Click, occurred_at: datetime, terms: ProgramTerms) -> bool:
    """A human click inside its program's attribution window before the conversion."""
    window = timedelta(days=terms.window_days)
    return (
        not click.is_bot and occurred_at - window <= click.clicked_at <= occurred_at + _CLOCK_SKEW
    )


def _when(click: Click) -> tuple[datetime, UUID]:
    """A click's place in time; clicks of one millisecond in the order of their ids, so that
    the same clicks are always decided alike, in whatever order they were read."""
    return click.clicked_at, click.click_id


def attribute(evidence: Evidence, terms: dict[UUID, ProgramTerms]) -> Attributed | NotAttributed:
    """Decide the advocate; `terms` holds each program's window and model."""
    default = ProgramTerms(30, "last_click")

    def counts(click: Click) -> bool:
        return _counts(click, evidence.occurred_at, terms.get(click.advocate.program_id, default))

    def choose(program: UUID, method: Method, clicks: list[Click]) -> Attributed:
        ordered = sorted(
            (c for c in clicks if c.advocate.program_id == program and counts(c)), key=_when
        )
        first = terms.get(program, default).model == "first_click"
        chosen = ordered[0] if first else ordered[-1]
        return Attributed(chosen.advocate, method, chosen)

    if evidence.code_advocate is not None:
        found: Attributed | NotAttributed = Attributed(
            evidence.code_advocate, "referral_code", None
        )
    else:
        browser = list(evidence.browser_clicks)
        click = evidence.click
        reason = ""
        if click is not None and click.is_bot:
            reason = "the click id belongs to a bot click"
        elif click is not None and not counts(click):
            reason = "the click id's click is outside the attribution window"
        if click is not None and not reason:
            # The click id names the visit that converted: later clicks of the browser do not
            # take it over; earlier ones matter to a first-click program.
            earlier = [c for c in browser if c.clicked_at <= click.clicked_at]
            found = choose(click.advocate.program_id, "click_id", [click, *earlier])
        elif usable := [c for c in browser if counts(c)]:
            latest = max(usable, key=_when)
            found = choose(latest.advocate.program_id, "cookie", usable)
        elif browser:
            found = NotAttributed(reason or "no human click inside the attribution window")
        else:
            found = NotAttributed(reason or "no referral code, click id or cookie")

    return found
