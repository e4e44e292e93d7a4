"""Jobs with several photos, options and several outputs, on SQLite and PostgreSQL.

Create with photo slots and options (the price from the options), every refusal with nothing
changed, the Idempotency-Key over the whole request, PUT outputs by kind (an album, an
animated WebP, an H.264 MP4 made here with PyAV) all or nothing, the downloads by index, the
presets' contracts, and migration 0005 carrying an old job's files over.
"""

from __future__ import annotations

import io
import tempfile
from pathlib import Path
from typing import Any

import av
import httpx
import pytest
from alembic import command
from fastapi import FastAPI
from PIL import Image
from prometheus_client import REGISTRY
from sqlalchemy import func, select, text

from comfygram.backend import db, jobs
from comfygram.backend.limits import MULTIPART_SLACK, body_limit
from comfygram.backend.models import Job, JobFile, LedgerEntry, User
from comfygram.backend.models import Preset as PresetRow
from comfygram.backend.presets import contract_of
from comfygram.backend.schemas import JobOut
from comfygram.settings import Settings
from tests import images
from tests.helpers import balance, create_job, grant, register
from tests.rich_presets import write_rich_presets

USER = 4242


@pytest.fixture
def settings(settings: Settings, tmp_path: Path) -> Settings:
    settings.presets_dir = write_rich_presets(tmp_path / "presets")
    return settings


@pytest.fixture
async def funded(api: httpx.AsyncClient) -> int:
    """User USER with 3 + 20 credits."""
    await register(api, USER)
    await grant(api, USER, 20, "funded")
    return USER


def photo(color: tuple[int, int, int], width: int = 40, height: int = 30) -> bytes:
    return images.png(width, height, color)


RED, BLUE, GREEN = photo((200, 0, 0)), photo((0, 0, 200), 50, 30), photo((0, 200, 0))


def mp4(
    frames: int = 12,
    fps: int = 8,
    width: int = 64,
    height: int = 48,
    codec: str = "h264",
    *,
    faststart: bool = False,
) -> bytes:
    """A real MP4 of `frames` frames at `fps`, encoded with PyAV; `faststart` puts its index
    first, so the file ends in the last frame's bytes."""
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "v.mp4"
        options = {"movflags": "faststart"} if faststart else {}
        with av.open(str(path), "w", format="mp4", options=options) as out:
            stream = out.add_stream(codec, rate=fps)
            stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
            for n in range(frames):
                picture = Image.effect_noise((width, height), 60 + n).convert("RGB")
                for packet in stream.encode(av.VideoFrame.from_image(picture)):
                    out.mux(packet)
            for packet in stream.encode():
                out.mux(packet)
        return path.read_bytes()


async def world(app: FastAPI) -> dict[str, Any]:
    """What a refused request must leave alone: balances, rows, files on disk."""
    async with app.state.sessions() as session:
        counts = {
            model.__tablename__: await session.scalar(select(func.count()).select_from(model))
            for model in (Job, JobFile, LedgerEntry)
        }
        balances = (await session.execute(select(User.telegram_id, User.balance))).all()
        outputs = (
            await session.execute(select(JobFile.path).where(JobFile.role == "output"))
        ).all()
    media = app.state.settings.media_dir
    files = sorted(str(p.relative_to(media)) for p in media.rglob("*") if p.is_file())
    return {
        "counts": counts,
        "balances": sorted(map(tuple, balances)),
        "outputs": sorted(map(tuple, outputs)),
        "files": files,
    }


# -- create -------------------------------------------------------------------------------


