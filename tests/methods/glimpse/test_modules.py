"""The learned modules: VIP shapes, per-image attention, padding invariance, 2-D RoPE, the deep glimpse token."""

from __future__ import annotations

import torch

from tests.methods.glimpse.helpers import small_pruner
from vtprune.methods.glimpse import GlimpseConfig, GlimpseModules
from vtprune.methods.glimpse.modules import Rope2D, apply_rope

CFG = GlimpseConfig(family="qwen2_5_vl", hidden_size=16, num_layers=4, num_heads=3, vision_hidden_size=10, layer=2,
                    vision_blocks=[3, 1], vip_size=8, cond_size=8, vip_heads=2)


def _mods() -> GlimpseModules:
    mods = GlimpseModules(CFG).eval()
    mods.reset_parameters(zero_head=False)  # per-token outputs that differ (the default head starts at zero)
    return mods


def test_default_init_starts_every_token_at_keep_probability_half():
    attn, conds, pos, valid = _inputs()
    for shift in (0.0, -5.5):  # raw logits (Qwen) and log-softmax-like scores (LLaVA)
        out = GlimpseModules(CFG).eval().vip(attn + shift, conds, pos, valid)
        assert torch.equal(out, torch.zeros(2, 5))
    assert not torch.equal(_mods().vip(attn, conds, pos, valid), torch.zeros(2, 5))


