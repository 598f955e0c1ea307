"""Training a GlimpsePrune pruner on a frozen base model (HF Trainer; only the glimpse token and the VIP learn).

Two recipes:

- ``box`` (the paper's stage 1): loss = ``loc_weight * (Dice + 0.1 * BCE)`` of the VIP logits against the evidence
  boxes rasterised onto the token grid, plus ``le_weight * CE`` of the glimpse position predicting the first answer
  token. The sequence is not pruned (``prefill(..., cut=RecordScores())``).
- ``boxfree`` (for data without boxes): distil from the unpruned model. The keep decisions enter layers > K as a
  log weight on the visual key columns (``prefill(..., cut=RelaxedCut(relax, threshold))``, see
  :func:`vtprune.training.relax.relaxed_log_keep`): by default the inference rule's own cut, drawn with
  ``P(keep) = sigmoid(logit)`` and trained straight-through (``sampled``); ``sigmoid`` scales every key by its keep
  probability instead. Loss = ``KL(unpruned || relaxed-pruned)`` of the first answer token +
  ``retention_weight * mean keep probability`` + ``le_weight * CE`` as above.

Samples without images are skipped; in ``box`` mode a sample without boxes contributes its CE only. Boxes belong to
the sample's first image (``[x0, y0, x1, y1]`` pixels of the original image; every token cell the box touches is
a target).
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from PIL import Image

from vtprune.errors import ConfigError
from vtprune.options import check_choice, check_int, check_out_dir, check_positive, check_range
from vtprune.methods.glimpse.method import GlimpsePruner
from vtprune.training.common import CollatorRandom, ListDataset, training_arguments

log = logging.getLogger(__name__)

MODES = ("auto", "box", "boxfree")
DEFAULT_RELAX = "sampled"


# --- targets ----------------------------------------------------------------------------------------------------
def box_token_mask(boxes: list[list[float]], frame: tuple[float, float, float, float, float, float],
                   grid_hw: tuple[int, int]) -> torch.Tensor:
    """Rasterise pixel boxes onto an ``[h, w]`` token grid: every cell a box touches is True.

    Args:
        boxes: ``[x0, y0, x1, y1]`` in original-image pixels.
        frame: ``(sx, sy, ox, oy, fw, fh)``: a pixel ``(x, y)`` lands at ``((x * sx - ox) / fw, (y * sy - oy) / fh)``
            in the frame the grid tiles (resize, then crop offsets, normalised by the frame size; see
            :meth:`vtprune.adapters.base.Adapter.image_frame`).
        grid_hw: token grid ``(h, w)``.
    """
    h, w = grid_hw
    sx, sy, ox, oy, fw, fh = frame
    mask = torch.zeros(h, w, dtype=torch.bool)
    for x0, y0, x1, y1 in boxes:
        u0, u1 = (x0 * sx - ox) / fw, (x1 * sx - ox) / fw
        v0, v1 = (y0 * sy - oy) / fh, (y1 * sy - oy) / fh
        if u1 <= 0 or v1 <= 0 or u0 >= 1 or v0 >= 1:
            continue
        c0, r0 = max(0, math.floor(u0 * w)), max(0, math.floor(v0 * h))
        c1, r1 = min(w - 1, max(c0, math.ceil(u1 * w) - 1)), min(h - 1, max(r0, math.ceil(v1 * h) - 1))
        mask[r0 : r1 + 1, c0 : c1 + 1] = True
    return mask


# --- losses -----------------------------------------------------------------------------------------------------
def dice_loss(logits: torch.Tensor, target: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """1 - (2 sum(p t) + eps) / (sum p + sum t + eps) with p = sigmoid(logits), over one image's tokens."""
    p = torch.sigmoid(logits.float())
    t = target.float()
    return 1.0 - (2.0 * (p * t).sum() + eps) / (p.sum() + t.sum() + eps)


def bce_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean binary cross-entropy with logits over one image's tokens."""
    return F.binary_cross_entropy_with_logits(logits.float(), target.float())


