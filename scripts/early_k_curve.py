"""Accuracy vs the GlimpsePrune cut layer K (issue #27 item 2): a CSV and a PNG from `vtprune eval --json` reports.

The reports sit in one folder, named by what they measured (numbers are never typed by hand):

    none.json                 the unpruned model
    K<k>-cap.json             the pruner cut after layer k, capped (``--keep``)
    K<k>-free.json            the same pruner uncapped (threshold 0.5), where it prunes by itself
    <label>-K<k>-cap.json     another pruner at layer k (e.g. ``g7-K5-cap.json``), drawn as its own points

The CSV's rows (also printed as a Markdown table): K, arm (cap/free), accuracy with its binomial standard error sqrt(p (1 - p) / n), mean retention, the LLM
prefill token-layer bound (``prefill_retention_mean``) and per-task accuracy.

    python scripts/early_k_curve.py docs/bench/perf27/early-k [--title "..."]
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import re
from pathlib import Path

NAME = re.compile(r"^(?:(?P<label>[\w.]+)-)?K(?P<k>\d+)-(?P<arm>cap|free)$")
TYPES = ("lookup", "attribute", "spatial", "counting", "document")


def rows(folder: Path) -> tuple[list[dict], dict | None]:
    out, none = [], None
    for p in sorted(folder.glob("*.json")):
        r = json.loads(p.read_text())
        if "accuracy" not in r:
            continue
        acc, n = r["accuracy"], r["n"]
        row = {"label": "", "K": "", "arm": "none", "n": n, "accuracy": round(acc, 4),
               "se": round(math.sqrt(acc * (1 - acc) / n), 4), "retention": round(r["retention_mean"], 4),
               "token_layer_bound": round(r["prefill_retention_mean"], 4),
               **{t: round(r["by_type"][t]["accuracy"], 3) for t in TYPES if t in r.get("by_type", {})},
               "report": p.name}
        if p.stem == "none":
            none = row
            continue
        m = NAME.match(p.stem)
        if m is None:
            continue
        row.update(label=m["label"] or "", K=int(m["k"]), arm=m["arm"])
        out.append(row)
    out.sort(key=lambda r: (r["label"], r["arm"], r["K"]))
    return out, none


def plot(data: list[dict], none: dict | None, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(11, 4.2))
    style = {"cap": ("o-", "capped (--keep)"), "free": ("s--", "uncapped (threshold 0.5)")}
    for label in sorted({r["label"] for r in data}):
        for arm, (fmt, name) in style.items():
            pts = [r for r in data if r["label"] == label and r["arm"] == arm]
            if not pts:
                continue
            lab = f"{label + ' ' if label else ''}{name}"
            f = fmt if not label else fmt[0]
            ax.errorbar([r["K"] for r in pts], [r["accuracy"] for r in pts], yerr=[r["se"] for r in pts], fmt=f,
                        capsize=3, label=lab)
            for r in pts:
                ax.annotate(f"{r['retention']:.2f}", (r["K"], r["accuracy"]), textcoords="offset points",
                            xytext=(4, -11), fontsize=7)
            ax2.plot([r["token_layer_bound"] for r in pts], [r["accuracy"] for r in pts], f, label=lab)
            for r in pts:
                ax2.annotate(f"K={r['K']}", (r["token_layer_bound"], r["accuracy"]), textcoords="offset points",
                             xytext=(4, 3), fontsize=7)
    if none is not None:
        for a in (ax, ax2):
            a.axhline(none["accuracy"], color="gray", lw=1, label=f"unpruned {none['accuracy']:.3f}")
            a.axhspan(none["accuracy"] - 0.02, none["accuracy"], color="gray", alpha=0.12, label="within 2 points")
    ax.set_xlabel("cut after LLM layer K (of 8)")
    ax.set_ylabel("accuracy (± 1 SE); labels: mean retention")
    ax.set_xticks(sorted({r["K"] for r in data}))
    ax2.set_xlabel("LLM prefill token-layer bound")
    ax2.axvline(0.5, color="red", lw=0.8, ls=":", label="bound 0.5")
    for a in (ax, ax2):
        a.grid(alpha=0.3)
        a.legend(fontsize=7, loc="best")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("folder", type=Path)
    ap.add_argument("--title", default="GlimpsePrune on zoo:synth-qwen2_5_vl: accuracy vs cut layer K")
    a = ap.parse_args()
    data, none = rows(a.folder)
    fields = ["label", "K", "arm", "n", "accuracy", "se", "retention", "token_layer_bound", *TYPES, "report"]
    with (a.folder / "curve.csv").open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fields, extrasaction="ignore")
        w.writeheader()
        for r in ([none] if none else []) + data:
            w.writerow(r)
    plot(data, none, a.folder / "curve.png", a.title)
    print("| pruner | K | arm | accuracy (SE) | retention | token-layer bound | " + " | ".join(TYPES) + " | report |")
    print("|---" * (7 + len(TYPES)) + "|")
    for r in ([none] if none else []) + data:
        cells = " | ".join(f"{r[t]:.2f}" if t in r else "" for t in TYPES)
        print(f"| {r['label'] or ('none' if r['arm'] == 'none' else 'box')} | {r['K']} | {r['arm']} | "
              f"{r['accuracy']:.3f} ({r['se']:.3f}) | {r['retention']:.3f} | {r['token_layer_bound']:.3f} | {cells} | "
              f"`{r['report']}` |")


if __name__ == "__main__":
    main()
