"""VLM.score: the continuation's log-likelihood after a pruned prefill; keep-all equals the stock model's."""

from __future__ import annotations

import torch

import vtprune
from tests.conftest import make_image


def stock_scores(vlm: vtprune.VLM, samples: list[vtprune.Sample], conts: list[str]) -> list[tuple[float, bool]]:
    """Sum of the stock forward's log-probabilities over the continuation tokens, one sample at a time."""
    out = []
    for s, c in zip(samples, conts):
        batch = vlm.adapter.encode([s])
        cont = torch.tensor([vlm.tokenizer(c, add_special_tokens=False).input_ids])
        ids = torch.cat([batch.input_ids, cont], 1)
        inputs = dict(batch.model_inputs)
        if "mm_token_type_ids" in inputs:
            text = torch.zeros_like(cont, dtype=torch.int)
            inputs["mm_token_type_ids"] = torch.cat([inputs["mm_token_type_ids"], text], 1)
        with torch.no_grad():
            logits = vlm.model(input_ids=ids, attention_mask=torch.ones_like(ids), **inputs).logits.float()
        n = cont.shape[1]
        pred = logits[0, -n - 1 : -1]
        lp = torch.log_softmax(pred, -1).gather(-1, cont[0, :, None]).sum()
        out.append((float(lp), bool((pred.argmax(-1) == cont[0]).all())))
    return out


def test_keep_all_score_equals_stock_and_batches(vlm):
    samples = [vtprune.Sample("which colour?", [make_image(84, 56, 1)]),
               vtprune.Sample("what is drawn here", [make_image(56, 112, 2)]),
               vtprune.Sample("name it", [make_image(56, 56, 3)])]
    conts = [" red", " a small blue square on the left", "B"]
    got = vlm.score(samples, conts, "none")
    want = stock_scores(vlm, samples, conts)
    for g, (lp, greedy) in zip(got, want):
        assert abs(g.logprob - lp) < 1e-3 * max(1.0, abs(lp)) and g.greedy == greedy and g.retention == 1.0
    one = [vlm.score([s], [c], "none")[0].logprob for s, c in zip(samples, conts)]
    assert torch.allclose(torch.tensor(one), torch.tensor([g.logprob for g in got]), atol=1e-3)


def test_pruned_score_uses_the_pruned_prompt(vlms):
    vlm = vlms["qwen2_5_vl"]
    s, c = vtprune.Sample("which colour?", [make_image(112, 112, 4)]), " red square"
    full = vlm.score([s], [c], "none")[0]
    cut = vlm.score([s], [c], vtprune.pruner("random", keep=0.25, layer=1))[0]
    assert cut.kept_tokens == round(0.25 * cut.visual_tokens) and cut.logprob != full.logprob
    batched = vlm.score([s, s], [c, " no"], vtprune.pruner("random", keep=0.25, layer=1))[0]
    assert abs(batched.logprob - cut.logprob) < 1e-3
