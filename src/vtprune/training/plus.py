"""GlimpsePrune+ (``vtprune train plus``): the LLM learns under pruning with GRPO, then the pruner relearns on it.

Stage 1 (RL): a LoRA adapter (r 32, alpha 64, dropout 0.05) on every linear layer of the LLM's decoder layers
(not the embeddings, not the vision tower) trains with GRPO while a frozen GlimpsePrune pruner prunes: per prompt a
group of completions is sampled (temperature 1.0) through vtprune's own pruned prefill and decode
(:func:`rollout`: one prefill per prompt, which the pruner cuts deterministically, continued by all of its group's
completions in one decoding batch), rewarded (:mod:`vtprune.training.rewards`), the advantages are
normalised within the group, and the log-probabilities of the sampled tokens are recomputed with gradients on the
*same* pruned sequence (:func:`completion_logprobs`: the kept visual tokens of the rollout are kept again, so the
policy is scored exactly where it sampled). The KL penalty (k3, weight 0.04) is to the base model, which is the
same network with the adapter disabled (``PeftModel.disable_adapter``), under the same pruning.
What decides the keep set in the rollouts (``rollout_masks``): the pruner's VIP (``vip``, default), or, as the
official recipe's original config does (``use_ref_masks``, ``gen_mask_usage_ratio`` 0), the record's evidence
``boxes`` (``boxes``: every token cell a box touches is kept, the rest cut after the same layer K, the glimpse path
unchanged); ``vip_mask_ratio`` sends that share of the prompts (a seeded draw per prompt) to the VIP instead
(the official ``gen_mask_usage_ratio``). A prompt whose boxes cannot say what to keep (no boxes, more than one image,
or boxes outside the image) is pruned by the VIP. The log-probability passes replay whichever keep set the rollout used.
Stage 2: the adapter is merged into the in-memory weights and the glimpse token + VIP train again on that model
through the GlimpsePrune trainer (:func:`vtprune.training.glimpse.train_glimpse`).

The output folder holds both, as the official GlimpsePrune+ release does: the pruner (``vtprune_config.json`` +
``model.safetensors``) and the PEFT adapter (``adapter_config.json`` + ``adapter_model.safetensors``);
``--pruner DIR`` applies the adapter. The base model is never written.

What is reused: PEFT for the adapter (injection, ``disable_adapter`` as the reference model, saving and loading),
accelerate for processes (``accelerate launch``: the prompts of a step are split over processes and the adapter's
gradients averaged, so N processes step as one does with the same global batch). Not TRL's ``GRPOTrainer``: it
generates with the model's stock ``generate``, which cannot cut tokens inside the LLM after layer K (GlimpsePrune
prunes there, and the pruned KV cache is what decoding must see), and it computes log-probabilities with a stock
forward over the unpruned sequence; both would train a policy on inputs it never sees at inference. The GRPO loss
itself is three lines (:mod:`vtprune.training.grpo`).

Runs are reproducible and resumable: step ``s`` takes prompts ``[s*G', (s+1)*G')`` of a seeded permutation per
epoch (``G'`` the global batch), each completion is drawn from its own seeded stream (seed, step, row), and a
checkpoint (``checkpoints/step-N``: adapter, optimizer, scheduler, RNG state) restores all of it.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import torch

from vtprune.errors import ConfigError
from vtprune.methods.base import Pruner
from vtprune.methods.glimpse.method import GlimpsePruner
from vtprune.methods.glimpse.plus import KeepGiven
from vtprune.runtime.executor import HardCut, PrefillState, prefill
from vtprune.runtime.generation import decode
from vtprune.training import grpo
from vtprune.training.rewards import NAMES as REWARD_NAMES
from vtprune.training.rewards import JudgeClient, reward_for

log = logging.getLogger("vtprune.training.plus")

STAGES = ("1", "2", "both")
ROLLOUT_MASKS = ("vip", "boxes")


@dataclass
class PlusConfig:
    """Settings of ``vtprune train plus`` (defaults: the official recipe)."""

    model: str
    """Base model (frozen): ``zoo:<name>``, ``random:<family>`` or a directory."""
    pruner: str
    """The GlimpsePrune pruner that prunes during stage 1 and that stage 2 retrains (directory or ``zoo:<name>``)."""
    data: list[str]
    """Training data: JSONL files (ours or the official Visual-CoT layout) or ``testbed:<name>``."""
    out: Path
    """Output folder: pruner + adapter, ``log.jsonl``, ``checkpoints/``."""
    stage: str = "both"
    """``1`` (RL only), ``2`` (pruner only, on ``adapter``), ``both``."""
    steps: int = 100
    """Stage-1 optimizer steps."""
    batch_size: int = 2
    """Prompts per process per step (the global batch is this times the number of processes)."""
    group: int = 4
    """Completions sampled per prompt."""
    temperature: float = 1.0
    max_new_tokens: int = 16
    """Longest sampled completion."""
    kl_weight: float = 0.04
    lr: float = 1e-4
    warmup: float = 0.0
    """Fraction of the steps with a linear warm-up (then cosine to 0)."""
    lora_r: int = 32
    lora_alpha: int = 64
    lora_dropout: float = 0.05
    reward: str = "exact"
    """Default reward (a record's ``reward`` key overrides it): one of :data:`vtprune.training.rewards.NAMES`."""
    type_rewards: dict[str, str] = field(default_factory=dict)
    """Reward per task type (a record's ``type``), between its ``reward`` key and ``reward``: ``{"document": "nls"}``."""
    judge_url: str | None = None
    judge_model: str = "judge"
    judge_timeout: float = 30.0
    max_grad_norm: float = 1.0
    rollout_masks: str = "vip"
    """What keeps visual tokens in the stage-1 rollouts: ``vip`` (the pruner) or ``boxes`` (the record's evidence
    boxes, the official recipe's original ``use_ref_masks``; prompts without usable boxes fall back to the VIP)."""
    vip_mask_ratio: float = 0.0
    """With ``rollout_masks="boxes"``: the share of prompts pruned by the VIP instead of their boxes (a seeded draw
    per prompt; the official ``gen_mask_usage_ratio``): 0 = boxes only, 1 = the VIP only."""
    skip_flat: bool = False
    """Leave groups whose completions all got the same reward (advantage 0) out of the loss pass, as DAPO's filter
    does (Yu et al., arXiv 2503.14476; without refilling the batch): the loss averages over the groups that carry a
    policy gradient, and the log-probability passes run on their rows only. Off: the official recipe (TRL's GRPO
    averages over every completion)."""
    seed: int = 0
    save_steps: int = 0
    """Checkpoint every this many steps (0: only at the end)."""
    log_steps: int = 1
    resume: bool = False
    stop_after: int | None = None
    """End the run after this many steps (as if killed, a checkpoint written), for time-sliced runs; ``--resume``
    continues it."""
    adapter: str | None = None
    """Stage 2 alone: the stage-1 adapter folder to merge first."""
    stage2_steps: int = 100
    stage2_lr: float = 1e-4
    stage2_batch_size: int = 4
    stage2_mode: str = "auto"
    threads: int | None = None

    def __post_init__(self) -> None:
        self.out = Path(self.out)
        if self.stage not in STAGES:
            raise ConfigError(f"--stage must be one of {', '.join(STAGES)}, got {self.stage!r}")
        for name in ("steps", "batch_size", "group", "max_new_tokens", "lora_r", "log_steps", "stage2_steps",
                     "stage2_batch_size"):
            if int(getattr(self, name)) < 1:
                raise ConfigError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")
        if self.group < 2:
            raise ConfigError("--group must be >= 2 (advantages are normalised within a group)")
        if self.temperature <= 0:
            raise ConfigError(f"--temperature must be > 0 (GRPO samples), got {self.temperature}")
        if self.lr <= 0 or self.stage2_lr <= 0 or self.kl_weight < 0 or self.save_steps < 0:
            raise ConfigError("learning rates must be > 0, --kl-weight and --save-steps >= 0")
        if not 0 <= self.lora_dropout < 1 or not 0 <= self.warmup < 1:
            raise ConfigError("--lora-dropout and --warmup must be in [0, 1)")
        if self.reward not in REWARD_NAMES:
            raise ConfigError(f"--reward must be one of {', '.join(REWARD_NAMES)}, got {self.reward!r}")
        bad = {k: v for k, v in self.type_rewards.items() if v not in REWARD_NAMES}
        if bad:
            raise ConfigError(f"--type-reward names must be in {', '.join(REWARD_NAMES)}, got {bad}")
        if self.stop_after is not None and self.stop_after < 1:
            raise ConfigError(f"--stop-after must be >= 1, got {self.stop_after}")
        if self.rollout_masks not in ROLLOUT_MASKS:
            raise ConfigError(f"--rollout-masks must be one of {', '.join(ROLLOUT_MASKS)}, got {self.rollout_masks!r}")
        if not 0.0 <= self.vip_mask_ratio <= 1.0:
            raise ConfigError(f"--vip-mask-ratio must be in [0, 1], got {self.vip_mask_ratio}")
        if self.rollout_masks == "vip" and self.vip_mask_ratio != 0.0:
            raise ConfigError("--vip-mask-ratio needs --rollout-masks boxes (with vip the VIP prunes every prompt)")
        if self.stage == "2" and self.adapter is None:
            raise ConfigError("--stage 2 needs --adapter (the stage-1 output folder)")


# --- rollouts and log-probabilities under pruning ---------------------------------------------------------------
@dataclass
class Rollout:
    """Sampled completions of a batch of prompts, ``group`` adjacent rows per prompt.

    Attributes:
        batch: the encoded prompts (one row per prompt: a group's rows share its prefill).
        tokens: ``[B, T]`` sampled ids (padding after a row's end).
        mask: ``[B, T]`` bool, the completion's tokens up to and including its end-of-sequence token.
        kept: per row the original visual indices the pruner kept.
        layer: the layer after which it cut.
        texts: decoded completions.
        retention: per row, kept / visual tokens.
    """

    batch: Any
    tokens: torch.Tensor
    mask: torch.Tensor
    kept: list[torch.Tensor]
    layer: int
    texts: list[str]
    retention: list[float]
    samples: list[Any]
    """The prompts' samples, one per prompt."""
    group: int = 1
    by_boxes: list[bool] = field(default_factory=list)
    """Per prompt: whether its evidence boxes, not the VIP, chose its kept tokens."""

    def select(self, prompts: list[int], adapter: Any) -> "Rollout":
        """The rollout of ``prompts`` (indices into :attr:`samples`) and their groups only; the prompts are encoded
        again (kept indices are per prompt, so the replayed cut is the same)."""
        rows = [p * self.group + j for p in prompts for j in range(self.group)]
        idx = torch.tensor(rows, dtype=torch.long)
        samples = [self.samples[i] for i in prompts]
        return Rollout(batch=adapter.encode(samples), tokens=self.tokens[idx], mask=self.mask[idx],
                       kept=[self.kept[i] for i in rows], layer=self.layer, texts=[self.texts[i] for i in rows],
                       retention=[self.retention[i] for i in rows], samples=samples, group=self.group,
                       by_boxes=[self.by_boxes[i] for i in prompts] if self.by_boxes else [])


def completion_mask(tokens: torch.Tensor, eos_ids: list[int]) -> torch.Tensor:
    """``[B, T]`` bool: positions up to and including each row's first end-of-sequence token."""
    is_eos = torch.isin(tokens, torch.tensor(eos_ids, device=tokens.device))
    before = torch.cumsum(is_eos.long(), dim=1) - is_eos.long()  # eos tokens strictly before t
    return before == 0


def row_seed(seed: int, step: int, row: int) -> int:
    """The sampling seed of completion ``row`` (global index) at ``step``: independent of batch and process split."""
    return (seed * 1_000_003 + step * 10_007 + row) % (2**63 - 1)


def repeat_rows(state: PrefillState, group: int) -> PrefillState:
    """``state`` of ``N`` prompts -> the state of ``N * group`` rows, each prompt's row repeated ``group`` times
    (adjacent); the cache is repeated in place. Differentiable: under grad a group's completions are scored on one
    prefill of its prompt (which a deterministic pruner cuts the same way for every completion)."""
    if group == 1:
        return state

    def rep(xs: list[Any]) -> list[Any]:
        return [x for x in xs for _ in range(group)]

    state.cache.batch_repeat_interleave(group)
    return replace(state, logits=state.logits.repeat_interleave(group, 0),
                   attention_mask=state.attention_mask.repeat_interleave(group, 0),
                   positions=state.positions.repeat_interleave(group, 1), visual_tokens=rep(state.visual_tokens),
                   kept_tokens=rep(state.kept_tokens), token_layers=rep(state.token_layers),
                   kept_visual=rep(state.kept_visual), kept_coords=rep(state.kept_coords), scores=[], score_ids=[],
                   extra_logits=None)


@dataclass
class BoxesOrVIP(GlimpsePruner):
    """A GlimpsePrune pruner whose keep set is given for some prompts (their box cells): ``given[b]`` the original
    visual indices sample ``b`` keeps, or None where the VIP decides. The glimpse path runs as usual (the cut after
    layer K). Not registered: built by :func:`rollout` only."""

    given: list[torch.Tensor | None] = field(default_factory=list)

    def select(self, ctx: Any) -> torch.Tensor:
        out = super().select(ctx)
        kept = [torch.zeros(0, dtype=torch.long) if k is None else k for k in self.given]
        boxes = KeepGiven(kept=kept).select(ctx)
        use = torch.tensor([k is not None for k in self.given], device=out.device)[:, None]  # [B, 1]
        return torch.where(use, boxes, out)


def box_keep(adapter: Any, batch: Any, samples: list[Any], boxes: list[list[list[float]] | None]
             ) -> list[torch.Tensor | None]:
    """Per sample, the original visual indices its ``boxes`` touch (the box targets of ``train glimpse --mode
    box``, :func:`vtprune.training.glimpse.box_targets`), or None where the boxes cannot say: no boxes, not exactly
    one image, or no cell touched."""
    from vtprune.training.glimpse import box_targets

    out: list[torch.Tensor | None] = []
    for b, (s, bx) in enumerate(zip(samples, boxes)):
        if not bx or len(s.images) != 1 or len(batch.grids[b]) != 1:
            out.append(None)
            continue
        idx, m = box_targets(adapter, batch, b, s.images[0], bx)
        out.append(idx[m] if bool(m.any()) else None)
    return out


def vip_prompts(seed: int, step: int, first: int, n: int, ratio: float) -> list[bool]:
    """Which of ``n`` prompts (global indices ``first..first+n-1`` of ``step``) the VIP prunes under
    ``vip_mask_ratio = ratio``: one seeded draw per prompt, independent of batch and process split."""
    return [torch.rand(1, generator=torch.Generator().manual_seed(row_seed(seed + 1, step, first + i))).item() < ratio
            for i in range(n)]


@torch.no_grad()
def rollout(vlm: Any, method: Pruner, samples: list[Any], group: int, temperature: float, max_new_tokens: int,
            seeds: list[int], boxes: list[list[list[float]] | None] | None = None) -> Rollout:
    """Sample ``group`` completions per sample with ``method`` pruning (one prefill per prompt, then decoding of
    all rows in one batch); ``seeds`` has one seed per completion row. ``method`` must cut deterministically (a
    GlimpsePrune pruner does): a group's completions continue one prefill. ``boxes`` (per sample, or None): keep the
    cells these evidence boxes touch instead of the VIP's choice (:func:`box_keep`; a sample without usable boxes
    keeps the VIP's); ``method`` must then be a :class:`GlimpsePruner`."""
    adapter = vlm.adapter
    batch = adapter.encode(list(samples))
    given = box_keep(adapter, batch, list(samples), boxes) if boxes is not None else []
    if any(k is not None for k in given):
        if not isinstance(method, GlimpsePruner):
            raise ConfigError("box rollouts need a GlimpsePrune pruner (the cut after its layer K)")
        method = BoxesOrVIP(**{f.name: getattr(method, f.name) for f in fields(method) if f.init}, given=given)
    state = repeat_rows(prefill(adapter, batch, method), group)
    cfg = vlm.generation_config(max_new_tokens=max_new_tokens, temperature=temperature, do_sample=temperature > 0)
    eos = [int(e) for e in (cfg.eos_token_id if isinstance(cfg.eos_token_id, list) else [cfg.eos_token_id])]
    tokens = decode(adapter, state, cfg, row_seeds=seeds)
    layer = next(s.after for s in method.stages(adapter.num_layers) if s.site == "llm")
    return Rollout(batch=batch, tokens=tokens, mask=completion_mask(tokens, eos), kept=state.kept_visual, layer=layer,
                   texts=[t.strip() for t in vlm.tokenizer.batch_decode(tokens.cpu(), skip_special_tokens=True)],
                   retention=state.retention(), samples=list(samples), group=group,
                   by_boxes=[k is not None for k in given] if given else [False] * len(samples))


def completion_logprobs(vlm: Any, ro: Rollout, temperature: float = 1.0, grad: bool = True) -> torch.Tensor:
    """``[B, T]`` log-probabilities of the rollout's tokens under the model as it is now, on the rollout's pruned
    sequence (its kept visual tokens, cut after the same layer); 0 outside ``ro.mask``. Logits are divided by
    ``temperature``, as in sampling."""
    adapter = vlm.adapter
    with torch.set_grad_enabled(grad):
        keep = KeepGiven(kept=ro.kept[:: ro.group], at=ro.layer)
        state = repeat_rows(prefill(adapter, ro.batch, keep, cut=HardCut(grad=grad)), ro.group)
        tok = ro.tokens.to(adapter.device)
        mask = ro.mask.to(adapter.device)
        first = torch.log_softmax(state.logits.float() / temperature, -1).gather(1, tok[:, :1])  # [B, 1]
        if tok.shape[1] == 1:
            return first * mask
        n = tok.shape[1] - 1
        step = torch.arange(1, n + 1, device=adapter.device, dtype=state.positions.dtype)
        pos = state.positions[..., -1:] + step  # continues from the unpruned prompt, as decoding does
        am = torch.cat([state.attention_mask, mask[:, :-1].long()], dim=1)
        out = adapter.model(input_ids=tok[:, :-1], attention_mask=am, position_ids=adapter.forward_position_ids(pos),
                            past_key_values=state.cache, use_cache=True)
        rest = torch.log_softmax(out.logits.float() / temperature, -1).gather(2, tok[:, 1:, None]).squeeze(2)
        return torch.cat([first, rest], dim=1) * mask


# --- the LoRA policy ----------------------------------------------------------------------------------------------
def llm_linear_names(vlm: Any) -> list[str]:
    """Full module names of every ``nn.Linear`` inside the LLM's decoder layers (the official LoRA targets: all
    LLM linears but the embeddings; the LM head is tied to them on small models and stays frozen)."""
    inside = {id(m) for m in vlm.adapter.layers.modules()}
    return [n for n, m in vlm.model.named_modules() if isinstance(m, torch.nn.Linear) and id(m) in inside]


def add_lora(vlm: Any, r: int, alpha: int, dropout: float) -> Any:
    """Inject a LoRA adapter into ``vlm.model`` in place (base frozen); returns the ``PeftModel`` around it."""
    from peft import LoraConfig, get_peft_model

    from vtprune.api import quiet_peft

    vlm.model.requires_grad_(False)
    cfg = LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=llm_linear_names(vlm), bias="none")
    with quiet_peft():
        return get_peft_model(vlm.model, cfg)