def _inputs(G=2, M=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    attn = torch.randn(G, M, 3, generator=g)
    conds = [torch.randn(G, M, 10, generator=g) for _ in range(2)]
    pos = torch.stack(torch.meshgrid(torch.arange(M), torch.tensor([0]), indexing="ij"), -1).view(M, 2).expand(G, M, 2)
    return attn, conds, pos, torch.ones(G, M, dtype=torch.bool)


def test_vip_shapes_and_parameter_layout():
    mods = _mods()
    attn, conds, pos, valid = _inputs()
    assert mods.vip(attn, conds, pos, valid).shape == (2, 5)
    names = dict(mods.named_parameters())
    assert names["vip.attn_in_proj.weight"].shape == (8, 3)
    assert names["vip.layers.0.attn.q_proj.weight"].shape == (16, 16)  # S + C
    assert names["vip.layers.1.attn.v_proj.weight"].shape == (8, 8)
    assert names["vip.layers.0.mlp.gate_proj.weight"].shape == (16, 8)
    assert names["vip.cond_in_projs.1.weight"].shape == (8, 10) and names["vip.out_proj.weight"].shape == (1, 8)
    assert names["glimpse.embeddings"].shape == (4, 1, 16) and names["glimpse.proj.weight"].shape == (16, 16)


def test_vip_attends_within_each_image_only():
    mods = _mods()
    attn, conds, pos, valid = _inputs()
    with torch.no_grad():
        ref = mods.vip(attn, conds, pos, valid)
        attn2, conds2 = attn.clone(), [c.clone() for c in conds]
        attn2[0] += 5.0
        conds2[1][0] -= 3.0
        out = mods.vip(attn2, conds2, pos, valid)
    assert not torch.allclose(out[0], ref[0])
    assert torch.equal(out[1], ref[1])  # image 2 is untouched by image 1


def test_vip_ignores_padding():
    mods = _mods()
    attn, conds, pos, valid = _inputs(G=1, M=6)
    valid = valid.clone()
    valid[0, 4:] = False
    with torch.no_grad():
        ref = mods.vip(attn, conds, pos, valid)
        attn[0, 4:] = 100.0
        conds[0][0, 4:] = -100.0
        out = mods.vip(attn, conds, pos, valid)
        short = mods.vip(attn[:, :4], [c[:, :4] for c in conds], pos[:, :4], valid[:, :4])
    torch.testing.assert_close(out[0, :4], ref[0, :4])
    torch.testing.assert_close(out[0, :4], short[0], rtol=1e-5, atol=1e-6)


def test_rope_2d_rotates_row_and_column_pairs():
    d, theta = 8, 10000.0
    rope = Rope2D(d, theta)
    pos = torch.tensor([[[3, 5]]])  # [G=1, M=1, 2] (row 3, col 5)
    cos, sin = rope(pos)
    x = torch.randn(1, 1, 1, d)  # [G, heads, M, d]
    got = apply_rope(x, cos, sin)[0, 0, 0]
    angles = [3 * 1.0, 3 * theta**-0.5, 5 * 1.0, 5 * theta**-0.5]  # d/4 frequencies for rows, then for cols
    v = x[0, 0, 0]
    want = torch.empty(d)
    for i, a in enumerate(angles):  # pair (i, i + d/2) turns by angle a
        c, s = torch.cos(torch.tensor(a)), torch.sin(torch.tensor(a))
        want[i] = v[i] * c - v[i + 4] * s
        want[i + 4] = v[i + 4] * c + v[i] * s
    torch.testing.assert_close(got, want)


def test_rope_2d_scores_depend_on_offsets_only():
    rope = Rope2D(16)
    q, k = torch.randn(1, 1, 1, 16), torch.randn(1, 1, 1, 16)

    def score(pq, pk):
        cq, sq = rope(torch.tensor([[pq]]))
        ck, sk = rope(torch.tensor([[pk]]))
        return float((apply_rope(q, cq, sq) * apply_rope(k, ck, sk)).sum())

    assert abs(score([1, 2], [4, 0]) - score([7, 9], [10, 7])) < 1e-4
    assert abs(score([1, 2], [4, 0]) - score([1, 2], [0, 4])) > 1e-4  # rows and columns are told apart


def test_glimpse_token_is_a_deep_prompt(vlms):
    m = small_pruner(vlms["qwen2_5_vl"])
    mods = m.modules
    assert mods.glimpse.layers == [0, 1, 2, 3]
    first = m.prompt_tokens(torch.zeros(3, 7, 64))
    assert first.shape == (3, 1, 64) and torch.equal(first[0], mods.glimpse.vector(0))
    h = torch.randn(3, 1, 64)
    assert torch.equal(m.before_layer(0, h), h)  # layer 0's vector is the input embedding, not added again
    torch.testing.assert_close(m.before_layer(2, h), h + mods.glimpse.vector(2))
    mods.glimpse.layers = [0, 1]  # a layer without a vector leaves the token alone
    try:
        assert torch.equal(m.before_layer(3, h), h)
    finally:
        mods.glimpse.layers = [0, 1, 2, 3]


def test_cond_attention_unmasked_fast_path_equals_the_attention_it_replaces():
    """With every key valid the VIP's attention runs unmasked through a fused kernel (v zero-padded to the q/k head
    size); it equals plain softmax attention, as does the masked path on the same all-valid mask."""
    from vtprune.methods.glimpse.modules import CondAttention, signed_sin

    torch.manual_seed(0)
    att = CondAttention(size=32, cond_size=16, heads=4)
    G, M = 2, 9
    x, c = torch.randn(G, M, 32), torch.randn(G, M, 16)
    rope = Rope2D(12, 100.0)(torch.randint(0, 5, (G, M, 2)))
    valid = torch.ones(G, M, dtype=torch.bool)
    qk = torch.cat([x, c], -1)
    q = apply_rope(att.q_proj(qk).view(G, M, 4, 12).transpose(1, 2), *rope)
    k = apply_rope(att.k_proj(qk).view(G, M, 4, 12).transpose(1, 2), *rope)
    v = att.v_proj(x).view(G, M, 4, 8).transpose(1, 2)
    ref = torch.softmax(q @ k.transpose(-1, -2) / 12 ** 0.5, -1) @ v
    ref = att.o_proj(ref.transpose(1, 2).reshape(G, M, 32))
    signed = (rope[0], signed_sin(rope[1]))  # the tables as the VIP hands them to its blocks
    with torch.no_grad():
        torch.testing.assert_close(att(x, c, signed, valid), ref, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(att(x, c, signed, valid, dense=True), ref, rtol=1e-5, atol=1e-5)
        part = valid.clone()
        part[1, -2:] = False  # padding: the masked path
        out = att(x, c, signed, part)
        torch.testing.assert_close(out[0], ref[0], rtol=1e-5, atol=1e-5)
        assert not torch.allclose(out[1], ref[1])


def test_vip_on_conditioned_levels_equals_the_vip_on_raw_levels():
    """The runtime hands the VIP each level already conditioned (``VIP.condition``, applied as the level is
    recorded): the logits equal those from the raw levels exactly, with and without conditioning width."""
    mods = _mods()
    attn, conds, pos, valid = _inputs()
    with torch.no_grad():
        ref = mods.vip(attn, conds, pos, valid)
        out = mods.vip(attn, [mods.vip.condition(i, c) for i, c in enumerate(conds)], pos, valid, conditioned=True)
        assert torch.equal(out, ref)
        bare = GlimpseModules(GlimpseConfig(**{**CFG.to_dict(), "cond_size": 0, "vip_size": 16})).eval()
        kept = [bare.vip.condition(i, c) for i, c in enumerate(conds)]
        assert [k.shape[-1] for k in kept] == [0, 0]  # nothing to hold without conditioning
        assert torch.equal(bare.vip(attn, kept, pos, valid, conditioned=True), bare.vip(attn, conds, pos, valid))


def test_vision_blocks_must_be_distinct():
    import pytest

    from vtprune.errors import ConfigError

    with pytest.raises(ConfigError, match="distinct"):
        GlimpseConfig(**{**CFG.to_dict(), "vision_blocks": [1, 1]})