async def test_two_photos_and_options_make_a_job_priced_by_its_options(
    api: httpx.AsyncClient, funded: int
) -> None:
    response = await create_job(
        api,
        funded,
        "duo",
        images=[RED, BLUE],
        options={"count": "4", "frame": "gold"},
        prompt="at the beach",
    )
    assert response.status_code == 201, response.text
    job = response.json()
    # (2 + 1 for gold) x 2 for four variants.
    assert job["price"] == 6
    assert await balance(api, funded) == 23 - 6
    assert job["options"] == {"count": "4", "frame": "gold"}
    assert job["prompt"] == "at the beach"
    assert [(f["index"], f["slot"], f["kind"], f["mime"]) for f in job["inputs"]] == [
        (0, "person", "image", "image/png"),
        (1, "place", "image", "image/png"),
    ]
    assert [(f["width"], f["height"], f["size"]) for f in job["inputs"]] == [
        (40, 30, len(RED)),
        (50, 30, len(BLUE)),
    ]
    assert job["inputs"][0]["frames"] == 1 and job["inputs"][0]["duration_seconds"] is None
    assert job["outputs"] == [] and job["has_result"] is False

    for index, sent in enumerate((RED, BLUE)):
        got = await api.get(f"/api/jobs/{job['id']}/inputs/{index}")
        assert got.status_code == 200 and got.content == sent
        assert got.headers["content-type"] == "image/png"
    assert (await api.get(f"/api/jobs/{job['id']}/input")).content == RED
    missing = await api.get(f"/api/jobs/{job['id']}/inputs/2")
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "input_not_found"


async def test_options_left_out_take_their_defaults(api: httpx.AsyncClient, funded: int) -> None:
    job = (await create_job(api, funded, "duo", images=[RED, BLUE])).json()
    assert (job["options"], job["price"], job["prompt"]) == (
        {"count": "2", "frame": "none"},
        2,
        None,
    )
    one = await create_job(api, funded, "duo", images=[RED, BLUE], options={"frame": "gold"})
    assert (one.json()["options"], one.json()["price"]) == ({"count": "2", "frame": "gold"}, 3)
    # A one-photo preset without options: as before, and its one slot is named "photo".
    bw = (await create_job(api, funded, "bw")).json()
    assert (bw["options"], bw["inputs"][0]["slot"]) == ({}, "photo")


Case = tuple[str, dict[str, Any], int, str]

REFUSALS: list[Case] = [
    ("duo-one-photo", {"preset": "duo", "images": [RED]}, 422, "photo_missing"),
    ("duo-no-photo", {"preset": "duo", "images": []}, 422, "photo_missing"),
    ("duo-three-photos", {"preset": "duo", "images": [RED, BLUE, GREEN]}, 422, "too_many_photos"),
    ("bw-two-photos", {"preset": "bw", "images": [RED, BLUE]}, 422, "too_many_photos"),
    ("five-photos", {"preset": "duo", "images": [RED] * 5}, 422, "too_many_photos"),
    ("bw-prompt", {"preset": "bw", "prompt": "pop"}, 422, "prompt_not_accepted"),
    ("edit-no-prompt", {"preset": "edit"}, 422, "prompt_required"),
    (
        "duo-unknown-option",
        {"preset": "duo", "images": [RED, BLUE], "options": {"size": "xl"}},
        422,
        "unknown_option",
    ),
    (
        "duo-unknown-choice",
        {"preset": "duo", "images": [RED, BLUE], "options": {"count": "3"}},
        422,
        "unknown_choice",
    ),
    (
        "bw-any-option",
        {"preset": "bw", "options": {"count": "2"}},
        422,
        "unknown_option",
    ),
    (
        "options-not-json",
        {"preset": "duo", "images": [RED, BLUE], "options": "{count"},
        422,
        "bad_options",
    ),
    (
        "options-a-list",
        {"preset": "duo", "images": [RED, BLUE], "options": '["4"]'},
        422,
        "bad_options",
    ),
    (
        "options-a-number-choice",
        {"preset": "duo", "images": [RED, BLUE], "options": '{"count": 4}'},
        422,
        "bad_options",
    ),
    (
        "options-a-string",
        {"preset": "duo", "images": [RED, BLUE], "options": '"4"'},
        422,
        "bad_options",
    ),
    (
        "duo-second-photo-not-an-image",
        {"preset": "duo", "images": [RED, b"hello, not an image"]},
        415,
        "unsupported_image",
    ),
    (
        "duo-second-photo-damaged",
        {"preset": "duo", "images": [RED, images.damaged_png()]},
        422,
        "bad_image",
    ),
    (
        # Cheap refusals first: the count is refused before the damaged photo is decoded.
        "duo-one-damaged-photo",
        {"preset": "duo", "images": [images.damaged_png()]},
        422,
        "photo_missing",
    ),
    (
        "duo-unknown-choice-damaged-photo",
        {"preset": "duo", "images": [RED, images.damaged_png()], "options": {"count": "9"}},
        422,
        "unknown_choice",
    ),
]


