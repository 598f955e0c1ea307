"""GlimpsePrune composes with other methods: a pre-LLM method first, the glimpse cut after layer K."""

from __future__ import annotations

import vtprune
from tests.methods.glimpse.helpers import small_pruner
from vtprune.methods import Compose
from vtprune.runtime.executor import prefill


def test_pre_llm_method_then_glimpse(vlms, three_samples):
    vlm = vlms["qwen2_5_vl"]
    glimpse = small_pruner(vlm, fixed_remain_ratio=0.25)
    both = Compose([vtprune.pruner("uniform", keep=0.5), glimpse])
    batch = vlm.adapter.encode(three_samples)
    st = prefill(vlm.adapter, batch, both)
    n_text = (~batch.visual_mask).sum(1) - (batch.attention_mask == 0).sum(1)
    for b, (v, k) in enumerate(zip(st.visual_tokens, st.kept_tokens)):
        assert k <= round(0.5 * v) and k >= 1
        # the glimpse token left the sequence and every layer's cache: text + kept visual tokens only
        assert int(st.attention_mask[b].sum()) == int(n_text[b]) + k
    for layer in st.cache.layers:
        assert layer.keys.shape[2] == st.attention_mask.shape[1]
    answers = vlm.generate(three_samples, both, max_new_tokens=3)
    assert [a.kept_tokens for a in answers] == st.kept_tokens
