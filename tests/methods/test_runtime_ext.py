"""The runtime pieces the baselines added: token merging (``merges``/``merge``), stage-layer keys, and the
vision-encoder attention statistics, each checked against an independent reference."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch

import vtprune
from tests.conftest import make_image, refused, stock_logits_from_embeds
from vtprune.methods.base import Context, Pruner, Stage
from vtprune.runtime.executor import prefill

SAMPLE = [vtprune.Sample("what is left of the blue square?", [make_image(112, 84, 1)])]


@dataclass
class _KeepAllMerge(Pruner):
    """Keeps everything; its merge zeroes the hidden state of visual token ``zero`` (or changes nothing)."""

    name = "_keep_all_merge"
    merges = True
    zero: int = -1

    def select(self, ctx: Context) -> torch.Tensor:
        return ctx.visual_valid.clone()

    def merge(self, ctx: Context, keep: torch.Tensor) -> torch.Tensor:
        out = ctx.visual_hidden.clone()
        if self.zero >= 0:
            out[:, self.zero] = 0.0
        return out


def test_identity_merge_keeps_keep_all_exact(vlm, three_samples):
    batch = vlm.adapter.encode(three_samples)
    ref = prefill(vlm.adapter, batch, all_logits=True)
    got = prefill(vlm.adapter, batch, _KeepAllMerge(), all_logits=True)
    assert torch.equal(got.logits, ref.logits)


def test_merged_state_is_what_the_llm_reads(vlm):
    batch = vlm.adapter.encode(SAMPLE)
    got = prefill(vlm.adapter, batch, _KeepAllMerge(zero=3), all_logits=True)
    emb = vlm.adapter.embed(batch)
    embeds = emb.embeds.clone()
    embeds[0, torch.nonzero(batch.visual_mask[0]).flatten()[3]] = 0.0
    with torch.no_grad():
        ref = stock_logits_from_embeds(vlm, batch, embeds, vlm.adapter.forward_position_ids(emb.positions))
    torch.testing.assert_close(got.logits, ref, rtol=1e-4, atol=1e-5)


@dataclass
class _Probe(Pruner):
    """Records the context it sees and keeps everything."""

    name = "_probe"
    sites = ("llm",)
    requires = frozenset({"keys", "vision_attention"})

    def select(self, ctx: Context) -> torch.Tensor:
        self.seen = ctx  # type: ignore[attr-defined]
        return ctx.visual_valid.clone()


def test_keys_are_the_stage_layers_cache(vlm):
    probe = _Probe(layer=1)
    if refused(vlm, SAMPLE, probe):
        return
    batch = vlm.adapter.encode(SAMPLE)
    prefill(vlm.adapter, batch, probe)
    emb = vlm.adapter.embed(batch)
    inputs = dict(input_ids=batch.input_ids, attention_mask=batch.attention_mask,
                  position_ids=vlm.adapter.forward_position_ids(emb.positions), **batch.model_inputs)
    with torch.no_grad():
        cache = vlm.model(**inputs, use_cache=True).past_key_values
    torch.testing.assert_close(probe.seen.keys, cache.layers[1].keys, rtol=1e-4, atol=1e-5)
    assert set(probe.seen.vision) >= {"token_attention", "token_keys"}


def _capture_attention_inputs(module: torch.nn.Module, fn):
    """Run ``fn`` and return (args, kwargs, output) of ``module``'s first call."""
    seen: dict = {}

    def hook(m, args, kwargs, out):
        seen.setdefault("call", (args, kwargs, out))

    h = module.register_forward_hook(hook, with_kwargs=True)
    try:
        fn()
    finally:
        h.remove()
    return seen["call"]