@pytest.mark.parametrize(
    ("fields", "status", "code"),
    [pytest.param(fields, status, code, id=name) for name, fields, status, code in REFUSALS],
)
async def test_a_refused_create_changes_nothing(
    app: FastAPI,
    api: httpx.AsyncClient,
    funded: int,
    fields: dict[str, Any],
    status: int,
    code: str,
) -> None:
    await create_job(api, funded, "duo", images=[RED, BLUE])  # something to leave alone
    before = await world(app)
    response = await create_job(api, funded, **fields)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["code"] == code, error
    assert len(error["message"]) > 10
    assert await world(app) == before


async def test_the_second_photo_is_named_in_its_refusal(
    api: httpx.AsyncClient, funded: int
) -> None:
    response = await create_job(api, funded, "duo", images=[RED, images.damaged_png()])
    assert response.json()["error"]["message"].startswith("Photo 2: ")


async def test_a_price_the_balance_cannot_pay_is_refused_before_any_decode(
    app: FastAPI, api: httpx.AsyncClient
) -> None:
    await register(api, USER)  # 3 credits: duo with 4 golden variants costs 6
    before = await world(app)
    for pair in ([RED, BLUE], [RED, images.damaged_png()]):
        refused = await create_job(
            api, USER, "duo", images=pair, options={"count": "4", "frame": "gold"}
        )
        assert refused.status_code == 402, refused.text
        assert refused.json()["error"]["code"] == "insufficient_credits"
    assert await world(app) == before
    cheap = await create_job(api, USER, "duo", images=[RED, BLUE], options={"frame": "gold"})
    assert cheap.status_code == 201 and await balance(api, USER) == 0


# -- the Idempotency-Key covers the whole request -------------------------------------------


async def test_a_replay_must_carry_the_same_photos_prompt_and_options(
    app: FastAPI, api: httpx.AsyncClient, funded: int
) -> None:
    request = {"images": [RED, BLUE], "options": {"count": "4"}, "prompt": "sunset"}
    first = await create_job(api, funded, "duo", key="k1", **request)
    assert first.status_code == 201, first.text
    before = await world(app)

    again = await create_job(api, funded, "duo", key="k1", **request)
    assert again.status_code == 201 and again.json()["id"] == first.json()["id"]
    assert again.headers["Idempotent-Replayed"] == "true"
    # The defaults written out are the same request as the defaults left out.
    explicit = {**request, "options": {"count": "4", "frame": "none"}}
    same = await create_job(api, funded, "duo", key="k1", **explicit)
    assert same.status_code == 201 and same.json()["id"] == first.json()["id"]

    for name, changed in {
        "other second photo": {**request, "images": [RED, GREEN]},
        "photos swapped": {**request, "images": [BLUE, RED]},
        "other option": {**request, "options": {"count": "2"}},
        "other prompt": {**request, "prompt": "sunrise"},
        "no prompt": {**request, "prompt": None},
    }.items():
        reused = await create_job(api, funded, "duo", key="k1", **changed)
        assert reused.status_code == 409, name
        assert reused.json()["error"]["code"] == "idempotency_key_reused", name
    assert await world(app) == before


# -- outputs --------------------------------------------------------------------------------


async def processing_job(api: httpx.AsyncClient, user: int, preset: str, **fields: Any) -> str:
    if preset == "duo":
        fields.setdefault("images", [RED, BLUE])
    created = await create_job(api, user, preset, **fields)
    assert created.status_code == 201, created.text
    job_id = created.json()["id"]
    moved = await api.post(f"/api/jobs/{job_id}/status", json={"status": "processing"})
    assert moved.status_code == 200, moved.text
    return job_id


def files(*blobs: bytes, mime: str = "image/png") -> list[tuple[str, tuple[str, bytes, str]]]:
    return [("file", (f"out-{n}", blob, mime)) for n, blob in enumerate(blobs)]


async def put_outputs(api: httpx.AsyncClient, job_id: str, *blobs: bytes) -> httpx.Response:
    return await api.put(f"/api/jobs/{job_id}/outputs", files=files(*blobs))


