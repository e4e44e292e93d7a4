"""The admin panel's login: credentials from settings, a signed session cookie naming a session
kept in Redis (so logout ends it everywhere), and limits on login attempts kept in Redis.

Login attempts are counted before they are judged (one Lua script), so no amount of concurrency
gets more than the limit evaluated; they go through a small gate and the panel's own small
Redis pool, so a flood of them cannot take connections from the rest of the backend.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import ipaddress
import logging
import math
import secrets
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from redis.exceptions import RedisError
from sqladmin.authentication import AuthenticationBackend
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

from comfygram.settings import Settings

if TYPE_CHECKING:
    from comfygram.backend.admin import Panel

log = logging.getLogger(__name__)

SESSION_COOKIE = "comfygram_admin"
SESSION_SECONDS = 12 * 3600
# Login attempts per FAILURE_WINDOW_SECONDS: per client address, and per username from all
# addresses together (trusted addresses are held only by their own per-address limit).
MAX_FAILURES = 5
USERNAME_MAX_FAILURES = 50
FAILURE_WINDOW_SECONDS = 15 * 60
# Logins judged at once per backend process, logins allowed to wait for a turn, and how long.
LOGIN_CONCURRENCY = 8
LOGIN_WAITING = 64
LOGIN_WAIT_SECONDS = 2.0
_SESSION_LABEL = b"comfygram admin session cookie v1"

# Count the attempt first, then decide on the count: INCR and the window's expiry in one step.
# The username is counted only for an attempt its address may make, so a single address
# cannot lock the username for everyone; a trusted address is held by its own count only.
# Returns {allowed (0/1), username counted (0/1), seconds until the blocking window ends}.
_ATTEMPT = """
local function count(key)
  local n = redis.call('INCR', key)
  if n == 1 or redis.call('TTL', key) < 0 then
    redis.call('EXPIRE', key, ARGV[1])
  end
  return n
end
if count(KEYS[1]) > tonumber(ARGV[2]) then
  return {0, 0, redis.call('TTL', KEYS[1])}
end
if ARGV[4] == '1' then
  return {1, 0, 0}
end
if count(KEYS[2]) > tonumber(ARGV[3]) then
  return {0, 1, redis.call('TTL', KEYS[2])}
end
return {1, 1, 0}
"""

# A successful login gives its attempt back (never creating a key without expiry).
_REFUND = """
for _, key in ipairs(KEYS) do
  if redis.call('EXISTS', key) == 1 then redis.call('DECR', key) end
