"""Labelled comparison grid: rows are prompts, columns are seeds.

Layout (top to bottom): a caption band, a header band with one label per column,
then one row per prompt with the prompt text in a left label column. Everything is
separated by ``pad`` pixels of white. :func:`grid_geometry` computes every box, so
callers and tests can find cell ``(r, c)`` in the output; :func:`make_grid` pastes
each image exactly at its box. Nothing here writes files.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from PIL import Image, ImageDraw, ImageFont

Box = tuple[int, int, int, int]  # (x0, y0, x1, y1), x1/y1 exclusive, as PIL crop() expects

BACKGROUND = (255, 255, 255)
TEXT_COLOUR = (0, 0, 0)
MIN_LABEL_WIDTH = 160


@dataclass(frozen=True)
class GridGeometry:
    """Where everything goes in a grid image. All boxes are (x0, y0, x1, y1), x1/y1 exclusive."""

    size: tuple[int, int]
    """(width, height) of the whole image."""
    cells: tuple[tuple[Box, ...], ...]
    """cells[r][c]: the box image (r, c) is pasted into; exactly cell_w x cell_h."""
    caption_box: Box
    header_box: Box
    """The band above the cells holding the column labels (spans the cell columns only)."""
    row_label_boxes: tuple[Box, ...]
    """The label-column box beside each row (label_width wide, row height tall)."""
    col_label_boxes: tuple[Box, ...]
    """The header box above each column (cell_w wide, header height tall)."""
    label_width: int
    line_height: int
    caption_lines: tuple[str, ...]
    row_label_lines: tuple[tuple[str, ...], ...]
    col_label_lines: tuple[tuple[str, ...], ...]


def load_font(font_size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    """Pillow's bundled font at ``font_size``, so no font file has to exist on the machine."""
    return ImageFont.load_default(size=font_size)


def _text_width(font: ImageFont.FreeTypeFont | ImageFont.ImageFont, text: str) -> float:
    return font.getlength(text)


def _break_word(font, word: str, max_width: int) -> list[str]:
    """Split one over-long word into pieces that each fit; always at least one char per piece."""
    pieces: list[str] = []
    current = ""
    for ch in word:
        if current and _text_width(font, current + ch) > max_width:
            pieces.append(current)
            current = ch
        else:
            current += ch
    if current:
        pieces.append(current)
    return pieces


def wrap_text(text: str, font, max_width: int) -> list[str]:
    """Greedy word-wrap ``text`` to ``max_width`` pixels; words wider than that are broken.

    Explicit newlines are kept as line breaks. Returns [] for empty/blank text.
    """
    max_width = max(1, max_width)
    lines: list[str] = []
    for paragraph in text.splitlines():
        words = paragraph.split()
        if not words:
            # Keep deliberate blank lines between paragraphs, but not a trailing one.
            lines.append("")
            continue
        current = ""
        for word in words:
            candidate = f"{current} {word}" if current else word
            if _text_width(font, candidate) <= max_width:
                current = candidate
                continue
            if current:
                lines.append(current)
            pieces = _break_word(font, word, max_width)
            # All but the last piece are full; the last may still take more words.
            lines.extend(pieces[:-1])
            current = pieces[-1]
        lines.append(current)
    while lines and lines[-1] == "":
        lines.pop()
    while lines and lines[0] == "":
        lines.pop(0)
    return lines


def _line_height(font, font_size: int) -> int:
    ascent, descent = font.getmetrics()
    # A little leading so descenders of one line do not touch ascenders of the next.
    return ascent + descent + max(1, font_size // 5)


def grid_geometry(
    rows: int,
    cols: int,
    cell_w: int,
    cell_h: int,
    *,
    row_labels: Sequence[str] | None = None,
    col_labels: Sequence[str] | None = None,
    caption: str = "",
    label_width: int | None = None,
    font_size: int = 14,
    pad: int = 4,
) -> GridGeometry:
    """Compute the layout of a ``rows`` x ``cols`` grid of ``cell_w`` x ``cell_h`` images.

    Text is measured here (not in :func:`make_grid`) because band and row heights depend
    on how many lines the wrapped labels take. Missing labels count as empty strings.
    A row is ``max(cell_h, label text height)`` tall; the image sits vertically centred in it.
    """
    if rows < 1 or cols < 1:
        raise ValueError(f"grid needs at least one row and one column, got {rows} x {cols}")
    if cell_w < 1 or cell_h < 1:
        raise ValueError(f"cell size must be positive, got {cell_w}x{cell_h}")
    if font_size < 1:
        raise ValueError(f"font_size must be >= 1, got {font_size}")
    if pad < 0:
        raise ValueError(f"pad must be >= 0, got {pad}")
    if label_width is None:
        label_width = max(MIN_LABEL_WIDTH, cell_w)
    if label_width < 1:
        raise ValueError(f"label_width must be >= 1, got {label_width}")
    row_labels = list(row_labels) if row_labels is not None else [""] * rows
    col_labels = list(col_labels) if col_labels is not None else [""] * cols
    if len(row_labels) != rows:
        raise ValueError(f"got {len(row_labels)} row labels for {rows} rows")
    if len(col_labels) != cols:
        raise ValueError(f"got {len(col_labels)} column labels for {cols} columns")

    font = load_font(font_size)
    line_h = _line_height(font, font_size)

    width = pad + label_width + pad + cols * (cell_w + pad)
    caption_lines = tuple(wrap_text(caption, font, width - 2 * pad))
    col_lines = tuple(tuple(wrap_text(lbl, font, cell_w)) for lbl in col_labels)
    row_lines = tuple(tuple(wrap_text(lbl, font, label_width)) for lbl in row_labels)

    caption_h = len(caption_lines) * line_h
    header_h = max(len(ls) for ls in col_lines) * line_h

    y = pad
    caption_box = (pad, y, width - pad, y + caption_h)
    y += caption_h + pad
    cells_x0 = pad + label_width + pad
    header_box = (cells_x0, y, width - pad, y + header_h)
    col_boxes = tuple(
        (cells_x0 + c * (cell_w + pad), y, cells_x0 + c * (cell_w + pad) + cell_w, y + header_h) for c in range(cols)
    )
    y += header_h + pad

    cells: list[tuple[Box, ...]] = []
    row_boxes: list[Box] = []
    for r in range(rows):
        row_h = max(cell_h, len(row_lines[r]) * line_h)
        top = y + (row_h - cell_h) // 2
        row_boxes.append((pad, y, pad + label_width, y + row_h))
        cells.append(
            tuple(
                (cells_x0 + c * (cell_w + pad), top, cells_x0 + c * (cell_w + pad) + cell_w, top + cell_h)
                for c in range(cols)
            )
        )
        y += row_h + pad

    return GridGeometry(
        size=(width, y),
        cells=tuple(cells),
        caption_box=caption_box,
        header_box=header_box,
        row_label_boxes=tuple(row_boxes),
        col_label_boxes=col_boxes,
        label_width=label_width,
        line_height=line_h,
        caption_lines=caption_lines,
        row_label_lines=row_lines,
        col_label_lines=col_lines,
    )


def _as_rgb(im: Image.Image) -> Image.Image:
    """RGB copy of ``im``; transparency is flattened onto the white background rather than dropped."""
    if im.mode == "RGB":
        return im
    if im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info):
        rgba = im.convert("RGBA")
        base = Image.new("RGBA", rgba.size, BACKGROUND + (255,))
        return Image.alpha_composite(base, rgba).convert("RGB")
    return im.convert("RGB")