async def test_an_album_is_stored_in_one_request_and_served_by_index(
    api: httpx.AsyncClient, funded: int
) -> None:
    job_id = await processing_job(api, funded, "duo")
    album = [photo((n * 60, 0, 0), 30 + n, 20) for n in range(3)]
    stored = await put_outputs(api, job_id, *album)
    assert stored.status_code == 200, stored.text
    job = stored.json()
    assert job["has_result"] is True
    assert [(f["index"], f["slot"], f["kind"], f["width"], f["size"]) for f in job["outputs"]] == [
        (n, None, "image", 30 + n, len(album[n])) for n in range(3)
    ]
    for n, blob in enumerate(album):
        got = await api.get(f"/api/jobs/{job_id}/outputs/{n}")
        assert got.status_code == 200 and got.content == blob
    assert (await api.get(f"/api/jobs/{job_id}/result")).content == album[0]
    missing = await api.get(f"/api/jobs/{job_id}/outputs/3")
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "output_not_found"
    done = await api.post(f"/api/jobs/{job_id}/status", json={"status": "succeeded"})
    assert done.status_code == 200 and len(done.json()["outputs"]) == 3


async def test_choices_and_stored_outputs_are_counted(api: httpx.AsyncClient, funded: int) -> None:
    def sample(name: str, **labels: str) -> float:
        return REGISTRY.get_sample_value(name, labels) or 0.0

    gold = sample("comfygram_option_choices_total", preset="duo", option="frame", choice="gold")
    two = sample("comfygram_option_choices_total", preset="duo", option="count", choice="2")
    images, image_bytes = (
        sample("comfygram_outputs_total", kind="image"),
        sample("comfygram_output_bytes_total", kind="image"),
    )
    job_id = await processing_job(api, funded, "duo", options={"frame": "gold"})
    album = [photo((0, n * 90, 0)) for n in range(2)]
    assert (await put_outputs(api, job_id, *album)).status_code == 200
    # A refused upload counts nothing.
    assert (await put_outputs(api, job_id, b"not an image")).status_code in (415, 422)

    assert (
        sample("comfygram_option_choices_total", preset="duo", option="frame", choice="gold")
        == gold + 1
    )
    # The default taken for an option not sent counts as chosen too.
    assert sample("comfygram_option_choices_total", preset="duo", option="count", choice="2") == (
        two + 1
    )
    assert sample("comfygram_outputs_total", kind="image") == images + 2
    assert sample("comfygram_output_bytes_total", kind="image") == image_bytes + sum(
        map(len, album)
    )


async def test_a_second_attempt_replaces_the_first_and_its_files(
    app: FastAPI, api: httpx.AsyncClient, funded: int
) -> None:
    job_id = await processing_job(api, funded, "duo")
    first = await put_outputs(api, job_id, RED, BLUE, GREEN)
    assert first.status_code == 200
    media = app.state.settings.media_dir
    first_files = sorted((media / "outputs" / job_id).iterdir())
    assert len(first_files) == 3

    # A second attempt whose second file is damaged stores nothing: the first stays whole.
    before = await world(app)
    refused = await put_outputs(api, job_id, GREEN, images.cut_png())
    assert refused.status_code == 422, refused.text
    assert refused.json()["error"]["code"] == "bad_output"
    assert refused.json()["error"]["message"].startswith("Output 1: ")
    assert await world(app) == before

    second = await put_outputs(api, job_id, GREEN)
    assert second.status_code == 200, second.text
    assert [f["width"] for f in second.json()["outputs"]] == [40]
    assert (await api.get(f"/api/jobs/{job_id}/outputs/0")).content == GREEN
    assert (await api.get(f"/api/jobs/{job_id}/outputs/1")).status_code == 404
    left = sorted((media / "outputs" / job_id).iterdir())
    assert len(left) == 1 and not set(left) & set(first_files)
    async with app.state.sessions() as session:
        rows = await session.scalar(
            select(func.count()).select_from(JobFile).where(JobFile.job_id == job_id)
        )
    assert rows == 2 + 1  # two photos, one output


