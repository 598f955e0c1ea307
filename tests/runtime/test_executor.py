"""Pruning at each site equals an independent reference built from the stock model and the same kept set."""

from __future__ import annotations

import pytest
import torch
from transformers import DynamicCache

import vtprune
from tests.conftest import make_image, stock_blocks
from vtprune.runtime.executor import prefill
from vtprune.runtime.generation import decode


def _kept_positions(batch, b: int, kept_visual: torch.Tensor) -> torch.Tensor:
    """Sequence positions of sample ``b`` (no padding: single-sample batch) that survive: text + kept visual."""
    vis = batch.visual_mask[b]
    vid = vis.long().cumsum(0) - 1
    keep_v = torch.zeros(int(vis.sum()), dtype=torch.bool)
    keep_v[kept_visual] = True
    return torch.nonzero(~vis | (vis & keep_v[vid.clamp(min=0)])).flatten()


def _deepstack(vlm, emb, batch, li: int, h: torch.Tensor, P: torch.Tensor) -> torch.Tensor:
    """The stock text model's own DeepStack step after layer ``li`` on the surviving rows ``P`` of sample 0, with the
    features of the visual tokens among them (families without injections: ``h`` unchanged)."""
    if li not in emb.injections:
        return h
    vis = batch.visual_mask[0]
    vid = (vis.long().cumsum(0) - 1)[P]
    kept_vis = vis[P]
    return vlm.adapter.text_model._deepstack_process(h, kept_vis[None], emb.injections[li][0, vid[kept_vis]])


def _layer_mask(vlm, batch, h: torch.Tensor, P: torch.Tensor):
    """The mask the stock text model gives its layers for the rows ``P`` alone (None: causal, sdpa's own)."""
    blocks = vlm.adapter.attention_blocks(batch)
    if blocks is None:
        return None
    from transformers.masking_utils import create_causal_mask

    return create_causal_mask(config=vlm.adapter.text_config, inputs_embeds=h,
                              attention_mask=torch.ones(1, len(P), dtype=torch.long), past_key_values=None,
                              block_sequence_ids=blocks[:, P])


def _stock_logits_fed(vlm, emb, batch, P: torch.Tensor) -> torch.Tensor:
    """Stock logits for the rows ``P`` of sample 0 fed as embeddings (with their DeepStack features, if any)."""
    E, pos = emb.embeds[:, P], vlm.adapter.forward_position_ids(emb.positions[:, :, P])
    ones = torch.ones(1, len(P), dtype=torch.long)
    if not emb.injections:
        return vlm.model(inputs_embeds=E, attention_mask=ones, position_ids=pos, **stock_blocks(vlm, batch, P)).logits
    vis = batch.visual_mask[0]
    vid = (vis.long().cumsum(0) - 1)[P]
    levels = [emb.injections[i][0, vid[vis[P]]] for i in sorted(emb.injections)]
    out = vlm.adapter.text_model(inputs_embeds=E, attention_mask=ones, position_ids=pos,
                                 visual_pos_masks=vis[P][None], deepstack_visual_embeds=levels)
    return vlm.adapter.lm_head(out.last_hidden_state)


@pytest.mark.parametrize("method", ["random", "uniform"])
def test_pre_llm_equals_stock_fed_kept_tokens(vlm, method):
    sample = [vtprune.Sample("what is left of the blue square?", [make_image(112, 84, 1)])]
    m = vtprune.pruner(method, keep=0.4)
    batch = vlm.adapter.encode(sample)
    st = prefill(vlm.adapter, batch, m, all_logits=True)
    assert st.kept_tokens[0] == round(0.4 * st.visual_tokens[0])
    emb = vlm.adapter.embed(batch)
    P = _kept_positions(batch, 0, st.kept_visual[0])
    E, pos = emb.embeds[:, P], vlm.adapter.forward_position_ids(emb.positions[:, :, P])
    ones = torch.ones(1, len(P), dtype=torch.long)
    with torch.no_grad():
        ref = _stock_logits_fed(vlm, emb, batch, P)
    torch.testing.assert_close(st.logits, ref, rtol=1e-4, atol=1e-5)
    if emb.injections:  # generate cannot take DeepStack features with inputs_embeds; the logits above cover them
        return
    ref_tokens = vlm.model.generate(inputs_embeds=E, attention_mask=ones, position_ids=pos, max_new_tokens=6,
                                    do_sample=False, **stock_blocks(vlm, batch, P))
    ours = decode(vlm.adapter, prefill(vlm.adapter, batch, m), vlm.generation_config(max_new_tokens=6))
    assert torch.equal(ours, ref_tokens)


