"""Request and response bodies of the management API."""

from __future__ import annotations

import re
from datetime import UTC, date, datetime
from typing import Annotated, Any, Literal, Protocol
from uuid import UUID

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    IPvAnyAddress,
    StrictBool,
    field_validator,
    model_validator,
)

from app.attribution.rules import ProgramRules
from app.bounds import (
    EARLIEST_CLICK,
    FUTURE_SKEW,
    MAX_AMOUNT_MINOR,
    NO_CONTROL_CHARACTERS,
    Email,
    Int,
    OccurredAt,
    Text,
)
from app.destinations import InvalidDestination, normalize_domain, normalize_url
from app.event_types import EVENT_TYPES, EventType
from app.pipeline.events import ConversionType, parse_click_id

# A domain name, or "*." and one; letters of any script (IDNA), digits, hyphens and dots.
Domain = Annotated[
    str,
    Field(
        min_length=1,
        max_length=253,
        # The last label has no digit only: a browser would read "…​.00" as an IPv4 address.
        pattern=r"^(\*\.)?([\w-]{1,63}\.)+([^\W\d_]{2,63}|xn--[\w-]{1,59})\.?$",
        description="A domain, e.g. shop.example.com (its subdomains are included).",
    ),
]

# Stated in the OpenAPI document, so that clients (and fuzzers) know what a destination is.
_URL_SCHEMA: dict[str, Any] = {
    "format": "iri",
    "pattern": r"^https?://",
}  # IRIs: hosts in any script (IDNA)

Channel = Literal[
    "default", "email", "whatsapp", "sms", "qr", "facebook", "x", "instagram", "linkedin", "other"
]


_CONTROL_CHARACTER = re.compile(r"[\x00-\x1f\x7f-\x9f]")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)

    @field_validator("*", mode="before")
    @classmethod
    def _no_control_characters(cls, value: Any) -> Any:
        """Text may not hold control characters, surrounding whitespace included: the pattern is
        checked after the surrounding whitespace is stripped, so a tab or newline at either end
        was stripped and accepted, against the documented pattern (the fuzzer found `"o\t"`).
        A validator of the model, not of the type: it leaves the JSON schema as it is."""
        if isinstance(value, str) and _CONTROL_CHARACTER.search(value):
            raise ValueError("must not contain control characters")
        return value


def _url(value: str) -> str:
    try:
        return normalize_url(value)
    except InvalidDestination as exc:
        raise ValueError(str(exc)) from exc


def _optional_url(value: str | None) -> str | None:
    return None if value is None else _url(value)


class ProgramCreate(_Strict):
    name: Text = Field(min_length=1, max_length=200)
    destination_url: str = Field(
        max_length=2048,
        description="Where links send shoppers by default (the shop's page): an absolute http(s) "
        "URL, parsed as browsers parse it (WHATWG URL standard).",
        json_schema_extra=_URL_SCHEMA,
    )
    allowed_domains: list[Domain] | None = Field(
        None,
        max_length=50,
        description="Domains links may redirect to (subdomains included). "
        "Default: the destination's host.",
    )
    attribution_window_days: Int = Field(30, ge=1, le=365)
    rules: ProgramRules | None = Field(
        None,
        description="Reward rules (version 1). Default: 10.00 to the advocate per first purchase.",
    )
    share_text: Text | None = Field(
        None,
        min_length=1,
        max_length=500,
        description="What the advocate page's share buttons prefill; {link} is their link. "
        "Default: 'I shop here and think you will like it too: {link}'.",
    )
    advocate_sees_amounts: bool = Field(
        False,
        strict=True,
        description="Whether advocates' own pages show their friends' order amounts and rewards "
        "(default: counts only).",
    )

    _check_url = field_validator("destination_url")(_url)

    @field_validator("allowed_domains")
    @classmethod
    def _domains(cls, value: list[str] | None) -> list[str] | None:
        if value is None:
            return None
        try:
            return sorted({normalize_domain(d) for d in value})
        except InvalidDestination as exc:
            raise ValueError(str(exc)) from exc