@pytest.mark.parametrize("family", ["qwen2_5_vl", "qwen2_vl"])
def test_qwen_received_attention_matches_the_block(vlms, family):
    """Recompute from the inputs the block's attention really got (window-permuted order on Qwen2.5-VL)."""
    from transformers.vision_utils import get_vision_window_index

    vlm = vlms[family]
    visual = vlm.model.model.visual
    full = list(getattr(visual.config, "fullatt_block_indexes", None) or [])
    blk = visual.blocks[full[-1] if full else len(visual.blocks) - 1]
    batch = vlm.adapter.encode([vtprune.Sample("q", [make_image(112, 84, 1), make_image(56, 56, 2)])])
    with torch.no_grad():
        box = {}
        # only the hidden state the statistics read is recorded (what the runtime asks for)
        sel = vlm.adapter.vision_stats_hidden_states()
        embed = lambda: box.setdefault("emb", vlm.adapter.embed(batch, vision_outputs=sel))  # noqa: E731
        args, kwargs, out = _capture_attention_inputs(blk.attn, embed)
        stats = vlm.adapter.vision_token_stats(batch, box["emb"].vision)
        h = args[0] if args else kwargs["hidden_states"]
        S, H = h.shape[0], blk.attn.num_heads
        q, k, v = blk.attn.qkv(h).reshape(S, 3, H, -1).permute(1, 0, 2, 3).unbind(0)
        cos, sin = kwargs["position_embeddings"]
        rot = lambda x: torch.cat([-x[..., x.shape[-1] // 2:], x[..., : x.shape[-1] // 2]], dim=-1)  # noqa: E731
        q, k = (t * cos[:, None] + rot(t) * sin[:, None] for t in (q, k))
        received, outs = torch.zeros(S), []
        cu = kwargs["cu_seqlens"].tolist()
        for s, e in zip(cu[:-1], cu[1:]):
            p = torch.softmax(torch.einsum("qhd,khd->hqk", q[s:e], k[s:e]) * blk.attn.scaling, dim=-1)  # [H, n, n]
            received[s:e] = p.mean(dim=(0, 1))
            outs.append(torch.einsum("hqk,khd->qhd", p, v[s:e]).reshape(e - s, -1))
        torch.testing.assert_close(blk.attn.proj(torch.cat(outs)), out, rtol=1e-4, atol=1e-5)  # the reference is right
        unit = visual.config.spatial_merge_size ** 2
        per_tok = received.view(S // unit, unit).mean(1)
        keys = k.mean(1).reshape(S // unit, -1)
        if full:  # undo the window permutation: permuted row r holds token window_index[r]
            grid = batch.model_inputs["image_grid_thw"]
            widx, _ = get_vision_window_index(grid, visual.config.spatial_merge_size, visual.config.window_size,
                                              visual.config.patch_size)
            per_tok = torch.zeros_like(per_tok).index_copy(0, widx, per_tok)
            keys = torch.zeros_like(keys).index_copy(0, widx, keys)
    torch.testing.assert_close(stats["token_attention"][0], per_tok, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(stats["token_keys"][0], keys, rtol=1e-4, atol=1e-5)


def test_clip_cls_attention_matches_the_block(vlms):
    vlm = vlms["llava"]
    layers = vlm.adapter.vision_tower.encoder.layers
    attn = layers[len(layers) - 2].self_attn  # vision_feature_layer = -2
    batch = vlm.adapter.encode([vtprune.Sample("q", [make_image(112, 84, 1), make_image(56, 56, 2)])])
    with torch.no_grad():
        box = {}
        # only the hidden state the statistics read is recorded (what the runtime asks for)
        sel = vlm.adapter.vision_stats_hidden_states()
        embed = lambda: box.setdefault("emb", vlm.adapter.embed(batch, vision_outputs=sel))  # noqa: E731
        args, kwargs, out = _capture_attention_inputs(attn, embed)
        stats = vlm.adapter.vision_token_stats(batch, box["emb"].vision)
        x = kwargs.get("hidden_states", args[0] if args else None)
        n, T, _ = x.shape
        split = lambda t: t.view(n, T, attn.num_heads, -1).transpose(1, 2)  # noqa: E731
        q, k, v = split(attn.q_proj(x)), split(attn.k_proj(x)), split(attn.v_proj(x))
        p = torch.softmax(q @ k.transpose(-1, -2) * attn.scale, dim=-1)  # [n, H, T, T]
        ref_out = attn.out_proj((p @ v).transpose(1, 2).reshape(n, T, -1))
        torch.testing.assert_close(ref_out, out[0] if isinstance(out, tuple) else out, rtol=1e-4, atol=1e-5)
    cls = p[:, :, 0, 1:].mean(1)  # [n, P]
    torch.testing.assert_close(stats["token_attention"][0], cls.reshape(-1), rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(stats["token_keys"][0], k.mean(1)[:, 1:].reshape(-1, k.shape[-1]), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("family", ["qwen2_5_vl", "qwen2_vl", "llava"])
def test_selected_vision_hidden_states_are_the_stock_ones_and_only_those(vlms, family):
    """A selection records exactly the stock tensors at its indices and nothing else, and the visual features the
    LLM gets are unchanged (LLaVA's own feature layer is kept in the selection)."""
    vlm = vlms[family]
    batch = vlm.adapter.encode([vtprune.Sample("q", [make_image(112, 84, 1)])])
    with torch.no_grad():
        full = vlm.adapter.embed(batch, vision_outputs=True)
        part = vlm.adapter.embed(batch, vision_outputs=[0, 1])
    hs_full, hs_part = full.vision["image"].hidden_states, part.vision["image"].hidden_states
    assert len(hs_part) == len(hs_full) and all(h is not None for h in hs_full)
    kept = [i for i, h in enumerate(hs_part) if h is not None]
    extra = set(kept) - {0, 1}
    if family == "llava":  # plus the feature layer, -2, that LLaVA itself reads
        assert extra == {len(hs_full) - 2}
    else:
        assert not extra
    for i in kept:
        torch.testing.assert_close(hs_part[i], hs_full[i], rtol=0, atol=0)
    torch.testing.assert_close(part.embeds, full.embeds, rtol=0, atol=0)


def test_runtime_records_only_the_hidden_states_a_method_reads(vlms):
    from vtprune.methods import get_method
    from vtprune.runtime.executor import vision_hidden_states

    vlm = vlms["qwen2_5_vl"]
    glimpse = get_method("glimpse").untrained(vlm.model, keep=0.5)
    # Qwen's adapter records glimpse's levels itself, as per-token means while the tower runs: the tower records none
    assert vlm.adapter.records_token_features and vision_hidden_states(vlm.adapter, glimpse) is False
    llava = vlms["llava"]
    glimpse_l = get_method("glimpse").untrained(llava.model, keep=0.5)
    assert not llava.adapter.records_token_features
    assert vision_hidden_states(llava.adapter, glimpse_l) == sorted(b + 1 for b in set(glimpse_l.config.vision_blocks))
    vz = vtprune.pruner("visionzip", keep=0.5)
    assert vision_hidden_states(vlm.adapter, vz) == list(vlm.adapter.vision_stats_hidden_states())

    class AllOutputs(Pruner):  # a method that cannot say which it reads gets them all
        name = "all-outputs-test"
        requires = frozenset({"vision_outputs"})

    assert vision_hidden_states(vlm.adapter, AllOutputs(keep=0.5)) is True
