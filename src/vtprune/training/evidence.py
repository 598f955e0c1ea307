"""Evidence attention: teach a from-scratch LLM *where* to look, from the testbed's evidence boxes.

Trained on answers alone, a small LLM learns slowly to route a question to the one image region that answers it:
at initialisation the query of the position that predicts the answer spreads its attention over a hundred or more
visual keys, so the gradient that would sharpen it onto the evidence is diluted by as much. The testbed knows the
evidence of every question it asks (the builders' ``boxes``; the scene questions' boxes), so the zoo recipe adds,
for one head in a few layers, the negative log of the attention mass the answer-predicting position puts on the
evidence tokens, the softmax taken over the sample's visual keys only (where in the image it looks; how much it
looks at the image at all stays the model's choice). Only the supervised heads are constrained; the loss is
thrown away with the probe after training, and the shipped model is the stock HF class.

Scores are computed explicitly from the layer inputs (``hidden_states[l]``) with the layer's own projections and
rotary tables, as the runtime computes attention rows, so training keeps the sdpa kernel.
"""

from __future__ import annotations

from typing import Any

import torch

from vtprune.training.probe import TokenGrid


def evidence_tokens(boxes: list[Any], image_size: tuple[int, int], hw: torch.Tensor,
                    grid: tuple[int, int]) -> torch.Tensor:
    """``[N]`` bool: the visual tokens of one image that cover an evidence box.

    A token counts when its centre lies in a box; a box smaller than a token still marks the token that holds
    its centre. Arguments as :class:`vtprune.training.probe.TokenGrid`.
    """
    g = TokenGrid(image_size, hw, grid)
    out = torch.zeros(hw.shape[0], dtype=torch.bool)
    for box in boxes:
        out |= g.inside(box) | g.centre(box)
    return out


def reply_queries(labels: torch.Tensor) -> list[int]:
    """Positions that predict the first token of each labelled span of ``labels`` ``[L]`` (-100 outside)."""
    on = labels != -100
    starts = (on[1:] & ~on[:-1]).nonzero().squeeze(1) + 1  # first token of each span (never position 0)
    return [int(p) - 1 for p in starts]


def batch_evidence(turn_boxes: list[list[list[Any] | None]], samples: list[Any], labels: list[torch.Tensor],
                   visual_mask: torch.Tensor, coords: list[torch.Tensor], grids: list[list[tuple[int, int, int]]],
                   ) -> tuple[torch.Tensor, torch.Tensor] | None:
    """Query positions ``[B, Q]`` (-1: none) and their evidence keys ``[B, Q, L]`` over a left-padded batch.

    Args:
        turn_boxes: per sample, the evidence boxes of each reply in order (``None``: no evidence known).
        labels: per sample ``[L]`` labels marking every reply span in the same order (answer and question turns).
    Only single-image samples get evidence (a video's evidence is a track over frames: not supervised here).
    """
    B, L = visual_mask.shape
    rows: list[list[tuple[int, torch.Tensor]]] = []
    for b in range(B):
        s = samples[b]
        got: list[tuple[int, torch.Tensor]] = []
        if len(s.images) == 1 and s.video is None:
            queries = reply_queries(labels[b])
            pos = visual_mask[b].nonzero().squeeze(1)
            _, gh, gw = grids[b][0]
            for q, boxes in zip(queries, turn_boxes[b]):
                if not boxes:
                    continue
                ev = evidence_tokens(boxes, s.images[0].size, coords[b][:, 2:4], (gh, gw))
                keys = torch.zeros(L, dtype=torch.bool)
                keys[pos[ev]] = True
                got.append((q, keys))
        rows.append(got)
    Q = max((len(r) for r in rows), default=0)
    if Q == 0:
        return None
    query = torch.full((B, Q), -1, dtype=torch.long)
    keys = torch.zeros(B, Q, L, dtype=torch.bool)
    for b, got in enumerate(rows):
        for j, (q, k) in enumerate(got):
            query[b, j], keys[b, j] = q, k
    return query, keys


def evidence_attention_loss(adapter: Any, hidden_states: tuple[torch.Tensor, ...], positions: torch.Tensor,
                            visual_mask: torch.Tensor, query: torch.Tensor, keys: torch.Tensor,
                            layers: tuple[int, ...], heads: int = 1) -> tuple[torch.Tensor, float]:
    """Mean over supervised (query, layer, head) of -log(attention mass on the evidence keys among visual keys).

    ``hidden_states`` as the stock forward returns them with ``output_hidden_states`` (``[l]`` is layer ``l``'s
    input); ``positions`` ``[P, B, L]`` as :meth:`~vtprune.adapters.base.Adapter.positions`; the first ``heads``
    query heads of each layer in ``layers`` are supervised. Also returns the mean evidence mass (a float, for the
    log): how much of its look at the image the supervised heads spend on the evidence.
    """
    valid = query >= 0  # [B, Q]
    B, Q = query.shape
    qi = query.clamp(min=0)
    cos, sin = adapter.rope(hidden_states[0], positions)
    losses, masses = [], []
    for layer in layers:
        h = hidden_states[layer]
        rows = h.gather(1, qi[..., None].expand(B, Q, h.shape[-1]))
        pick = qi[..., None].expand(B, Q, cos.shape[-1])
        q = adapter.query_states(layer, rows, cos.gather(1, pick), sin.gather(1, pick))  # [B, H, Q, dh]
        k = adapter.key_states(layer, h, cos, sin)  # [B, Hkv, L, dh]
        group = q.shape[1] // k.shape[1]  # query heads per key head
        q, k = q[:, :heads], k[:, [i // group for i in range(heads)]]
        scale = getattr(adapter.layers[layer].self_attn, "scaling", q.shape[-1] ** -0.5)
        logits = (q.float() @ k.float().transpose(-1, -2)) * scale  # [B, h, Q, L]
        neg = torch.finfo(logits.dtype).min
        vis = logits.masked_fill(~visual_mask[:, None, None, :], neg)
        ev = logits.masked_fill(~keys[:, None, :, :], neg)
        log_mass = ev.logsumexp(-1) - vis.logsumexp(-1)  # [B, h, Q]
        m = valid[:, None, :].expand_as(log_mass)
        losses.append(-log_mass[m])
        masses.append(log_mass[m].detach().exp())
    loss = torch.cat(losses).mean()
    return loss, float(torch.cat(masses).mean())
