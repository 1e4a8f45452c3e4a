"""Is a click a bot? Crawlers, link-preview fetchers and browser prefetches are redirected like
anyone else but flagged, and a flagged click never earns attribution.

Crawler user agents are recognised by `crawlerdetect` (a maintained port of the PHP CrawlerDetect
patterns, >1,000 known bots), which is far more complete than a hand-kept list. It is regex-heavy,
so results are memoised per user agent: real traffic has few distinct user agents.
"""

from __future__ import annotations

from functools import lru_cache

from crawlerdetect import CrawlerDetect

_detector = CrawlerDetect()

# Values of Purpose / Sec-Purpose / X-Purpose / X-Moz sent by browsers that fetch a page
# the user has not opened (yet).
_PREFETCH_WORDS = ("prefetch", "preview", "prerender")


@lru_cache(maxsize=16_384)
def _crawler(user_agent: str) -> str | None:
    if _detector.isCrawler(user_agent):
        return f"crawler user agent ({_detector.getMatches() or 'known bot'})"
    return None


@lru_cache(maxsize=65_536)
def bot_reason(user_agent: str | None, purpose: str | None, method: str) -> str | None:
    """A human-readable reason why this click is not a person clicking, or None."""
    if purpose and any(word in purpose.lower() for word in _PREFETCH_WORDS):
        return f"prefetch ({purpose})"
    if method == "HEAD":
        return "HEAD request (link checker)"
    if not user_agent:
        return "no user agent"
    return _crawler(user_agent[:512])
