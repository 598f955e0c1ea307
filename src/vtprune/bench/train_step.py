"""``vtprune bench --train-step``: one training step of ``vtprune train stts`` against the unpruned model's step.

A step is the loss ``train stts`` trains (:func:`vtprune.training.stts.stts_loss`: the LM loss on the answer through
the pruned encoder and the shortened LLM sequence, plus the temporal loss) and its backward pass. Both arms train
what ``train stts --tune lora`` trains in the base model: LoRA adapters (rank 8) on the LLM's attention projections;
the pruned arm also trains its scorer, whose gradient comes through the key bias of ViT block ``j + 1``. The
unpruned arm is the same step with ``keep = 1`` (the stock model: no cut, no scorer). Rounds interleave the arms,
alternating which goes first; times are medians, ratios are pruned / unpruned from the same run.
"""

from __future__ import annotations

from typing import Any

import torch

from vtprune.bench.measure import MemoryMeter, clock, median, sync

LORA_RANK = 8
ANSWER = "a red square moves to the left"


def _step(adapter: Any, method: Any, sup: Any, params: list[torch.nn.Parameter], meter: MemoryMeter
          ) -> dict[str, float]:
    """One forward + backward; wall and CPU seconds of each half, peak memory above the start."""
    from vtprune.training.stts import stts_loss

    dev = adapter.device
    meter.start()
    w0, c0 = clock()
    loss, _ = stts_loss(adapter, method, sup)
    sync(dev)
    w1, c1 = clock()
    loss.backward()
    sync(dev)
    w2, c2 = clock()
    peak = meter.stop()
    for p in params:
        p.grad = None
    return {"forward_s": w1 - w0, "backward_s": w2 - w1, "step_s": w2 - w0, "forward_cpu_s": c1 - c0,
            "backward_cpu_s": c2 - c1, "step_cpu_s": c2 - c0, "peak_memory_bytes": float(peak)}


def lora_model(model: Any) -> list[torch.nn.Parameter]:
    """Freeze ``model`` and inject the LoRA adapters ``train stts --tune lora`` trains (in place, once); returns
    the trainable parameters."""
    from peft import LoraConfig, inject_adapter_in_model

    from vtprune.training.stts import LORA_TARGETS

    if not any("lora_" in n for n, _ in model.named_parameters()):
        cfg = LoraConfig(r=LORA_RANK, lora_alpha=2 * LORA_RANK, lora_dropout=0.0, target_modules=LORA_TARGETS)
        inject_adapter_in_model(cfg, model)
    for n, p in model.named_parameters():
        p.requires_grad_("lora_" in n)
    return [p for n, p in model.named_parameters() if "lora_" in n]


def run_train_step(adapter: Any, samples: list[Any], method: Any, *, repeat: int, warmup: int, clock_name: str,
                   progress: Any = None) -> dict[str, Any]:
    """Interleaved A/B of one training step (unpruned, ``method``): medians per arm and pruned / unpruned ratios on
    the ``clock_name`` clock (``cpu``: process CPU time; ``wall``)."""
    from vtprune.methods.stts import STTS
    from vtprune.training.supervised import encode_with_answers

    if not isinstance(method, STTS):
        raise TypeError("the training-step bench times STTS (vtprune train stts)")
    params = lora_model(adapter.model)
    assert method.scorer is not None
    scorer = list(method.scorer.parameters())
    for p in scorer:
        p.requires_grad_(True)
    method.scorer.train()
    base = STTS(keep=1.0, scorer=method.scorer)  # the same model unpruned: no stage
    sup = encode_with_answers(adapter, samples, [ANSWER] * len(samples))
    meter = MemoryMeter(adapter.device)
    runs: dict[str, list[dict[str, float]]] = {"baseline": [], "pruned": []}
    for r in range(warmup + repeat):
        order = [("baseline", base), ("pruned", method)]
        for name, m in (order if r % 2 == 0 else order[::-1]):
            if progress:
                progress(f"training step, {'warm-up' if r < warmup else 'round'} {r + 1 - (0 if r < warmup else warmup)}"
                         f": {name}")
            out = _step(adapter, m, sup, params + scorer, meter)
            if r >= warmup:
                runs[name].append(out)
    arms = {name: {k: median([x[k] for x in rs]) for k in rs[0]} for name, rs in runs.items()}
    suffix = "_cpu_s" if clock_name == "cpu" else "_s"
    ratios = {part: arms["pruned"][part + suffix] / arms["baseline"][part + suffix]
              for part in ("step", "forward", "backward")}
    ratios["peak_memory"] = arms["pruned"]["peak_memory_bytes"] / max(1.0, arms["baseline"]["peak_memory_bytes"])
    wall = {part: arms["pruned"][part + "_s"] / arms["baseline"][part + "_s"] for part in ("step", "forward", "backward")}
    return {"baseline": arms["baseline"], "pruned": arms["pruned"], "ratios": ratios, "ratios_wall": wall,
            "runs": runs, "trainables": {"lora_rank": LORA_RANK, "lora_targets": "LLM attention q/k/v/o",
                                         "lora_parameters": sum(p.numel() for p in params),
                                         "scorer_parameters": sum(p.numel() for p in scorer)},
            "memory_measure": meter.kind}
