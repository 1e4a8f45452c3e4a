"""Where a program may send shoppers: destination URLs and the allowed-domain check.

A link's destination is fixed when the link is created and must be on one of its program's
allowed domains, so a tracking link can never be turned into an open redirect.
"""

from __future__ import annotations

import httpx


class InvalidDestination(ValueError):
    pass


def normalize_url(value: str) -> str:
    """An absolute http(s) URL in ASCII (IDNA host, percent-encoded path), or InvalidDestination."""
    value = value.strip()
    try:
        url = httpx.URL(value)
    except (httpx.InvalidURL, TypeError, ValueError) as exc:
        raise InvalidDestination(f"not a valid URL: {exc}") from exc
    if url.scheme not in ("http", "https"):
        raise InvalidDestination("must be an http or https URL")
    if not url.host:
        raise InvalidDestination("must be an absolute URL with a host")
    if url.userinfo:
        raise InvalidDestination("must not contain credentials")
    normalized = str(url)
    if any(ord(ch) < 0x21 or ord(ch) > 0x7E for ch in normalized):
        raise InvalidDestination("must not contain spaces or control characters")
    return normalized


def normalize_domain(value: str) -> str:
    domain = value.strip().lower().rstrip(".")
    if domain.startswith("*."):
        domain = domain[2:]
    try:
        host = httpx.URL(f"https://{domain}/").host
    except (httpx.InvalidURL, ValueError) as exc:
        raise InvalidDestination(f"not a valid domain: {value}") from exc
    if not host or "/" in domain or ":" in domain or "." not in host:
        raise InvalidDestination(f"not a valid domain: {value}")
    return host


def host_of(url: str) -> str:
    return httpx.URL(url).host.lower()


def is_allowed(url: str, allowed_domains: list[str]) -> bool:
    """True when the URL's host is an allowed domain or a subdomain of one."""
    host = host_of(url)
    return any(host == d or host.endswith("." + d) for d in allowed_domains)
