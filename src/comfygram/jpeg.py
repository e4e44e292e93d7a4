"""Whether a JPEG file is whole, from its markers alone (no pixel decoded).

Checking an upload by decoding it costs ~13 ms of CPU for a 5-megapixel photo, even at 1/8
scale, because libjpeg still reads every coefficient. What that decode refuses in practice is a
file cut short or with its structure broken: libjpeg only warns (and Pillow ignores it) when the
compressed data itself is garbled. `is_whole` walks the file's segments and scans to its end
marker in well under a millisecond and says True only for the common kind of JPEG (Huffman
coded: baseline, extended or progressive) whose structure is complete and consistent; anything
else (False) is left to the full decode, so a file it passes is one the decode passes too
(tests/test_jpeg.py checks that against Pillow on thousands of damaged files).
"""

from __future__ import annotations

import re

# The start of frame markers of Huffman-coded JPEG: baseline, extended and progressive.
_HUFFMAN_FRAMES = {0xC0: False, 0xC1: False, 0xC2: True}  # marker -> progressive
_DHT, _SOS, _DQT, _DRI, _EOI = 0xC4, 0xDA, 0xDB, 0xDD, 0xD9
# Segments that may come between the frame's parts and carry nothing else the check needs:
# APPn, COM, DNL (a height given after the scan) and DRI (the restart interval).
_SKIPPED = {*range(0xE0, 0xF0), 0xFE, 0xDC, _DRI}
# Inside compressed data 0xFF is followed by 0x00 (a stuffed byte), a restart marker
# 0xD0-0xD7 or another 0xFF (fill); anything else is the marker that ends the scan.
_END_OF_SCAN = re.compile(rb"\xff[^\x00\xd0-\xd7\xff]")


class _Broken(Exception):
    pass


def is_whole(data: bytes) -> bool:
    """True when ``data`` is a complete, consistent Huffman-coded JPEG; False when it is not,
    or is another kind of JPEG this check does not vouch for."""
    try:
        return _walk(data)
    except (_Broken, IndexError):
        return False


def _walk(data: bytes) -> bool:
    if not data.startswith(b"\xff\xd8"):
        return False
    position = 2
    quant_tables: set[int] = set()
    huffman_tables: set[tuple[int, int]] = set()  # (class: 0 DC / 1 AC, id)
    components: dict[int, int] | None = None  # component id -> its quantization table
    progressive = False
    scanned: set[int] = set()
    while True:
        marker, position = _next_marker(data, position)
        if marker == _EOI:
            # Every component must have been in a scan; trailing bytes after the end are fine.
            return components is not None and scanned == set(components)
        if marker == 0x01 or 0xD0 <= marker <= 0xD8:
            return False  # no payload markers out of a scan (or a second start): not ours
        length = int.from_bytes(data[position : position + 2], "big")
        segment = data[position + 2 : position + length]
        if length < 2 or len(segment) != length - 2:
            raise _Broken
        position += length
        if marker == _DQT:
            quant_tables |= _quantization_ids(segment)
        elif marker == _DHT:
            huffman_tables |= _huffman_ids(segment)
        elif marker in _HUFFMAN_FRAMES:
            if components is not None:
                return False
            progressive = _HUFFMAN_FRAMES[marker]
            components = _frame_components(segment)
            if not set(components.values()) <= quant_tables:
                return False  # a table defined after the frame: legal, but let libjpeg judge
        elif marker == _SOS:
            if components is None:
                return False
            scanned |= _scan_components(segment, components, huffman_tables, progressive)
            found = _END_OF_SCAN.search(data, position)
            if found is None:
                return False  # the compressed data runs to the end of the file: cut short
            position = found.start()
        elif marker == _DRI and length != 4:
            raise _Broken
        elif marker not in _SKIPPED:
            return False  # arithmetic coding, lossless, hierarchical...: the decode decides


def _next_marker(data: bytes, position: int) -> tuple[int, int]:
    """The marker at ``position`` (fill bytes allowed before it) and where its payload starts."""
    if data[position] != 0xFF:
        raise _Broken
    while data[position] == 0xFF:
        position += 1
    return data[position], position + 1


