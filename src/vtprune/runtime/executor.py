"""The prefill executor and decode loop.

Prefill runs the stock decoder layers in our own loop so the sequence can shrink between layers: a
:class:`PrefillSession` holds the live sequence and the KV cache, asks the method at each stage and applies its
answer as the caller's :class:`CutPolicy` says (a hard cut at inference; recorded scores or a relaxed cut in
training). Every cut goes through :mod:`vtprune.runtime.ops`. Decoding calls the stock model forward one token
at a time with the pruned cache, the compacted attention mask and explicit position ids that continue from the unpruned prompt, exactly the
inputs stock ``generate`` would build, so keep-all is token-identical to it.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, field
from typing import Any

import torch
from transformers import DynamicCache
from transformers.masking_utils import create_causal_mask

from vtprune.adapters.base import Adapter, EncodedBatch
from vtprune.errors import ConfigError
from vtprune.methods.base import Context, Pruner, Stage, check_stages
from vtprune.methods.none import NoPruning
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
        scores / score_ids: under :class:`RecordScores` (or a relaxed cut) only: per stage the method's ``[B, Nv]``
            keep logits (with grad) and the original visual index of each entry (-1 on padding).
        extra_logits: under a policy that cuts nothing only: ``[B, n, V]`` logits at the method's extra tokens.
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


class LiveSequence:
    """The prefill sequence as it shrinks: hidden states, mask, positions and, per position, the original visual id
    (-1 for text, padding and extra tokens). ``B`` batch, ``L`` current length, ``P`` position rows.

    What sizes the tensors is also kept on the host (``visual_counts``, ``n_extra``, ``padded``), so that asking a
    method and cutting wait on the device once per cut: for the kept counts (:meth:`cut`)."""

    def __init__(self, hidden: torch.Tensor, mask: torch.Tensor, positions: torch.Tensor, visual_id: torch.Tensor,
                 visual_counts: list[int] | None = None, padded: bool | None = None,
                 blocks: torch.Tensor | None = None):
        self.hidden, self.mask, self.positions, self.visual_id = hidden, mask, positions, visual_id
        self.extra = torch.zeros_like(mask, dtype=torch.bool)  # a method's extra prompt tokens (always last)
        self.blocks = blocks
        """``[B, L]`` long or None: the family's bidirectional attention blocks (:meth:`Adapter.attention_blocks`)."""
        self.n_extra = 0
        """Extra prompt tokens currently in the sequence (the same number in every row)."""
        self.visual_counts = ([int(v) for v in (visual_id >= 0).sum(1).tolist()] if visual_counts is None
                              else list(visual_counts))
        """Per sample, the visual tokens in the sequence (host-side, exact: every cut updates it)."""
        self.padded = bool((mask == 0).any()) if padded is None else padded
        """Whether any row has left padding (host-side)."""

    def cut(self, keep: torch.Tensor) -> torch.Tensor:
        """Keep the positions where ``keep`` ``[B, L]`` is True (and the mask is 1); returns the ``[B, L']`` index.
        The one device-to-host read: per row the kept positions, visual tokens and extra tokens, which size the
        compacted tensors and say whether the batch needs padding afterwards."""
        keep = keep & self.mask.bool()
        counts, kept_vis, kept_extra = (
            torch.stack([keep.sum(1), (keep & (self.visual_id >= 0)).sum(1), (keep & self.extra).sum(1)]).tolist()
            if keep.numel() else ([], [], []))
        index, valid = ops.compact_index(keep, max(counts, default=0))
        self.hidden = ops.gather_seq(self.hidden, index, 1)
        self.positions = ops.gather_seq(self.positions, index, 2)
        self.visual_id = self.visual_id.gather(1, index).masked_fill(~valid, -1)
        self.extra = self.extra.gather(1, index) & valid
        if self.blocks is not None:
            self.blocks = self.blocks.gather(1, index).masked_fill(~valid, -1)
        self.mask = valid.long()
        self.visual_counts = [int(v) for v in kept_vis]
        self.n_extra = int(kept_extra[0]) if kept_extra else 0
        self.padded = min(counts, default=0) < max(counts, default=0)
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
        if self.blocks is not None:
            self.blocks = torch.cat([self.blocks, self.blocks.new_full((B, n), -1)], dim=1)
        self.n_extra += n

    def to(self, device: torch.device) -> None:
        """Move the sequence to ``device`` (the next decoder layer's, under an accelerate ``device_map``)."""
        self.hidden, self.mask, self.positions = self.hidden.to(device), self.mask.to(device), self.positions.to(device)
        self.visual_id, self.extra = self.visual_id.to(device), self.extra.to(device)
        if self.blocks is not None:
            self.blocks = self.blocks.to(device)

    def visual_rows(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``visual_index``, ``visual_valid``, ``visual_ids``, each ``[B, Nv]`` (each sample's visual positions in
        order, then padding), sized from the host-side counts."""
        index, valid = ops.compact_index(self.visual_id >= 0, max(self.visual_counts, default=0), right=False)
        ids = self.visual_id.gather(1, index).masked_fill(~valid, 0)
        return index, valid, ids


def last_query_attention(
    adapter: Adapter, layer_idx: int, hidden_in: torch.Tensor, cos_sin: tuple[torch.Tensor, torch.Tensor],
    cache: DynamicCache, mask: torch.Tensor | None,
) -> torch.Tensor:
    """Attention logits ``[B, H, L]`` of the last token's query over all keys of layer ``layer_idx``; ``mask``
    ``[B, L]`` hides padding keys (None: no padding).

    Computed explicitly from the layer input and the cached (post-RoPE) keys, so the model keeps its sdpa kernel.
    """
    cos, sin = cos_sin
    q = adapter.query_states(layer_idx, hidden_in[:, -1:], cos[:, -1:], sin[:, -1:])  # [B, H, 1, dh]
    k = cache.layers[layer_idx].keys  # [B, Hkv, L, dh]
    k = k.repeat_interleave(q.shape[1] // k.shape[1], dim=1)
    scale = getattr(adapter.layers[layer_idx].self_attn, "scaling", q.shape[-1] ** -0.5)
    logits = (q.float() @ k.float().transpose(-1, -2)).squeeze(2) * scale  # [B, H, L]
    return logits if mask is None else logits.masked_fill(mask[:, None, :] == 0, float("-inf"))


class CutPolicy:
    """How a prefill applies each stage's answer (:class:`HardCut` at inference, :class:`RecordScores` or a relaxed
    cut from :mod:`vtprune.training.relax` in training).

    Attributes:
        grad: the prefill runs with gradients on (a training run).
        cuts: stages cut the sequence, and the method's extra prompt tokens leave at its last stage. A policy that
            cuts nothing keeps them through every layer; their logits come back as ``PrefillState.extra_logits``.
    """

    grad: bool = False
    cuts: bool = True

    def at_stage(self, session: PrefillSession, ctx: Context, last: bool) -> None:
        """Apply the method's answer at ``ctx.stage`` (``last``: the method's last cutting stage)."""
        raise NotImplementedError

    def layer_mask(self, session: PrefillSession, mask: Any) -> Any:
        """The attention mask the layers after a stage use (default: the causal mask of the current sequence)."""
        return mask


class HardCut(CutPolicy):
    """Inference: the method's :meth:`~Pruner.select` mask cuts the sequence and the KV cache of the layers run so
    far; a merging method first rewrites the rows it keeps; the extra prompt tokens leave at the last stage.

    ``grad=True`` runs this path, cuts and all, with gradients on: training the model itself under pruning
    (GlimpsePrune+), a loss on the pruned sequence's logits (and on decoding from its cache) reaches its weights."""

    def __init__(self, grad: bool = False) -> None:
        self.grad = grad

    def at_stage(self, session: PrefillSession, ctx: Context, last: bool) -> None:
        method, seq = session.method, session.seq
        keep_vis = method.select(ctx)
        if keep_vis.shape != ctx.visual_valid.shape or keep_vis.dtype != torch.bool:
            raise RuntimeError(f"{method.name}.select returned {tuple(keep_vis.shape)} {keep_vis.dtype}, "
                               f"expected {tuple(ctx.visual_valid.shape)} bool")
        if method.merges:
            keep_rows = keep_vis & ctx.visual_valid
            seq.hidden = ops.replace_rows(seq.hidden, ctx.visual_index, keep_rows, method.merge(ctx, keep_vis))
        keep_seq = ops.scatter_visual(keep_vis, ctx.visual_index, ctx.visual_valid, seq.hidden.shape[1])
        session.cut(keep_seq & ~seq.extra if last else keep_seq)