async def test_an_animated_webp_is_an_animation(api: httpx.AsyncClient, funded: int) -> None:
    job_id = await processing_job(api, funded, "loop")
    animation = images.animated("WEBP", frames=5)
    stored = await put_outputs(api, job_id, animation)
    assert stored.status_code == 200, stored.text
    (output,) = stored.json()["outputs"]
    assert (output["kind"], output["mime"], output["frames"]) == ("animation", "image/webp", 5)
    assert output["duration_seconds"] is not None and output["duration_seconds"] >= 0
    got = await api.get(f"/api/jobs/{job_id}/outputs/0")
    assert got.content == animation and got.headers["content-type"] == "image/webp"


async def test_an_h264_mp4_is_a_video(api: httpx.AsyncClient, funded: int) -> None:
    job_id = await processing_job(api, funded, "clip")
    video = mp4(frames=12, fps=8)
    stored = await api.put(f"/api/jobs/{job_id}/outputs", files=files(video, mime="video/mp4"))
    assert stored.status_code == 200, stored.text
    (output,) = stored.json()["outputs"]
    assert (output["kind"], output["mime"], output["width"], output["height"]) == (
        "video",
        "video/mp4",
        64,
        48,
    )
    assert output["frames"] == 12 and output["duration_seconds"] == pytest.approx(1.5, abs=0.01)
    got = await api.get(f"/api/jobs/{job_id}/outputs/0")
    assert got.content == video and got.headers["content-type"] == "video/mp4"


