"""``vtprune train stts``: train the STTS scorer end to end (HF Trainer).

Loss = LM loss on the answer tokens (teacher forcing over prompt + answer, through the pruned encoder and the
shortened LLM sequence) + ``temporal_weight`` x the temporal loss (MSE, or BCE). The LM loss reaches the scorer through the key
bias of ViT block ``j + 1``. What trains besides the scorer (``tune``): nothing (``none``, the default), LoRA
adapters on the LLM's attention projections (``lora``, via peft), or the whole base model (``full``; STTS trains
jointly with ViT, connector and LLM). The output directory holds the scorer (``model.safetensors`` +
``vtprune_config.json``, scorer weights only), plus ``lora/`` (a peft adapter) or ``base_model/`` when those train,
``log.jsonl`` and, with ``save_steps``, Trainer checkpoints under ``checkpoints/`` that hold the trainable weights only
(a frozen base model is not written at every save) with optimizer, scheduler and RNG state: ``resume`` continues
from the last one exactly (same weights, optimizer state and next batch as the uninterrupted run).
"""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from vtprune.adapters.base import Adapter, EncodedBatch, Sample
from vtprune.errors import ConfigError, InputError
from vtprune.options import check_choice, check_int, check_out_dir, check_positive, check_range
from vtprune.methods.stts import STTS, STTSConfig
from vtprune.runtime import ops, vision
from vtprune.hub import LORA_DIR
from vtprune.training.supervised import SupervisedBatch, encode_with_answers
from vtprune.training.common import CollatorRandom, ListDataset, training_arguments

log = logging.getLogger(__name__)

TUNE = ("none", "lora", "full")
LORA_TARGETS = r".*language_model\.layers\.\d+\.self_attn\.(q_proj|k_proj|v_proj|o_proj)"
SATURATED = 1e-4
"""A score this close to 0 or 1 sits where the sigmoid's slope is below 1e-4: the MSE's gradient through it is gone."""


def saturated_share(scores: torch.Tensor) -> float:
    """The share of ``scores`` within :data:`SATURATED` of 0 or 1."""
    s = scores.float()
    return float(((s < SATURATED) | (s > 1 - SATURATED)).float().mean())

_CORE = ("input_ids", "attention_mask", "labels", "visual_mask")


def stts_loss(adapter: Adapter, method: STTS, batch: SupervisedBatch) -> tuple[torch.Tensor, dict[str, float]]:
    """Training loss of one batch: LM loss through the pruned encoder and LLM + the method's temporal loss."""
    dev = adapter.device
    enc = EncodedBatch(batch.input_ids, batch.attention_mask, batch.model_inputs, batch.visual_mask, [], [])
    stage = vision.vit_stage(method.stages(adapter.num_layers))
    aux, saturated = None, 0.0
    if stage is None:  # keep = 1: the stock model
        emb, keep = adapter.embed(enc), batch.attention_mask.to(dev).bool()
    else:
        emb, keep, decisions = vision.embed_with_vit(adapter, enc, method, stage)
        losses = [d.aux_loss for d in decisions if d.aux_loss is not None]
        aux = torch.stack(losses).sum() if losses else None
        scores = [d.scores for d in decisions if d.scores is not None]
        if scores:
            saturated = saturated_share(torch.cat(scores))
    index, valid = ops.compact_index(keep & batch.attention_mask.to(dev).bool())
    labels = batch.labels.to(dev).gather(1, index).masked_fill(~valid, -100)
    out = adapter.model(
        inputs_embeds=ops.gather_seq(emb.embeds, index, 1),
        attention_mask=valid.long(),
        position_ids=adapter.forward_position_ids(ops.gather_seq(emb.positions, index, 2)),
        labels=labels,
        **adapter.block_inputs(batch.model_inputs, index),
    )
    loss = out.loss if aux is None else out.loss + aux
    parts = {"lm_loss": float(out.loss.detach()), "temporal_loss": float(aux.detach()) if aux is not None else 0.0,
             "visual_kept": float((keep & enc.visual_mask.to(dev)).sum()) / max(1, int(enc.visual_mask.sum())),
             "saturated": saturated}
    return loss, parts


