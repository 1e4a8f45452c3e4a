"""What the storage can hold, stated once and checked at the edge.

Anything answered 202 must be storable: PostgreSQL refuses a NUL byte in text, integers beyond
64 bits and dates it cannot represent, and orjson cannot encode integers beyond 64 bits or lone
surrogates. So every value a request carries is bounded here, before it is answered, and the
OpenAPI document states the same bounds (a pattern, a maximum, a range in the description).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Annotated

import email_validator
from pydantic import AfterValidator, AwareDatetime, BeforeValidator, Field

# 10^15 - 1 minor units: ten trillion euros, far above any order, far below 2^63 (PostgreSQL's
# bigint) even when a million of them are summed in Python or as numeric in SQL.
MAX_AMOUNT_MINOR = 10**15 - 1
# A count a rule may name (tier thresholds, purchases per customer).
MAX_COUNT = 1_000_000

# No C0/C1 control characters (NUL among them, which PostgreSQL's text refuses) and no DEL.
NO_CONTROL_CHARACTERS = r"^[^\x00-\x1f\x7f-\x9f]*$"

# Times a conversion may carry: not before 2000, not more than a day ahead of our clock.
EARLIEST = datetime(2000, 1, 1, tzinfo=UTC)
FUTURE_SKEW = timedelta(days=1)
# Click ids carry their click's time: ours were all made after this.
EARLIEST_CLICK = datetime(2020, 1, 1, tzinfo=UTC)


def _a_number(value: object) -> object:
    # JSON's true is not 1, although Python's is, and "9" is a string (pydantic's lax mode
    # takes both for 1 and 9; the fuzzer found "9"): a schema's integer is a number.
    if isinstance(value, bool):
        raise ValueError("must be an integer, not a boolean")
    if isinstance(value, str):
        raise ValueError("must be an integer, not a string")
    return value


# An integer as JSON Schema means it: any number without a fraction (5000 or 5000.0), no boolean
# and no string of digits.
Int = Annotated[int, BeforeValidator(_a_number)]
Text = Annotated[str, Field(pattern=NO_CONTROL_CHARACTERS)]


def in_time_range(value: datetime, now: datetime | None = None) -> datetime:
    """`value`, or ValueError when it is before 2000 or more than a day ahead of now."""
    now = now or datetime.now(UTC)
    if value < EARLIEST:
        raise ValueError("must not be before 2000-01-01T00:00:00Z")
    if value > now + FUTURE_SKEW:
        raise ValueError("must not be more than one day in the future")
    return value


OccurredAt = Annotated[
    AwareDatetime,
    AfterValidator(in_time_range),
    Field(description="From 2000-01-01 to one day after now, with a UTC offset."),
]


def email_address(value: str) -> str:
    """A syntactically valid address. Domains reserved for tests and examples (`.test`,
    `.example`) are accepted: we never send mail, we only compare hashed addresses."""
    try:
        checked = email_validator.validate_email(
            value, check_deliverability=False, globally_deliverable=False, test_environment=True
        )
    except email_validator.EmailNotValidError as exc:
        raise ValueError(f"not a valid email address: {exc}") from None
    return checked.normalized


Email = Annotated[
    str,
    Field(min_length=3, max_length=254, json_schema_extra={"format": "email"}),
    AfterValidator(email_address),
]