class Program(BaseModel):
    id: UUID
    name: str
    destination_url: str
    allowed_domains: list[str]
    attribution_window_days: int
    active: bool
    advocate_sees_amounts: bool
    share_text: str
    created_at: datetime


class AdvocateCreate(_Strict):
    external_id: Text = Field(
        min_length=1, max_length=200, description="Your customer id for this person."
    )
    name: Text = Field("", max_length=200)
    email: Email | None = Field(None, description="Stored only as a hash (self-referral checks).")


class LinkCreate(_Strict):
    channel: Channel = "default"
    destination: str | None = Field(
        None,
        max_length=2048,
        description="An absolute http(s) URL on one of the program's allowed_domains. "
        "Default: the program's destination_url.",
        json_schema_extra=_URL_SCHEMA,
    )

    _check_destination = field_validator("destination")(_optional_url)


class LinkUpdate(_Strict):
    active: StrictBool


class Link(BaseModel):
    id: UUID
    code: str
    url: str
    program_id: UUID
    advocate_id: UUID
    destination: str
    channel: str
    active: bool
    created_at: datetime


class LinkWithClicks(Link):
    clicks: dict[str, int] = Field(description="Stored clicks: human and bot.")


class AdvocateOffer(BaseModel):
    experiment_id: UUID
    variant: str
    share_message: str | None


class Advocate(BaseModel):
    id: UUID
    program_id: UUID
    external_id: str
    name: str
    referral_code: str
    created_at: datetime
    banned_at: datetime | None = Field(
        None,
        description="Set when a reviewer banned the advocate: their links no longer "
        "redirect and their conversions earn nothing.",
    )
    ban_reason: str | None = None
    experiment: AdvocateOffer | None = Field(
        None, description="The advocate's variant in the program's running experiment."
    )
    links: list[Link]


class MerchantInfo(BaseModel):
    id: UUID
    name: str


class PixelQuery(BaseModel):
    """The order pixel's query (GET /t/pixel.gif): validated the same way by FastAPI's route
    (which documents it) and by the lean endpoint that serves it (app/routes/pixel.py)."""

    model_config = ConfigDict(extra="ignore")

    m: UUID = Field(description="Your merchant id")
    order_id: str = Field(min_length=1, max_length=200, pattern=NO_CONTROL_CHARACTERS)
    amount_minor: int | None = Field(None, ge=0, le=MAX_AMOUNT_MINOR)
    currency: str | None = Field(None, pattern=r"^[A-Z]{3}$")


class ConversionIn(_Strict):
    """A conversion postback from the merchant's backend. Money is integer minor units."""

    event_id: Text = Field(
        min_length=1,
        max_length=200,
        description="Your id for this event: retries reuse it.",
    )
    type: Literal["signup", "purchase", "refund", "renewal"] = Field(
        description="renewal: a subscription's later invoice (needs subscription_id)."
    )
    occurred_at: OccurredAt | None = Field(None, description="Default: when we receive it.")
    order_id: Text | None = Field(
        None, min_length=1, max_length=200, description="Required for purchases."
    )
    refund_of: Text | None = Field(
        None,
        min_length=1,
        max_length=200,
        description="For a refund: the order_id of the purchase.",
    )
    customer_id: Text | None = Field(None, min_length=1, max_length=200)
    customer_email: Email | None = Field(None, description="Stored only as a hash.")
    amount_minor: Int | None = Field(
        None,
        ge=0,
        le=MAX_AMOUNT_MINOR,
        description="Order total in minor units (refund: amount refunded; omit for a full refund).",
    )
    currency: str | None = Field(None, pattern=r"^[A-Z]{3}$")
    click_id: str | None = Field(
        None,
        pattern=r"^[0-9a-fA-F-]{32,40}$",
        description="The rcid parameter the shop received (32 hex digits).",
    )
    referral_code: Text | None = Field(None, min_length=1, max_length=64)
    subscription_id: Text | None = Field(
        None, min_length=1, max_length=200,
        description="Ties a subscription's renewals to its first purchase (send it on both).",
    )  # fmt: skip
    ip: IPvAnyAddress | None = None
    user_agent: Text | None = Field(None, max_length=512)

    @field_validator("click_id")
    @classmethod
    def _click_id(cls, value: str | None) -> str | None:
        if value is None:
            return None
        return parse_click_id(value, datetime.now(UTC), EARLIEST_CLICK, FUTURE_SKEW)

    @model_validator(mode="after")
    def _by_type(self) -> ConversionIn:
        if (broken := conversion_rule_broken(self)) is not None:
            raise ValueError(broken)
        return self


