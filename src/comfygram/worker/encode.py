"""Conversions for delivery: what ComfyUI saves is not always what Telegram shows well.

- A photo goes as a high-quality JPEG: Telegram recompresses photos anyway, and a PNG upload can
  be five times larger.
- Telegram does not animate WebP (nor APNG): an animation goes as a silent H.264 MP4, frame
  durations kept.
- A video gets a JPEG thumbnail (at most 320 px, under 200 kB), else clients show a grey box.
- Bots upload at most 50 MB: a bigger video or animation is encoded again, at a lower bitrate and
  then a smaller scale, and what still does not fit raises TooLarge.

CPU-bound and blocking: call these from a thread (``asyncio.to_thread``).
"""

from __future__ import annotations

import io
import os
import tempfile
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from fractions import Fraction

import av
from PIL import Image, ImageSequence

__all__ = [
    "PHOTO_MAX_BYTES",
    "THUMBNAIL_MAX_BYTES",
    "THUMBNAIL_MAX_SIDE",
    "UPLOAD_MAX_BYTES",
    "EncodeError",
    "Facts",
    "Motion",
    "TooLarge",
    "animation_to_mp4",
    "probe",
    "shrink_video",
    "to_jpeg",
    "video_thumbnail",
]

UPLOAD_MAX_BYTES = 50 * 1024 * 1024  # the Bot API's multipart upload limit for bots
PHOTO_MAX_BYTES = 10 * 1024 * 1024  # sendPhoto
THUMBNAIL_MAX_SIDE = 320
THUMBNAIL_MAX_BYTES = 200 * 1000
JPEG_QUALITY = 90
# An animation frame without a duration shows this long (as browsers do).
_DEFAULT_FRAME_MS = 100
# Encodings tried in turn until the file fits: (x264 crf or None for a bitrate target, scale).
_LADDER: tuple[tuple[int | None, float], ...] = (
    (23, 1.0),
    (None, 1.0),
    (None, 0.75),
    (None, 0.5),
    (None, 0.35),
)


class EncodeError(Exception):
    """The file cannot be read as what it claims to be."""


class TooLarge(Exception):
    """Even encoded smaller, the file is over the upload limit."""


@dataclass(frozen=True)
class Facts:
    """What delivery needs to know of a file: its size in pixels and, for motion, its length."""

    width: int | None = None
    height: int | None = None
    frames: int | None = None
    duration_seconds: float | None = None


@dataclass(frozen=True)
class Motion:
    """An H.264 MP4 ready to send, with the facts sendVideo/sendAnimation want."""

    data: bytes
    width: int
    height: int
    frames: int
    duration_seconds: float


# -- probing --------------------------------------------------------------------------------


def probe(data: bytes, kind: str) -> Facts:
    """The facts of an output of ``kind`` (image, animation, video); EncodeError when it
    cannot be read as such."""
    if kind == "video":
        return _probe_video(data)
    try:
        with Image.open(io.BytesIO(data)) as image:
            width, height = image.size
            frames = getattr(image, "n_frames", 1)
            if kind == "image":
                return Facts(width, height)
            total = sum(_frame_ms(frame) for frame in ImageSequence.Iterator(image))
            return Facts(width, height, frames, total / 1000)
    except Exception as exc:
        raise EncodeError(f"not a readable {kind}: {exc}") from None


def _probe_video(data: bytes) -> Facts:
    try:
        with av.open(io.BytesIO(data)) as container:
            stream = container.streams.video[0]
            frames = stream.frames or sum(1 for _ in container.demux(stream))
            if container.duration:
                duration = container.duration / av.time_base
            elif stream.duration and stream.time_base:
                duration = float(stream.duration * stream.time_base)
            else:
                duration = None
            return Facts(stream.width, stream.height, frames, duration)
    except Exception as exc:
        raise EncodeError(f"not a readable video: {exc}") from None


