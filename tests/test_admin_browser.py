"""The admin panel in a real browser: headless Chromium against the real backend (uvicorn on
loopback, SQLite, real Redis), with a user and a finished job made through the REST API as the
bot and a worker make them. Login, a wrong password, the job list's search, the job's details
with its input and result images, the image itself, the dashboard and logging out; the preset
edit form, and an attacker's page on another port of the same host posting that form."""

from __future__ import annotations

import io
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from PIL import Image, ImageOps
from redis import Redis

from comfygram.backend.app import create_app
from comfygram.settings import Settings
from tests.browser import Browser, chromium, served_in_thread
from tests.conftest import REDIS_URL
from tests.helpers import API_TOKEN

ADMIN_USERNAME = "operator"
ADMIN_PASSWORD = "browser-test-password-42"
TELEGRAM_ID = 5_550_001
INPUT_SIZE = (64, 48)
RESULT_SIZE = (128, 96)  # not the input's size, so the two images can't be mistaken


def png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return buffer.getvalue()


# A red photo in, its negative (cyan) at twice the size out: what the "invert" preset makes.
PHOTO = Image.new("RGB", INPUT_SIZE, (255, 0, 0))
RESULT = ImageOps.invert(PHOTO).resize(RESULT_SIZE)


@pytest.fixture
def backend_url(tmp_path: Path) -> Iterator[str]:
    prefix = f"cgtest-{uuid.uuid4().hex[:12]}"
    settings = Settings(
        _env_file=None,
        api_token=API_TOKEN,
        database_url=f"sqlite+aiosqlite:///{tmp_path}/comfygram.db",
        redis_url=REDIS_URL,
        redis_prefix=prefix,
        media_dir=tmp_path / "media",
        admin_username=ADMIN_USERNAME,
        admin_password=ADMIN_PASSWORD,
    )
    try:
        with served_in_thread(lambda: create_app(settings)) as url:
            yield url
    finally:
        with Redis.from_url(REDIS_URL) as redis:
            keys = list(redis.scan_iter(f"{prefix}:*"))
            if keys:
                redis.delete(*keys)


def seed(url: str) -> tuple[str, str]:
    """A user with a succeeded job (photo and result) and a queued one, made through the API as
    the bot and a worker make them; the two jobs' ids."""
    headers = {"Authorization": f"Bearer {API_TOKEN}"}
    with httpx.Client(base_url=url, headers=headers, timeout=10) as api:

        def ok(response: httpx.Response, status: int = 200) -> dict:
            assert response.status_code == status, response.text
            return response.json()

        ok(
            api.post("/api/users/register", json={"telegram_id": TELEGRAM_ID, "first_name": "Ann"}),
            201,
        )

        def create() -> str:
            job = api.post(
                "/api/jobs/create",
                data={"telegram_id": str(TELEGRAM_ID), "preset": "invert"},
                files={"image": ("photo.png", png(PHOTO), "image/png")},
            )
            return ok(job, 201)["id"]

        job_id, other_id = create(), create()
        ok(api.post(f"/api/jobs/{job_id}/status", json={"status": "processing", "worker": "w1"}))
        ok(
            api.put(
                f"/api/jobs/{job_id}/result",
                files={"image": ("result.png", png(RESULT), "image/png")},
            )
        )
        done = ok(api.post(f"/api/jobs/{job_id}/status", json={"status": "succeeded"}))
        assert done["status"] == "succeeded"
        return job_id, other_id


def log_in(browser: Browser, password: str) -> None:
    browser.find("input[name=username]").clear()
    browser.find("input[name=username]").send_keys(ADMIN_USERNAME)
    browser.find("input[name=password]").clear()
    browser.find("input[name=password]").send_keys(password)
    browser.click("form button[type=submit]")


def pixel(browser: Browser, image_css: str) -> list[int]:
    """The RGB of the middle pixel of a loaded image, read through a canvas."""
    return browser.driver.execute_script(
        """
        const img = document.querySelector(arguments[0]);
        const canvas = document.createElement('canvas');
        canvas.width = img.naturalWidth; canvas.height = img.naturalHeight;
        const context = canvas.getContext('2d');
        context.drawImage(img, 0, 0);
        const data = context.getImageData(img.naturalWidth / 2, img.naturalHeight / 2, 1, 1).data;
        return [data[0], data[1], data[2]];
        """,
        image_css,
    )


