"""The opt-in compiled VIP (``compile=``): the same logits and keep masks as eager, eager under autograd and under a
TorchDispatchMode, one warning and eager when the compiler fails, and bad values refused.

Inductor's code generation takes 30-50 s for even a one-block VIP on the project's 2-core machines (C++ compiles;
BENCHMARKS #27), so the suite compiles with dynamo's ``aot_eager`` backend (the same capture, guards and symbolic
shapes, no code generation); ``VTPRUNE_INDUCTOR_TESTS=1`` adds the inductor run."""

from __future__ import annotations

import logging
import os

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

import vtprune
from tests.conftest import make_image
from tests.methods.glimpse.helpers import SMALL
from vtprune.errors import ConfigError
from vtprune.methods.glimpse import GlimpsePruner
from vtprune.methods.glimpse.compiled import Compiled
from vtprune.runtime.executor import prefill

BACKENDS = ["aot_eager"] + (["inductor"] if os.environ.get("VTPRUNE_INDUCTOR_TESTS") == "1" else [])


def one_block_pruner(vlm, **settings) -> GlimpsePruner:
    """An untrained pruner whose VIP has one block (the paper's has four: a quarter of the compile time)."""
    torch.manual_seed(0)
    base = GlimpsePruner.for_model(vlm, vision_blocks=[3], **SMALL)
    base.modules.reset_parameters(zero_head=False)
    return GlimpsePruner(config=base.config, modules=base.modules, **settings)


def spy(m: GlimpsePruner) -> list[torch.Tensor]:
    """Record every VIP output of ``m`` (``m._vip``: the eager VIP or its :class:`Compiled`)."""
    seen: list[torch.Tensor] = []
    vip = m._vip

    def call(*args, **kwargs):
        seen.append(vip(*args, **kwargs))
        return seen[-1]

    m._vip = call
    return seen


def test_bad_values_are_refused(vlms):
    m = one_block_pruner(vlms["qwen2_5_vl"])
    for bad in ("fast", "", True, 1):
        with pytest.raises(ConfigError, match="compile"):
            GlimpsePruner(config=m.config, modules=m.modules, compile=bad)
    auto = GlimpsePruner(config=m.config, modules=m.modules, compile="auto")
    assert auto.to_dict()["compile"] == "auto" and "compile" not in auto.settings()  # a run's choice, not saved
    assert isinstance(auto._vip, Compiled) and m._vip is m.modules.vip
    assert "compile" not in m.to_dict()  # recorded only when set: earlier evaluations' predictions still resume


@pytest.mark.parametrize("backend", BACKENDS)
def test_compiled_equals_eager(vlms, three_samples, backend):
    """Three samples of different sizes (padded rows, one image each: select's work compiled whole), then one sample
    with two images of one size (dense rows, the VIP alone compiled): the same kept tokens and prompt logits, and
    the VIP's logits allclose."""
    vlm = vlms["qwen2_5_vl"]
    eager = one_block_pruner(vlm, threshold=0.5)
    compiled = GlimpsePruner(config=eager.config, modules=eager.modules, threshold=0.5, compile="default")
    vip_c = compiled._vip = Compiled(eager.modules.vip, "default", backend=backend)
    keep_c = compiled._keep_fn = Compiled(compiled._keep, "default", backend=backend)
    two = vtprune.Sample("two images", [make_image(56, 84, 4), make_image(84, 56, 5)])
    seen_e, seen_c = spy(eager), spy(compiled)
    with torch.no_grad(), torch._inductor.config.patch(compile_threads=1):
        for samples in (three_samples, [two]):
            batch = vlm.adapter.encode(samples)
            ref = prefill(vlm.adapter, batch, eager)
            got = prefill(vlm.adapter, batch, compiled)
            assert got.kept_tokens == ref.kept_tokens and 0 < sum(ref.kept_tokens) < sum(ref.visual_tokens)
            for a, b in zip(got.kept_coords, ref.kept_coords):
                assert torch.equal(a, b)
            torch.testing.assert_close(got.logits, ref.logits, rtol=1e-4, atol=1e-4)
    assert len(seen_c) == 1  # the two-image sample's VIP call; the three samples' ran inside the whole function
    torch.testing.assert_close(seen_c[0], seen_e[-1], rtol=1e-4, atol=1e-5)
    for c in (vip_c, keep_c):
        assert not c.failed and c.first_call_s is not None  # both compiled forms ran


class _Count(TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.ops = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops += 1
        return func(*args, **(kwargs or {}))


def test_eager_under_autograd_and_dispatch_modes_and_after_a_failure(vlms, monkeypatch, caplog):
    m = one_block_pruner(vlms["qwen2_5_vl"])
    vip = m.modules.vip
    G, M = 2, 6
    args = (torch.randn(G, M, m.config.num_heads), [torch.randn(G, M, m.config.vision_hidden_size)],
            torch.randint(0, 3, (G, M, 2)), torch.ones(G, M, dtype=torch.bool))
    with torch.no_grad():
        ref = vip(*args, dense=True)
    compiled: list[int] = []
    real_compile = torch.compile

    def counting_compile(*a, **k):
        compiled.append(1)
        return real_compile(*a, **k)

    monkeypatch.setattr(torch, "compile", counting_compile)
    cv = Compiled(vip, "auto", backend="aot_eager")
    torch.testing.assert_close(cv(*args, dense=True), ref)  # autograd on (training): eager, nothing compiled
    assert compiled == []
    with torch.no_grad():
        torch.testing.assert_close(cv(*args, dense=True), ref)
        assert compiled == [1] and not cv.failed
        with _Count() as c:  # the op counter's mode: eager (dynamo would mark the forward's code skipped for good)
            torch.testing.assert_close(cv(*args, dense=True), ref)
        assert c.ops > 20
        with torch.profiler.profile() as prof:  # afterwards the compiled code still runs
            torch.testing.assert_close(cv(*args, dense=True), ref)
        assert any(e.name.startswith("Torch-Compiled Region") for e in prof.events())

    def broken(*a, **k):
        def fail(*a, **k):
            raise RuntimeError("no C++ compiler\nmore lines")
        return fail

    monkeypatch.setattr(torch, "compile", broken)
    cv = Compiled(vip, "default")
    with torch.no_grad(), caplog.at_level(logging.WARNING, logger="vtprune.methods.glimpse.compiled"):
        for _ in range(2):
            torch.testing.assert_close(cv(*args, dense=True), ref)
    assert cv.failed
    assert [r.getMessage() for r in caplog.records if r.name.startswith("vtprune")] == [
        "glimpse: torch.compile failed (RuntimeError: no C++ compiler); running eagerly"]


def test_model_settings_pass_compile_to_glimpse_only(vlms, tmp_path):
    from vtprune.eval.settings import ModelSettings

    m = one_block_pruner(vlms["qwen2_5_vl"])
    m.save_pretrained(tmp_path)
    built = ModelSettings(model="random:qwen2_5_vl", method="glimpse", weights=str(tmp_path),
                          compile="auto").build_method(m.config.num_layers)
    assert isinstance(built._vip, Compiled) and built.to_dict()["compile"] == "auto"
    with pytest.raises(ConfigError, match="compile"):
        ModelSettings(model="random:qwen2_5_vl", method="random", keep=0.5, compile="auto").build_method(4)