def _frame_ms(frame: Image.Image) -> int:
    frame.load()  # WebP sets a frame's duration when it is loaded
    duration = frame.info.get("duration")
    return int(duration) if duration else _DEFAULT_FRAME_MS


# -- stills ---------------------------------------------------------------------------------


def _flatten(image: Image.Image) -> Image.Image:
    """RGB, transparency laid on white (as a photo viewer shows it)."""
    if image.mode in ("RGBA", "LA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGB", rgba.size, (255, 255, 255))
        background.paste(rgba, mask=rgba.getchannel("A"))
        return background
    return image.convert("RGB")


def to_jpeg(data: bytes, *, quality: int = JPEG_QUALITY, max_bytes: int = PHOTO_MAX_BYTES) -> bytes:
    """The image (its first frame) as a JPEG of ``quality``, lowered (then the image scaled
    down) only when needed to stay under ``max_bytes``."""
    try:
        with Image.open(io.BytesIO(data)) as opened:
            image = _flatten(opened)
    except Exception as exc:
        raise EncodeError(f"not a readable image: {exc}") from None
    for scale in (1.0, 0.75, 0.5, 0.25):
        scaled = image if scale == 1.0 else _scaled(image, scale)
        for q in (quality, 80, 70, 60):
            if q > quality:
                continue
            buffer = io.BytesIO()
            # No optimize: its second Huffman pass takes 2-3x the encode's CPU for 5-10 %
            # fewer bytes, and CPU is what keeps ComfyUI fed (Telegram recompresses anyway).
            scaled.save(buffer, "JPEG", quality=q)
            if buffer.tell() <= max_bytes:
                return buffer.getvalue()
    raise TooLarge(f"the image does not fit in {max_bytes:,} bytes as a JPEG")


def _scaled(image: Image.Image, scale: float) -> Image.Image:
    size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
    return image.resize(size, Image.Resampling.LANCZOS)


def _thumbnail(image: Image.Image) -> bytes:
    """A JPEG of at most THUMBNAIL_MAX_SIDE px and under THUMBNAIL_MAX_BYTES."""
    image = _flatten(image)
    image.thumbnail((THUMBNAIL_MAX_SIDE, THUMBNAIL_MAX_SIDE), Image.Resampling.LANCZOS)
    for quality in (85, 70, 50, 30):
        buffer = io.BytesIO()
        image.save(buffer, "JPEG", quality=quality)
        if buffer.tell() < THUMBNAIL_MAX_BYTES:
            return buffer.getvalue()
    raise AssertionError("a 320 px JPEG at quality 30 is never 200 kB")


# -- motion ---------------------------------------------------------------------------------


def video_thumbnail(data: bytes) -> bytes:
    """The video's first frame as a JPEG thumbnail Telegram accepts."""
    try:
        with av.open(io.BytesIO(data)) as container:
            frame = next(container.decode(video=0))
            return _thumbnail(frame.to_image())
    except (StopIteration, av.FFmpegError, IndexError) as exc:
        raise EncodeError(f"no frame to make a thumbnail of: {exc}") from None


def animation_thumbnail(data: bytes) -> bytes:
    """An animation's first frame as a JPEG thumbnail Telegram accepts."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            return _thumbnail(image)
    except Exception as exc:
        raise EncodeError(f"not a readable animation: {exc}") from None


def animation_to_mp4(data: bytes, *, max_bytes: int = UPLOAD_MAX_BYTES) -> Motion:
    """An animated WebP/PNG (or GIF) as a silent H.264 MP4 (yuv420p, even dimensions), each
    frame shown as long as in the original."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            frames = [(_flatten(f), _frame_ms(f)) for f in ImageSequence.Iterator(image)]
    except Exception as exc:
        raise EncodeError(f"not a readable animation: {exc}") from None
    total_ms = sum(ms for _, ms in frames)
    return _fit(lambda crf, rate, scale: _encode(frames, crf, rate, scale), total_ms, max_bytes)


