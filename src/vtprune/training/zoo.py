"""``vtprune train base``: train a small VLM of a real HF class from scratch on testbed data (HF Trainer).

The zoo's image models (``zoo:synth-<family>``) are made with this recipe (the sizes: each family's
``FamilySpec.zoo``). Their size is chosen so a
run fits in about 30 minutes on 2 CPU cores: deep enough for layer-K pruning to mean something (8 LLM layers,
6 ViT blocks), narrow enough to train fast.
"""

from __future__ import annotations

import json
import logging
import math
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from vtprune.errors import ConfigError
from vtprune.options import check_choice, check_int, check_out_dir, check_positive, check_range
from vtprune.training.common import (
    CollatorRandom,
    ListDataset,
    WallClockCosine,
    time_limit_callback,
    training_arguments,
)

log = logging.getLogger(__name__)
PROCESSING_FILE = "vtprune_processing.json"


def write_processing(out: Path, video_frames: int | None) -> None:
    """Write a model directory's :data:`PROCESSING_FILE` (its video frame sampling; ``vtprune.load`` reads it)."""
    (out / PROCESSING_FILE).write_text(json.dumps({"video_frames": video_frames}))


def zoo_spec(model_type: str) -> Any:
    """The family's zoo recipe (:class:`vtprune.adapters.spec.ZooSpec`); a clear error naming the families that
    have one."""
    from vtprune.adapters.spec import family_specs

    recipes = {s.name: s.zoo for s in family_specs() if s.zoo is not None}
    if model_type not in recipes:
        raise ConfigError(f"--model-type must be one of {', '.join(sorted(recipes))}, got {model_type!r}")
    return recipes[model_type]


def build_untrained(model_type: str, seed: int = 0) -> tuple[torch.nn.Module, Any, Any]:
    """A fresh zoo-sized model of ``model_type`` with the offline tokenizer and a processor for testbed images."""
    from vtprune.adapters.spec import build_random, image_processor_for

    recipe = zoo_spec(model_type)
    model, tok, _ = build_random(model_type, seed=seed, **recipe.sizes)
    if recipe.position_table is not None:
        sincos_positions(recipe.position_table(model))
    proc = image_processor_for(model_type, **recipe.processor)
    # the model's text vocabulary is the tokenizer's; the LM head is untied (trained from scratch)
    return model.train(), tok, proc


def sincos_positions(embeddings: torch.nn.Module) -> None:
    """Start a CLIP tower's learned position table from 2-D sine-cosine positions (as MAE does), CLS row zero.

    HF initialises it with std 0.02 against patch embeddings of std ~0.5: the from-scratch tower then has no usable
    sense of where a patch is (Qwen's tower has 2-D RoPE from the start); the vision warm-up learns faster from
    this start (BENCHMARKS.md, "Zoo models"). Half the channels encode the row, half the column,
    each as sin/cos at geometric frequencies."""
    w = embeddings.position_embedding.weight
    side, d = math.isqrt(int(embeddings.num_patches)), w.shape[1]
    q = d // 4
    freq = 1.0 / 10000 ** (torch.arange(q, dtype=torch.float64) / q)
    rows, cols = torch.meshgrid(torch.arange(side), torch.arange(side), indexing="ij")

    def enc(p: torch.Tensor) -> torch.Tensor:
        a = p.flatten().double()[:, None] * freq[None]
        return torch.cat([a.sin(), a.cos()], 1)

    with torch.no_grad():
        w.zero_()
        w[1:, : 4 * q] = torch.cat([enc(rows), enc(cols)], 1).to(w.dtype)


DESCRIBE = "Describe the image."


