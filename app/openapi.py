"""The OpenAPI document, completed with every status an operation can answer.

FastAPI lists a route's own success status and a 422 of its own shape. Ours answer more, from the
edge (401 before the body, 413, 429), from the handlers (404 for another merchant's object, 409,
503 while a backing service is away), always with the one error body of app/errors.py. They are
added here from what each operation is, so that a client (or a fuzzer) meets no status the
document does not list.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

from app import scopes

ERROR_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["error"],
    "properties": {
        "error": {
            "type": "object",
            "required": ["code", "message", "field"],
            "properties": {
                "code": {"type": "string"},
                "message": {"type": "string"},
                "field": {"type": ["string", "null"]},
            },
        },
        "errors": {
            "type": "array",
            "description": "Validation errors: every failing field.",
            "items": {
                "type": "object",
                "properties": {
                    "field": {"type": "string"},
                    "message": {"type": "string"},
                    "type": {"type": "string"},
                },
            },
        },
    },
}

_DESCRIPTIONS = {
    "401": "Missing or invalid credentials (API key, signature or token); the field says which.",
    "403": "The API key lacks the scope this operation needs (the message names it).",
    "404": "Not found, or another merchant's.",
    "409": "A conflict: the event id was already used for a different conversion, the review "
    "item was already decided otherwise, the program already runs an experiment, another "
    "variant was promoted, an Idempotency-Key was used for another request, a payout batch "
    "is past that step, or a test event was asked of a disabled webhook endpoint.",
    "413": "The request body is larger than the limit (64 KiB by default).",
    "422": "Invalid input: `error.field` names the first failing field, `errors` lists all.",
    "429": "Rate limited: see Retry-After and the RateLimit-* headers.",
    "503": "A backing service is unavailable: retry after Retry-After seconds.",
}


def _statuses(path: str, method: str, operation: dict[str, Any]) -> list[str]:
    if not (path.startswith("/v1/") or path.startswith("/t/")):
        return ["503"] if path == "/readyz" else []
    statuses = ["422", "429", "503"]
    if path != "/t/pixel.gif":
        statuses.append("401")
    if scopes.needed(method.upper(), path) != scopes.PUBLIC:
        statuses.append("403")
    names_an_object = any(
        p.get("in") == "query" and p.get("name") == "cursor"
        for p in operation.get("parameters", [])
    )
    if (
        "{" in path
        or path == "/t/pixel.gif"
        or method in ("post", "put", "patch")
        or names_an_object
    ):
        statuses.append("404")
    if "requestBody" in operation:
        statuses.append("413")
    if path == "/v1/conversions" and method == "post":
        statuses += ["409", "413"]
    starts_experiment = path == "/v1/programs/{program_id}/experiments" and method == "post"
    payout_moves = path.startswith("/v1/payouts") and method == "post"
    tests_an_endpoint = path == "/v1/webhook-endpoints/{endpoint_id}/test"
    if (
        path.endswith(("/decision", "/promote"))
        or starts_experiment
        or payout_moves
        or tests_an_endpoint
    ):
        statuses.append("409")
    return sorted(set(statuses))


def complete_openapi(api: FastAPI) -> dict[str, Any]:
    if api.openapi_schema:
        return api.openapi_schema
    schema = get_openapi(
        title=api.title, version=api.version, description=api.description, routes=api.routes
    )
    schema.setdefault("components", {}).setdefault("schemas", {})["Error"] = ERROR_SCHEMA
    error = {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}
    for path, operations in schema.get("paths", {}).items():
        for method, operation in operations.items():
            responses = operation.setdefault("responses", {})
            for status in _statuses(path, method, operation):
                responses[status] = {"description": _DESCRIPTIONS[status], "content": error}
    for unused in ("HTTPValidationError", "ValidationError"):
        schema["components"]["schemas"].pop(unused, None)
    api.openapi_schema = schema
    return schema
