"""The admin panel at /admin: login, views, the operator's actions, the dashboard and media.

A real backend in-process (SQLite and PostgreSQL), real Redis; requests go through the panel's
HTML forms as a browser would send them. Besides the built-in presets, the rich test presets
(tests/rich_presets.py: `duo` two photos and options, `clip` a video, `loop` an animation)
give jobs with several inputs and outputs of every kind.
"""

from __future__ import annotations

import asyncio
import io
import os
import re
import subprocess
import sys
import uuid
from datetime import UTC, datetime, timedelta

import httpx
import pytest
from PIL import Image
from pydantic import SecretStr
from sqlalchemy import func, select

from comfygram.backend.admin.auth import SESSION_COOKIE, session_secret
from comfygram.backend.app import create_app
from comfygram.backend.models import Job, LedgerEntry, Payment, User
from comfygram.backend.models import Preset as PresetRow
from comfygram.backend.presets import sync_presets
from comfygram.backend.schemas import WorkerReport
from comfygram.presets import load_presets
from comfygram.settings import ConfigError, Settings
from tests import images
from tests.admin_helpers import (
    ADMIN_PASSWORD,
    ADMIN_USERNAME,
    csrf,
    h264_mp4,
    login,
    media_cards,
    panel_client,
    seeded_job,
    seeded_payment,
    stat,
    with_admin,
)
from tests.helpers import API_TOKEN, backend_client, create_job, grant, register
from tests.rich_presets import write_rich_presets


@pytest.fixture
async def app(settings, redis, tmp_path, seeded_database):
    presets = write_rich_presets(tmp_path / "presets")
    application = create_app(with_admin(settings, presets_dir=presets))
    async with application.router.lifespan_context(application):
        yield application


@pytest.fixture
async def api(app):
    async with backend_client(app) as client:
        yield client


@pytest.fixture
async def browser(app):
    async with panel_client(app) as client:
        yield client


@pytest.fixture
async def admin(browser):
    response = await login(browser)
    assert response.status_code == 302, response.text
    return browser


async def status(api, job_id: str, target: str, **extra) -> httpx.Response:
    response = await api.post(f"/api/jobs/{job_id}/status", json={"status": target, **extra})
    assert response.status_code == 200, response.text
    return response


async def new_job(api, telegram_id: int = 1001, preset: str = "bw", **extra) -> dict:
    response = await create_job(api, telegram_id, preset, **extra)
    assert response.status_code == 201, response.text
    return response.json()


async def user_pk(app, telegram_id: int) -> int:
    async with app.state.sessions() as session:
        return await session.scalar(select(User.id).where(User.telegram_id == telegram_id))


async def ledger(app, **where) -> list[LedgerEntry]:
    async with app.state.sessions() as session:
        query = select(LedgerEntry).order_by(LedgerEntry.id)
        for name, value in where.items():
            query = query.where(getattr(LedgerEntry, name) == value)
        return list(await session.scalars(query))


# -- login ----------------------------------------------------------------------------------


async def test_login_wrong_then_right_then_logout(browser):
    page = await browser.get("/admin/dashboard")
    assert page.status_code == 302 and page.headers["location"].endswith("/admin/login")
    form = await browser.get("/admin/login")
    assert form.status_code == 200
    assert 'name="username"' in form.text and 'name="password"' in form.text

    wrong = await login(browser, password="not-the-password")
    assert wrong.status_code == 400 and "Invalid credentials" in wrong.text
    assert SESSION_COOKIE not in browser.cookies
    wrong_user = await login(browser, username="root")
    assert wrong_user.status_code == 400

    right = await login(browser)
    assert right.status_code == 302 and right.headers["location"] == "/admin/dashboard"
    cookie = right.headers["set-cookie"]
    assert cookie.startswith(f"{SESSION_COOKIE}=")
    assert "httponly" in cookie.lower() and "samesite=lax" in cookie.lower()
    assert "path=/admin" in cookie.lower()
    landing = await browser.get("/admin/")
    assert landing.status_code == 302 and landing.headers["location"] == "/admin/dashboard"
    dashboard = await browser.get("/admin/dashboard")
    assert dashboard.status_code == 200 and "Dashboard" in dashboard.text

    out = await browser.post("/admin/logout", data={"csrf": await csrf(browser)})
    assert out.status_code == 302 and out.headers["location"].endswith("/admin/login")
    again = await browser.get("/admin/dashboard")
    assert again.status_code == 302 and again.headers["location"].endswith("/admin/login")


async def test_the_api_token_does_not_open_the_panel(app):
    async with backend_client(app) as client:
        page = await client.get("/admin/user/list")
        assert page.status_code == 302
        refused = await login(client, password=API_TOKEN)
        assert refused.status_code == 400


async def test_six_failed_logins_lock_out_even_the_right_password(app, redis, settings):
    browser = panel_client(app, "203.0.113.99")  # not a trusted address
    for _ in range(5):
        assert (await login(browser, password="guess-guess-guess")).status_code == 400
    locked = await login(browser)
    assert locked.status_code == 429
    assert "Too many failed logins; try again in 15 minutes" in locked.text
    assert SESSION_COOKIE not in browser.cookies
    # Another username from the same address is locked out too.
    assert (await login(browser, username="someone")).status_code == 429
    # The counters live in the app's Redis, under its prefix, and expire.
    keys = [key async for key in redis.scan_iter(f"{settings.redis_prefix}:admin:*")]
    assert len(keys) == 2  # per address and per username
    for key in keys:
        assert 0 < await redis.ttl(key) <= 15 * 60
    await browser.aclose()


async def test_failures_below_the_limit_do_not_lock_out(browser):
    for _ in range(4):
        assert (await login(browser, password="guess-guess-guess")).status_code == 400
    assert (await login(browser)).status_code == 302


async def test_the_password_never_reaches_the_logs(browser, caplog):
    caplog.set_level("DEBUG")
    await login(browser, password="typo-of-the-secret-123")
    await login(browser)
    assert "typo-of-the-secret-123" not in caplog.text
    assert ADMIN_PASSWORD not in caplog.text


