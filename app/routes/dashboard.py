"""The merchant dashboard (/dashboard): server-rendered pages over the same services as the API.

Sign-in exchanges an API key for a session cookie (HttpOnly, SameSite=Strict, Secure unless
COOKIE_SECURE is off for local http); every form carries a CSRF token bound to the session, and
a post without it is refused (403). Pages carry the same Content-Security-Policy as the advocate
page (no inline script). Another merchant's object is a 404 page, as in the API."""

from __future__ import annotations

import secrets
from datetime import UTC, date, datetime
from typing import Any
from urllib.parse import parse_qs
from uuid import UUID

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from app import audit, scopes
from app.errors import AppError, NotFound
from app.routes.deps import AppSettings, Pool, RedisConn
from app.routes.links import link_view
from app.routes.pages import HEADERS, TEMPLATES, qr_svg
from app.services import dashboard as service
from app.services import payouts as payouts_service
from app.services import review as review_service
from app.services import webhooks as webhooks_service
from app.settings import Settings

router = APIRouter(prefix="/dashboard", include_in_schema=False)
COOKIE = "rt_session"


def _render(template: str, status: int = 200, **context: Any) -> HTMLResponse:
    html = TEMPLATES.get_template(template).render(**context)
    return HTMLResponse(html, status_code=status, headers=HEADERS)


async def _session(request: Request, pool: Any) -> service.Session | None:
    return await service.session_of(pool, request.cookies.get(COOKIE), datetime.now(UTC))


def _to_sign_in() -> RedirectResponse:
    return RedirectResponse("/dashboard/sign-in", status_code=303)


async def _form(request: Request) -> dict[str, str]:
    fields = parse_qs((await request.body()).decode("utf-8", "replace"), max_num_fields=20)
    return {k: v[0] for k, v in fields.items()}


def _context(session: service.Session, settings: Settings, **extra: Any) -> dict[str, Any]:
    return {"merchant": session.merchant, "can_write": session.can_write,
            "can_admin": scopes.grants(session.merchant.scopes, "admin"),
            "csrf": service.csrf_token(settings.keyring, session.token), **extra}  # fmt: skip


async def _page(request: Request, pool: Any, settings: Settings, template: str,
                load: Any) -> Response:  # fmt: skip
    session = await _session(request, pool)
    if session is None:
        return _to_sign_in()
    try:
        data = await load(session)
    except NotFound:
        return _render("dash_404.html", 404, **_context(session, settings))
    return _render(template, **_context(session, settings, **data))


Checked = tuple[service.Session | None, dict[str, str], Response | None]


async def _checked_form(request: Request, pool: Any, settings: Settings) -> Checked:
    session = await _session(request, pool)
    if session is None:
        return None, {}, _to_sign_in()
    form = await _form(request)
    if not service.csrf_ok(settings.keyring, session.token, form.get("csrf", "")):
        return session, form, _render("dash_error.html", 403, message="This form expired or did "
                                      "not come from this page: reload and try again.",
                                      **_context(session, settings))  # fmt: skip
    return session, form, None


async def _checked_write(request: Request, pool: Any, settings: Settings, api: tuple[str, str],
                         ids: dict[str, str]) -> Checked:  # fmt: skip
    """A form that changes something: its CSRF token, then the scope the API's own operation
    `api` needs (app/scopes.py: a key gets nothing here it lacks there); the write is recorded
    in the audit trail under the dashboard's operation, with the form's fields."""
    session, form, refused = await _checked_form(request, pool, settings)
    if refused is not None or session is None:
        return session, form, refused
    scope = scopes.needed(*api)
    if not scopes.grants(session.merchant.scopes, scope):
        refusal = _render("dash_error.html", 403, message=f"This key lacks the {scope!r} scope.",
                          **_context(session, settings))  # fmt: skip
        return session, form, refusal
    change = {k: v[:500] for k, v in form.items() if k != "csrf"}
    audit.current.set(audit.AuditContext(
        session.merchant.id, session.merchant.key_id,
        f"{request.method} {getattr(request.scope.get('route'), 'path', request.url.path)}",
        ids, change or None,
    ))  # fmt: skip
    return session, form, None


