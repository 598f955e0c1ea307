"""The prune step's portable profile: what counts as an op and as a device-to-host sync, and the glimpse step's
budget of one sync (the kept counts)."""

from __future__ import annotations

import torch

import vtprune
from tests.conftest import make_image
from tests.methods.glimpse.helpers import small_pruner
from vtprune.bench.profile import OpCounter, profile_step


def test_counter_counts_kernels_and_host_reads_not_views() -> None:
    x = torch.randn(4, 3)
    c = OpCounter(x.device)
    with c:
        c.active = True
        y = (x * 2).view(12)  # one kernel, one view
        assert c.ops == 1 and c.syncs == 0
        bool((y > 0).any())  # gt, any, then a scalar read
        x[x > 0]  # a boolean index: its size depends on the data
        x[torch.tensor([0, 2])]  # a long index: no sync
        torch.nonzero(x)
        x.tolist()
        x.cpu()
        c.active = False
        x.sum().item()  # not counted while inactive
    assert c.syncs == 5, c.sync_sites
    assert c.names["_local_scalar_dense"] == 1 and c.names["index"] == 2


def test_glimpse_step_is_profiled(vlms, three_samples) -> None:
    vlm = vlms["qwen2_5_vl"]
    m = small_pruner(vlm, fixed_remain_ratio=0.5)
    two = vtprune.Sample("two images", [make_image(56, 84, 4), make_image(84, 56, 5)])
    # one sample; three of different sizes (padding); a sample with two images beside them
    for samples in (three_samples[:1], three_samples, three_samples + [two]):
        prof = profile_step(vlm.adapter, vlm.adapter.encode(samples), m)
        # the step's one wait on the device: the kept counts that size the compacted sequence and cache
        assert prof["prune_step_syncs"] == 1, prof["prune_step_sync_sites"]
        assert sum(prof["prune_step_sync_sites"].values()) == 1
        assert prof["layer_ops"] > 10 and prof["prune_step_ops"] > 0
        assert prof["cut_layers"] == [m.stages(vlm.adapter.num_layers)[0].after]


def test_launch_counter_counts_kernels_not_views_composites_or_allocations() -> None:
    from torch.autograd.profiler import record_function
    from torch.profiler import profile

    from vtprune.bench.profile import count_launches

    x, w = torch.randn(4, 3), torch.randn(5, 3)
    with profile() as prof:
        with record_function("window"):
            y = torch.nn.functional.linear(x, w)  # composite: t (a view) + mm: one launch
            y.view(20).transpose(0, 0)  # views: none
            torch.empty(3)  # an allocation: none
            (y * 2).float()  # one kernel; .float() of a float tensor: none
            y.to(torch.float64)  # one copy
    events = prof.events()
    window = next(e for e in events if e.name == "window")
    assert count_launches(events, window, cuda=False) == 3


def test_glimpse_step_launches(vlms, three_samples) -> None:
    """Eager, the launch count is the op count less the ops that launch nothing but are not tagged views."""
    vlm = vlms["qwen2_5_vl"]
    m = small_pruner(vlm, fixed_remain_ratio=0.5)
    prof = profile_step(vlm.adapter, vlm.adapter.encode(three_samples[:1]), m)
    assert 0 < prof["layer_launches"] <= prof["layer_ops"]
    quiet = sum(prof["prune_step_top_ops"].get(k, 0) for k in ("_unsafe_view", "empty", "empty_like"))
    assert prof["prune_step_ops"] - quiet - 10 <= prof["prune_step_launches"] <= prof["prune_step_ops"]
