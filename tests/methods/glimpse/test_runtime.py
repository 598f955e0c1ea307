"""GlimpsePrune through the runtime: the glimpse token leaves the sequence and the cache, keep-all equals stock,
batches equal single runs, and the training (grad / soft) modes of prefill."""

from __future__ import annotations

import pytest
import torch

import vtprune
from tests.conftest import make_image, stock_generate
from tests.methods.glimpse.helpers import small_pruner, with_modules
from vtprune.errors import ConfigError
from vtprune.runtime.executor import LiveSequence, RecordScores, prefill
from vtprune.runtime.generation import decode
from vtprune.training.relax import RelaxedCut

FAMS = ["qwen2_5_vl", "llava", "qwen3_vl"]


@pytest.mark.parametrize("fam", FAMS)
def test_glimpse_leaves_sequence_and_cache(vlms, fam):
    vlm = vlms[fam]
    m = small_pruner(vlm, fixed_remain_ratio=0.5)
    samples = [vtprune.Sample("what is left of the blue square?", [make_image(112, 84, 1)]), vtprune.Sample("count")]
    batch = vlm.adapter.encode(samples)
    st = prefill(vlm.adapter, batch, m)
    assert st.kept_tokens[0] == st.visual_tokens[0] // 2 and st.visual_tokens[1] == st.kept_tokens[1] == 0
    for b in range(2):
        n_text = int((batch.attention_mask[b].bool() & ~batch.visual_mask[b]).sum())
        assert int(st.attention_mask[b].sum()) == n_text + st.kept_tokens[b]
    L = int(st.attention_mask.shape[1])
    for layer in st.cache.layers:  # text + kept visual, no glimpse token, in every layer
        assert layer.keys.shape[2] == layer.values.shape[2] == L
    # decoding continues at the unpruned prompt's positions (the glimpse's slot is reused by the first new token)
    full = prefill(vlm.adapter, batch)
    assert torch.equal(st.positions[..., -1], full.positions[..., -1])


@pytest.mark.parametrize("fam", ["qwen2_5_vl", "qwen2_vl", "llava", "qwen3_vl"])
def test_keep_all_equals_stock(vlms, three_samples, fam):
    vlm = vlms[fam]
    m = small_pruner(vlm)
    ref_tokens = stock_generate(vlm, three_samples, max_new_tokens=6)
    batch = vlm.adapter.encode(three_samples)
    ref = prefill(vlm.adapter, batch, all_logits=True).logits
    for keep_all in (with_modules(m, threshold=0.0), with_modules(m, fixed_remain_ratio=1.0)):
        st = prefill(vlm.adapter, batch, keep_all, all_logits=True)
        assert st.kept_tokens == st.visual_tokens
        valid = st.attention_mask.bool()
        torch.testing.assert_close(st.logits[valid], ref[valid], rtol=1e-4, atol=1e-5)
        out = decode(vlm.adapter, prefill(vlm.adapter, batch, keep_all), vlm.generation_config(max_new_tokens=6))
        assert torch.equal(out, ref_tokens)


@pytest.mark.parametrize("fam", FAMS)
def test_batch_equals_singles(vlms, three_samples, fam):
    vlm = vlms[fam]
    m = small_pruner(vlm, seed=3, threshold=0.5)
    with torch.no_grad():  # centre the untrained logits on the threshold so the kept counts vary per sample
        st = prefill(vlm.adapter, vlm.adapter.encode(three_samples), m, cut=RecordScores())
        vals = st.scores[0][st.score_ids[0] >= 0].sort().values
        k = len(vals) // 2  # midway between two neighbouring logits: no token sits on the threshold
        m.modules.vip.out_proj.bias -= (vals[k - 1] + vals[k]) / 2
    batched = vlm.generate(three_samples, m, max_new_tokens=5)
    singles = [vlm.generate([s], m, max_new_tokens=5)[0] for s in three_samples]
    assert any(0 < a.kept_tokens < a.visual_tokens for a in batched)
    assert [a.kept_tokens for a in batched] == [a.kept_tokens for a in singles]
    assert [a.text for a in batched] == [a.text for a in singles]
    for a, b in zip(batched, singles):
        assert torch.equal(a.kept_coords, b.kept_coords)


