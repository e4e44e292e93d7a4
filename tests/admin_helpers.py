"""Helpers for the admin panel tests: a backend with the panel on, and a logged-in client."""

from __future__ import annotations

import io
import re
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from html.parser import HTMLParser

import av
import httpx
from fastapi import FastAPI
from PIL import Image
from pydantic import SecretStr

from comfygram.backend.models import Job, JobFile, Payment, User
from comfygram.settings import Settings

ADMIN_USERNAME = "operator"
ADMIN_PASSWORD = "correct-horse-battery-9"
PANEL_URL = "http://backend.test"
# Loopback is a trusted address (ADMIN_TRUSTED_IPS); the tests of the login limit come from
# addresses in TEST-NET ranges, which are not.
LOOPBACK = "127.0.0.1"


def with_admin(settings: Settings, **overrides: object) -> Settings:
    """The test settings with the panel on."""
    values = {
        "admin_username": ADMIN_USERNAME,
        "admin_password": SecretStr(ADMIN_PASSWORD),
        **overrides,
    }
    return settings.model_copy(update=values)


def panel_client(
    app: FastAPI, address: str = LOOPBACK, *, raise_app_exceptions: bool = True
) -> httpx.AsyncClient:
    """A browser-like client of the in-process backend from `address`: no API token, cookies
    kept, and the panel's own origin on every request, as a browser sends it."""
    transport = httpx.ASGITransport(
        app=app, client=(address, 50000), raise_app_exceptions=raise_app_exceptions
    )
    return httpx.AsyncClient(transport=transport, base_url=PANEL_URL, headers={"Origin": PANEL_URL})


async def login(
    client: httpx.AsyncClient, username: str = ADMIN_USERNAME, password: str = ADMIN_PASSWORD
) -> httpx.Response:
    return await client.post("/admin/login", data={"username": username, "password": password})


async def csrf(client: httpx.AsyncClient, page: str = "/admin/dashboard") -> str:
    """The session's CSRF token, as the form on `page` carries it."""
    response = await client.get(page)
    assert response.status_code == 200, response.text
    match = re.search(r'name="csrf" value="([^"]+)"', response.text)
    assert match, f"no csrf field on {page}"
    return match.group(1)


def stat(html: str, name: str) -> str:
    """The text of the dashboard element marked data-stat=name."""
    match = re.search(rf'data-stat="{re.escape(name)}"[^>]*>\s*([^<]*?)\s*<', html)
    assert match, f"no data-stat={name} on the page"
    return match.group(1)


def seeded_job(
    user: User, slug: str, status: str, *, created: datetime, run: float | None = None
) -> Job:
    """A job row as the dashboard reads it; `run` seconds of ComfyUI starting 2 s after creation."""
    started = created + timedelta(seconds=2) if run is not None else None
    return Job(
        user_id=user.id,
        preset_slug=slug,
        price=1,
        status=status,
        files=[
            JobFile(
                role="input",
                position=0,
                slot="photo",
                kind="image",
                mime="image/png",
                path="inputs/x.png",
            )
        ],
        created_at=created,
        started_at=started,
        finished_at=started + timedelta(seconds=run) if started else None,
    )


def seeded_payment(
    user: User,
    key: str,
    stars: int,
    credits: int,
    paid_at: datetime | None,
    package: str = "small",
) -> Payment:
    """A Stars payment row: paid at `paid_at`, or still pending when None."""
    return Payment(
        user_id=user.id,
        package=package,
        credits=credits,
        amount=stars,
        currency="XTR",
        status="paid" if paid_at else "pending",
        payload=f"p-{key}",
        telegram_payment_charge_id=f"c-{key}" if paid_at else None,
        paid_at=paid_at,
    )


def h264_mp4(frames: int = 12, fps: int = 8, width: int = 64, height: int = 48) -> bytes:
    """A real H.264 MP4 (yuv420p, faststart not needed) of `frames` frames at `fps`, made with
    PyAV, as ComfyUI's SaveVideo writes one."""
    buffer = io.BytesIO()
    with av.open(buffer, "w", format="mp4") as out:
        stream = out.add_stream("h264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        for n in range(frames):
            picture = Image.new("RGB", (width, height), (n * 20 % 256, 90, 160))
            for packet in stream.encode(av.VideoFrame.from_image(picture)):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return buffer.getvalue()


@dataclass
class MediaCard:
    """One input or output card of a job's page, as the HTML has it."""

    name: str  # "input-0", "output-3"
    kind: str
    label: str = ""
    title: str = ""
    # "img" or "video" (the element shown), or None when the card says the file is gone.
    element: str | None = None
    src: str | None = None
    # A video's element attributes and its <source type>.
    video: dict[str, str | None] = field(default_factory=dict)
    source_type: str | None = None
    gone: str | None = None
    full: str | None = None
    facts: dict[str, str] = field(default_factory=dict)


class _CardParser(HTMLParser):
    """Reads the cards (div[data-media]) of the job page, in order."""

    def __init__(self) -> None:
        super().__init__()
        self.cards: list[MediaCard] = []
        self._card: MediaCard | None = None
        self._depth = 0
        self._text: tuple[str, str] | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if self._card is None:
            if tag == "div" and "data-media" in a:
                self._card = MediaCard(name=a["data-media"] or "", kind=a.get("data-kind") or "")
                self.cards.append(self._card)
                self._depth = 1
            return
        card = self._card
        if tag == "div":
            self._depth += 1
            if "fw-bold" in (a.get("class") or ""):
                self._text = ("label", "")
            elif "text-muted" in (a.get("class") or ""):
                self._text = ("title", "")
        elif tag == "img":
            card.element, card.src = "img", a.get("src")
        elif tag == "video":
            card.element, card.video = "video", a
        elif tag == "source":
            card.src, card.source_type = a.get("src"), a.get("type")
        elif "data-gone" in a:
            self._text = ("gone", "")
        elif tag == "td" and "data-fact" in a:
            self._text = (f"fact:{a['data-fact']}", "")
        elif tag == "a" and "data-full" in a:
            card.full = a.get("href")

    def handle_data(self, data: str) -> None:
        if self._text is not None:
            self._text = (self._text[0], self._text[1] + data)

    def handle_endtag(self, tag: str) -> None:
        card = self._card
        if card is None:
            return
        if self._text is not None and tag in ("div", "p", "td"):
            name, text = self._text[0], self._text[1].strip()
            if name.startswith("fact:"):
                card.facts[name[5:]] = text
            else:
                setattr(card, name, text)
            self._text = None
        if tag == "div":
            self._depth -= 1
            if self._depth == 0:
                self._card = None


def media_cards(html: str) -> dict[str, MediaCard]:
    """The job page's input and output cards by name ("input-0", "output-1", ...), in order."""
    parser = _CardParser()
    parser.feed(html)
    return {card.name: card for card in parser.cards}
