"""Shared test helpers for the training-free baselines: hand-built contexts and the batch-invariance check."""

from __future__ import annotations

from typing import Any

import torch

import vtprune
from vtprune.methods.base import Context, Pruner, Stage
from vtprune.runtime.executor import prefill
from vtprune.runtime.generation import decode


def make_ctx(visual: list[torch.Tensor], text: list[torch.Tensor] | None = None, *, stage: Stage = Stage("pre_llm"),
             num_layers: int = 4, **extra: Any) -> Context:
    """A left-padded batch whose sample b is ``visual[b]`` ``[n_b, D]`` followed by ``text[b]`` ``[m_b, D]``.

    ``extra`` fills the optional fields (``attention``, ``keys``, ``vision``); their sequence axis follows this layout:
    sample b's tokens sit at positions ``L - n_b - m_b ...`` (visual first, then text).
    """
    B, D = len(visual), visual[0].shape[1]
    text = text if text is not None else [torch.zeros(1, D) for _ in visual]
    L = max(v.shape[0] + t.shape[0] for v, t in zip(visual, text))
    Nv = max(v.shape[0] for v in visual)
    hidden = torch.zeros(B, L, D)
    mask = torch.zeros(B, L, dtype=torch.long)
    text_mask = torch.zeros(B, L, dtype=torch.bool)
    index = torch.zeros(B, Nv, dtype=torch.long)
    valid = torch.zeros(B, Nv, dtype=torch.bool)
    for b, (v, t) in enumerate(zip(visual, text)):
        start = L - v.shape[0] - t.shape[0]
        hidden[b, start:] = torch.cat([v, t]).float()
        mask[b, start:] = 1
        index[b, : v.shape[0]] = torch.arange(start, start + v.shape[0])
        valid[b, : v.shape[0]] = True
        text_mask[b, start + v.shape[0] :] = True
    ids = torch.arange(Nv).expand(B, Nv).masked_fill(~valid, 0)
    return Context(
        stage=stage, hidden=hidden, attention_mask=mask, visual_index=index, visual_valid=valid, visual_ids=ids,
        coords=torch.zeros(B, Nv, 4, dtype=torch.long), grids=[[(1, 1, v.shape[0])] for v in visual],
        visual_total=torch.tensor([v.shape[0] for v in visual]), text_mask=text_mask, num_layers=num_layers, **extra,
    )


def kept(mask: torch.Tensor, b: int = 0) -> set[int]:
    return set(torch.nonzero(mask[b]).flatten().tolist())


def run(vlm: vtprune.VLM, samples: list[vtprune.Sample], method: Pruner | None, n: int = 4):
    """Prefill + greedy decode; returns the prefill state and the tokens ``[B, T]``."""
    st = prefill(vlm.adapter, vlm.adapter.encode(samples), method)
    return st, decode(vlm.adapter, st, vlm.generation_config(max_new_tokens=n))


def assert_batch_invariant(vlm: vtprune.VLM, samples: list[vtprune.Sample], method: Pruner, n: int = 4) -> None:
    """A batch equals its samples run one at a time: same kept visual tokens, same greedy tokens; and reruns agree."""
    st, toks = run(vlm, samples, method, n)
    st2, toks2 = run(vlm, samples, method, n)
    assert torch.equal(toks, toks2) and all(torch.equal(a, b) for a, b in zip(st.kept_visual, st2.kept_visual))
    for b, s in enumerate(samples):
        st1, t1 = run(vlm, [s], method, n)
        assert torch.equal(st1.kept_visual[0], st.kept_visual[b]), f"sample {b}: kept set differs in a batch"
        assert torch.equal(t1[0], toks[b, : t1.shape[1]]), f"sample {b}: greedy tokens differ in a batch"
