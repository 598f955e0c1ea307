"""Supervised fine-tuning data path shared by the base-model and learned-pruner recipes.

:func:`encode_with_answers` turns samples + answers into one left-padded batch whose prompt part is exactly what
inference encodes (the adapter's own ``encode``), followed by the answer tokens and the end-of-turn token; labels
are -100 everywhere but on the answer. Position ids are the ones stock ``generate`` would use, so training and
inference see the same positions.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from vtprune.adapters.base import Adapter, Sample, left_pad


@dataclass
class SupervisedBatch:
    input_ids: torch.Tensor  # [B, L]
    attention_mask: torch.Tensor  # [B, L]
    labels: torch.Tensor  # [B, L], -100 outside the answer
    model_inputs: dict[str, Any]  # pixel values, grids, mm_token_type_ids (padded to L)
    visual_mask: torch.Tensor  # [B, L] bool
    prompt_lengths: list[int]
    followup_labels: torch.Tensor | None = None  # [B, L], -100 outside the follow-up turn's answer
    qa_labels: torch.Tensor | None = None  # [B, L], -100 outside the answers of the extra question turns
    coords: list[torch.Tensor] | None = None  # per sample [Nv, 4] (item, t, row, col) of its visual tokens
    grids: list[list[tuple[int, int, int]]] | None = None  # per sample the (t, h, w) token grid of each item

    def model_kwargs(self, adapter: Adapter, positions: torch.Tensor | None = None) -> dict[str, Any]:
        """Keyword arguments for the stock model forward (with labels); ``positions`` (``adapter.positions`` of
        this batch) when the caller has them already."""
        pos = adapter.positions(self.input_ids, self.attention_mask, self.model_inputs) if positions is None else positions
        return dict(
            input_ids=self.input_ids,
            attention_mask=self.attention_mask,
            position_ids=adapter.forward_position_ids(pos),
            labels=self.labels,
            **{k: v for k, v in self.model_inputs.items()},
        )


def answer_ids(adapter: Adapter, answer: str) -> list[int]:
    tok = adapter.tokenizer
    ids = list(tok(answer, add_special_tokens=False).input_ids)
    return ids + [int(tok.eos_token_id)]


def encode_with_answers(adapter: Adapter, samples: list[Sample], answers: list[str],
                        followups: list[tuple[str, str] | None] | None = None,
                        extra_qa: list[list[tuple[str, str]]] | None = None) -> SupervisedBatch:
    """Encode each sample alone with the adapter, append its answer, then left-pad the batch.

    ``followups`` optionally gives each sample a second, text-only turn ``(question, answer)`` after its answer
    (e.g. "Describe the image." -> the scene caption): it is labelled in ``followup_labels`` only, so the first
    answer's tokens and labels are exactly those of a one-turn batch (the causal model cannot see what follows).
    ``extra_qa`` gives each sample further text-only question turns, placed before the follow-up and labelled
    in ``qa_labels`` only.
    """
    rows, labels, types, visual, prompt_lens, extra, coords, grids, qa = [], [], [], [], [], [], [], [], []
    merged: dict[str, list[torch.Tensor]] = {}
    followups = followups or [None] * len(samples)
    extra_qa = extra_qa or [[] for _ in samples]
    for s, a, f, turns in zip(samples, answers, followups, extra_qa):
        enc = adapter.encode([s])
        prompt = enc.input_ids[0].tolist()
        coords.append(enc.coords[0])
        grids.append(enc.grids[0])
        ans = answer_ids(adapter, a)
        # the tail after the answer: extra question turns, then the follow-up; each reply token tagged by its turn
        tail: list[int] = []
        tags: list[str | None] = []
        for q, r, tag in [(q, r, "qa") for q, r in turns] + ([(f[0], f[1], "followup")] if f is not None else []):
            turn, reply = adapter.followup_ids(q), answer_ids(adapter, r)
            tail += turn + reply
            tags += [None] * len(turn) + [tag] * len(reply)
        rows.append(prompt + ans + tail)
        labels.append([-100] * len(prompt) + ans + [-100] * len(tail))
        head = [-100] * (len(prompt) + len(ans))
        extra.append(head + [t if g == "followup" else -100 for t, g in zip(tail, tags)])
        qa.append(head + [t if g == "qa" else -100 for t, g in zip(tail, tags)])
        ans = ans + tail  # the rest below pads the whole tail as text
        visual.append(enc.visual_mask[0].long().tolist() + [0] * len(ans))
        prompt_lens.append(len(prompt))
        for k, v in enc.model_inputs.items():
            if k == "mm_token_type_ids":
                types.append(v[0].tolist() + [0] * len(ans))
            else:
                merged.setdefault(k, []).append(v)
    input_ids, attention_mask = left_pad(rows, adapter.pad_token_id)
    lab, _ = left_pad(labels, -100)
    fol = left_pad(extra, -100)[0] if any(f is not None for f in followups) else None
    qal = left_pad(qa, -100)[0] if any(extra_qa) else None
    vis, _ = left_pad(visual, 0)
    model_inputs: dict[str, Any] = {k: torch.cat(v) for k, v in merged.items()}
    if types:
        tt, _ = left_pad(types, 0)
        model_inputs["mm_token_type_ids"] = tt.to(torch.int)
    return SupervisedBatch(input_ids, attention_mask, lab, model_inputs, vis.bool(), prompt_lens, fol, qal, coords,
                           grids)
