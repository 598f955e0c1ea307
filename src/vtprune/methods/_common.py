"""Shared pieces of the training-free baselines: layer defaults, score gathering, greedy selectors.

Every selector here works on one sample's tokens (no batch dimension), so a sample's decision can never depend on
the rest of the batch or on padding. Ties are broken towards the lower token index throughout.
"""

from __future__ import annotations

import torch

from vtprune.methods.base import Context, keep_counts

_EPS = 1e-6


def default_cut_layer(num_layers: int, k_at_32: int = 2) -> int:
    """The stage layer (0-based, tokens cut after it) for methods whose paper prunes "after layer K" on a 32-layer
    LLM: ``K = max(1, round_half_up(k_at_32 * L / 32))`` and the cut follows layer ``K - 1``, so layers ``K..L-1``
    see the pruned set (K=2 for 28-40-layer models, 1 for shallow test models)."""
    K = max(1, int(k_at_32 * num_layers / 32 + 0.5))
    return min(K, num_layers) - 1


def unit(x: torch.Tensor) -> torch.Tensor:
    """Rows scaled to unit L2 norm (float32); zero rows stay zero."""
    x = x.float()
    return x / x.norm(dim=-1, keepdim=True).clamp_min(_EPS)


def last_query_visual_attention(ctx: Context) -> torch.Tensor:
    """``[B, Nv]``: the last prompt token's softmaxed attention on each current visual token, averaged over heads
    (FastV / PDrop score). Zero on padding entries."""
    if ctx.attention is None:
        raise RuntimeError("the runtime did not provide last_query_attention")
    probs = torch.softmax(ctx.attention.float(), dim=-1).mean(dim=1)  # [B, L]
    return probs.gather(1, ctx.visual_index).masked_fill(~ctx.visual_valid, 0.0)


def vision_scores(ctx: Context) -> tuple[torch.Tensor, torch.Tensor]:
    """Vision-encoder attention ``[B, Nv]`` and keys ``[B, Nv, Dk]`` of the current visual tokens (see
    :mod:`vtprune.adapters.vit_attention`), gathered by their original ids."""
    att, keys = ctx.vision.get("token_attention"), ctx.vision.get("token_keys")
    if att is None or keys is None:
        raise RuntimeError("the runtime did not provide vision_attention")
    ids = ctx.visual_ids
    att = att.gather(1, ids).masked_fill(~ctx.visual_valid, 0.0)
    keys = keys.gather(1, ids.unsqueeze(-1).expand(-1, -1, keys.shape[-1]))
    return att, keys


def instruction_rows(ctx: Context, b: int) -> torch.Tensor:
    """Positions of sample ``b``'s instruction: prompt text after its last visual token (else all prompt text)."""
    text = ctx.text_mask[b]
    n = int(ctx.visual_counts[b])
    after = torch.arange(text.shape[0], device=text.device) > ctx.visual_index[b, :n].max()
    rows = torch.nonzero(text & after).flatten()
    return rows if rows.numel() else torch.nonzero(text).flatten()


def top_indices(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Indices of the ``k`` largest of a 1-D ``scores`` (ties: lower index first), in rank order."""
    return torch.sort(scores.float(), descending=True, stable=True).indices[:k]


def budget_groups(ctx: Context, b: int, ratio: float, per_frame: bool) -> list[tuple[torch.Tensor, int]]:
    """How sample ``b``'s budget is split: a list of (positions among its first ``n`` current visual tokens, how
    many of them to keep). One group of all its tokens (``keep_counts`` of the sample), or with ``per_frame`` one
    group per temporal step of each item (image or video frame), each keeping ``round(ratio * h * w)`` of that
    step's original ``h * w`` tokens, at least 1 where any remain: an image method applied frame by frame."""
    n = int(ctx.visual_counts[b])
    dev = ctx.visual_ids.device
    if not per_frame:
        k = int(keep_counts(ratio, ctx.visual_total[b : b + 1], ctx.visual_counts[b : b + 1])[0])
        return [(torch.arange(n, device=dev), k)]
    coords = ctx.coords[b, :n]
    out = []
    for (item, t) in torch.unique(coords[:, :2], dim=0).tolist():
        idx = torch.nonzero((coords[:, 0] == item) & (coords[:, 1] == t)).flatten()
        _, h, w = ctx.grids[b][item]
        k = int(keep_counts(ratio, torch.tensor([h * w]), torch.tensor([len(idx)]))[0])
        out.append((idx, k))
    return out