def test_extra_tokens_take_the_next_positions():
    hidden, mask = torch.zeros(2, 3, 4), torch.tensor([[0, 1, 1], [1, 1, 1]])
    pos = torch.tensor([[[0, 0, 1], [0, 1, 2]], [[0, 0, 5], [0, 3, 9]]])  # [P=2, B=2, L=3]
    seq = LiveSequence(hidden, mask, pos, torch.full((2, 3), -1))
    seq.append_extra(torch.ones(2, 1, 4))
    assert seq.positions[..., -1].tolist() == [[2, 3], [6, 10]]
    assert seq.mask[:, -1].tolist() == [1, 1] and seq.extra[:, -1].all() and not seq.extra[:, :-1].any()
    seq.cut(~seq.extra)
    assert seq.hidden.shape[1] == 3 and not seq.extra.any()


@pytest.mark.parametrize("fam", FAMS)
def test_grad_mode_scores_and_glimpse_logits(vlms, fam):
    vlm = vlms[fam]
    m = small_pruner(vlm)
    batch = vlm.adapter.encode([vtprune.Sample("q", [make_image(84, 56, 1)]), vtprune.Sample("r", [make_image(56, 56, 2)])])
    st = prefill(vlm.adapter, batch, m, cut=RecordScores())
    s, ids = st.scores[0], st.score_ids[0]
    assert s.requires_grad and s.shape == ids.shape and (ids >= 0).sum(1).tolist() == st.visual_tokens
    assert st.extra_logits is not None and st.extra_logits.shape[:2] == (2, 1)
    # the prompt's own logits are the unpruned ones (nothing is cut in grad mode, the glimpse is causal-after)
    ref = prefill(vlm.adapter, batch).logits
    torch.testing.assert_close(st.logits.detach(), ref, rtol=1e-4, atol=1e-5)
    (s.sum() + st.extra_logits.sum()).backward()
    g = m.modules.glimpse.embeddings.grad
    assert g is not None and bool((g.abs().sum(dim=(1, 2)) > 0).all())  # every layer's vector is trained
    assert m.modules.vip.out_proj.weight.grad is not None


@pytest.mark.parametrize("relax", ["sigmoid", "hard", "sampled"])
@pytest.mark.parametrize("fam", FAMS)
def test_soft_relaxation_matches_hard_cut_at_the_extremes(vlms, fam, relax):
    vlm = vlms[fam]
    m = small_pruner(vlm, min_remain=0)
    batch = vlm.adapter.encode([vtprune.Sample("where?", [make_image(112, 84, 1)])])
    with torch.no_grad():
        for bias, ref in ((30.0, prefill(vlm.adapter, batch)), (-30.0, None)):
            m.modules.vip.out_proj.bias.fill_(bias)
            m.modules.vip.out_proj.weight.zero_()
            if ref is None:  # every token dropped after layer K
                ref = prefill(vlm.adapter, batch, m)
                assert ref.kept_tokens == [0]
            soft = prefill(vlm.adapter, batch, m, cut=RelaxedCut(relax, m.keep_threshold))
            torch.testing.assert_close(soft.logits, ref.logits, rtol=1e-4, atol=1e-3 if relax != "sigmoid" else 1e-4)


