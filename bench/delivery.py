"""How long delivery takes once ComfyUI is done, for an album and for a video.

    .venv/bin/python bench/delivery.py [--jobs 5] [--side 768] [--frames 48]

Runs jobs of two presets through the real backend (uvicorn on loopback, SQLite), Redis on
127.0.0.1:6379 (db 9, a fresh key prefix), one `comfygram worker` process and the ComfyUI and
Telegram test doubles:

- album: one photo -> 4 images (original, negative, both flipped) by one SaveImage, sent as one
  sendMediaGroup of JPEGs, then the buttons;
- video: one photo -> its frames and negatives at 24 fps (CreateVideo + SaveVideo, a real H.264
  MP4), sent as sendVideo with a thumbnail.

Reports p50/p95/max of "ComfyUI done -> Telegram accepted": from the end of the prompt's
execution in the double to the double's answer to the sendMediaGroup or sendVideo call. That
covers the history read, the downloads, the one upload of all outputs to the backend, rendering
(JPEG, thumbnail) and the upload to Telegram. Each job goes to its own user, so Telegram's
one-message-per-second-per-chat budget does not count.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import sys
import tempfile
import uuid
from pathlib import Path
from typing import Any

from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from comfygram.settings import Settings
from tests.helpers import API_TOKEN
from tests.stack import running_stack

USER = 888
MANIFEST = """slug = "{slug}"
price = 1
enabled = true
timeout_seconds = 120
send_document = false
[title]
en = "{slug}"
ru = "{slug}"
[description]
en = "bench"
ru = "bench"
[[inputs]]
name = "photo"
node = "1"
[output]
node = "{output}"
"""


def node(kind: str, **inputs: Any) -> dict[str, Any]:
    return {"class_type": kind, "inputs": inputs}


def workflows(frames: int) -> dict[str, tuple[dict[str, Any], str]]:
    flips = {
        "1": node("LoadImage", image="x.png"),
        "2": node("ImageInvert", image=["1", 0]),
        "3": node("ImageFlip", image=["1", 0], flip_method="x-axis: vertically"),
        "4": node("ImageFlip", image=["2", 0], flip_method="x-axis: vertically"),
        "5": node("ImageBatch", image1=["1", 0], image2=["2", 0]),
        "6": node("ImageBatch", image1=["3", 0], image2=["4", 0]),
        "7": node("ImageBatch", image1=["5", 0], image2=["6", 0]),
    }
    album = {**flips, "8": node("SaveImage", images=["7", 0], filename_prefix="album")}
    video = {
        **flips,
        "8": node("RepeatImageBatch", image=["7", 0], amount=max(1, frames // 4)),
        "9": node("CreateVideo", images=["8", 0], fps=24.0),
        "10": node("SaveVideo", video=["9", 0], filename_prefix="v", format="mp4", codec="h264"),
    }
    return {"album": (album, "8"), "video": (video, "10")}


def photo(side: int) -> bytes:
    """A JPEG like the ones Telegram hands a bot."""
    buffer = io.BytesIO()
    Image.effect_noise((side, side * 3 // 4), 40).convert("RGB").save(buffer, "JPEG", quality=87)
    return buffer.getvalue()


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))] * 1000


async def run(jobs: int, side: int, frames: int) -> dict[str, list[float]]:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        presets = root / "presets"
        for slug, (workflow, output) in workflows(frames).items():
            (presets / slug).mkdir(parents=True)
            (presets / slug / "preset.toml").write_text(MANIFEST.format(slug=slug, output=output))
            (presets / slug / "workflow.json").write_text(json.dumps(workflow))
        settings = Settings(
            _env_file=None,
            api_token=API_TOKEN,
            database_url=f"sqlite+aiosqlite:///{root}/bench.db",
            media_dir=root / "media",
            redis_url="redis://127.0.0.1:6379/9",
            redis_prefix=f"bench-{uuid.uuid4().hex[:8]}",
            max_upload_bytes=50 * 1024 * 1024,
        )
        async with running_stack(settings, root, presets_dir=presets) as stack:
            stack.telegram.recompress_photos = False
            image = photo(side)
            results: dict[str, list[float]] = {}
            stack.spawn_worker("bench")
            user = USER
            for slug, method in (("album", "sendMediaGroup"), ("video", "sendVideo")):
                job_ids = []
                for _ in range(jobs):
                    user += 1
                    await stack.new_user(user, credits=1)
                    job, _ = await stack.backend.create_job(user, slug, [(image, "p.jpg")])
                    job_ids.append(job.id)
                    # One at a time: the figure is delivery alone, not a queue behind it.
                    done = await stack.settled(job.id, timeout=120)
                    assert (done.status, done.delivery_status) == ("succeeded", "delivered")
                ends = [at for at, kind, _, _ in stack.comfyui.timeline if kind == "end"]
                accepted = [c.answered_at for c in stack.telegram.sent(method) if c.ok]
                assert len(accepted) == jobs, (slug, len(accepted))
                results[slug] = [
                    sent - end for end, sent in zip(ends[-jobs:], accepted, strict=True) if sent
                ]
            album = max(
                len(d) for c in stack.telegram.sent("sendMediaGroup") for d in c.files.values()
            )
            video = max(len(c.files["video"]) for c in stack.telegram.sent("sendVideo"))
            print(f"largest upload to Telegram: album item {album:,} B, video {video:,} B")
            return results


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--jobs", type=int, default=5, help="jobs of each kind")
    parser.add_argument("--side", type=int, default=768, help="photo width in px")
    parser.add_argument("--frames", type=int, default=48, help="video frames (24 fps)")
    args = parser.parse_args()
    results = await run(args.jobs, args.side, args.frames)
    print(
        f"{args.jobs} jobs each, {args.side}px JPEG photo, album of 4, "
        f"video of {max(4, args.frames // 4 * 4)} frames; ComfyUI done -> Telegram accepted, ms"
    )
    print(f"{'delivery':10} {'p50':>8} {'p95':>8} {'max':>8}")
    for slug, values in results.items():
        print(
            f"{slug:10} {pct(values, 0.5):8.1f} {pct(values, 0.95):8.1f} {max(values) * 1000:8.1f}"
        )


if __name__ == "__main__":
    asyncio.run(main())
