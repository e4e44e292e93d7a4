"""How a job's outputs reach the user: which Bot API calls, in which order, each with what.

Pure: ``plan_delivery`` looks only at what each output is (kind, size, dimensions), never at its
bytes, so every rule is tested from a table (tests/test_delivery.py). The worker then renders the
plan (messages.py: JPEG, MP4, thumbnails through encode.py) and sends it.

The rules (docs/worker.md, "Delivery"):
- one image: ``sendPhoto`` as JPEG; the original as a document too when the preset sends
  documents, or instead when it cannot be a photo (sides over 10000 px together, or a side over
  20 times the other);
- 2 to 10 images: one album (``sendMediaGroup``) of JPEG photos (of the originals as documents
  when one of them cannot be a photo); more than 10: albums of at most 10, as even as can be
  (an album needs 2); an album takes no keyboard, so its buttons follow in one short message;
- a video: ``sendVideo`` (MP4 with width, height, duration, streaming and a thumbnail);
- an animation: ``sendAnimation`` as an H.264 MP4 (Telegram does not animate WebP or APNG).
Exactly one send carries the buttons: the last.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Protocol

__all__ = [
    "ALBUM_MAX",
    "Caption",
    "Form",
    "Item",
    "MediaLike",
    "Method",
    "OutputFile",
    "Send",
    "fits_photo",
    "plan_delivery",
]

ALBUM_MAX = 10  # sendMediaGroup: 2 to 10 items
ALBUM_MIN = 2
_PHOTO_MAX_SIDES = 10_000  # sendPhoto: width + height
_PHOTO_MAX_RATIO = 20


class MediaLike(Protocol):
    """What the plan reads of an output: the backend's MediaFile, or an OutputFile."""

    @property
    def index(self) -> int: ...
    @property
    def kind(self) -> str: ...
    @property
    def size(self) -> int: ...
    @property
    def width(self) -> int | None: ...
    @property
    def height(self) -> int | None: ...


@dataclass(frozen=True)
class OutputFile:
    """One output of a run, downloaded: its bytes and what they are."""

    index: int
    data: bytes
    filename: str
    mime: str
    kind: str  # "image", "animation" or "video"
    width: int | None = None
    height: int | None = None
    frames: int | None = None
    duration_seconds: float | None = None

    @property
    def size(self) -> int:
        return len(self.data)


class Method(StrEnum):
    PHOTO = "sendPhoto"
    DOCUMENT = "sendDocument"
    ALBUM = "sendMediaGroup"
    VIDEO = "sendVideo"
    ANIMATION = "sendAnimation"
    MESSAGE = "sendMessage"  # the buttons after an album


class Form(StrEnum):
    """What of an output is sent."""

    JPEG = "jpeg"  # a still as a high-quality JPEG photo
    ORIGINAL = "original"  # the file as ComfyUI saved it, as a document
    VIDEO = "video"  # the MP4, encoded smaller only when over the upload limit
    MP4 = "mp4"  # an animation converted to a silent H.264 MP4


class Caption(StrEnum):
    RESULT = "result"  # the preset's title
    DOCUMENT = "document"  # "full quality"


@dataclass(frozen=True)
class Item:
    output: int  # the output's index
    form: Form


@dataclass(frozen=True)
class Send:
    method: Method
    items: tuple[Item, ...] = ()
    caption: Caption | None = None  # an album's caption goes on its first item
    buttons: bool = False
    # An extra copy (the document a preset asks for): left out, not failed, when too large.
    optional: bool = False


def fits_photo(output: MediaLike) -> bool:
    """Whether sendPhoto takes it (by its dimensions; its JPEG is made to fit the 10 MB)."""
    width, height = output.width, output.height
    if not width or not height:
        return False
    return width + height <= _PHOTO_MAX_SIDES and max(width, height) <= _PHOTO_MAX_RATIO * min(
        width, height
    )


def _albums(outputs: Sequence[MediaLike]) -> list[list[MediaLike]]:
    """At most ALBUM_MAX each, as even as can be (11 is 6 + 5, never 10 + 1)."""
    count = math.ceil(len(outputs) / ALBUM_MAX)
    size, extra = divmod(len(outputs), count)
    albums, start = [], 0
    for n in range(count):
        end = start + size + (1 if n < extra else 0)
        albums.append(list(outputs[start:end]))
        start = end
    return albums


def _images(images: Sequence[MediaLike], send_document: bool) -> list[Send]:
    if len(images) == 1:
        (image,) = images
        sends = []
        if fits_photo(image):
            sends.append(Send(Method.PHOTO, (Item(image.index, Form.JPEG),), Caption.RESULT))
        if send_document or not sends:
            sends.append(
                Send(
                    Method.DOCUMENT,
                    (Item(image.index, Form.ORIGINAL),),
                    Caption.DOCUMENT,
                    optional=bool(sends),
                )
            )
        return sends
    as_photos = all(fits_photo(image) for image in images)
    sends = []
    if as_photos:
        for n, album in enumerate(_albums(images)):
            items = tuple(Item(image.index, Form.JPEG) for image in album)
            sends.append(Send(Method.ALBUM, items, Caption.RESULT if n == 0 else None))
    if send_document or not as_photos:
        for n, album in enumerate(_albums(images)):
            items = tuple(Item(image.index, Form.ORIGINAL) for image in album)
            sends.append(
                Send(
                    Method.ALBUM,
                    items,
                    Caption.DOCUMENT if n == 0 else None,
                    optional=as_photos,
                )
            )
    return sends


def _motion(output: MediaLike, send_document: bool) -> list[Send]:
    if output.kind == "video":
        sends = [Send(Method.VIDEO, (Item(output.index, Form.VIDEO),), Caption.RESULT)]
    else:
        sends = [Send(Method.ANIMATION, (Item(output.index, Form.MP4),), Caption.RESULT)]
    if send_document:
        sends.append(
            Send(
                Method.DOCUMENT,
                (Item(output.index, Form.ORIGINAL),),
                Caption.DOCUMENT,
                optional=True,
            )
        )
    return sends


def with_buttons(sends: Sequence[Send]) -> list[Send]:
    """The same sends, the buttons on the last (after it, in a message, when it is an album)."""
    plain = [Send(s.method, s.items, s.caption, False, s.optional) for s in sends]
    if not plain:
        return []
    last = plain[-1]
    if last.method is Method.ALBUM:
        return [*plain, Send(Method.MESSAGE, caption=Caption.RESULT, buttons=True)]
    plain[-1] = Send(last.method, last.items, last.caption, True, last.optional)
    return plain


def plan_delivery(outputs: Sequence[MediaLike], *, send_document: bool) -> list[Send]:
    """The calls that deliver ``outputs`` (in their order), the buttons on the last."""
    if not outputs:
        raise ValueError("nothing to deliver")
    ordered = sorted(outputs, key=lambda o: o.index)
    sends: list[Send] = []
    images = [o for o in ordered if o.kind == "image"]
    if images:
        sends.extend(_images(images, send_document))
    for output in ordered:
        if output.kind != "image":
            sends.extend(_motion(output, send_document))
    return with_buttons(sends)
