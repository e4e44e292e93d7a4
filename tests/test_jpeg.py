"""jpeg.is_whole: it vouches for every kind of photo an encoder makes, and never for a file
the full decode (Pillow's libjpeg, which checked uploads before it) would refuse."""

from __future__ import annotations

import io
import random
import warnings

import pytest
from PIL import Image

from comfygram import images as checks
from comfygram.jpeg import is_whole
from tests import images


def _picture() -> Image.Image:
    noise = Image.effect_noise((160, 120), 60)
    gradient = Image.linear_gradient("L").resize((160, 120))
    return Image.merge("RGB", [noise, gradient, noise.transpose(Image.Transpose.FLIP_TOP_BOTTOM)])


def _encoded() -> dict[str, bytes]:
    picture, exif = _picture(), Image.Exif()
    exif[0x010F] = "camera"
    variants = {
        "baseline": (picture, {"quality": 90}),
        "progressive": (picture, {"progressive": True}),
        "optimized": (picture, {"optimize": True}),
        "4:4:4": (picture, {"subsampling": 0}),
        "grey": (picture.convert("L"), {}),
        "grey progressive": (picture.convert("L"), {"progressive": True}),
        "cmyk": (picture.convert("CMYK"), {}),
        "restart markers": (picture, {"restart_marker_blocks": 4}),
        "progressive, restart markers": (picture, {"progressive": True, "restart_marker_rows": 1}),
        "exif and comment": (picture, {"exif": exif.tobytes(), "comment": b"hello"}),
    }
    encoded = {}
    for name, (image, options) in variants.items():
        buffer = io.BytesIO()
        image.save(buffer, "JPEG", **options)
        encoded[name] = buffer.getvalue()
    return encoded


ENCODED = _encoded()


def _decodes(data: bytes) -> bool:
    """What the upload check did for every JPEG before is_whole: decode it (at 1/8 scale)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with Image.open(io.BytesIO(data)) as image:
                image.draft(image.mode, (1, 1))
                image.load()
    except Exception:
        return False
    return True


@pytest.mark.parametrize("name", list(ENCODED))
def test_every_kind_of_photo_is_whole(name: str) -> None:
    assert is_whole(ENCODED[name])
    assert is_whole(ENCODED[name] + b"trailing bytes after the end marker")


@pytest.mark.parametrize("name", list(ENCODED))
def test_a_file_cut_anywhere_is_not_whole(name: str) -> None:
    data = ENCODED[name]
    ends = [*range(1000), *range(1000, len(data) - 1, 7)]  # every byte of the headers
    assert not any(is_whole(data[:end]) for end in ends)


def test_what_it_vouches_for_always_decodes() -> None:
    """Thousands of damaged files: each one is_whole passes, libjpeg decodes without an error
    (garbled compressed data is only a warning to it), so skipping the decode refuses nothing
    it refused."""
    chance = random.Random("jpeg-structure")
    vouched = refused = 0
    for _ in range(4000):
        damaged = images.mutated(ENCODED[chance.choice(list(ENCODED))], chance, 700)
        if is_whole(damaged):
            vouched += 1
            assert _decodes(damaged), damaged.hex()
        else:
            refused += 1
    # Both answers were given often: the check is neither blind nor refusing everything.
    assert vouched > 1000 and refused > 1000, (vouched, refused)


def test_other_kinds_are_left_to_the_decode() -> None:
    """Arithmetic coding, lossless or a second frame: not for is_whole to judge."""
    baseline = ENCODED["baseline"]
    frame = baseline.index(b"\xff\xc0")
    for other in (b"\xff\xc9", b"\xff\xc3", b"\xff\xc5"):
        assert not is_whole(baseline[:frame] + other + baseline[frame + 2 :])
    assert not is_whole(b"\x89PNG\r\n\x1a\n" + baseline)


def test_an_upload_that_is_whole_is_not_decoded(monkeypatch: pytest.MonkeyPatch) -> None:
    loads = images.counted_decodes(monkeypatch)
    stored, info = checks.prepare_input(ENCODED["baseline"], 10_000_000)
    assert (stored, info.format, loads) == (ENCODED["baseline"], "JPEG", [])
    cut = ENCODED["baseline"][:-300]
    with pytest.raises(checks.ImageRejected):
        checks.prepare_input(cut, 10_000_000)
    assert loads  # a file that is not whole is decoded, and refused by the decode
