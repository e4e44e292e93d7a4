"""Checking uploaded images before anything is stored or charged.

Three steps, cheapest first, so a refusal costs as little as it can:

- `read_header`: the format, the size and the frame count, from the file's header; no pixel
  is decoded, so a decompression bomb or a damaged body costs nothing here.
- `inspect_image`: the header, then the first frame decoded in full to catch damage; for a
  worker's output, a JPEG or PNG whose structure is whole (`jpeg.is_whole`, `png.is_whole`)
  is not decoded.
- `prepare_input`: what a job's input becomes: exactly one still frame, checked whole (a JPEG
  by its structure, `jpeg.is_whole`; anything else by decoding it). ComfyUI's LoadImage
  loads every frame of a file into one batch, so an animated PNG or WebP (or a multi-picture
  JPEG) keeps only its first frame, re-encoded as a still image.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass, replace

from PIL import Image, ImageOps, UnidentifiedImageError

from comfygram import jpeg, png

SUPPORTED = {
    "JPEG": ("image/jpeg", "jpg"),
    "PNG": ("image/png", "png"),
    "WEBP": ("image/webp", "webp"),
    # A multi-picture JPEG (3D cameras; phones that keep a depth map or an HDR gain map next
    # to the photo): its first picture is the photo.
    "MPO": ("image/jpeg", "jpg"),
}

# The most pixels x frames one input may hand to ComfyUI, which holds a batch as float32 RGB
# (12 bytes a pixel): 250 million is about 3 GB. A still image is one frame, so today
# MAX_IMAGE_PIXELS is the tighter bound; inputs that move are checked by the same function.
MAX_PIXEL_FRAMES = 250_000_000

# Opening bytes of the formats we accept: a file that starts like one of them (3 bytes at
# least) but cannot be read is a damaged image (422), not something else (415).
_SIGNATURES = (b"\xff\xd8\xff", b"\x89PNG\r\n\x1a\n", b"RIFF")

_SEND_A_PICTURE = "Send a JPEG, PNG or WebP picture."


class ImageRejected(Exception):
    """The bytes are not an image we accept; `kind` says which HTTP answer fits."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind  # "unsupported" (415) or "unreadable" (422)
        self.message = message


@dataclass(frozen=True)
class ImageInfo:
    format: str
    mime: str
    extension: str
    width: int
    height: int
    frames: int = 1  # as the file declares it; a job's input is always brought down to one


def check_pixel_frames(
    width: int, height: int, frames: int, max_pixel_frames: int = MAX_PIXEL_FRAMES
) -> None:
    """Refuse media whose pixels across all frames exceed `max_pixel_frames`."""
    if width <= 0 or height <= 0 or frames <= 0:
        raise ImageRejected("unreadable", f"The image is {width}x{height}x{frames}; it is empty.")
    if width * height * frames > max_pixel_frames:
        raise ImageRejected(
            "unreadable",
            f"The media is {width}x{height} pixels x {frames} frames; at most "
            f"{max_pixel_frames:,} pixels across all frames are accepted.",
        )


def _damaged() -> ImageRejected:
    return ImageRejected("unreadable", "The image is damaged or incomplete; send it again.")


def _looks_supported(data: bytes) -> bool:
    if len(data) < 3 or not any(sign.startswith(data[: len(sign)]) for sign in _SIGNATURES):
        return False
    # RIFF also opens WAV and AVI files: a WebP says so in bytes 8-11.
    return not data.startswith(b"RIFF") or b"WEBP".startswith(data[8:12])


def _open(data: bytes, max_pixels: int) -> Image.Image:
    """Open without decoding pixels; every failure becomes an ImageRejected."""
    if not data:
        raise ImageRejected("unreadable", "The file is empty.")
    too_many = ImageRejected(
        "unreadable", f"The image has too many pixels; at most {max_pixels:,} are accepted."
    )
    try:
        with warnings.catch_warnings():
            # Pillow warns (rather than raises) between MAX_IMAGE_PIXELS and twice that.
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            return Image.open(io.BytesIO(data))
    except (Image.DecompressionBombWarning, Image.DecompressionBombError):
        raise too_many from None
    except UnidentifiedImageError:
        if _looks_supported(data):
            raise _damaged() from None
        raise ImageRejected("unsupported", f"The file is not an image. {_SEND_A_PICTURE}") from None
    except Exception:
        # A damaged header makes Pillow's parsers raise almost anything (OSError, SyntaxError,
        # struct.error, EOFError, ValueError...): all of them mean the same to the sender.
        raise _damaged() from None


