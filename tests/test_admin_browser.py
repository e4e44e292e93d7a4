"""The admin panel in a real browser: headless Chromium against the real backend (uvicorn on
loopback, SQLite, real Redis), with a user and a finished job made through the REST API as the
bot and a worker make them. Login, a wrong password, the job list's search, the job's details
with its input and result images, the image itself, the dashboard and logging out; a job with
two photos and an album of four, and a video that Chromium loads, plays and seeks (over HTTP
Range); the preset edit form, and an attacker's page on another port of the same host posting
that form."""

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
from tests.admin_helpers import h264_mp4
from tests.browser import Browser, chromium, served_in_thread
from tests.conftest import REDIS_URL
from tests.helpers import API_TOKEN
from tests.rich_presets import write_rich_presets

ADMIN_USERNAME = "operator"
ADMIN_PASSWORD = "browser-test-password-42"
TELEGRAM_ID = 5_550_001
INPUT_SIZE = (64, 48)
RESULT_SIZE = (128, 96)  # not the input's size, so the two images can't be mistaken


INPUT_IMG = '[data-media="input-0"] img[alt="input 0: photo"]'
RESULT_IMG = '[data-media="output-0"] img[alt="output 0"]'


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
        presets_dir=write_rich_presets(tmp_path / "presets"),
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
        result = browser.find(RESULT_IMG)
        assert result.get_attribute("src") == f"{media}/outputs/0"
        assert browser.loaded_image_width(result) == RESULT_SIZE[0]
        assert browser.loaded_image_width(browser.find(INPUT_IMG)) == INPUT_SIZE[0]
        assert pixel(browser, RESULT_IMG) == [0, 255, 255]
        assert pixel(browser, INPUT_IMG) == [255, 0, 0]

        shot = browser.screenshot("admin-job-details")
        assert shot.exists() and shot.stat().st_size > 1024
        assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

        # The result's link opens the image itself (in a new tab).
        browser.click(f'[data-media="output-0"] a[href$="/media/jobs/{job_id}/outputs/0"] img')
        browser.wait().until(lambda d: len(d.window_handles) == 2, "no tab opened")
        browser.driver.switch_to.window(browser.driver.window_handles[1])
        browser.wait_for_url(lambda u: u == f"{media}/outputs/0", "the result did not open")
        assert browser.loaded_image_width(browser.find("img")) == RESULT_SIZE[0]
        browser.driver.close()
        browser.driver.switch_to.window(browser.driver.window_handles[0])

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


ALBUM_SIZES = [(48 + 8 * n, 32 + 4 * n) for n in range(4)]
VIDEO = {"frames": 48, "fps": 24, "width": 128, "height": 96}  # 2.0 s


def seed_rich(url: str) -> tuple[str, str, bytes]:
    """A `duo` job (two photos, an album of four) and a `clip` job (an H.264 MP4 of 2 s),
    both succeeded, made through the API; their ids and the video's bytes."""
    headers = {"Authorization": f"Bearer {API_TOKEN}"}
    video = h264_mp4(**VIDEO)
    with httpx.Client(base_url=url, headers=headers, timeout=10) as api:

        def ok(response: httpx.Response, status: int = 200) -> dict:
            assert response.status_code == status, response.text
            return response.json()

        ok(api.post("/api/users/register", json={"telegram_id": TELEGRAM_ID}), 201)
        ok(
            api.post(
                f"/api/users/by-telegram-id/{TELEGRAM_ID}/credits",
                json={"amount": 20, "reason": "test", "actor": "tests", "idempotency_key": "k"},
            )
        )

        def finished(preset: str, photos: list[bytes], outputs: list[tuple[bytes, str]]) -> str:
            job = api.post(
                "/api/jobs/create",
                data={"telegram_id": str(TELEGRAM_ID), "preset": preset},
                files=[("image", ("p.png", photo, "image/png")) for photo in photos],
            )
            job_id = ok(job, 201)["id"]
            ok(api.post(f"/api/jobs/{job_id}/status", json={"status": "processing"}))
            files = [("file", (f"o{n}", data, mime)) for n, (data, mime) in enumerate(outputs)]
            ok(api.put(f"/api/jobs/{job_id}/outputs", files=files))
            ok(api.post(f"/api/jobs/{job_id}/status", json={"status": "succeeded"}))
            return job_id

        album = [
            (png(Image.new("RGB", size, (0, 60 * n, 0))), "image/png")
            for n, size in enumerate(ALBUM_SIZES)
        ]
        duo = finished("duo", [png(PHOTO), png(RESULT)], album)
        clip = finished("clip", [png(PHOTO)], [(video, "video/mp4")])
    return duo, clip, video