async def test_a_session_from_another_password_is_not_accepted(app, settings, redis):
    # Same cookie, other key: changing ADMIN_PASSWORD logs everyone out.
    other = create_app(with_admin(settings, admin_password=SecretStr("another-password-42")))
    async with panel_client(app) as browser:
        await login(browser)
        cookie = browser.cookies[SESSION_COOKIE]
    async with other.router.lifespan_context(other), panel_client(other) as client:
        client.cookies.set(SESSION_COOKIE, cookie, path="/admin")
        assert (await client.get("/admin/dashboard")).status_code == 302
    assert session_secret("a") != session_secret("b") == session_secret("b")


# -- settings -------------------------------------------------------------------------------


def test_the_api_token_as_admin_password_is_refused(settings):
    with pytest.raises(ConfigError, match="ADMIN_PASSWORD must not be the API_TOKEN"):
        create_app(with_admin(settings, admin_password=SecretStr(API_TOKEN)))


def test_a_short_admin_password_is_refused(settings):
    with pytest.raises(ConfigError, match="ADMIN_PASSWORD is too short"):
        create_app(with_admin(settings, admin_password=SecretStr("short-pw")))


@pytest.mark.parametrize(
    ("password", "message"),
    [
        (API_TOKEN, "comfygram: ADMIN_PASSWORD must not be the API_TOKEN: give the panel its own"),
        ("eleven-char", "comfygram: ADMIN_PASSWORD is too short: use at least 12 characters"),
    ],
)
def test_comfygram_backend_stops_with_one_line(tmp_path, password, message):
    env = {
        "PATH": os.environ["PATH"],
        "API_TOKEN": API_TOKEN,
        "ADMIN_USERNAME": "operator",
        "ADMIN_PASSWORD": password,
        "DATABASE_URL": f"sqlite:///{tmp_path}/db.sqlite",
    }
    done = subprocess.run(
        [sys.executable, "-m", "comfygram", "backend", "--port", "1"],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    (line,) = done.stderr.strip().splitlines()
    assert line.startswith(message) and password not in line


async def test_no_panel_without_both_settings(settings, redis):
    application = create_app(with_admin(settings, admin_password=None))
    async with application.router.lifespan_context(application), panel_client(application) as c:
        assert (await c.get("/admin/login")).status_code == 404
    assert settings.admin_enabled is False


def test_admin_settings_from_the_environment(monkeypatch):
    monkeypatch.setenv("ADMIN_USERNAME", "ops")
    monkeypatch.setenv("ADMIN_PASSWORD", "twelve-chars")
    loaded = Settings(_env_file=None)
    assert loaded.admin_enabled and "twelve-chars" in loaded.secrets()
    monkeypatch.setenv("ADMIN_PASSWORD", "")
    assert not Settings(_env_file=None).admin_enabled


# -- access ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/admin/"),
        ("GET", "/admin/dashboard"),
        ("GET", "/admin/user/list"),
        ("GET", "/admin/job/list"),
        ("GET", "/admin/payment/list"),
        ("GET", "/admin/preset/list"),
        ("GET", "/admin/ledger-entry/list"),
        ("GET", "/admin/job/details/00000000-0000-0000-0000-000000000000"),
        ("GET", "/admin/preset/edit/bw"),
        ("POST", "/admin/preset/edit/bw"),
        ("GET", "/admin/user/credit/1"),
        ("POST", "/admin/user/credit/1"),
        ("POST", "/admin/user/ban/1"),
        ("POST", "/admin/job/refund/00000000-0000-0000-0000-000000000000"),
        ("POST", "/admin/job/retry/00000000-0000-0000-0000-000000000000"),
        ("POST", "/admin/preset/follow-file/bw"),
        ("GET", "/admin/media/jobs/00000000-0000-0000-0000-000000000000/input"),
        ("GET", "/admin/media/jobs/00000000-0000-0000-0000-000000000000/result"),
        ("GET", "/admin/media/jobs/00000000-0000-0000-0000-000000000000/inputs/0"),
        ("GET", "/admin/media/jobs/00000000-0000-0000-0000-000000000000/outputs/0"),
        ("GET", "/admin/media/jobs/00000000-0000-0000-0000-000000000000/thumbnail"),
    ],
)
async def test_everything_needs_the_login(browser, method, path):
    response = await browser.request(method, path, data={"price": "0", "banned": "1"})
    assert response.status_code == 302, response.text
    assert response.headers["location"].endswith("/admin/login")


async def test_forms_need_the_session_csrf_token(admin, api, app):
    await register(api, 1001)
    pk = await user_pk(app, 1001)
    refused = await admin.post(f"/admin/user/ban/{pk}", data={"banned": "1", "csrf": "forged"})
    assert refused.status_code == 403
    async with app.state.sessions() as session:
        assert (await session.get(User, pk)).banned is False


# -- users ----------------------------------------------------------------------------------


async def test_user_list_and_search_by_telegram_id_or_username(admin, api):
    await register(api, 424242, username="alice")
    await register(api, 777001, username="bob")
    listed = await admin.get("/admin/user/list")
    assert listed.status_code == 200 and "424242" in listed.text and "777001" in listed.text
    found = await admin.get("/admin/user/list", params={"search": "424242"})
    assert "424242" in found.text and "777001" not in found.text
    by_name = await admin.get("/admin/user/list", params={"search": "@bob"})
    assert "777001" in by_name.text and "424242" not in by_name.text
    # No create or delete.
    assert (await admin.get("/admin/user/create")).status_code == 403


async def test_block_refuses_jobs_and_payments_until_unblocked(admin, api, app):
    await register(api, 1001)
    pk = await user_pk(app, 1001)
    details = f"/admin/user/details/{pk}"
    token = await csrf(admin, details)
    blocked = await admin.post(f"/admin/user/ban/{pk}", data={"banned": "1", "csrf": token})
    assert blocked.status_code == 302 and blocked.headers["location"].endswith(details)
    assert (await api.get("/api/users/by-telegram-id/1001")).json()["banned"] is True

    refused = await create_job(api, 1001, "bw")
    assert refused.status_code == 403
    assert refused.json()["error"]["code"] == "user_banned"
    assert "blocked by the operator" in refused.json()["error"]["message"]
    payment = await api.post("/api/payments/create", json={"telegram_id": 1001, "package": "small"})
    assert payment.status_code == 403 and payment.json()["error"]["code"] == "user_banned"
    assert len(await ledger(app, reason="job_charge")) == 0
    page = await admin.get(details)
    assert "Unblock" in page.text

    unblocked = await admin.post(f"/admin/user/ban/{pk}", data={"banned": "0", "csrf": token})
    assert unblocked.status_code == 302
    assert (await create_job(api, 1001, "bw")).status_code == 201


