"""Secrets and personal data: API keys (stored hashed), IP anonymisation, email hashing under
each merchant's own key (and the email prints the fraud rules compare), advocate page tokens."""

from __future__ import annotations

import base64
import hashlib
import hmac
import ipaddress
import re
import secrets
from dataclasses import dataclass

from app.attribution.fraud import canonical_email, near_variants
from app.keyring import Keyring

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


def new_email_key() -> bytes:
    return secrets.token_bytes(32)


def _unkeyed_email(email: str) -> bytes:
    # The first step of every email hash, and all that hashes held before per-merchant keys: the
    # upgrade applies the key to what is stored (rekey_email_hash), without the email itself.
    return hashlib.sha256(email.strip().lower().encode()).digest()


def rekey_email_hash(key: bytes, unkeyed: bytes) -> bytes:
    return hmac.digest(key, unkeyed, hashlib.sha256)


def hash_email(key: bytes, email: str) -> bytes:
    """Emails are compared, never stored: trimmed, lower-cased, SHA-256, then HMAC under the
    merchant's own key (a list of known emails cannot reverse it without the key, and the same
    person is not linkable across merchants)."""
    return rekey_email_hash(key, _unkeyed_email(email))


@dataclass(frozen=True, slots=True)
class EmailPrints:
    """What the fraud rules compare of an email, without the email: the hash of its canonical
    form and the hashes of that form's one-character deletions (app/attribution/fraud.py)."""

    canonical: bytes
    near: tuple[bytes, ...]


def rekey_near(key: bytes, unkeyed: bytes) -> bytes:
    return rekey_email_hash(key, unkeyed)[:16]


def email_prints(key: bytes, email: str) -> EmailPrints:
    canonical = canonical_email(email)
    near = sorted(
        rekey_near(key, hashlib.sha256(b"email-near:" + v.encode()).digest()[:16])
        for v in near_variants(canonical)
    )
    unkeyed = hashlib.sha256(b"email-canonical:" + canonical.encode()).digest()
    return EmailPrints(rekey_email_hash(key, unkeyed), tuple(near))


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


ADVOCATE_TOKEN_PREFIX = "at_"
# One spelling only: the key id, 32 random url-safe characters, and the signature's 43 (unpadded
# base64url of 32 bytes). The signature is compared as text, so another encoding of the same
# bytes is refused too.
_ADVOCATE_TOKEN = re.compile(r"at_([A-Za-z0-9]{1,16})\.([A-Za-z0-9_-]{32})\.([A-Za-z0-9_-]{43})")


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


@dataclass(frozen=True, slots=True)
class NewAdvocateToken:
    token: str  # handed to the advocate, never stored
    hash: bytes  # stored


def new_advocate_token(keyring: Keyring) -> NewAdvocateToken:
    """An opaque token: random, signed with the newest signing key (so that a forged or mistyped
    one is refused without a query), stored only as its hash (so that it can be revoked)."""
    nonce = secrets.token_urlsafe(24)
    kid, mac = keyring.sign(b"advocate-token:" + nonce.encode())
    token = f"{ADVOCATE_TOKEN_PREFIX}{kid}.{nonce}.{_b64(mac)}"
    return NewAdvocateToken(token, hash_advocate_token(token))


def hash_advocate_token(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


def check_advocate_token(keyring: Keyring, token: str) -> bytes:
    """The stored hash to look the token up by; InvalidToken when it is not one of ours."""
    match = _ADVOCATE_TOKEN.fullmatch(token)
    if match is None:
        raise InvalidToken("malformed token")
    kid, nonce, mac = match.groups()
    expected = keyring.mac(kid, b"advocate-token:" + nonce.encode())
    if expected is None or not hmac.compare_digest(_b64(expected), mac):
        raise InvalidToken("bad signature")
    return hash_advocate_token(token)