class ConversionFields(Protocol):
    """What is read of a postback's body, however it was decoded (this model, or the intake's
    fast decoding in app/conversion_body.py)."""

    @property
    def event_id(self) -> str: ...
    @property
    def type(self) -> ConversionType: ...
    @property
    def occurred_at(self) -> datetime | None: ...
    @property
    def order_id(self) -> str | None: ...
    @property
    def refund_of(self) -> str | None: ...
    @property
    def customer_id(self) -> str | None: ...
    @property
    def customer_email(self) -> str | None: ...
    @property
    def amount_minor(self) -> int | None: ...
    @property
    def currency(self) -> str | None: ...
    @property
    def click_id(self) -> str | None: ...
    @property
    def referral_code(self) -> str | None: ...
    @property
    def subscription_id(self) -> str | None: ...
    @property
    def ip(self) -> object | None: ...  # an address; its str() is the canonical text
    @property
    def user_agent(self) -> str | None: ...


def conversion_rule_broken(body: ConversionFields) -> str | None:
    """What a conversion of its type lacks (the 422's message), or None. Shared with the
    intake's fast decoding (app/conversion_body.py)."""
    if body.type in ("purchase", "renewal"):
        if not body.order_id:
            return f"order_id is required for a {body.type}"
        if body.amount_minor is None or body.currency is None:
            return f"amount_minor and currency are required for a {body.type}"
    if body.type == "renewal" and not body.subscription_id:
        return "subscription_id is required for a renewal"
    if body.type == "refund" and not body.refund_of:
        return "refund_of (the refunded order_id) is required for a refund"
    if body.amount_minor is not None and body.currency is None:
        return "currency is required with amount_minor"
    return None


class ConversionAccepted(BaseModel):
    id: UUID
    status: Literal["accepted", "duplicate"]


class RewardView(BaseModel):
    id: UUID
    beneficiary: str
    amount_minor: int
    currency: str
    state: str
    balances: dict[str, int]
    hold_until: datetime


class FraudFinding(BaseModel):
    rule: str
    action: Literal["flag", "hold", "reject"]
    reason: str
    value: int | str | None = None
    threshold: int | str | None = None


class FraudView(BaseModel):
    action: Literal["none", "flag", "hold", "reject"]
    findings: list[FraudFinding]
    rules_version: int | None = None
    review_id: UUID | None = Field(None, description="The review item, when it was held.")
    review_status: Literal["open", "approved", "rejected", "banned"] | None = None


class ConversionView(BaseModel):
    id: UUID
    event_id: str | None = None
    state: str
    type: str | None = None
    order_id: str | None = None
    amount_minor: int | None = None
    currency: str | None = None
    advocate_id: UUID | None = None
    program_id: UUID | None = None
    attribution_method: str | None = None
    attributed_click_id: UUID | None = None
    reason: str = ""
    rules_version: int | None = None
    fraud: FraudView | None = Field(
        None, description="The fraud rules' decision, beside the attribution evidence above."
    )
    rewards: list[RewardView] = []


