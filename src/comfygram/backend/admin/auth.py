"""The admin panel's login: credentials from settings, a signed session cookie, and a limit
on failed logins kept in Redis."""

from __future__ import annotations

import hashlib
import hmac
import logging
import math
import secrets
from typing import TYPE_CHECKING, Any

from sqladmin.authentication import AuthenticationBackend
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

from comfygram.settings import Settings

if TYPE_CHECKING:
    from comfygram.backend.admin import Panel

log = logging.getLogger(__name__)

SESSION_COOKIE = "comfygram_admin"
SESSION_SECONDS = 12 * 3600
MAX_FAILURES = 5
FAILURE_WINDOW_SECONDS = 15 * 60
_SESSION_LABEL = b"comfygram admin session cookie v1"


def session_secret(password: str) -> str:
    """The cookie signing key: the same on every backend with this password, and a new one
    (everyone logged out) when the password changes."""
    return hmac.new(password.encode(), _SESSION_LABEL, hashlib.sha256).hexdigest()


class LoginLimiter:
    """At most MAX_FAILURES failed logins per FAILURE_WINDOW_SECONDS per client address and
    per username, counted in Redis so every backend shares the count."""

    def __init__(self, panel: Panel) -> None:
        self.panel = panel

    def _keys(self, address: str, username: str) -> list[str]:
        prefix = f"{self.panel.settings.redis_prefix}:admin:login-failures"
        user = hashlib.sha256(username.strip().lower().encode()).hexdigest()[:32]
        return [f"{prefix}:ip:{address}", f"{prefix}:user:{user}"]

    async def blocked_for(self, address: str, username: str) -> int:
        """Seconds until this address and username may try again; 0 when they may now."""
        redis = self.panel.redis
        wait = 0
        for key in self._keys(address, username):
            count = await redis.get(key)
            if count is not None and int(count) >= MAX_FAILURES:
                wait = max(wait, int(await redis.ttl(key)), 1)
        return wait

    async def failed(self, address: str, username: str) -> None:
        async with self.panel.redis.pipeline(transaction=True) as pipe:
            for key in self._keys(address, username):
                # The window starts at the first failure.
                pipe.set(key, 0, ex=FAILURE_WINDOW_SECONDS, nx=True)
                pipe.incr(key)
            await pipe.execute()


def client_address(request: Request) -> str:
    return request.client.host if request.client else "unknown"


class AdminAuth(AuthenticationBackend):
    def __init__(self, panel: Panel) -> None:
        settings: Settings = panel.settings
        assert settings.admin_username and settings.admin_password
        password = settings.admin_password.get_secret_value()
        super().__init__(
            secret_key=session_secret(password),
            session_cookie=SESSION_COOKIE,
            max_age=SESSION_SECONDS,
            path=panel.base_url,
            same_site="lax",
        )
        self.panel = panel
        self.limiter = LoginLimiter(panel)
        self._username = settings.admin_username.encode()
        self._password = password.encode()

    async def login(self, request: Request) -> Response | bool:
        form = await request.form()
        username = str(form.get("username") or "")
        password = str(form.get("password") or "")
        address = client_address(request)
        wait = await self.limiter.blocked_for(address, username)
        if wait:
            log.warning(
                "admin login refused for %r from %s: too many failures", username[:64], address
            )
            minutes = max(1, math.ceil(wait / 60))
            return await self.panel.templates.TemplateResponse(
                request,
                "sqladmin/login.html",
                {"error": f"Too many failed logins; try again in {minutes} minutes."},
                status_code=429,
            )
        # Both compared in constant time, and both always compared.
        right_user = hmac.compare_digest(username.encode(), self._username)
        right_password = hmac.compare_digest(password.encode(), self._password)
        if not (right_user and right_password):
            await self.limiter.failed(address, username)
            log.warning("admin login failed for %r from %s", username[:64], address)
            return False
        request.session.clear()
        request.session.update({"admin": username, "csrf": secrets.token_urlsafe(32)})
        log.info("admin %s logged in from %s", username, address)
        return RedirectResponse(f"{self.panel.base_url}/dashboard", status_code=302)

    async def logout(self, request: Request) -> Response | bool:
        request.session.clear()
        return False  # sqladmin sends the browser to the login page

    async def authenticate(self, request: Request) -> Response | bool:
        admin = request.session.get("admin")
        if not isinstance(admin, str) or not hmac.compare_digest(admin.encode(), self._username):
            return False
        if "csrf" not in request.session:
            request.session["csrf"] = secrets.token_urlsafe(32)
        return True

    async def get_user_id(self, request: Request) -> Any:
        return request.session.get("admin")


def csrf_token(request: Request) -> str:
    return str(request.session.get("csrf", "")) if "session" in request.scope else ""


def csrf_ok(request: Request, submitted: object) -> bool:
    expected = csrf_token(request)
    return bool(expected) and hmac.compare_digest(str(submitted or "").encode(), expected.encode())