class RecordScores(CutPolicy):
    """Training: nothing is cut; at each stage the method's differentiable :meth:`~Pruner.score` ``[B, Nv]`` and
    the original visual index of each entry (-1 on padding) are recorded (``PrefillState.scores`` /
    ``score_ids``). The prompt's logits are then the unpruned ones."""

    grad = True
    cuts = False

    def at_stage(self, session: PrefillSession, ctx: Context, last: bool) -> None:
        session.scores.append(session.method.score(ctx))
        session.score_ids.append(ctx.visual_ids.masked_fill(~ctx.visual_valid, -1))


class PrefillSession:
    """One prefill: the live sequence, the KV cache it fills and what the cut policy records, read top to bottom by
    :func:`prefill` (embed, stages before the LLM, the layer loop with its stages, the final logits)."""

    seq: LiveSequence
    visual_total: torch.Tensor
    """``[B]`` visual tokens of each sample before any pruning."""
    coords: torch.Tensor
    """``[B, Nv0, 4]`` (item, t, h, w) of every original visual token, padded."""
    token_layers: list[int]
    """Per sample, visual tokens summed over the decoder layers run so far (host-side)."""

    def __init__(self, adapter: Adapter, batch: EncodedBatch, method: Pruner, cut: CutPolicy) -> None:
        self.adapter, self.batch, self.method, self.policy = adapter, batch, method, cut
        self.num_layers = adapter.num_layers
        self.stages = method.stages(self.num_layers)
        check_stages(self.stages, self.num_layers)
        if adapter.llm_site_refusal and any(s.site == "llm" for s in self.stages):
            raise adapter.unsupported(f"pruning inside the LLM ({method.name} at the 'llm' site: "
                                      f"{adapter.llm_site_refusal})")
        cut_stages = [s for s in self.stages if s.site in ("pre_llm", "llm")]
        self.last_stage = max(cut_stages, key=lambda s: (s.site == "llm", s.after)) if cut_stages else None
        self.cache = DynamicCache(config=adapter.text_config)
        self.computed_upto = -1  # the last decoder layer whose KV cache holds the sequence
        self.scores: list[torch.Tensor] = []
        self.score_ids: list[torch.Tensor] = []
        self.key_bias: torch.Tensor | None = None
        """``[B, L]`` additive log weight on each key after a stage, set by a relaxed policy (training)."""
        self.vision: dict[str, Any] = {}
        self.injections: dict[int, torch.Tensor] = {}
        """Per decoder layer, what the family adds to the visual rows after it (the adapter's ``Embedded``)."""
        self.last_index: torch.Tensor | None = None
        """The gather index of the latest cut (the rotary tables of the survivors are gathered with it)."""

    def embed(self) -> None:
        """The vision tower and the prompt embeddings; at the ``vit`` site video units are cut inside the encoder
        (:mod:`vtprune.runtime.vision`) and their placeholders leave before layer 0, the rest keeping positions."""
        adapter, batch, method, dev = self.adapter, self.batch, self.method, self.adapter.device
        requires = method.requires
        if "vision_attention" in requires and not adapter.supports_vision_attention:
            raise adapter.unsupported(f"vision-encoder attention per token (which {method.name} reads)")
        if "vision_features" in requires and not adapter.supports_vision_features:
            raise adapter.unsupported(f"per-token ViT features (which {method.name} reads)")
        want_vision = vision_hidden_states(adapter, method)
        levels: list[int] | None = None  # the ViT hidden states a "vision_features" method reads
        if "vision_features" in requires:
            wanted = method.vision_hidden_states()  # None: a method that cannot say (a composition): all of them
            levels = sorted(wanted) if wanted is not None else list(range(adapter.vision_geometry().depth + 1))
        hooked = levels is not None and adapter.records_token_features
        dtype = adapter.model.get_input_embeddings().weight.dtype  # the LLM hidden states'

        def reduce(level: int, feats: torch.Tensor) -> torch.Tensor:  # what the method keeps of a recorded level
            return method.token_features(level, feats, dtype)

        vit = vision.vit_stage(self.stages)
        vit_keep = None
        with (adapter.record_token_features(batch, levels, reduce) if hooked else contextlib.nullcontext({})
              ) as recorded:
            if vit is not None:
                emb, vit_keep, _ = vision.embed_with_vit(adapter, batch, method, vit, vision_outputs=want_vision)
            else:
                emb = adapter.embed(batch, vision_outputs=want_vision)
        if "vision_attention" in requires and emb.vision:
            emb.vision.update(adapter.vision_token_stats(batch, emb.vision))
        if levels is not None and (recorded or emb.vision):
            features = recorded if hooked else {
                i: reduce(i, f) for i, f in adapter.vision_token_features(batch, emb.vision, levels).items()}
            if not requires & {"vision_outputs", "vision_attention"}:  # recorded for the features only
                emb.vision.clear()
            emb.vision["token_features"] = features
        self.vision = emb.vision
        self.injections = emb.injections
        vis = batch.visual_mask.to(dev)
        self.visual_total = vis.sum(1)
        visual_id = torch.where(vis, vis.long().cumsum(1) - 1, torch.full_like(vis, -1, dtype=torch.long))
        # the batch is on the host: the counts that size the visual rows and whether rows are padded cost no sync
        host_mask = batch.attention_mask
        blocks = adapter.attention_blocks(batch)
        self.seq = LiveSequence(emb.embeds, host_mask.to(dev), emb.positions, visual_id,
                                visual_counts=[int(v) for v in batch.visual_mask.sum(1).tolist()],
                                padded=bool((host_mask == 0).any()), blocks=None if blocks is None else blocks.to(dev))
        del emb  # the sequence holds the embeddings now
        if vit_keep is not None:
            self.seq.cut(vit_keep)
        coords = torch.nn.utils.rnn.pad_sequence(list(batch.coords), batch_first=True).to(dev)
        self.coords = coords if coords.dim() == 3 else torch.zeros(batch.batch_size, 0, 4, dtype=torch.long, device=dev)
        self.token_layers = [0] * batch.batch_size
        if self.last_stage is not None:
            extra = method.prompt_tokens(self.seq.hidden)
            if extra is not None and extra.shape[1]:
                self.seq.append_extra(extra)

    def cut(self, keep: torch.Tensor) -> None:
        """Cut the sequence to ``keep`` ``[B, L]`` and the KV cache of every layer computed so far with it."""
        index = self.seq.cut(keep)
        if self.computed_upto >= 0:
            ops.prune_cache(self.cache, index, self.computed_upto)
        self.last_index = index

    def context(self, stage: Stage, attention: torch.Tensor | None, keys: torch.Tensor | None) -> Context:
        seq = self.seq
        index, valid, ids = seq.visual_rows()
        self.coords = self.coords.to(ids.device)
        coords = (self.coords.gather(1, ids.unsqueeze(-1).expand(-1, -1, 4)) if self.coords.shape[1]
                  else ids.new_zeros(*ids.shape, 4))
        return Context(
            stage=stage, hidden=seq.hidden, attention_mask=seq.mask, visual_index=index, visual_valid=valid,
            visual_ids=ids, coords=coords, grids=self.batch.grids, visual_total=self.visual_total,
            text_mask=(seq.visual_id < 0) & seq.mask.bool() & ~seq.extra, num_layers=self.num_layers,
            attention=attention, vision=self.vision, keys=keys, extra_mask=seq.extra if seq.n_extra else None,
            visual_counts_host=list(seq.visual_counts),
        )

    def apply_stage(self, stage: Stage, attention: torch.Tensor | None = None, keys: torch.Tensor | None = None
                    ) -> None:
        """Ask the method at ``stage`` and apply its answer as the policy says. Without visual tokens left there is
        nothing to ask; a cutting policy still lets the extra tokens leave at the last stage. After the last stage
        the vision features leave too (no later stage reads them)."""
        last = stage == self.last_stage and self.policy.cuts
        if max(self.seq.visual_counts, default=0) > 0:
            self.policy.at_stage(self, self.context(stage, attention, keys), last)
        elif last and self.seq.n_extra:
            self.cut(~self.seq.extra)
        if stage == self.last_stage:
            self.vision = {}

    def layer_inputs(self, cos_sin: tuple[torch.Tensor, torch.Tensor] | None = None
                     ) -> tuple[tuple[torch.Tensor, torch.Tensor], Any]:
        """Rotary tables and attention mask for the current sequence. After a stage pass the tables from before it:
        the survivors' are gathered from them after a cut (the same values), not recomputed."""
        seq, adapter = self.seq, self.adapter
        if cos_sin is None:
            cos_sin = adapter.rope(seq.hidden, seq.positions)
        elif self.last_index is not None:
            idx = self.last_index.to(cos_sin[0].device)
            cos_sin = (ops.gather_seq(cos_sin[0], idx, 1), ops.gather_seq(cos_sin[1], idx, 1))
        self.last_index = None
        if seq.blocks is None and not seq.padded:  # known on the host: plain causal, found without reading the mask
            mask = create_causal_mask(config=adapter.text_config, inputs_embeds=seq.hidden, attention_mask=None,
                                      past_key_values=None, position_ids=None)
        else:  # padding or the family's bidirectional blocks (among the tokens still in the sequence): the causal
            # shortcut cannot apply, so transformers need not read the mask to check it
            blocks = {} if seq.blocks is None else {"block_sequence_ids": seq.blocks}
            mask = create_causal_mask(config=adapter.text_config, inputs_embeds=seq.hidden, attention_mask=seq.mask,
                                      past_key_values=None, position_ids=adapter.layer_position_ids(seq.positions),
                                      allow_is_causal_skip=False, **blocks)
        return cos_sin, self.policy.layer_mask(self, mask)

    def run_layers(self) -> None:
        """The stock decoder layers in order; after layer ``i`` the ``llm`` stage at ``i``, if any."""
        adapter, seq, method = self.adapter, self.seq, self.method
        at_layer = {s.after: s for s in self.stages if s.site == "llm"}
        cos_sin, mask = self.layer_inputs()
        for i, layer in enumerate(adapter.layers):
            dev_i = adapter.layer_device(i)
            if seq.hidden.device != dev_i:  # a device_map boundary: the sequence and its tables follow the layer
                seq.to(dev_i)
                cos_sin = (cos_sin[0].to(dev_i), cos_sin[1].to(dev_i))
                mask = mask.to(dev_i) if isinstance(mask, torch.Tensor) else mask
            n = seq.n_extra
            if n:  # the method's per-layer input hook for its extra tokens (always the last n positions)
                seq.hidden = torch.cat([seq.hidden[:, :-n], method.before_layer(i, seq.hidden[:, -n:])], 1)
            h_in = seq.hidden
            seq.hidden = layer(h_in, attention_mask=adapter.layer_mask(i, mask, seq.mask, h_in),
                               position_ids=adapter.layer_position_ids(seq.positions),
                               past_key_values=self.cache, use_cache=True, position_embeddings=cos_sin)
            if i in self.injections:  # the family's own per-layer step (DeepStack): only the kept visual rows get it
                seq.hidden = ops.add_visual(seq.hidden, seq.visual_id, self.injections[i])
            self.computed_upto = i
            self.token_layers = [t + v for t, v in zip(self.token_layers, seq.visual_counts)]
            if i in at_layer:
                attn = None
                if "last_query_attention" in method.requires:
                    attn = last_query_attention(adapter, i, h_in, cos_sin, self.cache,
                                                seq.mask if seq.padded else None)
                del h_in
                self.apply_stage(at_layer[i], attn, self.cache.layers[i].keys if "keys" in method.requires else None)
                cos_sin, mask = self.layer_inputs(cos_sin)

    def finish(self, all_logits: bool, t0: float, t1: float) -> PrefillState:
        """Logits of the prompt (and of extra tokens still present), the state decoding continues from; ``t0``/``t1``
        are when the prefill and its LLM part began."""
        adapter, seq, B = self.adapter, self.seq, self.batch.batch_size
        norm_head = lambda h: adapter.lm_head(adapter.text_model.norm(h)).float()  # noqa: E731
        extra_logits = None
        if seq.n_extra:  # a policy that cuts nothing: the extra tokens went through every layer
            extra_logits = norm_head(seq.hidden[:, -seq.n_extra:])
            self.cut(~seq.extra)
        logits = norm_head(seq.hidden if all_logits else seq.hidden[:, -1:])
        _sync(adapter.device)
        timings = {"vision": t1 - t0, "llm_prefill": time.perf_counter() - t1}
        kept_ids = [seq.visual_id[b][seq.visual_id[b] >= 0].cpu() for b in range(B)]
        return PrefillState(
            logits=logits if all_logits else logits[:, -1], cache=self.cache, attention_mask=seq.mask,
            positions=seq.positions, visual_tokens=[int(v) for v in self.visual_total.tolist()],
            kept_tokens=[len(k) for k in kept_ids], token_layers=list(self.token_layers),
            kept_visual=kept_ids, kept_coords=[self.batch.coords[b][kept_ids[b]] for b in range(B)],
            timings=timings, scores=self.scores, score_ids=self.score_ids, extra_logits=extra_logits,
        )