def rows_to_mask(picks: list[torch.Tensor], shape: torch.Size | tuple[int, int], device: torch.device) -> torch.Tensor:
    """``[B, Nv]`` bool with ``picks[b]`` (1-D long indices) set in row ``b``."""
    mask = torch.zeros(shape, dtype=torch.bool, device=device)
    for b, idx in enumerate(picks):
        if idx.numel():
            mask[b, idx.to(device)] = True
    return mask


def farthest_point(x: torch.Tensor, k: int, chunk: int = 2048) -> torch.Tensor:
    """Greedy max-min diversity (DivPrune) on cosine distance ``1 - cos`` between the rows of ``x`` ``[n, D]``.

    The first pick is the token whose nearest other token is farthest; each next pick maximises its distance to the
    nearest already-picked token. Memory is ``O(chunk * n)``. Returns ``[min(k, n)]`` indices in pick order.
    """
    n = x.shape[0]
    k = min(k, n)
    if k <= 0:
        return torch.zeros(0, dtype=torch.long, device=x.device)
    xn = unit(x)
    if n == 1:
        return torch.zeros(1, dtype=torch.long, device=x.device)
    nearest = torch.empty(n, device=x.device)
    for s in range(0, n, chunk):  # distance of every token to its nearest other token
        d = 1.0 - xn[s : s + chunk] @ xn.T
        rows = torch.arange(d.shape[0], device=x.device)
        d[rows, rows + s] = float("inf")
        nearest[s : s + chunk] = d.min(dim=1).values
    picks = [int(torch.argmax(nearest))]
    mind = 1.0 - xn @ xn[picks[0]]
    mind[picks[0]] = float("-inf")
    for _ in range(1, k):
        j = int(torch.argmax(mind))
        picks.append(j)
        mind = torch.minimum(mind, 1.0 - xn @ xn[j])
        mind[picks] = float("-inf")
    return torch.tensor(picks, dtype=torch.long, device=x.device)


def dpp_greedy(kernel: torch.Tensor, k: int) -> torch.Tensor:
    """Fast greedy MAP inference for a DPP with PSD ``kernel`` ``[n, n]`` (Chen et al., NeurIPS'18): incremental
    Cholesky updates in float64, ``O(k n)`` memory beyond the kernel. Each step adds the item with the largest
    marginal gain ``d_j^2`` (the conditional variance given the picked set); once the kernel's rank is exhausted the
    remaining picks follow the residual gains (all ~0, so lower index first). Returns ``[min(k, n)]`` indices in
    pick order."""
    n = kernel.shape[0]
    k = min(k, n)
    cis = torch.zeros(k, n, dtype=torch.float64, device=kernel.device)
    d2 = torch.diagonal(kernel).double()  # residual gains; kernel rows are promoted one at a time
    picked = torch.zeros(n, dtype=torch.bool, device=kernel.device)
    picks: list[int] = []
    for i in range(k):
        j = int(torch.argmax(d2.masked_fill(picked, float("-inf"))))
        picks.append(j)
        picked[j] = True
        dj = float(d2[j])
        if dj > 1e-10:
            e = (kernel[j].double() - cis[:i, j] @ cis[:i]) / dj**0.5
            cis[i] = e
            d2 = (d2 - e * e).clamp_min(0.0)
    return torch.tensor(picks, dtype=torch.long, device=kernel.device)
