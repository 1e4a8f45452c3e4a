"""Secrets and personal data: API keys (stored hashed), IP anonymisation, email hashing."""

from __future__ import annotations

import hashlib
import ipaddress
import secrets
from dataclasses import dataclass

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


def new_webhook_secret() -> str:
    return "whsec_" + secrets.token_urlsafe(32)


def hash_email(email: str) -> bytes:
    """Emails are compared, never stored: trimmed, lower-cased, then SHA-256."""
    return hashlib.sha256(email.strip().lower().encode()).digest()


class IpAnonymizer:
    """Turns a client address into (keyed hash, network prefix); the address itself is dropped.

    The hash (BLAKE2b keyed with the server secret) lets fraud checks compare addresses without
    storing them; the prefix (/24 for IPv4, /48 for IPv6) is coarse enough not to identify a person.
    """

    __slots__ = ("_key",)

    def __init__(self, secret: bytes) -> None:
        self._key = hashlib.sha256(b"ip-hash:" + secret).digest()

    def __call__(self, ip: str) -> tuple[str | None, str | None]:
        if not ip:
            return None, None
        digest = hashlib.blake2b(ip.encode(), key=self._key, digest_size=16).hexdigest()
        if ip.count(".") == 3 and ":" not in ip:
            head = ip.rsplit(".", 1)[0]
            return digest, head + ".0/24"
        try:
            net = ipaddress.ip_network(f"{ip}/48", strict=False)
        except ValueError:
            return digest, None
        return digest, str(net)