def test_an_operator_sees_the_album_and_the_video_plays(backend_url: str):
    duo, clip, video = seed_rich(backend_url)
    admin = backend_url + "/admin"
    with chromium() as browser:
        browser.open(admin + "/login")
        log_in(browser, ADMIN_PASSWORD)
        browser.wait_for_url(lambda u: u == admin + "/dashboard", "the login failed")

        # The list: the album as a thumbnail, the video by its length.
        browser.open(admin + "/job/list")
        thumbnail = browser.find('[data-output="album of 4"] img')
        assert browser.loaded_image_width(thumbnail) == ALBUM_SIZES[0][0]
        assert browser.find('[data-output="video 2.0 s"]').text == "video 2.0 s"
        frame = browser.find('[data-output="video 2.0 s"] img')
        assert browser.loaded_image_width(frame) == 128  # the first frame, within 128 x 96
        browser.screenshot("admin-job-list")

        # Both photos and the four images of the album, each decoded at its own size.
        browser.open(f"{admin}/job/details/{duo}")
        for name, width in [("input-0", INPUT_SIZE[0]), ("input-1", RESULT_SIZE[0])] + [
            (f"output-{n}", w) for n, (w, _h) in enumerate(ALBUM_SIZES)
        ]:
            image = browser.find(f'[data-media="{name}"] img')
            assert browser.loaded_image_width(image) == width, name
        browser.screenshot("admin-job-album")

        # The video: Chromium reads its metadata (a duration), then seeks and plays it.
        browser.open(f"{admin}/job/details/{clip}")
        player = browser.find('[data-media="output-0"] video')
        browser.wait().until(
            lambda d: d.execute_script("return arguments[0].readyState >= 1", player),
            "the video's metadata never loaded",
        )
        duration = browser.driver.execute_script("return arguments[0].duration", player)
        assert abs(duration - 2.0) < 0.1, duration
        assert browser.driver.execute_script(
            "return [arguments[0].videoWidth, arguments[0].videoHeight]", player
        ) == [VIDEO["width"], VIDEO["height"]]
        browser.driver.execute_script("arguments[0].currentTime = 1.5", player)
        browser.wait().until(
            lambda d: d.execute_script(
                "return !arguments[0].seeking && arguments[0].readyState >= 2", player
            ),
            "seeking the video never finished",
        )
        assert (
            abs(browser.driver.execute_script("return arguments[0].currentTime", player) - 1.5)
            < 0.1
        )
        browser.driver.execute_script(
            "arguments[0].muted = true; arguments[0].currentTime = 0; arguments[0].play()", player
        )
        browser.wait().until(
            lambda d: d.execute_script("return arguments[0].currentTime > 0.3", player),
            "the video does not play",
        )
        assert browser.driver.execute_script("return arguments[0].error", player) is None
        browser.screenshot("admin-job-video")

        # The same file over plain HTTP with the browser's session: a Range answers 206.
        cookies = {c["name"]: c["value"] for c in browser.driver.get_cookies()}
    url = f"/admin/media/jobs/{clip}/outputs/0"
    with httpx.Client(base_url=backend_url, cookies=cookies, timeout=10) as client:
        part = client.get(url, headers={"Range": "bytes=0-1023"})
        assert part.status_code == 206, part.text
        assert part.content == video[:1024]
        assert part.headers["content-range"] == f"bytes 0-1023/{len(video)}"
        assert part.headers["content-type"] == "video/mp4"
        assert part.headers["content-disposition"].startswith("inline;")
        assert part.headers["x-content-type-options"] == "nosniff"
    with httpx.Client(base_url=backend_url, timeout=10) as stranger:
        refused = stranger.get(url, headers={"Range": "bytes=0-1023"})
        assert refused.status_code == 302 and refused.headers["location"].endswith("/login")


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
