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


def video_evidence_tokens(evidence: list[Any], total_frames: int, frame_size: tuple[int, int], thw: torch.Tensor,
                          grid: tuple[int, int, int], num_frames: int) -> torch.Tensor:
    """``[N]`` bool: the visual tokens of one video that cover an evidence box in its frame.

    ``evidence`` is ``[(frame, box), ...]`` with frames counted in the stored video of ``total_frames``; the model
    was given ``num_frames`` of them (the loader's :func:`~vtprune.data.video.sample_indices`), in temporal patches
    of ``num_frames // grid[0]``; an evidence frame counts in the patch of the nearest given frame (the later one
    on a tie). ``thw`` is ``[N, 3]`` (temporal patch, row, column); ``frame_size`` (width, height)."""
    from vtprune.data.video import sample_indices

    given = sample_indices(total_frames, num_frames)  # every frame when num_frames == total_frames
    per = max(1, num_frames // grid[0])
    out = torch.zeros(thw.shape[0], dtype=torch.bool)
    for frame, box in evidence:
        # ties go to the later frame: events start on even frames, so the frame after shows the new state
        nearest = min(range(len(given)), key=lambda i: (abs(given[i] - frame), -i))
        m = thw[:, 0] == min(nearest // per, grid[0] - 1)
        out[m] |= evidence_tokens([box], frame_size, thw[m, 1:], grid[1:])
    return out


def batch_evidence(turn_boxes: list[list[list[Any] | None]], samples: list[Any], labels: list[torch.Tensor],
                   visual_mask: torch.Tensor, coords: list[torch.Tensor], grids: list[list[tuple[int, int, int]]],
                   total_frames: list[int | None] | None = None) -> tuple[torch.Tensor, torch.Tensor] | None:
    """Query positions ``[B, Q]`` (-1: none) and their evidence keys ``[B, Q, L]`` over a left-padded batch.

    Args:
        turn_boxes: per sample, the evidence of each reply in order (``None``: no evidence known): boxes for an
            image, ``(frame, box)`` pairs for a video (see :func:`video_evidence_tokens`).
        labels: per sample ``[L]`` labels marking every reply span in the same order (answer and question turns).
        total_frames: per sample, how many frames its stored video has (the evidence's frame numbering); videos
            without it get no evidence.
    Single-image and video samples get evidence; multi-image samples none.
    """
    B, L = visual_mask.shape
    total_frames = total_frames or [None] * B
    rows: list[list[tuple[int, torch.Tensor]]] = []
    for b in range(B):
        s = samples[b]
        got: list[tuple[int, torch.Tensor]] = []
        image = len(s.images) == 1 and s.video is None
        video = not s.images and s.video is not None and total_frames[b]
        if image or video:
            queries = reply_queries(labels[b])
            pos = visual_mask[b].nonzero().squeeze(1)
            _, gh, gw = grids[b][0]
            for q, boxes in zip(queries, turn_boxes[b]):
                if not boxes:
                    continue
                if image:
                    ev = evidence_tokens(boxes, s.images[0].size, coords[b][:, 2:4], (gh, gw))
                else:
                    ev = video_evidence_tokens(boxes, int(total_frames[b]), s.video[0].size, coords[b][:, 1:4],
                                               grids[b][0], len(s.video))
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
