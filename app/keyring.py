"""The server's keys, one per purpose, so that each can be rotated (or leak) alone:

- the IP hash key (`IP_HASH_KEY`): keys the BLAKE2b hash of client addresses;
- the signing keys (`SIGNING_KEYS`, `id:secret,id:secret`, newest first): sign advocate page
  tokens; the first signs, every one listed verifies, so a new key is added in front and the old
  one removed once what it signed has expired;
- the data keys (`DATA_KEYS`, Fernet keys, newest first): encrypt secrets at rest (merchants'
  postback secrets and their email-hashing keys) with `cryptography`'s MultiFernet: the first
  encrypts, all decrypt, and `referral reencrypt` rewrites everything under the first.

Each one unset is derived from `SECRET_KEY` with HKDF under its own label: a development install
needs one secret, and the derived keys are still independent of each other. Production sets
them apart (README, "Keys and rotation").
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
from dataclasses import dataclass

from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

_KEY_ID = re.compile(r"[A-Za-z0-9]{1,16}")


class KeySettingError(ValueError):
    """A key setting that cannot be used (the message names the setting)."""


def _derive(secret: bytes, label: str) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=label.encode()).derive(secret)


def parse_signing_keys(text: str) -> tuple[tuple[str, bytes], ...]:
    keys: list[tuple[str, bytes]] = []
    for part in text.split(","):
        kid, sep, secret = part.strip().partition(":")
        if not sep or not _KEY_ID.fullmatch(kid) or len(secret) < 16:
            raise KeySettingError(
                "SIGNING_KEYS: expected id:secret[,id:secret...] (id: 1 to 16 letters or digits,"
                " secret: 16 characters or more)"
            )
        keys.append((kid, secret.encode()))
    if len({kid for kid, _ in keys}) != len(keys):
        raise KeySettingError("SIGNING_KEYS: a key id appears twice")
    return tuple(keys)


def parse_data_keys(text: str) -> tuple[bytes, ...]:
    keys = tuple(k.strip().encode() for k in text.split(",") if k.strip())
    try:
        for key in keys:
            Fernet(key)
    except ValueError:
        raise KeySettingError("DATA_KEYS: expected Fernet keys (32 url-safe base64-encoded bytes), "
                        "comma-separated") from None  # fmt: skip
    if not keys:
        raise KeySettingError("DATA_KEYS: no key")
    return keys


@dataclass(frozen=True, slots=True)
class Keyring:
    ip_hash_key: bytes
    signing_keys: tuple[tuple[str, bytes], ...]  # newest first
    data_keys: tuple[bytes, ...]  # newest first

    @classmethod
    def build(
        cls, secret: str, ip_hash_key: str | None = None, signing_keys: str | None = None,
        data_keys: str | None = None,
    ) -> Keyring:  # fmt: skip
        master = secret.encode()
        derived_data = base64.urlsafe_b64encode(_derive(master, "data-key"))
        return cls(
            # Unset, the IP key is SECRET_KEY itself, as before keys were split: stored IP hashes
            # keep matching new ones across the upgrade.
            ip_hash_key=ip_hash_key.encode() if ip_hash_key else master,
            signing_keys=parse_signing_keys(signing_keys) if signing_keys
            else (("k0", _derive(master, "signing-key")),),
            data_keys=parse_data_keys(data_keys) if data_keys else (derived_data,),
        )  # fmt: skip

    # -- Encryption at rest ----------------------------------------------------------------------

    @property
    def _fernet(self) -> MultiFernet:
        return MultiFernet([Fernet(k) for k in self.data_keys])

    def encrypt(self, plain: bytes) -> str:
        return self._fernet.encrypt(plain).decode()

    def decrypt(self, token: str) -> bytes:
        """The plain bytes; KeySettingError when no data key opens it (a key removed too early)."""
        try:
            return self._fernet.decrypt(token.encode())
        except InvalidToken:
            raise KeySettingError("DATA_KEYS: no key decrypts a stored secret (was a key removed "
                            "before `referral reencrypt` ran?)") from None  # fmt: skip

    def reencrypt(self, token: str) -> str:
        """The same secret under the newest data key."""
        return self._fernet.rotate(token.encode()).decode()

    # -- Signatures ------------------------------------------------------------------------------

    def sign(self, message: bytes) -> tuple[str, bytes]:
        """(key id, HMAC-SHA256) with the newest signing key."""
        kid = self.signing_keys[0][0]
        mac = self.mac(kid, message)
        assert mac is not None
        return kid, mac

    def mac(self, kid: str, message: bytes) -> bytes | None:
        """The HMAC-SHA256 of `message` under signing key `kid` (None: no such key listed, or
        retired)."""
        for known, key in self.signing_keys:
            if known == kid:
                return hmac.digest(key, message, hashlib.sha256)
        return None