@pytest.mark.parametrize("K", [0, 2])
def test_llm_site_cache_and_first_decode_logits(vlm, K):
    sample = [vtprune.Sample("count the triangles", [make_image(140, 112, 4)])]
    m = vtprune.pruner("random", keep=0.25, layer=K, seed=3)
    batch = vlm.adapter.encode(sample)
    st = prefill(vlm.adapter, batch, m)
    P = _kept_positions(batch, 0, st.kept_visual[0])
    n_text = int((~batch.visual_mask[0]).sum())
    # the cache holds exactly text + kept visual tokens, in every layer
    for layer in st.cache.layers:
        assert layer.keys.shape[2] == layer.values.shape[2] == n_text + st.kept_tokens[0] == len(P)

    # reference by hand: stock full forward, its layer-K output and layers 0..K cache cut to P, then layers K+1.. by hand
    emb = vlm.adapter.embed(batch)
    inputs = dict(input_ids=batch.input_ids, attention_mask=batch.attention_mask,
                  position_ids=vlm.adapter.forward_position_ids(emb.positions), **batch.model_inputs)
    with torch.no_grad():
        full = vlm.model(**inputs, use_cache=True, output_hidden_states=True)
        cache = DynamicCache(config=vlm.adapter.text_config)
        for li in range(vlm.num_layers):
            src = full.past_key_values.layers[li]
            if li <= K:
                cache.update(src.keys[:, :, P], src.values[:, :, P], li)
        # hidden_states[K + 1] is layer K's output before its DeepStack step (if any), which every token still gets
        h = _deepstack(vlm, emb, batch, K, full.hidden_states[K + 1], torch.arange(batch.input_ids.shape[1]))[:, P]
        pos = emb.positions[:, :, P]
        cos_sin = vlm.adapter.rope(h, pos)
        mask = _layer_mask(vlm, batch, h, P)
        for li in range(K + 1, vlm.num_layers):
            h = vlm.adapter.layers[li](h, attention_mask=mask, position_ids=vlm.adapter.layer_position_ids(pos),
                                       past_key_values=cache, use_cache=True, position_embeddings=cos_sin)
            h = _deepstack(vlm, emb, batch, li, h, P)  # later injections reach the kept visual tokens only
        first = vlm.adapter.lm_head(vlm.adapter.text_model.norm(h[:, -1])).argmax(-1)
        torch.testing.assert_close(st.logits.argmax(-1), first)
        step = vlm.model(input_ids=first[:, None], attention_mask=torch.ones(1, len(P) + 1, dtype=torch.long),
                         position_ids=vlm.adapter.forward_position_ids(pos[..., -1:] + 1), past_key_values=cache,
                         use_cache=True)
    ours = decode(vlm.adapter, st, vlm.generation_config(max_new_tokens=2, eos_token_id=[]))
    assert ours[0, 0] == first[0]
    # our second token comes from the same first-decode logits
    assert ours[0, 1] == step.logits[0, -1].argmax()


def test_batch_equals_singles(vlm, three_samples):
    for m in [vtprune.pruner("random", keep=0.3, layer=1, seed=5), vtprune.pruner("uniform", keep=0.5)]:
        batched = vlm.generate(three_samples, m, max_new_tokens=6)
        singles = [vlm.generate([s], m, max_new_tokens=6)[0] for s in three_samples]
        assert [a.text for a in batched] == [a.text for a in singles]
        assert [a.kept_tokens for a in batched] == [a.kept_tokens for a in singles]
        for a, b in zip(batched, singles):
            assert torch.equal(a.kept_coords, b.kept_coords)


def test_batch_with_different_keep_counts_and_a_text_only_sample(vlms):
    vlm = vlms["qwen2_5_vl"]
    samples = [vtprune.Sample("q one", [make_image(224, 168, 7)]), vtprune.Sample("just text"),
               vtprune.Sample("q three", [make_image(56, 56, 8), make_image(84, 56, 9)])]
    m = vtprune.pruner("random", keep=0.25, layer=1)
    batched = vlm.generate(samples, m, max_new_tokens=5)
    assert len({a.kept_tokens for a in batched}) == 3
    assert batched[1].visual_tokens == 0 and batched[1].kept_tokens == 0
    singles = [vlm.generate([s], m, max_new_tokens=5)[0] for s in samples]
    assert [a.text for a in batched] == [a.text for a in singles]


def test_decoding_continues_at_unpruned_positions(vlms):
    vlm = vlms["qwen2_5_vl"]
    sample = [vtprune.Sample("q", [make_image(112, 112, 1)])]
    batch = vlm.adapter.encode(sample)
    full = prefill(vlm.adapter, batch)
    pruned = prefill(vlm.adapter, batch, vtprune.pruner("uniform", keep=0.25, layer=0))
    assert pruned.positions.shape[-1] < full.positions.shape[-1]
    assert torch.equal(pruned.positions[..., -1], full.positions[..., -1])
