"""One rule for every merchant-owned object: another merchant's object is simply not found.

`found(value, "program", "program_id")` returns the value, or raises the 404 a client sees for
an object that does not exist — the same answer whether it is missing or someone else's.
"""

from __future__ import annotations

from typing import TypeVar

from app.errors import NotFound

T = TypeVar("T")


def found(value: T | None, what: str, field: str) -> T:
    if value is None:
        raise NotFound(f"{what} not found", field=field)
    return value