def scene_qa(extra: dict[str, Any], question: str, rng: random.Random, n: int) -> list[tuple[str, str, list[Any]]]:
    """Up to ``n`` further questions the record's scene answers (not its own question), in random order, as
    ``(question, answer, evidence)``: evidence boxes for an image, ``(frame, box)`` pairs for a video (whose
    record carries its ``tracks``)."""
    from vtprune.testbed.tasks.image import scene_from_fields, scene_questions_with_evidence
    from vtprune.testbed.tasks.video import tracks_from_fields, video_scene_questions

    if n <= 0:
        return []
    if "objects" in extra:
        qa = scene_questions_with_evidence(*scene_from_fields(extra), rng)
    elif extra.get("tracks"):
        qa = video_scene_questions(tracks_from_fields(extra["tracks"]), rng)
    else:
        return []
    qa = [t for t in qa if t[0] != question]
    rng.shuffle(qa)
    return qa[:n]


def _own_evidence(record: Any) -> list[Any] | None:
    """The evidence of a record's own question: its boxes, paired with their frames for a video."""
    boxes = getattr(record, "boxes", None) or None
    if boxes and getattr(record, "video", None) is not None:
        frames = getattr(record, "frames", None) or []
        return list(zip(frames, boxes)) if len(frames) == len(boxes) else None
    return boxes


def _collator(adapter: Any, rng: CollatorRandom, num_frames: int | None, describe: bool, probe: bool,
              qa_turns: int = 0, evidence: bool = False):
    from vtprune.data.dataset import sample_for_record
    from vtprune.training.probe import batch_targets
    from vtprune.training.supervised import encode_with_answers

    def collate(records: list[Any]) -> dict[str, Any]:
        rng_ = rng.stream()
        samples = [sample_for_record(r, num_frames) for r in records]
        answers = [rng_.choice(r.answers) for r in records]
        followups = [(DESCRIBE, r.extra["caption"]) if describe and r.extra.get("caption") else None for r in records]
        qa = [scene_qa(r.extra, r.question, rng_, qa_turns) for r in records]
        b = encode_with_answers(adapter, samples, answers, followups, [[(q, a) for q, a, _ in t] for t in qa])
        pos = adapter.positions(b.input_ids, b.attention_mask, b.model_inputs)
        kw = b.model_kwargs(adapter, pos)
        if evidence:
            from vtprune.training.evidence import batch_evidence

            # reply spans in order: the record's answer, then its question turns (the caption turn has no evidence)
            spans = b.labels if b.qa_labels is None else torch.where(b.labels != -100, b.labels, b.qa_labels)
            boxes = [[_own_evidence(r)] + [ev for _, _, ev in t] for r, t in zip(records, qa)]
            total = [len(r.extra["tracks"][0][3]) if r.extra.get("tracks") else None for r in records]
            ev = batch_evidence(boxes, samples, list(spans), b.visual_mask, b.coords, b.grids, total)
            if ev is not None:
                kw["evidence_query"], kw["evidence_keys"] = ev
                kw["evidence_positions"] = pos
                kw["evidence_visual"] = b.visual_mask
        if b.followup_labels is not None:
            kw["followup_labels"] = b.followup_labels
        if b.qa_labels is not None:
            kw["qa_labels"] = b.qa_labels
        if probe:
            t = batch_targets([r.extra for r in records], samples, b.visual_mask, b.coords, b.grids)
            if t is not None:
                kw["probe_targets"] = t
        return kw

    return collate


