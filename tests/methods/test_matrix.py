"""Every registered training-free image method at keep 0.25 on every random family, batch 1 and 3: kept counts and
generation. Learned methods (``trainable``) need a trained or model-built module and have their own suites."""

from __future__ import annotations

import pytest
import torch

import vtprune
from tests.conftest import refused
from vtprune.methods.base import keep_counts

METHODS = [m["name"] for m in vtprune.list_methods() if not m["trainable"] and "image" in m["modalities"]]
# video-only methods (evs) are covered on videos in test_video_baselines.py


def _expected(method: vtprune.Pruner, n: int, num_layers: int) -> int:
    """Visual tokens left after the method's last stage, for a sample with ``n`` of them."""
    total = torch.tensor([n])
    if hasattr(method, "schedule"):  # multi-stage (pdrop): lambda ** S of the original count
        bounds, lam = method.schedule(num_layers)
        return int(keep_counts(lam ** len(bounds), total, total))
    return int(keep_counts(method.keep, total, total))


@pytest.mark.parametrize("batch_size", [1, 3])
@pytest.mark.parametrize("name", METHODS)
def test_method_matrix(vlm, three_samples, name, batch_size):
    method = vtprune.pruner(name, keep=1.0 if name == "none" else 0.25)
    samples = three_samples[:batch_size]
    if refused(vlm, samples, method):
        return
    answers = vlm.generate(samples, method, max_new_tokens=3)
    assert len(answers) == batch_size
    for a in answers:
        assert a.kept_tokens == _expected(method, a.visual_tokens, vlm.num_layers)
        assert a.kept_coords is not None and a.kept_coords.shape[0] == a.kept_tokens
        assert isinstance(a.text, str)


@pytest.mark.parametrize("name", [m for m in [*METHODS, "evs"] if m not in ("none", "random", "uniform")])
def test_keep_all_equals_unpruned(vlm, three_samples, name):
    """keep=1.0 changes nothing: same prompt logits as the unpruned runtime (merging methods included)."""
    from vtprune.runtime.executor import prefill

    if refused(vlm, three_samples, vtprune.pruner(name, keep=1.0)):
        return
    batch = vlm.adapter.encode(three_samples)
    ref = prefill(vlm.adapter, batch, all_logits=True)
    got = prefill(vlm.adapter, batch, vtprune.pruner(name, keep=1.0), all_logits=True)
    assert got.kept_tokens == got.visual_tokens
    valid = got.attention_mask.bool()
    torch.testing.assert_close(got.logits[valid], ref.logits[valid], rtol=1e-5, atol=1e-6)
