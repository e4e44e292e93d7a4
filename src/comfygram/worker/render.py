"""A delivery plan made concrete: every item of every send as the bytes to upload.

Blocking and CPU-bound (JPEG, H.264): run it in a thread. An extra copy the preset asked for
(the original as a document) that is over the upload limit is left out and the buttons move
to the send before it; anything else that does not fit raises encode.TooLarge.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import PurePosixPath

from comfygram.worker import encode
from comfygram.worker.delivery import Form, Item, Method, OutputFile, Send, with_buttons

__all__ = ["Piece", "Rendered", "render"]


@dataclass(frozen=True)
class Piece:
    """One file of a send, ready to upload."""

    output: int
    form: Form
    data: bytes
    filename: str
    width: int | None = None
    height: int | None = None
    duration: int | None = None  # whole seconds, as the Bot API takes it
    thumbnail: bytes | None = None


@dataclass(frozen=True)
class Rendered:
    send: Send
    pieces: tuple[Piece, ...] = ()


def _stem(file: OutputFile) -> str:
    return PurePosixPath(file.filename).stem or f"result-{file.index}"


def _seconds(duration: float) -> int:
    return max(1, math.ceil(duration - 1e-6))


def _piece(item: Item, file: OutputFile, upload_max: int) -> Piece:
    if item.form is Form.JPEG:
        data = encode.to_jpeg(file.data, max_bytes=min(upload_max, encode.PHOTO_MAX_BYTES))
        return Piece(item.output, item.form, data, f"{_stem(file)}.jpg")
    if item.form is Form.ORIGINAL:
        if len(file.data) > upload_max:
            raise encode.TooLarge(
                f"output {file.index} is {len(file.data):,} bytes, over {upload_max:,}"
            )
        return Piece(item.output, item.form, file.data, file.filename)
    if item.form is Form.VIDEO:
        motion = encode.shrink_video(file.data, max_bytes=upload_max)
    else:
        motion = encode.animation_to_mp4(file.data, max_bytes=upload_max)
    return Piece(
        item.output,
        item.form,
        motion.data,
        f"{_stem(file)}.mp4",
        width=motion.width,
        height=motion.height,
        duration=_seconds(motion.duration_seconds),
        thumbnail=encode.video_thumbnail(motion.data),
    )


def render(
    plan: Sequence[Send], files: Mapping[int, OutputFile], upload_max: int
) -> list[Rendered]:
    """Every send of ``plan`` with its files; TooLarge or EncodeError when it cannot be."""
    kept: list[Rendered] = []
    for send in plan:
        if send.method is Method.MESSAGE:
            continue  # placed again below, after whatever is kept
        try:
            pieces = tuple(_piece(item, files[item.output], upload_max) for item in send.items)
        except encode.TooLarge:
            if send.optional:
                continue
            raise
        kept.append(Rendered(send, pieces))
    # with_buttons keeps the sends in order and may add the buttons' message at the end.
    sends = with_buttons([r.send for r in kept])
    return [Rendered(send, kept[n].pieces if n < len(kept) else ()) for n, send in enumerate(sends)]
