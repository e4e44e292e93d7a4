"""png.is_whole: it vouches for every kind of PNG an encoder makes, never for a file damaged on
the way (cut short, bytes changed, lost or let in) that the full decode would refuse, and the
backend's output check then skips the decode."""

from __future__ import annotations

import io
import random
import zlib

import pytest
from PIL import Image

from comfygram import images as checks
from comfygram.png import SIGNATURE, is_whole
from tests import images


def _picture(mode: str) -> Image.Image:
    noise = Image.effect_noise((160, 120), 60)
    gradient = Image.linear_gradient("L").resize((160, 120))
    rgb = Image.merge("RGB", [noise, gradient, noise.transpose(Image.Transpose.FLIP_TOP_BOTTOM)])
    if mode == "RGBA":
        return Image.merge("RGBA", [*rgb.split(), gradient])
    if mode == "I;16":
        return gradient.convert("I").point(lambda v: v * 256).convert("I;16")
    return rgb.convert(mode)


def _encoded() -> dict[str, bytes]:
    variants = {
        "rgb": ("RGB", {}),
        "rgba": ("RGBA", {}),
        "grey": ("L", {}),
        "grey 16-bit": ("I;16", {}),
        "palette": ("P", {}),
        "palette, transparent": ("P", {"transparency": 0}),
        "black and white": ("1", {}),
        "interlaced": ("RGB", {"interlace": True}),
        "unpacked": ("RGB", {"compress_level": 0}),
        "text and dpi": ("RGB", {"dpi": (300, 300), "pnginfo": _text()}),
    }
    encoded = {}
    for name, (mode, options) in variants.items():
        buffer = io.BytesIO()
        _picture(mode).save(buffer, "PNG", **options)
        encoded[name] = buffer.getvalue()
    # Several IDAT chunks, as encoders that write in blocks make them.
    buffer = io.BytesIO()
    Image.frombytes("RGB", (256, 256), random.Random(7).randbytes(256 * 256 * 3)).save(
        buffer, "PNG"
    )
    encoded["several IDAT chunks"] = buffer.getvalue()
    assert encoded["several IDAT chunks"].count(b"IDAT") > 1
    return encoded


def _text():
    from PIL.PngImagePlugin import PngInfo

    info = PngInfo()
    info.add_text("prompt", '{"1": {"class_type": "LoadImage"}}')  # as ComfyUI's SaveImage
    return info


ENCODED = _encoded()


def _decodes(data: bytes) -> bool:
    """What the output check did for every PNG before is_whole: decode its first frame."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            image.load()
    except Exception:
        return False
    return True


@pytest.mark.parametrize("name", list(ENCODED))
def test_every_kind_of_png_is_whole(name: str) -> None:
    assert _decodes(ENCODED[name])
    assert is_whole(ENCODED[name])
    assert is_whole(ENCODED[name] + b"trailing bytes after the end chunk")


@pytest.mark.parametrize("name", list(ENCODED))
def test_a_file_cut_anywhere_is_not_whole(name: str) -> None:
    data = ENCODED[name]
    ends = [*range(200), *range(200, len(data) - 1, 13)]
    assert not any(is_whole(data[:end]) for end in ends)


def test_damage_on_the_way_is_never_vouched_for() -> None:
    """Thousands of damaged files: is_whole passes none that differs from what was encoded,
    so none the decode would refuse (a change the decode does not notice is still not
    vouched for: a chunk's CRC covers every byte)."""
    chance = random.Random("png-structure")
    refused = 0
    for _ in range(4000):
        original = ENCODED[chance.choice(list(ENCODED))]
        damaged = images.mutated(original, chance, 100)
        if is_whole(damaged):
            # Only a change past the end chunk (ignored, as by Pillow) keeps it whole.
            assert damaged.startswith(original[: original.index(b"IEND") + 8]), damaged.hex()
            assert _decodes(damaged)
        else:
            refused += 1
    assert refused > 3000, refused


def test_other_kinds_are_left_to_the_decode() -> None:
    """An animated PNG, an unknown critical chunk, IDAT in two runs or a chunk before IHDR:
    not for is_whole to judge; nor anything that is not a PNG."""
    animated = images.animated("PNG", frames=3)
    assert not is_whole(animated)
    rgb = ENCODED["rgb"]
    first_data = rgb.index(b"IDAT") - 4
    odd = images.png_chunk(b"ZZZZ", b"critical and unknown")
    assert not is_whole(rgb[:first_data] + odd + rgb[first_data:])
    idat_end = rgb.index(b"IEND") - 4
    split = rgb[:idat_end] + images.png_chunk(b"tEXt", b"a\x00b") + images.png_chunk(b"IDAT", b"")
    assert not is_whole(split + rgb[idat_end:])
    assert not is_whole(SIGNATURE + images.png_chunk(b"tEXt", b"a\x00b") + rgb[8:])
    assert not is_whole(images.jpeg())


def test_what_it_cannot_see_is_a_stream_encoded_broken() -> None:
    """Correct CRCs around pixel data that is not a zlib stream: no damage on the way makes
    one, and is_whole (which inflates nothing) passes it; the decode refuses it."""
    crafted = images.damaged_png(40, 30)
    assert is_whole(crafted)
    assert not _decodes(crafted)


def test_a_whole_output_is_not_decoded_and_a_damaged_one_is_refused(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    loads = images.counted_decodes(monkeypatch)
    info = checks.inspect_image(ENCODED["rgb"], 10_000_000, structure_suffices=True)
    assert (info.format, info.width, info.height, loads) == ("PNG", 160, 120, [])
    with pytest.raises(checks.ImageRejected) as refused:
        checks.inspect_image(images.cut_png(), 10_000_000, structure_suffices=True)
    assert refused.value.kind == "unreadable"
    assert loads == ["PNG"]  # not whole: decoded, as before


def test_an_input_png_is_still_decoded(monkeypatch: pytest.MonkeyPatch) -> None:
    """A user's photo is checked whole by decoding it: is_whole cannot see a stream encoded
    broken on purpose, and a refusal then must cost the user nothing."""
    loads = images.counted_decodes(monkeypatch)
    stored, info = checks.prepare_input(ENCODED["rgb"], 10_000_000)
    assert (stored, info.format, loads) == (ENCODED["rgb"], "PNG", ["PNG"])
    with pytest.raises(checks.ImageRejected):
        checks.prepare_input(images.damaged_png(40, 30), 10_000_000)


def test_crc_is_checked_over_type_and_data() -> None:
    """A chunk whose CRC is right for its data but not its type is damaged too."""
    rgb = bytearray(ENCODED["rgb"])
    at = rgb.index(b"IDAT")
    length = int.from_bytes(rgb[at - 4 : at], "big")
    rgb[at + 4 + length : at + 8 + length] = zlib.crc32(rgb[at + 4 : at + 4 + length]).to_bytes(
        4, "big"
    )
    assert not is_whole(bytes(rgb))
