"""The PNG writer: valid signature, chunks and CRCs, pixels that decode back; the font; the charts."""

import struct
import zlib

import pytest

from specdec.bench import plots
from specdec.bench.png import (ADVANCE, GLYPH_HEIGHT, GLYPH_WIDTH, PNG_SIGNATURE, Canvas, encode_png, glyph,
                               text_width)


def decode_png(data: bytes):
    """An independent reader for what the writer produces: (width, height, rows of RGB tuples, chunk kinds)."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    offset, kinds, idat, header = 8, [], b"", None
    while offset < len(data):
        (length,) = struct.unpack(">I", data[offset:offset + 4])
        kind = data[offset + 4:offset + 8]
        body = data[offset + 8:offset + 8 + length]
        (crc,) = struct.unpack(">I", data[offset + 8 + length:offset + 12 + length])
        assert crc == zlib.crc32(kind + body) & 0xFFFFFFFF, f"bad CRC in {kind}"
        kinds.append(kind)
        if kind == b"IHDR":
            header = struct.unpack(">IIBBBBB", body)
        elif kind == b"IDAT":
            idat += body
        offset += 12 + length
    assert kinds[0] == b"IHDR" and kinds[-1] == b"IEND" and offset == len(data)
    width, height, depth, color_type, compression, filter_method, interlace = header
    assert (depth, color_type, compression, filter_method, interlace) == (8, 2, 0, 0, 0)
    raw = zlib.decompress(idat)
    stride = 3 * width
    assert len(raw) == height * (stride + 1)
    rows = []
    for y in range(height):
        line = raw[y * (stride + 1):(y + 1) * (stride + 1)]
        assert line[0] == 0  # filter type None
        rows.append([tuple(line[1 + 3 * x:4 + 3 * x]) for x in range(width)])
    return width, height, rows, kinds


def test_encoded_png_decodes_to_the_same_pixels():
    pixels = bytes(range(2 * 3 * 3))  # 3 wide, 2 high
    width, height, rows, kinds = decode_png(encode_png(3, 2, pixels))
    assert (width, height) == (3, 2)
    assert rows == [[(0, 1, 2), (3, 4, 5), (6, 7, 8)], [(9, 10, 11), (12, 13, 14), (15, 16, 17)]]
    assert kinds == [b"IHDR", b"tEXt", b"IDAT", b"IEND"]
    with pytest.raises(ValueError, match="expected 18 bytes"):
        encode_png(3, 2, pixels[:-1])
    with pytest.raises(ValueError, match="at least one pixel"):
        encode_png(0, 2, b"")


def test_canvas_draws_clipped_rectangles_lines_and_text(tmp_path):
    canvas = Canvas(40, 30, background=(255, 255, 255))
    canvas.rect(-5, -5, 3, 2, (255, 0, 0))  # clipped at the top-left corner
    canvas.rect(38, 28, 50, 50, (0, 0, 255))  # clipped at the bottom-right corner
    canvas.line(0, 29, 10, 29, (0, 128, 0))
    canvas.line(0, 10, 39, 10, (0, 0, 0), dash=2)
    canvas.text(5, 15, "1", (10, 20, 30), scale=1)
    path = canvas.save(tmp_path / "out.png")
    assert path.read_bytes().startswith(PNG_SIGNATURE)
    width, height, rows, _ = decode_png(path.read_bytes())
    assert (width, height) == (40, 30)
    assert rows[0][0] == rows[1][2] == (255, 0, 0) and rows[2][0] == rows[0][3] == (255, 255, 255)
    assert rows[29][39] == rows[28][38] == (0, 0, 255)
    assert rows[29][0] == rows[29][10] == (0, 128, 0)
    assert [rows[10][x] == (0, 0, 0) for x in range(6)] == [True, True, False, False, True, True]
    # the glyph "1": its top row is "..#..", its bottom row ".###."
    assert rows[15][7] == (10, 20, 30) and rows[15][6] == (255, 255, 255)
    assert [rows[21][5 + x] == (10, 20, 30) for x in range(5)] == [False, True, True, True, False]


def test_text_is_scaled_and_aligned():
    canvas = Canvas(100, 40)
    canvas.text(50, 0, "II", (0, 0, 0), scale=2, align="center")
    inked = [x for x in range(100) if any(canvas.get(x, y) != (255, 255, 255) for y in range(40))]
    assert text_width("II", 2) == 2 * (2 * ADVANCE - 1)
    assert min(inked) == 50 - text_width("II", 2) // 2 + 2 * 1  # "I" starts one column in
    right = Canvas(30, 12)
    right.text(30, 0, "7", (0, 0, 0), align="right")
    assert right.get(25, 0) == (0, 0, 0) and right.get(29, 0) == (0, 0, 0)


def test_font_covers_printable_ascii_with_descenders():
    for code in range(32, 127):
        rows = glyph(chr(code))
        assert len(rows) == GLYPH_HEIGHT and all(len(row) == GLYPH_WIDTH for row in rows)
        if chr(code) not in " ":
            assert any("#" in row for row in rows), chr(code)
    assert any("#" in row for row in glyph("g")[7:]) and not any("#" in row for row in glyph("a")[7:])
    assert glyph("\u00e9") == glyph("?")  # characters the font lacks
    assert glyph("\u00d7") == glyph("x")
    assert len({glyph(chr(code)) for code in range(33, 127)}) == 94  # every glyph is distinct


def test_charts_are_valid_pngs_with_the_method_colours(tmp_path):
    series = [("draft", plots.color_of(1)), ("hf-generate", plots.color_of(2))]
    values = {(0, 0): (1.5, 1.4, 1.6), (0, 1): (0.8, 0.8, 0.8), (1, 0): (1.2, 1.2, 1.2), (1, 1): None}
    path = plots.speedup_chart(["QA", "Overall"], series, values, tmp_path / "speedup.png", "Speedup", "ar")
    _, _, rows, _ = decode_png(path.read_bytes())
    colours = {pixel for row in rows for pixel in row}
    assert plots.color_of(1) in colours and plots.color_of(2) in colours
    panels = [("draft", plots.color_of(1), [3, 1, 0, 6], 2.4), ("hf-prompt-lookup", plots.color_of(3), [9, 1], 1.1),
              ("empty", plots.color_of(4), [], None)]
    path = plots.histogram_chart(panels, tmp_path / "hist.png", "Accepted draft tokens per step")
    width, height, rows, _ = decode_png(path.read_bytes())
    assert width >= 2 * 420 and height > 2 * 250
    assert plots.color_of(3) in {pixel for row in rows for pixel in row}


def test_nice_steps():
    assert plots.nice_step(2.3, 7) == 0.5
    assert plots.nice_step(1.0, 8) == 0.2
    assert plots.nice_step(100, 5) == 20
    assert plots.nice_step(0, 5) == 1.0