def mask_loss(scores: torch.Tensor, targets: list[tuple[int, torch.Tensor, torch.Tensor]], bce_weight: float = 0.1
              ) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean over images of Dice and of BCE; ``targets`` holds ``(sample, token index [n], target [n])`` per image."""
    dice = [dice_loss(scores[b, idx], t) for b, idx, t in targets]
    bce = [bce_loss(scores[b, idx], t) for b, idx, t in targets]
    return torch.stack(dice).mean(), torch.stack(bce).mean()


# --- data -------------------------------------------------------------------------------------------------------
@dataclass
class TrainItem:
    """One training sample: a question about image(s), its answers and (optional) evidence boxes on image 0."""

    question: str
    images: list[Any]
    answers: list[str]
    boxes: list[list[float]] = field(default_factory=list)


def _item(rec: Any) -> TrainItem | None:
    if isinstance(rec, TrainItem):
        return rec
    if getattr(rec, "video", None):
        return None
    from vtprune.data.dataset import load_image

    paths = list(getattr(rec, "images", None) or [])
    if not paths:
        return None
    return TrainItem(rec.question, [load_image(p) for p in paths], list(rec.answers), list(getattr(rec, "boxes", []) or []))


class Collator:
    """Records -> encoded prompts, first answer tokens and per-image box targets."""

    def __init__(self, adapter: Any, seed: int = 0) -> None:
        self.adapter, self.rng = adapter, CollatorRandom(seed)

    def __call__(self, items: list[Any]) -> dict[str, Any]:
        from vtprune.adapters import Sample
        from vtprune.training.supervised import answer_ids

        its = [i for i in (_item(r) for r in items) if i is not None]
        if not its:
            return {"empty": True}
        batch = self.adapter.encode([Sample(i.question, list(i.images)) for i in its])
        rng = self.rng.stream()
        first = torch.tensor([answer_ids(self.adapter, rng.choice(i.answers))[0] for i in its])
        targets = []
        for b, it in enumerate(its):
            if not it.boxes or not batch.grids[b]:
                continue
            idx, m = box_targets(self.adapter, batch, b, it.images[0], it.boxes)
            targets.append((b, idx, m.float()))
        return {"batch": batch, "first_token": first, "targets": targets}


def box_targets(adapter: Any, batch: Any, b: int, image: Any, boxes: list[list[float]]
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """Sample ``b``'s first-image grid tokens and the box mask over them: ``(idx [n] long, mask [n] bool)``, ``idx``
    the tokens' indices among the sample's visual tokens, ``mask`` True on every cell a box touches
    (:func:`box_token_mask`). ``image`` is that image (PIL or ``[H, W, C]`` array), ``batch`` the encoded batch."""
    _, gh, gw = batch.grids[b][0]
    n0 = int((batch.coords[b][:, 0] == 0).sum())
    size = image.size if isinstance(image, Image.Image) else (image.shape[1], image.shape[0])
    m = box_token_mask(boxes, adapter.image_frame(size), (gh, gw)).flatten()
    idx = torch.arange(n0 - gh * gw, n0)  # a CLS token (LLaVA 'full') comes first and is no target
    return idx, m


# --- the loss of one batch ----------------------------------------------------------------------------------------
@dataclass
class LossWeights:
    """Weights of the training loss's parts (each a finite number >= 0)."""

    loc: float = 1.0
    """box: Dice + ``bce`` * BCE of the VIP logits against the evidence boxes."""
    bce: float = 0.1
    """box: weight of the BCE inside the localisation loss."""
    le: float = 1.0
    """Cross-entropy of the glimpse position predicting the first answer token."""
    kl: float = 1.0
    """boxfree: KL(unpruned || relaxed-pruned) of the first answer token."""
    retention: float = 0.05
    """boxfree: weight of the mean keep probability (``--retention-weight``)."""

    def __post_init__(self) -> None:
        for name in ("loc", "bce", "le", "kl"):
            check_range(f"{name}_weight", getattr(self, name), 0)
        check_range("retention_weight", self.retention, 0)