LOGIN_COOKIE = "rt_login"


def _sign_in_page(settings: Settings, status: int = 200, error: str | None = None) -> Response:
    """The form, with a fresh login token in a cookie and in the form (double submit): a form
    posted from another site cannot sign this browser into someone else's merchant."""
    login = secrets.token_urlsafe(24)
    response = _render("dash_signin.html", status, error=error, login=login)
    response.set_cookie(
        LOGIN_COOKIE, login, max_age=3600, path="/dashboard/sign-in", httponly=True,
        secure=settings.cookie_secure, samesite="strict",
    )  # fmt: skip
    return response


@router.get("/sign-in")
async def sign_in_form(settings: AppSettings) -> Response:
    return _sign_in_page(settings)


@router.post("/sign-in")
async def sign_in(request: Request, pool: Pool, settings: AppSettings) -> Response:
    form = await _form(request)
    expected = request.cookies.get(LOGIN_COOKIE, "")
    if not expected or not secrets.compare_digest(expected, form.get("login", "")):
        return _sign_in_page(settings, 403, "This form expired: sign in again.")
    token = await service.sign_in(pool, form.get("api_key", ""), datetime.now(UTC))
    if token is None:
        return _sign_in_page(settings, 401, "That API key is unknown, revoked or expired.")
    response = RedirectResponse("/dashboard", status_code=303)
    response.set_cookie(
        COOKIE, token, max_age=service.SESSION_HOURS * 3600, path="/dashboard", httponly=True,
        secure=settings.cookie_secure, samesite="strict",
    )  # fmt: skip
    return response


@router.post("/sign-out")
async def sign_out(request: Request, pool: Pool, settings: AppSettings) -> Response:
    session, _, refused = await _checked_form(request, pool, settings)
    if refused is not None:
        return refused
    assert session is not None
    await service.sign_out(pool, session.token)
    response = _to_sign_in()
    response.delete_cookie(COOKIE, path="/dashboard")
    return response


@router.get("")
async def home(request: Request, pool: Pool, settings: AppSettings) -> Response:
    async def load(session: service.Session) -> dict[str, Any]:
        from app.services import programs

        return {"programs": await programs.list_programs(pool, session.merchant.id)}

    return await _page(request, pool, settings, "dash_home.html", load)


def _day(text: str | None) -> date | None:
    try:
        return date.fromisoformat(text) if text else None
    except ValueError:
        return None


@router.get("/programs/{program_id}")
async def program(program_id: UUID, request: Request, pool: Pool, redis: RedisConn,
                  settings: AppSettings) -> Response:  # fmt: skip
    start, end = _day(request.query_params.get("start")), _day(request.query_params.get("end"))

    async def load(session: service.Session) -> dict[str, Any]:
        return await service.program_page(pool, redis, session.merchant.id, program_id,
                                          datetime.now(UTC).date(), start, end)  # fmt: skip

    return await _page(request, pool, settings, "dash_program.html", load)


@router.get("/advocates/{advocate_id}")
async def advocate(advocate_id: UUID, request: Request, pool: Pool,
                   settings: AppSettings) -> Response:  # fmt: skip
    async def load(session: service.Session) -> dict[str, Any]:
        data = await service.advocate_page(pool, session.merchant.id, advocate_id)
        views = [link_view(link, settings) for link in data["links"]]
        data["links"] = [{**view, "qr": qr_svg(view["url"])} for view in views]
        return data

    return await _page(request, pool, settings, "dash_advocate.html", load)


@router.get("/conversions/{conversion_id}")
async def conversion(conversion_id: UUID, request: Request, pool: Pool, redis: RedisConn,
                     settings: AppSettings) -> Response:  # fmt: skip
    async def load(session: service.Session) -> dict[str, Any]:
        return await service.conversion_page(pool, redis, settings.conversion_stream,
                                             session.merchant.id, conversion_id)  # fmt: skip

    return await _page(request, pool, settings, "dash_conversion.html", load)


