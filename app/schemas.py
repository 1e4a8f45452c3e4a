"""Request and response bodies of the management API."""

from __future__ import annotations

from datetime import datetime
from typing import Literal
from uuid import UUID

from pydantic import BaseModel, ConfigDict, EmailStr, Field, field_validator

from app.destinations import InvalidDestination, normalize_domain, normalize_url

Channel = Literal[
    "default", "email", "whatsapp", "sms", "qr", "facebook", "x", "instagram", "linkedin", "other"
]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)


def _url(value: str) -> str:
    try:
        return normalize_url(value)
    except InvalidDestination as exc:
        raise ValueError(str(exc)) from exc


class ProgramCreate(_Strict):
    name: str = Field(min_length=1, max_length=200)
    destination_url: str = Field(
        max_length=2048, description="Where links send shoppers by default (the shop's page)."
    )
    allowed_domains: list[str] | None = Field(
        None,
        max_length=50,
        description="Domains links may redirect to (subdomains included). "
        "Default: the destination's host.",
    )
    attribution_window_days: int = Field(30, ge=1, le=365)

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
    created_at: datetime


class AdvocateCreate(_Strict):
    external_id: str = Field(
        min_length=1, max_length=200, description="Your customer id for this person."
    )
    name: str = Field("", max_length=200)
    email: EmailStr | None = Field(
        None, description="Stored only as a hash (self-referral checks)."
    )


class LinkCreate(_Strict):
    channel: Channel = "default"
    destination: str | None = Field(
        None, max_length=2048, description="Default: the program's destination_url."
    )

    @field_validator("destination")
    @classmethod
    def _destination(cls, value: str | None) -> str | None:
        return None if value is None else _url(value)


class LinkUpdate(_Strict):
    active: bool


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


class Advocate(BaseModel):
    id: UUID
    program_id: UUID
    external_id: str
    name: str
    referral_code: str
    created_at: datetime
    links: list[Link]


class MerchantInfo(BaseModel):
    id: UUID
    name: str