async def test_a_payment_offered_before_the_block_is_refused_at_precheck(admin, api, app):
    await register(api, 1001)
    invoice = (
        await api.post("/api/payments/create", json={"telegram_id": 1001, "package": "small"})
    ).json()
    pk = await user_pk(app, 1001)
    token = await csrf(admin, f"/admin/user/details/{pk}")
    await admin.post(f"/admin/user/ban/{pk}", data={"banned": "1", "csrf": token})
    body = {"payload": invoice["payload"], "total_amount": invoice["amount"], "currency": "XTR"}
    precheck = await api.post("/api/payments/precheck", json=body)
    assert precheck.status_code == 403 and precheck.json()["error"]["code"] == "user_banned"


async def test_credit_adjustment_posts_once_with_actor_and_note(admin, api, app):
    await register(api, 1001)  # signup bonus 3
    pk = await user_pk(app, 1001)
    form_page = await admin.get(f"/admin/user/credit/{pk}")
    key = re.search(r'name="request_key" value="([^"]+)"', form_page.text).group(1)
    token = re.search(r'name="csrf" value="([^"]+)"', form_page.text).group(1)
    form = {"amount": "25", "reason": "goodwill for ticket #12", "request_key": key, "csrf": token}
    first = await admin.post(f"/admin/user/credit/{pk}", data=form)
    second = await admin.post(f"/admin/user/credit/{pk}", data=form)  # a double submit
    assert first.status_code == second.status_code == 302
    entries = await ledger(app, reason="admin_adjustment")
    assert len(entries) == 1
    assert (entries[0].amount, entries[0].actor, entries[0].note) == (
        25,
        f"admin:{ADMIN_USERNAME}",
        "goodwill for ticket #12",
    )
    assert (await api.get("/api/users/by-telegram-id/1001")).json()["balance"] == 28
    page = await admin.get(f"/admin/user/details/{pk}")
    assert "already posted" in page.text  # the flash of the second submit
    assert "goodwill for ticket #12" in page.text

    # A new form (a new key) takes credits away again.
    key = re.search(
        r'name="request_key" value="([^"]+)"', (await admin.get(f"/admin/user/credit/{pk}")).text
    ).group(1)
    taken = await admin.post(
        f"/admin/user/credit/{pk}",
        data={"amount": "-8", "reason": "chargeback", "request_key": key, "csrf": token},
    )
    assert taken.status_code == 302
    assert (await api.get("/api/users/by-telegram-id/1001")).json()["balance"] == 20


async def test_concurrent_double_submits_post_once(admin, api, app):
    await register(api, 1001)
    pk = await user_pk(app, 1001)
    token = await csrf(admin, f"/admin/user/credit/{pk}")
    form = {"amount": "5", "reason": "race", "request_key": str(uuid.uuid4()), "csrf": token}
    responses = await asyncio.gather(
        *(admin.post(f"/admin/user/credit/{pk}", data=form) for _ in range(4))
    )
    assert {r.status_code for r in responses} == {302}
    assert len(await ledger(app, reason="admin_adjustment")) == 1
    assert (await api.get("/api/users/by-telegram-id/1001")).json()["balance"] == 8


async def test_credit_adjustment_below_zero_is_refused_and_writes_nothing(admin, api, app):
    await register(api, 1001)  # balance 3
    pk = await user_pk(app, 1001)
    token = await csrf(admin, f"/admin/user/credit/{pk}")
    refused = await admin.post(
        f"/admin/user/credit/{pk}",
        data={"amount": "-10", "reason": "oops", "request_key": str(uuid.uuid4()), "csrf": token},
    )
    assert refused.status_code == 400
    assert "Not enough credits" in refused.text and "the balance is 3" in refused.text
    assert await ledger(app, reason="admin_adjustment") == []
    assert (await api.get("/api/users/by-telegram-id/1001")).json()["balance"] == 3
    for bad in ({"amount": "0", "reason": "x"}, {"amount": "ten", "reason": "x"}):
        form = {**bad, "request_key": str(uuid.uuid4()), "csrf": token}
        response = await admin.post(f"/admin/user/credit/{pk}", data=form)
        assert response.status_code == 400
    no_reason = {"amount": "5", "reason": " ", "request_key": str(uuid.uuid4()), "csrf": token}
    response = await admin.post(f"/admin/user/credit/{pk}", data=no_reason)
    assert response.status_code == 400 and "reason" in response.text
    nul = {"amount": "5", "reason": "a\x00b", "request_key": str(uuid.uuid4()), "csrf": token}
    assert (await admin.post(f"/admin/user/credit/{pk}", data=nul)).status_code == 400
    assert await ledger(app, reason="admin_adjustment") == []


# -- jobs -----------------------------------------------------------------------------------


async def test_job_list_filters_and_search(admin, api):
    await register(api, 1001)
    await register(api, 2002)
    first = await new_job(api, 1001, "bw")
    second = await new_job(api, 2002, "invert")
    await status(api, second["id"], "cancelled")
    listed = await admin.get("/admin/job/list")
    assert first["id"] in listed.text and second["id"] in listed.text
    cancelled = await admin.get("/admin/job/list", params={"status": "cancelled"})
    assert second["id"] in cancelled.text and first["id"] not in cancelled.text
    by_preset = await admin.get("/admin/job/list", params={"preset_slug": "bw"})
    assert first["id"] in by_preset.text and second["id"] not in by_preset.text
    by_id = await admin.get("/admin/job/list", params={"search": first["id"]})
    assert first["id"] in by_id.text and second["id"] not in by_id.text
    by_user = await admin.get("/admin/job/list", params={"search": "2002"})
    assert second["id"] in by_user.text and first["id"] not in by_user.text
    assert (await admin.get("/admin/job/create")).status_code == 403
    assert (await admin.get(f"/admin/job/edit/{first['id']}")).status_code == 403


