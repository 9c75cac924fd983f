"""A small RGB canvas and PNG writer (zlib + struct), with a built-in 5x7 bitmap font.

    canvas = Canvas(320, 200)
    canvas.rect(10, 10, 110, 60, (31, 119, 180))
    canvas.text(10, 80, "speedup 1.42x", (0, 0, 0), scale=2)
    canvas.save("plot.png")

Coordinates are pixels with the origin at the top left; rectangles are half-open
(`x0 <= x < x1`) and everything is clipped to the canvas. The PNG is 8-bit truecolour
(colour type 2), one IDAT chunk, filter type 0 on every row.
"""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

Color = tuple[int, int, int]

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
GLYPH_WIDTH = 5
GLYPH_HEIGHT = 9  # 7 rows above the baseline, 2 for descenders (g, j, p, q, y, comma)
ADVANCE = GLYPH_WIDTH + 1  # one blank column between characters
LINE_HEIGHT = GLYPH_HEIGHT + 2


def encode_png(width: int, height: int, rgb: bytes | bytearray) -> bytes:
    """PNG bytes of an image given as `height` rows of `width` RGB pixels (3 bytes each)."""
    if width < 1 or height < 1:
        raise ValueError("a PNG needs at least one pixel")
    stride = 3 * width
    if len(rgb) != stride * height:
        raise ValueError(f"expected {stride * height} bytes of RGB data, got {len(rgb)}")
    raw = bytearray()
    for row in range(height):
        raw.append(0)  # filter type 0 (None) for the row
        raw += rgb[row * stride:(row + 1) * stride]
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)  # 8-bit RGB, deflate, no interlace
    return (PNG_SIGNATURE + _chunk(b"IHDR", header)
            + _chunk(b"tEXt", b"Software\x00specdec bench")
            + _chunk(b"IDAT", zlib.compress(bytes(raw), 9)) + _chunk(b"IEND", b""))


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


