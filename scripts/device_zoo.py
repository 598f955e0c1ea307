"""Train a zoo model further on a lent GPU machine within a wall-time budget, evaluate it on val, keep the result.

Run by scripts/device_zoo.sh (which installs the carried wheels first); works the same on a CPU for a dry run:

    python scripts/device_zoo.py qwen --minutes 6 --out "$OUT"        # zoo:synth-qwen2_5_vl + image-train
    python scripts/device_zoo.py video --minutes 3 --out "$OUT"       # zoo:synth-video-qwen2_5_vl + images/videos
                                                                      # (needs PyAV there: not carried yet)
    python scripts/device_zoo.py llava --minutes 3 --out "$OUT"       # zoo:synth-llava + image-train

Writes into --out (at most 8 files come back from a device call): model.safetensors, model-files.tar (config,
tokenizer and processor files: untar beside the weights for a run directory that `vtprune eval` loads and
`vtprune.hub.ship_model` ships, after its own check on the CPU side), train_meta.json, eval.json (val
accuracy per type, unpruned) and log.txt. Only val is evaluated: val is for model selection, test stays for
final numbers.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import sys
import tarfile
import time
from pathlib import Path

TARGETS = {
    # name: (init model, model type, training data, frames, val set)
    "qwen": ("zoo:synth-qwen2_5_vl", "qwen2_5_vl", ["testbed:image-train"], None, "testbed:image-val"),
    "video": ("zoo:synth-video-qwen2_5_vl", "qwen2_5_vl",
              ["testbed:image-train", "testbed:video-train", "testbed:video-train"], 8, "testbed:video-val"),
    "llava": ("zoo:synth-llava", "llava", ["testbed:image-train"], None, "testbed:image-val"),
}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("target", choices=sorted(TARGETS))
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--minutes", type=float, required=True, help="wall-time budget of the training loop")
    p.add_argument("--steps", type=int, default=100000,
                   help="cap on the steps (with --schedule time the minutes end the run and the schedule)")
    p.add_argument("--schedule", choices=("time", "steps"), default="time",
                   help="cosine learning rate over the --minutes (time) or over --steps")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--workers", type=int, default=12)
    p.add_argument("--qa-turns", type=int, default=8)
    p.add_argument("--eval-limit", type=int, default=None)
    p.add_argument("--init", default=None, help="start from this model (default: the target's zoo model)")
    p.add_argument("--scratch", action="store_true", help="train from a random init (with the vision warm-up)")
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)

    import torch

    torch.backends.cuda.matmul.allow_tf32 = True  # fp32 weights, TF32 matmuls on the GPU
    torch.backends.cudnn.allow_tf32 = True

    from vtprune.eval.runner import run_eval
    from vtprune.testbed.sets import ensure_set
    from vtprune.training.zoo import train_base

    init, model_type, data, frames, val = TARGETS[a.target]
    t0 = time.perf_counter()
    for name in {*data, val}:
        ensure_set(name)
    render_s = time.perf_counter() - t0
    run = a.out / "run"
    meta = train_base(model_type=model_type, data=data, out=run, steps=a.steps, batch_size=a.batch_size, lr=a.lr,
                      video_frames=frames, init=None if a.scratch else (a.init or init), vision_steps=300 if a.scratch else 0,
                      qa_turns=a.qa_turns, workers=a.workers, max_minutes=a.minutes, schedule=a.schedule,
                      # the shipped zoo:synth-qwen2_5_vl's stages (p9-p12, BENCHMARKS.md): readout + evidence attention
                      readout_weight=1.0, readout_layer=2, attn_weight=0.5, attn_layers=(2, 4))
    meta["render_seconds"] = round(render_s, 1)
    meta["cuda"] = torch.cuda.get_device_name() if torch.cuda.is_available() else None
    (run / "train_meta.json").write_text(json.dumps(meta, indent=1))  # with the machine's GPU and the render time
    report = run_eval(model=str(run), data=val, batch_size=64, limit=a.eval_limit, num_frames=frames)
    (a.out / "eval.json").write_text(json.dumps(report, indent=1))
    # at most 8 files come back from $OUT: the weights and the numbers as they are, the small files in one tar
    shutil.move(run / "model.safetensors", a.out / "model.safetensors")
    shutil.move(run / "train_meta.json", a.out / "train_meta.json")
    with tarfile.open(a.out / "model-files.tar", "w") as tar:
        for f in sorted(run.iterdir()):
            if f.is_file():
                tar.add(f, arcname=f.name)
    shutil.rmtree(run)
    print(json.dumps({"target": a.target, "steps_done": meta["steps_done"], "seconds": meta["seconds"],
                      "accuracy": report["accuracy"],
                      "by_type": {k: v["accuracy"] for k, v in report["by_type"].items()}}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