end
return 0
"""


def session_secret(password: str) -> str:
    """The cookie signing key: the same on every backend with this password, and a new one
    (everyone logged out) when the password changes."""
    return hmac.new(password.encode(), _SESSION_LABEL, hashlib.sha256).hexdigest()


class Busy(Exception):
    """Too many logins at once: answered 503 without touching Redis."""


class LoginGate:
    """At most `active` logins judged at once and `waiting` in line for at most `wait_seconds`;
    anyone beyond is told to come back (Busy) instead of queueing without bound."""

    def __init__(self, active: int, waiting: int, wait_seconds: float) -> None:
        self._turns = asyncio.Semaphore(active)
        self._waiting = 0
        self._max_waiting = waiting
        self._wait_seconds = wait_seconds

    @contextlib.asynccontextmanager
    async def turn(self) -> AsyncIterator[None]:
        if self._waiting >= self._max_waiting:
            raise Busy
        self._waiting += 1
        try:
            async with asyncio.timeout(self._wait_seconds):
                await self._turns.acquire()
        except TimeoutError:
            raise Busy from None
        finally:
            self._waiting -= 1
        try:
            yield
        finally:
            self._turns.release()


@dataclass(frozen=True)
class Attempt:
    allowed: bool
    wait_seconds: int
    counted: tuple[str, ...]


class LoginLimiter:
    """Login attempts per client address and per username, counted in Redis so every backend
    shares the count; see _ATTEMPT."""

    def __init__(self, panel: Panel) -> None:
        self.panel = panel

    def _keys(self, address: str, username: str) -> tuple[str, str]:
        prefix = f"{self.panel.settings.redis_prefix}:admin:login-attempts"
        user = hashlib.sha256(username.strip().lower().encode()).hexdigest()[:32]
        return f"{prefix}:ip:{limited_address(address)}", f"{prefix}:user:{user}"

    async def attempt(self, address: str, username: str, *, trusted: bool) -> Attempt:
        keys = self._keys(address, username)
        args = [FAILURE_WINDOW_SECONDS, MAX_FAILURES, USERNAME_MAX_FAILURES, int(trusted)]
        allowed, user_counted, ttl = await self.panel.admin_redis.eval(_ATTEMPT, 2, *keys, *args)
        counted = keys if int(user_counted) else keys[:1]
        return Attempt(bool(int(allowed)), max(int(ttl), 1) if not int(allowed) else 0, counted)

    async def refund(self, attempt: Attempt) -> None:
        await self.panel.admin_redis.eval(_REFUND, len(attempt.counted), *attempt.counted)


class SessionStore:
    """Logged-in sessions in Redis (by a hash of the id the cookie carries), so logging out
    ends a session on every backend, whatever happened to the cookie."""

    def __init__(self, panel: Panel) -> None:
        self.panel = panel

    def _key(self, session_id: str) -> str:
        digest = hashlib.sha256(session_id.encode()).hexdigest()
        return f"{self.panel.settings.redis_prefix}:admin:session:{digest}"

    async def start(self) -> str:
        session_id = secrets.token_urlsafe(32)
        await self.panel.admin_redis.set(self._key(session_id), "1", ex=SESSION_SECONDS)
        return session_id

    async def alive(self, session_id: str) -> bool:
        """Whether the session exists; it then lasts SESSION_SECONDS from now, as the cookie."""
        return bool(await self.panel.admin_redis.expire(self._key(session_id), SESSION_SECONDS))

    async def end(self, session_id: str) -> None:
        await self.panel.admin_redis.delete(self._key(session_id))


def client_address(request: Request) -> str:
    return request.client.host if request.client else "unknown"


def limited_address(address: str) -> str:
    """What the per-address limit counts: the IPv4 address, or the /64 of an IPv6 one (one
    subscriber's block; counting single IPv6 addresses would give a guesser billions)."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return address[:64]
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.ip_network(f"{ip}/64", strict=False))
    return str(ip)


def _networks(settings: Settings) -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
    return [ipaddress.ip_network(entry, strict=False) for entry in settings.admin_trusted_ips]


def username_for_log(username: str, key: bytes) -> str:
    """How a username that is not the operator's appears in the log: a hash and its length,
    never the text (an operator may type the password there). The hash is keyed with a random
    key of this process, so the log cannot be used to check a guess of the password offline;
    it still shows one username tried again and again."""
    digest = hmac.new(key, username.encode(), hashlib.sha256).hexdigest()[:8]
    return f"#{digest} ({len(username)} characters)"


