"""The postback body's fast decoding (app/conversion_body.py) against ConversionIn, its definition.

Generated bodies mix what shops send with what pydantic treats specially (surrounding spaces,
control characters, non-ASCII text, floats and booleans for integers, other time formats, odd
addresses, unknown fields). Whatever the fast path keeps, pydantic accepts too, and the event
and the retry fingerprint made of either are byte for byte the same; everything else is answered
by pydantic itself. And the conversion id made of a postback is uuid.uuid5's.
"""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from app import conversion_body
from app.conversion_body import ConversionFields, fingerprint, parse_conversion
from app.errors import InvalidFields
from app.pipeline.events import encode_conversion, new_click_and_visitor_ids
from app.schemas import ConversionIn
from app.security import IpAnonymizer
from app.services.intake import (
    CONVERSION_NAMESPACE,
    PIXEL_NAMESPACE,
    conversion_event,
    conversion_id,
    pixel_conversion_id,
)

NOW = datetime.now(UTC)
MERCHANT = uuid.UUID("2a0c5c3e-2f7e-4f57-9d7e-6b1b7f0f5a01")
EMAIL_KEY = b"k" * 32
ANONYMIZE = IpAnonymizer(b"i" * 32)
CLICK_ID = new_click_and_visitor_ids()[0]

_text = st.one_of(
    st.text(st.characters(min_codepoint=33, max_codepoint=126), min_size=1, max_size=12),
    st.sampled_from(["", " o-1", "o-1 ", "o\t", "a\x00b", "é-1", "x" * 201, "\u2028", "\ud7ff"]),
    st.text(max_size=6),
)
_values: dict[str, st.SearchStrategy[Any]] = {
    "event_id": _text,
    "type": st.sampled_from(["signup", "purchase", "refund", "renewal", "Purchase", " signup"]),
    "occurred_at": st.one_of(
        st.sampled_from(
            [
                (NOW - timedelta(hours=3)).strftime("%Y-%m-%dT%H:%M:%SZ"),
                (NOW - timedelta(days=2)).strftime("%Y-%m-%dT%H:%M:%S.%f+02:00"),
                (NOW - timedelta(minutes=1)).strftime("%Y-%m-%dT%H:%M:%S.123-05:30"),
                (NOW - timedelta(minutes=5)).strftime("%Y-%m-%d %H:%M:%SZ"),
                (NOW + timedelta(days=2)).strftime("%Y-%m-%dT%H:%M:%SZ"),
                "1999-12-31T23:59:59Z",
                "2026-02-30T10:00:00Z",
                "2026-12-01T24:00:00Z",
                "2026-12-01T10:00:00",
                "2026-12-01T10:00:00.1234567Z",
                "2026-12-01T10:00:60Z",
            ]
        ),
        st.integers(min_value=0, max_value=2_000_000_000),
    ),
    "order_id": _text,
    "refund_of": _text,
    "customer_id": _text,
    "customer_email": st.sampled_from(
        [
            "ann@example.com",
            "Ann.B+x@Example.COM",
            "ann@mailinator.com",
            "not-an-email",
            "a@b",
            " ann@example.com",
            "ann@exämple.com",
            "ann@localhost",
        ]
    ),
    "amount_minor": st.one_of(
        st.integers(min_value=-5, max_value=10**15 + 5),
        st.sampled_from([0, 1234, 5000.0, 12.5, True, "9", 10**20]),
    ),
    "currency": st.sampled_from(["EUR", "USD", "eur", "EU", " EUR", "EURO"]),
    "click_id": st.sampled_from(
        [
            CLICK_ID,
            CLICK_ID.upper(),
            str(uuid.UUID(CLICK_ID)),
            "0" * 32,
            "f" * 32,
            "g" * 32,
            CLICK_ID[:31],
        ]
    ),
    "referral_code": _text,
    "subscription_id": _text,
    "ip": st.sampled_from(
        [
            "203.0.113.7",
            "2001:db8::1",
            "2001:DB8:0:0::1",
            "::ffff:1.2.3.4",
            "fe80::1%eth0",
            "010.1.1.1",
            "1.2.3",
            "256.1.1.1",
            "localhost",
            3232235777,
        ]
    ),
    "user_agent": st.one_of(_text, st.sampled_from(["Mozilla/5.0 (X11; Linux x86_64)", "x" * 513])),
}


