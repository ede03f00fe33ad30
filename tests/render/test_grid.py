"""Tests for sd_softprompt.grid: layout arithmetic, pixel-exact cells, visible labels, errors."""

from __future__ import annotations

import pytest
from PIL import Image, ImageChops

from sd_softprompt.render.grid import grid_geometry, load_font, make_grid, wrap_text

CELL = (48, 32)


def solid(colour: tuple[int, int, int], size: tuple[int, int] = CELL) -> Image.Image:
    return Image.new("RGB", size, colour)


def distinct_images(rows: int, cols: int, size: tuple[int, int] = CELL) -> list[list[Image.Image]]:
    # Colours far from white/black so a cell can't be confused with background or text.
    return [[solid((40 + 60 * r, 30 + 50 * c, 200 - 20 * (r + c)), size) for c in range(cols)] for r in range(rows)]


def is_blank(im: Image.Image) -> bool:
    """True if every pixel is white."""
    return ImageChops.difference(im.convert("RGB"), Image.new("RGB", im.size, (255, 255, 255))).getbbox() is None


def build(rows=2, cols=3, **kw):
    images = distinct_images(rows, cols)
    row_labels = kw.pop("row_labels", [f"a photo of <token> number {r}" for r in range(rows)])
    col_labels = kw.pop("col_labels", [f"seed {c}" for c in range(cols)])
    caption = kw.pop("caption", "model: /path/to/model · steps: 20 · guidance: 7.5")
    out = make_grid(images, row_labels, col_labels, caption, **kw)
    geo = grid_geometry(rows, cols, *CELL, row_labels=row_labels, col_labels=col_labels, caption=caption, **kw)
    return images, out, geo


def test_output_size_matches_geometry_and_formula():
    pad, label_width = 4, 160
    images, out, geo = build(2, 3, pad=pad, label_width=label_width, row_labels=["cat", "dog"])
    assert out.size == geo.size
    assert out.mode == "RGB"
    cell_w, cell_h = CELL
    assert out.size[0] == pad + label_width + pad + 3 * (cell_w + pad)
    # Short labels fit in one cell height, so rows are exactly cell_h tall.
    caption_h = geo.caption_box[3] - geo.caption_box[1]
    header_h = geo.header_box[3] - geo.header_box[1]
    assert caption_h > 0 and header_h > 0
    assert out.size[1] == pad + caption_h + pad + header_h + pad + 2 * (cell_h + pad)


def test_default_label_width_is_max_of_160_and_cell_width():
    assert grid_geometry(1, 1, 48, 32).label_width == 160
    assert grid_geometry(1, 1, 300, 32).label_width == 300
    assert grid_geometry(1, 1, 48, 32, label_width=90).label_width == 90


def test_cells_are_exact_boxes_in_the_right_place():
    _, _, geo = build(2, 3)
    cell_w, cell_h = CELL
    for r, row in enumerate(geo.cells):
        for c, (x0, y0, x1, y1) in enumerate(row):
            assert (x1 - x0, y1 - y0) == (cell_w, cell_h)
            if c:
                assert x0 > row[c - 1][2]  # left to right, not overlapping
            if r:
                assert y0 > geo.cells[r - 1][c][3]  # top to bottom, not overlapping
            assert x0 >= geo.row_label_boxes[r][2]  # right of the label column
            assert y0 >= geo.header_box[3]  # below the header


@pytest.mark.parametrize("pad", [0, 4, 9])
def test_each_cell_equals_its_source_image(pad):
    images, out, geo = build(3, 2, pad=pad)
    for r, row in enumerate(images):
        for c, im in enumerate(row):
            crop = out.crop(geo.cells[r][c])
            assert ImageChops.difference(crop, im).getbbox() is None, (r, c)


def test_textured_cell_is_pixel_exact():
    # Solid colours would hide an off-by-one shift; a gradient would not.
    w, h = CELL
    grad = Image.new("RGB", CELL)
    grad.putdata([(x * 5 % 256, y * 7 % 256, (x + y) % 256) for y in range(h) for x in range(w)])
    out = make_grid([[grad]], ["p"], ["seed 0"], "cap")
    geo = grid_geometry(1, 1, w, h, row_labels=["p"], col_labels=["seed 0"], caption="cap")
    assert out.crop(geo.cells[0][0]).tobytes() == grad.tobytes()


def test_labels_and_caption_render_something():
    _, out, geo = build(2, 3)
    assert not is_blank(out.crop(geo.caption_box))
    for r, box in enumerate(geo.row_label_boxes):
        assert not is_blank(out.crop(box)), f"row {r} label is blank"
    for c, box in enumerate(geo.col_label_boxes):
        assert not is_blank(out.crop(box)), f"column {c} label is blank"