class _Trainee(nn.Module):
    """What HF Trainer sees: the base model and the scorer as submodules; ``forward`` returns the STTS loss."""

    def __init__(self, adapter: Adapter, method: STTS, keep_range: tuple[float, float] | None = None,
                 seed: int = 0) -> None:
        super().__init__()
        assert method.scorer is not None
        self.model = adapter.model
        self.scorer = method.scorer
        self._adapter, self._method = adapter, method
        self._keep_range = keep_range
        self.history: list[dict[str, float]] = []

    def forward(self, **batch: Any) -> dict[str, torch.Tensor]:
        batch.pop("num_items_in_batch", None)
        if self._keep_range is not None:  # a keep ratio drawn per step: one scorer for every keep at inference
            lo, hi = self._keep_range  # from torch's generator, which a resumed Trainer restores
            self._method.keep = lo + (hi - lo) * float(torch.rand(()))
        sup = SupervisedBatch(batch["input_ids"], batch["attention_mask"], batch["labels"],
                              {k: v for k, v in batch.items() if k not in _CORE}, batch["visual_mask"].bool(), [])
        loss, parts = stts_loss(self._adapter, self._method, sup)
        if not loss.requires_grad:  # a batch with nothing to prune: keep the graph well formed
            loss = loss + 0 * sum(p.sum() for p in self.scorer.parameters())
        self.history.append(parts)
        return {"loss": loss}



def _trainer_class() -> type:
    from transformers import Trainer

    class STTSTrainer(Trainer):
        """Checkpoints hold the trainable weights only (the scorer, LoRA, or all under ``--tune full``); the
        Trainer loads a plain module's checkpoint by name and non-strictly, so resume restores exactly those."""

        def _save(self, output_dir: str | None = None, state_dict: dict | None = None) -> None:
            if state_dict is None:
                state_dict = {n: p.detach().contiguous() for n, p in self.model.named_parameters() if p.requires_grad}
            super()._save(output_dir, state_dict=state_dict)

        def _issue_warnings_after_load(self, load_result: Any) -> None:
            trainable = {n for n, p in self.model.named_parameters() if p.requires_grad}
            lost = trainable & set(load_result.missing_keys)
            if lost or load_result.unexpected_keys:  # the frozen weights are absent by design
                raise ConfigError(f"the checkpoint does not match this run's trainable weights (missing "
                                  f"{sorted(lost)[:3]}, unexpected {sorted(load_result.unexpected_keys)[:3]}): "
                                  "resume with the settings it was started with")

    return STTSTrainer


def _load_rows(data: list[str], num_frames: int | None) -> list[tuple[Sample, list[str]]]:
    from vtprune.data.dataset import read_jsonl, resolve_data
    from vtprune.data.dataset import sample_for_record

    rows = []
    for spec in data:
        for r in read_jsonl(resolve_data(spec)):
            if r.video is None:
                continue
            rows.append((sample_for_record(r, num_frames), r.answers))  # with the line's fps, as eval reads it
    return rows


def _collator(adapter: Adapter, rng: CollatorRandom):
    def collate(rows: list[tuple[Sample, list[str]]]) -> dict[str, Any]:
        rng_ = rng.stream()
        b = encode_with_answers(adapter, [s for s, _ in rows], [rng_.choice(list(a)) for _, a in rows])
        return dict(input_ids=b.input_ids, attention_mask=b.attention_mask, labels=b.labels,
                    visual_mask=b.visual_mask, **b.model_inputs)

    return collate


def _tune(vlm: Any, tune: str, lora_rank: int) -> Any:
    """Set what trains in the base model; returns the peft model for ``lora`` (LoRA injected in place)."""
    for p in vlm.model.parameters():
        p.requires_grad_(tune == "full")
    if tune != "lora":
        return None
    from peft import LoraConfig, get_peft_model

    from vtprune.api import quiet_peft

    cfg = LoraConfig(r=lora_rank, lora_alpha=2 * lora_rank, lora_dropout=0.0, target_modules=LORA_TARGETS)
    with quiet_peft():
        return get_peft_model(vlm.model, cfg)


def apply_lora(vlm: Any, path: str | Path) -> None:
    """Merge a LoRA adapter saved by ``vtprune train stts --tune lora`` (``<out>/lora``) into ``vlm``'s weights, in
    place; the model stays a stock HF model. (``vtprune.load(name, lora=path)`` does the same at load time.)"""
    from vtprune.api import merge_lora

    merge_lora(vlm.model, path)