def prefill(adapter: Adapter, batch: EncodedBatch, method: Pruner | None = None, *, cut: CutPolicy | None = None,
            all_logits: bool = False) -> PrefillState:
    """Run the prompt through the model, pruning where ``method`` says (default: none), each stage applied as the
    ``cut`` policy says (default: :data:`HardCut`, inference; training passes :class:`RecordScores` or a relaxed
    cut from :mod:`vtprune.training.relax`); returns the state decoding continues from. The cache of a policy
    that cuts nothing is not meant for decoding."""
    session = PrefillSession(adapter, batch, method if method is not None else NoPruning(), cut or HardCut())
    dev = adapter.device
    with torch.set_grad_enabled(session.policy.grad):
        t0 = time.perf_counter()
        session.embed()
        _sync(dev)
        t1 = time.perf_counter()
        for stage in session.stages:
            if stage.site == "pre_llm":
                session.apply_stage(stage)
        session.run_layers()
        return session.finish(all_logits, t0, t1)


def vision_hidden_states(adapter: Adapter, method: Pruner) -> bool | list[int]:
    """The vision tower's hidden states ``method`` needs recorded by the tower (HF's ``output_hidden_states``): the
    union of what its ``select`` reads, what the adapter's vision-attention statistics read and, where the adapter
    does not record them itself (:attr:`Adapter.records_token_features`), the levels of its per-token features;
    True (all) where one of them cannot say, False where nothing is needed."""
    wanted: set[int] = set()
    parts = []
    if "vision_outputs" in method.requires:
        parts.append(method.vision_hidden_states())
    if "vision_attention" in method.requires:
        parts.append(adapter.vision_stats_hidden_states())
    if "vision_features" in method.requires and not adapter.records_token_features:
        parts.append(method.vision_hidden_states())
    for part in parts:
        if part is None:
            return True
        wanted.update(part)
    return sorted(wanted) if parts else False


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