def lora_state(peft_model: Any) -> dict[str, torch.Tensor]:
    return {n: p for n, p in peft_model.named_parameters() if p.requires_grad}


def set_dropout_training(peft_model: Any, on: bool) -> None:
    """LoRA dropout on (the loss pass) or off (rollouts); the base model stays in eval mode."""
    for n, m in peft_model.named_modules():
        if n.endswith("lora_dropout") or ".lora_dropout." in n:
            m.train(on)


# --- data order ----------------------------------------------------------------------------------------------------
def step_indices(n: int, step: int, global_batch: int, seed: int) -> list[int]:
    """Dataset indices of the global batch of ``step``: consecutive slices of a seeded permutation per epoch."""
    out = []
    for k in range(step * global_batch, (step + 1) * global_batch):
        epoch, i = divmod(k, n)
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 7919 + epoch))
        out.append(int(perm[i]))
    return out


# --- stage 1 ------------------------------------------------------------------------------------------------------
def train_stage1(cfg: PlusConfig, vlm: Any, method: Any, records: Any, accelerator: Any) -> tuple[Any, dict[str, Any]]:
    """GRPO under pruning; returns the peft model (adapter trained, still injected) and the run's metadata."""
    from transformers import get_scheduler

    from vtprune.training.checkpoint import find_last, load_checkpoint, save_checkpoint
    from vtprune.training.runlog import ProgressBar, RunLog, show_progress

    rank, world = accelerator.process_index, accelerator.num_processes
    torch.manual_seed(cfg.seed)  # identical adapter initialisation in every process
    peft_model = add_lora(vlm, cfg.lora_r, cfg.lora_alpha, cfg.lora_dropout)
    params = list(lora_state(peft_model).values())
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=0.0)
    sched = get_scheduler("cosine", opt, num_warmup_steps=int(cfg.warmup * cfg.steps), num_training_steps=cfg.steps)
    judge = JudgeClient(cfg.judge_url, model=cfg.judge_model, timeout=cfg.judge_timeout) if cfg.judge_url else None
    ckpt_root = cfg.out / "checkpoints"
    start = 0
    if cfg.resume:
        last = find_last(ckpt_root)
        if last is not None:
            start = load_checkpoint(last, peft_model, opt, sched, rank)
            log.info("resumed stage 1 at step %d from %s", start, last)
    runlog = RunLog(cfg.out, enabled=accelerator.is_main_process, resume=cfg.resume and start > 0)
    global_batch = cfg.batch_size * world
    n = len(records)
    end = cfg.steps if cfg.stop_after is None else min(cfg.steps, start + cfg.stop_after)
    t_run = time.perf_counter()
    rollouts_done = 0
    bar = ProgressBar(end, start, enabled=show_progress(accelerator.is_main_process), description="stage 1 (GRPO)")
    from vtprune.adapters import Sample

    for step in range(start, end):
        t0 = time.perf_counter()
        idx = step_indices(n, step, global_batch, cfg.seed)[rank * cfg.batch_size : (rank + 1) * cfg.batch_size]
        recs = [records[i] for i in idx]
        samples = [Sample(r.question, [_image(p) for p in r.images]) for r in recs]
        first_row = (rank * cfg.batch_size) * cfg.group
        seeds = [row_seed(cfg.seed, step, first_row + j) for j in range(len(samples) * cfg.group)]
        boxes = None
        if cfg.rollout_masks == "boxes":
            vip = vip_prompts(cfg.seed, step, rank * cfg.batch_size, len(recs), cfg.vip_mask_ratio)
            boxes = [None if v else (getattr(r, "boxes", None) or None) for r, v in zip(recs, vip)]
        set_dropout_training(peft_model, False)
        with accelerator.autocast():  # the launch config's mixed precision (bf16 in configs/accelerate/ddp.yaml)
            ro = rollout(vlm, method, samples, cfg.group, cfg.temperature, cfg.max_new_tokens, seeds, boxes)
        t_roll = time.perf_counter() - t0
        fns = [reward_for(r, cfg.reward, judge, cfg.type_rewards) for r in recs]
        rewards = torch.tensor([fns[j // cfg.group](ro.texts[j], recs[j // cfg.group])
                                for j in range(len(ro.texts))])
        adv = grpo.group_advantages(rewards, cfg.group)
        flat = grpo.flat_groups(rewards, cfg.group)  # [N] bool
        prompts = [i for i in range(len(samples)) if not (cfg.skip_flat and flat[i])]
        rows = [i * cfg.group + j for i in prompts for j in range(cfg.group)]
        parts = {"loss": 0.0, "kl": 0.0}
        if rows:
            sub = ro if len(prompts) == len(samples) else ro.select(prompts, vlm.adapter)
            ref = None
            with accelerator.autocast():
                if cfg.kl_weight:
                    with peft_model.disable_adapter():
                        ref = completion_logprobs(vlm, sub, cfg.temperature, grad=False)
                set_dropout_training(peft_model, True)
                logp = completion_logprobs(vlm, sub, cfg.temperature, grad=True)
            loss, parts = grpo.grpo_loss(logp, ref, adv[rows].to(logp.device), sub.mask.to(logp.device),
                                         cfg.kl_weight)
            loss.backward()
        for p in params:  # a process whose groups were all flat still takes part in the step (and the all-reduce)
            if p.grad is None:
                p.grad = torch.zeros_like(p)
        _average_gradients(params, accelerator)
        gnorm = torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm)
        lr_now = sched.get_last_lr()[0]
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        rollouts_done += len(ro.texts) * world
        stats = torch.tensor([float(rewards.mean()), parts["loss"], parts.get("kl", 0.0),
                              sum(ro.retention) / len(ro.retention), float(ro.mask.sum(1).float().mean()),
                              float(flat.float().mean()), sum(ro.by_boxes) / len(ro.by_boxes)])
        stats = accelerator.reduce(stats.to(accelerator.device), reduction="mean").cpu()
        dt = time.perf_counter() - t0
        if (step + 1) % cfg.log_steps == 0 or step + 1 == end:
            runlog.write({"stage": 1, "step": step + 1, "reward": round(float(stats[0]), 5),
                          "loss": round(float(stats[1]), 6), "kl": round(float(stats[2]), 6),
                          "retention": round(float(stats[3]), 5), "completion_tokens": round(float(stats[4]), 2),
                          "flat_groups": round(float(stats[5]), 4), "box_prompts": round(float(stats[6]), 4),
                          "grad_norm": round(float(gnorm), 5), "lr": lr_now,
                          "step_s": round(dt, 3), "rollout_s": round(t_roll, 3),
                          "rollouts_per_s": round(len(ro.texts) * world / max(t_roll, 1e-9), 3)})
        if cfg.save_steps and (step + 1) % cfg.save_steps == 0 or step + 1 == end and end < cfg.steps:
            save_checkpoint(ckpt_root / f"step-{step + 1}", step + 1, peft_model, opt, sched, accelerator)
        bar.advance()
    bar.close()
    runlog.close()
    seconds = time.perf_counter() - t_run
    meta = {"steps_done": end, "steps": cfg.steps, "seconds": round(seconds, 1),
            "rollouts_per_s": round(rollouts_done / seconds, 3) if seconds else None,
            "processes": world, "global_batch": global_batch, "finished": end == cfg.steps}
    return peft_model, meta


