"""What each API operation needs of the key that calls it: one table for the whole API.

Scopes: `read` (every GET, and the fraud preview, which writes nothing), `links:write`
(enrolling advocates and issuing or switching their links), `rewards:write` (the ledger: paying
or rejecting a reward, review decisions, payouts, reconciliation, exchange rates, payout
details), and `admin` (programs and their rules, experiments, API keys), which grants
everything. Postbacks and the order pixel carry no key (a signature, or nothing), and the
advocate's own page a token: they are `public` here. An operation missing from the table
needs `admin` (closed by default); tests/test_api_keys.py checks that every operation of the
OpenAPI document is in it.
"""

from __future__ import annotations

from typing import Literal

Scope = Literal["read", "links:write", "rewards:write", "admin"]
SCOPES: tuple[Scope, ...] = ("read", "links:write", "rewards:write", "admin")
PUBLIC = "public"

# (method, route template) → the scope it needs, for what is not a plain read.
_WRITES: dict[tuple[str, str], str] = {
    ("POST", "/v1/conversions"): PUBLIC,
    ("GET", "/t/pixel.gif"): PUBLIC,
    ("GET", "/t/rt.js"): PUBLIC,
    ("GET", "/v1/advocate/stats"): PUBLIC,
    ("GET", "/healthz"): PUBLIC,
    ("GET", "/readyz"): PUBLIC,
    ("POST", "/v1/programs"): "admin",
    ("PUT", "/v1/programs/{program_id}/rules"): "admin",
    ("POST", "/v1/programs/{program_id}/experiments"): "admin",
    ("POST", "/v1/experiments/{experiment_id}/end"): "admin",
    ("POST", "/v1/experiments/{experiment_id}/promote"): "admin",
    ("POST", "/v1/api-keys"): "admin",
    ("GET", "/v1/api-keys"): "admin",
    ("POST", "/v1/api-keys/{key_id}/rotate"): "admin",
    ("DELETE", "/v1/api-keys/{key_id}"): "admin",
    ("GET", "/v1/audit"): "admin",
    ("POST", "/v1/customers/erase"): "admin",
    ("POST", "/v1/integrations/{provider}/{merchant_id}/events"): PUBLIC,
    ("PUT", "/v1/integrations/{provider}"): "admin",
    ("DELETE", "/v1/integrations/{provider}"): "admin",
    ("POST", "/v1/webhook-endpoints"): "admin",
    ("PATCH", "/v1/webhook-endpoints/{endpoint_id}"): "admin",
    ("DELETE", "/v1/webhook-endpoints/{endpoint_id}"): "admin",
    ("POST", "/v1/webhook-endpoints/{endpoint_id}/rotate-secret"): "admin",
    ("POST", "/v1/webhook-endpoints/{endpoint_id}/test"): "admin",
    ("POST", "/v1/webhook-deliveries/{delivery_id}/redeliver"): "admin",
    ("POST", "/v1/advocates/{advocate_id}/erase"): "admin",
    ("POST", "/v1/programs/{program_id}/advocates"): "links:write",
    ("POST", "/v1/advocates/{advocate_id}/links"): "links:write",
    ("PATCH", "/v1/links/{link_id}"): "links:write",
    ("POST", "/v1/advocates/{advocate_id}/dashboard-token"): "links:write",
    ("DELETE", "/v1/advocates/{advocate_id}/dashboard-tokens/{token_id}"): "links:write",
    ("POST", "/v1/rewards/{reward_id}/paid"): "rewards:write",
    ("POST", "/v1/rewards/{reward_id}/reject"): "rewards:write",
    ("POST", "/v1/review/items/{item_id}/decision"): "rewards:write",
    ("POST", "/v1/payouts"): "rewards:write",
    ("POST", "/v1/payouts/{payout_id}/sent"): "rewards:write",
    ("POST", "/v1/payouts/{payout_id}/complete"): "rewards:write",
    ("POST", "/v1/payouts/{payout_id}/fail"): "rewards:write",
    ("PUT", "/v1/advocates/{advocate_id}/payout-details"): "rewards:write",
    ("POST", "/v1/reconciliation-reports"): "rewards:write",
    ("POST", "/v1/reconciliation-reports/{report_id}/apply"): "rewards:write",
    ("PUT", "/v1/exchange-rates"): "rewards:write",
    ("POST", "/v1/programs/{program_id}/fraud-preview"): "read",
}


def needed(method: str, route: str) -> str:
    """The scope an operation needs (`public`: no key at all)."""
    found = _WRITES.get((method, route))
    if found is not None:
        return found
    return "read" if method in ("GET", "HEAD") else "admin"


def known(method: str, route: str) -> bool:
    return method in ("GET", "HEAD") or (method, route) in _WRITES


def grants(scopes: tuple[str, ...] | list[str], scope: str) -> bool:
    return scope == PUBLIC or "admin" in scopes or scope in scopes
