"""Secrets and personal data: API keys (stored hashed), IP anonymisation, email hashing (and the
email prints the fraud rules compare)."""

from __future__ import annotations

import base64
import hashlib
import hmac
import ipaddress
import secrets
from dataclasses import dataclass
from datetime import datetime
from uuid import UUID

import orjson

from app.attribution.fraud import canonical_email, near_variants

API_KEY_PREFIX = "rk_"


@dataclass(frozen=True, slots=True)
class NewApiKey:
    key: str  # shown once to the merchant, never stored
    prefix: str  # stored, so a key can be recognised in a list ("rk_3fA9…")
    hash: bytes  # stored


def new_api_key() -> NewApiKey:
    key = API_KEY_PREFIX + secrets.token_urlsafe(32)
    return NewApiKey(key=key, prefix=key[:8], hash=hash_api_key(key))


def hash_api_key(key: str) -> bytes:
    return hashlib.sha256(key.encode()).digest()


def bearer_matches(authorization: str, token: str) -> bool:
    """Whether an Authorization header carries `Bearer <token>` (compared in constant time)."""
    given = authorization.partition(" ")[2].strip()
    return hmac.compare_digest(given.encode(), token.encode())


def new_webhook_secret() -> str:
    return "whsec_" + secrets.token_urlsafe(32)


def hash_email(email: str) -> bytes:
    """Emails are compared, never stored: trimmed, lower-cased, then SHA-256."""
    return hashlib.sha256(email.strip().lower().encode()).digest()


@dataclass(frozen=True, slots=True)
class EmailPrints:
    """What the fraud rules compare of an email, without the email: the hash of its canonical
    form and the hashes of that form's one-character deletions (app/attribution/fraud.py)."""

    canonical: bytes
    near: tuple[bytes, ...]


def email_prints(email: str) -> EmailPrints:
    canonical = canonical_email(email)
    near = sorted(
        hashlib.sha256(b"email-near:" + v.encode()).digest()[:16] for v in near_variants(canonical)
    )
    return EmailPrints(hashlib.sha256(b"email-canonical:" + canonical.encode()).digest(),
                       tuple(near))  # fmt: skip


class IpAnonymizer:
    """Turns a client address into (keyed hash, network prefix); the address itself is dropped.

    The hash (BLAKE2b keyed with the server secret) lets fraud checks compare addresses without
    storing them; the prefix (/24 for IPv4, /48 for IPv6) is coarse enough not to identify a person.
    """

    __slots__ = ("_keyed",)

    def __init__(self, secret: bytes) -> None:
        key = hashlib.sha256(b"ip-hash:" + secret).digest()
        # The key fills BLAKE2b's first block: hash it once and copy the state for each address
        # (the same digest as hashing with the key every time, at half the work).
        self._keyed = hashlib.blake2b(key=key, digest_size=16)

    def __call__(self, ip: str) -> tuple[str | None, str | None]:
        if not ip:
            return None, None
        hasher = self._keyed.copy()
        hasher.update(ip.encode())
        digest = hasher.hexdigest()
        if ip.count(".") == 3 and ":" not in ip:
            return digest, ip[: ip.rfind(".")] + ".0/24"
        try:
            net = ipaddress.ip_network(f"{ip}/48", strict=False)
        except ValueError:
            return digest, None
        return digest, str(net)


class InvalidToken(ValueError):
    pass


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def advocate_token(secret: bytes, merchant_id: UUID, advocate_id: UUID, expires: datetime) -> str:
    """A link token that lets an advocate read their own statistics, and nothing else, until
    it expires. Signed with the server secret (HMAC-SHA256); nothing is stored."""
    payload = _b64(
        orjson.dumps(
            {"m": str(merchant_id), "a": str(advocate_id), "exp": int(expires.timestamp())}
        )
    )
    mac = hmac.new(secret, b"advocate:" + payload.encode(), hashlib.sha256).digest()
    return f"{payload}.{_b64(mac)}"


def read_advocate_token(secret: bytes, token: str, now: datetime) -> tuple[UUID, UUID]:
    """(merchant id, advocate id) of a valid token, or InvalidToken."""
    payload, _, mac = token.partition(".")
    expected = hmac.new(secret, b"advocate:" + payload.encode(), hashlib.sha256).digest()
    try:
        signature = _unb64(mac)
    except ValueError as exc:
        raise InvalidToken("malformed token") from exc
    if not hmac.compare_digest(expected, signature):
        raise InvalidToken("bad signature")
    try:
        claims = orjson.loads(_unb64(payload))
        merchant, advocate, expires = UUID(claims["m"]), UUID(claims["a"]), int(claims["exp"])
    except (ValueError, KeyError, TypeError, orjson.JSONDecodeError) as exc:
        raise InvalidToken("malformed token") from exc
    if expires < now.timestamp():
        raise InvalidToken("expired token")
    return merchant, advocate