async def test_job_details_show_images_error_attempts_and_timings(admin, api, app):
    await register(api, 1001)
    photo = images.png(80, 60, (1, 2, 3))
    job = (await create_job(api, 1001, "bw", photo)).json()
    await status(api, job["id"], "processing", worker="gpu-1")
    await status(api, job["id"], "queued", error="ComfyUI timed out")
    await status(api, job["id"], "processing", worker="gpu-2")
    result = images.png(160, 120, (9, 9, 9))
    await api.put(f"/api/jobs/{job['id']}/result", files={"image": ("r.png", result, "image/png")})
    await status(api, job["id"], "succeeded")

    page = await admin.get(f"/admin/job/details/{job['id']}")
    assert page.status_code == 200
    media = f"/admin/media/jobs/{job['id']}"
    cards = media_cards(page.text)
    assert list(cards) == ["input-0", "output-0"]
    assert (cards["input-0"].element, cards["input-0"].src) == ("img", f"{media}/inputs/0")
    assert cards["input-0"].label == "input 0: photo"
    assert cards["input-0"].facts["dimensions"] == "80×60"
    assert (cards["output-0"].element, cards["output-0"].src) == ("img", f"{media}/outputs/0")
    assert cards["output-0"].full == f"{media}/outputs/0"
    assert cards["output-0"].facts["dimensions"] == "160×120"
    assert "frames" not in cards["output-0"].facts  # a still image has none
    assert f'<a href="{media}/outputs/0" target="_blank" rel="noopener"><img' in page.text
    assert "ComfyUI timed out" in page.text and "gpu-2" in page.text
    for label in ("created", "started", "finished", "queue wait", "run time"):
        assert f'data-timing="{label}"' in page.text
    assert re.search(r'data-timing="run time">\d+\.\d s<', page.text)

    # The first of each also at the older addresses.
    for path in (f"{media}/input", f"{media}/inputs/0"):
        assert (await admin.get(path)).content == photo
    for path in (f"{media}/result", f"{media}/outputs/0"):
        served = await admin.get(path)
        assert served.content == result and served.headers["content-type"] == "image/png"
    # The job list's thumbnail: within 128 x 96, the result's colour.
    small = await thumbnail(admin, job["id"])
    assert small.size == (128, 96) and near(small.getpixel((64, 48)), (9, 9, 9))
    missing = await admin.get("/admin/media/jobs/00000000-0000-0000-0000-000000000000/input")
    assert missing.status_code == 404
    assert (await admin.get("/admin/media/jobs/not-a-job/input")).status_code == 404
    assert (await admin.get("/admin/media/jobs/not-a-job/outputs/0")).status_code == 404


async def test_a_job_without_result_has_no_result_image(admin, api):
    await register(api, 1001)
    job = await new_job(api, 1001)
    page = await admin.get(f"/admin/job/details/{job['id']}")
    assert list(media_cards(page.text)) == ["input-0"]
    assert 'id="no-outputs"' in page.text and "No output (queued)" in page.text
    media = f"/admin/media/jobs/{job['id']}"
    assert (await admin.get(f"{media}/result")).status_code == 404
    assert (await admin.get(f"{media}/outputs/0")).status_code == 404
    assert (await admin.get(f"{media}/thumbnail")).status_code == 404
    listed = await admin.get("/admin/job/list")
    assert f"{media}/thumbnail" not in listed.text


# -- a job's inputs and outputs (issue 12) ----------------------------------------------------

ALBUM = [images.png(30 + 10 * n, 20 + n, (60 * n, 10, 200)) for n in range(4)]
PERSON, PLACE = images.png(40, 30, (200, 0, 0)), images.png(50, 30, (0, 0, 200))


async def finished_job(api, preset: str, outputs: list[bytes], mime: str, **fields) -> str:
    """A succeeded job of `preset` (user 1001, funded) whose one upload was `outputs`."""
    created = await create_job(api, 1001, preset, **fields)
    assert created.status_code == 201, created.text
    job_id = created.json()["id"]
    await status(api, job_id, "processing", worker="gpu-1")
    files = [("file", (f"out-{n}", blob, mime)) for n, blob in enumerate(outputs)]
    stored = await api.put(f"/api/jobs/{job_id}/outputs", files=files)
    assert stored.status_code == 200, stored.text
    await status(api, job_id, "succeeded")
    return job_id


@pytest.fixture
async def album_job(api) -> str:
    """A `duo` job: two photos (person, place), options 4 and gold, an album of 4 out."""
    await register(api, 1001)
    await grant(api, 1001, 20, "album")
    return await finished_job(
        api,
        "duo",
        ALBUM,
        "image/png",
        images=[PERSON, PLACE],
        options={"count": "4", "frame": "gold"},
        prompt="at the beach",
    )


async def thumbnail(admin: httpx.AsyncClient, job_id: str) -> Image.Image:
    """The job list's thumbnail of the job's first output, checked as served."""
    response = await admin.get(f"/admin/media/jobs/{job_id}/thumbnail")
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "image/webp"
    assert response.headers["x-content-type-options"] == "nosniff"
    assert response.headers["cache-control"] == "private, no-store"
    picture = Image.open(io.BytesIO(response.content))
    assert picture.format == "WEBP"
    return picture.convert("RGB")


def near(pixel: tuple[int, ...], color: tuple[int, int, int], tolerance: int = 6) -> bool:
    """Whether a pixel of a lossy thumbnail is `color`, give or take `tolerance` per channel."""
    return all(abs(a - b) <= tolerance for a, b in zip(pixel[:3], color, strict=True))


def assert_served_inline(response: httpx.Response, content: bytes, mime: str) -> None:
    assert response.status_code == 200, response.text
    assert response.content == content
    assert response.headers["content-type"] == mime
    assert response.headers["content-disposition"].startswith("inline;")
    assert response.headers["x-content-type-options"] == "nosniff"
    assert response.headers["cache-control"] == "private, no-store"


