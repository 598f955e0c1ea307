"""InternVL: tiles + thumbnail, tile tokens placed on the image's grid, budgets per image."""

from __future__ import annotations

import math

import numpy as np
import pytest
from PIL import Image

import vtprune
from vtprune.runtime.executor import prefill


@pytest.fixture(scope="module")
def ivl(vlms) -> vtprune.VLM:
    return vlms["internvl"]


def _bright_corner(w: int, h: int) -> Image.Image:
    """Dark image, white in its top-right ninth."""
    a = np.zeros((h, w, 3), dtype=np.uint8)
    a[: h // 3, w - w // 3 :] = 255
    return Image.fromarray(a)


def test_tile_tokens_sit_where_their_tile_is_in_the_image(ivl):
    img = _bright_corner(96, 64)  # a 3 x 2 tile grid (closest aspect) plus the thumbnail
    batch = ivl.adapter.encode([vtprune.Sample("q", [img])])
    (tiles_grid, thumb_grid) = batch.grids[0]
    s = ivl.adapter.tile_side
    rows, cols = tiles_grid[1] // s, tiles_grid[2] // s
    pv = batch.model_inputs["pixel_values"]
    assert pv.shape[0] == rows * cols + 1 and thumb_grid == (1, s, s)
    brightest = int(pv[: rows * cols].mean(dim=(1, 2, 3)).argmax())  # the processor's own tile with the corner
    coords = batch.coords[0]
    tile_tokens = coords[brightest * s * s : (brightest + 1) * s * s]
    assert (tile_tokens[:, 0] == 0).all()
    assert (tile_tokens[:, 2] < s).all() and (tile_tokens[:, 3] >= (cols - 1) * s).all()  # top row, last column
    # every grid cell of the tiles' item appears once; the thumbnail is item 1
    cells = {(int(h), int(w)) for _, _, h, w in coords[coords[:, 0] == 0]}
    assert len(cells) == rows * s * cols * s
    assert (coords[coords[:, 0] == 1].shape[0]) == s * s


def test_budget_is_per_image_across_tiles_and_thumbnail(ivl):
    samples = [vtprune.Sample("q", [_bright_corner(96, 64)]), vtprune.Sample("r", [_bright_corner(32, 32)])]
    st = prefill(ivl.adapter, ivl.adapter.encode(samples), vtprune.pruner("divprune", keep=0.25))
    s2 = ivl.adapter.tile_side ** 2
    assert st.visual_tokens == [7 * s2, s2]  # 6 tiles + thumbnail; one tile, no thumbnail
    assert st.kept_tokens == [math.floor(0.25 * n + 0.5) for n in st.visual_tokens]
