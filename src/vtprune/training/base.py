"""``vtprune train base``: train a small VLM of a real HF class from scratch on testbed data (HF Trainer).

The zoo models (``zoo:synth-qwen2_5_vl``, ``zoo:synth-llava``) are made with this recipe. Their size is chosen so a
run fits in about 30 minutes on 2 CPU cores: deep enough for layer-K pruning to mean something (8 LLM layers,
6 ViT blocks), narrow enough to train fast.
"""

from __future__ import annotations

import json
import logging
import math
import random
import time
from pathlib import Path
from typing import Any

import torch

from vtprune.errors import ConfigError
from vtprune.training.common import ListDataset

log = logging.getLogger(__name__)
PROCESSING_FILE = "vtprune_processing.json"

ZOO_SIZES: dict[str, dict[str, Any]] = {
    # ViT windows of 112 px (8x8 patches) as in the real Qwen2.5-VL; full attention in blocks 1, 3, 5
    "qwen2_5_vl": dict(hidden=128, layers=8, heads=4, kv_heads=2, vit_depth=6, vit_hidden=96, vit_heads=4,
                       window_size=112),
    # 336 px squashed (no centre crop: it could cut the evidence out) with 28 px patches: 12x12 = 144 visual tokens,
    # the same 28 px granularity as Qwen's merged tokens, so testbed glyphs (20x28 px) stay legible
    "llava": dict(hidden=128, layers=8, heads=4, kv_heads=2, vit_depth=6, vit_hidden=96, vit_heads=4, image_size=336,
                  patch_size=28),
}


def build_untrained(model_type: str, seed: int = 0) -> tuple[torch.nn.Module, Any, Any]:
    """A fresh zoo-sized model of ``model_type`` with the offline tokenizer and a processor for testbed images."""
    from vtprune.testbed.random_models import build_random

    if model_type not in ZOO_SIZES:
        raise ConfigError(f"--model-type must be one of {', '.join(ZOO_SIZES)}, got {model_type!r}")
    sizes = dict(ZOO_SIZES[model_type])
    model, tok, _ = build_random(model_type, seed=seed, **sizes)
    if model_type == "llava":
        from transformers import CLIPImageProcessorPil

        side = sizes["image_size"]
        proc = CLIPImageProcessorPil(size={"height": side, "width": side}, do_center_crop=False)
    else:
        from transformers import Qwen2VLImageProcessorPil

        # testbed images are rendered at multiples of 28 px; allow up to 1024 visual tokens for efficiency demos
        proc = Qwen2VLImageProcessorPil(min_pixels=56 * 56, max_pixels=28 * 28 * 1024)
    # the model's text vocabulary is the tokenizer's; the LM head is untied (trained from scratch)
    return model.train(), tok, proc



DESCRIBE = "Describe the image."


def _collator(adapter: Any, rng: random.Random, num_frames: int | None, describe: bool):
    from vtprune.eval.runner import sample_for_record
    from vtprune.training.supervised import encode_with_answers

    def collate(records: list[Any]) -> dict[str, Any]:
        samples = [sample_for_record(r, num_frames) for r in records]
        answers = [rng.choice(r.answers) for r in records]
        followups = [(DESCRIBE, r.extra["caption"]) if describe and r.extra.get("caption") else None for r in records]
        b = encode_with_answers(adapter, samples, answers, followups)
        kw = b.model_kwargs(adapter)
        if b.followup_labels is not None:
            kw["followup_labels"] = b.followup_labels
        return kw

    return collate