@st.composite
def bodies(draw: st.DrawFn) -> bytes:
    body: dict[str, Any] = {"event_id": draw(_values["event_id"]), "type": draw(_values["type"])}
    if body["type"] in ("purchase", "renewal"):
        # Most purchases complete, so that the fast path is exercised, not only refused.
        body |= {"order_id": "o-1", "amount_minor": 1234, "currency": "EUR"}
        if body["type"] == "renewal":
            body["subscription_id"] = "sub-1"
    for name in draw(st.sets(st.sampled_from(sorted(_values)))):
        body[name] = draw(st.one_of(st.none(), _values[name]))
    if draw(st.booleans()) and draw(st.integers(0, 9)) == 0:
        body["unknown_field"] = 1
    return json.dumps(body).encode()


def _event(fields: ConversionFields) -> bytes:
    return encode_conversion(conversion_event(MERCHANT, EMAIL_KEY, fields, ANONYMIZE, NOW))


def _pydantic(body: bytes) -> ConversionIn | str:
    try:
        return ConversionIn.model_validate_json(body)
    except ValidationError as exc:
        return str(InvalidFields.of(exc, "body"))


@settings(max_examples=1000, deadline=None)
@given(bodies())
def test_what_the_fast_path_keeps_pydantic_keeps_the_same(body: bytes) -> None:
    expected = _pydantic(body)
    try:
        fast = conversion_body._fast(body, NOW)
    except conversion_body._NotPlain:
        fast = None
    if fast is None:
        # Answered by pydantic: the same value or the same error.
        try:
            got: ConversionFields | str = parse_conversion(body, NOW)
        except InvalidFields as exc:
            got = str(exc)
        assert type(got) is type(expected)
        return
    assert isinstance(expected, ConversionIn), f"pydantic refuses what the fast path took: {body!r}"
    assert _event(fast) == _event(expected), body
    assert fingerprint(fast) == fingerprint(expected)


@settings(max_examples=300, deadline=None)
@given(bodies())
def test_the_retry_fingerprint_is_pydantics_dump_without_the_time(body: bytes) -> None:
    """Digests stored by earlier versions (pydantic's dump) still match a retry."""
    parsed = _pydantic(body)
    if isinstance(parsed, ConversionIn):
        assert fingerprint(parsed) == parsed.model_dump_json(exclude={"occurred_at"}).encode()


@pytest.mark.parametrize(
    "extra",
    [
        {},
        {"ip": "203.0.113.7", "user_agent": "Mozilla/5.0 (X11; Linux x86_64) Firefox/133.0"},
        {"customer_email": "Ann@Example.com", "customer_id": "c-1"},
        {"click_id": CLICK_ID, "occurred_at": "2026-01-05T10:00:00Z"},
        {"referral_code": "ANN-10", "occurred_at": "2026-01-05T10:00:00.250+01:00"},
    ],
)
def test_what_shops_send_takes_the_fast_path(extra: dict[str, Any]) -> None:
    body = orjson.dumps(
        {"event_id": "ord-1", "type": "purchase", "order_id": "1001", "amount_minor": 4999,
         "currency": "EUR"} | extra
    )  # fmt: skip
    fast = conversion_body._fast(body, NOW)
    assert _event(fast) == _event(ConversionIn.model_validate_json(body))


@settings(max_examples=500, deadline=None)
@given(st.uuids(), st.text(max_size=40))
def test_conversion_ids_are_the_uuid5_of_the_merchant_and_event_id(
    merchant: uuid.UUID, event_id: str
) -> None:
    # Ids already stored were made by uuid.uuid5: a retry must still get the same one.
    name = f"{merchant}:{event_id}"
    assert conversion_id(merchant, event_id) == uuid.uuid5(CONVERSION_NAMESPACE, name)
    assert pixel_conversion_id(merchant, event_id) == uuid.uuid5(PIXEL_NAMESPACE, name)
    assert conversion_id(merchant, event_id).version == 5