@router.get("/review")
async def review(request: Request, pool: Pool, settings: AppSettings) -> Response:
    async def load(session: service.Session) -> dict[str, Any]:
        return await service.review_page(pool, session.merchant.id)

    return await _page(request, pool, settings, "dash_review.html", load)


@router.post("/review/{item_id}")
async def decide(item_id: UUID, request: Request, pool: Pool, redis: RedisConn,
                 settings: AppSettings) -> Response:  # fmt: skip
    session, form, refused = await _checked_write(
        request, pool, settings, ("POST", "/v1/review/items/{item_id}/decision"),
        {"item_id": str(item_id)},
    )  # fmt: skip
    if refused is not None:
        return refused
    assert session is not None
    decision = form.get("decision", "")
    if decision not in ("approve", "reject"):
        return _render("dash_error.html", 403, message="Approve or reject only, here.",
                       **_context(session, settings))  # fmt: skip
    note = form.get("note", "")[:500]
    try:
        await review_service.decide(pool, redis, session.merchant, item_id, decision,  # type: ignore[arg-type]
                                    note, datetime.now(UTC))  # fmt: skip
    except NotFound:
        return _render("dash_404.html", 404, **_context(session, settings))
    except AppError as exc:
        return _render("dash_error.html", exc.status_code, message=exc.message,
                       **_context(session, settings))  # fmt: skip
    return RedirectResponse("/dashboard/review", status_code=303)


@router.get("/payouts")
async def payouts(request: Request, pool: Pool, settings: AppSettings) -> Response:
    async def load(session: service.Session) -> dict[str, Any]:
        return {**await service.payouts_page(pool, session.merchant.id),
                "idempotency_key": secrets.token_urlsafe(16)}  # fmt: skip

    return await _page(request, pool, settings, "dash_payouts.html", load)


@router.post("/payouts")
async def create_payout(request: Request, pool: Pool, settings: AppSettings) -> Response:
    session, form, refused = await _checked_write(request, pool, settings,
                                                  ("POST", "/v1/payouts"), {})  # fmt: skip
    if refused is not None:
        return refused
    assert session is not None
    key = form.get("idempotency_key", "")[:200] or secrets.token_urlsafe(16)
    await payouts_service.create_batch(pool, session.merchant.id, key, None)
    return RedirectResponse("/dashboard/payouts", status_code=303)


@router.get("/webhooks")
async def webhooks(request: Request, pool: Pool, settings: AppSettings) -> Response:
    async def load(session: service.Session) -> dict[str, Any]:
        return await service.webhooks_page(pool, session.merchant.id)

    return await _page(request, pool, settings, "dash_webhooks.html", load)


@router.post("/webhook-deliveries/{delivery_id}/redeliver")
async def redeliver(delivery_id: UUID, request: Request, pool: Pool,
                    settings: AppSettings) -> Response:  # fmt: skip
    session, _, refused = await _checked_write(
        request, pool, settings, ("POST", "/v1/webhook-deliveries/{delivery_id}/redeliver"),
        {"delivery_id": str(delivery_id)},
    )  # fmt: skip
    if refused is not None:
        return refused
    assert session is not None
    try:
        await webhooks_service.redeliver(pool, session.merchant.id, delivery_id, datetime.now(UTC))
    except NotFound:
        return _render("dash_404.html", 404, **_context(session, settings))
    return RedirectResponse("/dashboard/webhooks", status_code=303)


@router.get("/payouts/{payout_id}.csv")
async def payout_csv(payout_id: UUID, request: Request, pool: Pool,
                     settings: AppSettings) -> Response:  # fmt: skip
    session = await _session(request, pool)
    if session is None:
        return _to_sign_in()
    try:
        body, _ = await payouts_service.export(pool, session.merchant.id, payout_id, "csv", None)
    except NotFound:
        return _render("dash_404.html", 404, **_context(session, settings))
    return Response(body, media_type="text/csv", headers={
        "content-disposition": f'attachment; filename="payout-{payout_id}.csv"'})  # fmt: skip
