"""A postback's body decoded at hot-path speed, with pydantic's answers.

`app.schemas.ConversionIn` is the body's one definition: its bounds, its OpenAPI schema, its
422s naming the field. Validating with it cost about a tenth of a postback's CPU. So the body is
first decoded by a msgspec Struct with the same fields and bounds (one call into C), and kept
only when every value is one pydantic would take unchanged: text in printable ASCII without
surrounding spaces (pydantic strips those), a time in the plain RFC 3339 form, an integer as an
integer. Anything else, and every error, goes to `ConversionIn`, which then answers as it always
has. What the fast path keeps is what pydantic would have made of the same bytes
(tests/test_conversion_body.py generates bodies and compares the two).
"""

from __future__ import annotations

import ipaddress
import re
from datetime import datetime
from typing import Annotated, Any

import msgspec
import orjson
from pydantic import ValidationError

from app.bounds import (
    EARLIEST_CLICK,
    FUTURE_SKEW,
    MAX_AMOUNT_MINOR,
    email_address,
    in_time_range,
)
from app.errors import InvalidFields
from app.pipeline.events import ConversionType, parse_click_id
from app.schemas import ConversionFields, ConversionIn, conversion_rule_broken

__all__ = ["ConversionFields", "fingerprint", "parse_conversion"]


_Id = Annotated[str, msgspec.Meta(min_length=1, max_length=200)]


class _Fast(msgspec.Struct, forbid_unknown_fields=True):
    """ConversionIn's fields and bounds, in its order. Times, addresses, e-mail addresses and
    click ids arrive as text and are checked after decoding, by the same functions."""

    event_id: _Id
    type: ConversionType
    occurred_at: Any = None  # text when decoded (anything else: pydantic's), the time once checked
    order_id: _Id | None = None
    refund_of: _Id | None = None
    customer_id: _Id | None = None
    customer_email: Annotated[str, msgspec.Meta(min_length=3, max_length=254)] | None = None
    amount_minor: Annotated[int, msgspec.Meta(ge=0, le=MAX_AMOUNT_MINOR)] | None = None
    currency: Annotated[str, msgspec.Meta(pattern=r"^[A-Z]{3}$")] | None = None
    click_id: Annotated[str, msgspec.Meta(pattern=r"^[0-9a-fA-F-]{32,40}$")] | None = None
    referral_code: Annotated[str, msgspec.Meta(min_length=1, max_length=64)] | None = None
    subscription_id: _Id | None = None
    ip: str | None = None
    user_agent: Annotated[str, msgspec.Meta(max_length=512)] | None = None


_decoder = msgspec.json.Decoder(_Fast)
# RFC 3339 as shops send it; other forms pydantic also takes (a space for the T, no seconds,
# "+0200", a Unix time) go to pydantic.
_RFC3339 = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{1,6})?(Z|[+-]\d\d:\d\d)")


def _plain(texts: tuple[str | None, ...]) -> bool:
    """Whether pydantic keeps each text as it is: printable ASCII (no control character),
    nothing to strip. Checked on the texts joined by "|", in a few calls into C: a space beside
    a "|" is taken for a space at the end of a text, so a "|" in a text next to a space is
    refused here (and decided by pydantic) though it is plain."""
    joined = "|".join([text for text in texts if text is not None])
    return (
        joined.isascii() and joined.isprintable() and joined[:1] != " " and joined[-1:] != " "
        and " |" not in joined and "| " not in joined
    )  # fmt: skip


class _NotPlain(Exception):
    pass


def _fast(body: bytes, now: datetime) -> _Fast:
    try:
        fields = _decoder.decode(body)
    except msgspec.DecodeError:  # ValidationError included
        raise _NotPlain from None
    texts = (fields.event_id, fields.order_id, fields.refund_of, fields.customer_id,
             fields.customer_email, fields.click_id, fields.referral_code,
             fields.subscription_id, fields.ip, fields.user_agent)  # fmt: skip
    if not _plain(texts):
        raise _NotPlain
    try:
        if (occurred := fields.occurred_at) is not None:
            if not isinstance(occurred, str) or not _RFC3339.fullmatch(occurred):
                raise _NotPlain
            fields.occurred_at = in_time_range(datetime.fromisoformat(occurred), now)
        if fields.customer_email is not None:
            fields.customer_email = email_address(fields.customer_email)
        if fields.click_id is not None:
            fields.click_id = parse_click_id(fields.click_id, now, EARLIEST_CLICK, FUTURE_SKEW)
        if fields.ip is not None:
            fields.ip = str(ipaddress.ip_address(fields.ip))  # canonical, as pydantic makes it
    except ValueError:
        raise _NotPlain from None
    if conversion_rule_broken(fields) is not None:
        raise _NotPlain
    return fields


def parse_conversion(body: bytes, now: datetime) -> ConversionFields:
    """The postback's fields; InvalidFields (422, naming the field) as ConversionIn words it."""
    try:
        return _fast(body, now)
    except _NotPlain:
        pass
    try:
        return ConversionIn.model_validate_json(body)
    except ValidationError as exc:
        raise InvalidFields.of(exc, "body") from None


def fingerprint(fields: ConversionFields) -> bytes:
    """What a retry must repeat to be the same postback: every field but the time it happened,
    as ConversionIn's JSON dump writes them (the digests stored before this function existed
    stay comparable)."""
    return orjson.dumps(
        {
            "event_id": fields.event_id,
            "type": fields.type,
            "order_id": fields.order_id,
            "refund_of": fields.refund_of,
            "customer_id": fields.customer_id,
            "customer_email": fields.customer_email,
            "amount_minor": fields.amount_minor,
            "currency": fields.currency,
            "click_id": fields.click_id,
            "referral_code": fields.referral_code,
            "subscription_id": fields.subscription_id,
            "ip": None if fields.ip is None else str(fields.ip),
            "user_agent": fields.user_agent,
        }
    )