def _average_gradients(params: list[torch.Tensor], accelerator: Any) -> None:
    """Mean of every process's gradients, in one flat all-reduce (a no-op in one process)."""
    if accelerator.num_processes == 1:
        return
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    flat = accelerator.reduce(torch.cat([g.reshape(-1) for g in grads]), reduction="mean")
    i = 0
    for p, g in zip(params, grads):
        p.grad = flat[i : i + g.numel()].view_as(g)
        i += g.numel()


def _image(path: Any) -> Any:
    from vtprune.data.dataset import load_image

    return load_image(path) if not hasattr(path, "size") else path


# --- the command ----------------------------------------------------------------------------------------------------
def train_plus(cfg: PlusConfig) -> dict[str, Any]:
    """Run ``vtprune train plus``; returns the run's metadata (also ``out/train_meta.json``)."""
    from accelerate import Accelerator

    from vtprune.api import load, merge_lora, quiet_peft
    from vtprune.data.stream import open_records
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    accelerator = Accelerator(cpu=not torch.cuda.is_available())
    check_launch(accelerator.distributed_type)
    vlm = load(cfg.model, device=accelerator.device)
    method = GlimpsePruner.from_pretrained(cfg.pruner)
    method.stages(vlm.num_layers)  # the pruner fits this model
    method.modules.requires_grad_(False)
    records = open_records(cfg.data, images_only=True)
    cfg.out.mkdir(parents=True, exist_ok=True)
    meta: dict[str, Any] = {"method": "glimpse-plus", "model": cfg.model, "config": _jsonable(asdict(cfg))}
    if cfg.stage in ("1", "both"):
        peft_model, m1 = train_stage1(cfg, vlm, method, records, accelerator)
        meta["stage1"] = m1
        if not m1["finished"]:
            accelerator.wait_for_everyone()
            return meta  # stopped early (--stop-after): --resume continues
        if accelerator.is_main_process:
            with quiet_peft():
                peft_model.save_pretrained(str(cfg.out), safe_serialization=True)
            _fix_adapter_base(cfg.out, cfg.model)
        accelerator.wait_for_everyone()
        with quiet_peft():
            peft_model.merge_and_unload()  # stage 2 sees the tuned model (in memory; the base on disk is untouched)
    else:
        merge_lora(vlm.model, str(cfg.adapter))
        if accelerator.is_main_process and Path(cfg.adapter).resolve() != cfg.out.resolve():
            _copy_adapter(Path(str(cfg.adapter)), cfg.out)
    if cfg.stage in ("2", "both"):
        meta["stage2"] = _stage2(cfg, vlm, method)
    elif accelerator.is_main_process:
        method.save_pretrained(cfg.out)
    if accelerator.is_main_process:
        (cfg.out / "train_meta.json").write_text(json.dumps(meta, indent=1))
    accelerator.wait_for_everyone()
    return meta