def test_an_operator_finds_a_job_and_sees_its_result(backend_url: str):
    job_id, other_id = seed(backend_url)
    admin = backend_url + "/admin"
    with chromium() as browser:
        # Not logged in: the panel sends the browser to its login page.
        browser.open(admin + "/")
        browser.wait_for_url(lambda u: u.startswith(admin + "/login"), "no redirect to login")

        log_in(browser, "not-the-password-at-all")
        assert browser.find(".invalid-feedback").text == "Invalid credentials."
        assert browser.url.startswith(admin + "/login")

        log_in(browser, ADMIN_PASSWORD)
        browser.wait_for_url(lambda u: u == admin + "/dashboard", "the right password failed")

        # The job list shows both jobs; searching for one id leaves that job alone.
        details = f"/admin/job/details/{job_id}"
        other = f'a[href$="/admin/job/details/{other_id}"]'
        browser.find('a[href$="/admin/job/list"]').click()
        browser.find(other)
        browser.find("#search-input").send_keys(job_id)
        browser.click("#search-button")
        browser.wait_for_url(lambda u: f"search={job_id}" in u, "the search was not submitted")
        browser.find(f'a[href$="{details}"]')
        assert not browser.driver.find_elements("css selector", other), "the search kept both"
        browser.click(f'a[href$="{details}"]')
        browser.wait_for_url(lambda u: u.endswith(details), "the job's details did not open")

        media = f"{admin}/media/jobs/{job_id}"
        result = browser.find('img[alt="result"]')
        assert result.get_attribute("src") == f"{media}/result"
        assert browser.loaded_image_width(result) == RESULT_SIZE[0]
        assert browser.loaded_image_width(browser.find('img[alt="input"]')) == INPUT_SIZE[0]
        assert pixel(browser, 'img[alt="result"]') == [0, 255, 255]
        assert pixel(browser, 'img[alt="input"]') == [255, 0, 0]

        shot = browser.screenshot("admin-job-details")
        assert shot.exists() and shot.stat().st_size > 1024
        assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

        # The result's link opens the image itself.
        browser.click(f'a[href$="/media/jobs/{job_id}/result"] img[alt="result"]')
        browser.wait_for_url(lambda u: u == f"{media}/result", "the result did not open")
        assert browser.loaded_image_width(browser.find("img")) == RESULT_SIZE[0]

        # The dashboard counts both jobs of the last 24 hours, by status and by preset.
        browser.open(admin + "/dashboard")
        assert browser.find('[data-stat="jobs-24h"]').text == "2"
        assert browser.find('[data-stat="status-succeeded"]').text == "1"
        assert browser.find('[data-stat="status-queued"]').text == "1"
        assert browser.find('[data-stat="preset-invert-jobs"]').text == "2"

        # Logging out (a form posting the CSRF token): the panel asks for the login again.
        browser.click("#logout-form button[type=submit]")
        browser.wait_for_url(lambda u: "/login" in u, "logging out did not lead to login")
        browser.open(admin + "/")
        browser.wait_for_url(lambda u: u.startswith(admin + "/login"), "still logged in")
        browser.find("input[name=password]")


def attacker_page(target: str) -> str:
    """A page on another origin of the same site that posts the preset edit form on load: the
    reported attack (price 0, and a preset that ships disabled switched on)."""
    return f"""<!doctype html><html><body>
      <form id="attack" method="post" action="{target}" enctype="multipart/form-data">
        <input name="price" value="0"><input name="enabled" value="y">
        <input name="save" value="Save">
      </form>
      <script>document.getElementById('attack').submit();</script>
    </body></html>"""


def test_the_edit_form_works_and_a_same_site_page_cannot_post_it(backend_url: str):
    from starlette.applications import Starlette
    from starlette.responses import HTMLResponse
    from starlette.routing import Route

    admin = backend_url + "/admin"
    target = f"{admin}/preset/edit/kontext"
    evil = Starlette(routes=[Route("/", lambda _request: HTMLResponse(attacker_page(target)))])
    headers = {"Authorization": f"Bearer {API_TOKEN}"}

    def kontext_enabled() -> bool:
        with httpx.Client(base_url=backend_url, headers=headers, timeout=10) as api:
            return any(p["slug"] == "kontext" for p in api.get("/api/presets").json())

    with served_in_thread(lambda: evil) as evil_url, chromium() as browser:
        # Another port on 127.0.0.1: another origin, the same site (the cookie goes along).
        assert evil_url.split(":")[:2] == backend_url.split(":")[:2]
        browser.open(admin + "/login")
        log_in(browser, ADMIN_PASSWORD)
        browser.wait_for_url(lambda u: u == admin + "/dashboard", "the login failed")

        browser.open(evil_url + "/")
        browser.wait_for_url(lambda u: u == target, "the attacker's form was not posted")
        assert "another site" in browser.find("body").text
        assert not kontext_enabled()

        # The operator's own edit form (sqladmin's, with the token the panel adds) works.
        browser.open(f"{admin}/preset/edit/bw")
        price = browser.find("input[name=price]")
        price.clear()
        price.send_keys("4")
        browser.click("input[type=submit][value=Save]")
        browser.wait_for_url(lambda u: u.startswith(f"{admin}/preset/list"), "not saved")
        with httpx.Client(base_url=backend_url, headers=headers, timeout=10) as api:
            listed = {p["slug"]: p for p in api.get("/api/presets").json()}
        assert listed["bw"]["price"] == 4
        assert not kontext_enabled()
