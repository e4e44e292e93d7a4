"""Images made on the fly for tests."""

from __future__ import annotations

import io
import os
import random
import struct
import zlib

import pytest
from PIL import Image, ImageFile


def png(width: int = 64, height: int = 48, color: tuple[int, int, int] = (200, 80, 40)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), color).save(buffer, "PNG")
    return buffer.getvalue()


def noise_png(width: int, height: int) -> bytes:
    """Random RGB pixels: a PNG that does not compress (width x height x 3 bytes and a bit)."""
    buffer = io.BytesIO()
    Image.frombytes("RGB", (width, height), os.urandom(width * height * 3)).save(buffer, "PNG")
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


def cut_png() -> bytes:
    """A PNG cut in the middle of its pixel data: what a dropped upload leaves."""
    whole = noise_png(40, 30)
    return whole[: len(whole) // 2]


def png_chunk(kind: bytes, data: bytes) -> bytes:
    """One PNG chunk: length, type, data and the CRC-32 of type and data."""
    crc = zlib.crc32(kind + data)
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)


def png_bomb(width: int = 20_000, height: int = 20_000) -> bytes:
    """A valid grayscale PNG of width x height zero pixels: a few hundred KB at most."""
    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)  # 1-bit grayscale
    row = b"\x00" + b"\x00" * ((width + 7) // 8)
    compressor = zlib.compressobj(9)
    data = b"".join(compressor.compress(row) for _ in range(height)) + compressor.flush()
    return (
        b"\x89PNG\r\n\x1a\n"
        + png_chunk(b"IHDR", header)
        + png_chunk(b"IDAT", data)
        + png_chunk(b"IEND", b"")
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
    only a full decode finds out (every chunk's CRC is right: made on purpose, not by damage)."""
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)  # 8-bit RGB
    noise = bytes((n * 7919) % 251 for n in range(4096))
    return (
        b"\x89PNG\r\n\x1a\n"
        + png_chunk(b"IHDR", header)
        + png_chunk(b"IDAT", noise)
        + png_chunk(b"IEND", b"")
    )


def mutated(data: bytes, chance: random.Random, header_bytes: int) -> bytes:
    """A copy of ``data`` damaged one way: cut short, bytes overwritten, a piece lost, junk let
    in, or one of its first ``header_bytes`` changed."""
    damaged = bytearray(data)
    match chance.randrange(5):
        case 0:
            del damaged[chance.randrange(len(damaged)) :]
        case 1:
            for _ in range(chance.randint(1, 10)):
                damaged[chance.randrange(len(damaged))] = chance.randrange(256)
        case 2:
            start = chance.randrange(len(damaged))
            del damaged[start : start + chance.randint(1, 500)]
        case 3:
            start = chance.randrange(len(damaged))
            damaged[start:start] = chance.randbytes(chance.randint(1, 50))
        case _:
            damaged[chance.randrange(min(len(damaged), header_bytes))] = chance.randrange(256)
    return bytes(damaged)


def counted_decodes(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every pixel decode by Pillow from now on, by format, in a list that fills as they come."""
    loads: list[str] = []
    real_load = ImageFile.ImageFile.load

    def counted(image: ImageFile.ImageFile) -> object:
        loads.append(image.format or "")
        return real_load(image)

    monkeypatch.setattr(ImageFile.ImageFile, "load", counted)
    return loads