def _token_ce(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean next-token cross-entropy of ``logits`` [B, L, V] on ``labels`` [B, L] (-100 ignored); 0 if none."""
    lab = labels[:, 1:]
    if not bool((lab != -100).any()):
        return logits.sum() * 0.0
    return torch.nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1).float(), lab.flatten(), ignore_index=-100)


def _describe_trainer(weight: float):
    """A Trainer whose loss is the answer's LM loss + ``weight`` x the LM loss of the caption turn.

    Both are token means over their own spans, so a 20-token caption does not drown the 1-2 answer tokens. The
    caption turn is dense supervision of what is where in the image (colours, shapes, glyphs, table cells): the
    answer alone is one token per image, too sparse for a model trained from scratch to learn to see.
    """
    from transformers import Trainer

    class DescribeTrainer(Trainer):
        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):  # noqa: ANN001
            follow = inputs.pop("followup_labels", None)
            labels = inputs.pop("labels")
            out = model(**inputs)
            loss = _token_ce(out.logits, labels)
            if follow is not None:
                loss = loss + weight * _token_ce(out.logits, follow)
            return (loss, out) if return_outputs else loss

    return DescribeTrainer


def train_base(
    *, model_type: str, data: list[str], out: Path, steps: int = 3000, batch_size: int = 16, lr: float = 2e-3,
    seed: int = 0, warmup: float = 0.05, resume: bool = False, threads: int | None = None,
    video_frames: int | None = None, init: str | None = None, describe_weight: float = 0.5,
) -> dict[str, Any]:
    """Train a zoo-sized ``model_type`` on ``data`` (JSONL paths or ``testbed:`` names) and save it to ``out``.

    ``video_frames`` resamples every video to that many frames; it is saved with the model as its processing
    default (``vtprune_processing.json``), as HF video processors carry their frame sampling. ``init`` (a model
    name or directory, e.g. ``zoo:synth-qwen2_5_vl``) starts from those weights with a fresh schedule instead of a
    random initialisation: how a shipped zoo model is trained further. ``describe_weight`` > 0 adds a second turn
    "Describe the image." -> the record's ``caption`` (testbed image sets carry one) to every such sample, with
    that weight on its loss; 0 trains on the answers alone."""
    from transformers import TrainingArguments

    from vtprune.adapters import get_adapter
    from vtprune.data.dataset import read_jsonl, resolve_data

    if steps < 1 or batch_size < 1 or lr <= 0:
        raise ConfigError("steps, batch size and learning rate must be positive")
    if describe_weight < 0:
        raise ConfigError(f"--describe-weight must be >= 0, got {describe_weight}")
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
    args = TrainingArguments(
        output_dir=str(out / "checkpoints"),
        max_steps=steps,
        per_device_train_batch_size=batch_size,
        learning_rate=lr,
        lr_scheduler_type="cosine",
        warmup_steps=max(1, int(warmup * steps)),
        weight_decay=0.01,
        max_grad_norm=1.0,
        logging_steps=max(1, min(20, steps // 20)),
        save_steps=max(100, steps // 6),
        save_total_limit=1,
        report_to=[],
        seed=seed,
        dataloader_num_workers=0,
        remove_unused_columns=False,
        use_cpu=not torch.cuda.is_available(),
        disable_tqdm=True,
    )
    trainer = _describe_trainer(describe_weight)(
        model=model, args=args, train_dataset=ListDataset(records),
        data_collator=_collator(adapter, random.Random(seed), video_frames, describe_weight > 0))
    t0 = time.perf_counter()
    result = trainer.train(resume_from_checkpoint=True if resume and any((out / "checkpoints").glob("checkpoint-*")) else None)
    seconds = time.perf_counter() - t0
    model.eval()
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    tok.save_pretrained(out)
    proc.save_pretrained(out)
    (out / PROCESSING_FILE).write_text(json.dumps({"video_frames": video_frames}))
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    meta = {
        "model_type": model_type, "data": data, "steps": steps, "batch_size": batch_size, "lr": lr, "seed": seed,
        "records": len(records), "seconds": round(seconds, 1), "final_loss": losses[-1] if losses else math.nan,
        "train_loss": result.training_loss, "params": sum(p.numel() for p in model.parameters()),
        "torch_threads": torch.get_num_threads(), "video_frames": video_frames, "init": init,
        "describe_weight": describe_weight,
    }
    (out / "train_meta.json").write_text(json.dumps(meta, indent=1))
    return meta
