"""The STTS scorer: a small text-free module scoring each LLM-token unit of a video from ViT features.

Per unit (the ``m`` patches of one merge group): multi-head attention pooling with the patches' mean as the query,
concatenation with the same unit's pooled feature one temporal step earlier (zeros for the first step), a
3-layer MLP with SiLU, and a sigmoid. High = important / novel.
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
        self.mlp = nn.Sequential(nn.Linear(2 * D, Hd), nn.SiLU(), nn.Linear(Hd, Hd), nn.SiLU(), nn.Linear(Hd, 1))

    def forward(self, units: torch.Tensor) -> torch.Tensor:
        p = self.pool(self.norm(units))  # [T, S, D]
        prev = torch.cat([torch.zeros_like(p[:1]), p[:-1]], dim=0)  # same unit one step earlier
        return torch.sigmoid(self.mlp(torch.cat([p, prev], dim=-1)).squeeze(-1))  # [T, S]
