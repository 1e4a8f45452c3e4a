"""Payment providers' webhooks, translated into our conversions: each module verifies its
provider's signature the provider's way and maps its events to the body of a postback
(app/schemas.ConversionIn), or says why an event is ignored. No I/O, no clock (time is an
argument): the service (app/services/integrations.py) does the rest as for a postback."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


class ProviderSignatureError(ValueError):
    """The payload is not the provider's (the reason is safe to show)."""


@dataclass(frozen=True, slots=True)
class Mapped:
    """A conversion to accept (`body`), or the reason the event is not one (`ignored`)."""

    body: dict[str, Any] | None = None
    ignored: str | None = None


def as_dict(value: Any) -> dict[str, Any]:
    """A JSON object, or empty (providers omit or null what they do not have)."""
    return value if isinstance(value, dict) else {}
