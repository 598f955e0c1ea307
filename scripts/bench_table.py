"""Render BENCHMARKS.md efficiency rows from `vtprune bench --json` reports (numbers are never typed by hand).

    python scripts/bench_table.py docs/bench/*.json
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

HEAD = ("| method | keep | visual tok | kept | full layers K'/L | LLM prefill | bound | measured / bound | "
        "prefill e2e | ViT | decode/tok | KV cache | peak mem | FLOPs LLM prefill | dtype | report |")


def row(path: Path) -> str:
    d = json.loads(path.read_text())
    c, r, b, p = d["config"], d["ratios"], d.get("bound") or {}, d["pruned"]
    m = c["method"]["settings"]
    tpl = p["tokens_per_layer"]
    full = next((i for i, n in enumerate(tpl) if n < tpl[0]), len(tpl))  # layers run on every token
    kp = "0 (pre-LLM)" if all(n == tpl[0] for n in tpl) and p["kept_visual_tokens"] < p["visual_tokens"] else f"{full}/{len(tpl)}"
    bound = b.get("token_layers") or b.get("with_text")  # share of token-layers kept (text tokens included)
    over = r["llm_prefill"] / bound if bound else None
    f = lambda x: "—" if x is None else f"{x:.3f}"  # noqa: E731
    return (f"| {c['method']['name']} | {m.get('keep')} | {p['visual_tokens']} | {p['kept_visual_tokens']} | {kp} | "
            f"{f(r['llm_prefill'])} | {f(bound)} | {'—' if over is None else f'{over:.2f}'} | {f(r['prefill'])} | "
            f"{f(r['vit'])} | {f(r['decode_per_token'])} | {f(r['kv_cache'])} | "
            f"{f(r['peak_memory'])} | {f(r.get('flops_llm_prefill'))} | {c['dtype']} | `{path.name}` |")


if __name__ == "__main__":
    print(HEAD)
    print("|" + "---|" * HEAD.count(" | ") + "---|")
    for a in sys.argv[1:]:
        if Path(a).stat().st_size:  # skip a report still being written
            print(row(Path(a)))