def _draw_lines(
    draw: ImageDraw.ImageDraw, font, lines: Sequence[str], box: Box, line_h: int, *, centre_x: bool, centre_y: bool
) -> None:
    x0, y0, x1, y1 = box
    y = y0 + ((y1 - y0) - len(lines) * line_h) // 2 if centre_y else y0
    for line in lines:
        if centre_x:
            # "ma": middle/ascender, so each line is centred on the box without measuring it.
            draw.text(((x0 + x1) / 2, y), line, fill=TEXT_COLOUR, font=font, anchor="ma")
        else:
            draw.text((x0, y), line, fill=TEXT_COLOUR, font=font, anchor="la")
        y += line_h


def make_grid(
    images: Sequence[Sequence[Image.Image]],
    row_labels: Sequence[str],
    col_labels: Sequence[str],
    caption: str,
    *,
    label_width: int | None = None,
    font_size: int = 14,
    pad: int = 4,
) -> Image.Image:
    """Draw ``images[r][c]`` in a labelled grid and return it as a new RGB image.

    Rows are labelled with ``row_labels`` (word-wrapped to ``label_width``, default
    ``max(160, cell width)``), columns with ``col_labels``, and ``caption`` goes on top,
    wrapped to the grid width. Each image lands pixel-exact at
    ``grid_geometry(...).cells[r][c]``. Raises ValueError on empty input, ragged rows,
    label counts that do not match, or images of different sizes.
    """
    rows = len(images)
    if rows == 0:
        raise ValueError("no images: images must have at least one row")
    cols = len(images[0])
    if cols == 0:
        raise ValueError("no images: row 0 is empty")
    for r, row in enumerate(images):
        if len(row) != cols:
            raise ValueError(f"row {r} has {len(row)} images but row 0 has {cols}")
    if len(row_labels) != rows:
        raise ValueError(f"got {len(row_labels)} row labels for {rows} rows")
    if len(col_labels) != cols:
        raise ValueError(f"got {len(col_labels)} column labels for {cols} columns")
    cell_w, cell_h = images[0][0].size
    for r, row in enumerate(images):
        for c, im in enumerate(row):
            if im.size != (cell_w, cell_h):
                raise ValueError(
                    f"image ({r}, {c}) is {im.size[0]}x{im.size[1]} but image (0, 0) is "
                    f"{cell_w}x{cell_h}; all images must be the same size"
                )

    geo = grid_geometry(
        rows,
        cols,
        cell_w,
        cell_h,
        row_labels=row_labels,
        col_labels=col_labels,
        caption=caption,
        label_width=label_width,
        font_size=font_size,
        pad=pad,
    )
    out = Image.new("RGB", geo.size, BACKGROUND)
    for r, row in enumerate(images):
        for c, im in enumerate(row):
            out.paste(_as_rgb(im), geo.cells[r][c][:2])

    font = load_font(font_size)
    draw = ImageDraw.Draw(out)
    _draw_lines(draw, font, geo.caption_lines, geo.caption_box, geo.line_height, centre_x=True, centre_y=False)
    for lines, box in zip(geo.col_label_lines, geo.col_label_boxes):
        _draw_lines(draw, font, lines, box, geo.line_height, centre_x=True, centre_y=True)
    for lines, box in zip(geo.row_label_lines, geo.row_label_boxes):
        _draw_lines(draw, font, lines, box, geo.line_height, centre_x=False, centre_y=True)
    return out
