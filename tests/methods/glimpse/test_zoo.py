"""The shipped GlimpsePrune pruners fit their shipped base models, prune at their trained layer and honour the
``max_remain_ratio`` cap (``--keep``) on a testbed image."""

from __future__ import annotations

import json

import pytest
from PIL import Image

import vtprune
from vtprune.data.dataset import read_jsonl, resolve_data
from vtprune.runtime.executor import prefill
from vtprune.hub import zoo_path

PAIRS = [("synth-qwen2_5_vl", "glimpse-synth-qwen2_5_vl"), ("synth-llava", "glimpse-synth-llava")]


@pytest.mark.parametrize(("base", "name"), PAIRS)
def test_shipped_pruner_on_its_base_model(base: str, name: str) -> None:
    meta = json.loads((zoo_path(name) / "train_meta.json").read_text())
    assert meta["model"] == f"zoo:{base}"
    vlm = vtprune.load(f"zoo:{base}")
    rec = read_jsonl(resolve_data("testbed:image-mini"))[0]
    sample = vtprune.Sample(rec.question, [Image.open(rec.images[0]).convert("RGB")])
    batch = vlm.adapter.encode([sample])
    n = int(batch.visual_mask.sum())
    free = prefill(vlm.adapter, batch, vtprune.pruner("glimpse", weights=f"zoo:{name}"))
    capped = prefill(vlm.adapter, batch, vtprune.pruner("glimpse", weights=f"zoo:{name}", keep=0.111))
    k_free, k_cap = int(free.kept_visual[0].numel()), int(capped.kept_visual[0].numel())
    assert 1 <= k_cap <= max(1, round(0.111 * n)) and k_cap <= k_free <= n
    # all n tokens pass layers 0..K (K = the trained layer), the survivors the remaining L - K - 1
    K, L = meta["layer"], vlm.num_layers
    for st, k in ((free, k_free), (capped, k_cap)):
        assert st.token_layers[0] == n * (K + 1) + k * (L - K - 1)
