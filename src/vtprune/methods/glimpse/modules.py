"""The learned parts of GlimpsePrune: the deep glimpse token and the visual importance predictor (VIP).

Shapes: ``G`` groups (one image of one sample each), ``M`` max tokens of a group, ``H`` LLM heads, ``S`` VIP width,
``C`` conditioning width, ``Dv`` ViT width, ``D`` LLM width, ``E`` glimpse layers, ``n`` glimpse tokens.
Parameter names mirror the official ``new_modules_gp.pt`` layout (see :mod:`.official`) so the mapping stays a
small table: ``vip.*`` <- ``attn_fuser.*``, ``glimpse.embeddings`` <- ``learnable_embeddings``,
``glimpse.proj`` <- ``le_proj``, ``glimpse.norm`` <- ``le_norm``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from vtprune.methods.glimpse.config import GlimpseConfig


class RMSNorm(nn.Module):
    """RMSNorm as in Qwen2/Llama: normalise in fp32, scale by ``weight``, return the input dtype."""

    def __init__(self, dim: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = x.dtype
        x = x.float()
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x.to(dtype)


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


class Rope2D(nn.Module):
    """2-D rotary embedding over the (row, col) token grid, the Qwen2-VL vision RoPE layout.

    For head dim ``d``: ``d/4`` frequencies ``theta^(-4i/d)``; angles are ``row * f`` then ``col * f`` (``d/2``),
    repeated twice to ``d`` and applied as ``x * cos + rotate_half(x) * sin``. The dot product of two rotated
    vectors therefore depends only on their row and column offsets.
    """

    def __init__(self, head_dim: int, theta: float = 10000.0) -> None:
        super().__init__()
        dim = head_dim // 2
        inv_freq = 1.0 / (theta ** (torch.arange(0, dim, 2, dtype=torch.float) / dim))
        self.register_buffer("inv_freq", inv_freq, persistent=False)

    def forward(self, pos: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``pos`` ``[..., 2]`` (row, col) -> ``cos``, ``sin`` ``[..., head_dim]`` float32."""
        ang = pos.float().unsqueeze(-1) * self.inv_freq.float()  # [..., 2, d/4]
        ang = ang.flatten(-2)  # [..., d/2]: row angles then col angles
        emb = torch.cat((ang, ang), dim=-1)
        return emb.cos(), emb.sin()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """``x`` ``[..., G, heads, M, d]``; ``cos``/``sin`` ``[G, M, d]`` (:class:`Rope2D`'s tables)."""
    return apply_signed_rope(x, cos, signed_sin(sin))


def signed_sin(sin: torch.Tensor) -> torch.Tensor:
    """``sin`` with its first half negated: ``rotate_half(x) * sin == roll(x, d/2) * signed_sin(sin)`` exactly (a
    sign moved from one factor to the other), one op fewer per rotation."""
    half = sin.shape[-1] // 2
    return torch.cat((-sin[..., :half], sin[..., half:]), dim=-1)