class AdminAuth(AuthenticationBackend):
    def __init__(self, panel: Panel) -> None:
        from comfygram.backend.admin.guard import AdminGuard

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
        # Inside the session middleware, so the guard sees the session's CSRF token.
        self.middlewares.append(Middleware(AdminGuard, panel=panel))
        self.panel = panel
        self.limiter = LoginLimiter(panel)
        self.sessions = SessionStore(panel)
        self.gate = LoginGate(LOGIN_CONCURRENCY, LOGIN_WAITING, LOGIN_WAIT_SECONDS)
        self._trusted = _networks(settings)
        self._log_key = secrets.token_bytes(32)
        self._username = settings.admin_username.encode()
        self._password = password.encode()

    def trusted(self, address: str) -> bool:
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            return False
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped  # ::ffff:127.0.0.1 from a dual-stack socket
        return any(ip in network for network in self._trusted)

    def _who(self, username: str) -> str:
        if hmac.compare_digest(username.encode(), self._username):
            return repr(username)
        return f"unknown username {username_for_log(username, self._log_key)}"

    async def _login_page(
        self, request: Request, error: str, status: int, headers: dict[str, str] | None = None
    ) -> Response:
        response = await self.panel.templates.TemplateResponse(
            request, "sqladmin/login.html", {"error": error}, status_code=status
        )
        response.headers.update(headers or {})
        return response

    async def login(self, request: Request) -> Response | bool:
        form = await request.form()
        username = str(form.get("username") or "")
        password = str(form.get("password") or "")
        address = client_address(request)
        trusted = self.trusted(address)
        try:
            # A trusted address does not queue behind a flood of others' attempts.
            async with contextlib.nullcontext() if trusted else self.gate.turn():
                return await self._judge(request, username, password, address, trusted)
        except Busy:
            log.warning("admin login from %s turned away: too many logins at once", address)
            return await self._login_page(
                request,
                "Too many logins at once; try again in a moment.",
                503,
                {"Retry-After": "5"},
            )
        except (RedisError, OSError) as exc:
            log.warning("admin login from %s: Redis unreachable (%s)", address, type(exc).__name__)
            return await self._login_page(
                request,
                "The login is unavailable (Redis is unreachable); try again in a moment.",
                503,
                {"Retry-After": "5"},
            )

    async def _judge(
        self, request: Request, username: str, password: str, address: str, trusted: bool
    ) -> Response | bool:
        attempt = await self.limiter.attempt(address, username, trusted=trusted)
        if not attempt.allowed:
            log.warning(
                "admin login refused for %s from %s: too many attempts",
                self._who(username),
                address,
            )
            minutes = max(1, math.ceil(attempt.wait_seconds / 60))
            return await self._login_page(
                request, f"Too many failed logins; try again in {minutes} minutes.", 429
            )
        # Both compared in constant time, and both always compared.
        right_user = hmac.compare_digest(username.encode(), self._username)
        right_password = hmac.compare_digest(password.encode(), self._password)
        if not (right_user and right_password):
            log.warning("admin login failed for %s from %s", self._who(username), address)
            return False
        await self.limiter.refund(attempt)
        session_id = await self.sessions.start()
        request.session.clear()
        request.session.update(
            {"admin": username, "sid": session_id, "csrf": secrets.token_urlsafe(32)}
        )
        log.info("admin %s logged in from %s", username, address)
        return RedirectResponse(f"{self.panel.base_url}/dashboard", status_code=302)

    async def logout(self, request: Request) -> Response | bool:
        """End the session here and in Redis (the guard has checked the CSRF token)."""
        session_id = request.session.get("sid")
        request.session.clear()
        if isinstance(session_id, str):
            try:
                await self.sessions.end(session_id)
            except (RedisError, OSError) as exc:
                log.warning("admin logout: Redis unreachable (%s)", type(exc).__name__)
                return Response(
                    "Logging out failed: Redis is unreachable. Try again in a moment.",
                    status_code=503,
                    media_type="text/plain",
                )
        return False  # sqladmin sends the browser to the login page

    async def authenticate(self, request: Request) -> Response | bool:
        admin = request.session.get("admin")
        session_id = request.session.get("sid")
        if not isinstance(admin, str) or not hmac.compare_digest(admin.encode(), self._username):
            return False
        if not isinstance(session_id, str):
            return False  # a cookie from before sessions were kept in Redis
        try:
            alive = await self.sessions.alive(session_id)
        except (RedisError, OSError) as exc:
            log.warning("admin session check: Redis unreachable (%s)", type(exc).__name__)
            return Response(
                "The admin panel needs Redis, which is unreachable. Try again in a moment.",
                status_code=503,
                media_type="text/plain",
                headers={"Retry-After": "5"},
            )
        if not alive:
            request.session.clear()
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
