"""The operator's admin panel at /admin (sqladmin): users, jobs, payments, presets, the
ledger and a dashboard, behind a login with ADMIN_USERNAME / ADMIN_PASSWORD.

Every change goes through the same business modules as the REST API (accounts, jobs,
presets), so the same rules hold; the operator is written down as ``admin:<username>``.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fastapi import FastAPI
from redis.asyncio import BlockingConnectionPool, Redis
from sqladmin import Admin
from sqladmin.authentication import login_required
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from starlette.datastructures import State
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import Route

from comfygram.backend.storage import MediaStore
from comfygram.backend.workers import WorkerRegistry
from comfygram.queue import JobQueue
from comfygram.settings import Settings

log = logging.getLogger(__name__)

BASE_URL = "/admin"
TEMPLATES_DIR = Path(__file__).parent / "templates"
# The panel's own Redis connections (logins, sessions), apart from the backend's pool, so
# unauthenticated requests cannot take the connections the API needs; a request waits at most
# ADMIN_REDIS_WAIT_SECONDS for one, then is answered 503.
ADMIN_REDIS_CONNECTIONS = 16
ADMIN_REDIS_WAIT_SECONDS = 2.0


@dataclass
class Panel:
    """What the admin views need from the running backend (its app.state, once started)."""

    app: FastAPI
    settings: Settings
    base_url: str = BASE_URL
    templates: Any = field(default=None, repr=False)
    admin_redis_client: Redis | None = field(default=None, repr=False)

    @property
    def state(self) -> State:
        return self.app.state

    @property
    def sessions(self) -> async_sessionmaker:
        return self.app.state.sessions

    @property
    def redis(self) -> Redis:
        return self.app.state.redis

    @property
    def admin_redis(self) -> Redis:
        """The panel's own small pool (logins and sessions); exists once the app has started."""
        if self.admin_redis_client is None:
            raise RuntimeError("the admin panel's Redis is used before the backend started")
        return self.admin_redis_client

    @property
    def queue(self) -> JobQueue:
        return self.app.state.queue

    @property
    def store(self) -> MediaStore:
        return self.app.state.store

    @property
    def workers(self) -> WorkerRegistry:
        return self.app.state.workers

    @property
    def actor(self) -> str:
        return f"admin:{self.settings.admin_username}"


class _BackendSessions(async_sessionmaker):
    """The backend's own sessionmaker, which exists only once the app has started."""

    def __init__(self, panel: Panel) -> None:
        super().__init__(class_=AsyncSession, expire_on_commit=False)
        self._panel = panel

    def __call__(self, **local_kw: Any) -> AsyncSession:
        local_kw.pop("autocommit", None)
        return self._panel.sessions(**local_kw)


class _Admin(Admin):
    @login_required
    async def index(self, request: Request) -> Response:
        return RedirectResponse(f"{self.base_url}/dashboard", status_code=302)


def _logout_route(panel: Panel, admin: _Admin) -> Route:
    """Logout is a POST carrying the CSRF token (checked by the guard); a GET (a link, an image
    on another site) only shows the button."""

    async def logout(request: Request) -> Response:
        auth = admin.authentication_backend
        assert auth is not None
        if request.method == "POST":
            return await admin.logout(request)
        allowed = await auth.authenticate(request)
        if isinstance(allowed, Response):
            return allowed
        if not allowed:
            return RedirectResponse(request.url_for("admin:login"), status_code=302)
        return await panel.templates.TemplateResponse(
            request, "comfygram/logout.html", {"title": "Log out"}
        )

    return Route("/logout", logout, name="logout", methods=["GET", "POST"])


def _with_admin_redis(app: FastAPI, panel: Panel) -> None:
    """Open the panel's Redis pool when the app starts and close it when it stops."""
    started = app.router.lifespan_context

    @contextlib.asynccontextmanager
    async def lifespan(application: Any) -> AsyncIterator[Any]:
        pool = BlockingConnectionPool.from_url(
            panel.settings.redis_dsn,
            max_connections=ADMIN_REDIS_CONNECTIONS,
            timeout=ADMIN_REDIS_WAIT_SECONDS,
            decode_responses=True,
        )
        panel.admin_redis_client = Redis(connection_pool=pool)
        try:
            async with started(application) as state:
                yield state
        finally:
            client, panel.admin_redis_client = panel.admin_redis_client, None
            await client.aclose()
            await pool.aclose()

    app.router.lifespan_context = lifespan


def mount_admin(app: FastAPI, settings: Settings) -> Admin | None:
    """Mount the panel at /admin when ADMIN_USERNAME and ADMIN_PASSWORD are set.

    Raises ConfigError for an ADMIN_PASSWORD that is too short or is the API token.
    """
    from comfygram.backend.admin.auth import AdminAuth, csrf_token
    from comfygram.backend.admin.dashboard import DashboardView
    from comfygram.backend.admin.media import media_routes
    from comfygram.backend.admin.promos import PromoCodeAdmin
    from comfygram.backend.admin.support import VIEWS as SUPPORT_VIEWS
    from comfygram.backend.admin.views import VIEWS

    settings.check_admin_password()
    if not settings.admin_enabled:
        if settings.admin_username or settings.admin_password:
            log.warning("admin panel off: set both ADMIN_USERNAME and ADMIN_PASSWORD")
        return None
    panel = Panel(app=app, settings=settings)
    admin = _Admin(
        app,
        session_maker=_BackendSessions(panel),
        base_url=panel.base_url,
        title="comfygram admin",
        templates_dir=str(TEMPLATES_DIR),
        authentication_backend=AdminAuth(panel),
    )
    panel.templates = admin.templates
    admin.templates.env.globals["csrf_token"] = csrf_token
    for view in (DashboardView, *VIEWS, *SUPPORT_VIEWS, PromoCodeAdmin):
        # A subclass per app: sqladmin keeps its state on the view classes.
        admin.add_view(type(view.__name__, (view,), {"panel": panel}))
    for route in reversed(media_routes(panel, admin)):
        admin.admin.router.routes.insert(0, route)
    routes = admin.admin.router.routes
    routes[:] = [r for r in routes if getattr(r, "name", None) != "logout"]
    routes.insert(0, _logout_route(panel, admin))
    _with_admin_redis(app, panel)
    return admin
