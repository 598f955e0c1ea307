"""Keep-all at every site must reproduce the unmodified HF model: logits and greedy tokens."""

from __future__ import annotations

import pytest
import torch

import vtprune
from vtprune.runtime.executor import prefill
from vtprune.runtime.generation import decode
from tests.conftest import stock_generate


def _decode(vlm, samples, method, n=8):
    batch = vlm.adapter.encode(samples)
    st = prefill(vlm.adapter, batch, method)
    return decode(vlm.adapter, st, vlm.generation_config(max_new_tokens=n))


def _stock_prefill_logits(vlm, batch):
    """Stock forward with the position ids stock ``generate`` would build."""
    emb = vlm.adapter.embed(batch)
    pos = vlm.adapter.forward_position_ids(emb.positions)
    inputs = dict(input_ids=batch.input_ids, attention_mask=batch.attention_mask, position_ids=pos, **batch.model_inputs)
    with torch.no_grad():
        return vlm.model(**inputs).logits


@pytest.mark.parametrize("method", [None, ("random", None), ("random", 0), ("random", 1), ("uniform", 3), ("none", None)])
def test_keep_all_matches_stock(vlm, three_samples, method):
    m = None if method is None else vtprune.pruner(method[0], keep=1.0, layer=method[1])
    batch = vlm.adapter.encode(three_samples)
    st = prefill(vlm.adapter, batch, m, all_logits=True)
    ref = _stock_prefill_logits(vlm, batch)
    valid = batch.attention_mask.bool()
    torch.testing.assert_close(st.logits[valid], ref[valid], rtol=1e-4, atol=1e-5)
    assert torch.equal(_decode(vlm, three_samples, m), stock_generate(vlm, three_samples))


def test_context_leaves_model_stock(vlm, three_samples):
    """Pruned runs leave no state behind: the stock model's generate is unchanged afterwards."""
    def hooks():
        return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in vlm.model.modules())

    before, n_hooks = stock_generate(vlm, three_samples), hooks()
    _decode(vlm, three_samples, vtprune.pruner("random", keep=0.3, layer=1))
    assert torch.equal(stock_generate(vlm, three_samples), before)
    assert hooks() == n_hooks