def apply_signed_rope(x: torch.Tensor, cos: torch.Tensor, signed: torch.Tensor) -> torch.Tensor:
    """:func:`apply_rope` with the table from :func:`signed_sin` (computed once for every block of the VIP)."""
    cos, signed = cos.unsqueeze(-3), signed.unsqueeze(-3)
    xf = x.float()
    return (xf * cos + xf.roll(x.shape[-1] // 2, dims=-1) * signed).to(x.dtype)


class CondAttention(nn.Module):
    """Self-attention whose queries and keys also see a conditioning feature: q, k from ``[x, c]`` (S + C), v, o on
    ``x`` (S); 2-D RoPE on q and k; attention restricted to each group's valid tokens (``key_mask`` ``[G, M]``) or to
    any ``[G, M, M]`` query-by-key pattern (windows)."""

    def __init__(self, size: int, cond_size: int, heads: int) -> None:
        super().__init__()
        qk = size + cond_size
        self.q_proj = nn.Linear(qk, qk, bias=False)
        self.k_proj = nn.Linear(qk, qk, bias=False)
        self.v_proj = nn.Linear(size, size, bias=False)
        self.o_proj = nn.Linear(size, size, bias=False)
        self.heads = heads

    def forward(self, x: torch.Tensor, cond: torch.Tensor | None, rope: tuple[torch.Tensor, torch.Tensor],
                key_mask: torch.Tensor, dense: bool | None = None) -> torch.Tensor:
        """``x`` ``[G, M, S]``, ``cond`` ``[G, M, C]``, ``key_mask`` ``[G, M]`` or ``[G, M, M]`` bool -> ``[G, M, S]``.
        ``rope``: ``cos`` and :func:`signed_sin` tables ``[G, M, d]``. ``dense``: the caller knows that every key is
        visible to every query (True) or not (False); None reads it from ``key_mask`` (a device read)."""
        G, M, _ = x.shape
        qk_in = torch.cat([x, cond], dim=-1) if cond is not None else x
        q = self.q_proj(qk_in).view(G, M, self.heads, -1).transpose(1, 2)
        k = self.k_proj(qk_in).view(G, M, self.heads, -1).transpose(1, 2)
        v = self.v_proj(x).view(G, M, self.heads, -1).transpose(1, 2)
        q, k = apply_signed_rope(torch.stack((q, k)), *rope).unbind(0)  # one rotation for both
        if bool(key_mask.all()) if dense is None else dense:
            # one image, or images of one size: no mask, so sdpa can take a fused kernel
            # the fused kernels want one head size; v's (S/heads) is below q's and k's ((S+C)/heads): zero columns
            # added to v give zero outputs, dropped after (exact). The unfused path materialises [G, heads, M, M]
            # scores and their softmax: 2 x 64 MB fp32 at 2048 tokens and 4 heads.
            dv = v.shape[-1]
            out = F.scaled_dot_product_attention(q, k, F.pad(v, (0, max(0, q.shape[-1] - dv))))[..., :dv]
        else:
            mask = key_mask[:, None, None, :] if key_mask.dim() == 2 else key_mask[:, None]
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        # out: [G, heads, M, S/heads]
        return self.o_proj(out.transpose(1, 2).reshape(G, M, -1))


class GatedMLP(nn.Module):
    def __init__(self, size: int, inner: int) -> None:
        super().__init__()
        self.gate_proj = nn.Linear(size, inner)
        self.up_proj = nn.Linear(size, inner)
        self.down_proj = nn.Linear(inner, size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class VIPBlock(nn.Module):
    """Pre-norm block: x + attn(norm1(x), cond); x + mlp(norm2(x))."""

    def __init__(self, size: int, cond_size: int, heads: int) -> None:
        super().__init__()
        self.norm1 = RMSNorm(size, eps=1e-6)
        self.norm2 = RMSNorm(size, eps=1e-6)
        self.attn = CondAttention(size, cond_size, heads)
        self.mlp = GatedMLP(size, 2 * size)

    def forward(self, x: torch.Tensor, cond: torch.Tensor | None, rope: tuple[torch.Tensor, torch.Tensor],
                key_mask: torch.Tensor, dense: bool | None = None) -> torch.Tensor:
        x = x + self.attn(self.norm1(x), cond, rope, key_mask, dense)
        return x + self.mlp(self.norm2(x))


class VIP(nn.Module):
    """Visual importance predictor ("AttnFuserV1"): glimpse attention + multi-level ViT features -> keep logits.

    ``attn_in_proj`` lifts the per-head scores (H) to S; block ``i`` is conditioned on ViT level ``i`` through
    ``cond_in_projs[i]`` (Dv -> C); ``out_proj`` (S -> 1) gives one logit per token.
    """

    def __init__(self, cfg: GlimpseConfig) -> None:
        super().__init__()
        S, C = cfg.vip_size, cfg.cond_size
        n = len(cfg.vision_blocks)
        self.attn_in_proj = nn.Linear(cfg.num_heads, S)
        self.cond_in_projs = nn.ModuleList(nn.Linear(cfg.vision_hidden_size, C) for _ in range(n)) if C else nn.ModuleList()
        self.layers = nn.ModuleList(VIPBlock(S, C, cfg.vip_heads) for _ in range(n))
        self.out_proj = nn.Linear(S, 1)
        self.rope = Rope2D(cfg.head_dim, cfg.rope_theta)
        self.window = cfg.vip_window

    def condition(self, i: int, level: torch.Tensor) -> torch.Tensor:
        """Block ``i``'s conditioning from its ViT level: ``[..., Dv]`` -> ``[..., C]`` (``C`` may be 0). A per-token
        linear map, so it can be applied as soon as the level is recorded (the runtime then holds C-wide rows)."""
        return self.cond_in_projs[i](level) if len(self.cond_in_projs) else level[..., :0]

    def forward(self, attn: torch.Tensor, conds: list[torch.Tensor], pos: torch.Tensor, valid: torch.Tensor,
                dense: bool | None = None, conditioned: bool = False) -> torch.Tensor:
        """Keep logits per token.

        Args:
            attn: ``[G, M, H]`` glimpse attention features.
            conds: one ``[G, M, Dv]`` per VIP block (ViT levels, deepest first); with ``conditioned``, their
                :meth:`condition` ``[G, M, C]`` instead.
            pos: ``[G, M, 2]`` long (row, col) on the group's token grid.
            valid: ``[G, M]`` bool, False on padding.
            dense: whether every entry is valid, where the caller knows it without reading the device.
        Returns:
            ``[G, M]`` float logits (padding entries are meaningless).
        """
        x = self.attn_in_proj(attn)
        cos, sin = self.rope(pos)
        rope = (cos, signed_sin(sin))
        if self.window is not None:
            mask, dense = window_mask(pos, valid, self.window), False  # the window hides keys
        else:
            mask = valid
            dense = bool(valid.all()) if dense is None else dense  # once, not in every block
        for i, layer in enumerate(self.layers):
            c = conds[i] if conditioned else self.condition(i, conds[i])
            x = layer(x, c if c.shape[-1] else None, rope, mask, dense)
        return self.out_proj(x).squeeze(-1)


def window_mask(pos: torch.Tensor, valid: torch.Tensor, window: int) -> torch.Tensor:
    """``[G, M, M]`` bool: query ``i`` may attend to key ``j`` when ``j`` is valid and both lie in the same
    ``window x window`` tile of the token grid (tiles from the top-left corner, as Qwen2.5-VL's ViT windows; the
    official fuser's ``cu_window_seqlens``). Every query also sees itself, so no row is empty."""
    tile = pos.div(window, rounding_mode="floor")  # [G, M, 2]
    same = (tile[:, :, None, :] == tile[:, None, :, :]).all(-1)  # [G, M, M]
    eye = torch.eye(pos.shape[1], dtype=torch.bool, device=pos.device)
    return (same & valid[:, None, :]) | eye


class GlimpseToken(nn.Module):
    """The deep glimpse prompt: one learnable ``[n, D]`` vector per layer in ``le_layers``, each passed through the
    shared ``proj`` (Linear D->D), ``norm`` (RMSNorm) and dropout. Layer 0's vector is the token's input embedding;
    later layers' vectors are added to its hidden state before the layer runs."""

    def __init__(self, cfg: GlimpseConfig) -> None:
        super().__init__()
        self.layers = list(cfg.le_layers)
        self.embeddings = nn.Parameter(torch.zeros(len(self.layers), cfg.le_length, cfg.hidden_size))
        self.proj = nn.Linear(cfg.hidden_size, cfg.hidden_size)
        self.norm = RMSNorm(cfg.hidden_size, eps=cfg.rms_norm_eps)
        self.dropout = nn.Dropout(cfg.le_dropout)

    def vector(self, layer: int) -> torch.Tensor | None:
        """``[n, D]`` float32 glimpse vector of decoder layer ``layer`` (None if that layer has none)."""
        if layer not in self.layers:
            return None
        e = self.embeddings[self.layers.index(layer)]
        return self.dropout(self.norm(self.proj(e)))


class GlimpseModules(nn.Module):
    """Everything a GlimpsePrune pruner learns: ``glimpse`` (the token) and ``vip`` (the predictor)."""

    def __init__(self, cfg: GlimpseConfig) -> None:
        super().__init__()
        self.glimpse = GlimpseToken(cfg)
        self.vip = VIP(cfg)
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self, zero_head: bool = True) -> None:
        """The official init (embeddings ~ N(0, 0.02); every Linear Xavier-uniform with zero bias; norms = 1), except
        the VIP's ``out_proj``, zero: every token starts at keep probability 0.5 whatever the score scale.

        With the official init a LLaVA VIP (log-softmax inputs, about -5.5 at 256 tokens, carried by the residual
        stream to ``out_proj``) starts at logit 3.3, sigmoid 0.965 (measured on the LLaVA zoo model), where the
        box-free retention penalty has almost no gradient: keep probability went to 1.00 within 20 steps and stayed.
        Qwen's VIP (raw logits) started at 0.49 either way. ``zero_head=False``: the official init throughout (an
        untrained pruner whose scores differ per token, for tests and cost measurement)."""
        nn.init.normal_(self.glimpse.embeddings, 0.0, 0.02)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, RMSNorm):
                nn.init.ones_(m.weight)
        if zero_head:
            nn.init.zeros_(self.vip.out_proj.weight)
            nn.init.zeros_(self.vip.out_proj.bias)