class RulesView(BaseModel):
    program_id: UUID
    version: int
    rules: ProgramRules


class Funnel(BaseModel):
    clicks: int = Field(description="Human clicks (bots excluded).")
    bot_clicks: int
    flagged_clicks: int = Field(
        description="Human-looking clicks found in a click flood (the click_flood rule), not "
        "counted in `clicks`."
    )
    unique_visitors: int | None = Field(
        description="Distinct browsers among the human clicks. For a program: estimated within "
        "about 1 % (a HyperLogLog), null while Redis is unreachable; for an advocate: exact."
    )
    signups: int
    purchases: int
    refunds: int
    renewals: int = Field(description="Subscription renewals credited to an advocate.")
    unverified_orders: int = Field(
        description="Orders known only from the anonymous order pixel (no signed postback): "
        "attributed by cookie, never counted as purchases or revenue, never rewarded."
    )
    flagged_conversions: int = Field(description="Conversions a fraud rule flagged (shadow).")
    held_conversions: int = Field(description="Conversions held for review (still counted).")
    rejected_conversions: int = Field(
        description="Conversions the fraud rules rejected: not counted as signups, purchases or "
        "revenue."
    )
    held_orders_minor: dict[str, int] = Field(description="Order totals of held purchases.")
    rejected_orders_minor: dict[str, int] = Field(description="Order totals of rejected purchases.")
    revenue_minor: dict[str, int] = Field(
        description="Attributed purchases and renewals minus refunds."
    )
    rewards_minor: dict[str, dict[str, int]] = Field(
        description="Per currency, the amount in each state (from the ledger)."
    )


class AdvocateTokenInfo(BaseModel):
    id: UUID
    created_at: datetime
    expires_at: datetime
    revoked_at: datetime | None


class AdvocateToken(AdvocateTokenInfo):
    token: str = Field(description="Shown once: only its hash is stored.")
    url: str


class AdvocatePage(BaseModel):
    """What an advocate sees of their own referrals: counts, and their own rewards. Friends'
    order amounts and rewards only when the program allows it (`advocate_sees_amounts`)."""

    clicks: int
    unique_visitors: int
    signups: int
    purchases: int
    renewals: int
    refunds: int
    rewards_minor: dict[str, dict[str, int]] = Field(
        description="The advocate's own rewards: currency → state → amount."
    )
    revenue_minor: dict[str, int] | None = Field(
        description="Their friends' order totals per currency; null unless the program shows "
        "amounts."
    )
    friend_rewards_minor: dict[str, dict[str, int]] | None = Field(
        description="Their friends' rewards; null unless the program shows amounts."
    )


class CustomerErasure(_Strict):
    # At least one of the two (the service answers 422 naming customer_id otherwise).
    model_config = ConfigDict(
        json_schema_extra={
            "anyOf": [
                {"required": [name], "properties": {name: {"type": "string"}}}
                for name in ("customer_id", "customer_email")
            ]
        }
    )

    customer_id: Text | None = Field(
        None, min_length=1, max_length=200, description="Your customer id for the person."
    )
    customer_email: Email | None = Field(None, description="Their email (used, never stored).")


class Erasure(BaseModel):
    id: UUID
    kind: Literal["customer", "advocate"]
    pseudonym: str = Field(description="What the person's ids became, e.g. `erased:3f…`.")
    requested_at: datetime = Field(description="When the person was first erased.")
    changed: dict[str, int] = Field(
        description="Rows this request changed per table (0 everywhere when repeated)."
    )


# -- Webhooks and the event feed -----------------------------------------------------------------


class WebhookEndpointCreate(_Strict):
    url: str = Field(
        max_length=2048,
        description="Where we POST events (http or https; public addresses only).",
        json_schema_extra=_URL_SCHEMA,
    )
    event_types: list[EventType] = Field(
        default_factory=list, max_length=len(EVENT_TYPES), description="Empty: every type."
    )
    description: Text = Field("", max_length=200)

    _check_url = field_validator("url")(_url)