def shrink_video(data: bytes, *, max_bytes: int = UPLOAD_MAX_BYTES) -> Motion:
    """The video as is when it fits in ``max_bytes``; else encoded again, smaller (the sound is
    left out), timing kept."""
    facts = _probe_video(data)
    if len(data) <= max_bytes:
        assert facts.width and facts.height
        return Motion(
            data, facts.width, facts.height, facts.frames or 0, facts.duration_seconds or 0.0
        )
    frames = list(_decoded_frames(data))
    total_ms = sum(ms for _, ms in frames)
    return _fit(lambda crf, rate, scale: _encode(frames, crf, rate, scale), total_ms, max_bytes)


def _decoded_frames(data: bytes) -> Iterator[tuple[Image.Image, int]]:
    """Every frame of the video with how long it shows, in ms."""
    try:
        with av.open(io.BytesIO(data)) as container:
            stream = container.streams.video[0]
            fallback = 1 / float(stream.average_rate or 25)
            at = 0.0  # exact time so far: rounding each frame to ms must not drift
            for frame in container.decode(stream):
                seconds = fallback
                if frame.duration and frame.time_base:
                    seconds = float(frame.duration * frame.time_base)
                ms = round((at + seconds) * 1000) - round(at * 1000)
                at += seconds
                yield frame.to_image(), max(1, ms)
    except av.FFmpegError as exc:
        raise EncodeError(f"not a readable video: {exc}") from None


def _fit(
    encode: Callable[[int | None, int | None, float], Motion], total_ms: int, max_bytes: int
) -> Motion:
    """The first encoding of the ladder that fits in ``max_bytes``."""
    seconds = max(total_ms, 1) / 1000
    for crf, scale in _LADDER:
        # A bitrate that leaves room for the container (about 10 %).
        rate = None if crf is not None else int(max_bytes * 8 * 0.85 / seconds)
        motion = encode(crf, rate, scale)
        if len(motion.data) <= max_bytes:
            return motion
    raise TooLarge(f"the video does not fit in {max_bytes:,} bytes even encoded smaller")


def _even(value: float) -> int:
    return max(2, int(value) // 2 * 2)


def _encode(
    frames: Iterable[tuple[Image.Image, int]] | list[tuple[Image.Image, int]],
    crf: int | None,
    bit_rate: int | None,
    scale: float,
) -> Motion:
    """Frames (image, ms) as an H.264 MP4; dimensions scaled and made even (yuv420p needs it)."""
    frames = list(frames)
    first = frames[0][0]
    width, height = _even(first.width * scale), _even(first.height * scale)
    options = {"bf": "0", "preset": "veryfast"}  # no B-frames: each frame keeps its duration
    if crf is not None:
        options["crf"] = str(crf)
    fd, path = tempfile.mkstemp(suffix=".mp4")
    os.close(fd)
    try:
        # A file, not memory: +faststart rewrites it (moov first, so it plays while it loads).
        with av.open(path, "w", format="mp4", options={"movflags": "+faststart"}) as output:
            stream = output.add_stream("libx264", rate=Fraction(1000, 1), options=options)
            stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
            stream.codec_context.time_base = Fraction(1, 1000)
            if bit_rate is not None:
                stream.codec_context.bit_rate = bit_rate
            durations: dict[int, int] = {}

            def mux(packets: list[av.Packet]) -> None:
                for packet in packets:
                    if packet.pts is not None:
                        packet.duration = durations.get(packet.pts, _DEFAULT_FRAME_MS)
                    output.mux(packet)

            at = 0
            for image, ms in frames:
                if image.size != (width, height):
                    image = image.resize((width, height), Image.Resampling.LANCZOS)
                frame = av.VideoFrame.from_image(image).reformat(format="yuv420p")
                frame.pts, frame.time_base = at, Fraction(1, 1000)
                durations[at] = ms
                at += ms
                mux(stream.encode(frame))
            mux(stream.encode())
        with open(path, "rb") as encoded:
            data = encoded.read()
    finally:
        os.unlink(path)
    return Motion(data, width, height, len(frames), at / 1000)
