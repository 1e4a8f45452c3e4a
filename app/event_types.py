"""The events we announce (the feed and outgoing webhooks), by name."""

from __future__ import annotations

from typing import Literal, get_args

EventType = Literal[
    "advocate.enrolled", "conversion.attributed", "conversion.unattributed",
    "reward.created", "reward.approved", "reward.held", "reward.released", "reward.reversed",
    "reward.paid", "reward.rejected", "review.opened", "review.resolved", "payout.created",
    "payout.completed", "payout.failed", "endpoint.disabled", "webhook.test",
]  # fmt: skip
EVENT_TYPES: tuple[str, ...] = get_args(EventType)