def _quantization_ids(segment: bytes) -> set[int]:
    ids, position = set(), 0
    while position < len(segment):
        precision, table = divmod(segment[position], 16)
        if precision > 1 or table > 3:
            raise _Broken
        ids.add(table)
        position += 1 + 64 * (precision + 1)
    if position != len(segment):
        raise _Broken
    return ids


def _huffman_ids(segment: bytes) -> set[tuple[int, int]]:
    ids, position = set(), 0
    while position < len(segment):
        kind, table = divmod(segment[position], 16)
        if kind > 1 or table > 3:
            raise _Broken
        counts = segment[position + 1 : position + 17]
        symbols = segment[position + 17 : position + 17 + sum(counts)]
        if len(counts) != 16 or not 0 < len(symbols) == sum(counts) <= 256:
            raise _Broken
        if not _canonical(counts) or (kind == 0 and max(symbols) > 15):
            raise _Broken  # libjpeg's "Bogus Huffman table definition"
        ids.add((kind, table))
        position += 17 + len(symbols)
    if position != len(segment):
        raise _Broken
    return ids


def _canonical(counts: bytes) -> bool:
    """Whether codes of these lengths (1 to 16 bits) fit, as libjpeg builds them."""
    code = 0
    for length, count in enumerate(counts, start=1):
        code += count
        if code >= 1 << length:  # no code may be all ones
            return False
        code <<= 1
    return True


def _frame_components(segment: bytes) -> dict[int, int]:
    precision, height, width, count = (
        segment[0],
        int.from_bytes(segment[1:3], "big"),
        int.from_bytes(segment[3:5], "big"),
        segment[5],
    )
    if precision != 8 or width == 0 or count not in (1, 3, 4) or len(segment) != 6 + 3 * count:
        raise _Broken  # 12-bit and height-after-scan (DNL) frames are left to libjpeg too
    if height == 0:
        raise _Broken
    components: dict[int, int] = {}
    samplings = []
    for index in range(count):
        ident, sampling, table = segment[6 + 3 * index : 9 + 3 * index]
        horizontal, vertical = divmod(sampling, 16)
        if ident in components or not (1 <= horizontal <= 4 and 1 <= vertical <= 4) or table > 3:
            raise _Broken
        components[ident] = table
        samplings.append((horizontal, vertical))
    widest = max(h for h, _ in samplings)
    tallest = max(v for _, v in samplings)
    if any(widest % h or tallest % v for h, v in samplings):
        raise _Broken  # "Fractional sampling not implemented yet"
    if count > 1 and sum(h * v for h, v in samplings) > 10:
        raise _Broken  # "Sampling factors too large for interleaved scan"
    return components


def _scan_components(
    segment: bytes,
    components: dict[int, int],
    huffman_tables: set[tuple[int, int]],
    progressive: bool,
) -> set[int]:
    count = segment[0]
    if not 1 <= count <= 4 or len(segment) != 4 + 2 * count:
        raise _Broken
    start, end, approximation = (
        segment[1 + 2 * count],
        segment[2 + 2 * count],
        segment[3 + 2 * count],
    )
    dc_scan = start == 0
    if progressive:
        if end > 63 or start > end or (dc_scan and end != 0) or (not dc_scan and count != 1):
            raise _Broken
        high, low = divmod(approximation, 16)
        if low > 13 or (high and low != high - 1):
            raise _Broken  # libjpeg's "Invalid progressive parameters"
    elif (start, end, approximation) != (0, 63, 0):
        raise _Broken
    scanned = set()
    for index in range(count):
        ident, tables = segment[1 + 2 * index], segment[2 + 2 * index]
        if ident not in components or ident in scanned:
            raise _Broken
        dc_table, ac_table = divmod(tables, 16)
        # A progressive refinement scan (approximation high bits set) decodes no new DC codes.
        needs_dc = dc_scan and not (progressive and approximation >= 16)
        needs_ac = not dc_scan or not progressive
        if needs_dc and (0, dc_table) not in huffman_tables:
            raise _Broken
        if needs_ac and (1, ac_table) not in huffman_tables:
            raise _Broken
        scanned.add(ident)
    return scanned
