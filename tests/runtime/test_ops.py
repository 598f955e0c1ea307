"""runtime/ops.py, the one place every cut goes through: known answers on small hand-made tensors."""

import pytest
import torch
from transformers import DynamicCache

from vtprune.runtime import ops


def test_compact_gather_and_scatter():
    keep = torch.tensor([[True, False, True, True], [False, True, False, False]])
    index, valid = ops.compact_index(keep)
    assert index.tolist()[0] == [0, 2, 3] and valid.tolist() == [[True, True, True], [False, False, True]]
    assert index[1, -1] == 1
    # sized on the host, packed to the left (a sample's visual rows): the same positions, kept first
    left, lvalid = ops.compact_index(keep, 3, right=False)
    assert left.tolist()[0] == [0, 2, 3] and left[1, 0] == 1 and lvalid.tolist() == [[True] * 3, [True, False, False]]
    x = torch.arange(8.0).view(2, 4)
    assert ops.gather_seq(x.unsqueeze(-1), index, 1).squeeze(-1)[0].tolist() == [0.0, 2.0, 3.0]
    cache = torch.arange(2 * 1 * 4 * 1.0).view(2, 1, 4, 1)
    assert ops.gather_seq(cache, index, 2)[0, 0, :, 0].tolist() == [0.0, 2.0, 3.0]
    # padding entries pointing at index 0 must not undo the drop of position 0
    keep_vis = torch.tensor([[False, True], [True, False]])
    vidx = torch.tensor([[0, 1], [2, 0]])
    valid_v = torch.tensor([[True, True], [True, False]])
    seq_keep = ops.scatter_visual(keep_vis, vidx, valid_v, 4)
    assert seq_keep.tolist() == [[False, True, True, True], [True, True, True, True]]


def test_replace_rows_writes_only_selected_rows():
    x = torch.arange(12.0).view(1, 6, 2)
    index = torch.tensor([[2, 4, 0]])  # the third entry is padding sharing index 0
    rows = torch.tensor([[True, False, False]])
    new = torch.full((1, 3, 2), -1.0)
    out = ops.replace_rows(x, index, rows, new)
    expect = x.clone()
    expect[0, 2] = -1.0
    assert torch.equal(out, expect) and torch.equal(x, torch.arange(12.0).view(1, 6, 2))
    assert ops.replace_rows(x, index, torch.zeros_like(rows), new) is x


def test_cut_cu_seqlens_recounts_segments():
    cu = torch.tensor([0, 4, 8, 12], dtype=torch.int32)
    keep = torch.tensor([1, 0, 1, 1, 0, 0, 0, 0, 1, 1, 1, 1]).bool()
    assert ops.cut_cu_seqlens(cu, keep).tolist() == [0, 3, 7]  # the empty middle segment disappears
    assert ops.unit_rows(torch.tensor([True, False]), 2).tolist() == [True, True, False, False]


def test_gather_positions_and_refuse_unknown_layouts():
    pos = torch.arange(2 * 2 * 4).view(2, 2, 4)  # [P, B, L]
    index = torch.tensor([[1, 3], [0, 2]])
    assert ops.gather_seq(pos, index, 2).tolist() == [[[1, 3], [4, 6]], [[9, 11], [12, 14]]]
    with pytest.raises(ValueError, match="unsupported gather"):
        ops.gather_seq(torch.zeros(2, 4, 1, 1, 1), index, 2)


def test_prune_cache_cuts_only_the_layers_computed():
    cache = DynamicCache()
    for li in range(3):
        k = torch.arange(4.0).view(1, 1, 4, 1) + 10 * li
        cache.update(k, k + 100, li)
    ops.prune_cache(cache, torch.tensor([[0, 3]]), upto_layer=1)
    assert cache.layers[0].keys.flatten().tolist() == [0.0, 3.0]
    assert cache.layers[1].values.flatten().tolist() == [110.0, 113.0]
    assert cache.layers[2].keys.shape[2] == 4  # a layer not yet run keeps its (future) full length
    # layers of different widths are cut one by one, with the same answer
    cache = DynamicCache()
    for li, heads in enumerate((1, 2)):
        k = torch.arange(4.0).view(1, 1, 4, 1).expand(1, heads, 4, 1) + 10 * li
        cache.update(k, k + 100, li)
    ops.prune_cache(cache, torch.tensor([[1, 2]]), upto_layer=1)
    assert cache.layers[1].keys[0, :, :, 0].tolist() == [[11.0, 12.0], [11.0, 12.0]]
    assert cache.layers[0].values.flatten().tolist() == [101.0, 102.0]


def test_add_visual():
    hidden = torch.zeros(2, 3, 1)
    visual_id = torch.tensor([[-1, 1, 0], [2, -1, -1]])
    feats = torch.tensor([[[1.0], [2.0], [3.0]], [[4.0], [5.0], [6.0]]])
    out = ops.add_visual(hidden, visual_id, feats)
    assert out.squeeze(-1).tolist() == [[0.0, 2.0, 1.0], [6.0, 0.0, 0.0]] and not hidden.any()
    assert ops.add_visual(hidden, torch.full((2, 3), -1), feats) is hidden