def _token_ce(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean next-token cross-entropy of ``logits`` [B, L, V] on ``labels`` [B, L] (-100 ignored); 0 if none."""
    lab = labels[:, 1:]
    if not bool((lab != -100).any()):
        return logits.sum() * 0.0
    return torch.nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1).float(), lab.flatten(), ignore_index=-100)


class ZooRecipe(torch.nn.Module):
    """The VLM under training plus the recipe's throw-away token probe (see :mod:`vtprune.training.probe`).

    ``forward`` returns the recipe loss: answer LM loss + ``describe_weight`` x caption-turn LM loss +
    ``qa_weight`` x LM loss of the extra scene-question turns + ``probe_weight`` x token-probe loss +
    ``readout_weight`` x readout loss. The LM losses are token means over their own spans, so a 20-token caption
    does not drown the 1-2 answer tokens. Only ``vlm`` is saved as the model.

    The readout loss (:meth:`readout`) is the model's own LM head, after the final norm, applied to the residual
    stream of each visual token that shows a glyph or table word, at the output of decoder layer
    ``readout_layer - 1`` (a logit lens), trained to name that content's first token. The probe makes content
    linearly readable at the LLM's input; the readout puts it in the vocabulary's directions inside the LLM, where
    an answer position can copy it with one attention step.
    """

    def __init__(self, vlm: torch.nn.Module, describe_weight: float, probe_weight: float, qa_weight: float = 1.0,
                 adapter: Any = None, attn_weight: float = 0.0, attn_layers: tuple[int, ...] = (),
                 attn_heads: int = 1, readout_weight: float = 0.0, readout_layer: int | None = None) -> None:
        from vtprune.training.probe import TokenProbe, content_token_ids

        super().__init__()
        self.vlm = vlm
        self.probe = TokenProbe(vlm.config.get_text_config().hidden_size)
        self.describe_weight, self.probe_weight, self.qa_weight = describe_weight, probe_weight, qa_weight
        self.adapter, self.attn_weight, self.attn_layers, self.attn_heads = adapter, attn_weight, attn_layers, attn_heads
        self.readout_weight = readout_weight
        n_layers = vlm.config.get_text_config().num_hidden_layers
        self.readout_layer = n_layers // 2 if readout_layer is None else readout_layer
        if not 1 <= self.readout_layer <= n_layers:
            raise ConfigError(f"--readout-layer must lie in 1..{n_layers}, got {self.readout_layer}")
        if readout_weight > 0:
            if adapter is None:
                raise ConfigError("the readout loss needs the model's adapter (tokenizer, final norm)")
            self.register_buffer("content_ids", content_token_ids(adapter.tokenizer), persistent=False)
        self.last: dict[str, float] = {}

    def readout(self, hidden_states: tuple[torch.Tensor, ...], probe_targets: torch.Tensor) -> torch.Tensor | None:
        """Cross-entropy of the LM head read at layer ``readout_layer`` on the visual tokens with content (in either
        frame of a video token's patch: :func:`~vtprune.training.probe.content_any`) against that content's first
        token; ``None`` when the batch has none.

        ``hidden_states`` is the HF tuple (embeddings, then each layer's output); ``probe_targets`` ``[B, L, NT]``."""
        from vtprune.training.probe import content_any

        content = content_any(probe_targets)
        m = content > 0
        if not bool(m.any()):
            return None
        h = hidden_states[self.readout_layer][m]  # [N, D]
        if self.readout_layer < len(hidden_states) - 1:  # HF's last entry is already normed
            h = self.adapter.text_model.norm(h)
        logits = self.adapter.lm_head(h).float()
        target = self.content_ids[content[m]]
        self.last["readout_acc"] = float((logits.argmax(-1) == target).float().mean())
        return torch.nn.functional.cross_entropy(logits, target)

    def forward(self, labels: torch.Tensor, followup_labels: torch.Tensor | None = None,
                probe_targets: torch.Tensor | None = None, qa_labels: torch.Tensor | None = None,
                evidence_query: torch.Tensor | None = None, evidence_keys: torch.Tensor | None = None,
                evidence_positions: torch.Tensor | None = None, evidence_visual: torch.Tensor | None = None,
                **inputs: Any) -> dict[str, torch.Tensor]:
        use_probe = probe_targets is not None and self.probe_weight > 0
        use_attn = evidence_query is not None and self.attn_weight > 0 and bool(self.attn_layers)
        use_readout = probe_targets is not None and self.readout_weight > 0
        out = self.vlm(**inputs, output_hidden_states=use_probe or use_attn or use_readout)
        answer = _token_ce(out.logits, labels)
        loss = answer
        self.last = {"answer_loss": answer.detach().item()}
        if use_readout:
            rl = self.readout(out.hidden_states, probe_targets)
            if rl is not None:
                loss = loss + self.readout_weight * rl
                self.last["readout_loss"] = rl.detach().item()
        if followup_labels is not None and self.describe_weight > 0:
            cap = _token_ce(out.logits, followup_labels)
            loss = loss + self.describe_weight * cap
            self.last["caption_loss"] = cap.detach().item()
        if qa_labels is not None and self.qa_weight > 0:
            qa = _token_ce(out.logits, qa_labels)
            loss = loss + self.qa_weight * qa
            self.last["qa_loss"] = qa.detach().item()
        if use_attn:
            from vtprune.training.evidence import evidence_attention_loss

            al, mass = evidence_attention_loss(self.adapter, out.hidden_states, evidence_positions, evidence_visual,
                                               evidence_query, evidence_keys, self.attn_layers, self.attn_heads)
            loss = loss + self.attn_weight * al
            self.last["attn_loss"] = al.detach().item()
            self.last["evidence_mass"] = mass
        if use_probe:
            m = probe_targets[..., 0] != -100
            if bool(m.any()):
                states, targets = out.hidden_states[0][m], probe_targets[m]
                pl = self.probe.loss(states, targets)
                loss = loss + self.probe_weight * pl
                self.last["probe_loss"] = pl.detach().item()
                # per-head accuracy on the batch's informative tokens: is the tower learning to read?
                self.last.update({f"probe_{k}": v for k, v in self.probe.accuracy(states, targets).items()
                                  if not math.isnan(v)})
        return {"loss": loss}


def _trainer_class():
    from transformers import Trainer

    class ZooTrainer(Trainer):
        """Logs the recipe's separate losses (answer, caption, questions, probe) beside the total."""

        def __init__(self, *args: Any, lr_lambda: Any = None, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self._sums: dict[str, float] = {}  # per instance: summed since the last log
            self._count = 0
            self._lr_lambda = lr_lambda  # e.g. WallClockCosine: replaces the step schedule

        def create_scheduler(self, num_training_steps: int, optimizer: Any = None) -> Any:
            if self._lr_lambda is None or self.lr_scheduler is not None:
                return super().create_scheduler(num_training_steps, optimizer)
            self.lr_scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer or self.optimizer, self._lr_lambda)
            self._created_lr_scheduler = True
            return self.lr_scheduler

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):  # noqa: ANN001
            out = model(**inputs)
            for k, v in model.last.items():
                self._sums[k] = self._sums.get(k, 0.0) + v
            self._count += 1
            return (out["loss"], out) if return_outputs else out["loss"]

        def log(self, logs: dict[str, float], *args: Any, **kwargs: Any) -> None:
            if self._count and "loss" in logs:
                logs.update({k: round(v / self._count, 4) for k, v in self._sums.items()})
                self._sums, self._count = {}, 0
            super().log(logs, *args, **kwargs)

    return ZooTrainer


@dataclass
class BaseTrainSettings:
    """The run settings of :func:`train_base`, checked before anything loads."""

    out: Path
    """Directory the model goes to (checkpoints under ``out/checkpoints``); an existing file is refused."""
    steps: int = 3000
    """Optimizer steps (with ``schedule="time"``: only a cap)."""
    batch_size: int = 16
    lr: float = 2e-3
    warmup: float = 0.05
    """Fraction of the schedule spent warming the learning rate up, in [0, 1)."""
    describe_weight: float = 0.5
    """Loss weight of a second turn "Describe the image." -> the record's ``caption`` (testbed image sets carry one);
    0 trains on the answers alone."""
    probe_weight: float = 1.0
    """Loss weight of the dense token probe on the visual tokens of records that carry their scene
    (:mod:`vtprune.training.probe`; 0: off)."""
    vision_steps: int = 300
    """Steps pre-training the vision side alone with that probe on generated reading scenes first
    (:func:`~vtprune.training.probe.vision_warmup`; skipped when resuming; 0: off)."""
    vision_batch_size: int = 32
    qa_turns: int = 4
    """Further questions the image's scene or the video's tracks answer (:func:`scene_qa`), added as extra turns
    (0: off)."""
    attn_weight: float = 0.5
    """Loss weight of evidence attention (:mod:`vtprune.training.evidence`): the first head of each supervised
    layer looks at the reply's evidence boxes (a video's in the temporal patches of their frames); 0: off."""
    readout_weight: float = 0.0
    """Loss weight of the vocabulary readout at the readout layer (:class:`ZooRecipe`), on records that carry their
    scene (0: off)."""
    workers: int = 0
    """DataLoader processes that collate batches (image processing and question drawing: what keeps a GPU fed)."""
    max_minutes: float | None = None
    """Stop after this much wall time, > 0 (the model is saved as at the last step)."""
    schedule: str = "steps"
    """``steps``: the cosine learning-rate schedule runs over ``steps``; ``time``: over ``max_minutes`` of wall time
    (:class:`~vtprune.training.common.WallClockCosine`), for a fixed time budget at an unknown step rate."""
    video_frames: int | None = None
    """Resample every video to this many frames; saved with the model as its processing default
    (``vtprune_processing.json``), as HF video processors carry their frame sampling."""
    threads: int | None = None
    """torch CPU threads (default: torch's)."""

    def __post_init__(self) -> None:
        check_out_dir("out", self.out)
        check_int("steps", self.steps, 1)
        check_int("batch_size", self.batch_size, 1)
        check_positive("lr", self.lr)
        check_range("warmup", self.warmup, 0, 1, hi_open=True)
        for name in ("describe_weight", "probe_weight", "attn_weight", "readout_weight"):
            check_range(name, getattr(self, name), 0)
        check_int("vision_steps", self.vision_steps, 0)
        check_int("vision_batch_size", self.vision_batch_size, 1)
        check_int("qa_turns", self.qa_turns, 0)
        check_int("workers", self.workers, 0)
        for name in ("video_frames", "threads"):
            if getattr(self, name) is not None:
                check_int(name, getattr(self, name), 1)
        if self.max_minutes is not None:
            check_positive("max_minutes", self.max_minutes)
        check_choice("schedule", self.schedule, ("steps", "time"))
        if self.schedule == "time" and self.max_minutes is None:
            raise ConfigError("max_minutes is needed by schedule 'time' (the wall-time budget it follows)",
                              argument="max_minutes")


def train_base(
    *, model_type: str, data: list[str], out: Path, steps: int = 3000, batch_size: int = 16, lr: float = 2e-3,
    seed: int = 0, warmup: float = 0.05, resume: bool = False, threads: int | None = None,
    video_frames: int | None = None, init: str | None = None, describe_weight: float = 0.5,
    probe_weight: float = 1.0, vision_steps: int = 300, vision_batch_size: int = 32, qa_turns: int = 4,
    attn_weight: float = 0.5, attn_layers: tuple[int, ...] | None = None, workers: int = 0,
    max_minutes: float | None = None, readout_weight: float = 0.0, readout_layer: int | None = None,
    schedule: str = "steps",
) -> dict[str, Any]:
    """Train a zoo-sized ``model_type`` on ``data`` (JSONL paths or ``testbed:`` names) and save it to ``out``: the
    recipe of the shipped zoo models (:class:`ZooRecipe`). Every setting is documented on
    :class:`BaseTrainSettings`; ``init`` (a model name or directory) starts from those weights with a fresh schedule,
    ``attn_layers`` / ``readout_layer`` place the evidence-attention and readout losses (default L/4 and L/2, and
    L/2). Returns the run's metadata (also ``out/train_meta.json``)."""

    from vtprune.adapters import get_adapter
    from vtprune.data.dataset import read_jsonl, resolve_data

    BaseTrainSettings(out=Path(out), steps=steps, batch_size=batch_size, lr=lr, warmup=warmup,
                      describe_weight=describe_weight, probe_weight=probe_weight, vision_steps=vision_steps,
                      vision_batch_size=vision_batch_size, qa_turns=qa_turns, attn_weight=attn_weight,
                      readout_weight=readout_weight, workers=workers, max_minutes=max_minutes, schedule=schedule,
                      video_frames=video_frames, threads=threads)
    stop = time_limit_callback(max_minutes)
    lr_lambda = WallClockCosine(max_minutes * 60, warmup) if schedule == "time" else None
    if threads:
        torch.set_num_threads(threads)
    records = [r for spec in data for r in read_jsonl(resolve_data(spec))]
    if not records:
        raise ConfigError("no training records")
    if init is not None:
        from vtprune.api import load

        start = load(init)
        if start.model.config.model_type != model_type:
            raise ConfigError(f"--init {init} is a {start.model.config.model_type} model, not {model_type}")
        model, tok, proc = start.model.train(), start.tokenizer, start.image_processor
    else:
        model, tok, proc = build_untrained(model_type, seed=seed)
    adapter = get_adapter(model, tok, proc)
    n_layers = adapter.num_layers
    if attn_layers is None:
        attn_layers = tuple(sorted({n_layers // 4, n_layers // 2}))
    if any(not 0 <= i < n_layers for i in attn_layers):
        raise ConfigError(f"--attn-layers must lie in 0..{n_layers - 1}, got {list(attn_layers)}")
    args = training_arguments(
        out,
        max_steps=steps,
        per_device_train_batch_size=batch_size,
        learning_rate=lr,
        warmup_steps=max(1, int(warmup * steps)),
        weight_decay=0.01,
        logging_steps=max(1, min(20, steps // 20)),
        save_steps=max(100, steps // 6),
        save_total_limit=1,
        seed=seed,
        dataloader_num_workers=workers,
    )
    recipe = ZooRecipe(model, describe_weight, probe_weight, adapter=adapter, attn_weight=attn_weight,
                       attn_layers=attn_layers, readout_weight=readout_weight,
                       readout_layer=readout_layer).to(args.device)
    resuming = resume and any((out / "checkpoints").glob("checkpoint-*"))
    t0 = time.perf_counter()
    vision_log: list[dict[str, float]] = []
    if vision_steps and not resuming:
        from vtprune.training.probe import vision_warmup

        vision_log = vision_warmup(adapter, recipe.probe, steps=vision_steps, batch_size=vision_batch_size, lr=lr,
                                   seed=seed, sides=zoo_spec(model_type).warmup_sides)
    vision_seconds = time.perf_counter() - t0
    trainer = _trainer_class()(
        model=recipe, args=args, train_dataset=ListDataset(records),
        data_collator=_collator(adapter, CollatorRandom(seed), video_frames, describe_weight > 0,
                                probe_weight > 0 or readout_weight > 0,
                                qa_turns, attn_weight > 0 and bool(attn_layers)), callbacks=stop,
        lr_lambda=lr_lambda)
    t0 = time.perf_counter()
    result = trainer.train(resume_from_checkpoint=True if resuming else None)
    seconds = time.perf_counter() - t0 + vision_seconds
    model.eval()
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    tok.save_pretrained(out)
    proc.save_pretrained(out)
    write_processing(out, video_frames)
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    meta = {
        "model_type": model_type, "data": data, "steps": steps, "batch_size": batch_size, "lr": lr, "seed": seed,
        "records": len(records), "seconds": round(seconds, 1), "final_loss": losses[-1] if losses else math.nan,
        "train_loss": result.training_loss, "params": sum(p.numel() for p in model.parameters()),
        "torch_threads": torch.get_num_threads(), "video_frames": video_frames, "init": init,
        "describe_weight": describe_weight, "probe_weight": probe_weight, "vision_steps": vision_steps, "qa_turns": qa_turns,
        "attn_weight": attn_weight, "attn_layers": list(attn_layers), "workers": workers,
        "max_minutes": max_minutes, "schedule": schedule, "steps_done": trainer.state.global_step, "device": str(args.device),
        "readout_weight": readout_weight, "readout_layer": recipe.readout_layer,
        "vision_batch_size": vision_batch_size, "vision_seconds": round(vision_seconds, 1), "vision_log": vision_log,
        "log": [h for h in trainer.state.log_history if "loss" in h],
    }
    (out / "train_meta.json").write_text(json.dumps(meta, indent=1))
    return meta
