"""How well STTS scorers rank a video set's units by change: the diagnostic behind BENCHMARKS.md's STTS notes.

For each scorer, on the first N videos of a set: the correlation and squared error between the scores and the
temporal target (1 - cos to the same unit one step earlier; steps after the first); the scores' range and the share
of them within 1e-4 of 0 or 1 (``saturated``, as train_meta.json reports it; a scorer stuck there has stopped
training); and at --keep, the share of the 10% most-changed units that are kept against the share of all units kept
(after the first step, which is always kept).

Usage: python scripts/stts_fit.py SCORER [SCORER ...] [--model M] [--data D] [--videos 24] [--frames 8] [--keep 0.3]
"""

from __future__ import annotations

import argparse
import json

import torch

import vtprune
from vtprune.methods.stts import STTS
from vtprune.methods.stts.method import select_units, temporal_targets
from vtprune.runtime import vision
from vtprune.training.common import CollatorRandom
from vtprune.training.stts import _CORE, _collator, _load_rows, saturated_share
from vtprune.adapters.base import EncodedBatch


def fit(vlm: vtprune.VLM, scorer: str, rows: list, keep: float, batch: int = 8) -> dict[str, float]:
    method = STTS.from_pretrained(scorer, keep=keep)
    seen: list = []
    select = method.select

    def spy(ctx):  # the encoder's hidden states at the scorer's block, and the videos' grids
        seen.append((ctx.hidden.detach(), list(ctx.items())))
        return select(ctx)

    method.select = spy  # type: ignore[method-assign]
    scores, targets, top_kept, all_kept = [], [], [], []
    collate = _collator(vlm.adapter, CollatorRandom(0))
    stage = vision.vit_stage(method.stages(vlm.adapter.num_layers))
    with torch.no_grad():
        for i in range(0, len(rows), batch):
            b = collate(rows[i:i + batch])
            enc = EncodedBatch(b["input_ids"], b["attention_mask"], {k: v for k, v in b.items() if k not in _CORE},
                               b["visual_mask"].bool(), [], [])
            seen.clear()
            vision.embed_with_vit(vlm.adapter, enc, method, stage)
            for hidden, items in seen:
                m, d = hidden.shape[-2:]
                for sl, (t, h, w) in items:
                    units = hidden[sl].view(t, h * w, m, d)
                    s = method.scorer(units)
                    target = temporal_targets(units).flatten()
                    kept = select_units(s, keep)[1:].flatten()
                    top = target >= target.quantile(0.9)
                    scores.append(s[1:].flatten())
                    targets.append(target)
                    top_kept.append(float(kept[top].float().mean()))
                    all_kept.append(float(kept.float().mean()))
    s, t = torch.cat(scores).float(), torch.cat(targets).float()
    return {"scorer": scorer, "videos": len(rows), "corr": round(float(torch.corrcoef(torch.stack([s, t]))[0, 1]), 3),
            "mse": round(float(((s - t) ** 2).mean()), 4), "target_var": round(float(t.var()), 4),
            "score_min": float(s.min()), "score_max": float(s.max()),
            "saturated": round(saturated_share(s), 3), "keep": keep,
            "top10_kept": round(sum(top_kept) / len(top_kept), 3), "all_kept": round(sum(all_kept) / len(all_kept), 3)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("scorers", nargs="+")
    ap.add_argument("--model", default="zoo:synth-video-qwen2_5_vl")
    ap.add_argument("--data", default="testbed:video-val")
    ap.add_argument("--videos", type=int, default=24)
    ap.add_argument("--frames", type=int, default=8)
    ap.add_argument("--keep", type=float, default=0.3)
    a = ap.parse_args()
    vlm = vtprune.load(a.model)
    rows = _load_rows([a.data], a.frames)[: a.videos]
    for scorer in a.scorers:
        print(json.dumps(fit(vlm, scorer, rows, a.keep)))


if __name__ == "__main__":
    main()