async def test_a_job_page_shows_its_options_every_photo_and_the_whole_album(admin, api, album_job):
    page = await admin.get(f"/admin/job/details/{album_job}")
    assert page.status_code == 200
    html = page.text
    # The options by their titles in the preset, the ids beside them.
    assert re.search(
        r'data-option="count">\s*<td>How many</td>\s*<td><b>4</b>.*?\(count = 4\)', html
    )
    assert re.search(r'data-option="frame">\s*<td>Frame</td>\s*<td><b>Gold</b>', html)
    assert "at the beach" in html and "Duo" in html

    cards = media_cards(html)
    assert list(cards) == ["input-0", "input-1", "output-0", "output-1", "output-2", "output-3"]
    media = f"/admin/media/jobs/{album_job}"
    person, place = cards["input-0"], cards["input-1"]
    assert (person.label, person.title) == ("input 0: person", "Send the person")
    assert (place.label, place.title) == ("input 1: place", "")  # no title in the preset
    assert person.facts == {
        "kind": "image",
        "type": "image/png",
        "size": f"{len(PERSON)} B",
        "dimensions": "40×30",
    }
    assert place.facts["dimensions"] == "50×30"
    for index, photo in enumerate((PERSON, PLACE)):
        card = cards[f"input-{index}"]
        assert (card.element, card.src, card.full) == ("img", f"{media}/inputs/{index}", card.src)
        assert_served_inline(await admin.get(card.src), photo, "image/png")
    for index, image in enumerate(ALBUM):
        card = cards[f"output-{index}"]
        assert (card.kind, card.element, card.label) == ("image", "img", f"output {index}")
        assert card.src == card.full == f"{media}/outputs/{index}"
        assert card.facts["dimensions"] == f"{30 + 10 * index}×{20 + index}"
        served = await admin.get(card.src)
        assert_served_inline(served, image, "image/png")
        assert f'filename="{album_job}-output-{index}.png"' in served.headers["content-disposition"]

    # The list shows the album with a thumbnail of its first image.
    listed = (await admin.get("/admin/job/list")).text
    assert f'<img src="{media}/thumbnail" alt="album of 4" loading="lazy"' in listed
    assert (await thumbnail(admin, album_job)).size == (30, 20)  # never made larger


@pytest.mark.parametrize(
    "index", ["4", "-1", "abc", "1.5", "00000", "99999", "%20", "0x1", "1e3", "0/0"]
)
async def test_a_malformed_or_missing_media_index_is_not_found(admin, api, album_job, index):
    for folder in ("inputs", "outputs"):
        response = await admin.get(f"/admin/media/jobs/{album_job}/{folder}/{index}")
        assert response.status_code == 404, (folder, index, response.text)
    assert (await admin.get(f"/admin/media/jobs/{album_job}/inputs/2")).status_code == 404
    assert (await admin.get(f"/admin/media/jobs/{album_job}/thumbs/0")).status_code == 404


async def test_media_is_refused_without_the_admin_session(app, api, album_job):
    paths = [
        f"/admin/media/jobs/{album_job}/{p}"
        for p in ("inputs/1", "outputs/3", "result", "thumbnail")
    ]
    async with panel_client(app) as stranger, backend_client(app) as with_api_token:
        for client in (stranger, with_api_token):
            for path in paths:
                response = await client.get(path, headers={"Range": "bytes=0-9"})
                assert response.status_code == 302, (path, response.status_code)
                assert response.headers["location"].endswith("/admin/login")
                assert b"PNG" not in response.content


async def test_a_video_output_plays_in_the_page_and_seeks_with_range(admin, api):
    await register(api, 1001)
    video = h264_mp4(frames=12, fps=8, width=64, height=48)
    job_id = await finished_job(api, "clip", [video], "video/mp4")
    page = await admin.get(f"/admin/job/details/{job_id}")
    card = media_cards(page.text)["output-0"]
    url = f"/admin/media/jobs/{job_id}/outputs/0"
    assert (card.kind, card.element, card.src, card.source_type) == (
        "video",
        "video",
        url,
        "video/mp4",
    )
    assert "controls" in card.video and card.video["preload"] == "metadata"
    assert card.facts == {
        "kind": "video",
        "type": "video/mp4",
        "size": f"{len(video) / 1024:.1f} KB" if len(video) >= 1024 else f"{len(video)} B",
        "dimensions": "64×48",
        "frames": "12",
        "duration": "1.5 s",
    }
    assert card.full == url

    whole = await admin.get(url)
    assert_served_inline(whole, video, "video/mp4")
    assert whole.headers["accept-ranges"] == "bytes"
    # What a browser asks to seek: a byte range, answered 206 with just those bytes.
    part = await admin.get(url, headers={"Range": "bytes=100-199"})
    assert part.status_code == 206, part.text
    assert part.content == video[100:200]
    assert part.headers["content-range"] == f"bytes 100-199/{len(video)}"
    assert part.headers["content-type"] == "video/mp4"
    assert part.headers["x-content-type-options"] == "nosniff"
    tail = await admin.get(url, headers={"Range": "bytes=-64"})
    assert tail.status_code == 206 and tail.content == video[-64:]
    beyond = await admin.get(url, headers={"Range": f"bytes={len(video) + 10}-"})
    assert beyond.status_code == 416
    head = await admin.head(url)
    assert head.status_code == 200 and head.headers["content-length"] == str(len(video))

    listed = (await admin.get("/admin/job/list")).text
    assert f'<img src="/admin/media/jobs/{job_id}/thumbnail" alt="video 1.5 s"' in listed
    # The video's first frame.
    frame = await thumbnail(admin, job_id)
    assert frame.size == (64, 48)
    assert near(frame.getpixel((32, 24)), (0, 90, 160), 12)