def test_text_stays_inside_its_band():
    # Nothing should be drawn in the padding between caption, header and the first row.
    _, out, geo = build(2, 3, pad=6)
    gap_caption_header = (0, geo.caption_box[3], out.size[0], geo.header_box[1])
    gap_header_cells = (0, geo.header_box[3], out.size[0], geo.row_label_boxes[0][1])
    assert is_blank(out.crop(gap_caption_header))
    assert is_blank(out.crop(gap_header_cells))


def test_long_prompt_wraps_without_widening():
    label_width = 120
    long_prompt = (
        "a highly detailed oil painting of <my-token> standing in a misty forest at dawn, "
        "volumetric light, trending on artstation, by several famous painters"
    )
    _, out_short, _ = build(2, 2, label_width=label_width, row_labels=["short", "short"])
    _, out_long, geo = build(2, 2, label_width=label_width, row_labels=[long_prompt, "short"])
    assert out_long.size[0] == out_short.size[0] == 4 + label_width + 4 + 2 * (CELL[0] + 4)
    assert len(geo.row_label_lines[0]) > 1
    font = load_font(14)
    assert all(font.getlength(line) <= label_width for line in geo.row_label_lines[0])
    # The row grows to fit the text rather than clipping it; the cell stays centred in it.
    x0, y0, x1, y1 = geo.row_label_boxes[0]
    assert y1 - y0 >= len(geo.row_label_lines[0]) * geo.line_height
    assert out_long.size[1] > out_short.size[1]
    # Nothing spills into the gap between the label column and the first cell column.
    gap = (x1, y0, geo.cells[0][0][0], out_long.size[1])
    assert is_blank(out_long.crop(gap))


def test_long_word_is_broken():
    font = load_font(14)
    word = "x" * 200
    lines = wrap_text(f"before {word} after", font, 100)
    assert len(lines) > 2
    assert all(font.getlength(line) <= 100 for line in lines)
    assert "".join(lines).replace(" ", "") == f"before{word}after"


def test_wrap_text_edge_cases():
    font = load_font(14)
    assert wrap_text("", font, 100) == []
    assert wrap_text("   ", font, 100) == []
    assert wrap_text("one\ntwo", font, 1000) == ["one", "two"]
    # Narrower than one glyph: still progresses, one char per line.
    assert wrap_text("abc", font, 1) == ["a", "b", "c"]


def test_caption_wraps_to_grid_width():
    caption = " · ".join(f"setting{i}: value{i}" for i in range(30))
    _, out, geo = build(1, 2, caption=caption)
    assert len(geo.caption_lines) > 1
    font = load_font(14)
    assert all(font.getlength(line) <= out.size[0] - 2 * 4 for line in geo.caption_lines)


def test_empty_caption_gives_empty_band():
    _, out, geo = build(1, 1, caption="")
    assert geo.caption_box[1] == geo.caption_box[3]


def test_mismatched_image_size_names_cell():
    images = distinct_images(2, 2)
    images[1][0] = solid((1, 2, 3), (50, 32))
    with pytest.raises(ValueError, match=r"\(1, 0\).*50x32.*48x32"):
        make_grid(images, ["a", "b"], ["s0", "s1"], "cap")


@pytest.mark.parametrize(
    "images, row_labels, col_labels",
    [
        (distinct_images(2, 2), ["a"], ["s0", "s1"]),  # too few row labels
        (distinct_images(2, 2), ["a", "b", "c"], ["s0", "s1"]),  # too many row labels
        (distinct_images(2, 2), ["a", "b"], ["s0"]),  # too few column labels
        ([[solid((1, 1, 1))] * 2, [solid((1, 1, 1))]], ["a", "b"], ["s0", "s1"]),  # ragged rows
        ([], [], []),  # no rows
        ([[]], ["a"], []),  # no columns
    ],
)
def test_bad_counts_raise(images, row_labels, col_labels):
    with pytest.raises(ValueError):
        make_grid(images, row_labels, col_labels, "cap")


def test_non_rgb_inputs_are_accepted():
    rgba = Image.new("RGBA", CELL, (10, 20, 30, 255))
    grey = Image.new("L", CELL, 77)
    out = make_grid([[rgba, grey]], ["p"], ["s0", "s1"], "cap")
    geo = grid_geometry(1, 2, *CELL, row_labels=["p"], col_labels=["s0", "s1"], caption="cap")
    assert out.getpixel(geo.cells[0][0][:2]) == (10, 20, 30)
    assert out.getpixel(geo.cells[0][1][:2]) == (77, 77, 77)


def test_make_grid_is_pure():
    images = distinct_images(1, 2)
    before = [im.tobytes() for im in images[0]]
    a = make_grid(images, ["p"], ["s0", "s1"], "cap")
    b = make_grid(images, ["p"], ["s0", "s1"], "cap")
    assert a.tobytes() == b.tobytes()
    assert [im.tobytes() for im in images[0]] == before