@pytest.mark.parametrize("fam", FAMS)
def test_hard_relaxation_is_the_inference_cut_and_trains_dropped_tokens(vlms, fam):
    """Between the extremes: the ``hard`` forward is the real cut of the threshold rule (to the floor's 10^-4
    weight), and the answer's gradient reaches the dropped tokens' logits too (the ``sigmoid`` forward is not the
    cut)."""
    vlm = vlms[fam]
    m = small_pruner(vlm, min_remain=0, seed=3)
    batch = vlm.adapter.encode([vtprune.Sample("where?", [make_image(112, 84, 1)])])
    with torch.no_grad():
        m.modules.vip.out_proj.bias.fill_(0.0)
        m.modules.vip.out_proj.weight.normal_(0, 5.0)
        s0 = prefill(vlm.adapter, batch, m, cut=RecordScores()).scores[0]
        m.modules.vip.out_proj.bias.fill_(-float(s0[s0 != 0].median()) + 0.01)  # logits both sides of 0
        ref = prefill(vlm.adapter, batch, m)
    assert 0 < ref.kept_tokens[0] < ref.visual_tokens[0]
    hard = prefill(vlm.adapter, batch, m, cut=RelaxedCut("hard", m.keep_threshold))
    torch.testing.assert_close(hard.logits.detach(), ref.logits, rtol=1e-3, atol=2e-3)
    strict = with_modules(m, min_remain=0, threshold=0.9)  # the relaxed cut follows the method's threshold
    with torch.no_grad():
        ref9 = prefill(vlm.adapter, batch, strict)
    assert ref9.kept_tokens[0] < ref.kept_tokens[0]
    strict_cut = RelaxedCut("hard", strict.keep_threshold)
    torch.testing.assert_close(prefill(vlm.adapter, batch, strict, cut=strict_cut).logits.detach(),
                               ref9.logits, rtol=1e-3, atol=2e-3)
    sig = prefill(vlm.adapter, batch, m, cut=RelaxedCut("sigmoid", m.keep_threshold))
    assert (sig.logits.detach() - ref.logits).abs().max() > 10 * (hard.logits.detach() - ref.logits).abs().max()
    s = hard.scores[0]
    s.retain_grad()
    hard.logits.log_softmax(-1)[0, 0].backward()
    g = s.grad[0]
    dropped = (s.detach()[0] <= 0) & (hard.score_ids[0][0] >= 0)
    assert bool(torch.isfinite(g).all()) and bool((g[dropped] != 0).all()) and bool((g[~dropped] != 0).any())
    with pytest.raises(ConfigError, match="relaxation"):
        RelaxedCut("nope")


def test_vip_runs_in_a_half_precision_models_precision_without_touching_its_weights():
    """On a bf16 model the VIP's matmuls run in bf16 (autocast) while its fp32 weights stay fp32 (what a later
    save or training step sees); the selection reads fp32 logits, close to the fp32 model's."""
    import vtprune
    from tests.conftest import make_image
    from tests.methods.glimpse.helpers import small_pruner
    from vtprune.methods.glimpse import method as gm

    vlm = vtprune.load("random:qwen2_5_vl")
    m = small_pruner(vlm, seed=3, keep=0.5)
    sample = [vtprune.Sample("what is left of the square?", [make_image(112, 84, 5)])]
    matmul_dtypes, logits = [], []
    hook = m.modules.vip.out_proj.register_forward_hook(lambda mod, a, out: matmul_dtypes.append(out.dtype))
    real = gm.GlimpsePruner._packed_logits

    def spy(self, ctx):
        out = real(self, ctx)
        logits.append(out[0])
        return out

    gm.GlimpsePruner._packed_logits = spy
    try:
        with torch.no_grad():
            vlm.prefill(sample, m)
            vlm.model.to(torch.bfloat16)
            vlm.prefill(sample, m)
    finally:
        gm.GlimpsePruner._packed_logits = real
        hook.remove()
    assert matmul_dtypes == [torch.float32, torch.bfloat16]
    assert [x.dtype for x in logits] == [torch.float32, torch.float32]
    assert all(p.dtype == torch.float32 for p in m.modules.parameters())
    torch.testing.assert_close(logits[1], logits[0], rtol=0.1, atol=0.1)


@pytest.mark.parametrize("fam", ["internvl", "molmo2"])
def test_a_family_without_per_token_vit_features_refuses_glimpse(vlms, fam):
    from vtprune.errors import UnsupportedModelError
    from vtprune.methods.glimpse import GlimpsePruner

    if fam not in vlms:
        pytest.skip(f"{fam} needs a newer transformers")
    with pytest.raises(UnsupportedModelError, match="not supported by this family"):
        GlimpsePruner.untrained(vlms[fam], keep=0.25)