WRONG_OUTPUTS = [
    ("image-preset-mp4", "duo", lambda: [RED, mp4()], "unsupported_output", "Output 1: "),
    (
        "image-preset-animation",
        "duo",
        lambda: [images.animated("WEBP")],
        "unsupported_output",
        "Output 0: ",
    ),
    ("image-preset-truncated", "duo", lambda: [images.cut_png()], "bad_output", "Output 0: "),
    ("video-preset-png", "clip", lambda: [RED], "unsupported_output", "Output 0: "),
    ("video-preset-mpeg4", "clip", lambda: [mp4(codec="mpeg4")], "unsupported_output", ""),
    ("video-preset-cut-mp4", "clip", lambda: [mp4()[:-300]], "bad_output", ""),
    # Cut in its last frame: the demuxer alone would hand back the stump as a whole frame.
    ("video-preset-cut-last-frame", "clip", lambda: [mp4(faststart=True)[:-10]], "bad_output", ""),
    ("video-preset-half-mp4", "clip", lambda: [mp4()[: len(mp4()) // 2]], "bad_output", ""),
    ("animation-preset-mp4", "loop", lambda: [mp4()], "unsupported_output", ""),
    ("animation-preset-jpeg", "loop", lambda: [images.jpeg()], "unsupported_output", ""),
    ("too-many", "duo", lambda: [RED] * 21, "too_many_outputs", ""),
]


@pytest.mark.parametrize(
    ("preset", "make", "code", "opening"),
    [pytest.param(p, m, c, o, id=name) for name, p, m, c, o in WRONG_OUTPUTS],
)
async def test_an_output_of_the_wrong_kind_or_damaged_stores_nothing(
    app: FastAPI,
    api: httpx.AsyncClient,
    funded: int,
    preset: str,
    make: Any,
    code: str,
    opening: str,
) -> None:
    job_id = await processing_job(api, funded, preset)
    before = await world(app)
    refused = await put_outputs(api, job_id, *make())
    assert refused.status_code == 422, refused.text
    error = refused.json()["error"]
    assert error["code"] == code, error
    assert error["message"].startswith(opening), error
    assert await world(app) == before


async def test_outputs_are_taken_only_while_processing(
    app: FastAPI, api: httpx.AsyncClient, funded: int
) -> None:
    queued = (await create_job(api, funded, "duo", images=[RED, BLUE])).json()["id"]
    before = await world(app)
    refused = await put_outputs(api, queued, RED)
    assert refused.status_code == 409, refused.text
    assert refused.json()["error"]["code"] == "job_not_processing"
    assert await world(app) == before  # no file left behind

    done = await processing_job(api, funded, "duo")
    assert (await put_outputs(api, done, RED)).status_code == 200
    await api.post(f"/api/jobs/{done}/status", json={"status": "succeeded"})
    before = await world(app)
    late = await put_outputs(api, done, BLUE)
    assert late.status_code == 409
    assert await world(app) == before
    assert (await api.get(f"/api/jobs/{done}/outputs/0")).content == RED


async def test_the_result_shorthand_goes_through_the_outputs(
    api: httpx.AsyncClient, funded: int
) -> None:
    job_id = await processing_job(api, funded, "bw")
    put = await api.put(
        f"/api/jobs/{job_id}/result", files={"image": ("r.png", GREEN, "image/png")}
    )
    assert put.status_code == 200, put.text
    assert [o["kind"] for o in put.json()["outputs"]] == ["image"]
    assert (await api.get(f"/api/jobs/{job_id}/outputs/0")).content == GREEN
    limits = (await api.get("/api/jobs/limits")).json()
    assert limits["max_outputs"] == 20


async def test_an_operators_free_retry_keeps_every_photo_and_option(
    app: FastAPI, api: httpx.AsyncClient, funded: int
) -> None:
    job_id = await processing_job(
        api, funded, "duo", images=[RED, BLUE], options={"count": "4"}, prompt="hi"
    )
    await api.post(f"/api/jobs/{job_id}/status", json={"status": "failed", "error": "x: y"})
    paid = await balance(api, funded)
    async with app.state.sessions() as session:
        created = await jobs.retry_free(session, app.state.store, job_id, 3, 20_000_000)
        await session.commit()
        retried = created.job
        assert (retried.options, retried.prompt, retried.price) == (
            {"count": "4", "frame": "none"},
            "hi",
            0,
        )
    for index, sent in enumerate((RED, BLUE)):
        got = await api.get(f"/api/jobs/{retried.id}/inputs/{index}")
        assert got.content == sent
    assert await balance(api, funded) == paid


# -- presets --------------------------------------------------------------------------------


async def test_presets_show_their_contract_and_output_kind(api: httpx.AsyncClient) -> None:
    listed = {p["slug"]: p for p in (await api.get("/api/presets")).json()}
    duo = listed["duo"]
    assert (duo["kind"], duo["takes_prompt"], duo["price"]) == ("image", True, 2)
    contract = duo["contract"]
    assert [s["name"] for s in contract["photos"]] == ["person", "place"]
    assert contract["photos"][0]["title"]["en"] == "Send the person"
    assert contract["prompt"]["required"] is False
    count = next(o for o in contract["options"] if o["id"] == "count")
    assert count["default"] == "2"
    assert [(c["id"], c["price_multiplier"]) for c in count["choices"]] == [("2", 1), ("4", 2)]
    assert (listed["clip"]["kind"], listed["loop"]["kind"]) == ("video", "animation")
    assert [s["name"] for s in listed["bw"]["contract"]["photos"]] == ["photo"]
    detail = (await api.get("/api/presets/duo")).json()
    assert detail["contract"] == contract and "workflow" in detail


# -- the body limit follows the presets' declared inputs -----------------------------------


def test_the_create_body_limit_grows_with_the_photo_count() -> None:
    assert body_limit("/api/jobs/create", 1000, 1) == 1000 + MULTIPART_SLACK
    assert body_limit("/api/jobs/create", 1000, 3) == 3000 + MULTIPART_SLACK
    assert body_limit("/api/jobs/abc/outputs", 1000) > body_limit("/api/jobs/abc/result", 1000)


async def test_two_photos_each_near_the_limit_fit_in_one_body(
    api: httpx.AsyncClient, funded: int, settings: Settings
) -> None:
    """2 MB per photo here: two noisy 1.4 MB photos (together over one photo's limit)."""
    big = [_noise_png(seed) for seed in (1, 2)]
    assert all(1_200_000 < len(b) <= settings.max_upload_bytes for b in big)
    assert sum(map(len, big)) > settings.max_upload_bytes + MULTIPART_SLACK
    response = await create_job(api, funded, "duo", images=big)
    assert response.status_code == 201, response.text


def _noise_png(seed: int) -> bytes:
    import random

    rng = random.Random(seed)
    picture = Image.frombytes("RGB", (700, 700), rng.randbytes(700 * 700 * 3))
    buffer = io.BytesIO()
    picture.save(buffer, "PNG", compress_level=1)
    return buffer.getvalue()


# -- migration 0005 -------------------------------------------------------------------------


async def test_migration_0005_carries_an_old_job_over(empty_database: str, tmp_path) -> None:
    """A job written the old way (input_path/result_path on the row) before the upgrade is
    readable after it: its files are job_files rows at position 0; down again, they return."""
    engine = db.create_engine(empty_database)
    try:
        await db.migrate(engine)
        async with engine.begin() as connection:
            await connection.run_sync(
                lambda sync: command.downgrade(db._alembic_config(sync), "0004")
            )
        assert await db.current_revision(engine) == "0004"
        old = "11111111-2222-3333-4444-555555555555"
        async with engine.begin() as connection:
            await connection.execute(
                text(
                    "INSERT INTO users (id, telegram_id, balance, blocked_bot, banned, created_at)"
                    " VALUES (77, 7777, 5, false, false, CURRENT_TIMESTAMP)"
                )
            )
            await connection.execute(
                text(
                    "INSERT INTO presets (slug, title_en, title_ru, description_en,"
                    " description_ru, price, enabled, takes_prompt, models, manifest, workflow,"
                    " updated_at) VALUES ('gone', 'Gone', 'Gone', '', '', 1, false, false, '[]',"
                    ' \'{"image_input": {"node": "1", "input": "image"}}\', \'{}\','
                    " CURRENT_TIMESTAMP)"
                )
            )
            for job_id, result in ((old, "'results/old.png'"), (old[:-1] + "6", "NULL")):
                await connection.execute(
                    text(
                        "INSERT INTO jobs (id, user_id, preset_slug, prompt, price, status,"
                        " attempts, progress, input_path, input_mime, result_path, result_mime,"
                        " delivery_status, comfyui_crashes, created_at, updated_at, finished_at)"
                        f" VALUES ('{job_id}', 77, 'gone', NULL, 1, 'succeeded', 1, 100,"
                        f" 'inputs/{job_id}.jpg', 'image/jpeg', {result},"
                        " 'image/png', 'delivered', 0, CURRENT_TIMESTAMP, CURRENT_TIMESTAMP,"
                        " CURRENT_TIMESTAMP)"
                    )
                )
        await db.migrate(engine)
        assert await db.current_revision(engine) == "0006"
        sessions = db.create_sessionmaker(engine)
        async with sessions() as session:
            job = await session.get(Job, old)
            user = await session.get(User, 77)
            out = JobOut.of(job, user)
            assert [(f.slot, f.kind, f.mime) for f in out.inputs] == [
                ("photo", "image", "image/jpeg")
            ]
            assert [(f.index, f.kind, f.mime) for f in out.outputs] == [(0, "image", "image/png")]
            assert (job.inputs[0].path, job.outputs[0].path) == (
                f"inputs/{old}.jpg",
                "results/old.png",
            )
            assert (out.options, out.has_result, job.request_digest) == ({}, True, None)
            other = await session.get(Job, old[:-1] + "6")
            assert (len(other.inputs), other.outputs) == (1, [])
            # A preset row from before contracts reads as one photo in, one image out.
            gone = contract_of(await session.get(PresetRow, "gone"))
            assert ([p.name for p in gone.photos], gone.prompt, gone.output.kind) == (
                ["photo"],
                None,
                "image",
            )
        async with engine.begin() as connection:
            await connection.run_sync(
                lambda sync: command.downgrade(db._alembic_config(sync), "0004")
            )
            back = (
                await connection.execute(
                    text("SELECT input_path, result_path FROM jobs ORDER BY id")
                )
            ).all()
        assert [tuple(row) for row in back] == [
            (f"inputs/{old}.jpg", "results/old.png"),
            (f"inputs/{old[:-1]}6.jpg", None),
        ]
        await db.migrate(engine)
        assert await db.current_revision(engine) == "0006"
        # Leave the database as the other tests expect it: empty.
        async with engine.begin() as connection:
            for table in ("job_files", "jobs", "presets", "users"):
                await connection.execute(text(f"DELETE FROM {table}"))
    finally:
        await engine.dispose()
