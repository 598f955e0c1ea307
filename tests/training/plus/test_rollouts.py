"""Rollouts and log-probabilities under pruning: the pruned model samples, recomputation replays its cut exactly,
the adapter-disabled reference is the base model, sampling is reproducible by seed."""

from __future__ import annotations

import pytest
import torch

from tests.conftest import make_image
from tests.methods.glimpse.helpers import small_pruner
from vtprune.adapters import Sample
from vtprune.runtime.executor import prefill
from vtprune.training.plus import (add_lora, completion_logprobs, completion_mask, llm_linear_names, rollout, row_seed,
                                   step_indices)


@pytest.fixture(scope="module")
def setup(vlms):
    vlm = vlms["qwen2_5_vl"]
    m = small_pruner(vlm, threshold=0.5)
    samples = [Sample("what is left of the square?", [make_image(112, 84, 1)]),
               Sample("count", [make_image(140, 112, 2)])]
    return vlm, m, samples


def _incremental_logprobs(vlm, method, samples, group, tokens):
    """Log-probabilities of ``tokens`` the way decoding sees them: the method's own pruned prefill, then one
    stock forward per token on the pruned cache."""
    ad = vlm.adapter
    rows = [s for s in samples for _ in range(group)]
    with torch.no_grad():
        st = prefill(ad, ad.encode(rows), method)
        mask, pos, logits = st.attention_mask, st.positions[..., -1:], st.logits
        out = []
        for t in range(tokens.shape[1]):
            out.append(torch.log_softmax(logits, -1).gather(1, tokens[:, t : t + 1]))
            mask = torch.cat([mask, mask.new_ones(mask.shape[0], 1)], 1)
            pos = pos + 1
            o = ad.model(input_ids=tokens[:, t : t + 1], attention_mask=mask, position_ids=ad.forward_position_ids(pos),
                         past_key_values=st.cache, use_cache=True)
            logits = o.logits[:, -1].float()
    return torch.cat(out, 1)


def test_rollouts_prune_and_replay_the_same_cut(setup):
    vlm, m, samples = setup
    seeds = [row_seed(0, 0, j) for j in range(4)]
    ro = rollout(vlm, m, samples, 2, 1.0, 5, seeds)
    assert ro.tokens.shape[0] == 4 and all(r < 1.0 for r in ro.retention)  # the pruner cut in every row
    assert ro.retention[0] == ro.retention[1] and ro.retention[2] == ro.retention[3]  # a group shares its prompt
    got = completion_logprobs(vlm, ro, 1.0, grad=False)
    want = _incremental_logprobs(vlm, m, samples, 2, ro.tokens) * ro.mask
    torch.testing.assert_close(got, want, atol=2e-4, rtol=1e-4)
    unpruned = _incremental_logprobs(vlm, None, samples, 2, ro.tokens) * ro.mask
    assert (got - unpruned).abs().max() > 1e-3  # pruning changes what the model predicts: the replay is not a no-op


def test_rollouts_reproducible_by_seed_and_independent_of_the_batch(setup):
    vlm, m, samples = setup
    seeds = [row_seed(3, 5, j) for j in range(4)]
    a = rollout(vlm, m, samples, 2, 1.0, 5, seeds)
    b = rollout(vlm, m, samples, 2, 1.0, 5, seeds)
    assert torch.equal(a.tokens, b.tokens)
    c = rollout(vlm, m, samples, 2, 1.0, 5, [row_seed(4, 5, j) for j in range(4)])
    assert not torch.equal(a.tokens, c.tokens)
    # the second prompt's completions alone (as another process would draw them) are the same draws
    d = rollout(vlm, m, samples[1:], 2, 1.0, 5, seeds[2:])
    n = min(d.tokens.shape[1], a.tokens.shape[1])
    assert torch.equal(d.tokens[:, :n] * d.mask[:, :n], a.tokens[2:, :n] * a.mask[2:, :n])


def test_completion_mask_and_data_order():
    eos = [9]
    t = torch.tensor([[1, 9, 0, 0], [1, 2, 3, 4], [9, 0, 0, 0]])
    assert completion_mask(t, eos).tolist() == [[True, True, False, False], [True] * 4, [True, False, False, False]]
    a = step_indices(10, 0, 4, 0) + step_indices(10, 1, 4, 0)
    assert len(set(a)) == 8  # within an epoch no repeats
    assert sorted(step_indices(10, 0, 5, 1) + step_indices(10, 1, 5, 1)) == list(range(10))
    assert step_indices(10, 3, 4, 0) == step_indices(10, 3, 4, 0)


def test_reference_with_the_adapter_disabled_is_the_base_model(vlms):
    import vtprune

    vlm = vtprune.load("random:qwen2_5_vl")  # a private copy: LoRA is injected into it
    m = small_pruner(vlm, threshold=0.5)
    samples = [Sample("what is left of the square?", [make_image(112, 84, 1)])]
    ro = rollout(vlm, m, samples, 2, 1.0, 4, [1, 2])
    base = completion_logprobs(vlm, ro, 1.0, grad=False)
    names = llm_linear_names(vlm)
    assert names and all(".visual." not in n and "embed" not in n and "lm_head" not in n for n in names)
    assert len(names) == 7 * vlm.num_layers  # q k v o gate up down in every decoder layer
    pm = add_lora(vlm, 4, 8, 0.0)
    with torch.no_grad():
        for n, p in pm.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.5)  # a trained-looking adapter (B starts at 0)
    tuned = completion_logprobs(vlm, ro, 1.0, grad=True)
    assert tuned.requires_grad and (tuned.detach() - base).abs().max() > 1e-3
    with pm.disable_adapter():
        ref = completion_logprobs(vlm, ro, 1.0, grad=False)
    torch.testing.assert_close(ref, base, atol=1e-5, rtol=1e-5)
    tuned.sum().backward()
    grads = [p.grad for n, p in pm.named_parameters() if p.requires_grad]
    assert grads and all(g is not None for g in grads) and any(float(g.abs().sum()) > 0 for g in grads)
    assert all(p.grad is None for n, p in pm.named_parameters() if not p.requires_grad)  # the base stays frozen


def test_a_subset_of_groups_replays_the_same_logprobs(setup):
    vlm, m, samples = setup
    ro = rollout(vlm, m, samples, 2, 1.0, 5, [row_seed(2, 0, j) for j in range(4)])
    assert ro.batch.batch_size == 2 and ro.group == 2  # one prefill per prompt, shared by its group
    full = completion_logprobs(vlm, ro, 1.0, grad=False)
    sub = ro.select([1], vlm.adapter)  # the second prompt's group alone, encoded again
    assert sub.texts == ro.texts[2:] and sub.kept[0].equal(ro.kept[2])
    torch.testing.assert_close(completion_logprobs(vlm, sub, 1.0, grad=False), full[2:], atol=2e-5, rtol=1e-5)


def test_flat_groups_and_progress_bar_off_without_a_terminal():
    from vtprune.training.grpo import flat_groups, group_advantages
    from vtprune.training.runlog import ProgressBar, show_progress

    r = torch.tensor([1.0, 1.0, 0.0, 1.0, 0.0, 0.0])
    assert flat_groups(r, 2).tolist() == [True, False, True]
    assert group_advantages(r, 2)[[0, 1, 4, 5]].abs().max() == 0  # a flat group carries no policy gradient
    assert not show_progress(True)  # pytest's stderr is not a terminal
    assert not show_progress(False)
    bar = ProgressBar(3, 1, enabled=False)
    bar.advance()
    bar.close()