class Canvas:
    """An RGB raster to draw rectangles, lines and text on, then save as PNG."""

    def __init__(self, width: int, height: int, background: Color = (255, 255, 255)):
        self.width, self.height = int(width), int(height)
        self.pixels = bytearray(bytes(background) * (self.width * self.height))

    def pixel(self, x: int, y: int, color: Color) -> None:
        if 0 <= x < self.width and 0 <= y < self.height:
            offset = 3 * (y * self.width + x)
            self.pixels[offset:offset + 3] = bytes(color)

    def get(self, x: int, y: int) -> Color:
        offset = 3 * (y * self.width + x)
        return tuple(self.pixels[offset:offset + 3])  # type: ignore[return-value]

    def rect(self, x0: float, y0: float, x1: float, y1: float, color: Color) -> None:
        """Fill the pixels with x0 <= x < x1 and y0 <= y < y1 (corners in any order)."""
        left, right = sorted((round(x0), round(x1)))
        top, bottom = sorted((round(y0), round(y1)))
        left, right = max(left, 0), min(right, self.width)
        top, bottom = max(top, 0), min(bottom, self.height)
        if left >= right or top >= bottom:
            return
        span = bytes(color) * (right - left)
        for y in range(top, bottom):
            offset = 3 * (y * self.width + left)
            self.pixels[offset:offset + len(span)] = span

    def outline(self, x0: float, y0: float, x1: float, y1: float, color: Color) -> None:
        """A one-pixel frame just inside the rectangle."""
        self.rect(x0, y0, x1, y0 + 1, color)
        self.rect(x0, y1 - 1, x1, y1, color)
        self.rect(x0, y0, x0 + 1, y1, color)
        self.rect(x1 - 1, y0, x1, y1, color)

    def line(self, x0: float, y0: float, x1: float, y1: float, color: Color, dash: int = 0) -> None:
        """A one-pixel line (Bresenham); `dash > 0` draws `dash` pixels on, `dash` off."""
        x0, y0, x1, y1 = round(x0), round(y0), round(x1), round(y1)
        dx, dy = abs(x1 - x0), -abs(y1 - y0)
        sx, sy = (1 if x0 < x1 else -1), (1 if y0 < y1 else -1)
        error, count = dx + dy, 0
        while True:
            if not dash or (count // dash) % 2 == 0:
                self.pixel(x0, y0, color)
            if x0 == x1 and y0 == y1:
                return
            count += 1
            twice = 2 * error
            if twice >= dy:
                error += dy
                x0 += sx
            if twice <= dx:
                error += dx
                y0 += sy

    def text(self, x: float, y: float, text: str, color: Color, scale: int = 1, align: str = "left") -> None:
        """Draw one line of text whose cell's top edge is at `y`; `align` places `x` at the
        left edge, the centre or the right edge of the text."""
        width = text_width(text, scale)
        left = round(x - (width / 2 if align == "center" else width if align == "right" else 0))
        top = round(y)
        for index, char in enumerate(text):
            rows = glyph(char)
            origin = left + index * ADVANCE * scale
            for row, bits in enumerate(rows):
                for column, bit in enumerate(bits):
                    if bit == "#":
                        self.rect(origin + column * scale, top + row * scale,
                                  origin + (column + 1) * scale, top + (row + 1) * scale, color)

    def to_png(self) -> bytes:
        return encode_png(self.width, self.height, self.pixels)

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.write_bytes(self.to_png())
        return path


def text_width(text: str, scale: int = 1) -> int:
    """Pixel width of a line of text (no trailing gap)."""
    return max(len(text) * ADVANCE - 1, 0) * scale


def glyph(char: str) -> tuple[str, ...]:
    """The 9 rows of 5 columns ('#' on) of a character; characters the font lacks draw as '?'."""
    char = _SUBSTITUTES.get(char, char)
    rows = _FONT.get(char) or _FONT["?"]
    return tuple(rows) + (".....",) * (GLYPH_HEIGHT - len(rows))


_SUBSTITUTES = {"\u00d7": "x", "\u2013": "-", "\u2014": "-", "\u2212": "-", "\u2026": "_", "\t": " "}

# Each glyph: up to 9 rows of 5 columns; rows 0-6 sit above the baseline, 7-8 hold descenders.
_FONT: dict[str, tuple[str, ...]] = {
    " ": (".....",) * 7,
    "0": (".###.", "#...#", "#..##", "#.#.#", "##..#", "#...#", ".###."),
    "1": ("..#..", ".##..", "..#..", "..#..", "..#..", "..#..", ".###."),
    "2": (".###.", "#...#", "....#", "...#.", "..#..", ".#...", "#####"),
    "3": ("#####", "...#.", "..#..", "...#.", "....#", "#...#", ".###."),
    "4": ("...#.", "..##.", ".#.#.", "#..#.", "#####", "...#.", "...#."),
    "5": ("#####", "#....", "####.", "....#", "....#", "#...#", ".###."),
    "6": ("..##.", ".#...", "#....", "####.", "#...#", "#...#", ".###."),
    "7": ("#####", "....#", "...#.", "..#..", ".#...", ".#...", ".#..."),
    "8": (".###.", "#...#", "#...#", ".###.", "#...#", "#...#", ".###."),
    "9": (".###.", "#...#", "#...#", ".####", "....#", "...#.", ".##.."),
    "A": (".###.", "#...#", "#...#", "#####", "#...#", "#...#", "#...#"),
    "B": ("####.", "#...#", "#...#", "####.", "#...#", "#...#", "####."),
    "C": (".###.", "#...#", "#....", "#....", "#....", "#...#", ".###."),
    "D": ("###..", "#..#.", "#...#", "#...#", "#...#", "#..#.", "###.."),
    "E": ("#####", "#....", "#....", "####.", "#....", "#....", "#####"),
    "F": ("#####", "#....", "#....", "####.", "#....", "#....", "#...."),
    "G": (".###.", "#...#", "#....", "#.###", "#...#", "#...#", ".####"),
    "H": ("#...#", "#...#", "#...#", "#####", "#...#", "#...#", "#...#"),
    "I": (".###.", "..#..", "..#..", "..#..", "..#..", "..#..", ".###."),
    "J": ("..###", "...#.", "...#.", "...#.", "...#.", "#..#.", ".##.."),
    "K": ("#...#", "#..#.", "#.#..", "##...", "#.#..", "#..#.", "#...#"),
    "L": ("#....", "#....", "#....", "#....", "#....", "#....", "#####"),
    "M": ("#...#", "##.##", "#.#.#", "#.#.#", "#...#", "#...#", "#...#"),
    "N": ("#...#", "#...#", "##..#", "#.#.#", "#..##", "#...#", "#...#"),
    "O": (".###.", "#...#", "#...#", "#...#", "#...#", "#...#", ".###."),
    "P": ("####.", "#...#", "#...#", "####.", "#....", "#....", "#...."),
    "Q": (".###.", "#...#", "#...#", "#...#", "#.#.#", "#..#.", ".##.#"),
    "R": ("####.", "#...#", "#...#", "####.", "#.#..", "#..#.", "#...#"),
    "S": (".####", "#....", "#....", ".###.", "....#", "....#", "####."),
    "T": ("#####", "..#..", "..#..", "..#..", "..#..", "..#..", "..#.."),
    "U": ("#...#", "#...#", "#...#", "#...#", "#...#", "#...#", ".###."),
    "V": ("#...#", "#...#", "#...#", "#...#", "#...#", ".#.#.", "..#.."),
    "W": ("#...#", "#...#", "#...#", "#.#.#", "#.#.#", "#.#.#", ".#.#."),
    "X": ("#...#", "#...#", ".#.#.", "..#..", ".#.#.", "#...#", "#...#"),
    "Y": ("#...#", "#...#", ".#.#.", "..#..", "..#..", "..#..", "..#.."),
    "Z": ("#####", "....#", "...#.", "..#..", ".#...", "#....", "#####"),
    "a": (".....", ".....", ".###.", "....#", ".####", "#...#", ".####"),
    "b": ("#....", "#....", "####.", "#...#", "#...#", "#...#", "####."),
    "c": (".....", ".....", ".###.", "#....", "#....", "#....", ".###."),
    "d": ("....#", "....#", ".####", "#...#", "#...#", "#...#", ".####"),
    "e": (".....", ".....", ".###.", "#...#", "#####", "#....", ".###."),
    "f": ("..##.", ".#...", "###..", ".#...", ".#...", ".#...", ".#..."),
    "g": (".....", ".....", ".####", "#...#", "#...#", "#...#", ".####", "....#", ".###."),
    "h": ("#....", "#....", "####.", "#...#", "#...#", "#...#", "#...#"),
    "i": ("..#..", ".....", ".##..", "..#..", "..#..", "..#..", ".###."),
    "j": ("...#.", ".....", "..##.", "...#.", "...#.", "...#.", "...#.", "#..#.", ".##.."),
    "k": ("#....", "#....", "#..#.", "#.#..", "##...", "#.#..", "#..#."),
    "l": (".##..", "..#..", "..#..", "..#..", "..#..", "..#..", ".###."),
    "m": (".....", ".....", "##.#.", "#.#.#", "#.#.#", "#.#.#", "#.#.#"),
    "n": (".....", ".....", "####.", "#...#", "#...#", "#...#", "#...#"),
    "o": (".....", ".....", ".###.", "#...#", "#...#", "#...#", ".###."),
    "p": (".....", ".....", "####.", "#...#", "#...#", "#...#", "####.", "#....", "#...."),
    "q": (".....", ".....", ".####", "#...#", "#...#", "#...#", ".####", "....#", "....#"),
    "r": (".....", ".....", "#.##.", "##..#", "#....", "#....", "#...."),
    "s": (".....", ".....", ".####", "#....", ".###.", "....#", "####."),
    "t": (".#...", ".#...", "###..", ".#...", ".#...", ".#..#", "..##."),
    "u": (".....", ".....", "#...#", "#...#", "#...#", "#..##", ".##.#"),
    "v": (".....", ".....", "#...#", "#...#", "#...#", ".#.#.", "..#.."),
    "w": (".....", ".....", "#...#", "#...#", "#.#.#", "#.#.#", ".#.#."),
    "x": (".....", ".....", "#...#", ".#.#.", "..#..", ".#.#.", "#...#"),
    "y": (".....", ".....", "#...#", "#...#", "#...#", "#...#", ".####", "....#", ".###."),
    "z": (".....", ".....", "#####", "...#.", "..#..", ".#...", "#####"),
    ".": (".....", ".....", ".....", ".....", ".....", ".##..", ".##.."),
    ",": (".....", ".....", ".....", ".....", ".....", ".##..", ".##..", "..#..", ".#..."),
    ":": (".....", ".##..", ".##..", ".....", ".##..", ".##..", "....."),
    ";": (".....", ".##..", ".##..", ".....", ".##..", ".##..", "..#..", ".#..."),
    "-": (".....", ".....", ".....", ".###.", ".....", ".....", "....."),
    "_": (".....", ".....", ".....", ".....", ".....", ".....", ".....", "#####"),
    "+": (".....", "..#..", "..#..", "#####", "..#..", "..#..", "....."),
    "=": (".....", ".....", "#####", ".....", "#####", ".....", "....."),
    "%": ("##...", "##..#", "...#.", "..#..", ".#...", "#..##", "...##"),
    "(": ("...#.", "..#..", ".#...", ".#...", ".#...", "..#..", "...#."),
    ")": (".#...", "..#..", "...#.", "...#.", "...#.", "..#..", ".#..."),
    "[": (".###.", ".#...", ".#...", ".#...", ".#...", ".#...", ".###."),
    "]": (".###.", "...#.", "...#.", "...#.", "...#.", "...#.", ".###."),
    "{": ("..##.", ".#...", ".#...", "#....", ".#...", ".#...", "..##."),
    "}": (".##..", "...#.", "...#.", "....#", "...#.", "...#.", ".##.."),
    "<": ("...#.", "..#..", ".#...", "#....", ".#...", "..#..", "...#."),
    ">": (".#...", "..#..", "...#.", "....#", "...#.", "..#..", ".#..."),
    "/": (".....", "....#", "...#.", "..#..", ".#...", "#....", "....."),
    "\\": (".....", "#....", ".#...", "..#..", "...#.", "....#", "....."),
    "|": ("..#..", "..#..", "..#..", "..#..", "..#..", "..#..", "..#.."),
    "?": (".###.", "#...#", "....#", "...#.", "..#..", ".....", "..#.."),
    "!": ("..#..", "..#..", "..#..", "..#..", "..#..", ".....", "..#.."),
    "'": ("..#..", "..#..", ".#...", ".....", ".....", ".....", "....."),
    '"': (".#.#.", ".#.#.", ".....", ".....", ".....", ".....", "....."),
    "`": (".#...", "..#..", ".....", ".....", ".....", ".....", "....."),
    "#": (".#.#.", ".#.#.", "#####", ".#.#.", "#####", ".#.#.", ".#.#."),
    "@": (".###.", "#...#", "#.###", "#.#.#", "#.###", "#....", ".###."),
    "*": (".....", "..#..", "#.#.#", ".###.", "#.#.#", "..#..", "....."),
    "&": (".##..", "#..#.", "#.#..", ".#...", "#.#.#", "#..#.", ".##.#"),
    "$": ("..#..", ".####", "#.#..", ".###.", "..#.#", "####.", "..#.."),
    "^": ("..#..", ".#.#.", "#...#", ".....", ".....", ".....", "....."),
    "~": (".....", ".....", ".#...", "#.#.#", "...#.", ".....", "....."),
}
assert all(len(rows) <= GLYPH_HEIGHT and all(len(row) == GLYPH_WIDTH for row in rows) for rows in _FONT.values())
assert all(chr(code) in _FONT for code in range(32, 127))