@dataclass
class STTSTrainSettings:
    """The run settings of :func:`train_stts`, checked before anything loads."""

    out: Path
    """Directory for the scorer (model.safetensors + vtprune_config.json); an existing file is refused."""
    keep: float = 0.5
    """Fraction of each video's units kept after the bias block, in (0, 1)."""
    tune: str = "none"
    """Also train: none | lora (LLM attention, peft) | full."""
    steps: int = 1000
    """Optimizer steps."""
    batch_size: int = 4
    lr: float = 1e-4
    """Learning rate, > 0."""
    temporal_weight: float = 0.5
    """Weight of the temporal loss, >= 0."""
    temporal_loss: str = "mse"
    """mse (STTS) | bce (cross-entropy on the score's logit; does not stall when the sigmoid saturates)."""
    lora_rank: int = 8
    workers: int = 0
    """DataLoader processes that collate batches (0: in the training process; a few keep a GPU fed)."""
    keep_range: tuple[float, float] | None = None
    """(lo, hi): draw each step's keep ratio from [lo, hi] instead of keep (which stays the saved default);
    0 < lo <= hi < 1."""
    save_steps: int = 0
    """Checkpoint every this many steps under out/checkpoints (0: none); --resume continues from the last."""
    stop_after: int | None = None
    """End after this many steps of this invocation with a checkpoint (time-sliced machines); --resume continues."""
    gradient_checkpointing: bool = False
    """Recompute the LLM layers' activations in the backward pass instead of storing them (less memory, about a
    third more LLM compute)."""

    def __post_init__(self) -> None:
        from vtprune.methods.stts.method import TEMPORAL_LOSSES

        check_out_dir("out", self.out)
        check_range("keep", self.keep, 0, 1, lo_open=True, hi_open=True)
        check_choice("tune", self.tune, TUNE)
        for name in ("steps", "batch_size", "lora_rank"):
            check_int(name, getattr(self, name), 1)
        check_positive("lr", self.lr)
        check_range("temporal_weight", self.temporal_weight, 0)
        check_choice("temporal_loss", self.temporal_loss, TEMPORAL_LOSSES)
        check_int("workers", self.workers, 0)
        check_int("save_steps", self.save_steps, 0)
        if self.stop_after is not None:
            check_int("stop_after", self.stop_after, 1)
        if self.keep_range is not None:
            lo, hi = self.keep_range
            for v in (lo, hi):
                check_range("keep_range", v, 0, 1, lo_open=True, hi_open=True)
            if lo > hi:
                raise ConfigError(f"keep_range must be LO,HI with LO <= HI, got {self.keep_range}", argument="keep_range")


