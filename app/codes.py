"""Human-friendly codes: short link codes (/r/{code}) and referral codes typed at checkout."""

from __future__ import annotations

import re
import secrets
import unicodedata

# No 0/o, 1/l/i: codes are read aloud, typed from posters and scanned from QR codes.
_LINK_ALPHABET = "23456789abcdefghjkmnpqrstuvwxyz"
_REFERRAL_ALPHABET = "23456789ABCDEFGHJKMNPQRSTUVWXYZ"
LINK_CODE_LENGTH = 8
LINK_CODE_PATTERN = re.compile(r"[a-z0-9][a-z0-9-]{2,63}")


def new_link_code() -> str:
    return "".join(secrets.choice(_LINK_ALPHABET) for _ in range(LINK_CODE_LENGTH))


def new_referral_code(name: str) -> str:
    """ANNA-7K3Q: up to six letters of the advocate's name, then four random characters."""
    ascii_name = unicodedata.normalize("NFKD", name).encode("ascii", "ignore").decode()
    stem = re.sub(r"[^A-Za-z]", "", ascii_name).upper()[:6] or "REF"
    return stem + "-" + "".join(secrets.choice(_REFERRAL_ALPHABET) for _ in range(4))


def normalize_referral_code(code: str) -> str:
    return code.strip().upper()
