"""Images made on the fly for tests."""

from __future__ import annotations

import io
import zlib

from PIL import Image


def png(width: int = 64, height: int = 48, color: tuple[int, int, int] = (200, 80, 40)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), color).save(buffer, "PNG")
    return buffer.getvalue()


def jpeg(width: int = 64, height: int = 48) -> bytes:
    buffer = io.BytesIO()
    Image.effect_noise((width, height), 40).convert("RGB").save(buffer, "JPEG", quality=90)
    return buffer.getvalue()


def webp(width: int = 32, height: int = 32) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), (10, 20, 30)).save(buffer, "WEBP")
    return buffer.getvalue()


def gif() -> bytes:
    buffer = io.BytesIO()
    Image.new("P", (8, 8)).save(buffer, "GIF")
    return buffer.getvalue()


def png_bomb(width: int = 20_000, height: int = 20_000) -> bytes:
    """A valid grayscale PNG of width x height zero pixels: a few hundred KB at most."""
    import struct

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(kind + data) & 0xFFFFFFFF
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)

    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)  # 1-bit grayscale
    row = b"\x00" + b"\x00" * ((width + 7) // 8)
    compressor = zlib.compressobj(9)
    data = b"".join(compressor.compress(row) for _ in range(height)) + compressor.flush()
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", data) + chunk(b"IEND", b"")
    )


FRAME_COLORS = [(200, 30, 30), (30, 200, 30), (30, 30, 200), (200, 200, 30)]


def animated(fmt: str, frames: int = 3, width: int = 40, height: int = 30) -> bytes:
    """An animation (APNG, WebP, GIF) or a multi-frame file (TIFF, MPO) whose frame n is
    filled with FRAME_COLORS[n % 4]."""
    pictures = [
        Image.new("RGB", (width, height), FRAME_COLORS[n % len(FRAME_COLORS)])
        for n in range(frames)
    ]
    buffer = io.BytesIO()
    options = {"lossless": True} if fmt == "WEBP" else {}
    pictures[0].save(buffer, fmt, save_all=True, append_images=pictures[1:], **options)
    return buffer.getvalue()


def damaged_png(width: int = 4000, height: int = 4000) -> bytes:
    """A PNG whose header is valid (and within the pixel limit) but whose pixel data is noise:
    only a full decode finds out."""
    import struct

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(kind + data) & 0xFFFFFFFF
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)  # 8-bit RGB
    noise = bytes((n * 7919) % 251 for n in range(4096))
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", noise) + chunk(b"IEND", b"")
    )
