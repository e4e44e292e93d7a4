"""Checking uploaded images before anything is stored or charged."""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass

from PIL import Image, UnidentifiedImageError

SUPPORTED = {
    "JPEG": ("image/jpeg", "jpg"),
    "PNG": ("image/png", "png"),
    "WEBP": ("image/webp", "webp"),
}


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


def inspect_image(data: bytes, max_pixels: int) -> ImageInfo:
    """Return what the image is, or raise ImageRejected. Decodes fully to catch truncation."""
    if not data:
        raise ImageRejected("unreadable", "The file is empty.")
    try:
        with warnings.catch_warnings():
            # Pillow warns (rather than raises) between MAX_IMAGE_PIXELS and twice that.
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
    except UnidentifiedImageError:
        raise ImageRejected(
            "unsupported", "The file is not an image. Send a JPEG, PNG or WebP picture."
        ) from None
    except (Image.DecompressionBombWarning, Image.DecompressionBombError):
        raise ImageRejected(
            "unreadable", f"The image has too many pixels; at most {max_pixels:,} are accepted."
        ) from None
    with image:
        if image.format not in SUPPORTED:
            raise ImageRejected(
                "unsupported",
                f"{image.format} images are not supported. Send a JPEG, PNG or WebP picture.",
            )
        width, height = image.size
        # Checked from the header, before decoding, so a decompression bomb costs nothing.
        if width * height > max_pixels or width <= 0 or height <= 0:
            raise ImageRejected(
                "unreadable",
                f"The image is {width}x{height} pixels; at most {max_pixels:,} are accepted.",
            )
        try:
            image.load()
        except (OSError, SyntaxError, ValueError, Image.DecompressionBombError):
            raise ImageRejected(
                "unreadable", "The image is damaged or incomplete; send it again."
            ) from None
        mime, extension = SUPPORTED[image.format]
        return ImageInfo(image.format, mime, extension, width, height)