def _describe(image: Image.Image, max_pixels: int) -> ImageInfo:
    if image.format not in SUPPORTED:
        raise ImageRejected(
            "unsupported", f"{image.format} images are not supported. {_SEND_A_PICTURE}"
        )
    width, height = image.size
    if width * height > max_pixels or width <= 0 or height <= 0:
        raise ImageRejected(
            "unreadable",
            f"The image is {width}x{height} pixels; at most {max_pixels:,} are accepted.",
        )
    try:
        frames = int(getattr(image, "n_frames", 1))
    except Exception:
        raise _damaged() from None
    mime, extension = SUPPORTED[image.format]
    return ImageInfo(image.format, mime, extension, width, height, max(frames, 1))


def read_header(data: bytes, max_pixels: int) -> ImageInfo:
    """Format, size and frame count from the header alone, or ImageRejected; decodes nothing."""
    with _open(data, max_pixels) as image:
        return _describe(image, max_pixels)


def _decode_first_frame(image: Image.Image, *, check_only: bool = False) -> None:
    """Decode the first frame; ImageRejected when it is damaged. ``check_only``: the pixels
    are not used, so a JPEG is decoded at 1/8 scale (libjpeg still reads every coefficient,
    so a truncated or broken stream is refused as before, in about 2/3 of the time)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            if check_only and image.format == "JPEG":
                image.draft(image.mode, (1, 1))
            image.load()
    except Exception:
        raise _damaged() from None


# Structure checks that vouch for a still file without decoding it.
_WHOLE = {"JPEG": jpeg.is_whole, "PNG": png.is_whole}


def inspect_image(data: bytes, max_pixels: int, *, structure_suffices: bool = False) -> ImageInfo:
    """Return what the image is, or raise ImageRejected. Decodes the first frame fully to catch
    truncation; the size is checked from the header first, so a bomb costs nothing.

    ``structure_suffices``: a still JPEG or PNG whose structure is whole is not decoded: for
    a worker's outputs, written by ComfyUI. A PNG's chunk CRCs catch any damage on the way,
    not pixel data encoded broken (see `comfygram.png`), so a user's photo is decoded."""
    with _open(data, max_pixels) as image:
        info = _describe(image, max_pixels)
        whole = _WHOLE.get(info.format)
        if not (structure_suffices and info.frames == 1 and whole is not None and whole(data)):
            _decode_first_frame(image)
        return info


def prepare_input(data: bytes, max_pixels: int) -> tuple[bytes, ImageInfo]:
    """The bytes a job's input is stored as, and what they are: always one still frame.

    A file with more than one frame keeps its first, re-encoded (the EXIF rotation applied,
    the colour profile kept): a JPEG family file as a JPEG, anything else as a lossless PNG.
    """
    with _open(data, max_pixels) as image:
        info = _describe(image, max_pixels)
        kept_as_sent = info.frames == 1 and info.format != "MPO"
        # A whole Huffman JPEG (nearly every photo) needs no decode: jpeg.is_whole vouches
        # only for files the decode passes too.
        if not (kept_as_sent and info.format == "JPEG" and jpeg.is_whole(data)):
            _decode_first_frame(image, check_only=kept_as_sent)
        if kept_as_sent:
            check_pixel_frames(info.width, info.height, 1)
            return data, info
        try:
            image.seek(0)
            still, buffer = ImageOps.exif_transpose(image.copy()), io.BytesIO()
            profile = image.info.get("icc_profile")
            extra = {"icc_profile": profile} if profile else {}
            if info.format in ("JPEG", "MPO"):
                still.save(buffer, "JPEG", quality=95, **extra)
                still_format = "JPEG"
            else:
                still.save(buffer, "PNG", **extra)
                still_format = "PNG"
        except ImageRejected:
            raise
        except Exception:
            raise _damaged() from None
    mime, extension = SUPPORTED[still_format]
    still_info = replace(
        info,
        format=still_format,
        mime=mime,
        extension=extension,
        width=still.width,
        height=still.height,
        frames=1,
    )
    check_pixel_frames(still_info.width, still_info.height, still_info.frames)
    return buffer.getvalue(), still_info
