"""The browser harness itself, on a page of its own: Chromium starts, loads a page served from a
thread, decodes an image, follows a link and saves a screenshot."""

from __future__ import annotations

from fastapi import FastAPI
from fastapi.responses import HTMLResponse, Response

from tests import images
from tests.browser import chromium, served_in_thread

PAGE = """<!doctype html><title>harness</title><h1>Harness page</h1>
<a id="open" href="/picture.png"><img alt="picture" src="/picture.png"></a>"""


def page_app() -> FastAPI:
    app = FastAPI()
    picture = images.png(64, 48, (255, 0, 0))

    @app.get("/")
    def page() -> HTMLResponse:
        return HTMLResponse(PAGE)

    @app.get("/picture.png")
    def png() -> Response:
        return Response(picture, media_type="image/png")

    return app


def test_the_browser_loads_a_page_an_image_and_takes_a_screenshot():
    with chromium() as browser, served_in_thread(page_app) as url:
        browser.open(url + "/")
        assert browser.find("h1").text == "Harness page"
        assert browser.loaded_image_width(browser.find("img[alt=picture]")) == 64

        browser.click("a#open")
        browser.wait_for_url(lambda u: u == url + "/picture.png", "the link was not followed")
        assert browser.loaded_image_width(browser.find("img")) == 64

        shot = browser.screenshot("harness")
        assert shot.read_bytes().startswith(b"\x89PNG\r\n\x1a\n")