async def test_an_animation_output_is_an_image_that_plays(admin, api):
    await register(api, 1001)
    animation = images.animated("WEBP", frames=5)
    job_id = await finished_job(api, "loop", [animation], "image/webp")
    card = media_cards((await admin.get(f"/admin/job/details/{job_id}")).text)["output-0"]
    assert (card.kind, card.element) == ("animation", "img")
    assert card.facts["frames"] == "5" and card.facts["dimensions"] == "40×30"
    assert_served_inline(await admin.get(card.src), animation, "image/webp")
    listed = (await admin.get("/admin/job/list")).text
    assert f'src="/admin/media/jobs/{job_id}/thumbnail" alt="animation"' in listed
    first = await thumbnail(admin, job_id)
    assert first.size == (40, 30) and near(first.getpixel((20, 15)), images.FRAME_COLORS[0])


async def test_retention_deleted_media_shows_when_instead_of_broken_elements(
    admin, api, app, album_job
):
    from comfygram.backend import retention

    long_ago = datetime.now(UTC) - timedelta(days=400)
    async with app.state.sessions() as session:
        row = await session.get(Job, album_job)
        row.finished_at = long_ago
        await session.commit()
    assert await retention.sweep_once(app.state.sessions, app.state.store, 30) == 1
    today = datetime.now(UTC).strftime("%Y-%m-%d")

    page = await admin.get(f"/admin/job/details/{album_job}")
    assert page.status_code == 200
    cards = media_cards(page.text)
    assert len(cards) == 6  # what each file was is kept
    for card in cards.values():
        assert card.element is None and card.src is None and card.full is None
        assert card.gone == f"deleted on {today}"
    assert cards["output-2"].facts["dimensions"] == "50×22"
    assert "<img" not in page.text.split('id="job-inputs"', 1)[1].split('id="job-timings"')[0]
    media = f"/admin/media/jobs/{album_job}"
    for path in ("inputs/0", "outputs/3", "result"):
        gone = await admin.get(f"{media}/{path}")
        assert gone.status_code == 410 and f"deleted on {today}" in gone.text
    listed = (await admin.get("/admin/job/list")).text
    assert 'data-output="album of 4">album of 4, deleted<' in listed
    assert f'src="{media}/thumbnail"' not in listed
    assert (await admin.get(f"{media}/thumbnail")).status_code == 410


async def test_a_file_gone_from_disk_is_said_so(admin, api, app, album_job):
    async with app.state.sessions() as session:
        row = await session.get(Job, album_job)
        lost = row.outputs[1].path
    app.state.store.path(lost).unlink()
    cards = media_cards((await admin.get(f"/admin/job/details/{album_job}")).text)
    assert cards["output-1"].element is None
    assert cards["output-1"].gone == "the file is no longer stored"
    assert cards["output-0"].element == cards["output-2"].element == "img"
    media = f"/admin/media/jobs/{album_job}"
    assert (await admin.get(f"{media}/outputs/1")).status_code == 404


async def test_options_the_preset_no_longer_has_show_their_ids(admin, api, app, album_job):
    async with app.state.sessions() as session:
        row = await session.get(Job, album_job)
        row.options = {"count": "8", "frame": "gold", "glow": "on"}
        await session.commit()
    html = (await admin.get(f"/admin/job/details/{album_job}")).text
    assert re.search(r'data-option="count">\s*<td>How many</td>\s*<td><b>8</b>', html)
    assert "no longer a choice of this preset" in html
    assert re.search(r'data-option="glow">\s*<td>glow</td>\s*<td><b>on</b>', html)
    assert "no longer in this preset" in html


async def test_refund_happens_once_and_not_while_active(admin, api, app):
    await register(api, 1001)  # 3 credits
    job = await new_job(api, 1001, "bw")  # costs 1
    details = f"/admin/job/details/{job['id']}"
    token = await csrf(admin, details)
    active = await admin.post(f"/admin/job/refund/{job['id']}", data={"csrf": token})
    assert active.status_code == 302
    assert "is still queued" in (await admin.get(details)).text
    await status(api, job["id"], "processing")
    png = images.png()
    await api.put(f"/api/jobs/{job['id']}/result", files={"image": ("r.png", png, "image/png")})
    await status(api, job["id"], "succeeded")

    for _ in range(2):
        response = await admin.post(f"/admin/job/refund/{job['id']}", data={"csrf": token})
        assert response.status_code == 302 and response.headers["location"].endswith(details)
    refunds = await ledger(app, reason="job_refund")
    assert len(refunds) == 1 and refunds[0].amount == 1
    assert refunds[0].actor == f"admin:{ADMIN_USERNAME}"
    assert (await api.get("/api/users/by-telegram-id/1001")).json()["balance"] == 3


async def test_retry_makes_one_free_job_queued_in_redis(admin, api, app):
    await register(api, 1001)
    photo = images.png(70, 50, (4, 5, 6))
    failed = (await create_job(api, 1001, "bw", photo)).json()
    await status(api, failed["id"], "processing")
    await status(api, failed["id"], "failed", error="out of memory")
    token = await csrf(admin, f"/admin/job/details/{failed['id']}")
    balance = (await api.get("/api/users/by-telegram-id/1001")).json()["balance"]
    entries = len(await ledger(app))

    first = await admin.post(f"/admin/job/retry/{failed['id']}", data={"csrf": token})
    second = await admin.post(f"/admin/job/retry/{failed['id']}", data={"csrf": token})
    assert first.status_code == second.status_code == 302
    assert first.headers["location"] == second.headers["location"]
    new_id = first.headers["location"].rsplit("/", 1)[1]
    assert new_id != failed["id"]
    retry = (await api.get(f"/api/jobs/{new_id}")).json()
    assert (retry["status"], retry["price"], retry["preset"]) == ("queued", 0, "bw")
    async with app.state.sessions() as session:
        rows = list(await session.scalars(select(Job).where(Job.id != failed["id"])))
    assert len(rows) == 1 and rows[0].idempotency_key == f"admin-retry:{failed['id']}"
    assert await app.state.queue.contains(new_id)
    assert (await api.get(f"/api/jobs/{new_id}/input")).content == photo
    # No charge, and a refund of the free job writes nothing.
    assert (await api.get("/api/users/by-telegram-id/1001")).json()["balance"] == balance
    await status(api, new_id, "cancelled")
    refund = await api.post(f"/api/jobs/{new_id}/refund")
    assert refund.json()["refunded"] is False
    assert len(await ledger(app)) == entries
    page = await admin.get(f"/admin/job/details/{new_id}")
    assert "already retried" in page.text


