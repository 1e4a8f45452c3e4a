"""Where a program may send shoppers: destination URLs and the allowed-domain check.

A link's destination is fixed when the link is created and must be on one of its program's
allowed domains, so a tracking link can never be turned into an open redirect. URLs are parsed
the way browsers parse them — the WHATWG URL standard, implemented by `ada-url` (the parser of
Node.js) — and what is stored and later sent in `Location` is that parser's serialisation. So
the host checked is the host the browser goes to: `https://evil.example\\.shop.example.com/` is
`evil.example` to a browser (a backslash is a slash in http URLs), and to us.
"""

from __future__ import annotations

from ada_url import URL


class InvalidDestination(ValueError):
    pass


def _parse(value: str) -> URL:
    try:
        return URL(value)
    except ValueError:
        raise InvalidDestination("not a valid URL") from None


def normalize_url(value: str) -> str:
    """An absolute http(s) URL as a browser would serialise it (IDNA host, percent-encoded
    path), or InvalidDestination."""
    url = _parse(value.strip())
    if url.protocol not in ("http:", "https:"):
        raise InvalidDestination("must be an http or https URL")
    if not url.hostname:
        raise InvalidDestination("must be an absolute URL with a host")
    if url.username or url.password:
        raise InvalidDestination("must not contain credentials")
    normalized: str = url.href
    if any(ord(ch) < 0x21 or ord(ch) > 0x7E for ch in normalized):
        raise InvalidDestination("must not contain spaces or control characters")
    return normalized


def normalize_domain(value: str) -> str:
    domain = value.strip().lower().rstrip(".")
    if domain.startswith("*."):
        domain = domain[2:]
    if not domain or any(ch in domain for ch in "/\\?#@:[] %"):
        raise InvalidDestination(f"not a valid domain: {value}")
    host = _parse(f"https://{domain}/").hostname
    if not host or "." not in host:
        raise InvalidDestination(f"not a valid domain: {value}")
    return str(host)


def host_of(url: str) -> str:
    """The host a browser would connect to (lower case, IDNA, without a trailing dot)."""
    return str(_parse(url).hostname).lower().rstrip(".")


def is_allowed(url: str, allowed_domains: list[str]) -> bool:
    """True when the URL's host, as a browser reads it, is an allowed domain or a subdomain."""
    try:
        host = host_of(url)
    except InvalidDestination:
        return False
    return any(host == d or host.endswith("." + d) for d in allowed_domains)
