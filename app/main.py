"""The ASGI application: the hot paths in front of the FastAPI management API.

`create_app()` builds them. Requests for /r/… go straight to `RedirectEndpoint`, signed
postbacks (POST /v1/conversions) to `PostbackEndpoint` and the order pixel (GET /t/pixel.gif)
to `PixelEndpoint`, plain ASGI callables; everything else goes through the edge (app/edge.py)
to FastAPI. The lifespan (run by
FastAPI) opens the typed runtime (app/runtime.py) and hands the redirect and the edge their
collaborators.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

from fastapi import FastAPI
from fastapi.staticfiles import StaticFiles

from app import audit, metrics
from app.edge import EdgeGuard, GuardRuntime, new_request_id
from app.errors import install_error_handlers
from app.logs import configure_logging, correlation_id
from app.openapi import complete_openapi
from app.routes import (
    api_keys,
    conversions,
    dashboard,
    erasure,
    exchange_rates,
    experiments,
    integrations,
    links,
    ops,
    pages,
    payouts,
    programs,
    reconciliation,
    review,
    rewards,
    snippet,
    stats,
)
from app.routes import (
    audit as audit_routes,
)
from app.routes import (
    webhooks as webhooks_routes,
)
from app.routes.pixel import ROUTE as PIXEL_ROUTE
from app.routes.pixel import PixelEndpoint
from app.routes.postback import ROUTE as POSTBACK_ROUTE
from app.routes.postback import PostbackEndpoint
from app.routes.redirect import RedirectEndpoint
from app.routes.snippet import STATIC_DIR
from app.runtime import open_runtime
from app.settings import Settings, load_settings

log = logging.getLogger(__name__)


class ObserveRequests:
    """Metrics, a correlation id and one log line per management API request."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        request_id = (
            next(
                (v.decode("latin-1")[:64] for k, v in scope["headers"] if k == b"x-request-id"),
                None,
            )
            or new_request_id().decode()
        )
        token = correlation_id.set(request_id)
        status = 500

        async def send_observed(message: dict[str, Any]) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [
                    *message.get("headers", []),
                    (b"x-request-id", request_id.encode("latin-1")),
                ]
            await send(message)

        # The audit context (app/audit.py) lives for this request only.
        audit_token = audit.current.set(None)
        try:
            await self.app(scope, receive, send_observed)
        finally:
            audit.current.reset(audit_token)
            route = scope.get("route")
            path = getattr(route, "path", "unmatched")
            elapsed = time.perf_counter() - started
            metrics.http_stats.observe(path, scope["method"], status, elapsed)
            if path not in ("/metrics", "/healthz", "/readyz"):
                log.info(
                    "request",
                    extra={
                        "method": scope["method"],
                        "route": path,
                        "status": status,
                        "ms": round(elapsed * 1000, 2),
                    },
                )
            correlation_id.reset(token)


class TrackingApp:
    """Routes /r/… to the hot path and everything else to the FastAPI app."""

    def __init__(self, api: FastAPI, max_body_bytes: int, max_upload_bytes: int) -> None:
        self.api = api
        self.redirect: RedirectEndpoint | None = None
        self.postback: PostbackEndpoint | None = None
        self.pixel: PixelEndpoint | None = None
        self.guard = EdgeGuard(api, max_body_bytes, max_upload_bytes)
        self._observed = ObserveRequests(self.guard)

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        redirect = self.redirect
        if redirect is not None and scope["type"] == "http" and scope["path"].startswith("/r/"):
            await redirect(scope, receive, send)
            return
        postback = self.postback
        if (postback is not None and scope["type"] == "http"
                and scope["path"] == POSTBACK_ROUTE and scope["method"] == "POST"):  # fmt: skip
            await postback(scope, receive, send)
            return
        pixel = self.pixel
        if (pixel is not None and scope["type"] == "http"
                and scope["path"] == PIXEL_ROUTE and scope["method"] == "GET"):  # fmt: skip
            await pixel(scope, receive, send)
            return
        await self._observed(scope, receive, send)


def create_app(settings: Settings | None = None) -> TrackingApp:
    settings = settings or load_settings()
    configure_logging(settings.log_level)

    @contextlib.asynccontextmanager
    async def lifespan(api: FastAPI) -> AsyncIterator[None]:
        async with open_runtime(settings) as runtime:
            api.state.runtime = runtime
            app.redirect = RedirectEndpoint(
                runtime.link_cache, runtime.click_buffers, settings, runtime.anonymize_ip
            )
            app.postback = PostbackEndpoint(
                runtime.secrets, runtime.conversion_buffer, runtime.anonymize_ip,
                runtime.rate_limits, settings.max_body_bytes, settings.trust_forwarded_for,
            )  # fmt: skip
            app.pixel = PixelEndpoint(
                runtime.secrets, runtime.conversion_buffer, runtime.rate_limits,
                settings.cookie_name, settings.max_body_bytes, settings.trust_forwarded_for,
            )  # fmt: skip
            app.guard.runtime = GuardRuntime(
                runtime.pool,
                runtime.rate_limits,
                runtime.lookups,
                settings.trust_forwarded_for,
                settings.ops_token,
            )
            log.info("api started")
            try:
                yield
            finally:
                app.redirect = None
                app.postback = None
                app.pixel = None
                app.guard.runtime = None
                log.info("api stopped")

    api = FastAPI(
        title="Referral tracking service",
        version="0.1.0",
        description="Tracked referral links, click capture, attribution and rewards.",
        lifespan=lifespan,
    )
    # FastAPI's documented way to complete the document: replace the method on the instance.
    api.openapi = lambda: complete_openapi(api)  # type: ignore[method-assign]  # see above
    install_error_handlers(api)
    api.include_router(ops.router)
    api.include_router(programs.router)
    api.include_router(links.router)
    api.include_router(conversions.router)
    api.include_router(stats.router)
    api.include_router(rewards.router)
    api.include_router(review.router)
    api.include_router(experiments.router)
    api.include_router(payouts.router)
    api.include_router(exchange_rates.router)
    api.include_router(api_keys.router)
    api.include_router(audit_routes.router)
    api.include_router(reconciliation.router)
    api.include_router(erasure.router)
    api.include_router(webhooks_routes.router)
    api.include_router(integrations.router)
    api.include_router(snippet.router)
    api.include_router(pages.router)
    api.include_router(dashboard.router)
    api.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    app = TrackingApp(api, settings.max_body_bytes, settings.max_upload_bytes)
    return app