async def test_only_failed_jobs_are_retried(admin, api):
    await register(api, 1001)
    job = await new_job(api, 1001)
    token = await csrf(admin, f"/admin/job/details/{job['id']}")
    response = await admin.post(f"/admin/job/retry/{job['id']}", data={"csrf": token})
    assert response.status_code == 302 and job["id"] in response.headers["location"]
    assert "only failed jobs are retried" in (await admin.get(response.headers["location"])).text


# -- payments and the ledger ----------------------------------------------------------------


async def test_payments_and_ledger_are_read_only_and_filterable(admin, api, app):
    await register(api, 1001, username="carol")
    await register(api, 2002)
    invoice = (
        await api.post("/api/payments/create", json={"telegram_id": 1001, "package": "small"})
    ).json()
    await api.post("/api/payments/create", json={"telegram_id": 2002, "package": "large"})
    await api.post(
        "/api/payments/confirm",
        json={
            "payload": invoice["payload"],
            "telegram_payment_charge_id": "charge-1",
            "total_amount": invoice["amount"],
            "currency": "XTR",
        },
    )
    async with app.state.sessions() as session:
        ids = {p.package: p.id for p in await session.scalars(select(Payment))}
    paid = await admin.get("/admin/payment/list", params={"status": "paid"})
    assert paid.status_code == 200
    assert ids["small"] in paid.text and ids["large"] not in paid.text
    assert (await admin.get("/admin/payment/create")).status_code == 403

    listed = await admin.get("/admin/ledger-entry/list", params={"search": "1001"})
    assert "payment" in listed.text and "signup_bonus" in listed.text
    pk2 = await user_pk(app, 2002)
    assert f">{pk2}</a>" not in listed.text
    by_name = await admin.get("/admin/ledger-entry/list", params={"search": "carol"})
    assert by_name.text.count("signup_bonus") >= 1
    assert (await admin.get("/admin/ledger-entry/create")).status_code == 403
    entry = (await ledger(app))[0]
    assert (await admin.get(f"/admin/ledger-entry/edit/{entry.id}")).status_code == 403


# -- presets --------------------------------------------------------------------------------


async def test_preset_price_and_switch_survive_a_restart(admin, api, app, settings, redis):
    token = await csrf(admin, "/admin/preset/edit/bw")
    edit = await admin.post("/admin/preset/edit/bw", data={"price": "7", "csrf": token})
    assert edit.status_code == 302, edit.text  # enabled unticked
    slugs = [p["slug"] for p in (await api.get("/api/presets")).json()]
    assert "bw" not in slugs
    edit = await admin.post(
        "/admin/preset/edit/bw", data={"price": "7", "enabled": "y", "csrf": token}
    )
    assert edit.status_code == 302
    listed = {p["slug"]: p for p in (await api.get("/api/presets")).json()}
    assert listed["bw"]["price"] == 7

    async with app.state.sessions() as session:  # what every start does
        await sync_presets(session, load_presets())
        await session.commit()
    restarted = create_app(with_admin(settings))
    async with restarted.router.lifespan_context(restarted), backend_client(restarted) as client:
        listed = {p["slug"]: p for p in (await client.get("/api/presets")).json()}
        assert listed["bw"]["price"] == 7
        await register(client, 1001)
        await client.post(
            "/api/users/by-telegram-id/1001/credits",
            json={"amount": 10, "reason": "t", "actor": "t", "idempotency_key": "k1"},
        )
        job = (await create_job(client, 1001, "bw")).json()
        assert job["price"] == 7
    async with app.state.sessions() as session:
        row = await session.get(PresetRow, "bw")
        assert (row.price, row.enabled, row.operator_price, row.operator_enabled) == (
            7,
            True,
            7,
            True,
        )
        # The other presets still follow their files.
        assert (await session.get(PresetRow, "invert")).operator_price is None


async def test_a_preset_can_follow_its_file_again(admin, api, app):
    token = await csrf(admin, "/admin/preset/edit/bw")
    await admin.post("/admin/preset/edit/bw", data={"price": "0", "csrf": token})
    details = "/admin/preset/details/bw"
    page = await admin.get(details)
    assert "Follow the preset file again" in page.text
    token = await csrf(admin, details)
    back = await admin.post("/admin/preset/follow-file/bw", data={"csrf": token})
    assert back.status_code == 302 and back.headers["location"].endswith(details)
    async with app.state.sessions() as session:
        row = await session.get(PresetRow, "bw")
        assert (row.price, row.enabled, row.operator_price, row.operator_enabled) == (
            1,
            True,
            None,
            None,
        )
    assert "Follow the preset file again" not in (await admin.get(details)).text
    listed = {p["slug"]: p for p in (await api.get("/api/presets")).json()}
    assert listed["bw"]["price"] == 1


async def test_a_negative_preset_price_is_refused(admin, app):
    token = await csrf(admin, "/admin/preset/edit/bw")
    form = {"price": "-1", "enabled": "y", "csrf": token}
    response = await admin.post("/admin/preset/edit/bw", data=form)
    assert response.status_code == 400
    async with app.state.sessions() as session:
        row = await session.get(PresetRow, "bw")
        assert (row.price, row.operator_price) == (1, None)
    form = await admin.get("/admin/preset/edit/bw")
    assert 'name="price"' in form.text and 'name="enabled"' in form.text
    assert 'name="workflow"' not in form.text and 'name="slug"' not in form.text


# -- dashboard ------------------------------------------------------------------------------