@dataclass
class GlimpseTrainSettings:
    """The run settings of :func:`train_glimpse`, checked before anything loads."""

    out: Path
    """Where the pruner goes (checkpoints under out/checkpoints); an existing file is refused."""
    mode: str = "auto"
    """box (Dice+BCE on evidence boxes + glimpse CE), boxfree (distil from the unpruned model), auto (box if the
    data has boxes)."""
    epochs: float = 1.0
    """Passes over the data (fractions allowed), > 0."""
    lr: float = 1e-4
    """Peak learning rate (cosine schedule), > 0."""
    batch_size: int = 4
    """Samples per optimizer step and process (before gradient accumulation)."""
    grad_accum: int = 1
    """Batches accumulated per optimizer step."""
    max_steps: int | None = None
    """Stop after this many optimizer steps (overrides epochs)."""
    warmup: float = 0.1
    """Fraction of the steps spent warming the learning rate up, in [0, 1]."""
    save_steps: int = 500
    """Optimizer steps between checkpoints."""
    logging_steps: int = 10
    relax: str = DEFAULT_RELAX
    """boxfree: how training sees the cut: sampled (the hard cut, decisions drawn with P = keep probability,
    straight-through), hard (the threshold's cut, straight-through) or sigmoid (every key scaled by its keep
    probability)."""
    workers: int = 0
    """DataLoader processes that collate batches (0: in the training process; a few keep a GPU fed)."""

    def __post_init__(self) -> None:
        from vtprune.training.relax import RELAXATIONS

        check_out_dir("out", self.out)
        check_choice("mode", self.mode, MODES)
        check_positive("epochs", self.epochs)
        check_positive("lr", self.lr)
        check_range("warmup", self.warmup, 0, 1)
        for name in ("batch_size", "grad_accum", "save_steps", "logging_steps"):
            check_int(name, getattr(self, name), 1)
        if self.max_steps is not None:
            check_int("max_steps", self.max_steps, 1)
        check_choice("relax", self.relax, RELAXATIONS)
        check_int("workers", self.workers, 0)


def glimpse_loss(adapter: Any, method: GlimpsePruner, inputs: dict[str, Any], mode: str,
                 w: LossWeights, relax: str = DEFAULT_RELAX) -> tuple[torch.Tensor, dict[str, float]]:
    """The training loss of one collated batch and its parts (floats, for logging); ``relax`` is the box-free
    mode's relaxation of the cut."""
    from vtprune.runtime.executor import RecordScores, prefill
    from vtprune.training.relax import RelaxedCut

    batch, first = inputs["batch"], inputs["first_token"].to(adapter.device)
    parts: dict[str, float] = {}
    if mode == "box":
        out = prefill(adapter, batch, method, cut=RecordScores())
        loss = torch.zeros((), device=adapter.device)
        if inputs["targets"]:
            dice, bce = mask_loss(out.scores[0], [(b, i.to(adapter.device), t.to(adapter.device)) for b, i, t in inputs["targets"]])
            loss = loss + w.loc * (dice + w.bce * bce)
            parts.update(dice=dice.item(), bce=bce.item())
    else:
        with torch.no_grad():
            teacher = prefill(adapter, batch).logits.float()
        out = prefill(adapter, batch, method, cut=RelaxedCut(relax, method.keep_threshold))
        kl = F.kl_div(out.logits.float().log_softmax(-1), teacher.log_softmax(-1), log_target=True, reduction="batchmean")
        valid = out.score_ids[0] >= 0
        p = torch.sigmoid(out.scores[0])
        keep_p = (p * valid).sum(1) / valid.sum(1).clamp(min=1)
        has = valid.any(1)
        retention = keep_p[has].mean() if bool(has.any()) else keep_p.sum() * 0
        loss = w.kl * kl + w.retention * retention
        parts.update(kl=kl.item(), keep_prob=retention.item(),
                     kept=((p > method.keep_threshold) & valid).sum().item() / max(1, int(valid.sum())))
    assert out.extra_logits is not None
    ce = F.cross_entropy(out.extra_logits[:, 0], first)
    loss = loss + w.le * ce
    parts.update(ce=ce.item(), loss=loss.item())
    return loss, parts


