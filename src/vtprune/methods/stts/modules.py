"""The STTS scorer: a small text-free module scoring each LLM-token unit of a video from ViT features.

Per unit (the ``m`` patches of one merge group): multi-head attention pooling with the patches' mean as the query,
concatenation with the same unit's pooled feature one temporal step earlier (zeros for the first step), a
3-layer MLP with SiLU, and a sigmoid. High = important / novel. Optionally (``similarity_input``, not in STTS) the
MLP also reads the unit's change from the previous step.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from vtprune.methods.stts.config import STTSConfig


class AttentionPool(nn.Module):
    """Multi-head attention pooling of ``m`` vectors into one; the query is their mean."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.q, self.k, self.v, self.o = (nn.Linear(dim, dim) for _ in range(4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` ``[..., m, D]`` -> ``[..., D]``."""
        *lead, m, D = x.shape
        x = x.reshape(-1, m, D)  # [N, m, D]
        N, H = x.shape[0], self.heads
        q = self.q(x.mean(dim=1, keepdim=True)).view(N, 1, H, D // H).transpose(1, 2)  # [N, H, 1, dh]
        k = self.k(x).view(N, m, H, D // H).transpose(1, 2)  # [N, H, m, dh]
        v = self.v(x).view(N, m, H, D // H).transpose(1, 2)
        out = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(N, D)  # [N, D]
        return self.o(out).view(*lead, D)


class STTSScorer(nn.Module):
    """Scores ``[T, S]`` in (0, 1) for a video's units ``[T, S, m, Dv]`` (T temporal steps, S units per step)."""

    def __init__(self, config: STTSConfig) -> None:
        super().__init__()
        self.config = config
        D, Hd = config.vision_dim, config.mlp_hidden
        self.norm = nn.LayerNorm(D) if config.input_norm else nn.Identity()
        self.pool = AttentionPool(D, config.heads)
        extra = 1 if config.similarity_input else 0
        self.mlp = nn.Sequential(nn.Linear(2 * D + extra, Hd), nn.SiLU(), nn.Linear(Hd, Hd), nn.SiLU(),
                                 nn.Linear(Hd, 1))

    def forward(self, units: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.logits(units))

    def logits(self, units: torch.Tensor) -> torch.Tensor:
        """The scores before the sigmoid, ``[T, S]``."""
        p = self.pool(self.norm(units))  # [T, S, D]
        prev = torch.cat([torch.zeros_like(p[:1]), p[:-1]], dim=0)  # same unit one step earlier
        feats = [p, prev]
        if self.config.similarity_input:
            feats.append(unit_change(units).to(p.dtype).unsqueeze(-1))
        return self.mlp(torch.cat(feats, dim=-1)).squeeze(-1)  # [T, S]


def unit_change(units: torch.Tensor) -> torch.Tensor:
    """``[T, S]``: ``1 - cos`` between each unit's patches (flattened) and the same unit's one step earlier; 1 for the
    first step (nothing earlier to repeat)."""
    flat = units.float().flatten(2)  # [T, S, m*D]
    change = 1 - F.cosine_similarity(flat[1:], flat[:-1], dim=-1)
    return torch.cat([torch.ones_like(flat[:1, :, 0]), change], dim=0)