async def seed_dashboard(app) -> None:
    now = datetime.now(UTC)
    async with app.state.sessions() as session:
        user = User(telegram_id=5005, balance=0)
        session.add(user)
        await session.flush()

        def job(slug: str, status: str, run: float | None = None, age_hours: float = 1) -> Job:
            return seeded_job(user, slug, status, created=now - timedelta(hours=age_hours), run=run)

        session.add_all(
            [
                job("bw", "succeeded", 10),
                job("bw", "succeeded", 20),
                job("bw", "succeeded", 60),
                job("bw", "failed", 3),
                job("invert", "queued"),
                job("invert", "queued"),
                job("invert", "processing"),
                job("invert", "cancelled"),
                job("bw", "succeeded", 99, age_hours=30),  # outside the window
                job("sharpen", "failed", 1, age_hours=48),
            ]
        )
        session.add_all(
            [
                seeded_payment(user, "1", 50, 10, now - timedelta(minutes=1)),
                seeded_payment(user, "2", 500, 150, now - timedelta(days=3), package="large"),
                seeded_payment(user, "3", 200, 50, None, package="medium"),
            ]
        )
        await session.commit()
    await app.state.queue.enqueue(str(uuid.uuid4()), {"preset": "invert", "attempts": 0})
    await app.state.queue.enqueue(str(uuid.uuid4()), {"preset": "invert", "attempts": 0})
    report = {"comfyui_url": "http://gpu-1:8188", "ttl_seconds": 60}
    await app.state.workers.record(
        "gpu-1", WorkerReport(healthy=True, runnable=["bw", "invert"], **report)
    )
    await app.state.workers.record(
        "gpu-2",
        WorkerReport(healthy=False, runnable=[], problems={"upscale2x": "model missing"}, **report),
    )


async def test_dashboard_shows_the_numbers(admin, app):
    await seed_dashboard(app)
    page = await admin.get("/admin/dashboard")
    assert page.status_code == 200
    html = page.text
    assert stat(html, "queue-length") == "2"
    assert stat(html, "jobs-24h") == "8"
    expected = {"queued": 2, "processing": 1, "succeeded": 3, "failed": 1, "cancelled": 1}
    for name, count in expected.items():
        assert stat(html, f"status-{name}") == str(count)
    assert stat(html, "preset-bw-jobs") == "4"
    assert stat(html, "preset-bw-failed") == "1"
    assert stat(html, "preset-bw-failure-rate") == "25%"
    assert stat(html, "preset-bw-median") == "20.0 s"
    assert stat(html, "preset-invert-jobs") == "4"
    assert stat(html, "preset-invert-failure-rate") == "—"
    assert 'data-preset="sharpen"' not in html
    assert stat(html, "stars-today") == "50"
    assert stat(html, "stars-24h") == "50"
    assert stat(html, "stars-total") == "550"
    assert stat(html, "credits-24h") == "10"
    assert stat(html, "credits-total") == "160"
    assert "healthy" in stat(html, "worker-gpu-1-health") or 'data-worker="gpu-1"' in html
    assert re.search(r'data-stat="worker-gpu-1-health">\s*<span[^>]*>healthy<', html)
    assert re.search(r'data-stat="worker-gpu-2-health">\s*<span[^>]*>unhealthy<', html)
    assert "model missing" in html and "bw, invert" in html


async def test_dashboard_is_the_first_menu_entry(admin):
    html = (await admin.get("/admin/dashboard")).text
    menu = re.findall(r'href="(http://backend\.test)?(/admin/[a-z-]+(?:/list)?)"', html)
    paths = [path for _, path in menu]
    assert paths.index("/admin/dashboard") < paths.index("/admin/user/list")


async def test_jobs_and_users_counted_only_once(app):
    # The API's own view stays as it was: banned shows in the user output.
    async with backend_client(app) as api:
        user = await register(api, 9009)
        assert user["banned"] is False
    async with app.state.sessions() as session:
        assert await session.scalar(select(func.count()).select_from(User)) == 1


async def test_every_list_and_details_page_renders(admin, api, app):
    await register(api, 1001, username="dora")
    job = await new_job(api, 1001)
    await api.post("/api/payments/create", json={"telegram_id": 1001, "package": "small"})
    async with app.state.sessions() as session:
        payment = await session.scalar(select(Payment.id))
        entry = await session.scalar(select(LedgerEntry.id))
    pk = await user_pk(app, 1001)
    pages = [
        "/admin/user/list",
        "/admin/job/list",
        "/admin/payment/list",
        "/admin/preset/list",
        "/admin/ledger-entry/list",
        f"/admin/user/details/{pk}",
        f"/admin/job/details/{job['id']}",
        f"/admin/payment/details/{payment}",
        "/admin/preset/details/kontext",
        f"/admin/ledger-entry/details/{entry}",
        "/admin/preset/edit/bw",
        f"/admin/user/credit/{pk}",
        "/admin/dashboard",
    ]
    for page in pages:
        response = await admin.get(page)
        assert response.status_code == 200, (page, response.text[-2000:])
    assert (await admin.get("/admin/user/details/999999")).status_code == 404
    assert (await admin.get("/admin/user/credit/999999")).status_code == 404


async def test_dashboard_hides_the_password_in_a_workers_comfyui_url(admin, app):
    """A COMFYUI_URL with credentials is shown without them (issue 11)."""
    report = WorkerReport(
        comfyui_url="http://ops:s3cret-pw@gpu-9:8188/comfy",
        healthy=True,
        runnable=[],
        ttl_seconds=60,
    )
    await app.state.workers.record("gpu-9", report)
    html = (await admin.get("/admin/dashboard")).text
    assert "gpu-9:8188/comfy" in html
    assert "s3cret-pw" not in html and "ops:" not in html


async def test_job_details_say_when_retention_deleted_the_media(admin, api, app):
    """After the retention sweep the page says so instead of showing broken images."""
    from comfygram.backend import retention

    await register(api, 1001)
    job = (await create_job(api, 1001, "bw")).json()
    await status(api, job["id"], "cancelled")
    long_ago = datetime.now(UTC) - timedelta(days=400)
    async with app.state.sessions() as session:
        row = await session.get(Job, job["id"])
        row.finished_at = long_ago
        await session.commit()
    assert await retention.sweep_once(app.state.sessions, app.state.store, 30) == 1
    page = await admin.get(f"/admin/job/details/{job['id']}")
    assert page.status_code == 200
    assert "Media deleted by retention on" in page.text
    (card,) = media_cards(page.text).values()
    assert card.element is None and card.gone.startswith("deleted on ")