def check_launch(distributed_type: Any) -> None:
    """Refuse sharded launches: stage 1 keeps the base model whole in every process and averages the adapter's
    gradients itself (DDP-style; the adapter is a few MB), so an FSDP or DeepSpeed config would shard nothing and
    silently cost what it promises to save."""
    name = str(getattr(distributed_type, "value", distributed_type))
    if name in ("FSDP", "DEEPSPEED"):
        raise ConfigError(f"train plus runs data-parallel only (the base model whole in every process); launched "
                          f"with {name}. Use configs/accelerate/ddp.yaml (or cpu_ddp.yaml); the FSDP/ZeRO configs "
                          "serve train glimpse, stts and base (HF Trainer), see docs/distributed.md")


def _stage2(cfg: PlusConfig, vlm: Any, method: Any) -> dict[str, Any]:
    from vtprune.training.glimpse import train_glimpse

    m = type(method)(config=method.config, modules=method.modules)
    m.modules.requires_grad_(True)
    return train_glimpse(model=vlm, data=list(cfg.data), out=cfg.out, mode=cfg.stage2_mode, lr=cfg.stage2_lr,
                         batch_size=cfg.stage2_batch_size, max_steps=cfg.stage2_steps, seed=cfg.seed, method=m,
                         save_steps=max(cfg.save_steps, 1) if cfg.save_steps else 10**9, resume=cfg.resume,
                         log_fields={"stage": 2})


def _fix_adapter_base(out: Path, model: str) -> None:
    """Record the base model by its vtprune name in ``adapter_config.json`` (peft writes the HF name or nothing)."""
    p = out / "adapter_config.json"
    d = json.loads(p.read_text())
    d["base_model_name_or_path"] = model
    p.write_text(json.dumps(d, indent=2, sort_keys=True))


def _copy_adapter(src: Path, dst: Path) -> None:
    import shutil

    from vtprune.hub import LORA_DIR, resolve

    s = resolve(src)
    s = s / LORA_DIR if (s / LORA_DIR / "adapter_config.json").is_file() else s
    dst.mkdir(parents=True, exist_ok=True)
    for f in ("adapter_config.json", "adapter_model.safetensors"):
        shutil.copy2(s / f, dst / f)


def _jsonable(d: dict[str, Any]) -> dict[str, Any]:
    return {k: (str(v) if isinstance(v, Path) else v) for k, v in d.items()}