# --- the HF Trainer loop ----------------------------------------------------------------------------------------------

def _trainer_class() -> type:
    from transformers import Trainer

    class GlimpseTrainer(Trainer):
        """HF Trainer whose model is the pruner's modules; the frozen base model runs inside ``compute_loss``."""

        def __init__(self, *args: Any, adapter: Any, method: GlimpsePruner, mode: str, weights: LossWeights,
                     relax: str = DEFAULT_RELAX, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self.adapter, self.method, self.mode, self.weights, self.relax = adapter, method, mode, weights, relax
            self._parts: dict[str, list[float]] = defaultdict(list)

        def compute_loss(self, model: Any, inputs: dict[str, Any], return_outputs: bool = False,
                         num_items_in_batch: Any = None) -> Any:
            if inputs.get("empty"):
                loss = sum(p.sum() * 0 for p in model.parameters())
                return (loss, None) if return_outputs else loss
            loss, parts = glimpse_loss(self.adapter, self.method, inputs, self.mode, self.weights, self.relax)
            for k, v in parts.items():
                self._parts[k].append(v)
            return (loss, None) if return_outputs else loss

        def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
            if "loss" in logs:
                for k, v in self._parts.items():
                    if k != "loss" and v:
                        logs[k] = round(sum(v) / len(v), 5)
                self._parts.clear()
            super().log(logs, start_time)

    return GlimpseTrainer


def train_glimpse(
    *, model: Any, data: list[Any], out: Path, mode: str = "auto", layer: int | None = None, epochs: float = 1.0,
    lr: float = 1e-4, batch_size: int = 4, grad_accum: int = 1, max_steps: int | None = None, seed: int = 0,
    warmup: float = 0.1, resume: bool = False, save_steps: int = 500, logging_steps: int = 10,
    weights: LossWeights | None = None, config: dict[str, Any] | None = None, method: GlimpsePruner | None = None,
    relax: str = DEFAULT_RELAX, workers: int = 0, log_fields: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Train a GlimpsePrune pruner for ``model`` (a :class:`vtprune.VLM` or a model name) on ``data`` (records from
    :func:`vtprune.data.dataset.read_jsonl`, :class:`TrainItem`s, or JSONL / ``testbed:`` specs) and save it to
    ``out`` (``model.safetensors`` + ``vtprune_config.json``; Trainer checkpoints under ``out/checkpoints``).

    ``config`` overrides :class:`GlimpseConfig` fields of a fresh pruner (e.g. ``vip_size`` for tiny models);
    ``method`` continues training an existing one instead; ``relax`` is the box-free relaxation of the cut
    (``sampled``, ``hard`` or ``sigmoid``, see :func:`vtprune.training.relax.relaxed_log_keep`); ``workers`` > 0
    collates (loads images, encodes) in that many DataLoader processes. The Trainer's logs go to ``out/log.jsonl``;
    with ``log_fields`` (GlimpsePrune+ stage 2: ``{"stage": 2}``) they are appended to it with those fields. Returns
    the run's metadata (also ``out/train_meta.json``).
    """
    from vtprune.training.runlog import trainer_log

    GlimpseTrainSettings(out=Path(out), mode=mode, epochs=epochs, lr=lr, batch_size=batch_size, grad_accum=grad_accum,
                         max_steps=max_steps, warmup=warmup, save_steps=save_steps, logging_steps=logging_steps,
                         relax=relax, workers=workers)
    if isinstance(model, str):
        from vtprune.api import load

        model = load(model)
    items = _resolve_data(data)
    with_images = [r for r in items if _has_images(r)]
    if not with_images:
        raise ConfigError("no training sample has an image (GlimpsePrune prunes image tokens)")
    with_boxes = sum(1 for r in with_images if getattr(r, "boxes", None))
    if mode == "auto":
        mode = "box" if with_boxes else "boxfree"
    if mode == "box" and not with_boxes:
        raise ConfigError("no training sample has evidence boxes; use --mode boxfree (distillation)")
    adapter = model.adapter
    hf = model.model
    torch.manual_seed(seed)
    if method is None:
        method = GlimpsePruner.for_model(model, **{**(config or {}), **({"layer": layer} if layer is not None else {})})
    method.stages(adapter.num_layers)  # validates depth and layer
    # the base model is frozen while the pruner trains; the caller's flags come back afterwards
    saved_grad = {n: p.requires_grad for n, p in hf.named_parameters()}
    was_training = hf.training
    hf.requires_grad_(False)
    hf.eval()
    modules = method.modules
    assert modules is not None
    steps_per_epoch = math.ceil(len(with_images) / (batch_size * grad_accum))
    total = max_steps or max(1, math.ceil(epochs * steps_per_epoch))
    args = training_arguments(
        out,
        num_train_epochs=epochs,
        max_steps=max_steps or -1,
        per_device_train_batch_size=batch_size,
        gradient_accumulation_steps=grad_accum,
        learning_rate=lr,
        warmup_steps=int(warmup * total),
        weight_decay=0.0,
        logging_steps=max(1, min(logging_steps, total)),
        save_steps=save_steps,
        save_total_limit=2,
        seed=seed,
        dataloader_num_workers=workers,
    )
    trainer = _trainer_class()(
        model=modules, args=args, train_dataset=ListDataset(with_images),
        data_collator=Collator(adapter, seed),
        adapter=adapter, method=method, mode=mode, weights=weights or LossWeights(), relax=relax,
    )
    hf.to(trainer.args.device)
    ckpt = Path(out) / "checkpoints"
    resuming = resume and any(ckpt.glob("checkpoint-*"))
    trainer.add_callback(trainer_log(Path(out), resume=bool(resuming) or log_fields is not None, fields=log_fields))
    t0 = time.perf_counter()
    try:
        result = trainer.train(resume_from_checkpoint=True if resuming else None)
    finally:
        for n, p in hf.named_parameters():
            p.requires_grad_(saved_grad[n])
        hf.train(was_training)
    seconds = time.perf_counter() - t0
    modules.eval()
    main = trainer.is_world_process_zero()  # under accelerate launch, one process writes the results
    if main:
        method.save_pretrained(out)
    history = [h for h in trainer.state.log_history if "loss" in h]
    meta = {
        "method": "glimpse", "model": getattr(model, "name", ""), "mode": mode,
        **({"relax": relax} if mode == "boxfree" else {}), "layer": method.config.layer,  # type: ignore[union-attr]
        "samples": len(with_images), "with_boxes": with_boxes, "steps": trainer.state.global_step, "epochs": epochs,
        "batch_size": batch_size, "grad_accum": grad_accum, "lr": lr, "seed": seed, "seconds": round(seconds, 1),
        "train_loss": result.training_loss, "first_loss": history[0]["loss"] if history else math.nan,
        "final_loss": history[-1]["loss"] if history else math.nan,
        "trainable_params": sum(p.numel() for p in modules.parameters()),
    }
    if main:
        (Path(out) / "train_meta.json").write_text(json.dumps(meta, indent=1))
    return meta


def _has_images(r: Any) -> bool:
    return bool(getattr(r, "images", None)) and not getattr(r, "video", None)


def _resolve_data(data: list[Any]) -> list[Any]:
    out: list[Any] = []
    for d in data:
        if isinstance(d, (str, Path)):
            from vtprune.data.dataset import read_jsonl, resolve_data

            out += read_jsonl(resolve_data(d))
        else:
            out.append(d)
    if not out:
        raise ConfigError("no training records")
    return out