class WebhookEndpointUpdate(_Strict):
    url: str | None = Field(None, max_length=2048, json_schema_extra=_URL_SCHEMA)
    event_types: list[EventType] | None = Field(None, max_length=len(EVENT_TYPES))
    description: Text | None = Field(None, max_length=200)
    enabled: bool | None = Field(
        None, strict=True, description="false disables; true enables again (after a disable)."
    )

    _check_url = field_validator("url")(_optional_url)


class WebhookEndpoint(BaseModel):
    id: UUID
    url: str
    description: str
    event_types: list[str]
    enabled: bool
    disabled_reason: str | None
    failing_since: datetime | None
    previous_until: datetime | None = Field(
        description="Until when the previous secret still signs (after a rotation)."
    )
    created_at: datetime


class WebhookEndpointWithSecret(WebhookEndpoint):
    secret: str = Field(description="Shown once: `whsec_…`, for the standardwebhooks library.")


class SecretRotation(_Strict):
    overlap_seconds: Int = Field(
        86_400, ge=0, le=7 * 86_400,
        description="How long the old secret keeps signing beside the new one (0: not at all).",
    )  # fmt: skip


class WebhookAttempt(BaseModel):
    id: int
    delivery_id: UUID
    webhook_id: str
    type: str
    attempted_at: datetime
    status_code: int | None
    latency_ms: int
    response_excerpt: str | None
    error: str | None
    delivery_status: Literal["pending", "delivered", "failed"]


class Event(BaseModel):
    id: str = Field(description="msg_…: the webhook-id of its deliveries.")
    cursor: int
    type: str
    timestamp: datetime
    data: dict[str, Any]


class EventPage(BaseModel):
    events: list[Event]
    next_cursor: int = Field(description="Pass as `after` for what follows.")


class Queued(BaseModel):
    status: Literal["queued"]


# -- Payment providers ---------------------------------------------------------------------------


class IntegrationSecret(_Strict):
    signing_secret: Text = Field(min_length=8, max_length=500)


class Integration(BaseModel):
    provider: Literal["stripe", "shopify"]
    webhook_url: str = Field(description="Give this URL to the provider.")
    created_at: datetime | None = None
    updated_at: datetime | None = None


class ProviderReceipt(BaseModel):
    status: Literal["accepted", "duplicate", "ignored"]
    id: UUID | None = Field(None, description="Our conversion id (accepted or duplicate).")
    reason: str | None = Field(None, description="Why the event is not a conversion (ignored).")


def _iso_day(value: Any) -> Any:
    # A day is written YYYY-MM-DD (lax parsing would take "0" as 1970-01-01), from 2000 on.
    if isinstance(value, str) and not re.fullmatch(r"(20[0-9]{2}|2100)-[0-9]{2}-[0-9]{2}", value):
        raise ValueError("a day from 2000 to 2100, written YYYY-MM-DD")
    return value


Day = Annotated[
    date,
    BeforeValidator(_iso_day),
    Field(json_schema_extra={"pattern": r"^(20[0-9]{2}|2100)-[0-9]{2}-[0-9]{2}$"}),
]


class _PeriodCounts(BaseModel):
    """A program's counts over a day or a channel (app/storage/stats.py `_bucket`)."""

    clicks: int
    bot_clicks: int
    flagged_clicks: int
    signups: int
    purchases: int
    renewals: int
    revenue_minor: dict[str, int]


class DailyPoint(_PeriodCounts):
    day: date


class DailySeries(BaseModel):
    start: date
    end: date
    days: list[DailyPoint]


class ChannelPoint(_PeriodCounts):
    channel: str


class ChannelBreakdown(BaseModel):
    start: date
    end: date
    channels: list[ChannelPoint]
