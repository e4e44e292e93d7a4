"""Checking a job's outputs by the kind its preset declares, before anything is stored.

- ``image``: a still JPEG, PNG or WebP (the checks of images.py: a whole JPEG or PNG by its
  structure, anything else by decoding its first frame).
- ``animation``: an animated WebP or PNG (what SaveAnimatedWEBP/SaveAnimatedPNG write); every
  frame is decoded, which finds a damaged one and gives the frame count and duration, so its
  pixels x frames are bounded (images.MAX_PIXEL_FRAMES) before any decode.
- ``video``: an MP4 with an H.264 video stream (what SaveVideo writes); PyAV reads its
  container, counts the stream's packets (a cut-off file has fewer than it declares) and
  decodes the first frame.

A file of another kind, or one that cannot be read, is a MediaRejected.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass
from fractions import Fraction

from PIL import Image

from comfygram.images import (
    MAX_PIXEL_FRAMES,
    ImageRejected,
    check_pixel_frames,
    inspect_image,
    read_header,
)
from comfygram.presets.contract import MediaKind

__all__ = ["MediaInfo", "MediaRejected", "inspect_output"]

_ANIMATION_FORMATS = {"WEBP": ("image/webp", "webp"), "PNG": ("image/png", "png")}


class MediaRejected(Exception):
    """``kind``: "unsupported" (not the kind or format expected) or "unreadable" (damaged)."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind
        self.message = message


@dataclass(frozen=True)
class MediaInfo:
    kind: MediaKind
    mime: str
    extension: str
    width: int
    height: int
    frames: int
    duration_ms: int | None  # None for a still image


def inspect_output(data: bytes, kind: MediaKind, max_pixels: int) -> MediaInfo:
    """What the file is, or MediaRejected; ``max_pixels`` bounds one frame."""
    if kind is MediaKind.IMAGE:
        return _still(data, max_pixels)
    if kind is MediaKind.ANIMATION:
        return _animation(data, max_pixels)
    return _video(data, max_pixels)


def _rejected(exc: ImageRejected) -> MediaRejected:
    return MediaRejected(exc.kind, exc.message)


def _still(data: bytes, max_pixels: int) -> MediaInfo:
    try:
        info = inspect_image(data, max_pixels, structure_suffices=True)
    except ImageRejected as exc:
        raise _rejected(exc) from None
    if info.frames > 1:
        raise MediaRejected(
            "unsupported", f"Expected a still image; this {info.format} has {info.frames} frames."
        )
    return MediaInfo(MediaKind.IMAGE, info.mime, info.extension, info.width, info.height, 1, None)


def _animation(data: bytes, max_pixels: int) -> MediaInfo:
    try:
        header = read_header(data, max_pixels)
    except ImageRejected as exc:
        raise _rejected(exc) from None
    if header.format not in _ANIMATION_FORMATS:
        raise MediaRejected(
            "unsupported", f"Expected an animated WebP or PNG; this is a {header.format} image."
        )
    try:
        check_pixel_frames(header.width, header.height, header.frames, MAX_PIXEL_FRAMES)
    except ImageRejected as exc:
        raise _rejected(exc) from None
    duration = 0
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as image:
                for frame in range(header.frames):
                    image.seek(frame)
                    image.load()
                    duration += int(image.info.get("duration", 0) or 0)
    except Exception:
        raise MediaRejected(
            "unreadable", "The animation is damaged or incomplete: a frame cannot be decoded."
        ) from None
    mime, extension = _ANIMATION_FORMATS[header.format]
    return MediaInfo(
        MediaKind.ANIMATION,
        mime,
        extension,
        header.width,
        header.height,
        header.frames,
        duration,
    )


def _boxes_complete(data: bytes) -> bool:
    """Whether the MP4's top-level boxes (size + type each) exactly fill the file."""
    offset, end = 0, len(data)
    while offset < end:
        if end - offset < 8:
            return False
        size = int.from_bytes(data[offset : offset + 4], "big")
        header = 8
        if size == 1:  # a 64-bit size follows the type
            if end - offset < 16:
                return False
            size, header = int.from_bytes(data[offset + 8 : offset + 16], "big"), 16
        elif size == 0:  # the last box runs to the end of the file
            return True
        if size < header or offset + size > end:
            return False
        offset += size
    return True


def _video(data: bytes, max_pixels: int) -> MediaInfo:
    import av  # imported here: only the backend's output checks need it

    if len(data) < 12 or data[4:8] != b"ftyp":
        raise MediaRejected("unsupported", "Expected an MP4 video; this file is not one.")
    if not _boxes_complete(data):
        # The demuxer hands back a cut-off last sample as if it were whole.
        raise MediaRejected("unreadable", "The video is incomplete: the MP4 is cut off.")
    try:
        container = av.open(io.BytesIO(data), mode="r", format="mp4")
    except Exception:
        raise MediaRejected("unreadable", "The video is damaged: its MP4 cannot be read.") from None
    with container:
        if not container.streams.video:
            raise MediaRejected("unsupported", "Expected a video; this MP4 has no video stream.")
        stream = container.streams.video[0]
        codec = stream.codec_context.name
        if codec != "h264":
            raise MediaRejected(
                "unsupported", f"Expected an H.264 video; this MP4's video is {codec}."
            )
        width, height = stream.codec_context.width, stream.codec_context.height
        if width * height > max_pixels or width <= 0 or height <= 0:
            raise MediaRejected(
                "unreadable",
                f"The video is {width}x{height} pixels; at most {max_pixels:,} are accepted.",
            )
        # Only the first frame is decoded, so the length of a video is bounded by its bytes
        # (result_max_bytes), not by pixels x frames as an animation's is.
        declared = stream.frames
        packets, decoded, last_end = 0, False, 0
        try:
            for packet in container.demux(stream):
                if packet.size == 0:
                    continue  # the demuxer's flush packet
                packets += 1
                if packet.pts is not None and packet.duration:
                    last_end = max(last_end, packet.pts + packet.duration)
                if not decoded:
                    decoded = bool(packet.decode())
            if not decoded:
                decoded = any(True for _ in stream.codec_context.decode(None))
        except Exception:
            raise MediaRejected(
                "unreadable", "The video is damaged: its frames cannot be read."
            ) from None
        if packets == 0 or not decoded or (declared and packets < declared):
            raise MediaRejected("unreadable", "The video is damaged or incomplete.")
        time_base = stream.time_base or Fraction(1, 1)
        if stream.duration:
            seconds = float(stream.duration * time_base)
        elif last_end:
            seconds = float(last_end * time_base)
        else:
            seconds = (container.duration or 0) / 1_000_000
    return MediaInfo(
        MediaKind.VIDEO, "video/mp4", "mp4", width, height, packets, round(seconds * 1000)
    )