@pytest.mark.parametrize("fam", ["qwen2_5_vl", "qwen2_vl", "qwen3_vl"])
def test_vit_levels_recorded_as_means_equal_the_per_patch_states_merged(vlms, three_samples, fam):
    """The adapter's hooks keep each ViT level as its 2x2 merge-unit means while the tower runs; they equal the
    per-patch hidden states the tower records (HF's output_hidden_states), merged afterwards, exactly."""
    adapter = vlms[fam].adapter
    batch = adapter.encode(three_samples + [vtprune.Sample("two", [make_image(56, 84, 4), make_image(84, 56, 5)])])
    levels = [0, 1, 3, adapter.vision_geometry().depth]
    with torch.no_grad():
        with adapter.record_token_features(batch, levels) as means:
            adapter.embed(batch)
        ref = adapter.vision_token_features(batch, adapter.embed(batch, vision_outputs=levels).vision, levels)
    assert sorted(means) == sorted(ref) == levels
    for i in levels:
        assert means[i].shape == ref[i].shape and torch.equal(means[i], ref[i])


@pytest.mark.parametrize("fam", ["qwen2_5_vl", "qwen2_vl", "qwen3_vl"])
def test_vit_levels_conditioned_as_recorded_equal_the_conditioning_of_the_recorded_means(vlms, three_samples, fam):
    """GlimpsePrune keeps each ViT level as its VIP's conditioning (``token_features``, applied by the adapter's hook
    as the level is recorded, in the tower's order): on every visual token it equals the conditioning of the
    recorded means laid out per sample, exactly; padding rows hold zeros; a level the VIP does not read keeps
    nothing."""
    vlm = vlms[fam]
    adapter, m = vlm.adapter, small_pruner(vlm, keep=0.5)
    batch = adapter.encode(three_samples + [vtprune.Sample("two", [make_image(56, 84, 4), make_image(84, 56, 5)])])
    read = list(m.vision_hidden_states())
    levels = sorted({0, *read})
    C = m.config.cond_size
    with torch.no_grad():
        with adapter.record_token_features(batch, levels, lambda i, f: m.token_features(i, f, torch.float32)) as kept:
            adapter.embed(batch)
        with adapter.record_token_features(batch, levels) as means:
            adapter.embed(batch)
    counts = batch.visual_mask.sum(1).tolist()
    for i in levels:
        if i not in read:
            assert kept[i].shape[-1] == 0
            continue
        ref = m.token_features(i, means[i], torch.float32)
        assert kept[i].shape == (*means[i].shape[:2], C)
        for b, n in enumerate(counts):
            assert torch.equal(kept[i][b, :n], ref[b, :n])
            assert not kept[i][b, n:].any()


def test_the_prune_step_holds_the_conditioned_levels_only(vlms):
    """What the glimpse stage receives (and what was held since the tower ran): C-wide rows per level it reads,
    not the ViT's Dv-wide means; the logits equal the VIP's on the unconditioned levels (tested exactly above)."""
    from vtprune.methods.glimpse import method as gm

    vlm = vlms["qwen2_5_vl"]
    m = small_pruner(vlm, keep=0.5)
    widths = []
    real = gm.GlimpsePruner._packed_logits

    def spy(self, ctx):
        widths.append({i: f.shape[-1] for i, f in ctx.vision["token_features"].items()})
        return real(self, ctx)

    gm.GlimpsePruner._packed_logits = spy
    try:
        with torch.no_grad():
            vlm.prefill([vtprune.Sample("what is left of the square?", [make_image(112, 84, 5)])], m)
    finally:
        gm.GlimpsePruner._packed_logits = real
    assert m.config.cond_size < m.config.vision_hidden_size
    assert widths == [{i: m.config.cond_size for i in m.vision_hidden_states()}]