def train_stts(
    *, model: str, out: Path, data: list[str] | None = None, rows: list[tuple[Sample, list[str]]] | None = None,
    keep: float = 0.5, block: int | None = None, tune: str = "none", steps: int = 1000, batch_size: int = 4,
    lr: float = 1e-4, temporal_weight: float = 0.5, num_frames: int | None = None, lora_rank: int = 8, seed: int = 0,
    threads: int | None = None, workers: int = 0, keep_range: tuple[float, float] | None = None,
    similarity_input: bool = False, temporal_loss: str = "mse", save_steps: int = 0, resume: bool = False,
    stop_after: int | None = None, gradient_checkpointing: bool = False,
) -> dict[str, Any]:
    """Train an STTS scorer on ``model`` (any :func:`vtprune.load` name) and save it to ``out``.

    ``data``: JSONL paths or ``testbed:`` names (video records; ``num_frames`` frames each); or ``rows`` of
    ``(Sample, answers)`` directly. ``workers`` > 0 collates in that many DataLoader processes. ``keep_range``
    ``(lo, hi)`` draws each step's keep ratio uniformly from it instead of training at ``keep`` alone (the paper
    trains at one drop ratio; the keep is set at inference either way, and ``keep`` stays the saved default).
    ``similarity_input`` gives the scorer each unit's change from the previous step as an input
    (:attr:`STTSConfig.similarity_input`; not in STTS). ``temporal_loss`` ``"mse"`` (STTS) or ``"bce"``
    (:attr:`STTS.temporal_loss`). The saved ``train_meta.json`` reports ``saturated_last``, the share of scores
    stuck at the sigmoid's ends over the last tenth of training; a warning is logged when it is above half.
    ``save_steps``, ``resume``, ``stop_after``, ``gradient_checkpointing``: see :class:`STTSTrainSettings`."""
    from vtprune.api import load
    from vtprune.training.common import checkpoint_llm_layers, stop_after_callback
    from vtprune.training.runlog import trainer_log

    STTSTrainSettings(out=Path(out), keep=keep, tune=tune, steps=steps, batch_size=batch_size, lr=lr,
                      temporal_weight=temporal_weight, temporal_loss=temporal_loss, lora_rank=lora_rank,
                      workers=workers, keep_range=keep_range, save_steps=save_steps, stop_after=stop_after,
                      gradient_checkpointing=gradient_checkpointing)
    if threads:
        torch.set_num_threads(threads)
    rows = list(rows or []) + (_load_rows(data, num_frames) if data else [])
    if not rows:
        raise InputError("no video training records")
    vlm = load(model)
    method = STTS(keep=keep, block=block, temporal_weight=temporal_weight, temporal_loss=temporal_loss, seed=seed)
    scfg = STTSConfig.for_vision_config(vlm.model.config.vision_config)
    scfg.similarity_input = similarity_input
    method.init_scorer(scfg)
    if gradient_checkpointing:
        checkpoint_llm_layers(vlm.adapter)
    peft_model = _tune(vlm, tune, lora_rank)
    trainee = _Trainee(vlm.adapter, method, keep_range, seed)
    args = training_arguments(
        out, max_steps=steps, per_device_train_batch_size=batch_size,
        learning_rate=lr, warmup_steps=max(1, steps // 20), weight_decay=0.0,
        logging_steps=max(1, min(50, steps // 20)), seed=seed, dataloader_num_workers=workers,
        **({"save_strategy": "steps", "save_steps": save_steps} if save_steps else {"save_strategy": "no"}),
    )
    ckpt = Path(out) / "checkpoints"
    resuming = resume and any(ckpt.glob("checkpoint-*"))
    stop = stop_after_callback(stop_after)
    trainer = _trainer_class()(model=trainee, args=args, train_dataset=ListDataset(rows),
                               data_collator=_collator(vlm.adapter, CollatorRandom(seed)),
                               callbacks=[trainer_log(Path(out), resume=bool(resuming)), *stop])
    t0 = time.perf_counter()
    result = trainer.train(resume_from_checkpoint=True if resuming else None)
    seconds = time.perf_counter() - t0
    out.mkdir(parents=True, exist_ok=True)
    method.scorer.eval()  # type: ignore[union-attr]
    method.keep = keep
    main = trainer.is_world_process_zero()  # under accelerate launch, one process writes the results
    if main:
        method.save_pretrained(out)
    if main and peft_model is not None:
        for cfg in peft_model.peft_config.values():  # the name it was trained on, not this machine's path to it
            cfg.base_model_name_or_path = model
        from vtprune.api import quiet_peft

        with quiet_peft():
            peft_model.save_pretrained(str(out / LORA_DIR))
    elif main and tune == "full":
        vlm.model.save_pretrained(out / "base_model")
        vlm.tokenizer.save_pretrained(out / "base_model")
        vlm.image_processor.save_pretrained(out / "base_model")
        if vlm.video_frames is not None:  # the frame sampling the base model came with (``vtprune.load`` reads it)
            from vtprune.training.zoo import write_processing

            write_processing(out / "base_model", vlm.video_frames)

    def mean(key: str, part: list[dict[str, float]]) -> float:
        return sum(h[key] for h in part) / len(part) if part else math.nan

    n = max(1, len(trainee.history) // 10)
    meta = {
        "steps_done": trainer.state.global_step, "finished": trainer.state.global_step >= steps,
        "model": model, "data": data or [], "records": len(rows), "keep": keep, "keep_range": keep_range, "similarity_input": similarity_input, "block": block,
        "tune": tune, "temporal_loss": temporal_loss,
        "steps": steps, "batch_size": batch_size, "lr": lr, "temporal_weight": temporal_weight,
        "num_frames": num_frames, "seed": seed, "seconds": round(seconds, 1), "train_loss": result.training_loss,
        "scorer_params": sum(p.numel() for p in method.scorer.parameters()),  # type: ignore[union-attr]
        "lm_loss_first": mean("lm_loss", trainee.history[:n]), "lm_loss_last": mean("lm_loss", trainee.history[-n:]),
        "temporal_loss_first": mean("temporal_loss", trainee.history[:n]),
        "temporal_loss_last": mean("temporal_loss", trainee.history[-n:]),
        "saturated_last": mean("saturated", trainee.history[-n:]),
        "visual_kept": mean("visual_kept", trainee.history),
        "visual_kept_min": min((h["visual_kept"] for h in trainee.history), default=math.nan),
        "visual_kept_max": max((h["visual_kept"] for h in trainee.history), default=math.nan),
    }
    if main:
        (out / "train_meta.json").write_text(json.dumps(meta, indent=1))
    if meta["saturated_last"] > 0.5:
        log.warning("stts: %.0f%% of the scores ended at the sigmoid's ends, where the temporal %s no longer trains "
                    "them; try a lower --lr or --temporal-loss bce", 100 * meta["saturated_last"], temporal_loss)
    return meta
