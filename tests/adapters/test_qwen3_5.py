"""Qwen3.5 (hybrid linear + full attention): keep-all equals stock generate, pre_llm and vit cuts equal the stock model
fed the kept tokens, bs>1 equals bs=1, and cuts inside the LLM are refused with the reason."""

from __future__ import annotations

import math

import pytest
import torch

import vtprune
from tests.conftest import make_image, stock_generate
from vtprune.errors import UnsupportedModelError
from vtprune.runtime.executor import prefill
from vtprune.runtime.generation import decode

pytestmark = pytest.mark.filterwarnings("ignore")


@pytest.fixture(scope="module")
def q35() -> vtprune.VLM:
    torch.set_num_threads(1)
    return vtprune.load("random:qwen3_5")


SAMPLES = lambda: [vtprune.Sample("what is left of the blue square?", [make_image(112, 84, 1)]),  # noqa: E731
                   vtprune.Sample("count", [make_image(56, 56, 2)]),
                   vtprune.Sample("read the value", [make_image(140, 112, 3)])]


def test_the_model_is_hybrid(q35):
    kinds = q35.model.config.text_config.layer_types
    assert set(kinds) == {"linear_attention", "full_attention"}


def test_keep_all_equals_stock_generate_images_and_video(q35):
    samples = SAMPLES()  # left padding in the batch: the linear layers get HF's recurrent (padding) mask
    ours = decode(q35.adapter, prefill(q35.adapter, q35.adapter.encode(samples)), q35.generation_config(max_new_tokens=6))
    assert torch.equal(ours, stock_generate(q35, samples, max_new_tokens=6))
    video = [vtprune.Sample("what moved?", video=[make_image(64, 64, i) for i in range(6)])]
    ours = decode(q35.adapter, prefill(q35.adapter, q35.adapter.encode(video)), q35.generation_config(max_new_tokens=6))
    assert torch.equal(ours, stock_generate(q35, video, max_new_tokens=6))


def test_pre_llm_cut_equals_stock_fed_the_kept_tokens(q35):
    """A pre_llm cut leaves every layer, recurrent or not, the kept sequence only: the stock model fed those
    embeddings (original M-RoPE positions) gives the same logits and greedy tokens."""
    sample = [vtprune.Sample("what is left of the blue square?", [make_image(112, 84, 1)])]
    m = vtprune.pruner("random", keep=0.4, seed=1)
    batch = q35.adapter.encode(sample)
    st = prefill(q35.adapter, batch, m, all_logits=True)
    vis = batch.visual_mask[0]
    keep_v = torch.zeros(int(vis.sum()), dtype=torch.bool)
    keep_v[st.kept_visual[0]] = True
    vid = (vis.long().cumsum(0) - 1).clamp(min=0)
    P = torch.nonzero(~vis | keep_v[vid]).flatten()
    emb = q35.adapter.embed(batch)
    E, pos = emb.embeds[:, P], q35.adapter.forward_position_ids(emb.positions[:, :, P])
    ones = torch.ones(1, len(P), dtype=torch.long)
    with torch.no_grad():
        ref = q35.model(inputs_embeds=E, attention_mask=ones, position_ids=pos).logits
    torch.testing.assert_close(st.logits, ref, rtol=1e-4, atol=1e-5)
    ref_tokens = q35.model.generate(inputs_embeds=E, attention_mask=ones, position_ids=pos, max_new_tokens=5,
                                    do_sample=False)
    assert torch.equal(decode(q35.adapter, prefill(q35.adapter, batch, m), q35.generation_config(max_new_tokens=5)),
                       ref_tokens)


@pytest.mark.parametrize("method", [("random", 0.3), ("divprune", 0.25), ("uniform", 0.5)])
def test_batch_equals_singles_and_kept_counts(q35, method):
    m = vtprune.pruner(method[0], keep=method[1])
    samples = SAMPLES()
    batched = q35.generate(samples, m, max_new_tokens=5)
    singles = [q35.generate([s], m, max_new_tokens=5)[0] for s in samples]
    assert [a.tokens for a in batched] == [a.tokens for a in singles]
    for a in batched:
        assert a.kept_tokens == max(1, math.floor(method[1] * a.visual_tokens + 0.5))


def test_vit_site_keep_all_and_stts_on_video(q35):
    from tests.methods.stts.helpers import FixedVit
    from vtprune.methods.stts import STTS

    video = [vtprune.Sample("what moved?", video=[make_image(64, 64, i) for i in range(8)])]
    ours = decode(q35.adapter, prefill(q35.adapter, q35.adapter.encode(video), FixedVit(block=1)),
                  q35.generation_config(max_new_tokens=5))
    assert torch.equal(ours, stock_generate(q35, video, max_new_tokens=5))
    [a] = q35.generate(video, STTS.untrained(q35, keep=0.5), max_new_tokens=3)
    assert a.visual_tokens == 16 and a.kept_tokens == 8


@pytest.mark.parametrize("name", ["fastv", "pdrop"])
def test_cuts_inside_the_llm_are_refused_with_the_reason(q35, name):
    with pytest.raises(UnsupportedModelError, match="recurrent state has already absorbed every token"):
        q35.generate(SAMPLES()[:1], vtprune.pruner(name, keep=0.25), max_new_tokens=1)
    with pytest.raises(UnsupportedModelError, match="'llm' site"):
        q35.generate(SAMPLES()[:1], vtprune.pruner("random", keep=0.25, layer=1), max_new_tokens=1)


@pytest.mark.parametrize("name", ["one image", "two images", "system", "second turn", "text only"])
def test_prompt_ids_and_keep_all_equal_hf_processor(q35, monkeypatch, name):
    """Qwen3.5 is not in the shared fixture set: its prompt ids (with the template it carries, Qwen3-VL-Instruct's)
    equal HF's processor's (``Qwen3VLProcessor``, as AutoProcessor maps ``qwen3_5``), and keep-all greedy equals
    ``model.generate`` on that processor's output."""
    from tests.adapters.hf import hf_processor
    from tests.adapters.test_templates import CONVERSATIONS

    s = CONVERSATIONS[name]
    proc = hf_processor(q35, monkeypatch)
    ref = proc(text=[proc.apply_chat_template(s.messages(), add_generation_prompt=True)], images=s.images or None,
               return_tensors="pt")
    assert q35.adapter.encode([s]).input_ids.tolist() == ref["input_ids"].tolist()
    out = q35.model.generate(**ref, do_sample=False, max_new_tokens=5)[0, ref["input_ids"].shape[1]:].tolist()
    assert q35.generate([s], do_sample=False, max_new_tokens=5)[0].tokens == out
