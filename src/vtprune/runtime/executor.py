"""The prefill executor and decode loop.

Prefill runs the stock decoder layers in our own loop so the sequence can shrink between layers; every cut goes
through :mod:`vtprune.runtime.ops`. Decoding calls the stock model forward one token at a time with the pruned
cache, the compacted attention mask and explicit position ids that continue from the unpruned prompt, exactly the
inputs stock ``generate`` would build, so keep-all is token-identical to it.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any

import torch
from transformers import DynamicCache
from transformers.masking_utils import create_causal_mask

from vtprune.adapters.base import Adapter, EncodedBatch
from vtprune.errors import ConfigError, check_int, check_real
from vtprune.methods.base import Context, Pruner, Stage, check_stages
from vtprune.runtime import ops, vision


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@dataclass
class PrefillState:
    """Everything decoding needs, plus the record of what was pruned.

    Attributes:
        logits: ``[B, V]`` next-token logits after the prompt (``[B, L', V]`` with ``all_logits``).
        cache: KV cache holding text + kept visual tokens in every layer.
        attention_mask: ``[B, L']`` long for the compacted prompt.
        positions: ``[P, B, L']`` original position ids of the surviving tokens.
        visual_tokens / kept_tokens: per sample, before and after pruning.
        token_layers: per sample, visual tokens summed over the LLM layers that processed them.
        kept_visual: per sample ``[k]`` long, original visual-token indices of the survivors (sequence order).
        kept_coords: per sample ``[k, 4]`` (item, t, h, w) of the surviving visual tokens.
        timings: seconds for ``vision`` and ``llm_prefill``.
        scores / score_ids: ``prefill(grad=True)`` only: per stage the method's ``[B, Nv]`` keep logits (with grad)
            and the original visual index of each entry (-1 on padding).
        extra_logits: ``prefill(grad=True)`` only: ``[B, n, V]`` logits at the method's extra prompt tokens.
    """

    logits: torch.Tensor
    cache: DynamicCache
    attention_mask: torch.Tensor
    positions: torch.Tensor
    visual_tokens: list[int]
    kept_tokens: list[int]
    token_layers: list[int]
    kept_visual: list[torch.Tensor]
    kept_coords: list[torch.Tensor]
    timings: dict[str, float] = field(default_factory=dict)
    scores: list[torch.Tensor] = field(default_factory=list)
    score_ids: list[torch.Tensor] = field(default_factory=list)
    extra_logits: torch.Tensor | None = None

    def retention(self) -> list[float]:
        return [k / v if v else 1.0 for k, v in zip(self.kept_tokens, self.visual_tokens)]


class _Seq:
    """The live prefill sequence: hidden states, mask, positions and, per position, the original visual id."""

    def __init__(self, hidden: torch.Tensor, mask: torch.Tensor, positions: torch.Tensor, visual_id: torch.Tensor):
        self.hidden, self.mask, self.positions, self.visual_id = hidden, mask, positions, visual_id
        self.extra = torch.zeros_like(mask, dtype=torch.bool)  # a method's extra prompt tokens (always last)

    def cut(self, keep: torch.Tensor) -> torch.Tensor:
        index, valid = ops.compact_index(keep & self.mask.bool())
        self.hidden = ops.gather_seq(self.hidden, index, 1)
        self.positions = ops.gather_seq(self.positions, index, 2)
        self.visual_id = self.visual_id.gather(1, index).masked_fill(~valid, -1)
        self.extra = self.extra.gather(1, index) & valid
        self.mask = valid.long()
        return index

    def append_extra(self, x: torch.Tensor) -> None:
        """Append ``n`` extra tokens ``x`` ``[B, n, D]`` after the prompt, at positions last + 1.. in every row."""
        B, n = x.shape[:2]
        step = torch.arange(1, n + 1, device=self.positions.device, dtype=self.positions.dtype)
        self.hidden = torch.cat([self.hidden, x.to(self.hidden.dtype)], dim=1)
        self.positions = torch.cat([self.positions, self.positions[..., -1:] + step], dim=-1)
        self.mask = torch.cat([self.mask, self.mask.new_ones(B, n)], dim=1)
        self.visual_id = torch.cat([self.visual_id, self.visual_id.new_full((B, n), -1)], dim=1)
        self.extra = torch.cat([self.extra, self.extra.new_ones(B, n)], dim=1)

    def to(self, device: torch.device) -> None:
        """Move the sequence to ``device`` (the next decoder layer's, under an accelerate ``device_map``)."""
        self.hidden, self.mask, self.positions = self.hidden.to(device), self.mask.to(device), self.positions.to(device)
        self.visual_id, self.extra = self.visual_id.to(device), self.extra.to(device)

    def visual_rows(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``visual_index``, ``visual_valid``, ``visual_ids``, each ``[B, Nv]``."""
        is_vis = self.visual_id >= 0
        rows = [torch.nonzero(r, as_tuple=False).flatten().cpu() for r in is_vis]
        index, valid = ops.padded_rows(rows)
        dev = self.hidden.device
        index, valid = index.to(dev), valid.to(dev)
        ids = self.visual_id.gather(1, index).masked_fill(~valid, 0)
        return index, valid, ids


def _mask(adapter: Adapter, seq: _Seq) -> Any:
    return create_causal_mask(
        config=adapter.text_config,
        inputs_embeds=seq.hidden,
        attention_mask=seq.mask,
        past_key_values=None,
        position_ids=adapter.layer_position_ids(seq.positions),
    )


def last_query_attention(
    adapter: Adapter, layer_idx: int, hidden_in: torch.Tensor, cos_sin: tuple[torch.Tensor, torch.Tensor],
    cache: DynamicCache, mask: torch.Tensor,
) -> torch.Tensor:
    """Attention logits ``[B, H, L]`` of the last token's query over all keys of layer ``layer_idx``.

    Computed explicitly from the layer input and the cached (post-RoPE) keys, so the model keeps its sdpa kernel.
    """
    cos, sin = cos_sin
    q = adapter.query_states(layer_idx, hidden_in[:, -1:], cos[:, -1:], sin[:, -1:])  # [B, H, 1, dh]
    k = cache.layers[layer_idx].keys  # [B, Hkv, L, dh]
    k = k.repeat_interleave(q.shape[1] // k.shape[1], dim=1)
    scale = getattr(adapter.layers[layer_idx].self_attn, "scaling", q.shape[-1] ** -0.5)
    logits = (q.float() @ k.float().transpose(-1, -2)).squeeze(2) * scale  # [B, H, L]
    return logits.masked_fill(mask[:, None, :] == 0, float("-inf"))


RELAXATIONS = ("sigmoid", "hard", "sampled")
"""How a training run through a relaxed cut weighs the visual keys after the stage (see :func:`relaxed_log_keep`)."""
HARD_FLOOR = 1e-4
"""Attention weight left on a token the ``hard``/``sampled`` relaxations drop: small enough that the forward is the
cut (10^-4 of its weight), large enough that its gradient does not vanish (it stays finite, see below)."""


def check_relaxation(relax: str) -> None:
    """Raise :class:`ConfigError` unless ``relax`` names one of :data:`RELAXATIONS`."""
    if relax not in RELAXATIONS:
        raise ConfigError(f"relaxation must be one of {', '.join(RELAXATIONS)}, got {relax!r}")


def relaxed_log_keep(logits: torch.Tensor, relax: str = "sigmoid", threshold: float = 0.5) -> torch.Tensor:
    """The log weight a training run adds to each visual key's attention logits after a stage, from the method's
    keep logits (``keep if sigmoid(logit) > threshold`` at inference).

    - ``sigmoid``: ``logsigmoid(logit)``, each key scaled by its keep probability p. Nothing is ever cut, so a
      retention penalty on the mean of p can lower every p together at almost no cost to the answer (the softmax
      renormalises), while the hard rule at inference then keeps almost nothing.
    - ``hard``: straight-through. The forward is the inference rule's cut (weight 1 above the threshold,
      :data:`HARD_FLOOR` below); the backward treats the weight as p (``w = hard + p - p.detach()``), so
      ``dL/dp = (dL/dbias) / w``: for a dropped key that is the first-order effect of putting it back, finite
      because both factors scale with the floor.
    - ``sampled``: as ``hard`` with the decision drawn, ``P(keep) = sigmoid(logit - logit(threshold))`` (logistic
      noise, the binary-concrete / Gumbel-sigmoid trick): the forward explores, and at threshold 0.5 the expected
      retention of the cut it sees is exactly the mean keep probability a retention penalty measures.
    """
    check_relaxation(relax)
    z = logits.float()
    if relax == "sigmoid":
        return torch.nn.functional.logsigmoid(z)
    t = min(max(float(threshold), 1e-6), 1.0 - 1e-6)
    z = z - math.log(t / (1.0 - t))
    if relax == "sampled":
        u = torch.rand_like(z).clamp(1e-6, 1.0 - 1e-6)
        z = z + (torch.log(u) - torch.log1p(-u))
    p = torch.sigmoid(z)
    w = (z > 0).to(p.dtype).clamp(min=HARD_FLOOR) + (p - p.detach())
    return torch.log(w)


def soft_keep_mask(mask: torch.Tensor, extra: torch.Tensor, key_bias: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Float attention mask ``[B, 1, L, L]`` for training through a relaxed cut: causal + padding, extra tokens hidden
    from every other query (they are cut at the stage), plus ``key_bias`` ``[B, L]`` (log keep probability on
    visual key columns, 0 elsewhere) added to every query row."""
    L = mask.shape[1]
    allowed = torch.ones(L, L, dtype=torch.bool, device=mask.device).tril() & mask.bool()[:, None, :]
    allowed = allowed & ~(extra[:, None, :] & ~extra[:, :, None])
    out = torch.zeros(allowed.shape, dtype=dtype, device=mask.device).masked_fill(~allowed, torch.finfo(dtype).min)
    return (out + key_bias[:, None, :].to(dtype)).unsqueeze(1)


def prefill(adapter: Adapter, batch: EncodedBatch, method: Pruner | None, *, all_logits: bool = False,
            grad: bool = False, soft: bool | str = False, track_grad: bool = False) -> PrefillState:
    """Run the prompt through the model, pruning where ``method`` says; returns the state decoding continues from.

    ``grad=True`` (training a learned method): gradients on, nothing is cut; at each stage the runtime records
    ``method.score(ctx)`` instead of calling ``select``, the method's extra prompt tokens run through every layer
    (their logits come back as ``extra_logits``), and ``logits`` are the last prompt token's. With ``soft`` the cut
    is relaxed: after the stage, visual keys get :func:`relaxed_log_keep` of the scores (``soft`` names the
    relaxation; ``True`` is ``"sigmoid"``; the hard ones cut at the method's ``keep_threshold``, 0.5 without one)
    added to their attention logits and the extra tokens are hidden from the rest. The cache of a grad run is not
    meant for decoding.

    ``track_grad=True`` (training the model itself under pruning, GlimpsePrune+): the inference path, cuts and
    all, with gradients on, so a loss on the logits of the pruned sequence (and on decoding from its cache)
    reaches the model's trainable weights.
    """
    if soft is True:
        soft = "sigmoid"
    if soft:
        check_relaxation(str(soft))  # before any layer runs
    with torch.set_grad_enabled(grad or track_grad):
        return _prefill(adapter, batch, method, all_logits=all_logits, grad=grad, soft=soft)


def vision_hidden_states(adapter: Adapter, method: Pruner) -> bool | list[int]:
    """The vision tower's hidden states ``method`` needs recorded: the union of what its ``select`` reads and what
    the adapter's vision-attention statistics read, or True (all) where either cannot say."""
    parts = []
    if "vision_outputs" in method.requires:
        parts.append(method.vision_hidden_states())
    if "vision_attention" in method.requires:
        parts.append(adapter.vision_stats_hidden_states())
    if not parts or any(p is None for p in parts):
        return True
    return sorted({i for p in parts for i in p})  # type: ignore[union-attr]


def _prefill(adapter: Adapter, batch: EncodedBatch, method: Pruner | None, *, all_logits: bool, grad: bool,
             soft: bool | str) -> PrefillState:
    dev = adapter.device
    L_layers = adapter.num_layers
    stages = method.stages(L_layers) if method is not None else []
    check_stages(stages, L_layers)
    pre = [s for s in stages if s.site == "pre_llm"]
    at_layer = {s.layer: s for s in stages if s.site == "llm"}
    requires = method.requires if method is not None else frozenset()
    if "vision_attention" in requires and not adapter.supports_vision_attention:
        raise adapter.unsupported(f"vision-encoder attention per token (which {method.name} reads)")  # type: ignore[union-attr]
    if "vision_features" in requires and not adapter.supports_vision_features:
        raise adapter.unsupported(f"per-token ViT features (which {method.name} reads)")  # type: ignore[union-attr]

    t0 = time.perf_counter()
    want_vision = vision_hidden_states(adapter, method) if requires & {"vision_outputs", "vision_attention"} else False
    vit = vision.vit_stage(stages)
    if vit is not None:  # the 'vit' site: video units cut inside the encoder (runtime/vision.py)
        emb, vit_keep, _ = vision.embed_with_vit(adapter, batch, method, vit, vision_outputs=want_vision)  # type: ignore[arg-type]
    else:
        emb = adapter.embed(batch, vision_outputs=want_vision)
    if "vision_attention" in requires and emb.vision:
        emb.vision.update(adapter.vision_token_stats(batch, emb.vision))
    if "vision_features" in requires and emb.vision:
        levels = method.vision_hidden_states()  # type: ignore[union-attr]
        if levels is None:  # a method that cannot say (a composition): every recorded hidden state
            hs = next(iter(emb.vision.values())).hidden_states
            levels = tuple(i for i, h in enumerate(hs) if h is not None)
        emb.vision["token_features"] = adapter.vision_token_features(batch, emb.vision, levels)
    _sync(dev)
    t1 = time.perf_counter()

    vis = batch.visual_mask.to(dev)
    visual_id = torch.where(vis, vis.long().cumsum(1) - 1, torch.full_like(vis, -1, dtype=torch.long))
    seq = _Seq(emb.embeds, batch.attention_mask.to(dev), emb.positions, visual_id)
    if vit is not None:
        seq.cut(vit_keep)  # placeholders of dropped units leave before layer 0; the rest keep their positions
    cut_stages = [s for s in stages if s.site in ("pre_llm", "llm")]
    extra = method.prompt_tokens(seq.hidden) if method is not None and cut_stages else None
    n_extra = int(extra.shape[1]) if extra is not None else 0
    if n_extra:
        seq.append_extra(extra)  # type: ignore[arg-type]
    last_stage = max(cut_stages, key=lambda s: (s.site == "llm", s.layer)) if cut_stages else None
    scores: list[torch.Tensor] = []
    score_ids: list[torch.Tensor] = []
    soft_bias: torch.Tensor | None = None
    visual_total = vis.sum(1)
    coords_pad = torch.nn.utils.rnn.pad_sequence([c for c in batch.coords], batch_first=True).to(dev)
    if coords_pad.dim() < 3:
        coords_pad = torch.zeros(batch.batch_size, 0, 4, dtype=torch.long, device=dev)
    cache = DynamicCache(config=adapter.text_config)
    token_layers = torch.zeros(batch.batch_size, dtype=torch.long, device=dev)

    def apply(stage: Stage, computed_upto: int, attention: torch.Tensor | None, keys: torch.Tensor | None = None) -> None:
        nonlocal n_extra, soft_bias, coords_pad
        index, valid, ids = seq.visual_rows()
        coords_pad = coords_pad.to(ids.device)
        drop_extra = bool(n_extra) and stage == last_stage and not grad
        if not bool(valid.any()):
            if drop_extra:  # no visual token to prune: the extra tokens still leave here
                idx = seq.cut(~seq.extra)
                n_extra = 0
                if computed_upto >= 0:
                    ops.prune_cache(cache, idx, computed_upto)
            return
        ctx = Context(
            stage=stage,
            hidden=seq.hidden,
            attention_mask=seq.mask,
            visual_index=index,
            visual_valid=valid,
            visual_ids=ids,
            coords=coords_pad.gather(1, ids.unsqueeze(-1).expand(-1, -1, 4)) if coords_pad.shape[1] else ids.new_zeros(*ids.shape, 4),
            grids=batch.grids,
            visual_total=visual_total,
            text_mask=(seq.visual_id < 0) & seq.mask.bool() & ~seq.extra,
            num_layers=L_layers,
            attention=attention,
            vision=emb.vision,
            keys=keys,
            extra_mask=seq.extra if n_extra else None,
        )
        if grad:  # training: record differentiable scores, cut nothing
            s = method.score(ctx)  # type: ignore[union-attr]
            scores.append(s)
            score_ids.append(ids.masked_fill(~valid, -1))
            if soft:
                lp = relaxed_log_keep(s, str(soft), getattr(method, "keep_threshold", 0.5)).masked_fill(~valid, 0.0)
                soft_bias = torch.zeros(seq.mask.shape, dtype=lp.dtype, device=lp.device).scatter_add(1, index, lp)
            return
        keep_vis = method.select(ctx)  # type: ignore[union-attr]
        if keep_vis.shape != valid.shape or keep_vis.dtype != torch.bool:
            raise RuntimeError(f"{method.name}.select returned {tuple(keep_vis.shape)} {keep_vis.dtype}, "  # type: ignore[union-attr]
                               f"expected {tuple(valid.shape)} bool")
        if method.merges:  # type: ignore[union-attr]
            seq.hidden = ops.replace_rows(seq.hidden, index, keep_vis & valid, method.merge(ctx, keep_vis))  # type: ignore[union-attr]
        keep_seq = ops.scatter_visual(keep_vis, index, valid, seq.hidden.shape[1])
        if drop_extra:
            keep_seq = keep_seq & ~seq.extra
            n_extra = 0
        idx = seq.cut(keep_seq)
        if computed_upto >= 0:
            ops.prune_cache(cache, idx, computed_upto)

    for st in pre:
        apply(st, -1, None)
    cos_sin = adapter.rope(seq.hidden, seq.positions)
    mask = _mask(adapter, seq)
    for i, layer in enumerate(adapter.layers):
        dev_i = adapter.layer_device(i)
        if seq.hidden.device != dev_i:  # a device_map boundary: the sequence and its tables follow the layer
            seq.to(dev_i)
            cos_sin = (cos_sin[0].to(dev_i), cos_sin[1].to(dev_i))
            mask = mask.to(dev_i) if isinstance(mask, torch.Tensor) else mask
        if n_extra:  # the method's per-layer input hook for its extra tokens (always the last n positions)
            seq.hidden = torch.cat([seq.hidden[:, :-n_extra], method.before_layer(i, seq.hidden[:, -n_extra:])], 1)  # type: ignore[union-attr]
        h_in = seq.hidden
        seq.hidden = layer(
            h_in,
            attention_mask=mask,
            position_ids=adapter.layer_position_ids(seq.positions),
            past_key_values=cache,
            use_cache=True,
            position_embeddings=cos_sin,
        )
        if i in emb.injections:  # the family's own per-layer step (DeepStack): only the kept visual rows get it
            seq.hidden = ops.add_visual(seq.hidden, seq.visual_id, emb.injections[i])
        token_layers += (seq.visual_id >= 0).sum(1).to(token_layers.device)
        if i in at_layer:
            attn = None
            if "last_query_attention" in requires:
                attn = last_query_attention(adapter, i, h_in, cos_sin, cache, seq.mask)
            apply(at_layer[i], i, attn, cache.layers[i].keys if "keys" in requires else None)
            cos_sin = adapter.rope(seq.hidden, seq.positions)
            mask = _mask(adapter, seq)
            if soft_bias is not None:
                mask = soft_keep_mask(seq.mask, seq.extra, soft_bias, seq.hidden.dtype)
    extra_logits = None
    if n_extra:  # grad mode: the extra tokens went through every layer
        extra_logits = adapter.lm_head(adapter.text_model.norm(seq.hidden[:, -n_extra:])).float()
        ops.prune_cache(cache, seq.cut(~seq.extra), L_layers - 1)
    h = seq.hidden if all_logits else seq.hidden[:, -1:]
    logits = adapter.lm_head(adapter.text_model.norm(h)).float()
    _sync(dev)
    t2 = time.perf_counter()

    kept_ids = [seq.visual_id[b][seq.visual_id[b] >= 0].cpu() for b in range(batch.batch_size)]
    return PrefillState(
        logits=logits if all_logits else logits[:, -1],
        cache=cache,
        attention_mask=seq.mask,
        positions=seq.positions,
        visual_tokens=[int(v) for v in visual_total.tolist()],
        kept_tokens=[len(k) for k in kept_ids],
        token_layers=[int(v) for v in token_layers.tolist()],
        kept_visual=kept_ids,
        kept_coords=[batch.coords[b][kept_ids[b]] for b in range(batch.batch_size)],
        timings={"vision": t1 - t0, "llm_prefill": t2 - t1},
        scores=scores,
        score_ids=score_ids,
        extra_logits=extra_logits,
    )


@dataclass
class Sampling:
    """Decoding settings. ``temperature == 0`` is greedy (the default)."""

    max_new_tokens: int = 32
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int = 0

    def __post_init__(self) -> None:
        check_int("max_new_tokens", self.max_new_tokens, 1)
        check_real("temperature", self.temperature, 0)
        check_real("top_p", self.top_p, 0, 1, lo_open=True)
        check_int("seed", self.seed)


def _choose(logits: torch.Tensor, s: Sampling, gen: torch.Generator | list[torch.Generator] | None) -> torch.Tensor:
    if s.temperature == 0:
        return logits.argmax(-1)
    probs = torch.softmax(logits / s.temperature, dim=-1)
    if s.top_p < 1:
        sp, si = probs.sort(-1, descending=True)
        drop = sp.cumsum(-1) - sp > s.top_p
        probs = probs.scatter(-1, si, sp.masked_fill(drop, 0))
    if isinstance(gen, list):  # one stream per row: a row's draws do not depend on the rest of the batch
        return torch.cat([torch.multinomial(p, 1, generator=g) for p, g in zip(probs.cpu(), gen)]).to(logits.device)
    return torch.multinomial(probs.cpu(), 1, generator=gen).squeeze(-1).to(logits.device)


@torch.no_grad()
def decode(adapter: Adapter, state: PrefillState, sampling: Sampling, eos_ids: list[int],
           row_seeds: list[int] | None = None) -> torch.Tensor:
    """Generate up to ``max_new_tokens`` tokens from ``state``; returns ``[B, T]`` (finished rows padded).

    ``row_seeds``: with sampling, one random stream per row seeded so (instead of one for the batch seeded with
    ``sampling.seed``): a row's sample then does not depend on which other rows share its batch (RL rollouts
    sharded over processes draw what one process would)."""
    dev = adapter.device
    B = state.logits.shape[0]
    gen: torch.Generator | list[torch.Generator] | None = None
    if sampling.temperature > 0:
        if row_seeds is not None:
            if len(row_seeds) != B:
                raise ConfigError(f"row_seeds has {len(row_seeds)} seeds for {B} rows")
            gen = [torch.Generator().manual_seed(int(s)) for s in row_seeds]
        else:
            gen = torch.Generator().manual_seed(sampling.seed)
    eos = torch.tensor(eos_ids, device=dev)
    pad = adapter.pad_token_id
    mask, pos, logits = state.attention_mask.to(dev), state.positions[..., -1:].to(dev), state.logits.to(dev)
    finished = torch.zeros(B, dtype=torch.bool, device=dev)
    out = []
    t0 = time.perf_counter()
    for step in range(sampling.max_new_tokens):
        nxt = torch.where(finished, torch.full_like(finished, pad, dtype=torch.long), _choose(logits, sampling, gen))
        out.append(nxt)
        finished |= torch.isin(nxt, eos)
        if bool(finished.all()) or step == sampling.max_new_tokens - 1:
            break
        mask = torch.cat([mask, mask.new_ones(B, 1)], dim=1)
        pos = pos + 1
        o = adapter.model(
            input_ids=nxt[:, None],
            attention_mask=mask,
            position_ids=adapter.forward_position_ids(pos),
            past_key_values=state.cache,
            use_cache=True,
            logits_to_keep=1,
        )
        logits = o.logits[:, -1].float()
    _sync(dev)
    state.timings["decode"] = time.perf_counter() - t0
    state.timings["decode_steps"] = float(len(out))
    return torch.stack(out, dim=1) if out else torch.zeros(B, 0, dtype=torch.long, device=dev)


@torch.no_grad()
def score_continuation(adapter: Adapter, state: PrefillState, continuations: list[list[int]]
                       ) -> tuple[list[float], list[bool]]:
    """Log-probability of each row's ``continuations`` token ids after its (pruned) prompt in ``state``, scored on
    the pruned cache in one stock forward (right padded; positions continue from the unpruned prompt, as in
    :func:`decode`); returns per row the summed log-probability and whether greedy decoding yields exactly them."""
    dev = adapter.device
    B, T = len(continuations), max((len(c) for c in continuations), default=0)
    if T == 0:
        return [0.0] * B, [True] * B
    ids = torch.full((B, T), adapter.pad_token_id, dtype=torch.long, device=dev)
    valid = torch.zeros((B, T), dtype=torch.bool, device=dev)
    for b, c in enumerate(continuations):
        ids[b, : len(c)] = torch.tensor(c, dtype=torch.long, device=dev)
        valid[b, : len(c)] = True
    mask = torch.cat([state.attention_mask, valid.long()], dim=1)
    step = torch.arange(1, T + 1, device=dev, dtype=state.positions.dtype)
    pos = state.positions[..., -1:] + step  # [P, B, T]
    logits = state.logits[:, None]  # [B, 1, V]: predicts the first continuation token
    if T > 1:
        o = adapter.model(input_ids=ids[:, :-1], attention_mask=mask[:, :-1],
                          position_ids=adapter.forward_position_ids(pos[..., :-1]), past_key_values=state.cache,
                          use_cache=True)
        logits = torch.cat([logits, o.logits.float()], dim=1)  # [B, T, V]
    logp = torch.log_softmax(logits, dim=-1).gather(-1, ids[..., None]).squeeze(-1)  # [B, T]
    total = logp.masked_fill(~valid, 0.0).sum(1)
    greedy = ((logits.argmax(-1) == ids) | ~valid).all(1)
    return [float(x) for x in total.tolist()], [bool(x) for x in greedy.tolist()]
