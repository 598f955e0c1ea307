"""``vtprune train ...``: training of zoo models and learned pruners."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from vtprune.errors import ConfigError
from vtprune.hub import DEFAULT_VIDEO_MODEL
from vtprune.options import setting
from vtprune.training.glimpse import GlimpseTrainSettings, LossWeights
from vtprune.training.stts import STTSTrainSettings
from vtprune.training.zoo import BaseTrainSettings


train_app = typer.Typer(no_args_is_help=True, pretty_exceptions_enable=False)


@train_app.callback(invoke_without_command=True)
def _train() -> None:
    """Train zoo models (base) and learned pruners (glimpse, stts)."""


def _progress_to_stderr() -> None:
    """Long runs report their stages (e.g. the vision warm-up) as plain lines on stderr."""
    import logging

    log = logging.getLogger("vtprune.training")
    if not log.handlers:
        h = logging.StreamHandler()
        h.setFormatter(logging.Formatter("%(message)s"))
        log.addHandler(h)
        log.setLevel(logging.INFO)


def _int_list(text: str | None, option: str) -> tuple[int, ...] | None:
    if text is None:
        return None
    try:
        return tuple(int(t) for t in text.split(",") if t.strip())
    except ValueError:
        raise ConfigError(f"{option} must be comma-separated integers, got {text!r}") from None


def _float_list(text: str, option: str) -> tuple[float, ...]:
    try:
        return tuple(float(t) for t in text.split(",") if t.strip())
    except ValueError:
        raise ConfigError(f"{option} must be comma-separated numbers, got {text!r}") from None


@train_app.command("base")
def base(
    model_type: str = typer.Option(..., "--model-type", help="A family with a zoo recipe (its adapter file's FamilySpec.zoo)."),
    data: list[str] = typer.Option(..., "--data", help="JSONL or testbed:<name> (repeatable)."),
    out: Path = setting(BaseTrainSettings, "out"),
    steps: int = setting(BaseTrainSettings, "steps"),
    batch_size: int = setting(BaseTrainSettings, "batch_size"),
    lr: float = setting(BaseTrainSettings, "lr"),
    seed: int = typer.Option(0, "--seed"),
    resume: bool = typer.Option(False, "--resume", help="Continue from the last checkpoint in OUT."),
    video_frames: Optional[int] = setting(BaseTrainSettings, "video_frames", "--frames"),
    threads: Optional[int] = setting(BaseTrainSettings, "threads"),
    init: Optional[str] = typer.Option(None, "--init", help="Start from this model (zoo:<name> or a directory)."),
    describe_weight: float = setting(BaseTrainSettings, "describe_weight"),
    probe_weight: float = setting(BaseTrainSettings, "probe_weight"),
    vision_steps: int = setting(BaseTrainSettings, "vision_steps"),
    vision_batch_size: int = setting(BaseTrainSettings, "vision_batch_size"),
    qa_turns: int = setting(BaseTrainSettings, "qa_turns"),
    attn_weight: float = setting(BaseTrainSettings, "attn_weight"),
    attn_layers: Optional[str] = typer.Option(None, "--attn-layers",
                                              help="Comma-separated LLM layers for --attn-weight (default: L/4 and L/2)."),
    workers: int = setting(BaseTrainSettings, "workers"),
    readout_weight: float = setting(BaseTrainSettings, "readout_weight"),
    readout_layer: Optional[int] = typer.Option(None, "--readout-layer",
                                                help="Decoder layers before the readout (1..L; default L/2)."),
    max_minutes: Optional[float] = setting(BaseTrainSettings, "max_minutes"),
    schedule: str = setting(BaseTrainSettings, "schedule"),
) -> None:
    """Train a small VLM of a real HF class from scratch on testbed data (the zoo recipe)."""
    from vtprune.training.zoo import train_base

    _progress_to_stderr()

    meta = train_base(model_type=model_type, data=data, out=out, steps=steps, batch_size=batch_size, lr=lr,
                      seed=seed, resume=resume, video_frames=video_frames, threads=threads, init=init,
                      describe_weight=describe_weight, probe_weight=probe_weight, vision_steps=vision_steps,
                      vision_batch_size=vision_batch_size, qa_turns=qa_turns, attn_weight=attn_weight,
                      attn_layers=_int_list(attn_layers, "--attn-layers"), workers=workers,
                      max_minutes=max_minutes, readout_weight=readout_weight, readout_layer=readout_layer,
                      schedule=schedule)
    typer.echo(json.dumps(meta))


@train_app.command("glimpse")
def glimpse(
    model: str = typer.Option(..., "--model", help="Base model: random:<family>, zoo:<name> or a local path."),
    data: list[str] = typer.Option(..., "--data", help="JSONL or testbed:<name> (repeatable)."),
    out: Path = setting(GlimpseTrainSettings, "out"),
    mode: str = setting(GlimpseTrainSettings, "mode"),
    layer: int | None = typer.Option(None, "--layer", help="Prune after this LLM layer (default ceil(2L/3)-1)."),
    epochs: float = setting(GlimpseTrainSettings, "epochs"),
    lr: float = setting(GlimpseTrainSettings, "lr"),
    batch_size: int = setting(GlimpseTrainSettings, "batch_size"),
    grad_accum: int = setting(GlimpseTrainSettings, "grad_accum"),
    max_steps: int | None = setting(GlimpseTrainSettings, "max_steps"),
    vip_size: int | None = typer.Option(None, "--vip-size", help="VIP width S (default 256; small for tiny models)."),
    cond_size: int | None = typer.Option(None, "--cond-size", help="ViT conditioning width C (default 512)."),
    retention_weight: float = setting(LossWeights, "retention", "--retention-weight"),
    relax: str = setting(GlimpseTrainSettings, "relax"),
    save_steps: int = setting(GlimpseTrainSettings, "save_steps"),
    seed: int = typer.Option(0, "--seed"),
    resume: bool = typer.Option(False, "--resume", help="Continue from the last checkpoint in OUT."),
    workers: int = setting(GlimpseTrainSettings, "workers"),
) -> None:
    """Train a GlimpsePrune pruner (glimpse token + importance predictor) on a frozen base model."""
    from vtprune.training.glimpse import train_glimpse

    config = {k: v for k, v in dict(vip_size=vip_size, cond_size=cond_size).items() if v is not None}
    meta = train_glimpse(model=model, data=list(data), out=out, mode=mode, layer=layer, epochs=epochs, lr=lr,
                         batch_size=batch_size, grad_accum=grad_accum, max_steps=max_steps, seed=seed, resume=resume,
                         save_steps=save_steps, weights=LossWeights(retention=retention_weight), config=config,
                         relax=relax, workers=workers)
    typer.echo(json.dumps(meta))


@train_app.command("stts")
def stts(
    out: Path = setting(STTSTrainSettings, "out"),
    model: str = typer.Option(DEFAULT_VIDEO_MODEL, "--model", help="Base VLM (a family with the 'vit' site)."),
    data: list[str] = typer.Option(["testbed:video-train"], "--data", help="JSONL or testbed:<name> (repeatable)."),
    keep: float = setting(STTSTrainSettings, "keep"),
    block: int | None = typer.Option(None, "--block", help="ViT block the scorer reads (default round(3/27*depth))."),
    tune: str = setting(STTSTrainSettings, "tune"),
    steps: int = setting(STTSTrainSettings, "steps"),
    batch_size: int = setting(STTSTrainSettings, "batch_size"),
    lr: float = setting(STTSTrainSettings, "lr"),
    temporal_weight: float = setting(STTSTrainSettings, "temporal_weight"),
    temporal_loss: str = setting(STTSTrainSettings, "temporal_loss"),
    num_frames: int | None = typer.Option(None, "--num-frames", help="Frames decoded per video (default: all)."),
    lora_rank: int = setting(STTSTrainSettings, "lora_rank"),
    seed: int = typer.Option(0, "--seed"),
    workers: int = setting(STTSTrainSettings, "workers"),
    keep_range: str | None = setting(STTSTrainSettings, "keep_range", metavar="LO,HI"),
    similarity_input: bool = typer.Option(False, "--similarity-input",
                                          help="Also feed the scorer each unit's change from the previous step "
                                               "(1 - cos; not in STTS)."),
    save_steps: int = setting(STTSTrainSettings, "save_steps"),
    resume: bool = typer.Option(False, "--resume", help="Continue from the last checkpoint in OUT (exact)."),
    stop_after: Optional[int] = setting(STTSTrainSettings, "stop_after"),
    gradient_checkpointing: bool = setting(STTSTrainSettings, "gradient_checkpointing"),
) -> None:
    """Train an STTS scorer end to end: LM loss through the pruned ViT and LLM + temporal MSE."""
    from vtprune.training.stts import train_stts

    kr = None
    if keep_range is not None:
        parts = _float_list(keep_range, "--keep-range")
        if len(parts) != 2:
            raise ConfigError(f"--keep-range takes LO,HI, got {keep_range!r}")
        kr = (parts[0], parts[1])
    meta = train_stts(model=model, out=out, data=data, keep=keep, block=block, tune=tune, steps=steps,
                      batch_size=batch_size, lr=lr, temporal_weight=temporal_weight, num_frames=num_frames,
                      lora_rank=lora_rank, seed=seed, workers=workers, keep_range=kr,
                      similarity_input=similarity_input, temporal_loss=temporal_loss, save_steps=save_steps,
                      resume=resume, stop_after=stop_after, gradient_checkpointing=gradient_checkpointing)
    typer.echo(json.dumps(meta))


@train_app.command("plus")
def plus(
    model: str = typer.Option(..., "--model", help="Base model (frozen): zoo:<name>, random:<family> or a directory."),
    pruner: str = typer.Option(..., "--pruner", help="The GlimpsePrune pruner that prunes in stage 1 and that "
                               "stage 2 retrains (directory or zoo:<name>)."),
    data: list[str] = typer.Option(..., "--data", help="JSONL (ours or the official Visual-CoT layout) or "
                                   "testbed:<name> (repeatable); indexed, not loaded."),
    out: Path = typer.Option(..., "--out", help="Output folder: pruner + PEFT adapter, log.jsonl, checkpoints/."),
    stage: str = typer.Option("both", "--stage", help="1 (RL with LoRA) | 2 (retrain the pruner on --adapter) | both."),
    steps: int = typer.Option(100, "--steps", help="Stage-1 optimizer steps."),
    batch_size: int = typer.Option(2, "--batch-size", help="Prompts per process per step."),
    group: int = typer.Option(4, "--group", help="Completions sampled per prompt."),
    temperature: float = typer.Option(1.0, "--temperature"),
    max_new_tokens: int = typer.Option(16, "--max-new-tokens", help="Longest sampled completion."),
    kl_weight: float = typer.Option(0.04, "--kl-weight", help="Weight of the k3 KL to the base model."),
    lr: float = typer.Option(1e-4, "--lr"),
    warmup: float = typer.Option(0.0, "--warmup", help="Warm-up fraction of the steps (then cosine)."),
    lora_r: int = typer.Option(32, "--lora-r"),
    lora_alpha: int = typer.Option(64, "--lora-alpha"),
    lora_dropout: float = typer.Option(0.05, "--lora-dropout"),
    reward: str = typer.Option("exact", "--reward", help="exact | vqa | anls | nls | numeric | choice | iou | "
                               "judge (a record's 'reward' key, then --type-reward, overrides it). nls: partial "
                               "credit, 1 - edit distance / longer length (ANLS without its 0.5 cut-off)."),
    type_reward: list[str] = typer.Option([], "--type-reward", help="TYPE=NAME (repeatable): the reward of "
                                          "records whose 'type' is TYPE, e.g. document=nls; a record's own "
                                          "'reward' key still wins."),
    judge_url: Optional[str] = typer.Option(None, "--judge-url", help="OpenAI-compatible API root for the judge "
                                            "reward, e.g. http://127.0.0.1:8000/v1."),
    judge_model: str = typer.Option("judge", "--judge-model"),
    judge_timeout: float = typer.Option(30.0, "--judge-timeout", help="Seconds per judge request."),
    seed: int = typer.Option(0, "--seed"),
    save_steps: int = typer.Option(0, "--save-steps", help="Checkpoint every N stage-1 steps (0: off)."),
    log_steps: int = typer.Option(1, "--log-steps"),
    resume: bool = typer.Option(False, "--resume", help="Continue from the last checkpoint in OUT."),
    stop_after: Optional[int] = typer.Option(None, "--stop-after", help="End after this many steps with a "
                                             "checkpoint (resume with --resume)."),
    adapter: Optional[str] = typer.Option(None, "--adapter", help="--stage 2: the stage-1 output folder."),
    stage2_steps: int = typer.Option(100, "--stage2-steps"),
    stage2_lr: float = typer.Option(1e-4, "--stage2-lr"),
    stage2_batch_size: int = typer.Option(4, "--stage2-batch-size"),
    stage2_mode: str = typer.Option("auto", "--stage2-mode", help="box | boxfree | auto (see train glimpse)."),
    skip_flat: bool = typer.Option(False, "--skip-flat-groups", help="Leave groups whose completions all got the "
                                   "same reward out of the loss pass (DAPO's filter; off: the official recipe)."),
    rollout_masks: str = typer.Option("vip", "--rollout-masks", help="What keeps visual tokens in the stage-1 "
                                      "rollouts and their log-probability passes: vip (the pruner) | boxes (the "
                                      "record's evidence 'boxes', every token cell a box touches, cut after the "
                                      "same layer K: the official recipe's original use_ref_masks). A prompt "
                                      "without usable boxes (none, several images, outside the image) falls "
                                      "back to the VIP; log.jsonl's box_prompts is the share pruned by boxes."),
    vip_mask_ratio: float = typer.Option(0.0, "--vip-mask-ratio", help="With --rollout-masks boxes: the share of "
                                         "prompts pruned by the VIP instead (a seeded draw per prompt; the "
                                         "official gen_mask_usage_ratio): 0 = boxes only, 1 = VIP only."),
    threads: Optional[int] = typer.Option(None, "--threads", min=1, help="torch CPU threads per process."),
) -> None:
    """GlimpsePrune+: GRPO on a LoRA adapter with the pruner active (stage 1), then retrain the pruner (stage 2)."""
    from vtprune.training.plus import PlusConfig, train_plus
    from vtprune.training.rewards import parse_type_rewards

    _progress_to_stderr()
    cfg = PlusConfig(model=model, pruner=pruner, data=list(data), out=out, stage=stage, steps=steps,
                     batch_size=batch_size, group=group, temperature=temperature, max_new_tokens=max_new_tokens,
                     kl_weight=kl_weight, lr=lr, warmup=warmup, lora_r=lora_r, lora_alpha=lora_alpha,
                     lora_dropout=lora_dropout, reward=reward,
                     type_rewards=parse_type_rewards(list(type_reward)), judge_url=judge_url, judge_model=judge_model,
                     judge_timeout=judge_timeout, seed=seed, save_steps=save_steps, log_steps=log_steps,
                     resume=resume, stop_after=stop_after, adapter=adapter, stage2_steps=stage2_steps,
                     stage2_lr=stage2_lr, stage2_batch_size=stage2_batch_size, stage2_mode=stage2_mode,
                     threads=threads, skip_flat=skip_flat, rollout_masks=rollout_masks,
                     vip_mask_ratio=vip_mask_ratio)
    meta = train_plus(cfg)
    typer.echo(json.dumps(meta))
