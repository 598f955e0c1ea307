"""``train stts``: a run stopped after step k and resumed equals the uninterrupted run (weights, optimizer state,
the batches after the stop); checkpoints hold the trainable weights only; gradient checkpointing recomputes the
layers without changing the loss or its gradients."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

import vtprune
from tests.methods.stts.helpers import load_small, video
from vtprune.methods.stts import STTS, STTSConfig
from vtprune.training.common import checkpoint_llm_layers
from vtprune.training.stts import stts_loss, train_stts
from vtprune.training.supervised import encode_with_answers


def _losses(out):
    return {r["step"]: r["loss"] for r in map(json.loads, (out / "log.jsonl").read_text().splitlines()) if "loss" in r}


def test_stopped_and_resumed_equals_the_uninterrupted_run(tmp_path):
    rows = [(vtprune.Sample(f"what moves {i}?", video=video(4, 84, 56, i)), ["bar"]) for i in range(6)]
    kw = dict(model="random:qwen2_5_vl", rows=rows, steps=4, batch_size=2, lr=1e-3, tune="lora",
              keep_range=(0.3, 0.7), seed=3, save_steps=2)
    full = train_stts(out=tmp_path / "full", **kw)
    part = train_stts(out=tmp_path / "part", stop_after=3, **kw)  # killed after step 3 (last checkpoint: 2)
    assert (part["steps_done"], part["finished"], full["finished"]) == (3, False, True)
    rest = train_stts(out=tmp_path / "part", resume=True, **kw)
    assert rest["steps_done"] == 4 and rest["finished"]
    a, b = tmp_path / "full/checkpoints/checkpoint-4", tmp_path / "part/checkpoints/checkpoint-4"
    wa, wb = load_file(str(a / "model.safetensors")), load_file(str(b / "model.safetensors"))
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)
    # only what trains is checkpointed: the scorer and the LoRA matrices, not the frozen base model
    assert all(k.startswith("scorer.") or "lora_" in k for k in wa) and any("lora_" in k for k in wa)
    oa, ob = (torch.load(p / "optimizer.pt", weights_only=True)["state"] for p in (a, b))
    assert oa.keys() == ob.keys() and all(torch.equal(oa[i][k], ob[i][k]) for i in oa for k in oa[i])
    # the batches after the checkpoint (and the keep drawn for them) are the uninterrupted run's: same losses
    la, lb = _losses(tmp_path / "full"), _losses(tmp_path / "part")
    assert la[3] == lb[3] and la[4] == lb[4] and la[1] == lb[1]
    sa, sb = STTS.from_pretrained(tmp_path / "full"), STTS.from_pretrained(tmp_path / "part")
    assert all(torch.equal(x, y) for x, y in zip(sa.scorer.state_dict().values(), sb.scorer.state_dict().values()))


def test_gradient_checkpointing_recomputes_without_changing_loss_or_gradients():
    vlm = load_small()
    samples = [vtprune.Sample("what moves?", video=video(6, 112, 84, 1)),
               vtprune.Sample("which side?", video=video(4, 84, 84, 2))]
    batch = encode_with_answers(vlm.adapter, samples, ["the bar", "left"])
    m = STTS(keep=0.5)
    m.init_scorer(STTSConfig.for_vision_config(vlm.model.config.vision_config))
    vlm.model.train()  # as the Trainer sets it; checkpointing acts in training mode only
    calls = []
    mlp = vlm.adapter.layers[0].mlp
    stock = mlp.forward  # counted by wrapping forward: module hooks do not fire in a checkpoint's recompute
    mlp.forward = lambda *a, **k: (calls.append(1), stock(*a, **k))[1]

    def run():
        calls.clear()
        loss, _ = stts_loss(vlm.adapter, m, batch)
        loss.backward()
        grads = [p.grad.clone() for p in m.scorer.parameters()]
        m.scorer.zero_grad(set_to_none=True)
        return loss.detach(), grads, len(calls)

    plain = run()
    assert checkpoint_llm_layers(vlm.adapter) == vlm.num_layers
    ckpt = run()
    del mlp.forward
    assert (plain[2], ckpt[2]) == (1, 2)  # the layer ran again in the backward pass
    torch.testing.assert_close(ckpt[0], plain[0])
    for g, h in zip(ckpt[1], plain[1]):
        torch.testing.assert_close(g, h, atol=1e-6, rtol=1e-5)
